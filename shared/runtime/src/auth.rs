//! Authentication at the gRPC edge: a tower layer in front of every
//! Casework service of a server (health and reflection stay open) that
//! proves who is calling — a bearer token or a mapped client certificate
//! (`casework_auth::Verifier`) — checks that the caller holds the role the
//! RPC needs somewhere ([`casework_auth::required_role`]), and hands the
//! [`Caller`] to the handler, which checks the tenant. A refusal is
//! answered here, before the request is decoded, counted and logged
//! without the token. A handler that panics is answered here too, INTERNAL
//! with the reason, and the service goes on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use casework_auth::{AuthMode, AuthSettings, Caller, Principal, Refusal, Verifier, required_role};
use futures::FutureExt;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::jwks::JwksSource;

#[derive(Debug)]
struct Core {
    service: &'static str,
    /// `None`: authentication is off.
    verifier: Option<Arc<Verifier>>,
    /// Where the verifier's keys come from, when from a URL.
    jwks: Option<Arc<JwksSource>>,
    /// False on a plaintext listener that is not loopback.
    bearer_allowed: bool,
}

/// The layer (cheap to clone).
#[derive(Debug, Clone)]
pub struct AuthLayer(Arc<Core>);

impl AuthLayer {
    /// The layer of `service` per `settings`, for a listener on `listen`
    /// with or without TLS. Reads (or fetches) the JWKS now.
    pub async fn new(
        service: &'static str,
        settings: &AuthSettings,
        listen: SocketAddr,
        tls: bool,
    ) -> anyhow::Result<Self> {
        let mut jwks = None;
        let verifier = match settings.mode {
            AuthMode::Off => {
                tracing::warn!(
                    service,
                    %listen,
                    "authentication is off (auth.mode = off): any caller acts for any tenant; set auth.mode = required with an issuer's JWKS for anything but local development"
                );
                None
            }
            AuthMode::Required => {
                let v = Arc::new(Verifier::new(settings.clone()).map_err(|e| anyhow::anyhow!(e))?);
                if let Some(source) = JwksSource::new(service, settings)? {
                    let source = Arc::new(source);
                    source.load(&v).await?;
                    source.spawn_refresh(&v, Duration::from_secs(settings.jwks_refresh_seconds));
                    jwks = Some(source);
                }
                Some(v)
            }
        };
        Ok(Self(Arc::new(Core {
            service,
            verifier,
            jwks,
            bearer_allowed: tls || listen.ip().is_loopback(),
        })))
    }

    /// A layer that refuses every Casework call (a server that was never
    /// told how to authenticate fails closed).
    pub fn refusing() -> Self {
        Self(Arc::new(Core {
            service: "unconfigured",
            verifier: Some(Arc::new(
                Verifier::new(AuthSettings {
                    mode: AuthMode::Required,
                    ..Default::default()
                })
                .expect("no file to read"),
            )),
            jwks: None,
            bearer_allowed: false,
        }))
    }

    /// The JWKS source to ask first, when `req` carries a token whose key
    /// the verifier does not hold.
    fn unknown_key<B>(&self, req: &http::Request<B>) -> Option<(Arc<JwksSource>, Arc<Verifier>)> {
        let source = self.0.jwks.as_ref()?;
        let verifier = self.0.verifier.as_ref()?;
        let header = req.headers().get("authorization")?.to_str().ok();
        (!verifier.knows_key_of(header)).then(|| (source.clone(), verifier.clone()))
    }

