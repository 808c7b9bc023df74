//! Checkpoints in the C2SP tlog-checkpoint format, signed as C2SP signed
//! notes with Ed25519, with the key encodings of Go's
//! `golang.org/x/mod/sumdb/note`.
//!
//! # Checkpoint body (C2SP tlog-checkpoint)
//!
//! ```text
//! <origin>\n
//! <tree size, decimal>\n
//! <root hash, standard padded base64>\n
//! <extension line>\n        (zero or more)
//! ```
//!
//! The origin identifies the log and should be a schema-less URL such as
//! `casework.example/ledger/prod`; by convention (and, in
//! [`open_checkpoint`], by requirement) it equals the name of the log's key.
//! The size has no leading zeros (except `0` itself) and fits a `u64`; the
//! root is exactly 32 bytes. Every line, the last included, ends in `\n`,
//! and no line is empty.
//!
//! # Signed note (C2SP signed-note)
//!
//! ```text
//! <text, one or more lines each ending in \n>
//! \n
//! — <key name> <base64(key id || signature)>\n     (one or more)
//! ```
//!
//! The text is valid UTF-8 without ASCII control characters other than
//! `\n`, and ends with `\n`. The signature block starts after the last blank
//! line (the last `\n\n` of the note). Each signature line starts with
//! U+2014 EM DASH and a space, then the key name, a space, and the standard
//! base64 of the 4-byte key id followed by the signature. For Ed25519 the
//! signature is 64 bytes over the text bytes exactly, final newline
//! included. A verifier uses the line whose name and key id match its key
//! and ignores all others (for example witness cosignatures).
//!
//! # Keys
//!
//! - Key name: non-empty, no whitespace, no `+`, no control characters.
//! - Key id: the first 4 bytes of
//!   `SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key)`,
//!   where `0x01` is the Ed25519 algorithm byte.
//! - Verifier key: `<name>+<key id as 8 lowercase hex digits>+<base64(0x01 || public key)>`.
//! - Signer key: `PRIVATE+KEY+<name>+<key id as 8 hex digits>+<base64(0x01 || 32-byte seed)>`.
//!
//! All base64 is standard (RFC 4648 §4) with padding.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// The algorithm byte of Ed25519 keys in key ids and key encodings.
pub const ALG_ED25519: u8 = 0x01;

/// What every signature line starts with: U+2014 EM DASH and a space.
pub const SIGNATURE_LINE_PREFIX: &str = "\u{2014} ";

/// What every signer key encoding starts with.
pub const SIGNER_KEY_PREFIX: &str = "PRIVATE+KEY+";

/// Why a key, note or checkpoint was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key name is empty, or has whitespace, `+` or a control character.
    #[error(
        "invalid key name {0:?}: it must be non-empty, without whitespace, '+' or control characters"
    )]
    InvalidKeyName(String),
    /// A verifier key encoding is malformed.
    #[error("malformed verifier key: {0}")]
    MalformedVerifierKey(String),
    /// A signer key encoding is malformed (the message never repeats the key).
    #[error("malformed signer key: {0}")]
    MalformedSignerKey(String),
    /// A key is for an algorithm other than Ed25519.
    #[error("unsupported key algorithm {0:#04x}: only Ed25519 (0x01) is supported")]
    UnsupportedAlgorithm(u8),
    /// A key encoding states a key id that does not match its name and key.
    #[error("key {name}: the encoding states key id {stated} but the name and key give {computed}")]
    KeyIdMismatch {
        /// The key name.
        name: String,
        /// The key id written in the encoding, as hex.
        stated: String,
        /// The key id computed from name and key, as hex.
        computed: String,
    },
    /// Text to sign is not valid signed-note text.
    #[error("text cannot be signed: {0}")]
    InvalidText(String),
    /// A note does not have the signed-note format.
    #[error("malformed note: {0}")]
    MalformedNote(String),
    /// The note has no signature line with this verifier's name and key id.
    #[error("the note has no signature by key {name}+{key_id}")]
    NoSignatureByKey {
        /// The verifier's key name.
        name: String,
        /// The verifier's key id, as hex.
        key_id: String,
    },
    /// The note's signature line for this key does not verify.
    #[error("the signature by key {name}+{key_id} does not verify over the note's text")]
    BadSignature {
        /// The verifier's key name.
        name: String,
        /// The verifier's key id, as hex.
        key_id: String,
    },
    /// A checkpoint body is malformed.
    #[error("malformed checkpoint, line {line}: {reason}")]
    MalformedCheckpoint {
        /// 1-based line number of the problem.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A signed checkpoint's origin is not the verifier's key name.
    #[error("checkpoint origin {origin:?} is not the key name {key_name:?}")]
    OriginMismatch {
        /// The checkpoint's origin line.
        origin: String,
        /// The verifier's key name.
        key_name: String,
    },
}

