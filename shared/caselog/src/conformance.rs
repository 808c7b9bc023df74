//! The one conformance suite every [`CaseLog`] implementation must pass
//! (CONVENTIONS.md §8): the in-memory log runs it in its unit tests, the
//! JetStream log against a real nats-server in `tests/jetstream.rs`.
//! Each check takes a fresh log from `make` and works on new case ids, so
//! the checks can share one server.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{CaseId, EventId, NewEvent, Tenant, verify};
use futures::StreamExt;

use crate::{CaseKey, CaseLog, Error, Head};

/// A fresh case key.
pub fn new_case(tenant: &str) -> CaseKey {
    CaseKey {
        tenant: Tenant::parse(tenant).expect("test tenant"),
        case_id: CaseId::from_ulid(ulid::Ulid::new()),
    }
}

/// An `interaction_recorded` event of `case`, identified by `key`.
pub fn interaction(case: &CaseKey, key: &str) -> NewEvent {
    NewEvent {
        event_id: EventId::derive(&case.case_id, "conformance", key),
        occurred_at: chrono::Utc::now(),
        causation_id: String::new(),
        correlation_id: case.case_id.to_string(),
        payload: Payload::InteractionRecorded(pb::InteractionRecorded {
            summary: format!("interaction {key}"),
            ..Default::default()
        }),
    }
}

fn opening(case: &CaseKey) -> Vec<NewEvent> {
    let ev = |key: &str, payload| NewEvent {
        event_id: EventId::derive(&case.case_id, "open", key),
        occurred_at: chrono::Utc::now(),
        causation_id: String::new(),
        correlation_id: case.case_id.to_string(),
        payload,
    };
    vec![
        ev(
            "opened",
            Payload::CaseOpened(pb::CaseOpened {
                customer_id: "cust-1".into(),
                service_code: "refund".into(),
                ..Default::default()
            }),
        ),
        ev("promised", Payload::PromiseMade(pb::PromiseMade::default())),
    ]
}

async fn verify_case<L: CaseLog + ?Sized>(
    log: &L,
    case: &CaseKey,
) -> casework_domain::Verification {
    let raw = log.read_raw(case).await.expect("read_raw");
    verify(&case.tenant, &case.case_id, &raw, None)
}

/// Runs every check.
pub async fn run_all<L, F, Fut>(make: &F)
where
    L: CaseLog,
    F: Fn() -> Fut,
    Fut: Future<Output = L>,
{
    append_read_and_head(make().await).await;
    stale_expectation_stores_nothing(make().await).await;
    retry_of_a_landed_append_is_recognised(make().await).await;
    batch_reaches_a_consumer_as_consecutive_events(make().await).await;
    racing_writers(Arc::new(make().await), 4, 25).await;
    tail_follows_from_a_position(make().await).await;
    a_consumer_with_several_filters_gets_only_their_events(make().await).await;
    reads_a_long_case_whole_and_from_any_point(make().await).await;
}

