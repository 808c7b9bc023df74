//! `casework-caselog` owns the per-case logs (DESIGN.md §3): appending
//! events to one case one message at a time, each guarded by the case's
//! expected last sequence and deduplicated by event id; reading a case (or
//! just what follows a known head) and
//! its head; delivering events to durable consumers with explicit acks; and
//! the stream configuration, capability checks and per-service permissions
//! that make it safe. [`JetStreamLog`] is the real thing, [`MemoryLog`] its
//! in-memory twin for unit tests, and [`conformance`] the one suite both must
//! pass. It must not hold domain rules (that is `casework-domain`) nor know
//! any service: it stores sealed envelopes and nothing else.
//!
//! Layout: `types` (keys, heads, stored events, deliveries), `memory`,
//! `jetstream` (connection, streams, append, read, consume), `headers`
//! (CloudEvents and traceparent), `permissions` (the broker-enforced writer
//! scheme), `conformance` (the shared suite).

pub mod conformance;
pub mod headers;
pub mod jetstream;
pub mod memory;
pub mod permissions;
mod types;

use async_trait::async_trait;
pub use casework_domain as domain;
use casework_domain::{ChainTip, NewEvent, SealedEvent};
pub use jetstream::{
    CASES_STREAM, ConsumerOptions, JetStreamLog, NatsOptions, StreamOptions, TIMERS_STREAM,
};
pub use memory::MemoryLog;
pub use types::{Appended, CaseKey, Deliveries, Delivery, Head, StoredEvent};

/// Everything that can go wrong with the per-case log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Someone else appended to the case first: reload, decide again.
    #[error(
        "conflict on case {case}: expected the log to end at stream sequence {expected}, but it has moved on"
    )]
    Conflict {
        /// `tenant/case_id`.
        case: String,
        /// The stream sequence the append expected to be last.
        expected: u64,
    },
    /// Input that is not valid (a bad token, an empty or mixed decision).
    #[error(transparent)]
    Invalid(#[from] casework_domain::Error),
    /// A call the log cannot honour as made (the message says what was
    /// wrong and how to fix it), e.g. a consumer with no subject filter.
    #[error("{0}")]
    Misuse(String),
    /// This client tried to append events of a type it does not write.
    #[error("{instance} writes {allowed} events only; refusing to append {event_type}")]
    Forbidden {
        /// The client's writer instance.
        instance: String,
        /// The writer this client is.
        allowed: String,
        /// The refused event type.
        event_type: String,
    },
    /// The broker reported a permissions violation for this client's
    /// requests (it answers those with an error event, not a reply).
    #[error(
        "the broker denies {what} to this NATS user ({violation}): its credentials are not this service's (check nats.user with nats.password, or nats.creds_file), or the broker's permissions predate this version"
    )]
    Denied {
        /// What was asked.
        what: String,
        /// The broker's words.
        violation: String,
    },
    /// The server lacks something Casework relies on.
    #[error(
        "nats-server {server_version} cannot be used: {missing}. Casework needs nats-server 2.12 or newer with JetStream enabled"
    )]
    Unsupported {
        /// The version the server reported.
        server_version: String,
        /// What is missing.
        missing: String,
    },
    /// An existing stream's configuration does not match the contract.
    #[error("stream {stream} is misconfigured: {why}")]
    Misconfigured {
        /// Stream name.
        stream: String,
        /// What differs and how to fix it.
        why: String,
    },
    /// A stored message that does not decode as an envelope.
    #[error("stored event at stream sequence {stream_seq} ({subject}) is undecodable: {why}")]
    Undecodable {
        /// Where it is.
        stream_seq: u64,
        /// Its subject.
        subject: String,
        /// Why.
        why: String,
    },
    /// The broker rejected the request.
    #[error("JetStream refused: {description} (code {code})")]
    Rejected {
        /// JetStream error code.
        code: u64,
        /// The server's description.
        description: String,
    },
    /// The outcome is unknown after every retry (timeouts, disconnects).
    #[error("the log is unavailable: {0}")]
    Unavailable(String),
    /// A NATS client error.
    #[error("nats: {0}")]
    Nats(String),
}

impl Error {
    /// True for a conflict (someone else wrote first).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// What a broker refusal says about the broker, when it says something
    /// waiting (or an operator) can fix rather than a fault in the request.
    pub fn broker_trouble(&self) -> Option<BrokerTrouble> {
        match self {
            Error::Rejected { code, .. } => match code {
                // Account limits, insufficient resources, memory or storage
                // exhausted, a store that failed (a full disk, a stream at
                // its limits).
                10002 | 10023 | 10028 | 10047 | 10077 => Some(BrokerTrouble::OutOfResources),
                // The cluster has no leader or quorum yet, JetStream is not
                // enabled (a broker disables it when its storage fails),
                // a stream or consumer offline.
                10004 | 10006 | 10007 | 10008 | 10009 | 10039 | 10076 | 10118 | 10119 => {
                    Some(BrokerTrouble::NotAvailable)
                }
                _ => None,
            },
            Error::Unavailable(_) | Error::Nats(_) => Some(BrokerTrouble::NotAvailable),
            _ => None,
        }
    }
}

