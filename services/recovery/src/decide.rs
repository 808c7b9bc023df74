//! The pure core of recovery: [`decide`] takes the case's [`Projection`],
//! `now`, the case's catalogue service and the tenant's [`Budget`] and says
//! what to append and which effects to perform after the append. No I/O, no
//! clock, no randomness: the same inputs always give the same events with
//! the same ids (`EventId::derive(case, cause, key)`), so a repeated or
//! racing decision is deduplicated by the log.
//!
//! # The rules
//!
//! **Deadline.** While the promise has neither an on-time `promise_kept` nor
//! a `promise_broken` and the case is not withdrawn, recovery keeps one
//! durable `deadline` timer at the promise's deadline (effect
//! [`Effect::ScheduleDeadline`], re-derived on every decision). At or after
//! the deadline, the decision is `promise_broken` alone (its own
//! append); the recovery it triggers follows in the next decision.
//!
//! **Kept-versus-broken race (the one rule).** The per-case optimistic
//! concurrency guard serialises `promise_kept` (fulfilment) and
//! `promise_broken` (recovery); whichever lands first wins. Recovery appends
//! `promise_broken` only when the log it decided on has no on-time
//! `promise_kept` (one with `late = false` before any `promise_broken`) and
//! `now ≥ deadline`; if `promise_kept` lands first, recovery's append
//! conflicts, it reloads, sees the promise kept and appends nothing. If
//! `promise_broken` lands first, fulfilment still records its success as
//! `promise_kept` with `late = true`. A `promise_kept` that fulfilment itself
//! flagged `late` (it was past the deadline) is not "kept on time", so
//! recovery records `promise_broken` after it. Hence for every promise
//! exactly one holds: *kept on time* (a `promise_kept` with `late = false`
//! and no `promise_broken`) or *broken* (a `promise_broken`, and every
//! `promise_kept` after it has `late = true`). A withdrawn case's promise is
//! neither: it is never recorded as broken.
//!
//! **Triggers.** Each `fulfilment_failed` that does not end a retry recovery
//! asked for, each `promise_broken`, and each `feedback_received` scored at
//! or below the policy's threshold (also on a kept promise and on a closed
//! case) starts one recovery, with `causation_id` = that event's id.
//! **One recovery at a time per case**: a trigger that arrives while a
//! recovery is open is *queued* and starts, in log order, once the open one
//! has completed (each trigger gets its own ladder and its own record; none
//! is merged or dropped).
//!
//! **The ladder** is `RecoveryPolicy::ladder(trigger)`, walked in order. One
//! decision takes every immediate action it can (`recovery_started`,
//! `apology_sent`, `compensation_proposed`, `compensation_granted`,
//! `case_escalated`, `recovery_completed`) and stops to wait at:
//! - a compensation that requires a person's approval — above
//!   `limits.auto_approve_limit_minor`, or when granting it would take the
//!   tenant's granted total for today (UTC) past `limits.daily_budget_minor`.
//!   `compensation_approved` (through the gRPC API) lets the next decision
//!   grant it (a person's approval overrides the budget);
//!   `compensation_declined` moves on to the next rung;
//! - a retry: `retry_requested`, then wait for fulfilment's next
//!   `promise_kept` (the recovery completes RECOVERED at once) or
//!   `fulfilment_failed` (another retry of the same rung while the case has
//!   had fewer than `max_retries` retries, else the next rung). A retry rung
//!   is skipped (or left) when the case already had `max_retries` retries
//!   (counted over the whole case, so later recoveries cannot loop), or the
//!   case is withdrawn or closed, or the promise was already kept (there is
//!   nothing to redo).
//!
//! Each rung is recognised in the log by its deterministic event id (rung
//! index in the key; compensations are `r<recovery>-c<rung>`), so a rung is
//! never taken twice and a skipped rung stays skipped (every skip condition
//! only ever becomes more true).
//!
//! **Every prefix continues** (DESIGN.md §3, one event per append). A
//! decision of several events is appended one event at a time, so a crash
//! can leave any prefix of it in the log. Deciding again on that prefix
//! gives exactly the rest of the decision — the same ids (derived from the
//! recovery's cause and the rung), the same payloads: an open recovery
//! keeps the number, trigger and reason its `recovery_started` recorded; a
//! taken rung is recognised by its id; an automatic compensation proposed
//! without its grant (the two are one decision) is granted, with the reason
//! and budget accounting that decision had; and the outcome is counted over
//! the whole recovery. One input is outside the log: the daily
//! [`Budget`] comes from a view that catches up with this recovery's own
//! grants within milliseconds; given a view that has, the rest is
//! identical (`decide_tests` checks every prefix of every multi-event
//! decision).
//!
//! **A declined compensation** moves on to the next rung. When the ladder
//! then ends with nothing granted, no retry that kept the promise and no
//! escalation, the recovery escalates the case to [`DECLINED_TIER`]
//! (`case_escalated`, naming who declined what): a person refused the
//! remedy the policy prescribed, so an apology alone is not counted as
//! making the customer whole.
//!
//! **Outcome** (`recovery_completed`): RECOVERED if a retry ended in
//! `promise_kept`; otherwise ESCALATED if the recovery escalated the case
//! (a rung, or the declined compensation above); otherwise RECOVERED if it
//! apologised or granted a compensation (the customer was made whole as far
//! as the policy goes); otherwise CUSTOMER_LOST (every rung was skipped or
//! exhausted).
//!
//! Every action event carries a `reason` and `causation_id` = the triggering
//! event's id.

