//! `hot-case`: what one very busy case does to itself and to everyone
//! else. The four services run as release processes (the e2e harness,
//! nats-server's default `sync_interval`), on `long-case`'s catalogue (one
//! manual step nobody completes, so only the callers write). First another
//! tenant's OpenCase is timed alone (2 in flight), as the baseline; then
//! 3,000 `RecordInteraction` calls (scaled) go to one case at 16 in flight,
//! each with its own request id, while the other tenant's OpenCase runs
//! beside them at the same 2 in flight. One `hot-case` line: the hot calls'
//! rate, p50/p99 and failures by status code, the other tenant's OpenCase
//! p50/p99 alone and during, intake's peak memory, the case's length.
//!
//! `hot-case-raw`, after it: the same number of appends to one case on bare
//! JetStream at 16 in flight, each a `last_by_subj` direct get and a
//! publish with the expected last subject sequence, asked again after a
//! conflict (someone else appended first) until it lands; the conflicts are
//! counted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use casework_caselog::JetStreamLog;
use casework_caselog::jetstream::{NatsOptions, connect};
use casework_domain::pb;
use casework_e2e::memory_of;
use casework_intake::proto::OpenCaseRequest;
use casework_intake::proto::intake_client::IntakeClient;
use tokio::sync::Mutex;

use crate::lifecycle::{start_system, stop_system};
use crate::lifecycle_raw;
use crate::long_case::{self, Client};
use crate::report::{percentile, print, scaled};

const HOT_IN_FLIGHT: usize = 16;
const OTHERS_IN_FLIGHT: usize = 2;
const OTHER_TENANT: &str = "bystander";

/// The `p` percentile of `lat` in milliseconds, rounded as the report
/// rounds.
fn percentile_ms(mut lat: Vec<Duration>, p: f64) -> f64 {
    lat.sort();
    (percentile(&lat, p) * 1000.0).round() / 1000.0
}

/// The other tenant's OpenCase, `OTHERS_IN_FLIGHT` at a time, until
/// `stop` says so (or `n` calls when `n` is some): their latencies.
async fn others(
    client: Client,
    n: Option<usize>,
    stop: Arc<AtomicU64>,
    tag: &str,
) -> Vec<Duration> {
    let lat = Arc::new(Mutex::new(Vec::new()));
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..OTHERS_IN_FLIGHT {
        let (mut client, lat, issued, stop) =
            (client.clone(), lat.clone(), issued.clone(), stop.clone());
        let tag = format!("{tag}-{w}");
        tasks.push(tokio::spawn(async move {
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if n.is_some_and(|n| i as usize >= n)
                    || (n.is_none() && stop.load(Ordering::Relaxed) == 1)
                {
                    return;
                }
                let t = Instant::now();
                client
                    .open_case(OpenCaseRequest {
                        tenant: OTHER_TENANT.into(),
                        customer_id: format!("cust-{i}"),
                        channel: pb::Channel::Web as i32,
                        purchase_stage: pb::PurchaseStage::PostPurchase as i32,
                        service_code: long_case::SERVICE.into(),
                        summary: "A bystander's request".into(),
                        idempotency_key: format!("{tag}-{i}"),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("the bystander's OpenCase: {e}"));
                lat.lock().await.push(t.elapsed());
            }
        }));
    }
    for t in tasks {
        t.await.expect("a bystander task");
    }
    Arc::try_unwrap(lat).expect("tasks done").into_inner()
}

