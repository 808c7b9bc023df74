//! The casework-intake binary: options from defaults, `--config FILE` and
//! `CASEWORK_*` variables, then [`casework_intake::run`] until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use casework_runtime::{init_logging, options, shutdown};
use clap::Parser;

/// Casework's front stage: opens cases, makes promises, closes the loop.
#[derive(Debug, Parser)]
#[command(name = "casework-intake", version)]
struct Cli {
    /// Options file (TOML); `CASEWORK_*` variables override it.
    #[arg(long, env = "CASEWORK_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = match options::load(
        casework_intake::default_options(),
        cli.config.as_deref(),
        &options::process_env(),
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("casework-intake: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&options.telemetry);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("casework-intake: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(async { casework_intake::run(options, shutdown::on_signals()).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "casework-intake failed");
            eprintln!("casework-intake: {e:#}");
            ExitCode::from(1)
        }
    }
}
