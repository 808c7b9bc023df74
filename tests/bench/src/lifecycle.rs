//! `lifecycle`: whole cases per second and open-to-closed latency with the
//! four services as separate release processes (the e2e harness: each with
//! its own NATS user, data directory and ports) against a real nats-server.
//! A case is OpenCase over gRPC → `case_opened` + `promise_made` → 3
//! simulated steps of zero latency → `promise_kept` → `customer_notified` +
//! `case_closed`; its latency runs from just before the OpenCase call to the
//! moment its `case_closed` is seen on a tail of the CASES stream (admin
//! user). Four results: 1 and 64 cases in flight, each with nats-server's
//! default `sync_interval` and with `always`, each on a fresh system so the
//! peak memory (VmHWM) of every service process and of nats-server, printed
//! on the line, belongs to that run alone (plus its warm-up). Each result is
//! preceded by its `lifecycle-raw` twin (the same 12 appends per case on
//! bare JetStream, see `lifecycle_raw`), so the ratio is our overhead.
//! Then the same on a 3-node JetStream cluster on loopback (R3 streams,
//! `sync_interval: always`: the production topology), also alone as
//! `lifecycle-cluster`. Each line carries the broker's messages in and out
//! per case (from `/varz`, summed over nodes), to compare the two.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use casework_caselog::jetstream::{NatsOptions, connect};
use casework_caselog::{CaseLog, JetStreamLog};
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{CaseId, Tenant};
use casework_e2e::{SERVICES, System, memory_of};
use casework_intake::proto::{OpenCaseRequest, intake_client::IntakeClient};
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::lifecycle_raw::{CLUSTER_NODES, broker_msgs, msgs_per_case, peak_of};
use crate::report::{print, scaled};

const TENANT: &str = "bench";
const SERVICE: &str = "bench_lifecycle";
/// How long one case may take from OpenCase to case_closed before the run
/// is abandoned (a hang, not a measurement).
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// Cases run before the measured ones (at least the concurrency, up to 64).
pub(crate) const WARMUP_CASES: usize = 16;

const CATALOG: &str = r#"
version = "bench-lifecycle-1"

[services.bench_lifecycle]
name = "Three instant steps"
stages = ["pre_purchase", "during_purchase", "post_purchase"]
promise = { deadline = "24 hours", outcome = "Done" }

[[services.bench_lifecycle.steps]]
name = "one"
handler = { type = "simulate", latency_ms = 0, failure_probability = 0.0 }
timeout = "30s"
retry = { max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.1 }

[[services.bench_lifecycle.steps]]
name = "two"
handler = { type = "simulate", latency_ms = 0, failure_probability = 0.0 }
timeout = "30s"
retry = { max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.1 }

[[services.bench_lifecycle.steps]]
name = "three"
handler = { type = "simulate", latency_ms = 0, failure_probability = 0.0 }
timeout = "30s"
retry = { max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.1 }

[services.bench_lifecycle.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "retry", max_retries = 1 }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 1000000 }
"#;

/// What the closure watcher reports for a case: when its `case_closed` was
/// seen, and its resolution.
type Closed = (Instant, i32);
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Closed>>>>;

fn request(key: &str, i: usize) -> OpenCaseRequest {
    OpenCaseRequest {
        tenant: TENANT.into(),
        customer_id: format!("cust-{}", i % 1000),
        channel: pb::Channel::Web as i32,
        purchase_stage: pb::PurchaseStage::PostPurchase as i32,
        service_code: SERVICE.into(),
        summary: "Lifecycle benchmark case".into(),
        idempotency_key: key.to_owned(),
        ..Default::default()
    }
}

