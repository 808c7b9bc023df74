//! The pure core of the front stage: what intake knows about a case (a fold
//! of its events, [`CaseView`]), and what it decides — opening a case with
//! its promise, recording a request on a case, and closing a case
//! ([`decide_close`]). No I/O, no clock, no randomness: `now` and fresh ids
//! come in as arguments.

use std::collections::{BTreeSet, HashMap};

use casework_catalog::{Catalog, CatalogPin, Catalogs, MessageTrigger, ServiceDef};
use casework_domain::chain::{from_timestamp, timestamp};
use casework_domain::pb::{self, Envelope, Resolution, envelope::Payload};
use casework_domain::{CaseId, CaseState, EventId, EventType, NewEvent, evolve};
use casework_runtime::reconcile::Decision;
use casework_runtime::tell::{CaseFacts, tell};
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::validate::{CaseRequest, OpenCase};

/// What intake knows about a case: the shared [`CaseState`] plus the facts
/// the closing rule and request idempotency need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaseView {
    /// The generic case state.
    pub state: CaseState,
    /// The promise as made (with the catalogue pin and deadline rule).
    pub promise_made: Option<pb::PromiseMade>,
    /// Correlation id of the case (that of its `case_opened`).
    pub correlation_id: String,
    /// True once the customer withdrew (even if later events changed the
    /// status).
    pub withdrawn: bool,
    /// Recoveries started and not yet completed.
    pub open_recoveries: BTreeSet<u32>,
    /// True when the last fulfilment run failed for good and no retry or new
    /// run followed.
    pub failed_for_good: bool,
    /// True when a recovery handles the last `fulfilment_failed`: one was
    /// open when it happened (its ladder goes on) or started after it.
    pub recovery_covers_failure: bool,
    /// Outcome of the last completed recovery.
    pub last_recovery_outcome: Option<pb::RecoveryOutcome>,
    /// Intake's request events by id: per-case sequence and payload (for
    /// idempotent retries of RecordInteraction, SubmitFeedback and
    /// WithdrawCase).
    pub requests: HashMap<String, (u64, Payload)>,
}

impl CaseView {
    /// Folds a whole log.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a Envelope>) -> Self {
        let mut v = CaseView::default();
        for e in events {
            v.apply(e);
        }
        v
    }

    /// Folds one event.
    pub fn apply(&mut self, e: &Envelope) {
        self.state = evolve(std::mem::take(&mut self.state), e);
        let Some(p) = &e.payload else { return };
        match p {
            Payload::CaseOpened(_) => self.correlation_id = e.correlation_id.clone(),
            Payload::PromiseMade(m) => self.promise_made = Some(m.clone()),
            Payload::CaseWithdrawn(_) => self.withdrawn = true,
            Payload::FulfilmentFailed(_) => {
                self.failed_for_good = true;
                self.recovery_covers_failure = !self.open_recoveries.is_empty();
            }
            Payload::RetryRequested(_)
            | Payload::FulfilmentStarted(_)
            | Payload::PromiseKept(_) => {
                self.failed_for_good = false;
            }
            Payload::RecoveryStarted(r) => {
                self.open_recoveries.insert(r.recovery);
                self.recovery_covers_failure = true;
            }
            Payload::RecoveryCompleted(r) => {
                self.open_recoveries.remove(&r.recovery);
                self.last_recovery_outcome = pb::RecoveryOutcome::try_from(r.outcome).ok();
            }
            _ => {}
        }
        if matches!(
            p,
            Payload::InteractionRecorded(_)
                | Payload::FeedbackReceived(_)
                | Payload::CaseWithdrawn(_)
        ) {
            self.requests
                .insert(e.event_id.clone(), (e.sequence, p.clone()));
        }
    }

    /// True when the case has no events.
    pub fn is_empty(&self) -> bool {
        self.state.events == 0
    }
}

impl casework_runtime::held::Fold for CaseView {
    fn empty(_: &casework_caselog::CaseKey) -> Self {
        CaseView::default()
    }

    fn apply(&mut self, e: &casework_caselog::StoredEvent) {
        CaseView::apply(self, &e.envelope);
    }

    /// A closed case asks nothing more of the closer.
    fn is_final(&self) -> bool {
        self.state.is_closed()
    }
}

