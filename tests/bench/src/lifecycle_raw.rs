//! `lifecycle-raw`: the broker's ceiling for the event pattern of a whole
//! case, with no Casework code on the path. Per case the same 12 appends a
//! Casework case makes (see `lifecycle`), each a single JetStream publish —
//! no atomic batch — with `Nats-Msg-Id`, the case's expected last sequence
//! (`Nats-Expected-Last-Subject-Sequence` over `case.<t>.<id>.>`, the stream
//! sequence of the case's previous message, 0 for the first), the
//! CloudEvents headers and `traceparent` a real event carries, and a
//! payload of 300 bytes. Every append after the first two is made by a
//! consumer that *saw* the previous one, as the services do:
//!
//! - "intake" (the client's OpenCase): `case_opened`, `promise_made`;
//! - "fulfilment", woken by `promise_made` on its durable pull consumer
//!   (the service's filters, `promise_made` and `retry_requested`): `fulfilment_started`, then
//!   `step_started`/`step_completed` ×3 interleaved, then `promise_kept` —
//!   8 appends in one reaction, each on the head the previous produced (the
//!   service holds the state in memory and does the same);
//! - "intake's closer", woken by `promise_kept` on its durable consumer
//!   (the service's own wake filters): `customer_notified`, `case_closed`.
//!
//! The other consumers the services keep on `CASES` are there too, so the
//! broker fans every event out as it does under Casework: recovery's
//! durable trigger consumer (its wake filters; it appends nothing on a kept
//! promise) and the ordered tails of the ledger (`case.>`), intake's read
//! model (`case.>`), fulfilment's task board (`case.*.*.fulfilment.>`) and
//! recovery's views (`case.*.*.recovery.>`). Each "service" has its own
//! connection as its own NATS user, on a nats-server configured as the e2e
//! system's (the same users and permissions, the same store settings), with
//! `CASES` created from the project's own stream configuration. Durable
//! deliveries are acknowledged after the reaction, as the services do.
//!
//! A case's latency runs from the start of its first append to the ack of
//! its `case_closed`. Same points as `lifecycle`: 1 and 64 cases in flight,
//! nats-server's default `sync_interval` and `always`, each on a fresh
//! server (so its peak memory, on the line, belongs to that run), after the
//! same warm-up. `lifecycle` runs the matching `lifecycle-raw` result right
//! before each of its own, so the two are always measured in one sitting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use casework_caselog::jetstream::{CASES_STREAM, StreamOptions, cases_stream_config};
use casework_e2e::{memory_of, nats_users};
use casework_testkit::NatsServer;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::lifecycle::{WARMUP_CASES, points};
use crate::report::print;

/// The tenant of every raw case.
pub const TENANT: &str = "bench";
/// Payload size of one raw event (a Casework envelope of a lifecycle event
/// is about this size).
pub const PAYLOAD_BYTES: usize = 300;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// Appends per case.
const APPENDS_PER_CASE: usize = 2 + FULFILMENT_EVENTS.len() + 2;

/// Fulfilment's reaction to `promise_made`.
const FULFILMENT_EVENTS: [&str; 8] = [
    "fulfilment_started",
    "step_started",
    "step_completed",
    "step_started",
    "step_completed",
    "step_started",
    "step_completed",
    "promise_kept",
];

/// Who is waiting for which case's `case_closed` (by case id), and the
/// moment it was acknowledged.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

/// The payload of every raw event.
pub fn payload() -> bytes::Bytes {
    bytes::Bytes::from(vec![b'x'; PAYLOAD_BYTES])
}

/// A fresh 26-character case id.
pub fn new_case_id() -> String {
    ulid::Ulid::new().to_string()
}

/// The broker of one raw result: a single nats-server, or the nodes of a
/// JetStream cluster on loopback.
pub struct Broker {
    /// The nodes (one for a single server).
    pub nodes: Vec<NatsServer>,
}

impl Broker {
    /// Every node's client URL, comma-separated.
    pub fn urls(&self) -> String {
        casework_testkit::urls_of(&self.nodes)
    }
}

