//! `casework-recovery` is the service-recovery service (DESIGN.md §1): it
//! watches every case's log for a fulfilment run that failed for good, a
//! promise whose deadline passed without `promise_kept` (one durable timer
//! per promise), and feedback at or below the policy's threshold, and runs
//! the service's recovery ladder from the catalogue — apology, compensation
//! (a person approves it above the automatic limit or beyond the tenant's
//! daily budget, through the gRPC API), retry, escalation — ending each
//! recovery with `recovery_completed` and its outcome. It writes only
//! recovery's events, never calls another service, and keeps nothing that
//! cannot be rebuilt from the log. The rules (the kept-versus-broken race,
//! queuing of triggers, the outcome rule) are written in [`decide`].
//!
//! Layout:
//! - `projection` — recovery's pure fold of a case's events, also its held
//!   state (`Fold`);
//! - `decide` — the pure rules: `decide(projection, now, service, budget)`;
//! - `reconciler` — held state → decide → append (one event per append) →
//!   effects (deadline timers, metrics), woken by the case consumers, the
//!   timer loop and the views feed;
//! - `views` + `tables` — redb read models (daily budget, open recoveries,
//!   pending approvals) fed by a tail of recovery's own events;
//! - `api` — the gRPC service `casework.recovery.v1.Recovery`;
//! - `error` — the one error type and its mapping to gRPC status codes.
//!
//! Wake-ups: one durable consumer shared by all replicas,
//! `recovery-triggers`, filtered to the six event types that can change a
//! decision ([`WAKE_FILTERS`]: a promise, feedback, a withdrawal, a
//! closing, a kept promise, a failure) — so a case wakes recovery once when
//! it opens, not for every step, and recovery's own events do not wake it
//! again; the durable timer consumer
//! `recovery-timers` (deadline fires); and the views feed for a person's
//! decision on a compensation (plus a sweep of open recoveries at start).
//!
//! State is held, not re-read (DESIGN.md §2): each active case's
//! projection and head stay in one bounded cache (`cache_cases`) shared by
//! the loops, the views-feed wake-ups and the API, all of which work on a
//! case under the runtime's per-case lock (`lock_case("recovery", …)`). A
//! delivered event that continues the held head is folded without a read;
//! a timer fire or an API call reads only what follows the head (a timer
//! fire on a closed case with no open recovery reads nothing); a miss reads
//! the case whole once. A case's deadline timer is removed when the case
//! closes; a fire that raced the removal costs no read.
//!
//! Metrics: `casework_promises_broken_total`,
//! `casework_recoveries_total{trigger,outcome}`,
//! `casework_compensation_granted_minor_total{currency}`, plus the
//! runtime's reconcile, timer and case-cache metrics
//! (`casework_cases_held`, `casework_case_cache_total{outcome}`).

pub mod api;
pub mod decide;
pub mod error;
pub mod projection;
pub mod reconciler;
pub mod tables;
pub mod views;

use std::sync::Arc;

use casework_caselog::{CaseLog, domain::Writer};
use casework_proto::recovery::v1::recovery_server::RecoveryServer;
use casework_runtime::held::CaseCache;
use casework_runtime::http::Readiness;
use casework_runtime::reconcile::{
    LoopConfig, Parked, Reconciler, lock_case, run_case_loop, run_timer_loop,
};
use casework_runtime::timers::Timers;
pub use casework_runtime::{Options, Running, Shutdown, Validate};
use serde::{Deserialize, Serialize};

pub use error::{Error, Result};

/// The recovery service's own settings (`[service]` in the options file,
/// `CASEWORK_SERVICE__*` in the environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoverySettings {
    /// Cases reconciled at once by each case consumer.
    pub concurrency: usize,
    /// Timer fires handled at once.
    pub timer_concurrency: usize,
    /// Page size of listings when the request gives none.
    pub default_page_size: u32,
    /// Largest page a listing returns.
    pub max_page_size: u32,
    /// Cases whose folded projection this replica holds in memory, shared
    /// by the reconcile loops and the API (least recently used evicted
    /// first; an evicted case is read whole once when next needed). About
    /// 2 KiB per case.
    pub cache_cases: usize,
}