    fn admit<B>(&self, req: &mut http::Request<B>) -> Result<(), tonic::Status> {
        let core = &self.0;
        let Some(role) = required_role(req.uri().path()) else {
            return Ok(());
        };
        let refuse = |r: Refusal, subject: Option<&str>| {
            r.record(core.service, subject);
            tonic::Status::from(r)
        };
        let principal = match &core.verifier {
            None => Principal::unchecked(),
            Some(v) => {
                let header = match req.headers().get("authorization") {
                    None => None,
                    Some(h) => Some(h.to_str().map_err(|_| {
                        refuse(
                            Refusal::Unauthenticated(
                                "the authorization metadata is not text".into(),
                            ),
                            None,
                        )
                    })?),
                };
                if header.is_some() && !core.bearer_allowed {
                    return Err(refuse(
                        Refusal::Unauthenticated(
                            "bearer tokens are refused on a plaintext listener that is not loopback: configure tls (tls.cert_file, tls.key_file) so tokens are not sent in the clear".into(),
                        ),
                        None,
                    ));
                }
                let identities = peer_identities(req.extensions());
                v.authenticate(header, &identities)
                    .map_err(|r| refuse(r, None))?
            }
        };
        if !principal.may_somewhere(role) {
            return Err(refuse(
                Refusal::PermissionDenied {
                    subject: principal.subject.clone(),
                    role,
                    tenant: "any tenant".into(),
                },
                Some(&principal.subject),
            ));
        }
        req.extensions_mut().insert(Caller {
            principal: Arc::new(principal),
            role,
            service: core.service,
        });
        Ok(())
    }
}

/// The identities of a verified client certificate (URI SANs, DNS SANs,
/// then the subject CN); none without TLS or a certificate.
fn peer_identities(ext: &http::Extensions) -> Vec<String> {
    let Some(certs) = ext
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
    else {
        return Vec::new();
    };
    let Some(leaf) = certs.first() else {
        return Vec::new();
    };
    certificate_identities(leaf.as_ref())
}

/// URI SANs, DNS SANs and the subject CN of a DER certificate.
pub fn certificate_identities(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => out.push((*u).to_owned()),
                GeneralName::DNSName(d) => out.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            out.push(s.to_owned());
        }
    }
    out
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service the layer wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let service = self.layer.0.service;
        let rpc = req.uri().path().to_owned();
        Box::pin(
            std::panic::AssertUnwindSafe(self.admit_and_call(req))
                .catch_unwind()
                .map(move |r| match r {
                    Ok(r) => r.map(|resp| undecodable_is_invalid_argument(&rpc, resp)),
                    Err(p) => Ok(panicked(service, &rpc, p.as_ref())),
                }),
        )
    }
}

/// A request body that does not decode as the RPC's message (bytes that
/// are not Protobuf, a string field that is not UTF-8, no message at all)
/// is the caller's mistake: tonic answers INTERNAL, which tells a client
/// the server failed and invites retrying the same bytes. It is answered
/// INVALID_ARGUMENT saying what was wrong instead.
fn undecodable_is_invalid_argument(
    rpc: &str,
    resp: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    // Only a trailers-only answer carries its status in the headers; a
    // served call's status comes later, in the trailers.
    if !resp.headers().contains_key("grpc-status") {
        return resp;
    }
    match tonic::Status::from_header_map(resp.headers()) {
        Some(s)
            if s.code() == tonic::Code::Internal
                && (s.message().starts_with("failed to decode Protobuf message")
                    || s.message() == "Missing request message.") =>
        {
            tonic::Status::invalid_argument(format!(
                "the request is not a valid {rpc} message ({}): send the message the service's proto defines, with every string field UTF-8",
                s.message()
            ))
            .into_http()
        }
        _ => resp,
    }
}

/// The answer to a call whose handler panicked: INTERNAL saying so (the
/// panic is logged and counted), instead of a reset stream the client can
/// only report as CANCELLED.
fn panicked(
    service: &'static str,
    rpc: &str,
    p: &(dyn std::any::Any + Send),
) -> http::Response<tonic::body::Body> {
    let why = crate::panic_message(p);
    metrics::counter!("casework_grpc_panics_total", "service" => service).increment(1);
    tracing::error!(service, rpc, panic = why, "a call's handler panicked");
    tonic::Status::internal(format!(
        "{service} failed while answering {rpc} ({why}); it is logged — if it repeats for the same case, the service's store may be damaged"
    ))
    .into_http()
}