use casework_catalog::{Catalog, MessageTrigger, RecoveryAction, RecoveryTrigger, ServiceDef};
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{CaseId, EventId, NewEvent};
use casework_runtime::reconcile::Decision;
use casework_runtime::tell::{CaseFacts, tell};
use chrono::{DateTime, SecondsFormat, Utc};

use crate::projection::{CompState, Projection, Recovery, RetryResult, Trigger, TriggerKind};

/// What the tenant has already been granted today (UTC), in the service's
/// compensation currency: the advisory daily-budget view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    /// Sum of `compensation_granted` amounts today, minor units.
    pub spent_today_minor: u64,
}

/// What to do after the decision's events are committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Keep the case's `deadline` timer at this instant.
    ScheduleDeadline {
        /// The promise's deadline.
        at: DateTime<Utc>,
    },
    /// Count a broken promise.
    PromiseBroken,
    /// Count a completed recovery.
    RecoveryCompleted {
        /// `fulfilment_failed`, `promise_broken` or `negative_feedback`.
        trigger: &'static str,
        /// `recovered`, `escalated` or `customer_lost`.
        outcome: &'static str,
    },
    /// Count a granted compensation.
    Granted {
        /// ISO 4217.
        currency: String,
        /// Minor units.
        amount_minor: u64,
    },
}

/// The metric label of a trigger.
pub fn trigger_label(t: pb::RecoveryTrigger) -> &'static str {
    match t {
        pb::RecoveryTrigger::FulfilmentFailed => "fulfilment_failed",
        pb::RecoveryTrigger::PromiseBroken => "promise_broken",
        pb::RecoveryTrigger::NegativeFeedback => "negative_feedback",
        pb::RecoveryTrigger::Unspecified => "unspecified",
    }
}

/// The metric label of an outcome.
pub fn outcome_label(o: pb::RecoveryOutcome) -> &'static str {
    match o {
        pb::RecoveryOutcome::Recovered => "recovered",
        pb::RecoveryOutcome::Escalated => "escalated",
        pb::RecoveryOutcome::CustomerLost => "customer_lost",
        pb::RecoveryOutcome::Unspecified => "unspecified",
    }
}

