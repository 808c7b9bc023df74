//! The shell around the decider: the [`Reconciler`] the runtime's loops
//! call, the path every handler report takes (a simulated outcome, a
//! worker's completion or failure, a person's completion), the simulator,
//! the `step` timers, and the tail that keeps the task board in line with
//! the log.
//!
//! **State is held, not re-read** (DESIGN.md §2). The engine keeps each
//! active case's [`Workflow`] and head in a bounded [`CaseCache`]
//! (`cache_cases`). Every path that uses a case holds the case's lock
//! ([`lock_case`], the same lock the runtime's loops hold around
//! [`Reconciler::reconcile`]) and brings the held state up to date by
//! folding the events that woke it, or by reading only what follows its
//! head; every decision goes through the one optimistic-concurrency loop,
//! [`decide_and_append`], which appends a decision's events one by one and
//! folds what landed. There is one reconcile path, taken by:
//! - a wake-up: a delivery of [`crate::WAKE_FILTERS`] or a `step` timer
//!   fire — [`decide()`] until a decision appends nothing, then the effects;
//! - a handler report: [`decide::report`] decided once (on the held state
//!   when the report names an attempt this process started, else on the
//!   latest log), and when it landed, the same reconcile right away on the
//!   held state, still under the lock, with no read: the report's own
//!   events do not wake the consumer, so this is what starts the next step
//!   or keeps the promise. Should that reconcile fail, a `step` timer one second out
//!   brings the case back; after a crash between the two, the running
//!   attempt's timeout timer (always scheduled while an attempt runs) does.
//!
//! API reads (poll, heartbeat, manual lists) and the task tail read through
//! the same cache ([`Engine::with_case`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use casework_caselog::{CaseKey, CaseLog, Head, StoredEvent};
use casework_catalog::{Catalogs, Handler};
use casework_domain::chain::from_timestamp;
use casework_domain::pb::{self, envelope::Payload};
use casework_runtime::Shutdown;
use casework_runtime::held::CaseCache;
use casework_runtime::reconcile::{
    Decision, Failure, Parked, Reconciler, Rounds, decide_and_append, lock_case,
};
use casework_runtime::timers::Timers;
use chrono::{DateTime, SubsecRound, Utc};
use futures::StreamExt;
use tracing::Instrument;

use crate::SERVICE;
use crate::decide::{self, Effect, Refusal, Report, STEP_TIMER, Via, decide, pinned_service};
use crate::error::{Error, Result};
use crate::settings::Settings;
use crate::tasks::{Entry, TaskBoard};
use crate::token::TaskToken;
use crate::workflow::{AttemptRef, Workflow};

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
    cache: CaseCache<Workflow>,
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

/// What the report decision said, captured from inside the decide loop.
enum Answer {
    /// The case has no events.
    NoCase,
    /// New events recording the report.
    New,
    /// The attempt already ended this way.
    Already(Reported),
    /// Refused.
    Refused(Refusal),
}

/// The crate's error for a reconcile failure on the API path.
fn failure_error(f: Failure) -> Error {
    match f {
        Failure::Retry(m) => Error::Unavailable(m),
        Failure::Park(m) => Error::Undecidable(m),
    }
}

/// The stored `step_started` of a simulated attempt among `landed`.
fn started_event(landed: &[StoredEvent], effect: &Effect) -> Option<StoredEvent> {
    let Effect::Simulate { attempt, .. } = effect else {
        return None;
    };
    landed
        .iter()
        .find(|e| match &e.envelope.payload {
            Some(Payload::StepStarted(s)) => {
                (s.run, s.step_index, s.attempt)
                    == (attempt.run, attempt.step_index, attempt.attempt)
            }
            _ => false,
        })
        .cloned()
}

