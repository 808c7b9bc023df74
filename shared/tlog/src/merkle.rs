//! RFC 9162 (Certificate Transparency v2) Merkle tree hashing over storage
//! kept by the caller.
//!
//! # Hashing
//!
//! The hash is SHA-256. For a list of leaves `D[0..n)` (each leaf an opaque
//! byte string):
//!
//! - `MTH({}) = SHA-256()` — the hash of the empty string ([`empty_root`]);
//! - `MTH({d0}) = SHA-256(0x00 || d0)` — a leaf hash ([`leaf_hash`]);
//! - for `n > 1`, with `k` the largest power of two strictly smaller than
//!   `n`: `MTH(D[0..n)) = SHA-256(0x01 || MTH(D[0..k)) || MTH(D[k..n)))` — an
//!   interior node ([`node_hash`]).
//!
//! # Storage
//!
//! The tree is never held here; the caller stores the hashes of the
//! *complete, aligned* subtrees and hands them out through [`Nodes`]. Node
//! `(level, index)` is the hash of the `2^level` leaves
//! `[index * 2^level, (index + 1) * 2^level)`; level 0 holds the leaf hashes.
//! When leaf `n` (0-based) is appended, [`appended`] lists the nodes to store:
//! the leaf hash at `(0, n)` and every subtree that leaf completes. A tree of
//! `n` leaves therefore stores fewer than `2n` hashes, and every hash the RFC
//! needs for a root or a proof at any size `<= n` is one of them, so roots and
//! proofs cost `O(log n)` reads. [`MemoryNodes`] is an in-memory store.
//!
//! # Proofs
//!
//! [`inclusion_proof`] is RFC 9162 §2.1.3.1 (`PATH`) and [`consistency_proof`]
//! is §2.1.4.1 (`PROOF`/`SUBPROOF`); both list hashes from the bottom of the
//! tree upwards, exactly as the RFC orders them. [`verify_inclusion`] and
//! [`verify_consistency`] are the RFC's verification algorithms (§2.1.3.2 and
//! §2.1.4.2): they use only the proof and the claimed roots, never storage.

use std::fmt;

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Why a hash could not be read from storage or a proof could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The storage does not hold node `(level, index)`.
    #[error(
        "Merkle node (level {level}, index {index}) is not stored (it covers leaves from {first_leaf})",
        first_leaf = first_leaf(*level, *index)
    )]
    MissingNode {
        /// Level of the missing node (0 for leaf hashes).
        level: u8,
        /// Index of the missing node within its level.
        index: u64,
    },
    /// The caller's storage failed for a reason of its own.
    #[error("Merkle node storage failed: {0}")]
    Storage(String),
    /// A leaf index is not inside a tree of the given size.
    #[error("leaf index {index} is out of range for a tree of {size} leaves")]
    IndexOutOfRange {
        /// The requested leaf index.
        index: u64,
        /// The tree size it was requested for.
        size: u64,
    },
    /// Consistency proofs exist only for `0 < old_size <= new_size`.
    #[error(
        "no consistency proof from size {old_size} to size {new_size}: proofs need 0 < old size <= new size"
    )]
    BadConsistencySizes {
        /// The requested old tree size.
        old_size: u64,
        /// The requested new tree size.
        new_size: u64,
    },
    /// A subtree range is empty or reversed.
    #[error("leaf range [{start}, {end}) is empty; a subtree needs at least one leaf")]
    EmptyRange {
        /// First leaf of the range.
        start: u64,
        /// One past the last leaf of the range.
        end: u64,
    },
    /// A subtree range is not one the RFC's recursion produces: its start is
    /// not a multiple of the smallest power of two at least its size.
    #[error(
        "leaf range [{start}, {end}) is not aligned: its start must be a multiple of the smallest power of two not below its size"
    )]
    UnalignedRange {
        /// First leaf of the range.
        start: u64,
        /// One past the last leaf of the range.
        end: u64,
    },
    /// The tree already holds `u64::MAX` leaves.
    #[error("the tree is full: no leaf can be appended after {0} leaves")]
    TreeFull(u64),
}

