//! The case state: a pure fold of a case's events. Every service loads a case
//! by folding its log through [`evolve`] and decides from the result, never
//! from the event that woke it.

use chrono::{DateTime, Utc};

use crate::chain::{ChainTip, from_timestamp};
use crate::pb::{self, Envelope, envelope::Payload};

/// Where a case is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CaseStatus {
    /// No event yet.
    #[default]
    New,
    /// Opened and promised; fulfilment has not started (or a retry is
    /// pending).
    Open,
    /// The back stage is running the workflow.
    Fulfilling,
    /// The promise was kept; the customer is yet to be told.
    Kept,
    /// The workflow failed for good; recovery is yet to act.
    Failed,
    /// Recovery is running its ladder.
    Recovering,
    /// Recovery finished; the customer is yet to be told.
    Recovered,
    /// The customer withdrew; the case is yet to be closed.
    Withdrawn,
    /// Closed with a resolution.
    Closed,
}

impl CaseStatus {
    /// The status as a lowercase word (for APIs and read models).
    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::New => "new",
            CaseStatus::Open => "open",
            CaseStatus::Fulfilling => "fulfilling",
            CaseStatus::Kept => "kept",
            CaseStatus::Failed => "failed",
            CaseStatus::Recovering => "recovering",
            CaseStatus::Recovered => "recovered",
            CaseStatus::Withdrawn => "withdrawn",
            CaseStatus::Closed => "closed",
        }
    }
}

/// The promise a case was given.
#[derive(Debug, Clone, PartialEq)]
pub struct Promise {
    /// The catalogue service.
    pub service_code: String,
    /// The catalogue version the case is pinned to.
    pub catalog_version: String,
    /// When the promised outcome is due.
    pub deadline: DateTime<Utc>,
    /// The promised outcome in words.
    pub outcome: String,
}

/// The state of one step in the current fulfilment run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StepProgress {
    /// Step name.
    pub name: String,
    /// Attempts started so far in this run.
    pub attempts: u32,
    /// True once an attempt completed.
    pub completed: bool,
    /// True while an attempt has started and not yet completed or failed.
    pub in_flight: bool,
    /// When the next attempt is due after a retryable failure.
    pub retry_at: Option<DateTime<Utc>>,
}

/// The state of the case's current (or last) recovery.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecoveryProgress {
    /// 1 for the first recovery of the case, 2 for the next…
    pub recovery: u32,
    /// What triggered it.
    pub trigger: i32,
    /// Event types of the actions taken, in order.
    pub actions: Vec<String>,
    /// Compensations proposed and not yet approved, declined or granted.
    pub pending_compensations: Vec<String>,
    /// The outcome, once `recovery_completed`.
    pub outcome: Option<i32>,
}

/// Everything known about a case at a point in its log.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CaseState {
    /// Tenant token (empty before the first event).
    pub tenant: String,
    /// Case id (empty before the first event).
    pub case_id: String,
    /// Where the log ends: per-case sequence and hash of the last event.
    /// `evolve` cannot know the stored bytes, so it leaves this alone;
    /// callers that fold stored events (with their hashes) set it.
    pub tip: Option<ChainTip>,
    /// Lifecycle status.
    pub status: CaseStatus,
    /// The opening request.
    pub opened: Option<pb::CaseOpened>,
    /// When the case was opened.
    pub opened_at: Option<DateTime<Utc>>,
    /// The promise.
    pub promise: Option<Promise>,
    /// True once the promise was kept.
    pub promise_kept: bool,
    /// True when it was kept after its deadline.
    pub kept_late: bool,
    /// True once recovery recorded the promise as broken.
    pub promise_broken: bool,
    /// Fulfilment runs started (1 + retries).
    pub runs: u32,
    /// Steps of the current run.
    pub steps: Vec<StepProgress>,
    /// Recoveries started.
    pub recoveries: u32,
    /// Recoveries completed (a recovery is open while fewer are completed
    /// than started).
    pub recoveries_completed: u32,
    /// The current or last recovery.
    pub recovery: Option<RecoveryProgress>,
    /// Retries requested by recovery so far.
    pub retries_requested: u32,
    /// Feedback scores, in order.
    pub feedback: Vec<u32>,
    /// Interactions recorded.
    pub interactions: u32,
    /// The resolution the customer was notified of.
    pub notified: Option<i32>,
    /// The resolution the case was closed with.
    pub closed: Option<i32>,
    /// Id of the last event.
    pub last_event_id: String,
    /// When the last event was decided.
    pub last_event_at: Option<DateTime<Utc>>,
    /// Number of events folded.
    pub events: u64,
    /// True once the customer's personal data was erased
    /// (`personal_data_erased`): the case's encrypted personal fields are
    /// unreadable for good. Status and every other fact stay as they were.
    pub personal_data_erased: bool,
}

