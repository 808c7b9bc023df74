//! `/healthz` (the process is alive), `/readyz` (every readiness condition
//! holds: connected, caught up…) and `/metrics` (Prometheus text) for
//! Kubernetes probes and scrapers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::Shutdown;

/// Named readiness conditions; ready when all hold.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<Mutex<BTreeMap<String, bool>>>);

impl Readiness {
    /// Declares (or updates) a condition.
    pub fn set(&self, name: &str, ready: bool) {
        self.0
            .lock()
            .expect("readiness lock")
            .insert(name.to_owned(), ready);
    }

    /// True when every declared condition holds.
    pub fn is_ready(&self) -> bool {
        self.0.lock().expect("readiness lock").values().all(|v| *v)
    }

    /// The conditions not holding.
    pub fn pending(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("readiness lock")
            .iter()
            .filter(|(_, v)| !**v)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The process-wide Prometheus recorder (installed once).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests): then ours
            // only renders what it saw, which is still a valid page.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Serves the health endpoints on `listen` until `shutdown`. Returns the
/// bound address (useful with port 0).
pub async fn serve(
    listen: SocketAddr,
    readiness: Readiness,
    shutdown: Shutdown,
) -> anyhow::Result<SocketAddr> {
    let handle = metrics_handle();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let r = readiness.clone();
                async move {
                    if r.is_ready() {
                        (StatusCode::OK, "ready".to_owned())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}", r.pending().join(", ")),
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let h = handle.clone();
                async move { h.render() }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(addr)
}
