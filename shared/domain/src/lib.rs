//! `casework-domain` owns the event model every Casework service shares and
//! the pure case state: validated tokens (tenants, case ids, event ids), the
//! event types with their single writer, the subject layout of the per-case
//! logs, sealing new events into a hash-chained envelope, verifying a chain
//! from raw stored messages, and `evolve` — the fold of a case's events into
//! its state. It must not do I/O of any kind (no NATS, no redb, no clock, no
//! randomness it did not receive as an argument), so every rule here is a
//! plain function that tests call directly.
//!
//! Layout: `token` (tenants, case and event ids), `event` (event types,
//! writers, subjects, typed payloads), `chain` (sealing and the hash chain),
//! `verify` (finding the first broken link), `state` (the case state and
//! `evolve`), `money` (amounts as people read them), `text` (the one rule for text
//! a caller sends), `personal` (which fields are personal data, for
//! crypto-shredding; no keys here).

pub mod chain;
pub mod event;
pub mod money;
pub mod personal;
pub mod state;
pub mod text;
pub mod token;
pub mod verify;

pub use casework_proto::events::v1 as pb;
pub use chain::{ChainTip, GENESIS_HASH, Hash, NewEvent, SealedEvent, seal};
pub use event::{EventType, Writer, case_filter, subject};
pub use state::{CaseState, CaseStatus, evolve};
pub use token::{CaseId, EventId, Tenant};
pub use verify::{BrokenLink, LinkFault, RawEvent, Verification, verify};

/// Everything that can be wrong with input to the domain: a token that is not
/// a valid token, an event whose type and payload disagree, bytes that are
/// not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A tenant, case id, event id or event type that is not a valid token.
    #[error("invalid {what} {value:?}: {why}")]
    InvalidToken {
        /// Which kind of token ("tenant", "case id", …).
        what: &'static str,
        /// The offending value (truncated to 80 characters).
        value: String,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// An event whose payload is missing or does not match its declared type.
    #[error("event {event_type}: {why}")]
    BadEvent {
        /// The declared event type.
        event_type: String,
        /// What is wrong.
        why: String,
    },
    /// Bytes that do not decode as an `Envelope`.
    #[error("undecodable event: {0}")]
    Undecodable(String),
}

/// Result alias with the domain's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