impl CaseState {
    /// Folds a whole log.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> CaseState {
        events.into_iter().fold(CaseState::default(), evolve)
    }

    /// True while a recovery has started and not completed.
    pub fn recovery_open(&self) -> bool {
        self.recoveries_completed < self.recoveries
    }

    /// True once the case was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// True when the promise's deadline has passed at `now` without the
    /// promise being kept.
    pub fn is_breached(&self, now: DateTime<Utc>) -> bool {
        self.promise_broken
            || self.kept_late
            || (!self.promise_kept && self.promise.as_ref().is_some_and(|p| now >= p.deadline))
    }
}

/// Folds one event into the state. It never fails: an event the state does
/// not expect at this point is recorded (tip, counts) and otherwise ignored,
/// because the log is the truth and the fold must be total.
pub fn evolve(mut s: CaseState, e: &Envelope) -> CaseState {
    let at = e.occurred_at.as_ref().map(from_timestamp);
    if s.events == 0 {
        s.tenant = e.tenant.clone();
        s.case_id = e.case_id.clone();
    }
    s.events += 1;
    s.last_event_id = e.event_id.clone();
    s.last_event_at = at;
    let Some(payload) = &e.payload else {
        return s;
    };
    match payload {
        Payload::CaseOpened(o) => {
            s.opened = Some(o.clone());
            s.opened_at = at;
            s.status = CaseStatus::Open;
        }
        Payload::PromiseMade(p) => {
            s.promise = Some(Promise {
                service_code: p.service_code.clone(),
                catalog_version: p.catalog_version.clone(),
                deadline: p.deadline.as_ref().map(from_timestamp).unwrap_or_default(),
                outcome: p.promised_outcome.clone(),
            });
        }
        Payload::InteractionRecorded(_) => s.interactions += 1,
        Payload::FeedbackReceived(f) => s.feedback.push(f.score),
        Payload::CaseWithdrawn(_) => {
            if !s.is_closed() {
                s.status = CaseStatus::Withdrawn;
            }
        }
        Payload::CustomerNotified(n) => s.notified = Some(n.resolution),
        Payload::CaseClosed(c) => {
            s.closed = Some(c.resolution);
            s.status = CaseStatus::Closed;
        }
        Payload::FulfilmentStarted(f) => {
            s.runs = s.runs.max(f.run);
            s.steps = f
                .steps
                .iter()
                .map(|name| StepProgress {
                    name: name.clone(),
                    ..Default::default()
                })
                .collect();
            if matches!(s.status, CaseStatus::Open | CaseStatus::Recovering) {
                s.status = CaseStatus::Fulfilling;
            }
        }
        Payload::StepStarted(st) => {
            if let Some(p) = s.steps.get_mut(st.step_index as usize) {
                p.attempts = p.attempts.max(st.attempt);
                p.in_flight = true;
                p.retry_at = None;
            }
        }
        Payload::StepCompleted(st) => {
            if let Some(p) = s.steps.get_mut(st.step_index as usize) {
                p.completed = true;
                p.in_flight = false;
            }
        }
        Payload::StepFailed(st) => {
            if let Some(p) = s.steps.get_mut(st.step_index as usize) {
                p.in_flight = false;
                p.retry_at = st.retry_at.as_ref().map(from_timestamp);
            }
        }
        Payload::PromiseKept(k) => {
            s.promise_kept = true;
            s.kept_late = k.late || s.promise_broken;
            if !s.is_closed() && s.status != CaseStatus::Withdrawn {
                s.status = CaseStatus::Kept;
            }
        }
        Payload::FulfilmentFailed(_) => {
            if !s.is_closed() && s.status != CaseStatus::Withdrawn {
                s.status = CaseStatus::Failed;
            }
        }
        Payload::PromiseBroken(_) => s.promise_broken = true,
        Payload::RecoveryStarted(r) => {
            s.recoveries = s.recoveries.max(r.recovery);
            s.recovery = Some(RecoveryProgress {
                recovery: r.recovery,
                trigger: r.trigger,
                ..Default::default()
            });
            if !s.is_closed() && s.status != CaseStatus::Withdrawn {
                s.status = CaseStatus::Recovering;
            }
        }
        Payload::ApologySent(_)
        | Payload::CaseEscalated(_)
        | Payload::CompensationApproved(_)
        | Payload::CompensationDeclined(_)
        | Payload::CompensationGranted(_)
        | Payload::CompensationProposed(_)
        | Payload::RetryRequested(_) => {
            if let Payload::RetryRequested(_) = payload {
                s.retries_requested += 1;
                if s.status == CaseStatus::Recovering {
                    s.status = CaseStatus::Open;
                }
            }
            if let Some(r) = s.recovery.as_mut() {
                r.actions.push(e.event_type.clone());
                match payload {
                    Payload::CompensationProposed(c) => {
                        r.pending_compensations.push(c.compensation_id.clone())
                    }
                    Payload::CompensationDeclined(c) => r
                        .pending_compensations
                        .retain(|id| id != &c.compensation_id),
                    Payload::CompensationGranted(c) => r
                        .pending_compensations
                        .retain(|id| id != &c.compensation_id),
                    _ => {}
                }
            }
        }
        Payload::PersonalDataErased(_) => {
            s.personal_data_erased = true;
            if let Some(o) = s.opened.as_mut() {
                crate::personal::clear(o);
            }
        }
        Payload::RecoveryCompleted(r) => {
            s.recoveries_completed += 1;
            if let Some(p) = s.recovery.as_mut() {
                p.outcome = Some(r.outcome);
            }
            if !s.is_closed() && s.status != CaseStatus::Withdrawn {
                s.status = CaseStatus::Recovered;
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::timestamp;

    fn env(seq: u64, payload: Payload) -> Envelope {
        Envelope {
            tenant: "acme".into(),
            case_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2B".into(),
            sequence: seq,
            event_type: crate::EventType::of(&payload).to_string(),
            occurred_at: Some(timestamp(
                DateTime::from_timestamp(1_700_000_000 + seq as i64, 0).unwrap(),
            )),
            payload: Some(payload),
            ..Default::default()
        }
    }

    #[test]
    fn lifecycle_given_when_then() {
        let deadline = DateTime::from_timestamp(1_700_010_000, 0).unwrap();
        // given the events so far / then the status
        let log = [
            (
                Payload::CaseOpened(pb::CaseOpened::default()),
                CaseStatus::Open,
            ),
            (
                Payload::PromiseMade(pb::PromiseMade {
                    deadline: Some(timestamp(deadline)),
                    ..Default::default()
                }),
                CaseStatus::Open,
            ),
            (
                Payload::FulfilmentStarted(pb::FulfilmentStarted {
                    run: 1,
                    steps: vec!["a".into(), "b".into()],
                    ..Default::default()
                }),
                CaseStatus::Fulfilling,
            ),
            (
                Payload::FulfilmentFailed(pb::FulfilmentFailed::default()),
                CaseStatus::Failed,
            ),
            (
                Payload::RecoveryStarted(pb::RecoveryStarted {
                    recovery: 1,
                    ..Default::default()
                }),
                CaseStatus::Recovering,
            ),
            (
                Payload::RetryRequested(pb::RetryRequested::default()),
                CaseStatus::Open,
            ),
            (
                Payload::FulfilmentStarted(pb::FulfilmentStarted {
                    run: 2,
                    steps: vec!["a".into(), "b".into()],
                    ..Default::default()
                }),
                CaseStatus::Fulfilling,
            ),
            (
                Payload::PromiseKept(pb::PromiseKept::default()),
                CaseStatus::Kept,
            ),
            (
                Payload::CustomerNotified(pb::CustomerNotified::default()),
                CaseStatus::Kept,
            ),
            (
                Payload::CaseClosed(pb::CaseClosed {
                    resolution: 2,
                    ..Default::default()
                }),
                CaseStatus::Closed,
            ),
            // late feedback does not reopen a closed case
            (
                Payload::FeedbackReceived(pb::FeedbackReceived {
                    score: 1,
                    ..Default::default()
                }),
                CaseStatus::Closed,
            ),
        ];
        let mut s = CaseState::default();
        for (i, (p, want)) in log.into_iter().enumerate() {
            s = evolve(s, &env(i as u64 + 1, p));
            assert_eq!(s.status, want, "after event {}", i + 1);
        }
        assert_eq!(s.runs, 2);
        assert_eq!(s.retries_requested, 1);
        assert_eq!(s.feedback, vec![1]);
        assert_eq!(s.events, 11);
        assert!(s.promise_kept && !s.is_breached(deadline));
    }

    #[test]
    fn breach_is_judged_against_now() {
        let deadline = DateTime::from_timestamp(1_700_010_000, 0).unwrap();
        let s = CaseState::fold(&[
            env(1, Payload::CaseOpened(pb::CaseOpened::default())),
            env(
                2,
                Payload::PromiseMade(pb::PromiseMade {
                    deadline: Some(timestamp(deadline)),
                    ..Default::default()
                }),
            ),
        ]);
        assert!(!s.is_breached(deadline - chrono::Duration::seconds(1)));
        assert!(s.is_breached(deadline));
    }
}