/// Starts `nodes` nats-servers (one: a single server; more: a JetStream
/// cluster on loopback) configured as the e2e system's (its users and
/// permissions, `sync_always` or the default schedule), off the async
/// workers, and creates `CASES` from the project's configuration with
/// `nodes` replicas. Returns the broker and an admin connection.
pub async fn start_broker(sync_always: bool, nodes: usize) -> (Broker, async_nats::Client) {
    let broker = tokio::task::spawn_blocking(move || Broker {
        nodes: if nodes == 1 {
            vec![NatsServer::start_configured(&nats_users(), sync_always)]
        } else {
            casework_testkit::NatsCluster::start(nodes, &nats_users(), sync_always).nodes
        },
    })
    .await
    .expect("nats-server starts");
    let admin = connect(&broker.urls(), "admin").await;
    jetstream::new(admin.clone())
        .create_stream(cases_stream_config(&StreamOptions {
            replicas: nodes,
            ..Default::default()
        }))
        .await
        .expect("create the CASES stream");
    (broker, admin)
}

/// Connects to `urls` as `user` (password `pw-<user>`, as the e2e users).
pub async fn connect(urls: &str, user: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .name(format!("bench-raw-{user}"))
        .user_and_password(user.to_owned(), format!("pw-{user}"))
        .custom_inbox_prefix(casework_caselog::permissions::inbox_prefix(user))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .connect(
            casework_caselog::jetstream::server_addrs(urls)
                .expect("bench URLs")
                .as_slice(),
        )
        .await
        .unwrap_or_else(|e| panic!("connect to the bench nats-server as {user}: {e}"))
}

/// Messages into and out of the broker so far (summed over its nodes,
/// from `/varz`: client, route and JetStream-internal traffic).
pub fn broker_msgs(nodes: &[&NatsServer]) -> (u64, u64) {
    nodes.iter().fold((0, 0), |(i, o), n| {
        let varz: serde_json::Value = n
            .monitor("/varz")
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default();
        let get = |k: &str| varz.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        (i + get("in_msgs"), o + get("out_msgs"))
    })
}

/// The broker's messages per case over a measured run, from the counts
/// before and after it: `{"broker_in_msgs_per_case", "broker_out_msgs_per_case"}`.
pub fn msgs_per_case(before: (u64, u64), after: (u64, u64), cases: usize) -> serde_json::Value {
    let per = |a: u64, b: u64| ((a.saturating_sub(b)) as f64 / cases as f64 * 10.0).round() / 10.0;
    serde_json::json!({
        "broker_in_msgs_per_case": per(after.0, before.0),
        "broker_out_msgs_per_case": per(after.1, before.1),
    })
}

/// The headers of one raw event: its id, its two append guards, and the
/// CloudEvents attributes and traceparent a Casework event carries.
fn headers(
    writer: &str,
    case_id: &str,
    event_type: &str,
    case_seq: u64,
    expected: u64,
) -> HeaderMap {
    let id = format!("{case_id}-{case_seq:05}");
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", id.as_str());
    h.insert(
        "Nats-Expected-Last-Subject-Sequence",
        expected.to_string().as_str(),
    );
    h.insert(
        "Nats-Expected-Last-Subject-Sequence-Subject",
        format!("case.{TENANT}.{case_id}.>").as_str(),
    );
    for (k, v) in [
        ("ce-specversion", "1.0".to_owned()),
        ("ce-id", id.clone()),
        ("ce-source", format!("/casework/{TENANT}/{writer}")),
        ("ce-type", format!("casework.events.v1.{event_type}")),
        ("ce-subject", case_id.to_owned()),
        (
            "ce-time",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
        ("ce-tenant", TENANT.to_owned()),
        ("ce-casesequence", case_seq.to_string()),
        (
            "content-type",
            casework_caselog::headers::CONTENT_TYPE.to_owned(),
        ),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        ),
    ] {
        h.insert(k, v.as_str());
    }
    h
}

