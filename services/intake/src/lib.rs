//! `casework-intake` is the front stage (DESIGN.md §1): it takes customers'
//! requests over gRPC (`casework.intake.v1.Intake`), opens cases and makes
//! their promise (`case_opened`, then `promise_made`: one event per append,
//! the deadline from the current service catalogue, counted from the
//! opening; a case found opened without its promise gets it from the
//! closer), records interactions, feedback and withdrawals, and closes the
//! loop: when a case's outcome is settled it tells the customer and closes
//! the case (`customer_notified`, then `case_closed`). Decisions are taken
//! on the case's state held in memory (shared by the API and the closer,
//! under the case's lock) and brought up to date with the log before each
//! one. It serves GetCase and ListCases from its own redb read model,
//! rebuilt from the log when the data directory is empty. It must not call
//! another service, write another writer's events, or decide from its read
//! model: decisions are taken on the case's log.
//!
//! Layout: `validate` (pure request checks, one error per field), `decide`
//! (pure: [`decide::CaseView`], opening, requests, [`decide::decide_close`]),
//! `api` (the gRPC service), `closer` (the closing reconciler), `readmodel`
//! (projection, redb queries, the tail that feeds it), `tables` (every redb
//! table), `error` (the one error enum and its gRPC mapping).
//!
//! Decisions recorded here because DESIGN.md is silent on them:
//! - Idempotency of OpenCase is forever: the case id derives from tenant +
//!   key and the first append expects an empty log, so a retry conflicts and
//!   is answered from the case's own events; the same key with another body
//!   (customer, channel, stage, service, summary, attributes) is
//!   ALREADY_EXISTS.
//! - RecordInteraction, SubmitFeedback and WithdrawCase take an optional
//!   `request_id`; the event id derives from it, and a retry finds the
//!   recorded event in the case's log (also after the duplicate window).
//! - Interactions are refused on a closed case, feedback on a withdrawn
//!   case, withdrawal on a closed, withdrawn or already kept case.
//! - Read-your-writes: a writer waits (bounded by
//!   `service.read_your_writes_timeout_ms`) until this replica's read model
//!   has applied its append, else applies the case itself; GetCase of a
//!   case the read model does not know reads the log before answering
//!   NOT_FOUND, so a case opened on another replica is visible at once.
//! - `breached` is evaluated at read time; the clock stops when the case
//!   closes (a case withdrawn before its deadline is never breached).

pub mod api;
pub mod closer;
pub mod decide;
pub mod error;
pub mod readmodel;
pub mod tables;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use casework_caselog::CaseLog;
use casework_domain::Writer;
use casework_proto::intake::v1::intake_server::IntakeServer;
use casework_runtime::grpc::GrpcServer;
use casework_runtime::held::CaseCache;
use casework_runtime::http::{self, Readiness};
use casework_runtime::reconcile::{LoopConfig, Parked, run_case_loop};
use casework_runtime::{Options, Validate, load_catalogs, nats, store};
use serde::{Deserialize, Serialize};

pub use casework_proto::intake::v1 as proto;
pub use casework_runtime::{Running, Shutdown};
pub use error::{Error, Result};

/// The service's name: writer, NATS connection name prefix, durable
/// consumer.
pub const SERVICE: &str = "intake";

/// Intake's own settings (`[service]` in the options file,
/// `CASEWORK_SERVICE__*` in the environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeSettings {
    /// Cases the closing reconciler works on at once.
    pub close_concurrency: usize,
    /// How long a write waits for this replica's read model to apply it
    /// before applying the case itself, in milliseconds.
    pub read_your_writes_timeout_ms: u64,
    /// Cases whose folded state this replica holds in memory (least
    /// recently used evicted first; an evicted case is read whole once
    /// when next needed). About 2 KiB per case.
    pub cache_cases: usize,
    /// Write calls (OpenCase, RecordInteraction, SubmitFeedback,
    /// WithdrawCase) a tenant may make per minute, sustained, on this
    /// replica (0: no limit); beyond it RESOURCE_EXHAUSTED with a retry
    /// hint.
    pub tenant_writes_per_minute: u32,
    /// Write calls a tenant may make at once above that rate.
    pub tenant_write_burst: u32,
    /// A case reaching this many events (and every multiple) is logged and
    /// counted as growing long.
    pub warn_events_per_case: u64,
    /// Callers may not add events to a case holding this many
    /// (FAILED_PRECONDITION: open a new case); the services' own events
    /// are still written.
    pub max_events_per_case: u64,
}

impl IntakeSettings {
    /// The limits these settings set.
    pub fn limits(&self) -> casework_runtime::limits::LimitSettings {
        casework_runtime::limits::LimitSettings {
            tenant_writes_per_minute: self.tenant_writes_per_minute,
            tenant_write_burst: self.tenant_write_burst,
            warn_events_per_case: self.warn_events_per_case,
            max_events_per_case: self.max_events_per_case,
        }
    }
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            close_concurrency: 32,
            read_your_writes_timeout_ms: 2000,
            cache_cases: 10_000,
            tenant_writes_per_minute: casework_runtime::limits::LimitSettings::default()
                .tenant_writes_per_minute,
            tenant_write_burst: casework_runtime::limits::LimitSettings::default()
                .tenant_write_burst,
            warn_events_per_case: casework_runtime::limits::LimitSettings::default()
                .warn_events_per_case,
            max_events_per_case: casework_runtime::limits::LimitSettings::default()
                .max_events_per_case,
        }
    }
}