fn catalog_trigger(t: pb::RecoveryTrigger) -> RecoveryTrigger {
    match t {
        pb::RecoveryTrigger::PromiseBroken => RecoveryTrigger::PromiseBroken,
        pb::RecoveryTrigger::NegativeFeedback => RecoveryTrigger::NegativeFeedback,
        _ => RecoveryTrigger::StepFailed,
    }
}

/// The event contract's channel for a catalogue channel.
pub fn channel(c: casework_catalog::Channel) -> pb::Channel {
    use casework_catalog::Channel as C;
    match c {
        C::Phone => pb::Channel::Phone,
        C::Email => pb::Channel::Email,
        C::Chat => pb::Channel::Chat,
        C::InPerson => pb::Channel::InPerson,
        C::Web => pb::Channel::Web,
        C::SelfService => pb::Channel::SelfService,
    }
}

/// The id of compensation rung `rung` (0-based) of recovery `recovery`.
pub fn compensation_id(recovery: u32, rung: usize) -> String {
    format!("r{recovery}-c{}", rung + 1)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// True when `trigger` starts a recovery under `service`'s policy.
pub fn actionable(trigger: &Trigger, service: &ServiceDef) -> bool {
    match &trigger.kind {
        TriggerKind::Feedback { score, .. } => service
            .recovery
            .is_negative_feedback(u8::try_from(*score).unwrap_or(u8::MAX)),
        TriggerKind::FulfilmentFailed { .. } | TriggerKind::PromiseBroken { .. } => true,
    }
}

/// Triggers seen and not yet handled (queued behind the open recovery, or
/// about to start).
pub fn queued<'a>(p: &'a Projection, service: &'a ServiceDef) -> impl Iterator<Item = &'a Trigger> {
    p.triggers
        .iter()
        .filter(move |t| actionable(t, service) && !p.handled(&t.event_id))
}

fn start_reason(t: &Trigger, service: &ServiceDef) -> String {
    match &t.kind {
        TriggerKind::FulfilmentFailed { run, step, reason } => {
            format!("step {step} of fulfilment run {run} failed for good: {reason}")
        }
        TriggerKind::PromiseBroken { deadline } => format!(
            "the promise was due at {} and was not kept in time",
            rfc3339(*deadline)
        ),
        TriggerKind::Feedback { score, comment } => {
            let th = service.recovery.negative_feedback_threshold;
            if comment.is_empty() {
                format!("the customer rated the experience {score}/5 (recovery at {th} or below)")
            } else {
                format!(
                    "the customer rated the experience {score}/5 (recovery at {th} or below): {comment}"
                )
            }
        }
    }
}

struct Writer<'a> {
    case: CaseId,
    cause: &'a str,
    correlation: &'a str,
    now: DateTime<Utc>,
    events: Vec<NewEvent>,
}

impl Writer<'_> {
    fn id(&self, key: &str) -> EventId {
        EventId::derive(&self.case, self.cause, key)
    }

    fn push(&mut self, key: &str, payload: Payload) {
        self.events.push(NewEvent {
            event_id: self.id(key),
            occurred_at: self.now,
            causation_id: self.cause.to_owned(),
            correlation_id: self.correlation.to_owned(),
            payload,
        });
    }
}

/// The locale of the texts recovery writes for the tenant's staff
/// (approvers read amounts in them).
const READER_LOCALE: casework_domain::money::Locale = casework_domain::money::Locale::en;

/// The tier a recovery escalates to when a person declined its
/// compensation and the ladder granted nothing else.
pub const DECLINED_TIER: &str = "supervisor";

fn rung_key(rung: usize, what: &str) -> String {
    format!("rung/{rung}/{what}")
}

