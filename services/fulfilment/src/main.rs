//! The casework-fulfilment binary: options from defaults, `--config FILE` and
//! `CASEWORK_*` variables, then [`casework_fulfilment::run`] until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Casework fulfilment (back stage): runs each case's workflow.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Options file (TOML); `CASEWORK_*` variables override it.
    #[arg(long, env = "CASEWORK_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let options = match casework_runtime::options::load(
        casework_fulfilment::default_options(),
        args.config.as_deref(),
        &casework_runtime::options::process_env(),
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("casework-fulfilment: bad options: {e}");
            return ExitCode::from(2);
        }
    };
    casework_runtime::init_logging(&options.telemetry);
    let shutdown = casework_runtime::shutdown::on_signals();
    match casework_fulfilment::run(options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "casework-fulfilment stopped");
            eprintln!("casework-fulfilment: {e:#}");
            ExitCode::from(1)
        }
    }
}
