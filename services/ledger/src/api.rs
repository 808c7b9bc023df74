//! The gRPC API (casework.ledger.v1.Ledger): every request is validated
//! first (INVALID_ARGUMENT naming the field), read from the archive on the
//! blocking pool, and mapped to a status by `error::to_status` only.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use casework_auth::Caller;
use casework_caselog::{CaseKey, CaseLog};
use casework_catalog::Catalogs;
use casework_domain::chain::{self, from_timestamp};
use casework_domain::pb::envelope::Payload;
use casework_domain::{CaseId, CaseState, ChainTip, EventType, RawEvent, Tenant, Writer, evolve};
use casework_proto::ledger::v1 as api;
use casework_proto::ledger::v1::ledger_server::Ledger;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::archive::{Archive, CaseRecord, Filter, Row, verify_tokens};
use crate::bundle::{self, CatalogRef};
use crate::convert;
use crate::error::{Error, Result, read_blocking, to_status};
use crate::position;

type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The ledger's gRPC service.
#[derive(Debug, Clone)]
pub struct LedgerApi {
    pub(crate) archive: Archive,
    pub(crate) log: Arc<dyn CaseLog>,
    pub(crate) catalogs: Arc<Catalogs>,
    pub(crate) checkpoint: watch::Receiver<u64>,
    pub(crate) checkpoints: crate::signer::CheckpointSigner,
    pub(crate) max_page_size: u32,
    pub(crate) subscribe_batch: usize,
    pub(crate) subscriptions: Subscriptions,
    /// Customers' data keys, to show auditors plaintext (`None`: personal
    /// data is stored in plaintext).
    pub(crate) vault: Option<casework_privacy::Vault>,
}

impl LedgerApi {
    /// Decrypts the personal fields of events shown to an auditor (their
    /// `raw` bytes, what the chain and the proofs cover, stay as stored).
    /// An erasure among them is seen before anything is decrypted.
    async fn reveal_events<'a>(
        &self,
        events: impl IntoIterator<Item = &'a mut casework_domain::pb::Envelope>,
    ) -> Result<()> {
        let Some(vault) = &self.vault else {
            return Ok(());
        };
        let mut events: Vec<_> = events.into_iter().collect();
        for e in events.iter() {
            if let Some(Payload::PersonalDataErased(x)) = &e.payload {
                vault.forget(&e.tenant, &x.subject);
            }
        }
        for e in events.iter_mut() {
            vault.reveal(e).await.map_err(privacy_error)?;
        }
        Ok(())
    }

    /// Decrypts the opening in a replayed state (its event is the case's
    /// first).
    async fn reveal_state(&self, state: &mut api::CaseState, opened_event_id: &str) -> Result<()> {
        let (Some(vault), Some(opened)) = (&self.vault, state.opened.take()) else {
            return Ok(());
        };
        let mut payload = Payload::CaseOpened(opened);
        let at = casework_privacy::Place {
            tenant: &state.tenant,
            case_id: &state.case_id,
            event_id: opened_event_id,
        };
        vault
            .reveal_payload(&mut payload, at)
            .await
            .map_err(privacy_error)?;
        if let Payload::CaseOpened(o) = payload {
            state.opened = Some(o);
        }
        Ok(())
    }
}

fn privacy_error(e: casework_privacy::Error) -> Error {
    if e.is_transient() {
        Error::Unavailable(e.to_string())
    } else {
        Error::Internal(e.to_string())
    }
}

/// The open subscriptions per caller, and the limits every subscription
/// keeps: a per-caller count, a send buffer, and how long a client may
/// take nothing while events wait.
#[derive(Debug, Clone)]
pub struct Subscriptions {
    open: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    per_caller: usize,
    buffer: usize,
    stall: Duration,
}

/// One open subscription of a caller; closing it (drop) frees its place.
#[derive(Debug)]
struct Slot {
    open: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    caller: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("subscriptions");
        if let Some(n) = open.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
        metrics::gauge!("casework_subscriptions_open").decrement(1.0);
    }
}

impl Subscriptions {
    /// At most `per_caller` open per caller, each holding at most `buffer`
    /// events for its client and ended after `stall` without progress.
    pub fn new(per_caller: usize, buffer: usize, stall: Duration) -> Self {
        Self {
            open: Arc::default(),
            per_caller,
            buffer,
            stall,
        }
    }