/// Whether `name` is a valid key name.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(NoteError::InvalidKeyName(name.to_string()))
    }
}

/// The key id of an Ed25519 key: the first 4 bytes of
/// `SHA-256(name || 0x0A || 0x01 || public key)`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(public_key);
    let digest = h.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The first character of `s` that is an ASCII control character other than
/// `\n`, with its byte offset.
fn forbidden_control(s: &str) -> Option<(usize, char)> {
    s.char_indices()
        .find(|&(_, c)| c.is_ascii_control() && c != '\n')
}

/// Checks that `text` can be the text of a signed note.
fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() {
        return Err(NoteError::InvalidText("it is empty".into()));
    }
    if !text.ends_with('\n') {
        return Err(NoteError::InvalidText(
            "it does not end with a newline".into(),
        ));
    }
    if let Some((at, c)) = forbidden_control(text) {
        return Err(NoteError::InvalidText(format!(
            "it has the control character {c:?} at byte {at}"
        )));
    }
    Ok(())
}

/// Parses the 8-hex-digit key id and the base64 `0x01 || 32 bytes` of a key
/// encoding; `malformed` wraps the reason in the caller's error variant.
fn parse_key_parts(
    id_hex: &str,
    key_b64: &str,
    malformed: fn(String) -> NoteError,
) -> Result<([u8; 4], [u8; 32]), NoteError> {
    if id_hex.len() != 8 {
        return Err(malformed(format!(
            "the key id must be 8 hex digits, found {} characters",
            id_hex.len()
        )));
    }
    let id: [u8; 4] = hex::decode(id_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed(format!("the key id {id_hex:?} is not hexadecimal")))?;
    let key = BASE64
        .decode(key_b64)
        .map_err(|e| malformed(format!("the key is not valid base64 ({e})")))?;
    match key.split_first() {
        None => Err(malformed("the key is empty".into())),
        Some((&alg, _)) if alg != ALG_ED25519 => Err(NoteError::UnsupportedAlgorithm(alg)),
        Some((_, rest)) => {
            let bytes: [u8; 32] = rest.try_into().map_err(|_| {
                malformed(format!(
                    "an Ed25519 key has 32 bytes after the algorithm byte, found {}",
                    rest.len()
                ))
            })?;
            Ok((id, bytes))
        }
    }
}

fn key_id_mismatch(name: &str, stated: [u8; 4], computed: [u8; 4]) -> NoteError {
    NoteError::KeyIdMismatch {
        name: name.to_string(),
        stated: hex::encode(stated),
        computed: hex::encode(computed),
    }
}

/// One parsed signature line.
struct SignatureLine<'a> {
    name: &'a str,
    key_id: [u8; 4],
    signature: Vec<u8>,
}

/// Splits a signed note into its text (final newline included) and its
/// signature lines, checking the format but no signature.
fn split_note(note: &str) -> Result<(&str, Vec<SignatureLine<'_>>), NoteError> {
    let malformed = |reason: String| Err(NoteError::MalformedNote(reason));
    if let Some((at, c)) = forbidden_control(note) {
        return malformed(format!("control character {c:?} at byte {at}"));
    }
    let Some(split) = note.rfind("\n\n") else {
        return malformed("no blank line separates the text from the signatures".into());
    };
    let (text, signatures) = (&note[..=split], &note[split + 2..]);
    if signatures.is_empty() {
        return malformed("no signature lines after the blank line".into());
    }
    let Some(signatures) = signatures.strip_suffix('\n') else {
        return malformed("the last signature line does not end with a newline".into());
    };
    let mut lines = Vec::new();
    for (i, line) in signatures.split('\n').enumerate() {
        let n = i + 1;
        let Some(rest) = line.strip_prefix(SIGNATURE_LINE_PREFIX) else {
            return malformed(format!(
                "signature line {n} does not start with an em dash (U+2014) and a space"
            ));
        };
        let Some((name, b64)) = rest.split_once(' ') else {
            return malformed(format!(
                "signature line {n} has no space between key name and signature"
            ));
        };
        if !is_valid_name(name) {
            return malformed(format!(
                "signature line {n} has the invalid key name {name:?}"
            ));
        }
        let blob = match BASE64.decode(b64) {
            Ok(blob) => blob,
            Err(e) => return malformed(format!("signature line {n} is not valid base64 ({e})")),
        };
        if blob.len() < 5 {
            return malformed(format!(
                "signature line {n} has {} bytes; it needs a 4-byte key id and a signature",
                blob.len()
            ));
        }
        lines.push(SignatureLine {
            name,
            key_id: [blob[0], blob[1], blob[2], blob[3]],
            signature: blob[4..].to_vec(),
        });
    }
    Ok((text, lines))
}

