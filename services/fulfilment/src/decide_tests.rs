//! The decider as given / when / then tables, the property that any order
//! and repetition of deliveries yields the same log, and the rule that
//! every prefix of a decision is a state the decider finishes with the same
//! events (one event per append: [`assert_prefixes_heal`] runs on every
//! decision of several events these tests take).

use std::collections::BTreeMap;

use casework_catalog::{Catalog, Catalogs};
use casework_domain::chain::{from_timestamp, timestamp};
use casework_domain::pb::{self, Envelope, envelope::Payload};
use casework_domain::{EventId, EventType, NewEvent};
use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

use super::*;
use crate::workflow::{AttemptRef, Workflow};

const CATALOG: &str = r#"
version = "2026-01-01.1"

[services.three]
name = "Three steps"
stages = ["post_purchase"]
promise = { deadline = "1 hours", outcome = "Done" }

[[services.three.steps]]
name = "prepare"
handler = { type = "simulate", latency_ms = 1000, failure_probability = 0.0 }
timeout = "5s"
retry = { max_attempts = 3, initial_backoff = "2s", max_backoff = "10s", multiplier = 2.0, jitter = 0.5 }

[[services.three.steps]]
name = "ship"
handler = { type = "external", task = "shipping" }
timeout = "5s"
retry = { max_attempts = 3, initial_backoff = "2s", max_backoff = "10s", multiplier = 2.0, jitter = 0.5 }

[[services.three.steps]]
name = "confirm"
handler = { type = "manual", queue = "desk" }
timeout = "5s"
retry = { max_attempts = 1, initial_backoff = "0s", max_backoff = "0s", multiplier = 1.0, jitter = 0.0 }

[services.three.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "retry", max_retries = 1 }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 10000 }

[services.sim]
name = "Simulated"
stages = ["post_purchase"]
promise = { deadline = "1 hours", outcome = "Done" }

[[services.sim.steps]]
name = "a"
handler = { type = "simulate", latency_ms = 1000, failure_probability = 0.5 }
timeout = "5s"
retry = { max_attempts = 3, initial_backoff = "2s", max_backoff = "10s", multiplier = 2.0, jitter = 0.5 }

[[services.sim.steps]]
name = "b"
handler = { type = "simulate", latency_ms = 1000, failure_probability = 0.5 }
timeout = "5s"
retry = { max_attempts = 3, initial_backoff = "2s", max_backoff = "10s", multiplier = 2.0, jitter = 0.5 }

[[services.sim.steps]]
name = "c"
handler = { type = "simulate", latency_ms = 1000, failure_probability = 0.5 }
timeout = "5s"
retry = { max_attempts = 3, initial_backoff = "2s", max_backoff = "10s", multiplier = 2.0, jitter = 0.5 }

[services.sim.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "retry", max_retries = 1 }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 10000 }
"#;

fn catalogs() -> Catalogs {
    Catalogs::new([Catalog::from_toml_str(CATALOG, "test.toml").unwrap()]).unwrap()
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(secs)
}

/// A case's log in memory: envelopes with dense sequences.
#[derive(Clone)]
struct Log {
    case: CaseKey,
    events: Vec<Envelope>,
}

use casework_caselog::CaseKey;

impl Log {
    fn promised(service: &str) -> Self {
        let case = CaseKey::parse("acme", "01JD8X3V5R6M2Q4T7W9Y0Z1A2B").unwrap();
        let cat = catalogs();
        let c = cat.current();
        let mut log = Log {
            case,
            events: Vec::new(),
        };
        let ev = |key: &str, payload| NewEvent {
            event_id: EventId::derive(&log.case.case_id, "open", key),
            occurred_at: t0(),
            causation_id: String::new(),
            correlation_id: log.case.case_id.to_string(),
            payload,
        };
        let opened = ev(
            "opened",
            Payload::CaseOpened(pb::CaseOpened {
                service_code: service.into(),
                attributes: [("order".to_owned(), "A-1".to_owned())].into(),
                ..Default::default()
            }),
        );
        let promised = ev(
            "promised",
            Payload::PromiseMade(pb::PromiseMade {
                service_code: service.into(),
                catalog_version: c.version().to_string(),
                catalog_digest: c.digest().to_owned(),
                deadline: Some(timestamp(at(3600))),
                ..Default::default()
            }),
        );
        log.append(&[opened, promised]);
        log
    }