/// Index of the first leaf under node `(level, index)`, for error messages
/// (saturating, since a bogus node may lie beyond `u64`).
fn first_leaf(level: u8, index: u64) -> u64 {
    1u64.checked_shl(u32::from(level))
        .and_then(|width| index.checked_mul(width))
        .unwrap_or(u64::MAX)
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not inside the tree the proof is for.
    #[error("leaf index {index} is out of range for a tree of {size} leaves")]
    IndexOutOfRange {
        /// The claimed leaf index.
        index: u64,
        /// The claimed tree size.
        size: u64,
    },
    /// The sizes do not admit a consistency proof (`0 < old <= new`).
    #[error(
        "bad sizes for a consistency proof: old size {old_size}, new size {new_size} (need 0 < old <= new)"
    )]
    BadSizes {
        /// The claimed old tree size.
        old_size: u64,
        /// The claimed new tree size.
        new_size: u64,
    },
    /// The proof has the wrong number of hashes for the claimed sizes.
    #[error("proof has {actual} hashes but the claimed sizes need exactly {expected}")]
    WrongLength {
        /// The number of hashes the RFC's proof has for these sizes.
        expected: usize,
        /// The number of hashes supplied.
        actual: usize,
    },
    /// The root recomputed from the leaf and the inclusion proof differs
    /// from the claimed root.
    #[error("inclusion proof does not lead to the claimed root (recomputed {computed})", computed = Hex(computed))]
    RootMismatch {
        /// The root the proof leads to.
        computed: Hash,
    },
    /// The old root recomputed from the consistency proof differs from the
    /// claimed old root.
    #[error("consistency proof does not lead to the claimed old root (recomputed {computed})", computed = Hex(computed))]
    OldRootMismatch {
        /// The old root the proof leads to.
        computed: Hash,
    },
    /// The new root recomputed from the consistency proof differs from the
    /// claimed new root.
    #[error("consistency proof does not lead to the claimed new root (recomputed {computed})", computed = Hex(computed))]
    NewRootMismatch {
        /// The new root the proof leads to.
        computed: Hash,
    },
    /// Equal sizes were claimed with different roots.
    #[error("old and new trees have the same size but different roots")]
    SameSizeDifferentRoots,
}

/// Lowercase hex display of a hash, for error messages.
struct Hex<'a>(&'a Hash);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// `SHA-256(0x00 || leaf)`: the hash of one leaf.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(leaf);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// `SHA-256()` of the empty string: the root of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Read access to the caller's stored hashes of complete, aligned subtrees.
///
/// Node `(level, index)` is the hash of leaves
/// `[index * 2^level, (index + 1) * 2^level)`. An implementation returns
/// [`Error::MissingNode`] for a node it does not hold, or [`Error::Storage`]
/// when its backend fails.
pub trait Nodes {
    /// The hash of node `(level, index)`.
    fn node(&self, level: u8, index: u64) -> Result<Hash, Error>;
}

impl<T: Nodes + ?Sized> Nodes for &T {
    fn node(&self, level: u8, index: u64) -> Result<Hash, Error> {
        (**self).node(level, index)
    }
}

/// An in-memory [`Nodes`] store: one vector of hashes per level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryNodes {
    /// `levels[l][i]` is node `(l, i)`.
    levels: Vec<Vec<Hash>>,
}

impl MemoryNodes {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf (given by its [`leaf_hash`]) and stores every complete
    /// subtree it completes.
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut level = 0usize;
        let mut hash = leaf_hash;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(hash);
            let index = row.len() - 1;
            if index.is_multiple_of(2) {
                break;
            }
            hash = node_hash(&row[index - 1], &hash);
            level += 1;
        }
    }

    /// The number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |row| row.len() as u64)
    }
}

impl Nodes for MemoryNodes {
    fn node(&self, level: u8, index: u64) -> Result<Hash, Error> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.levels.get(usize::from(level))?.get(i))
            .copied()
            .ok_or(Error::MissingNode { level, index })
    }
}

