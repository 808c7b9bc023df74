//! Evidence bundles: one JSON document holding everything needed to verify
//! a case offline, with no server and no Casework code beyond SHA-256 and the
//! published .proto files: the exact stored bytes of every event (base64),
//! their hashes and prev_hashes, the decoded events, the head (anchor), the
//! catalogue version the case is pinned to, and the tool that exported it.
//!
//! [`check`] is the offline verification `casectl verify --bundle` runs:
//! every `sha256` must be the hash of its `raw_base64`, and the chain of the
//! raw bytes must verify (casework_domain::verify) up to the head. A
//! version-2 bundle also carries the ledger's signed checkpoint and, for
//! every event, its RFC 9162 inclusion proof in that checkpoint's tree;
//! given the ledger's public key, [`check`] opens the checkpoint's
//! signature and verifies every proof against its root, naming the event
//! that fails.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use casework_domain::chain::{self, Hash};
use casework_domain::{ChainTip, RawEvent, Verification};
use serde::{Deserialize, Serialize};

use crate::archive::{CaseRecord, Row, fault_name, verify_tokens};
use crate::convert::envelope_json;

/// The `format` of the bundles this version writes.
pub const FORMAT: &str = "casework-evidence-bundle/v2";
/// The `format` of version-1 bundles (no checkpoint, no proofs), still
/// read.
pub const FORMAT_V1: &str = "casework-evidence-bundle/v1";

/// An evidence bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// The exporting tool.
    pub tool: Tool,
    /// When it was exported (RFC 3339).
    pub exported_at: String,
    /// Tenant.
    pub tenant: String,
    /// Case id.
    pub case_id: String,
    /// The catalogue version the case is pinned to (from promise_made).
    pub catalog: Option<CatalogRef>,
    /// Every event in the case's stored order.
    pub events: Vec<BundleEvent>,
    /// The archive's head: the anchor that covers the log's end.
    pub head: Option<BundleHead>,
    /// The verification at export time.
    pub verification: BundleVerdict,
    /// v2: the signed checkpoint the events' inclusion proofs are against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<BundleCheckpoint>,
}

/// A signed checkpoint in a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleCheckpoint {
    /// The C2SP signed note (origin, tree size, base64 root; signatures).
    pub note: String,
    /// Tree size (as the note says).
    pub tree_size: u64,
    /// Hex root hash (as the note says).
    pub root_hash: String,
    /// The verifier key the exporter says signed it — informational: check
    /// with the key you were given, not this one.
    pub public_key: String,
    /// The proof of the case's head in the checkpoint's map of case heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_map: Option<BundleCaseMap>,
}

/// The case's head in the signed map of case heads (`casework_tlog::map`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleCaseMap {
    /// Hex root of the map (as the checkpoint's `casework-case-map` line
    /// says, in base64).
    pub map_root: String,
    /// The depth of the case's leaf: the number of siblings.
    pub depth: u16,
    /// Hex of the 256-bit bitmap of non-empty siblings, bottom up.
    pub present: String,
    /// The non-empty siblings, bottom up, hex.
    pub hashes: Vec<String>,
}

/// An event's inclusion proof.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleInclusion {
    /// The event's leaf index (0-based, stream order).
    pub leaf_index: u64,
    /// The RFC 9162 audit path, bottom up, hex.
    pub path: Vec<String>,
}

/// The exporting tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// `casework-ledger`.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// A catalogue version and digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogRef {
    /// Version.
    pub version: String,
    /// Hex SHA-256 of the catalogue file, as promise_made recorded it.
    pub digest: String,
    /// Whether the exporting ledger holds this version with this digest.
    pub known_to_ledger: bool,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEvent {
    /// Position in the case's stored log.
    pub case_position: u64,
    /// Stream sequence.
    pub stream_seq: u64,
    /// Subject.
    pub subject: String,
    /// The exact stored bytes, base64 (standard alphabet, padded).
    pub raw_base64: String,
    /// Hex SHA-256 of the raw bytes.
    pub sha256: String,
    /// Hex prev_hash recorded in the event (empty if undecodable).
    pub prev_hash: String,
    /// The event as proto3 JSON (null if undecodable).
    pub decoded: Option<serde_json::Value>,
    /// v2: its inclusion proof in the bundle's checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusion: Option<BundleInclusion>,
}

/// The head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHead {
    /// Sequence of the last event.
    pub sequence: u64,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// Its stream sequence.
    pub stream_seq: u64,
}

/// A verification outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleVerdict {
    /// True when the chain is intact up to the head.
    pub intact: bool,
    /// Events examined.
    pub examined: u64,
    /// The first broken link.
    pub first_break: Option<BundleBreak>,
}

/// A broken link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleBreak {
    /// Per-case sequence.
    pub case_seq: u64,
    /// Stream sequence, if known.
    pub stream_seq: Option<u64>,
    /// `altered`, `missing`, `reordered` or `foreign`.
    pub fault: String,
    /// For people.
    pub detail: String,
}

