//! The casework-recovery binary: options from defaults, `--config FILE` and
//! `CASEWORK_*` variables, then [`casework_recovery::run`] until SIGINT/SIGTERM
//! (see `casework_runtime::service_main`).

fn main() -> std::process::ExitCode {
    casework_runtime::service_main(
        "casework-recovery",
        "Casework's service recovery: broken promises, failed fulfilment and bad feedback, answered with apologies, compensations, retries and escalations.",
        casework_recovery::default_options(),
        casework_recovery::run,
    )
}
