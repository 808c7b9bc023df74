//! The casework-ledger binary: options from defaults, `--config FILE` and
//! `CASEWORK_*` variables, then [`casework_ledger::run`] until SIGINT/SIGTERM.

fn main() {}