/// Decides what recovery does for the case now. `service` is the case's
/// catalogue service (of the version it is pinned to).
pub fn decide(
    p: &Projection,
    now: DateTime<Utc>,
    catalog: &Catalog,
    service: &ServiceDef,
    budget: Budget,
) -> Result<Decision<Effect>, String> {
    let Some(promise) = &p.promise else {
        return Ok(Decision::default());
    };
    let case = CaseId::parse(&p.case_id).map_err(|e| e.to_string())?;

    // 1. The deadline: promise_broken in its own decision.
    let pending = p.broken.is_none() && p.kept_on_time.is_none() && !p.withdrawn;
    if pending && now >= promise.deadline {
        let mut w = Writer {
            case,
            cause: &promise.event_id,
            correlation: &p.correlation_id,
            now,
            events: Vec::new(),
        };
        w.push(
            "promise_broken",
            Payload::PromiseBroken(pb::PromiseBroken {
                deadline: Some(casework_domain::chain::timestamp(promise.deadline)),
                detected_at: Some(casework_domain::chain::timestamp(now)),
            }),
        );
        return Ok(Decision {
            events: w.events,
            effects: vec![Effect::PromiseBroken],
        });
    }
    let mut effects = Vec::new();
    if pending {
        effects.push(Effect::ScheduleDeadline {
            at: promise.deadline,
        });
    }

    // 2. The open recovery, else the first queued trigger.
    let (number, trigger, cause, reason, existing) = if let Some(open) = p.open_recovery() {
        (
            open.number,
            open.trigger,
            open.cause_event_id.as_str(),
            open.reason.clone(),
            Some(open),
        )
    } else if let Some(t) = queued(p, service).next() {
        let number = p.recoveries.iter().map(|r| r.number).max().unwrap_or(0) + 1;
        (
            number,
            t.pb(),
            t.event_id.as_str(),
            start_reason(t, service),
            None,
        )
    } else {
        return Ok(Decision {
            events: Vec::new(),
            effects,
        });
    };
    let mut w = Writer {
        case,
        cause,
        correlation: &p.correlation_id,
        now,
        events: Vec::new(),
    };
    if existing.is_none() {
        w.push(
            "recovery_started",
            Payload::RecoveryStarted(pb::RecoveryStarted {
                recovery: number,
                trigger: trigger as i32,
                reason: reason.clone(),
            }),
        );
    }
    let ladder = service.recovery.ladder(catalog_trigger(trigger));
    // What the customer reads comes from the pinned catalogue's templates;
    // `reason` stays inside.
    let facts = CaseFacts {
        case_id: &p.case_id,
        locale: &p.locale,
        time_zone: &p.time_zone,
        deadline: promise.deadline,
    };
    let apology = if trigger == pb::RecoveryTrigger::PromiseBroken {
        MessageTrigger::PromiseBroken
    } else {
        MessageTrigger::Apology
    };
    let limits = &service.recovery.limits;
    let done = |w: &Writer, key: &str| {
        existing.is_some_and(|r: &Recovery| r.event_ids.contains(w.id(key).as_str()))
    };
    let mut apologies = existing.map_or(0, |r| r.apologies);
    let mut escalations = existing.map_or(0, |r| r.escalations);
    let mut granted = existing.map_or(0, |r| {
        r.compensations
            .iter()
            .filter(|c| matches!(c.state, CompState::Granted(_)))
            .count()
    });
    let mut granted_now: u64 = 0;
    let mut retried_to_success = false;

    for (i, rung) in ladder.iter().enumerate() {
        match rung {
            RecoveryAction::Apology { channel: ch } => {
                let key = rung_key(i, "apology_sent");
                if done(&w, &key) {
                    continue;
                }
                let ch = ch.map(channel).unwrap_or(match p.channel {
                    0 => pb::Channel::Email,
                    _ => pb::Channel::try_from(p.channel).unwrap_or(pb::Channel::Email),
                });
                let told = tell(catalog, service, facts, apology, ch as i32, None);
                w.push(
                    &key,
                    Payload::ApologySent(pb::ApologySent {
                        recovery: number,
                        channel: ch as i32,
                        message: told.text.clone(),
                        reason: reason.clone(),
                        customer_message: Some(told),
                    }),
                );
                apologies += 1;
            }
            RecoveryAction::Compensation(c) => {
                let id = compensation_id(number, i);
                let amount = pb::Money {
                    amount_minor: i64::try_from(c.amount_minor).unwrap_or(i64::MAX),
                    currency: c.currency.as_str().to_owned(),
                };
                let grant = |w: &mut Writer, why: String| {
                    let told = tell(
                        catalog,
                        service,
                        facts,
                        MessageTrigger::CompensationGranted,
                        p.channel,
                        Some(&amount),
                    );
                    w.push(
                        &rung_key(i, "compensation_granted"),
                        Payload::CompensationGranted(pb::CompensationGranted {
                            compensation_id: id.clone(),
                            kind: c.kind.as_str().to_owned(),
                            amount: Some(amount.clone()),
                            reason: why,
                            customer_message: Some(told),
                        }),
                    );
                };
                match existing.and_then(|r| r.comp(&id)) {
                    None => {
                        let over_limit = limits.needs_approval(c.amount_minor);
                        let spent = budget.spent_today_minor.saturating_add(granted_now);
                        let over_budget =
                            spent.saturating_add(c.amount_minor) > limits.daily_budget_minor;
                        let money = |minor: u64, code: &str| {
                            casework_domain::money::format(
                                i64::try_from(minor).unwrap_or(i64::MAX),
                                code,
                                &READER_LOCALE,
                            )
                        };
                        let why = if over_limit {
                            format!(
                                "{reason}; {} is above the automatic limit of {}: a person must approve it",
                                money(c.amount_minor, c.currency.as_str()),
                                money(limits.auto_approve_limit_minor, limits.currency.as_str()),
                            )
                        } else if over_budget {
                            format!(
                                "{reason}; granting {} would exceed the tenant's daily budget ({} of {} granted today): a person must approve it",
                                money(c.amount_minor, c.currency.as_str()),
                                money(spent, limits.currency.as_str()),
                                money(limits.daily_budget_minor, limits.currency.as_str()),
                            )
                        } else {
                            reason.clone()
                        };
                        let requires = over_limit || over_budget;
                        w.push(
                            &rung_key(i, "compensation_proposed"),
                            Payload::CompensationProposed(pb::CompensationProposed {
                                recovery: number,
                                compensation_id: id.clone(),
                                kind: c.kind.as_str().to_owned(),
                                amount: Some(amount.clone()),
                                reason: why,
                                requires_approval: requires,
                            }),
                        );
                        if requires {
                            return Ok(Decision {
                                events: w.events,
                                effects,
                            });
                        }
                        grant(&mut w, format!("{reason}; within the automatic limit"));
                        granted += 1;
                        granted_now += c.amount_minor;
                        effects.push(Effect::Granted {
                            currency: c.currency.as_str().to_owned(),
                            amount_minor: c.amount_minor,
                        });
                    }
                    Some(comp) => match &comp.state {
                        CompState::Proposed if !comp.requires_approval => {
                            // Proposed within the limit and the budget, and
                            // its grant (the next event of the same
                            // decision) has not landed: a crash between the
                            // two. Grant it now, exactly as that decision
                            // would have.
                            grant(&mut w, format!("{reason}; within the automatic limit"));
                            granted += 1;
                            granted_now += c.amount_minor;
                            effects.push(Effect::Granted {
                                currency: c.currency.as_str().to_owned(),
                                amount_minor: c.amount_minor,
                            });
                        }
                        CompState::Proposed => {
                            // Waiting for a person.
                            return Ok(Decision {
                                events: w.events,
                                effects,
                            });
                        }
                        CompState::Approved(by) => {
                            grant(
                                &mut w,
                                format!("{reason}; approved by {} ({})", by.display_name, by.id),
                            );
                            granted += 1;
                            granted_now += c.amount_minor;
                            effects.push(Effect::Granted {
                                currency: c.currency.as_str().to_owned(),
                                amount_minor: c.amount_minor,
                            });
                        }
                        CompState::Declined(_) | CompState::Granted(_) => {}
                    },
                }
            }
            RecoveryAction::Retry { max_retries } => {
                // The rung retries up to `max_retries` times on the case
                // (counting every retry of the case), one run at a time.
                let mut k = 1;
                loop {
                    let key = rung_key(i, &format!("retry_requested/{k}"));
                    let id = w.id(&key);
                    match existing
                        .and_then(|r| r.retries.iter().find(|x| x.event_id == id.as_str()))
                    {
                        Some(x) => match x.result {
                            None => {
                                return Ok(Decision {
                                    events: w.events,
                                    effects,
                                });
                            }
                            Some(RetryResult::Kept) => {
                                retried_to_success = true;
                                break;
                            }
                            Some(RetryResult::Failed) => k += 1,
                        },
                        None => {
                            let skip = p.retries_requested >= *max_retries
                                || p.withdrawn
                                || p.closed
                                || p.kept;
                            if skip {
                                break;
                            }
                            let retry = p.retries_requested + 1;
                            w.push(
                                &key,
                                Payload::RetryRequested(pb::RetryRequested {
                                    recovery: number,
                                    retry,
                                    reason: format!(
                                        "{reason}; retry {retry} of at most {max_retries}"
                                    ),
                                }),
                            );
                            return Ok(Decision {
                                events: w.events,
                                effects,
                            });
                        }
                    }
                }
                if retried_to_success {
                    break;
                }
            }
            RecoveryAction::Escalate { tier } => {
                let key = rung_key(i, "case_escalated");
                if done(&w, &key) {
                    continue;
                }
                w.push(
                    &key,
                    Payload::CaseEscalated(pb::CaseEscalated {
                        recovery: number,
                        tier: tier.clone(),
                        reason: reason.clone(),
                    }),
                );
                escalations += 1;
            }
        }
    }

    // A person declined a compensation the policy prescribed and nothing was
    // granted instead: an apology alone does not make the customer whole,
    // and nobody may quietly count the case as recovered. It goes to a
    // supervisor (the role that decides compensations) to settle.
    let declined = existing.and_then(|r| {
        r.compensations.iter().find_map(|c| match &c.state {
            CompState::Declined(by) => Some((c.id.clone(), by.clone())),
            _ => None,
        })
    });
    if let Some((id, by)) = declined
        && !retried_to_success
        && granted == 0
        && escalations == 0
    {
        w.push(
            "declined/case_escalated",
            Payload::CaseEscalated(pb::CaseEscalated {
                recovery: number,
                tier: DECLINED_TIER.to_owned(),
                reason: format!(
                    "{reason}; compensation {id} was declined by {} ({}) and nothing was granted instead: a supervisor decides how to make the customer whole",
                    by.display_name, by.id
                ),
            }),
        );
        escalations += 1;
    }

    let (outcome, summary) = if retried_to_success {
        (
            pb::RecoveryOutcome::Recovered,
            "a retried fulfilment run kept the promise".to_owned(),
        )
    } else if escalations > 0 {
        (
            pb::RecoveryOutcome::Escalated,
            "the case was handed to a higher tier".to_owned(),
        )
    } else if apologies > 0 || granted > 0 {
        (
            pb::RecoveryOutcome::Recovered,
            format!("{apologies} apology(ies) sent and {granted} compensation(s) granted"),
        )
    } else {
        (
            pb::RecoveryOutcome::CustomerLost,
            "every action of the ladder was declined, skipped or exhausted".to_owned(),
        )
    };
    w.push(
        "recovery_completed",
        Payload::RecoveryCompleted(pb::RecoveryCompleted {
            recovery: number,
            outcome: outcome as i32,
            summary,
        }),
    );
    effects.push(Effect::RecoveryCompleted {
        trigger: trigger_label(trigger),
        outcome: outcome_label(outcome),
    });
    Ok(Decision {
        events: w.events,
        effects,
    })
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