impl BundleVerdict {
    /// From a domain verification.
    pub fn from_verification(v: &Verification) -> Self {
        Self {
            intact: v.is_intact(),
            examined: v.examined as u64,
            first_break: v.first_break.as_ref().map(|b| BundleBreak {
                case_seq: b.case_seq,
                stream_seq: b.stream_seq,
                fault: fault_name(b.fault).to_owned(),
                detail: b.detail.clone(),
            }),
        }
    }
}

/// Builds the bundle of a case from its archived rows and record.
pub fn build(
    tenant: &str,
    case_id: &str,
    rows: &[Row],
    record: &CaseRecord,
    catalog: Option<CatalogRef>,
    transparency: Option<(BundleCheckpoint, Vec<Option<BundleInclusion>>)>,
) -> Bundle {
    let (checkpoint, mut proofs) = match transparency {
        Some((c, p)) => (Some(c), p),
        None => (None, Vec::new()),
    };
    proofs.resize(rows.len(), None);
    let raws: Vec<RawEvent> = rows.iter().map(Row::raw_event).collect();
    let anchor = record.anchor();
    let v = verify_tokens(tenant, case_id, &raws, anchor);
    let events = rows
        .iter()
        .zip(proofs)
        .map(|(r, inclusion)| BundleEvent {
            case_position: r.position,
            stream_seq: r.stream_seq,
            subject: r.subject.clone(),
            raw_base64: STANDARD.encode(&r.raw),
            sha256: hex::encode(chain::hash(&r.raw)),
            prev_hash: chain::decode(&r.raw)
                .map(|e| hex::encode(e.prev_hash))
                .unwrap_or_default(),
            decoded: envelope_json(&r.raw),
            inclusion,
        })
        .collect();
    Bundle {
        format: FORMAT.to_owned(),
        tool: Tool {
            name: "casework-ledger".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        exported_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        tenant: tenant.to_owned(),
        case_id: case_id.to_owned(),
        catalog,
        events,
        head: (record.events > 0).then(|| BundleHead {
            sequence: record.head_seq,
            sha256: record.head_hash.clone(),
            stream_seq: record.head_stream_seq,
        }),
        verification: BundleVerdict::from_verification(&v),
        checkpoint,
    }
}

/// Why a bundle cannot be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not JSON of the bundle's shape.
    #[error("not an evidence bundle: {0}")]
    Malformed(String),
    /// A format this version does not read.
    #[error("unknown bundle format {0:?} (this tool reads {FORMAT} and {FORMAT_V1})")]
    Format(String),
}

/// The offline check of a bundle.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The bundle.
    pub bundle: Bundle,
    /// The chain verification of the raw bytes (anchored at the head).
    pub verification: Verification,
    /// Inconsistencies inside the bundle (a `sha256` or `prev_hash` field
    /// that does not match the raw bytes, a bad base64).
    pub problems: Vec<String>,
    /// The checkpoint and proofs, when a public key was given.
    pub transparency: Option<Transparency>,
}

/// What the checkpoint and the inclusion proofs showed.
#[derive(Debug, Clone)]
pub struct Transparency {
    /// The opened checkpoint (when its signature verified).
    pub checkpoint: Option<casework_tlog::note::Checkpoint>,
    /// Events whose inclusion proof verified.
    pub proven: usize,
    /// Every failure, naming the event.
    pub problems: Vec<String>,
}

impl Checked {
    /// True when the chain is intact, the bundle consistent, and (when a
    /// key was given) the checkpoint signed by it and every event proven
    /// in it.
    pub fn is_intact(&self) -> bool {
        self.verification.is_intact()
            && self.problems.is_empty()
            && self
                .transparency
                .as_ref()
                .is_none_or(|t| t.problems.is_empty())
    }
}

/// Checks the bundle's checkpoint with `key` and every event's proof.
fn check_transparency(
    bundle: &Bundle,
    raws: &[RawEvent],
    key: &casework_tlog::note::NoteVerifier,
) -> Transparency {
    use casework_tlog::{leaf, merkle};
    let mut t = Transparency {
        checkpoint: None,
        proven: 0,
        problems: Vec::new(),
    };
    let Some(bc) = &bundle.checkpoint else {
        t.problems.push(format!(
            "the bundle has no signed checkpoint ({}); export it again from a ledger that signs checkpoints",
            bundle.format
        ));
        return t;
    };
    let cp = match casework_tlog::note::open_checkpoint(key, &bc.note) {
        Ok(cp) => cp,
        Err(e) => {
            t.problems.push(format!("checkpoint: {e}"));
            return t;
        }
    };
    if cp.size != bc.tree_size || hex::encode(cp.root) != bc.root_hash {
        t.problems.push(
            "checkpoint: tree_size or root_hash differ from what the signed note says".to_owned(),
        );
    }
    for (e, raw) in bundle.events.iter().zip(raws) {
        let at = format!(
            "event at position {} (stream {})",
            e.case_position, e.stream_seq
        );
        let Some(inc) = &e.inclusion else {
            t.problems.push(format!("{at}: no inclusion proof"));
            continue;
        };
        let path: Option<Vec<merkle::Hash>> = inc
            .path
            .iter()
            .map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect();
        let Some(path) = path else {
            t.problems.push(format!(
                "{at}: the proof is not a list of hex SHA-256 hashes"
            ));
            continue;
        };
        let leaf = leaf::event_leaf_hash(
            &bundle.tenant,
            &bundle.case_id,
            e.case_position,
            &chain::hash(&raw.bytes),
        );
        match merkle::verify_inclusion(inc.leaf_index, cp.size, &leaf, &path, &cp.root) {
            Ok(()) => t.proven += 1,
            Err(err) => t.problems.push(format!(
                "{at}: not in the signed log as it stands (leaf {} of {}): {err}",
                inc.leaf_index, cp.size
            )),
        }
    }
    check_case_map(bundle, raws, bc, &cp, &mut t);
    t.checkpoint = Some(cp);
    t
}

