//! The reconcile loop (DESIGN.md §2): when a case's log changes (a delivery
//! from the service's durable consumer) or one of its timers fires, load the
//! case, decide from its state, append the decision's events with optimistic
//! concurrency, and only then perform the effects; acknowledge the delivery
//! last. Decisions depend on state, not on the waking event, so redelivery,
//! reordering and racing replicas are harmless. A case that cannot be
//! decided is *parked* — recorded with its reason, counted, acknowledged —
//! instead of being retried forever; every other case keeps flowing, and the
//! next change to a parked case tries it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use casework_caselog::domain::NewEvent;
use casework_caselog::{Appended, CaseKey, CaseLog, Error as LogError, Head, StoredEvent};
use futures::StreamExt;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::Semaphore;

use crate::Shutdown;
use crate::held::{CaseCache, Fold, Held};
use crate::timers::Timers;

/// Why a reconcile did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The case cannot be decided (an unknown catalogue reference, an
    /// undecodable event): park it.
    Park(String),
    /// A transient failure (the broker unavailable): deliver again later.
    Retry(String),
}

impl From<LogError> for Failure {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Undecodable { .. } | LogError::Invalid(_) | LogError::Forbidden { .. } => {
                Failure::Park(e.to_string())
            }
            other => Failure::Retry(other.to_string()),
        }
    }
}

/// A service's rules for one case.
#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// Brings `case` in line with its log. `woke` are the events whose
    /// delivery woke it (coalesced: every delivery of a burst, in stream
    /// order; none for a timer fire): the decision must be taken on a state
    /// at least as new as each of them.
    async fn reconcile(&self, case: &CaseKey, woke: &[StoredEvent]) -> Result<(), Failure>;
}

/// What a pure decide function returns: events to append, then effects to
/// perform once they are committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<E> {
    /// Events to append, one after another (none: nothing to record).
    pub events: Vec<NewEvent>,
    /// Effects to perform after the append.
    pub effects: Vec<E>,
}

impl<E> Default for Decision<E> {
    fn default() -> Self {
        Self {
            events: Vec::new(),
            effects: Vec::new(),
        }
    }
}

/// One decision taken by [`decide_and_append`].
#[derive(Debug, Clone)]
pub struct Round<E> {
    /// Its effects, to perform now: empty when its events were found in the
    /// log with another writer's bytes (a racing replica decided the same
    /// and performs them) or when only a prefix of them landed before a
    /// conflict (the next decision takes over).
    pub effects: Vec<E>,
    /// Where its events are, if it had any.
    pub appended: Option<Appended>,
}

/// The outcome of [`decide_and_append`].
#[derive(Debug, Clone)]
pub struct Decided<E> {
    /// Every decision taken, in order; the last one appended nothing unless
    /// `unfinished`.
    pub rounds: Vec<Round<E>>,
    /// Where the case's log ends after them.
    pub head: Option<Head>,
    /// True when the case had more to decide than one call takes
    /// ([`MAX_ROUNDS`]): perform the effects, then come back.
    pub unfinished: bool,
}

impl<E> Decided<E> {
    /// Every effect to perform, in order.
    pub fn effects(self) -> impl Iterator<Item = E> {
        self.rounds.into_iter().flat_map(|r| r.effects)
    }

    /// The events this call stored for the first time (to count them once).
    pub fn fresh_events(&self) -> impl Iterator<Item = &StoredEvent> {
        self.rounds
            .iter()
            .filter_map(|r| r.appended.as_ref())
            .filter(|a| a.fresh())
            .flat_map(|a| a.events.iter())
    }
}

/// Fault injection for crash tests: when this variable names an event type,
/// the process aborts (as abruptly as `kill -9`) right after an event of
/// that type lands and before the next event of the same decision is
/// appended — the one place where one-event-per-append can leave a prefix
/// of a decision. Never set it in production.
pub const CRASH_BETWEEN_VAR: &str = "CASEWORK_FAULT_CRASH_BETWEEN";

/// Aborts the process if [`CRASH_BETWEEN_VAR`] names `event_type` (called
/// between two events of one decision).
pub fn crash_point(event_type: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        std::env::var(CRASH_BETWEEN_VAR)
            .ok()
            .filter(|v| !v.is_empty())
    });
    if at.as_deref() == Some(event_type) {
        eprintln!("{CRASH_BETWEEN_VAR}={event_type}: aborting between two events of a decision");
        std::process::abort();
    }
}

