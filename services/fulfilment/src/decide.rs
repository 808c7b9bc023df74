//! The workflow decider: pure rules, no I/O, no clock, no randomness it was
//! not given. [`decide`] looks at a case's [`Workflow`] at `now` and says
//! which events to append and which effects to perform after the append;
//! [`report`] turns a handler's report (a worker's completion or failure, a
//! simulated outcome, a person's completion) into events, or refuses it.
//!
//! Rules (level-triggered — they depend on the state, never on the event
//! that woke the case):
//! - nothing before `promise_made`, nothing for a withdrawn or closed case;
//! - no run yet → `fulfilment_started` (run 1) + `step_started` of step 0,
//!   attempt 1, in one decision (two appends: see below);
//! - the last run finished without a kept promise and recovery requested
//!   more retries than runs followed → the next run, the same way;
//! - in the current run, the first step not completed decides: no attempt →
//!   start attempt 1; an attempt running past its `timeout_at` →
//!   `step_failed(timed_out)` with `retry_at` from the step's back-off (or,
//!   attempts exhausted, no `retry_at` + `fulfilment_failed`); a failure
//!   with `retry_at` reached → the next attempt; a failure for good with no
//!   `fulfilment_failed` yet → `fulfilment_failed`; every step completed →
//!   `promise_kept` (`late` when after the deadline or after
//!   `promise_broken`);
//! - the effects: run a simulated attempt (only in the decision that
//!   started it: an attempt found running after a restart is never run
//!   again, its timeout decides), offer an external or manual task, and
//!   schedule the case's `step` timer at the next time anything is due.
//!
//! Event ids are derived from the causing event and a key naming the
//! decision (`step_started/r1/s0/a2`…), so the same decision always yields
//! the same ids. Back-off jitter is a hash of case, run, step and attempt.
//!
//! **Every prefix of a decision is a state these rules continue from**
//! (DESIGN.md §3, one event per append: a decision of two events is two
//! appends, and a crash or conflict may land only the first). The two
//! decisions of two events, and how deciding again finishes them with the
//! same ids and payloads:
//! - `fulfilment_started` + `step_started`: a run with no attempt of its
//!   first step starts attempt 1, caused by the run's `fulfilment_started`
//!   — the same cause and key as in the decision that started the run;
//! - `step_failed` (no `retry_at`) + `fulfilment_failed` (from a timeout
//!   here, or from a report): a failure for good with no
//!   `fulfilment_failed` yet is followed by `fulfilment_failed`, caused by
//!   that `step_failed`, naming its attempt and error.
//!
//! Times in a healed event's payload (`timeout_at`) are taken from when it
//! is decided; `decide_tests` checks every multi-event decision of its
//! scenarios this way.

use std::time::Duration;

use casework_catalog::{Catalogs, Handler, ServiceDef, Step};
use casework_domain::chain::timestamp;
use casework_domain::pb::{self, Envelope, envelope::Payload};
use casework_domain::{EventId, EventType, NewEvent};
use casework_runtime::reconcile::Decision;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::workflow::{AttemptOutcome, AttemptRef, Run, Workflow};

/// Timer kind for step timeouts and back-off.
pub const STEP_TIMER: &str = "step";

/// What to do once the decision's events are committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Run a simulated attempt: wait `latency`, then report success or
    /// failure (failure with `failure_probability`).
    Simulate {
        /// The attempt.
        attempt: AttemptRef,
        /// Step name (for the report).
        step_name: String,
        /// How long it takes.
        latency: Duration,
        /// Chance of failure.
        failure_probability: f64,
    },
    /// An external or manual task became available.
    Offer(Offer),
    /// Wake the case at `at` (the `step` timer).
    ScheduleTimer {
        /// When.
        at: DateTime<Utc>,
    },
}

/// A task made available to workers or people.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// The attempt.
    pub attempt: AttemptRef,
    /// Step name.
    pub step_name: String,
    /// Task kind (external) or queue (manual).
    pub kind: String,
    /// True for a manual step.
    pub manual: bool,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
    /// When it times out.
    pub timeout_at: DateTime<Utc>,
}

/// What a handler reports about an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// It succeeded.
    Completed {
        /// Results.
        output: std::collections::BTreeMap<String, String>,
        /// Who completed it.
        by: pb::Actor,
    },
    /// It failed.
    Failed {
        /// What went wrong.
        error: String,
        /// Whether another attempt may follow (the policy decides).
        retryable: bool,
        /// Who reported it.
        by: pb::Actor,
    },
}