/// A case longer than one read batch (600 events, with another case's
/// events interleaved) reads back whole, in order, and from any stream
/// sequence on — including one that falls between its events.
pub async fn reads_a_long_case_whole_and_from_any_point<L: CaseLog>(log: L) {
    let case = new_case("conformance");
    let other = new_case("conformance");
    let mut head = log.append(&case, None, opening(&case)).await.unwrap().head;
    let mut other_head = log
        .append(&other, None, opening(&other))
        .await
        .unwrap()
        .head;
    let mut chunk = 0;
    while head.case_seq < 600 {
        let events = (0..(600 - head.case_seq).min(99))
            .map(|i| interaction(&case, &format!("long-{chunk}-{i}")))
            .collect();
        head = log.append(&case, Some(&head), events).await.unwrap().head;
        other_head = log
            .append(
                &other,
                Some(&other_head),
                vec![interaction(&other, &format!("o{chunk}"))],
            )
            .await
            .unwrap()
            .head;
        chunk += 1;
    }
    let all = log.read(&case, 0).await.unwrap();
    assert_eq!(all.len(), 600);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, e)| e.envelope.sequence == i as u64 + 1),
        "dense and in order"
    );
    assert!(all.windows(2).all(|w| w[0].stream_seq < w[1].stream_seq));
    assert_eq!(all.last().unwrap().stream_seq, head.stream_seq);
    for k in [1usize, 2, 99, 100, 101, 300, 599] {
        let from = all[k].stream_seq;
        let tail = log.read(&case, from).await.unwrap();
        assert_eq!(tail.len(), 600 - k, "from the event at index {k}");
        assert_eq!(tail[0].envelope.sequence, k as u64 + 1);
        // Between two events (where the other case's event sits): the
        // same as from the next event of ours.
        let between = log.read(&case, all[k - 1].stream_seq + 1).await.unwrap();
        assert_eq!(between.len(), 600 - k);
    }
    assert!(
        log.read(&case, head.stream_seq + 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(log.read_raw(&case).await.unwrap().len(), 600);
}

/// A durable consumer with several filters delivers the events matching
/// any of them, in stream order, and nothing else; the same name with
/// other filters, or with none, is refused with a reason.
pub async fn a_consumer_with_several_filters_gets_only_their_events<L: CaseLog>(log: L) {
    let case = new_case("conformance");
    let durable = format!("conf-{}", ulid::Ulid::new());
    let opened = log.append(&case, None, opening(&case)).await.unwrap();
    let i1 = log
        .append(&case, Some(&opened.head), vec![interaction(&case, "f1")])
        .await
        .unwrap();
    let prefix = format!("case.{}.{}", case.tenant, case.case_id);
    let filters = vec![
        format!("{prefix}.intake.interaction_recorded"),
        format!("{prefix}.intake.promise_made"),
    ];
    let mut deliveries = log.consume(&durable, &filters).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let d = next_delivery(&mut deliveries).await;
        got.push((d.stream_seq, d.decode().unwrap().envelope.event_type));
        d.ack().await.unwrap();
    }
    assert_eq!(
        got,
        vec![
            (opened.head.stream_seq, "promise_made".to_owned()),
            (i1.head.stream_seq, "interaction_recorded".to_owned()),
        ],
        "case_opened matches neither filter; the rest come in stream order"
    );
    drop(deliveries);

    match log.consume(&durable, &filters[..1]).await {
        Err(Error::Rejected { description, .. }) => assert!(
            description.contains(&durable) && description.contains("delete it"),
            "{description}"
        ),
        other => panic!(
            "other filters on an existing consumer must be refused: {:?}",
            other.err()
        ),
    }
    match log.consume(&format!("{durable}-none"), &[]).await {
        Err(Error::Misuse(why)) => assert!(why.contains("filter"), "{why}"),
        other => panic!(
            "a consumer without filters must be refused: {:?}",
            other.err()
        ),
    }
}

/// `tail` delivers every matching event from a stream sequence on, in order,
/// including ones appended while it runs; `last_stream_seq` tells where the
/// log ends.
pub async fn tail_follows_from_a_position<L: CaseLog>(log: L) {
    let case = new_case("conformance");
    let a = log.append(&case, None, opening(&case)).await.unwrap();
    let b = log
        .append(&case, Some(&a.head), vec![interaction(&case, "t1")])
        .await
        .unwrap();
    assert!(log.last_stream_seq().await.unwrap() >= b.head.stream_seq);
    let mut tail = log.tail(&case.filter(), a.head.stream_seq).await.unwrap();
    let d = next_delivery(&mut tail).await;
    assert_eq!(
        d.stream_seq, a.head.stream_seq,
        "starts at the given position"
    );
    assert_eq!(next_delivery(&mut tail).await.stream_seq, b.head.stream_seq);
    let c = log
        .append(
            &case,
            Some(&b.head),
            vec![interaction(&case, "t2"), interaction(&case, "t3")],
        )
        .await
        .unwrap();
    let d = next_delivery(&mut tail).await;
    assert_eq!(d.stream_seq, c.first_stream_seq, "live events follow");
    assert_eq!(d.decode().unwrap().envelope.sequence, 4);
    assert_eq!(next_delivery(&mut tail).await.stream_seq, c.head.stream_seq);
}

