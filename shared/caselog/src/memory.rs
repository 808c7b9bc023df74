//! The in-memory twin of the JetStream log, for unit tests of everything
//! above the log. It keeps the same contract — optimistic concurrency on the
//! case's last stream sequence, expectation checked before deduplication,
//! one event per append, durable consumers that resume after their last ack —
//! and passes the same conformance suite.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use casework_domain::{NewEvent, RawEvent, Writer};
use tokio::sync::Notify;

use crate::types::{AckKind, Acker, MemoryAck};
use crate::{
    Appended, CaseKey, CaseLog, Deliveries, Delivery, Error, Head, Result, StoredEvent,
    find_landed, seal_for, stored_of,
};

#[derive(Debug, Clone)]
struct Stored {
    seq: u64,
    subject: String,
    bytes: bytes::Bytes,
}

#[derive(Debug, Default)]
struct ConsumerState {
    filters: Vec<String>,
    acked: BTreeSet<u64>,
    redeliver: VecDeque<u64>,
    deliveries: HashMap<u64, u64>,
}

#[derive(Debug, Default)]
struct Inner {
    messages: Vec<Stored>,
    msg_ids: HashSet<String>,
    consumers: HashMap<String, Arc<Mutex<ConsumerState>>>,
}

/// An in-memory per-case log shared by clones.
#[derive(Debug, Clone)]
pub struct MemoryLog {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
    instance: String,
    writer: Option<Writer>,
}

impl Default for MemoryLog {
    fn default() -> Self {
        Self::new()
    }
}

/// NATS subject matching: `*` matches one token, `>` the rest (one or more).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl MemoryLog {
    /// An empty log whose appends may carry any writer's events.
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            notify: Arc::new(Notify::new()),
            instance: "memory".to_owned(),
            writer: None,
        }
    }

    /// A client of the same log bound to one writer (like a service's own
    /// credentials): appends of other writers' events are refused.
    pub fn as_writer(&self, writer: Writer, instance: &str) -> Self {
        Self {
            writer: Some(writer),
            instance: instance.to_owned(),
            ..self.clone()
        }
    }

    fn case_last_seq(inner: &Inner, filter: &str) -> u64 {
        inner
            .messages
            .iter()
            .rev()
            .find(|m| subject_matches(filter, &m.subject))
            .map_or(0, |m| m.seq)
    }
}

#[async_trait]
impl CaseLog for MemoryLog {
    async fn append_event(
        &self,
        case: &CaseKey,
        after: Option<&Head>,
        event: NewEvent,
        _traceparent: Option<&str>,
    ) -> Result<Appended> {
        let sealed = seal_for(case, after, event, &self.instance, self.writer)?;
        let expected = after.map_or(0, |h| h.stream_seq);
        let landed = {
            let mut inner = self.inner.lock().expect("memory log lock");
            let filter = case.filter();
            if Self::case_last_seq(&inner, &filter) != expected
                || inner.msg_ids.contains(sealed.event_id.as_str())
            {
                // A stale expectation, or (expectation held but the id was
                // seen) a duplicate, which the conflict path below resolves
                // to the landed position.
                None
            } else {
                let seq = inner.messages.len() as u64 + 1;
                inner.msg_ids.insert(sealed.event_id.to_string());
                inner.messages.push(Stored {
                    seq,
                    subject: sealed.subject.clone(),
                    bytes: bytes::Bytes::from(sealed.bytes.clone()),
                });
                Some(seq)
            }
        };
        match landed {
            Some(seq) => {
                self.notify.notify_waiters();
                stored_of(&sealed, seq)
            }
            None => match find_landed(self, case, after, &sealed).await? {
                Some(a) => Ok(a),
                None => Err(Error::Conflict {
                    case: case.to_string(),
                    expected,
                }),
            },
        }
    }

    async fn read(&self, case: &CaseKey, from_stream_seq: u64) -> Result<Vec<StoredEvent>> {
        let filter = case.filter();
        let found: Vec<Stored> = {
            let inner = self.inner.lock().expect("memory log lock");
            inner
                .messages
                .iter()
                .filter(|m| m.seq >= from_stream_seq && subject_matches(&filter, &m.subject))
                .cloned()
                .collect()
        };
        found
            .into_iter()
            .map(|m| StoredEvent::decode(m.seq, m.subject, m.bytes))
            .collect()
    }

    async fn read_raw(&self, case: &CaseKey) -> Result<Vec<RawEvent>> {
        let filter = case.filter();
        let inner = self.inner.lock().expect("memory log lock");
        Ok(inner
            .messages
            .iter()
            .filter(|m| subject_matches(&filter, &m.subject))
            .map(|m| RawEvent {
                stream_seq: m.seq,
                subject: m.subject.clone(),
                bytes: m.bytes.to_vec(),
            })
            .collect())
    }

    async fn head(&self, case: &CaseKey) -> Result<Option<Head>> {
        let filter = case.filter();
        let last = {
            let inner = self.inner.lock().expect("memory log lock");
            inner
                .messages
                .iter()
                .rev()
                .find(|m| subject_matches(&filter, &m.subject))
                .cloned()
        };
        last.map(|m| StoredEvent::decode(m.seq, m.subject, m.bytes).map(|e| e.head()))
            .transpose()
    }