/// One append: a single publish of event number `case_seq` of the case,
/// expecting the case's last message at stream sequence `expected` (0: an
/// empty case). Returns the stream sequence it landed at; any refusal
/// (e.g. a wrong last sequence) is a bug of the benchmark and panics.
pub async fn append(
    client: &async_nats::Client,
    payload: &bytes::Bytes,
    writer: &str,
    case_id: &str,
    event_type: &str,
    case_seq: u64,
    expected: u64,
) -> u64 {
    try_append(
        client, payload, writer, case_id, event_type, case_seq, expected,
    )
    .await
    .unwrap_or_else(|ack| panic!("raw append to case {case_id} refused: {ack}"))
}

/// The stream sequence of `case_id`'s last message (a `last_by_subj`
/// direct get): the head an OCC append expects.
pub async fn head_of(client: &async_nats::Client, case_id: &str) -> u64 {
    let req = serde_json::json!({ "last_by_subj": format!("case.{TENANT}.{case_id}.>") });
    let reply = client
        .request(
            format!("$JS.API.DIRECT.GET.{CASES_STREAM}"),
            req.to_string().into(),
        )
        .await
        .expect("direct get of the case's last message");
    reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Sequence"))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or_else(|| panic!("direct get without Nats-Sequence: {:?}", reply.status))
}

/// [`append`], returning the broker's refusal (e.g. a wrong last sequence:
/// someone else appended first) instead of panicking.
pub async fn try_append(
    client: &async_nats::Client,
    payload: &bytes::Bytes,
    writer: &str,
    case_id: &str,
    event_type: &str,
    case_seq: u64,
    expected: u64,
) -> Result<u64, serde_json::Value> {
    let subject = format!("case.{TENANT}.{case_id}.{writer}.{event_type}");
    let req = async_nats::Request::new()
        .headers(headers(writer, case_id, event_type, case_seq, expected))
        .payload(payload.clone())
        .timeout(Some(REQUEST_TIMEOUT));
    let reply = client
        .send_request(subject.clone(), req)
        .await
        .unwrap_or_else(|e| panic!("raw append to {subject}: {e}"));
    let ack: serde_json::Value = serde_json::from_slice(&reply.payload)
        .unwrap_or_else(|e| panic!("raw append to {subject}: unreadable ack ({e})"));
    match ack["seq"].as_u64() {
        Some(seq) if ack.get("error").is_none() => Ok(seq),
        _ => Err(ack),
    }
}

/// `(case_id, event_type)` of a subject `case.<t>.<id>.<writer>.<type>`.
fn case_and_type(subject: &str) -> (String, String) {
    let parts: Vec<&str> = subject.split('.').collect();
    match parts.as_slice() {
        ["case", _, id, _, ty] => ((*id).to_owned(), (*ty).to_owned()),
        _ => panic!("unexpected subject {subject}"),
    }
}

/// A durable pull consumer on `CASES` with the services' settings.
async fn durable(
    client: &async_nats::Client,
    name: &str,
    filters: &[&str],
) -> consumer::PullConsumer {
    let stream = jetstream::new(client.clone())
        .get_stream_no_info(CASES_STREAM)
        .await
        .expect("the CASES stream");
    let one = filters.len() == 1;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: if one {
                filters[0].to_owned()
            } else {
                String::new()
            },
            filter_subjects: if one {
                Vec::new()
            } else {
                filters.iter().map(|f| (*f).to_owned()).collect()
            },
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1024,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("durable consumer {name}: {e}"))
}

/// Reads the tail of `filter` to the end of time through `service`'s tail
/// consumer (instance `<service>-0`, as its user's permissions name it),
/// as the services' read models and the ledger do (they store what they
/// see; this only counts it).
async fn drain_tail(client: async_nats::Client, service: &'static str, filter: &'static str) {
    let js = jetstream::new(client);
    let name = casework_caselog::permissions::tail_consumer(service, &format!("{service}-0"));
    let (mut msgs, _) = casework_caselog::jetstream::named_tail(&js, &name, filter, 1)
        .await
        .unwrap_or_else(|e| panic!("tail of {filter}: {e}"));
    while msgs.next().await.is_some() {}
}