/// Counts the events stored for the first time (each counted once, by the
/// writer that stored it).
fn count<'a>(events: impl IntoIterator<Item = &'a StoredEvent>) {
    for e in events {
        let Some(payload) = &e.envelope.payload else {
            continue;
        };
        match payload {
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
        let cache = CaseCache::new(SERVICE, settings.cache_cases);
        Self(Arc::new(Inner {
            log,
            catalogs,
            timers,
            board,
            settings,
            parked,
            parked_now: Mutex::new(parked_now),
            scheduled: Mutex::new(HashMap::new()),
            cache,
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

    /// Applies `f` to `case`'s held state and head, brought up to date
    /// under the case's lock: at least as new as every event in `woke`,
    /// and with no event, as new as the log (nothing is read when the
    /// state is held and final, or held at or past every woke event). A
    /// case with no events is not held.
    pub async fn with_case<T>(
        &self,
        case: &CaseKey,
        woke: &[StoredEvent],
        f: impl FnOnce(&Workflow, Option<&Head>) -> T,
    ) -> Result<T> {
        let _lock = lock_case(SERVICE, case).await;
        let held = self.0.cache.load(&*self.0.log, case, woke).await?;
        let out = f(&held.state, held.head.as_ref());
        if held.head.is_some() {
            self.0.cache.put(case, held);
        }
        Ok(out)
    }

    /// Decides `case` until a decision appends nothing, then performs the
    /// effects (the timer only as the last decision derived it). The caller
    /// holds the case's lock.
    async fn reconcile_inner(&self, case: &CaseKey, woke: &[StoredEvent]) -> Result<(), Failure> {
        let catalogs = &self.0.catalogs;
        let decided = decide_and_append(
            &*self.0.log,
            &self.0.cache,
            case,
            woke,
            Rounds::UntilIdle,
            |wf, _| decide(wf, Utc::now(), catalogs),
        )
        .await?;
        count(decided.fresh_events());
        // A run that ended (kept, or failed for good) needs no `step` timer
        // until recovery asks for another: it is removed, so TIMERS keeps
        // nothing for the case (DESIGN.md §3, timers don't outlive their
        // work).
        let ended = decided.fresh_events().any(|e| {
            matches!(
                e.envelope.payload,
                Some(Payload::PromiseKept(_) | Payload::FulfilmentFailed(_))
            )
        });
        if ended && let Some(timers) = &self.0.timers {
            self.0
                .scheduled
                .lock()
                .expect("scheduled lock")
                .remove(case);
            timers
                .cancel(STEP_TIMER, case)
                .await
                .map_err(|e| Failure::Retry(e.to_string()))?;
        }
        let unfinished = decided.unfinished;
        let last = decided.rounds.len().saturating_sub(1);
        for (i, round) in decided.rounds.into_iter().enumerate() {
            let landed = round.appended.map(|a| a.events).unwrap_or_default();
            for effect in round.effects {
                match effect {
                    // One `step` timer per case: the state after the last
                    // decision says when it is next due.
                    Effect::ScheduleTimer { .. } if i != last => {}
                    Effect::Simulate { .. } => {
                        let started = started_event(&landed, &effect);
                        self.perform(case, effect, started).await?;
                    }
                    effect => self.perform(case, effect, None).await?,
                }
            }
        }
        if unfinished {
            return Err(Failure::Retry(format!(
                "case {case} had more to decide than one reconcile takes; deciding again"
            )));
        }
        Ok(())
    }

    /// [`Engine::reconcile_inner`], keeping the parked-case record in line
    /// (a case decided again is no longer parked). The caller holds the
    /// case's lock.
    async fn reconcile_locked(&self, case: &CaseKey, woke: &[StoredEvent]) -> Result<(), Failure> {
        let outcome = self.reconcile_inner(case, woke).await;
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

    /// Performs one effect; `started` is the stored `step_started` of a
    /// simulated attempt (its report is then decided on the held state).
    async fn perform(
        &self,
        case: &CaseKey,
        effect: Effect,
        started: Option<StoredEvent>,
    ) -> Result<(), Failure> {
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
                            .simulate(
                                case,
                                attempt,
                                step_name,
                                latency,
                                failure_probability,
                                started,
                            )
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
        started: Option<StoredEvent>,
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
            authenticated_by: String::new(),
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
        // The simulator runs in the case's trace already; its report is
        // decided on a state at least as new as the attempt's start.
        let woke: Vec<StoredEvent> = started.into_iter().collect();
        match self
            .report_in_span(&case, attempt, Via::Simulate, report, &woke)
            .await
        {
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
    /// the latest log and guarded by its head; then reconciles the case at
    /// once.
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
        self.report_in_span(case, attempt, via, report, &[])
            .instrument(span)
            .await
    }

    /// The report path: under the case's lock, [`report`] decided once on
    /// a state at least as new as `woke` (the attempt's `step_started`, when
    /// known; else the latest log) — safe because every refusal rests on
    /// facts that stay true once the attempt is known (it ended, its run or
    /// case ended, its timeout passed), and an accepted report is guarded
    /// by the head it was decided on. Then the follow-up reconcile.
    async fn report_in_span(
        &self,
        case: &CaseKey,
        attempt: AttemptRef,
        via: Via,
        report: Report,
        woke: &[StoredEvent],
    ) -> Result<Reported> {
        let _lock = lock_case(SERVICE, case).await;
        let token = TaskToken::new(case.clone(), attempt);
        let catalogs = &self.0.catalogs;
        let mut answer: Option<Answer> = None;
        let decided = decide_and_append(
            &*self.0.log,
            &self.0.cache,
            case,
            woke,
            Rounds::Once,
            |wf, head| {
                if head.is_none() {
                    answer = Some(Answer::NoCase);
                    return Ok(Decision::<()>::default());
                }
                match decide::report(wf, attempt, via, report.clone(), Utc::now(), catalogs) {
                    Ok(events) => {
                        answer = Some(Answer::New);
                        Ok(Decision {
                            events,
                            effects: Vec::new(),
                        })
                    }
                    Err(Refusal::AlreadyCompleted { event_id }) => {
                        answer = Some(Answer::Already(Reported {
                            event_id,
                            retry_at: None,
                            already: true,
                        }));
                        Ok(Decision::default())
                    }
                    Err(Refusal::AlreadyFailed { event_id, retry_at }) => {
                        answer = Some(Answer::Already(Reported {
                            event_id,
                            retry_at,
                            already: true,
                        }));
                        Ok(Decision::default())
                    }
                    Err(r) => {
                        answer = Some(Answer::Refused(r));
                        Ok(Decision::default())
                    }
                }
            },
        )
        .await
        .map_err(failure_error)?;
        match answer {
            None => Err(Error::Unavailable(format!(
                "case {case} could not be decided; try again"
            ))),
            Some(Answer::NoCase) => {
                self.0.cache.forget(case);
                Err(Error::NotFound(format!("case {case} has no events")))
            }
            Some(Answer::Refused(r)) => {
                if !matches!(r, Refusal::Undecidable(_)) {
                    self.0.board.remove(&token);
                }
                Err(r.into())
            }
            Some(Answer::Already(reported)) => {
                // A repeat: the first report's follow-up may not have run
                // (or only a prefix of its events landed); decide again.
                self.reconcile_here(case, &[]).await;
                Ok(reported)
            }
            Some(Answer::New) => {
                count(decided.fresh_events());
                let Some(appended) = decided.rounds.into_iter().rev().find_map(|r| r.appended)
                else {
                    return Err(Error::Unavailable(format!(
                        "the report on case {case} was decided but not appended; try again"
                    )));
                };
                // What the log holds (a racing replica may have stored the
                // same report first, with its own `retry_at`).
                let first = &appended.events[0].envelope;
                let retry_at = appended
                    .events
                    .iter()
                    .find_map(|e| match &e.envelope.payload {
                        Some(Payload::StepFailed(f)) => f.retry_at.as_ref().map(from_timestamp),
                        _ => None,
                    });
                let reported = Reported {
                    event_id: first.event_id.clone(),
                    retry_at,
                    already: appended.already,
                };
                self.0.board.remove(&token);
                self.reconcile_here(case, &appended.events).await;
                Ok(reported)
            }
        }
    }

    /// Reconciles `case` now, as a wake-up would, taking its lock (parked
    /// cases at start).
    pub async fn reconcile_now(&self, case: &CaseKey) {
        let _lock = lock_case(SERVICE, case).await;
        self.reconcile_here(case, &[]).await;
    }

    /// A reconcile outside the runtime's loops: after a report, on the held
    /// state (`woke`: the report's stored events, already folded, so nothing
    /// is read), or at start for a parked case. The caller holds the case's
    /// lock. A case that cannot be decided is parked; another failure is
    /// logged, and a `step` timer one second out brings the case back:
    /// nothing else would wake it before the attempt's timeout, since the
    /// report's own events do not wake the consumer.
    async fn reconcile_here(&self, case: &CaseKey, woke: &[StoredEvent]) {
        // Through the trait's boxed `Send` future: this path starts
        // simulated attempts whose reports come back here.
        match Reconciler::reconcile(self, case, woke).await {
            Ok(()) => {}
            Err(Failure::Park(reason)) => match &self.0.parked {
                Some(parked) => {
                    parked.park(case, &reason).await;
                }
                None => tracing::error!(case = %case, reason, "case cannot be decided"),
            },
            Err(Failure::Retry(reason)) => {
                tracing::warn!(case = %case, reason, "reconcile after a report failed; retrying from a timer");
                if let Err(Failure::Retry(e) | Failure::Park(e)) = self
                    .schedule(case, Utc::now() + chrono::Duration::seconds(1))
                    .await
                {
                    tracing::warn!(case = %case, error = e, "no timer either; the running attempt's timeout will wake the case");
                }
            }
        }
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
        let (resolve_tx, mut resolve_rx) =
            tokio::sync::mpsc::unbounded_channel::<(TaskToken, StoredEvent)>();
        let resolver = {
            let engine = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    let (token, started) = tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        t = resolve_rx.recv() => match t { Some(t) => t, None => break },
                    };
                    engine.resolve_task(&token, started).await;
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
                        let _ = resolve_tx.send((token, ev));
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

    /// Finds the kind (or queue) of a task seen in the log (its
    /// `step_started` is `started`), from the catalogue the case is pinned
    /// to.
    async fn resolve_task(&self, token: &TaskToken, started: StoredEvent) {
        match self.0.board.get(token) {
            Some(e) if e.kind.is_none() => {}
            _ => return,
        }
        let catalogs = &self.0.catalogs;
        let kind = self
            .with_case(&token.case, &[started], |wf, _| {
                pinned_service(wf, catalogs).ok().and_then(|s| {
                    match &s.steps.get(token.attempt.step_index as usize)?.handler {
                        Handler::External { task } => Some(task.clone()),
                        Handler::Manual { queue } => Some(queue.clone()),
                        Handler::Simulate { .. } => None,
                    }
                })
            })
            .await;
        let kind = match kind {
            Ok(kind) => kind,
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
    /// The runtime's loops call this holding the case's lock.
    async fn reconcile(&self, case: &CaseKey, woke: &[StoredEvent]) -> Result<(), Failure> {
        self.reconcile_locked(case, woke).await
    }
}