/// The nodes to store when leaf number `size_before` (0-based) with hash
/// `leaf_hash` is appended to a tree of `size_before` leaves:
/// `(0, size_before, leaf_hash)` followed by every complete subtree the new
/// leaf completes, as `(level, index, hash)`, bottom up.
///
/// While the node's index is odd it is a right child: it is combined with its
/// left sibling (read from `nodes`, which must hold the tree before the
/// append) and the walk moves one level up. `O(log n)` reads.
pub fn appended(
    size_before: u64,
    leaf_hash: Hash,
    nodes: &impl Nodes,
) -> Result<Vec<(u8, u64, Hash)>, Error> {
    if size_before == u64::MAX {
        return Err(Error::TreeFull(size_before));
    }
    let mut out = vec![(0u8, size_before, leaf_hash)];
    let (mut level, mut index, mut hash) = (0u8, size_before, leaf_hash);
    while index % 2 == 1 {
        let left = nodes.node(level, index - 1)?;
        hash = node_hash(&left, &hash);
        level += 1;
        index /= 2;
        out.push((level, index, hash));
    }
    Ok(out)
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[start..end))` for a range the RFC's recursion produces.
///
/// Such a range starts at a multiple of the smallest power of two not below
/// its size (every piece of `MTH(D[0..n))`, of `PATH` and of `SUBPROOF` does).
/// A power-of-two range is then one stored node; any other range splits at
/// the largest power of two smaller than its size into a stored left subtree
/// and a smaller right range of the same kind, so the cost is `O(log size)`
/// reads. Other ranges are rejected with [`Error::UnalignedRange`].
pub fn subtree_root(nodes: &impl Nodes, start: u64, end: u64) -> Result<Hash, Error> {
    if end <= start {
        return Err(Error::EmptyRange { start, end });
    }
    let size = end - start;
    let aligned = match size.checked_next_power_of_two() {
        Some(p) => start.is_multiple_of(p),
        // size > 2^63, so the start must be 0.
        None => start == 0,
    };
    if !aligned {
        return Err(Error::UnalignedRange { start, end });
    }
    // Collect the left pieces (complete subtrees) top-down, then fold them
    // right to left.
    let mut pieces = Vec::new();
    let mut lo = start;
    loop {
        let n = end - lo;
        if n.is_power_of_two() {
            let level = n.trailing_zeros() as u8;
            pieces.push(nodes.node(level, lo >> level)?);
            break;
        }
        let k = split_point(n);
        let level = k.trailing_zeros() as u8;
        pieces.push(nodes.node(level, lo >> level)?);
        lo += k;
    }
    let mut acc = pieces.pop().unwrap_or_else(empty_root);
    while let Some(left) = pieces.pop() {
        acc = node_hash(&left, &acc);
    }
    Ok(acc)
}

/// The root of the tree made of the first `size` leaves (`MTH(D[0..size))`);
/// [`empty_root`] for size 0.
pub fn root(nodes: &impl Nodes, size: u64) -> Result<Hash, Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    subtree_root(nodes, 0, size)
}

/// The inclusion proof of leaf `index` in the tree of the first `size`
/// leaves: RFC 9162 §2.1.3.1 `PATH(index, D[0..size))`, sibling hashes from
/// the leaf upwards.
pub fn inclusion_proof(nodes: &impl Nodes, index: u64, size: u64) -> Result<Vec<Hash>, Error> {
    if index >= size {
        return Err(Error::IndexOutOfRange { index, size });
    }
    // Walk down from the root, noting each sibling; the RFC lists them
    // bottom up.
    let mut siblings = Vec::new();
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index < lo + k {
            siblings.push(subtree_root(nodes, lo + k, hi)?);
            hi = lo + k;
        } else {
            siblings.push(subtree_root(nodes, lo, lo + k)?);
            lo += k;
        }
    }
    siblings.reverse();
    Ok(siblings)
}

/// The consistency proof between the trees of the first `old_size` and the
/// first `new_size` leaves: RFC 9162 §2.1.4.1 `PROOF(old_size, D[0..new_size))`,
/// hashes from the bottom upwards. Empty when the sizes are equal; the RFC
/// defines proofs only for `0 < old_size <= new_size`.
pub fn consistency_proof(
    nodes: &impl Nodes,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, Error> {
    if old_size == 0 || old_size > new_size {
        return Err(Error::BadConsistencySizes { old_size, new_size });
    }
    // SUBPROOF(m, D[lo..hi), b), unrolled: each step appends one hash after
    // the sub-proof, so collect top-down and reverse at the end.
    let mut out = Vec::new();
    let (mut lo, mut hi, mut m, mut complete) = (0u64, new_size, old_size, true);
    loop {
        let n = hi - lo;
        if m == n {
            if !complete {
                out.push(subtree_root(nodes, lo, hi)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            out.push(subtree_root(nodes, lo + k, hi)?);
            hi = lo + k;
        } else {
            out.push(subtree_root(nodes, lo, lo + k)?);
            lo += k;
            m -= k;
            complete = false;
        }
    }
    out.reverse();
    Ok(out)
}

/// The number of hashes in `PATH(index, D[0..size))` (`index < size`).
fn inclusion_len(index: u64, size: u64) -> usize {
    let (mut lo, mut hi, mut len) = (0u64, size, 0usize);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index < lo + k {
            hi = lo + k;
        } else {
            lo += k;
        }
        len += 1;
    }
    len
}

/// The number of hashes in `PROOF(old, D[0..new))` (`0 < old <= new`).
fn consistency_len(old: u64, new: u64) -> usize {
    let (mut n, mut m, mut complete, mut len) = (new, old, true, 0usize);
    while m != n {
        let k = split_point(n);
        if m <= k {
            n = k;
        } else {
            n -= k;
            m -= k;
            complete = false;
        }
        len += 1;
    }
    len + usize::from(!complete)
}

/// Checks that `proof` shows the leaf with hash `leaf_hash` at `index` in the
/// tree of `size` leaves with root `root`: RFC 9162 §2.1.3.2.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_len(index, size);
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            actual: proof.len(),
        });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength {
                expected,
                actual: proof.len(),
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength {
            expected,
            actual: proof.len(),
        });
    }
    if r != *root {
        return Err(ProofError::RootMismatch { computed: r });
    }
    Ok(())
}

/// Checks that `proof` shows the tree of `old_size` leaves with root
/// `old_root` is a prefix of the tree of `new_size` leaves with root
/// `new_root`: RFC 9162 §2.1.4.2. For equal sizes the proof must be empty and
/// the roots equal.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size == 0 || old_size > new_size {
        return Err(ProofError::BadSizes { old_size, new_size });
    }
    let expected = consistency_len(old_size, new_size);
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            expected,
            actual: proof.len(),
        });
    }
    if old_size == new_size {
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::SameSizeDifferentRoots)
        };
    }
    let wrong_length = ProofError::WrongLength {
        expected,
        actual: proof.len(),
    };
    // Step 2: a power-of-two old tree is a node of the new one, and the RFC
    // leaves it out of the proof; put it back in front.
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(old_root);
    }
    path.extend(proof);
    let (first, rest) = path.split_first().ok_or(wrong_length.clone())?;
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (**first, **first);
    for c in rest {
        if snode == 0 {
            return Err(wrong_length);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(wrong_length);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch { computed: fr });
    }
    if sr != *new_root {
        return Err(ProofError::NewRootMismatch { computed: sr });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The RFC's definition, straight: `MTH` over a slice of leaf hashes.
    fn naive_mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&naive_mth(&leaves[..k]), &naive_mth(&leaves[k..]))
            }
        }
    }

    /// RFC 9162 `PATH(m, D[n])`, straight.
    fn naive_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = split_point(n as u64) as usize;
        if m < k {
            let mut p = naive_path(m, &leaves[..k]);
            p.push(naive_mth(&leaves[k..]));
            p
        } else {
            let mut p = naive_path(m - k, &leaves[k..]);
            p.push(naive_mth(&leaves[..k]));
            p
        }
    }

    /// RFC 9162 `SUBPROOF(m, D[n], b)`, straight.
    fn naive_subproof(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if complete {
                Vec::new()
            } else {
                vec![naive_mth(leaves)]
            };
        }
        let k = split_point(n as u64) as usize;
        if m <= k {
            let mut p = naive_subproof(m, &leaves[..k], complete);
            p.push(naive_mth(&leaves[k..]));
            p
        } else {
            let mut p = naive_subproof(m - k, &leaves[k..], false);
            p.push(naive_mth(&leaves[..k]));
            p
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n as u64).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn store(hashes: &[Hash]) -> MemoryNodes {
        let mut nodes = MemoryNodes::new();
        for h in hashes {
            nodes.push(*h);
        }
        nodes
    }

    fn unhex(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn primitive_hashes() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut pre = vec![0u8];
        pre.extend_from_slice(b"abc");
        assert_eq!(leaf_hash(b"abc"), <Hash>::from(Sha256::digest(&pre)));
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut pre = vec![1u8];
        pre.extend_from_slice(&a);
        pre.extend_from_slice(&b);
        assert_eq!(node_hash(&a, &b), <Hash>::from(Sha256::digest(&pre)));
    }

    #[test]
    fn roots_of_small_trees_by_hand() {
        let l = leaves(3);
        let nodes = store(&l);
        assert_eq!(root(&nodes, 0).unwrap(), empty_root());
        assert_eq!(root(&nodes, 1).unwrap(), l[0]);
        assert_eq!(root(&nodes, 2).unwrap(), node_hash(&l[0], &l[1]));
        assert_eq!(
            root(&nodes, 3).unwrap(),
            node_hash(&node_hash(&l[0], &l[1]), &l[2])
        );
        assert_eq!(
            root(&nodes, 4).unwrap_err(),
            Error::MissingNode { level: 2, index: 0 }
        );
    }

    /// The eight leaves of the Certificate Transparency test suite and the
    /// published roots of each prefix.
    const CT_LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const CT_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn certificate_transparency_vectors() {
        let mut nodes = MemoryNodes::new();
        for (i, leaf) in CT_LEAVES.iter().enumerate() {
            nodes.push(leaf_hash(&hex::decode(leaf).unwrap()));
            assert_eq!(
                hex::encode(root(&nodes, i as u64 + 1).unwrap()),
                CT_ROOTS[i]
            );
        }
        // Published consistency proof from 6 to 8 and from 2 to 5.
        let p = consistency_proof(&nodes, 6, 8).unwrap();
        assert_eq!(
            p,
            vec![
                unhex("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                unhex("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                unhex("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ]
        );
        let p = consistency_proof(&nodes, 2, 5).unwrap();
        assert_eq!(
            p,
            vec![
                unhex("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                unhex("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            ]
        );
        verify_consistency(2, 5, &unhex(CT_ROOTS[1]), &unhex(CT_ROOTS[4]), &p).unwrap();
    }

    #[test]
    fn argument_errors() {
        let nodes = store(&leaves(5));
        assert_eq!(
            inclusion_proof(&nodes, 5, 5).unwrap_err(),
            Error::IndexOutOfRange { index: 5, size: 5 }
        );
        assert_eq!(
            inclusion_proof(&nodes, 0, 0).unwrap_err(),
            Error::IndexOutOfRange { index: 0, size: 0 }
        );
        assert_eq!(
            consistency_proof(&nodes, 0, 3).unwrap_err(),
            Error::BadConsistencySizes {
                old_size: 0,
                new_size: 3
            }
        );
        assert_eq!(
            consistency_proof(&nodes, 4, 3).unwrap_err(),
            Error::BadConsistencySizes {
                old_size: 4,
                new_size: 3
            }
        );
        assert_eq!(
            subtree_root(&nodes, 3, 3).unwrap_err(),
            Error::EmptyRange { start: 3, end: 3 }
        );
        assert_eq!(
            subtree_root(&nodes, 1, 3).unwrap_err(),
            Error::UnalignedRange { start: 1, end: 3 }
        );
        assert_eq!(
            root(&nodes, 6).unwrap_err(),
            Error::MissingNode { level: 1, index: 2 }
        );
        assert!(consistency_proof(&nodes, 3, 3).unwrap().is_empty());
        assert_eq!(
            appended(u64::MAX, [0; 32], &nodes).unwrap_err(),
            Error::TreeFull(u64::MAX)
        );
        assert!(
            Error::MissingNode { level: 3, index: 2 }
                .to_string()
                .contains("from 16")
        );
        assert_eq!(
            verify_inclusion(3, 3, &[0; 32], &[], &[0; 32]).unwrap_err(),
            ProofError::IndexOutOfRange { index: 3, size: 3 }
        );
        assert_eq!(
            verify_consistency(0, 3, &[0; 32], &[0; 32], &[]).unwrap_err(),
            ProofError::BadSizes {
                old_size: 0,
                new_size: 3
            }
        );
        assert_eq!(
            verify_consistency(4, 3, &[0; 32], &[0; 32], &[]).unwrap_err(),
            ProofError::BadSizes {
                old_size: 4,
                new_size: 3
            }
        );
        assert_eq!(
            verify_consistency(3, 3, &[0; 32], &[1; 32], &[]).unwrap_err(),
            ProofError::SameSizeDifferentRoots
        );
        verify_consistency(3, 3, &[7; 32], &[7; 32], &[]).unwrap();
    }

    #[test]
    fn huge_sizes_do_not_panic() {
        // A proof for a tree larger than storage: verification only needs the
        // proof, and must not overflow.
        let proof = vec![[0u8; 32]; 64];
        assert!(verify_inclusion(u64::MAX - 1, u64::MAX, &[0; 32], &proof, &[0; 32]).is_err());
        assert!(verify_consistency(u64::MAX - 1, u64::MAX, &[0; 32], &[1; 32], &proof).is_err());
        assert!(verify_consistency(1 << 63, u64::MAX, &[0; 32], &[1; 32], &proof).is_err());
        let nodes = MemoryNodes::new();
        assert!(root(&nodes, u64::MAX).is_err());
        assert!(inclusion_proof(&nodes, u64::MAX - 1, u64::MAX).is_err());
        assert!(consistency_proof(&nodes, 1, u64::MAX).is_err());
    }

    /// Every single-bit corruption of every proof hash of a small tree fails.
    #[test]
    fn every_corrupted_proof_fails_small_tree() {
        let l = leaves(11);
        let nodes = store(&l);
        for size in 1..=11u64 {
            let r = root(&nodes, size).unwrap();
            for index in 0..size {
                let proof = inclusion_proof(&nodes, index, size).unwrap();
                for i in 0..proof.len() {
                    for byte in 0..32 {
                        let mut bad = proof.clone();
                        bad[i][byte] ^= 0x80;
                        assert!(
                            verify_inclusion(index, size, &l[index as usize], &bad, &r).is_err()
                        );
                    }
                }
            }
            for old in 1..=size {
                let old_root = root(&nodes, old).unwrap();
                let proof = consistency_proof(&nodes, old, size).unwrap();
                for i in 0..proof.len() {
                    for byte in 0..32 {
                        let mut bad = proof.clone();
                        bad[i][byte] ^= 0x01;
                        assert!(verify_consistency(old, size, &old_root, &r, &bad).is_err());
                    }
                }
            }
        }
    }

    // Exhaustive over every size (and index or old size) of a tree: few
    // cases, each checking tens of thousands of proofs.
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]

        #[test]
        fn roots_match_naive_mth(n in 0usize..300) {
            let l = leaves(n);
            let nodes = store(&l);
            prop_assert_eq!(nodes.size(), n as u64);
            for size in 0..=n {
                prop_assert_eq!(root(&nodes, size as u64).unwrap(), naive_mth(&l[..size]));
            }
        }

        #[test]
        fn all_inclusion_proofs_verify(n in 1usize..300) {
            let l = leaves(n);
            let nodes = store(&l);
            for size in 1..=n {
                let r = root(&nodes, size as u64).unwrap();
                for index in 0..size {
                    let proof = inclusion_proof(&nodes, index as u64, size as u64).unwrap();
                    if index % 17 == 0 && size % 5 == 0 {
                        prop_assert_eq!(&proof, &naive_path(index, &l[..size]));
                    }
                    prop_assert_eq!(
                        verify_inclusion(index as u64, size as u64, &l[index], &proof, &r),
                        Ok(())
                    );
                }
            }
        }

        #[test]
        fn all_consistency_proofs_verify(n in 1usize..300) {
            let l = leaves(n);
            let nodes = store(&l);
            let roots: Vec<Hash> = (0..=n).map(|s| root(&nodes, s as u64).unwrap()).collect();
            for new in 1..=n {
                for old in 1..=new {
                    let proof = consistency_proof(&nodes, old as u64, new as u64).unwrap();
                    if old % 13 == 0 && new % 5 == 0 {
                        prop_assert_eq!(&proof, &naive_subproof(old, &l[..new], true));
                    }
                    prop_assert_eq!(
                        verify_consistency(old as u64, new as u64, &roots[old], &roots[new], &proof),
                        Ok(())
                    );
                }
            }
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn tampered_inclusion_fails(
            n in 2usize..300,
            pick in any::<(u64, u64, usize, usize, u8)>(),
        ) {
            let (s, i, which, byte, bit) = pick;
            let l = leaves(n);
            let nodes = store(&l);
            let size = 2 + s % (n as u64 - 1);
            let index = i % size;
            let r = root(&nodes, size).unwrap();
            let leaf = l[index as usize];
            let proof = inclusion_proof(&nodes, index, size).unwrap();
            prop_assert!(verify_inclusion(index, size, &leaf, &proof, &r).is_ok());

            // A flipped bit anywhere in the proof.
            let mut bad = proof.clone();
            bad[which % proof.len()][byte % 32] ^= 1 << (bit % 8);
            prop_assert!(verify_inclusion(index, size, &leaf, &bad, &r).is_err());
            // A truncated or extended proof.
            prop_assert!(verify_inclusion(index, size, &leaf, &proof[1..], &r).is_err());
            let mut longer = proof.clone();
            longer.push([0; 32]);
            prop_assert!(verify_inclusion(index, size, &leaf, &longer, &r).is_err());
            // Wrong index, leaf, size (claimed with that size's true root) or
            // root.
            let other = (index + 1) % size;
            prop_assert!(verify_inclusion(other, size, &leaf, &proof, &r).is_err());
            if size < n as u64 {
                let r1 = root(&nodes, size + 1).unwrap();
                prop_assert!(verify_inclusion(index, size + 1, &leaf, &proof, &r1).is_err());
            }
            if index < size - 1 {
                let r1 = root(&nodes, size - 1).unwrap();
                prop_assert!(verify_inclusion(index, size - 1, &leaf, &proof, &r1).is_err());
            }
            prop_assert!(verify_inclusion(index, size, &l[other as usize], &proof, &r).is_err());
            let mut bad_root = r;
            bad_root[byte % 32] ^= 1 << (bit % 8);
            let result = verify_inclusion(index, size, &leaf, &proof, &bad_root);
            prop_assert!(matches!(result, Err(ProofError::RootMismatch { .. })), "{:?}", result);
        }

        #[test]
        fn tampered_consistency_fails(
            n in 2usize..300,
            pick in any::<(u64, u64, usize, usize, u8)>(),
        ) {
            let (s, o, which, byte, bit) = pick;
            let l = leaves(n);
            let nodes = store(&l);
            let new = 2 + s % (n as u64 - 1);
            let old = 1 + o % (new - 1); // old < new
            let (old_root, new_root) = (root(&nodes, old).unwrap(), root(&nodes, new).unwrap());
            let proof = consistency_proof(&nodes, old, new).unwrap();
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &proof).is_ok());

            let mut bad = proof.clone();
            bad[which % proof.len()][byte % 32] ^= 1 << (bit % 8);
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &bad).is_err());
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &proof[1..]).is_err());
            let mut longer = proof.clone();
            longer.push([0; 32]);
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &longer).is_err());
            // Wrong sizes, claimed with those sizes' true roots.
            let r = |s: u64| root(&nodes, s).unwrap();
            prop_assert!(verify_consistency(old + 1, new, &r(old + 1), &new_root, &proof).is_err());
            if new < n as u64 {
                prop_assert!(verify_consistency(old, new + 1, &old_root, &r(new + 1), &proof).is_err());
            }
            if old > 1 {
                prop_assert!(verify_consistency(old - 1, new, &r(old - 1), &new_root, &proof).is_err());
            }
            prop_assert!(verify_consistency(old, new - 1, &old_root, &r(new - 1), &proof).is_err());
            // Wrong roots.
            let mut bad_root = old_root;
            bad_root[byte % 32] ^= 1 << (bit % 8);
            prop_assert!(verify_consistency(old, new, &bad_root, &new_root, &proof).is_err());
            let mut bad_root = new_root;
            bad_root[byte % 32] ^= 1 << (bit % 8);
            let result = verify_consistency(old, new, &old_root, &bad_root, &proof);
            prop_assert!(matches!(result, Err(ProofError::NewRootMismatch { .. })), "{:?}", result);
        }

        #[test]
        fn appended_matches_push(n in 0usize..300) {
            let l = leaves(n);
            let mut pushed = MemoryNodes::new();
            let mut stored: std::collections::BTreeMap<(u8, u64), Hash> = Default::default();
            for (i, h) in l.iter().enumerate() {
                for (level, index, hash) in appended(i as u64, *h, &pushed).unwrap() {
                    prop_assert!(stored.insert((level, index), hash).is_none());
                }
                pushed.push(*h);
            }
            let mut from_push = std::collections::BTreeMap::new();
            for (level, row) in pushed.levels.iter().enumerate() {
                for (index, hash) in row.iter().enumerate() {
                    from_push.insert((level as u8, index as u64), *hash);
                }
            }
            prop_assert_eq!(stored, from_push);
        }
    }
}