/// Which handler a report must come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The simulator.
    Simulate,
    /// An external worker (CompleteTask / FailTask).
    External,
    /// A person (CompleteManualStep).
    Manual,
}

impl Via {
    fn handler(self) -> pb::HandlerKind {
        match self {
            Via::Simulate => pb::HandlerKind::Simulate,
            Via::External => pb::HandlerKind::External,
            Via::Manual => pb::HandlerKind::Manual,
        }
    }
}

/// Why a report is not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such attempt in the log.
    UnknownAttempt(AttemptRef),
    /// The attempt is no longer running (timed out, failed, superseded) or
    /// the report contradicts how it ended.
    Stale(String),
    /// The attempt already completed: the report is a repeat.
    AlreadyCompleted {
        /// The first completion.
        event_id: String,
    },
    /// The attempt already failed (not by timeout): the report is a repeat.
    AlreadyFailed {
        /// The first failure.
        event_id: String,
        /// Its `retry_at`.
        retry_at: Option<DateTime<Utc>>,
    },
    /// The case was withdrawn or closed.
    CaseEnded(String),
    /// The step is not carried out by this kind of handler.
    WrongHandler(String),
    /// The case cannot be decided (catalogue reference missing).
    Undecidable(String),
}

/// The service definition the case is pinned to, or why there is none.
pub fn pinned_service<'c>(wf: &Workflow, catalogs: &'c Catalogs) -> Result<&'c ServiceDef, String> {
    let Some(p) = &wf.promise else {
        return Err(format!("case {} has no promise_made", wf.case));
    };
    let known = || {
        catalogs
            .versions()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let catalog = catalogs.get(&p.catalog_version).ok_or_else(|| {
        format!(
            "case {} is pinned to catalogue version {:?}, which is not loaded (loaded: {}); deploy that catalogue file",
            wf.case,
            p.catalog_version,
            known()
        )
    })?;
    if !p.catalog_digest.is_empty() && catalog.digest() != p.catalog_digest {
        return Err(format!(
            "case {} is pinned to catalogue {} with digest {}, but the loaded file {} has digest {}; deploy the exact file the promise was made with",
            wf.case,
            p.catalog_version,
            p.catalog_digest,
            catalog.origin(),
            catalog.digest()
        ));
    }
    catalog.service(&p.service_code).ok_or_else(|| {
        format!(
            "case {} asks for service {:?}, which catalogue {} does not define",
            wf.case, p.service_code, p.catalog_version
        )
    })
}

fn handler_kind(h: &Handler) -> pb::HandlerKind {
    match h {
        Handler::Simulate { .. } => pb::HandlerKind::Simulate,
        Handler::External { .. } => pb::HandlerKind::External,
        Handler::Manual { .. } => pb::HandlerKind::Manual,
    }
}

