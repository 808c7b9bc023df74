//! The gRPC API (`casework.fulfilment.v1.Fulfilment`): external workers
//! poll, complete, fail and heartbeat tasks; people list and complete
//! manual steps; operators list parked cases. Every request is checked
//! (INVALID_ARGUMENT names the field), every task is validated against the
//! case's log (its held state, brought up to date under the case's lock:
//! [`Engine::with_case`]), and every completion goes through
//! [`Engine::report`].

use std::collections::BTreeMap;
use std::time::Duration;

use casework_auth::{Caller, TenantScope};
use casework_domain::chain::timestamp;
use casework_domain::pb;
use casework_domain::text::TextKind;
use casework_proto::fulfilment::v1 as api;
use casework_runtime::Shutdown;
use casework_runtime::reconcile::Parked;
use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};

use crate::decide::{Report, Via};
use crate::engine::Engine;
use crate::error::{Error, Result, to_status};
use crate::tasks::Entry;
use crate::token::TaskToken;
use crate::workflow::Workflow;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct FulfilmentApi {
    engine: Engine,
    parked: Option<Parked>,
    shutdown: Shutdown,
    /// Customers' data keys: a task's input and summary are the case's
    /// personal data, decrypted for the worker (`None`: plaintext).
    vault: Option<casework_privacy::Vault>,
}

impl FulfilmentApi {
    /// The API over `engine`.
    pub fn new(
        engine: Engine,
        parked: Option<Parked>,
        shutdown: Shutdown,
        vault: Option<casework_privacy::Vault>,
    ) -> Self {
        Self {
            engine,
            parked,
            shutdown,
            vault,
        }
    }
}

fn token(text: &str) -> Result<TaskToken> {
    TaskToken::parse(text).map_err(Error::InvalidArgument)
}

/// Longest worker id, queue, task kind and person field.
pub const MAX_NAME_LEN: usize = 256;
/// Longest failure text of FailTask.
pub const MAX_ERROR_LEN: usize = 2000;
/// Most output entries, longest output key and value (and note).
pub const MAX_OUTPUT_ENTRIES: usize = 100;
/// Longest output key.
pub const MAX_OUTPUT_KEY_LEN: usize = 128;
/// Longest output value or note.
pub const MAX_OUTPUT_VALUE_LEN: usize = 8192;
/// Largest `limit` of ListManualTasks.
pub const MAX_MANUAL_LIMIT: u32 = 1000;

/// `value` of `field` against the shared text rule
/// ([`casework_domain::text`]).
fn text(field: &str, value: &str, kind: TextKind, max: usize) -> Result<()> {
    casework_domain::text::check(value, kind, max)
        .map_err(|why| Error::InvalidArgument(format!("{field} {why}")))
}

fn required(value: &str, field: &str, example: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{field} is required (e.g. {example})"
        )));
    }
    text(field, value, TextKind::Line, MAX_NAME_LEN)
}

fn check_output(output: &BTreeMap<String, String>) -> Result<()> {
    if output.len() > MAX_OUTPUT_ENTRIES {
        return Err(Error::InvalidArgument(format!(
            "output has {} entries; give at most {MAX_OUTPUT_ENTRIES}",
            output.len()
        )));
    }
    for (k, v) in output {
        if k.is_empty() {
            return Err(Error::InvalidArgument(
                "output has an empty key; name every result".to_owned(),
            ));
        }
        text(
            &format!("output key {k:?}"),
            k,
            TextKind::Line,
            MAX_OUTPUT_KEY_LEN,
        )?;
        text(
            &format!("output[{k}]"),
            v,
            TextKind::Free,
            MAX_OUTPUT_VALUE_LEN,
        )?;
    }
    Ok(())
}

fn worker(id: &str) -> pb::Actor {
    pb::Actor {
        kind: pb::ActorKind::Worker as i32,
        id: id.to_owned(),
        display_name: id.to_owned(),
        authenticated_by: String::new(),
    }
}

