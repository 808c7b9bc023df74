//! The casectl binary: parses the command line and runs it (logic in the
//! library, so it is testable). Exit codes: 0 ok, 1 a break found or the
//! operation failed, 2 bad usage or input, 3 server unreachable, 4 not found.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = casectl::Cli::parse();
    let json = cli.json;
    let mut stdout = std::io::stdout();
    match casectl::run(cli, &mut stdout).await {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(report)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report.json).unwrap_or_default()
                );
            } else {
                print!("{}", report.text);
            }
            if report.problem {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": e.to_string(), "exit_code": e.exit_code() })
                );
            }
            eprintln!("casectl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
