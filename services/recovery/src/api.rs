//! The gRPC API (`casework.recovery.v1.Recovery`): listings from the read
//! models, a case's recoveries from its held projection (brought up to
//! date with one read of what follows its head), and a person's decision on
//! a compensation, appended with the same decide-and-append loop, per-case
//! lock and held state as the reconciler (the compensation's state is
//! checked on the state the event is appended after); the ladder then
//! continues at once, under the same lock.

use std::sync::Arc;

use casework_auth::Caller;
use casework_caselog::{CaseKey, CaseLog};
use casework_catalog::Catalogs;
use casework_domain::chain::timestamp;
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::text::TextKind;
use casework_domain::{CaseId, EventId, NewEvent, Tenant};
use casework_proto::recovery::v1 as api;
use casework_runtime::reconcile::{
    Decision, Parked, Reconciler, Rounds, decide_and_append, lock_case,
};
use chrono::Utc;
use tonic::{Request, Response, Status};

use crate::SERVICE;
use crate::error::{Error, Result, to_status};
use crate::projection::{Comp, CompState, Projection, Recovery};
use crate::reconciler::{RecoveryReconciler, service_of};
use crate::views::{OpenRec, PendingRec, Views};

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct RecoveryApi {
    pub(crate) log: Arc<dyn CaseLog>,
    pub(crate) views: Views,
    pub(crate) parked: Parked,
    pub(crate) catalogs: Arc<Catalogs>,
    pub(crate) reconciler: Arc<RecoveryReconciler>,
    pub(crate) default_page_size: u32,
    pub(crate) max_page_size: u32,
}

fn tenant(t: &str) -> Result<Tenant> {
    Tenant::parse(t).map_err(|e| Error::InvalidArgument {
        field: "tenant",
        why: format!("{e}; pass the tenant's lowercase token, e.g. \"acme\""),
    })
}

fn case_key(t: &str, c: &str) -> Result<CaseKey> {
    let tenant = tenant(t)?;
    let case_id = CaseId::parse(c).map_err(|e| Error::InvalidArgument {
        field: "case_id",
        why: format!("{e}; pass the 26-character case id returned by OpenCase"),
    })?;
    Ok(CaseKey { tenant, case_id })
}

/// Longest note, reason or compensation id.
pub const MAX_TEXT_LEN: usize = 2000;
/// Longest approver id or name.
pub const MAX_PERSON_LEN: usize = 128;

/// `value` of `field` against the shared text rule
/// ([`casework_domain::text`]).
fn text(field: &'static str, value: &str, kind: TextKind, max: usize) -> Result<()> {
    casework_domain::text::check(value, kind, max)
        .map_err(|why| Error::InvalidArgument { field, why })
}

fn person(a: Option<&api::Approver>) -> Result<pb::Actor> {
    let Some(a) = a else {
        return Err(Error::InvalidArgument {
            field: "approver",
            why: "is missing; name the person deciding (approver.id and approver.display_name)"
                .into(),
        });
    };
    if a.id.trim().is_empty() {
        return Err(Error::InvalidArgument {
            field: "approver.id",
            why: "is empty; pass the person's stable id (e.g. an employee number)".into(),
        });
    }
    if a.display_name.trim().is_empty() {
        return Err(Error::InvalidArgument {
            field: "approver.display_name",
            why: "is empty; pass the person's name as shown in timelines".into(),
        });
    }
    text("approver.id", &a.id, TextKind::Line, MAX_PERSON_LEN)?;
    text(
        "approver.display_name",
        &a.display_name,
        TextKind::Line,
        MAX_PERSON_LEN,
    )?;
    Ok(pb::Actor {
        kind: pb::ActorKind::Person as i32,
        id: a.id.trim().to_owned(),
        display_name: a.display_name.trim().to_owned(),
        authenticated_by: String::new(),
    })
}