/// What the closer decides for a case: the promise of a case found opened
/// without one, from the current catalogue (nothing acts on a case before
/// its promise), else whether to close it ([`decide_close`]), in the words
/// of the catalogue version the case is pinned to. `Err` (to park): the
/// case names a service or a catalogue version that is not loaded.
pub fn decide_closer(
    view: &CaseView,
    catalogs: &Catalogs,
    now: DateTime<Utc>,
) -> std::result::Result<Decision<Closed>, String> {
    if let Some(promise) = decide_promise(view, catalogs.current())? {
        return Ok(Decision {
            events: vec![promise],
            effects: Vec::new(),
        });
    }
    let catalog = match &view.promise_made {
        Some(p) => catalogs
            .pinned(&CatalogPin {
                version: p.catalog_version.clone(),
                digest: p.catalog_digest.clone(),
            })
            .map_err(|e| e.to_string())?,
        None => catalogs.current(),
    };
    decide_close(view, catalog, now)
}

/// The events that open a case and make its promise: `case_opened`, then
/// `promise_made`, appended one after the other. Their ids derive from the
/// idempotency key (or the case id), so the same request always yields the
/// same events; and a case found opened without its promise (a crash
/// between the two appends) gets exactly this promise from
/// [`decide_promise`].
pub fn decide_open(
    cmd: &OpenCase,
    case_id: &CaseId,
    service: &ServiceDef,
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> Vec<NewEvent> {
    let opened = pb::CaseOpened {
        customer_id: cmd.customer_id.clone(),
        channel: cmd.channel as i32,
        purchase_stage: cmd.stage as i32,
        service_code: cmd.service_code.clone(),
        summary: cmd.summary.clone(),
        attributes: cmd.attributes.clone(),
        idempotency_key: cmd.idempotency_key.clone().unwrap_or_default(),
        opened_by: cmd.opened_by.clone(),
        locale: cmd.locale.clone(),
        time_zone: cmd.time_zone.clone(),
        personal: None,
    };
    let open = NewEvent {
        event_id: EventId::derive(case_id, &open_cause(&opened, case_id), "case_opened"),
        occurred_at: now,
        causation_id: String::new(),
        correlation_id: case_id.to_string(),
        payload: Payload::CaseOpened(opened.clone()),
    };
    let promise = promise_event(
        case_id,
        &opened,
        &case_id.to_string(),
        service,
        catalog,
        now,
    );
    vec![open, promise]
}

/// What the ids of a case's opening events derive from: the idempotency
/// key, or the case id when there is none.
fn open_cause(opened: &pb::CaseOpened, case_id: &CaseId) -> String {
    open_cause_of(&opened.idempotency_key, case_id)
}

fn open_cause_of(idempotency_key: &str, case_id: &CaseId) -> String {
    if idempotency_key.is_empty() {
        case_id.to_string()
    } else {
        idempotency_key.to_owned()
    }
}

/// The event id of a case's `case_opened` (what its encrypted personal
/// fields are bound to), from the case's idempotency key.
pub fn opened_event_id(idempotency_key: &str, case_id: &CaseId) -> EventId {
    EventId::derive(
        case_id,
        &open_cause_of(idempotency_key, case_id),
        "case_opened",
    )
}

/// The promise of a case opened at `opened_at` for `service` (of
/// `catalog`): the deadline counts from the opening, so a promise made late
/// (after a crash) promises what the customer was promised at the counter.
fn promise_event(
    case_id: &CaseId,
    opened: &pb::CaseOpened,
    correlation_id: &str,
    service: &ServiceDef,
    catalog: &Catalog,
    opened_at: DateTime<Utc>,
) -> NewEvent {
    let deadline = service.promise_deadline(opened_at);
    let facts = CaseFacts {
        case_id: case_id.as_str(),
        locale: &opened.locale,
        time_zone: &opened.time_zone,
        deadline,
    };
    let promise = pb::PromiseMade {
        service_code: service.code.clone(),
        catalog_version: catalog.version().to_string(),
        catalog_digest: catalog.digest().to_owned(),
        deadline: Some(timestamp(deadline)),
        promised_outcome: service.promise.outcome.clone(),
        deadline_rule: service.promise.deadline.to_string(),
        calendar: service
            .promise
            .calendar
            .as_ref()
            .map(|c| c.name().to_owned())
            .unwrap_or_default(),
        customer_message: Some(tell(
            catalog,
            service,
            facts,
            MessageTrigger::PromiseMade,
            opened.channel,
            None,
        )),
    };
    NewEvent {
        event_id: EventId::derive(case_id, &open_cause(opened, case_id), "promise_made"),
        occurred_at: opened_at,
        causation_id: String::new(),
        correlation_id: correlation_id.to_owned(),
        payload: Payload::PromiseMade(promise),
    }
}

/// The promise of a case found opened without one (a crash between
/// `case_opened` and `promise_made`): the same event [`decide_open`] would
/// have appended, from the current catalogue, with the deadline counted
/// from the opening. Nothing when the case has its promise, is not opened,
/// or names a service the catalogue lacks (then it is `Err`, to park).
pub fn decide_promise(
    view: &CaseView,
    catalog: &Catalog,
) -> std::result::Result<Option<NewEvent>, String> {
    let s = &view.state;
    let (Some(opened), None) = (&s.opened, &view.promise_made) else {
        return Ok(None);
    };
    let case_id = CaseId::parse(&s.case_id).map_err(|e| e.to_string())?;
    let service = catalog.service(&opened.service_code).ok_or_else(|| {
        format!(
            "the case was opened for service {:?}, which catalogue version {} lacks; its promise cannot be made",
            opened.service_code,
            catalog.version()
        )
    })?;
    let opened_at = s.opened_at.unwrap_or_else(Utc::now);
    let correlation = if view.correlation_id.is_empty() {
        case_id.to_string()
    } else {
        view.correlation_id.clone()
    };
    Ok(Some(promise_event(
        &case_id,
        opened,
        &correlation,
        service,
        catalog,
        opened_at,
    )))
}

/// True when an existing case was opened by the same request as `cmd` (a
/// retry), false when the idempotency key was used for another request.
/// Who opened it is not compared (another agent may retry).
pub fn same_request(existing: &pb::CaseOpened, cmd: &OpenCase) -> bool {
    existing.customer_id == cmd.customer_id
        && existing.channel == cmd.channel as i32
        && existing.purchase_stage == cmd.stage as i32
        && existing.service_code == cmd.service_code
        && existing.summary == cmd.summary
        && existing.attributes == cmd.attributes
        && existing.locale == cmd.locale
        && existing.time_zone == cmd.time_zone
}

/// What to do with a request about an existing case.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestOutcome {
    /// Append this event.
    Append(Box<NewEvent>),
    /// The request was already recorded (a retry): its event id and per-case
    /// sequence.
    Replayed {
        /// The recorded event.
        event_id: String,
        /// Its per-case sequence.
        sequence: u64,
    },
}