/// Appends the events of one decision in order, each on the head the
/// previous one produced (the log's [`CaseLog::append_traced`], with the
/// crash point of fault tests between two events).
pub async fn append_in_order(
    log: &dyn CaseLog,
    case: &CaseKey,
    after: Option<&Head>,
    events: Vec<NewEvent>,
    traceparent: Option<&str>,
) -> Result<Appended, LogError> {
    let n = events.len();
    let mut head = after.cloned();
    let mut out: Option<Appended> = None;
    for (i, event) in events.into_iter().enumerate() {
        let event_type = event.event_type();
        let a = log
            .append_event(case, head.as_ref(), event, traceparent)
            .await?;
        head = Some(a.head.clone());
        out = Some(match out {
            None => a,
            Some(acc) => acc.then(a),
        });
        if i + 1 < n {
            crash_point(event_type.as_str());
        }
    }
    out.ok_or_else(|| LogError::Misuse(format!("an append to {case} needs at least one event")))
}

/// Most decisions (and conflicts in a row) in one [`decide_and_append`].
pub const MAX_ROUNDS: usize = 16;

/// How many decisions one [`decide_and_append`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounds {
    /// Decide once (an API request: its one write).
    Once,
    /// Decide again on the new state after each append, until a decision
    /// appends nothing (a reconcile: one wake-up may take several).
    UntilIdle,
}

/// The one optimistic-concurrency loop of every service: brings `case`'s
/// held state up to date (at least as new as `woke`), decides with
/// `decide`, appends the decision's events one by one on the head the
/// previous one produced, folds what landed, and (with
/// [`Rounds::UntilIdle`]) decides again until nothing is left to append. A
/// conflict reads what others appended and decides again. `decide` errors
/// park the case. The caller holds the case's lock
/// ([`lock_case`]) and performs the returned effects.
pub async fn decide_and_append<S, E, F>(
    log: &dyn CaseLog,
    cache: &CaseCache<S>,
    case: &CaseKey,
    woke: &[StoredEvent],
    rounds: Rounds,
    mut decide: F,
) -> Result<Decided<E>, Failure>
where
    S: Fold,
    F: FnMut(&S, Option<&Head>) -> Result<Decision<E>, String> + Send,
    E: Send,
{
    let mut held: Held<S> = match rounds {
        Rounds::Once if woke.is_empty() => cache.load_latest(log, case).await?,
        _ => cache.load(log, case, woke).await?,
    };
    let mut out = Decided {
        rounds: Vec::new(),
        head: None,
        unfinished: false,
    };
    let mut conflicts = 0;
    let traceparent = casework_telemetry::current_traceparent();
    loop {
        if out.rounds.len() >= MAX_ROUNDS {
            out.unfinished = true;
            break;
        }
        let decision = match decide(&held.state, held.head.as_ref()) {
            Ok(d) => d,
            Err(why) => {
                cache.put(case, held);
                return Err(Failure::Park(why));
            }
        };
        if decision.events.is_empty() {
            out.rounds.push(Round {
                effects: decision.effects,
                appended: None,
            });
            break;
        }
        let mut landed: Option<Appended> = None;
        let mut conflicted = false;
        let n = decision.events.len();
        for (i, event) in decision.events.into_iter().enumerate() {
            let event_type = event.event_type();
            match log
                .append_event(case, held.head.as_ref(), event, traceparent.as_deref())
                .await
            {
                Ok(a) => {
                    held.extend(&a.events);
                    landed = Some(match landed {
                        None => a,
                        Some(acc) => acc.then(a),
                    });
                    if i + 1 < n {
                        crash_point(event_type.as_str());
                    }
                }
                Err(e) if e.is_conflict() => {
                    metrics::counter!("casework_append_conflicts_total").increment(1);
                    conflicted = true;
                    break;
                }
                Err(e) => {
                    // What landed is folded; the rest is decided again.
                    cache.put(case, held);
                    return Err(e.into());
                }
            }
        }
        if conflicted {
            if landed.is_some() {
                out.rounds.push(Round {
                    effects: Vec::new(),
                    appended: landed,
                });
            }
            conflicts += 1;
            if conflicts >= MAX_ROUNDS {
                cache.put(case, held);
                return Err(Failure::Retry(format!(
                    "case {case} kept changing under {MAX_ROUNDS} decisions in a row"
                )));
            }
            held = match cache.load_past(log, case, held).await {
                Ok(h) => h,
                Err(e) => return Err(e.into()),
            };
            continue;
        }
        conflicts = 0;
        let a = landed.expect("a decision with events landed them");
        out.rounds.push(Round {
            effects: if a.own { decision.effects } else { Vec::new() },
            appended: Some(a),
        });
        if rounds == Rounds::Once {
            break;
        }
    }
    out.head = held.head.clone();
    cache.put(case, held);
    Ok(out)
}

