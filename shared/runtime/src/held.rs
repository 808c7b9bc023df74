//! Case state held, not re-read (DESIGN.md §2): a bounded in-memory cache
//! of each active case's folded state and head, per service. A wake-up
//! brings the held state up to date by folding the delivered events when
//! they continue the head (no request), or by reading only the events after
//! the head (one request); an append of ours folds the stored copy of what
//! it appended. A state that does not continue its head (an eviction, a
//! gap, a log that is not what we believed) is dropped and the case is read
//! whole once. A stale cache therefore costs a conflict and an incremental
//! reload, never a wrong append: every append is guarded by the head the
//! state was folded to.
//!
//! The cache is used under the service's per-case lock
//! ([`crate::reconcile::lock_case`]): the holder takes a case's entry out,
//! works on it, and puts it back, so a state is never folded twice at once
//! and never cloned on the hot path.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use casework_caselog::{
    CATCH_UP_PATIENCE, CaseKey, CaseLog, Error as LogError, Head, StoredEvent, read_reaching,
};

/// A service's fold of one case: the pure state its rules decide on.
pub trait Fold: Send + Sync + 'static {
    /// The state of a case with no events.
    fn empty(case: &CaseKey) -> Self;
    /// Folds one more event (the next in the case's log).
    fn apply(&mut self, event: &StoredEvent);
    /// True when nothing the service decides can change any more (the case
    /// is closed): a wake-up that brings no event then needs no read.
    fn is_final(&self) -> bool {
        false
    }
}

/// A case's state and the head it is folded to.
#[derive(Debug, Clone)]
pub struct Held<S> {
    /// The folded state.
    pub state: S,
    /// Where the folded log ends (`None`: no events).
    pub head: Option<Head>,
}

impl<S: Fold> Held<S> {
    /// The state of a case with no events.
    pub fn empty(case: &CaseKey) -> Self {
        Self {
            state: S::empty(case),
            head: None,
        }
    }

    /// The fold of a whole log.
    pub fn of_log(case: &CaseKey, events: &[StoredEvent]) -> Self {
        let mut h = Self::empty(case);
        let continued = h.extend(events);
        // A log that does not chain (which verification reports) is still
        // folded in stream order: the rules see what is stored.
        if !continued {
            let folded = h.head.as_ref().map_or(0, |hd| hd.stream_seq);
            for e in events.iter().filter(|e| e.stream_seq > folded) {
                h.state.apply(e);
                h.head = Some(e.head());
            }
        }
        h
    }

    /// Folds those of `events` (in stream order) that come after the head,
    /// as long as each is the next one (per-case sequence one more, chained
    /// to the head's hash, stored after it). False when one after the head
    /// does not continue it: the events before the gap are folded, the rest
    /// are not.
    pub fn extend<'a>(&mut self, events: impl IntoIterator<Item = &'a StoredEvent>) -> bool {
        for e in events {
            let (seq, case_seq) = self
                .head
                .as_ref()
                .map_or((0, 0), |h| (h.stream_seq, h.case_seq));
            if e.stream_seq <= seq {
                continue;
            }
            let chained = self
                .head
                .as_ref()
                .is_none_or(|h| e.envelope.prev_hash[..] == h.hash[..]);
            if e.envelope.sequence != case_seq + 1 || !chained {
                return false;
            }
            self.state.apply(e);
            self.head = Some(e.head());
        }
        true
    }
}

/// A service's bounded cache of held cases.
pub struct CaseCache<S> {
    service: &'static str,
    entries: Mutex<lru::LruCache<CaseKey, Held<S>>>,
}

