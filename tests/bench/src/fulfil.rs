//! `fulfil`: cases per second from the `promise_made` append to
//! `promise_kept` seen on the log, for a 3-step workflow of simulated steps
//! with zero latency (`fulfil`), and the same with the 3 steps done by an
//! in-process external worker over gRPC (`fulfil-external`). nats-server
//! and fulfilment run in-process; cases are opened by appending
//! `case_opened` + `promise_made` through a JetStream log as intake does,
//! with a fixed number of cases in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use casework_caselog::jetstream::{NatsOptions, connect};
use casework_caselog::{CaseKey, CaseLog, JetStreamLog};
use casework_domain::chain::timestamp;
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{CaseId, EventId, NewEvent, Tenant, Writer};
use casework_fulfilment::proto as api;
use casework_testkit::NatsServer;
use futures::StreamExt;
use tokio::sync::{Semaphore, oneshot};

use crate::report::{print, scaled};

const VERSION: &str = "2026-05-01.1";

fn catalog() -> String {
    let step = |service: &str, name: &str, handler: &str| {
        format!(
            "[[services.{service}.steps]]\nname = \"{name}\"\nhandler = {handler}\ntimeout = \"30s\"\n\
             retry = {{ max_attempts = 3, initial_backoff = \"100ms\", max_backoff = \"1s\", multiplier = 2.0, jitter = 0.2 }}\n\n"
        )
    };
    let service = |code: &str, handler: &str| {
        let mut s = format!(
            "[services.{code}]\nname = \"{code}\"\nstages = [\"post_purchase\"]\n\
             promise = {{ deadline = \"1 hours\", outcome = \"Done\" }}\n\n"
        );
        for name in ["one", "two", "three"] {
            s.push_str(&step(code, name, handler));
        }
        s.push_str(&format!(
            "[services.{code}.recovery]\nnegative_feedback_threshold = 2\n\
             on_step_failed = [{{ action = \"retry\", max_retries = 1 }}]\n\
             on_promise_broken = [{{ action = \"apology\" }}]\n\
             on_negative_feedback = [{{ action = \"apology\" }}]\n\
             limits = {{ currency = \"EUR\", auto_approve_limit_minor = 1000, daily_budget_minor = 10000 }}\n\n"
        ));
        s
    };
    format!(
        "version = \"{VERSION}\"\n\n{}{}",
        service(
            "bench_simulate",
            "{ type = \"simulate\", latency_ms = 0, failure_probability = 0.0 }"
        ),
        service(
            "bench_external",
            "{ type = \"external\", task = \"bench_task\" }"
        ),
    )
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

/// Opens `n` cases of `service`, `in_flight` at a time; returns each case's
/// time from the promise to the kept promise, and the elapsed time.
async fn drive(
    intake: Arc<JetStreamLog>,
    waiters: Waiters,
    service: &'static str,
    n: usize,
    in_flight: usize,
) -> (Vec<Duration>, Duration) {
    let permits = Arc::new(Semaphore::new(in_flight));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = permits.clone().acquire_owned().await.expect("permits");
        let (intake, waiters) = (intake.clone(), waiters.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let case = CaseKey {
                tenant: Tenant::parse("bench").expect("tenant"),
                case_id: CaseId::from_ulid(ulid::Ulid::new()),
            };
            let (tx, rx) = oneshot::channel();
            waiters
                .lock()
                .expect("waiters")
                .insert(case.case_id.to_string(), tx);
            let now = chrono::Utc::now();
            let ev = |key: &str, payload| NewEvent {
                event_id: EventId::derive(&case.case_id, "bench", key),
                occurred_at: now,
                causation_id: String::new(),
                correlation_id: case.case_id.to_string(),
                payload,
            };
            let t = Instant::now();
            intake
                .append(
                    &case,
                    None,
                    vec![
                        ev(
                            "opened",
                            Payload::CaseOpened(pb::CaseOpened {
                                customer_id: "bench".into(),
                                service_code: service.into(),
                                ..Default::default()
                            }),
                        ),
                        ev(
                            "promised",
                            Payload::PromiseMade(pb::PromiseMade {
                                service_code: service.into(),
                                catalog_version: VERSION.into(),
                                deadline: Some(timestamp(now + chrono::Duration::hours(1))),
                                ..Default::default()
                            }),
                        ),
                    ],
                )
                .await
                .expect("bench open");
            let kept = tokio::time::timeout(Duration::from_secs(120), rx)
                .await
                .expect("promise kept within 2 minutes")
                .expect("kept signal");
            kept.duration_since(t)
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    for t in tasks {
        latencies.push(t.await.expect("bench case"));
    }
    (latencies, start.elapsed())
}

/// An external worker: polls `bench_task` and completes every task.
async fn worker(addr: std::net::SocketAddr, id: String, stop: casework_fulfilment::Shutdown) {
    let mut c = api::fulfilment_client::FulfilmentClient::connect(format!("http://{addr}"))
        .await
        .expect("worker connects");
    while !stop.is_cancelled() {
        let polled = tokio::select! {
            _ = stop.cancelled() => break,
            r = c.poll_tasks(api::PollTasksRequest {
                worker_id: id.clone(),
                task_kinds: vec!["bench_task".into()],
                max_tasks: 16,
                wait_seconds: 1,
            }) => r,
        };
        let Ok(polled) = polled else { continue };
        for t in polled.into_inner().tasks {
            let _ = c
                .complete_task(api::CompleteTaskRequest {
                    token: t.token,
                    output: Default::default(),
                    worker_id: id.clone(),
                })
                .await;
        }
    }
}

/// Runs both results.
pub async fn fulfil() {
    let server = NatsServer::start();
    let dir = server.scratch_dir().join("fulfil-bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let catalog_path = dir.join("catalog.toml");
    std::fs::write(&catalog_path, catalog()).expect("bench catalogue");
    let concurrency = 256;
    let mut options = casework_fulfilment::default_options();
    options.instance = "fulfilment-bench".into();
    options.data_dir = dir.join("data");
    options.grpc_listen = "127.0.0.1:0".parse().expect("addr");
    options.http_listen = "127.0.0.1:0".parse().expect("addr");
    options.catalog = vec![catalog_path];
    options.nats.url = server.url();
    options.service.concurrency = concurrency;
    let stop = casework_fulfilment::Shutdown::new();
    let running = casework_fulfilment::start(options, stop.clone())
        .await
        .expect("fulfilment starts");

    let client = connect(&NatsOptions {
        url: server.url(),
        ..Default::default()
    })
    .await
    .expect("bench connects");
    let intake = Arc::new(JetStreamLog::new(
        client.clone(),
        "bench-intake",
        Some(Writer::Intake),
    ));
    let waiters: Waiters = Arc::default();
    let from = intake.last_stream_seq().await.expect("last seq") + 1;
    let mut kept = intake
        .tail("case.*.*.fulfilment.promise_kept", from)
        .await
        .expect("tail");
    let dispatch = {
        let waiters = waiters.clone();
        tokio::spawn(async move {
            // A tail's errors (a missed heartbeat on a busy cluster, say)
            // are not its end: the tail re-creates its consumer.
            while let Some(d) = kept.next().await {
                let Ok(d) = d.inspect_err(|e| eprintln!("bench tail: {e} (going on)")) else {
                    continue;
                };
                let seen = Instant::now();
                if let Ok(case) = d.case()
                    && let Some(tx) = waiters
                        .lock()
                        .expect("waiters")
                        .remove(case.case_id.as_str())
                {
                    let _ = tx.send(seen);
                }
            }
        })
    };

    let in_flight = 64;
    let n = scaled(2000);
    let (lat, elapsed) = drive(
        intake.clone(),
        waiters.clone(),
        "bench_simulate",
        n,
        in_flight,
    )
    .await;
    print(
        "fulfil",
        in_flight,
        lat,
        n,
        elapsed,
        serde_json::json!({ "steps": 3, "handler": "simulate", "latency_ms": 0, "reconcile_concurrency": concurrency }),
    );

    let workers_stop = stop.child_token();
    let workers: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn(worker(
                running.grpc,
                format!("bench-worker-{i}"),
                workers_stop.clone(),
            ))
        })
        .collect();
    let n = scaled(1000);
    let (lat, elapsed) = drive(intake, waiters, "bench_external", n, in_flight).await;
    print(
        "fulfil-external",
        in_flight,
        lat,
        n,
        elapsed,
        serde_json::json!({ "steps": 3, "handler": "external", "workers": 8, "reconcile_concurrency": concurrency }),
    );
    workers_stop.cancel();
    for w in workers {
        let _ = w.await;
    }
    dispatch.abort();
    stop.cancel();
    let _ = running.wait().await;
}
