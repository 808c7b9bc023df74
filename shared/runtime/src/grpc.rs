//! The gRPC server of a service: its own services plus the standard health
//! service (`grpc.health.v1`) and reflection, with graceful shutdown. Every
//! call runs in a `grpc` span whose parent is the caller's W3C
//! `traceparent` metadata when it sends one, so a case opened by a traced
//! caller continues the caller's trace.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::Shutdown;

/// A gRPC server being assembled.
#[derive(Debug)]
pub struct GrpcServer {
    routes: Routes,
    tls: Option<tonic::transport::ServerTlsConfig>,
    auth: Option<(&'static str, casework_auth::AuthSettings)>,
    /// Sets the serving status of each service for the health service.
    pub health: HealthReporter,
}

impl Default for GrpcServer {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcServer {
    /// A server with health and reflection.
    pub fn new() -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(casework_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the embedded descriptor sets are valid");
        let routes = Routes::new(health_service).add_service(reflection);
        Self {
            routes,
            health,
            tls: None,
            auth: None,
        }
    }

    /// Serves over TLS (and requires client certificates when
    /// `client_ca_file` is set) when `tls` is configured.
    pub fn tls(mut self, tls: &crate::TlsSettings) -> anyhow::Result<Self> {
        let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
            return Ok(self);
        };
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
        };
        let mut cfg = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
        );
        if let Some(ca) = &tls.client_ca_file {
            cfg = cfg.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        self.tls = Some(cfg);
        Ok(self)
    }

    /// Authenticates callers of `service` per `settings` (see
    /// [`crate::auth`]). A server without it refuses every Casework call.
    pub fn auth(mut self, service: &'static str, settings: &casework_auth::AuthSettings) -> Self {
        self.auth = Some((service, settings.clone()));
        self
    }

    /// Adds a service.
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tonic::codegen::Service<
                tonic::codegen::http::Request<tonic::body::Body>,
                Response = tonic::codegen::http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(svc);
        self
    }

    /// Binds `listen` and serves until `shutdown`; returns the bound address
    /// and the handle that tells when in-flight calls have finished.
    pub async fn serve(self, listen: SocketAddr, shutdown: Shutdown) -> anyhow::Result<Serving> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for gRPC on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let routes = self.routes;
        let mut builder = tonic::transport::Server::builder().trace_fn(|req| {
            let span = tracing::info_span!("grpc", rpc = %req.uri().path());
            let traceparent = req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok());
            casework_telemetry::set_remote_parent(&span, traceparent);
            span
        });
        let layer = match &self.auth {
            Some((service, settings)) => {
                crate::auth::AuthLayer::new(service, settings, addr, self.tls.is_some()).await?
            }
            None => crate::auth::AuthLayer::refusing(),
        };
        if let Some(tls) = self.tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| anyhow::anyhow!("TLS configuration of {listen}: {e}"))?;
        }
        let done = tokio::spawn(async move {
            let r = builder
                .layer(layer)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        });
        Ok(Serving { addr, done })
    }
}

/// How long a stopping service lets in-flight gRPC calls finish before it
/// lets go of its NATS connection (a long poll or a live subscription may
/// never finish on its own).
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// A serving gRPC server.
#[derive(Debug)]
pub struct Serving {
    /// The bound address.
    pub addr: SocketAddr,
    done: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// After shutdown: waits until the server has stopped accepting calls
    /// and the calls in flight have finished, for at most `grace` (then
    /// they are cut, and their callers retry: every mutation is idempotent
    /// or guarded). True when it drained in time.
    pub async fn drained(self, grace: Duration) -> bool {
        let mut done = self.done;
        match tokio::time::timeout(grace, &mut done).await {
            Ok(_) => true,
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "gRPC calls still in flight after the grace period; cutting them"
                );
                done.abort();
                false
            }
        }
    }
}