    /// A place for one more subscription of `caller`, or why not.
    fn take(&self, caller: &str) -> std::result::Result<Slot, Status> {
        let mut open = self.open.lock().expect("subscriptions");
        let n = open.entry(caller.to_owned()).or_default();
        if *n >= self.per_caller {
            return Err(Status::resource_exhausted(format!(
                "{caller} already has {} subscriptions open, the most one caller may hold (service.max_subscriptions_per_caller); close one (or resume it later from its last position) before opening another",
                *n
            )));
        }
        *n += 1;
        metrics::gauge!("casework_subscriptions_open").increment(1.0);
        Ok(Slot {
            open: self.open.clone(),
            caller: caller.to_owned(),
        })
    }
}

/// A subscription's stream as the client sees it: the events sent, then,
/// if the ledger ended it (a stuck client), the status saying why — after
/// every event already buffered, so the position it names is the last one
/// the client received.
fn subscription_stream(
    rx: mpsc::Receiver<Result<api::SubscribeResponse, Status>>,
    ending: Arc<std::sync::Mutex<Option<Status>>>,
) -> ServerStream<api::SubscribeResponse> {
    use futures::StreamExt;
    let tail = futures::stream::once(async move { ending.lock().expect("ending").take() })
        .filter_map(|s| async move { s.map(Err) });
    Box::pin(ReceiverStream::new(rx).chain(tail))
}

fn case_key(tenant: &str, case_id: &str) -> Result<CaseKey> {
    let tenant = Tenant::parse(tenant).map_err(|e| Error::InvalidArgument {
        field: "tenant",
        why: e.to_string(),
    })?;
    let case_id = CaseId::parse(case_id).map_err(|e| Error::InvalidArgument {
        field: "case_id",
        why: e.to_string(),
    })?;
    Ok(CaseKey { tenant, case_id })
}

/// Every archived event of a case, in stored order.
fn all_rows(archive: &Archive, key: &CaseKey) -> Result<(CaseRecord, Vec<Row>)> {
    let (t, c) = (key.tenant.as_str(), key.case_id.as_str());
    let rec = archive
        .case(t, c)?
        .ok_or_else(|| Error::NotFound(format!("case {key} is not in the archive")))?;
    let rows = archive.case_events(t, c, 1, usize::MAX)?;
    Ok((rec, rows))
}

fn catalog_of(rows: &[Row], catalogs: &Catalogs) -> Option<CatalogRef> {
    rows.iter().find_map(|r| {
        let env = chain::decode(&r.raw).ok()?;
        let Some(Payload::PromiseMade(p)) = env.payload else {
            return None;
        };
        let known = catalogs
            .get(&p.catalog_version)
            .is_some_and(|c| c.digest() == p.catalog_digest);
        Some(CatalogRef {
            version: p.catalog_version,
            digest: p.catalog_digest,
            known_to_ledger: known,
        })
    })
}

impl LedgerApi {
    async fn verify_case(&self, key: CaseKey, archive_only: bool) -> Result<api::CaseVerification> {
        let archive = self.archive.clone();
        let k = key.clone();
        let (rec, rows) = read_blocking(move || all_rows(&archive, &k)).await?;
        self.verification(key, rec, rows, archive_only).await
    }

    async fn verification(
        &self,
        key: CaseKey,
        rec: CaseRecord,
        rows: Vec<Row>,
        archive_only: bool,
    ) -> Result<api::CaseVerification> {
        let archived: Vec<RawEvent> = rows.iter().map(Row::raw_event).collect();
        let (t, c) = (key.tenant.as_str(), key.case_id.as_str());
        let a = verify_tokens(t, c, &archived, None);
        let mut out = api::CaseVerification {
            tenant: t.to_owned(),
            case_id: c.to_owned(),
            archive: Some(convert::verdict(&a)),
            stream: None,
            first_difference: 0,
            recorded: Some(convert::chain_status(&rec)),
            intact: a.is_intact() && rec.broken.is_none(),
        };
        if !archive_only {
            let stream = self.log.read_raw(&key).await?;
            // Events archived since are compared too; events the archive
            // does not hold yet are judged by the chain alone.
            let anchor = rec.anchor();
            let s = verify_tokens(t, c, &stream, anchor);
            out.first_difference = archived
                .iter()
                .zip(&stream)
                .position(|(a, s)| a.bytes != s.bytes || a.subject != s.subject)
                .map(|i| i as u64 + 1)
                .or_else(|| (stream.len() < archived.len()).then_some(stream.len() as u64 + 1))
                .unwrap_or(0);
            out.intact = out.intact && s.is_intact() && out.first_difference == 0;
            out.stream = Some(convert::verdict(&s));
        }
        Ok(out)
    }
}

