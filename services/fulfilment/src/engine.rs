//! The shell around the decider: the [`Reconciler`] the runtime's loops
//! call (load → [`decide`] → append → effects), the path every handler
//! report takes (a simulated outcome, a worker's completion or failure, a
//! person's completion: load → [`report`] → guarded append), the simulator,
//! the `step` timers, and the tail that keeps the task board in line with
//! the log.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use casework_caselog::{CaseKey, CaseLog, StoredEvent};
use casework_catalog::{Catalogs, Handler};
use casework_domain::NewEvent;
use casework_domain::chain::from_timestamp;
use casework_domain::pb::{self, envelope::Payload};
use casework_runtime::Shutdown;
use casework_runtime::reconcile::{Failure, Parked, Reconciler, decide_and_append};
use casework_runtime::timers::Timers;
use chrono::{DateTime, SubsecRound, Utc};
use futures::StreamExt;
use tracing::Instrument;

use crate::decide::{self, Effect, Refusal, Report, STEP_TIMER, Via, decide, pinned_service};
use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::tasks::{Entry, TaskBoard};
use crate::token::TaskToken;
use crate::workflow::{AttemptRef, Workflow};

/// Most load-decide-append rounds for one report before giving up.
const REPORT_ROUNDS: usize = 8;

/// What a report did.
#[derive(Debug, Clone, PartialEq)]
pub struct Reported {
    /// The event recording it (the first one, when repeated).
    pub event_id: String,
    /// When the next attempt starts (failures only).
    pub retry_at: Option<DateTime<Utc>>,
    /// True when the attempt had already ended this way: nothing new was
    /// recorded.
    pub already: bool,
}

struct Inner {
    log: Arc<dyn CaseLog>,
    catalogs: Arc<Catalogs>,
    timers: Option<Timers>,
    board: Arc<TaskBoard>,
    settings: Settings,
    parked: Option<Parked>,
    parked_now: Mutex<HashSet<CaseKey>>,
    scheduled: Mutex<HashMap<CaseKey, DateTime<Utc>>>,
    shutdown: Shutdown,
}

/// Fulfilment's engine; cheap to clone.
#[derive(Clone)]
pub struct Engine(Arc<Inner>);

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

/// Counts the events of a landed decision.
fn count(events: &[NewEvent]) {
    for e in events {
        match &e.payload {
            Payload::StepCompleted(_) => {
                metrics::counter!("casework_steps_total", "outcome" => "completed").increment(1)
            }
            Payload::StepFailed(f) => {
                let outcome = match (f.timed_out, f.retry_at.is_some()) {
                    (true, _) => "timed_out",
                    (false, true) => "failed_retrying",
                    (false, false) => "failed",
                };
                metrics::counter!("casework_steps_total", "outcome" => outcome).increment(1)
            }
            Payload::StepStarted(_) => {
                metrics::counter!("casework_steps_started_total").increment(1)
            }
            Payload::PromiseKept(k) => {
                metrics::counter!("casework_promises_kept_total", "late" => k.late.to_string())
                    .increment(1)
            }
            Payload::FulfilmentFailed(_) => {
                metrics::counter!("casework_fulfilment_failed_total").increment(1)
            }
            _ => {}
        }
    }
}

