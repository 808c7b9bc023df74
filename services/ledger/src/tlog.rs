//! The transparency log in the archive: one RFC 9162 leaf per archived
//! event, appended in the same write transaction as the event (so the tree
//! and the archive never disagree), roots and proofs at any size, and the
//! signed checkpoints. The hashing, proofs and note format are
//! `casework-tlog`'s; this module only stores and reads.

use casework_tlog::map::{self, MapNodes};
use casework_tlog::merkle::{self, Hash, Nodes};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, Table};

use crate::archive::Archive;
use crate::archive::CaseRecord;
use crate::tables::{
    BY_STREAM, CASES, EVENTS, META, TLOG_LEAF_OF, TLOG_MAP, TLOG_NODES, TLOG_SIGNED, TLOG_SIZE,
};
use crate::{Error, Result};

/// Tree nodes read from a redb table (in a read or the write transaction).
struct TableNodes<'a, T>(&'a T);

impl<T: ReadableTable<(u8, u64), &'static [u8]>> Nodes for TableNodes<'_, T> {
    fn node(&self, level: u8, index: u64) -> std::result::Result<Hash, merkle::Error> {
        let missing = || merkle::Error::MissingNode { level, index };
        let v = self
            .0
            .get((level, index))
            .map_err(|_| missing())?
            .ok_or_else(missing)?;
        v.value().try_into().map_err(|_| missing())
    }
}

/// Case-map nodes read from a redb table.
struct TableMap<'a, T>(&'a T);

impl<T: ReadableTable<(u16, &'static [u8]), &'static [u8]>> MapNodes for TableMap<'_, T> {
    fn get(
        &self,
        depth: u16,
        prefix: &Hash,
    ) -> std::result::Result<Option<map::MapNode>, map::MapError> {
        let v = self
            .0
            .get((depth, prefix.as_slice()))
            .map_err(|e| map::MapError::Storage(e.to_string()))?;
        v.map(|v| map::MapNode::decode(v.value())).transpose()
    }
}

fn map_error(e: map::MapError) -> Error {
    Error::Internal(format!("case map: {e}"))
}

/// Sets the heads of the cases a batch changed, inside its transaction.
pub(crate) fn set_heads<'a>(
    table: &mut Table<(u16, &'static [u8]), &'static [u8]>,
    heads: impl IntoIterator<Item = (&'a str, &'a str, &'a CaseRecord)>,
) -> Result<()> {
    let pending = {
        let base = TableMap(&*table);
        let mut batch = map::Overlay::new(&base);
        for (tenant, case_id, rec) in heads {
            let Some(head) = parse_hash(&rec.head_hash) else {
                continue;
            };
            let key = map::case_key(tenant, case_id);
            batch
                .set(&key, map::head_leaf(&key, rec.events, &head))
                .map_err(map_error)?;
        }
        batch.pending
    };
    // Each changed node written once per batch.
    for ((depth, prefix), node) in pending.0 {
        table.insert((depth, prefix.as_slice()), node.encode().as_slice())?;
    }
    Ok(())
}

fn parse_hash(h: &str) -> Option<Hash> {
    hex::decode(h).ok()?.try_into().ok()
}

/// The log's state at one committed moment: what a checkpoint signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHead {
    /// Leaves.
    pub size: u64,
    /// RFC 9162 root.
    pub root: Hash,
    /// Root of the map of case heads.
    pub map_root: Hash,
}

/// Everything a bundle needs, read in one snapshot (so the proofs and the
/// checkpoint they are against agree).
#[derive(Debug, Clone)]
pub struct CaseEvidence {
    /// The log as of the snapshot.
    pub head: TreeHead,
    /// Per archived event (by position): leaf index and audit path.
    pub inclusion: Vec<(u64, Vec<Hash>)>,
    /// The map proof of the case's head (none for a case without events).
    pub map_proof: Option<map::MapProof>,
}

/// The extension line of a checkpoint that carries the case map's root.
pub const MAP_EXTENSION: &str = "casework-case-map";

fn tree_error(e: merkle::Error) -> Error {
    Error::Internal(format!("transparency log: {e}"))
}

