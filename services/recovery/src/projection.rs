//! Recovery's own projection of a case: a pure fold of its envelopes into
//! what recovery decides on — the promise and whether it was kept or broken,
//! the candidate triggers in log order, every recovery with its actions,
//! compensations and retries, and whether the case is withdrawn or closed.
//! No I/O, no clock: [`Projection::fold`] is total (an unexpected event is
//! counted and otherwise ignored, because the log is the truth).
//!
//! It is also recovery's held state ([`Fold`]): the reconciler and the API
//! keep each active case's projection in one [`casework_runtime::held::CaseCache`]
//! and fold only the events after its head. A case is *final*
//! ([`Fold::is_final`]) once it is closed with no recovery open: then a
//! wake-up that brings no event (a timer fire) decides on the held state
//! without reading the log — whatever could still change a decision
//! (feedback, a kept promise) arrives as a delivered event, and an append on
//! a stale state conflicts and reloads.

use std::collections::HashSet;

use casework_caselog::{CaseKey, StoredEvent};
use casework_domain::chain::from_timestamp;
use casework_domain::pb::{self, Envelope, envelope::Payload};
use casework_runtime::held::Fold;
use chrono::{DateTime, Utc};

/// The promise made on the case.
#[derive(Debug, Clone, PartialEq)]
pub struct PromiseInfo {
    /// Id of the `promise_made` event.
    pub event_id: String,
    /// Catalogue service code.
    pub service_code: String,
    /// Catalogue version the case is pinned to.
    pub catalog_version: String,
    /// Hex SHA-256 of that catalogue file (empty when the promise did not
    /// record one).
    pub catalog_digest: String,
    /// When it is due (computed by intake on the service's calendar).
    pub deadline: DateTime<Utc>,
}

/// What set off (or may set off) a recovery.
#[derive(Debug, Clone, PartialEq)]
pub enum TriggerKind {
    /// A fulfilment run failed for good (not one recovery asked for).
    FulfilmentFailed {
        /// The run.
        run: u32,
        /// The step that failed.
        step: String,
        /// Why.
        reason: String,
    },
    /// Recovery recorded the promise as broken.
    PromiseBroken {
        /// The deadline that passed.
        deadline: DateTime<Utc>,
    },
    /// The customer rated the experience (negative only when at or below
    /// the policy's threshold, which `decide` judges).
    Feedback {
        /// 1–5.
        score: u32,
        /// The customer's words.
        comment: String,
    },
}

/// A candidate trigger, in log order.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// Id of the triggering event (the recovery's cause).
    pub event_id: String,
    /// What it is.
    pub kind: TriggerKind,
}

impl Trigger {
    /// The event contract's trigger enum.
    pub fn pb(&self) -> pb::RecoveryTrigger {
        match self.kind {
            TriggerKind::FulfilmentFailed { .. } => pb::RecoveryTrigger::FulfilmentFailed,
            TriggerKind::PromiseBroken { .. } => pb::RecoveryTrigger::PromiseBroken,
            TriggerKind::Feedback { .. } => pb::RecoveryTrigger::NegativeFeedback,
        }
    }
}

/// Where a compensation stands.
#[derive(Debug, Clone, PartialEq)]
pub enum CompState {
    /// Proposed; waiting for a person when it requires approval.
    Proposed,
    /// A person approved it; recovery is to grant it.
    Approved(pb::Actor),
    /// A person declined it.
    Declined(pb::Actor),
    /// Granted to the customer (naming who approved it, when a person
    /// did).
    Granted(Option<pb::Actor>),
}

/// One compensation of a recovery.
#[derive(Debug, Clone, PartialEq)]
pub struct Comp {
    /// `r<recovery>-c<rung>`.
    pub id: String,
    /// Kind token.
    pub kind: String,
    /// Amount.
    pub amount: pb::Money,
    /// True when a person must approve it.
    pub requires_approval: bool,
    /// Id of the `compensation_proposed` event.
    pub proposed_event_id: String,
    /// When it was proposed.
    pub proposed_at: Option<DateTime<Utc>>,
    /// Why it was proposed.
    pub reason: String,
    /// Where it stands.
    pub state: CompState,
    /// The person's decision on it, once recorded: the event id and
    /// per-case sequence of its `compensation_approved` or
    /// `compensation_declined` (what a repeated API call answers with).
    pub decided: Option<(String, u64)>,
}

