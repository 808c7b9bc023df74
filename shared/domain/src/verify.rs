//! Verifying a case's log from the raw stored messages alone: the per-case
//! sequence must run 1, 2, 3… in stream order, every event's `prev_hash` must
//! be the SHA-256 of the previous event's stored bytes, and every event must
//! belong to the case and come from its event type's writer. The verifier
//! reports the first broken link and why.
//!
//! What a chain alone cannot see: a change to the *last* event (nothing after
//! it recorded its hash) or the loss of events at the end. Pass an `anchor`
//! — the tip recorded independently, e.g. by the ledger or in an export
//! bundle — to cover those too.

use crate::chain::{ChainTip, decode, hash};
use crate::event::parse_subject;
use crate::pb::Envelope;
use crate::token::{CaseId, Tenant};

/// One message as stored in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The stream sequence (global across all cases).
    pub stream_seq: u64,
    /// The subject it was stored under.
    pub subject: String,
    /// The exact stored payload bytes.
    pub bytes: Vec<u8>,
}

/// Why a link is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkFault {
    /// The event's stored bytes changed after it was written (its hash no
    /// longer matches what the next event recorded, or it no longer decodes).
    Altered,
    /// One or more events are absent.
    Missing,
    /// Events are present but out of order (or one appears twice).
    Reordered,
    /// An event that does not belong here: another case or tenant, or a
    /// writer that does not own its event type.
    Foreign,
}

/// The first place a case's chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The per-case sequence at which the log stops being trustworthy: the
    /// altered event, the first missing one, the first out of place.
    pub case_seq: u64,
    /// Stream sequence of the message where the break was seen, if any.
    pub stream_seq: Option<u64>,
    /// What kind of break.
    pub fault: LinkFault,
    /// A sentence for people.
    pub detail: String,
}

/// The outcome of verifying one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Messages examined.
    pub examined: usize,
    /// The tip of the verified prefix of the chain.
    pub verified_tip: ChainTip,
    /// The first broken link, if the chain is not intact.
    pub first_break: Option<BrokenLink>,
}

impl Verification {
    /// True when the chain is intact (and matches the anchor, if one was
    /// given).
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }
}

enum Item {
    Good(Box<Envelope>),
    Bad(BrokenLink),
}

/// Verifies the messages of one case, in stream order. `anchor` is an
/// independently recorded tip (see the module docs); `None` checks the chain
/// alone.
pub fn verify(
    tenant: &Tenant,
    case: &CaseId,
    raw: &[RawEvent],
    anchor: Option<ChainTip>,
) -> Verification {
    let items: Vec<Item> = raw.iter().map(|r| classify(tenant, case, r)).collect();
    let mut tip = ChainTip::EMPTY;
    let brk = |case_seq, r: &RawEvent, fault, detail: String| BrokenLink {
        case_seq,
        stream_seq: Some(r.stream_seq),
        fault,
        detail,
    };
    for (i, (r, item)) in raw.iter().zip(&items).enumerate() {
        let expected = tip.case_seq + 1;
        let env = match item {
            Item::Bad(b) => {
                let mut b = b.clone();
                if b.case_seq == 0 {
                    b.case_seq = expected;
                }
                return done(i, tip, Some(b));
            }
            Item::Good(env) => env,
        };
        if env.sequence > expected {
            let later = items[i + 1..]
                .iter()
                .any(|it| matches!(it, Item::Good(e) if e.sequence == expected));
            let b = if later {
                brk(
                    expected,
                    r,
                    LinkFault::Reordered,
                    format!(
                        "event {expected} is stored after event {} (stream sequence {})",
                        env.sequence, r.stream_seq
                    ),
                )
            } else {
                let last = env.sequence - 1;
                let range = if last == expected {
                    format!("event {expected} is")
                } else {
                    format!("events {expected}..={last} are")
                };
                brk(
                    expected,
                    r,
                    LinkFault::Missing,
                    format!("{range} missing before event {}", env.sequence),
                )
            };
            return done(i, tip, Some(b));
        }
        if env.sequence < expected {
            let b = brk(
                env.sequence,
                r,
                LinkFault::Reordered,
                format!(
                    "event {} appears again at stream sequence {} after event {}",
                    env.sequence, r.stream_seq, tip.case_seq
                ),
            );
            return done(i, tip, Some(b));
        }
        if env.prev_hash.as_slice() != tip.hash {
            // Either the previous event's bytes changed, or this event's
            // record of them did. The next event tells which: if it no longer
            // matches this one either, this one is the altered event.
            let this_altered = tip.case_seq == 0
                || matches!(items.get(i + 1), Some(Item::Good(next))
                    if next.sequence == env.sequence + 1 && next.prev_hash.as_slice() != hash(&r.bytes));
            let (at, detail) = if this_altered {
                (
                    env.sequence,
                    format!(
                        "event {} does not match its neighbours: its prev_hash is not the hash of event {}, and event {} did not record its hash",
                        env.sequence,
                        tip.case_seq,
                        env.sequence + 1
                    ),
                )
            } else {
                (
                    tip.case_seq,
                    format!(
                        "event {}'s stored bytes no longer hash to the prev_hash recorded by event {}",
                        tip.case_seq, env.sequence
                    ),
                )
            };
            return done(i, tip, Some(brk(at, r, LinkFault::Altered, detail)));
        }
        tip = ChainTip {
            case_seq: env.sequence,
            hash: hash(&r.bytes),
        };
    }
    let b = anchor.and_then(|a| {
        if a.case_seq > tip.case_seq {
            Some(BrokenLink {
                case_seq: tip.case_seq + 1,
                stream_seq: None,
                fault: LinkFault::Missing,
                detail: format!(
                    "the log ends at event {} but the anchor records event {}",
                    tip.case_seq, a.case_seq
                ),
            })
        } else if a.case_seq == tip.case_seq && a.hash != tip.hash {
            Some(BrokenLink {
                case_seq: tip.case_seq,
                stream_seq: raw.last().map(|r| r.stream_seq),
                fault: LinkFault::Altered,
                detail: format!(
                    "event {}'s stored bytes do not hash to the anchor's recorded hash",
                    tip.case_seq
                ),
            })
        } else {
            None
        }
    });
    done(raw.len(), tip, b)
}

