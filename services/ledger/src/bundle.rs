//! Evidence bundles: one JSON document holding everything needed to verify
//! a case offline, with no server and no Casework code beyond SHA-256 and the
//! published .proto files: the exact stored bytes of every event (base64),
//! their hashes and prev_hashes, the decoded events, the head (anchor), the
//! catalogue version the case is pinned to, and the tool that exported it.
//!
//! [`check`] is the offline verification `casectl verify --bundle` runs:
//! every `sha256` must be the hash of its `raw_base64`, and the chain of the
//! raw bytes must verify (casework_domain::verify) up to the head.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use casework_domain::chain::{self, Hash};
use casework_domain::{ChainTip, RawEvent, Verification};
use serde::{Deserialize, Serialize};

use crate::archive::{CaseRecord, Row, fault_name, verify_tokens};
use crate::convert::envelope_json;

/// The `format` of a version-1 bundle.
pub const FORMAT: &str = "casework-evidence-bundle/v1";

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
) -> Bundle {
    let raws: Vec<RawEvent> = rows.iter().map(Row::raw_event).collect();
    let anchor = record.anchor();
    let v = verify_tokens(tenant, case_id, &raws, anchor);
    let events = rows
        .iter()
        .map(|r| BundleEvent {
            case_position: r.position,
            stream_seq: r.stream_seq,
            subject: r.subject.clone(),
            raw_base64: STANDARD.encode(&r.raw),
            sha256: hex::encode(chain::hash(&r.raw)),
            prev_hash: chain::decode(&r.raw)
                .map(|e| hex::encode(e.prev_hash))
                .unwrap_or_default(),
            decoded: envelope_json(&r.raw),
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
    }
}

/// Why a bundle cannot be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not JSON of the bundle's shape.
    #[error("not an evidence bundle: {0}")]
    Malformed(String),
    /// A format this version does not read.
    #[error("unknown bundle format {0:?} (this tool reads {FORMAT})")]
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
}

impl Checked {
    /// True when the chain is intact and the bundle consistent.
    pub fn is_intact(&self) -> bool {
        self.verification.is_intact() && self.problems.is_empty()
    }
}

/// Verifies a bundle offline (no server): see the module docs.
pub fn check(json: &[u8]) -> Result<Checked, BundleError> {
    let bundle: Bundle =
        serde_json::from_slice(json).map_err(|e| BundleError::Malformed(e.to_string()))?;
    if bundle.format != FORMAT {
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
    Ok(Checked {
        bundle,
        verification,
        problems,
    })
}