/// Appends a 2-event decision and a 1-event decision, reads them back whole
/// and from a stream sequence, and checks head and chain.
pub async fn append_read_and_head<L: CaseLog>(log: L) {
    let case = new_case("conformance");
    assert_eq!(
        log.head(&case).await.unwrap(),
        None,
        "a new case has no head"
    );
    assert!(log.read(&case, 0).await.unwrap().is_empty());

    let a = log.append(&case, None, opening(&case)).await.unwrap();
    assert!(!a.already);
    assert_eq!(a.head.case_seq, 2);
    let b = log
        .append(&case, Some(&a.head), vec![interaction(&case, "1")])
        .await
        .unwrap();
    assert_eq!(b.head.case_seq, 3);
    assert!(b.first_stream_seq > a.head.stream_seq);

    let events = log.read(&case, 0).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.envelope.sequence).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(events[0].envelope.event_type, "case_opened");
    assert_eq!(events[1].envelope.event_type, "promise_made");
    assert_eq!(events[0].stream_seq, a.first_stream_seq);
    assert_eq!(
        events[1].stream_seq,
        events[0].stream_seq + 1,
        "one decision is stored contiguously"
    );
    assert_eq!(log.head(&case).await.unwrap(), Some(b.head.clone()));
    assert_eq!(events[2].head(), b.head);

    let tail = log.read(&case, b.first_stream_seq).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].envelope.sequence, 3);

    let v = verify_case(&log, &case).await;
    assert!(v.is_intact(), "{v:?}");
    assert_eq!(v.verified_tip.case_seq, 3);
}

