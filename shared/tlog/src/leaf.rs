//! What one leaf of the Casework ledger commits to: one stored event.
//!
//! # Format (`casework-event/v1`)
//!
//! The leaf bytes of an event are, in order:
//!
//! | bytes | content |
//! |-------|---------|
//! | 17    | the ASCII string `casework-event/v1` |
//! | 1     | `0x00` |
//! | 2     | length of the tenant in bytes, unsigned big-endian |
//! | n     | the tenant, UTF-8 |
//! | 2     | length of the case id in bytes, unsigned big-endian |
//! | m     | the case id, UTF-8 |
//! | 8     | the event's position within its case (1, 2, 3, …), unsigned big-endian |
//! | 32    | SHA-256 of the event's exact stored bytes |
//!
//! Every variable-length field is length-prefixed, so distinct
//! `(tenant, case id, position, digest)` tuples always give distinct leaves
//! (`("ab", "c")` and `("a", "bc")` differ in their length bytes). Tenant and
//! case id are therefore limited to 65 535 bytes each.
//!
//! The Merkle tree hashes these bytes as an RFC 9162 leaf:
//! [`event_leaf_hash`] is `SHA-256(0x00 || event_leaf(..))`.

use crate::merkle::{self, Hash};

/// The domain-separation prefix every event leaf starts with (followed by a
/// `0x00` byte).
pub const EVENT_LEAF_PREFIX: &str = "casework-event/v1";

/// Why an event leaf could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    /// A length-prefixed field is longer than a u16 length can state.
    #[error("the {field} is {len} bytes long; an event leaf allows at most 65535")]
    FieldTooLong {
        /// Which field: `"tenant"` or `"case id"`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
}

/// The canonical leaf bytes of one stored event (see the module
/// documentation for the layout), or an error if the tenant or case id is
/// longer than 65 535 bytes.
pub fn try_event_leaf(
    tenant: &str,
    case_id: &str,
    case_position: u64,
    event_sha256: &[u8; 32],
) -> Result<Vec<u8>, LeafError> {
    let length = |field: &'static str, value: &str| {
        u16::try_from(value.len()).map_err(|_| LeafError::FieldTooLong {
            field,
            len: value.len(),
        })
    };
    let tenant_len = length("tenant", tenant)?;
    let case_len = length("case id", case_id)?;

    let mut out = Vec::with_capacity(
        EVENT_LEAF_PREFIX.len() + 1 + 2 + tenant.len() + 2 + case_id.len() + 8 + 32,
    );
    out.extend_from_slice(EVENT_LEAF_PREFIX.as_bytes());
    out.push(0x00);
    out.extend_from_slice(&tenant_len.to_be_bytes());
    out.extend_from_slice(tenant.as_bytes());
    out.extend_from_slice(&case_len.to_be_bytes());
    out.extend_from_slice(case_id.as_bytes());
    out.extend_from_slice(&case_position.to_be_bytes());
    out.extend_from_slice(event_sha256);
    Ok(out)
}

/// The canonical leaf bytes of one stored event (see the module
/// documentation for the layout).
///
/// # Panics
///
/// If `tenant` or `case_id` is longer than 65 535 bytes; use
/// [`try_event_leaf`] where such input is possible.
pub fn event_leaf(
    tenant: &str,
    case_id: &str,
    case_position: u64,
    event_sha256: &[u8; 32],
) -> Vec<u8> {
    match try_event_leaf(tenant, case_id, case_position, event_sha256) {
        Ok(leaf) => leaf,
        Err(e) => panic!("{e}"),
    }
}

/// The RFC 9162 leaf hash of [`event_leaf`]: `SHA-256(0x00 || event_leaf(..))`.
///
/// # Panics
///
/// As [`event_leaf`]; use [`try_event_leaf_hash`] where that is possible.
pub fn event_leaf_hash(
    tenant: &str,
    case_id: &str,
    case_position: u64,
    event_sha256: &[u8; 32],
) -> Hash {
    merkle::leaf_hash(&event_leaf(tenant, case_id, case_position, event_sha256))
}

/// The RFC 9162 leaf hash of [`try_event_leaf`].
pub fn try_event_leaf_hash(
    tenant: &str,
    case_id: &str,
    case_position: u64,
    event_sha256: &[u8; 32],
) -> Result<Hash, LeafError> {
    try_event_leaf(tenant, case_id, case_position, event_sha256)
        .map(|leaf| merkle::leaf_hash(&leaf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn layout_byte_by_byte() {
        let digest: [u8; 32] = core::array::from_fn(|i| 0xa0 + i as u8);
        let leaf = event_leaf("acme", "case-7", 0x0102_0304_0506_0708, &digest);

        let mut want: Vec<u8> = Vec::new();
        want.extend_from_slice(b"casework-event/v1");
        want.push(0x00);
        want.extend_from_slice(&[0x00, 0x04]);
        want.extend_from_slice(b"acme");
        want.extend_from_slice(&[0x00, 0x06]);
        want.extend_from_slice(b"case-7");
        want.extend_from_slice(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]);
        want.extend_from_slice(&digest);
        assert_eq!(leaf, want);
        assert_eq!(leaf.len(), 17 + 1 + 2 + 4 + 2 + 6 + 8 + 32);
        assert_eq!(&leaf[..18], b"casework-event/v1\0");

        let mut pre = vec![0x00];
        pre.extend_from_slice(&want);
        let want_hash: Hash = Sha256::digest(&pre).into();
        assert_eq!(
            event_leaf_hash("acme", "case-7", 0x0102_0304_0506_0708, &digest),
            want_hash
        );
        assert_eq!(
            try_event_leaf_hash("acme", "case-7", 0x0102_0304_0506_0708, &digest),
            Ok(want_hash)
        );
    }

    #[test]
    fn distinct_inputs_give_distinct_leaves() {
        let d = [7u8; 32];
        let mut other = d;
        other[31] = 8;
        let leaves = [
            event_leaf("ab", "c", 1, &d),
            event_leaf("a", "bc", 1, &d),
            event_leaf("", "abc", 1, &d),
            event_leaf("abc", "", 1, &d),
            event_leaf("ab", "c", 2, &d),
            event_leaf("ab", "c", 1, &other),
            event_leaf("ab\0", "c", 1, &d),
        ];
        for (i, a) in leaves.iter().enumerate() {
            for b in &leaves[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn overlong_fields_are_errors() {
        let long = "x".repeat(65_536);
        assert_eq!(
            try_event_leaf(&long, "c", 1, &[0; 32]),
            Err(LeafError::FieldTooLong {
                field: "tenant",
                len: 65_536
            })
        );
        assert_eq!(
            try_event_leaf("t", &long, 1, &[0; 32])
                .unwrap_err()
                .to_string(),
            "the case id is 65536 bytes long; an event leaf allows at most 65535"
        );
        assert!(try_event_leaf(&long[1..], "c", 1, &[0; 32]).is_ok());
    }
}
