//! Fulfilment's own projection of a case: a pure fold of its events into the
//! runs of its workflow, each step's attempts (started, timed out, completed,
//! failed) and what the front stage and recovery said (promise, retries,
//! withdrawal, closing). Richer than `casework_domain::CaseState` because the
//! decider needs every attempt of every run; it never fails (an event it
//! does not expect is ignored: the log is the truth). It is the state the
//! engine holds per case ([`Fold`]): brought up to date one event at a
//! time, never re-read whole on the hot path.

use std::collections::BTreeMap;

use casework_caselog::{CaseKey, StoredEvent};
use casework_domain::chain::from_timestamp;
use casework_domain::pb::{self, Envelope, envelope::Payload};
use casework_runtime::held::Fold;
use chrono::{DateTime, Utc};

/// The promise the front stage made.
#[derive(Debug, Clone, PartialEq)]
pub struct PromiseInfo {
    /// Id of the `promise_made` event (the cause of run 1).
    pub event_id: String,
    /// Catalogue service.
    pub service_code: String,
    /// Pinned catalogue version.
    pub catalog_version: String,
    /// Hex SHA-256 of that catalogue (empty: not recorded).
    pub catalog_digest: String,
    /// When the promised outcome is due.
    pub deadline: DateTime<Utc>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// `step_completed`.
    Completed {
        /// Its event id.
        event_id: String,
    },
    /// `step_failed`.
    Failed {
        /// Its event id.
        event_id: String,
        /// When the next attempt is due (`None`: failed for good).
        retry_at: Option<DateTime<Utc>>,
        /// True when the timeout passed.
        timed_out: bool,
        /// The error, for people.
        error: String,
    },
}

/// One attempt of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// 1-based.
    pub attempt: u32,
    /// `pb::HandlerKind` as recorded.
    pub handler: i32,
    /// Id of its `step_started` event.
    pub started_event_id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it times out.
    pub timeout_at: DateTime<Utc>,
    /// How it ended (`None`: still running).
    pub outcome: Option<AttemptOutcome>,
}

impl Attempt {
    /// True while neither completed nor failed.
    pub fn in_flight(&self) -> bool {
        self.outcome.is_none()
    }
}

/// One step of one run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepRun {
    /// Step name.
    pub name: String,
    /// Attempts in order.
    pub attempts: Vec<Attempt>,
}

impl StepRun {
    /// True once an attempt completed.
    pub fn completed(&self) -> bool {
        self.attempts
            .iter()
            .any(|a| matches!(a.outcome, Some(AttemptOutcome::Completed { .. })))
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// `promise_kept`.
    Kept {
        /// Its event id.
        event_id: String,
    },
    /// `fulfilment_failed`.
    Failed {
        /// Its event id.
        event_id: String,
    },
}

/// One run of the workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// 1-based run number.
    pub run: u32,
    /// Id of its `fulfilment_started`.
    pub started_event_id: String,
    /// Catalogue version it runs from.
    pub catalog_version: String,
    /// Its steps, in workflow order.
    pub steps: Vec<StepRun>,
    /// How it ended (`None`: running).
    pub outcome: Option<RunOutcome>,
}

/// Which attempt: the coordinates a task token carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptRef {
    /// Run number.
    pub run: u32,
    /// Zero-based step index.
    pub step_index: u32,
    /// 1-based attempt.
    pub attempt: u32,
}

impl std::fmt::Display for AttemptRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "run {} step {} attempt {}",
            self.run, self.step_index, self.attempt
        )
    }
}

/// Everything fulfilment knows about a case.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    /// The case.
    pub case: CaseKey,
    /// Correlation id of `case_opened` (the case id when none was given).
    pub correlation_id: String,
    /// The opening request (attributes, summary).
    pub opened: Option<pb::CaseOpened>,
    /// The event id of `case_opened` (what its encrypted personal fields
    /// are bound to).
    pub opened_event_id: String,
    /// The promise.
    pub promise: Option<PromiseInfo>,
    /// True once `promise_broken` was recorded.
    pub promise_broken: bool,
    /// True once a `promise_kept` was recorded (any run).
    pub promise_kept: bool,
    /// True once withdrawn.
    pub withdrawn: bool,
    /// True once closed.
    pub closed: bool,
    /// Event ids of `retry_requested`, in order.
    pub retries: Vec<String>,
    /// Runs, in order.
    pub runs: Vec<Run>,
    /// Events folded.
    pub events: u64,
}

impl Workflow {
    /// The projection of an empty log.
    pub fn new(case: CaseKey) -> Self {
        Self {
            correlation_id: case.case_id.to_string(),
            case,
            opened: None,
            opened_event_id: String::new(),
            promise: None,
            promise_broken: false,
            promise_kept: false,
            withdrawn: false,
            closed: false,
            retries: Vec::new(),
            runs: Vec::new(),
            events: 0,
        }
    }

