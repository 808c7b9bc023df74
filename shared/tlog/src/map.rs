//! The map of case heads: a sparse Merkle tree over 256-bit keys whose key
//! is a case and whose value is the case's head (last position and the
//! SHA-256 of that event's stored bytes) at a checkpoint's tree size. A
//! checkpoint carries its root, so a proof shows not only that an event is
//! in the log but that the case had *no later event* as of that
//! checkpoint: a bundle cut short at its end no longer verifies.
//!
//! Exactly (a compact sparse Merkle tree: a subtree holding one leaf *is*
//! that leaf, so a case costs O(log n) nodes, not 256):
//! - key = SHA-256(`"casework-case/v1"` ‖ 0x00 ‖ u16be(len tenant) ‖
//!   tenant ‖ u16be(len case_id) ‖ case_id); its bits, most significant
//!   first, are the path from the root (0 = left);
//! - leaf = SHA-256(0x00 ‖ key ‖ u64be(position) ‖ head SHA-256); it
//!   commits to its key, so it cannot be moved to another path;
//! - the hash of a subtree is: 32 zero bytes when it holds no leaf; the
//!   leaf itself when it holds exactly one; else SHA-256(0x01 ‖ left ‖
//!   right) of its two halves;
//! - a proof of a key is its leaf's depth (the highest subtree that holds
//!   it alone) and the siblings from there up to the root, each a hash or
//!   "empty" (a bitmap says which). Verification hashes the leaf up with
//!   the siblings and compares the root.
//!
//! Storage is the caller's ([`MapNodes`]): one [`MapNode`] per non-empty
//! subtree on a path, keyed by (depth, prefix) where depth 0 is the root
//! and the prefix is the key with the bits from `depth` on cleared.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Bits of a key.
pub const DEPTH: u16 = 256;

/// The hash of an empty subtree.
pub const EMPTY: Hash = [0u8; 32];

/// What went wrong reading, changing or proving the map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The caller's storage failed.
    #[error("case map storage: {0}")]
    Storage(String),
    /// The key is not in the map.
    #[error("the case is not in the case map")]
    Absent,
    /// A proof does not lead to the root.
    #[error("the case map proof does not lead to the root {0}")]
    RootMismatch(String),
    /// A proof is not of the expected shape.
    #[error("malformed case map proof: {0}")]
    Malformed(String),
}

/// One stored subtree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapNode {
    /// A subtree holding exactly one leaf: its key and leaf hash.
    Leaf {
        /// The case's key.
        key: Hash,
        /// Its leaf hash (the subtree's hash).
        leaf: Hash,
    },
    /// A subtree holding two leaves or more: its hash.
    Branch(Hash),
}

impl MapNode {
    /// The subtree's hash.
    pub fn hash(&self) -> Hash {
        match self {
            MapNode::Leaf { leaf, .. } => *leaf,
            MapNode::Branch(h) => *h,
        }
    }

    /// 65 bytes for a leaf (0x00 ‖ key ‖ leaf), 33 for a branch (0x01 ‖
    /// hash).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            MapNode::Leaf { key, leaf } => [&[0u8][..], key, leaf].concat(),
            MapNode::Branch(h) => [&[1u8][..], h].concat(),
        }
    }

    /// The inverse of [`MapNode::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, MapError> {
        let bad = || MapError::Storage(format!("a stored node of {} bytes", bytes.len()));
        match (bytes.first(), bytes.len()) {
            (Some(0), 65) => Ok(MapNode::Leaf {
                key: bytes[1..33].try_into().map_err(|_| bad())?,
                leaf: bytes[33..65].try_into().map_err(|_| bad())?,
            }),
            (Some(1), 33) => Ok(MapNode::Branch(bytes[1..].try_into().map_err(|_| bad())?)),
            _ => Err(bad()),
        }
    }
}

