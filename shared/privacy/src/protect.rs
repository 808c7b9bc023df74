//! Encrypting one event's personal fields into its payload's `personal`
//! field, and decrypting them back, given the data key: pure functions (the
//! keys come from the [`crate::Vault`]).

use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{EventType, personal};
use prost::Message;

use crate::Error;
use crate::crypto::{ALGORITHM, DataKey, event_aad};

/// Which customer's key protects an event: their pseudonym and the key id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyRef {
    /// The customer's pseudonym (`Protected.subject`).
    pub subject: String,
    /// The data key's id.
    pub key_id: String,
}

impl KeyRef {
    /// The key named by a protected field.
    pub fn of(p: &pb::Protected) -> KeyRef {
        KeyRef {
            subject: p.subject.clone(),
            key_id: p.key_id.clone(),
        }
    }
}

/// Where an event sits: what its personal fields' associated data binds.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Case id.
    pub case_id: &'a str,
    /// Event id.
    pub event_id: &'a str,
}

fn encode(p: &Payload) -> Vec<u8> {
    match p {
        Payload::CaseOpened(m) => m.encode_to_vec(),
        Payload::InteractionRecorded(m) => m.encode_to_vec(),
        Payload::FeedbackReceived(m) => m.encode_to_vec(),
        Payload::CaseWithdrawn(m) => m.encode_to_vec(),
        _ => Vec::new(),
    }
}

fn decode(like: &Payload, bytes: &[u8]) -> Result<Payload, String> {
    let bad = |e: prost::DecodeError| e.to_string();
    Ok(match like {
        Payload::CaseOpened(_) => Payload::CaseOpened(pb::CaseOpened::decode(bytes).map_err(bad)?),
        Payload::InteractionRecorded(_) => {
            Payload::InteractionRecorded(pb::InteractionRecorded::decode(bytes).map_err(bad)?)
        }
        Payload::FeedbackReceived(_) => {
            Payload::FeedbackReceived(pb::FeedbackReceived::decode(bytes).map_err(bad)?)
        }
        Payload::CaseWithdrawn(_) => {
            Payload::CaseWithdrawn(pb::CaseWithdrawn::decode(bytes).map_err(bad)?)
        }
        _ => return Err("no personal fields in this type".to_owned()),
    })
}

fn aad(at: Place<'_>, payload: &Payload, key: &KeyRef) -> Vec<u8> {
    event_aad(
        at.tenant,
        at.case_id,
        at.event_id,
        EventType::of(payload).as_str(),
        &key.subject,
        &key.key_id,
    )
}

/// Moves `payload`'s personal fields into its `personal` field, encrypted
/// with `key`. A type without personal fields, or a payload already
/// protected, is left alone (`false`).
pub fn protect(payload: &mut Payload, at: Place<'_>, kref: &KeyRef, key: &DataKey) -> bool {
    if personal::protected(payload).is_some() {
        return false;
    }
    let Some(fields) = personal::take(payload) else {
        return false;
    };
    let (nonce, ciphertext) = key.seal(&aad(at, payload, kref), &encode(&fields));
    if let Some(slot) = personal::protected_slot(payload) {
        *slot = Some(pb::Protected {
            subject: kref.subject.clone(),
            key_id: kref.key_id.clone(),
            algorithm: ALGORITHM.to_owned(),
            nonce,
            ciphertext,
            erased: false,
        });
    }
    true
}

/// Decrypts `payload`'s personal fields back into place with `key` (the
/// key its `personal` names) and drops the ciphertext. A payload with no
/// `personal` is left alone.
pub fn reveal(payload: &mut Payload, at: Place<'_>, key: &DataKey) -> Result<(), Error> {
    let Some(p) = personal::protected(payload).cloned() else {
        return Ok(());
    };
    if p.erased {
        return Ok(());
    }
    if p.algorithm != ALGORITHM {
        return Err(Error::Damaged(format!(
            "event {} of {}/{}: personal fields use {:?}, this version reads {ALGORITHM}",
            at.event_id, at.tenant, at.case_id, p.algorithm
        )));
    }
    let kref = KeyRef::of(&p);
    let plain = key
        .open(&aad(at, payload, &kref), &p.nonce, &p.ciphertext)
        .ok_or_else(|| {
            Error::Damaged(format!(
                "event {} of {}/{}: its personal fields do not decrypt with key {} (altered, or moved from another event)",
                at.event_id, at.tenant, at.case_id, kref.key_id
            ))
        })?;
    let fields = decode(payload, &plain).map_err(|e| {
        Error::Damaged(format!(
            "event {} of {}/{}: decrypted personal fields do not decode: {e}",
            at.event_id, at.tenant, at.case_id
        ))
    })?;
    personal::restore(payload, fields);
    if let Some(slot) = personal::protected_slot(payload) {
        *slot = None;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Place<'static> {
        Place {
            tenant: "acme",
            case_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2B",
            event_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2C",
        }
    }

    fn kref() -> KeyRef {
        KeyRef {
            subject: "01JD8X3V5R6M2Q4T7W9Y0Z1A2D".into(),
            key_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2E".into(),
        }
    }

    fn opened() -> Payload {
        Payload::CaseOpened(pb::CaseOpened {
            customer_id: "erika@example.com".into(),
            summary: "Erika Mustermann: refund order 42".into(),
            service_code: "refund".into(),
            ..Default::default()
        })
    }

    #[test]
    fn protect_then_reveal_round_trips_and_the_stored_form_holds_no_plaintext() {
        let key = DataKey::generate();
        let mut p = opened();
        assert!(protect(&mut p, at(), &kref(), &key));
        assert!(
            !protect(&mut p, at(), &kref(), &key),
            "protecting twice is a no-op"
        );
        let stored = match &p {
            Payload::CaseOpened(o) => o.encode_to_vec(),
            _ => unreachable!(),
        };
        assert!(!stored.windows(6).any(|w| w == b"Muster"));
        assert!(!stored.windows(5).any(|w| w == b"erika"));
        let mut again = opened();
        protect(&mut again, at(), &kref(), &key);
        assert_eq!(p, again, "deterministic: a retry is byte-identical");
        reveal(&mut p, at(), &key).unwrap();
        assert_eq!(p, opened());
    }

    #[test]
    fn a_ciphertext_moved_to_another_event_or_altered_does_not_reveal() {
        let key = DataKey::generate();
        let mut p = opened();
        protect(&mut p, at(), &kref(), &key);
        let other = Place {
            event_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2F",
            ..at()
        };
        let e = reveal(&mut p.clone(), other, &key).unwrap_err().to_string();
        assert!(e.contains("01JD8X3V5R6M2Q4T7W9Y0Z1A2F"), "{e}");
        if let Some(Some(pr)) = personal::protected_slot(&mut p) {
            pr.ciphertext[3] ^= 0x40;
        }
        assert!(reveal(&mut p, at(), &key).is_err());
        let mut fresh = opened();
        protect(&mut fresh, at(), &kref(), &key);
        assert!(reveal(&mut fresh, at(), &DataKey::generate()).is_err());
    }
}