    fn wf(&self) -> Workflow {
        Workflow::fold(self.case.clone(), &self.events)
    }

    fn append(&mut self, events: &[NewEvent]) {
        for e in events {
            let seq = self.events.len() as u64 + 1;
            self.events.push(Envelope {
                event_id: e.event_id.to_string(),
                tenant: self.case.tenant.to_string(),
                case_id: self.case.case_id.to_string(),
                sequence: seq,
                event_type: EventType::of(&e.payload).to_string(),
                occurred_at: Some(timestamp(e.occurred_at)),
                causation_id: e.causation_id.clone(),
                correlation_id: e.correlation_id.clone(),
                payload: Some(e.payload.clone()),
                ..Default::default()
            });
        }
    }

    /// Decides at `now` and appends; returns the decision.
    fn decide(&mut self, now: DateTime<Utc>) -> Decision<Effect> {
        let d = decide(&self.wf(), now, &catalogs()).unwrap();
        assert_prefixes_heal(self, &d.events, &d.effects, now);
        self.append(&d.events);
        d
    }

    fn report(
        &mut self,
        r: AttemptRef,
        via: Via,
        rep: Report,
        now: DateTime<Utc>,
    ) -> Result<Vec<NewEvent>, Refusal> {
        let evs = report(&self.wf(), r, via, rep, now, &catalogs())?;
        assert_prefixes_heal(self, &evs, &[], now);
        self.append(&evs);
        Ok(evs)
    }

    fn recorded(&mut self, payload: Payload, now: DateTime<Utc>) {
        let e = NewEvent {
            event_id: EventId::derive(&self.case.case_id, "other", &self.events.len().to_string()),
            occurred_at: now,
            causation_id: String::new(),
            correlation_id: self.case.case_id.to_string(),
            payload,
        };
        self.append(&[e]);
    }
}

/// An event as the log compares it: everything but `occurred_at`.
fn essence(e: &NewEvent) -> (String, String, String, Payload) {
    (
        e.event_id.to_string(),
        e.causation_id.clone(),
        e.correlation_id.clone(),
        e.payload.clone(),
    )
}

/// One event per append (DESIGN.md §3): `events`, decided on `log` at
/// `now` with `effects`, are appended one by one, so a crash or a conflict
/// may land only the first k. For every such prefix, deciding again must
/// yield exactly the rest — same ids, causes and payloads — with the same
/// effects; deciding later must still yield the same ids.
#[track_caller]
fn assert_prefixes_heal(log: &Log, events: &[NewEvent], effects: &[Effect], now: DateTime<Utc>) {
    for k in 1..events.len() {
        let mut partial = log.clone();
        partial.append(&events[..k]);
        let healed = decide(&partial.wf(), now, &catalogs()).unwrap();
        let rest: Vec<_> = events[k..].iter().map(essence).collect();
        let got: Vec<_> = healed.events.iter().map(essence).collect();
        assert_eq!(
            got,
            rest,
            "after {:?} of {:?}, deciding again must finish the decision",
            types(&events[..k]),
            types(events)
        );
        assert_eq!(
            healed.effects,
            effects,
            "after {:?}: the same effects",
            types(&events[..k])
        );
        let later = decide(&partial.wf(), now + Duration::seconds(1), &catalogs()).unwrap();
        let ids = |es: &[NewEvent]| {
            es.iter()
                .map(|e| e.event_id.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&later.events),
            ids(&events[k..]),
            "healed later: same ids"
        );
    }
}

fn types(events: &[NewEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.event_type().as_str()).collect()
}

fn ok() -> Report {
    Report::Completed {
        output: BTreeMap::new(),
        by: system(),
    }
}

fn fail(retryable: bool) -> Report {
    Report::Failed {
        error: "boom".into(),
        retryable,
        by: system(),
    }
}

fn r(run: u32, step_index: u32, attempt: u32) -> AttemptRef {
    AttemptRef {
        run,
        step_index,
        attempt,
    }
}

fn timer(d: &Decision<Effect>) -> Option<DateTime<Utc>> {
    d.effects.iter().find_map(|e| match e {
        Effect::ScheduleTimer { at } => Some(*at),
        _ => None,
    })
}

