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
use casework_caselog::{Appended, CaseKey, CaseLog, Error as LogError, StoredEvent};
use futures::StreamExt;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::Semaphore;

use crate::Shutdown;
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
    /// Brings `case` in line with its log.
    async fn reconcile(&self, case: &CaseKey) -> Result<(), Failure>;
}

/// What a pure decide function returns: events to append, then effects to
/// perform once they are committed.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<E> {
    /// Events to append atomically (none: nothing to record).
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

/// The outcome of [`decide_and_append`].
#[derive(Debug, Clone)]
pub struct Decided<E> {
    /// The effects of the decision that was committed (or of the no-op
    /// decision).
    pub effects: Vec<E>,
    /// Where the events landed, if there were any.
    pub appended: Option<Appended>,
    /// The log the decision was taken on.
    pub log: Vec<StoredEvent>,
}

/// Most decide-append rounds before a conflict counts as transient.
const MAX_ROUNDS: usize = 8;

/// Loads `case`, decides with `decide`, appends; on a conflict, reloads and
/// decides again. `decide` errors park the case.
pub async fn decide_and_append<E, F>(
    log: &dyn CaseLog,
    case: &CaseKey,
    mut decide: F,
) -> Result<Decided<E>, Failure>
where
    F: FnMut(&[StoredEvent]) -> Result<Decision<E>, String> + Send,
    E: Send,
{
    for _ in 0..MAX_ROUNDS {
        let events = log.read(case, 0).await?;
        let decision = decide(&events).map_err(Failure::Park)?;
        if decision.events.is_empty() {
            return Ok(Decided {
                effects: decision.effects,
                appended: None,
                log: events,
            });
        }
        let head = events.last().map(StoredEvent::head);
        let traceparent = casework_telemetry::current_traceparent();
        match log
            .append_traced(case, head.as_ref(), decision.events, traceparent.as_deref())
            .await
        {
            Ok(a) => {
                return Ok(Decided {
                    effects: decision.effects,
                    appended: Some(a),
                    log: events,
                });
            }
            Err(e) if e.is_conflict() => {
                metrics::counter!("casework_append_conflicts_total").increment(1);
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Failure::Retry(format!(
        "case {case} kept changing under {MAX_ROUNDS} decisions in a row"
    )))
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

    async fn write(&self, case: &CaseKey, reason: Option<String>) {
        let db = self.db.clone();
        let key = case.to_string();
        {
            let mut keys = self.keys.lock().expect("parked keys");
            if reason.is_some() {
                keys.insert(key.clone());
            } else if !keys.remove(&key) {
                return;
            }
        }
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
    }

    /// Records `case` as parked.
    pub async fn park(&self, case: &CaseKey, reason: &str) {
        tracing::error!(service = self.service, case = %case, reason, "case parked: it cannot be decided");
        metrics::counter!("casework_cases_parked_total", "service" => self.service).increment(1);
        self.write(case, Some(reason.to_owned())).await;
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
    /// The locks of `service`'s loops in this process (shared by its case
    /// and timer loops, so they never reconcile one case at once).
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

enum Ack {
    Ok,
    Retry(Duration),
}

async fn handle(
    reconciler: &Arc<dyn Reconciler>,
    parked: &Option<Parked>,
    locks: &CaseLocks,
    case: &CaseKey,
    delivered: u64,
    traceparent: Option<&str>,
    service: &'static str,
) -> Ack {
    let lock = locks.get(case);
    let _guard = lock.lock().await;
    let started = std::time::Instant::now();
    // The reconcile continues the trace of the event (or timer) that woke it.
    let span = tracing::info_span!("reconcile", service, case = %case, delivered);
    casework_telemetry::set_remote_parent(&span, traceparent);
    let outcome = tracing::Instrument::instrument(reconciler.reconcile(case), span).await;
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

/// One wake-up of a case, from whichever source: what to reconcile, and how
/// to settle the message that woke it.
struct Wake {
    case: CaseKey,
    delivered: u64,
    traceparent: Option<String>,
    settle: Box<dyn FnOnce(Ack) -> futures::future::BoxFuture<'static, ()> + Send>,
}

/// Drives `wakes` until `shutdown`: at most `cfg.concurrency` cases at once,
/// one at a time per case (within this process, across the service's
/// loops), settling each wake-up after its reconcile; on shutdown it stops
/// taking work and finishes what is in flight.
async fn drive(
    mut wakes: futures::stream::BoxStream<'static, anyhow::Result<Option<Wake>>>,
    reconciler: Arc<dyn Reconciler>,
    cfg: LoopConfig,
    parked: Option<Parked>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let locks = CaseLocks::of(cfg.service);
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p?,
        };
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
        let (reconciler, parked, locks) = (reconciler.clone(), parked.clone(), locks.clone());
        let service = cfg.service;
        tokio::spawn(async move {
            let _permit = permit;
            let ack = handle(
                &reconciler,
                &parked,
                &locks,
                &wake.case,
                wake.delivered,
                wake.traceparent.as_deref(),
                service,
            )
            .await;
            (wake.settle)(ack).await;
        });
    }
    // Finish in-flight work before returning.
    let _ = permits.acquire_many(cfg.concurrency.max(1) as u32).await;
    Ok(())
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
    let deliveries = log.consume(&cfg.durable, &cfg.filters).await?;
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
    let stream = js
        .get_stream_no_info(casework_caselog::TIMERS_STREAM)
        .await
        .map_err(|e| anyhow::anyhow!("timers stream: {e}"))?;
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
        .map_err(|e| anyhow::anyhow!("timer consumer {}: {e}", cfg.durable))?;
    let service = cfg.service;
    let messages = consumer.messages().await?;
    let wakes = messages.then(move |m| {
        let timers = timers.clone();
        async move {
            let m = m?;
            let Some(fire) = timers.parse_fire(&m.subject) else {
                let _ = m.ack().await;
                return Ok(None);
            };
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