/// An Ed25519 note signer: a key name and a private key.
///
/// Its `Debug` output shows only the name and key id, never the key.
pub struct NoteSigner {
    name: String,
    key_id: [u8; 4],
    key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &hex::encode(self.key_id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer for key `name` with the Ed25519 private key `seed` (the
    /// caller supplies the randomness).
    pub fn new(name: &str, seed: [u8; 32]) -> Result<Self, NoteError> {
        check_name(name)?;
        let key = SigningKey::from_bytes(&seed);
        Ok(Self {
            name: name.to_string(),
            key_id: key_id(name, key.verifying_key().as_bytes()),
            key,
        })
    }

    /// Parses a signer key
    /// `PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 || seed)>`.
    pub fn from_skey(skey: &str) -> Result<Self, NoteError> {
        let malformed = NoteError::MalformedSignerKey;
        let rest = skey
            .strip_prefix(SIGNER_KEY_PREFIX)
            .ok_or_else(|| malformed(format!("it does not start with {SIGNER_KEY_PREFIX:?}")))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(
                "expected PRIVATE+KEY+<name>+<key id>+<key>".into(),
            ));
        };
        check_name(name)?;
        let (stated, seed) = parse_key_parts(id_hex, key_b64, malformed)?;
        let signer = Self::new(name, seed)?;
        if signer.key_id != stated {
            return Err(key_id_mismatch(name, stated, signer.key_id));
        }
        Ok(signer)
    }

    /// The signer key encoding
    /// `PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 || seed)>`. It holds
    /// the private key: keep it secret.
    pub fn skey(&self) -> String {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(&self.key.to_bytes());
        format!(
            "{SIGNER_KEY_PREFIX}{}+{}+{}",
            self.name,
            hex::encode(self.key_id),
            BASE64.encode(&key)
        )
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The verifier for this signer's public key.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// Signs `text` (non-empty, ending with `\n`, no control characters
    /// other than `\n`) and returns the whole note: the text, a blank line and
    /// this key's signature line.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        Ok(format!("{text}\n{}", self.signature_line(text)))
    }

    /// This key's signature line over `text`, newline included.
    fn signature_line(&self, text: &str) -> String {
        let signature: Signature = self.key.sign(text.as_bytes());
        let mut blob = self.key_id.to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        format!(
            "{SIGNATURE_LINE_PREFIX}{} {}\n",
            self.name,
            BASE64.encode(&blob)
        )
    }
}

/// Appends `signer`'s signature line (a cosignature) to an existing signed
/// note, signing the same text. It verifies none of the signatures already
/// there, and appends even if the note already has a line for this key.
pub fn add_signature(note: &str, signer: &NoteSigner) -> Result<String, NoteError> {
    let (text, _) = split_note(note)?;
    check_text(text).map_err(|e| NoteError::MalformedNote(e.to_string()))?;
    Ok(format!("{note}{}", signer.signature_line(text)))
}

