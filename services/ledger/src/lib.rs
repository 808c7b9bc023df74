//! `casework-ledger` owns the long-term archive of every event of every case
//! and tenant, and serves auditors and integrators from it (DESIGN.md §2,
//! §5): history, as-of replay, chain verification (archive and stream),
//! evidence bundles, and a resumable filtered subscription. It is a reader:
//! it connects with a reader NATS user and never appends an event; it does
//! not decide anything about a case. Its redb archive is rebuilt from the
//! stream when the data directory is empty.
//!
//! Layout: `tables` (every redb table), `archive` (ingest batches with
//! incremental chain verification, and the reads), `ingest` (the tail loop,
//! readiness, metrics), `api` (the gRPC service), `convert` (domain →
//! API messages, envelope → proto3 JSON), `bundle` (evidence bundles and
//! their offline check), `position` (opaque position and page tokens), `tlog` (the transparency log's
//! leaves, proofs and signed checkpoints in the archive), `signer` (the
//! checkpoint key and the signing loop),
//! `error` (the one error enum and its gRPC mapping).

pub mod api;
pub mod archive;
pub mod bundle;
pub mod convert;
pub mod error;
pub mod ingest;
pub mod position;
pub mod signer;
pub mod tables;
pub mod tlog;

use std::sync::Arc;
use std::time::Duration;

use casework_caselog::{CaseLog, JetStreamLog};
use casework_proto::ledger::v1::ledger_server::LedgerServer;
use casework_runtime::grpc::GrpcServer;
use casework_runtime::http::{self, Readiness};
use casework_runtime::{Options, Validate, store};
use serde::{Deserialize, Serialize};

pub use casework_proto::ledger::v1 as proto;
pub use casework_runtime::{Running, Shutdown};
pub use error::{Error, Result};

/// A gRPC client of the ledger at `addr` (`host:port` or a URL).
pub async fn client(
    addr: &str,
) -> anyhow::Result<proto::ledger_client::LedgerClient<tonic::transport::Channel>> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(proto::ledger_client::LedgerClient::connect(url)
        .await?
        .max_decoding_message_size(256 << 20))
}

/// The ledger's own settings (`[service]` in the options file,
/// `CASEWORK_SERVICE__*` in the environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSettings {
    /// Most events archived in one redb write transaction.
    pub batch_size: usize,
    /// Largest GetHistory page.
    pub max_page_size: u32,
    /// Events read from the archive per step of a subscription.
    pub subscribe_batch: usize,
    /// Events a subscription holds for a client that has not taken them
    /// yet (with the HTTP/2 window, what a stuck client costs the ledger).
    pub subscribe_buffer: usize,
    /// A subscription whose client takes nothing for this long while
    /// events wait is ended RESOURCE_EXHAUSTED, with the position to resume
    /// after: a stuck client does not hold the ledger's memory forever.
    pub subscribe_stall_seconds: u64,
    /// Most subscriptions open at once per caller (token subject or mapped
    /// certificate); one more is refused RESOURCE_EXHAUSTED.
    pub max_subscriptions_per_caller: usize,
    /// The transparency log's origin: the first line of every checkpoint
    /// and the name of the signing key (a schema-less URL naming this log,
    /// e.g. `casework.example.com/ledger/prod`).
    pub checkpoint_origin: String,
    /// The Ed25519 checkpoint signing key (`PRIVATE+KEY+…`, one line);
    /// default `<data_dir>/checkpoint.key`, created when absent. In
    /// Kubernetes, a Secret mounted read-only.
    pub checkpoint_key_file: Option<std::path::PathBuf>,
    /// How often a checkpoint of the grown log is signed and published.
    pub checkpoint_interval_seconds: u64,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            batch_size: 1024,
            max_page_size: 1000,
            subscribe_batch: 512,
            subscribe_buffer: 64,
            subscribe_stall_seconds: 30,
            max_subscriptions_per_caller: 16,
            checkpoint_origin: "casework.local/ledger".to_owned(),
            checkpoint_key_file: None,
            checkpoint_interval_seconds: 10,
        }
    }
}

impl Validate for LedgerSettings {
    fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.batch_size == 0 || self.batch_size > 65_536 {
            p.push(format!(
                "batch_size: {} must be between 1 and 65536",
                self.batch_size
            ));
        }
        if self.max_page_size == 0 || self.max_page_size > 10_000 {
            p.push(format!(
                "max_page_size: {} must be between 1 and 10000",
                self.max_page_size
            ));
        }
        if self.subscribe_batch == 0 || self.subscribe_batch > 65_536 {
            p.push(format!(
                "subscribe_batch: {} must be between 1 and 65536",
                self.subscribe_batch
            ));
        }
        if self.subscribe_buffer == 0 || self.subscribe_buffer > 65_536 {
            p.push(format!(
                "subscribe_buffer: {} must be between 1 and 65536",
                self.subscribe_buffer
            ));
        }
        if !(1..=3600).contains(&self.subscribe_stall_seconds) {
            p.push(format!(
                "subscribe_stall_seconds: {} must be between 1 and 3600",
                self.subscribe_stall_seconds
            ));
        }
        let o = &self.checkpoint_origin;
        if o.is_empty() || o.chars().any(|c| c.is_whitespace() || c == '+') || o.len() > 200 {
            p.push(format!(
                "checkpoint_origin: {o:?} must be 1–200 characters without spaces or '+', e.g. \"casework.example.com/ledger/prod\""
            ));
        }
        if !(1..=86_400).contains(&self.checkpoint_interval_seconds) {
            p.push(format!(
                "checkpoint_interval_seconds: {} must be between 1 and 86400",
                self.checkpoint_interval_seconds
            ));
        }
        if !(1..=10_000).contains(&self.max_subscriptions_per_caller) {
            p.push(format!(
                "max_subscriptions_per_caller: {} must be between 1 and 10000",
                self.max_subscriptions_per_caller
            ));
        }
        p
    }
}

