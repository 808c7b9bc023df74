//! Intake against a real nats-server (one per test) and real redb files:
//! the gRPC API, the closing loop, two replicas, and rebuilding the read
//! model on an empty data directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use casework_caselog::{CaseKey, CaseLog, JetStreamLog};
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{EventId, NewEvent, Writer};
use casework_intake::{ServiceOptions, default_options, start};
use casework_proto::intake::v1 as api;
use casework_proto::intake::v1::intake_client::IntakeClient;
use casework_runtime::{Running, Shutdown};
use casework_testkit::{NatsServer, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn options(nats: &NatsServer, data_dir: &Path, instance: &str) -> ServiceOptions {
    let mut o = default_options();
    o.instance = instance.to_owned();
    o.data_dir = data_dir.to_owned();
    o.nats.url = nats.url();
    o.grpc_listen = "127.0.0.1:0".parse().unwrap();
    // The options refuse equal gRPC and HTTP addresses, port 0 included.
    o.http_listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    o.service.read_your_writes_timeout_ms = 5000;
    o
}

struct Intake {
    running: Running,
    shutdown: Shutdown,
    client: IntakeClient<Channel>,
}

impl Intake {
    async fn start(nats: &NatsServer, data_dir: &Path, instance: &str) -> Self {
        let shutdown = Shutdown::new();
        let running = start(options(nats, data_dir, instance), shutdown.clone())
            .await
            .expect("intake starts");
        let client = IntakeClient::connect(format!("http://{}", running.grpc))
            .await
            .expect("gRPC connects");
        Self {
            running,
            shutdown,
            client,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.running.wait().await.expect("clean shutdown");
    }

    async fn ready(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(self.running.http).await else {
            return false;
        };
        if s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")
    }

    async fn get(&self, tenant: &str, case_id: &str) -> Result<api::Case, tonic::Status> {
        self.client
            .clone()
            .get_case(api::GetCaseRequest {
                tenant: tenant.into(),
                case_id: case_id.into(),
            })
            .await
            .map(|r| r.into_inner().case.expect("a case"))
    }

    async fn open(
        &self,
        req: api::OpenCaseRequest,
    ) -> Result<api::OpenCaseResponse, tonic::Status> {
        self.client
            .clone()
            .open_case(req)
            .await
            .map(|r| r.into_inner())
    }
}

fn open_req(key: &str) -> api::OpenCaseRequest {
    api::OpenCaseRequest {
        tenant: "acme".into(),
        customer_id: "cust-1".into(),
        channel: pb::Channel::Chat as i32,
        purchase_stage: pb::PurchaseStage::PostPurchase as i32,
        service_code: "refund".into(),
        summary: "Returned the kettle, want my money back".into(),
        attributes: [("order".to_owned(), "A-100".to_owned())].into(),
        idempotency_key: key.into(),
        opened_by: None,
        ..Default::default()
    }
}

async fn writer_log(nats: &NatsServer, writer: Writer) -> JetStreamLog {
    let client = async_nats::connect(nats.url()).await.expect("nats");
    JetStreamLog::new(client, &format!("{writer}-test"), Some(writer))
}

async fn reader(nats: &NatsServer) -> JetStreamLog {
    let client = async_nats::connect(nats.url()).await.expect("nats");
    JetStreamLog::new(client, "test-reader", None)
}

fn key(case_id: &str) -> CaseKey {
    CaseKey::parse("acme", case_id).unwrap()
}

/// Appends `payloads` (of one writer) to the case after its head.
async fn append(log: &JetStreamLog, case: &CaseKey, payloads: Vec<Payload>) {
    let head = log.head(case).await.unwrap();
    let cause = head
        .as_ref()
        .map(|h| h.event_id.clone())
        .unwrap_or_default();
    let events = payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| NewEvent {
            event_id: EventId::derive(&case.case_id, &cause, &format!("test/{i}")),
            occurred_at: chrono::Utc::now(),
            causation_id: cause.clone(),
            correlation_id: case.case_id.to_string(),
            payload,
        })
        .collect();
    log.append(case, head.as_ref(), events).await.unwrap();
}

async fn event_types(log: &JetStreamLog, case: &CaseKey) -> Vec<String> {
    log.read(case, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.envelope.event_type)
        .collect()
}

async fn wait_closed(intake: &Intake, case_id: &str) -> api::Case {
    eventually(WAIT, "the case to be closed", || async {
        let c = intake.get("acme", case_id).await.ok()?;
        (c.status == api::CaseStatus::Closed as i32).then_some(c)
    })
    .await
}

fn kept() -> Vec<Payload> {
    vec![
        Payload::FulfilmentStarted(pb::FulfilmentStarted {
            run: 1,
            ..Default::default()
        }),
        Payload::PromiseKept(pb::PromiseKept {
            run: 1,
            ..Default::default()
        }),
    ]
}

#[tokio::test]
async fn open_then_get_at_once() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::start(&nats, dir.path(), "intake-a").await;
    let opened = intake.open(open_req("")).await.unwrap();
    let promise = opened.promise.clone().unwrap();
    assert!(!opened.replayed);
    assert_eq!(promise.service_code, "refund");
    assert_eq!(promise.deadline_rule, "3 business days");
    assert_eq!(
        promise.catalog_version,
        casework_catalog::sample().version().to_string()
    );
    // no waiting: the caller reads its own write
    let c = intake.get("acme", &opened.case_id).await.unwrap();
    assert_eq!(c.case_id, opened.case_id);
    assert_eq!(c.customer_id, "cust-1");
    assert_eq!(c.status, api::CaseStatus::Open as i32);
    assert_eq!(c.promise.unwrap().deadline, promise.deadline);
    assert_eq!(c.event_count, 2);
    let head = c.head.unwrap();
    assert_eq!(head.sequence, 2);
    assert_eq!(head.hash.len(), 64);
    assert!(!c.breached);
    // the log holds exactly the two opening events
    let log = reader(&nats).await;
    assert_eq!(
        event_types(&log, &key(&opened.case_id)).await,
        ["case_opened", "promise_made"]
    );
    let raw = log.read_raw(&key(&opened.case_id)).await.unwrap();
    let k = key(&opened.case_id);
    assert!(casework_domain::verify(&k.tenant, &k.case_id, &raw, None).is_intact());
    intake.stop().await;
}