#[test]
fn happy_path_runs_every_step_in_order_then_keeps_the_promise() {
    let mut log = Log::promised("three");
    // nothing before the promise is tested by the empty projection
    assert!(
        decide(&Workflow::new(log.case.clone()), at(0), &catalogs())
            .unwrap()
            .events
            .is_empty()
    );

    // when the promise is seen: run 1 starts with step 0 attempt 1, in one decision (two appends)
    let d = log.decide(at(0));
    assert_eq!(types(&d.events), ["fulfilment_started", "step_started"]);
    let Payload::StepStarted(s) = &d.events[1].payload else {
        panic!()
    };
    assert_eq!(
        (s.run, s.step_index, s.attempt, s.step_name.as_str()),
        (1, 0, 1, "prepare")
    );
    assert_eq!(from_timestamp(s.timeout_at.as_ref().unwrap()), at(5));
    assert!(matches!(d.effects[0], Effect::Simulate { attempt, .. } if attempt == r(1, 0, 1)));
    assert_eq!(timer(&d), Some(at(5)));
    // deciding again at once: nothing new (level-triggered), the timer stays
    let again = log.decide(at(0));
    assert!(again.events.is_empty());
    assert_eq!(timer(&again), Some(at(5)));

    // the simulator reports success; the next step is external
    assert_eq!(
        types(&log.report(r(1, 0, 1), Via::Simulate, ok(), at(1)).unwrap()),
        ["step_completed"]
    );
    let d = log.decide(at(1));
    assert_eq!(types(&d.events), ["step_started"]);
    assert!(matches!(&d.effects[0], Effect::Offer(o) if o.kind == "shipping" && !o.manual));
    // a worker may not complete it as a person, nor may the simulator
    assert!(matches!(
        log.report(r(1, 1, 1), Via::Manual, ok(), at(2)),
        Err(Refusal::WrongHandler(_))
    ));
    assert_eq!(
        types(&log.report(r(1, 1, 1), Via::External, ok(), at(2)).unwrap()),
        ["step_completed"]
    );
    // a repeated completion: the first answer, no second event
    assert!(matches!(
        log.report(r(1, 1, 1), Via::External, ok(), at(2)),
        Err(Refusal::AlreadyCompleted { .. })
    ));
    let d = log.decide(at(2));
    assert!(matches!(&d.effects[0], Effect::Offer(o) if o.kind == "desk" && o.manual));
    log.report(r(1, 2, 1), Via::Manual, ok(), at(3)).unwrap();
    let d = log.decide(at(3));
    assert_eq!(types(&d.events), ["promise_kept"]);
    let Payload::PromiseKept(k) = &d.events[0].payload else {
        panic!()
    };
    assert!(!k.late);
    assert_eq!(timer(&d), None);
    // then nothing more, ever
    assert!(log.decide(at(4000)).events.is_empty());
}

#[test]
fn a_failed_attempt_is_retried_after_its_back_off() {
    let mut log = Log::promised("three");
    log.decide(at(0));
    let evs = log
        .report(r(1, 0, 1), Via::Simulate, fail(true), at(1))
        .unwrap();
    assert_eq!(types(&evs), ["step_failed"]);
    let Payload::StepFailed(f) = &evs[0].payload else {
        panic!()
    };
    let retry_at = from_timestamp(f.retry_at.as_ref().unwrap());
    // 2 s back-off, jitter takes off at most half of it
    assert!(retry_at > at(1) && retry_at <= at(3), "{retry_at}");
    assert!(!f.timed_out);
    // before retry_at: nothing but the timer at retry_at
    let d = log.decide(at(1));
    assert!(d.events.is_empty());
    assert_eq!(timer(&d), Some(retry_at));
    // at retry_at: attempt 2
    let d = log.decide(retry_at);
    assert_eq!(types(&d.events), ["step_started"]);
    let Payload::StepStarted(s) = &d.events[0].payload else {
        panic!()
    };
    assert_eq!(s.attempt, 2);
    // the failed attempt's late success is stale
    assert!(matches!(
        log.report(r(1, 0, 1), Via::Simulate, ok(), retry_at),
        Err(Refusal::Stale(_))
    ));
    assert_eq!(
        types(
            &log.report(r(1, 0, 2), Via::Simulate, ok(), retry_at)
                .unwrap()
        ),
        ["step_completed"]
    );
}