fn done(examined: usize, tip: ChainTip, first_break: Option<BrokenLink>) -> Verification {
    Verification {
        examined,
        verified_tip: tip,
        first_break,
    }
}

fn classify(tenant: &Tenant, case: &CaseId, r: &RawEvent) -> Item {
    let foreign = |detail: String| {
        Item::Bad(BrokenLink {
            case_seq: 0,
            stream_seq: Some(r.stream_seq),
            fault: LinkFault::Foreign,
            detail,
        })
    };
    let env = match decode(&r.bytes) {
        Ok(env) => env,
        Err(e) => {
            return Item::Bad(BrokenLink {
                case_seq: 0,
                stream_seq: Some(r.stream_seq),
                fault: LinkFault::Altered,
                detail: format!("stream sequence {}: {e}", r.stream_seq),
            });
        }
    };
    let parts = match parse_subject(&r.subject) {
        Ok(p) => p,
        Err(e) => return foreign(format!("subject {:?}: {e}", r.subject)),
    };
    if &parts.tenant != tenant || &parts.case_id != case {
        return foreign(format!("subject {:?} belongs to another case", r.subject));
    }
    if env.tenant != tenant.as_str() || env.case_id != case.as_str() {
        return foreign(format!(
            "event {} says it belongs to {}/{}",
            env.sequence, env.tenant, env.case_id
        ));
    }
    if let Some(why) = not_its_writers(&r.subject, &env) {
        return foreign(why);
    }
    Item::Good(Box::new(env))
}

