//! Shared test harness: a real nats-server, a test catalogue with short
//! timeouts, the service started in-process, and intake's side of a case
//! (appending `case_opened` + `promise_made` through a JetStream log).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use casework_caselog::{CaseKey, CaseLog, JetStreamLog, StoredEvent};
use casework_catalog::Catalog;
use casework_domain::chain::timestamp;
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{CaseId, EventId, NewEvent, Tenant, Writer};
use casework_fulfilment::proto::fulfilment_client::FulfilmentClient;
use casework_fulfilment::{ServiceOptions, default_options};
use casework_runtime::options::NatsSettings;
use casework_runtime::{Running, Shutdown};
use casework_testkit::{NatsServer, eventually};
use tonic::transport::Channel;

pub const CATALOG: &str = r#"
version = "2026-05-01.1"

[services.quick]
name = "Quick"
stages = ["post_purchase"]
promise = { deadline = "1 hours", outcome = "Done" }

[[services.quick.steps]]
name = "one"
handler = { type = "simulate", latency_ms = 0, failure_probability = 0.0 }
timeout = "10s"
retry = { max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.2 }

[[services.quick.steps]]
name = "two"
handler = { type = "simulate", latency_ms = 0, failure_probability = 0.0 }
timeout = "10s"
retry = { max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.2 }

[[services.quick.steps]]
name = "three"
handler = { type = "simulate", latency_ms = 0, failure_probability = 0.0 }
timeout = "10s"
retry = { max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.2 }

[services.quick.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "retry", max_retries = 1 }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 10000 }

[services.doomed]
name = "Doomed"
stages = ["post_purchase"]
promise = { deadline = "1 hours", outcome = "Never" }

[[services.doomed.steps]]
name = "always_fails"
handler = { type = "simulate", latency_ms = 10, failure_probability = 1.0 }
timeout = "10s"
retry = { max_attempts = 2, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.2 }

[services.doomed.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "retry", max_retries = 1 }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 10000 }

[services.shipping]
name = "Shipping"
stages = ["post_purchase"]
promise = { deadline = "1 hours", outcome = "Shipped" }

[[services.shipping.steps]]
name = "ship"
handler = { type = "external", task = "ship_parcel" }
timeout = "20s"
retry = { max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.2 }

[[services.shipping.steps]]
name = "confirm"
handler = { type = "manual", queue = "desk" }
timeout = "30s"
retry = { max_attempts = 1, initial_backoff = "0s", max_backoff = "0s", multiplier = 1.0, jitter = 0.0 }

[services.shipping.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "retry", max_retries = 1 }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 10000 }

[services.ignored]
name = "Nobody polls"
stages = ["post_purchase"]
promise = { deadline = "1 hours", outcome = "Never" }

[[services.ignored.steps]]
name = "wait"
handler = { type = "external", task = "nobody_polls_this" }
timeout = "1s"
retry = { max_attempts = 1, initial_backoff = "0s", max_backoff = "0s", multiplier = 1.0, jitter = 0.0 }

[services.ignored.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "retry", max_retries = 1 }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 10000 }

[services.slow]
name = "Slow"
stages = ["post_purchase"]
promise = { deadline = "1 hours", outcome = "Done slowly" }

[[services.slow.steps]]
name = "first"
handler = { type = "simulate", latency_ms = 0, failure_probability = 0.0 }
timeout = "10s"
retry = { max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.2 }

[[services.slow.steps]]
name = "crawl"
handler = { type = "simulate", latency_ms = 2500, failure_probability = 0.0 }
timeout = "4s"
retry = { max_attempts = 3, initial_backoff = "200ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.2 }

[services.slow.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "retry", max_retries = 1 }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 10000 }
"#;

/// A nats-server, a catalogue file and an intake-side log.
pub struct World {
    pub nats: NatsServer,
    pub dir: tempfile::TempDir,
    pub catalog: Catalog,
    pub catalog_path: PathBuf,
    pub intake: Arc<JetStreamLog>,
    pub reader: Arc<JetStreamLog>,
}

pub fn settings(url: &str) -> NatsSettings {
    NatsSettings {
        url: url.to_owned(),
        ..Default::default()
    }
}

impl World {
    pub async fn new() -> Self {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let catalog_path = dir.path().join("catalog.toml");
        std::fs::write(&catalog_path, CATALOG).unwrap();
        let catalog = Catalog::load(&catalog_path).unwrap();
        let client = casework_runtime::nats::connect(&settings(&nats.url()), "test-intake")
            .await
            .unwrap();
        let intake = Arc::new(JetStreamLog::new(
            client.clone(),
            "intake-test",
            Some(Writer::Intake),
        ));
        let reader = Arc::new(JetStreamLog::new(client, "reader", None));
        Self {
            nats,
            dir,
            catalog,
            catalog_path,
            intake,
            reader,
        }
    }

