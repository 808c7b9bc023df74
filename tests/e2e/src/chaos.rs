//! The seeded fault probe (bench scenario `chaos`, and at a smaller count
//! the e2e test `chaos`). The four services as release processes
//! on a real nats-server under a steady load of cases (three instant steps,
//! or a step that always fails and goes to recovery), while a seeded
//! random schedule (one fault every 1–4 s) kills one part of the system at a time — a service with
//! SIGKILL, the broker with SIGKILL or SIGTERM — and starts it again.
//! After the last fault the load stops and every case opened must close;
//! then the e2e suite's checker (`crate::audit`) reads the raw stream —
//! valid chains, no event id twice, no step attempt twice, one
//! `promise_made` and one `case_closed` per case — and the ledger must
//! have archived exactly what the stream holds.
//! The number of faults and the seed choose the run; the same seed gives
//! the same schedule of faults.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::System;
use casework_caselog::{CaseKey, CaseLog};
use casework_domain::{CaseId, Tenant};
use casework_intake::proto::{OpenCaseRequest, intake_client::IntakeClient};
use casework_testkit::poll_until;

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
    let client = tokio::sync::Mutex::new(None);
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
        // Until intake takes it (the same key, so a retry that landed
        // before is found, not doubled).
        poll_until(Duration::from_secs(300), Duration::from_millis(200), || {
            let (req, url, client) = (req.clone(), url.clone(), &client);
            async move {
                let mut slot = client.lock().await;
                if slot.is_none() {
                    *slot = crate::connect(url).await.ok().map(IntakeClient::new);
                }
                let c = slot.as_mut().ok_or("intake unreachable".to_owned())?;
                match c.open_case(req).await {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        *slot = None;
                        Err(e.to_string())
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|why| panic!("case {key} could not be opened for 5 minutes: {why}"));
        cases.push(CaseKey {
            tenant: tenant.clone(),
            case_id: CaseId::derive(&tenant, &key),
        });
        opened.fetch_add(1, Ordering::Relaxed);
        i += 1;
        // The load's pace (about 20 cases/s per client), not a wait.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cases
}

/// The counters of a report that must be zero.
pub const VIOLATIONS: [&str; 6] = [
    "unclosed",
    "broken_chains",
    "duplicate_event_ids",
    "attempts_started_twice",
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
        // The schedule under test: the next fault 1–4 s after this one.
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
    let unclosed = poll_until(
        Duration::from_secs(600),
        Duration::from_millis(500),
        || async {
            let open: Vec<String> = crate::audit::states(&log, &cases)
                .await
                .iter()
                .zip(&cases)
                .filter(|(s, _)| !s.is_closed())
                .map(|(s, c)| format!("{c} not closed ({})", s.status.as_str()))
                .collect();
            if open.is_empty() { Ok(()) } else { Err(open) }
        },
    )
    .await
    .err()
    .unwrap_or_default();

    // The auditor's invariants on the raw stream.
    let audit = crate::audit::check(&log, &cases).await;
    // The ledger holds exactly the stream's events of every case.
    let lc = casework_ledger::proto::ledger_client::LedgerClient::new(
        crate::connect(sys.service("ledger").grpc_url())
            .await
            .expect("ledger"),
    );
    let mut archive_diffs = Vec::new();
    for c in &cases {
        let want = log.read_raw(c).await.expect("raw").len() as u64;
        let archived = poll_until(Duration::from_secs(60), Duration::from_millis(200), || {
            let mut lc = lc.clone();
            async move {
                let got = lc
                    .get_case(casework_ledger::proto::GetCaseRequest {
                        tenant: TENANT.into(),
                        case_id: c.case_id.to_string(),
                    })
                    .await
                    .map(|r| r.into_inner().events)
                    .unwrap_or(0);
                if got == want {
                    Ok(())
                } else {
                    Err(format!("{c}: ledger {got}, stream {want}"))
                }
            }
        })
        .await;
        archive_diffs.extend(archived.err());
    }
    let line = serde_json::json!({
        "scenario": "chaos",
        "seed": seed,
        "faults": kills,
        "by_victim": by_victim,
        "cases": cases.len(),
        "events": audit.events,
        "unclosed": unclosed.len(),
        "broken_chains": audit.broken_chains.len(),
        "duplicate_event_ids": audit.duplicate_event_ids.len(),
        "attempts_started_twice": audit.attempts_twice.len(),
        "wrong_promise_or_close_counts": audit.wrong_promise_or_close_counts.len(),
        "ledger_differs": archive_diffs.len(),
        "faults_s": (faults_done.as_secs_f64() * 10.0).round() / 10.0,
        "total_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    for p in audit
        .violations()
        .into_iter()
        .chain(&archive_diffs)
        .chain(&unclosed)
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