fn wrap<T: Clone>(req: &CaseRequest<T>) -> T {
    req.payload.clone()
}

/// Decides a request about an existing case: checks the case's state
/// (NOT_FOUND, FAILED_PRECONDITION), recognises a retry by its request id,
/// and otherwise returns the event to append. `fresh` is the cause used
/// when the client gave no request id. `protect` encrypts the payload's
/// personal fields for the event id (deterministically, so a retry's
/// payload equals the recorded one).
pub fn decide_request<T: Clone>(
    view: &CaseView,
    req: &CaseRequest<T>,
    to_payload: fn(T) -> Payload,
    protect: &dyn Fn(&str, &mut Payload),
    fresh: &str,
    now: DateTime<Utc>,
) -> Result<RequestOutcome> {
    if view.is_empty() {
        return Err(Error::NotFound {
            tenant: req.tenant.to_string(),
            case_id: req.case_id.to_string(),
        });
    }
    let mut payload = to_payload(wrap(req));
    let event_type = EventType::of(&payload);
    let cause = req.request_id.as_deref().unwrap_or(fresh);
    let event_id = EventId::derive(&req.case_id, cause, event_type.as_str());
    protect(event_id.as_str(), &mut payload);
    if let Some((sequence, recorded)) = view.requests.get(event_id.as_str()) {
        if recorded != &payload {
            return Err(Error::AlreadyExists(format!(
                "request_id {:?} was already used for a different {event_type} on this case; use a new request id",
                req.request_id.as_deref().unwrap_or_default()
            )));
        }
        return Ok(RequestOutcome::Replayed {
            event_id: event_id.to_string(),
            sequence: *sequence,
        });
    }
    let s = &view.state;
    let case = format!("case {}/{}", req.tenant, req.case_id);
    match &payload {
        Payload::InteractionRecorded(_) if s.is_closed() => {
            return Err(Error::FailedPrecondition(format!(
                "{case} is closed; interactions can no longer be recorded (open a new case)"
            )));
        }
        Payload::FeedbackReceived(_) if view.withdrawn => {
            return Err(Error::FailedPrecondition(format!(
                "{case} was withdrawn by the customer; there is no experience to rate"
            )));
        }
        Payload::CaseWithdrawn(_) => {
            if s.is_closed() {
                return Err(Error::FailedPrecondition(format!(
                    "{case} is already closed; it cannot be withdrawn"
                )));
            }
            if view.withdrawn {
                return Err(Error::FailedPrecondition(format!(
                    "{case} is already withdrawn"
                )));
            }
            if s.promise_kept {
                return Err(Error::FailedPrecondition(format!(
                    "{case}: the promised outcome was already delivered; it cannot be withdrawn"
                )));
            }
        }
        _ => {}
    }
    Ok(RequestOutcome::Append(Box::new(NewEvent {
        event_id,
        occurred_at: now,
        causation_id: String::new(),
        correlation_id: if view.correlation_id.is_empty() {
            req.case_id.to_string()
        } else {
            view.correlation_id.clone()
        },
        payload,
    })))
}