    pub fn options(&self, instance: &str) -> ServiceOptions {
        let mut o = default_options();
        o.instance = instance.to_owned();
        o.data_dir = self.dir.path().join(instance);
        o.grpc_listen = "127.0.0.1:0".parse().unwrap();
        o.http_listen = "127.0.0.1:0".parse().unwrap();
        o.catalog = vec![self.catalog_path.clone()];
        o.nats = settings(&self.nats.url());
        o.service.lease_seconds = 5;
        o
    }

    /// Starts a replica; returns it with its shutdown token.
    pub async fn start(&self, instance: &str) -> (Running, Shutdown) {
        let shutdown = Shutdown::new();
        let running = casework_fulfilment::start(self.options(instance), shutdown.clone())
            .await
            .unwrap();
        (running, shutdown)
    }

    /// Opens a case for `service` the way intake does.
    pub async fn open_case(&self, service: &str) -> CaseKey {
        self.open_case_pinned(
            service,
            &self.catalog.version().to_string(),
            self.catalog.digest(),
        )
        .await
    }

    pub async fn open_case_pinned(&self, service: &str, version: &str, digest: &str) -> CaseKey {
        let case = CaseKey {
            tenant: Tenant::parse("acme").unwrap(),
            case_id: CaseId::from_ulid(ulid::Ulid::new()),
        };
        let now = chrono::Utc::now();
        let ev = |key: &str, payload| NewEvent {
            event_id: EventId::derive(&case.case_id, "test-open", key),
            occurred_at: now,
            causation_id: String::new(),
            correlation_id: case.case_id.to_string(),
            payload,
        };
        self.intake
            .append(
                &case,
                None,
                vec![
                    ev(
                        "opened",
                        Payload::CaseOpened(pb::CaseOpened {
                            customer_id: "cust-1".into(),
                            service_code: service.into(),
                            summary: "test case".into(),
                            attributes: [("order".to_owned(), "A-1".to_owned())].into(),
                            ..Default::default()
                        }),
                    ),
                    ev(
                        "promised",
                        Payload::PromiseMade(pb::PromiseMade {
                            service_code: service.into(),
                            catalog_version: version.into(),
                            catalog_digest: digest.into(),
                            deadline: Some(timestamp(now + chrono::Duration::hours(1))),
                            ..Default::default()
                        }),
                    ),
                ],
            )
            .await
            .unwrap();
        case
    }

    /// A log writing as `writer` (recovery's side of a case, or a
    /// fulfilment replica that died part-way through a decision).
    pub async fn log_as(&self, writer: Writer, instance: &str) -> JetStreamLog {
        let client = casework_runtime::nats::connect(&settings(&self.nats.url()), instance)
            .await
            .unwrap();
        JetStreamLog::new(client, instance, Some(writer))
    }

    pub async fn events(&self, case: &CaseKey) -> Vec<StoredEvent> {
        self.reader.read(case, 0).await.unwrap()
    }

    /// Waits until the case's log has an event of `event_type`; returns
    /// the log.
    pub async fn wait_for(
        &self,
        case: &CaseKey,
        event_type: &str,
        within: Duration,
    ) -> Vec<StoredEvent> {
        eventually(within, &format!("{event_type} on {case}"), || async {
            let evs = self.events(case).await;
            evs.iter()
                .any(|e| e.envelope.event_type == event_type)
                .then_some(evs)
        })
        .await
    }
}

pub fn types(events: &[StoredEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.envelope.event_type.clone())
        .collect()
}

pub fn count(events: &[StoredEvent], event_type: &str) -> usize {
    events
        .iter()
        .filter(|e| e.envelope.event_type == event_type)
        .count()
}

/// Checks the log is dense, chained, with unique ids and no (run, step,
/// attempt) started twice.
pub fn assert_sound(case: &CaseKey, events: &[StoredEvent]) {
    let raw: Vec<_> = events.iter().map(StoredEvent::raw).collect();
    let v = casework_domain::verify(&case.tenant, &case.case_id, &raw, None);
    assert!(v.is_intact(), "{case}: chain broken: {v:?}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.envelope.sequence, i as u64 + 1, "{case}: dense sequence");
    }
    let mut ids = HashSet::new();
    for e in events {
        assert!(
            ids.insert(e.envelope.event_id.clone()),
            "{case}: duplicate event id {}",
            e.envelope.event_id
        );
    }
    let mut started = HashMap::new();
    for e in events {
        if let Some(Payload::StepStarted(s)) = &e.envelope.payload {
            *started.entry((s.run, s.step_index, s.attempt)).or_insert(0) += 1;
        }
    }
    assert!(
        started.values().all(|n| *n == 1),
        "{case}: an attempt started twice: {started:?}"
    );
}

pub async fn client(running: &Running) -> FulfilmentClient<Channel> {
    FulfilmentClient::connect(format!("http://{}", running.grpc))
        .await
        .unwrap()
}