/// Appends the leaf of one archived event inside the ingest transaction.
pub(crate) fn append_leaf(
    nodes: &mut Table<(u8, u64), &'static [u8]>,
    leaf_of: &mut Table<(&'static str, &'static str, u64), u64>,
    size: &mut u64,
    (tenant, case_id, position): (&str, &str, u64),
    event_sha256: &Hash,
) -> Result<()> {
    let leaf = casework_tlog::leaf::event_leaf_hash(tenant, case_id, position, event_sha256);
    let new = merkle::appended(*size, leaf, &TableNodes(&*nodes)).map_err(tree_error)?;
    for (level, index, hash) in new {
        nodes.insert((level, index), hash.as_slice())?;
    }
    leaf_of.insert((tenant, case_id, position), *size)?;
    *size += 1;
    Ok(())
}

/// Gives every archived event without a leaf (an archive from before the
/// transparency log) its leaf, in stream order; run once at open.
pub(crate) fn backfill(db: &redb::Database) -> Result<u64> {
    let tx = db.begin_write()?;
    let added;
    {
        let mut meta = tx.open_table(META)?;
        let mut nodes = tx.open_table(TLOG_NODES)?;
        let mut leaf_of = tx.open_table(TLOG_LEAF_OF)?;
        let by_stream = tx.open_table(BY_STREAM)?;
        let events = tx.open_table(EVENTS)?;
        let mut size = meta.get(TLOG_SIZE)?.map(|v| v.value()).unwrap_or(0);
        let archived = by_stream.len()?;
        if size >= archived {
            return Ok(0);
        }
        let before = size;
        for item in by_stream
            .iter()?
            .skip(usize::try_from(size).unwrap_or(usize::MAX))
        {
            let (_, v) = item?;
            let (subject, position) = v.value();
            let t: Vec<&str> = subject.split('.').collect();
            let (tenant, case_id) = (
                t.get(1).copied().unwrap_or(""),
                t.get(2).copied().unwrap_or(""),
            );
            let bytes = events.get((tenant, case_id, position))?.ok_or_else(|| {
                Error::Internal(format!("archived event {subject} #{position} is missing"))
            })?;
            let hash = casework_domain::chain::hash(bytes.value().2);
            append_leaf(
                &mut nodes,
                &mut leaf_of,
                &mut size,
                (tenant, case_id, position),
                &hash,
            )?;
        }
        meta.insert(TLOG_SIZE, size)?;
        added = size - before;
        // The map of case heads, for an archive from before it.
        let cases = tx.open_table(CASES)?;
        let mut records = Vec::new();
        for item in cases.iter()? {
            let (k, v) = item?;
            let (t, c) = k.value();
            let rec: CaseRecord = serde_json::from_str(v.value())
                .map_err(|e| Error::Internal(format!("case record: {e}")))?;
            records.push((t.to_owned(), c.to_owned(), rec));
        }
        let mut case_map = tx.open_table(TLOG_MAP)?;
        set_heads(
            &mut case_map,
            records.iter().map(|(t, c, r)| (t.as_str(), c.as_str(), r)),
        )?;
    }
    casework_runtime::store::commit(tx);
    Ok(added)
}

impl Archive {
    /// The log's size, root and case-map root, from one snapshot.
    pub fn tree_head(&self) -> Result<TreeHead> {
        let tx = self.db().begin_read()?;
        let meta = tx.open_table(META)?;
        let nodes = tx.open_table(TLOG_NODES)?;
        let map_t = tx.open_table(TLOG_MAP)?;
        let size = meta.get(TLOG_SIZE)?.map(|v| v.value()).unwrap_or(0);
        Ok(TreeHead {
            size,
            root: merkle::root(&TableNodes(&nodes), size).map_err(tree_error)?,
            map_root: map::root(&TableMap(&map_t)).map_err(map_error)?,
        })
    }

