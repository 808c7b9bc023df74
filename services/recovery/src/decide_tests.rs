//! Given / when / then tables for the ladder, on the sample catalogue.

use casework_catalog::{Compensation, CompensationKind, Currency, RecoveryAction, ServiceDef};
use casework_domain::chain::timestamp;
use casework_domain::pb::{self, Envelope, envelope::Payload};
use casework_domain::{CaseId, EventId, EventType, NewEvent};
use chrono::{DateTime, Duration, Utc};

use super::*;
use crate::projection::Projection;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000, 0).unwrap()
}

fn deadline() -> DateTime<Utc> {
    t0() + Duration::hours(2)
}

fn service(code: &str) -> ServiceDef {
    casework_catalog::sample().service(code).unwrap().clone()
}

/// A case's log, built by the test acting as every writer.
struct Case {
    id: CaseId,
    log: Vec<Envelope>,
    service: ServiceDef,
    /// Prefixes of decisions checked by [`Case::run`].
    checked: usize,
}

impl Case {
    fn new(service_code: &str) -> Self {
        let mut c = Case {
            id: CaseId::from_ulid(ulid::Ulid::from_parts(1_790_000_000_000, 7)),
            log: Vec::new(),
            service: service(service_code),
            checked: 0,
        };
        c.push(
            t0(),
            Payload::CaseOpened(pb::CaseOpened {
                channel: pb::Channel::Chat as i32,
                service_code: service_code.into(),
                ..Default::default()
            }),
        );
        c.push(
            t0(),
            Payload::PromiseMade(pb::PromiseMade {
                service_code: service_code.into(),
                catalog_version: "2026-11-01.1".into(),
                deadline: Some(timestamp(deadline())),
                ..Default::default()
            }),
        );
        c
    }

    fn push(&mut self, at: DateTime<Utc>, payload: Payload) -> String {
        let n = self.log.len() as u64 + 1;
        let id = EventId::derive(&self.id, "test", &n.to_string()).to_string();
        self.log.push(Envelope {
            event_id: id.clone(),
            tenant: "acme".into(),
            case_id: self.id.to_string(),
            sequence: n,
            event_type: EventType::of(&payload).to_string(),
            occurred_at: Some(timestamp(at)),
            correlation_id: self.id.to_string(),
            payload: Some(payload),
            ..Default::default()
        });
        id
    }

    fn projection(&self) -> Projection {
        Projection::fold(&self.log)
    }

    fn decide(&self, now: DateTime<Utc>, spent: u64) -> Decision<Effect> {
        decide(
            &self.projection(),
            now,
            &casework_catalog::sample(),
            &self.service,
            Budget {
                spent_today_minor: spent,
            },
        )
        .unwrap()
    }

    /// Appends an event recovery decided.
    fn append(&mut self, e: NewEvent) {
        let n = self.log.len() as u64 + 1;
        self.log.push(Envelope {
            event_id: e.event_id.to_string(),
            tenant: "acme".into(),
            case_id: self.id.to_string(),
            sequence: n,
            event_type: e.event_type().to_string(),
            occurred_at: Some(timestamp(e.occurred_at)),
            causation_id: e.causation_id,
            correlation_id: e.correlation_id,
            payload: Some(e.payload),
            ..Default::default()
        });
    }