const PARKED: TableDefinition<&str, &str> = TableDefinition::new("parked_cases");

/// Parked cases, in the service's redb (with an in-memory set of their keys,
/// so clearing after every successful reconcile costs nothing when the case
/// was not parked).
#[derive(Debug, Clone)]
pub struct Parked {
    db: Arc<redb::Database>,
    service: &'static str,
    keys: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Parked {
    /// The parked-case record of `service` in `db`.
    pub fn new(db: Arc<redb::Database>, service: &'static str) -> Self {
        let keys = {
            let tx = db.begin_read().expect("redb read");
            match tx.open_table(PARKED) {
                Ok(t) => t
                    .iter()
                    .expect("iter")
                    .filter_map(|r| r.ok())
                    .map(|(k, _)| k.value().to_owned())
                    .collect(),
                Err(_) => Default::default(),
            }
        };
        Self {
            db,
            service,
            keys: Arc::new(Mutex::new(keys)),
        }
    }

    /// Writes (or with `None` removes) the record of `case`; returns whether
    /// the case was not parked before.
    async fn write(&self, case: &CaseKey, reason: Option<String>) -> bool {
        let db = self.db.clone();
        let key = case.to_string();
        let newly = {
            let mut keys = self.keys.lock().expect("parked keys");
            if reason.is_some() {
                keys.insert(key.clone())
            } else if !keys.remove(&key) {
                return false;
            } else {
                false
            }
        };
        crate::store::blocking(move || {
            let tx = db.begin_write().expect("redb write");
            {
                let mut t = tx.open_table(PARKED).expect("parked table");
                match reason {
                    Some(r) => {
                        let rec = serde_json::json!({ "reason": r, "at": chrono::Utc::now().to_rfc3339() });
                        t.insert(key.as_str(), rec.to_string().as_str()).expect("insert");
                    }
                    None => {
                        t.remove(key.as_str()).expect("remove");
                    }
                }
            }
            crate::store::commit(tx);
        })
        .await;
        newly
    }

    /// Records `case` as parked. The error log line and
    /// `casework_cases_parked_total` count a case once, when it becomes
    /// parked; parking it again (another wake-up of the same case) only
    /// updates the record's reason.
    /// Returns whether the case became parked now.
    pub async fn park(&self, case: &CaseKey, reason: &str) -> bool {
        let newly = self.write(case, Some(reason.to_owned())).await;
        if newly {
            tracing::error!(service = self.service, case = %case, reason, "case parked: it cannot be decided");
            metrics::counter!("casework_cases_parked_total", "service" => self.service)
                .increment(1);
        } else {
            tracing::debug!(service = self.service, case = %case, reason, "case still parked");
        }
        newly
    }

    /// Clears `case` (it was decided again successfully); free when the
    /// case was not parked.
    pub async fn clear(&self, case: &CaseKey) {
        self.write(case, None).await;
    }

    /// Whether `case` is parked.
    pub fn is_parked(&self, case: &CaseKey) -> bool {
        self.keys
            .lock()
            .expect("parked keys")
            .contains(&case.to_string())
    }

    /// Every parked case with its record (JSON).
    pub async fn list(&self) -> Vec<(String, String)> {
        let db = self.db.clone();
        crate::store::blocking(move || {
            let tx = db.begin_read().expect("redb read");
            let Ok(t) = tx.open_table(PARKED) else {
                return Vec::new();
            };
            t.iter()
                .expect("iter")
                .filter_map(|r| r.ok())
                .map(|(k, v)| (k.value().to_owned(), v.value().to_owned()))
                .collect()
        })
        .await
    }
}

/// Serialises work on one case within this process.
#[derive(Debug, Default, Clone)]
struct CaseLocks(Arc<Mutex<HashMap<CaseKey, Arc<tokio::sync::Mutex<()>>>>>);

impl CaseLocks {
    /// The locks of `service` in this process (shared by its case and
    /// timer loops, its API and its handlers' reports, so they never work
    /// on one case at once).
    fn of(service: &'static str) -> CaseLocks {
        static ALL: std::sync::OnceLock<Mutex<HashMap<&'static str, CaseLocks>>> =
            std::sync::OnceLock::new();
        ALL.get_or_init(Default::default)
            .lock()
            .expect("case locks registry")
            .entry(service)
            .or_default()
            .clone()
    }