fn replay_steps(rows: &[Row], req: &api::ReplayCaseRequest) -> Result<Vec<api::ReplayStep>> {
    let mode = api::ReplayMode::try_from(req.mode).map_err(|_| Error::InvalidArgument {
        field: "mode",
        why: format!("{} is not a ReplayMode", req.mode),
    })?;
    let at_time = match mode {
        api::ReplayMode::AtTime => Some(from_timestamp(req.at_time.as_ref().ok_or(
            Error::InvalidArgument {
                field: "at_time",
                why: "set at_time with mode REPLAY_MODE_AT_TIME".to_owned(),
            },
        )?)),
        _ => None,
    };
    if mode == api::ReplayMode::AtSequence && req.at_sequence == 0 {
        return Err(Error::InvalidArgument {
            field: "at_sequence",
            why: "set at_sequence (1 or more) with mode REPLAY_MODE_AT_SEQUENCE".to_owned(),
        });
    }
    let mut state = CaseState::default();
    let mut catalog = (String::new(), String::new());
    let mut steps = Vec::new();
    let mut last: Option<&Row> = None;
    for row in rows {
        let Ok(env) = chain::decode(&row.raw) else {
            return Err(Error::Internal(format!(
                "archived event at stream sequence {} does not decode; verify the case",
                row.stream_seq
            )));
        };
        match mode {
            api::ReplayMode::AtSequence if env.sequence > req.at_sequence => break,
            api::ReplayMode::AtTime if env.occurred_at.as_ref().map(from_timestamp) > at_time => {
                break;
            }
            _ => {}
        }
        if let Some(Payload::PromiseMade(p)) = &env.payload {
            catalog = (p.catalog_version.clone(), p.catalog_digest.clone());
        }
        state = evolve(state, &env);
        state.tip = Some(ChainTip {
            case_seq: env.sequence,
            hash: chain::hash(&row.raw),
        });
        last = Some(row);
        if mode == api::ReplayMode::EachEvent {
            steps.push(api::ReplayStep {
                event: Some(convert::archived(row)),
                state: Some(convert::state(&state)),
                catalog_version: catalog.0.clone(),
                catalog_digest: catalog.1.clone(),
            });
        }
    }
    if mode == api::ReplayMode::AtSequence && state.tip.map_or(0, |t| t.case_seq) < req.at_sequence
    {
        return Err(Error::NotFound(format!(
            "the case has no event with sequence {} (it ends at {})",
            req.at_sequence,
            state.tip.map_or(0, |t| t.case_seq)
        )));
    }
    if mode != api::ReplayMode::EachEvent {
        steps.push(api::ReplayStep {
            event: last.map(convert::archived),
            state: Some(convert::state(&state)),
            catalog_version: catalog.0,
            catalog_digest: catalog.1,
        });
    }
    Ok(steps)
}

fn token<T>(
    field: &'static str,
    value: &str,
    parse: impl Fn(&str) -> casework_domain::Result<T>,
) -> Result<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    parse(value).map_err(|e| Error::InvalidArgument {
        field,
        why: e.to_string(),
    })?;
    Ok(Some(value.to_owned()))
}

/// The filter of a subscription request, validated.
pub fn subscription_filter(req: &api::SubscribeRequest) -> Result<Filter> {
    let filter = Filter {
        tenant: token("tenant", &req.tenant, Tenant::parse)?,
        case_id: token("case_id", &req.case_id, CaseId::parse)?,
        writer: token("writer", &req.writer, Writer::parse)?,
        event_type: token("event_type", &req.event_type, EventType::parse)?,
    };
    if let (Some(w), Some(t)) = (&filter.writer, &filter.event_type) {
        let owner = EventType::parse(t).expect("validated").writer();
        if owner.as_str() != w {
            return Err(Error::InvalidArgument {
                field: "event_type",
                why: format!(
                    "{t} events are written by {owner}, not {w}; drop one of the two filters"
                ),
            });
        }
    }
    Ok(filter)
}

