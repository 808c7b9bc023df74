//! Which fields of which event types are personal data (crypto-shredding's
//! pure half): taking them out of a payload before it is encrypted, putting
//! them back after it is decrypted, clearing them once they are erased. The
//! encryption itself lives in `casework-privacy`; nothing here knows a key.
//!
//! The personal fields of an event are carried, encrypted, in the payload's
//! `personal` field (`Protected`); as stored, the plaintext fields are
//! empty. What is personal:
//! - `case_opened`: `customer_id`, `summary`, `attributes`, and `opened_by`
//!   when it is the customer;
//! - `interaction_recorded`: `summary`, and `actor` when it is the customer;
//! - `feedback_received`: `comment`;
//! - `case_withdrawn`: `reason`, and `actor` when it is the customer.
//!
//! Catalogue-rendered customer messages, step outputs and people who work
//! for the tenant (agents, supervisors) are not: they are the tenant's own
//! words and staff, not the data subject's.

use crate::pb::{self, envelope::Payload};

fn is_customer(actor: &Option<pb::Actor>) -> bool {
    actor
        .as_ref()
        .is_some_and(|a| a.kind == pb::ActorKind::Customer as i32)
}

fn take_actor(actor: &mut Option<pb::Actor>) -> Option<pb::Actor> {
    if is_customer(actor) {
        actor.take()
    } else {
        None
    }
}

/// True for the event types that can carry personal fields.
pub fn carries_personal(payload: &Payload) -> bool {
    matches!(
        payload,
        Payload::CaseOpened(_)
            | Payload::InteractionRecorded(_)
            | Payload::FeedbackReceived(_)
            | Payload::CaseWithdrawn(_)
    )
}

/// True when `payload` holds personal data in plaintext (a personal field
/// that is not empty).
pub fn has_personal(payload: &Payload) -> bool {
    let mut p = payload.clone();
    match take(&mut p) {
        Some(Payload::CaseOpened(o)) => {
            !o.customer_id.is_empty()
                || !o.summary.is_empty()
                || !o.attributes.is_empty()
                || o.opened_by.is_some()
        }
        Some(Payload::InteractionRecorded(i)) => !i.summary.is_empty() || i.actor.is_some(),
        Some(Payload::FeedbackReceived(f)) => !f.comment.is_empty(),
        Some(Payload::CaseWithdrawn(w)) => !w.reason.is_empty() || w.actor.is_some(),
        _ => false,
    }
}

/// Moves the personal fields out of `payload` into a payload of the same
/// type holding only them. `None` when the type carries no personal fields.
pub fn take(payload: &mut Payload) -> Option<Payload> {
    Some(match payload {
        Payload::CaseOpened(o) => Payload::CaseOpened(pb::CaseOpened {
            customer_id: std::mem::take(&mut o.customer_id),
            summary: std::mem::take(&mut o.summary),
            attributes: std::mem::take(&mut o.attributes),
            opened_by: take_actor(&mut o.opened_by),
            ..Default::default()
        }),
        Payload::InteractionRecorded(i) => Payload::InteractionRecorded(pb::InteractionRecorded {
            summary: std::mem::take(&mut i.summary),
            actor: take_actor(&mut i.actor),
            ..Default::default()
        }),
        Payload::FeedbackReceived(f) => Payload::FeedbackReceived(pb::FeedbackReceived {
            comment: std::mem::take(&mut f.comment),
            ..Default::default()
        }),
        Payload::CaseWithdrawn(w) => Payload::CaseWithdrawn(pb::CaseWithdrawn {
            reason: std::mem::take(&mut w.reason),
            actor: take_actor(&mut w.actor),
            ..Default::default()
        }),
        _ => return None,
    })
}

/// Puts personal fields taken by [`take`] (and decrypted) back into
/// `payload`. A `personal` of another type changes nothing and is `false`.
pub fn restore(payload: &mut Payload, personal: Payload) -> bool {
    match (payload, personal) {
        (Payload::CaseOpened(o), Payload::CaseOpened(p)) => {
            o.customer_id = p.customer_id;
            o.summary = p.summary;
            o.attributes = p.attributes;
            if p.opened_by.is_some() {
                o.opened_by = p.opened_by;
            }
        }
        (Payload::InteractionRecorded(i), Payload::InteractionRecorded(p)) => {
            i.summary = p.summary;
            if p.actor.is_some() {
                i.actor = p.actor;
            }
        }
        (Payload::FeedbackReceived(f), Payload::FeedbackReceived(p)) => f.comment = p.comment,
        (Payload::CaseWithdrawn(w), Payload::CaseWithdrawn(p)) => {
            w.reason = p.reason;
            if p.actor.is_some() {
                w.actor = p.actor;
            }
        }
        _ => return false,
    }
    true
}

/// The payload's encrypted personal fields, when it has them.
pub fn protected(payload: &Payload) -> Option<&pb::Protected> {
    match payload {
        Payload::CaseOpened(o) => o.personal.as_ref(),
        Payload::InteractionRecorded(i) => i.personal.as_ref(),
        Payload::FeedbackReceived(f) => f.personal.as_ref(),
        Payload::CaseWithdrawn(w) => w.personal.as_ref(),
        _ => None,
    }
}