/// The approver is the caller: an approver naming someone else is refused,
/// none means the caller (their token's name shown); with authentication
/// off the request's claim is kept. Returns it with how the caller was
/// authenticated.
fn approver_of(
    caller: &Caller,
    given: Option<api::Approver>,
) -> std::result::Result<(Option<api::Approver>, String), Status> {
    if caller.principal.method == casework_auth::AuthMethod::Unchecked {
        return Ok((given, String::new()));
    }
    let actor = caller
        .vouch_person(given.map(|a| (a.id, a.display_name)))?
        .expect("vouched");
    Ok((
        Some(api::Approver {
            id: actor.id,
            display_name: actor.display_name,
        }),
        actor.authenticated_by,
    ))
}

fn waiting(r: &Recovery) -> api::Waiting {
    if r.pending_compensations().any(|c| c.requires_approval) {
        api::Waiting::Approval
    } else if r.waiting_for_fulfilment() {
        api::Waiting::Fulfilment
    } else {
        api::Waiting::Nothing
    }
}

fn open_view(r: OpenRec) -> api::OpenRecovery {
    let waiting = if !r.pending.is_empty() {
        api::Waiting::Approval
    } else if r.waiting_fulfilment {
        api::Waiting::Fulfilment
    } else {
        api::Waiting::Nothing
    };
    api::OpenRecovery {
        tenant: r.tenant,
        case_id: r.case_id,
        recovery: r.recovery,
        trigger: r.trigger,
        reason: r.reason,
        cause_event_id: r.cause_event_id,
        started_at: r.started_at.map(timestamp),
        actions: r.actions,
        pending_compensation_ids: r.pending,
        waiting: waiting as i32,
    }
}

fn pending_view(p: PendingRec) -> api::PendingApproval {
    api::PendingApproval {
        tenant: p.tenant,
        case_id: p.case_id,
        recovery: p.recovery,
        compensation_id: p.compensation_id,
        kind: p.kind,
        amount: Some(pb::Money {
            amount_minor: p.amount_minor,
            currency: p.currency,
        }),
        reason: p.reason,
        proposed_at: p.proposed_at.map(timestamp),
        proposed_event_id: p.proposed_event_id,
    }
}

/// A person's decision on a compensation.
#[derive(Debug, Clone)]
enum Verdict {
    Approve { note: String },
    Decline { reason: String },
}

impl RecoveryApi {
    fn page_size(&self, asked: u32) -> usize {
        let n = if asked == 0 {
            self.default_page_size
        } else {
            asked
        };
        n.min(self.max_page_size).max(1) as usize
    }

