//! `replay-ledger` and `subscribe`: the ledger in-process on its own
//! nats-server.
//!
//! - `replay-ledger`: one case of 10,000 events; `replay-ledger-rebuild` is
//!   the whole archive rebuilt from the stream by a ledger started on an
//!   empty data directory (events/s until the last event is archived);
//!   `replay-ledger` replays the case from the archive with ReplayCase (fold
//!   of every event, final state), `replay-ledger-history` reads it with
//!   GetHistory in pages of 1,000.
//! - `subscribe`: 50,000 events in 500 cases; events/s delivered through
//!   gRPC Subscribe from the beginning (after the archive caught up), and
//!   `subscribe-raw`: the same events through a bare ordered consumer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use casework_caselog::conformance::{interaction, new_case};
use casework_caselog::jetstream::{NatsOptions, StreamOptions, connect, ensure_streams};
use casework_caselog::{CaseKey, CaseLog, JetStreamLog};
use casework_ledger::proto as api;
use casework_testkit::NatsServer;
use futures::StreamExt;

use crate::report::{print, scaled};

/// Runs `replay-ledger` or `subscribe`.
pub async fn run(scenario: &str) {
    match scenario {
        "replay-ledger" => replay_ledger().await,
        _ => subscribe().await,
    }
}

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
    (server, Arc::new(JetStreamLog::new(client, "bench-0", None)))
}

/// Appends `events` interaction events to `case` in decisions of `per`.
async fn fill(log: &JetStreamLog, case: &CaseKey, events: usize, per: usize) {
    let mut head = None;
    let mut i = 0;
    while i < events {
        let k = (events - i).min(per);
        let evs = (0..k)
            .map(|j| interaction(case, &format!("{}", i + j)))
            .collect();
        head = Some(
            log.append(case, head.as_ref(), evs)
                .await
                .expect("fill")
                .head,
        );
        i += k;
    }
}

struct Ledger {
    _data: casework_testkit::TempDir,
    running: casework_ledger::Running,
    shutdown: casework_ledger::Shutdown,
}

async fn start_ledger(url: &str) -> Ledger {
    let data = casework_testkit::TempDir::new().expect("tempdir");
    let mut o = casework_ledger::default_options();
    o.data_dir = data.path().to_owned();
    o.grpc_listen = "127.0.0.1:0".parse().expect("addr");
    o.http_listen = "127.0.0.1:0".parse().expect("addr");
    o.nats.url = url.to_owned();
    let shutdown = casework_ledger::Shutdown::new();
    let running = casework_ledger::start(o, shutdown.clone())
        .await
        .expect("start the ledger");
    Ledger {
        _data: data,
        running,
        shutdown,
    }
}

impl Ledger {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.running.wait().await;
    }
}

