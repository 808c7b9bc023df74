//! The redb archive: ingesting batches of raw stored events (events,
//! indexes, case heads, chain status and checkpoint in one write
//! transaction), verifying each case's chain link by link as events arrive,
//! and the reads the API needs. Everything here is synchronous; callers run
//! it on the blocking pool.

use std::collections::HashMap;
use std::sync::Arc;

use casework_domain::chain::{self, Hash};
use casework_domain::event::parse_subject;
use casework_domain::{BrokenLink, CaseId, ChainTip, LinkFault, RawEvent, Tenant, verify};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::tables::{
    BY_STREAM, BY_TIME, BY_TYPE, CASES, CHECKPOINT, EVENTS, META, TLOG_LEAF_OF, TLOG_MAP,
    TLOG_NODES, TLOG_SIGNED, TLOG_SIZE,
};
use crate::{Error, Result};

/// A chain break as recorded while archiving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakRecord {
    /// Per-case sequence where the log stops being trustworthy.
    pub case_seq: u64,
    /// Stream sequence where it was seen.
    pub stream_seq: Option<u64>,
    /// `altered`, `missing`, `reordered` or `foreign`.
    pub fault: String,
    /// For people.
    pub detail: String,
}

impl BreakRecord {
    fn from_link(b: &BrokenLink) -> Self {
        Self {
            case_seq: b.case_seq,
            stream_seq: b.stream_seq,
            fault: fault_name(b.fault).to_owned(),
            detail: b.detail.clone(),
        }
    }

    /// The domain's fault kind.
    pub fn fault(&self) -> LinkFault {
        match self.fault.as_str() {
            "missing" => LinkFault::Missing,
            "reordered" => LinkFault::Reordered,
            "foreign" => LinkFault::Foreign,
            _ => LinkFault::Altered,
        }
    }
}

/// The lowercase name of a fault.
pub fn fault_name(f: LinkFault) -> &'static str {
    match f {
        LinkFault::Altered => "altered",
        LinkFault::Missing => "missing",
        LinkFault::Reordered => "reordered",
        LinkFault::Foreign => "foreign",
    }
}

/// What the archive knows about one case (stored as JSON in `case_heads`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseRecord {
    /// Events archived (the last case position).
    pub events: u64,
    /// Tip of the verified chain (equals the head while intact).
    pub tip_seq: u64,
    /// Hex hash of the verified tip.
    pub tip_hash: String,
    /// Envelope sequence of the last archived event (0 if undecodable).
    pub head_seq: u64,
    /// Hex SHA-256 of the last archived event's bytes (the anchor).
    pub head_hash: String,
    /// Stream sequence of the last archived event.
    pub head_stream_seq: u64,
    /// Event type of the last archived event (from its subject).
    pub last_event_type: String,
    /// occurred_at of the first event, µs since the epoch.
    pub first_at_us: Option<i64>,
    /// occurred_at of the last event, µs since the epoch.
    pub last_at_us: Option<i64>,
    /// The first break seen while archiving.
    pub broken: Option<BreakRecord>,
    /// Events archived after the first break.
    pub after_break: u64,
}

impl CaseRecord {
    /// The archive's head as an anchor for verifying another copy: only
    /// meaningful while the archived chain is intact.
    pub fn anchor(&self) -> Option<ChainTip> {
        if self.broken.is_some() || self.events == 0 {
            return None;
        }
        Some(ChainTip {
            case_seq: self.tip_seq,
            hash: parse_hash(&self.tip_hash)?,
        })
    }

    fn tip(&self) -> ChainTip {
        ChainTip {
            case_seq: self.tip_seq,
            hash: parse_hash(&self.tip_hash).unwrap_or(chain::GENESIS_HASH),
        }
    }
}

fn parse_hash(h: &str) -> Option<Hash> {
    hex::decode(h).ok()?.try_into().ok()
}

/// One archived event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Tenant token (from the subject).
    pub tenant: String,
    /// Case id token (from the subject).
    pub case_id: String,
    /// Position in the case's stored log.
    pub position: u64,
    /// Stream sequence.
    pub stream_seq: u64,
    /// Subject.
    pub subject: String,
    /// Exact stored bytes.
    pub raw: Vec<u8>,
}

impl Row {
    /// The raw form for verification.
    pub fn raw_event(&self) -> RawEvent {
        RawEvent {
            stream_seq: self.stream_seq,
            subject: self.subject.clone(),
            bytes: self.raw.clone(),
        }
    }
}

/// A chain break found while ingesting.
#[derive(Debug, Clone)]
pub struct NewBreak {
    /// `tenant/case_id`.
    pub case: String,
    /// The break.
    pub link: BreakRecord,
}

