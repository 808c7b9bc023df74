//! One event per append leaves a prefix of a decision in the log when the
//! writer dies between two of its events. This suite kills each writer at
//! exactly that point of every multi-event decision — intake between
//! `case_opened` and `promise_made` (OpenCase) and between
//! `customer_notified` and `case_closed` (closing), fulfilment between
//! `fulfilment_started` and its first `step_started`, recovery between
//! `recovery_started` and the rest of its ladder — with the fault hook
//! `CASEWORK_FAULT_CRASH_BETWEEN` (the process aborts as abruptly as
//! `kill -9`), restarts it without the hook, and shows that each case
//! completes by deciding again: closed exactly once, no event id twice, a
//! dense log and a valid chain.

use std::collections::HashSet;
use std::time::Duration;

use casework_caselog::domain::pb::envelope::Payload;
use casework_caselog::domain::verify;
use casework_caselog::{CaseKey, CaseLog, JetStreamLog};
use casework_e2e::System;
use casework_proto::events::v1 as pb;
use casework_proto::intake::v1 as iapi;
use casework_testkit::eventually_explained;

const CRASH: &str = "CASEWORK_FAULT_CRASH_BETWEEN";

const CATALOG: &str = r#"
version = "e2e-crash-1"

[services.quick]
name = "Quick fix"
stages = ["pre_purchase", "during_purchase", "post_purchase"]
promise = { deadline = "30 minutes", outcome = "Fixed quickly" }

[[services.quick.steps]]
name = "one"
handler = { type = "simulate", latency_ms = 0, failure_probability = 0.0 }
timeout = "3s"
retry = { max_attempts = 3, initial_backoff = "200ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.1 }

[services.quick.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "apology" }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 1000000 }

[services.doomed]
name = "Always fails"
stages = ["pre_purchase", "during_purchase", "post_purchase"]
promise = { deadline = "30 minutes", outcome = "Never happens" }

[[services.doomed.steps]]
name = "impossible"
handler = { type = "simulate", latency_ms = 0, failure_probability = 1.0 }
timeout = "3s"
retry = { max_attempts = 1, initial_backoff = "200ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.1 }

[services.doomed.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "apology" }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 1000000 }
"#;

const TENANT: &str = "crash";
/// A redelivery after a crash waits for the consumer's ack wait (30 s).
const HEAL: Duration = Duration::from_secs(90);