    fn get(&self, case: &CaseKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.0.lock().expect("case locks");
        if m.len() > 10_000 {
            m.retain(|_, l| Arc::strong_count(l) > 1);
        }
        m.entry(case.clone()).or_default().clone()
    }
}

/// Takes `service`'s lock on `case` in this process: every path that
/// decides on a case (the loops, API writes, handler reports) holds it
/// while it uses the case's held state ([`CaseCache`]).
pub async fn lock_case(service: &'static str, case: &CaseKey) -> tokio::sync::OwnedMutexGuard<()> {
    CaseLocks::of(service).get(case).lock_owned().await
}

/// How a loop runs.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// The service, for logs and metrics.
    pub service: &'static str,
    /// Durable consumer name (shared by the service's replicas).
    pub durable: String,
    /// Subject filters of the case-log loop: the events that can change
    /// the service's decisions (the timer loop always uses its writer's
    /// fire filter and ignores this).
    pub filters: Vec<String>,
    /// Cases reconciled at once.
    pub concurrency: usize,
}

#[derive(Debug, Clone, Copy)]
enum Ack {
    Ok,
    Retry(Duration),
}

async fn handle(
    reconciler: &Arc<dyn Reconciler>,
    parked: &Option<Parked>,
    case: &CaseKey,
    woke: &[StoredEvent],
    delivered: u64,
    traceparent: Option<&str>,
    service: &'static str,
) -> Ack {
    let started = std::time::Instant::now();
    // The reconcile continues the trace of the event (or timer) that woke it.
    let span =
        tracing::info_span!("reconcile", service, case = %case, delivered, woke = woke.len());
    casework_telemetry::set_remote_parent(&span, traceparent);
    let outcome = tracing::Instrument::instrument(reconciler.reconcile(case, woke), span).await;
    metrics::histogram!("casework_reconcile_seconds", "service" => service)
        .record(started.elapsed().as_secs_f64());
    match outcome {
        Ok(()) => {
            if let Some(p) = parked {
                p.clear(case).await;
            }
            Ack::Ok
        }
        Err(Failure::Park(reason)) => {
            if let Some(p) = parked {
                p.park(case, &reason).await;
            } else {
                tracing::error!(service, case = %case, reason, "case cannot be decided");
            }
            Ack::Ok
        }
        Err(Failure::Retry(reason)) => {
            let backoff = Duration::from_millis((200u64 << delivered.min(6)).min(10_000));
            tracing::warn!(service, case = %case, reason, ?backoff, "reconcile failed; will retry");
            Ack::Retry(backoff)
        }
    }
}

/// One wake-up of a case, from whichever source: what to reconcile, the
/// event delivered (none for a timer), and how to settle the message that
/// woke it.
struct Wake {
    case: CaseKey,
    event: Option<StoredEvent>,
    delivered: u64,
    traceparent: Option<String>,
    settle: Box<dyn FnOnce(Ack) -> futures::future::BoxFuture<'static, ()> + Send>,
}

/// Wake-ups waiting for a case that is being reconciled (the case is a key
/// while its worker runs): like a Kubernetes workqueue, a burst of
/// wake-ups for one case costs one more reconcile, which settles them all.
type Waiting = Arc<Mutex<HashMap<CaseKey, Vec<Wake>>>>;

