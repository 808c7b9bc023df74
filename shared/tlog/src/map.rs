//! The map of case heads: a sparse Merkle tree of depth 256 whose key is
//! a case and whose value is the case's head (last position and the
//! SHA-256 of that event's stored bytes) at a checkpoint's tree size. A
//! checkpoint carries its root, so a proof shows not only that an event is
//! in the log but that the case had *no later event* as of that
//! checkpoint: a bundle cut short at its end no longer verifies.
//!
//! Exactly:
//! - key = SHA-256(`"casework-case/v1"` ‖ 0x00 ‖ u16be(len tenant) ‖
//!   tenant ‖ u16be(len case_id) ‖ case_id); its bits, most significant
//!   first, are the path from the root (0 = left);
//! - a present leaf's hash = SHA-256(0x00 ‖ key ‖ u64be(position) ‖
//!   head SHA-256); an absent leaf's hash is 32 zero bytes;
//! - an inner node's hash = SHA-256(0x01 ‖ left ‖ right); a subtree with
//!   no present leaf has the hash of empty subtrees of its height;
//! - a proof lists the 256 siblings from the leaf up, each either a hash or
//!   "empty" (a bitmap says which), so it stays short in a sparse map.
//!
//! Storage is the caller's ([`MapNodes`]): only nodes over present leaves
//! are stored, keyed by (depth, prefix) where depth 0 is the root and the
//! prefix is the key with the bits below `depth` cleared.

use std::collections::HashMap;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Depth of the map (bits of a key).
pub const DEPTH: usize = 256;

/// What went wrong reading or proving the map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The caller's storage failed.
    #[error("case map storage: {0}")]
    Storage(String),
    /// A proof does not lead to the root.
    #[error("the case map proof does not lead to the root {0}")]
    RootMismatch(String),
    /// A proof is not of the expected shape.
    #[error("malformed case map proof: {0}")]
    Malformed(String),
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

/// The leaf hash of a case whose last event is at `position` with stored
/// bytes hashing to `head_sha256`.
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

/// The hash of an empty subtree whose root is at `depth` (256: a leaf).
pub fn empty(depth: usize) -> Hash {
    static EMPTY: OnceLock<Vec<Hash>> = OnceLock::new();
    let table = EMPTY.get_or_init(|| {
        let mut t = vec![[0u8; 32]; DEPTH + 1];
        for d in (0..DEPTH).rev() {
            t[d] = node(&t[d + 1], &t[d + 1]);
        }
        t
    });
    table[depth.min(DEPTH)]
}

/// The root of the empty map.
pub fn empty_root() -> Hash {
    empty(0)
}

fn bit(key: &Hash, i: usize) -> bool {
    key[i / 8] & (0x80 >> (i % 8)) != 0
}

/// `key` with every bit from `depth` on cleared: the prefix naming the
/// node at `depth` on the key's path.
pub fn prefix(key: &Hash, depth: usize) -> Hash {
    let mut p = [0u8; 32];
    let full = depth / 8;
    p[..full].copy_from_slice(&key[..full]);
    if !depth.is_multiple_of(8) && full < 32 {
        p[full] = key[full] & (0xFFu8 << (8 - depth % 8));
    }
    p
}

fn sibling_prefix(key: &Hash, depth: usize) -> Hash {
    // The sibling of the node at `depth` differs in bit depth-1.
    let mut p = prefix(key, depth);
    let i = depth - 1;
    p[i / 8] ^= 0x80 >> (i % 8);
    p
}

/// Where the caller keeps the map's non-empty nodes.
pub trait MapNodes {
    /// The node at (`depth`, `prefix`), `None` when its subtree is empty.
    fn get(&self, depth: u16, prefix: &Hash) -> Result<Option<Hash>, MapError>;
}

/// Nodes in memory (tests, and callers that rebuild).
#[derive(Debug, Clone, Default)]
pub struct MemoryMap(HashMap<(u16, Hash), Hash>);

impl MapNodes for MemoryMap {
    fn get(&self, depth: u16, prefix: &Hash) -> Result<Option<Hash>, MapError> {
        Ok(self.0.get(&(depth, *prefix)).copied())
    }
}

impl MemoryMap {
    /// Sets a case's head and stores the changed nodes.
    pub fn set(&mut self, key: &Hash, leaf: Hash) -> Result<(), MapError> {
        for (d, p, h) in set(self, key, leaf)? {
            self.0.insert((d, p), h);
        }
        Ok(())
    }

    /// The root.
    pub fn root(&self) -> Result<Hash, MapError> {
        root(self)
    }
}

/// The root of the map in `nodes`.
pub fn root(nodes: &impl MapNodes) -> Result<Hash, MapError> {
    Ok(nodes.get(0, &[0u8; 32])?.unwrap_or_else(empty_root))
}

