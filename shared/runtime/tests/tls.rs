//! TLS on both sides of a service, with a CA generated in the test: the gRPC
//! server answers a client that trusts the CA and refuses one that does not
//! (and a plaintext one); the NATS connection succeeds with the CA and fails
//! without it.

use std::path::{Path, PathBuf};

use casework_runtime::grpc::GrpcServer;
use casework_runtime::options::{NatsSettings, TlsSettings};
use casework_runtime::{Shutdown, nats};
use casework_testkit::NatsServer;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

struct Pki {
    ca_pem: String,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn other_ca() -> String {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.self_signed(&key).unwrap().pem()
}

async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}

async fn tls_channel(addr: &str, ca_pem: &str) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name("localhost"),
        )?
        .connect()
        .await
}

#[tokio::test]
async fn grpc_over_tls_refuses_a_client_without_the_ca() {
    let pki = Pki::new();
    let shutdown = Shutdown::new();
    let tls = TlsSettings {
        cert_file: Some(pki.path("server.pem")),
        key_file: Some(pki.path("server.key")),
        client_ca_file: None,
    };
    let addr = GrpcServer::new()
        .tls(&tls)
        .unwrap()
        .serve("127.0.0.1:0".parse().unwrap(), shutdown.clone())
        .await
        .unwrap()
        .addr
        .to_string();

    let trusted = tls_channel(&addr, &pki.ca_pem)
        .await
        .expect("connects with the CA");
    assert_eq!(health(trusted).await.unwrap(), 1, "SERVING");

    let untrusting = tls_channel(&addr, &other_ca()).await;
    let refused = match untrusting {
        Err(_) => true,
        Ok(ch) => health(ch).await.is_err(),
    };
    assert!(refused, "a client without our CA is refused");

    let plaintext = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(ch) => health(ch).await.is_err(),
    };
    assert!(refused, "a plaintext client is refused");
    shutdown.cancel();
}

fn nats_tls_config(pki: &Pki) -> String {
    let p = |n: &str| pki.path(n).display().to_string();
    format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n}}\n",
        p("server.pem"),
        p("server.key"),
        p("ca.pem")
    )
}

fn settings(url: String, ca: Option<&Path>) -> NatsSettings {
    NatsSettings {
        url,
        tls_ca_file: ca.map(Path::to_owned),
        request_timeout_ms: 2000,
        ..Default::default()
    }
}

#[tokio::test]
async fn nats_over_tls_needs_the_ca() {
    let pki = Pki::new();
    let server = NatsServer::start_with(&nats_tls_config(&pki));
    let url = server.url().replace("nats://", "tls://");
    let client = nats::connect(
        &settings(url.clone(), Some(&pki.path("ca.pem"))),
        "tls-test",
    )
    .await
    .expect("connects with the CA");
    assert!(client.server_info().tls_required);

    std::fs::write(pki.path("other.pem"), other_ca()).unwrap();
    let wrong = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        nats::connect(
            &settings(url, Some(&pki.path("other.pem"))),
            "tls-test-wrong",
        ),
    )
    .await;
    assert!(
        !matches!(wrong, Ok(Ok(_))),
        "a client that does not trust the server's CA is refused"
    );
}
