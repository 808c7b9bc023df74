//! Sealing a decision's events into envelopes that continue a case's hash
//! chain: event n+1 carries `prev_hash` = SHA-256 of the exact stored bytes
//! of event n (32 zero bytes for event 1).

use chrono::{DateTime, Utc};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::event::{EventType, Writer, subject};
use crate::pb::{Envelope, envelope::Payload};
use crate::token::{CaseId, EventId, Tenant};
use crate::{Error, Result};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `prev_hash` of a case's first event.
pub const GENESIS_HASH: Hash = [0u8; 32];

/// Version of every payload schema in `casework.events.v1`.
pub const SCHEMA_VERSION: u32 = 1;

/// SHA-256 of stored bytes.
pub fn hash(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// Converts a UTC time to a protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// Converts a protobuf timestamp to UTC (out-of-range values clamp to the
/// epoch, which no valid event carries).
pub fn from_timestamp(ts: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(ts.seconds, ts.nanos.max(0) as u32).unwrap_or_default()
}

/// An event a decision wants appended, before it has a place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Deterministic id derived from the cause.
    pub event_id: EventId,
    /// When the writer decided it.
    pub occurred_at: DateTime<Utc>,
    /// The event (or request) that caused it.
    pub causation_id: String,
    /// Shared by everything done for one customer request.
    pub correlation_id: String,
    /// The typed payload.
    pub payload: Payload,
}

impl NewEvent {
    /// The event's type, from its payload.
    pub fn event_type(&self) -> EventType {
        EventType::of(&self.payload)
    }
}

/// Where a case's log ends: the per-case sequence and hash of its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainTip {
    /// Per-case sequence of the last event (0 for an empty log).
    pub case_seq: u64,
    /// Hash of the last event's stored bytes ([`GENESIS_HASH`] when empty).
    pub hash: Hash,
}

impl ChainTip {
    /// The tip of an empty log.
    pub const EMPTY: ChainTip = ChainTip {
        case_seq: 0,
        hash: GENESIS_HASH,
    };
}

