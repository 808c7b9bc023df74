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
//! metrics), `grpc`, `nats` (connect + log), `timers`, `reconcile`.

pub mod grpc;
pub mod http;
pub mod nats;
pub mod options;
pub mod reconcile;
pub mod shutdown;
pub mod store;
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