/// How the fulfilment run a retry asked for ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryResult {
    /// `promise_kept` followed the retry.
    Kept,
    /// `fulfilment_failed` followed the retry.
    Failed,
}

/// One `retry_requested` of a recovery.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryRec {
    /// Its event id.
    pub event_id: String,
    /// Case-wide retry number.
    pub retry: u32,
    /// How the run ended, once it did.
    pub result: Option<RetryResult>,
}

/// One recovery of the case.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// 1, 2, …
    pub number: u32,
    /// What triggered it.
    pub trigger: pb::RecoveryTrigger,
    /// Id of the triggering event.
    pub cause_event_id: String,
    /// Why it started.
    pub reason: String,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// Event types of the actions, in order.
    pub actions: Vec<String>,
    /// Ids of every event of this recovery (to recognise ladder rungs).
    pub event_ids: HashSet<String>,
    /// Compensations, in order.
    pub compensations: Vec<Comp>,
    /// Retries, in order.
    pub retries: Vec<RetryRec>,
    /// Apologies sent.
    pub apologies: u32,
    /// Escalations.
    pub escalations: u32,
    /// Outcome once completed.
    pub outcome: Option<pb::RecoveryOutcome>,
}

impl Recovery {
    /// True until `recovery_completed`.
    pub fn is_open(&self) -> bool {
        self.outcome.is_none()
    }

    /// The compensation called `id`.
    pub fn comp(&self, id: &str) -> Option<&Comp> {
        self.compensations.iter().find(|c| c.id == id)
    }

    /// Compensations proposed and not yet approved, declined or granted.
    pub fn pending_compensations(&self) -> impl Iterator<Item = &Comp> {
        self.compensations
            .iter()
            .filter(|c| matches!(c.state, CompState::Proposed))
    }

    /// True while the last retry's run has not ended.
    pub fn waiting_for_fulfilment(&self) -> bool {
        self.is_open() && self.retries.last().is_some_and(|r| r.result.is_none())
    }
}

/// Everything recovery knows about a case.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Projection {
    /// Tenant token.
    pub tenant: String,
    /// Case id.
    pub case_id: String,
    /// The case's correlation id (that of `case_opened`).
    pub correlation_id: String,
    /// The channel the case was opened on.
    pub channel: i32,
    /// The locale the customer reads (as the case was opened with).
    pub locale: String,
    /// The customer's time zone (as the case was opened with).
    pub time_zone: String,
    /// The promise.
    pub promise: Option<PromiseInfo>,
    /// Id of the first `promise_kept` that was on time (not late, before
    /// any `promise_broken`).
    pub kept_on_time: Option<String>,
    /// True once any `promise_kept` was recorded.
    pub kept: bool,
    /// True when a `promise_kept` was late (flagged, or after
    /// `promise_broken`).
    pub kept_late: bool,
    /// Id of `promise_broken`.
    pub broken: Option<String>,
    /// True once the customer withdrew.
    pub withdrawn: bool,
    /// True once the case was closed.
    pub closed: bool,
    /// Retries requested on the case so far.
    pub retries_requested: u32,
    /// Candidate triggers in log order (fulfilment failures that ended a
    /// retry recovery asked for are not triggers: they belong to it).
    pub triggers: Vec<Trigger>,
    /// Recoveries in order.
    pub recoveries: Vec<Recovery>,
    /// Events folded.
    pub events: u64,
}

