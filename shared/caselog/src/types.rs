//! The values the log hands out: case keys, heads, stored events and
//! deliveries.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use casework_domain::{CaseId, ChainTip, Hash, RawEvent, Tenant, pb::Envelope};
use futures::Stream;

use crate::{Error, Result};

/// Which case: tenant + case id (both validated tokens).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaseKey {
    /// The tenant.
    pub tenant: Tenant,
    /// The case id.
    pub case_id: CaseId,
}

impl CaseKey {
    /// Validates both tokens.
    pub fn parse(tenant: &str, case_id: &str) -> Result<Self> {
        Ok(Self {
            tenant: Tenant::parse(tenant)?,
            case_id: CaseId::parse(case_id)?,
        })
    }

    /// `case.<tenant>.<case_id>.>`.
    pub fn filter(&self) -> String {
        casework_domain::case_filter(&self.tenant, &self.case_id)
    }
}

impl fmt::Display for CaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.case_id)
    }
}

/// Where a case's log ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Stream sequence of the case's last message (the optimistic
    /// concurrency guard).
    pub stream_seq: u64,
    /// Per-case sequence of the last event.
    pub case_seq: u64,
    /// SHA-256 of the last event's stored bytes.
    pub hash: Hash,
    /// Id of the last event.
    pub event_id: String,
}

impl Head {
    /// The chain tip for sealing the next events.
    pub fn tip(&self) -> ChainTip {
        ChainTip {
            case_seq: self.case_seq,
            hash: self.hash,
        }
    }
}

/// One stored event: its place in the stream, its exact bytes, and the
/// decoded envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Stream sequence.
    pub stream_seq: u64,
    /// Subject it is stored under.
    pub subject: String,
    /// The exact stored bytes.
    pub bytes: bytes::Bytes,
    /// SHA-256 of `bytes`.
    pub hash: Hash,
    /// The decoded envelope.
    pub envelope: Envelope,
}

impl StoredEvent {
    /// Decodes a stored message.
    pub fn decode(stream_seq: u64, subject: String, bytes: bytes::Bytes) -> Result<Self> {
        let envelope = casework_domain::chain::decode(&bytes).map_err(|e| Error::Undecodable {
            stream_seq,
            subject: subject.clone(),
            why: e.to_string(),
        })?;
        // Another writer's event type under this writer's subject (or an
        // envelope that names another writer) is not an event of this case:
        // every reader refuses it, so a service acting on the case parks it
        // with this reason, and verification reports it.
        if let Some(why) = casework_domain::verify::not_its_writers(&subject, &envelope) {
            return Err(Error::Undecodable {
                stream_seq,
                subject,
                why,
            });
        }
        Ok(Self {
            stream_seq,
            hash: casework_domain::chain::hash(&bytes),
            subject,
            bytes,
            envelope,
        })
    }

    /// The head of a log ending with this event.
    pub fn head(&self) -> Head {
        Head {
            stream_seq: self.stream_seq,
            case_seq: self.envelope.sequence,
            hash: self.hash,
            event_id: self.envelope.event_id.clone(),
        }
    }

    /// The raw form, for verification.
    pub fn raw(&self) -> RawEvent {
        RawEvent {
            stream_seq: self.stream_seq,
            subject: self.subject.clone(),
            bytes: self.bytes.to_vec(),
        }
    }
}

/// The outcome of a successful append.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// Stream sequence of the first event appended.
    pub first_stream_seq: u64,
    /// The case's head after the last event.
    pub head: Head,
    /// True when every event was already in the log (a retried append, or
    /// a racing writer that decided the same).
    pub already: bool,
    /// True when every event in the log is byte-for-byte the one this
    /// append sealed: a fresh append, or a retry of our own append whose
    /// first attempt landed. False when another writer (a racing replica)
    /// landed events with the same ids: it decided the same, and the
    /// effects of the decision are its to perform, not ours.
    pub own: bool,
    /// The events as they are stored, in order (the log's copies when
    /// `already`): what a holder of the case's state folds next.
    pub events: Vec<StoredEvent>,
}

impl Appended {
    /// True when this append stored something new (count it once).
    pub fn fresh(&self) -> bool {
        !self.already
    }

    /// This append followed by `next` (the following event of the same
    /// decision), as one outcome.
    pub fn then(mut self, next: Appended) -> Appended {
        self.head = next.head;
        self.already &= next.already;
        self.own &= next.own;
        self.events.extend(next.events);
        self
    }
}

pub(crate) type MemoryAck = Arc<dyn Fn(AckKind) + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckKind {
    Ack,
    Nak(Option<Duration>),
    Progress,
}

pub(crate) enum Acker {
    Nats(Box<async_nats::jetstream::Message>),
    Memory(MemoryAck),
    None,
}

/// One event delivered to a durable consumer. Acknowledge it only once its
/// effects are durable (e.g. after the redb commit); an unacknowledged
/// delivery comes again.
pub struct Delivery {
    /// Stream sequence.
    pub stream_seq: u64,
    /// Subject (`case.<tenant>.<case_id>.<writer>.<event_type>`).
    pub subject: String,
    /// The exact stored bytes.
    pub bytes: bytes::Bytes,
    /// How many times this event was delivered to this consumer (1 first).
    pub delivered: u64,
    /// The W3C trace context the event was written under (its
    /// `traceparent` header), to continue the trace.
    pub traceparent: Option<String>,
    /// How many matching events remain after this one (as known when it was
    /// delivered): 0 means the reader has caught up.
    pub pending: u64,
    pub(crate) acker: Acker,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("stream_seq", &self.stream_seq)
            .field("subject", &self.subject)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Decodes the delivered event.
    pub fn decode(&self) -> Result<StoredEvent> {
        StoredEvent::decode(self.stream_seq, self.subject.clone(), self.bytes.clone())
    }

    /// The case this event belongs to, from its subject.
    pub fn case(&self) -> Result<CaseKey> {
        let p = casework_domain::event::parse_subject(&self.subject)?;
        Ok(CaseKey {
            tenant: p.tenant,
            case_id: p.case_id,
        })
    }

    /// The raw form, for verification and archiving.
    pub fn raw(&self) -> RawEvent {
        RawEvent {
            stream_seq: self.stream_seq,
            subject: self.subject.clone(),
            bytes: self.bytes.to_vec(),
        }
    }

    async fn send(&self, kind: AckKind) -> Result<()> {
        match &self.acker {
            Acker::Nats(m) => {
                let k = match kind {
                    AckKind::Ack => async_nats::jetstream::AckKind::Ack,
                    AckKind::Nak(d) => async_nats::jetstream::AckKind::Nak(d),
                    AckKind::Progress => async_nats::jetstream::AckKind::Progress,
                };
                m.ack_with(k).await.map_err(|e| Error::Nats(e.to_string()))
            }
            Acker::Memory(f) => {
                f(kind);
                Ok(())
            }
            Acker::None => Ok(()),
        }
    }

    /// Acknowledges: the event is done with for this consumer.
    pub async fn ack(self) -> Result<()> {
        self.send(AckKind::Ack).await
    }

    /// Asks for redelivery, after `delay` if given.
    pub async fn nak(self, delay: Option<Duration>) -> Result<()> {
        self.send(AckKind::Nak(delay)).await
    }

    /// Says the event is still being worked on (resets the ack timer).
    pub async fn in_progress(&self) -> Result<()> {
        self.send(AckKind::Progress).await
    }
}

/// A stream of deliveries for one durable consumer.
pub type Deliveries = Pin<Box<dyn Stream<Item = Result<Delivery>> + Send>>;