/// A deterministic sample in `0..1` for the back-off jitter of an attempt.
pub fn jitter_sample(wf: &Workflow, r: AttemptRef) -> f64 {
    let mut h = Sha256::new();
    h.update(wf.case.case_id.as_str().as_bytes());
    h.update(r.run.to_be_bytes());
    h.update(r.step_index.to_be_bytes());
    h.update(r.attempt.to_be_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

struct Builder<'a> {
    wf: &'a Workflow,
    now: DateTime<Utc>,
    events: Vec<NewEvent>,
    effects: Vec<Effect>,
}

impl Builder<'_> {
    fn push(&mut self, cause: &str, key: String, payload: Payload) -> String {
        let id = EventId::derive(&self.wf.case.case_id, cause, &key);
        let s = id.to_string();
        self.events.push(NewEvent {
            event_id: id,
            occurred_at: self.now,
            causation_id: cause.to_owned(),
            correlation_id: self.wf.correlation_id.clone(),
            payload,
        });
        s
    }

    fn start_attempt(&mut self, cause: &str, r: AttemptRef, step: &Step) {
        let timeout_at = after(self.now, step.timeout);
        self.push(
            cause,
            format!("step_started/r{}/s{}/a{}", r.run, r.step_index, r.attempt),
            Payload::StepStarted(pb::StepStarted {
                run: r.run,
                step_index: r.step_index,
                step_name: step.name.clone(),
                attempt: r.attempt,
                handler: handler_kind(&step.handler) as i32,
                timeout_at: Some(timestamp(timeout_at)),
            }),
        );
        self.effects.push(match &step.handler {
            Handler::Simulate {
                latency,
                failure_probability,
            } => Effect::Simulate {
                attempt: r,
                step_name: step.name.clone(),
                latency: *latency,
                failure_probability: *failure_probability,
            },
            Handler::External { task } => Effect::Offer(Offer {
                attempt: r,
                step_name: step.name.clone(),
                kind: task.clone(),
                manual: false,
                started_at: self.now,
                timeout_at,
            }),
            Handler::Manual { queue } => Effect::Offer(Offer {
                attempt: r,
                step_name: step.name.clone(),
                kind: queue.clone(),
                manual: true,
                started_at: self.now,
                timeout_at,
            }),
        });
    }

    /// `step_failed` for attempt `r` (+ `fulfilment_failed` when no retry
    /// follows).
    #[allow(clippy::too_many_arguments)]
    fn fail_attempt(
        &mut self,
        started_event_id: &str,
        r: AttemptRef,
        step: &Step,
        error: String,
        timed_out: bool,
        retryable: bool,
        by: pb::Actor,
    ) -> (String, Option<DateTime<Utc>>) {
        let retry_at = (retryable && step.retry.allows_another_attempt(r.attempt)).then(|| {
            after(
                self.now,
                step.retry.backoff(r.attempt, jitter_sample(self.wf, r)),
            )
        });
        let failed = self.push(
            started_event_id,
            format!("step_failed/r{}/s{}/a{}", r.run, r.step_index, r.attempt),
            Payload::StepFailed(pb::StepFailed {
                run: r.run,
                step_index: r.step_index,
                step_name: step.name.clone(),
                attempt: r.attempt,
                error: error.clone(),
                timed_out,
                retry_at: retry_at.map(timestamp),
                failed_by: Some(by),
            }),
        );
        if retry_at.is_none() {
            self.fail_run(&failed, r, &step.name, &error);
        }
        (failed, retry_at)
    }

    fn fail_run(&mut self, cause: &str, r: AttemptRef, step_name: &str, error: &str) {
        self.push(
            cause,
            format!("fulfilment_failed/r{}", r.run),
            Payload::FulfilmentFailed(pb::FulfilmentFailed {
                run: r.run,
                step_index: r.step_index,
                step_name: step_name.to_owned(),
                reason: format!(
                    "step {step_name} failed for good after {} attempt(s): {error}",
                    r.attempt
                ),
            }),
        );
    }

    fn finish(self) -> Decision<Effect> {
        let mut effects = self.effects;
        let after = apply_new(self.wf, &self.events);
        if let Some(at) = next_wake(&after) {
            effects.push(Effect::ScheduleTimer { at });
        }
        Decision {
            events: self.events,
            effects,
        }
    }
}

/// The system itself as an actor.
pub fn system() -> pb::Actor {
    pb::Actor {
        kind: pb::ActorKind::System as i32,
        id: "fulfilment".to_owned(),
        display_name: "Fulfilment".to_owned(),
        authenticated_by: String::new(),
    }
}

/// `wf` with `events` folded in, as if they were appended.
pub fn apply_new(wf: &Workflow, events: &[NewEvent]) -> Workflow {
    let mut w = wf.clone();
    for e in events {
        w.apply(&Envelope {
            event_id: e.event_id.to_string(),
            tenant: wf.case.tenant.to_string(),
            case_id: wf.case.case_id.to_string(),
            event_type: EventType::of(&e.payload).to_string(),
            occurred_at: Some(timestamp(e.occurred_at)),
            causation_id: e.causation_id.clone(),
            correlation_id: e.correlation_id.clone(),
            payload: Some(e.payload.clone()),
            ..Default::default()
        });
    }
    w
}

/// When the case next needs deciding by the clock: the running attempt's
/// timeout or the failed attempt's `retry_at`.
pub fn next_wake(wf: &Workflow) -> Option<DateTime<Utc>> {
    if wf.withdrawn || wf.closed {
        return None;
    }
    let run = wf.current_run()?;
    if run.outcome.is_some() {
        return None;
    }
    let step = run.steps.iter().find(|s| !s.completed())?;
    let a = step.attempts.last()?;
    match &a.outcome {
        None => Some(a.timeout_at),
        Some(AttemptOutcome::Failed { retry_at, .. }) => *retry_at,
        Some(AttemptOutcome::Completed { .. }) => None,
    }
}

