//! `casework-tlog` owns the transparency-log core the ledger and `casectl
//! verify` share: RFC 9162 Merkle tree hashing over leaves stored by the
//! caller ([`merkle`]: incremental append, roots at any size, inclusion and
//! consistency proofs and their verification), the leaf encoding of a
//! Casework event ([`leaf`]), the sparse Merkle map of case heads that
//! proves a case had no later event ([`map`]), and checkpoints in the C2SP tlog-checkpoint
//! format signed as C2SP signed notes with Ed25519 ([`note`]). It is pure
//! code: no I/O, no clock, no randomness (key generation takes the seed from
//! the caller), and it never depends on another Casework crate, so a third
//! party can read it as the reference for the formats.

pub mod leaf;
pub mod map;
pub mod merkle;
pub mod note;