impl Engine {
    /// An engine over `log`. Without `timers`, no timer is scheduled (unit
    /// tests).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        log: Arc<dyn CaseLog>,
        catalogs: Arc<Catalogs>,
        timers: Option<Timers>,
        board: Arc<TaskBoard>,
        settings: Settings,
        parked: Option<Parked>,
        parked_now: HashSet<CaseKey>,
        shutdown: Shutdown,
    ) -> Self {
        Self(Arc::new(Inner {
            log,
            catalogs,
            timers,
            board,
            settings,
            parked,
            parked_now: Mutex::new(parked_now),
            scheduled: Mutex::new(HashMap::new()),
            shutdown,
        }))
    }

    /// The log.
    pub fn log(&self) -> &Arc<dyn CaseLog> {
        &self.0.log
    }

    /// The catalogues.
    pub fn catalogs(&self) -> &Catalogs {
        &self.0.catalogs
    }

    /// The task board.
    pub fn board(&self) -> &Arc<TaskBoard> {
        &self.0.board
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// Loads and folds `case`.
    pub async fn load(&self, case: &CaseKey) -> Result<(Workflow, Vec<StoredEvent>)> {
        let events = self.0.log.read(case, 0).await?;
        let wf = Workflow::fold(case.clone(), events.iter().map(|e| &e.envelope));
        Ok((wf, events))
    }

    async fn reconcile_inner(&self, case: &CaseKey) -> Result<(), Failure> {
        let mut landed: Option<Vec<NewEvent>> = None;
        let catalogs = self.0.catalogs.clone();
        let decided = decide_and_append(&*self.0.log, case, |events| {
            let wf = Workflow::fold(case.clone(), events.iter().map(|e| &e.envelope));
            let d = decide(&wf, Utc::now(), &catalogs)?;
            landed = (!d.events.is_empty()).then(|| d.events.clone());
            Ok(d)
        })
        .await?;
        if let (Some(a), Some(events)) = (&decided.appended, &landed)
            && !a.already
        {
            count(events);
        }
        for effect in decided.effects {
            self.perform(case, effect).await?;
        }
        Ok(())
    }

    async fn perform(&self, case: &CaseKey, effect: Effect) -> Result<(), Failure> {
        match effect {
            Effect::Simulate {
                attempt,
                step_name,
                latency,
                failure_probability,
            } => {
                let latency = self
                    .0
                    .settings
                    .simulate_latency_override_ms
                    .map(Duration::from_millis)
                    .unwrap_or(latency);
                let engine = self.clone();
                let case = case.clone();
                // The simulated handler reports in the case's trace.
                tokio::spawn(
                    async move {
                        engine
                            .simulate(case, attempt, step_name, latency, failure_probability)
                            .await
                    }
                    .in_current_span(),
                );
            }
            Effect::Offer(o) => {
                self.0
                    .board
                    .offer(TaskToken::new(case.clone(), o.attempt), &o);
            }
            Effect::ScheduleTimer { at } => self.schedule(case, at).await?,
        }
        Ok(())
    }

    /// Schedules the case's `step` timer at `at` (rounded up to the whole
    /// second: broker schedules have second precision and must not fire
    /// early), unless this process already scheduled one at or before `at`
    /// that has not fired yet: an early fire only wakes the case, which then
    /// schedules what it needs (level-triggered), so one broker write serves
    /// every step of a fast workflow.
    async fn schedule(&self, case: &CaseKey, at: DateTime<Utc>) -> Result<(), Failure> {
        let Some(timers) = &self.0.timers else {
            return Ok(());
        };
        let whole = at.trunc_subsecs(0);
        let at = if whole < at {
            whole + chrono::Duration::seconds(1)
        } else {
            whole
        };
        let now = Utc::now();
        if self
            .0
            .scheduled
            .lock()
            .expect("scheduled lock")
            .get(case)
            .is_some_and(|s| *s <= at && *s > now)
        {
            return Ok(());
        }
        timers
            .schedule(STEP_TIMER, case, at)
            .await
            .map_err(|e| Failure::Retry(e.to_string()))?;
        let mut s = self.0.scheduled.lock().expect("scheduled lock");
        if s.len() > 100_000 {
            s.retain(|_, t| *t > now);
        }
        s.insert(case.clone(), at);
        Ok(())
    }

    async fn simulate(
        &self,
        case: CaseKey,
        attempt: AttemptRef,
        step_name: String,
        latency: Duration,
        failure_probability: f64,
    ) {
        if !latency.is_zero() {
            tokio::select! {
                biased;
                _ = self.0.shutdown.cancelled() => return,
                _ = tokio::time::sleep(latency) => {}
            }
        }
        let fails = failure_probability > 0.0 && rand::random::<f64>() < failure_probability;
        let by = pb::Actor {
            kind: pb::ActorKind::System as i32,
            id: "simulate".to_owned(),
            display_name: "Simulated handler".to_owned(),
        };
        let report = if fails {
            Report::Failed {
                error: format!("simulated failure of step {step_name}"),
                retryable: true,
                by,
            }
        } else {
            Report::Completed {
                output: Default::default(),
                by,
            }
        };
        match self.report(&case, attempt, Via::Simulate, report).await {
            Ok(_) => {}
            Err(Error::FailedPrecondition(why)) => {
                tracing::debug!(case = %case, %attempt, why, "simulated outcome not recorded")
            }
            Err(e) => {
                tracing::warn!(case = %case, %attempt, error = %e, "simulated outcome not recorded; the step's timeout will decide")
            }
        }
    }

    /// Records a handler's report on `attempt` of `case`, validated against
    /// the log and guarded by its head; then reconciles the case at once.
    pub async fn report(
        &self,
        case: &CaseKey,
        attempt: AttemptRef,
        via: Via,
        report: Report,
    ) -> Result<Reported> {
        // A worker's or person's report continues the trace the attempt
        // was offered in; the simulator already runs inside it.
        let offered = match via {
            Via::Simulate => None,
            Via::External | Via::Manual => self
                .0
                .board
                .get(&TaskToken::new(case.clone(), attempt))
                .and_then(|e| e.traceparent),
        };
        let span = tracing::info_span!("task_report", case = %case, %attempt);
        casework_telemetry::set_remote_parent(&span, offered.as_deref());
        self.report_in_span(case, attempt, via, report)
            .instrument(span)
            .await
    }

    async fn report_in_span(
        &self,
        case: &CaseKey,
        attempt: AttemptRef,
        via: Via,
        report: Report,
    ) -> Result<Reported> {
        for _ in 0..REPORT_ROUNDS {
            let (wf, events) = self.load(case).await?;
            if events.is_empty() {
                return Err(Error::NotFound(format!("case {case} has no events")));
            }
            let decided = decide::report(
                &wf,
                attempt,
                via,
                report.clone(),
                Utc::now(),
                &self.0.catalogs,
            );
            let new = match decided {
                Ok(new) => new,
                Err(Refusal::AlreadyCompleted { event_id }) => {
                    return Ok(Reported {
                        event_id,
                        retry_at: None,
                        already: true,
                    });
                }
                Err(Refusal::AlreadyFailed { event_id, retry_at }) => {
                    return Ok(Reported {
                        event_id,
                        retry_at,
                        already: true,
                    });
                }
                Err(r) => {
                    if !matches!(r, Refusal::Undecidable(_)) {
                        self.0.board.remove(&TaskToken::new(case.clone(), attempt));
                    }
                    return Err(r.into());
                }
            };
            let retry_at = new.iter().find_map(|e| match &e.payload {
                Payload::StepFailed(f) => f.retry_at.as_ref().map(from_timestamp),
                _ => None,
            });
            let event_id = new[0].event_id.to_string();
            let head = events.last().map(StoredEvent::head);
            let traceparent = casework_telemetry::current_traceparent();
            match self
                .0
                .log
                .append_traced(case, head.as_ref(), new.clone(), traceparent.as_deref())
                .await
            {
                Ok(a) => {
                    if !a.already {
                        count(&new);
                    }
                    self.0.board.remove(&TaskToken::new(case.clone(), attempt));
                    let engine = self.clone();
                    let case = case.clone();
                    tokio::spawn(
                        async move {
                            if let Err(f) = engine.reconcile(&case).await {
                                tracing::debug!(case = %case, failure = ?f, "reconcile after a report; the consumer will try again");
                            }
                        }
                        .in_current_span(),
                    );
                    return Ok(Reported {
                        event_id,
                        retry_at,
                        already: false,
                    });
                }
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable(format!(
            "case {case} kept changing; try again"
        )))
    }

    /// Runs the board's tail: every external or manual `step_started` in
    /// the log puts a task on the board, every `step_completed` or
    /// `step_failed` takes it off. `caught_up` is called once the tail has
    /// read what was in the log at start.
    pub async fn run_tail(
        self,
        shutdown: Shutdown,
        caught_up: impl FnOnce() + Send,
    ) -> anyhow::Result<()> {
        let last = self.0.log.last_stream_seq().await?;
        let mut tail = self.0.log.tail("case.*.*.fulfilment.>", 1).await?;
        let (resolve_tx, mut resolve_rx) = tokio::sync::mpsc::unbounded_channel::<TaskToken>();
        let resolver = {
            let engine = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let token = tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        t = resolve_rx.recv() => match t { Some(t) => t, None => break },
                    };
                    engine.resolve_task(&token).await;
                }
            })
        };
        let mut caught_up = Some(caught_up);
        if last == 0
            && let Some(f) = caught_up.take()
        {
            f();
        }
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                n = tail.next() => n,
                // Nothing more to read for a moment: what was there is read.
                _ = tokio::time::sleep(Duration::from_millis(500)), if caught_up.is_some() => {
                    if let Some(f) = caught_up.take() { f(); }
                    continue;
                }
            };
            let d = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "task tail error; continuing");
                    continue;
                }
                None => anyhow::bail!("the task tail ended"),
            };
            if d.stream_seq >= last
                && let Some(f) = caught_up.take()
            {
                f();
            }
            let (Ok(case), Ok(ev)) = (d.case(), d.decode()) else {
                continue;
            };
            let now = Utc::now();
            match &ev.envelope.payload {
                Some(Payload::StepStarted(s))
                    if s.handler == pb::HandlerKind::External as i32
                        || s.handler == pb::HandlerKind::Manual as i32 =>
                {
                    let timeout_at = s.timeout_at.as_ref().map(from_timestamp).unwrap_or(now);
                    if timeout_at <= now {
                        continue;
                    }
                    let token = TaskToken::new(
                        case,
                        AttemptRef {
                            run: s.run,
                            step_index: s.step_index,
                            attempt: s.attempt,
                        },
                    );
                    let entry = Entry {
                        step_name: s.step_name.clone(),
                        kind: None,
                        manual: s.handler == pb::HandlerKind::Manual as i32,
                        started_at: ev
                            .envelope
                            .occurred_at
                            .as_ref()
                            .map(from_timestamp)
                            .unwrap_or(now),
                        timeout_at,
                        traceparent: d.traceparent.clone(),
                    };
                    if self.0.board.seen(token.clone(), entry) {
                        let _ = resolve_tx.send(token);
                    }
                }
                Some(Payload::StepCompleted(s)) => self.0.board.remove(&TaskToken::new(
                    case,
                    AttemptRef {
                        run: s.run,
                        step_index: s.step_index,
                        attempt: s.attempt,
                    },
                )),
                Some(Payload::StepFailed(s)) => self.0.board.remove(&TaskToken::new(
                    case,
                    AttemptRef {
                        run: s.run,
                        step_index: s.step_index,
                        attempt: s.attempt,
                    },
                )),
                _ => {}
            }
        }
        resolver.abort();
        Ok(())
    }

    /// Finds the kind (or queue) of a task seen in the log, from the
    /// catalogue the case is pinned to.
    async fn resolve_task(&self, token: &TaskToken) {
        match self.0.board.get(token) {
            Some(e) if e.kind.is_none() => {}
            _ => return,
        }
        let kind = match self.load(&token.case).await {
            Ok((wf, _)) => pinned_service(&wf, &self.0.catalogs).ok().and_then(|s| {
                match &s.steps.get(token.attempt.step_index as usize)?.handler {
                    Handler::External { task } => Some(task.clone()),
                    Handler::Manual { queue } => Some(queue.clone()),
                    Handler::Simulate { .. } => None,
                }
            }),
            Err(e) => {
                tracing::warn!(case = %token.case, error = %e, "cannot read a case to offer its task");
                None
            }
        };
        match kind {
            Some(k) => self.0.board.resolve(token, k),
            None => self.0.board.remove(token),
        }
    }
}

#[async_trait]
impl Reconciler for Engine {
    async fn reconcile(&self, case: &CaseKey) -> Result<(), Failure> {
        let outcome = self.reconcile_inner(case).await;
        let was_parked = {
            let mut p = self.0.parked_now.lock().expect("parked lock");
            match &outcome {
                Err(Failure::Park(_)) => {
                    p.insert(case.clone());
                    false
                }
                Ok(()) => p.remove(case),
                Err(Failure::Retry(_)) => false,
            }
        };
        if was_parked && let Some(parked) = &self.0.parked {
            parked.clear(case).await;
        }
        outcome
    }
}