/// Builds the task `t` from the case's state, if its attempt is still
/// running there at `now`.
fn task_of(
    wf: &Workflow,
    t: &TaskToken,
    e: &Entry,
    now: DateTime<Utc>,
    lease_until: Option<DateTime<Utc>>,
) -> Option<(api::Task, Option<(pb::CaseOpened, String)>)> {
    if wf.withdrawn || wf.closed {
        return None;
    }
    let (run, step, attempt) = wf.attempt(t.attempt)?;
    if !attempt.in_flight() || run.outcome.is_some() || attempt.timeout_at <= now {
        return None;
    }
    let opened = wf.opened.clone().unwrap_or_default();
    let sealed = opened
        .personal
        .is_some()
        .then(|| (opened.clone(), wf.opened_event_id.clone()));
    Some((
        api::Task {
            token: t.encode(),
            tenant: t.case.tenant.to_string(),
            case_id: t.case.case_id.to_string(),
            run: t.attempt.run,
            step_index: t.attempt.step_index,
            step_name: step.name.clone(),
            kind: e.kind.clone().unwrap_or_default(),
            handler: if e.manual {
                api::TaskHandler::Manual
            } else {
                api::TaskHandler::External
            } as i32,
            attempt: t.attempt.attempt,
            input: wf.attributes().into_iter().collect(),
            timeout_at: Some(timestamp(attempt.timeout_at)),
            lease_expires_at: lease_until.map(timestamp),
            service_code: wf
                .promise
                .as_ref()
                .map(|p| p.service_code.clone())
                .unwrap_or_default(),
            summary: opened.summary,
            started_at: Some(timestamp(attempt.started_at)),
        },
        sealed,
    ))
}

impl FulfilmentApi {
    /// Validates a candidate against the log and builds its task; drops it
    /// from the board when it is no longer running.
    async fn validate(
        &self,
        t: &TaskToken,
        e: &Entry,
        now: DateTime<Utc>,
        lease_until: Option<DateTime<Utc>>,
    ) -> Result<Option<api::Task>> {
        let found = self
            .engine
            .with_case(&t.case, &[], |wf, _| task_of(wf, t, e, now, lease_until))
            .await?;
        let Some((mut task, sealed)) = found else {
            self.engine.board().remove(t);
            return Ok(None);
        };
        if let (Some((opened, event_id)), Some(vault)) = (sealed, &self.vault) {
            let mut payload = pb::envelope::Payload::CaseOpened(opened);
            let at = casework_privacy::Place {
                tenant: &task.tenant,
                case_id: &task.case_id,
                event_id: &event_id,
            };
            vault.reveal_payload(&mut payload, at).await.map_err(|e| {
                // A wrong KEK or a damaged key is a fault to fix, not to
                // wait out.
                if e.is_transient() {
                    Error::Unavailable(e.to_string())
                } else {
                    Error::Internal(e.to_string())
                }
            })?;
            if let pb::envelope::Payload::CaseOpened(o) = payload {
                task.summary = o.summary;
                task.input = o.attributes.into_iter().collect();
            }
        }
        Ok(Some(task))
    }

    async fn poll(
        &self,
        r: api::PollTasksRequest,
        scope: &TenantScope,
    ) -> Result<api::PollTasksResponse> {
        required(&r.worker_id, "worker_id", "\"refund-worker-1\"")?;
        if r.task_kinds.is_empty() || r.task_kinds.iter().any(|k| k.trim().is_empty()) {
            return Err(Error::InvalidArgument(
                "task_kinds must list at least one task kind (e.g. [\"payment_refund\"]), none empty"
                    .to_owned(),
            ));
        }
        for k in &r.task_kinds {
            text("task_kinds", k, TextKind::Line, MAX_NAME_LEN)?;
        }
        let settings = self.engine.settings();
        let max = r.max_tasks.clamp(1, settings.max_tasks_per_poll) as usize;
        let wait =
            Duration::from_secs(u64::from(r.wait_seconds).min(settings.max_poll_wait_seconds));
        let deadline = tokio::time::Instant::now() + wait;
        let board = self.engine.board().clone();
        loop {
            let notified = board.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Utc::now();
            let mut tasks = Vec::new();
            let mut leased = Vec::new();
            let mine = board
                .available(&r.task_kinds, false, now, usize::MAX)
                .into_iter()
                .filter(|(t, _)| scope.contains(t.case.tenant.as_str()))
                .take(max);
            for (t, e) in mine {
                let until = (now + chrono::Duration::seconds(settings.lease_seconds as i64))
                    .min(e.timeout_at);
                if !board.try_lease(&t, &r.worker_id, now, until) {
                    continue;
                }
                match self.validate(&t, &e, now, Some(until)).await {
                    Ok(Some(task)) => {
                        tasks.push(task);
                        leased.push(t);
                    }
                    Ok(None) => board.release(&t),
                    Err(err) => {
                        board.release(&t);
                        tracing::warn!(task = %t.encode(), error = %err, "cannot validate a task; skipped");
                    }
                }
            }
            if !leased.is_empty() {
                board.persist(leased).await;
            }
            if !tasks.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(api::PollTasksResponse { tasks });
            }
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(api::PollTasksResponse { tasks }),
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
                // Leases end and tasks time out without a notification.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn heartbeat(&self, r: api::HeartbeatRequest) -> Result<api::HeartbeatResponse> {
        let t = token(&r.token)?;
        required(&r.worker_id, "worker_id", "\"refund-worker-1\"")?;
        let now = Utc::now();
        // The running attempt's timeout, or why there is none.
        let timeout_at = self
            .engine
            .with_case(&t.case, &[], |wf, head| {
                if head.is_none() {
                    return Err(Error::NotFound(format!("case {} has no events", t.case)));
                }
                let Some((run, step, attempt)) = wf.attempt(t.attempt) else {
                    return Err(Error::NotFound(format!(
                        "no task {} in case {}",
                        t.attempt, t.case
                    )));
                };
                if wf.withdrawn
                    || wf.closed
                    || run.outcome.is_some()
                    || !attempt.in_flight()
                    || attempt.timeout_at <= now
                {
                    return Err(Error::FailedPrecondition(format!(
                        "stale task: attempt {} of step {} is no longer running; stop working on it",
                        t.attempt.attempt, step.name
                    )));
                }
                Ok(attempt.timeout_at)
            })
            .await??;
        let board = self.engine.board();
        let until = (now + chrono::Duration::seconds(self.engine.settings().lease_seconds as i64))
            .min(timeout_at);
        if !board.try_lease(&t, &r.worker_id, now, until) {
            let holder = board.lease(&t).map(|l| l.worker).unwrap_or_default();
            return Err(Error::FailedPrecondition(format!(
                "task is leased to worker {holder:?}, not {:?}",
                r.worker_id
            )));
        }
        board.persist(vec![t]).await;
        Ok(api::HeartbeatResponse {
            lease_expires_at: Some(timestamp(until)),
            timeout_at: Some(timestamp(timeout_at)),
        })
    }