/// A decision whose expectation is stale is refused as a conflict and stores
/// nothing; so is one that expects an empty log of a case that has events.
pub async fn stale_expectation_stores_nothing<L: CaseLog>(log: L) {
    let case = new_case("conformance");
    let first = log.append(&case, None, opening(&case)).await.unwrap();
    let second = log
        .append(&case, Some(&first.head), vec![interaction(&case, "x")])
        .await
        .unwrap();

    // A batch of 3 decided on the old head.
    let stale = vec![
        interaction(&case, "s1"),
        interaction(&case, "s2"),
        interaction(&case, "s3"),
    ];
    let err = log
        .append(&case, Some(&first.head), stale)
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "expected a conflict, got {err:?}");
    let err = log
        .append(&case, None, vec![interaction(&case, "e")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");

    let events = log.read(&case, 0).await.unwrap();
    assert_eq!(events.len(), 3, "nothing of the stale decisions was stored");
    assert_eq!(log.head(&case).await.unwrap(), Some(second.head));
}

/// Re-sending a decision that already landed (as a client does after an
/// ambiguous failure) returns the landed position and stores nothing twice.
pub async fn retry_of_a_landed_append_is_recognised<L: CaseLog>(log: L) {
    let case = new_case("conformance");
    let first = log.append(&case, None, opening(&case)).await.unwrap();
    let again = log.append(&case, None, opening(&case)).await.unwrap();
    assert!(again.already, "the retry is recognised as already landed");
    assert_eq!(again.head, first.head);
    assert_eq!(again.first_stream_seq, first.first_stream_seq);

    let one = log
        .append(&case, Some(&first.head), vec![interaction(&case, "r")])
        .await
        .unwrap();
    // Others append after it; the retry still finds its event in place.
    let two = log
        .append(&case, Some(&one.head), vec![interaction(&case, "later")])
        .await
        .unwrap();
    let retry = log
        .append(&case, Some(&first.head), vec![interaction(&case, "r")])
        .await
        .unwrap();
    assert!(retry.already);
    assert_eq!(retry.head, one.head);
    assert_eq!(log.read(&case, 0).await.unwrap().len(), 4);
    assert_eq!(log.head(&case).await.unwrap(), Some(two.head));
}

/// A batch of 3 reaches a durable consumer as 3 consecutive events; a
/// consumer that comes back resumes after its acknowledgements; a nak is
/// delivered again.
pub async fn batch_reaches_a_consumer_as_consecutive_events<L: CaseLog>(log: L) {
    let case = new_case("conformance");
    let durable = format!("conf-{}", ulid::Ulid::new());
    let a = log.append(&case, None, opening(&case)).await.unwrap();
    let batch = vec![
        interaction(&case, "b1"),
        interaction(&case, "b2"),
        interaction(&case, "b3"),
    ];
    let b = log.append(&case, Some(&a.head), batch).await.unwrap();
    assert_eq!(b.head.case_seq, 5);

    let mut deliveries = log.consume(&durable, &[case.filter()]).await.unwrap();
    // First deliveries in order; event 4 is nak'ed once and must come again.
    let mut got: Vec<(u64, u64)> = Vec::new();
    let mut redelivered = None;
    while got.len() < 5 || redelivered.is_none() {
        let d = next_delivery(&mut deliveries).await;
        let e = d.decode().unwrap();
        let seq = e.envelope.sequence;
        if got.iter().any(|g| g.1 == seq) {
            assert_eq!(seq, 4, "only the nak'ed event comes again");
            redelivered = Some(d.delivered);
            d.ack().await.unwrap();
        } else {
            got.push((d.stream_seq, seq));
            if seq == 4 {
                d.nak(None).await.unwrap();
            } else {
                d.ack().await.unwrap();
            }
        }
    }
    assert!(
        redelivered >= Some(2),
        "the redelivery is counted: {redelivered:?}"
    );
    assert_eq!(
        got.iter().map(|g| g.1).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(got[3].0, got[2].0 + 1);
    assert_eq!(
        got[4].0,
        got[3].0 + 1,
        "the batch is three consecutive stream sequences"
    );
    drop(deliveries);

    let c = log
        .append(&case, Some(&b.head), vec![interaction(&case, "after")])
        .await
        .unwrap();
    let mut resumed = log.consume(&durable, &[case.filter()]).await.unwrap();
    let d = next_delivery(&mut resumed).await;
    assert_eq!(
        d.stream_seq, c.head.stream_seq,
        "resumes after the last ack"
    );
    d.ack().await.unwrap();
}

/// The next delivery, within 10 seconds.
pub async fn next_delivery(d: &mut crate::Deliveries) -> crate::Delivery {
    tokio::time::timeout(Duration::from_secs(10), d.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the stream goes on")
        .expect("a delivery, not an error")
}

/// `writers` tasks race to append `each` events to one case, each append
/// once, decided on the head it just read. Every append either landed
/// exactly once or failed with a conflict; the log is dense and verifies.
pub async fn racing_writers<L: CaseLog>(log: Arc<L>, writers: usize, each: usize) {
    let case = new_case("conformance");
    let opened = log.append(&case, None, opening(&case)).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        let case = case.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcome = Vec::new();
            for i in 0..each {
                let key = format!("w{w}-{i}");
                let head: Option<Head> = log.head(&case).await.expect("head");
                let ev = interaction(&case, &key);
                let id = ev.event_id.to_string();
                match log.append(&case, head.as_ref(), vec![ev]).await {
                    Ok(a) => outcome.push((id, Some(a.head.case_seq))),
                    Err(e) if e.is_conflict() => outcome.push((id, None)),
                    Err(e) => panic!("append {key}: neither landed nor conflicted: {e}"),
                }
            }
            outcome
        }));
    }
    let mut landed: HashMap<String, u64> = HashMap::new();
    let mut conflicted = Vec::new();
    for t in tasks {
        for (id, seq) in t.await.expect("writer task") {
            match seq {
                Some(s) => assert!(landed.insert(id, s).is_none(), "one id landed twice"),
                None => conflicted.push(id),
            }
        }
    }
    let events = log.read(&case, 0).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.envelope.sequence).collect();
    let dense: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, dense, "the log is dense");
    assert_eq!(
        events.len(),
        2 + landed.len(),
        "exactly the landed appends are in the log"
    );
    let mut in_log: HashMap<&str, u64> = HashMap::new();
    for e in &events[2..] {
        assert!(
            in_log
                .insert(&e.envelope.event_id, e.envelope.sequence)
                .is_none(),
            "an event id appears twice"
        );
    }
    for (id, seq) in &landed {
        assert_eq!(
            in_log.get(id.as_str()),
            Some(seq),
            "landed {id} is where its ack said"
        );
    }
    for id in &conflicted {
        assert!(
            !in_log.contains_key(id.as_str()),
            "conflicted {id} was stored"
        );
    }
    assert_eq!(landed.len() + conflicted.len(), writers * each);
    let v = verify_case(log.as_ref(), &case).await;
    assert!(v.is_intact(), "{v:?}");
    assert!(opened.head.case_seq == 2);
}