    async fn consume(&self, durable: &str, filters: &[String]) -> Result<Deliveries> {
        let wanted = crate::jetstream::consumer_filters(durable, filters)?;
        let state = {
            let mut inner = self.inner.lock().expect("memory log lock");
            let st = inner
                .consumers
                .entry(durable.to_owned())
                .or_insert_with(|| {
                    Arc::new(Mutex::new(ConsumerState {
                        filters: wanted.clone(),
                        ..Default::default()
                    }))
                })
                .clone();
            if st.lock().expect("consumer lock").filters != wanted {
                return Err(Error::Rejected {
                    code: 10148,
                    description: format!(
                        "consumer {durable} exists with another filter; delete it or use another name"
                    ),
                });
            }
            st
        };
        let inner = self.inner.clone();
        let notify = self.notify.clone();
        let stream = futures::stream::unfold(0u64, move |cursor| {
            let inner = inner.clone();
            let notify = notify.clone();
            let state = state.clone();
            async move {
                loop {
                    let waiter = notify.notified();
                    let next = {
                        let inner = inner.lock().expect("memory log lock");
                        let mut st = state.lock().expect("consumer lock");
                        let redeliver = st.redeliver.pop_front();
                        let pick = redeliver.or_else(|| {
                            inner
                                .messages
                                .iter()
                                .find(|m| {
                                    m.seq > cursor
                                        && !st.acked.contains(&m.seq)
                                        && st.filters.iter().any(|f| subject_matches(f, &m.subject))
                                })
                                .map(|m| m.seq)
                        });
                        pick.map(|seq| {
                            let m = inner.messages[(seq - 1) as usize].clone();
                            let pending = inner.messages[seq as usize..]
                                .iter()
                                .filter(|o| {
                                    st.filters.iter().any(|f| subject_matches(f, &o.subject))
                                })
                                .count() as u64;
                            let n = st.deliveries.entry(seq).or_insert(0);
                            *n += 1;
                            (m, *n, redeliver.is_some(), pending)
                        })
                    };
                    if let Some((m, delivered, was_redelivery, pending)) = next {
                        let st = state.clone();
                        let seq = m.seq;
                        let ack: MemoryAck = Arc::new(move |kind| {
                            let mut st = st.lock().expect("consumer lock");
                            match kind {
                                AckKind::Ack => {
                                    st.acked.insert(seq);
                                }
                                AckKind::Nak(_) => st.redeliver.push_back(seq),
                                AckKind::Progress => {}
                            }
                        });
                        let d = Delivery {
                            stream_seq: m.seq,
                            subject: m.subject,
                            bytes: m.bytes,
                            delivered,
                            traceparent: None,
                            pending,
                            acker: Acker::Memory(ack),
                        };
                        let cursor = if was_redelivery { cursor } else { seq };
                        return Some((Ok(d), cursor));
                    }
                    waiter.await;
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn tail(&self, filter: &str, from_stream_seq: u64) -> Result<Deliveries> {
        Ok(self.tail_stream(filter.to_owned(), from_stream_seq))
    }

    async fn last_stream_seq(&self) -> Result<u64> {
        Ok(self.inner.lock().expect("memory log lock").messages.len() as u64)
    }
}

impl MemoryLog {
    fn tail_stream(&self, filter: String, from: u64) -> Deliveries {
        let inner = self.inner.clone();
        let notify = self.notify.clone();
        Box::pin(futures::stream::unfold(from.max(1), move |next_seq| {
            let inner = inner.clone();
            let notify = notify.clone();
            let filter = filter.clone();
            async move {
                loop {
                    let waiter = notify.notified();
                    let found = {
                        let inner = inner.lock().expect("memory log lock");
                        let mut rest = inner
                            .messages
                            .iter()
                            .skip((next_seq - 1) as usize)
                            .filter(|m| subject_matches(&filter, &m.subject));
                        rest.next().cloned().map(|m| (m, rest.count() as u64))
                    };
                    if let Some((m, pending)) = found {
                        let d = Delivery {
                            stream_seq: m.seq,
                            subject: m.subject,
                            bytes: m.bytes,
                            delivered: 1,
                            traceparent: None,
                            pending,
                            acker: Acker::None,
                        };
                        return Some((Ok(d), m.seq + 1));
                    }
                    waiter.await;
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(subject_matches("case.>", "case.a.b.intake.x"));
        assert!(subject_matches("case.*.*.intake.>", "case.a.b.intake.x"));
        assert!(!subject_matches("case.*.*.intake.>", "case.a.b.recovery.x"));
        assert!(subject_matches("case.a.b.>", "case.a.b.intake.x"));
        assert!(!subject_matches("case.a.b.>", "case.a.b"));
        assert!(!subject_matches("case.a", "case.a.b"));
        assert!(subject_matches("case.a", "case.a"));
    }

    #[tokio::test]
    async fn conformance() {
        crate::conformance::run_all(&|| async { MemoryLog::new() }).await;
    }
}