/// The payload's slot for encrypted personal fields (`None` for a type
/// that carries none).
pub fn protected_slot(payload: &mut Payload) -> Option<&mut Option<pb::Protected>> {
    match payload {
        Payload::CaseOpened(o) => Some(&mut o.personal),
        Payload::InteractionRecorded(i) => Some(&mut i.personal),
        Payload::FeedbackReceived(f) => Some(&mut f.personal),
        Payload::CaseWithdrawn(w) => Some(&mut w.personal),
        _ => None,
    }
}

/// Marks the payload's personal fields erased: the ciphertext is dropped
/// (it can never be read again) and the plaintext fields stay empty.
pub fn mark_erased(payload: &mut Payload) {
    let _ = take(payload);
    if let Some(Some(p)) = protected_slot(payload) {
        p.nonce.clear();
        p.ciphertext.clear();
        p.erased = true;
    }
}

/// Clears the personal fields of an opening (after an erasure).
pub fn clear(o: &mut pb::CaseOpened) {
    let mut p = Payload::CaseOpened(std::mem::take(o));
    mark_erased(&mut p);
    if let Payload::CaseOpened(cleared) = p {
        *o = cleared;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer() -> pb::Actor {
        pb::Actor {
            kind: pb::ActorKind::Customer as i32,
            id: "c-1".into(),
            display_name: "Erika Mustermann".into(),
            authenticated_by: String::new(),
        }
    }

    fn agent() -> pb::Actor {
        pb::Actor {
            kind: pb::ActorKind::Person as i32,
            id: "agent-7".into(),
            display_name: "Agent Seven".into(),
            authenticated_by: String::new(),
        }
    }

    #[test]
    fn take_then_restore_is_the_identity_and_leaves_no_personal_field_behind() {
        let original = Payload::CaseOpened(pb::CaseOpened {
            customer_id: "erika@example.com".into(),
            summary: "Erika Mustermann wants her money back".into(),
            attributes: [("order".to_owned(), "A-1".to_owned())].into(),
            service_code: "refund".into(),
            opened_by: Some(customer()),
            locale: "de".into(),
            ..Default::default()
        });
        let mut stored = original.clone();
        let personal = take(&mut stored).expect("case_opened carries personal fields");
        let Payload::CaseOpened(o) = &stored else {
            unreachable!()
        };
        assert!(o.customer_id.is_empty() && o.summary.is_empty() && o.attributes.is_empty());
        assert_eq!(o.opened_by, None, "the customer as actor is personal");
        assert_eq!(o.service_code, "refund", "not personal, stays");
        assert_eq!(o.locale, "de");
        assert!(restore(&mut stored, personal));
        assert_eq!(stored, original);
    }

    #[test]
    fn staff_actors_are_not_personal_data() {
        let mut p = Payload::InteractionRecorded(pb::InteractionRecorded {
            summary: "called back".into(),
            actor: Some(agent()),
            ..Default::default()
        });
        let personal = take(&mut p).unwrap();
        let Payload::InteractionRecorded(i) = &p else {
            unreachable!()
        };
        assert_eq!(i.actor, Some(agent()));
        assert!(i.summary.is_empty());
        let Payload::InteractionRecorded(pi) = personal else {
            unreachable!()
        };
        assert_eq!(pi.actor, None);
    }

    #[test]
    fn a_payload_has_personal_data_only_when_a_personal_field_is_set() {
        let bare = Payload::FeedbackReceived(pb::FeedbackReceived {
            score: 2,
            ..Default::default()
        });
        assert!(!has_personal(&bare));
        let said = Payload::FeedbackReceived(pb::FeedbackReceived {
            score: 2,
            comment: "late".into(),
            ..Default::default()
        });
        assert!(has_personal(&said));
        let by_agent = Payload::CaseWithdrawn(pb::CaseWithdrawn {
            actor: Some(agent()),
            ..Default::default()
        });
        assert!(
            !has_personal(&by_agent),
            "staff are not the customer's data"
        );
        assert!(!has_personal(&Payload::PromiseKept(
            pb::PromiseKept::default()
        )));
    }

    #[test]
    fn events_without_personal_fields_are_left_alone() {
        let mut p = Payload::PromiseKept(pb::PromiseKept::default());
        assert!(take(&mut p).is_none());
        assert!(protected_slot(&mut p).is_none());
        assert!(!carries_personal(&p));
        let mut f = Payload::FeedbackReceived(pb::FeedbackReceived {
            comment: "rude".into(),
            ..Default::default()
        });
        assert!(!restore(
            &mut f,
            Payload::PromiseKept(pb::PromiseKept::default())
        ));
    }

    #[test]
    fn erasure_drops_the_ciphertext_and_marks_it() {
        let mut p = Payload::FeedbackReceived(pb::FeedbackReceived {
            score: 1,
            comment: "Erika was kept waiting".into(),
            personal: Some(pb::Protected {
                subject: "S".into(),
                key_id: "K".into(),
                algorithm: "AES-256-GCM".into(),
                nonce: vec![1; 12],
                ciphertext: vec![2; 40],
                erased: false,
            }),
            ..Default::default()
        });
        mark_erased(&mut p);
        let Payload::FeedbackReceived(f) = &p else {
            unreachable!()
        };
        assert!(f.comment.is_empty());
        assert_eq!(f.score, 1);
        let pr = f.personal.as_ref().unwrap();
        assert!(pr.erased && pr.ciphertext.is_empty() && pr.nonce.is_empty());
        assert_eq!(pr.subject, "S", "who it was about (a pseudonym) stays");
    }
}