/// Fulfilment: on `promise_made`, its 8 appends, each on the head the
/// previous produced; every other delivery (the service's other wake
/// filter, `retry_requested`, never comes here) is acknowledged at once.
async fn fulfilment(client: async_nats::Client, payload: bytes::Bytes) {
    let consumer = durable(
        &client,
        casework_fulfilment::WAKE_CONSUMER,
        &casework_fulfilment::WAKE_FILTERS,
    )
    .await;
    let mut msgs = consumer.messages().await.expect("fulfilment messages");
    while let Some(m) = msgs.next().await {
        let Ok(m) = m.inspect_err(|e| eprintln!("raw consumer: {e} (going on)")) else {
            continue;
        };
        let (case_id, ty) = case_and_type(m.subject.as_str());
        if ty != "promise_made" {
            let _ = m.ack().await;
            continue;
        }
        let head = m.info().expect("delivery info").stream_sequence;
        let (client, payload) = (client.clone(), payload.clone());
        tokio::spawn(async move {
            let mut head = head;
            for (i, ty) in FULFILMENT_EVENTS.iter().enumerate() {
                head = append(
                    &client,
                    &payload,
                    "fulfilment",
                    &case_id,
                    ty,
                    3 + i as u64,
                    head,
                )
                .await;
            }
            let _ = m.ack().await;
        });
    }
}

/// Intake's closer: on `promise_kept`, `customer_notified` and
/// `case_closed`, then tells the case's waiter.
async fn closer(client: async_nats::Client, payload: bytes::Bytes, waiters: Waiters) {
    let consumer = durable(
        &client,
        "intake-closer",
        &casework_intake::closer::WAKE_FILTERS,
    )
    .await;
    let mut msgs = consumer.messages().await.expect("closer messages");
    while let Some(m) = msgs.next().await {
        let Ok(m) = m.inspect_err(|e| eprintln!("raw consumer: {e} (going on)")) else {
            continue;
        };
        let (case_id, ty) = case_and_type(m.subject.as_str());
        if ty != "promise_kept" {
            let _ = m.ack().await;
            continue;
        }
        let head = m.info().expect("delivery info").stream_sequence;
        let (client, payload, waiters) = (client.clone(), payload.clone(), waiters.clone());
        tokio::spawn(async move {
            let head = append(
                &client,
                &payload,
                "intake",
                &case_id,
                "customer_notified",
                11,
                head,
            )
            .await;
            append(
                &client,
                &payload,
                "intake",
                &case_id,
                "case_closed",
                12,
                head,
            )
            .await;
            let closed = Instant::now();
            let _ = m.ack().await;
            if let Some(tx) = waiters.lock().expect("waiters").remove(&case_id) {
                let _ = tx.send(closed);
            }
        });
    }
}

/// Recovery's trigger consumer: nothing to do on a kept promise.
async fn recovery(client: async_nats::Client) {
    let consumer = durable(
        &client,
        "recovery-triggers",
        &casework_recovery::WAKE_FILTERS,
    )
    .await;
    let mut msgs = consumer.messages().await.expect("recovery messages");
    while let Some(m) = msgs.next().await {
        let Ok(m) = m.inspect_err(|e| eprintln!("raw consumer: {e} (going on)")) else {
            continue;
        };
        let _ = m.ack().await;
    }
}

/// One whole case: the client's two appends, then wait for the closer's
/// `case_closed` ack.
async fn one_case(
    intake: &async_nats::Client,
    payload: &bytes::Bytes,
    waiters: &Waiters,
) -> Duration {
    let case_id = new_case_id();
    let (tx, rx) = oneshot::channel();
    waiters.lock().expect("waiters").insert(case_id.clone(), tx);
    let t = Instant::now();
    let head = append(intake, payload, "intake", &case_id, "case_opened", 1, 0).await;
    append(intake, payload, "intake", &case_id, "promise_made", 2, head).await;
    let closed = tokio::time::timeout(CASE_TIMEOUT, rx)
        .await
        .unwrap_or_else(|_| panic!("raw case {case_id} not closed within {CASE_TIMEOUT:?}"))
        .expect("the closer is running");
    closed.duration_since(t)
}

