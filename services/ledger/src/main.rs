//! The casework-ledger binary: options from defaults, `--config FILE` and
//! `CASEWORK_*` variables, then [`casework_ledger::run`] until SIGINT/SIGTERM
//! (see `casework_runtime::service_main`).

fn main() -> std::process::ExitCode {
    casework_runtime::service_main(
        "casework-ledger",
        "Casework's ledger: archives and verifies every case event; history, replay, verification, evidence bundles and subscriptions for auditors and integrators.",
        casework_ledger::default_options(),
        casework_ledger::run,
    )
}