    async fn decide_comp(
        &self,
        tenant: &str,
        case_id: &str,
        comp_id: &str,
        approver: Option<&api::Approver>,
        authenticated_by: String,
        verdict: Verdict,
    ) -> Result<api::CompensationDecision> {
        let case = case_key(tenant, case_id)?;
        if comp_id.trim().is_empty() {
            return Err(Error::InvalidArgument {
                field: "compensation_id",
                why: "is empty; pass the id listed by ListPendingApprovals (e.g. \"r1-c2\")".into(),
            });
        }
        let actor = pb::Actor {
            authenticated_by,
            ..person(approver)?
        };
        text("compensation_id", comp_id, TextKind::Line, MAX_TEXT_LEN)?;
        if let Verdict::Decline { reason } = &verdict
            && reason.trim().is_empty()
        {
            return Err(Error::InvalidArgument {
                field: "reason",
                why: "is empty; say why the compensation is declined, for the record".into(),
            });
        }
        match &verdict {
            Verdict::Approve { note } => text("note", note, TextKind::Free, MAX_TEXT_LEN)?,
            Verdict::Decline { reason } => text("reason", reason, TextKind::Free, MAX_TEXT_LEN)?,
        }
        let mut refusal: Option<Error> = None;
        let mut repeat: Option<(String, u64)> = None;
        // The same per-case lock and held state as the reconcile loops.
        let _guard = lock_case(SERVICE, &case).await;
        let decided = decide_and_append(
            self.log.as_ref(),
            self.reconciler.cache(),
            &case,
            &[],
            Rounds::Once,
            |p: &Projection, head| {
                refusal = None;
                repeat = None;
                if head.is_none() {
                    refusal = Some(Error::NotFound(format!("case {case} not found")));
                    return Ok(Decision::<()>::default());
                }
                let Some((_, comp)) = p.find_comp(comp_id) else {
                    refusal = Some(Error::NotFound(format!(
                        "case {case} has no compensation {comp_id:?}; list them with ListPendingApprovals"
                    )));
                    return Ok(Decision::default());
                };
                if let Some(why) = refused(comp_id, comp, &actor, &verdict) {
                    match why {
                        Refusal::Repeat => repeat = comp.decided.clone(),
                        Refusal::Refused(e) => refusal = Some(e),
                    }
                    return Ok(Decision::default());
                }
                let (key, payload) = match &verdict {
                    Verdict::Approve { note } => (
                        "compensation_approved",
                        Payload::CompensationApproved(pb::CompensationApproved {
                            compensation_id: comp_id.to_owned(),
                            approved_by: Some(actor.clone()),
                            note: note.clone(),
                        }),
                    ),
                    Verdict::Decline { reason } => (
                        "compensation_declined",
                        Payload::CompensationDeclined(pb::CompensationDeclined {
                            compensation_id: comp_id.to_owned(),
                            declined_by: Some(actor.clone()),
                            reason: reason.clone(),
                        }),
                    ),
                };
                Ok(Decision {
                    events: vec![NewEvent {
                        event_id: EventId::derive(&case.case_id, &comp.proposed_event_id, key),
                        occurred_at: Utc::now(),
                        causation_id: comp.proposed_event_id.clone(),
                        correlation_id: p.correlation_id.clone(),
                        payload,
                    }],
                    effects: Vec::new(),
                })
            },
        )
        .await?;
        if let Some(e) = refusal {
            return Err(e);
        }
        if let Some((event_id, sequence)) = repeat {
            return Ok(api::CompensationDecision {
                event_id,
                sequence,
                already: true,
            });
        }
        let Some(a) = decided.rounds.last().and_then(|r| r.appended.as_ref()) else {
            return Err(Error::Internal("no decision was recorded".into()));
        };
        let stored = a
            .events
            .last()
            .ok_or_else(|| Error::Internal("no decision was recorded".into()))?;
        // The id is derived from the proposal and the verdict, not the
        // person: another replica that recorded the same verdict by someone
        // else at the same moment has the same id. Answer with what is
        // stored.
        if !a.own
            && let Some(e) = someone_else(comp_id, &stored.envelope, &actor)
        {
            return Err(e);
        }
        let answer = api::CompensationDecision {
            event_id: stored.envelope.event_id.clone(),
            sequence: stored.envelope.sequence,
            already: a.already,
        };
        // Let the ladder continue now, still under the case's lock (the
        // views feed of every replica also wakes the case, so a crash here
        // loses nothing; a failure here does not undo the decision).
        if let Err(e) = self.reconciler.reconcile(&case, &[]).await {
            tracing::warn!(case = %case, error = ?e, "continuing the ladder after a decision failed; the views feed will retry");
        }
        Ok(answer)
    }
}

/// Why a person's decision is not appended.
enum Refusal {
    /// The same person already took the same decision: answer with it.
    Repeat,
    /// The compensation is not waiting for this decision.
    Refused(Error),
}

