//! `casework-privacy` owns crypto-shredding: the key-encryption key (KEK), a
//! data key per customer (tenant + customer id), AES-256-GCM over the
//! personal fields of an event (which fields those are is the domain's
//! `personal` module), and the `KEYS` stream in which data keys live wrapped
//! by the KEK and are destroyed on erasure. Intake encrypts before it
//! appends; services and auditors with the right role decrypt on read; an
//! erasure destroys the key, not an event, so every hash chain and Merkle
//! proof over the stored (encrypted) bytes still verifies.
//!
//! It must not write case events, decide who may read plaintext (the
//! services' APIs check roles), log or print a key, or keep plaintext
//! anywhere but in the memory of the call that asked for it.
//!
//! Layout: `crypto` (pure: KEK, data keys, AEAD), `protect` (pure: one
//! event's personal fields in and out of `Protected`), `vault` (the key
//! stream on NATS with a bounded cache), `settings` (the options block every
//! service that reads or writes personal data shares).

pub mod crypto;
pub mod protect;
pub mod settings;
pub mod vault;

pub use casework_caselog::jetstream::KEYS_STREAM;
pub use crypto::{DataKey, Kek};
pub use protect::{KeyRef, Place};
pub use settings::PrivacySettings;
pub use vault::{Access, Revealed, Vault};

/// What can go wrong with keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The KEK file or text is unusable.
    #[error("the key-encryption key {from} is unusable: {why}")]
    BadKek {
        /// Where it came from.
        from: String,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// A stored key or ciphertext does not open (altered or moved).
    #[error("damaged personal data: {0}")]
    Damaged(String),
    /// The key was wrapped by another KEK than this process's.
    #[error(
        "data key {key_id} is wrapped by KEK {wrapped_by}, but this service has KEK {have}: give every service the same KEK (personal_data.kek_file)"
    )]
    OtherKek {
        /// The data key.
        key_id: String,
        /// The KEK that wrapped it.
        wrapped_by: String,
        /// This process's KEK.
        have: String,
    },
    /// An event names a key the key stream does not hold (yet): a replica
    /// that lags, or a key stream that was replaced.
    #[error(
        "data key {key_id} of {tenant}/{subject} is not in the key stream (a lagging replica, or the KEYS stream was lost); retry"
    )]
    KeyMissing {
        /// Tenant.
        tenant: String,
        /// The customer's pseudonym.
        subject: String,
        /// The key.
        key_id: String,
    },
    /// The broker could not be asked.
    #[error("the key stream is unavailable: {0}")]
    Unavailable(String),
    /// A call this vault's access does not allow.
    #[error("{0}")]
    Misuse(String),
}

impl Error {
    /// True when waiting may help (the broker, or a replica that lags):
    /// `UNAVAILABLE` to a caller. Anything else (a wrong KEK, damaged
    /// data, a misuse) is a fault to fix: `INTERNAL`.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::KeyMissing { .. })
    }
}