/// The nodes to store when `key`'s leaf becomes `leaf` (its path from the
/// leaf to the root, 257 nodes), as (depth, prefix, hash).
pub fn set(
    nodes: &impl MapNodes,
    key: &Hash,
    leaf: Hash,
) -> Result<Vec<(u16, Hash, Hash)>, MapError> {
    let mut out = Vec::with_capacity(DEPTH + 1);
    let mut h = leaf;
    out.push((DEPTH as u16, prefix(key, DEPTH), h));
    for depth in (1..=DEPTH).rev() {
        let sib = nodes
            .get(depth as u16, &sibling_prefix(key, depth))?
            .unwrap_or_else(|| empty(depth));
        h = if bit(key, depth - 1) {
            node(&sib, &h)
        } else {
            node(&h, &sib)
        };
        out.push(((depth - 1) as u16, prefix(key, depth - 1), h));
    }
    Ok(out)
}

/// A proof of one key's leaf: the siblings from the leaf up; `present`
/// has bit i set (most significant first) when sibling i is stored in
/// `hashes` rather than empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapProof {
    /// 256 bits: which siblings are not empty.
    pub present: [u8; 32],
    /// The non-empty siblings, bottom up.
    pub hashes: Vec<Hash>,
}

/// The proof of `key`.
pub fn prove(nodes: &impl MapNodes, key: &Hash) -> Result<MapProof, MapError> {
    let mut present = [0u8; 32];
    let mut hashes = Vec::new();
    for (i, depth) in (1..=DEPTH).rev().enumerate() {
        if let Some(h) = nodes.get(depth as u16, &sibling_prefix(key, depth))? {
            present[i / 8] |= 0x80 >> (i % 8);
            hashes.push(h);
        }
    }
    Ok(MapProof { present, hashes })
}

/// The leaf stored under `key` (`None`: absent), for a caller that keeps
/// the leaves.
pub fn leaf(nodes: &impl MapNodes, key: &Hash) -> Result<Option<Hash>, MapError> {
    nodes.get(DEPTH as u16, key)
}

/// Checks that `key` has the leaf `leaf` (`None`: the case is absent) in
/// the map whose root is `root`.
pub fn verify(
    root: &Hash,
    key: &Hash,
    leaf: Option<&Hash>,
    proof: &MapProof,
) -> Result<(), MapError> {
    let present: usize = proof.present.iter().map(|b| b.count_ones() as usize).sum();
    if present != proof.hashes.len() {
        return Err(MapError::Malformed(format!(
            "the bitmap names {present} siblings but {} are given",
            proof.hashes.len()
        )));
    }
    let mut h = leaf.copied().unwrap_or([0u8; 32]);
    let mut given = proof.hashes.iter();
    for (i, depth) in (1..=DEPTH).rev().enumerate() {
        let sib = if proof.present[i / 8] & (0x80 >> (i % 8)) != 0 {
            *given.next().expect("counted above")
        } else {
            empty(depth)
        };
        h = if bit(key, depth - 1) {
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

    #[test]
    fn the_empty_map_and_one_case() {
        let mut m = MemoryMap::default();
        assert_eq!(m.root().unwrap(), empty_root());
        let key = k(1);
        let leaf = head_leaf(&key, 3, &[7; 32]);
        m.set(&key, leaf).unwrap();
        // By hand: the leaf climbs 256 levels beside empty subtrees.
        let mut h = leaf;
        for depth in (1..=DEPTH).rev() {
            h = if bit(&key, depth - 1) {
                node(&empty(depth), &h)
            } else {
                node(&h, &empty(depth))
            };
        }
        assert_eq!(m.root().unwrap(), h);
        let p = prove(&m, &key).unwrap();
        assert!(p.hashes.is_empty(), "one case: every sibling is empty");
        verify(&h, &key, Some(&leaf), &p).unwrap();
        // An older head of the same case, and absence, do not verify.
        let older = head_leaf(&key, 2, &[7; 32]);
        assert!(verify(&h, &key, Some(&older), &p).is_err());
        assert!(verify(&h, &key, None, &p).is_err());
    }

    #[test]
    fn keys_do_not_collide_across_the_tenant_case_boundary() {
        assert_ne!(case_key("ab", "c"), case_key("a", "bc"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn every_head_and_every_absence_is_proven(
            heads in proptest::collection::vec((0u32..40, 1u64..20), 1..40)
        ) {
            let mut m = MemoryMap::default();
            let mut last = HashMap::new();
            for (case, pos) in &heads {
                let key = k(*case);
                let leaf = head_leaf(&key, *pos, &[*pos as u8; 32]);
                m.set(&key, leaf).unwrap();
                last.insert(*case, leaf);
            }
            let root = m.root().unwrap();
            for case in 0..45 {
                let key = k(case);
                let p = prove(&m, &key).unwrap();
                match last.get(&case) {
                    Some(leaf) => {
                        prop_assert!(verify(&root, &key, Some(leaf), &p).is_ok());
                        prop_assert!(verify(&root, &key, None, &p).is_err());
                        let mut bad = p.clone();
                        if let Some(h) = bad.hashes.first_mut() {
                            h[0] ^= 1;
                            prop_assert!(verify(&root, &key, Some(leaf), &bad).is_err());
                        }
                    }
                    None => prop_assert!(verify(&root, &key, None, &p).is_ok()),
                }
            }
            // Order of updates does not matter: the same heads in reverse
            // give the same root.
            let mut r = MemoryMap::default();
            for (case, leaf) in &last {
                r.set(&k(*case), *leaf).unwrap();
            }
            prop_assert_eq!(r.root().unwrap(), root);
        }
    }
}
