//! Every redb table of the ledger (CONVENTIONS.md §7: all in one place; a
//! retired table name is never reused).

use redb::TableDefinition;

/// The archive: (tenant, case id, case position) → (stream sequence,
/// subject, exact stored bytes). The case position is the event's place in
/// the case's stored log, 1, 2, 3… (the envelope sequence on an intact
/// chain).
pub const EVENTS: TableDefinition<EventKey, EventValue> = TableDefinition::new("events");

/// (tenant, case id, case position).
pub type EventKey = (&'static str, &'static str, u64);
/// (stream sequence, subject, stored bytes).
pub type EventValue = (u64, &'static str, &'static [u8]);

/// Stream order: stream sequence → (subject, case position).
pub const BY_STREAM: TableDefinition<u64, (&str, u64)> = TableDefinition::new("events_by_stream");

/// Time index: (occurred_at in µs since the epoch, stream sequence).
pub const BY_TIME: TableDefinition<(i64, u64), ()> = TableDefinition::new("events_by_time");

/// Event type index: (event type, stream sequence).
pub const BY_TYPE: TableDefinition<(&str, u64), ()> = TableDefinition::new("events_by_type");

/// Case heads and chain status: (tenant, case id) → JSON `CaseRecord`.
pub const CASES: TableDefinition<(&str, &str), &str> = TableDefinition::new("case_heads");

/// Metadata: `checkpoint` = the last stream sequence archived.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Key of the checkpoint in [`META`].
pub const CHECKPOINT: &str = "checkpoint";

/// The transparency log over every archived event (RFC 9162): the hashes
/// of its complete, aligned subtrees, (level, index) → 32 bytes. Level 0
/// holds the leaf hashes, by leaf index (stream order).
pub const TLOG_NODES: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("tlog_nodes");

/// The leaf index of each archived event: (tenant, case id, case
/// position) → leaf index.
pub const TLOG_LEAF_OF: TableDefinition<EventKey, u64> = TableDefinition::new("tlog_leaf_of");

/// The checkpoints the ledger signed: tree size → the signed note.
pub const TLOG_SIGNED: TableDefinition<u64, &str> = TableDefinition::new("tlog_checkpoints");

/// Key in [`META`] of the transparency log's size (leaves appended).
pub const TLOG_SIZE: &str = "tlog_size";

/// The map of case heads (a sparse Merkle tree, `casework_tlog::map`):
/// its non-empty nodes, (depth, prefix) → 32 bytes; (0, zeros) is the root.
pub const TLOG_MAP: TableDefinition<(u16, &[u8]), &[u8]> = TableDefinition::new("tlog_case_map");