    async fn list_manual(
        &self,
        r: api::ListManualTasksRequest,
        scope: &TenantScope,
    ) -> Result<api::ListManualTasksResponse> {
        required(&r.queue, "queue", "\"returns_desk\"")?;
        if !r.tenant.is_empty() {
            casework_domain::Tenant::parse(&r.tenant)
                .map_err(|e| Error::InvalidArgument(format!("tenant: {e}")))?;
        }
        if r.limit > MAX_MANUAL_LIMIT {
            return Err(Error::InvalidArgument(format!(
                "limit {} is more than {MAX_MANUAL_LIMIT}; ask for at most {MAX_MANUAL_LIMIT} tasks (0: 100)",
                r.limit
            )));
        }
        let limit = if r.limit == 0 { 100 } else { r.limit } as usize;
        let now = Utc::now();
        let mut tasks = Vec::new();
        for (t, e) in
            self.engine
                .board()
                .available(std::slice::from_ref(&r.queue), true, now, usize::MAX)
        {
            if tasks.len() >= limit {
                break;
            }
            if (!r.tenant.is_empty() && t.case.tenant.as_str() != r.tenant)
                || !scope.contains(t.case.tenant.as_str())
            {
                continue;
            }
            if let Some(task) = self.validate(&t, &e, now, None).await? {
                tasks.push(task);
            }
        }
        Ok(api::ListManualTasksResponse { tasks })
    }
}

#[tonic::async_trait]
impl api::fulfilment_server::Fulfilment for FulfilmentApi {
    async fn poll_tasks(
        &self,
        request: Request<api::PollTasksRequest>,
    ) -> Result<Response<api::PollTasksResponse>, Status> {
        // A worker sees the tasks of its tenants only.
        let scope = Caller::of(&request)?.scope();
        self.poll(request.into_inner(), &scope)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn complete_task(
        &self,
        request: Request<api::CompleteTaskRequest>,
    ) -> Result<Response<api::CompleteTaskResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        caller.for_tenant(&token(&r.token).map_err(to_status)?.case.tenant)?;
        let by = caller
            .vouch(Some(worker(&r.worker_id)))?
            .expect("an actor stays an actor");
        let go = async {
            let t = token(&r.token)?;
            required(&r.worker_id, "worker_id", "\"refund-worker-1\"")?;
            check_output(&r.output)?;
            let done = self
                .engine
                .report(
                    &t.case,
                    t.attempt,
                    Via::External,
                    Report::Completed {
                        output: r.output.clone(),
                        by,
                    },
                )
                .await?;
            Ok(api::CompleteTaskResponse {
                event_id: done.event_id,
                already_completed: done.already,
            })
        };
        go.await.map(Response::new).map_err(to_status)
    }