impl Default for RecoverySettings {
    fn default() -> Self {
        Self {
            concurrency: 32,
            timer_concurrency: 64,
            default_page_size: 100,
            max_page_size: 1000,
            cache_cases: 10_000,
        }
    }
}

impl Validate for RecoverySettings {
    fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.concurrency == 0 || self.concurrency > 4096 {
            p.push(format!(
                "concurrency: {} must be between 1 and 4096",
                self.concurrency
            ));
        }
        if self.timer_concurrency == 0 || self.timer_concurrency > 4096 {
            p.push(format!(
                "timer_concurrency: {} must be between 1 and 4096",
                self.timer_concurrency
            ));
        }
        if self.cache_cases == 0 || self.cache_cases > 10_000_000 {
            p.push(format!(
                "cache_cases: {} must be between 1 and 10000000",
                self.cache_cases
            ));
        }
        if self.max_page_size == 0 {
            p.push("max_page_size: must be above 0".into());
        }
        if self.default_page_size == 0 || self.default_page_size > self.max_page_size {
            p.push(format!(
                "default_page_size: {} must be between 1 and max_page_size ({})",
                self.default_page_size, self.max_page_size
            ));
        }
        p
    }
}

/// The recovery service's options.
pub type ServiceOptions = Options<RecoverySettings>;

/// Defaults: gRPC on 127.0.0.1:50053, HTTP on 127.0.0.1:8083.
pub fn default_options() -> ServiceOptions {
    Options::defaults("recovery", 50053, 8083)
}

/// The service's name in logs, metrics and the runtime's per-case locks
/// (every path that decides on a case takes `lock_case(SERVICE, case)`).
pub const SERVICE: &str = "recovery";

/// The durable consumer that wakes recovery on a case's changes.
pub const TRIGGERS_CONSUMER: &str = casework_caselog::permissions::RECOVERY_TRIGGERS;

/// The events that can change one of recovery's decisions; no other event
/// wakes it. A new trigger or guard in [`decide`] needs its event here.
pub const WAKE_FILTERS: [&str; 6] = [
    "case.*.*.intake.promise_made",
    "case.*.*.intake.feedback_received",
    "case.*.*.intake.case_withdrawn",
    "case.*.*.intake.case_closed",
    "case.*.*.fulfilment.promise_kept",
    "case.*.*.fulfilment.fulfilment_failed",
];