/// The kinds of broker trouble ([`Error::broker_trouble`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerTrouble {
    /// The broker cannot store more: its storage (or memory, or the
    /// account's or stream's limits) is exhausted. An operator frees space
    /// or raises limits; retrying at once does not help.
    OutOfResources,
    /// The broker (or JetStream, or the stream's leader) is not available
    /// now; it may be back in a moment.
    NotAvailable,
}

/// Result alias with the log's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The per-case log. Implementations: [`JetStreamLog`], [`MemoryLog`].
///
/// **One event per append** (DESIGN.md §3): an append is one message, one
/// event, guarded by the case's expected last sequence and deduplicated by
/// its id. A decision of several events appends them one after another,
/// each on the head the previous one produced ([`CaseLog::append_traced`]);
/// that is not atomic, and need not be: the rules are written so that every
/// prefix of a decision is a state they continue from, with the same event
/// ids, so a crash between two events is healed by deciding again.
#[async_trait]
pub trait CaseLog: Send + Sync + std::fmt::Debug + 'static {
    /// Appends one event to `case`, only if the case's log still ends at
    /// `after` (`None`: the log must be empty). A retry of an append that
    /// already landed returns the landed position with `already: true`
    /// (and `own: true` when the stored bytes are exactly the ones sealed
    /// now); a different event that got there first is [`Error::Conflict`].
    /// "Already landed" is judged by event id (ids are derived from the
    /// cause): a caller that can repeat an id with a different body (e.g. a
    /// client reusing an idempotency key for another request) must compare
    /// the stored event itself. `traceparent` is the W3C trace context to
    /// carry (a deterministic one derived from the correlation id is used
    /// when `None`).
    async fn append_event(
        &self,
        case: &CaseKey,
        after: Option<&Head>,
        event: NewEvent,
        traceparent: Option<&str>,
    ) -> Result<Appended>;

    /// Appends the events of one decision in order, each as its own
    /// [`CaseLog::append_event`] on the head the previous one produced. On
    /// an error part-way, the events before it are in the log (a prefix of
    /// the decision); the caller reloads and decides again. An empty
    /// decision is `Invalid`.
    async fn append_traced(
        &self,
        case: &CaseKey,
        after: Option<&Head>,
        events: Vec<NewEvent>,
        traceparent: Option<&str>,
    ) -> Result<Appended> {
        if events.is_empty() {
            return Err(Error::Misuse(format!(
                "an append to {case} needs at least one event"
            )));
        }
        let mut ids = std::collections::HashSet::new();
        if let Some(dup) = events.iter().find(|e| !ids.insert(e.event_id.as_str())) {
            return Err(Error::Misuse(format!(
                "event id {} appears twice in one decision for {case}",
                dup.event_id
            )));
        }
        let mut head = after.cloned();
        let mut out: Option<Appended> = None;
        for event in events {
            let a = self
                .append_event(case, head.as_ref(), event, traceparent)
                .await?;
            head = Some(a.head.clone());
            out = Some(match out {
                None => a,
                Some(acc) => acc.then(a),
            });
        }
        Ok(out.expect("at least one event"))
    }

    /// [`CaseLog::append_traced`] without a trace context.
    async fn append(
        &self,
        case: &CaseKey,
        after: Option<&Head>,
        events: Vec<NewEvent>,
    ) -> Result<Appended> {
        self.append_traced(case, after, events, None).await
    }

    /// The case's events after `after` (the whole log when `None`), for a
    /// holder of the case's state that is at `after`. `until` is a known
    /// event of the case (its stream and per-case sequence, e.g. from the
    /// delivery that woke the reader): the read stops there, so it costs
    /// one request for exactly the events in between; without it the log
    /// finds where the case ends first. The result starts right after
    /// `after` when the log is as the caller believes; the caller checks
    /// that it continues its head and reads the whole case otherwise.
    async fn read_after(
        &self,
        case: &CaseKey,
        after: Option<&Head>,
        until: Option<(u64, u64)>,
    ) -> Result<Vec<StoredEvent>> {
        let mut events = self
            .read(case, after.map_or(0, |h| h.stream_seq + 1))
            .await?;
        if let Some((stream_seq, _)) = until {
            events.retain(|e| e.stream_seq <= stream_seq);
        }
        Ok(events)
    }

    /// The case's events in order, starting at stream sequence
    /// `from_stream_seq` (0 or 1: the whole log). Fails with
    /// [`Error::Undecodable`] if a stored message is not an envelope.
    async fn read(&self, case: &CaseKey, from_stream_seq: u64) -> Result<Vec<StoredEvent>>;

    /// The case's raw stored messages in stream order, for verification.
    async fn read_raw(&self, case: &CaseKey) -> Result<Vec<casework_domain::RawEvent>>;

    /// Where the case's log ends, or `None` for a case with no events.
    async fn head(&self, case: &CaseKey) -> Result<Option<Head>>;

    /// Delivers every event matching any of `filters` (subjects with NATS
    /// wildcards, e.g. `case.*.*.intake.>` or
    /// `case.*.*.fulfilment.promise_kept`) to the durable consumer
    /// `durable`, in stream order, starting after what it has acknowledged.
    /// A service that acts on a few event types names them, so it is not
    /// woken by the rest. An existing consumer with other filters is
    /// refused (delete it or use another name); no filter is `Invalid`.
    async fn consume(&self, durable: &str, filters: &[String]) -> Result<Deliveries>;

    /// Follows every event matching `filter` from stream sequence
    /// `from_stream_seq` on, in order, live, with no server-side state (an
    /// ordered ephemeral consumer): for read models that keep their own
    /// checkpoint, archives and subscriptions. Acks are no-ops.
    async fn tail(&self, filter: &str, from_stream_seq: u64) -> Result<Deliveries>;

    /// The stream sequence of the last message in the log (0 when empty):
    /// how far a catching-up reader has to go.
    async fn last_stream_seq(&self) -> Result<u64>;
}