    /// Decides and appends until nothing is left to do; the event types
    /// appended, in order. Every multi-event decision is also checked to
    /// continue from each of its prefixes ([`Case::check_prefixes`]).
    fn run(&mut self, now: DateTime<Utc>, spent: u64) -> Vec<&'static str> {
        let mut out = Vec::new();
        for _ in 0..10 {
            let d = self.decide(now, spent);
            if d.events.is_empty() {
                return out;
            }
            self.checked += self.check_prefixes(&d.events, now, spent);
            for e in d.events {
                out.push(e.event_type().as_str());
                self.append(e);
            }
        }
        panic!("decisions did not settle")
    }

    /// One event per append: a crash may leave any prefix of `events` (a
    /// decision taken on this case at `now` with `spent` granted today) in
    /// the log. For every prefix, deciding again (a moment later, with a
    /// budget view that has caught up with the prefix's grants) gives
    /// exactly the rest: the same ids, causes and payloads. Returns how
    /// many prefixes were checked.
    fn check_prefixes(&self, events: &[NewEvent], now: DateTime<Utc>, spent: u64) -> usize {
        let same = |e: &NewEvent| {
            (
                e.event_id.to_string(),
                e.causation_id.clone(),
                e.correlation_id.clone(),
                e.payload.clone(),
            )
        };
        for k in 1..events.len() {
            let mut healed = Case {
                id: self.id.clone(),
                log: self.log.clone(),
                service: self.service.clone(),
                checked: 0,
            };
            let mut caught_up = spent;
            for e in &events[..k] {
                if let Payload::CompensationGranted(g) = &e.payload {
                    caught_up += u64::try_from(g.amount.as_ref().unwrap().amount_minor).unwrap();
                }
                healed.append(e.clone());
            }
            let rest = healed.decide(now + Duration::seconds(1), caught_up).events;
            let want: Vec<_> = events[k..].iter().map(same).collect();
            let got: Vec<_> = rest.iter().map(same).collect();
            assert_eq!(
                got,
                want,
                "after {k} of {:?}",
                events
                    .iter()
                    .map(|e| e.event_type().as_str())
                    .collect::<Vec<_>>()
            );
        }
        events.len().saturating_sub(1)
    }

    fn last<T>(&self, f: impl Fn(&Payload) -> Option<T>) -> Option<T> {
        self.log
            .iter()
            .rev()
            .find_map(|e| e.payload.as_ref().and_then(&f))
    }

    fn outcome(&self) -> Option<pb::RecoveryOutcome> {
        self.last(|p| match p {
            Payload::RecoveryCompleted(r) => Some(r.outcome()),
            _ => None,
        })
    }

    fn failed(&mut self, at: DateTime<Utc>) -> String {
        self.push(
            at,
            Payload::FulfilmentFailed(pb::FulfilmentFailed {
                run: 1,
                step_index: 0,
                step_name: "check".into(),
                reason: "carrier down".into(),
            }),
        )
    }

    fn kept(&mut self, at: DateTime<Utc>, late: bool) -> String {
        self.push(
            at,
            Payload::PromiseKept(pb::PromiseKept {
                run: 1,
                deadline: Some(timestamp(deadline())),
                late,
            }),
        )
    }

    fn feedback(&mut self, at: DateTime<Utc>, score: u32) -> String {
        self.push(
            at,
            Payload::FeedbackReceived(pb::FeedbackReceived {
                score,
                comment: "slow".into(),
                ..Default::default()
            }),
        )
    }

    fn decide_comp(&mut self, id: &str, approve: bool) {
        let who = Some(pb::Actor {
            kind: pb::ActorKind::Person as i32,
            id: "e-7".into(),
            display_name: "Dana".into(),
            authenticated_by: String::new(),
        });
        let p = if approve {
            Payload::CompensationApproved(pb::CompensationApproved {
                compensation_id: id.into(),
                approved_by: who,
                note: String::new(),
            })
        } else {
            Payload::CompensationDeclined(pb::CompensationDeclined {
                compensation_id: id.into(),
                declined_by: who,
                reason: "no".into(),
            })
        };
        self.push(t0(), p);
    }
}

const BROKEN: &str = "promise_broken";
const STARTED: &str = "recovery_started";
const APOLOGY: &str = "apology_sent";
const PROPOSED: &str = "compensation_proposed";
const GRANTED: &str = "compensation_granted";
const RETRY: &str = "retry_requested";
const ESCALATED: &str = "case_escalated";
const COMPLETED: &str = "recovery_completed";