#[test]
fn attempts_exhausted_or_not_retryable_fail_the_run_for_good() {
    // given three failing attempts of step 0
    let mut log = Log::promised("three");
    let mut now = at(0);
    log.decide(now);
    for attempt in 1..=3 {
        now += Duration::seconds(1);
        let evs = log
            .report(r(1, 0, attempt), Via::Simulate, fail(true), now)
            .unwrap();
        if attempt < 3 {
            assert_eq!(types(&evs), ["step_failed"]);
            now += Duration::seconds(20);
            assert_eq!(types(&log.decide(now).events), ["step_started"]);
        } else {
            // then the last one fails for good, with fulfilment_failed in the same decision
            assert_eq!(types(&evs), ["step_failed", "fulfilment_failed"]);
            let Payload::StepFailed(f) = &evs[0].payload else {
                panic!()
            };
            assert!(f.retry_at.is_none());
        }
    }
    assert!(log.decide(now + Duration::seconds(100)).events.is_empty());

    // a non-retryable failure fails at once
    let mut log = Log::promised("three");
    log.decide(at(0));
    log.report(r(1, 0, 1), Via::Simulate, ok(), at(1)).unwrap();
    log.decide(at(1));
    let evs = log
        .report(r(1, 1, 1), Via::External, fail(false), at(2))
        .unwrap();
    assert_eq!(types(&evs), ["step_failed", "fulfilment_failed"]);
    // a repeated failure report: the first answer
    assert!(matches!(
        log.report(r(1, 1, 1), Via::External, fail(false), at(2)),
        Err(Refusal::AlreadyFailed { retry_at: None, .. })
    ));
}

#[test]
fn an_attempt_past_its_timeout_fails_as_timed_out() {
    let mut log = Log::promised("three");
    log.decide(at(0));
    // just before the timeout: nothing
    assert!(log.decide(at(4)).events.is_empty());
    // at the timeout
    let d = log.decide(at(5));
    assert_eq!(types(&d.events), ["step_failed"]);
    let Payload::StepFailed(f) = &d.events[0].payload else {
        panic!()
    };
    assert!(f.timed_out && f.retry_at.is_some());
    assert_eq!(timer(&d), f.retry_at.as_ref().map(from_timestamp));
    // the simulator's late report is refused
    assert!(
        matches!(log.report(r(1, 0, 1), Via::Simulate, ok(), at(5)), Err(Refusal::Stale(m)) if m.contains("timed out"))
    );
    // a report at the timeout instant, before the timer decided, is refused too
    let mut log = Log::promised("three");
    log.decide(at(0));
    assert!(matches!(
        log.report(r(1, 0, 1), Via::Simulate, ok(), at(5)),
        Err(Refusal::Stale(_))
    ));

    // a manual step with one attempt: timing out fails the run
    let mut log = Log::promised("three");
    log.decide(at(0));
    log.report(r(1, 0, 1), Via::Simulate, ok(), at(1)).unwrap();
    log.decide(at(1));
    log.report(r(1, 1, 1), Via::External, ok(), at(2)).unwrap();
    log.decide(at(2));
    let d = log.decide(at(7));
    assert_eq!(types(&d.events), ["step_failed", "fulfilment_failed"]);
}

#[test]
fn retry_requested_starts_the_next_run_unless_the_promise_was_kept() {
    let mut log = Log::promised("three");
    log.decide(at(0));
    log.report(r(1, 0, 1), Via::Simulate, ok(), at(1)).unwrap();
    log.decide(at(1));
    log.report(r(1, 1, 1), Via::External, fail(false), at(2))
        .unwrap();
    // nothing until recovery asks
    assert!(log.decide(at(3)).events.is_empty());
    log.recorded(
        Payload::RetryRequested(pb::RetryRequested {
            recovery: 1,
            retry: 1,
            reason: "r".into(),
        }),
        at(4),
    );
    let d = log.decide(at(4));
    assert_eq!(types(&d.events), ["fulfilment_started", "step_started"]);
    let Payload::FulfilmentStarted(f) = &d.events[0].payload else {
        panic!()
    };
    assert_eq!(f.run, 2);
    assert_eq!(
        d.events[0].causation_id,
        log.events[log.events.len() - 3].event_id
    );
    // tokens of run 1 are stale now
    assert!(matches!(
        log.report(r(1, 1, 1), Via::External, ok(), at(4)),
        Err(Refusal::Stale(_))
    ));
    // run 2 succeeds; promise_kept is late after promise_broken
    log.recorded(Payload::PromiseBroken(pb::PromiseBroken::default()), at(5));
    log.report(r(2, 0, 1), Via::Simulate, ok(), at(5)).unwrap();
    log.decide(at(5));
    log.report(r(2, 1, 1), Via::External, ok(), at(6)).unwrap();
    log.decide(at(6));
    log.report(r(2, 2, 1), Via::Manual, ok(), at(7)).unwrap();
    let d = log.decide(at(7));
    let Payload::PromiseKept(k) = &d.events[0].payload else {
        panic!()
    };
    assert_eq!(k.run, 2);
    assert!(k.late);
    // a further retry after the promise was kept starts nothing
    log.recorded(
        Payload::RetryRequested(pb::RetryRequested::default()),
        at(8),
    );
    assert!(log.decide(at(8)).events.is_empty());
}