/// A request for one tenant needs the role there; one for every tenant
/// (no tenant given) needs it for all.
fn for_tenant_or_all(caller: &Caller, tenant: Option<&str>) -> Result<(), Status> {
    match tenant {
        Some(t) => caller
            .for_tenant(&Tenant::parse(t).map_err(|e| Status::invalid_argument(e.to_string()))?),
        None => caller.for_all_tenants(),
    }
}

#[tonic::async_trait]
impl Ledger for LedgerApi {
    async fn get_history(
        &self,
        request: Request<api::GetHistoryRequest>,
    ) -> Result<Response<api::GetHistoryResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        caller.for_tenant(
            &case_key(&req.tenant, &req.case_id)
                .map_err(to_status)?
                .tenant,
        )?;
        let run = async {
            let key = case_key(&req.tenant, &req.case_id)?;
            let size = match req.page_size {
                0 => 100.min(self.max_page_size),
                n if n > self.max_page_size => {
                    return Err(Error::InvalidArgument {
                        field: "page_size",
                        why: format!("{n} is above the maximum {}", self.max_page_size),
                    });
                }
                n => n,
            } as usize;
            let from = if req.page_token.is_empty() {
                1
            } else {
                position::parse_page("page_token", &req.page_token)?
            };
            let archive = self.archive.clone();
            let (rec, rows) = read_blocking(move || -> Result<_> {
                let (t, c) = (key.tenant.as_str(), key.case_id.as_str());
                let rec = archive
                    .case(t, c)?
                    .ok_or_else(|| Error::NotFound(format!("case {key} is not in the archive")))?;
                Ok((rec, archive.case_events(t, c, from, size + 1)?))
            })
            .await?;
            let more = rows.len() > size;
            let rows = &rows[..rows.len().min(size)];
            let mut events: Vec<api::ArchivedEvent> = rows.iter().map(convert::archived).collect();
            self.reveal_events(events.iter_mut().filter_map(|e| e.envelope.as_mut()))
                .await?;
            Ok(api::GetHistoryResponse {
                events,
                next_page_token: match (more, rows.last()) {
                    (true, Some(r)) => position::page(r.position + 1),
                    _ => String::new(),
                },
                total: rec.events,
            })
        };
        run.await.map(Response::new).map_err(to_status)
    }

    async fn get_case(
        &self,
        request: Request<api::GetCaseRequest>,
    ) -> Result<Response<api::CaseSummary>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        caller.for_tenant(
            &case_key(&req.tenant, &req.case_id)
                .map_err(to_status)?
                .tenant,
        )?;
        let run = async {
            let key = case_key(&req.tenant, &req.case_id)?;
            let archive = self.archive.clone();
            let k = key.clone();
            let rec = read_blocking(move || archive.case(k.tenant.as_str(), k.case_id.as_str()))
                .await?
                .ok_or_else(|| Error::NotFound(format!("case {key} is not in the archive")))?;
            Ok(convert::summary(
                key.tenant.as_str(),
                key.case_id.as_str(),
                &rec,
            ))
        };
        run.await.map(Response::new).map_err(to_status)
    }

    type ReplayCaseStream = ServerStream<api::ReplayStep>;

    async fn replay_case(
        &self,
        request: Request<api::ReplayCaseRequest>,
    ) -> Result<Response<Self::ReplayCaseStream>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        caller.for_tenant(
            &case_key(&req.tenant, &req.case_id)
                .map_err(to_status)?
                .tenant,
        )?;
        let run = async {
            let key = case_key(&req.tenant, &req.case_id)?;
            let archive = self.archive.clone();
            let (mut steps, opened_id) = read_blocking(move || -> Result<_> {
                let (_, rows) = all_rows(&archive, &key)?;
                let opened_id = rows
                    .first()
                    .and_then(|r| chain::decode(&r.raw).ok())
                    .map(|e| e.event_id)
                    .unwrap_or_default();
                Ok((replay_steps(&rows, &req)?, opened_id))
            })
            .await?;
            // An erasure anywhere in the case is known before any step is
            // decrypted.
            if let Some(last) = steps.last_mut().and_then(|s| s.state.as_ref())
                && last.personal_data_erased
                && let Some(v) = &self.vault
                && let Some(p) = last.opened.as_ref().and_then(|o| o.personal.as_ref())
            {
                v.forget(&last.tenant, &p.subject);
            }
            for step in &mut steps {
                self.reveal_events(step.event.as_mut().and_then(|e| e.envelope.as_mut()))
                    .await?;
                if let Some(state) = step.state.as_mut() {
                    self.reveal_state(state, &opened_id).await?;
                }
            }
            Ok(steps)
        };
        let steps = run.await.map_err(to_status)?;
        Ok(Response::new(Box::pin(tokio_stream::iter(
            steps.into_iter().map(Ok),
        ))))
    }

    async fn verify_case(
        &self,
        request: Request<api::VerifyCaseRequest>,
    ) -> Result<Response<api::CaseVerification>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        caller.for_tenant(
            &case_key(&req.tenant, &req.case_id)
                .map_err(to_status)?
                .tenant,
        )?;
        let run = async {
            let key = case_key(&req.tenant, &req.case_id)?;
            self.verify_case(key, req.archive_only).await
        };
        run.await.map(Response::new).map_err(to_status)
    }

    type VerifyAllStream = ServerStream<api::CaseVerification>;

    async fn verify_all(
        &self,
        request: Request<api::VerifyAllRequest>,
    ) -> Result<Response<Self::VerifyAllStream>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let tenant = token("tenant", &req.tenant, Tenant::parse).map_err(to_status)?;
        for_tenant_or_all(&caller, tenant.as_deref())?;
        let archive = self.archive.clone();
        let cases = read_blocking(move || archive.cases(tenant.as_deref()))
            .await
            .map_err(to_status)?;
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        let total = cases.len();
        let checked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = checked.clone();
        let out = tx.clone();
        let work = tokio::spawn(async move {
            for (t, c, _) in cases {
                let result = match case_key(&t, &c) {
                    Ok(key) => me.verify_case(key, req.archive_only).await,
                    // A case under a subject that is not a valid case:
                    // archive-only verdict (it is foreign by definition).
                    Err(_) => {
                        let archive = me.archive.clone();
                        let (tt, cc) = (t.clone(), c.clone());
                        read_blocking(move || -> Result<_> {
                            let rec = archive.case(&tt, &cc)?.unwrap_or_default();
                            let rows = archive.case_events(&tt, &cc, 1, usize::MAX)?;
                            let raws: Vec<RawEvent> = rows.iter().map(Row::raw_event).collect();
                            let v = verify_tokens(&tt, &cc, &raws, None);
                            Ok(api::CaseVerification {
                                tenant: tt,
                                case_id: cc,
                                archive: Some(convert::verdict(&v)),
                                stream: None,
                                first_difference: 0,
                                recorded: Some(convert::chain_status(&rec)),
                                intact: false,
                            })
                        })
                        .await
                    }
                };
                let item = match result {
                    Ok(v) if req.only_broken && v.intact => {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    Ok(v) => Ok(v),
                    // A case that cannot be checked ends the run: a
                    // verification that skipped it is no verification.
                    Err(e) => {
                        let _ = out.send(Err(to_status(e))).await;
                        return;
                    }
                };
                if out.send(item).await.is_err() {
                    return;
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        // The stream ends OK only when every case was checked: a case that
        // cannot be checked ends it with that case's error, and a run that
        // dies (a panic) ends DATA_LOSS saying how far it got — never a
        // short clean result.
        supervise(work, checked, total, tx);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn export_case(
        &self,
        request: Request<api::ExportCaseRequest>,
    ) -> Result<Response<api::ExportCaseResponse>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        caller.for_tenant(
            &case_key(&req.tenant, &req.case_id)
                .map_err(to_status)?
                .tenant,
        )?;
        let run = async {
            let key = case_key(&req.tenant, &req.case_id)?;
            // The events, their proofs and the checkpoint they are against,
            // from one snapshot of the archive (again if the case grew
            // between the two reads).
            let mut got = None;
            for _ in 0..5 {
                let archive = self.archive.clone();
                let k = key.clone();
                let (evidence, at_snapshot) = read_blocking(move || {
                    archive.case_evidence(k.tenant.as_str(), k.case_id.as_str())
                })
                .await?;
                let archive = self.archive.clone();
                let k = key.clone();
                let (rec, rows) = read_blocking(move || all_rows(&archive, &k)).await?;
                if rec.events == at_snapshot {
                    got = Some((evidence, rec, rows));
                    break;
                }
            }
            let (evidence, rec, rows) = got.ok_or_else(|| {
                Error::Unavailable(
                    "the case kept growing while it was exported; try again".to_owned(),
                )
            })?;
            let note = self.checkpoints.sign(evidence.head).await?;
            let public_key = self.checkpoints.verifier().vkey();
            let catalogs = self.catalogs.clone();
            read_blocking(move || -> Result<_> {
                let catalog = catalog_of(&rows, &catalogs);
                let proofs = evidence
                    .inclusion
                    .iter()
                    .map(|(i, path)| {
                        Some(bundle::BundleInclusion {
                            leaf_index: *i,
                            path: path.iter().map(hex::encode).collect(),
                        })
                    })
                    .collect();
                let transparency = Some((
                    bundle::BundleCheckpoint {
                        note,
                        tree_size: evidence.head.size,
                        root_hash: hex::encode(evidence.head.root),
                        public_key,
                        case_map: evidence.map_proof.as_ref().map(|p| bundle::BundleCaseMap {
                            map_root: hex::encode(evidence.head.map_root),
                            depth: p.depth,
                            present: hex::encode(p.present),
                            hashes: p.hashes.iter().map(hex::encode).collect(),
                        }),
                    },
                    proofs,
                ));
                let b = bundle::build(
                    key.tenant.as_str(),
                    key.case_id.as_str(),
                    &rows,
                    &rec,
                    catalog,
                    transparency,
                );
                let json = serde_json::to_vec_pretty(&b)
                    .map_err(|e| Error::Internal(format!("bundle: {e}")))?;
                Ok(api::ExportCaseResponse {
                    bundle_json: json,
                    file_name: format!("{}-{}.bundle.json", key.tenant, key.case_id),
                })
            })
            .await
        };
        run.await.map(Response::new).map_err(to_status)
    }

    async fn get_checkpoint(
        &self,
        request: Request<api::GetCheckpointRequest>,
    ) -> Result<Response<api::SignedCheckpoint>, Status> {
        Caller::of(&request)?;
        let req = request.into_inner();
        let run = async {
            if req.sign_now {
                self.checkpoints.sign_if_grown().await?;
            }
            self.signed_checkpoint(req.tree_size).await
        };
        run.await.map(Response::new).map_err(to_status)
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<api::GetInclusionProofRequest>,
    ) -> Result<Response<api::InclusionProof>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let key = case_key(&req.tenant, &req.case_id).map_err(to_status)?;
        caller.for_tenant(&key.tenant)?;
        let run = async {
            let checkpoint = self.signed_checkpoint(req.tree_size).await?;
            let archive = self.archive.clone();
            let size = checkpoint.tree_size;
            let (index, leaf, path) = read_blocking(move || -> Result<_> {
                let index = archive
                    .leaf_index(key.tenant.as_str(), key.case_id.as_str(), req.case_position)?
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "event #{} of case {}/{} is not archived",
                            req.case_position, key.tenant, key.case_id
                        ))
                    })?;
                if index >= size {
                    return Err(Error::NotFound(format!(
                        "event #{} of case {}/{} was archived after the checkpoint of {size} leaves; ask for a later checkpoint",
                        req.case_position, key.tenant, key.case_id
                    )));
                }
                Ok((index, archive.leaf_hash(index)?, archive.inclusion_proof(index, size)?))
            })
            .await?;
            Ok(api::InclusionProof {
                leaf_index: index,
                tree_size: size,
                leaf_hash: leaf.to_vec(),
                path: path.iter().map(|h| h.to_vec()).collect(),
                checkpoint: Some(checkpoint),
            })
        };
        run.await.map(Response::new).map_err(to_status)
    }

    async fn get_consistency_proof(
        &self,
        request: Request<api::GetConsistencyProofRequest>,
    ) -> Result<Response<api::ConsistencyProof>, Status> {
        Caller::of(&request)?;
        let req = request.into_inner();
        if req.old_size == 0 || req.old_size > req.new_size {
            return Err(to_status(Error::InvalidArgument {
                field: "old_size",
                why: format!(
                    "{} must be above 0 and at most new_size ({})",
                    req.old_size, req.new_size
                ),
            }));
        }
        let archive = self.archive.clone();
        let run = read_blocking(move || -> Result<_> {
            for size in [req.old_size, req.new_size] {
                if archive.signed(size)?.is_none() {
                    return Err(Error::NotFound(format!(
                        "the ledger signed no checkpoint of {size} leaves; use the tree sizes of two signed checkpoints"
                    )));
                }
            }
            archive.consistency_proof(req.old_size, req.new_size)
        });
        run.await
            .map(|path| {
                Response::new(api::ConsistencyProof {
                    old_size: req.old_size,
                    new_size: req.new_size,
                    path: path.iter().map(|h| h.to_vec()).collect(),
                })
            })
            .map_err(to_status)
    }

    type SubscribeStream = ServerStream<api::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<api::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = Caller::of(&request)?;
        let req = request.into_inner();
        let filter = subscription_filter(&req).map_err(to_status)?;
        for_tenant_or_all(&caller, filter.tenant.as_deref())?;
        let next = self.start_of(&req).await.map_err(to_status)?;
        let slot = self.subscriptions.take(&caller.principal.subject)?;
        let (tx, rx) = mpsc::channel(self.subscriptions.buffer.max(1));
        let ending = Arc::new(std::sync::Mutex::new(None));
        let stream = subscription_stream(rx, ending.clone());
        let archive = self.archive.clone();
        let checkpoint = self.checkpoint.clone();
        let (batch, stall) = (self.subscribe_batch, self.subscriptions.stall);
        tokio::spawn(async move {
            let outcome =
                serve_subscription(archive, checkpoint, filter, next, batch, stall, &tx).await;
            if let Some(status) = outcome {
                *ending.lock().expect("ending") = Some(status);
            }
            // The client's place is free once its stream is over.
            drop(slot);
        });
        Ok(Response::new(stream))
    }
}