async fn replay_ledger() {
    let (server, log) = setup().await;
    let events = scaled(10_000);
    let case = new_case("bench");
    fill(&log, &case, events, 100).await;

    // Rebuild: a ledger on an empty data directory archives the stream.
    let start = Instant::now();
    let ledger = start_ledger(&server.url()).await;
    let mut client = casework_ledger::client(&ledger.running.grpc.to_string())
        .await
        .expect("client");
    let req = api::GetCaseRequest {
        tenant: case.tenant.to_string(),
        case_id: case.case_id.to_string(),
    };
    casework_testkit::eventually_explained(
        Duration::from_secs(3600),
        Duration::from_millis(5),
        "the rebuilt archive to hold the whole case",
        || {
            let (mut client, req) = (client.clone(), req.clone());
            async move {
                let got = client
                    .get_case(req)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .events;
                if got >= events as u64 {
                    Ok(())
                } else {
                    Err(format!("{got} of {events} events"))
                }
            }
        },
    )
    .await;
    let elapsed = start.elapsed();
    print(
        "replay-ledger-rebuild",
        1,
        vec![elapsed],
        events,
        elapsed,
        serde_json::json!({ "unit": "events", "events_in_stream": events, "what": "empty data dir to fully archived, incl. start-up" }),
    );

    let rounds = 5;
    let extra = serde_json::json!({ "events_in_case": events, "unit": "events", "rounds": rounds });
    let mut lat = Vec::new();
    let start = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        let mut s = client
            .replay_case(api::ReplayCaseRequest {
                tenant: case.tenant.to_string(),
                case_id: case.case_id.to_string(),
                ..Default::default()
            })
            .await
            .expect("replay")
            .into_inner();
        let step = s.message().await.expect("step").expect("one step");
        assert_eq!(step.state.expect("state").events, events as u64);
        lat.push(t.elapsed());
    }
    print(
        "replay-ledger",
        1,
        lat,
        events * rounds,
        start.elapsed(),
        serde_json::json!({ "unit": "events", "rounds": rounds, "events_in_case": events, "rpc": "ReplayCase (final state)" }),
    );

    let mut lat = Vec::new();
    let start = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        let mut token = String::new();
        let mut n = 0;
        loop {
            let p = client
                .get_history(api::GetHistoryRequest {
                    tenant: case.tenant.to_string(),
                    case_id: case.case_id.to_string(),
                    page_size: 1000,
                    page_token: token,
                })
                .await
                .expect("history")
                .into_inner();
            n += p.events.len();
            if p.next_page_token.is_empty() {
                break;
            }
            token = p.next_page_token;
        }
        assert_eq!(n, events);
        lat.push(t.elapsed());
    }
    let mut extra = extra;
    extra["rpc"] = "GetHistory, pages of 1000".into();
    print(
        "replay-ledger-history",
        1,
        lat,
        events * rounds,
        start.elapsed(),
        extra,
    );
    ledger.stop().await;
}

async fn subscribe() {
    let (server, log) = setup().await;
    let total = scaled(50_000);
    let cases = 500.min(total);
    let per_case = total / cases;
    let total = per_case * cases;
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                for _ in (w..cases).step_by(64) {
                    let case = new_case("bench");
                    fill(&log, &case, per_case, 10).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("fill task");
    }
    let last = log.last_stream_seq().await.expect("last");
    let ledger = start_ledger(&server.url()).await;
    let mut client = casework_ledger::client(&ledger.running.grpc.to_string())
        .await
        .expect("client");
    // Wait until the archive holds everything (Subscribe from "now" after
    // the last event gives its start).
    loop {
        if let Ok(mut s) = client
            .subscribe(api::SubscribeRequest {
                after_position: casework_ledger::position::position(last - 1),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
            && let Ok(Ok(Some(_))) =
                tokio::time::timeout(Duration::from_millis(200), s.message()).await
        {
            break;
        }
    }

    let chunk = 1000;
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut s = client
        .subscribe(api::SubscribeRequest {
            start: api::Start::Beginning as i32,
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut n = 0;
    let mut t = Instant::now();
    while n < total {
        s.message().await.expect("event").expect("open");
        n += 1;
        if n % chunk == 0 {
            lat.push(t.elapsed());
            t = Instant::now();
        }
    }
    print(
        "subscribe",
        1,
        lat,
        total,
        start.elapsed(),
        serde_json::json!({ "unit": "events", "cases": cases, "latency_per": "1000 events", "from": "beginning, archive caught up" }),
    );
    drop(s);

    let js = async_nats::jetstream::new(log.client().clone());
    let stream = js.get_stream("CASES").await.expect("stream");
    let mut lat = Vec::new();
    let start = Instant::now();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "case.>".into(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut msgs = consumer.messages().await.expect("messages");
    let mut n = 0;
    let mut t = Instant::now();
    while n < total {
        msgs.next().await.expect("more").expect("message");
        n += 1;
        if n % chunk == 0 {
            lat.push(t.elapsed());
            t = Instant::now();
        }
    }
    print(
        "subscribe-raw",
        1,
        lat,
        total,
        start.elapsed(),
        serde_json::json!({ "unit": "events", "cases": cases, "latency_per": "1000 events", "what": "bare ordered consumer" }),
    );
    ledger.stop().await;
}
