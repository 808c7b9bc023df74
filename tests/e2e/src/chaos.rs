//! The seeded fault probe (bench scenario `chaos`, and at a smaller count
//! the e2e test `chaos`). The four services as release processes
//! on a real nats-server under a steady load of cases (three instant steps,
//! or a step that always fails and goes to recovery), while a seeded
//! random schedule (one fault every 1–4 s) kills one part of the system at a time — a service with
//! SIGKILL, the broker with SIGKILL or SIGTERM — and starts it again.
//! After the last fault the load stops and every case opened must close;
//! then, on the raw stream, every case's chain verifies, no event id
//! appears twice, each case has exactly one `promise_made` and one
//! `case_closed`, and the ledger archived exactly what the stream holds.
//! The number of faults and the seed choose the run; the same seed gives
//! the same schedule of faults.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::System;
use casework_caselog::{CaseKey, CaseLog};
use casework_domain::pb::envelope::Payload;
use casework_domain::{CaseId, Tenant, verify};
use casework_intake::proto::{OpenCaseRequest, intake_client::IntakeClient};

const TENANT: &str = "chaos";

const CATALOG: &str = r#"
version = "chaos-1"

[services.quick]
name = "Three instant steps"
stages = ["post_purchase"]
promise = { deadline = "24 hours", outcome = "Done" }

[[services.quick.steps]]
name = "one"
handler = { type = "simulate", latency_ms = 0, failure_probability = 0.0 }
timeout = "30s"
retry = { max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.1 }

[[services.quick.steps]]
name = "two"
handler = { type = "simulate", latency_ms = 50, failure_probability = 0.0 }
timeout = "30s"
retry = { max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.1 }

[[services.quick.steps]]
name = "three"
handler = { type = "simulate", latency_ms = 0, failure_probability = 0.0 }
timeout = "30s"
retry = { max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.1 }

[services.quick.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "retry", max_retries = 1 }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 100000000 }

[services.doomed]
name = "A step that always fails"
stages = ["post_purchase"]
promise = { deadline = "24 hours", outcome = "Never" }

[[services.doomed.steps]]
name = "fail"
handler = { type = "simulate", latency_ms = 0, failure_probability = 1.0 }
timeout = "30s"
retry = { max_attempts = 2, initial_backoff = "100ms", max_backoff = "200ms", multiplier = 2.0, jitter = 0.1 }

[services.doomed.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "apology" }, { action = "compensation", kind = "voucher", amount_minor = 500, currency = "EUR" }, { action = "escalate", tier = "tier2" }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 100000000 }
"#;

/// xorshift64*: a seeded, reproducible schedule without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const VICTIMS: [&str; 6] = [
    "intake",
    "fulfilment",
    "recovery",
    "ledger",
    "nats",
    "nats-graceful",
];