/// Why an event stored under `subject` is not genuine, if it is not: every
/// event type has exactly one writer, and the subject's writer, the
/// envelope's writer and the type's owner must be that one (the broker only
/// checks the subject, so a service could otherwise store another
/// service's event type under its own subject). Readers refuse such an
/// event; verification reports it.
pub fn not_its_writers(subject: &str, env: &Envelope) -> Option<String> {
    let parts = match parse_subject(subject) {
        Ok(p) => p,
        Err(e) => return Some(format!("subject {subject:?}: {e}")),
    };
    if env.event_type != parts.event_type.as_str()
        || env.writer != parts.writer.as_str()
        || parts.event_type.writer() != parts.writer
    {
        return Some(format!(
            "event {} is a {} written by {} under subject {subject:?}; {} events are written by {} only",
            env.sequence,
            env.event_type,
            env.writer,
            parts.event_type,
            parts.event_type.writer()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;
    use crate::chain::{NewEvent, seal};
    use crate::pb::{self, envelope::Payload};
    use crate::token::EventId;

    fn case() -> (Tenant, CaseId) {
        (
            Tenant::parse("acme").unwrap(),
            CaseId::parse("01JD8X3V5R6M2Q4T7W9Y0Z1A2B").unwrap(),
        )
    }

    /// A log of `n` interaction_recorded events, as stored.
    fn log(n: u64) -> Vec<RawEvent> {
        let (t, c) = case();
        let mut tip = ChainTip::EMPTY;
        let mut out = Vec::new();
        for i in 0..n {
            let ev = NewEvent {
                event_id: EventId::derive(&c, "test", &i.to_string()),
                occurred_at: DateTime::from_timestamp(1_700_000_000 + i as i64, 0).unwrap(),
                causation_id: String::new(),
                correlation_id: c.to_string(),
                payload: Payload::InteractionRecorded(pb::InteractionRecorded {
                    summary: format!("call {i}"),
                    ..Default::default()
                }),
            };
            let s = seal(&t, &c, "test", tip, vec![ev]).unwrap().remove(0);
            tip = ChainTip {
                case_seq: s.case_seq,
                hash: s.hash,
            };
            out.push(RawEvent {
                stream_seq: 100 + i,
                subject: s.subject,
                bytes: s.bytes,
            });
        }
        out
    }

    fn check(raw: &[RawEvent]) -> Option<(u64, LinkFault)> {
        let (t, c) = case();
        verify(&t, &c, raw, None)
            .first_break
            .map(|b| (b.case_seq, b.fault))
    }

    #[test]
    fn an_intact_log_verifies() {
        let (t, c) = case();
        let raw = log(6);
        let v = verify(&t, &c, &raw, None);
        assert!(v.is_intact(), "{v:?}");
        assert_eq!(v.verified_tip.case_seq, 6);
        assert_eq!(v.verified_tip.hash, hash(&raw[5].bytes));
        assert!(verify(&t, &c, &[], None).is_intact());
    }

    #[test]
    fn breaks_are_reported_at_the_right_place() {
        // given / when / then
        type Tamper = fn(&mut Vec<RawEvent>);
        type Want = Option<(u64, LinkFault)>;
        let cases: &[(&str, Tamper, Want)] = &[
            (
                "altered summary byte in 3",
                |r| {
                    let b = &mut r[2].bytes;
                    let i = b.windows(6).position(|w| w == b"call 2").unwrap();
                    b[i + 5] = b'9';
                },
                Some((3, LinkFault::Altered)),
            ),
            (
                "altered prev_hash of 4",
                |r| {
                    let h = hash(&r[2].bytes);
                    let b = &mut r[3].bytes;
                    let i = b.windows(32).position(|w| w == h).unwrap();
                    b[i] ^= 1;
                },
                Some((4, LinkFault::Altered)),
            ),
            (
                "garbage in 2",
                |r| r[1].bytes = vec![0xff; 7],
                Some((2, LinkFault::Altered)),
            ),
            (
                "dropped 4",
                |r| {
                    r.remove(3);
                },
                Some((4, LinkFault::Missing)),
            ),
            (
                "dropped 2 and 3",
                |r| {
                    r.drain(1..3);
                },
                Some((2, LinkFault::Missing)),
            ),
            (
                "dropped 1",
                |r| {
                    r.remove(0);
                },
                Some((1, LinkFault::Missing)),
            ),
            (
                "swapped 3 and 4",
                |r| r.swap(2, 3),
                Some((3, LinkFault::Reordered)),
            ),
            (
                "duplicated 2",
                |r| {
                    let d = r[1].clone();
                    r.insert(2, d);
                },
                Some((2, LinkFault::Reordered)),
            ),
            (
                "foreign subject",
                |r| {
                    r[4].subject = r[4].subject.replace("acme", "evil");
                },
                Some((5, LinkFault::Foreign)),
            ),
            (
                "wrong writer in subject",
                |r| {
                    r[1].subject = r[1].subject.replace(".intake.", ".recovery.");
                },
                Some((2, LinkFault::Foreign)),
            ),
            ("untouched", |_| {}, None),
        ];
        for (name, tamper, want) in cases {
            let mut raw = log(6);
            tamper(&mut raw);
            assert_eq!(check(&raw), *want, "{name}");
        }
    }

    #[test]
    fn an_anchor_covers_the_tail() {
        let (t, c) = case();
        let raw = log(5);
        let anchor = ChainTip {
            case_seq: 5,
            hash: hash(&raw[4].bytes),
        };
        assert!(verify(&t, &c, &raw, Some(anchor)).is_intact());
        let b = verify(&t, &c, &raw[..4], Some(anchor)).first_break.unwrap();
        assert_eq!((b.case_seq, b.fault), (5, LinkFault::Missing));
        let mut altered = raw.clone();
        let i = altered[4]
            .bytes
            .windows(6)
            .position(|w| w == b"call 4")
            .unwrap();
        altered[4].bytes[i + 5] = b'7';
        let b = verify(&t, &c, &altered, Some(anchor)).first_break.unwrap();
        assert_eq!((b.case_seq, b.fault), (5, LinkFault::Altered));
    }
}
