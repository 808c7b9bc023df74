//! `auth`: what authentication costs per call, isolated from everything
//! else — the gRPC edge's layer (casework_runtime::auth) admitting a call
//! with a development EdDSA bearer token (signature, issuer, audience,
//! expiry, roles) against the same layer with authentication off
//! (`auth-off`, the twin), in one process, one call at a time. The inner
//! service answers at once, so the difference is the layer's work.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use casework_auth::dev::DevIssuer;
use casework_auth::{AuthMode, AuthSettings, Role};
use casework_runtime::auth::AuthLayer;
use tower::{Layer, Service, ServiceExt};

use crate::report::{print, scaled};

const RPC: &str = "/casework.intake.v1.Intake/GetCase";

async fn run(scenario: &str, layer: &AuthLayer, token: &str, n: usize) {
    let inner = tower::service_fn(|_req: http::Request<()>| async {
        Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
    });
    let mut svc = layer.layer(inner);
    let header = format!("Bearer {token}");
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let req = http::Request::builder()
            .uri(RPC)
            .header("authorization", header.as_str())
            .body(())
            .expect("request");
        let t = Instant::now();
        let resp = svc
            .ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("call");
        lat.push(t.elapsed());
        assert!(
            resp.headers().get("grpc-status").is_none(),
            "{scenario}: the call was refused: {:?}",
            resp.headers()
        );
    }
    print(
        scenario,
        1,
        lat,
        n,
        start.elapsed(),
        serde_json::json!({ "unit": "calls admitted", "token": "EdDSA (dev issuer)" }),
    );
}

/// Runs `auth-off` then `auth`.
pub async fn auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let issuer = DevIssuer::load_or_create(dir.path()).expect("dev issuer");
    let token = issuer
        .mint(
            "bench",
            None,
            &["acme"],
            &[Role::Agent],
            Duration::from_secs(3600),
        )
        .expect("token");
    let listen = "127.0.0.1:0".parse().expect("addr");
    let n = scaled(20_000);
    let off = AuthLayer::new(
        "bench",
        &AuthSettings {
            mode: AuthMode::Off,
            ..Default::default()
        },
        listen,
        false,
    )
    .await
    .expect("layer");
    run("auth-off", &off, &token, n).await;
    let on = AuthLayer::new("bench", &issuer.settings(), listen, false)
        .await
        .expect("layer");
    run("auth", &on, &token, n).await;
}