/// The effect of closing a case (performed after the append: a metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// The resolution the case was closed with.
    pub resolution: Resolution,
}

/// The resolution a case should be closed with now, if any (the closing
/// rule of the brief): never twice; never while a recovery is open; then
/// withdrawn → WITHDRAWN; kept → PROMISE_KEPT (RECOVERED if any recovery
/// ever started); failed for good, no retry after it, and the recovery that
/// followed completed → RECOVERED if it recovered, else UNRESOLVED.
pub fn closing_resolution(view: &CaseView) -> Option<Resolution> {
    let s = &view.state;
    if s.is_closed() || s.opened.is_none() || !view.open_recoveries.is_empty() {
        return None;
    }
    if view.withdrawn {
        return Some(Resolution::Withdrawn);
    }
    if s.promise_kept {
        return Some(if s.recoveries == 0 {
            Resolution::PromiseKept
        } else {
            Resolution::Recovered
        });
    }
    if view.failed_for_good && view.recovery_covers_failure {
        return Some(match view.last_recovery_outcome {
            Some(pb::RecoveryOutcome::Recovered) => Resolution::Recovered,
            _ => Resolution::Unresolved,
        });
    }
    None
}

/// Which message the customer is sent when the case closes with
/// `resolution`.
pub fn closing_trigger(view: &CaseView, resolution: Resolution) -> MessageTrigger {
    match resolution {
        Resolution::PromiseKept if view.state.kept_late => MessageTrigger::PromiseKeptLate,
        Resolution::PromiseKept => MessageTrigger::PromiseKept,
        Resolution::Recovered => MessageTrigger::ClosedRecovered,
        Resolution::Withdrawn => MessageTrigger::ClosedWithdrawn,
        Resolution::Unresolved | Resolution::Unspecified => MessageTrigger::ClosedUnresolved,
    }
}

/// What the customer is told when the case closes, in the words of
/// `catalog` (the case's pinned version); `Err` when it lacks the case's
/// service.
pub fn notification(
    view: &CaseView,
    catalog: &Catalog,
    resolution: Resolution,
    now: DateTime<Utc>,
) -> std::result::Result<pb::CustomerMessage, String> {
    let opened = view.state.opened.clone().unwrap_or_default();
    let service = catalog.service(&opened.service_code).ok_or_else(|| {
        format!(
            "the case was opened for service {:?}, which catalogue version {} lacks; the customer cannot be told its outcome",
            opened.service_code,
            catalog.version()
        )
    })?;
    let deadline = view
        .promise_made
        .as_ref()
        .and_then(|p| p.deadline.as_ref())
        .map_or(now, from_timestamp);
    let facts = CaseFacts {
        case_id: &view.state.case_id,
        locale: &opened.locale,
        time_zone: &opened.time_zone,
        deadline,
    };
    Ok(tell(
        catalog,
        service,
        facts,
        closing_trigger(view, resolution),
        opened.channel,
        None,
    ))
}