/// Whether `verdict` by `actor` on `comp` is refused (or a repeat).
fn refused(comp_id: &str, comp: &Comp, actor: &pb::Actor, verdict: &Verdict) -> Option<Refusal> {
    let same = |by: &pb::Actor| by.id == actor.id;
    let refuse = |m: String| Some(Refusal::Refused(Error::FailedPrecondition(m)));
    match (&comp.state, verdict) {
        (CompState::Proposed, _) if !comp.requires_approval => refuse(format!(
            "compensation {comp_id} did not need approval: it is within the automatic limit and is granted automatically"
        )),
        (CompState::Proposed, _) => None,
        (CompState::Approved(by) | CompState::Granted(Some(by)), Verdict::Approve { .. })
            if same(by) =>
        {
            Some(Refusal::Repeat)
        }
        (CompState::Declined(by), Verdict::Decline { .. }) if same(by) => Some(Refusal::Repeat),
        (CompState::Approved(by), _) => refuse(format!(
            "compensation {comp_id} was already approved by {} ({})",
            by.display_name, by.id
        )),
        (CompState::Declined(by), _) => refuse(format!(
            "compensation {comp_id} was already declined by {} ({})",
            by.display_name, by.id
        )),
        (CompState::Granted(_), _) => refuse(format!("compensation {comp_id} was already granted")),
    }
}

/// The refusal when the stored decision `e` on `comp_id` was taken by
/// someone other than `actor`.
fn someone_else(comp_id: &str, e: &pb::Envelope, actor: &pb::Actor) -> Option<Error> {
    let (what, by) = match &e.payload {
        Some(Payload::CompensationApproved(a)) => ("approved", a.approved_by.as_ref()),
        Some(Payload::CompensationDeclined(d)) => ("declined", d.declined_by.as_ref()),
        _ => return None,
    };
    let by = by.cloned().unwrap_or_default();
    (by.id != actor.id).then(|| {
        Error::FailedPrecondition(format!(
            "compensation {comp_id} was already {what} by {} ({})",
            by.display_name, by.id
        ))
    })
}

#[tonic::async_trait]
impl api::recovery_server::Recovery for RecoveryApi {
    async fn list_open_recoveries(
        &self,
        request: Request<api::ListOpenRecoveriesRequest>,
    ) -> Result<Response<api::ListOpenRecoveriesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let t = tenant(&r.tenant).map_err(to_status)?;
        caller.for_tenant(&t)?;
        let (views, limit) = (self.views.clone(), self.page_size(r.page_size));
        let (rows, next) = casework_runtime::store::blocking(move || {
            views.open_recoveries(t.as_str(), &r.page_token, limit)
        })
        .await
        .map_err(to_status)?;
        Ok(Response::new(api::ListOpenRecoveriesResponse {
            recoveries: rows.into_iter().map(open_view).collect(),
            next_page_token: next,
        }))
    }

    async fn list_pending_approvals(
        &self,
        request: Request<api::ListPendingApprovalsRequest>,
    ) -> Result<Response<api::ListPendingApprovalsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let t = tenant(&r.tenant).map_err(to_status)?;
        caller.for_tenant(&t)?;
        let (views, limit) = (self.views.clone(), self.page_size(r.page_size));
        let (rows, next) = casework_runtime::store::blocking(move || {
            views.pending_approvals(t.as_str(), &r.page_token, limit)
        })
        .await
        .map_err(to_status)?;
        Ok(Response::new(api::ListPendingApprovalsResponse {
            approvals: rows.into_iter().map(pending_view).collect(),
            next_page_token: next,
        }))
    }

    async fn approve_compensation(
        &self,
        request: Request<api::ApproveCompensationRequest>,
    ) -> Result<Response<api::CompensationDecision>, Status> {
        let caller = Caller::of(&request)?;
        let mut r = request.into_inner();
        caller.for_tenant(&tenant(&r.tenant).map_err(to_status)?)?;
        let (approver, authenticated_by) = approver_of(&caller, r.approver.take())?;
        self.decide_comp(
            &r.tenant,
            &r.case_id,
            &r.compensation_id,
            approver.as_ref(),
            authenticated_by,
            Verdict::Approve { note: r.note },
        )
        .await
        .map(Response::new)
        .map_err(to_status)
    }

    async fn decline_compensation(
        &self,
        request: Request<api::DeclineCompensationRequest>,
    ) -> Result<Response<api::CompensationDecision>, Status> {
        let caller = Caller::of(&request)?;
        let mut r = request.into_inner();
        caller.for_tenant(&tenant(&r.tenant).map_err(to_status)?)?;
        let (approver, authenticated_by) = approver_of(&caller, r.approver.take())?;
        self.decide_comp(
            &r.tenant,
            &r.case_id,
            &r.compensation_id,
            approver.as_ref(),
            authenticated_by,
            Verdict::Decline { reason: r.reason },
        )
        .await
        .map(Response::new)
        .map_err(to_status)
    }

    async fn get_case_recoveries(
        &self,
        request: Request<api::GetCaseRecoveriesRequest>,
    ) -> Result<Response<api::GetCaseRecoveriesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let case = case_key(&r.tenant, &r.case_id).map_err(to_status)?;
        caller.for_tenant(&case.tenant)?;
        // The held projection, brought up to date (one read of what follows
        // its head), under the case's lock.
        let _guard = lock_case(SERVICE, &case).await;
        let cache = self.reconciler.cache();
        let held = cache
            .load_latest(self.log.as_ref(), &case)
            .await
            .map_err(|e| to_status(e.into()))?;
        if held.head.is_none() {
            return Err(to_status(Error::NotFound(format!("case {case} not found"))));
        }
        let response = self.recoveries_of(&held.state);
        cache.put(&case, held);
        Ok(Response::new(response))
    }

    async fn list_parked_cases(
        &self,
        request: Request<api::ListParkedCasesRequest>,
    ) -> Result<Response<api::ListParkedCasesResponse>, Status> {
        Caller::of(&request)?.for_all_tenants()?;
        let cases = self
            .parked
            .list()
            .await
            .into_iter()
            .map(|(case, record)| api::ParkedCase { case, record })
            .collect();
        Ok(Response::new(api::ListParkedCasesResponse { cases }))
    }
}