/// Reconciles `first`'s case, then once more for every burst of wake-ups
/// that arrived meanwhile, settling each wake-up after the reconcile that
/// covered it.
async fn work_on(
    first: Wake,
    waiting: Waiting,
    reconciler: Arc<dyn Reconciler>,
    parked: Option<Parked>,
    service: &'static str,
) {
    let case = first.case.clone();
    let _guard = lock_case(service, &case).await;
    let mut batch = vec![first];
    loop {
        let woke: Vec<StoredEvent> = batch.iter().filter_map(|w| w.event.clone()).collect();
        let delivered = batch.iter().map(|w| w.delivered).max().unwrap_or(1);
        let traceparent = batch.iter().rev().find_map(|w| w.traceparent.clone());
        if batch.len() > 1 {
            metrics::counter!("casework_wakeups_coalesced_total", "service" => service)
                .increment(batch.len() as u64 - 1);
        }
        let ack = handle(
            &reconciler,
            &parked,
            &case,
            &woke,
            delivered,
            traceparent.as_deref(),
            service,
        )
        .await;
        for w in batch {
            (w.settle)(ack).await;
        }
        let mut q = waiting.lock().expect("waiting wake-ups");
        match q.get_mut(&case) {
            Some(more) if !more.is_empty() => batch = std::mem::take(more),
            _ => {
                q.remove(&case);
                return;
            }
        }
    }
}

/// Drives `wakes` until `shutdown`: at most `cfg.concurrency` cases at once,
/// one reconcile at a time per case (within this process, across the
/// service's loops and API), wake-ups for a case being reconciled coalesced
/// into its next reconcile; on shutdown it stops taking work and finishes
/// what is in flight.
async fn drive(
    mut wakes: futures::stream::BoxStream<'static, anyhow::Result<Option<Wake>>>,
    reconciler: Arc<dyn Reconciler>,
    cfg: LoopConfig,
    parked: Option<Parked>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let waiting: Waiting = Arc::default();
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            n = wakes.next() => n,
        };
        let wake = match next {
            Some(Ok(Some(w))) => w,
            Some(Ok(None)) => continue,
            Some(Err(e)) => {
                tracing::warn!(service = cfg.service, error = %e, "consumer error; continuing");
                continue;
            }
            None => break,
        };
        {
            let mut q = waiting.lock().expect("waiting wake-ups");
            if let Some(more) = q.get_mut(&wake.case) {
                more.push(wake);
                continue;
            }
            q.insert(wake.case.clone(), Vec::new());
        }
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                // Not taken: it comes again after its ack wait.
                waiting.lock().expect("waiting wake-ups").remove(&wake.case);
                break;
            }
            p = permits.clone().acquire_owned() => p?,
        };
        let (reconciler, parked, waiting) = (reconciler.clone(), parked.clone(), waiting.clone());
        let service = cfg.service;
        tokio::spawn(async move {
            let _permit = permit;
            work_on(wake, waiting, reconciler, parked, service).await;
        });
    }
    // Finish in-flight work before returning.
    let _ = permits.acquire_many(cfg.concurrency.max(1) as u32).await;
    Ok(())
}