/// The ledger's options.
pub type ServiceOptions = Options<LedgerSettings>;

/// Defaults: gRPC 127.0.0.1:50054, HTTP 127.0.0.1:8084, NATS user `ledger`
/// expected in deployment (set `nats.user`/`nats.password`).
pub fn default_options() -> ServiceOptions {
    Options::defaults("ledger", 50054, 8084)
}

/// Starts the ledger: opens the archive, connects to NATS, binds gRPC and
/// HTTP (port 0 works), starts archiving, and returns at once.
pub async fn start(options: ServiceOptions, shutdown: Shutdown) -> anyhow::Result<Running> {
    let readiness = Readiness::default();
    readiness.set(ingest::READY_STREAM, false);
    readiness.set(ingest::READY_CAUGHT_UP, false);
    if options.store.rebuild_when_damaged {
        return Err(anyhow::Error::new(casework_runtime::BadConfiguration(
            "store.rebuild_when_damaged is not allowed for the ledger: its archive is evidence and is never replaced silently; leave it false (a damaged archive is refused at start, naming the file)".to_owned(),
        )));
    }
    let db = store::open_checked(
        &options.data_dir,
        "ledger",
        &options.store,
        store::Damaged::Refuse,
    )?;
    let file = options.data_dir.join("ledger.redb");
    let damaged = |e: error::Error| anyhow::anyhow!("{}: {e}", file.display());
    let archive = error::read_blocking(move || archive::Archive::open(db))
        .await
        .map_err(damaged)?;
    let catalogs = Arc::new(casework_runtime::load_catalogs(&options.catalog)?);
    let key_file = options
        .service
        .checkpoint_key_file
        .clone()
        .unwrap_or_else(|| options.data_dir.join("checkpoint.key"));
    let key = signer::load_or_create_key(&key_file, &options.service.checkpoint_origin)?;
    let checkpoints = signer::CheckpointSigner::new(key, archive.clone());
    tracing::info!(public_key = %checkpoints.verifier().vkey(), "checkpoints are signed with this key");
    let client = casework_runtime::nats::connect_reader(&options.nats, &options.instance).await?;
    let log: Arc<dyn CaseLog> = Arc::new(
        JetStreamLog::new(client.clone(), &options.instance, None)
            .with_request_timeout(Duration::from_millis(options.nats.request_timeout_ms)),
    );
    casework_runtime::nats::watch_connection(client.clone(), readiness.clone(), shutdown.clone());
    let vault = casework_runtime::nats::vault(
        &client,
        &options.personal_data,
        &options.data_dir,
        casework_privacy::Access::Reader,
        "ledger",
    )?;
    let a = archive.clone();
    let (checkpoint_tx, checkpoint_rx) = tokio::sync::watch::channel(
        error::read_blocking(move || a.checkpoint())
            .await
            .map_err(damaged)?,
    );
    let http = http::serve(options.http_listen, readiness.clone(), shutdown.clone()).await?;
    let api = api::LedgerApi {
        archive: archive.clone(),
        log: log.clone(),
        catalogs,
        checkpoint: checkpoint_rx,
        checkpoints: checkpoints.clone(),
        max_page_size: options.service.max_page_size,
        subscribe_batch: options.service.subscribe_batch,
        vault: vault.clone(),
        subscriptions: api::Subscriptions::new(
            options.service.max_subscriptions_per_caller,
            options.service.subscribe_buffer,
            Duration::from_secs(options.service.subscribe_stall_seconds),
        ),
    };
    let server = GrpcServer::new()
        .tls(&options.tls)?
        .auth("ledger", &options.auth);
    server
        .health
        .set_serving::<LedgerServer<api::LedgerApi>>()
        .await;
    let serving = server
        .add_service(LedgerServer::new(api).max_decoding_message_size(16 << 20))
        .serve(options.grpc_listen, shutdown.clone())
        .await?;
    let grpc = serving.addr;
    tracing::info!(%grpc, %http, "ledger started");
    tokio::spawn(checkpoints.run(
        client.clone(),
        Duration::from_secs(options.service.checkpoint_interval_seconds),
        shutdown.clone(),
    ));
    let batch = options.service.batch_size;
    let name = options.instance.clone();
    let tail_client = client.clone();
    let ingest_vault = vault.clone();
    let stopping = shutdown.clone();
    let done = tokio::spawn(async move {
        let r = ingest::run(
            archive,
            log,
            tail_client,
            name,
            batch,
            readiness,
            checkpoint_tx,
            ingest_vault,
            shutdown,
        )
        .await;
        if stopping.is_cancelled() {
            serving.drained(casework_runtime::grpc::DRAIN_GRACE).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), client.drain()).await;
        r
    });
    Ok(Running { grpc, http, done })
}

/// Runs the ledger until `shutdown`.
pub async fn run(options: ServiceOptions, shutdown: Shutdown) -> anyhow::Result<()> {
    start(options, shutdown).await?.wait().await
}
