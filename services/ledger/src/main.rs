//! The casework-ledger binary: options from defaults, `--config FILE` and
//! `CASEWORK_*` variables, then [`casework_ledger::run`] until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use casework_runtime::{options, shutdown};
use clap::Parser;

/// The Casework ledger: archives every case event, verifies the hash chains,
/// and serves history, replay, verification, evidence bundles and
/// subscriptions over gRPC (default 127.0.0.1:50054).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Options file (TOML); CASEWORK_* variables override it.
    #[arg(long, env = "CASEWORK_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = match options::load(
        casework_ledger::default_options(),
        cli.config.as_deref(),
        &options::process_env(),
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("casework-ledger: bad options: {e}");
            return ExitCode::from(2);
        }
    };
    casework_runtime::init_logging(&opts.telemetry);
    match casework_ledger::run(opts, shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "casework-ledger stopped");
            eprintln!("casework-ledger: {e:#}");
            ExitCode::from(1)
        }
    }
}