    /// The evidence of case `tenant/case_id` (`positions` archived events)
    /// as of one snapshot.
    pub fn case_evidence(&self, tenant: &str, case_id: &str) -> Result<(CaseEvidence, u64)> {
        let tx = self.db().begin_read()?;
        let meta = tx.open_table(META)?;
        let nodes = tx.open_table(TLOG_NODES)?;
        let map_t = tx.open_table(TLOG_MAP)?;
        let leaf_of = tx.open_table(TLOG_LEAF_OF)?;
        let cases = tx.open_table(CASES)?;
        let size = meta.get(TLOG_SIZE)?.map(|v| v.value()).unwrap_or(0);
        let events = match cases.get((tenant, case_id))? {
            Some(v) => {
                let rec: CaseRecord = serde_json::from_str(v.value())
                    .map_err(|e| Error::Internal(format!("case record: {e}")))?;
                rec.events
            }
            None => 0,
        };
        let mut inclusion = Vec::with_capacity(events as usize);
        for position in 1..=events {
            let index = leaf_of
                .get((tenant, case_id, position))?
                .map(|v| v.value())
                .ok_or_else(|| {
                    Error::Internal(format!("{tenant}/{case_id} #{position} has no leaf"))
                })?;
            let path =
                merkle::inclusion_proof(&TableNodes(&nodes), index, size).map_err(tree_error)?;
            inclusion.push((index, path));
        }
        let key = map::case_key(tenant, case_id);
        let head = TreeHead {
            size,
            root: merkle::root(&TableNodes(&nodes), size).map_err(tree_error)?,
            map_root: map::root(&TableMap(&map_t)).map_err(map_error)?,
        };
        Ok((
            CaseEvidence {
                head,
                inclusion,
                map_proof: match map::prove(&TableMap(&map_t), &key) {
                    Ok((_, proof)) => Some(proof),
                    Err(map::MapError::Absent) => None,
                    Err(e) => return Err(map_error(e)),
                },
            },
            events,
        ))
    }

    /// Leaves in the transparency log.
    pub fn tree_size(&self) -> Result<u64> {
        let tx = self.db().begin_read()?;
        let meta = tx.open_table(META)?;
        Ok(meta.get(TLOG_SIZE)?.map(|v| v.value()).unwrap_or(0))
    }

    /// The root hash of the log at `size` (≤ the current size).
    pub fn tree_root(&self, size: u64) -> Result<Hash> {
        self.check_size(size)?;
        let tx = self.db().begin_read()?;
        let nodes = tx.open_table(TLOG_NODES)?;
        merkle::root(&TableNodes(&nodes), size).map_err(tree_error)
    }

    fn check_size(&self, size: u64) -> Result<()> {
        let current = self.tree_size()?;
        if size > current {
            return Err(Error::InvalidArgument {
                field: "tree_size",
                why: format!(
                    "{size} is beyond the log's {current} leaves; ask for a size the ledger signed (GetCheckpoint)"
                ),
            });
        }
        Ok(())
    }

    /// The leaf index of an archived event, if archived.
    pub fn leaf_index(&self, tenant: &str, case_id: &str, position: u64) -> Result<Option<u64>> {
        let tx = self.db().begin_read()?;
        let t = tx.open_table(TLOG_LEAF_OF)?;
        Ok(t.get((tenant, case_id, position))?.map(|v| v.value()))
    }

    /// The audit path of leaf `index` in the tree of `size`.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        self.check_size(size)?;
        let tx = self.db().begin_read()?;
        let nodes = tx.open_table(TLOG_NODES)?;
        merkle::inclusion_proof(&TableNodes(&nodes), index, size).map_err(tree_error)
    }

    /// The leaf hash at `index`.
    pub fn leaf_hash(&self, index: u64) -> Result<Hash> {
        let tx = self.db().begin_read()?;
        let nodes = tx.open_table(TLOG_NODES)?;
        TableNodes(&nodes).node(0, index).map_err(tree_error)
    }

    /// The consistency path from `old` to `new` leaves.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        self.check_size(new)?;
        let tx = self.db().begin_read()?;
        let nodes = tx.open_table(TLOG_NODES)?;
        merkle::consistency_proof(&TableNodes(&nodes), old, new).map_err(tree_error)
    }

    /// Stores a signed checkpoint of `size` leaves.
    pub fn store_signed(&self, size: u64, note: &str) -> Result<()> {
        let tx = self.db().begin_write()?;
        {
            let mut t = tx.open_table(TLOG_SIGNED)?;
            t.insert(size, note)?;
        }
        casework_runtime::store::commit(tx);
        Ok(())
    }

    /// The signed checkpoint of `size` leaves (0: the latest), as (size,
    /// note).
    pub fn signed(&self, size: u64) -> Result<Option<(u64, String)>> {
        let tx = self.db().begin_read()?;
        let t = tx.open_table(TLOG_SIGNED)?;
        let found = if size == 0 {
            t.last()?.map(|(k, v)| (k.value(), v.value().to_owned()))
        } else {
            t.get(size)?.map(|v| (size, v.value().to_owned()))
        };
        Ok(found)
    }
}
