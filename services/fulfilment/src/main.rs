//! The casework-fulfilment binary: options from defaults, `--config FILE` and
//! `CASEWORK_*` variables, then [`casework_fulfilment::run`] until SIGINT/SIGTERM
//! (see `casework_runtime::service_main`).

fn main() -> std::process::ExitCode {
    casework_runtime::service_main(
        "casework-fulfilment",
        "Casework's back stage: runs each case's promised workflow (simulated, external-worker and manual steps) with retries, back-off and timeouts.",
        casework_fulfilment::default_options(),
        casework_fulfilment::run,
    )
}