    /// Folds a whole log.
    pub fn fold<'a>(case: CaseKey, events: impl IntoIterator<Item = &'a Envelope>) -> Self {
        let mut w = Self::new(case);
        for e in events {
            w.apply(e);
        }
        w
    }

    /// The run in progress or last finished.
    pub fn current_run(&self) -> Option<&Run> {
        self.runs.last()
    }

    /// The attempt at `r`, if recorded.
    pub fn attempt(&self, r: AttemptRef) -> Option<(&Run, &StepRun, &Attempt)> {
        let run = self.runs.iter().find(|x| x.run == r.run)?;
        let step = run.steps.get(r.step_index as usize)?;
        let attempt = step.attempts.iter().find(|a| a.attempt == r.attempt)?;
        Some((run, step, attempt))
    }

    /// Every attempt still running, with its coordinates.
    pub fn in_flight(&self) -> Vec<(AttemptRef, &StepRun, &Attempt)> {
        let mut out = Vec::new();
        for run in &self.runs {
            for (i, step) in run.steps.iter().enumerate() {
                for a in step.attempts.iter().filter(|a| a.in_flight()) {
                    out.push((
                        AttemptRef {
                            run: run.run,
                            step_index: i as u32,
                            attempt: a.attempt,
                        },
                        step,
                        a,
                    ));
                }
            }
        }
        out
    }

    /// The attributes of `case_opened`.
    pub fn attributes(&self) -> BTreeMap<String, String> {
        self.opened
            .as_ref()
            .map(|o| o.attributes.clone().into_iter().collect())
            .unwrap_or_default()
    }

    fn step_mut(&mut self, run: u32, index: u32) -> Option<&mut StepRun> {
        self.runs
            .iter_mut()
            .find(|r| r.run == run)?
            .steps
            .get_mut(index as usize)
    }

    fn attempt_mut(&mut self, run: u32, index: u32, attempt: u32) -> Option<&mut Attempt> {
        self.step_mut(run, index)?
            .attempts
            .iter_mut()
            .find(|a| a.attempt == attempt)
    }

    /// Folds one event.
    pub fn apply(&mut self, e: &Envelope) {
        self.events += 1;
        let at = e
            .occurred_at
            .as_ref()
            .map(from_timestamp)
            .unwrap_or_default();
        let Some(payload) = &e.payload else {
            return;
        };
        match payload {
            Payload::CaseOpened(o) => {
                self.opened = Some(o.clone());
                self.opened_event_id = e.event_id.clone();
                if !e.correlation_id.is_empty() {
                    self.correlation_id = e.correlation_id.clone();
                }
            }
            Payload::PromiseMade(p) if self.promise.is_none() => {
                self.promise = Some(PromiseInfo {
                    event_id: e.event_id.clone(),
                    service_code: p.service_code.clone(),
                    catalog_version: p.catalog_version.clone(),
                    catalog_digest: p.catalog_digest.clone(),
                    deadline: p.deadline.as_ref().map(from_timestamp).unwrap_or_default(),
                });
            }
            Payload::CaseWithdrawn(_) => self.withdrawn = true,
            Payload::CaseClosed(_) => self.closed = true,
            Payload::PromiseBroken(_) => self.promise_broken = true,
            Payload::RetryRequested(_) => self.retries.push(e.event_id.clone()),
            Payload::FulfilmentStarted(f) if !self.runs.iter().any(|r| r.run == f.run) => {
                self.runs.push(Run {
                    run: f.run,
                    started_event_id: e.event_id.clone(),
                    catalog_version: f.catalog_version.clone(),
                    steps: f
                        .steps
                        .iter()
                        .map(|n| StepRun {
                            name: n.clone(),
                            attempts: Vec::new(),
                        })
                        .collect(),
                    outcome: None,
                });
            }
            Payload::StepStarted(s) => {
                if let Some(step) = self.step_mut(s.run, s.step_index)
                    && !step.attempts.iter().any(|a| a.attempt == s.attempt)
                {
                    step.attempts.push(Attempt {
                        attempt: s.attempt,
                        handler: s.handler,
                        started_event_id: e.event_id.clone(),
                        started_at: at,
                        timeout_at: s.timeout_at.as_ref().map(from_timestamp).unwrap_or(at),
                        outcome: None,
                    });
                }
            }
            Payload::StepCompleted(s) => {
                if let Some(a) = self.attempt_mut(s.run, s.step_index, s.attempt)
                    && a.outcome.is_none()
                {
                    a.outcome = Some(AttemptOutcome::Completed {
                        event_id: e.event_id.clone(),
                    });
                }
            }
            Payload::StepFailed(s) => {
                if let Some(a) = self.attempt_mut(s.run, s.step_index, s.attempt)
                    && a.outcome.is_none()
                {
                    a.outcome = Some(AttemptOutcome::Failed {
                        event_id: e.event_id.clone(),
                        retry_at: s.retry_at.as_ref().map(from_timestamp),
                        timed_out: s.timed_out,
                        error: s.error.clone(),
                    });
                }
            }
            Payload::PromiseKept(k) => {
                self.promise_kept = true;
                if let Some(r) = self.runs.iter_mut().find(|r| r.run == k.run)
                    && r.outcome.is_none()
                {
                    r.outcome = Some(RunOutcome::Kept {
                        event_id: e.event_id.clone(),
                    });
                }
            }
            Payload::FulfilmentFailed(f) => {
                if let Some(r) = self.runs.iter_mut().find(|r| r.run == f.run)
                    && r.outcome.is_none()
                {
                    r.outcome = Some(RunOutcome::Failed {
                        event_id: e.event_id.clone(),
                    });
                }
            }
            _ => {}
        }
    }
}

impl Fold for Workflow {
    fn empty(case: &CaseKey) -> Self {
        Workflow::new(case.clone())
    }

    fn apply(&mut self, event: &StoredEvent) {
        Workflow::apply(self, &event.envelope);
    }

    /// A closed case is decided no further ([`crate::decide::decide`] and
    /// [`crate::decide::report`] refuse everything once `case_closed` is
    /// folded), so a wake-up that brings no event needs no read.
    fn is_final(&self) -> bool {
        self.closed
    }
}