/// What one ingested batch did.
#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    /// Events archived by this batch.
    pub archived: usize,
    /// The checkpoint after it.
    pub checkpoint: u64,
    /// Breaks first seen in this batch.
    pub breaks: Vec<NewBreak>,
}

/// A subscription filter on subject tokens (`None` matches any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Tenant.
    pub tenant: Option<String>,
    /// Case id.
    pub case_id: Option<String>,
    /// Writer.
    pub writer: Option<String>,
    /// Event type.
    pub event_type: Option<String>,
}

impl Filter {
    /// Whether `subject` matches.
    pub fn matches(&self, subject: &str) -> bool {
        let t: Vec<&str> = subject.split('.').collect();
        let ok = |want: &Option<String>, i: usize| {
            want.as_deref()
                .is_none_or(|w| t.get(i).is_some_and(|x| *x == w))
        };
        ok(&self.tenant, 1)
            && ok(&self.case_id, 2)
            && ok(&self.writer, 3)
            && ok(&self.event_type, 4)
    }

    /// The equivalent NATS subject filter.
    pub fn subject(&self) -> String {
        let p = |v: &Option<String>| v.clone().unwrap_or_else(|| "*".to_owned());
        format!(
            "case.{}.{}.{}.{}",
            p(&self.tenant),
            p(&self.case_id),
            p(&self.writer),
            p(&self.event_type)
        )
    }
}

/// The tenant and case tokens of a subject (empty when absent).
fn case_tokens(subject: &str) -> (String, String, String) {
    let t: Vec<&str> = subject.split('.').collect();
    let get = |i: usize| t.get(i).copied().unwrap_or("").to_owned();
    (get(1), get(2), get(4))
}

/// The redb archive.
#[derive(Debug, Clone)]
pub struct Archive {
    db: Arc<Database>,
}

