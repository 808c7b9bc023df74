//! `append` and `replay`: the per-case log through casework-caselog, and the
//! same work on bare JetStream (`-raw`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use casework_caselog::conformance::{interaction, new_case};
use casework_caselog::jetstream::{NatsOptions, StreamOptions, connect, ensure_streams};
use casework_caselog::{CaseKey, CaseLog, JetStreamLog};
use casework_testkit::NatsServer;
use futures::StreamExt;

use crate::report::{print, scaled};

async fn setup() -> (NatsServer, Arc<JetStreamLog>) {
    let server = NatsServer::start();
    let client = connect(&NatsOptions {
        url: server.url(),
        ..Default::default()
    })
    .await
    .expect("connect to the bench nats-server");
    ensure_streams(&client, &StreamOptions::default())
        .await
        .expect("streams");
    let log = JetStreamLog::new(client, "bench-0", None);
    (server, Arc::new(log))
}

/// Appends `per_task` decisions of `events` events to one case per task,
/// `concurrency` tasks at once, through casework-caselog.
async fn via_caselog(
    log: Arc<JetStreamLog>,
    events: usize,
    concurrency: usize,
    per_task: usize,
) -> (Vec<Duration>, Duration) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move {
                let case = new_case("bench");
                let mut head = None;
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let evs = (0..events)
                        .map(|j| interaction(&case, &format!("{i}-{j}")))
                        .collect();
                    let t = Instant::now();
                    let a = log
                        .append(&case, head.as_ref(), evs)
                        .await
                        .expect("bench append");
                    lat.push(t.elapsed());
                    head = Some(a.head);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("bench task"));
    }
    (all, start.elapsed())
}

fn raw_headers(case: &CaseKey, id: &str, i: usize) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", id);
    for (k, v) in [
        ("ce-specversion", "1.0".to_owned()),
        ("ce-id", id.to_owned()),
        ("ce-source", format!("/casework/{}/intake", case.tenant)),
        (
            "ce-type",
            "casework.events.v1.interaction_recorded".to_owned(),
        ),
        ("ce-subject", case.case_id.to_string()),
        ("ce-time", chrono::Utc::now().to_rfc3339()),
        ("ce-tenant", case.tenant.to_string()),
        ("ce-casesequence", i.to_string()),
        (
            "content-type",
            casework_caselog::headers::CONTENT_TYPE.to_owned(),
        ),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        ),
    ] {
        h.insert(k, v.as_str());
    }
    h
}

/// The same workload as bare JetStream publishes with the same headers
/// (message id, expected last subject sequence, CloudEvents,
/// traceparent) and payloads of the same size, without sealing or hashing.
async fn via_raw(
    client: async_nats::Client,
    events: usize,
    concurrency: usize,
    per_task: usize,
) -> (Vec<Duration>, Duration) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let case = new_case("bench");
                let filter = case.filter();
                let subject = format!(
                    "case.{}.{}.intake.interaction_recorded",
                    case.tenant, case.case_id
                );
                let payload = bytes::Bytes::from(vec![b'x'; 160]);
                let mut last = 0u64;
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let t = Instant::now();
                    // One event per append, each on the sequence the
                    // previous one returned (as the log does).
                    for j in 0..events {
                        let id = ulid::Ulid::new().to_string();
                        let mut h = raw_headers(&case, &id, i * events + j);
                        h.insert(
                            "Nats-Expected-Last-Subject-Sequence",
                            last.to_string().as_str(),
                        );
                        h.insert(
                            "Nats-Expected-Last-Subject-Sequence-Subject",
                            filter.as_str(),
                        );
                        let reply = client
                            .request_with_headers(subject.clone(), h, payload.clone())
                            .await
                            .expect("raw request");
                        let v: serde_json::Value =
                            serde_json::from_slice(&reply.payload).expect("raw ack");
                        last = v["seq"].as_u64().unwrap_or_else(|| panic!("raw ack: {v}"));
                    }
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("bench task"));
    }
    (all, start.elapsed())
}

/// The `append` scenarios.
pub async fn append() {
    let (_server, log) = setup().await;
    for (events, concurrency, decisions) in
        [(1, 1, 2000), (1, 64, 20_000), (3, 1, 1000), (3, 64, 10_000)]
    {
        let decisions = scaled(decisions).max(concurrency);
        let per_task = decisions / concurrency;
        let extra = serde_json::json!({ "events_per_append": events, "sync_interval": "always", "unit": "events" });
        let (lat, el) = via_caselog(log.clone(), events, concurrency, per_task).await;
        let n = lat.len() * events;
        print(
            &format!("append-{events}ev"),
            concurrency,
            lat,
            n,
            el,
            extra.clone(),
        );
        let (lat, el) = via_raw(log.client().clone(), events, concurrency, per_task).await;
        let n = lat.len() * events;
        print(
            &format!("append-{events}ev-raw"),
            concurrency,
            lat,
            n,
            el,
            extra,
        );
    }
}

/// The `replay` scenarios: read one case of 10,000 events.
pub async fn replay() {
    let (_server, log) = setup().await;
    let events = scaled(10_000);
    let case = new_case("bench");
    let mut head = None;
    let mut i = 0;
    while i < events {
        let k = (events - i).min(100);
        let evs = (0..k)
            .map(|j| interaction(&case, &format!("{}", i + j)))
            .collect();
        head = Some(
            log.append(&case, head.as_ref(), evs)
                .await
                .expect("fill")
                .head,
        );
        i += k;
    }
    let rounds = 5;
    let extra = serde_json::json!({ "events_in_case": events, "unit": "events", "rounds": rounds });
    let mut lat = Vec::new();
    let start = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        let got = log.read(&case, 0).await.expect("replay");
        assert_eq!(got.len(), events);
        lat.push(t.elapsed());
    }
    print(
        "replay",
        1,
        lat,
        events * rounds,
        start.elapsed(),
        extra.clone(),
    );

    let js = async_nats::jetstream::new(log.client().clone());
    let stream = js.get_stream("CASES").await.expect("stream");
    let mut lat = Vec::new();
    let start = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: case.filter(),
                ..Default::default()
            })
            .await
            .expect("ordered consumer");
        let mut msgs = consumer.messages().await.expect("messages");
        let mut n = 0;
        while n < events {
            msgs.next().await.expect("more").expect("message");
            n += 1;
        }
        lat.push(t.elapsed());
    }
    print(
        "replay-raw",
        1,
        lat,
        events * rounds,
        start.elapsed(),
        extra,
    );
}