#[test]
fn deadline_given_when_then() {
    let after = deadline() + Duration::milliseconds(300);
    // given (what happened before `now`), when (now), then (appended, schedule?)
    type Given = fn(&mut Case);
    type Row<'a> = (&'a str, Given, DateTime<Utc>, &'a [&'a str], bool);
    let table: &[Row] = &[
        (
            "pending, before the deadline",
            |_| {},
            deadline() - Duration::seconds(1),
            &[],
            true,
        ),
        (
            "pending, at the deadline",
            |_| {},
            deadline(),
            &[BROKEN],
            false,
        ),
        (
            "kept on time",
            |c| {
                c.kept(t0(), false);
            },
            after,
            &[],
            false,
        ),
        (
            "kept late without promise_broken",
            |c| {
                c.kept(deadline() + Duration::milliseconds(300), true);
            },
            after,
            &[BROKEN],
            false,
        ),
        (
            "withdrawn",
            |c| {
                c.push(t0(), Payload::CaseWithdrawn(Default::default()));
            },
            after,
            &[],
            false,
        ),
    ];
    for (name, given, now, then, schedules) in table {
        let mut c = Case::new("product_enquiry");
        given(&mut c);
        let d = c.decide(*now, 0);
        let types: Vec<_> = d.events.iter().map(|e| e.event_type().as_str()).collect();
        assert_eq!(&types, then, "{name}");
        assert_eq!(
            d.effects
                .contains(&Effect::ScheduleDeadline { at: deadline() }),
            *schedules,
            "{name}: schedule"
        );
    }
}

#[test]
fn a_broken_promise_runs_its_ladder_in_one_decision_after_the_breach() {
    // refund: apology (email), voucher 1000 (auto ≤ 2500), escalate payments.
    let mut c = Case::new("refund");
    let now = deadline() + Duration::milliseconds(10);
    assert_eq!(
        c.decide(now, 0).events.len(),
        1,
        "promise_broken alone first"
    );
    assert_eq!(
        c.run(now, 0),
        [
            BROKEN, STARTED, APOLOGY, PROPOSED, GRANTED, ESCALATED, COMPLETED
        ]
    );
    assert_eq!(c.outcome(), Some(pb::RecoveryOutcome::Escalated));
    let apology = c
        .last(|p| match p {
            Payload::ApologySent(a) => Some(a.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(apology.channel(), pb::Channel::Email);
    assert!(
        apology.reason.contains("was not kept in time"),
        "{}",
        apology.reason
    );
    // The customer reads the catalogue's promise_broken wording, never the
    // internal reason; the event says which template and locale.
    let told = apology.customer_message.clone().expect("told");
    assert_eq!(told.text, apology.message);
    assert!(told.template_id.ends_with("en.promise_broken"), "{told:?}");
    assert_eq!(told.locale, "en");
    assert!(!told.text.contains("was not kept in time"), "{told:?}");
    let granted = c
        .last(|p| match p {
            Payload::CompensationGranted(g) => Some(g.clone()),
            _ => None,
        })
        .unwrap();
    let told = granted.customer_message.expect("told of the grant");
    assert!(told.text.contains("EUR 10.00"), "{told:?}");
    // Every action names the broken promise as its cause.
    let broken_id = c
        .log
        .iter()
        .find(|e| e.event_type == BROKEN)
        .unwrap()
        .event_id
        .clone();
    for e in c
        .log
        .iter()
        .filter(|e| e.writer.is_empty() && e.sequence > 3)
    {
        assert_eq!(e.causation_id, broken_id, "{}", e.event_type);
    }
    // Nothing more to do, and a late keep changes nothing.
    assert!(c.run(now + Duration::hours(1), 0).is_empty());
    c.kept(now + Duration::hours(1), true);
    assert!(c.run(now + Duration::hours(1), 0).is_empty());
}

#[test]
fn the_same_state_always_gives_the_same_event_ids() {
    let mut c = Case::new("refund");
    c.run(deadline(), 0);
    let mut again = Case::new("refund");
    again.run(deadline() + Duration::seconds(5), 0);
    let ids = |c: &Case| c.log.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&c), ids(&again));
}

#[test]
fn a_step_that_always_fails_is_retried_then_escalated() {
    // product_enquiry: retry (max 1), escalate tier2.
    let mut c = Case::new("product_enquiry");
    c.failed(t0());
    assert_eq!(c.run(t0(), 0), [STARTED, RETRY]);
    assert!(c.run(t0(), 0).is_empty(), "waits for the retried run");
    assert!(
        c.projection()
            .open_recovery()
            .unwrap()
            .waiting_for_fulfilment()
    );
    c.failed(t0());
    assert_eq!(c.run(t0(), 0), [ESCALATED, COMPLETED]);
    assert_eq!(c.outcome(), Some(pb::RecoveryOutcome::Escalated));
    assert_eq!(
        c.projection().recoveries.len(),
        1,
        "the second failure belongs to the retry"
    );
}

#[test]
fn a_retry_rung_retries_up_to_its_limit_over_the_whole_case() {
    // refund: retry (max 2), escalate payments.
    let mut c = Case::new("refund");
    c.failed(t0());
    assert_eq!(c.run(t0(), 0), [STARTED, RETRY]);
    c.failed(t0());
    assert_eq!(c.run(t0(), 0), [RETRY]);
    c.failed(t0());
    assert_eq!(c.run(t0(), 0), [ESCALATED, COMPLETED]);
    let retries: Vec<u32> = c
        .log
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::RetryRequested(r)) => Some(r.retry),
            _ => None,
        })
        .collect();
    assert_eq!(retries, [1, 2]);
}