impl Archive {
    /// Opens the archive in `db`, creating its tables.
    pub fn open(db: Arc<Database>) -> Result<Self> {
        let tx = db.begin_write()?;
        {
            tx.open_table(EVENTS)?;
            tx.open_table(BY_STREAM)?;
            tx.open_table(BY_TIME)?;
            tx.open_table(BY_TYPE)?;
            tx.open_table(CASES)?;
            tx.open_table(META)?;
            tx.open_table(TLOG_NODES)?;
            tx.open_table(TLOG_LEAF_OF)?;
            tx.open_table(TLOG_SIGNED)?;
            tx.open_table(TLOG_MAP)?;
        }
        tx.commit()?;
        let added = crate::tlog::backfill(&db)?;
        if added > 0 {
            tracing::info!(
                leaves = added,
                "transparency log: leaves added for events archived before it"
            );
        }
        Ok(Self { db })
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// The last stream sequence archived (0: none).
    pub fn checkpoint(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(META)?;
        Ok(t.get(CHECKPOINT)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Archives `batch` (in stream order) in one write transaction: events,
    /// indexes, case heads, chain status and the checkpoint. Events at or
    /// below the checkpoint are skipped, so a redelivered batch is harmless.
    pub fn ingest(&self, batch: &[RawEvent]) -> Result<IngestReport> {
        let tx = self.db.begin_write()?;
        let mut report = IngestReport::default();
        {
            let mut meta = tx.open_table(META)?;
            let mut events = tx.open_table(EVENTS)?;
            let mut by_stream = tx.open_table(BY_STREAM)?;
            let mut by_time = tx.open_table(BY_TIME)?;
            let mut by_type = tx.open_table(BY_TYPE)?;
            let mut cases = tx.open_table(CASES)?;
            let mut nodes = tx.open_table(TLOG_NODES)?;
            let mut leaf_of = tx.open_table(TLOG_LEAF_OF)?;
            let mut checkpoint = meta.get(CHECKPOINT)?.map(|v| v.value()).unwrap_or(0);
            let mut tree_size = meta.get(TLOG_SIZE)?.map(|v| v.value()).unwrap_or(0);
            let mut heads: HashMap<(String, String), CaseRecord> = HashMap::new();
            for raw in batch {
                if raw.stream_seq <= checkpoint {
                    continue;
                }
                let (tenant, case_id, event_type) = case_tokens(&raw.subject);
                let key = (tenant.clone(), case_id.clone());
                if !heads.contains_key(&key) {
                    let rec = match cases.get((tenant.as_str(), case_id.as_str()))? {
                        Some(v) => serde_json::from_str(v.value())
                            .map_err(|e| Error::Internal(format!("case record: {e}")))?,
                        None => CaseRecord::default(),
                    };
                    heads.insert(key.clone(), rec);
                }
                let rec = heads.get_mut(&key).expect("inserted above");
                let position = rec.events + 1;
                let envelope = chain::decode(&raw.bytes).ok();
                let hash = chain::hash(&raw.bytes);
                if rec.broken.is_none() {
                    if link_holds(&tenant, &case_id, rec.tip(), raw, envelope.as_ref()) {
                        rec.tip_seq = envelope.as_ref().map_or(0, |e| e.sequence);
                        rec.tip_hash = hex::encode(hash);
                    } else {
                        // Find the exact first break the way an auditor
                        // would: verify the whole stored log of the case.
                        let mut raws = Vec::with_capacity(position as usize);
                        for item in events.range(
                            (tenant.as_str(), case_id.as_str(), 1)
                                ..(tenant.as_str(), case_id.as_str(), position),
                        )? {
                            let (_, v) = item?;
                            let (stream_seq, subject, bytes) = v.value();
                            raws.push(RawEvent {
                                stream_seq,
                                subject: subject.to_owned(),
                                bytes: bytes.to_vec(),
                            });
                        }
                        raws.push(raw.clone());
                        let link = verify_tokens(&tenant, &case_id, &raws, None)
                            .first_break
                            .unwrap_or_else(|| BrokenLink {
                                case_seq: position,
                                stream_seq: Some(raw.stream_seq),
                                fault: LinkFault::Altered,
                                detail: "the event does not continue the case's chain".to_owned(),
                            });
                        let link = BreakRecord::from_link(&link);
                        report.breaks.push(NewBreak {
                            case: format!("{tenant}/{case_id}"),
                            link: link.clone(),
                        });
                        rec.broken = Some(link);
                    }
                } else {
                    rec.after_break += 1;
                }
                events.insert(
                    (tenant.as_str(), case_id.as_str(), position),
                    (raw.stream_seq, raw.subject.as_str(), raw.bytes.as_slice()),
                )?;
                by_stream.insert(raw.stream_seq, (raw.subject.as_str(), position))?;
                crate::tlog::append_leaf(
                    &mut nodes,
                    &mut leaf_of,
                    &mut tree_size,
                    (tenant.as_str(), case_id.as_str(), position),
                    &hash,
                )?;
                by_type.insert((event_type.as_str(), raw.stream_seq), ())?;
                let at = envelope
                    .as_ref()
                    .and_then(|e| e.occurred_at.as_ref())
                    .map(|t| chain::from_timestamp(t).timestamp_micros());
                if let Some(at) = at {
                    by_time.insert((at, raw.stream_seq), ())?;
                    rec.first_at_us.get_or_insert(at);
                    rec.last_at_us = Some(at);
                }
                rec.events = position;
                rec.head_seq = envelope.as_ref().map_or(0, |e| e.sequence);
                rec.head_hash = hex::encode(hash);
                rec.head_stream_seq = raw.stream_seq;
                rec.last_event_type = event_type;
                checkpoint = raw.stream_seq;
                report.archived += 1;
            }
            for ((tenant, case_id), rec) in &heads {
                let json = serde_json::to_string(rec)
                    .map_err(|e| Error::Internal(format!("case record: {e}")))?;
                cases.insert((tenant.as_str(), case_id.as_str()), json.as_str())?;
            }
            let mut case_map = tx.open_table(TLOG_MAP)?;
            crate::tlog::set_heads(
                &mut case_map,
                heads
                    .iter()
                    .map(|((t, c), rec)| (t.as_str(), c.as_str(), rec)),
            )?;
            meta.insert(CHECKPOINT, checkpoint)?;
            meta.insert(TLOG_SIZE, tree_size)?;
            report.checkpoint = checkpoint;
        }
        casework_runtime::store::commit(tx);
        Ok(report)
    }

    /// The record of a case.
    pub fn case(&self, tenant: &str, case_id: &str) -> Result<Option<CaseRecord>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CASES)?;
        t.get((tenant, case_id))?
            .map(|v| serde_json::from_str(v.value()))
            .transpose()
            .map_err(|e| Error::Internal(format!("case record: {e}")))
    }

    /// Every archived case (optionally of one tenant) with its record.
    pub fn cases(&self, tenant: Option<&str>) -> Result<Vec<(String, String, CaseRecord)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CASES)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let (tn, c) = k.value();
            if tenant.is_some_and(|want| want != tn) {
                continue;
            }
            let rec = serde_json::from_str(v.value())
                .map_err(|e| Error::Internal(format!("case record: {e}")))?;
            out.push((tn.to_owned(), c.to_owned(), rec));
        }
        Ok(out)
    }

    /// Up to `limit` events of a case from case position `from` on.
    pub fn case_events(
        &self,
        tenant: &str,
        case_id: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Row>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(EVENTS)?;
        let mut out = Vec::new();
        for item in t.range((tenant, case_id, from.max(1))..=(tenant, case_id, u64::MAX))? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let (_, _, position) = k.value();
            let (stream_seq, subject, raw) = v.value();
            out.push(Row {
                tenant: tenant.to_owned(),
                case_id: case_id.to_owned(),
                position,
                stream_seq,
                subject: subject.to_owned(),
                raw: raw.to_vec(),
            });
        }
        Ok(out)
    }

    /// Events matching `filter` with stream sequence in `from..=upto`, at
    /// most `limit`; returns them and the next stream sequence to scan.
    pub fn scan(
        &self,
        filter: &Filter,
        from: u64,
        upto: u64,
        limit: usize,
    ) -> Result<(Vec<Row>, u64)> {
        let mut out = Vec::new();
        if from > upto {
            return Ok((out, from));
        }
        let tx = self.db.begin_read()?;
        let by_stream = tx.open_table(BY_STREAM)?;
        let events = tx.open_table(EVENTS)?;
        let fetch = |subject: &str, position: u64| -> Result<Option<Row>> {
            let (tenant, case_id, _) = case_tokens(subject);
            let Some(v) = events.get((tenant.as_str(), case_id.as_str(), position))? else {
                return Ok(None);
            };
            let (stream_seq, subject, raw) = v.value();
            Ok(Some(Row {
                tenant,
                case_id,
                position,
                stream_seq,
                subject: subject.to_owned(),
                raw: raw.to_vec(),
            }))
        };
        let mut next = upto + 1;
        // With an event type and no case, the type index skips the rest.
        if let (Some(ty), None) = (&filter.event_type, &filter.case_id) {
            let by_type = tx.open_table(BY_TYPE)?;
            for item in by_type.range((ty.as_str(), from)..=(ty.as_str(), upto))? {
                let (k, _) = item?;
                let (_, seq) = k.value();
                let Some(v) = by_stream.get(seq)? else {
                    continue;
                };
                let (subject, position) = v.value();
                if filter.matches(subject) {
                    out.extend(fetch(subject, position)?);
                    if out.len() >= limit {
                        next = seq + 1;
                        break;
                    }
                }
            }
            return Ok((out, next));
        }
        for item in by_stream.range(from..=upto)? {
            let (k, v) = item?;
            let seq = k.value();
            let (subject, position) = v.value();
            if filter.matches(subject) {
                out.extend(fetch(subject, position)?);
                if out.len() >= limit {
                    next = seq + 1;
                    break;
                }
            }
        }
        Ok((out, next))
    }

    /// The lowest stream sequence of an event that occurred at or after
    /// `at_us` (µs since the epoch), if any is archived.
    pub fn first_seq_at_or_after(&self, at_us: i64) -> Result<Option<u64>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BY_TIME)?;
        let mut min: Option<u64> = None;
        for item in t.range((at_us, 0)..)? {
            let (k, _) = item?;
            let (_, seq) = k.value();
            min = Some(min.map_or(seq, |m| m.min(seq)));
        }
        Ok(min)
    }
}