/// Runs `n` cases, `concurrency` at a time, all starting together;
/// returns latencies and elapsed time.
async fn drive(
    intake: &async_nats::Client,
    waiters: &Waiters,
    n: usize,
    concurrency: usize,
) -> (Vec<Duration>, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (next, barrier, waiters) = (next.clone(), barrier.clone(), waiters.clone());
        let (intake, payload) = (intake.clone(), payload());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                out.push(one_case(&intake, &payload, &waiters).await);
            }
            out
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    for t in tasks {
        latencies.extend(t.await.expect("client task"));
    }
    (latencies, started.elapsed())
}

/// One result line: a fresh broker, a warm-up, `n` cases at `concurrency`.
pub async fn run(sync_always: bool, nodes: usize, concurrency: usize, n: usize) {
    let (broker, _admin) = start_broker(sync_always, nodes).await;
    let urls = broker.urls();
    // One connection per service, shared by its consumers and appends.
    let intake = connect(&urls, "intake").await;
    let fulfilment_nc = connect(&urls, "fulfilment").await;
    let recovery_nc = connect(&urls, "recovery").await;
    let ledger_nc = connect(&urls, "ledger").await;
    let waiters: Waiters = Arc::default();
    let mut services = JoinSet::new();
    services.spawn(fulfilment(fulfilment_nc.clone(), payload()));
    services.spawn(closer(intake.clone(), payload(), waiters.clone()));
    services.spawn(recovery(recovery_nc.clone()));
    services.spawn(drain_tail(ledger_nc, "ledger", "case.>"));
    services.spawn(drain_tail(intake.clone(), "intake", "case.>"));
    services.spawn(drain_tail(
        fulfilment_nc,
        "fulfilment",
        "case.*.*.fulfilment.>",
    ));
    services.spawn(drain_tail(recovery_nc, "recovery", "case.*.*.recovery.>"));

    let warmup = WARMUP_CASES.max(concurrency.min(64));
    drive(&intake, &waiters, warmup, concurrency.min(warmup)).await;
    let nodes_ref: Vec<&NatsServer> = broker.nodes.iter().collect();
    let before = broker_msgs(&nodes_ref);
    let (latencies, elapsed) = drive(&intake, &waiters, n, concurrency).await;
    let after = broker_msgs(&nodes_ref);

    let nats_peak = peak_of(&nodes_ref);
    let sync = if sync_always { "always" } else { "default" };
    let mut extra = serde_json::json!({
            "sync_interval": sync,
            "nats_nodes": nodes,
            "unit": "cases",
            "appends_per_case": APPENDS_PER_CASE,
            "payload_bytes": PAYLOAD_BYTES,
            "atomic_batches": false,
            "durable_consumers": ["fulfilment-wake", "intake-closer", "recovery-triggers"],
            "ordered_tails": ["ledger", "intake read model", "fulfilment board", "recovery views"],
            "warmup_cases": warmup,
            "peak_mib_nats_server": nats_peak,
    });
    if let (Some(obj), serde_json::Value::Object(m)) =
        (extra.as_object_mut(), msgs_per_case(before, after, n))
    {
        obj.extend(m);
    }
    print("lifecycle-raw", concurrency, latencies, n, elapsed, extra);
    services.shutdown().await;
    drop(broker);
}

/// The highest peak memory (VmHWM, MiB) of the broker's nodes.
pub fn peak_of(nodes: &[&NatsServer]) -> Option<f64> {
    nodes
        .iter()
        .filter_map(|n| n.pid().and_then(memory_of))
        .map(|m| (m.peak_mib * 10.0).round() / 10.0)
        .reduce(f64::max)
}

/// The four results alone (`lifecycle` runs each before its own).
pub async fn lifecycle_raw() {
    for sync_always in [false, true] {
        for (concurrency, n) in points() {
            run(sync_always, 1, concurrency, n).await;
        }
    }
    for (concurrency, n) in points() {
        run(true, CLUSTER_NODES, concurrency, n).await;
    }
}

/// Nodes of the loopback cluster that `lifecycle` and `lifecycle-raw` also
/// run on (R3 streams, `sync_interval: always`: the production topology).
pub const CLUSTER_NODES: usize = 3;