#[test]
fn a_retry_that_keeps_the_promise_recovers() {
    let mut c = Case::new("refund");
    c.failed(t0());
    c.run(t0(), 0);
    c.kept(t0() + Duration::minutes(1), false);
    assert_eq!(c.run(t0(), 0), [COMPLETED]);
    assert_eq!(c.outcome(), Some(pb::RecoveryOutcome::Recovered));
    // Kept on time: the deadline passes quietly.
    assert!(c.run(deadline() + Duration::hours(1), 0).is_empty());
}

#[test]
fn retries_already_used_skip_the_retry_rung() {
    // order_change: retry (max 2), apology, escalate order_desk.
    let mut c = Case::new("order_change");
    c.failed(t0());
    c.run(t0(), 0);
    c.failed(t0());
    c.run(t0(), 0);
    c.failed(t0());
    assert_eq!(c.run(t0(), 0), [APOLOGY, ESCALATED, COMPLETED]);
    // A later failure (a retried run of another recovery cannot happen:
    // the case has used its retries) opens a new recovery whose retry rung
    // is skipped.
    c.failed(t0());
    assert_eq!(c.run(t0(), 0), [STARTED, APOLOGY, ESCALATED, COMPLETED]);
}

#[test]
fn retry_is_skipped_on_a_closed_or_withdrawn_case() {
    for event in [
        Payload::CaseClosed(Default::default()),
        Payload::CaseWithdrawn(Default::default()),
    ] {
        let mut c = Case::new("product_enquiry");
        c.push(t0(), event);
        c.failed(t0());
        assert_eq!(c.run(t0(), 0), [STARTED, ESCALATED, COMPLETED]);
    }
}