fn check_run_matches(run: &Run, service: &ServiceDef) -> Result<(), String> {
    let names: Vec<&str> = service.steps.iter().map(|s| s.name.as_str()).collect();
    let ran: Vec<&str> = run.steps.iter().map(|s| s.name.as_str()).collect();
    if names != ran {
        return Err(format!(
            "run {} was started with steps {ran:?} but service {} in catalogue {} has steps {names:?}",
            run.run, service.code, run.catalog_version
        ));
    }
    Ok(())
}

/// What to do for the case now. An `Err` means the case cannot be decided
/// (park it).
pub fn decide(
    wf: &Workflow,
    now: DateTime<Utc>,
    catalogs: &Catalogs,
) -> Result<Decision<Effect>, String> {
    let mut b = Builder {
        wf,
        now,
        events: Vec::new(),
        effects: Vec::new(),
    };
    let Some(promise) = &wf.promise else {
        return Ok(Decision::default());
    };
    if wf.withdrawn || wf.closed {
        return Ok(Decision::default());
    }
    let next_run = match wf.current_run() {
        None => Some((1, promise.event_id.clone())),
        Some(run) if run.outcome.is_some() => {
            let wanted = 1 + wf.retries.len();
            if wf.promise_kept || wf.runs.len() >= wanted {
                None
            } else {
                Some((run.run + 1, wf.retries[wf.runs.len() - 1].clone()))
            }
        }
        Some(_) => None,
    };
    if let Some((run, cause)) = next_run {
        let service = pinned_service(wf, catalogs)?;
        let started = b.push(
            &cause,
            format!("fulfilment_started/r{run}"),
            Payload::FulfilmentStarted(pb::FulfilmentStarted {
                run,
                catalog_version: promise.catalog_version.clone(),
                steps: service.steps.iter().map(|s| s.name.clone()).collect(),
            }),
        );
        let r = AttemptRef {
            run,
            step_index: 0,
            attempt: 1,
        };
        b.start_attempt(&started, r, &service.steps[0]);
        return Ok(b.finish());
    }
    let Some(run) = wf.current_run().filter(|r| r.outcome.is_none()) else {
        return Ok(Decision::default());
    };
    let service = pinned_service(wf, catalogs)?;
    check_run_matches(run, service)?;
    let Some(index) = run.steps.iter().position(|s| !s.completed()) else {
        let cause = run
            .steps
            .last()
            .and_then(|s| {
                s.attempts.iter().find_map(|a| match &a.outcome {
                    Some(AttemptOutcome::Completed { event_id }) => Some(event_id.clone()),
                    _ => None,
                })
            })
            .unwrap_or_else(|| run.started_event_id.clone());
        b.push(
            &cause,
            format!("promise_kept/r{}", run.run),
            Payload::PromiseKept(pb::PromiseKept {
                run: run.run,
                deadline: Some(timestamp(promise.deadline)),
                late: wf.promise_broken || now > promise.deadline,
            }),
        );
        return Ok(b.finish());
    };
    let step = &run.steps[index];
    let def = &service.steps[index];
    let r = |attempt| AttemptRef {
        run: run.run,
        step_index: index as u32,
        attempt,
    };
    match step.attempts.last() {
        None => {
            let cause = index
                .checked_sub(1)
                .and_then(|p| {
                    run.steps[p].attempts.iter().find_map(|a| match &a.outcome {
                        Some(AttemptOutcome::Completed { event_id }) => Some(event_id.clone()),
                        _ => None,
                    })
                })
                .unwrap_or_else(|| run.started_event_id.clone());
            b.start_attempt(&cause, r(1), def);
        }
        Some(a) => match &a.outcome {
            None if now >= a.timeout_at => {
                b.fail_attempt(
                    &a.started_event_id,
                    r(a.attempt),
                    def,
                    format!(
                        "attempt {} of step {} timed out after {:?}",
                        a.attempt, def.name, def.timeout
                    ),
                    true,
                    true,
                    system(),
                );
            }
            None => {}
            Some(AttemptOutcome::Failed {
                retry_at: Some(at),
                event_id,
                ..
            }) if now >= *at => b.start_attempt(event_id, r(a.attempt + 1), def),
            Some(AttemptOutcome::Failed {
                retry_at: Some(_), ..
            }) => {}
            Some(AttemptOutcome::Failed {
                retry_at: None,
                event_id,
                error,
                ..
            }) => b.fail_run(event_id, r(a.attempt), &def.name, error),
            Some(AttemptOutcome::Completed { .. }) => {}
        },
    }
    Ok(b.finish())
}