/// An Ed25519 note verifier: a key name and a public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses a verifier key `<name>+<8 hex key id>+<base64(0x01 || public key)>`.
    pub fn from_vkey(vkey: &str) -> Result<Self, NoteError> {
        let malformed = NoteError::MalformedVerifierKey;
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected <name>+<key id>+<key>".into()));
        };
        check_name(name)?;
        let (stated, public) = parse_key_parts(id_hex, key_b64, malformed)?;
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| malformed("the public key is not a valid Ed25519 point".into()))?;
        let computed = key_id(name, &public);
        if computed != stated {
            return Err(key_id_mismatch(name, stated, computed));
        }
        Ok(Self {
            name: name.to_string(),
            key_id: computed,
            key,
        })
    }

    /// The verifier key encoding
    /// `<name>+<8 lowercase hex key id>+<base64(0x01 || public key)>`.
    pub fn vkey(&self) -> String {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id),
            BASE64.encode(&key)
        )
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// Verifies a signed note and returns its text (final newline included).
    ///
    /// The first signature line whose key name and key id are this key's
    /// must verify; lines by other keys are ignored.
    pub fn open(&self, note: &str) -> Result<String, NoteError> {
        let (text, lines) = split_note(note)?;
        let line = lines
            .iter()
            .find(|l| l.name == self.name && l.key_id == self.key_id)
            .ok_or_else(|| NoteError::NoSignatureByKey {
                name: self.name.clone(),
                key_id: hex::encode(self.key_id),
            })?;
        let bad = || NoteError::BadSignature {
            name: self.name.clone(),
            key_id: hex::encode(self.key_id),
        };
        let signature = Signature::from_slice(&line.signature).map_err(|_| bad())?;
        self.key
            .verify(text.as_bytes(), &signature)
            .map_err(|_| bad())?;
        Ok(text.to_string())
    }
}

/// A C2SP tlog-checkpoint: the signed statement of a log's size and root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, a schema-less URL; usually its key name.
    pub origin: String,
    /// The number of leaves in the tree.
    pub size: u64,
    /// The RFC 9162 root hash of the tree.
    pub root: Hash,
    /// Extension lines after the root (each non-empty, without newline).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The checkpoint body: origin, size, base64 root and extension lines,
    /// each followed by `\n`. Only a checkpoint that passes
    /// [`validate`](Self::validate) gives a body [`parse`](Self::parse)
    /// accepts.
    pub fn body(&self) -> String {
        let mut body = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root)
        );
        for extension in &self.extensions {
            body.push_str(extension);
            body.push('\n');
        }
        body
    }

    /// Checks that the origin and extension lines are non-empty and free of
    /// newlines and other control characters.
    pub fn validate(&self) -> Result<(), NoteError> {
        check_line(1, "origin", &self.origin)?;
        for (i, extension) in self.extensions.iter().enumerate() {
            check_line(i + 4, "extension line", extension)?;
        }
        Ok(())
    }

    /// Parses a checkpoint body strictly: exactly the format in the module
    /// documentation, nothing more, nothing less.
    pub fn parse(body: &str) -> Result<Checkpoint, NoteError> {
        let err = |line: usize, reason: String| NoteError::MalformedCheckpoint { line, reason };
        let Some(content) = body.strip_suffix('\n') else {
            let line = body.split('\n').count();
            return Err(err(line, "the body does not end with a newline".into()));
        };
        let lines: Vec<&str> = content.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            if let Some((_, c)) = forbidden_control(line) {
                return Err(err(i + 1, format!("control character {c:?}")));
            }
            if line.is_empty() {
                return Err(err(i + 1, "the line is empty".into()));
            }
        }
        if lines.len() < 3 {
            return Err(err(
                lines.len() + 1,
                format!(
                    "the body has {} lines; a checkpoint needs origin, size and root hash",
                    lines.len()
                ),
            ));
        }

        let size_text = lines[1];
        if !size_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(
                2,
                format!("tree size {size_text:?} is not a decimal number"),
            ));
        }
        if size_text.len() > 1 && size_text.starts_with('0') {
            return Err(err(
                2,
                format!("tree size {size_text:?} has a leading zero"),
            ));
        }
        let size = size_text
            .parse::<u64>()
            .map_err(|_| err(2, format!("tree size {size_text:?} does not fit 64 bits")))?;

        let root_bytes = BASE64
            .decode(lines[2])
            .map_err(|e| err(3, format!("root hash is not standard padded base64 ({e})")))?;
        let root: Hash = root_bytes.as_slice().try_into().map_err(|_| {
            err(
                3,
                format!(
                    "root hash has {} bytes, a SHA-256 hash has 32",
                    root_bytes.len()
                ),
            )
        })?;

        Ok(Checkpoint {
            origin: lines[0].to_string(),
            size,
            root,
            extensions: lines[3..].iter().map(|l| l.to_string()).collect(),
        })
    }
}