impl Projection {
    /// Folds a whole log.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> Self {
        let mut p = Self::default();
        for e in events {
            p.apply(e);
        }
        p
    }

    /// The open recovery, if any (at most one is open at a time).
    pub fn open_recovery(&self) -> Option<&Recovery> {
        self.recoveries.iter().find(|r| r.is_open())
    }

    /// True when `event_id` already caused a recovery.
    pub fn handled(&self, event_id: &str) -> bool {
        self.recoveries.iter().any(|r| r.cause_event_id == event_id)
    }

    /// The compensation `id` and its recovery.
    pub fn find_comp(&self, id: &str) -> Option<(&Recovery, &Comp)> {
        self.recoveries
            .iter()
            .find_map(|r| r.comp(id).map(|c| (r, c)))
    }

    fn comp_mut(&mut self, id: &str) -> Option<&mut Comp> {
        self.recoveries
            .iter_mut()
            .find_map(|r| r.compensations.iter_mut().find(|c| c.id == id))
    }

    fn recovery_mut(&mut self, number: u32) -> Option<&mut Recovery> {
        self.recoveries.iter_mut().find(|r| r.number == number)
    }

    /// The retry whose run is in progress, as (recovery index, retry index).
    fn awaiting_retry(&self) -> Option<(usize, usize)> {
        self.recoveries.iter().enumerate().find_map(|(i, r)| {
            (r.is_open() && r.retries.last().is_some_and(|x| x.result.is_none()))
                .then(|| (i, r.retries.len() - 1))
        })
    }

    /// Folds one event.
    pub fn apply(&mut self, e: &Envelope) {
        let at = e.occurred_at.as_ref().map(from_timestamp);
        if self.events == 0 {
            self.tenant = e.tenant.clone();
            self.case_id = e.case_id.clone();
            self.correlation_id = e.correlation_id.clone();
        }
        self.events += 1;
        let Some(payload) = &e.payload else {
            return;
        };
        let id = e.event_id.clone();
        match payload {
            Payload::CaseOpened(o) => {
                self.channel = o.channel;
                self.locale = o.locale.clone();
                self.time_zone = o.time_zone.clone();
                if !e.correlation_id.is_empty() {
                    self.correlation_id = e.correlation_id.clone();
                }
            }
            Payload::PromiseMade(p) => {
                self.promise = Some(PromiseInfo {
                    event_id: id,
                    service_code: p.service_code.clone(),
                    catalog_version: p.catalog_version.clone(),
                    catalog_digest: p.catalog_digest.clone(),
                    deadline: p.deadline.as_ref().map(from_timestamp).unwrap_or_default(),
                });
            }
            Payload::FeedbackReceived(f) => self.triggers.push(Trigger {
                event_id: id,
                kind: TriggerKind::Feedback {
                    score: f.score,
                    comment: f.comment.clone(),
                },
            }),
            Payload::CaseWithdrawn(_) => self.withdrawn = true,
            Payload::CaseClosed(_) => self.closed = true,
            Payload::PromiseKept(k) => {
                self.kept = true;
                let late = k.late || self.broken.is_some();
                self.kept_late |= late;
                if !late && self.kept_on_time.is_none() {
                    self.kept_on_time = Some(id);
                }
                if let Some((r, x)) = self.awaiting_retry() {
                    self.recoveries[r].retries[x].result = Some(RetryResult::Kept);
                }
            }
            Payload::FulfilmentFailed(f) => {
                if let Some((r, x)) = self.awaiting_retry() {
                    self.recoveries[r].retries[x].result = Some(RetryResult::Failed);
                } else {
                    self.triggers.push(Trigger {
                        event_id: id,
                        kind: TriggerKind::FulfilmentFailed {
                            run: f.run,
                            step: f.step_name.clone(),
                            reason: f.reason.clone(),
                        },
                    });
                }
            }
            Payload::PromiseBroken(b) => {
                self.broken = Some(id.clone());
                self.triggers.push(Trigger {
                    event_id: id,
                    kind: TriggerKind::PromiseBroken {
                        deadline: b.deadline.as_ref().map(from_timestamp).unwrap_or_default(),
                    },
                });
            }
            Payload::RecoveryStarted(r) => self.recoveries.push(Recovery {
                number: r.recovery,
                trigger: r.trigger(),
                cause_event_id: e.causation_id.clone(),
                reason: r.reason.clone(),
                started_at: at,
                actions: Vec::new(),
                event_ids: HashSet::from([id]),
                compensations: Vec::new(),
                retries: Vec::new(),
                apologies: 0,
                escalations: 0,
                outcome: None,
            }),
            Payload::ApologySent(a) => {
                if let Some(r) = self.recovery_mut(a.recovery) {
                    r.apologies += 1;
                    r.note(e);
                }
            }
            Payload::CompensationProposed(c) => {
                if let Some(r) = self.recovery_mut(c.recovery) {
                    r.compensations.push(Comp {
                        id: c.compensation_id.clone(),
                        kind: c.kind.clone(),
                        amount: c.amount.clone().unwrap_or_default(),
                        requires_approval: c.requires_approval,
                        proposed_event_id: id,
                        proposed_at: at,
                        reason: c.reason.clone(),
                        state: CompState::Proposed,
                        decided: None,
                    });
                    r.note(e);
                }
            }
            Payload::CompensationApproved(c) => {
                if let Some(comp) = self.comp_mut(&c.compensation_id) {
                    comp.state = CompState::Approved(c.approved_by.clone().unwrap_or_default());
                    comp.decided = Some((id, e.sequence));
                }
                self.note_comp(&c.compensation_id, e);
            }
            Payload::CompensationDeclined(c) => {
                if let Some(comp) = self.comp_mut(&c.compensation_id) {
                    comp.state = CompState::Declined(c.declined_by.clone().unwrap_or_default());
                    comp.decided = Some((id, e.sequence));
                }
                self.note_comp(&c.compensation_id, e);
            }
            Payload::CompensationGranted(c) => {
                if let Some(comp) = self.comp_mut(&c.compensation_id) {
                    comp.state = match &comp.state {
                        CompState::Approved(by) => CompState::Granted(Some(by.clone())),
                        _ => CompState::Granted(None),
                    };
                }
                self.note_comp(&c.compensation_id, e);
            }
            Payload::RetryRequested(x) => {
                self.retries_requested = self.retries_requested.max(x.retry);
                if let Some(r) = self.recovery_mut(x.recovery) {
                    r.retries.push(RetryRec {
                        event_id: id,
                        retry: x.retry,
                        result: None,
                    });
                    r.note(e);
                }
            }
            Payload::CaseEscalated(x) => {
                if let Some(r) = self.recovery_mut(x.recovery) {
                    r.escalations += 1;
                    r.note(e);
                }
            }
            Payload::RecoveryCompleted(x) => {
                if let Some(r) = self.recovery_mut(x.recovery) {
                    r.outcome = Some(x.outcome());
                    r.event_ids.insert(id);
                }
            }
            Payload::InteractionRecorded(_)
            | Payload::PersonalDataErased(_)
            | Payload::CustomerNotified(_)
            | Payload::FulfilmentStarted(_)
            | Payload::StepStarted(_)
            | Payload::StepCompleted(_)
            | Payload::StepFailed(_) => {}
        }
    }

    fn note_comp(&mut self, comp_id: &str, e: &Envelope) {
        if let Some(r) = self
            .recoveries
            .iter_mut()
            .find(|r| r.comp(comp_id).is_some())
        {
            r.note(e);
        }
    }
}

impl Fold for Projection {
    fn empty(case: &CaseKey) -> Self {
        Self {
            tenant: case.tenant.to_string(),
            case_id: case.case_id.to_string(),
            ..Self::default()
        }
    }

    fn apply(&mut self, event: &StoredEvent) {
        Projection::apply(self, &event.envelope);
    }

    /// Closed with no recovery open: nothing recovery decides can change
    /// without a new event (an open recovery can still be moved on by a
    /// person's decision taken on another replica, which wakes this one
    /// without an event, so it is not final).
    fn is_final(&self) -> bool {
        self.closed && self.open_recovery().is_none()
    }
}

impl Recovery {
    fn note(&mut self, e: &Envelope) {
        self.actions.push(e.event_type.clone());
        self.event_ids.insert(e.event_id.clone());
    }
}