impl LedgerApi {
    /// The first stream sequence a subscription delivers.
    async fn start_of(&self, req: &api::SubscribeRequest) -> Result<u64> {
        if !req.after_position.is_empty() {
            return Ok(position::parse_position("after_position", &req.after_position)? + 1);
        }
        let checkpoint = *self.checkpoint.borrow();
        match api::Start::try_from(req.start) {
            Ok(api::Start::Beginning) => Ok(1),
            Ok(api::Start::Unspecified) => {
                // From now: after whatever the stream holds, even if the
                // archive has not caught up with it yet.
                let last = self.log.last_stream_seq().await.unwrap_or(checkpoint);
                Ok(last.max(checkpoint) + 1)
            }
            Ok(api::Start::Time) => {
                let at = req.start_time.as_ref().ok_or(Error::InvalidArgument {
                    field: "start_time",
                    why: "set start_time with start START_TIME".to_owned(),
                })?;
                let us = from_timestamp(at).timestamp_micros();
                let archive = self.archive.clone();
                let first = read_blocking(move || archive.first_seq_at_or_after(us)).await?;
                Ok(first.unwrap_or(checkpoint + 1))
            }
            Err(_) => Err(Error::InvalidArgument {
                field: "start",
                why: format!("{} is not a Start", req.start),
            }),
        }
    }
}