/// Opens a loop's consumer, asking again with a backoff while the broker
/// does not answer or is not ready (a restart during start, a cluster
/// electing leaders): a service does not stop because its broker blinked.
/// A refusal that waiting cannot fix (a consumer with other filters, no
/// permission) is returned. `None`: shutdown came first.
async fn until_ready<T, F, Fut>(
    service: &'static str,
    durable: &str,
    shutdown: &Shutdown,
    mut open: F,
) -> anyhow::Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LogError>>,
{
    let mut pause = Duration::from_millis(200);
    let started = std::time::Instant::now();
    loop {
        match open().await {
            Ok(t) => return Ok(Some(t)),
            Err(
                e @ (LogError::Rejected { .. } | LogError::Misuse(_) | LogError::Forbidden { .. }),
            ) if e.broker_trouble().is_none() => {
                return Err(e.into());
            }
            Err(e) => {
                // A request the user may not make is not answered: waiting
                // cannot fix the credentials.
                if let Some(violation) =
                    casework_caselog::jetstream::permission_violation_since(started)
                {
                    return Err(LogError::Denied {
                        what: format!("{service}'s consumer {durable}"),
                        violation,
                    }
                    .into());
                }
                tracing::warn!(service, consumer = durable, error = %e, ?pause, "consumer not ready; asking again");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs the case-log loop until `shutdown`: every delivery matching `cfg.filters`
/// wakes its case.
pub async fn run_case_loop(
    log: Arc<dyn CaseLog>,
    reconciler: Arc<dyn Reconciler>,
    cfg: LoopConfig,
    parked: Option<Parked>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let service = cfg.service;
    let deliveries = match until_ready(service, &cfg.durable, &shutdown, || {
        log.consume(&cfg.durable, &cfg.filters)
    })
    .await?
    {
        Some(d) => d,
        None => return Ok(()),
    };
    let wakes = deliveries.then(move |d| async move {
        let d = d?;
        let case = match d.case() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(service, subject = %d.subject, error = %e, "delivery with a foreign subject; skipped");
                let _ = d.ack().await;
                return Ok(None);
            }
        };
        Ok(Some(Wake {
            case,
            event: d.decode().ok(),
            delivered: d.delivered,
            traceparent: d.traceparent.clone(),
            settle: Box::new(move |ack| {
                Box::pin(async move {
                    let _ = match ack {
                        Ack::Ok => d.ack().await,
                        Ack::Retry(delay) => d.nak(Some(delay)).await,
                    };
                })
            }),
        }))
    });
    drive(Box::pin(wakes), reconciler, cfg, parked, shutdown).await
}

/// Runs the timer loop until `shutdown`: every fire of this writer's timers
/// wakes its case.
pub async fn run_timer_loop(
    client: async_nats::Client,
    timers: Timers,
    reconciler: Arc<dyn Reconciler>,
    cfg: LoopConfig,
    parked: Option<Parked>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let js = jetstream::new(client);
    let service = cfg.service;
    let open = || async {
        let stream = js
            .get_stream_no_info(casework_caselog::TIMERS_STREAM)
            .await
            .map_err(|e| LogError::Nats(format!("timers stream: {e}")))?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &cfg.durable,
                jetstream::consumer::pull::Config {
                    durable_name: Some(cfg.durable.clone()),
                    filter_subject: timers.fire_filter(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| LogError::Nats(format!("timer consumer {}: {e}", cfg.durable)))?;
        consumer
            .messages()
            .await
            .map_err(|e| LogError::Nats(format!("timer consumer {}: {e}", cfg.durable)))
    };
    let Some(messages) = until_ready(service, &cfg.durable, &shutdown, open).await? else {
        return Ok(());
    };
    let wakes = messages.then(move |m| {
        let timers = timers.clone();
        async move {
            let m = m?;
            let Some(fire) = timers.parse_fire(&m.subject) else {
                let _ = m.ack().await;
                return Ok(None);
            };
            if !timers.scheduled_by_us(&m.subject, m.headers.as_ref()) {
                let by = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Scheduler"))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                tracing::error!(service, subject = %m.subject, scheduler = %by, "a timer fire scheduled by someone else; ignored");
                metrics::counter!("casework_timers_refused_total", "service" => service).increment(1);
                let _ = m.ack().await;
                return Ok(None);
            }
            if Timers::is_cancellation(m.headers.as_ref()) {
                // A closed case's timer, removed: nothing to wake.
                let _ = m.ack().await;
                return Ok(None);
            }
            metrics::counter!("casework_timers_fired_total", "service" => service, "kind" => fire.kind.clone())
                .increment(1);
            let delivered = m.info().map(|i| i.delivered.max(1) as u64).unwrap_or(1);
            let traceparent = m
                .headers
                .as_ref()
                .and_then(|h| h.get("traceparent"))
                .map(|v| v.as_str().to_owned());
            Ok(Some(Wake {
                case: fire.case,
                event: None,
                delivered,
                traceparent,
                settle: Box::new(move |ack| {
                    Box::pin(async move {
                        let _ = match ack {
                            Ack::Ok => m.ack().await,
                            Ack::Retry(delay) => m.ack_with(jetstream::AckKind::Nak(Some(delay))).await,
                        };
                    })
                }),
            }))
        }
    });
    drive(Box::pin(wakes), reconciler, cfg, parked, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_case_is_counted_parked_once_however_often_it_is_parked() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(redb::Database::create(dir.path().join("s.redb")).unwrap());
        let parked = Parked::new(db.clone(), "test");
        let case = CaseKey::parse("acme", "01JD8X3V5R6M2Q4T7W9Y0Z1A2B").unwrap();
        assert!(parked.park(&case, "first wake-up").await);
        assert!(!parked.park(&case, "second wake-up").await);
        assert_eq!(parked.list().await.len(), 1);
        assert!(
            parked.list().await[0].1.contains("second wake-up"),
            "the record keeps the latest reason"
        );
        // A restart knows it is parked already.
        let again = Parked::new(db, "test");
        assert!(!again.park(&case, "after a restart").await);
        again.clear(&case).await;
        assert!(again.list().await.is_empty());
        assert!(again.park(&case, "parked anew").await);
    }
}
