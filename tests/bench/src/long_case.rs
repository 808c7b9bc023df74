//! `long-case`: does the cost of a decision grow with the length of the
//! case (DESIGN.md §2: it must not)? The four services run as separate
//! release processes (the e2e harness, nats-server's default
//! `sync_interval`). One case is opened through intake's OpenCase for a
//! catalogue service whose only step is *manual* with a long timeout (so
//! fulfilment starts it and then leaves the case alone) and whose promise
//! is due in 24 hours (so recovery has nothing to do). Once fulfilment has
//! started the step, `RecordInteraction` is timed, one call in flight, each
//! with its own `request_id` — a full decision: validate, bring intake's
//! held state up to date, decide, append on the held head, and wait until
//! intake's read model shows the event (read-your-writes) — first on the
//! fresh case (a few events), then after growing the same case to 1,000
//! and to 10,000 events with more `RecordInteraction` calls. One
//! `long-case` line per size, with `events_in_case` (the length before the
//! timed calls, which add `n` more).
//!
//! `long-case-raw`, after each: the same number of single OCC appends on
//! bare JetStream to a case of the same length (a `last_by_subj` direct
//! get to learn the head, then one publish with the expected last subject
//! sequence, the headers and 300-byte payload of `lifecycle-raw`), on a
//! nats-server of its own with the same configuration (an unknown payload
//! on the system's stream would upset its readers), so the ratio is our
//! overhead at that length.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use casework_caselog::jetstream::{NatsOptions, connect};
use casework_caselog::{CaseKey, CaseLog, JetStreamLog};
use casework_domain::pb;
use casework_domain::{CaseId, Tenant};
use casework_e2e::memory_of;
use casework_intake::proto::{
    OpenCaseRequest, RecordInteractionRequest, intake_client::IntakeClient,
};

use crate::lifecycle::{start_system, stop_system};
use crate::lifecycle_raw;
use crate::report::{print, scaled};

pub(crate) const TENANT: &str = "bench";
pub(crate) const SERVICE: &str = "bench_long_case";
/// Lengths the case is grown to after the fresh measurement (fixed, not
/// scaled).
const SIZES: [u64; 2] = [1_000, 10_000];
/// How long fulfilment may take to start the manual step.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
const WARMUP_CALLS: usize = 20;

pub(crate) const CATALOG: &str = r#"
version = "bench-long-case-1"

[services.bench_long_case]
name = "One manual step nobody completes"
stages = ["pre_purchase", "during_purchase", "post_purchase"]
promise = { deadline = "24 hours", outcome = "Answered by a person" }

[[services.bench_long_case.steps]]
name = "wait_for_a_person"
handler = { type = "manual", queue = "bench_desk" }
timeout = "2d"
retry = { max_attempts = 1, initial_backoff = "0s", max_backoff = "0s", multiplier = 1.0, jitter = 0.0 }

[services.bench_long_case.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "apology" }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 1000000 }
"#;

pub(crate) type Client = IntakeClient<casework_auth::dev::WithToken>;

pub(crate) fn interaction(case_id: &str, request_id: String) -> RecordInteractionRequest {
    RecordInteractionRequest {
        tenant: TENANT.into(),
        case_id: case_id.to_owned(),
        channel: pb::Channel::Phone as i32,
        direction: pb::Direction::Inbound as i32,
        summary: "Customer called again about the parcel; told them a specialist is on it.".into(),
        request_id,
        ..Default::default()
    }
}

/// One RecordInteraction; the case's length after it.
async fn record(client: &mut Client, case_id: &str, request_id: String) -> u64 {
    let r = client
        .record_interaction(interaction(case_id, request_id.clone()))
        .await
        .unwrap_or_else(|e| panic!("RecordInteraction {request_id}: {e}"))
        .into_inner();
    let recorded = r.recorded.expect("a Recorded in the response");
    assert!(!recorded.replayed, "{request_id} is a new request");
    recorded.sequence
}