/// Serves one subscription from the archive: everything matching from
/// `next` up to the checkpoint, then waits for the checkpoint to move on.
/// Positions are stream sequences, so resuming after the last delivered
/// position repeats nothing and skips nothing. Returns the status to end
/// the stream with when the ledger ends it: a client that took nothing for
/// `stall` while events waited (its buffered events go first).
async fn serve_subscription(
    archive: Archive,
    mut checkpoint: watch::Receiver<u64>,
    filter: Filter,
    mut next: u64,
    batch: usize,
    stall: Duration,
    tx: &mpsc::Sender<Result<api::SubscribeResponse, Status>>,
) -> Option<Status> {
    let mut delivered: Option<u64> = None;
    loop {
        let upto = *checkpoint.borrow_and_update();
        while next <= upto {
            let a = archive.clone();
            let f = filter.clone();
            let scanned = read_blocking(move || a.scan(&f, next, upto, batch.max(1))).await;
            let (rows, after) = match scanned {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(Err(to_status(e))).await;
                    return None;
                }
            };
            for row in &rows {
                let item = api::SubscribeResponse {
                    event: Some(convert::archived(row)),
                    position: position::position(row.stream_seq),
                };
                match tokio::time::timeout(stall, tx.send(Ok(item))).await {
                    Ok(Ok(())) => delivered = Some(row.stream_seq),
                    // The client is gone.
                    Ok(Err(_)) => return None,
                    Err(_) => {
                        metrics::counter!("casework_subscriptions_stalled_total").increment(1);
                        tracing::warn!(
                            stall_seconds = stall.as_secs(),
                            "a subscriber took nothing for too long; its subscription is ended"
                        );
                        return Some(Status::resource_exhausted(format!(
                            "this subscription took no event for {} s while {} waited (service.subscribe_stall_seconds): read faster, or subscribe again with after_position = {:?} to resume exactly after the last event received",
                            stall.as_secs(),
                            tx.max_capacity(),
                            delivered.map(position::position).unwrap_or_default()
                        )));
                    }
                }
            }
            next = after;
        }
        tokio::select! {
            changed = checkpoint.changed() => if changed.is_err() { return None },
            _ = tx.closed() => return None,
        }
    }
}