/// Opens cases until `stop`, each retried with its idempotency key until
/// intake takes it (the client's side of the contract during faults).
async fn load(
    url: String,
    lane: usize,
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
) -> Vec<CaseKey> {
    let tenant = Tenant::parse(TENANT).expect("tenant");
    let mut cases = Vec::new();
    let mut client = None;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("chaos-{lane}-{i}");
        let service = if i % 5 == 4 { "doomed" } else { "quick" };
        let req = OpenCaseRequest {
            tenant: TENANT.into(),
            customer_id: format!("cust-{}", i % 97),
            channel: casework_domain::pb::Channel::Web as i32,
            purchase_stage: casework_domain::pb::PurchaseStage::PostPurchase as i32,
            service_code: service.into(),
            summary: "chaos".into(),
            idempotency_key: key.clone(),
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if client.is_none() {
                client = crate::connect(url.clone())
                    .await
                    .ok()
                    .map(IntakeClient::new);
            }
            if let Some(c) = client.as_mut() {
                match c.open_case(req.clone()).await {
                    Ok(_) => break,
                    Err(_) => client = None,
                }
            }
            assert!(
                Instant::now() < deadline,
                "case {key} could not be opened for 5 minutes"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cases.push(CaseKey {
            tenant: tenant.clone(),
            case_id: CaseId::derive(&tenant, &key),
        });
        opened.fetch_add(1, Ordering::Relaxed);
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cases
}

/// The counters of a report that must be zero.
pub const VIOLATIONS: [&str; 5] = [
    "unclosed",
    "broken_chains",
    "duplicate_event_ids",
    "wrong_promise_or_close_counts",
    "ledger_differs",
];

/// Runs the probe with `kills` faults scheduled by `seed`; returns its
/// report (one JSON object; every counter of [`VIOLATIONS`] is 0 when the
/// system held). Violations are also printed to stderr, at most 20.
pub async fn run(kills: u64, seed: u64) -> serde_json::Value {
    let seed = seed.max(1);
    let dir = casework_testkit::TempDir::new().expect("temporary directory");
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, CATALOG).expect("catalogue");
    tokio::task::spawn_blocking(crate::release_bins)
        .await
        .expect("the service binaries build");
    let mut sys = tokio::task::spawn_blocking(move || System::start(&catalog, &[]))
        .await
        .expect("the system starts");
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    // Four clients opening cases side by side.
    let loaders: Vec<_> = (0..4)
        .map(|lane| {
            tokio::spawn(load(
                sys.service("intake").grpc_url(),
                lane,
                stop.clone(),
                opened.clone(),
            ))
        })
        .collect();
    let mut rng = Rng(seed);
    let mut by_victim = std::collections::BTreeMap::<&str, u64>::new();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(1_000 + rng.below(3_000))).await;
        let victim = VICTIMS[rng.below(VICTIMS.len() as u64) as usize];
        *by_victim.entry(victim).or_default() += 1;
        sys = tokio::task::spawn_blocking(move || {
            match victim {
                "nats" => {
                    sys.nats.kill();
                    sys.nats.start_again();
                }
                "nats-graceful" => {
                    sys.nats.stop_gracefully();
                    sys.nats.start_again();
                }
                name => {
                    let s = sys.service(name);
                    s.kill9();
                    s.start_again();
                    s.wait_ready(Duration::from_secs(120));
                }
            }
            sys
        })
        .await
        .expect("fault");
        eprintln!(
            "chaos: fault {}/{kills}: {victim} ({} cases opened)",
            k + 1,
            opened.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut cases = Vec::new();
    for l in loaders {
        cases.extend(l.await.expect("load"));
    }
    let faults_done = started.elapsed();

    // Every case closes.
    let log = sys.admin_log().await;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut unclosed: Vec<&CaseKey> = cases.iter().collect();
    while !unclosed.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for c in unclosed {
            let closed = log
                .read(c, 0)
                .await
                .map(|evs| {
                    evs.iter()
                        .any(|e| matches!(e.envelope.payload, Some(Payload::CaseClosed(_))))
                })
                .unwrap_or(false);
            if !closed {
                still.push(c);
            }
        }
        unclosed = still;
        if !unclosed.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // The auditor's invariants on the raw stream.
    let (mut events, mut broken, mut duplicates, mut bad_counts) =
        (0u64, Vec::new(), 0u64, Vec::new());
    for c in &cases {
        let raw = log.read_raw(c).await.expect("read raw");
        events += raw.len() as u64;
        let v = verify(&c.tenant, &c.case_id, &raw, None);
        if !v.is_intact() {
            broken.push(format!("{c}: {:?}", v.first_break));
        }
        let stored = log.read(c, 0).await.expect("read");
        let mut ids = HashSet::new();
        let (mut promises, mut closes) = (0, 0);
        for e in &stored {
            if !ids.insert(e.envelope.event_id.clone()) {
                duplicates += 1;
            }
            match e.envelope.payload {
                Some(Payload::PromiseMade(_)) => promises += 1,
                Some(Payload::CaseClosed(_)) => closes += 1,
                _ => {}
            }
        }
        if (promises, closes) != (1, 1) {
            bad_counts.push(format!(
                "{c}: {promises} promise_made, {closes} case_closed"
            ));
        }
    }
    // The ledger holds exactly the stream's events of every case.
    let mut lc = casework_ledger::proto::ledger_client::LedgerClient::new(
        crate::connect(sys.service("ledger").grpc_url())
            .await
            .expect("ledger"),
    );
    let mut archive_diffs = Vec::new();
    for c in &cases {
        let want = log.read_raw(c).await.expect("raw").len() as u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = lc
                .get_case(casework_ledger::proto::GetCaseRequest {
                    tenant: TENANT.into(),
                    case_id: c.case_id.to_string(),
                })
                .await
                .map(|r| r.into_inner().events)
                .unwrap_or(0);
            if got == want {
                break;
            }
            if Instant::now() > deadline {
                archive_diffs.push(format!("{c}: ledger {got}, stream {want}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let line = serde_json::json!({
        "scenario": "chaos",
        "seed": seed,
        "faults": kills,
        "by_victim": by_victim,
        "cases": cases.len(),
        "events": events,
        "unclosed": unclosed.len(),
        "broken_chains": broken.len(),
        "duplicate_event_ids": duplicates,
        "wrong_promise_or_close_counts": bad_counts.len(),
        "ledger_differs": archive_diffs.len(),
        "faults_s": (faults_done.as_secs_f64() * 10.0).round() / 10.0,
        "total_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    for p in broken
        .iter()
        .chain(&bad_counts)
        .chain(&archive_diffs)
        .chain(
            unclosed
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .iter(),
        )
        .take(20)
    {
        eprintln!("chaos: violation: {p}");
    }
    for s in sys.services.values_mut() {
        s.kill9();
    }
    drop(sys);
    line
}