/// One whole case: registers for its closure (the case id is derived from
/// the idempotency key, so the waiter exists before the case does), opens
/// it and waits until it is closed. Returns the open-to-closed time and
/// the resolution.
async fn one_case(
    client: &mut IntakeClient<casework_auth::dev::WithToken>,
    waiters: &Waiters,
    log: &JetStreamLog,
    key: &str,
    i: usize,
) -> (Duration, i32) {
    let tenant = Tenant::parse(TENANT).expect("tenant");
    let case_id = CaseId::derive(&tenant, key);
    let (tx, rx) = oneshot::channel();
    waiters
        .lock()
        .expect("waiters")
        .insert(case_id.to_string(), tx);
    let t = Instant::now();
    let opened = client
        .open_case(request(key, i))
        .await
        .unwrap_or_else(|e| panic!("OpenCase {key}: {e}"))
        .into_inner();
    assert_eq!(
        opened.case_id,
        case_id.to_string(),
        "intake derives the case id from the idempotency key"
    );
    let Ok(closed) = tokio::time::timeout(CASE_TIMEOUT, rx).await else {
        // A hang, not a measurement: say where the case stopped (its last
        // event names the service that did not go on) before giving up.
        let case = casework_caselog::CaseKey {
            tenant,
            case_id: case_id.clone(),
        };
        let events = match log.read(&case, 0).await {
            Ok(events) => events
                .iter()
                .map(|e| format!("{} {}", e.stream_seq, e.subject))
                .collect::<Vec<_>>()
                .join("\n  "),
            Err(e) => format!("(unreadable: {e})"),
        };
        panic!("case {case_id} not closed within {CASE_TIMEOUT:?}; its log:\n  {events}");
    };
    let (seen, resolution) = closed.expect("closure watcher is running");
    (seen.duration_since(t), resolution)
}

/// Runs `n` cases with `concurrency` clients (one gRPC connection each),
/// all starting together; returns latencies, resolutions and elapsed time.
async fn drive(
    intake_url: &str,
    waiters: &Waiters,
    log: &Arc<JetStreamLog>,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> (Vec<Duration>, Vec<i32>, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (next, barrier, waiters, log) =
            (next.clone(), barrier.clone(), waiters.clone(), log.clone());
        let (url, prefix) = (intake_url.to_owned(), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut client =
                IntakeClient::new(casework_e2e::connect(url).await.expect("gRPC connects"));
            barrier.wait().await;
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return out;
                }
                let key = format!("{prefix}-{i}");
                out.push(one_case(&mut client, &waiters, &log, &key, i).await);
            }
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    let mut resolutions = Vec::with_capacity(n);
    for t in tasks {
        for (l, r) in t.await.expect("client task") {
            latencies.push(l);
            resolutions.push(r);
        }
    }
    (latencies, resolutions, started.elapsed())
}

/// Starts a fresh system (blocking work: building the binaries on first
/// use, spawning, waiting for readiness) off the async workers.
pub(crate) async fn start_system(catalog: PathBuf, sync_always: bool) -> System {
    start_system_on(catalog, sync_always, 1).await
}

/// [`start_system`] on `nodes` nats-servers (more than one: a JetStream
/// cluster on loopback, streams with `nodes` replicas).
async fn start_system_on(catalog: PathBuf, sync_always: bool, nodes: usize) -> System {
    tokio::task::spawn_blocking(move || {
        if nodes == 1 {
            System::start_configured(&catalog, &[], sync_always)
        } else {
            System::start_cluster(&catalog, &[], nodes, sync_always)
        }
    })
    .await
    .expect("the system starts")
}

/// Kills every service, then the broker (dropping `System` alone would stop
/// the broker first and leave the services briefly running without it).
pub(crate) fn stop_system(mut sys: System) {
    for s in sys.services.values_mut() {
        s.kill9();
    }
    drop(sys);
}

