//! `casework-fulfilment` is the back stage (DESIGN.md §1): on `promise_made`,
//! and on each `retry_requested` from recovery, it runs the case's workflow
//! from the catalogue version the case is pinned to — steps in order, each
//! attempt recorded as `step_started` / `step_completed` / `step_failed`,
//! retries by the step's policy (exponential back-off with jitter, a maximum
//! of attempts), a timeout per attempt — and appends `promise_kept` when
//! every step succeeded or `fulfilment_failed` when one failed for good.
//! Steps are carried out by the built-in simulator, by external workers that
//! long-poll over gRPC, or by people completing manual steps through the
//! same API. It owns only its own events (`case.*.*.fulfilment.>`), its
//! `step` timers and its redb (task leases, parked cases); it must not call
//! another service, and it never decides from the event that woke it.
//!
//! Layout: `workflow` (the pure projection of a case's log: runs, steps,
//! attempts — the state held per case), `decide` (the pure rules:
//! [`decide::decide`] and [`decide::report`]), `token` (task tokens),
//! `engine` (the held-state cache, the one reconcile path taken by
//! wake-ups and reports, the simulator, timers and the task tail), `tasks`
//! (the task board and leases), `api` (gRPC), `settings`, `error`.
//!
//! Decisions (DESIGN.md is silent on them):
//! - **Held state**: each active case's [`workflow::Workflow`] and head
//!   are kept in a bounded cache (`cache_cases`) and brought up to date
//!   from the events that woke the case or by reading only what follows
//!   the head; every path that decides on or reads a case holds its
//!   per-case lock. A stale or evicted state costs a conflict or one read,
//!   never a wrong append.
//! - **Wake-ups**: the durable consumer [`WAKE_CONSUMER`] delivers only
//!   [`WAKE_FILTERS`] — the events of other writers after which a decision
//!   may append something (`promise_made`, `retry_requested`). Fulfilment's
//!   own events do not wake it: the reconcile that appended them decides
//!   again until idle, and a report is followed at once by a reconcile on
//!   the held state (then by the `step` timer, should that fail). Clocks
//!   wake it through the `step` timer. Events that only make it decide
//!   *less* (`case_withdrawn`, `case_closed`) or change a payload
//!   (`promise_broken`: `late`) need no wake-up: every append is guarded by
//!   the head its state was folded to, so one that missed them conflicts,
//!   reloads and decides again.
//! - **Timeouts** are per attempt: `step_started.timeout_at = now +
//!   step.timeout`. One durable `step` timer per case, re-derived on every
//!   reconcile, is set at the running attempt's `timeout_at` or the failed
//!   attempt's `retry_at` (rounded up to the whole second). A report that
//!   arrives at or after `timeout_at` is refused even if the timer has not
//!   fired yet.
//! - **No attempt is run twice by us**: a simulated attempt runs only in
//!   the process that appended its `step_started`; after a crash it is not
//!   re-run — its timeout fails it (`timed_out`) and the retry policy starts
//!   attempt n+1.
//! - **Tokens** (`ft1.<tenant>.<case>.<run>.<step>.<attempt>`) carry no
//!   authority; every use is validated against the log. A report for an
//!   attempt that is no longer running is FAILED_PRECONDITION ("stale
//!   task"); the same report repeated gets the first answer (with
//!   `already_completed`) and never a second event.
//! - **Leases**: a polled task is leased to its worker for `lease_seconds`
//!   (heartbeats extend it, never past `timeout_at`) and offered again only
//!   after the lease ends. Leases are per replica (redb, survives a
//!   restart); two replicas may each hand out the same attempt once, and
//!   the log still records only the first completion.
//! - **Runs**: run n+1 starts only when run n is over without a kept
//!   promise and recovery requested more retries than runs followed; a
//!   retry requested while a run is still going is answered by the next run
//!   only if that run fails.
//! - **Parking**: a case pinned to an unknown catalogue version, digest or
//!   service, a run whose steps disagree with its catalogue, or an
//!   undecodable event is parked (redb record, `casework_cases_parked_total`)
//!   and tried again at the next start (say, once the missing catalogue is
//!   deployed) and on its next wake-up; its record is cleared when it is
//!   decided again.

