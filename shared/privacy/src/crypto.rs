//! The cryptography, pure: the key-encryption key (KEK) and what is derived
//! from it, data keys, wrapping, and AES-256-GCM over personal fields. No
//! I/O but reading a KEK file and the system's random numbers.
//!
//! - A **KEK** is 32 random bytes, written as 64 hex digits in a file or a
//!   Kubernetes Secret. Its id (first 8 bytes of `SHA-256("casework-kek-id"
//!   ‖ KEK)`, hex) is recorded with every key it wraps, so a key wrapped by
//!   another KEK is named, not mistaken for damage. Two keys are derived
//!   from it with HMAC-SHA-256: the *wrap key* (label `casework wrap v1`)
//!   and the *lookup key* (label `casework lookup v1`).
//! - A customer's **lookup** is the first 16 bytes of HMAC-SHA-256(lookup
//!   key, tenant ‖ 0x00 ‖ customer id) in Crockford base32: it finds the
//!   customer's current pseudonym without storing the customer id. It is
//!   never written into an event, only into the key stream, and is erased
//!   with the key.
//! - A **data key** is 32 random bytes, one per customer (until erased),
//!   stored wrapped: AES-256-GCM under the wrap key, random 96-bit nonce,
//!   associated data `casework-data-key/v1 ‖ 0 ‖ tenant ‖ 0 ‖ subject ‖ 0
//!   ‖ key id`, so a wrapped key moved to another customer fails to open.
//! - **Personal fields** are sealed with AES-256-GCM under the data key.
//!   The nonce is the first 12 bytes of HMAC-SHA-256(HMAC(data key, "casework
//!   nonce v1"), aad ‖ plaintext): the same event (same associated data and
//!   plaintext) encrypts to the same bytes, so a retried append stays a
//!   byte-for-byte retry, and two different plaintexts never share a nonce
//!   unless the hash collides.

use std::fmt;
use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::Error;

/// The algorithm name recorded in `Protected.algorithm`.
pub const ALGORITHM: &str = "AES-256-GCM";

/// Bytes of a key (KEK or data key).
pub const KEY_LEN: usize = 32;

fn hmac256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .expect("the system's random number generator failed");
    out
}

fn aes(key: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key"))
}

fn seal_with(key: &[u8; KEY_LEN], nonce: [u8; NONCE_LEN], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    aes(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .expect("AES-GCM sealing of a bounded input");
    buf
}

fn open_with(key: &[u8; KEY_LEN], nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ()> {
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| ())?;
    let mut buf = sealed.to_vec();
    let plain = aes(key)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| ())?;
    let n = plain.len();
    buf.truncate(n);
    Ok(buf)
}

fn join(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(p.as_bytes());
    }
    out
}

/// The key-encryption key. Its bytes are never printed.
pub struct Kek {
    wrap: [u8; KEY_LEN],
    lookup: [u8; KEY_LEN],
    id: String,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek").field("id", &self.id).finish()
    }
}

impl Drop for Kek {
    fn drop(&mut self) {
        self.wrap = [0; KEY_LEN];
        self.lookup = [0; KEY_LEN];
    }
}

impl Kek {
    /// A KEK from its 32 bytes.
    pub fn from_bytes(kek: &[u8; KEY_LEN]) -> Kek {
        let id_hash = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"casework-kek-id", &kek[..]].concat(),
        );
        Kek {
            wrap: hmac256(kek, &[b"casework wrap v1"]),
            lookup: hmac256(kek, &[b"casework lookup v1"]),
            id: hex::encode(&id_hash.as_ref()[..8]),
        }
    }

    /// A KEK from its text form: 64 hex digits (surrounding whitespace
    /// ignored). `source` names where it came from, for the error.
    pub fn from_hex(text: &str, source: &str) -> Result<Kek, Error> {
        let t = text.trim();
        let bytes = hex::decode(t).map_err(|e| Error::BadKek {
            from: source.to_owned(),
            why: format!("not hex ({e}); expected 64 hex digits, e.g. from `openssl rand -hex 32`"),
        })?;
        let arr: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| Error::BadKek {
            from: source.to_owned(),
            why: format!(
                "{} bytes; a KEK is 32 bytes (64 hex digits), e.g. from `openssl rand -hex 32`",
                bytes.len()
            ),
        })?;
        Ok(Kek::from_bytes(&arr))
    }

    /// Reads a KEK file.
    pub fn load(path: &Path) -> Result<Kek, Error> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::BadKek {
            from: source.clone(),
            why: format!("cannot be read: {e}"),
        })?;
        Kek::from_hex(&text, &source)
    }

    /// A new random KEK and its text form (to write to a file or Secret).
    pub fn generate() -> (Kek, String) {
        let bytes: [u8; KEY_LEN] = random();
        (Kek::from_bytes(&bytes), hex::encode(bytes))
    }

    /// The KEK's id (16 hex digits), recorded with every key it wraps.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A customer's lookup token (26 Crockford base32 characters).
    pub fn lookup(&self, tenant: &str, customer_id: &str) -> String {
        let h = hmac256(
            &self.lookup,
            &[tenant.as_bytes(), &[0], customer_id.as_bytes()],
        );
        let mut first = [0u8; 16];
        first.copy_from_slice(&h[..16]);
        ulid::Ulid::from(u128::from_be_bytes(first)).to_string()
    }

    fn wrap_aad(tenant: &str, subject: &str, key_id: &str) -> Vec<u8> {
        join(&["casework-data-key/v1", tenant, subject, key_id])
    }

    /// Wraps a data key: nonce ‖ ciphertext ‖ tag.
    pub fn wrap(&self, key: &DataKey, tenant: &str, subject: &str, key_id: &str) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = random();
        let mut out = nonce.to_vec();
        out.extend(seal_with(
            &self.wrap,
            nonce,
            &Self::wrap_aad(tenant, subject, key_id),
            &key.0,
        ));
        out
    }

    /// Unwraps a data key wrapped by [`Kek::wrap`] for the same tenant,
    /// subject and key id.
    pub fn unwrap(
        &self,
        wrapped: &[u8],
        tenant: &str,
        subject: &str,
        key_id: &str,
    ) -> Result<DataKey, Error> {
        let bad = || {
            Error::Damaged(format!(
                "the wrapped data key {key_id} of {tenant}/{subject} does not open with KEK {}: it was altered or moved",
                self.id
            ))
        };
        if wrapped.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
        let plain = open_with(
            &self.wrap,
            nonce,
            &Self::wrap_aad(tenant, subject, key_id),
            sealed,
        )
        .map_err(|()| bad())?;
        let arr: [u8; KEY_LEN] = plain.as_slice().try_into().map_err(|_| bad())?;
        Ok(DataKey(arr))
    }
}