/// Connects, binds gRPC and HTTP, starts the views feed and (once it has
/// caught up, so the daily budget is right) the reconcile loops; returns at
/// once.
pub async fn start(options: ServiceOptions, shutdown: Shutdown) -> anyhow::Result<Running> {
    let problems = options.problems();
    anyhow::ensure!(problems.is_empty(), "bad options: {}", problems.join("; "));
    let catalogs = Arc::new(casework_runtime::load_catalogs(&options.catalog)?);
    let client = casework_runtime::nats::connect(&options.nats, &options.instance).await?;
    let log: Arc<dyn CaseLog> = Arc::new(casework_runtime::nats::log(
        &client,
        &options.nats,
        &options.instance,
        Some(Writer::Recovery),
    ));
    let db = casework_runtime::store::open_checked(
        &options.data_dir,
        SERVICE,
        &options.store,
        casework_runtime::store::Damaged::Rebuildable,
    )?;
    let views = {
        let db = db.clone();
        casework_runtime::store::blocking(move || views::Views::open(db)).await?
    };
    let parked = Parked::new(db.clone(), SERVICE);
    let timers = Timers::new(client.clone(), Writer::Recovery);
    let cache = Arc::new(CaseCache::new(SERVICE, options.service.cache_cases));
    let reconciler = Arc::new(reconciler::RecoveryReconciler::new(
        log.clone(),
        catalogs.clone(),
        timers.clone(),
        views.clone(),
        cache,
    ));

    let readiness = Readiness::default();
    readiness.set("views caught up", false);
    casework_runtime::nats::watch_connection(client.clone(), readiness.clone(), shutdown.clone());
    let http =
        casework_runtime::http::serve(options.http_listen, readiness.clone(), shutdown.clone())
            .await?;
    let api = api::RecoveryApi {
        log: log.clone(),
        views: views.clone(),
        parked: parked.clone(),
        catalogs: catalogs.clone(),
        reconciler: reconciler.clone(),
        default_page_size: options.service.default_page_size,
        max_page_size: options.service.max_page_size,
    };
    let server = casework_runtime::grpc::GrpcServer::new()
        .tls(&options.tls)?
        .auth("recovery", &options.auth);
    server
        .health
        .set_serving::<RecoveryServer<api::RecoveryApi>>()
        .await;
    let serving = server
        .add_service(RecoveryServer::new(api))
        .serve(options.grpc_listen, shutdown.clone())
        .await?;
    let grpc = serving.addr;

    let settings = options.service.clone();
    let done = tokio::spawn(async move {
        // A fatal error in any task stops the others.
        let stop = shutdown.child_token();
        let mut tasks = tokio::task::JoinSet::new();
        let (caught_up_tx, mut caught_up) = tokio::sync::watch::channel(false);
        let (wake_tx, mut wake_rx) = tokio::sync::mpsc::channel(1024);
        tasks.spawn(views::run_feed(
            client.clone(),
            options.instance.clone(),
            views.clone(),
            caught_up_tx,
            wake_tx.clone(),
            stop.clone(),
        ));
        // Person decisions (and the start-up sweep) wake their case here.
        {
            let (reconciler, stop) = (reconciler.clone(), stop.clone());
            tasks.spawn(async move {
                loop {
                    let case = tokio::select! {
                        biased;
                        _ = stop.cancelled() => return Ok(()),
                        c = wake_rx.recv() => match c { Some(c) => c, None => return Ok(()) },
                    };
                    // The same per-case lock as the loops and the API.
                    let _guard = lock_case(SERVICE, &case).await;
                    if let Err(e) = reconciler.reconcile(&case, &[]).await {
                        tracing::warn!(case = %case, error = ?e, "wake-up reconcile failed; the case's next change retries it");
                    }
                }
            });
        }
        // The loops start once the budget view has caught up.
        let ready = tokio::select! {
            _ = stop.cancelled() => false,
            r = caught_up.wait_for(|c| *c) => r.is_ok(),
        };
        if ready {
            readiness.set("views caught up", true);
            let r: Arc<dyn Reconciler> = reconciler.clone();
            tasks.spawn(run_case_loop(
                log.clone(),
                r.clone(),
                LoopConfig {
                    service: SERVICE,
                    durable: TRIGGERS_CONSUMER.to_owned(),
                    filters: WAKE_FILTERS.iter().map(|f| (*f).to_owned()).collect(),
                    concurrency: settings.concurrency,
                },
                Some(parked.clone()),
                stop.clone(),
            ));
            tasks.spawn(run_timer_loop(
                client.clone(),
                timers,
                r,
                LoopConfig {
                    service: SERVICE,
                    durable: casework_caselog::permissions::RECOVERY_TIMERS.to_owned(),
                    filters: Vec::new(),
                    concurrency: settings.timer_concurrency,
                },
                Some(parked),
                stop.clone(),
            ));
            // Start-up sweep: continue every open recovery (a decision may
            // have been taken by a replica that stopped before acting on it).
            let sweep = {
                let v = views.clone();
                casework_runtime::store::blocking(move || v.cases_with_open_recoveries()).await
            };
            match sweep {
                Ok(cases) => {
                    tasks.spawn(async move {
                        for c in cases {
                            if wake_tx.send(c).await.is_err() {
                                break;
                            }
                        }
                        Ok(())
                    });
                }
                Err(e) => tracing::warn!(error = %e, "start-up sweep of open recoveries failed"),
            }
        }
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            let r = joined
                .map_err(|e| anyhow::anyhow!("recovery task failed: {e}"))
                .and_then(|r| r);
            if let Err(e) = r {
                tracing::error!(error = %e, "recovery stopping");
                if result.is_ok() {
                    result = Err(e);
                }
                stop.cancel();
            }
        }
        // On shutdown, in-flight calls finish before the connection they
        // append on goes (after a fatal error the process is ending anyway).
        if shutdown.is_cancelled() {
            serving.drained(casework_runtime::grpc::DRAIN_GRACE).await;
        }
        let _ = client.drain().await;
        result
    });
    Ok(Running { grpc, http, done })
}

/// Runs the service until `shutdown` (or a fatal error).
pub async fn run(options: ServiceOptions, shutdown: Shutdown) -> anyhow::Result<()> {
    start(options, shutdown).await?.wait().await
}
