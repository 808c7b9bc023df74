//! Shared test helpers: a real nats-server, a log client that writes every
//! event type, sample cases with realistic lifecycles, and a ledger started
//! in-process on port 0.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use casework_caselog::conformance::new_case;
use casework_caselog::jetstream::{NatsOptions, StreamOptions, connect, ensure_streams};
use casework_caselog::{CaseKey, CaseLog, Head, JetStreamLog};
use casework_domain::chain::timestamp;
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{EventId, NewEvent};
use casework_ledger::ServiceOptions;
use casework_proto::ledger::v1 as api;
use casework_proto::ledger::v1::ledger_client::LedgerClient;
use casework_runtime::{Running, Shutdown};
use casework_testkit::{NatsServer, eventually};
use chrono::{DateTime, Utc};
use tonic::transport::Channel;

pub const WAIT: Duration = Duration::from_secs(20);

/// A log client bound to no writer (it may append every event type).
pub async fn log_for(url: &str) -> Arc<JetStreamLog> {
    let client = connect(&NatsOptions {
        url: url.to_owned(),
        ..Default::default()
    })
    .await
    .expect("connect");
    ensure_streams(&client, &StreamOptions::default())
        .await
        .expect("streams");
    Arc::new(JetStreamLog::new(client, "test-0", None))
}

pub fn ev(case: &CaseKey, key: &str, at: DateTime<Utc>, payload: Payload) -> NewEvent {
    NewEvent {
        event_id: EventId::derive(&case.case_id, "test", key),
        occurred_at: at,
        causation_id: String::new(),
        correlation_id: case.case_id.to_string(),
        payload,
    }
}

pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000, 0).unwrap()
}

pub fn at(s: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(s)
}

/// The decisions of a case whose promise is kept: intake opens and
/// promises, fulfilment runs one step and keeps the promise, intake notifies
/// and closes, then late feedback arrives.
pub fn kept_case(case: &CaseKey) -> Vec<Vec<NewEvent>> {
    let c = case;
    vec![
        vec![
            ev(
                c,
                "opened",
                at(0),
                Payload::CaseOpened(pb::CaseOpened {
                    customer_id: "cust-7".into(),
                    channel: pb::Channel::Web as i32,
                    service_code: "refund".into(),
                    summary: "refund order 42".into(),
                    ..Default::default()
                }),
            ),
            ev(
                c,
                "promised",
                at(0),
                Payload::PromiseMade(pb::PromiseMade {
                    service_code: "refund".into(),
                    catalog_version: "2025-01".into(),
                    catalog_digest: "ab".repeat(32),
                    deadline: Some(timestamp(at(3600))),
                    promised_outcome: "refund issued".into(),
                    ..Default::default()
                }),
            ),
        ],
        vec![
            ev(
                c,
                "run1",
                at(1),
                Payload::FulfilmentStarted(pb::FulfilmentStarted {
                    run: 1,
                    catalog_version: "2025-01".into(),
                    steps: vec!["check".into()],
                }),
            ),
            ev(
                c,
                "s0",
                at(2),
                Payload::StepStarted(pb::StepStarted {
                    run: 1,
                    step_index: 0,
                    step_name: "check".into(),
                    attempt: 1,
                    ..Default::default()
                }),
            ),
        ],
        vec![
            ev(
                c,
                "s0done",
                at(3),
                Payload::StepCompleted(pb::StepCompleted {
                    run: 1,
                    step_index: 0,
                    step_name: "check".into(),
                    attempt: 1,
                    ..Default::default()
                }),
            ),
            ev(
                c,
                "kept",
                at(3),
                Payload::PromiseKept(pb::PromiseKept {
                    run: 1,
                    deadline: Some(timestamp(at(3600))),
                    late: false,
                }),
            ),
        ],
        vec![
            ev(
                c,
                "told",
                at(4),
                Payload::CustomerNotified(pb::CustomerNotified {
                    resolution: pb::Resolution::PromiseKept as i32,
                    ..Default::default()
                }),
            ),
            ev(
                c,
                "closed",
                at(4),
                Payload::CaseClosed(pb::CaseClosed {
                    resolution: pb::Resolution::PromiseKept as i32,
                    summary: "kept".into(),
                }),
            ),
        ],
        vec![ev(
            c,
            "fb",
            at(10),
            Payload::FeedbackReceived(pb::FeedbackReceived {
                score: 5,
                ..Default::default()
            }),
        )],
    ]
}