#[test]
fn kept_after_the_deadline_is_late() {
    let mut log = Log::promised("three");
    log.decide(at(0));
    log.report(r(1, 0, 1), Via::Simulate, ok(), at(1)).unwrap();
    log.decide(at(1));
    log.report(r(1, 1, 1), Via::External, ok(), at(2)).unwrap();
    log.decide(at(2));
    log.report(r(1, 2, 1), Via::Manual, ok(), at(4)).unwrap();
    let d = log.decide(at(3601));
    let Payload::PromiseKept(k) = &d.events[0].payload else {
        panic!()
    };
    assert!(k.late);
}

#[test]
fn withdrawn_or_closed_cases_stop() {
    for ending in [
        Payload::CaseWithdrawn(pb::CaseWithdrawn::default()),
        Payload::CaseClosed(pb::CaseClosed::default()),
    ] {
        let mut log = Log::promised("three");
        log.decide(at(0));
        log.recorded(ending.clone(), at(1));
        let d = log.decide(at(10));
        assert!(d.events.is_empty() && d.effects.is_empty(), "{ending:?}");
        assert!(matches!(
            log.report(r(1, 0, 1), Via::Simulate, ok(), at(1)),
            Err(Refusal::CaseEnded(_))
        ));
        // and before any run
        let mut log = Log::promised("three");
        log.recorded(ending, at(1));
        assert!(log.decide(at(1)).events.is_empty());
    }
}

#[test]
fn unknown_catalogue_references_cannot_be_decided() {
    let mut log = Log::promised("three");
    let Some(Payload::PromiseMade(p)) = &mut log.events[1].payload else {
        panic!()
    };
    p.catalog_version = "2030-01-01.1".into();
    let e = decide(&log.wf(), at(0), &catalogs()).unwrap_err();
    assert!(
        e.contains("2030-01-01.1") && e.contains("not loaded"),
        "{e}"
    );
    let mut log = Log::promised("nope");
    let e = decide(&log.wf(), at(0), &catalogs()).unwrap_err();
    assert!(e.contains("nope"), "{e}");
    let Some(Payload::PromiseMade(p)) = &mut log.events[1].payload else {
        panic!()
    };
    p.service_code = "three".into();
    p.catalog_digest = "00".into();
    let e = decide(&log.wf(), at(0), &catalogs()).unwrap_err();
    assert!(e.contains("digest"), "{e}");
    // an unknown attempt is refused as such
    let log = Log::promised("three");
    assert!(matches!(
        report(
            &log.wf(),
            r(1, 0, 1),
            Via::Simulate,
            ok(),
            at(0),
            &catalogs()
        ),
        Err(Refusal::UnknownAttempt(_))
    ));
}

#[test]
fn event_ids_are_deterministic() {
    let mut a = Log::promised("three");
    let mut b = Log::promised("three");
    let da = a.decide(at(0));
    let db = b.decide(at(9));
    let ids = |d: &Decision<Effect>| {
        d.events
            .iter()
            .map(|e| e.event_id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&da), ids(&db));
    assert_eq!(da.events[1].causation_id, da.events[0].event_id.to_string());
}