pub mod api;
pub mod decide;
pub mod engine;
pub mod error;
pub mod settings;
pub mod tasks;
pub mod token;
pub mod workflow;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use casework_caselog::{CaseKey, CaseLog};
use casework_domain::Writer;
use casework_runtime::reconcile::{LoopConfig, Parked, run_case_loop, run_timer_loop};
use casework_runtime::timers::Timers;
use casework_runtime::{Options, http, nats, store};

pub use casework_runtime::{Running, Shutdown};
pub use error::{Error, Result};
pub use settings::Settings;

/// The generated gRPC API (messages, client and server), for embedders,
/// workers and the benchmark harness.
pub use casework_proto::fulfilment::v1 as proto;

/// Fulfilment's options.
pub type ServiceOptions = Options<Settings>;

/// The service name: writer, NATS user, per-case locks, metrics and redb
/// file (the consumers are [`WAKE_CONSUMER`] and `fulfilment-timers`).
pub const SERVICE: &str = "fulfilment";

/// The durable consumer that wakes fulfilment on a case's changes (shared
/// by the replicas). Named for its filters: an existing durable with other
/// filters is refused at start, so a change of [`WAKE_FILTERS`] needs a new
/// name. (The consumer `fulfilment`, filtered to `case.>`, preceded it; an
/// operator deletes it with `nats consumer rm CASES fulfilment`. The new
/// one starts at the beginning of the stream, so after an upgrade every
/// case is decided once more, which changes nothing that is up to date.)
pub const WAKE_CONSUMER: &str = casework_caselog::permissions::FULFILMENT_WAKE;

/// The events that can make fulfilment append something, and only those
/// (derived from [`decide::decide`]; a new trigger there needs its event
/// here, and a new [`WAKE_CONSUMER`] name):
/// - `promise_made` (intake): a promise with no run starts run 1 — nothing
///   acts on a case before its promise, so `case_opened` is not needed;
/// - `retry_requested` (recovery): a run over without a kept promise and
///   more retries requested than runs followed starts the next run.
///
/// Not here: fulfilment's own events (the reconcile or report that appends
/// them decides again on the held state right after), `case_withdrawn` and
/// `case_closed` (they only stop decisions; an append that missed them
/// conflicts on the head, reloads and decides nothing), `promise_broken`
/// (it only sets `late` on a `promise_kept`, an append guarded the same
/// way), and the rest (interactions, feedback, recovery's other events),
/// which the rules do not read. Clocks (timeouts, back-off) wake the case
/// through its `step` timer.
pub const WAKE_FILTERS: [&str; 2] = [
    "case.*.*.intake.promise_made",
    "case.*.*.recovery.retry_requested",
];

/// Defaults: gRPC on 127.0.0.1:50052, HTTP on 127.0.0.1:8082.
pub fn default_options() -> ServiceOptions {
    Options::defaults(SERVICE, 50052, 8082)
}