/// Ends a streamed run that dies (its task panics) with DATA_LOSS, saying
/// how many of `total` items it had finished (`checked`): a stream that
/// stops short never ends OK.
fn supervise<T: Send + 'static>(
    work: tokio::task::JoinHandle<()>,
    checked: Arc<std::sync::atomic::AtomicUsize>,
    total: usize,
    tx: mpsc::Sender<Result<T, Status>>,
) {
    tokio::spawn(async move {
        if let Err(e) = work.await {
            let n = checked.load(std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %e, checked = n, total, "a streamed run stopped");
            let _ = tx
                .send(Err(Status::data_loss(format!(
                    "only {n} of {total} cases were verified (the verification stopped: {e}); the result is incomplete: do not rely on it"
                ))))
                .await;
        }
    });
}

impl LedgerApi {
    /// The signed checkpoint of `size` leaves (0: the latest).
    pub(crate) async fn signed_checkpoint(&self, size: u64) -> Result<api::SignedCheckpoint> {
        let archive = self.archive.clone();
        let found = read_blocking(move || archive.signed(size)).await?;
        let Some((size, note)) = found else {
            return Err(Error::NotFound(if size == 0 {
                "the ledger has signed no checkpoint yet (the log is empty, or the first interval has not passed); ask with sign_now".to_owned()
            } else {
                format!("the ledger signed no checkpoint of {size} leaves; ask for 0 (the latest)")
            }));
        };
        let verifier = self.checkpoints.verifier();
        let cp = casework_tlog::note::open_checkpoint(&verifier, &note)
            .map_err(|e| Error::Internal(format!("a stored checkpoint does not open: {e}")))?;
        Ok(api::SignedCheckpoint {
            note,
            origin: cp.origin,
            tree_size: size,
            root_hash: cp.root.to_vec(),
            public_key: verifier.vkey(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    async fn run(fail_after: Option<usize>) -> Vec<Result<usize, Status>> {
        let (tx, mut rx) = mpsc::channel(16);
        let checked = Arc::new(AtomicUsize::new(0));
        let (done, out) = (checked.clone(), tx.clone());
        let work = tokio::spawn(async move {
            for i in 0..5 {
                assert!(fail_after != Some(i), "a read of the store panicked");
                out.send(Ok(i)).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
        supervise(work, checked, 5, tx);
        let mut got = Vec::new();
        while let Some(item) = rx.recv().await {
            got.push(item);
        }
        got
    }

    #[tokio::test]
    async fn a_run_that_dies_ends_with_data_loss_saying_how_far_it_got() {
        let got = run(Some(2)).await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[..2].iter().all(Result::is_ok));
        let end = got[2].as_ref().unwrap_err();
        assert_eq!(end.code(), tonic::Code::DataLoss);
        assert!(end.message().contains("only 2 of 5"), "{end:?}");
    }

    #[tokio::test]
    async fn a_run_that_finishes_ends_clean() {
        let got = run(None).await;
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(Result::is_ok));
    }
}