/// Every decision of several events the rules take, named: each is
/// appended one event at a time, and each prefix is healed by deciding
/// again (the check itself runs inside `Log::decide` and `Log::report`, for
/// every test; this table makes sure each shape is exercised).
#[test]
fn every_prefix_of_a_multi_event_decision_is_finished_by_deciding_again() {
    type Scenario = (
        &'static str,
        fn() -> (Log, Vec<NewEvent>),
        [&'static str; 2],
    );
    let scenarios: [Scenario; 5] = [
        (
            "the promise starts run 1",
            || {
                let log = Log::promised("three");
                let d = decide(&log.wf(), at(0), &catalogs()).unwrap();
                (log, d.events)
            },
            ["fulfilment_started", "step_started"],
        ),
        (
            "a retry request starts run 2",
            || {
                let mut log = Log::promised("three");
                log.decide(at(0));
                log.report(r(1, 0, 1), Via::Simulate, fail(false), at(1))
                    .unwrap();
                log.recorded(
                    Payload::RetryRequested(pb::RetryRequested {
                        recovery: 1,
                        retry: 1,
                        reason: "r".into(),
                    }),
                    at(2),
                );
                let d = decide(&log.wf(), at(2), &catalogs()).unwrap();
                (log, d.events)
            },
            ["fulfilment_started", "step_started"],
        ),
        (
            "the last attempt times out",
            || {
                let mut log = Log::promised("three");
                log.decide(at(0));
                log.report(r(1, 0, 1), Via::Simulate, ok(), at(1)).unwrap();
                log.decide(at(1));
                log.report(r(1, 1, 1), Via::External, ok(), at(2)).unwrap();
                log.decide(at(2));
                let d = decide(&log.wf(), at(7), &catalogs()).unwrap();
                (log, d.events)
            },
            ["step_failed", "fulfilment_failed"],
        ),
        (
            "a worker reports a failure that may not be retried",
            || {
                let mut log = Log::promised("three");
                log.decide(at(0));
                log.report(r(1, 0, 1), Via::Simulate, ok(), at(1)).unwrap();
                log.decide(at(1));
                let evs = report(
                    &log.wf(),
                    r(1, 1, 1),
                    Via::External,
                    fail(false),
                    at(2),
                    &catalogs(),
                )
                .unwrap();
                (log, evs)
            },
            ["step_failed", "fulfilment_failed"],
        ),
        (
            "the last attempt allowed fails",
            || {
                let mut log = Log::promised("three");
                log.decide(at(0));
                let mut now = at(0);
                for attempt in 1..3 {
                    now += Duration::seconds(1);
                    log.report(r(1, 0, attempt), Via::Simulate, fail(true), now)
                        .unwrap();
                    now += Duration::seconds(20);
                    log.decide(now);
                }
                let evs = report(
                    &log.wf(),
                    r(1, 0, 3),
                    Via::Simulate,
                    fail(true),
                    now + Duration::seconds(1),
                    &catalogs(),
                )
                .unwrap();
                (log, evs)
            },
            ["step_failed", "fulfilment_failed"],
        ),
    ];
    for (name, given, shape) in scenarios {
        let (log, events) = given();
        assert_eq!(types(&events), shape, "{name}");
        let now = from_timestamp(
            log.events
                .last()
                .and_then(|e| e.occurred_at.as_ref())
                .unwrap(),
        );
        // Decided again at the instant of the original decision: only the
        // events are compared here (effects are checked by the helper for
        // decisions taken through `Log`).
        for k in 1..events.len() {
            let mut partial = log.clone();
            partial.append(&events[..k]);
            let at_decision = events[k].occurred_at;
            let healed = decide(&partial.wf(), at_decision, &catalogs()).unwrap();
            assert_eq!(
                healed.events.iter().map(essence).collect::<Vec<_>>(),
                events[k..].iter().map(essence).collect::<Vec<_>>(),
                "{name}: after {:?}",
                types(&events[..k])
            );
            // and later, with the same ids
            let later = decide(
                &partial.wf(),
                at_decision.max(now) + Duration::seconds(1),
                &catalogs(),
            )
            .unwrap();
            assert_eq!(
                later
                    .events
                    .iter()
                    .map(|e| e.event_id.to_string())
                    .collect::<Vec<_>>(),
                events[k..]
                    .iter()
                    .map(|e| e.event_id.to_string())
                    .collect::<Vec<_>>(),
                "{name}: later, after {:?}",
                types(&events[..k])
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Property: for any order and repetition of deliveries, the same log.
// ---------------------------------------------------------------------------

/// What the simulator does for an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Succeed,
    Fail,
    /// No report at all: the timeout decides.
    Silent,
}

#[derive(Debug, Clone, PartialEq)]
enum Delivery {
    /// A reconcile wake-up (a consumer delivery or a timer fire).
    Wake,
    /// A simulated outcome reaching the report path.
    Report(AttemptRef, Outcome),
}

/// Runs the world for `ticks` seconds. `noise` perturbs it: it reorders
/// each tick's deliveries, repeats some at once and re-delivers some later.
fn world(script: &BTreeMap<(u32, u32), Outcome>, noise: &[u8]) -> Vec<Envelope> {
    let mut log = Log::promised("sim");
    let mut pending: Vec<(i64, Delivery)> = vec![(0, Delivery::Wake)];
    let mut n = noise.iter().copied().cycle();
    let noisy = !noise.is_empty();
    for tick in 0..200 {
        let now = at(tick);
        let mut due: Vec<Delivery> = Vec::new();
        pending.retain(|(t, d)| {
            if *t <= tick {
                due.push(d.clone());
                false
            } else {
                true
            }
        });
        if noisy {
            // extra timer fires and wake-ups at random ticks
            if n.next().unwrap() % 3 == 0 {
                due.push(Delivery::Wake);
            }
            // a random permutation
            for i in (1..due.len()).rev() {
                let j = n.next().unwrap() as usize % (i + 1);
                due.swap(i, j);
            }
        }
        let mut queue = std::collections::VecDeque::from(due);
        // Noise re-queues deliveries; past this many rounds in one tick it
        // stops, so the drain ends whatever the noise (a noise of all
        // multiples of 8 would otherwise re-queue the drain's wake-up
        // forever).
        let mut rounds = 0;
        loop {
            let d = match queue.pop_front() {
                Some(d) => d,
                // the consumer delivers every appended event: drain until
                // nothing changes at this instant
                None => Delivery::Wake,
            };
            let before = log.events.len();
            rounds += 1;
            if noisy && rounds < 16 {
                match n.next().unwrap() % 8 {
                    0 => queue.push_back(d.clone()),
                    1 => pending.push((tick + i64::from(n.next().unwrap() % 30), d.clone())),
                    _ => {}
                }
            }
            match &d {
                Delivery::Wake => {
                    let dec = log.decide(now);
                    for e in dec.effects {
                        if let Effect::Simulate { attempt, .. } = e {
                            let o = script[&(attempt.step_index, attempt.attempt)];
                            if o != Outcome::Silent {
                                pending.push((tick + 1, Delivery::Report(attempt, o)));
                            }
                        }
                    }
                }
                Delivery::Report(a, o) => {
                    let rep = if *o == Outcome::Succeed {
                        ok()
                    } else {
                        fail(true)
                    };
                    let _ = log.report(*a, Via::Simulate, rep, now);
                }
            }
            if queue.is_empty() && d == Delivery::Wake && log.events.len() == before {
                break;
            }
        }
    }
    log.events
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Succeed),
        1 => Just(Outcome::Fail),
        1 => Just(Outcome::Silent),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_order_and_repetition_of_deliveries_yields_the_same_log(
        outcomes in proptest::collection::vec(outcome(), 9),
        noise in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let script: BTreeMap<(u32, u32), Outcome> = (0..3u32)
            .flat_map(|s| (1..=3u32).map(move |a| (s, a)))
            .zip(outcomes)
            .collect();
        let reference = world(&script, &[]);
        let perturbed = world(&script, &noise);
        // the run ended one way or the other
        let last = reference.last().unwrap().event_type.clone();
        prop_assert!(last == "promise_kept" || last == "fulfilment_failed", "{last}");
        prop_assert_eq!(reference, perturbed);
    }
}

/// Noise made only of multiples of 8 re-queues every delivery it sees; the
/// world must still settle, on the same log (this once hung the property
/// test above about one run in ten).
#[test]
fn noise_that_requeues_everything_still_settles_on_the_same_log() {
    let script: BTreeMap<(u32, u32), Outcome> = (0..3u32)
        .flat_map(|s| (1..=3u32).map(move |a| (s, a)))
        .map(|k| (k, Outcome::Succeed))
        .collect();
    let reference = world(&script, &[]);
    for noise in [&[0u8][..], &[8, 16]] {
        assert_eq!(world(&script, noise), reference, "noise {noise:?}");
    }
}