/// Seals `event` after `after`, checking the writer is `writer` (when this
/// client is bound to one).
pub(crate) fn seal_for(
    case: &CaseKey,
    after: Option<&Head>,
    event: NewEvent,
    instance: &str,
    writer: Option<casework_domain::Writer>,
) -> Result<SealedEvent> {
    if let Some(w) = writer
        && event.event_type().writer() != w
    {
        return Err(Error::Forbidden {
            instance: instance.to_owned(),
            allowed: w.to_string(),
            event_type: event.event_type().to_string(),
        });
    }
    let tip = after.map(Head::tip).unwrap_or(ChainTip::EMPTY);
    let mut sealed =
        casework_domain::seal(&case.tenant, &case.case_id, instance, tip, vec![event])?;
    Ok(sealed.pop().expect("one sealed event"))
}

/// The stored form of an event this client just appended at `stream_seq`.
pub(crate) fn stored_of(sealed: &SealedEvent, stream_seq: u64) -> Result<Appended> {
    let stored = StoredEvent::decode(
        stream_seq,
        sealed.subject.clone(),
        bytes::Bytes::from(sealed.bytes.clone()),
    )?;
    Ok(Appended {
        first_stream_seq: stream_seq,
        head: stored.head(),
        already: false,
        own: true,
        events: vec![stored],
    })
}

/// How long [`read_reaching`] asks again for a replica to catch up before
/// calling the log unavailable (the caller retries later).
pub const CATCH_UP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// The case's events from `from_stream_seq` ([`CaseLog::read`]), from a
/// copy of the log that holds at least stream sequence `reach` of this
/// case. Every server of a clustered stream answers reads, and a replica
/// may not yet hold what the leader acknowledged a moment ago (nats-server
/// has no read-after-write option for direct gets), so a reader that
/// knows an event exists — it was delivered, it refused our append, we
/// held it — asks again, with a short backoff, until the answer reaches
/// it. After [`CATCH_UP_PATIENCE`] it gives up with
/// [`Error::Unavailable`], never with a log older than what it knows.
pub async fn read_reaching<L: CaseLog + ?Sized>(
    log: &L,
    case: &CaseKey,
    from_stream_seq: u64,
    reach: u64,
) -> Result<Vec<StoredEvent>> {
    let started = tokio::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        let events = log.read(case, from_stream_seq).await?;
        let last = events.last().map_or(0, |e| e.stream_seq);
        if last >= reach {
            return Ok(events);
        }
        if started.elapsed() >= CATCH_UP_PATIENCE {
            return Err(Error::Unavailable(format!(
                "the log of {case} read ends at stream sequence {last}, before {reach} which it is known to hold (a replica that has not caught up after {CATCH_UP_PATIENCE:?})"
            )));
        }
        metrics::counter!("casework_stale_reads_total").increment(1);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    }
}

/// After a conflict (or a duplicate ack), checks whether this very event
/// is already in the log right after `after` — a retry of an append whose
/// first attempt landed, or a racing writer that decided the same — and if
/// so returns where it is, with `own` telling whether its bytes are ours.
pub(crate) async fn find_landed<L: CaseLog + ?Sized>(
    log: &L,
    case: &CaseKey,
    after: Option<&Head>,
    sealed: &SealedEvent,
) -> Result<Option<Appended>> {
    // A conflict or a duplicate ack means the case holds an event after
    // `after`: a read that shows none came from a replica behind the one
    // that refused us, and is asked again rather than believed.
    let from = after.map(|h| h.stream_seq + 1).unwrap_or(0);
    let events = read_reaching(log, case, from, from.max(1)).await?;
    let Some(landed) = events
        .into_iter()
        .find(|e| e.envelope.sequence == sealed.case_seq)
    else {
        return Ok(None);
    };
    if landed.envelope.event_id != sealed.event_id.as_str() {
        return Ok(None);
    }
    Ok(Some(Appended {
        first_stream_seq: landed.stream_seq,
        head: landed.head(),
        already: true,
        own: landed.bytes[..] == sealed.bytes[..],
        events: vec![landed],
    }))
}