/// The bundle's last event must be the case's head in the signed map: a
/// bundle cut short at its end, or whose head was rewritten, fails here.
fn check_case_map(
    bundle: &Bundle,
    raws: &[RawEvent],
    bc: &BundleCheckpoint,
    cp: &casework_tlog::note::Checkpoint,
    t: &mut Transparency,
) {
    use base64::Engine;
    use casework_tlog::map;
    let signed_root = cp.extensions.iter().find_map(|line| {
        let b64 = line
            .strip_prefix(crate::tlog::MAP_EXTENSION)?
            .strip_prefix(' ')?;
        let bytes = STANDARD.decode(b64).ok()?;
        <[u8; 32]>::try_from(bytes.as_slice()).ok()
    });
    let Some(signed_root) = signed_root else {
        t.problems.push(
            "checkpoint: no casework-case-map line; the case's head cannot be proven".to_owned(),
        );
        return;
    };
    let Some(cm) = &bc.case_map else {
        t.problems
            .push("the bundle has no case-map proof; its end cannot be proven".to_owned());
        return;
    };
    let proof = (|| {
        let present: [u8; 32] = hex::decode(&cm.present).ok()?.try_into().ok()?;
        let hashes: Option<Vec<map::Hash>> = cm
            .hashes
            .iter()
            .map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect();
        Some(map::MapProof {
            depth: cm.depth,
            present,
            hashes: hashes?,
        })
    })();
    let Some(proof) = proof else {
        t.problems
            .push("case map: the proof is not a hex bitmap and hex hashes".to_owned());
        return;
    };
    let key = map::case_key(&bundle.tenant, &bundle.case_id);
    let last = bundle.events.last().zip(raws.last());
    let Some((e_last, raw_last)) = last else {
        t.problems
            .push("case map: the bundle has no event to prove as the case's head".to_owned());
        return;
    };
    let leaf = map::head_leaf(&key, e_last.case_position, &chain::hash(&raw_last.bytes));
    if let Err(e) = map::verify(&signed_root, &key, &leaf, &proof) {
        t.problems.push(format!(
            "case map: the case's head in the signed checkpoint is not the bundle's last event (position {}): events are missing from its end, or its head was rewritten ({e})",
            e_last.case_position
        ));
    }
}

/// Verifies a bundle offline (no server): see the module docs.
pub fn check(
    json: &[u8],
    key: Option<&casework_tlog::note::NoteVerifier>,
) -> Result<Checked, BundleError> {
    let bundle: Bundle =
        serde_json::from_slice(json).map_err(|e| BundleError::Malformed(e.to_string()))?;
    if bundle.format != FORMAT && bundle.format != FORMAT_V1 {
        return Err(BundleError::Format(bundle.format));
    }
    let mut problems = Vec::new();
    let mut raws = Vec::with_capacity(bundle.events.len());
    for e in &bundle.events {
        let bytes = match STANDARD.decode(&e.raw_base64) {
            Ok(b) => b,
            Err(err) => {
                problems.push(format!(
                    "event at position {}: raw_base64 is not base64 ({err})",
                    e.case_position
                ));
                Vec::new()
            }
        };
        let h = hex::encode(chain::hash(&bytes));
        if h != e.sha256 {
            problems.push(format!(
                "event at position {}: sha256 {} is not the hash of its raw bytes ({h})",
                e.case_position, e.sha256
            ));
        }
        if let Ok(env) = chain::decode(&bytes)
            && hex::encode(&env.prev_hash) != e.prev_hash
        {
            problems.push(format!(
                "event at position {}: prev_hash field differs from the raw bytes",
                e.case_position
            ));
        }
        raws.push(RawEvent {
            stream_seq: e.stream_seq,
            subject: e.subject.clone(),
            bytes,
        });
    }
    let anchor = bundle.head.as_ref().and_then(|h| {
        let hash: Hash = hex::decode(&h.sha256).ok()?.try_into().ok()?;
        Some(ChainTip {
            case_seq: h.sequence,
            hash,
        })
    });
    if bundle.head.is_some() && anchor.is_none() {
        problems.push("head.sha256 is not a hex SHA-256".to_owned());
    }
    let verification = verify_tokens(&bundle.tenant, &bundle.case_id, &raws, anchor);
    let transparency = key.map(|k| check_transparency(&bundle, &raws, k));
    Ok(Checked {
        bundle,
        verification,
        problems,
        transparency,
    })
}