#[tokio::test]
async fn open_case_is_idempotent_forever() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::start(&nats, dir.path(), "intake-a").await;
    let first = intake.open(open_req("order-A-100")).await.unwrap();
    let again = intake.open(open_req("order-A-100")).await.unwrap();
    assert_eq!(again.case_id, first.case_id);
    assert_eq!(again.promise, first.promise);
    assert_eq!(again.opened_at, first.opened_at);
    assert!(again.replayed);
    // the same key for another request
    let mut other = open_req("order-A-100");
    other.customer_id = "cust-2".into();
    let e = intake.open(other).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e}");
    assert!(e.message().contains("idempotency_key"), "{e}");
    // without a key every call is a new case
    let a = intake.open(open_req("")).await.unwrap();
    let b = intake.open(open_req("")).await.unwrap();
    assert_ne!(a.case_id, b.case_id);
    let log = reader(&nats).await;
    assert_eq!(event_types(&log, &key(&first.case_id)).await.len(), 2);
    intake.stop().await;
}

#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::start(&nats, dir.path(), "intake-a").await;
    let log = reader(&nats).await;
    let before = log.last_stream_seq().await.unwrap();
    type Mutate = fn(&mut api::OpenCaseRequest);
    let cases: &[(Mutate, &str)] = &[
        (|r| r.service_code = "teleport".into(), "service_code"),
        (|r| r.service_code = "order_change".into(), "service_code"),
        (|r| r.channel = 0, "channel"),
        (|r| r.purchase_stage = 0, "purchase_stage"),
        (|r| r.customer_id = String::new(), "customer_id"),
        (|r| r.summary = "x".repeat(2001), "summary"),
        (|r| r.tenant = "ACME".into(), "tenant"),
        (|r| r.idempotency_key = "k".repeat(200), "idempotency_key"),
    ];
    for (mutate, field) in cases {
        let mut r = open_req("bad-1");
        mutate(&mut r);
        let e = intake.open(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e}");
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    let e = intake.get("acme", "not-a-case").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("case_id"), "{e}");
    let e = intake
        .client
        .clone()
        .submit_feedback(api::SubmitFeedbackRequest {
            tenant: "acme".into(),
            case_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2B".into(),
            score: 9,
            channel: pb::Channel::Web as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("score"), "{e}");
    let e = intake
        .client
        .clone()
        .list_cases(api::ListCasesRequest {
            tenant: "acme".into(),
            page_size: 501,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("page_size"), "{e}");
    assert_eq!(
        log.last_stream_seq().await.unwrap(),
        before,
        "nothing written"
    );
    intake.stop().await;
}

/// Every string field of every intake RPC, each set to each input of the
/// shared bad-text list ([`casework_domain::text::BAD_TEXT`]): refused
/// INVALID_ARGUMENT naming the field, and nothing is written.
#[tokio::test]
async fn every_text_field_refuses_control_and_bidi_characters() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::start(&nats, dir.path(), "intake-a").await;
    let log = reader(&nats).await;
    let before = log.last_stream_seq().await.unwrap();
    let case_id = "01JD8X3V5R6M2Q4T7W9Y0Z1A2B";
    fn person() -> Option<pb::Actor> {
        Some(pb::Actor {
            kind: pb::ActorKind::Person as i32,
            id: "ada".into(),
            display_name: "Ada Agent".into(),
            authenticated_by: String::new(),
        })
    }
    let interaction = || api::RecordInteractionRequest {
        tenant: "acme".into(),
        case_id: case_id.into(),
        channel: pb::Channel::Chat as i32,
        direction: pb::Direction::Inbound as i32,
        summary: "asked where the kettle is".into(),
        actor: person(),
        request_id: "r-1".into(),
    };
    let feedback = || api::SubmitFeedbackRequest {
        tenant: "acme".into(),
        case_id: case_id.into(),
        score: 4,
        comment: "fine".into(),
        channel: pb::Channel::Web as i32,
        request_id: "r-2".into(),
    };
    let withdraw = || api::WithdrawCaseRequest {
        tenant: "acme".into(),
        case_id: case_id.into(),
        reason: "bought elsewhere".into(),
        actor: person(),
        request_id: "r-3".into(),
    };
    type Open = fn(&mut api::OpenCaseRequest, &str);
    let open_fields: &[(&str, Open)] = &[
        ("customer_id", |r, v| r.customer_id = format!("c{v}")),
        ("summary", |r, v| r.summary = v.into()),
        ("attributes (key)", |r, v| {
            r.attributes.insert(v.into(), "x".into());
        }),
        ("attributes[order]", |r, v| {
            r.attributes.insert("order".into(), v.into());
        }),
        ("idempotency_key", |r, v| r.idempotency_key = v.into()),
        ("opened_by.id", |r, v| {
            r.opened_by = person().map(|a| pb::Actor { id: v.into(), ..a })
        }),
        ("opened_by.display_name", |r, v| {
            r.opened_by = person().map(|a| pb::Actor {
                display_name: v.into(),
                ..a
            })
        }),
    ];
    type Interaction = fn(&mut api::RecordInteractionRequest, &str);
    let interaction_fields: &[(&str, Interaction)] = &[
        ("summary", |r, v| r.summary = v.into()),
        ("request_id", |r, v| r.request_id = v.into()),
        ("actor.id", |r, v| r.actor.as_mut().unwrap().id = v.into()),
        ("actor.display_name", |r, v| {
            r.actor.as_mut().unwrap().display_name = v.into()
        }),
    ];
    type Feedback = fn(&mut api::SubmitFeedbackRequest, &str);
    let feedback_fields: &[(&str, Feedback)] = &[
        ("comment", |r, v| r.comment = v.into()),
        ("request_id", |r, v| r.request_id = v.into()),
    ];
    type Withdraw = fn(&mut api::WithdrawCaseRequest, &str);
    let withdraw_fields: &[(&str, Withdraw)] = &[
        ("reason", |r, v| r.reason = v.into()),
        ("request_id", |r, v| r.request_id = v.into()),
        ("actor.id", |r, v| r.actor.as_mut().unwrap().id = v.into()),
    ];
    let mut client = intake.client.clone();
    for (bad, found) in casework_domain::text::BAD_TEXT {
        for (field, set) in open_fields {
            let mut r = open_req("hygiene");
            set(&mut r, bad);
            let out = client.open_case(r).await.map(drop);
            casework_testkit::assert_invalid_field(
                &format!("OpenCase {field} {bad:?}"),
                field,
                found,
                out,
            );
        }
        for (field, set) in interaction_fields {
            let mut r = interaction();
            set(&mut r, bad);
            let out = client.record_interaction(r).await.map(drop);
            casework_testkit::assert_invalid_field(
                &format!("RecordInteraction {field} {bad:?}"),
                field,
                found,
                out,
            );
        }
        for (field, set) in feedback_fields {
            let mut r = feedback();
            set(&mut r, bad);
            let out = client.submit_feedback(r).await.map(drop);
            casework_testkit::assert_invalid_field(
                &format!("SubmitFeedback {field} {bad:?}"),
                field,
                found,
                out,
            );
        }
        for (field, set) in withdraw_fields {
            let mut r = withdraw();
            set(&mut r, bad);
            let out = client.withdraw_case(r).await.map(drop);
            casework_testkit::assert_invalid_field(
                &format!("WithdrawCase {field} {bad:?}"),
                field,
                found,
                out,
            );
        }
        let out = client
            .list_cases(api::ListCasesRequest {
                tenant: "acme".into(),
                customer_id: format!("c{bad}"),
                ..Default::default()
            })
            .await
            .map(drop);
        casework_testkit::assert_invalid_field(
            &format!("ListCases customer_id {bad:?}"),
            "customer_id",
            found,
            out,
        );
    }
    // Free text keeps its line breaks; a person with no id is refused.
    let mut r = open_req("hygiene-ok");
    r.summary = "Returned the kettle.\n\tOrder A-100.".into();
    client.open_case(r).await.expect("line breaks in a summary");
    let mut r = open_req("hygiene-nobody");
    r.opened_by = Some(pb::Actor {
        kind: pb::ActorKind::Person as i32,
        ..Default::default()
    });
    let e = client.open_case(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("empty id"), "{e:?}");
    assert_eq!(
        log.last_stream_seq().await.unwrap(),
        before + 2,
        "only the good case was written (its two events)"
    );
    intake.stop().await;
}