/// Starts the service: binds gRPC and HTTP, starts the loops, returns at
/// once. It stops when `shutdown` is cancelled (or on a fatal error).
pub async fn start(options: ServiceOptions, shutdown: Shutdown) -> anyhow::Result<Running> {
    let catalogs = Arc::new(casework_runtime::load_catalogs(&options.catalog)?);
    let client = nats::connect(
        &options.nats,
        &format!("casework-fulfilment/{}", options.instance),
    )
    .await?;
    let log: Arc<dyn CaseLog> = Arc::new(nats::log(
        &client,
        &options.nats,
        &options.instance,
        Some(Writer::Fulfilment),
    ));
    let db = store::open_checked(
        &options.data_dir,
        SERVICE,
        &options.store,
        store::Damaged::Rebuildable,
    )?;
    let parked = Parked::new(db.clone(), SERVICE);
    let parked_now: HashSet<CaseKey> = parked
        .list()
        .await
        .into_iter()
        .filter_map(|(k, _)| {
            let (t, c) = k.split_once('/')?;
            CaseKey::parse(t, c).ok()
        })
        .collect();
    let retry_first: Vec<CaseKey> = parked_now.iter().cloned().collect();
    let board = Arc::new(tasks::TaskBoard::open(Some(db.clone()))?);
    let timers = Timers::new(client.clone(), Writer::Fulfilment);
    let stop = shutdown.child_token();
    let engine = engine::Engine::new(
        log.clone(),
        catalogs,
        Some(timers.clone()),
        board.clone(),
        options.service.clone(),
        Some(parked.clone()),
        parked_now,
        stop.clone(),
    );

    let readiness = http::Readiness::default();
    readiness.set("task_board", false);
    nats::watch_connection(client.clone(), readiness.clone(), stop.clone());
    let grpc = casework_runtime::grpc::GrpcServer::new()
        .tls(&options.tls)?
        .auth("fulfilment", &options.auth);
    grpc.health
        .set_serving::<proto::fulfilment_server::FulfilmentServer<api::FulfilmentApi>>()
        .await;
    let serving = grpc
        .add_service(proto::fulfilment_server::FulfilmentServer::new(
            api::FulfilmentApi::new(
                engine.clone(),
                Some(parked.clone()),
                stop.clone(),
                casework_runtime::nats::vault(
                    &client,
                    &options.personal_data,
                    &options.data_dir,
                    casework_privacy::Access::Reader,
                    SERVICE,
                )?,
            ),
        ))
        .serve(options.grpc_listen, stop.clone())
        .await?;
    let grpc_addr = serving.addr;
    let http_addr = http::serve(options.http_listen, readiness.clone(), stop.clone()).await?;

    let tail = {
        let (engine, stop, readiness) = (engine.clone(), stop.clone(), readiness.clone());
        tokio::spawn(async move {
            engine
                .run_tail(stop, move || readiness.set("task_board", true))
                .await
        })
    };
    // Parked cases are tried again once at start: the missing catalogue
    // may have been deployed, and nothing else may wake them.
    let unpark = {
        let (engine, stop) = (engine.clone(), stop.clone());
        tokio::spawn(async move {
            for case in retry_first {
                if stop.is_cancelled() {
                    break;
                }
                engine.reconcile_now(&case).await;
            }
        })
    };
    let pruner = {
        let (board, stop) = (board.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => board.prune(chrono::Utc::now()).await,
                }
            }
        })
    };
    let concurrency = options.service.concurrency;
    let cases = tokio::spawn(run_case_loop(
        log.clone(),
        Arc::new(engine.clone()),
        LoopConfig {
            service: SERVICE,
            durable: WAKE_CONSUMER.to_owned(),
            filters: WAKE_FILTERS.iter().map(|f| (*f).to_owned()).collect(),
            concurrency,
        },
        Some(parked.clone()),
        stop.clone(),
    ));
    let fires = tokio::spawn(run_timer_loop(
        client.clone(),
        timers,
        Arc::new(engine.clone()),
        LoopConfig {
            service: SERVICE,
            durable: casework_caselog::permissions::FULFILMENT_TIMERS.to_owned(),
            filters: Vec::new(),
            concurrency,
        },
        Some(parked),
        stop.clone(),
    ));
    tracing::info!(grpc = %grpc_addr, http = %http_addr, instance = %options.instance, "fulfilment started");

    let done = tokio::spawn(async move {
        let stopped = |r: Result<anyhow::Result<()>, tokio::task::JoinError>, what: &str| match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("{what}: {e}")),
            Err(e) => Err(anyhow::anyhow!("{what} panicked: {e}")),
        };
        let names = ["case loop", "timer loop", "task tail"];
        // The first loop to end (shutdown or a fatal error) stops the rest.
        let (first, index, rest) = futures::future::select_all([cases, fires, tail]).await;
        stop.cancel();
        let first = stopped(first, names[index]);
        let others: Vec<&str> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, n)| *n)
            .collect();
        let mut rest_results = Vec::new();
        for (h, name) in rest.into_iter().zip(others) {
            rest_results.push(stopped(h.await, name));
        }
        pruner.abort();
        unpark.abort();
        // In-flight calls finish before the connection they append on goes.
        serving.drained(casework_runtime::grpc::DRAIN_GRACE).await;
        let _ = client.drain().await;
        first?;
        for r in rest_results {
            r?;
        }
        Ok(())
    });
    Ok(Running {
        grpc: grpc_addr,
        http: http_addr,
        done,
    })
}

/// Runs the service until `shutdown` (start, then wait).
pub async fn run(options: ServiceOptions, shutdown: Shutdown) -> anyhow::Result<()> {
    start(options, shutdown).await?.wait().await
}