impl RecoveryApi {
    /// The view of a case's recoveries.
    fn recoveries_of(&self, p: &Projection) -> api::GetCaseRecoveriesResponse {
        let queued = match service_of(&self.catalogs, p) {
            Ok(service) => crate::decide::queued(p, service).count() as u32,
            Err(_) => 0,
        };
        let recoveries = p
            .recoveries
            .iter()
            .map(|r| api::RecoveryView {
                recovery: r.number,
                trigger: r.trigger as i32,
                reason: r.reason.clone(),
                cause_event_id: r.cause_event_id.clone(),
                actions: r.actions.clone(),
                compensations: r
                    .compensations
                    .iter()
                    .map(|c| {
                        let (state, by) = match &c.state {
                            CompState::Proposed => (api::CompensationState::AwaitingApproval, None),
                            CompState::Approved(a) => {
                                (api::CompensationState::Approved, Some(a.clone()))
                            }
                            CompState::Declined(a) => {
                                (api::CompensationState::Declined, Some(a.clone()))
                            }
                            CompState::Granted(by) => (api::CompensationState::Granted, by.clone()),
                        };
                        api::CompensationView {
                            compensation_id: c.id.clone(),
                            kind: c.kind.clone(),
                            amount: Some(c.amount.clone()),
                            requires_approval: c.requires_approval,
                            state: state as i32,
                            decided_by: by,
                        }
                    })
                    .collect(),
                retries: r.retries.len() as u32,
                waiting: if r.is_open() {
                    waiting(r) as i32
                } else {
                    api::Waiting::Unspecified as i32
                },
                outcome: r.outcome.map_or(0, |o| o as i32),
            })
            .collect();
        api::GetCaseRecoveriesResponse {
            recoveries,
            promise_broken: p.broken.is_some(),
            promise_kept: p.kept,
            kept_late: p.kept_late,
            queued_triggers: queued,
        }
    }
}