/// The map's key of a case.
pub fn case_key(tenant: &str, case_id: &str) -> Hash {
    let mut h = Sha256::new();
    h.update(b"casework-case/v1\x00");
    for part in [tenant, case_id] {
        let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
        h.update(len.to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// The leaf of a case whose last event is at `position` with stored bytes
/// hashing to `head_sha256`.
pub fn head_leaf(key: &Hash, position: u64, head_sha256: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(key);
    h.update(position.to_be_bytes());
    h.update(head_sha256);
    h.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn bit(key: &Hash, i: u16) -> bool {
    let i = usize::from(i);
    key[i / 8] & (0x80 >> (i % 8)) != 0
}

/// `key` with every bit from `depth` on cleared: the prefix naming the
/// subtree at `depth` on the key's path.
pub fn prefix(key: &Hash, depth: u16) -> Hash {
    let depth = usize::from(depth.min(DEPTH));
    let mut p = [0u8; 32];
    let full = depth / 8;
    p[..full].copy_from_slice(&key[..full]);
    if !depth.is_multiple_of(8) {
        p[full] = key[full] & (0xFFu8 << (8 - depth % 8));
    }
    p
}

/// The prefix of the sibling of the subtree at `depth` (≥ 1) on `key`'s
/// path.
fn sibling_prefix(key: &Hash, depth: u16) -> Hash {
    let mut p = prefix(key, depth);
    let i = usize::from(depth - 1);
    p[i / 8] ^= 0x80 >> (i % 8);
    p
}

/// Where the caller keeps the map's nodes.
pub trait MapNodes {
    /// The subtree at (`depth`, `prefix`), `None` when it is empty.
    fn get(&self, depth: u16, prefix: &Hash) -> Result<Option<MapNode>, MapError>;
}

/// Nodes in memory (tests, benchmarks, and a batch's pending writes).
#[derive(Debug, Clone, Default)]
pub struct MemoryMap(pub HashMap<(u16, Hash), MapNode>);

impl MapNodes for MemoryMap {
    fn get(&self, depth: u16, prefix: &Hash) -> Result<Option<MapNode>, MapError> {
        Ok(self.0.get(&(depth, *prefix)).copied())
    }
}

impl MemoryMap {
    /// Sets a case's head.
    pub fn set(&mut self, key: &Hash, leaf: Hash) -> Result<(), MapError> {
        for (d, p, n) in set(self, key, leaf)? {
            self.0.insert((d, p), n);
        }
        Ok(())
    }

    /// The root.
    pub fn root(&self) -> Result<Hash, MapError> {
        root(self)
    }
}

/// Pending writes in front of the caller's storage (one batch of `set`s).
#[derive(Debug)]
pub struct Overlay<'a, N> {
    /// The storage underneath.
    pub base: &'a N,
    /// What the batch changed, to be written by the caller.
    pub pending: MemoryMap,
}

impl<N: MapNodes> MapNodes for Overlay<'_, N> {
    fn get(&self, depth: u16, prefix: &Hash) -> Result<Option<MapNode>, MapError> {
        match self.pending.0.get(&(depth, *prefix)) {
            Some(n) => Ok(Some(*n)),
            None => self.base.get(depth, prefix),
        }
    }
}

impl<'a, N: MapNodes> Overlay<'a, N> {
    /// An empty batch over `base`.
    pub fn new(base: &'a N) -> Self {
        Self {
            base,
            pending: MemoryMap::default(),
        }
    }

    /// Sets a case's head in the batch.
    pub fn set(&mut self, key: &Hash, leaf: Hash) -> Result<(), MapError> {
        for (d, p, n) in set(self, key, leaf)? {
            self.pending.0.insert((d, p), n);
        }
        Ok(())
    }
}

/// The root of the map in `nodes`.
pub fn root(nodes: &impl MapNodes) -> Result<Hash, MapError> {
    Ok(nodes.get(0, &[0u8; 32])?.map_or(EMPTY, |n| n.hash()))
}

fn hash_at(nodes: &impl MapNodes, depth: u16, prefix: &Hash) -> Result<Hash, MapError> {
    Ok(nodes.get(depth, prefix)?.map_or(EMPTY, |n| n.hash()))
}

/// The nodes to store when `key`'s leaf becomes `leaf`, as (depth,
/// prefix, node): the leaf where it now sits (and the leaf it pushed down,
/// if any) and every subtree above it on its path. O(log n) for n cases.
pub fn set(
    nodes: &impl MapNodes,
    key: &Hash,
    leaf: Hash,
) -> Result<Vec<(u16, Hash, MapNode)>, MapError> {
    let mut writes = Vec::new();
    // 1. Find where the leaf goes.
    let mut depth = 0u16;
    let place = loop {
        match nodes.get(depth, &prefix(key, depth))? {
            None => break depth,
            Some(MapNode::Leaf { key: k, .. }) if k == *key => break depth,
            Some(MapNode::Leaf {
                key: other,
                leaf: other_leaf,
            }) => {
                // Both keys share the path to `depth`: the two leaves go
                // down to the first bit where they differ.
                let mut b = depth;
                while b < DEPTH && bit(key, b) == bit(&other, b) {
                    b += 1;
                }
                if b == DEPTH {
                    return Err(MapError::Storage(
                        "two different cases with one key (a SHA-256 collision)".to_owned(),
                    ));
                }
                writes.push((
                    b + 1,
                    prefix(&other, b + 1),
                    MapNode::Leaf {
                        key: other,
                        leaf: other_leaf,
                    },
                ));
                break b + 1;
            }
            Some(MapNode::Branch(_)) => depth += 1,
        }
    };
    writes.push((place, prefix(key, place), MapNode::Leaf { key: *key, leaf }));
    // 2. Hash every subtree above it again, from the bottom up.
    let mut h = leaf;
    for d in (1..=place).rev() {
        let sib_prefix = sibling_prefix(key, d);
        let sib = match writes
            .iter()
            .find(|(wd, wp, _)| *wd == d && *wp == sib_prefix)
        {
            Some((_, _, n)) => n.hash(),
            None => hash_at(nodes, d, &sib_prefix)?,
        };
        h = if bit(key, d - 1) {
            node(&sib, &h)
        } else {
            node(&h, &sib)
        };
        writes.push((d - 1, prefix(key, d - 1), MapNode::Branch(h)));
    }
    Ok(writes)
}

/// A proof of one key's leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapProof {
    /// The depth the leaf sits at (the number of siblings).
    pub depth: u16,
    /// Which siblings, bottom up, are not empty (bit i, most significant
    /// first, for sibling i).
    pub present: [u8; 32],
    /// The non-empty siblings, bottom up.
    pub hashes: Vec<Hash>,
}

/// The proof of `key`'s leaf; [`MapError::Absent`] when it has none.
pub fn prove(nodes: &impl MapNodes, key: &Hash) -> Result<(Hash, MapProof), MapError> {
    let mut depth = 0u16;
    let leaf = loop {
        match nodes.get(depth, &prefix(key, depth))? {
            Some(MapNode::Leaf { key: k, leaf }) if k == *key => break leaf,
            Some(MapNode::Branch(_)) if depth < DEPTH => depth += 1,
            _ => return Err(MapError::Absent),
        }
    };
    let mut present = [0u8; 32];
    let mut hashes = Vec::new();
    for (i, d) in (1..=depth).rev().enumerate() {
        if let Some(n) = nodes.get(d, &sibling_prefix(key, d))? {
            present[i / 8] |= 0x80 >> (i % 8);
            hashes.push(n.hash());
        }
    }
    Ok((
        leaf,
        MapProof {
            depth,
            present,
            hashes,
        },
    ))
}

/// Checks that `key` has the leaf `leaf` in the map whose root is `root`.
pub fn verify(root: &Hash, key: &Hash, leaf: &Hash, proof: &MapProof) -> Result<(), MapError> {
    if proof.depth > DEPTH {
        return Err(MapError::Malformed(format!(
            "depth {} is more than {DEPTH}",
            proof.depth
        )));
    }
    let given: usize = proof.present.iter().map(|b| b.count_ones() as usize).sum();
    let beyond = proof
        .present
        .iter()
        .enumerate()
        .flat_map(|(byte, b)| {
            (0..8)
                .filter(move |j| b & (0x80 >> j) != 0)
                .map(move |j| byte * 8 + j)
        })
        .any(|i| i >= usize::from(proof.depth));
    if given != proof.hashes.len() || beyond {
        return Err(MapError::Malformed(format!(
            "the bitmap names {given} siblings (within depth {}) but {} are given",
            proof.depth,
            proof.hashes.len()
        )));
    }
    let mut h = *leaf;
    let mut hashes = proof.hashes.iter();
    for (i, d) in (1..=proof.depth).rev().enumerate() {
        let sib = if proof.present[i / 8] & (0x80 >> (i % 8)) != 0 {
            *hashes.next().expect("counted above")
        } else {
            EMPTY
        };
        h = if bit(key, d - 1) {
            node(&sib, &h)
        } else {
            node(&h, &sib)
        };
    }
    if &h == root {
        Ok(())
    } else {
        Err(MapError::RootMismatch(hex::encode(root)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(i: u32) -> Hash {
        case_key("acme", &format!("case-{i}"))
    }

    /// The definition, computed from scratch over a set of (key, leaf).
    fn reference(entries: &[(Hash, Hash)], depth: u16) -> Hash {
        match entries {
            [] => EMPTY,
            [(_, leaf)] => *leaf,
            _ => {
                let (l, r): (Vec<_>, Vec<_>) =
                    entries.iter().partition(|(key, _)| !bit(key, depth));
                node(&reference(&l, depth + 1), &reference(&r, depth + 1))
            }
        }
    }

    #[test]
    fn one_case_is_its_own_root_and_two_split() {
        let mut m = MemoryMap::default();
        assert_eq!(m.root().unwrap(), EMPTY);
        let (a, b) = (k(1), k(2));
        let la = head_leaf(&a, 3, &[7; 32]);
        m.set(&a, la).unwrap();
        assert_eq!(
            m.root().unwrap(),
            la,
            "a map of one case is that case's leaf"
        );
        let (leaf, p) = prove(&m, &a).unwrap();
        assert_eq!((leaf, p.depth), (la, 0));
        verify(&la, &a, &la, &p).unwrap();
        let lb = head_leaf(&b, 1, &[8; 32]);
        m.set(&b, lb).unwrap();
        assert_eq!(m.root().unwrap(), reference(&[(a, la), (b, lb)], 0));
        for (key, leaf) in [(a, la), (b, lb)] {
            let (got, p) = prove(&m, &key).unwrap();
            assert_eq!(got, leaf);
            verify(&m.root().unwrap(), &key, &leaf, &p).unwrap();
        }
        // An older head of a case does not verify; an absent case has no
        // proof.
        let (_, p) = prove(&m, &a).unwrap();
        let older = head_leaf(&a, 2, &[7; 32]);
        assert!(verify(&m.root().unwrap(), &a, &older, &p).is_err());
        assert_eq!(prove(&m, &k(3)), Err(MapError::Absent));
    }

    #[test]
    fn nodes_round_trip_and_keys_do_not_collide_across_the_boundary() {
        for n in [
            MapNode::Leaf {
                key: [1; 32],
                leaf: [2; 32],
            },
            MapNode::Branch([3; 32]),
        ] {
            assert_eq!(MapNode::decode(&n.encode()), Ok(n));
        }
        assert!(MapNode::decode(&[2; 33]).is_err());
        assert_ne!(case_key("ab", "c"), case_key("a", "bc"));
    }

    proptest! {
        #[test]
        fn every_head_is_proven_and_matches_the_definition(
            heads in proptest::collection::vec((0u32..60, 1u64..20), 1..80)
        ) {
            let mut m = MemoryMap::default();
            let mut batched = MemoryMap::default();
            let mut last = HashMap::new();
            for chunk in heads.chunks(7) {
                let mut o = Overlay::new(&batched);
                for (case, pos) in chunk {
                    let key = k(*case);
                    let leaf = head_leaf(&key, *pos, &[*pos as u8; 32]);
                    m.set(&key, leaf).unwrap();
                    o.set(&key, leaf).unwrap();
                    last.insert(key, leaf);
                }
                let pending = o.pending;
                batched.0.extend(pending.0);
            }
            let root = m.root().unwrap();
            let entries: Vec<(Hash, Hash)> = last.iter().map(|(k, l)| (*k, *l)).collect();
            prop_assert_eq!(root, reference(&entries, 0));
            prop_assert_eq!(batched.root().unwrap(), root, "batches through an overlay agree");
            for (key, leaf) in &last {
                let (got, p) = prove(&m, key).unwrap();
                prop_assert_eq!(&got, leaf);
                prop_assert!(verify(&root, key, leaf, &p).is_ok());
                let mut bad = p.clone();
                if let Some(h) = bad.hashes.first_mut() {
                    h[0] ^= 1;
                    prop_assert!(verify(&root, key, leaf, &bad).is_err());
                }
                let mut deeper = p.clone();
                deeper.depth += 1;
                prop_assert!(verify(&root, key, leaf, &deeper).is_err());
            }
        }
    }
}