/// Turns a handler's report on attempt `r` into events, or refuses it.
pub fn report(
    wf: &Workflow,
    r: AttemptRef,
    via: Via,
    report: Report,
    now: DateTime<Utc>,
    catalogs: &Catalogs,
) -> Result<Vec<NewEvent>, Refusal> {
    let Some((run, step, attempt)) = wf.attempt(r) else {
        return Err(Refusal::UnknownAttempt(r));
    };
    let name = &step.name;
    match (&attempt.outcome, &report) {
        (Some(AttemptOutcome::Completed { event_id }), Report::Completed { .. }) => {
            return Err(Refusal::AlreadyCompleted {
                event_id: event_id.clone(),
            });
        }
        (
            Some(AttemptOutcome::Failed {
                event_id,
                retry_at,
                timed_out: false,
                ..
            }),
            Report::Failed { .. },
        ) => {
            return Err(Refusal::AlreadyFailed {
                event_id: event_id.clone(),
                retry_at: *retry_at,
            });
        }
        (Some(AttemptOutcome::Completed { .. }), Report::Failed { .. }) => {
            return Err(Refusal::Stale(format!(
                "stale task: attempt {} of step {name} already completed",
                r.attempt
            )));
        }
        (Some(AttemptOutcome::Failed { timed_out, .. }), _) => {
            return Err(Refusal::Stale(format!(
                "stale task: attempt {} of step {name} is no longer running (it {})",
                r.attempt,
                if *timed_out { "timed out" } else { "failed" }
            )));
        }
        (None, _) => {}
    }
    if wf.withdrawn || wf.closed {
        return Err(Refusal::CaseEnded(format!(
            "case {} was {}; its steps are no longer carried out",
            wf.case,
            if wf.closed { "closed" } else { "withdrawn" }
        )));
    }
    if run.outcome.is_some() {
        return Err(Refusal::Stale(format!(
            "stale task: run {} is over; attempt {} of step {name} is no longer running",
            run.run, r.attempt
        )));
    }
    if now >= attempt.timeout_at {
        return Err(Refusal::Stale(format!(
            "stale task: attempt {} of step {name} is no longer running (it timed out at {})",
            r.attempt,
            attempt.timeout_at.to_rfc3339()
        )));
    }
    if attempt.handler != via.handler() as i32 {
        let how = match pb::HandlerKind::try_from(attempt.handler) {
            Ok(pb::HandlerKind::External) => "an external step: use CompleteTask or FailTask",
            Ok(pb::HandlerKind::Manual) => "a manual step: use CompleteManualStep",
            Ok(pb::HandlerKind::Simulate) => "a simulated step: it completes by itself",
            _ => "of an unknown handler",
        };
        return Err(Refusal::WrongHandler(format!("step {name} is {how}")));
    }
    let service = pinned_service(wf, catalogs).map_err(Refusal::Undecidable)?;
    check_run_matches(run, service).map_err(Refusal::Undecidable)?;
    let def = &service.steps[r.step_index as usize];
    let mut b = Builder {
        wf,
        now,
        events: Vec::new(),
        effects: Vec::new(),
    };
    match report {
        Report::Completed { output, by } => {
            b.push(
                &attempt.started_event_id,
                format!("step_completed/r{}/s{}/a{}", r.run, r.step_index, r.attempt),
                Payload::StepCompleted(pb::StepCompleted {
                    run: r.run,
                    step_index: r.step_index,
                    step_name: name.clone(),
                    attempt: r.attempt,
                    output: output.into_iter().collect(),
                    completed_by: Some(by),
                }),
            );
        }
        Report::Failed {
            error,
            retryable,
            by,
        } => {
            b.fail_attempt(
                &attempt.started_event_id,
                r,
                def,
                error,
                false,
                retryable,
                by,
            );
        }
    }
    Ok(b.events)
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