/// Whether `raw` continues the chain of case `tenant/case_id` after `tip`:
/// it decodes, belongs to the case, comes from its type's writer, has the
/// next sequence and records the tip's hash (the per-link rules of
/// `casework_domain::verify`).
fn link_holds(
    tenant: &str,
    case_id: &str,
    tip: ChainTip,
    raw: &RawEvent,
    envelope: Option<&casework_domain::pb::Envelope>,
) -> bool {
    let (Some(env), Ok(parts)) = (envelope, parse_subject(&raw.subject)) else {
        return false;
    };
    parts.tenant.as_str() == tenant
        && parts.case_id.as_str() == case_id
        && env.tenant == tenant
        && env.case_id == case_id
        && env.event_type == parts.event_type.as_str()
        && env.writer == parts.writer.as_str()
        && parts.event_type.writer() == parts.writer
        && env.sequence == tip.case_seq + 1
        && env.prev_hash.as_slice() == tip.hash
}

/// [`verify`] for subject tokens that may not be valid tokens (a foreign
/// message under `case.>`): invalid tokens are a foreign break at 1.
pub fn verify_tokens(
    tenant: &str,
    case_id: &str,
    raw: &[RawEvent],
    anchor: Option<ChainTip>,
) -> casework_domain::Verification {
    match (Tenant::parse(tenant), CaseId::parse(case_id)) {
        (Ok(t), Ok(c)) => verify(&t, &c, raw, anchor),
        _ => casework_domain::Verification {
            examined: 0,
            verified_tip: ChainTip::EMPTY,
            first_break: Some(BrokenLink {
                case_seq: 1,
                stream_seq: raw.first().map(|r| r.stream_seq),
                fault: LinkFault::Foreign,
                detail: format!("{tenant:?}/{case_id:?} is not a valid tenant and case id"),
            }),
        },
    }
}
