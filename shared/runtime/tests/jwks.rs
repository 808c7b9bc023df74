//! The issuer's keys from an `https://` JWKS URL (casework_runtime::jwks),
//! served by a real HTTPS server in the test under a CA made here: tokens
//! verify with the fetched keys (EdDSA and RS256), a key the issuer adds
//! later is fetched when a token first names it, made-up key ids do not
//! turn into a fetch each, an issuer that goes down keeps the keys held,
//! and a service whose issuer cannot be reached (or is not trusted) does
//! not start.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use casework_auth::dev::{DEV_AUDIENCE, DEV_ISSUER, DevIssuer};
use casework_auth::{AuthMode, AuthSettings, Caller, Role};
use casework_runtime::auth::AuthLayer;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, Service, ServiceExt};

const RPC: &str = "/casework.intake.v1.Intake/GetCase";

/// An HTTPS server answering every GET with the current `body` (or 503
/// while `down`), counting requests.
struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    hits: Arc<AtomicUsize>,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl JwksServer {
    async fn start(body: String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, d, h) = (body.clone(), down.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, b, d, h) = (acceptor.clone(), b.clone(), d.clone(), h.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, text) = if d.load(Ordering::SeqCst) {
                        ("503 Service Unavailable", String::new())
                    } else {
                        ("200 OK", b.lock().unwrap().clone())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            addr,
            body,
            down,
            hits,
            ca,
            _dir: dir,
        }
    }

    fn settings(&self) -> AuthSettings {
        AuthSettings {
            mode: AuthMode::Required,
            jwks_url: Some(format!("https://localhost:{}/jwks.json", self.addr.port())),
            jwks_ca_file: Some(self.ca.clone()),
            issuer: Some(DEV_ISSUER.into()),
            audience: Some(DEV_AUDIENCE.into()),
            ..Default::default()
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn keys_of(issuers: &[&DevIssuer]) -> String {
    let keys: Vec<serde_json::Value> = issuers
        .iter()
        .flat_map(|i| i.jwks()["keys"].as_array().unwrap().clone())
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

fn issuer() -> (DevIssuer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (DevIssuer::load_or_create(dir.path()).unwrap(), dir)
}

fn token(i: &DevIssuer) -> String {
    i.mint(
        "dana",
        None,
        &["acme"],
        &[Role::Agent],
        Duration::from_secs(300),
    )
    .unwrap()
}

/// Calls [`RPC`] through `layer` with `token`: the caller's subject, or
/// the refusal's message.
async fn call(layer: &AuthLayer, token: &str) -> Result<String, String> {
    let inner = tower::service_fn(|req: http::Request<()>| async move {
        let caller = req.extensions().get::<Caller>().cloned().expect("a caller");
        let mut resp = http::Response::new(tonic::body::Body::empty());
        resp.headers_mut()
            .insert("x-subject", caller.principal.subject.parse().unwrap());
        Ok::<_, Infallible>(resp)
    });
    let mut svc = layer.layer(inner);
    let req = http::Request::builder()
        .uri(RPC)
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let resp = svc.ready().await.unwrap().call(req).await.unwrap();
    match resp.headers().get("x-subject") {
        Some(s) => Ok(s.to_str().unwrap().to_owned()),
        None => Err(tonic::Status::from_header_map(resp.headers())
            .map(|s| s.message().to_owned())
            .unwrap_or_default()),
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn keys_come_from_the_url_and_a_rotated_key_is_fetched_when_first_used() {
    let (a, _da) = issuer();
    let (b, _db) = issuer();
    let server = JwksServer::start(keys_of(&[&a])).await;
    let layer = AuthLayer::new("intake", &server.settings(), loopback(), false)
        .await
        .unwrap();
    assert_eq!(server.hits(), 1, "fetched once at start");
    assert_eq!(call(&layer, &token(&a)).await.unwrap(), "dana");
    assert_eq!(server.hits(), 1, "a known key needs no fetch");

    // B's key is not published: its token is refused (and, so soon after
    // the fetch at start, fetches nothing).
    let refused = call(&layer, &token(&b)).await.unwrap_err();
    assert!(refused.contains("does not hold"), "{refused}");
    assert_eq!(server.hits(), 1);

    // The issuer rotates: B's key is published. Once the interval has
    // passed, B's first token is admitted (one fetch, then verified).
    *server.body.lock().unwrap() = keys_of(&[&a, &b]);
    tokio::time::sleep(casework_auth::JWKS_RELOAD_AT_MOST_EVERY).await;
    assert_eq!(call(&layer, &token(&b)).await.unwrap(), "dana");
    assert_eq!(server.hits(), 2);

    // Tokens naming a key nobody published, right after, do not each
    // cause a fetch.
    let (c, _dc) = issuer();
    for _ in 0..20 {
        assert!(call(&layer, &token(&c)).await.is_err());
    }
    assert_eq!(server.hits(), 2, "at most one fetch per interval");

    // The issuer goes down: the fetch fails and the keys held still verify.
    server.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(casework_auth::JWKS_RELOAD_AT_MOST_EVERY).await;
    assert!(call(&layer, &token(&c)).await.is_err());
    assert_eq!(server.hits(), 3, "the failed fetch was tried");
    assert_eq!(call(&layer, &token(&a)).await.unwrap(), "dana");
    assert_eq!(call(&layer, &token(&b)).await.unwrap(), "dana");
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_fetched_keys() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    // RS256: a fixture key (ring cannot generate RSA keys); ES256: a P-256
    // key made here.
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut jwks: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("rsa-test-jwks.json")).unwrap(),
    )
    .unwrap();
    let rsa_pem = std::fs::read(fixtures.join("rsa-test-key.pem")).unwrap();
    let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = ec.public_key_raw();
    assert_eq!(
        (point.len(), point[0]),
        (65, 4),
        "an uncompressed P-256 point"
    );
    jwks["keys"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "ec-test-1",
            "x": b64(&point[1..33]), "y": b64(&point[33..]),
        }));
    let server = JwksServer::start(jwks.to_string()).await;
    let layer = AuthLayer::new("intake", &server.settings(), loopback(), false)
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mint = |alg: jsonwebtoken::Algorithm, kid: &str, aud: &str| {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.into());
        let claims = serde_json::json!({
            "iss": DEV_ISSUER, "aud": aud, "sub": format!("{alg:?}"), "iat": now, "nbf": now,
            "exp": now + 300, "casework/tenants": ["acme"], "casework/roles": ["agent"],
        });
        let key = match alg {
            jsonwebtoken::Algorithm::RS256 => {
                jsonwebtoken::EncodingKey::from_rsa_pem(&rsa_pem).unwrap()
            }
            _ => jsonwebtoken::EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
        };
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    use jsonwebtoken::Algorithm::{ES256, RS256};
    assert_eq!(
        call(&layer, &mint(RS256, "rsa-test-1", DEV_AUDIENCE))
            .await
            .unwrap(),
        "RS256"
    );
    assert_eq!(
        call(&layer, &mint(ES256, "ec-test-1", DEV_AUDIENCE))
            .await
            .unwrap(),
        "ES256"
    );
    let wrong = call(&layer, &mint(RS256, "rsa-test-1", "someone-else"))
        .await
        .unwrap_err();
    assert!(wrong.contains("audience"), "{wrong}");
    // A token that names the RSA key but is signed with the EC one.
    let swapped = call(&layer, &mint(ES256, "rsa-test-1", DEV_AUDIENCE))
        .await
        .unwrap_err();
    assert!(swapped.contains("its key is for"), "{swapped}");
}

#[tokio::test]
async fn a_service_whose_issuer_is_unreachable_or_untrusted_does_not_start() {
    let (a, _da) = issuer();
    let server = JwksServer::start(keys_of(&[&a])).await;

    // Served by a certificate its CA file does not vouch for.
    let other = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(
        other.path().join("ca.pem"),
        p.self_signed(&key).unwrap().pem(),
    )
    .unwrap();
    let untrusted = AuthSettings {
        jwks_ca_file: Some(other.path().join("ca.pem")),
        ..server.settings()
    };
    let e = AuthLayer::new("intake", &untrusted, loopback(), false)
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("cannot fetch auth.jwks_url"),
        "{e:#}"
    );

    // An issuer answering an error, and one that is not a JWKS.
    server.down.store(true, Ordering::SeqCst);
    let e = AuthLayer::new("intake", &server.settings(), loopback(), false)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("503"), "{e:#}");
    server.down.store(false, Ordering::SeqCst);
    *server.body.lock().unwrap() = r#"{"keys": []}"#.into();
    let e = AuthLayer::new("intake", &server.settings(), loopback(), false)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("holds no keys"), "{e:#}");

    // Nothing listening.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let gone = AuthSettings {
        jwks_url: Some(format!("https://localhost:{port}/jwks.json")),
        ..server.settings()
    };
    let e = AuthLayer::new("intake", &gone, loopback(), false)
        .await
        .unwrap_err();
    assert!(
        format!("{e:#}").contains("cannot fetch auth.jwks_url"),
        "{e:#}"
    );
}

#[test]
fn only_https_urls_are_accepted() {
    let with = |url: &str| AuthSettings {
        mode: AuthMode::Required,
        jwks_url: Some(url.into()),
        issuer: Some("i".into()),
        audience: Some("a".into()),
        ..Default::default()
    };
    for bad in [
        "http://login.example.com/jwks.json",
        "https://",
        "login.example.com",
    ] {
        let problems = with(bad).validate();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("is not an https:// URL")),
            "{bad}: {problems:?}"
        );
    }
    assert!(
        with("https://login.example.com/.well-known/jwks.json")
            .validate()
            .is_empty()
    );
    let both = AuthSettings {
        jwks_file: Some("/etc/jwks.json".into()),
        ..with("https://login.example.com/jwks.json")
    };
    assert!(both.validate().iter().any(|p| p.contains("both set")));
}
