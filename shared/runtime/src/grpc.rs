//! The gRPC server of a service: its own services plus the standard health
//! service (`grpc.health.v1`) and reflection, with graceful shutdown. Every
//! call runs in a `grpc` span whose parent is the caller's W3C
//! `traceparent` metadata when it sends one, so a case opened by a traced
//! caller continues the caller's trace.

use std::net::SocketAddr;

use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::Shutdown;

/// A gRPC server being assembled.
#[derive(Debug)]
pub struct GrpcServer {
    routes: Routes,
    tls: Option<tonic::transport::ServerTlsConfig>,
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

    /// Binds `listen` and serves until `shutdown`; returns the bound address.
    pub async fn serve(self, listen: SocketAddr, shutdown: Shutdown) -> anyhow::Result<SocketAddr> {
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
        if let Some(tls) = self.tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| anyhow::anyhow!("TLS configuration of {listen}: {e}"))?;
        }
        tokio::spawn(async move {
            let r = builder
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        });
        Ok(addr)
    }
}