/// An event sealed into its envelope, ready to be stored as `bytes` under
/// `subject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedEvent {
    /// The event id (`Nats-Msg-Id`).
    pub event_id: EventId,
    /// The event type.
    pub event_type: EventType,
    /// `case.<tenant>.<case_id>.<writer>.<event_type>`.
    pub subject: String,
    /// Per-case sequence this event will have.
    pub case_seq: u64,
    /// The encoded envelope: exactly what is stored.
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`: the next event's `prev_hash`.
    pub hash: Hash,
    /// When the writer decided it.
    pub occurred_at: DateTime<Utc>,
}

/// Seals the events of one decision for `case`, continuing the chain after
/// `tip`. All events must have the same writer (one decision, one service).
pub fn seal(
    tenant: &Tenant,
    case: &CaseId,
    writer_instance: &str,
    tip: ChainTip,
    events: Vec<NewEvent>,
) -> Result<Vec<SealedEvent>> {
    let Some(first) = events.first() else {
        return Err(Error::BadEvent {
            event_type: String::new(),
            why: "a decision must append at least one event".to_owned(),
        });
    };
    let writer: Writer = first.event_type().writer();
    let mut ids = std::collections::HashSet::new();
    if let Some(dup) = events.iter().find(|e| !ids.insert(e.event_id.as_str())) {
        return Err(Error::BadEvent {
            event_type: dup.event_type().to_string(),
            why: format!("event id {} appears twice in one decision", dup.event_id),
        });
    }
    let mut prev = tip.hash;
    let mut out = Vec::with_capacity(events.len());
    for (i, ev) in events.into_iter().enumerate() {
        let event_type = ev.event_type();
        if event_type.writer() != writer {
            return Err(Error::BadEvent {
                event_type: event_type.to_string(),
                why: format!(
                    "one decision mixes writers: {} and {writer}; each service appends only its own events",
                    event_type.writer()
                ),
            });
        }
        let case_seq = tip.case_seq + 1 + i as u64;
        let envelope = Envelope {
            event_id: ev.event_id.to_string(),
            tenant: tenant.to_string(),
            case_id: case.to_string(),
            sequence: case_seq,
            event_type: event_type.to_string(),
            schema_version: SCHEMA_VERSION,
            writer: writer.to_string(),
            writer_instance: writer_instance.to_owned(),
            occurred_at: Some(timestamp(ev.occurred_at)),
            causation_id: ev.causation_id,
            correlation_id: ev.correlation_id,
            prev_hash: prev.to_vec(),
            payload: Some(ev.payload),
        };
        let bytes = envelope.encode_to_vec();
        let h = hash(&bytes);
        out.push(SealedEvent {
            event_id: ev.event_id,
            event_type,
            subject: subject(tenant, case, event_type),
            case_seq,
            bytes,
            hash: h,
            occurred_at: ev.occurred_at,
        });
        prev = h;
    }
    Ok(out)
}

/// Decodes stored bytes into an envelope and checks that its declared type
/// matches its payload.
pub fn decode(bytes: &[u8]) -> Result<Envelope> {
    let env = Envelope::decode(bytes).map_err(|e| Error::Undecodable(e.to_string()))?;
    let Some(payload) = env.payload.as_ref() else {
        return Err(Error::BadEvent {
            event_type: env.event_type.clone(),
            why: "the envelope carries no payload".to_owned(),
        });
    };
    if EventType::of(payload).as_str() != env.event_type {
        return Err(Error::BadEvent {
            event_type: env.event_type.clone(),
            why: format!(
                "the payload is a {} but the envelope says {}",
                EventType::of(payload),
                env.event_type
            ),
        });
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn ev(key: &str, payload: Payload) -> NewEvent {
        let case = CaseId::parse("01JD8X3V5R6M2Q4T7W9Y0Z1A2B").unwrap();
        NewEvent {
            event_id: EventId::derive(&case, "req-1", key),
            occurred_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            causation_id: String::new(),
            correlation_id: case.to_string(),
            payload,
        }
    }

    #[test]
    fn sealing_chains_and_numbers_events() {
        let t = Tenant::parse("acme").unwrap();
        let c = CaseId::parse("01JD8X3V5R6M2Q4T7W9Y0Z1A2B").unwrap();
        let sealed = seal(
            &t,
            &c,
            "intake-0",
            ChainTip::EMPTY,
            vec![
                ev("a", Payload::CaseOpened(pb::CaseOpened::default())),
                ev("b", Payload::PromiseMade(pb::PromiseMade::default())),
            ],
        )
        .unwrap();
        assert_eq!(sealed[0].case_seq, 1);
        assert_eq!(sealed[1].case_seq, 2);
        let e1 = decode(&sealed[0].bytes).unwrap();
        let e2 = decode(&sealed[1].bytes).unwrap();
        assert_eq!(e1.prev_hash, GENESIS_HASH.to_vec());
        assert_eq!(e2.prev_hash, hash(&sealed[0].bytes).to_vec());
        assert_eq!(e2.writer, "intake");
        assert_eq!(
            sealed[1].subject,
            "case.acme.01JD8X3V5R6M2Q4T7W9Y0Z1A2B.intake.promise_made"
        );

        let tip = ChainTip {
            case_seq: 2,
            hash: sealed[1].hash,
        };
        let next = seal(
            &t,
            &c,
            "intake-0",
            tip,
            vec![ev("c", Payload::CaseClosed(pb::CaseClosed::default()))],
        )
        .unwrap();
        assert_eq!(next[0].case_seq, 3);
        assert_eq!(
            decode(&next[0].bytes).unwrap().prev_hash,
            sealed[1].hash.to_vec()
        );
    }

    #[test]
    fn a_decision_cannot_mix_writers_or_be_empty() {
        let t = Tenant::parse("acme").unwrap();
        let c = CaseId::parse("01JD8X3V5R6M2Q4T7W9Y0Z1A2B").unwrap();
        let mixed = vec![
            ev("a", Payload::CaseOpened(pb::CaseOpened::default())),
            ev("b", Payload::PromiseKept(pb::PromiseKept::default())),
        ];
        assert!(matches!(
            seal(&t, &c, "x", ChainTip::EMPTY, mixed),
            Err(Error::BadEvent { .. })
        ));
        assert!(seal(&t, &c, "x", ChainTip::EMPTY, vec![]).is_err());
    }
}
