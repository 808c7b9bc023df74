//! The casework-intake binary: options from defaults, `--config FILE` and
//! `CASEWORK_*` variables, then [`casework_intake::run`] until SIGINT/SIGTERM
//! (see `casework_runtime::service_main`).

fn main() -> std::process::ExitCode {
    casework_runtime::service_main(
        "casework-intake",
        "Casework's front stage: opens cases, makes promises, records interactions and feedback, and closes the loop with the customer.",
        casework_intake::default_options(),
        casework_intake::run,
    )
}
