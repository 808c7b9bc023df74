//! `open-case`: OpenCase per second and latency over gRPC, with 64
//! concurrent clients (one tonic channel each) against the intake service
//! running in-process on a real nats-server (`sync_interval: always`). Each
//! call validates, appends case_opened + promise_made atomically and waits
//! until the replica's read model shows the case (read-your-writes); the
//! closing reconciler runs alongside, as in production.
//!
//! Twins: `open-case-plaintext` (personal data not encrypted: the cost of
//! crypto-shredding per OpenCase) and `open-case-new-customers` (every case
//! a new customer, so each call also makes a data key).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use casework_intake::proto::{self, intake_client::IntakeClient};
use casework_privacy::settings::PrivacyMode;
use casework_testkit::NatsServer;

use crate::report;

const CONCURRENCY: usize = 64;

fn request(i: usize, customers: usize) -> proto::OpenCaseRequest {
    proto::OpenCaseRequest {
        tenant: "bench".into(),
        customer_id: format!("cust-{}", i % customers),
        channel: 5,        // CHANNEL_WEB
        purchase_stage: 3, // PURCHASE_STAGE_POST_PURCHASE
        service_code: "refund".into(),
        summary: "Returned the parcel, please refund".into(),
        attributes: [("order".to_owned(), format!("B-{i}"))].into(),
        idempotency_key: format!("bench-{i}"),
        opened_by: None,
        ..Default::default()
    }
}

/// Runs the scenario and prints its line: 1,000 returning customers,
/// personal data encrypted (the default).
pub async fn open_case() {
    run("open-case", PrivacyMode::Encrypt, 1000).await
}

/// The same with personal data in plaintext: what encryption costs.
pub async fn open_case_plaintext() {
    run("open-case-plaintext", PrivacyMode::Plaintext, 1000).await
}

/// Every case a new customer: each OpenCase also makes the customer's data
/// key (two more appends to the KEYS stream).
pub async fn open_case_new_customers() {
    run("open-case-new-customers", PrivacyMode::Encrypt, usize::MAX).await
}

async fn run(name: &'static str, mode: PrivacyMode, customers: usize) {
    let nats = NatsServer::start();
    let mut options = casework_intake::default_options();
    options.personal_data.mode = mode;
    options.nats.url = nats.url();
    options.data_dir = nats.scratch_dir().join("intake");
    options.grpc_listen = "127.0.0.1:0".parse().expect("address");
    // The bench measures the service, not its per-tenant rate limit.
    options.service.tenant_writes_per_minute = 0;
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    options.http_listen = format!("127.0.0.1:{http_port}").parse().expect("address");
    let shutdown = casework_intake::Shutdown::new();
    let running = casework_intake::start(options, shutdown.clone())
        .await
        .expect("intake starts");
    let url = format!("http://{}", running.grpc);

    let n = report::scaled(20_000);
    const WARMUP_PER_CLIENT: usize = 4;
    let next = Arc::new(AtomicUsize::new(0));
    // Every client connects and warms up, then all start together with the
    // clock.
    let barrier = Arc::new(tokio::sync::Barrier::new(CONCURRENCY + 1));
    let mut tasks = Vec::new();
    for c in 0..CONCURRENCY {
        let (next, url, barrier) = (next.clone(), url.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = IntakeClient::connect(url).await.expect("gRPC connects");
            for w in 0..WARMUP_PER_CLIENT {
                client
                    .open_case(request(n + c * WARMUP_PER_CLIENT + w, customers))
                    .await
                    .expect("OpenCase (warm-up)");
            }
            barrier.wait().await;
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return latencies;
                }
                let t = Instant::now();
                client
                    .open_case(request(i, customers))
                    .await
                    .expect("OpenCase");
                latencies.push(t.elapsed());
            }
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut latencies: Vec<Duration> = Vec::with_capacity(n);
    for t in tasks {
        latencies.extend(t.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    report::print(
        name,
        CONCURRENCY,
        latencies,
        n,
        elapsed,
        serde_json::json!({
            "rpc": "casework.intake.v1.Intake/OpenCase",
            "events_per_op": 2,
            "sync_interval": "always",
            "warmup_ops": CONCURRENCY * WARMUP_PER_CLIENT,
            "personal_data": match mode {
                PrivacyMode::Encrypt => "encrypt",
                PrivacyMode::Plaintext => "plaintext",
            },
            "customers": if customers == usize::MAX { "every case a new one".to_owned() } else { customers.to_string() },
        }),
    );
    shutdown.cancel();
    let _ = running.wait().await;
}
