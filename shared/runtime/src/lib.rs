//! `casework-runtime` is the shell every Casework service shares, so that a
//! service crate holds only its own rules: typed options (defaults → file →
//! `CASEWORK_*` env), injected shutdown, redb helpers, the gRPC server with
//! the standard health service and reflection, `/healthz` `/readyz`
//! `/metrics`, connecting to NATS with the service's own credentials, durable
//! timers on the `TIMERS` stream, and the reconcile loop (deliveries → load
//! → decide → append → effects → ack, with parking of undecidable cases). It
//! must not know any service's domain rules, and never depends on a
//! service crate.
//!
//! Layout: `options`, `shutdown`, `store` (redb), `http` (health, readiness,
//! metrics), `grpc`, `jwks` (the issuer's keys from its URL), `nats` (connect + log), `timers`, `held` (the bounded
//! cache of case state), `tell` (catalogue templates → customer messages), `reconcile` (the one decide-append loop, the
//! per-case locks and the coalescing work queue).

pub mod auth;
pub mod grpc;
pub mod held;
pub mod http;
pub mod jwks;
pub mod limits;
pub mod nats;
pub mod options;
pub mod reconcile;
pub mod shutdown;
pub mod store;
pub mod tell;
pub mod timers;

pub use options::{
    LogFormat, NatsSettings, Options, OptionsError, TelemetrySettings, TlsSettings, Validate,
};
pub use shutdown::Shutdown;

/// Sets up logs and trace export per the telemetry settings (once per
/// process; later calls are ignored, so `casectl dev` can run several
/// services). Same as [`init_telemetry`] with the service name `casework`.
pub fn init_logging(t: &TelemetrySettings) {
    init_telemetry("casework", t);
}

/// Sets up logs and, when `otlp_endpoint` is set, OpenTelemetry trace export
/// under `service_name`.
pub fn init_telemetry(service_name: &str, t: &TelemetrySettings) {
    casework_telemetry::init(&casework_telemetry::Config {
        service_name: service_name.to_owned(),
        json_logs: t.log_format == LogFormat::Json,
        filter: t.log_filter.clone(),
        otlp_endpoint: t.otlp_endpoint.clone(),
    });
}

/// Loads the catalogue versions named by the options (files or
/// directories), or the built-in sample when none are given.
pub fn load_catalogs(paths: &[std::path::PathBuf]) -> anyhow::Result<casework_catalog::Catalogs> {
    load_catalogs_inner(paths).map_err(|e| anyhow::Error::new(BadConfiguration(format!("{e:#}"))))
}

/// The text of a caught panic (`panic!` with a message or a string).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .unwrap_or("a panic")
}

/// A configuration problem found after the options were read (a missing
/// or invalid catalogue): the process exits 2, like for bad options.
#[derive(Debug, thiserror::Error)]
#[error("bad configuration: {0}")]
pub struct BadConfiguration(pub String);

fn load_catalogs_inner(paths: &[std::path::PathBuf]) -> anyhow::Result<casework_catalog::Catalogs> {
    if paths.is_empty() {
        return Ok(casework_catalog::Catalogs::new([
            casework_catalog::sample(),
        ])?);
    }
    let mut all = Vec::new();
    for p in paths {
        if p.is_dir() {
            all.extend(casework_catalog::Catalogs::load_dir(p)?.iter().cloned());
        } else {
            all.push(casework_catalog::Catalog::load(p)?);
        }
    }
    Ok(casework_catalog::Catalogs::new(all)?)
}

/// A started service: where it listens, and the task that ends when it has
/// shut down.
#[derive(Debug)]
pub struct Running {
    /// The bound gRPC address.
    pub grpc: std::net::SocketAddr,
    /// The bound HTTP address (`/healthz`, `/readyz`, `/metrics`).
    pub http: std::net::SocketAddr,
    /// Ends when the service has stopped (after shutdown, or on a fatal
    /// error).
    pub done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the service has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.done
            .await
            .map_err(|e| anyhow::anyhow!("service task failed: {e}"))?
    }
}

/// The whole `main` of a service binary: `--config FILE` (or
/// `CASEWORK_CONFIG`), options from defaults → file → `CASEWORK_*`
/// variables (a bad value prints what is wrong and exits 2), logs and trace
/// export, then `run(options, shutdown)` until SIGINT/SIGTERM (exit 1 on a
/// fatal error), flushing traces on the way out.
pub fn service_main<S, F, Fut>(
    name: &'static str,
    about: &'static str,
    defaults: Options<S>,
    run: F,
) -> std::process::ExitCode
where
    S: serde::Serialize + serde::de::DeserializeOwned + Validate,
    F: FnOnce(Options<S>, Shutdown) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use std::process::ExitCode;
    let matches = clap::Command::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .about(about)
        .after_help(
            "Every setting can also be given as a CASEWORK_* environment variable, \
             sections separated by __ (e.g. CASEWORK_NATS__URL=nats://nats:4222, \
             CASEWORK_GRPC_LISTEN=0.0.0.0:50051). See the README's configuration reference.",
        )
        .arg(
            clap::Arg::new("config")
                .long("config")
                .env("CASEWORK_CONFIG")
                .value_name("FILE")
                .value_parser(clap::value_parser!(std::path::PathBuf))
                .help("Options file (TOML); CASEWORK_* variables override it"),
        )
        .get_matches();
    let file = matches.get_one::<std::path::PathBuf>("config");
    let options = match options::load(defaults, file.map(|p| p.as_path()), &options::process_env())
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{name}: bad options: {e}");
            return ExitCode::from(2);
        }
    };
    if let Ok(f) = std::env::var("CASEWORK_LOG")
        && let Err(e) = casework_telemetry::check_filter(&f)
    {
        eprintln!("{name}: bad options: CASEWORK_LOG: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        init_telemetry(name, &options.telemetry);
        let outcome = run(options, shutdown::on_signals()).await;
        casework_telemetry::flush();
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "{name} stopped");
                eprintln!("{name}: {e:#}");
                if e.chain().any(|c| c.is::<BadConfiguration>()) {
                    ExitCode::from(2)
                } else {
                    ExitCode::from(1)
                }
            }
        }
    })
}
