//! The casework-recovery binary: options from defaults, `--config FILE` and
//! `CASEWORK_*` variables, then [`casework_recovery::run`] until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Casework's service-recovery service.
#[derive(Debug, Parser)]
#[command(name = "casework-recovery", version)]
struct Cli {
    /// Options file (TOML); `CASEWORK_*` variables override it.
    #[arg(long, env = "CASEWORK_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = match casework_runtime::options::load(
        casework_recovery::default_options(),
        cli.config.as_deref(),
        &casework_runtime::options::process_env(),
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("casework-recovery: {e}");
            return ExitCode::from(2);
        }
    };
    casework_runtime::init_logging(&options.telemetry);
    match casework_recovery::run(options, casework_runtime::shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "casework-recovery stopped");
            eprintln!("casework-recovery: {e:#}");
            ExitCode::from(1)
        }
    }
}