impl<S: Clone> AuthService<S> {
    fn admit_and_call<B>(
        &mut self,
        mut req: http::Request<B>,
    ) -> futures::future::BoxFuture<'static, Result<S::Response, S::Error>>
    where
        S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        B: Send + 'static,
    {
        if let Some((source, verifier)) = self.layer.unknown_key(&req) {
            // The issuer may have rotated its keys: fetch them, then admit.
            // The service that was made ready is the one that is called.
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let layer = self.layer.clone();
            return Box::pin(async move {
                source.refresh_for_unknown_key(&verifier).await;
                match layer.admit(&mut req) {
                    Ok(()) => inner.call(req).await,
                    Err(status) => Ok(status.into_http()),
                }
            });
        }
        match self.layer.admit(&mut req) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => Box::pin(futures::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// intake's layer with authentication off, on loopback.
    async fn open_layer() -> AuthLayer {
        AuthLayer::new(
            "intake",
            &AuthSettings::default(),
            "127.0.0.1:0".parse().unwrap(),
            false,
        )
        .await
        .unwrap()
    }

    /// A call of intake's `rpc`.
    fn call(rpc: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(format!("/casework.intake.v1.Intake/{rpc}"))
            .body(())
            .unwrap()
    }

    /// Calls intake's `rpc` through `svc`; the status the answer carries in
    /// its headers (none for a call served as usual).
    async fn status_of<S>(svc: &mut S, rpc: &str) -> Option<tonic::Status>
    where
        S: tower::Service<http::Request<()>, Response = http::Response<tonic::body::Body>>,
        S::Error: std::fmt::Debug,
    {
        use tower::ServiceExt;
        let resp = svc.ready().await.unwrap().call(call(rpc)).await.unwrap();
        tonic::Status::from_header_map(resp.headers())
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_answered_internal_and_the_service_goes_on() {
        use tower::Layer;
        let layer = open_layer().await;
        let inner = tower::service_fn(|req: http::Request<()>| async move {
            assert!(
                req.uri().path().ends_with("/GetCase"),
                "redb: invalid page type byte 167"
            );
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut svc = layer.layer(inner);
        let status = status_of(&mut svc, "ListCases")
            .await
            .expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(
            status.message().contains("invalid page type byte"),
            "{status:?}"
        );
        // The next call is served as usual.
        assert!(status_of(&mut svc, "GetCase").await.is_none());
    }

    #[tokio::test]
    async fn an_undecodable_request_is_invalid_argument_not_internal() {
        use tower::Layer;
        let layer = open_layer().await;
        // What tonic's Protobuf codec answers for a string field that is
        // not UTF-8: INTERNAL with prost's error (the real path, through a
        // server, is intake's test `undecodable_requests_are_invalid_argument`).
        let bad: &[u8] = &[0x0a, 0x02, 0xff, 0xfe];
        let decode = tonic::Status::internal(
            <casework_proto::intake::v1::OpenCaseRequest as prost::Message>::decode(bad)
                .unwrap_err()
                .to_string(),
        );
        let inner = tower::service_fn(move |req: http::Request<()>| {
            let answer = if req.uri().path().ends_with("/OpenCase") {
                decode.clone().into_http()
            } else {
                tonic::Status::internal("the store failed").into_http()
            };
            async move { Ok::<_, std::convert::Infallible>(answer) }
        });
        let mut svc = layer.layer(inner);
        let status = status_of(&mut svc, "OpenCase")
            .await
            .expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("UTF-8"), "{status:?}");
        // A server's own failure stays INTERNAL.
        let status = status_of(&mut svc, "GetCase").await.expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Internal);
    }

    #[test]
    fn a_certificate_names_its_uri_and_dns_sans_and_its_cn() {
        let mut params =
            rcgen::CertificateParams::new(vec!["worker.ops.example".to_owned()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://corp/ns/ops/sa/worker").unwrap(),
        ));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "worker-a");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ids = certificate_identities(cert.der());
        assert_eq!(
            ids,
            vec![
                "worker.ops.example".to_owned(),
                "spiffe://corp/ns/ops/sa/worker".to_owned(),
                "worker-a".to_owned()
            ]
        );
        assert!(certificate_identities(b"not a certificate").is_empty());
    }
}