    async fn fail_task(
        &self,
        request: Request<api::FailTaskRequest>,
    ) -> Result<Response<api::FailTaskResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        caller.for_tenant(&token(&r.token).map_err(to_status)?.case.tenant)?;
        let by = caller
            .vouch(Some(worker(&r.worker_id)))?
            .expect("an actor stays an actor");
        let go = async {
            let t = token(&r.token)?;
            required(&r.worker_id, "worker_id", "\"refund-worker-1\"")?;
            if r.error.trim().is_empty() {
                return Err(Error::InvalidArgument(
                    "error is required: say what went wrong (e.g. \"payment provider timed out\")"
                        .to_owned(),
                ));
            }
            text("error", &r.error, TextKind::Free, MAX_ERROR_LEN)?;
            let done = self
                .engine
                .report(
                    &t.case,
                    t.attempt,
                    Via::External,
                    Report::Failed {
                        error: r.error.clone(),
                        retryable: r.retryable,
                        by,
                    },
                )
                .await?;
            Ok(api::FailTaskResponse {
                event_id: done.event_id,
                retry_at: done.retry_at.map(timestamp),
                already_failed: done.already,
            })
        };
        go.await.map(Response::new).map_err(to_status)
    }

    async fn heartbeat(
        &self,
        request: Request<api::HeartbeatRequest>,
    ) -> Result<Response<api::HeartbeatResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        caller.for_tenant(&token(&r.token).map_err(to_status)?.case.tenant)?;
        FulfilmentApi::heartbeat(self, r)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn list_manual_tasks(
        &self,
        request: Request<api::ListManualTasksRequest>,
    ) -> Result<Response<api::ListManualTasksResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        if let Ok(t) = casework_domain::Tenant::parse(&r.tenant) {
            caller.for_tenant(&t)?;
        }
        self.list_manual(r, &caller.scope())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn complete_manual_step(
        &self,
        request: Request<api::CompleteManualStepRequest>,
    ) -> Result<Response<api::CompleteManualStepResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        caller.for_tenant(&token(&r.token).map_err(to_status)?.case.tenant)?;
        // The person who did the work is the caller (none given: the
        // caller), recorded with how they were authenticated.
        let vouched = caller.vouch_person(r.person.clone().map(|p| (p.id, p.display_name)))?;
        let go = async {
            let t = token(&r.token)?;
            let person = vouched.ok_or_else(|| {
                Error::InvalidArgument(
                    "person is required: who did the work ({id, display_name})".to_owned(),
                )
            })?;
            required(&person.id, "person.id", "\"emp-4711\"")?;
            required(
                &person.display_name,
                "person.display_name",
                "\"Dana Weber\"",
            )?;
            check_output(&r.output)?;
            let mut output = r.output.clone();
            if !r.note.is_empty() {
                text("note", &r.note, TextKind::Free, MAX_OUTPUT_VALUE_LEN)?;
                output.insert("note".to_owned(), r.note.clone());
            }
            let done = self
                .engine
                .report(
                    &t.case,
                    t.attempt,
                    Via::Manual,
                    Report::Completed { output, by: person },
                )
                .await?;
            Ok(api::CompleteManualStepResponse {
                event_id: done.event_id,
                already_completed: done.already,
            })
        };
        go.await.map(Response::new).map_err(to_status)
    }

    async fn list_parked_cases(
        &self,
        request: Request<api::ListParkedCasesRequest>,
    ) -> Result<Response<api::ListParkedCasesResponse>, Status> {
        Caller::of(&request)?.for_all_tenants()?;
        let Some(parked) = &self.parked else {
            return Ok(Response::new(api::ListParkedCasesResponse::default()));
        };
        let cases = parked
            .list()
            .await
            .into_iter()
            .map(|(key, record)| {
                let (tenant, case_id) = key.split_once('/').unwrap_or(("", key.as_str()));
                let v: serde_json::Value = serde_json::from_str(&record).unwrap_or_default();
                api::ParkedCase {
                    tenant: tenant.to_owned(),
                    case_id: case_id.to_owned(),
                    reason: v["reason"].as_str().unwrap_or(&record).to_owned(),
                    parked_at: v["at"].as_str().unwrap_or_default().to_owned(),
                }
            })
            .collect();
        Ok(Response::new(api::ListParkedCasesResponse { cases }))
    }
}