/// An OpenCaseRequest as a client with broken encoding would send it: its
/// `tenant` (field 1, a string) carries bytes that are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct NotUtf8 {
    #[prost(bytes = "vec", tag = "1")]
    tenant: Vec<u8>,
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::start(&nats, dir.path(), "intake-a").await;
    let log = reader(&nats).await;
    let before = log.last_stream_seq().await.unwrap();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", intake.running.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let e = grpc
        .unary(
            tonic::Request::new(NotUtf8 {
                tenant: vec![0x61, 0xff, 0xfe],
            }),
            http::uri::PathAndQuery::from_static("/casework.intake.v1.Intake/OpenCase"),
            tonic_prost::ProstCodec::<NotUtf8, api::OpenCaseResponse>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("OpenCase") && e.message().contains("UTF-8"),
        "{e:?}"
    );
    assert_eq!(
        log.last_stream_seq().await.unwrap(),
        before,
        "nothing written"
    );
    intake.stop().await;
}

#[tokio::test]
async fn unknown_cases_and_refused_transitions() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::start(&nats, dir.path(), "intake-a").await;
    let mut client = intake.client.clone();
    let unknown = "01JD8X3V5R6M2Q4T7W9Y0Z1A2B";
    let e = intake.get("acme", unknown).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = client
        .record_interaction(api::RecordInteractionRequest {
            tenant: "acme".into(),
            case_id: unknown.into(),
            channel: pb::Channel::Phone as i32,
            direction: pb::Direction::Inbound as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");

    let opened = intake.open(open_req("")).await.unwrap();
    // an interaction, retried with the same request id, is recorded once
    let interaction = api::RecordInteractionRequest {
        tenant: "acme".into(),
        case_id: opened.case_id.clone(),
        channel: pb::Channel::Phone as i32,
        direction: pb::Direction::Inbound as i32,
        summary: "Customer called to ask".into(),
        request_id: "call-1".into(),
        ..Default::default()
    };
    let r1 = client
        .record_interaction(interaction.clone())
        .await
        .unwrap()
        .into_inner()
        .recorded
        .unwrap();
    let r2 = client
        .record_interaction(interaction.clone())
        .await
        .unwrap()
        .into_inner()
        .recorded
        .unwrap();
    assert_eq!(
        (r1.event_id.clone(), r1.sequence),
        (r2.event_id, r2.sequence)
    );
    assert!(!r1.replayed && r2.replayed);
    let c = intake.get("acme", &opened.case_id).await.unwrap();
    assert_eq!((c.interactions, c.event_count), (1, 3));

    let withdraw = api::WithdrawCaseRequest {
        tenant: "acme".into(),
        case_id: opened.case_id.clone(),
        reason: "Found it elsewhere".into(),
        ..Default::default()
    };
    client.withdraw_case(withdraw.clone()).await.unwrap();
    let e = client
        .submit_feedback(api::SubmitFeedbackRequest {
            tenant: "acme".into(),
            case_id: opened.case_id.clone(),
            score: 4,
            channel: pb::Channel::Web as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    // the front stage closes the withdrawn case
    let closed = wait_closed(&intake, &opened.case_id).await;
    assert_eq!(closed.resolution, pb::Resolution::Withdrawn as i32);
    let e = client.withdraw_case(withdraw).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let mut later = interaction;
    later.request_id = "call-2".into();
    let e = client.record_interaction(later).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let log = reader(&nats).await;
    assert_eq!(
        event_types(&log, &key(&opened.case_id)).await,
        [
            "case_opened",
            "promise_made",
            "interaction_recorded",
            "case_withdrawn",
            "customer_notified",
            "case_closed"
        ]
    );
    intake.stop().await;
}

#[tokio::test]
async fn the_front_stage_closes_kept_and_recovered_cases() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::start(&nats, dir.path(), "intake-a").await;
    let fulfilment = writer_log(&nats, Writer::Fulfilment).await;
    let recovery = writer_log(&nats, Writer::Recovery).await;

    // kept
    let a = intake
        .open(api::OpenCaseRequest {
            locale: "de-DE".into(),
            time_zone: "Europe/Berlin".into(),
            ..open_req("kept-1")
        })
        .await
        .unwrap();
    append(&fulfilment, &key(&a.case_id), kept()).await;
    let c = wait_closed(&intake, &a.case_id).await;
    assert_eq!(c.resolution, pb::Resolution::PromiseKept as i32);
    assert!(c.promise_kept && !c.breached);
    let events = fulfilment.read(&key(&a.case_id), 0).await.unwrap();
    let Some(Payload::CustomerNotified(n)) = &events[4].envelope.payload else {
        panic!("customer_notified after promise_kept")
    };
    assert_eq!(
        n.channel,
        pb::Channel::Chat as i32,
        "on the opening channel"
    );
    assert_eq!(n.resolution, pb::Resolution::PromiseKept as i32);
    // Told in German (de-DE falls back to de), from a recorded template.
    let told = n.customer_message.as_ref().expect("customer message");
    assert_eq!(told.text, n.message);
    assert_eq!(told.locale, "de");
    assert!(told.template_id.ends_with("de.promise_kept"), "{told:?}");
    assert!(told.text.contains("Erledigt"), "{told:?}");
    let Some(Payload::PromiseMade(p)) = &events[1].envelope.payload else {
        panic!("promise_made second")
    };
    let promised = p.customer_message.as_ref().expect("promise told");
    assert_eq!(promised.locale, "de");
    assert!(promised.text.contains(&a.case_id), "{promised:?}");
    let Some(Payload::CaseOpened(o)) = &events[0].envelope.payload else {
        panic!("case_opened first")
    };
    assert_eq!(
        (o.locale.as_str(), o.time_zone.as_str()),
        ("de-DE", "Europe/Berlin")
    );
    assert_eq!(events.len(), 6);

    // failed for good, recovered by recovery
    let b = intake.open(open_req("recovered-1")).await.unwrap();
    append(
        &fulfilment,
        &key(&b.case_id),
        vec![
            Payload::FulfilmentStarted(pb::FulfilmentStarted {
                run: 1,
                ..Default::default()
            }),
            Payload::FulfilmentFailed(pb::FulfilmentFailed {
                run: 1,
                ..Default::default()
            }),
        ],
    )
    .await;
    append(
        &recovery,
        &key(&b.case_id),
        vec![Payload::RecoveryStarted(pb::RecoveryStarted {
            recovery: 1,
            trigger: pb::RecoveryTrigger::FulfilmentFailed as i32,
            ..Default::default()
        })],
    )
    .await;
    // a recovery is open: not closed (the case is recovering)
    let c = eventually(WAIT, "the read model to show the recovery", || async {
        let c = intake.get("acme", &b.case_id).await.ok()?;
        (c.status == api::CaseStatus::Recovering as i32).then_some(c)
    })
    .await;
    assert_eq!(c.recoveries, 1);
    append(
        &recovery,
        &key(&b.case_id),
        vec![Payload::RecoveryCompleted(pb::RecoveryCompleted {
            recovery: 1,
            outcome: pb::RecoveryOutcome::Recovered as i32,
            ..Default::default()
        })],
    )
    .await;
    let c = wait_closed(&intake, &b.case_id).await;
    assert_eq!(c.resolution, pb::Resolution::Recovered as i32);
    let types = event_types(&fulfilment, &key(&b.case_id)).await;
    assert_eq!(
        types[types.len() - 2..],
        ["customer_notified".to_owned(), "case_closed".to_owned()]
    );

    // late feedback on the closed case is recorded and does not reopen it
    intake
        .client
        .clone()
        .submit_feedback(api::SubmitFeedbackRequest {
            tenant: "acme".into(),
            case_id: a.case_id.clone(),
            score: 1,
            channel: pb::Channel::Email as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let c = intake.get("acme", &a.case_id).await.unwrap();
    assert_eq!(c.status, api::CaseStatus::Closed as i32);
    assert_eq!(c.feedback_scores, vec![1]);
    intake.stop().await;
}

async fn consumer_idle(nats: &NatsServer) -> bool {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let Ok(stream) = js.get_stream(casework_caselog::CASES_STREAM).await else {
        return false;
    };
    let Ok(mut consumer) = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            casework_intake::closer::CLOSER_CONSUMER,
        )
        .await
    else {
        return false;
    };
    let Ok(info) = consumer.info().await else {
        return false;
    };
    info.num_pending == 0 && info.num_ack_pending == 0
}

#[tokio::test]
async fn two_replicas_never_close_a_case_twice() {
    let nats = NatsServer::start();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Intake::start(&nats, d1.path(), "intake-a").await;
    let b = Intake::start(&nats, d2.path(), "intake-b").await;
    let fulfilment = Arc::new(writer_log(&nats, Writer::Fulfilment).await);
    let mut ids = Vec::new();
    for i in 0..40 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let opened = replica.open(open_req(&format!("pair-{i}"))).await.unwrap();
        ids.push(opened.case_id);
    }
    // every case becomes due for closing at about the same time
    let mut tasks = Vec::new();
    for id in &ids {
        let (f, id) = (fulfilment.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            append(&f, &key(&id), kept()).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for id in &ids {
        // both replicas see it closed (each from its own read model)
        let ca = wait_closed(&a, id).await;
        let cb = wait_closed(&b, id).await;
        assert_eq!(ca.resolution, pb::Resolution::PromiseKept as i32);
        assert_eq!(ca, cb);
    }
    eventually(WAIT, "the intake consumer to be idle", || async {
        consumer_idle(&nats).await.then_some(())
    })
    .await;
    let log = reader(&nats).await;
    for id in &ids {
        let types = event_types(&log, &key(id)).await;
        let count = |t: &str| types.iter().filter(|x| *x == t).count();
        assert_eq!(count("case_closed"), 1, "{id}: {types:?}");
        assert_eq!(count("customer_notified"), 1, "{id}: {types:?}");
        assert_eq!(types.last().map(String::as_str), Some("case_closed"));
    }
    a.stop().await;
    b.stop().await;
}

async fn snapshot(intake: &Intake, ids: &[String]) -> (Vec<api::Case>, Vec<api::Case>) {
    let mut cases = Vec::new();
    for id in ids {
        cases.push(intake.get("acme", id).await.unwrap());
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = intake
            .client
            .clone()
            .list_cases(api::ListCasesRequest {
                tenant: "acme".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.cases);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    (cases, listed)
}

#[tokio::test]
async fn restart_on_an_empty_data_directory_gives_the_same_answers() {
    let nats = NatsServer::start();
    let d1 = tempfile::tempdir().unwrap();
    let intake = Intake::start(&nats, d1.path(), "intake-a").await;
    let fulfilment = writer_log(&nats, Writer::Fulfilment).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut r = open_req(&format!("restart-{i}"));
        r.customer_id = format!("cust-{}", i % 2);
        ids.push(intake.open(r).await.unwrap().case_id);
    }
    append(&fulfilment, &key(&ids[0]), kept()).await;
    intake
        .client
        .clone()
        .withdraw_case(api::WithdrawCaseRequest {
            tenant: "acme".into(),
            case_id: ids[1].clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_closed(&intake, &ids[0]).await;
    wait_closed(&intake, &ids[1]).await;
    eventually(WAIT, "the intake consumer to be idle", || async {
        consumer_idle(&nats).await.then_some(())
    })
    .await;
    let before = snapshot(&intake, &ids).await;
    assert_eq!(before.1.len(), 5);
    assert_eq!(before.1.iter().map(|c| &c.case_id).collect::<Vec<_>>(), {
        let mut sorted: Vec<&api::Case> = before.1.iter().collect();
        sorted.sort_by_key(|c| {
            let t = c.opened_at.unwrap();
            (t.seconds, t.nanos, c.case_id.clone())
        });
        sorted.into_iter().map(|c| &c.case_id).collect::<Vec<_>>()
    });
    // the customer filter
    let only = intake
        .client
        .clone()
        .list_cases(api::ListCasesRequest {
            tenant: "acme".into(),
            customer_id: "cust-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only.cases.len(), 2);
    assert!(only.cases.iter().all(|c| c.customer_id == "cust-1"));
    let closed_only = intake
        .client
        .clone()
        .list_cases(api::ListCasesRequest {
            tenant: "acme".into(),
            status: api::CaseStatus::Closed as i32,
            breached: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed_only.cases.len(), 2);
    intake.stop().await;

    // a new replica on an empty data directory rebuilds from the log
    let d2 = tempfile::tempdir().unwrap();
    let fresh = Intake::start(&nats, d2.path(), "intake-b").await;
    eventually(WAIT, "the rebuilt read model to be ready", || async {
        fresh.ready().await.then_some(())
    })
    .await;
    assert_eq!(snapshot(&fresh, &ids).await, before);
    fresh.stop().await;

    // and the first one, restarted on its own data directory, agrees
    let again = Intake::start(&nats, d1.path(), "intake-a").await;
    eventually(WAIT, "the read model to be ready", || async {
        again.ready().await.then_some(())
    })
    .await;
    assert_eq!(snapshot(&again, &ids).await, before);
    again.stop().await;
}

#[tokio::test]
async fn health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::start(&nats, dir.path(), "intake-a").await;
    let channel = Channel::from_shared(format!("http://{}", intake.running.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "casework.intake.v1.Intake".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let mut reflection = ServerReflectionClient::new(channel);
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    let reply = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("a list of services")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "casework.intake.v1.Intake"),
        "{names:?}"
    );
    eventually(WAIT, "readiness", || async {
        intake.ready().await.then_some(())
    })
    .await;
    intake.stop().await;
}

#[tokio::test]
async fn with_authentication_required_only_the_right_person_acts_and_is_recorded_as_who_they_are() {
    use casework_auth::{Role, dev::DevIssuer};
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let issuer = DevIssuer::load_or_create(&dir.path().join("auth")).unwrap();
    let mut o = options(&nats, &dir.path().join("intake"), "intake-0");
    o.auth = issuer.settings();
    let shutdown = Shutdown::new();
    let running = start(o, shutdown.clone()).await.expect("intake starts");
    let url = format!("http://{}", running.grpc);
    let mut c = IntakeClient::connect(url.clone()).await.unwrap();
    let hour = Duration::from_secs(3600);
    let ada = issuer
        .mint("ada", Some("Ada Agent"), &["acme"], &[Role::Agent], hour)
        .unwrap();
    let log = reader(&nats).await;
    let before = log.last_stream_seq().await.unwrap();

    let refused = |s: tonic::Status, code: Code, says: &str| {
        assert_eq!(s.code(), code, "{s:?}");
        assert!(
            s.message().contains(says),
            "{:?} should say {says:?}",
            s.message()
        );
    };
    // No credentials; a token for another tenant; one without the role;
    // signed by someone else; naming another person. (Expired and
    // misaddressed tokens: casework-auth's tests.)
    refused(
        c.open_case(open_req("a1")).await.unwrap_err(),
        Code::Unauthenticated,
        "no credentials",
    );
    let mut victim = open_req("a2");
    victim.tenant = "victim-corp".into();
    refused(
        c.open_case(casework_auth::dev::bearer(victim, &ada))
            .await
            .unwrap_err(),
        Code::PermissionDenied,
        "needs the agent role there",
    );
    let sam = issuer
        .mint("sam", None, &["acme"], &[Role::Supervisor], hour)
        .unwrap();
    refused(
        c.open_case(casework_auth::dev::bearer(open_req("a3"), &sam))
            .await
            .unwrap_err(),
        Code::PermissionDenied,
        "agent",
    );
    let other = DevIssuer::load_or_create(&dir.path().join("other")).unwrap();
    let forged = other
        .mint("ada", None, &["acme"], &[Role::Agent, Role::Admin], hour)
        .unwrap();
    refused(
        c.open_case(casework_auth::dev::bearer(open_req("a5"), &forged))
            .await
            .unwrap_err(),
        Code::Unauthenticated,
        "",
    );
    let mut cfo = open_req("a6");
    cfo.opened_by = Some(pb::Actor {
        kind: pb::ActorKind::Person as i32,
        id: "anyone-at-all".into(),
        display_name: "Definitely The CFO".into(),
        authenticated_by: String::new(),
    });
    refused(
        c.open_case(casework_auth::dev::bearer(cfo, &ada))
            .await
            .unwrap_err(),
        Code::PermissionDenied,
        "anyone-at-all",
    );
    // Nothing was appended for any refused call.
    assert_eq!(log.last_stream_seq().await.unwrap(), before);

    // The right person opens a case and is recorded as who they are.
    let opened = c
        .open_case(casework_auth::dev::bearer(open_req("a7"), &ada))
        .await
        .unwrap()
        .into_inner();
    let events = log.read(&key(&opened.case_id), 0).await.unwrap();
    let Some(Payload::CaseOpened(o)) = &events[0].envelope.payload else {
        panic!("case_opened first");
    };
    let by = o.opened_by.as_ref().expect("opened_by recorded");
    assert_eq!(
        (by.id.as_str(), by.display_name.as_str()),
        ("ada", "Ada Agent")
    );
    assert_eq!(by.authenticated_by, "oidc:casework-dev sub=ada");
    // Reads are the tenant's too.
    let mut get = api::GetCaseRequest {
        tenant: "acme".into(),
        case_id: opened.case_id.clone(),
    };
    assert!(
        c.get_case(casework_auth::dev::bearer(get.clone(), &ada))
            .await
            .is_ok()
    );
    get.tenant = "victim-corp".into();
    refused(
        c.get_case(casework_auth::dev::bearer(get, &ada))
            .await
            .unwrap_err(),
        Code::PermissionDenied,
        "victim-corp",
    );
    // Health stays open to probes without credentials.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    assert!(
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .is_ok()
    );
    shutdown.cancel();
    running.wait().await.expect("clean shutdown");
}

#[tokio::test]
async fn another_writers_event_type_under_intakes_subject_is_refused_by_every_reader() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::start(&nats, dir.path(), "intake-a").await;
    let opened = intake.open(open_req("forge-1")).await.unwrap();
    let k = key(&opened.case_id);
    let log = reader(&nats).await;
    let raw = log.read_raw(&k).await.unwrap();
    let last = raw.last().unwrap();
    // As intake could: fulfilment's promise_kept, chained on the real head,
    // its envelope claiming writer=fulfilment, under intake's own subject.
    let tip = casework_domain::ChainTip {
        case_seq: raw.len() as u64,
        hash: casework_domain::chain::hash(&last.bytes),
    };
    let kept = NewEvent {
        event_id: EventId::derive(&k.case_id, "forged", "kept"),
        occurred_at: chrono::Utc::now(),
        causation_id: String::new(),
        correlation_id: k.case_id.to_string(),
        payload: Payload::PromiseKept(pb::PromiseKept::default()),
    };
    let sealed = casework_domain::seal(&k.tenant, &k.case_id, "intake-a", tip, vec![kept])
        .unwrap()
        .remove(0);
    let subject = sealed.subject.replace(".fulfilment.", ".intake.");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.publish(subject, sealed.bytes.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // A reader of the case refuses it, saying why.
    let err = log.read(&k, 0).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("promise_kept events are written by fulfilment only"),
        "{err}"
    );
    // Intake does not act on a case that holds it: the case is parked with
    // the reason, not taken as kept.
    let e = intake
        .client
        .clone()
        .record_interaction(api::RecordInteractionRequest {
            tenant: "acme".into(),
            case_id: opened.case_id.clone(),
            channel: pb::Channel::Phone as i32,
            direction: pb::Direction::Inbound as i32,
            summary: "where is my refund".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("written by fulfilment only"),
        "{}",
        e.message()
    );
    let c = intake.get("acme", &opened.case_id).await.unwrap();
    assert_ne!(c.status, api::CaseStatus::Kept as i32);
    intake.stop().await;
}

/// Started with another service's NATS credentials, intake does not wait
/// forever for a broker that will never answer (it answers a request its
/// user may not make with a permissions violation, not a reply): it stops,
/// naming the violation and the credentials.
#[tokio::test]
async fn another_services_credentials_are_named_as_the_fault() {
    use casework_caselog::permissions::{Principal, nats_authorization};
    let users = nats_authorization(&[
        (Principal::Admin, "admin", "pw"),
        (
            Principal::writer(Writer::Intake, ["intake-a"]),
            "intake",
            "pw",
        ),
        (
            Principal::writer(Writer::Fulfilment, ["fulfilment-a"]),
            "fulfilment",
            "pw",
        ),
    ]);
    let nats = NatsServer::start_with(&users);
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&nats, dir.path(), "intake-a");
    o.nats.user = Some("fulfilment".into());
    o.nats.password = Some("pw".into());
    let shutdown = Shutdown::new();
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        let running = start(o, shutdown.clone()).await?;
        running.wait().await
    })
    .await
    .expect("intake stops by itself instead of waiting forever");
    let e = format!("{:#}", ended.expect_err("intake cannot run as fulfilment"));
    assert!(
        e.to_lowercase().contains("permissions violation") && e.contains("credentials"),
        "{e}"
    );
}

/// Callers may not grow a case past `max_events_per_case`
/// (FAILED_PRECONDITION naming the setting, nothing written), while a retry
/// of a request already recorded is still answered; and a tenant over its
/// write rate is told to wait (RESOURCE_EXHAUSTED with `retry-after-ms`)
/// while another tenant is not held back.
#[tokio::test]
async fn a_case_has_a_length_cap_and_a_tenant_a_write_rate() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&nats, dir.path(), "intake-a");
    o.service.max_events_per_case = 10;
    o.service.warn_events_per_case = 8;
    o.service.tenant_writes_per_minute = 1;
    o.service.tenant_write_burst = 11;
    let shutdown = Shutdown::new();
    let running = start(o, shutdown.clone()).await.unwrap();
    let mut client = IntakeClient::connect(format!("http://{}", running.grpc))
        .await
        .unwrap();
    let opened = client
        .open_case(open_req("long-1"))
        .await
        .unwrap()
        .into_inner();
    let interaction = |n: u32| api::RecordInteractionRequest {
        tenant: "acme".into(),
        case_id: opened.case_id.clone(),
        channel: pb::Channel::Chat as i32,
        direction: pb::Direction::Inbound as i32,
        summary: format!("message {n}"),
        actor: None,
        request_id: format!("r-{n}"),
    };
    // case_opened and promise_made, then eight interactions reach the cap.
    for n in 1..=8 {
        client.record_interaction(interaction(n)).await.unwrap();
    }
    let log = reader(&nats).await;
    let before = log.last_stream_seq().await.unwrap();
    let e = client.record_interaction(interaction(9)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("max_events_per_case") && e.message().contains("new case"),
        "{e:?}"
    );
    let again = client
        .record_interaction(interaction(8))
        .await
        .unwrap()
        .into_inner()
        .recorded
        .unwrap();
    assert!(again.replayed, "a retry of a recorded request is answered");
    assert_eq!(
        log.last_stream_seq().await.unwrap(),
        before,
        "nothing written"
    );
    // Eleven write calls so far (one open, ten interactions, the refused
    // and the replayed ones included): the burst is spent, and the rate
    // gives one a minute.
    let e = client.open_case(open_req("long-2")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let wait: u64 = e
        .metadata()
        .get("retry-after-ms")
        .expect("a retry hint")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0 && wait <= 60_000, "{wait}");
    let mut other = open_req("long-3");
    other.tenant = "globex".into();
    client
        .open_case(other)
        .await
        .expect("another tenant is not held back");
    assert_eq!(
        log.last_stream_seq().await.unwrap(),
        before + 2,
        "only globex's case was written"
    );
    shutdown.cancel();
    running.wait().await.unwrap();
}

/// intake's file is a cache of the log. Damaged, it is refused at start
/// naming the file (redb's integrity check on open), unless
/// `store.rebuild_when_damaged` allows moving it aside: then intake starts
/// on an empty file, keeps the damaged one for inspection, and answers for
/// every case again from the log.
#[tokio::test]
async fn a_damaged_store_is_refused_or_with_leave_moved_aside_and_rebuilt() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let intake = Intake::start(&nats, dir.path(), "intake-a").await;
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(
            intake
                .open(open_req(&format!("dmg-{i}")))
                .await
                .unwrap()
                .case_id,
        );
    }
    let before = snapshot(&intake, &ids).await;
    intake.stop().await;
    let file = dir.path().join("intake.redb");
    casework_testkit::damage_pages(
        &file,
        &(0..40)
            .map(|i| 0.1 + f64::from(i) * 0.02)
            .collect::<Vec<_>>(),
    );

    let refused = start(options(&nats, dir.path(), "intake-a"), Shutdown::new())
        .await
        .expect_err("a damaged store is refused");
    let e = format!("{refused:#}");
    assert!(e.contains("intake.redb") && e.contains("damaged"), "{e}");
    assert!(
        refused
            .chain()
            .any(|c| c.is::<casework_runtime::BadConfiguration>()),
        "it exits 2, as for bad configuration: {e}"
    );

    let mut o = options(&nats, dir.path(), "intake-a");
    o.store.rebuild_when_damaged = true;
    let shutdown = Shutdown::new();
    let running = start(o, shutdown.clone())
        .await
        .expect("rebuilt from the log");
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("intake.redb.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept aside: {aside:?}");
    let rebuilt = Intake {
        client: IntakeClient::connect(format!("http://{}", running.grpc))
            .await
            .unwrap(),
        running,
        shutdown,
    };
    eventually(WAIT, "the rebuilt read model to be ready", || async {
        rebuilt.ready().await.then_some(())
    })
    .await;
    assert_eq!(snapshot(&rebuilt, &ids).await, before);
    rebuilt.stop().await;
}