impl<S> std::fmt::Debug for CaseCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaseCache")
            .field("service", &self.service)
            .field("len", &self.entries.lock().map(|m| m.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

impl<S: Fold> CaseCache<S> {
    /// A cache of at most `capacity` cases (least recently used evicted
    /// first; 0 is taken as 1).
    pub fn new(service: &'static str, capacity: usize) -> Self {
        Self {
            service,
            entries: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("at least one"),
            )),
        }
    }

    /// How many cases are held.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("case cache").len()
    }

    /// True when no case is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes `case`'s entry out (the caller holds the case's lock and puts
    /// it back with [`CaseCache::put`]).
    pub fn take(&self, case: &CaseKey) -> Option<Held<S>> {
        self.entries.lock().expect("case cache").pop(case)
    }

    /// Holds `held` as `case`'s state. A case with no events is not held
    /// (a request naming a case that does not exist must not evict one
    /// that does).
    pub fn put(&self, case: &CaseKey, held: Held<S>) {
        if held.head.is_none() {
            return;
        }
        let mut m = self.entries.lock().expect("case cache");
        m.put(case.clone(), held);
        metrics::gauge!("casework_cases_held", "service" => self.service).set(m.len() as f64);
    }

    /// Forgets `case` (the next use reads it whole).
    pub fn forget(&self, case: &CaseKey) {
        self.entries.lock().expect("case cache").pop(case);
    }

    /// `case`'s state brought up to date, at least as new as every event in
    /// `woke` (the deliveries that woke the caller, in any order): the held
    /// state with the woke events folded when they continue it (no
    /// request), or with the events after its head read (one request, or
    /// two when nothing says where the case ends); the whole log on a miss
    /// or when the held state does not continue. With no woke event and a
    /// final state, nothing is read. The caller holds the case's lock and
    /// puts the result back.
    pub async fn load(
        &self,
        log: &dyn CaseLog,
        case: &CaseKey,
        woke: &[StoredEvent],
    ) -> Result<Held<S>, LogError> {
        let Some(mut held) = self.take(case) else {
            metrics::counter!("casework_case_cache_total", "service" => self.service, "outcome" => "miss")
                .increment(1);
            // The read must hold what woke us: a replica that lags the one
            // that delivered it is asked again, not believed.
            let reach = woke.iter().map(|e| e.stream_seq).max().unwrap_or(0);
            return Ok(Held::of_log(
                case,
                &read_reaching(log, case, 0, reach).await?,
            ));
        };
        let at = held.head.as_ref().map_or(0, |h| h.stream_seq);
        let mut newer: Vec<&StoredEvent> = woke.iter().filter(|e| e.stream_seq > at).collect();
        newer.sort_by_key(|e| e.stream_seq);
        newer.dedup_by_key(|e| e.stream_seq);
        let Some(latest) = newer.last().map(|e| (e.stream_seq, e.envelope.sequence)) else {
            if !woke.is_empty() || held.state.is_final() {
                // Everything that woke us is folded already.
                metrics::counter!("casework_case_cache_total", "service" => self.service, "outcome" => "hit")
                    .increment(1);
                return Ok(held);
            }
            // Nothing says where the case ends (an API call, a timer): ask.
            return self.catch_up(log, case, held, None, 0).await;
        };
        if held.extend(newer.iter().copied())
            && held.head.as_ref().map(|h| h.stream_seq) == Some(latest.0)
        {
            metrics::counter!("casework_case_cache_total", "service" => self.service, "outcome" => "hit")
                .increment(1);
            return Ok(held);
        }
        self.catch_up(log, case, held, Some(latest), 0).await
    }

    /// [`CaseCache::load`] for a caller that must see everything in the log
    /// (an API call deciding whether a request is new, a refusal): asks the
    /// log where the case ends even when the held state is final.
    pub async fn load_latest(
        &self,
        log: &dyn CaseLog,
        case: &CaseKey,
    ) -> Result<Held<S>, LogError> {
        match self.take(case) {
            None => {
                metrics::counter!("casework_case_cache_total", "service" => self.service, "outcome" => "miss")
                    .increment(1);
                Ok(Held::of_log(case, &log.read(case, 0).await?))
            }
            Some(held) => self.catch_up(log, case, held, None, 0).await,
        }
    }

    /// After a conflict on `held`'s head: the log holds an event after it
    /// (it refused our append), so the state returned goes past that head,
    /// whichever replica answers the read.
    pub async fn load_past(
        &self,
        log: &dyn CaseLog,
        case: &CaseKey,
        held: Held<S>,
    ) -> Result<Held<S>, LogError> {
        let beyond = held.head.as_ref().map_or(1, |h| h.stream_seq + 1);
        self.catch_up(log, case, held, None, beyond).await
    }

    /// Reads what follows `held`'s head (up to `until` when known) and
    /// folds it; the whole log when that does not continue the head. The
    /// result reaches at least `reach`, `until` and `held`'s own head (reads
    /// are monotonic): a replica behind that is asked again, for up to
    /// [`CATCH_UP_PATIENCE`], and then the log is called unavailable.
    async fn catch_up(
        &self,
        log: &dyn CaseLog,
        case: &CaseKey,
        mut held: Held<S>,
        until: Option<(u64, u64)>,
        reach: u64,
    ) -> Result<Held<S>, LogError> {
        let at = |h: &Held<S>| h.head.as_ref().map_or(0, |hd| hd.stream_seq);
        let reach = reach.max(until.map_or(0, |(seq, _)| seq)).max(at(&held));
        let started = tokio::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            let after = log.read_after(case, held.head.as_ref(), until).await?;
            if !held.extend(&after) {
                break;
            }
            if at(&held) >= reach {
                metrics::counter!("casework_case_cache_total", "service" => self.service, "outcome" => "read_after")
                    .increment(1);
                return Ok(held);
            }
            if started.elapsed() >= CATCH_UP_PATIENCE {
                return Err(LogError::Unavailable(format!(
                    "the log of {case} read ends at stream sequence {}, before {reach} which it is known to hold (a replica that has not caught up after {CATCH_UP_PATIENCE:?})",
                    at(&held)
                )));
            }
            metrics::counter!("casework_stale_reads_total").increment(1);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(100));
        }
        metrics::counter!("casework_case_cache_total", "service" => self.service, "outcome" => "reload")
            .increment(1);
        Ok(Held::of_log(
            case,
            &read_reaching(log, case, 0, reach).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casework_caselog::conformance::{interaction, new_case};
    use casework_caselog::{CaseLog, MemoryLog};

    #[derive(Debug, Clone, PartialEq)]
    struct Seen(Vec<u64>);
    impl Fold for Seen {
        fn empty(_: &CaseKey) -> Self {
            Seen(Vec::new())
        }
        fn apply(&mut self, e: &StoredEvent) {
            self.0.push(e.envelope.sequence);
        }
    }

    #[tokio::test]
    async fn a_held_case_folds_the_next_delivery_without_reading() {
        let log = MemoryLog::new();
        let case = new_case("t");
        let a = log
            .append(&case, None, vec![interaction(&case, "1")])
            .await
            .unwrap();
        let cache = CaseCache::<Seen>::new("test", 4);
        let held = cache.load(&log, &case, &a.events).await.unwrap();
        assert_eq!(held.state, Seen(vec![1]));
        cache.put(&case, held);
        let b = log
            .append(&case, Some(&a.head), vec![interaction(&case, "2")])
            .await
            .unwrap();
        let held = cache.load(&log, &case, &b.events).await.unwrap();
        assert_eq!(held.state, Seen(vec![1, 2]));
        assert_eq!(held.head, Some(b.head.clone()));
        cache.put(&case, held);
        // A gap (event 3 filtered out of the delivery, 4 delivered) is read.
        let c = log
            .append(&case, Some(&b.head), vec![interaction(&case, "3")])
            .await
            .unwrap();
        let d = log
            .append(&case, Some(&c.head), vec![interaction(&case, "4")])
            .await
            .unwrap();
        let held = cache.load(&log, &case, &d.events).await.unwrap();
        assert_eq!(held.state, Seen(vec![1, 2, 3, 4]));
    }

    /// A replica of a clustered stream that answers reads from behind: it
    /// shows the log up to `shown`, which catches up by one event on every
    /// read once `stuck` reads have been answered (never, when `stuck` is
    /// `u32::MAX`). Appends go to the leader (the inner log).
    #[derive(Debug)]
    struct Lagging {
        leader: MemoryLog,
        shown: std::sync::atomic::AtomicU64,
        reads: std::sync::atomic::AtomicU32,
        stuck: u32,
    }

    impl Lagging {
        fn new(leader: MemoryLog, shown: u64, stuck: u32) -> Self {
            Self {
                leader,
                shown: shown.into(),
                reads: 0.into(),
                stuck,
            }
        }
        fn reads(&self) -> u32 {
            self.reads.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl CaseLog for Lagging {
        async fn append_event(
            &self,
            case: &CaseKey,
            after: Option<&Head>,
            event: casework_caselog::domain::NewEvent,
            traceparent: Option<&str>,
        ) -> Result<casework_caselog::Appended, LogError> {
            self.leader
                .append_event(case, after, event, traceparent)
                .await
        }
        async fn read(&self, case: &CaseKey, from: u64) -> Result<Vec<StoredEvent>, LogError> {
            use std::sync::atomic::Ordering::SeqCst;
            let shown = self.shown.load(SeqCst);
            if self.reads.fetch_add(1, SeqCst) >= self.stuck {
                self.shown.fetch_add(1, SeqCst);
            }
            let mut all = self.leader.read(case, from).await?;
            all.retain(|e| e.stream_seq <= shown);
            Ok(all)
        }
        async fn read_raw(
            &self,
            case: &CaseKey,
        ) -> Result<Vec<casework_caselog::domain::RawEvent>, LogError> {
            self.leader.read_raw(case).await
        }
        async fn head(&self, case: &CaseKey) -> Result<Option<Head>, LogError> {
            Ok(self.read(case, 0).await?.last().map(StoredEvent::head))
        }
        async fn consume(
            &self,
            durable: &str,
            filters: &[String],
        ) -> Result<casework_caselog::Deliveries, LogError> {
            self.leader.consume(durable, filters).await
        }
        async fn tail(
            &self,
            filter: &str,
            from: u64,
        ) -> Result<casework_caselog::Deliveries, LogError> {
            self.leader.tail(filter, from).await
        }
        async fn last_stream_seq(&self) -> Result<u64, LogError> {
            self.leader.last_stream_seq().await
        }
    }

    /// Three events of one case on the leader.
    async fn three(log: &MemoryLog, case: &CaseKey) -> Vec<StoredEvent> {
        let mut head = None;
        let mut out = Vec::new();
        for n in ["1", "2", "3"] {
            let a = log
                .append(case, head.as_ref(), vec![interaction(case, n)])
                .await
                .unwrap();
            head = Some(a.head.clone());
            out.extend(a.events);
        }
        out
    }

    #[tokio::test]
    async fn a_miss_woken_by_an_event_a_lagging_replica_lacks_is_read_again() {
        let leader = MemoryLog::new();
        let case = new_case("t");
        let events = three(&leader, &case).await;
        // The replica shows only the first event for two reads.
        let log = Lagging::new(leader, events[0].stream_seq, 2);
        let cache = CaseCache::<Seen>::new("test", 4);
        let held = cache.load(&log, &case, &events[2..]).await.unwrap();
        assert_eq!(held.state, Seen(vec![1, 2, 3]), "decided on what woke it");
        assert!(log.reads() > 2, "asked again: {} reads", log.reads());
    }

    #[tokio::test]
    async fn a_held_case_woken_past_a_gap_reads_again_from_a_lagging_replica() {
        let leader = MemoryLog::new();
        let case = new_case("t");
        let events = three(&leader, &case).await;
        let cache = CaseCache::<Seen>::new("test", 4);
        cache.put(&case, Held::of_log(&case, &events[..1]));
        // Event 2 was filtered out of the delivery; 3 woke us; the replica
        // has only event 1 for a while.
        let log = Lagging::new(leader, events[0].stream_seq, 3);
        let held = cache.load(&log, &case, &events[2..]).await.unwrap();
        assert_eq!(held.state, Seen(vec![1, 2, 3]));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_conflict_the_reload_goes_past_the_held_head() {
        let leader = MemoryLog::new();
        let case = new_case("t");
        let events = three(&leader, &case).await;
        let cache = CaseCache::<Seen>::new("test", 4);
        let held = Held::of_log(&case, &events[..2]);
        // Our append on event 2 was refused: event 3 exists, but the
        // replica answering shows only up to 2.
        let log = Lagging::new(leader, events[1].stream_seq, 2);
        let held = cache.load_past(&log, &case, held).await.unwrap();
        assert_eq!(held.state, Seen(vec![1, 2, 3]));
        // And a held state is never replaced by an older read.
        let behind = Lagging::new(MemoryLog::new(), 0, 0);
        let fresh = Held::of_log(&case, &events);
        let got = cache.load_past(&behind, &case, fresh.clone()).await;
        assert!(got.is_err(), "nothing past the head is not believed");
        cache.put(&case, fresh);
        let got = cache.load_latest(&behind, &case).await.unwrap();
        assert_eq!(got.state, Seen(vec![1, 2, 3]), "kept, not replaced");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_never_catches_up_makes_the_log_unavailable_not_older() {
        let leader = MemoryLog::new();
        let case = new_case("t");
        let events = three(&leader, &case).await;
        let log = Lagging::new(leader, events[0].stream_seq, u32::MAX);
        let cache = CaseCache::<Seen>::new("test", 4);
        let err = cache.load(&log, &case, &events[2..]).await.unwrap_err();
        assert!(matches!(err, LogError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("has not caught up"), "{err}");
    }

    #[tokio::test]
    async fn a_held_state_that_does_not_continue_the_log_is_reloaded() {
        let log = MemoryLog::new();
        let case = new_case("t");
        let other = new_case("t");
        let a = log
            .append(&case, None, vec![interaction(&case, "1")])
            .await
            .unwrap();
        let cache = CaseCache::<Seen>::new("test", 4);
        // A held state claiming a head the log never had: another case's.
        let o = log
            .append(&other, None, vec![interaction(&other, "x")])
            .await
            .unwrap();
        cache.put(
            &case,
            Held {
                state: Seen(vec![7]),
                head: Some(casework_caselog::Head {
                    stream_seq: 0,
                    ..o.head.clone()
                }),
            },
        );
        let held = cache.load_latest(&log, &case).await.unwrap();
        assert_eq!(held.state, Seen(vec![1]), "read whole");
        assert_eq!(held.head, Some(a.head));
    }

    mod cached_equals_fresh {
        use super::*;
        use crate::reconcile::{Decision, Rounds, decide_and_append};
        use casework_caselog::Head;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// Another writer appends (the held state goes stale).
            Other,
            /// Some of the events not yet delivered are delivered (a
            /// filtered consumer skips the rest), then the case is decided.
            Deliver(Vec<bool>),
            /// A timer or an API call: decide with nothing delivered.
            Fire,
            /// The case is evicted from the cache.
            Evict,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => Just(Op::Other),
                4 => proptest::collection::vec(any::<bool>(), 0..4).prop_map(Op::Deliver),
                2 => Just(Op::Fire),
                1 => Just(Op::Evict),
            ]
        }

        /// The rule under test (a pure function of the state): append one
        /// event while the case's length is not a multiple of five.
        fn rule(s: &Seen) -> bool {
            !s.0.len().is_multiple_of(5) || s.0.is_empty()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// For any interleaving of deliveries (complete, partial or
            /// none), other writers' appends (conflicts), and evictions, the
            /// held path decides on exactly the state a fresh fold of the
            /// log gives at the head it decides on, never on one older than
            /// a delivery, and every append lands on the true head.
            #[test]
            fn the_held_path_decides_as_a_fresh_fold(ops in proptest::collection::vec(op(), 1..40)) {
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(async {
                    let log = MemoryLog::new();
                    let case = new_case("t");
                    let cache = CaseCache::<Seen>::new("prop", 2);
                    let mut delivered_upto = 0u64;
                    let mut other = 0;
                    for op in ops {
                        let woke: Vec<StoredEvent> = match &op {
                            Op::Other => {
                                other += 1;
                                let head = log.head(&case).await.unwrap();
                                log.append(&case, head.as_ref(), vec![interaction(&case, &format!("o{other}"))])
                                    .await
                                    .unwrap();
                                continue;
                            }
                            Op::Evict => {
                                cache.forget(&case);
                                continue;
                            }
                            Op::Fire => Vec::new(),
                            Op::Deliver(pick) => {
                                let all = log.read(&case, delivered_upto + 1).await.unwrap();
                                let mut w: Vec<StoredEvent> = all
                                    .into_iter()
                                    .zip(pick.iter().chain(std::iter::repeat(&false)))
                                    .filter(|(_, p)| **p)
                                    .map(|(e, _)| e)
                                    .collect();
                                if let Some(last) = w.last() {
                                    delivered_upto = last.stream_seq;
                                }
                                w.reverse(); // any order
                                w
                            }
                        };
                        let newest = woke.iter().map(|e| e.stream_seq).max().unwrap_or(0);
                        let mut k = 0usize;
                        let mut seen: Vec<(Seen, Option<Head>)> = Vec::new();
                        let decided = decide_and_append(&log, &cache, &case, &woke, Rounds::UntilIdle, |s: &Seen, head| {
                            seen.push((s.clone(), head.cloned()));
                            if !rule(s) {
                                return Ok(Decision::<()>::default());
                            }
                            k += 1;
                            Ok(Decision {
                                events: vec![interaction(&case, &format!("m{}-{k}", s.0.len()))],
                                effects: vec![],
                            })
                        })
                        .await
                        .unwrap();
                        let log_now = log.read(&case, 0).await.unwrap();
                        for (state, head) in &seen {
                            let upto = head.as_ref().map_or(0, |h| h.stream_seq);
                            let prefix: Vec<StoredEvent> =
                                log_now.iter().filter(|e| e.stream_seq <= upto).cloned().collect();
                            prop_assert_eq!(state, &Held::<Seen>::of_log(&case, &prefix).state);
                            prop_assert!(upto >= newest, "decided on a state older than a delivery");
                        }
                        let reached = decided.head.as_ref().map_or(0, |h| h.stream_seq);
                        prop_assert!(reached >= newest);
                    }
                    // Once everything is delivered, the held path reaches
                    // the fixpoint a fresh fold of the whole log reaches.
                    let all = log.read(&case, 0).await.unwrap();
                    decide_and_append(&log, &cache, &case, &all, Rounds::UntilIdle, |s: &Seen, _| {
                        Ok(Decision::<()> {
                            events: if rule(s) {
                                vec![interaction(&case, &format!("f{}", s.0.len()))]
                            } else {
                                vec![]
                            },
                            effects: vec![],
                        })
                    })
                    .await
                    .unwrap();
                    let fresh = Held::<Seen>::of_log(&case, &log.read(&case, 0).await.unwrap());
                    let held = cache.take(&case).expect("held after deciding");
                    prop_assert!(!rule(&fresh.state), "the fixpoint is reached");
                    prop_assert_eq!(&held.state, &fresh.state);
                    prop_assert_eq!(held.head, fresh.head);
                    let raw = log.read_raw(&case).await.unwrap();
                    let v = casework_domain::verify(&case.tenant, &case.case_id, &raw, None);
                    prop_assert!(v.is_intact(), "{:?}", v);
                    Ok(())
                })?;
            }
        }
    }
}