/// One result line: a fresh system, a warm-up, `n` cases at `concurrency`.
async fn run(catalog: PathBuf, sync_always: bool, nodes: usize, concurrency: usize, n: usize) {
    let sys = start_system_on(catalog, sync_always, nodes).await;
    let client = connect(&NatsOptions {
        url: sys.nats_urls(),
        user: Some("admin".into()),
        password: Some("pw-admin".into()),
        ..Default::default()
    })
    .await
    .expect("admin connects");
    let log = Arc::new(JetStreamLog::new(client, "bench-lifecycle-admin", None));
    let from = log.last_stream_seq().await.expect("last seq") + 1;
    let mut closed = log
        .tail("case.*.*.intake.case_closed", from)
        .await
        .expect("tail of case_closed");
    let waiters: Waiters = Arc::default();
    let watcher = {
        let waiters = waiters.clone();
        tokio::spawn(async move {
            // A tail's errors (a missed heartbeat on a busy cluster, say)
            // are not its end: the ordered consumer recreates itself.
            while let Some(d) = closed.next().await {
                let Ok(d) = d.inspect_err(|e| eprintln!("bench tail: {e} (going on)")) else {
                    continue;
                };
                let seen = Instant::now();
                let Ok(case) = d.case() else { continue };
                let resolution = match d.decode().map(|e| e.envelope.payload) {
                    Ok(Some(Payload::CaseClosed(c))) => c.resolution,
                    _ => -1,
                };
                if let Some(tx) = waiters
                    .lock()
                    .expect("waiters")
                    .remove(case.case_id.as_str())
                {
                    let _ = tx.send((seen, resolution));
                }
            }
        })
    };
    let intake = sys.services["intake"].grpc_url();
    let sync = if sync_always { "always" } else { "default" };

    let warmup = WARMUP_CASES.max(concurrency.min(64));
    drive(
        &intake,
        &waiters,
        &log,
        &format!("warm-{sync}-{concurrency}"),
        warmup,
        concurrency.min(warmup),
    )
    .await;
    let brokers: Vec<&casework_testkit::NatsServer> =
        std::iter::once(&sys.nats).chain(&sys.peers).collect();
    let before = broker_msgs(&brokers);
    let (latencies, resolutions, elapsed) = drive(
        &intake,
        &waiters,
        &log,
        &format!("run-{sync}-{concurrency}"),
        n,
        concurrency,
    )
    .await;
    let after = broker_msgs(&brokers);
    let not_kept = resolutions
        .iter()
        .filter(|r| **r != pb::Resolution::PromiseKept as i32)
        .count();

    let mut extra = serde_json::json!({
        "sync_interval": sync,
        "nats_nodes": nodes,
        "unit": "cases",
        "steps": 3,
        "handler": "simulate",
        "latency_ms": 0,
        "processes": "separate",
        "warmup_cases": warmup,
        "not_promise_kept": not_kept,
    });
    let round = |mib: f64| (mib * 10.0).round() / 10.0;
    let obj = extra.as_object_mut().expect("an object");
    for name in SERVICES {
        let peak = sys.services[name]
            .pid()
            .and_then(memory_of)
            .map(|m| round(m.peak_mib));
        obj.insert(format!("peak_mib_{name}"), serde_json::json!(peak));
    }
    obj.insert(
        "peak_mib_nats_server".into(),
        serde_json::json!(peak_of(&brokers)),
    );
    if let serde_json::Value::Object(m) = msgs_per_case(before, after, n) {
        obj.extend(m);
    }
    // Timers don't outlive their case: with every case closed, TIMERS holds
    // only the tombstones of the last second (they expire after 1 s).
    obj.insert(
        "timers_messages_after".into(),
        serde_json::json!(timers_messages(log.client()).await),
    );
    print("lifecycle", concurrency, latencies, n, elapsed, extra);

    watcher.abort();
    let _ = watcher.await;
    stop_system(sys);
}

/// The measured points: (cases in flight, cases), shared with
/// `lifecycle-raw`.
pub(crate) fn points() -> [(usize, usize); 2] {
    [(1, scaled(50).max(1)), (64, scaled(1000).max(64))]
}

/// How many messages TIMERS holds once the tombstones of the cases just
/// closed have expired (polled for up to 5 s until it is 0).
async fn timers_messages(client: &async_nats::Client) -> Option<u64> {
    let js = async_nats::jetstream::new(client.clone());
    let mut last = None;
    for _ in 0..20 {
        let mut s = js.get_stream(casework_caselog::TIMERS_STREAM).await.ok()?;
        let n = s.info().await.ok()?.state.messages;
        last = Some(n);
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    last
}

/// Runs the four results, each right after its `lifecycle-raw` twin (same
/// sync setting and concurrency, a broker of its own), so the two are
/// always measured in one sitting.
pub async fn lifecycle() {
    let (_dir, catalog) = prepare().await;
    for sync_always in [false, true] {
        for (concurrency, n) in points() {
            crate::lifecycle_raw::run(sync_always, 1, concurrency, n).await;
            run(catalog.clone(), sync_always, 1, concurrency, n).await;
        }
    }
}

/// The production topology alone: a 3-node JetStream cluster on loopback,
/// R3 streams, `sync_interval: always`, each result after its raw twin.
pub async fn lifecycle_cluster() {
    let (_dir, catalog) = prepare().await;
    for (concurrency, n) in points() {
        crate::lifecycle_raw::run(true, CLUSTER_NODES, concurrency, n).await;
        run(catalog.clone(), true, CLUSTER_NODES, concurrency, n).await;
    }
}

/// The bench catalogue in a directory that lives as long as the result,
/// and the service binaries built (when stale) before anything is
/// measured, not between a raw result and its twin.
async fn prepare() -> (casework_testkit::TempDir, PathBuf) {
    let dir = casework_testkit::TempDir::new().expect("temporary directory");
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, CATALOG).expect("bench catalogue");
    tokio::task::spawn_blocking(casework_e2e::release_bins)
        .await
        .expect("the service binaries build");
    (dir, catalog)
}