async fn open_once(intake: &str, key: &str, service: &str) -> Result<String, String> {
    let mut c = iapi::intake_client::IntakeClient::new(
        casework_e2e::connect(intake.to_owned())
            .await
            .map_err(|e| e.to_string())?,
    );
    let r = c
        .open_case(iapi::OpenCaseRequest {
            tenant: TENANT.to_owned(),
            customer_id: "cust-1".to_owned(),
            channel: pb::Channel::Web as i32,
            purchase_stage: pb::PurchaseStage::PostPurchase as i32,
            service_code: service.to_owned(),
            summary: format!("crash test {key}"),
            idempotency_key: key.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(r.into_inner().case_id)
}

/// Waits until `case` holds an event of `event_type`.
async fn wait_for_event(log: &JetStreamLog, case: &CaseKey, event_type: &str, timeout: Duration) {
    eventually_explained(
        timeout,
        Duration::from_millis(100),
        &format!("case {case} to hold {event_type}"),
        || async {
            let events = log.read(case, 0).await.map_err(|e| e.to_string())?;
            if events.iter().any(|e| e.envelope.event_type == event_type) {
                Ok(())
            } else {
                Err(format!(
                    "its log is {:?}",
                    events
                        .iter()
                        .map(|e| e.envelope.event_type.as_str())
                        .collect::<Vec<_>>()
                ))
            }
        },
    )
    .await
}

/// The service `name` died at its crash point: it exited on its own (not
/// killed by us), and it starts again without the hook.
fn restart_after_crash(sys: &mut System, name: &str, next_crash: Option<&str>) {
    let s = sys.service(name);
    let status = s.wait_exit(Duration::from_secs(60));
    assert!(
        !status.success(),
        "{name} aborted at its crash point: {status}"
    );
    assert!(
        s.log().contains(CRASH),
        "{name} says why it stopped:\n{}",
        s.log()
    );
    s.set_env(CRASH, next_crash);
    s.start_again();
    s.wait_ready(Duration::from_secs(60));
}

/// The invariants of a healed case: closed exactly once with `resolution`,
/// each event id once, a dense log and a valid chain, and each event type
/// of a crashed decision exactly once.
async fn check(log: &JetStreamLog, case: &CaseKey, resolution: pb::Resolution, once: &[&str]) {
    let events = log.read(case, 0).await.expect("read");
    let types: Vec<&str> = events
        .iter()
        .map(|e| e.envelope.event_type.as_str())
        .collect();
    let seqs: Vec<u64> = events.iter().map(|e| e.envelope.sequence).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "dense: {types:?}"
    );
    let mut ids = HashSet::new();
    for e in &events {
        assert!(
            ids.insert(e.envelope.event_id.clone()),
            "event id {} twice in {types:?}",
            e.envelope.event_id
        );
    }
    for t in once
        .iter()
        .chain(["case_opened", "promise_made", "case_closed"].iter())
    {
        assert_eq!(
            types.iter().filter(|x| *x == t).count(),
            1,
            "{t} exactly once in {types:?}"
        );
    }
    assert_eq!(types[0], "case_opened");
    assert_eq!(types[1], "promise_made", "nothing acts before the promise");
    let closed = events
        .iter()
        .find_map(|e| match &e.envelope.payload {
            Some(Payload::CaseClosed(c)) => Some(c.resolution),
            _ => None,
        })
        .expect("closed");
    assert_eq!(closed, resolution as i32, "{types:?}");
    let raw = log.read_raw(case).await.expect("raw");
    let v = verify(&case.tenant, &case.case_id, &raw, None);
    assert!(v.is_intact(), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_between_two_events_of_a_decision_is_healed_by_deciding_again() {
    let dir = casework_testkit::TempDir::new().expect("temp dir");
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, CATALOG).expect("catalogue");
    let mut sys = tokio::task::spawn_blocking(move || {
        System::start(
            &catalog,
            &[
                ("intake", CRASH, "case_opened"),
                ("fulfilment", CRASH, "fulfilment_started"),
                ("recovery", CRASH, "recovery_started"),
            ],
        )
    })
    .await
    .expect("system starts");
    let log = sys.admin_log().await;
    let intake = sys.services["intake"].grpc_url();

    // OpenCase: intake dies after case_opened; the client's call fails.
    assert!(
        open_once(&intake, "kept", "quick").await.is_err(),
        "the call in flight when intake died does not succeed"
    );
    let kept = CaseKey::parse(
        TENANT,
        casework_domain::CaseId::derive(&casework_domain::Tenant::parse(TENANT).unwrap(), "kept")
            .as_str(),
    )
    .unwrap();
    let raw = log.read(&kept, 0).await.unwrap();
    assert_eq!(
        raw.iter()
            .map(|e| e.envelope.event_type.as_str())
            .collect::<Vec<_>>(),
        vec!["case_opened"],
        "the crash left a prefix: opened, no promise"
    );
    // Intake comes back (set to die next between customer_notified and
    // case_closed); the client retries with the same key and gets the case
    // with its promise.
    restart_after_crash(&mut sys, "intake", Some("customer_notified"));
    let id = eventually_explained(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "the retried OpenCase",
        || open_once(&intake, "kept", "quick"),
    )
    .await;
    assert_eq!(id, kept.case_id.as_str());

    // Fulfilment dies after fulfilment_started, before its first step.
    wait_for_event(&log, &kept, "fulfilment_started", HEAL).await;
    restart_after_crash(&mut sys, "fulfilment", None);
    // It carries on; the promise is kept; intake dies after telling the
    // customer, before closing.
    wait_for_event(&log, &kept, "customer_notified", HEAL).await;
    restart_after_crash(&mut sys, "intake", None);
    wait_for_event(&log, &kept, "case_closed", HEAL).await;
    check(
        &log,
        &kept,
        pb::Resolution::PromiseKept,
        &["fulfilment_started", "customer_notified", "promise_kept"],
    )
    .await;

    // A step that fails for good: recovery dies after recovery_started,
    // before its apology; restarted, it finishes the ladder and intake
    // closes the case.
    let doomed = CaseKey::parse(
        TENANT,
        &eventually_explained(
            Duration::from_secs(30),
            Duration::from_millis(100),
            "OpenCase of the doomed case",
            || open_once(&intake, "doomed", "doomed"),
        )
        .await,
    )
    .unwrap();
    wait_for_event(&log, &doomed, "recovery_started", HEAL).await;
    restart_after_crash(&mut sys, "recovery", None);
    wait_for_event(&log, &doomed, "case_closed", HEAL).await;
    check(
        &log,
        &doomed,
        pb::Resolution::Recovered,
        &[
            "recovery_started",
            "apology_sent",
            "recovery_completed",
            "fulfilment_failed",
        ],
    )
    .await;
}
