//! `casework-ledger`: placeholder until its issue is built.

use casework_runtime::{Options, Shutdown};

/// Runs the service until `shutdown`.
pub async fn run(_options: Options<()>, shutdown: Shutdown) -> anyhow::Result<()> {
    shutdown.cancelled().await;
    Ok(())
}