fn check_line(line: usize, what: &str, value: &str) -> Result<(), NoteError> {
    let reason = if value.is_empty() {
        format!("the {what} is empty")
    } else if value.contains('\n') {
        format!("the {what} contains a newline")
    } else if let Some((_, c)) = forbidden_control(value) {
        format!("the {what} contains the control character {c:?}")
    } else {
        return Ok(());
    };
    Err(NoteError::MalformedCheckpoint { line, reason })
}

/// Signs a checkpoint: validates it and returns the signed note of its body.
pub fn sign_checkpoint(signer: &NoteSigner, cp: &Checkpoint) -> Result<String, NoteError> {
    cp.validate()?;
    signer.sign(&cp.body())
}

/// Verifies a signed checkpoint with `verifier` and parses it. The
/// checkpoint's origin must equal the verifier's key name
/// ([`NoteError::OriginMismatch`] otherwise).
pub fn open_checkpoint(verifier: &NoteVerifier, note: &str) -> Result<Checkpoint, NoteError> {
    let text = verifier.open(note)?;
    let checkpoint = Checkpoint::parse(&text)?;
    if checkpoint.origin != verifier.name() {
        return Err(NoteError::OriginMismatch {
            origin: checkpoint.origin,
            key_name: verifier.name().to_string(),
        });
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example key and note of Go's golang.org/x/mod/sumdb/note tests.
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n";
    const GO_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    const ORIGIN: &str = "casework.example/ledger/prod";

    fn signer(name: &str, byte: u8) -> NoteSigner {
        NoteSigner::new(name, [byte; 32]).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: ORIGIN.into(),
            size: 42,
            root: core::array::from_fn(|i| i as u8),
            extensions: vec![],
        }
    }

    #[test]
    fn go_reference_vectors() {
        let s = NoteSigner::from_skey(GO_SKEY).unwrap();
        assert_eq!(s.skey(), GO_SKEY);
        assert_eq!(s.name(), "PeterNeumann");
        assert_eq!(s.verifier().vkey(), GO_VKEY);
        let note = format!("{GO_TEXT}\n{GO_SIG}");
        assert_eq!(s.sign(GO_TEXT).unwrap(), note);
        let v = NoteVerifier::from_vkey(GO_VKEY).unwrap();
        assert_eq!(v, s.verifier());
        assert_eq!(v.key_id(), [0xc7, 0x4f, 0x20, 0xa3]);
        assert_eq!(v.open(&note).unwrap(), GO_TEXT);
        assert!(matches!(
            v.open(&note.replace("cryptography", "cryptographY")),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn key_id_is_the_sha256_rule() {
        let s = signer("casework.example/ledger/prod", 9);
        let public = *s.verifier().key.as_bytes();
        let mut pre = b"casework.example/ledger/prod".to_vec();
        pre.push(0x0a);
        pre.push(0x01);
        pre.extend_from_slice(&public);
        let digest = Sha256::digest(&pre);
        assert_eq!(s.key_id(), digest[..4]);
        assert_eq!(s.verifier().key_id(), digest[..4]);

        let vkey = s.verifier().vkey();
        let mut key = vec![1u8];
        key.extend_from_slice(&public);
        assert_eq!(
            vkey,
            format!(
                "casework.example/ledger/prod+{}+{}",
                hex::encode(&digest[..4]),
                BASE64.encode(&key)
            )
        );
        let mut seed = vec![1u8];
        seed.extend_from_slice(&[9; 32]);
        assert_eq!(
            s.skey(),
            format!(
                "PRIVATE+KEY+casework.example/ledger/prod+{}+{}",
                hex::encode(&digest[..4]),
                BASE64.encode(&seed)
            )
        );
    }

    #[test]
    fn key_encodings_round_trip() {
        for (i, name) in ["a", "casework.example/ledger/prod", "ü-witness"]
            .iter()
            .enumerate()
        {
            let s = signer(name, i as u8 + 1);
            let again = NoteSigner::from_skey(&s.skey()).unwrap();
            assert_eq!(again.skey(), s.skey());
            assert_eq!(again.verifier(), s.verifier());
            let v = NoteVerifier::from_vkey(&s.verifier().vkey()).unwrap();
            assert_eq!(v, s.verifier());
            assert_eq!(v.vkey(), s.verifier().vkey());
            assert_eq!(v.name(), *name);
        }
    }

    #[test]
    fn invalid_key_names() {
        for name in ["", "a b", "a+b", "a\tb", "a\u{2003}b", "a\u{7}b"] {
            assert_eq!(
                NoteSigner::new(name, [1; 32]).unwrap_err(),
                NoteError::InvalidKeyName(name.into())
            );
        }
    }

    #[test]
    fn mangled_verifier_keys_are_rejected() {
        NoteVerifier::from_vkey(GO_VKEY).unwrap();
        let b = GO_VKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if i != 0 || j != b.len() {
                    let k = &GO_VKEY[i..j];
                    assert!(NoteVerifier::from_vkey(k).is_err(), "{k:?} accepted");
                }
            }
        }
        for i in 0..b.len() {
            let mut m = b.to_vec();
            m[i] += 1;
            let k = String::from_utf8(m).unwrap();
            assert!(NoteVerifier::from_vkey(&k).is_err(), "{k:?} accepted");
        }
        assert!(matches!(
            NoteVerifier::from_vkey(
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            ),
            Err(NoteError::KeyIdMismatch { .. })
        ));
        // Algorithm byte 0x02.
        let mut key = vec![2u8];
        key.extend_from_slice(&[0; 32]);
        assert_eq!(
            NoteVerifier::from_vkey(&format!("x+00000000+{}", BASE64.encode(&key))).unwrap_err(),
            NoteError::UnsupportedAlgorithm(2)
        );
    }

    #[test]
    fn mangled_signer_keys_are_rejected() {
        let b = GO_SKEY.as_bytes();
        for i in 0..=b.len() {
            for j in i + 1..=b.len() {
                if i != 0 || j != b.len() {
                    assert!(NoteSigner::from_skey(&GO_SKEY[i..j]).is_err());
                }
            }
        }
        for i in 0..b.len() {
            let mut m = b.to_vec();
            m[i] += 1;
            let k = String::from_utf8(m).unwrap();
            assert!(NoteSigner::from_skey(&k).is_err(), "{k:?} accepted");
        }
        // A verifier key is not a signer key.
        assert!(NoteSigner::from_skey(GO_VKEY).is_err());
        // Errors never repeat the key material.
        let bad = GO_SKEY.replace("c74f20a3", "c74f20a4");
        let msg = NoteSigner::from_skey(&bad).unwrap_err().to_string();
        assert!(!msg.contains("AYEKFALVFGyNhPJEMzD1QIDr"), "{msg}");
    }

    #[test]
    fn signer_debug_hides_the_key() {
        let s = NoteSigner::from_skey(GO_SKEY).unwrap();
        let debug = format!("{s:?}");
        assert!(debug.contains("PeterNeumann"));
        assert!(debug.contains("c74f20a3"));
        assert!(!debug.contains(&s.skey()));
        assert!(!debug.contains("AYEKFALVFGyNhPJEMzD1QIDr"));
        let seed = &BASE64
            .decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
            .unwrap()[1..];
        assert!(!debug.contains(&hex::encode(seed)));
        assert!(!debug.contains(&format!("{:?}", seed)));
        assert_eq!(
            debug,
            r#"NoteSigner { name: "PeterNeumann", key_id: "c74f20a3", .. }"#
        );
    }

    #[test]
    fn sign_and_open_round_trip() {
        let s = signer("example.com/log", 3);
        let text = "hello\nworld\n";
        let note = s.sign(text).unwrap();
        assert!(note.starts_with("hello\nworld\n\n\u{2014} example.com/log "));
        assert!(note.ends_with('\n'));
        assert_eq!(s.verifier().open(&note).unwrap(), text);
        // Blank lines inside the text are allowed; the last one separates.
        let text = "a\n\nb\n";
        assert_eq!(s.verifier().open(&s.sign(text).unwrap()).unwrap(), text);
    }

    #[test]
    fn sign_rejects_invalid_text() {
        let s = signer("k", 1);
        for text in ["", "no newline", "tab\there\n", "cr\r\n"] {
            assert!(
                matches!(s.sign(text), Err(NoteError::InvalidText(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn wrong_key_is_no_signature_by_this_key() {
        let (a, b) = (signer("log-a", 1), signer("log-b", 2));
        let note = a.sign("text\n").unwrap();
        assert_eq!(
            b.verifier().open(&note).unwrap_err(),
            NoteError::NoSignatureByKey {
                name: "log-b".into(),
                key_id: hex::encode(b.key_id()),
            }
        );
        // Same name, different key: the key id differs.
        let a2 = signer("log-a", 3);
        assert!(matches!(
            a2.verifier().open(&note),
            Err(NoteError::NoSignatureByKey { .. })
        ));
    }

    #[test]
    fn altered_text_or_signature_is_a_bad_signature() {
        let s = signer("log", 1);
        let note = s.sign("tree 5\nroot abc\n").unwrap();
        let v = s.verifier();
        let text_len = "tree 5\nroot abc\n".len();
        for i in 0..text_len {
            let mut bytes = note.clone().into_bytes();
            if bytes[i] == b'\n' {
                continue;
            }
            bytes[i] ^= 0x01;
            let altered = String::from_utf8(bytes).unwrap();
            assert_eq!(
                v.open(&altered).unwrap_err(),
                NoteError::BadSignature {
                    name: "log".into(),
                    key_id: hex::encode(s.key_id()),
                },
                "byte {i}"
            );
        }
        // A different signature from the same key id.
        let other = s.sign("other\n").unwrap();
        let sig_line = &other[other.rfind("\n\n").unwrap() + 2..];
        let forged = format!("tree 5\nroot abc\n\n{sig_line}");
        assert!(matches!(
            v.open(&forged),
            Err(NoteError::BadSignature { .. })
        ));
        // A truncated signature under the right key id.
        let mut blob = s.key_id().to_vec();
        blob.extend_from_slice(&[0; 10]);
        let short = format!("x\n\n\u{2014} log {}\n", BASE64.encode(&blob));
        assert!(matches!(
            v.open(&short),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn cosigned_note_opens_with_either_key() {
        let (log, witness, stranger) = (
            signer("log", 1),
            signer("witness.example/w1", 2),
            signer("x", 3),
        );
        let note = log.sign("body\n").unwrap();
        let cosigned = add_signature(&note, &witness).unwrap();
        assert!(cosigned.starts_with(&note));
        assert_eq!(cosigned.matches('\u{2014}').count(), 2);
        assert_eq!(log.verifier().open(&cosigned).unwrap(), "body\n");
        assert_eq!(witness.verifier().open(&cosigned).unwrap(), "body\n");
        assert!(matches!(
            stranger.verifier().open(&cosigned),
            Err(NoteError::NoSignatureByKey { .. })
        ));
        // The witness line alone is a valid note too.
        let witness_only = witness.sign("body\n").unwrap();
        assert!(cosigned.ends_with(&witness_only["body\n\n".len()..]));
        assert!(matches!(
            add_signature("not a note", &witness),
            Err(NoteError::MalformedNote(_))
        ));
    }

    #[test]
    fn malformed_notes() {
        let v = signer("log", 1).verifier();
        let good = signer("log", 1).sign("t\n").unwrap();
        let sig = &good[3..];
        let cases = [
            "".to_string(),
            "t\n".to_string(),
            "t\n\n".to_string(),
            good.trim_end_matches('\n').to_string(),
            format!("t\n\n- log {}", &sig["\u{2014} log ".len()..]),
            format!("t\n\n{}", sig.replace(' ', "")),
            "t\n\n\u{2014} log !!!!\n".to_string(),
            "t\n\n\u{2014} log AAAA\n".to_string(),
            format!("t\n\n\u{2014} a+b {}", &sig["\u{2014} log ".len()..]),
            format!("t\r\n\n{sig}"),
            format!("t\n\n{sig}junk\n"),
        ];
        for note in &cases {
            assert!(
                matches!(v.open(note), Err(NoteError::MalformedNote(_))),
                "{note:?}: {:?}",
                v.open(note)
            );
        }
        v.open(&good).unwrap();
    }

    #[test]
    fn checkpoint_body_and_parse() {
        let mut cp = checkpoint();
        let root_b64 = BASE64.encode(cp.root);
        assert_eq!(cp.body(), format!("{ORIGIN}\n42\n{root_b64}\n"));
        assert_eq!(Checkpoint::parse(&cp.body()).unwrap(), cp);
        cp.extensions = vec!["— witness ext".into(), "k=v".into()];
        cp.size = 0;
        assert_eq!(
            cp.body(),
            format!("{ORIGIN}\n0\n{root_b64}\n— witness ext\nk=v\n")
        );
        assert_eq!(Checkpoint::parse(&cp.body()).unwrap(), cp);
        cp.size = u64::MAX;
        assert_eq!(Checkpoint::parse(&cp.body()).unwrap(), cp);
    }

    #[test]
    fn parse_rejects_malformed_bodies() {
        let r = BASE64.encode([7u8; 32]);
        let line_of = |body: &str| match Checkpoint::parse(body) {
            Err(NoteError::MalformedCheckpoint { line, .. }) => line,
            other => panic!("{body:?} gave {other:?}"),
        };
        assert_eq!(line_of(""), 1);
        assert_eq!(line_of(&format!("o\n1\n{r}")), 3); // no final newline
        assert_eq!(line_of("o\n1\n"), 3); // no root
        assert_eq!(line_of(&format!("\n1\n{r}\n")), 1); // empty origin
        assert_eq!(line_of(&format!("o\n01\n{r}\n")), 2);
        assert_eq!(line_of(&format!("o\n00\n{r}\n")), 2);
        assert_eq!(line_of(&format!("o\n-1\n{r}\n")), 2);
        assert_eq!(line_of(&format!("o\n+1\n{r}\n")), 2);
        assert_eq!(line_of(&format!("o\n1a\n{r}\n")), 2);
        assert_eq!(line_of(&format!("o\n 1\n{r}\n")), 2);
        assert_eq!(line_of(&format!("o\n\n{r}\n")), 2);
        assert_eq!(line_of(&format!("o\n18446744073709551616\n{r}\n")), 2);
        assert_eq!(line_of("o\n1\n!!!!\n"), 3);
        assert_eq!(line_of(&format!("o\n1\n{}\n", r.trim_end_matches('='))), 3); // unpadded
        assert_eq!(line_of(&format!("o\n1\n{}\n", BASE64.encode([7u8; 31]))), 3);
        assert_eq!(line_of(&format!("o\n1\n{}\n", BASE64.encode([7u8; 33]))), 3);
        assert_eq!(
            line_of(&format!(
                "o\n1\n{}\n",
                BASE64.encode([7u8; 32]).replace('=', "A")
            )),
            3
        );
        assert_eq!(line_of(&format!("o\n1\n{r}\n\n")), 4); // empty extension
        assert_eq!(line_of(&format!("o\n1\n{r}\next\n\nmore\n")), 5);
        assert_eq!(line_of(&format!("o\r\n1\n{r}\n")), 1);
        assert!(Checkpoint::parse(&format!("o\n1\n{r}\n")).is_ok());
    }

    #[test]
    fn signed_checkpoint_round_trip() {
        let log = signer(ORIGIN, 5);
        let cp = checkpoint();
        let note = sign_checkpoint(&log, &cp).unwrap();
        assert!(note.starts_with(&cp.body()));
        assert_eq!(open_checkpoint(&log.verifier(), &note).unwrap(), cp);

        let witness = signer("witness.example", 6);
        let cosigned = add_signature(&note, &witness).unwrap();
        assert_eq!(open_checkpoint(&log.verifier(), &cosigned).unwrap(), cp);

        // A key whose name is not the origin.
        assert_eq!(
            open_checkpoint(&witness.verifier(), &cosigned).unwrap_err(),
            NoteError::OriginMismatch {
                origin: ORIGIN.into(),
                key_name: "witness.example".into(),
            }
        );
        // A signed text that is not a checkpoint.
        let junk = log.sign("just text\n").unwrap();
        assert!(matches!(
            open_checkpoint(&log.verifier(), &junk),
            Err(NoteError::MalformedCheckpoint { .. })
        ));
        // Invalid checkpoints are not signed.
        let mut bad = cp.clone();
        bad.origin = "two\nlines".into();
        assert!(matches!(
            sign_checkpoint(&log, &bad),
            Err(NoteError::MalformedCheckpoint { line: 1, .. })
        ));
        let mut bad = cp;
        bad.extensions = vec![String::new()];
        assert!(matches!(
            sign_checkpoint(&log, &bad),
            Err(NoteError::MalformedCheckpoint { line: 4, .. })
        ));
    }
}
