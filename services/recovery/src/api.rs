//! The gRPC API (`casework.recovery.v1.Recovery`): listings from the read
//! models, a case's recoveries from its log, and a person's decision on a
//! compensation, appended with the same decide-and-append discipline as
//! the reconciler (the compensation's state is checked on the log the event
//! is appended after).

use std::sync::Arc;

use casework_caselog::{CaseKey, CaseLog, StoredEvent};
use casework_catalog::Catalogs;
use casework_domain::chain::timestamp;
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{CaseId, EventId, NewEvent, Tenant};
use casework_proto::recovery::v1 as api;
use casework_runtime::reconcile::{Decision, Parked, Reconciler, decide_and_append};
use chrono::Utc;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result, to_status};
use crate::projection::{CompState, Projection, Recovery};
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
    Ok(pb::Actor {
        kind: pb::ActorKind::Person as i32,
        id: a.id.trim().to_owned(),
        display_name: a.display_name.trim().to_owned(),
    })
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

/// Finds the recorded decision event on `comp_id` in `log`.
fn recorded(log: &[StoredEvent], comp_id: &str) -> Option<(String, u64)> {
    log.iter().find_map(|e| match &e.envelope.payload {
        Some(Payload::CompensationApproved(a)) if a.compensation_id == comp_id => {
            Some((e.envelope.event_id.clone(), e.envelope.sequence))
        }
        Some(Payload::CompensationDeclined(d)) if d.compensation_id == comp_id => {
            Some((e.envelope.event_id.clone(), e.envelope.sequence))
        }
        _ => None,
    })
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
        verdict: Verdict,
    ) -> Result<api::CompensationDecision> {
        let case = case_key(tenant, case_id)?;
        if comp_id.trim().is_empty() {
            return Err(Error::InvalidArgument {
                field: "compensation_id",
                why: "is empty; pass the id listed by ListPendingApprovals (e.g. \"r1-c2\")".into(),
            });
        }
        let actor = person(approver)?;
        if let Verdict::Decline { reason } = &verdict
            && reason.trim().is_empty()
        {
            return Err(Error::InvalidArgument {
                field: "reason",
                why: "is empty; say why the compensation is declined, for the record".into(),
            });
        }
        let mut refusal: Option<Error> = None;
        let mut repeat: Option<(String, u64)> = None;
        let decided = decide_and_append(self.log.as_ref(), &case, |log| {
            refusal = None;
            repeat = None;
            if log.is_empty() {
                refusal = Some(Error::NotFound(format!("case {case} not found")));
                return Ok(Decision::<()>::default());
            }
            let p = Projection::fold(log.iter().map(|e| &e.envelope));
            let Some((_, comp)) = p.find_comp(comp_id) else {
                refusal = Some(Error::NotFound(format!(
                    "case {case} has no compensation {comp_id:?}; list them with ListPendingApprovals"
                )));
                return Ok(Decision::default());
            };
            let same = |by: &pb::Actor| by.id == actor.id;
            match (&comp.state, &verdict) {
                (CompState::Proposed, _) if !comp.requires_approval => {
                    refusal = Some(Error::FailedPrecondition(format!(
                        "compensation {comp_id} did not need approval: it is within the automatic limit and was granted"
                    )));
                    return Ok(Decision::default());
                }
                (CompState::Proposed, _) => {}
                (
                    CompState::Approved(by) | CompState::Granted(Some(by)),
                    Verdict::Approve { .. },
                ) if same(by) => {
                    repeat = recorded(log, comp_id);
                    return Ok(Decision::default());
                }
                (CompState::Declined(by), Verdict::Decline { .. }) if same(by) => {
                    repeat = recorded(log, comp_id);
                    return Ok(Decision::default());
                }
                (CompState::Approved(by), _) => {
                    refusal = Some(Error::FailedPrecondition(format!(
                        "compensation {comp_id} was already approved by {} ({})",
                        by.display_name, by.id
                    )));
                    return Ok(Decision::default());
                }
                (CompState::Declined(by), _) => {
                    refusal = Some(Error::FailedPrecondition(format!(
                        "compensation {comp_id} was already declined by {} ({})",
                        by.display_name, by.id
                    )));
                    return Ok(Decision::default());
                }
                (CompState::Granted(_), _) => {
                    refusal = Some(Error::FailedPrecondition(format!(
                        "compensation {comp_id} was already granted"
                    )));
                    return Ok(Decision::default());
                }
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
        })
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
        let Some(a) = decided.appended else {
            return Err(Error::Internal("no decision was recorded".into()));
        };
        // Let the ladder continue now (the views feed of every replica also
        // wakes the case, so a crash here loses nothing).
        let reconciler = self.reconciler.clone();
        tokio::spawn(async move {
            if let Err(e) = reconciler.reconcile(&case).await {
                tracing::warn!(case = %case, error = ?e, "continuing the ladder after a decision failed; the views feed will retry");
            }
        });
        Ok(api::CompensationDecision {
            event_id: a.head.event_id,
            sequence: a.head.case_seq,
            already: a.already,
        })
    }
}

#[tonic::async_trait]
impl api::recovery_server::Recovery for RecoveryApi {
    async fn list_open_recoveries(
        &self,
        request: Request<api::ListOpenRecoveriesRequest>,
    ) -> Result<Response<api::ListOpenRecoveriesResponse>, Status> {
        let r = request.into_inner();
        let t = tenant(&r.tenant).map_err(to_status)?;
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
        let r = request.into_inner();
        let t = tenant(&r.tenant).map_err(to_status)?;
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
        let r = request.into_inner();
        self.decide_comp(
            &r.tenant,
            &r.case_id,
            &r.compensation_id,
            r.approver.as_ref(),
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
        let r = request.into_inner();
        self.decide_comp(
            &r.tenant,
            &r.case_id,
            &r.compensation_id,
            r.approver.as_ref(),
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
        let r = request.into_inner();
        let case = case_key(&r.tenant, &r.case_id).map_err(to_status)?;
        let log = self
            .log
            .read(&case, 0)
            .await
            .map_err(|e| to_status(e.into()))?;
        if log.is_empty() {
            return Err(to_status(Error::NotFound(format!("case {case} not found"))));
        }
        let p = Projection::fold(log.iter().map(|e| &e.envelope));
        let queued = match service_of(&self.catalogs, &p) {
            Ok(service) => crate::decide::queued(&p, service).count() as u32,
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
        Ok(Response::new(api::GetCaseRecoveriesResponse {
            recoveries,
            promise_broken: p.broken.is_some(),
            promise_kept: p.kept,
            kept_late: p.kept_late,
            queued_triggers: queued,
        }))
    }

    async fn list_parked_cases(
        &self,
        _request: Request<api::ListParkedCasesRequest>,
    ) -> Result<Response<api::ListParkedCasesResponse>, Status> {
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