#[test]
fn a_large_compensation_waits_for_approval() {
    // installation_appointment broken: apology (phone), fee waiver 4900 > 2500.
    let mut c = Case::new("installation_appointment");
    let now = deadline();
    assert_eq!(c.run(now, 0), [BROKEN, STARTED, APOLOGY, PROPOSED]);
    let proposed = c
        .last(|p| match p {
            Payload::CompensationProposed(x) => Some(x.clone()),
            _ => None,
        })
        .unwrap();
    assert!(proposed.requires_approval);
    assert_eq!(proposed.compensation_id, "r1-c2");
    assert!(
        proposed.reason.contains("automatic limit"),
        "{}",
        proposed.reason
    );
    assert!(c.run(now, 0).is_empty(), "waits");
    c.decide_comp("r1-c2", true);
    assert_eq!(c.run(now, 0), [GRANTED, COMPLETED]);
    assert_eq!(c.outcome(), Some(pb::RecoveryOutcome::Recovered));
    let granted = c
        .last(|p| match p {
            Payload::CompensationGranted(x) => Some(x.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        granted.reason.contains("approved by Dana"),
        "{}",
        granted.reason
    );
}

#[test]
fn a_declined_compensation_moves_on() {
    let mut c = Case::new("installation_appointment");
    c.run(deadline(), 0);
    c.decide_comp("r1-c2", false);
    // The ladder has no rung after it: a person refused the remedy, so the
    // apology alone does not count as recovered; a supervisor settles it.
    assert_eq!(c.run(deadline(), 0), [ESCALATED, COMPLETED]);
    assert_eq!(c.outcome(), Some(pb::RecoveryOutcome::Escalated));
    let escalated = c
        .log
        .iter()
        .find_map(|e| match &e.payload {
            Some(Payload::CaseEscalated(x)) => Some(x.clone()),
            _ => None,
        })
        .expect("escalated");
    assert_eq!(escalated.tier, crate::decide::DECLINED_TIER);
    assert!(
        escalated.reason.contains("r1-c2") && escalated.reason.contains("declined by Dana"),
        "{}",
        escalated.reason
    );
}

#[test]
fn a_declined_compensation_followed_by_a_grant_is_recovered() {
    let small = RecoveryAction::Compensation(Compensation {
        kind: CompensationKind::Voucher,
        amount_minor: 100,
        currency: Currency::parse("EUR").unwrap(),
    });
    let big = RecoveryAction::Compensation(Compensation {
        kind: CompensationKind::Refund,
        amount_minor: 9_999,
        currency: Currency::parse("EUR").unwrap(),
    });
    let mut c = Case::new("refund");
    c.service.recovery.on_step_failed = vec![big, small];
    c.failed(t0());
    c.run(t0(), 0);
    c.decide_comp("r1-c1", false);
    assert_eq!(c.run(t0(), 0), [PROPOSED, GRANTED, COMPLETED]);
    assert_eq!(c.outcome(), Some(pb::RecoveryOutcome::Recovered));
}

#[test]
fn outcome_rule_table() {
    let big = RecoveryAction::Compensation(Compensation {
        kind: CompensationKind::Refund,
        amount_minor: 9_999,
        currency: Currency::parse("EUR").unwrap(),
    });
    let retry = RecoveryAction::Retry { max_retries: 1 };
    let apology = RecoveryAction::Apology { channel: None };
    let escalate = RecoveryAction::Escalate { tier: "t2".into() };
    // ladder on a failed step, whether the person approves the compensation,
    // how the retried run ends → outcome
    let table: &[(Vec<RecoveryAction>, bool, bool, pb::RecoveryOutcome)] = &[
        (
            vec![big.clone()],
            false,
            false,
            pb::RecoveryOutcome::Escalated,
        ),
        (
            vec![apology.clone(), big.clone()],
            false,
            false,
            pb::RecoveryOutcome::Escalated,
        ),
        (
            vec![big.clone()],
            true,
            false,
            pb::RecoveryOutcome::Recovered,
        ),
        (
            vec![retry.clone()],
            false,
            false,
            pb::RecoveryOutcome::CustomerLost,
        ),
        (
            vec![retry.clone(), big.clone()],
            false,
            true,
            pb::RecoveryOutcome::Recovered,
        ),
        (
            vec![apology.clone()],
            false,
            false,
            pb::RecoveryOutcome::Recovered,
        ),
        (
            vec![apology.clone(), escalate.clone()],
            false,
            false,
            pb::RecoveryOutcome::Escalated,
        ),
        (
            vec![big.clone(), escalate.clone()],
            true,
            false,
            pb::RecoveryOutcome::Escalated,
        ),
    ];
    for (ladder, approve, retry_keeps, want) in table {
        let mut c = Case::new("refund");
        c.service.recovery.on_step_failed = ladder.clone();
        c.failed(t0());
        c.run(t0(), 0);
        if c.projection()
            .open_recovery()
            .is_some_and(|r| r.waiting_for_fulfilment())
        {
            if *retry_keeps {
                c.kept(t0(), false);
            } else {
                c.failed(t0());
            }
            c.run(t0(), 0);
        }
        if c.projection()
            .open_recovery()
            .is_some_and(|r| r.pending_compensations().count() > 0)
        {
            c.decide_comp("r1-c1", *approve);
            c.decide_comp("r1-c2", *approve);
            c.run(t0(), 0);
        }
        assert_eq!(
            c.outcome(),
            Some(*want),
            "{ladder:?} approve={approve} kept={retry_keeps}"
        );
    }
}

#[test]
fn the_daily_budget_sends_a_small_compensation_to_a_person() {
    // refund broken: voucher 1000 ≤ auto limit 2500; daily budget 100000.
    let table: &[(u64, bool)] = &[(0, false), (99_000, false), (99_001, true), (200_000, true)];
    for (spent, needs_person) in table {
        let mut c = Case::new("refund");
        let types = c.run(deadline(), *spent);
        assert_eq!(types.contains(&GRANTED), !needs_person, "spent {spent}");
        let proposed = c
            .last(|p| match p {
                Payload::CompensationProposed(x) => Some(x.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(proposed.requires_approval, *needs_person, "spent {spent}");
        if *needs_person {
            assert!(
                proposed.reason.contains("daily budget"),
                "{}",
                proposed.reason
            );
            // Amounts read as money, not as minor units (1000 cents is
            // EUR 10.00, not 1000 EUR).
            assert!(
                proposed.reason.contains("granting EUR 10.00 would exceed")
                    && proposed.reason.contains("of EUR 1,000.00 granted today"),
                "{}",
                proposed.reason
            );
            // An approval overrides the budget.
            c.decide_comp("r1-c2", true);
            assert_eq!(c.run(deadline(), *spent), [GRANTED, ESCALATED, COMPLETED]);
        }
    }
}

#[test]
fn negative_feedback_on_a_kept_promise_gets_an_apology() {
    // product_enquiry: threshold 2; apology (email), voucher 500 (auto ≤ 1000).
    let table: &[(u32, &[&str])] = &[
        (1, &[STARTED, APOLOGY, PROPOSED, GRANTED, COMPLETED]),
        (2, &[STARTED, APOLOGY, PROPOSED, GRANTED, COMPLETED]),
        (3, &[]),
        (5, &[]),
    ];
    for (score, then) in table {
        let mut c = Case::new("product_enquiry");
        c.kept(t0(), false);
        c.push(t0(), Payload::CaseClosed(Default::default()));
        c.feedback(t0(), *score);
        assert_eq!(
            &c.run(deadline() + Duration::hours(1), 0),
            then,
            "score {score}"
        );
    }
}

#[test]
fn a_trigger_during_an_open_recovery_is_queued() {
    let mut c = Case::new("installation_appointment");
    c.run(deadline(), 0); // waits for approval of r1-c2
    let fb = c.feedback(deadline(), 1);
    assert!(c.run(deadline(), 0).is_empty(), "queued behind recovery 1");
    let (s, p) = (c.service.clone(), c.projection());
    assert_eq!(queued(&p, &s).count(), 1);
    c.decide_comp("r1-c2", true);
    // Recovery 1 completes; recovery 2 (feedback: apology, escalate) follows.
    assert_eq!(
        c.run(deadline(), 0),
        [GRANTED, COMPLETED, STARTED, APOLOGY, ESCALATED, COMPLETED]
    );
    let p = c.projection();
    assert_eq!(p.recoveries.len(), 2);
    assert_eq!(p.recoveries[1].cause_event_id, fb);
    assert_eq!(
        p.recoveries[1].trigger,
        pb::RecoveryTrigger::NegativeFeedback
    );
}

#[test]
fn race_rule_exactly_one_of_kept_on_time_or_broken() {
    // Every order in which fulfilment's keep (at, late flag set as
    // fulfilment sets it) and recovery's decision (at `now`) can land.
    for keep_ms in [-5i64, 0, 5, 500] {
        for decide_ms in [-5i64, 0, 5, 500] {
            for keep_first in [true, false] {
                let mut c = Case::new("refund");
                let keep_at = deadline() + Duration::milliseconds(keep_ms);
                let now = deadline() + Duration::milliseconds(decide_ms);
                let keep = |c: &mut Case| {
                    let late = c.projection().broken.is_some() || keep_at > deadline();
                    c.kept(keep_at, late);
                };
                if keep_first {
                    keep(&mut c);
                    c.run(now, 0);
                } else {
                    c.run(now, 0);
                    keep(&mut c);
                }
                c.run(deadline() + Duration::seconds(2), 0);
                let p = c.projection();
                let on_time = p.kept_on_time.is_some();
                assert!(
                    on_time != p.broken.is_some(),
                    "keep {keep_ms} decide {decide_ms} first {keep_first}"
                );
                let broken_at = c.log.iter().position(|e| e.event_type == BROKEN);
                if let Some(b) = broken_at {
                    for e in &c.log[b..] {
                        if let Some(Payload::PromiseKept(k)) = &e.payload {
                            assert!(k.late);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn every_prefix_of_a_decision_continues_with_the_same_events() {
    // `run` checks every prefix of every multi-event decision it takes;
    // here the scenarios with the longest decisions, counted.
    let mut checked = 0;
    // A broken promise's ladder: apology, automatic voucher, escalation.
    let mut c = Case::new("refund");
    assert_eq!(
        c.run(deadline(), 0),
        [
            BROKEN, STARTED, APOLOGY, PROPOSED, GRANTED, ESCALATED, COMPLETED
        ]
    );
    checked += c.checked;
    // Negative feedback on a kept promise.
    let mut c = Case::new("product_enquiry");
    c.kept(t0(), false);
    c.feedback(t0(), 1);
    assert_eq!(
        c.run(t0(), 0),
        [STARTED, APOLOGY, PROPOSED, GRANTED, COMPLETED]
    );
    checked += c.checked;
    // A person's approval, then the rest of the ladder and a queued
    // trigger's recovery.
    let mut c = Case::new("installation_appointment");
    c.run(deadline(), 0);
    c.feedback(deadline(), 1);
    c.decide_comp("r1-c2", true);
    assert_eq!(
        c.run(deadline(), 0),
        [GRANTED, COMPLETED, STARTED, APOLOGY, ESCALATED, COMPLETED]
    );
    checked += c.checked;
    // Retries exhausted: the rest of the ladder after a failed retry.
    let mut c = Case::new("order_change");
    for _ in 0..3 {
        c.failed(t0());
        c.run(t0(), 0);
    }
    c.failed(t0());
    assert_eq!(c.run(t0(), 0), [STARTED, APOLOGY, ESCALATED, COMPLETED]);
    checked += c.checked;
    // Two automatic compensations in one decision, the second sent to a
    // person by the budget the first one used: the healed decision counts
    // the first grant exactly as the whole decision did.
    let small = |amount_minor| {
        RecoveryAction::Compensation(Compensation {
            kind: CompensationKind::Voucher,
            amount_minor,
            currency: Currency::parse("EUR").unwrap(),
        })
    };
    for spent in [0, 97_000, 98_000, 99_000] {
        let mut c = Case::new("refund");
        c.service.recovery.on_step_failed = vec![
            small(1000),
            small(2000),
            RecoveryAction::Apology { channel: None },
        ];
        c.failed(t0());
        let types = c.run(t0(), spent);
        assert_eq!(types[..3], [STARTED, PROPOSED, GRANTED], "spent {spent}");
        assert_eq!(types.contains(&COMPLETED), spent <= 97_000, "spent {spent}");
        checked += c.checked;
    }
    // A person's approval granted in a decision counts towards the budget
    // of the next compensation of the same decision (the view has not seen
    // it yet), as it does once healed.
    let mut c = Case::new("refund");
    c.service.recovery.on_step_failed = vec![small(9_999), small(2000)];
    c.failed(t0());
    assert_eq!(c.run(t0(), 89_000), [STARTED, PROPOSED]);
    c.decide_comp("r1-c1", true);
    assert_eq!(c.run(t0(), 89_000), [GRANTED, PROPOSED]);
    assert!(
        c.projection().recoveries[0]
            .comp("r1-c2")
            .unwrap()
            .requires_approval
    );
    checked += c.checked;
    assert!(checked >= 30, "{checked} prefixes checked");
}

#[test]
fn the_customer_is_told_in_their_locale_and_time_zone() {
    let mut c = Case::new("refund");
    if let Some(Payload::CaseOpened(o)) = c.log[0].payload.as_mut() {
        o.locale = "de-AT".into();
        o.time_zone = "America/New_York".into();
    }
    let now = deadline() + Duration::milliseconds(10);
    c.run(now, 0);
    let apology = c
        .last(|p| match p {
            Payload::ApologySent(a) => Some(a.clone()),
            _ => None,
        })
        .unwrap();
    let told = apology.customer_message.expect("told");
    assert_eq!(told.locale, "de", "de-AT falls back to de");
    // The deadline as a New Yorker reads it, in German.
    let local = deadline()
        .with_timezone(&chrono_tz::America::New_York)
        .format("%H:%M")
        .to_string();
    assert!(told.text.contains(&local), "{local} in {told:?}");
    assert!(told.text.contains("EDT"), "{told:?}");
    // The service's own German wording of its promise.
    assert!(told.text.contains("Das Geld ist zurück"), "{told:?}");
    let granted = c
        .last(|p| match p {
            Payload::CompensationGranted(g) => Some(g.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        granted
            .customer_message
            .expect("told")
            .text
            .contains("10,00\u{a0}EUR")
    );
}