/// A case whose step fails for good and recovery escalates.
pub fn recovered_case(case: &CaseKey) -> Vec<Vec<NewEvent>> {
    let c = case;
    let mut d = kept_case(case);
    d.truncate(2);
    d.push(vec![
        ev(
            c,
            "s0fail",
            at(5),
            Payload::StepFailed(pb::StepFailed {
                run: 1,
                step_index: 0,
                step_name: "check".into(),
                attempt: 1,
                error: "carrier down".into(),
                ..Default::default()
            }),
        ),
        ev(
            c,
            "failed",
            at(5),
            Payload::FulfilmentFailed(pb::FulfilmentFailed {
                run: 1,
                step_index: 0,
                step_name: "check".into(),
                reason: "carrier down".into(),
            }),
        ),
    ]);
    d.push(vec![
        ev(
            c,
            "r1",
            at(6),
            Payload::RecoveryStarted(pb::RecoveryStarted {
                recovery: 1,
                trigger: pb::RecoveryTrigger::FulfilmentFailed as i32,
                reason: "step check failed".into(),
            }),
        ),
        ev(
            c,
            "sorry",
            at(6),
            Payload::ApologySent(pb::ApologySent {
                recovery: 1,
                message: "sorry".into(),
                ..Default::default()
            }),
        ),
        ev(
            c,
            "comp",
            at(7),
            Payload::CompensationProposed(pb::CompensationProposed {
                recovery: 1,
                compensation_id: "r1-c1".into(),
                kind: "voucher".into(),
                amount: Some(pb::Money {
                    amount_minor: 1000,
                    currency: "EUR".into(),
                }),
                ..Default::default()
            }),
        ),
        ev(
            c,
            "granted",
            at(7),
            Payload::CompensationGranted(pb::CompensationGranted {
                compensation_id: "r1-c1".into(),
                kind: "voucher".into(),
                ..Default::default()
            }),
        ),
        ev(
            c,
            "esc",
            at(8),
            Payload::CaseEscalated(pb::CaseEscalated {
                recovery: 1,
                tier: "tier2".into(),
                reason: "no retry left".into(),
            }),
        ),
        ev(
            c,
            "r1done",
            at(8),
            Payload::RecoveryCompleted(pb::RecoveryCompleted {
                recovery: 1,
                outcome: pb::RecoveryOutcome::Escalated as i32,
                summary: "escalated".into(),
            }),
        ),
    ]);
    d.push(vec![ev(
        c,
        "closed",
        at(9),
        Payload::CaseClosed(pb::CaseClosed {
            resolution: pb::Resolution::Unresolved as i32,
            summary: "escalated".into(),
        }),
    )]);
    d
}

/// Appends decisions to a case; returns its head.
pub async fn append_all(log: &dyn CaseLog, case: &CaseKey, decisions: Vec<Vec<NewEvent>>) -> Head {
    let mut head: Option<Head> = log.head(case).await.expect("head");
    for d in decisions {
        head = Some(
            log.append(case, head.as_ref(), d)
                .await
                .expect("append")
                .head,
        );
    }
    head.expect("at least one decision")
}

/// A new case with the given lifecycle appended.
pub async fn sample(log: &dyn CaseLog, tenant: &str, recovered: bool) -> CaseKey {
    let case = new_case(tenant);
    let d = if recovered {
        recovered_case(&case)
    } else {
        kept_case(&case)
    };
    append_all(log, &case, d).await;
    case
}

pub fn options(url: &str, data: &Path) -> ServiceOptions {
    let mut o = casework_ledger::default_options();
    o.data_dir = data.to_owned();
    o.grpc_listen = "127.0.0.1:0".parse().unwrap();
    o.http_listen = "127.0.0.1:0".parse().unwrap();
    o.nats.url = url.to_owned();
    o
}

pub struct Ledger {
    pub running: Running,
    pub shutdown: Shutdown,
    pub client: LedgerClient<Channel>,
}

impl Ledger {
    pub async fn start(opts: ServiceOptions) -> Ledger {
        let shutdown = Shutdown::new();
        let running = casework_ledger::start(opts, shutdown.clone())
            .await
            .expect("start ledger");
        let client = LedgerClient::connect(format!("http://{}", running.grpc))
            .await
            .expect("grpc connect")
            .max_decoding_message_size(64 << 20);
        Ledger {
            running,
            shutdown,
            client,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.running.wait().await.expect("ledger stopped cleanly");
    }

    /// Waits until the archive holds `events` events of `case`.
    pub async fn wait_for(&self, case: &CaseKey, events: u64) -> api::CaseSummary {
        let client = self.client.clone();
        eventually(
            WAIT,
            &format!("{case} archived with {events} events"),
            || {
                let mut c = client.clone();
                let req = api::GetCaseRequest {
                    tenant: case.tenant.to_string(),
                    case_id: case.case_id.to_string(),
                };
                async move {
                    c.get_case(req)
                        .await
                        .ok()
                        .map(|r| r.into_inner())
                        .filter(|s| s.events >= events)
                }
            },
        )
        .await
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.running.http);
        eventually(WAIT, "ledger ready", || {
            let url = url.clone();
            async move { http_status(&url).await.filter(|s| *s == 200) }
        })
        .await;
    }
}

/// GET `url` over a plain TCP socket (no HTTP client dependency); the
/// status code.
pub async fn http_status(url: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut s = tokio::net::TcpStream::connect(host).await.ok()?;
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Starts a server and a writing log.
pub async fn server() -> (NatsServer, Arc<JetStreamLog>) {
    let s = NatsServer::start();
    let log = log_for(&s.url()).await;
    (s, log)
}