impl Validate for IntakeSettings {
    fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.close_concurrency == 0 || self.close_concurrency > 4096 {
            p.push(format!(
                "close_concurrency: {} must be between 1 and 4096",
                self.close_concurrency
            ));
        }
        if self.read_your_writes_timeout_ms == 0 {
            p.push("read_your_writes_timeout_ms: must be above 0".to_owned());
        }
        if self.cache_cases == 0 || self.cache_cases > 10_000_000 {
            p.push(format!(
                "cache_cases: {} must be between 1 and 10000000",
                self.cache_cases
            ));
        }
        p.extend(self.limits().validate());
        p
    }
}

/// Intake's options.
pub type ServiceOptions = Options<IntakeSettings>;

/// The defaults: gRPC on 127.0.0.1:50051, HTTP on 127.0.0.1:8081, data in
/// `data/intake`, the built-in sample catalogue.
pub fn default_options() -> ServiceOptions {
    Options::defaults(SERVICE, 50051, 8081)
}

/// Starts the service: connects to NATS with its own credentials, opens
/// its redb, binds gRPC and HTTP, starts the read-model tail and the closing
/// reconciler, and returns at once. The service stops on `shutdown`, or on
/// a fatal error of one of its loops (then `done` ends with it).
pub async fn start(options: ServiceOptions, shutdown: Shutdown) -> anyhow::Result<Running> {
    let problems = options.problems();
    anyhow::ensure!(problems.is_empty(), "bad options: {}", problems.join("; "));
    let catalogs = load_catalogs(&options.catalog)?;
    let client = nats::connect(&options.nats, &options.instance).await?;
    let log: Arc<dyn CaseLog> = Arc::new(nats::log(
        &client,
        &options.nats,
        &options.instance,
        Some(Writer::Intake),
    ));
    let vault = nats::vault(
        &client,
        &options.personal_data,
        &options.data_dir,
        casework_privacy::Access::Owner,
        SERVICE,
    )?;
    let db = store::open_checked(
        &options.data_dir,
        SERVICE,
        &options.store,
        store::Damaged::Rebuildable,
    )?;
    let read_model = {
        let db = db.clone();
        store::blocking(move || readmodel::ReadModel::open(db)).await?
    };
    let readiness = Readiness::default();
    readiness.set(readmodel::READY_CONDITION, false);
    let stop = shutdown.child_token();
    nats::watch_connection(client.clone(), readiness.clone(), stop.clone());
    let http = http::serve(options.http_listen, readiness.clone(), stop.clone()).await?;

    let mut follower = tokio::spawn(readmodel::follow(
        read_model.clone(),
        log.clone(),
        readiness.clone(),
        stop.clone(),
    ));
    let cache = Arc::new(CaseCache::new(SERVICE, options.service.cache_cases));
    let mut closer = tokio::spawn(run_case_loop(
        log.clone(),
        Arc::new(closer::Closer::new(
            log.clone(),
            cache.clone(),
            catalogs.clone(),
        )),
        LoopConfig {
            service: SERVICE,
            durable: closer::CLOSER_CONSUMER.to_owned(),
            filters: closer::WAKE_FILTERS
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
            concurrency: options.service.close_concurrency,
        },
        Some(Parked::new(db, SERVICE)),
        stop.clone(),
    ));

    let service = api::IntakeApi::new(
        log,
        cache,
        catalogs,
        read_model,
        Duration::from_millis(options.service.read_your_writes_timeout_ms),
        options.service.limits(),
        vault,
    );
    let server = GrpcServer::new()
        .tls(&options.tls)?
        .auth("intake", &options.auth);
    server
        .health
        .set_serving::<IntakeServer<api::IntakeApi>>()
        .await;
    let serving = server
        .add_service(IntakeServer::new(service))
        .serve(options.grpc_listen, stop.clone())
        .await?;
    let grpc = serving.addr;
    tracing::info!(%grpc, %http, instance = %options.instance, "intake started");

    let done = tokio::spawn(async move {
        let joined = |r: Result<anyhow::Result<()>, tokio::task::JoinError>, what: &str| {
            r.map_err(|e| anyhow::anyhow!("{what} task failed: {e}"))
                .and_then(|r| r.map_err(|e| e.context(format!("{what} stopped"))))
        };
        enum First {
            Follower(anyhow::Result<()>),
            Closer(anyhow::Result<()>),
            Shutdown,
        }
        let first = tokio::select! {
            r = &mut follower => First::Follower(joined(r, "read model")),
            r = &mut closer => First::Closer(joined(r, "closing reconciler")),
            _ = stop.cancelled() => First::Shutdown,
        };
        stop.cancel();
        // One loop ended (or shutdown): wait for the one(s) still running.
        let (first, rest) = match first {
            First::Follower(r) => (r, joined(closer.await, "closing reconciler")),
            First::Closer(r) => (r, joined(follower.await, "read model")),
            First::Shutdown => (
                Ok(()),
                joined(follower.await, "read model")
                    .and(joined(closer.await, "closing reconciler")),
            ),
        };
        // In-flight calls finish before the connection they append on goes.
        serving.drained(casework_runtime::grpc::DRAIN_GRACE).await;
        let _ = client.drain().await;
        first.and(rest)
    });
    Ok(Running { grpc, http, done })
}

/// Runs the service until `shutdown` (= [`start`] + wait).
pub async fn run(options: ServiceOptions, shutdown: Shutdown) -> anyhow::Result<()> {
    start(options, shutdown).await?.wait().await
}