/// The one mapping from the log's errors to gRPC statuses, shared by every
/// service's API: someone else writing first, or the broker out of reach,
/// is `UNAVAILABLE` (retry with the same idempotency key or request id:
/// nothing is duplicated); a broker that cannot store more (its storage
/// full, a stream at its limits) is `RESOURCE_EXHAUSTED`, saying so; bad
/// input is `INVALID_ARGUMENT`; stored data that cannot be read is
/// `DATA_LOSS`; the rest is `INTERNAL`. Every broker refusal is logged and
/// counted (`casework_broker_refused_total{code}`) so an operator hears of
/// it before the callers do.
pub fn log_status(e: &casework_caselog::Error) -> tonic::Status {
    use casework_caselog::{BrokerTrouble, Error as L};
    use tonic::Status;
    if let L::Rejected { code, description } = e {
        metrics::counter!("casework_broker_refused_total", "code" => code.to_string()).increment(1);
        tracing::error!(code, description, trouble = ?e.broker_trouble(), "the broker refused a request");
    }
    match (e, e.broker_trouble()) {
        (L::Rejected { .. }, Some(BrokerTrouble::OutOfResources)) => {
            Status::resource_exhausted(format!(
                "{e}: the broker cannot store more (its storage is full or the stream is at its limits); an operator must free space or raise the limits (nats-server may need a restart after its disk filled). Retry later with the same idempotency key or request id: nothing is duplicated"
            ))
        }
        (L::Rejected { .. }, Some(BrokerTrouble::NotAvailable)) => Status::unavailable(format!(
            "{e}: JetStream is not available now (a cluster without a leader, or JetStream disabled — a broker disables it when its storage fails, and then needs space freed and a restart); retry later with the same idempotency key or request id"
        )),
        (L::Invalid(_) | L::Misuse(_), _) => Status::invalid_argument(e.to_string()),
        (L::Conflict { .. } | L::Unavailable(_) | L::Nats(_), _) => Status::unavailable(format!(
            "{e}; retry with the same idempotency key or request id"
        )),
        (L::Undecodable { .. }, _) => Status::data_loss(e.to_string()),
        (L::Forbidden { .. }, _) => Status::permission_denied(e.to_string()),
        _ => {
            tracing::error!(error = %e, "log error");
            Status::internal(e.to_string())
        }
    }
}

/// The gRPC status of a decide-append loop that did not finish
/// ([`crate::reconcile::Failure`]): a case that cannot be decided is
/// `FAILED_PRECONDITION`, a transient failure `UNAVAILABLE`.
pub fn failure_status(f: &crate::reconcile::Failure) -> tonic::Status {
    use crate::reconcile::Failure;
    match f {
        Failure::Park(why) => {
            tonic::Status::failed_precondition(format!("the case cannot be decided: {why}"))
        }
        Failure::Retry(why) => tonic::Status::unavailable(format!(
            "{why}; retry with the same idempotency key or request id"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    async fn client(addr: SocketAddr) -> HealthClient<tonic::transport::Channel> {
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        HealthClient::new(ch)
    }

    #[tokio::test]
    async fn shutdown_waits_for_calls_in_flight_then_cuts_them_after_the_grace() {
        // No call in flight: drained at once after shutdown.
        let shutdown = Shutdown::new();
        let serving = GrpcServer::new()
            .serve("127.0.0.1:0".parse().unwrap(), shutdown.clone())
            .await
            .unwrap();
        let mut c = client(serving.addr).await;
        c.check(HealthCheckRequest::default()).await.unwrap();
        shutdown.cancel();
        assert!(serving.drained(Duration::from_secs(10)).await);

        // A call that never ends on its own (a health watch stream) holds
        // the server open after shutdown: the drain waits for it, then
        // gives up after the grace period.
        let shutdown = Shutdown::new();
        let serving = GrpcServer::new()
            .serve("127.0.0.1:0".parse().unwrap(), shutdown.clone())
            .await
            .unwrap();
        let mut c = client(serving.addr).await;
        let mut watch = c
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(watch.message().await.unwrap().is_some(), "first status");
        shutdown.cancel();
        assert!(
            !serving.drained(Duration::from_millis(500)).await,
            "the server waited for the call in flight, to the end of the grace"
        );
    }
}
