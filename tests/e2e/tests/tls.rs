//! The intake service with TLS on both sides, on a CA generated in the test:
//! it connects to a TLS-only nats-server with its own credentials and the
//! CA, serves gRPC over TLS, answers a client that trusts the CA, and
//! refuses a client that does not (and a plaintext one).

use casework_e2e::nats_users;
use casework_runtime::options::{NatsSettings, TlsSettings};
use casework_testkit::NatsServer;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health_check::check;

mod tonic_health_check {
    use tonic::transport::Channel;
    /// A gRPC health check of intake's service name through a raw client.
    pub async fn check(channel: Channel) -> Result<(), tonic::Status> {
        let mut c = casework_proto::intake::v1::intake_client::IntakeClient::new(channel);
        // Any answer from the service (here NOT_FOUND for an unknown case)
        // proves the TLS session carried the call.
        match c
            .get_case(casework_proto::intake::v1::GetCaseRequest {
                tenant: "acme".into(),
                case_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2B".into(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(s),
        }
    }
}

fn ca() -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = params.self_signed(&key).unwrap().pem();
    (params, key, pem)
}

#[tokio::test]
async fn intake_over_tls_to_clients_and_to_nats() {
    let dir = tempfile_dir();
    let (ca_params, ca_key, ca_pem) = ca();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let path = |n: &str| dir.join(n);
    std::fs::write(path("ca.pem"), &ca_pem).unwrap();
    std::fs::write(path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();

    let nats = NatsServer::start_with(&format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n{}",
        path("cert.pem").display().to_string(),
        path("key.pem").display().to_string(),
        nats_users()
    ));
    let mut o = casework_intake::default_options();
    o.data_dir = dir.join("intake");
    o.grpc_listen = "127.0.0.1:0".parse().unwrap();
    o.http_listen = "127.0.0.1:0".parse().unwrap();
    o.nats = NatsSettings {
        url: nats.url().replace("nats://", "tls://"),
        user: Some("intake".into()),
        password: Some("pw-intake".into()),
        tls_ca_file: Some(path("ca.pem")),
        ..Default::default()
    };
    o.tls = TlsSettings {
        cert_file: Some(path("cert.pem")),
        key_file: Some(path("key.pem")),
        client_ca_file: None,
    };
    let shutdown = casework_runtime::Shutdown::new();
    let running = casework_intake::start(o.clone(), shutdown.clone())
        .await
        .expect("intake starts over TLS to NATS");
    let addr = running.grpc;

    let trusted = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("a client with the CA connects");
    check(trusted).await.expect("and is served");

    let (_, _, other_pem) = ca();
    let untrusting = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&other_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await;
    let refused = match untrusting {
        Err(_) => true,
        Ok(ch) => check(ch).await.is_err(),
    };
    assert!(refused, "a client without the CA is refused");
    let plaintext = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(ch) => check(ch).await.is_err(),
    };
    assert!(refused, "a plaintext client is refused");

    // casectl: with --ca-file it is served (NOT_FOUND for the unknown
    // case proves the call went through); without it, with another CA, or
    // with a CA on a plaintext URL, it stops with a usage or reach error.
    let https = format!("https://localhost:{}", addr.port());
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, &other_pem).unwrap();
    let show = |url: String, ca: Option<std::path::PathBuf>| async move {
        casectl::intake::show(
            &casectl::Target::new(&url, ca.as_deref()),
            Some("acme"),
            casectl::CaseArg {
                case: "01JD8X3V5R6M2Q4T7W9Y0Z1A2B".into(),
            },
        )
        .await
    };
    match show(https.clone(), Some(path("ca.pem"))).await {
        Err(casectl::Error::NotFound(_)) => {}
        other => panic!("casectl with the CA reaches intake: {other:?}"),
    }
    match show(https.clone(), None).await {
        Err(e @ casectl::Error::Usage(_)) => {
            assert!(e.to_string().contains("--ca-file"), "{e}");
            assert_eq!(e.exit_code(), 2);
        }
        other => panic!("https without a CA is a usage error: {other:?}"),
    }
    match show(https, Some(other_ca)).await {
        Err(e @ casectl::Error::Unreachable(_)) => assert_eq!(e.exit_code(), 3),
        other => panic!("casectl with another CA is refused: {other:?}"),
    }
    match show(
        format!("http://localhost:{}", addr.port()),
        Some(path("ca.pem")),
    )
    .await
    {
        Err(e @ casectl::Error::Usage(_)) => assert!(e.to_string().contains("https://"), "{e}"),
        other => panic!("a CA on a plaintext URL is a usage error: {other:?}"),
    }
    shutdown.cancel();
    running.wait().await.unwrap();

    // Without the CA, intake cannot reach the TLS-only broker at all.
    let mut no_ca = o;
    no_ca.data_dir = dir.join("intake-no-ca");
    no_ca.nats.tls_ca_file = None;
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        casework_intake::start(no_ca, casework_runtime::Shutdown::new()),
    )
    .await;
    assert!(!matches!(r, Ok(Ok(_))), "no start without the broker's CA");
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("casework-e2e-tls-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