/// Opens a case (key `key`) and waits until fulfilment has started its
/// manual step; returns the case id and its length.
pub(crate) async fn open_settled(
    client: &mut Client,
    log: &JetStreamLog,
    key: &str,
) -> (String, u64) {
    let opened = client
        .open_case(OpenCaseRequest {
            tenant: TENANT.into(),
            customer_id: "cust-long".into(),
            channel: pb::Channel::Phone as i32,
            purchase_stage: pb::PurchaseStage::PostPurchase as i32,
            service_code: SERVICE.into(),
            summary: "Long-case benchmark".into(),
            idempotency_key: key.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("OpenCase {key}: {e}"))
        .into_inner();
    let tenant = Tenant::parse(TENANT).expect("tenant");
    let case = CaseKey {
        case_id: CaseId::derive(&tenant, key),
        tenant,
    };
    assert_eq!(opened.case_id, case.case_id.to_string());
    let started = Instant::now();
    loop {
        let events = log.read(&case, 0).await.expect("read the case");
        if events
            .iter()
            .any(|e| e.subject.ends_with(".fulfilment.step_started"))
        {
            return (opened.case_id, events.len() as u64);
        }
        assert!(
            started.elapsed() < SETTLE_TIMEOUT,
            "fulfilment did not start the manual step of {} within {SETTLE_TIMEOUT:?}: {:?}",
            case.case_id,
            events.iter().map(|e| &e.subject).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The raw twin's case: its id and head (stream sequence, length).
struct RawCase {
    client: async_nats::Client,
    payload: bytes::Bytes,
    case_id: String,
    head: u64,
    len: u64,
}

impl RawCase {
    async fn append(&mut self, expected: u64) {
        self.len += 1;
        self.head = lifecycle_raw::append(
            &self.client,
            &self.payload,
            "intake",
            &self.case_id,
            "interaction_recorded",
            self.len,
            expected,
        )
        .await;
    }

    /// Appends on the known head until the case has `len` events.
    async fn grow_to(&mut self, len: u64) {
        while self.len < len {
            self.append(self.head).await;
        }
    }

    /// One decision's worth of broker work: learn the head (`last_by_subj`
    /// direct get), append on it.
    async fn occ_append(&mut self) {
        let head = lifecycle_raw::head_of(&self.client, &self.case_id).await;
        assert_eq!(head, self.head, "nobody else writes the raw case");
        self.append(head).await;
    }
}

/// Runs the scenario: three sizes, each a `long-case` and a
/// `long-case-raw` line.
pub async fn long_case() {
    let dir = casework_testkit::TempDir::new().expect("temporary directory");
    let catalog: PathBuf = dir.path().join("catalog.toml");
    std::fs::write(&catalog, CATALOG).expect("bench catalogue");
    let sys = start_system(catalog, false).await;
    let admin = connect(&NatsOptions {
        url: sys.nats.url(),
        user: Some("admin".into()),
        password: Some("pw-admin".into()),
        ..Default::default()
    })
    .await
    .expect("admin connects");
    let log = JetStreamLog::new(admin, "bench-long-case-admin", None);
    let mut client = IntakeClient::new(
        casework_e2e::connect(sys.services["intake"].grpc_url())
            .await
            .expect("gRPC connects"),
    );

    let (raw_server, _raw_admin) = lifecycle_raw::start_broker(false, 1).await;
    let mut raw = RawCase {
        client: lifecycle_raw::connect(&raw_server.urls(), "intake").await,
        payload: lifecycle_raw::payload(),
        case_id: lifecycle_raw::new_case_id(),
        head: 0,
        len: 0,
    };

    // Warm-up on a case of its own: connections, caches, code paths.
    let (warm, _) = open_settled(&mut client, &log, "long-case-warmup").await;
    for i in 0..WARMUP_CALLS {
        record(&mut client, &warm, format!("warm-{i}")).await;
    }
    let mut warm_raw = RawCase {
        case_id: lifecycle_raw::new_case_id(),
        head: 0,
        len: 0,
        client: raw.client.clone(),
        payload: raw.payload.clone(),
    };
    warm_raw.grow_to(1).await;
    for _ in 0..WARMUP_CALLS {
        warm_raw.occ_append().await;
    }

    let (case_id, mut len) = open_settled(&mut client, &log, "long-case").await;
    let n = scaled(200);
    let mut grown = 0usize;
    for target in std::iter::once(None).chain(SIZES.map(Some)) {
        if let Some(target) = target {
            while len < target {
                len = record(&mut client, &case_id, format!("grow-{grown}")).await;
                grown += 1;
            }
        }
        let events_in_case = len;
        let mut lat = Vec::with_capacity(n);
        let start = Instant::now();
        for i in 0..n {
            let req = format!("measure-{events_in_case}-{i}");
            let t = Instant::now();
            len = record(&mut client, &case_id, req).await;
            lat.push(t.elapsed());
        }
        let elapsed = start.elapsed();
        let intake_peak = sys.services["intake"]
            .pid()
            .and_then(memory_of)
            .map(|m| (m.peak_mib * 10.0).round() / 10.0);
        print(
            "long-case",
            1,
            lat,
            n,
            elapsed,
            serde_json::json!({
                "events_in_case": events_in_case,
                "sync_interval": "default",
                "unit": "decisions",
                "rpc": "casework.intake.v1.Intake/RecordInteraction",
                "handler": "manual",
                "processes": "separate",
                "peak_mib_intake": intake_peak,
            }),
        );

        raw.grow_to(events_in_case).await;
        let mut lat = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            raw.occ_append().await;
            lat.push(t.elapsed());
        }
        let elapsed = start.elapsed();
        print(
            "long-case-raw",
            1,
            lat,
            n,
            elapsed,
            serde_json::json!({
                "events_in_case": events_in_case,
                "sync_interval": "default",
                "unit": "decisions",
                "op": "direct get last_by_subj + publish with expected last subject sequence",
                "payload_bytes": lifecycle_raw::PAYLOAD_BYTES,
            }),
        );
    }
    drop(raw_server);
    stop_system(sys);
}
