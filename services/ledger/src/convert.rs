//! Conversions from the domain and the archive to the API's messages, and
//! the decoding of stored envelopes to proto3 JSON (for evidence bundles and
//! `casectl --json`), with prost-reflect over casework_proto's descriptors.

use std::sync::OnceLock;

use casework_domain::chain::{self, timestamp};
use casework_domain::{BrokenLink, CaseState, LinkFault, Verification};
use casework_proto::ledger::v1 as api;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

use crate::archive::{BreakRecord, CaseRecord, Row};

/// The API's fault kind.
pub fn fault(f: LinkFault) -> api::LinkFault {
    match f {
        LinkFault::Altered => api::LinkFault::Altered,
        LinkFault::Missing => api::LinkFault::Missing,
        LinkFault::Reordered => api::LinkFault::Reordered,
        LinkFault::Foreign => api::LinkFault::Foreign,
    }
}

/// A broken link for the API.
pub fn broken_link(b: &BrokenLink) -> api::BrokenLink {
    api::BrokenLink {
        case_seq: b.case_seq,
        stream_seq: b.stream_seq.unwrap_or(0),
        fault: fault(b.fault) as i32,
        detail: b.detail.clone(),
    }
}

/// A recorded break for the API.
pub fn break_record(b: &BreakRecord) -> api::BrokenLink {
    api::BrokenLink {
        case_seq: b.case_seq,
        stream_seq: b.stream_seq.unwrap_or(0),
        fault: fault(b.fault()) as i32,
        detail: b.detail.clone(),
    }
}

/// A verification outcome for the API.
pub fn verdict(v: &Verification) -> api::Verdict {
    api::Verdict {
        intact: v.is_intact(),
        examined: v.examined as u64,
        verified_sequence: v.verified_tip.case_seq,
        verified_sha256: v.verified_tip.hash.to_vec(),
        first_break: v.first_break.as_ref().map(broken_link),
    }
}

/// The chain status recorded while archiving.
pub fn chain_status(r: &CaseRecord) -> api::ChainStatus {
    api::ChainStatus {
        intact: r.broken.is_none(),
        first_break: r.broken.as_ref().map(break_record),
        events_after_break: r.after_break,
    }
}

fn ts_us(us: Option<i64>) -> Option<prost_types::Timestamp> {
    us.and_then(chrono::DateTime::from_timestamp_micros)
        .map(timestamp)
}

/// A case summary for the API.
pub fn summary(tenant: &str, case_id: &str, r: &CaseRecord) -> api::CaseSummary {
    api::CaseSummary {
        tenant: tenant.to_owned(),
        case_id: case_id.to_owned(),
        events: r.events,
        head_sequence: r.head_seq,
        head_sha256: hex::decode(&r.head_hash).unwrap_or_default(),
        head_stream_seq: r.head_stream_seq,
        last_event_type: r.last_event_type.clone(),
        first_event_at: ts_us(r.first_at_us),
        last_event_at: ts_us(r.last_at_us),
        chain: Some(chain_status(r)),
    }
}

/// An archived event for the API (decoded when it decodes).
pub fn archived(row: &Row) -> api::ArchivedEvent {
    api::ArchivedEvent {
        stream_seq: row.stream_seq,
        subject: row.subject.clone(),
        sha256: chain::hash(&row.raw).to_vec(),
        envelope: chain::decode(&row.raw).ok(),
        raw: row.raw.clone(),
        case_position: row.position,
    }
}

/// The case state for the API.
pub fn state(s: &CaseState) -> api::CaseState {
    let ts = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(timestamp);
    api::CaseState {
        tenant: s.tenant.clone(),
        case_id: s.case_id.clone(),
        status: s.status.as_str().to_owned(),
        events: s.events,
        tip_sequence: s.tip.map_or(0, |t| t.case_seq),
        tip_sha256: s.tip.map(|t| t.hash.to_vec()).unwrap_or_default(),
        opened: s.opened.clone(),
        personal_data_erased: s.personal_data_erased,
        opened_at: ts(s.opened_at),
        promise: s.promise.as_ref().map(|p| api::Promise {
            service_code: p.service_code.clone(),
            catalog_version: p.catalog_version.clone(),
            deadline: Some(timestamp(p.deadline)),
            outcome: p.outcome.clone(),
        }),
        promise_kept: s.promise_kept,
        kept_late: s.kept_late,
        promise_broken: s.promise_broken,
        runs: s.runs,
        steps: s
            .steps
            .iter()
            .map(|st| api::StepProgress {
                name: st.name.clone(),
                attempts: st.attempts,
                completed: st.completed,
                in_flight: st.in_flight,
                retry_at: ts(st.retry_at),
            })
            .collect(),
        recoveries: s.recoveries,
        recovery: s.recovery.as_ref().map(|r| api::RecoveryProgress {
            recovery: r.recovery,
            trigger: r.trigger,
            actions: r.actions.clone(),
            pending_compensations: r.pending_compensations.clone(),
            outcome: r.outcome.unwrap_or(0),
        }),
        retries_requested: s.retries_requested,
        feedback: s.feedback.clone(),
        interactions: s.interactions,
        notified: s.notified.unwrap_or(0),
        closed: s.closed.unwrap_or(0),
        last_event_id: s.last_event_id.clone(),
        last_event_at: ts(s.last_event_at),
    }
}

fn envelope_descriptor() -> &'static MessageDescriptor {
    static DESC: OnceLock<MessageDescriptor> = OnceLock::new();
    DESC.get_or_init(|| {
        DescriptorPool::decode(casework_proto::FILE_DESCRIPTOR_SET)
            .expect("casework_proto's descriptor set is valid")
            .get_message_by_name("casework.events.v1.Envelope")
            .expect("the descriptor set holds casework.events.v1.Envelope")
    })
}

/// Stored envelope bytes as proto3 JSON (field names as in the .proto,
/// enums by name, bytes in base64, timestamps in RFC 3339); `None` when the
/// bytes are not an envelope.
pub fn envelope_json(raw: &[u8]) -> Option<serde_json::Value> {
    let msg = DynamicMessage::decode(envelope_descriptor().clone(), raw).ok()?;
    let opts = SerializeOptions::new().use_proto_field_name(true);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .ok()
}