/// Runs the scenario: a `hot-case` line, then its `hot-case-raw` twin.
pub async fn hot_case() {
    let dir = casework_testkit::TempDir::new().expect("temporary directory");
    let catalog: PathBuf = dir.path().join("catalog.toml");
    std::fs::write(&catalog, long_case::CATALOG).expect("bench catalogue");
    let sys = start_system(catalog, false).await;
    let admin = connect(&NatsOptions {
        url: sys.nats.url(),
        user: Some("admin".into()),
        password: Some("pw-admin".into()),
        ..Default::default()
    })
    .await
    .expect("admin connects");
    let log = JetStreamLog::new(admin, "bench-hot-case-admin", None);
    let mut client: Client = IntakeClient::new(
        casework_e2e::connect(sys.services["intake"].grpc_url())
            .await
            .expect("gRPC connects"),
    );
    let n = scaled(3_000);
    let baseline_n = scaled(200);

    // Warm-up and the bystander's baseline, alone.
    let (warm, _) = long_case::open_settled(&mut client, &log, "hot-case-warmup").await;
    for i in 0..20 {
        client
            .record_interaction(long_case::interaction(&warm, format!("warm-{i}")))
            .await
            .expect("warm-up interaction");
    }
    let never = Arc::new(AtomicU64::new(0));
    let alone = others(client.clone(), Some(baseline_n), never, "alone").await;

    let (hot, len_before) = long_case::open_settled(&mut client, &log, "hot-case").await;
    let stop = Arc::new(AtomicU64::new(0));
    let bystander = tokio::spawn(others(client.clone(), None, stop.clone(), "during"));
    let issued = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let failures = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..HOT_IN_FLIGHT {
        let (mut client, hot, issued, lat, failures) = (
            client.clone(),
            hot.clone(),
            issued.clone(),
            lat.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = issued.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return;
                }
                let t = Instant::now();
                match client
                    .record_interaction(long_case::interaction(&hot, format!("hot-{i}")))
                    .await
                {
                    Ok(_) => lat.lock().await.push(t.elapsed()),
                    Err(e) => {
                        *failures
                            .lock()
                            .await
                            .entry(format!("{:?}", e.code()))
                            .or_default() += 1;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a hot task");
    }
    let elapsed = start.elapsed();
    stop.store(1, Ordering::Relaxed);
    let during = bystander.await.expect("the bystander");
    let lat = Arc::try_unwrap(lat).expect("tasks done").into_inner();
    let failures = Arc::try_unwrap(failures).expect("tasks done").into_inner();
    let ok = lat.len();
    let hot_key = casework_caselog::CaseKey {
        tenant: casework_domain::Tenant::parse(long_case::TENANT).expect("tenant"),
        case_id: casework_domain::CaseId::parse(&hot).expect("case id"),
    };
    let events_after = casework_caselog::CaseLog::read(&log, &hot_key, 0)
        .await
        .expect("read the hot case")
        .len();
    let intake_peak = sys.services["intake"]
        .pid()
        .and_then(memory_of)
        .map(|m| (m.peak_mib * 10.0).round() / 10.0);
    print(
        "hot-case",
        HOT_IN_FLIGHT,
        lat,
        ok,
        elapsed,
        serde_json::json!({
            "calls": n,
            "failed": failures.values().sum::<u64>(),
            "failures_by_code": failures,
            "events_in_case_before": len_before,
            "events_in_case_after": events_after,
            "rpc": "casework.intake.v1.Intake/RecordInteraction",
            "others_open_case_alone_p50_ms": percentile_ms(alone.clone(), 0.5),
            "others_open_case_alone_p99_ms": percentile_ms(alone, 0.99),
            "others_open_case_during_p50_ms": percentile_ms(during.clone(), 0.5),
            "others_open_case_during_p99_ms": percentile_ms(during.clone(), 0.99),
            "others_open_case_during_n": during.len(),
            "sync_interval": "default",
            "peak_mib_intake": intake_peak,
        }),
    );
    stop_system(sys);

    // The raw twin: the same appends to one case, 16 at a time.
    let (raw_server, _raw_admin) = lifecycle_raw::start_broker(false, 1).await;
    let raw = lifecycle_raw::connect(&raw_server.urls(), "intake").await;
    let payload = lifecycle_raw::payload();
    let case_id = lifecycle_raw::new_case_id();
    lifecycle_raw::append(&raw, &payload, "intake", &case_id, "case_opened", 1, 0).await;
    let len = Arc::new(AtomicU64::new(1));
    let issued = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..HOT_IN_FLIGHT {
        let (raw, payload, case_id, len, issued, conflicts, lat) = (
            raw.clone(),
            payload.clone(),
            case_id.clone(),
            len.clone(),
            issued.clone(),
            conflicts.clone(),
            lat.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                if issued.fetch_add(1, Ordering::Relaxed) as usize >= n {
                    return;
                }
                let t = Instant::now();
                loop {
                    let head = lifecycle_raw::head_of(&raw, &case_id).await;
                    let seq = len.load(Ordering::Relaxed) + 1;
                    match lifecycle_raw::try_append(
                        &raw,
                        &payload,
                        "intake",
                        &case_id,
                        "interaction_recorded",
                        seq,
                        head,
                    )
                    .await
                    {
                        Ok(_) => {
                            len.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(_) => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat.lock().await.push(t.elapsed());
            }
        }));
    }
    for t in tasks {
        t.await.expect("a raw task");
    }
    let elapsed = start.elapsed();
    let lat = Arc::try_unwrap(lat).expect("tasks done").into_inner();
    print(
        "hot-case-raw",
        HOT_IN_FLIGHT,
        lat,
        n,
        elapsed,
        serde_json::json!({
            "conflicts": conflicts.load(Ordering::Relaxed),
            "op": "direct get last_by_subj + publish with expected last subject sequence, again after a conflict",
            "payload_bytes": lifecycle_raw::PAYLOAD_BYTES,
            "sync_interval": "default",
        }),
    );
    drop(raw_server);
}