/// Decides whether to close the case now: `customer_notified`, then
/// `case_closed`, on the channel the case was opened on (a case found
/// notified but not closed is closed with the same resolution: the
/// notification is not sent twice). The ids
/// derive from the case alone (a case is closed once), so two replicas, a
/// redelivery or a retried append all produce the same events.
pub fn decide_close(
    view: &CaseView,
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> std::result::Result<Decision<Closed>, String> {
    // A case whose customer was told (and that is not closed yet) closes
    // with what they were told, whatever came in between.
    let told = view
        .state
        .notified
        .filter(|_| !view.state.is_closed())
        .and_then(|r| Resolution::try_from(r).ok());
    let Some(resolution) = told.or_else(|| closing_resolution(view)) else {
        return Ok(Decision::default());
    };
    let Ok(case_id) = CaseId::parse(&view.state.case_id) else {
        return Ok(Decision::default());
    };
    let channel = view.state.opened.as_ref().map_or(0, |o| o.channel);
    let told_message = notification(view, catalog, resolution, now)?;
    let message = told_message.text.clone();
    let event = |key: &str, payload| NewEvent {
        event_id: EventId::derive(&case_id, case_id.as_str(), key),
        occurred_at: now,
        causation_id: view.state.last_event_id.clone(),
        correlation_id: if view.correlation_id.is_empty() {
            case_id.to_string()
        } else {
            view.correlation_id.clone()
        },
        payload,
    };
    let notify = (told.is_none()).then(|| {
        event(
            "customer_notified",
            Payload::CustomerNotified(pb::CustomerNotified {
                channel,
                message: message.clone(),
                resolution: resolution as i32,
                customer_message: Some(told_message),
            }),
        )
    });
    Ok(Decision {
        events: notify
            .into_iter()
            .chain([event(
                "case_closed",
                Payload::CaseClosed(pb::CaseClosed {
                    resolution: resolution as i32,
                    summary: message,
                }),
            )])
            .collect(),
        effects: vec![Closed { resolution }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use casework_domain::Tenant;

    const CASE: &str = "01JD8X3V5R6M2Q4T7W9Y0Z1A2B";

    fn env(seq: u64, payload: Payload) -> Envelope {
        Envelope {
            event_id: format!("E{seq}"),
            tenant: "acme".into(),
            case_id: CASE.into(),
            sequence: seq,
            event_type: EventType::of(&payload).to_string(),
            correlation_id: CASE.into(),
            occurred_at: Some(timestamp(
                DateTime::from_timestamp(1_700_000_000 + seq as i64, 0).unwrap(),
            )),
            payload: Some(payload),
            ..Default::default()
        }
    }

    fn opened() -> Vec<Payload> {
        vec![
            Payload::CaseOpened(pb::CaseOpened {
                channel: pb::Channel::Chat as i32,
                service_code: "refund".into(),
                ..Default::default()
            }),
            Payload::PromiseMade(pb::PromiseMade {
                promised_outcome: "Money back".into(),
                ..Default::default()
            }),
        ]
    }

    fn view(payloads: Vec<Payload>) -> CaseView {
        let envs: Vec<Envelope> = payloads
            .into_iter()
            .enumerate()
            .map(|(i, p)| env(i as u64 + 1, p))
            .collect();
        CaseView::fold(&envs)
    }

    fn kept(late: bool) -> Payload {
        Payload::PromiseKept(pb::PromiseKept {
            run: 1,
            late,
            ..Default::default()
        })
    }
    fn started(n: u32) -> Payload {
        Payload::RecoveryStarted(pb::RecoveryStarted {
            recovery: n,
            ..Default::default()
        })
    }
    fn completed(n: u32, o: pb::RecoveryOutcome) -> Payload {
        Payload::RecoveryCompleted(pb::RecoveryCompleted {
            recovery: n,
            outcome: o as i32,
            ..Default::default()
        })
    }
    fn failed() -> Payload {
        Payload::FulfilmentFailed(pb::FulfilmentFailed::default())
    }
    fn run(n: u32) -> Payload {
        Payload::FulfilmentStarted(pb::FulfilmentStarted {
            run: n,
            ..Default::default()
        })
    }
    fn retry() -> Payload {
        Payload::RetryRequested(pb::RetryRequested::default())
    }
    fn withdrawn() -> Payload {
        Payload::CaseWithdrawn(pb::CaseWithdrawn::default())
    }
    fn closed() -> Payload {
        Payload::CaseClosed(pb::CaseClosed {
            resolution: Resolution::PromiseKept as i32,
            ..Default::default()
        })
    }
    fn feedback(score: u32) -> Payload {
        Payload::FeedbackReceived(pb::FeedbackReceived {
            score,
            ..Default::default()
        })
    }

    #[test]
    fn closing_rule_given_when_then() {
        use Resolution as R;
        use pb::RecoveryOutcome as O;
        // given the events after case_opened + promise_made / then the
        // resolution intake closes with (None: not yet)
        let table: Vec<(&str, Vec<Payload>, Option<R>)> = vec![
            ("just opened", vec![], None),
            ("fulfilling", vec![run(1)], None),
            ("kept", vec![run(1), kept(false)], Some(R::PromiseKept)),
            ("kept late", vec![run(1), kept(true)], Some(R::PromiseKept)),
            ("withdrawn", vec![withdrawn()], Some(R::Withdrawn)),
            (
                "withdrawn while fulfilling",
                vec![run(1), withdrawn()],
                Some(R::Withdrawn),
            ),
            (
                "withdrawn with a recovery open",
                vec![run(1), failed(), started(1), withdrawn()],
                None,
            ),
            (
                "kept while a feedback recovery is open",
                vec![feedback(1), started(1), run(1), kept(false)],
                None,
            ),
            (
                "kept after a recovery",
                vec![
                    run(1),
                    failed(),
                    started(1),
                    retry(),
                    run(2),
                    kept(false),
                    completed(1, O::Recovered),
                ],
                Some(R::Recovered),
            ),
            (
                "retry requested, recovery waiting for the run",
                vec![run(1), failed(), started(1), retry()],
                None,
            ),
            (
                "failed, recovery not started yet",
                vec![run(1), failed()],
                None,
            ),
            (
                "failed, recovery open",
                vec![run(1), failed(), started(1)],
                None,
            ),
            (
                "failed, recovered by apology and compensation",
                vec![run(1), failed(), started(1), completed(1, O::Recovered)],
                Some(R::Recovered),
            ),
            (
                "failed, escalated",
                vec![run(1), failed(), started(1), completed(1, O::Escalated)],
                Some(R::Unresolved),
            ),
            (
                "failed, customer lost",
                vec![run(1), failed(), started(1), completed(1, O::CustomerLost)],
                Some(R::Unresolved),
            ),
            (
                "retried run failed again, no recovery for it yet",
                vec![run(1), failed(), started(1), retry(), run(2), failed()],
                None,
            ),
            (
                "retried run failed again, escalated",
                vec![
                    run(1),
                    failed(),
                    started(1),
                    retry(),
                    run(2),
                    failed(),
                    completed(1, O::Escalated),
                ],
                Some(R::Unresolved),
            ),
            (
                "an old feedback recovery does not close a fresh failure",
                vec![
                    feedback(1),
                    started(1),
                    completed(1, O::Recovered),
                    run(1),
                    failed(),
                ],
                None,
            ),
            ("already closed", vec![run(1), kept(false), closed()], None),
            (
                "closed, then late feedback",
                vec![run(1), kept(false), closed(), feedback(1)],
                None,
            ),
        ];
        for (name, events, want) in table {
            let mut all = opened();
            all.extend(events);
            let v = view(all);
            assert_eq!(closing_resolution(&v), want, "{name}");
            let d = decide_close(&v, &casework_catalog::sample(), Utc::now()).unwrap();
            assert_eq!(d.events.len(), if want.is_some() { 2 } else { 0 }, "{name}");
        }
    }

    #[test]
    fn closing_events_are_deterministic_and_on_the_opening_channel() {
        let mut all = opened();
        all.extend([run(1), kept(false)]);
        let v = view(all);
        let a = decide_close(&v, &casework_catalog::sample(), Utc::now()).unwrap();
        let b = decide_close(
            &v,
            &casework_catalog::sample(),
            Utc::now() + chrono::Duration::seconds(5),
        )
        .unwrap();
        let ids = |d: &Decision<Closed>| {
            d.events
                .iter()
                .map(|e| e.event_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&a), ids(&b));
        let Payload::CustomerNotified(n) = &a.events[0].payload else {
            panic!("customer_notified first")
        };
        assert_eq!(n.channel, pb::Channel::Chat as i32);
        let told = n.customer_message.as_ref().expect("told");
        assert_eq!(told.text, n.message);
        assert!(told.template_id.ends_with("en.promise_kept"), "{told:?}");
        assert!(matches!(a.events[1].payload, Payload::CaseClosed(_)));
        assert_eq!(
            a.effects,
            vec![Closed {
                resolution: Resolution::PromiseKept
            }]
        );
    }

    fn req<T>(payload: T, request_id: Option<&str>) -> CaseRequest<T> {
        CaseRequest {
            tenant: Tenant::parse("acme").unwrap(),
            case_id: CaseId::parse(CASE).unwrap(),
            request_id: request_id.map(str::to_owned),
            payload,
        }
    }

    #[test]
    fn requests_given_when_then() {
        let now = Utc::now();
        let fb = |score| {
            req(
                pb::FeedbackReceived {
                    score,
                    ..Default::default()
                },
                Some("r1"),
            )
        };
        let wd = req(pb::CaseWithdrawn::default(), None);
        let ir = req(pb::InteractionRecorded::default(), None);
        // unknown case
        assert!(matches!(
            decide_request(
                &view(vec![]),
                &fb(3),
                Payload::FeedbackReceived,
                &|_, _| {},
                "x",
                now
            ),
            Err(Error::NotFound { .. })
        ));
        let open = view(opened());
        assert!(matches!(
            decide_request(&open, &wd, Payload::CaseWithdrawn, &|_, _| {}, "x", now),
            Ok(RequestOutcome::Append(_))
        ));
        let mut w = opened();
        w.push(withdrawn());
        let w = view(w);
        // feedback on a withdrawn case; withdrawing twice
        assert!(matches!(
            decide_request(&w, &fb(3), Payload::FeedbackReceived, &|_, _| {}, "x", now),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            decide_request(&w, &wd, Payload::CaseWithdrawn, &|_, _| {}, "x", now),
            Err(Error::FailedPrecondition(_))
        ));
        let mut c = opened();
        c.extend([run(1), kept(false), closed()]);
        let c = view(c);
        // closed: no withdrawal, no interaction, feedback still recorded
        assert!(matches!(
            decide_request(&c, &wd, Payload::CaseWithdrawn, &|_, _| {}, "x", now),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            decide_request(&c, &ir, Payload::InteractionRecorded, &|_, _| {}, "x", now),
            Err(Error::FailedPrecondition(_))
        ));
        let Ok(RequestOutcome::Append(e)) =
            decide_request(&c, &fb(1), Payload::FeedbackReceived, &|_, _| {}, "x", now)
        else {
            panic!("feedback on a closed case is recorded")
        };
        // the same request id again is a replay; with another body a refusal
        let mut envs: Vec<Envelope> = opened()
            .into_iter()
            .enumerate()
            .map(|(i, p)| env(i as u64 + 1, p))
            .collect();
        let mut recorded = env(3, e.payload.clone());
        recorded.event_id = e.event_id.to_string();
        envs.push(recorded);
        let v = CaseView::fold(&envs);
        assert_eq!(
            decide_request(&v, &fb(1), Payload::FeedbackReceived, &|_, _| {}, "y", now).unwrap(),
            RequestOutcome::Replayed {
                event_id: e.event_id.to_string(),
                sequence: 3
            }
        );
        assert!(matches!(
            decide_request(&v, &fb(5), Payload::FeedbackReceived, &|_, _| {}, "y", now),
            Err(Error::AlreadyExists(_))
        ));
    }

    #[test]
    fn opening_is_deterministic_per_key_and_pins_the_catalogue() {
        let catalog = casework_catalog::sample();
        let service = catalog.service("refund").unwrap();
        let cmd = OpenCase {
            tenant: Tenant::parse("acme").unwrap(),
            customer_id: "c1".into(),
            channel: pb::Channel::Web,
            stage: pb::PurchaseStage::PostPurchase,
            service_code: "refund".into(),
            summary: String::new(),
            attributes: Default::default(),
            idempotency_key: Some("k1".into()),
            opened_by: None,
            locale: "de".into(),
            time_zone: "Asia/Tokyo".into(),
        };
        let id = CaseId::derive(&cmd.tenant, "k1");
        let now = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let a = decide_open(&cmd, &id, service, &catalog, now);
        let b = decide_open(
            &cmd,
            &id,
            service,
            &catalog,
            now + chrono::Duration::hours(1),
        );
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].event_id, b[0].event_id);
        assert_eq!(a[1].event_id, b[1].event_id);
        let Payload::PromiseMade(p) = &a[1].payload else {
            panic!("promise_made second")
        };
        assert_eq!(p.catalog_version, catalog.version().to_string());
        assert_eq!(p.catalog_digest, catalog.digest());
        assert_eq!(p.deadline, Some(timestamp(service.promise_deadline(now))));
        assert_eq!(p.deadline_rule, "3 business days");
        assert_eq!(p.calendar, "berlin_office");
        // The customer is told the promise in their locale and time zone,
        // and the event says which template it came from.
        let told = p.customer_message.as_ref().expect("promise told");
        assert_eq!(told.locale, "de");
        assert!(told.template_id.ends_with(".de.promise_made"), "{told:?}");
        let due = service
            .promise_deadline(now)
            .with_timezone(&chrono_tz::Asia::Tokyo)
            .format("%H:%M")
            .to_string();
        assert!(told.text.contains(&due), "{due} in {told:?}");
        assert!(told.text.contains("JST"), "{told:?}");
        assert!(told.text.contains(id.as_str()), "{told:?}");
        let Payload::CaseOpened(o) = &a[0].payload else {
            panic!("case_opened first")
        };
        assert!(same_request(o, &cmd));
        let mut other = cmd.clone();
        other.customer_id = "c2".into();
        assert!(!same_request(o, &other));
    }

    /// Every prefix of a decision is a state the rules continue from with
    /// the same events: a crash between `case_opened` and `promise_made`
    /// is healed by the closer making exactly the promise OpenCase would
    /// have made (same id, same deadline, counted from the opening).
    #[test]
    fn a_case_opened_without_its_promise_gets_the_same_promise() {
        let catalog = casework_catalog::sample();
        let service = catalog.service("refund").unwrap();
        let cmd = OpenCase {
            tenant: Tenant::parse("acme").unwrap(),
            customer_id: "c1".into(),
            channel: pb::Channel::Web,
            stage: pb::PurchaseStage::PostPurchase,
            service_code: "refund".into(),
            summary: "refund order 42".into(),
            attributes: Default::default(),
            idempotency_key: None,
            opened_by: None,
            locale: String::new(),
            time_zone: String::new(),
        };
        let id = CaseId::derive(&cmd.tenant, "no-key");
        let opened_at = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let open = decide_open(&cmd, &id, service, &catalog, opened_at);
        let envelope = |i: usize, e: &NewEvent| Envelope {
            event_id: e.event_id.to_string(),
            tenant: "acme".into(),
            case_id: id.to_string(),
            sequence: i as u64 + 1,
            event_type: EventType::of(&e.payload).to_string(),
            correlation_id: e.correlation_id.clone(),
            occurred_at: Some(timestamp(e.occurred_at)),
            payload: Some(e.payload.clone()),
            ..Default::default()
        };
        let catalogs = Catalogs::new([catalog.clone()]).unwrap();
        let only_opened = CaseView::fold(&[envelope(0, &open[0])]);
        let later = opened_at + chrono::Duration::minutes(5);
        let healed = decide_closer(&only_opened, &catalogs, later).unwrap();
        assert_eq!(healed.events.len(), 1, "just the promise");
        assert_eq!(healed.events[0].event_id, open[1].event_id);
        assert_eq!(healed.events[0].payload, open[1].payload);
        // With the promise in place there is nothing to heal.
        let both = CaseView::fold(&[envelope(0, &open[0]), envelope(1, &open[1])]);
        assert!(
            decide_closer(&both, &catalogs, later)
                .unwrap()
                .events
                .is_empty()
        );
        // A service the catalogue lacks cannot be promised: park, clearly.
        let mut unknown = only_opened.clone();
        if let Some(o) = unknown.state.opened.as_mut() {
            o.service_code = "retired".into();
        }
        let err = decide_closer(&unknown, &catalogs, later).unwrap_err();
        assert!(err.contains("retired"), "{err}");
    }

    /// A crash between `customer_notified` and `case_closed` is healed by
    /// closing with what the customer was told — even when a recovery
    /// started in between — and the notification is not sent twice.
    #[test]
    fn a_notified_case_closes_with_what_the_customer_was_told() {
        let now = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let mut payloads = opened();
        payloads.push(kept(false));
        let whole =
            decide_close(&view(payloads.clone()), &casework_catalog::sample(), now).unwrap();
        assert_eq!(whole.events.len(), 2);
        payloads.push(whole.events[0].payload.clone());
        let after_notice =
            decide_close(&view(payloads.clone()), &casework_catalog::sample(), now).unwrap();
        assert_eq!(after_notice.events.len(), 1);
        assert_eq!(after_notice.events[0].event_id, whole.events[1].event_id);
        assert_eq!(after_notice.events[0].payload, whole.events[1].payload);
        // A recovery opened after the notice does not hold the close back.
        payloads.push(Payload::RecoveryStarted(pb::RecoveryStarted {
            recovery: 1,
            ..Default::default()
        }));
        let still =
            decide_close(&view(payloads.clone()), &casework_catalog::sample(), now).unwrap();
        assert_eq!(still.events.len(), 1);
        assert_eq!(still.events[0].event_id, whole.events[1].event_id);
        payloads.push(still.events[0].payload.clone());
        assert!(
            decide_close(&view(payloads), &casework_catalog::sample(), now)
                .unwrap()
                .events
                .is_empty(),
            "closed once"
        );
    }
}