/// A customer's data key. Its bytes are never printed and are zeroed when
/// dropped.
pub struct DataKey([u8; KEY_LEN]);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0 = [0; KEY_LEN];
    }
}

/// The associated data of one event's personal fields: binds the
/// ciphertext to its tenant, case, event, type, subject and key.
pub fn event_aad(
    tenant: &str,
    case_id: &str,
    event_id: &str,
    event_type: &str,
    subject: &str,
    key_id: &str,
) -> Vec<u8> {
    join(&[
        "casework-personal/v1",
        tenant,
        case_id,
        event_id,
        event_type,
        subject,
        key_id,
    ])
}

impl DataKey {
    /// A new random data key.
    pub fn generate() -> DataKey {
        DataKey(random())
    }

    /// Seals `plain` under `aad`: (nonce, ciphertext ‖ tag), deterministic
    /// for the same key, aad and plaintext.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let nonce_key = hmac256(&self.0, &[b"casework nonce v1"]);
        let h = hmac256(&nonce_key, &[aad, plain]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&h[..NONCE_LEN]);
        (nonce.to_vec(), seal_with(&self.0, nonce, aad, plain))
    }

    /// Opens what [`DataKey::seal`] sealed under the same aad; `None` when
    /// it does not open (another key, another aad, altered bytes).
    pub fn open(&self, aad: &[u8], nonce: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.0, nonce, aad, sealed).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_is_deterministic_per_input_and_bound_to_its_aad() {
        let k = DataKey::generate();
        let (n1, c1) = k.seal(b"aad-1", b"Erika Mustermann");
        let (n2, c2) = k.seal(b"aad-1", b"Erika Mustermann");
        assert_eq!(
            (n1.clone(), c1.clone()),
            (n2, c2),
            "a retry encrypts to the same bytes"
        );
        let (n3, _) = k.seal(b"aad-1", b"Max Mustermann");
        assert_ne!(n1, n3, "another plaintext, another nonce");
        assert_eq!(k.open(b"aad-1", &n1, &c1).unwrap(), b"Erika Mustermann");
        assert!(
            k.open(b"aad-2", &n1, &c1).is_none(),
            "moved to another event"
        );
        let mut bent = c1.clone();
        bent[0] ^= 1;
        assert!(k.open(b"aad-1", &n1, &bent).is_none(), "altered");
        assert!(
            DataKey::generate().open(b"aad-1", &n1, &c1).is_none(),
            "another key"
        );
        assert!(!c1.windows(5).any(|w| w == b"Erika"));
    }

    #[test]
    fn wrapped_keys_open_only_for_their_customer_and_kek() {
        let (kek, text) = Kek::generate();
        let again = Kek::from_hex(&format!("  {text}\n"), "test").unwrap();
        assert_eq!(kek.id(), again.id());
        let k = DataKey::generate();
        let w = kek.wrap(&k, "acme", "S1", "K1");
        let back = again.unwrap(&w, "acme", "S1", "K1").unwrap();
        let (n, c) = k.seal(b"x", b"y");
        assert_eq!(back.open(b"x", &n, &c).unwrap(), b"y");
        assert!(kek.unwrap(&w, "acme", "S2", "K1").is_err());
        assert!(kek.unwrap(&w, "other", "S1", "K1").is_err());
        let (other, _) = Kek::generate();
        assert_ne!(other.id(), kek.id());
        let e = other
            .unwrap(&w, "acme", "S1", "K1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("K1") && e.contains(other.id()), "{e}");
    }

    #[test]
    fn lookups_are_stable_tokens_per_tenant_and_customer() {
        let (kek, text) = Kek::generate();
        let again = Kek::from_hex(&text, "t").unwrap();
        let a = kek.lookup("acme", "erika@example.com");
        assert_eq!(a, again.lookup("acme", "erika@example.com"));
        assert_eq!(a.len(), 26);
        assert_ne!(a, kek.lookup("globex", "erika@example.com"));
        assert_ne!(a, kek.lookup("acme", "erika@example.co"));
        assert_ne!(a, Kek::generate().0.lookup("acme", "erika@example.com"));
    }

    #[test]
    fn bad_kek_text_is_refused_with_what_to_do() {
        let e = Kek::from_hex("zz", "/etc/kek").unwrap_err().to_string();
        assert!(e.contains("/etc/kek") && e.contains("64 hex digits"), "{e}");
        let e = Kek::from_hex("abcd", "/etc/kek").unwrap_err().to_string();
        assert!(e.contains("2 bytes"), "{e}");
        let dbg = format!("{:?}", Kek::generate().0);
        assert!(dbg.starts_with("Kek { id:"), "{dbg}");
    }
}
