//! The recovery service against a real nats-server (with the per-service
//! users and permissions of production): the test acts as intake and
//! fulfilment by appending their events through their own log clients, and
//! as a supervisor through the gRPC API.

use std::collections::HashMap;
use std::time::Duration;

use casework_caselog::jetstream::{NatsOptions, StreamOptions, connect, ensure_streams};
use casework_caselog::permissions::{Principal, nats_authorization};
use casework_caselog::{CaseKey, CaseLog, JetStreamLog, StoredEvent};
use casework_domain::chain::{from_timestamp, timestamp};
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{CaseId, EventId, NewEvent, Tenant, Writer};
use casework_proto::recovery::v1 as api;
use casework_proto::recovery::v1::recovery_client::RecoveryClient;
use casework_recovery::{ServiceOptions, default_options, start};
use casework_runtime::{Running, Shutdown};
use casework_testkit::{NatsServer, eventually};
use chrono::{DateTime, Utc};

const VERSION: &str = "2026-11-01.1";

fn users() -> String {
    // The instances these tests run (each tail consumer is named).
    let instances = |w: Writer| ["0", "a", "b", "test"].map(|i| format!("{w}-{i}"));
    let mut users = vec![(Principal::Admin, "admin", "admin-pw")];
    users.extend(Writer::ALL.map(|w| (Principal::writer(w, instances(w)), w.as_str(), "pw")));
    nats_authorization(&users)
}

async fn log_as(server: &NatsServer, writer: Writer) -> JetStreamLog {
    let client = connect(&NatsOptions {
        url: server.url(),
        user: Some(writer.as_str().into()),
        password: Some("pw".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    ensure_streams(&client, &StreamOptions::default())
        .await
        .unwrap();
    JetStreamLog::new(client, &format!("{writer}-test"), Some(writer))
}

/// A recovery replica.
struct Replica {
    running: Option<Running>,
    shutdown: Shutdown,
}

impl Replica {
    async fn start(server: &NatsServer, instance: &str) -> Self {
        Self::start_with(server, options(server, instance)).await
    }

    async fn start_with(_server: &NatsServer, o: ServiceOptions) -> Self {
        casework_runtime::init_logging(&Default::default());
        let shutdown = Shutdown::new();
        let running = start(o, shutdown.clone()).await.unwrap();
        Replica {
            running: Some(running),
            shutdown,
        }
    }

    fn grpc(&self) -> String {
        format!("http://{}", self.running.as_ref().unwrap().grpc)
    }

    async fn client(&self) -> RecoveryClient<tonic::transport::Channel> {
        RecoveryClient::connect(self.grpc()).await.unwrap()
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await.unwrap();
        }
    }
}

fn options(server: &NatsServer, instance: &str) -> ServiceOptions {
    let mut o = default_options();
    o.instance = instance.to_owned();
    o.data_dir = server.scratch_dir().join(instance);
    o.grpc_listen = "127.0.0.1:0".parse().unwrap();
    // 127.0.0.2: the shared options refuse equal gRPC and HTTP addresses,
    // even with port 0 (reported as a shared bug).
    o.http_listen = "127.0.0.2:0".parse().unwrap();
    o.nats.url = server.url();
    o.nats.user = Some("recovery".into());
    o.nats.password = Some("pw".into());
    o
}

fn ev(case: &CaseKey, cause: &str, key: &str, payload: Payload) -> NewEvent {
    NewEvent {
        event_id: EventId::derive(&case.case_id, cause, key),
        occurred_at: Utc::now(),
        causation_id: String::new(),
        correlation_id: case.case_id.to_string(),
        payload,
    }
}

/// Opens a case for `service` due at `deadline`, as intake does.
async fn open_case(intake: &JetStreamLog, service: &str, deadline: DateTime<Utc>) -> CaseKey {
    let case = CaseKey {
        tenant: Tenant::parse("acme").unwrap(),
        case_id: CaseId::from_ulid(ulid::Ulid::new()),
    };
    intake
        .append(
            &case,
            None,
            vec![
                ev(
                    &case,
                    "open",
                    "case_opened",
                    Payload::CaseOpened(pb::CaseOpened {
                        customer_id: "c-1".into(),
                        channel: pb::Channel::Chat as i32,
                        service_code: service.into(),
                        summary: "test".into(),
                        ..Default::default()
                    }),
                ),
                ev(
                    &case,
                    "open",
                    "promise_made",
                    Payload::PromiseMade(pb::PromiseMade {
                        service_code: service.into(),
                        catalog_version: VERSION.into(),
                        deadline: Some(timestamp(deadline)),
                        promised_outcome: "done".into(),
                        ..Default::default()
                    }),
                ),
            ],
        )
        .await
        .unwrap();
    case
}

/// Appends `payload` (as the log's writer) after whatever is there.
async fn append(log: &JetStreamLog, case: &CaseKey, key: &str, payload: Payload) {
    loop {
        let head = log.head(case).await.unwrap();
        match log
            .append(
                case,
                head.as_ref(),
                vec![ev(case, "test", key, payload.clone())],
            )
            .await
        {
            Ok(_) => return,
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("append {key}: {e}"),
        }
    }
}

fn failed(run: u32) -> Payload {
    Payload::FulfilmentFailed(pb::FulfilmentFailed {
        run,
        step_index: 0,
        step_name: "classify_question".into(),
        reason: "always fails".into(),
    })
}

fn types(log: &[StoredEvent]) -> Vec<&str> {
    log.iter().map(|e| e.envelope.event_type.as_str()).collect()
}

fn count(log: &[StoredEvent], t: &str) -> usize {
    log.iter().filter(|e| e.envelope.event_type == t).count()
}

/// Waits until the case's log satisfies `done`.
async fn wait_for(
    log: &JetStreamLog,
    case: &CaseKey,
    what: &str,
    done: impl Fn(&[StoredEvent]) -> bool,
) -> Vec<StoredEvent> {
    eventually(Duration::from_secs(20), what, || async {
        let events = log.read(case, 0).await.ok()?;
        done(&events).then_some(events)
    })
    .await
}

fn outcome(log: &[StoredEvent]) -> Option<pb::RecoveryOutcome> {
    log.iter().rev().find_map(|e| match &e.envelope.payload {
        Some(Payload::RecoveryCompleted(r)) => Some(r.outcome()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_always_fails_is_retried_then_escalated() {
    let server = NatsServer::start_with(&users());
    let (intake, fulfilment) = (
        log_as(&server, Writer::Intake).await,
        log_as(&server, Writer::Fulfilment).await,
    );
    let mut recovery = Replica::start(&server, "recovery-0").await;
    // product_enquiry: on_step_failed = retry (max 1), escalate tier2.
    let case = open_case(
        &intake,
        "product_enquiry",
        Utc::now() + chrono::Duration::hours(4),
    )
    .await;
    append(&fulfilment, &case, "failed-1", failed(1)).await;
    let log = wait_for(&fulfilment, &case, "retry_requested", |l| {
        count(l, "retry_requested") == 1
    })
    .await;
    assert_eq!(
        types(&log)[2..],
        ["fulfilment_failed", "recovery_started", "retry_requested"]
    );
    let failed_id = log[2].envelope.event_id.clone();
    assert!(
        log[3..]
            .iter()
            .all(|e| e.envelope.causation_id == failed_id)
    );
    append(&fulfilment, &case, "failed-2", failed(2)).await;
    let log = wait_for(&fulfilment, &case, "recovery_completed", |l| {
        count(l, "recovery_completed") == 1
    })
    .await;
    assert_eq!(
        types(&log)[5..],
        ["fulfilment_failed", "case_escalated", "recovery_completed"]
    );
    assert_eq!(outcome(&log), Some(pb::RecoveryOutcome::Escalated));
    let Some(Payload::CaseEscalated(e)) = &log[6].envelope.payload else {
        panic!("escalation")
    };
    assert_eq!(e.tier, "tier2");
    assert!(e.reason.contains("always fails"), "{}", e.reason);
    recovery.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_breaks_the_promise_then_apology_and_compensation() {
    let server = NatsServer::start_with(&users());
    let intake = log_as(&server, Writer::Intake).await;
    let mut recovery = Replica::start(&server, "recovery-0").await;
    // refund: on_promise_broken = apology (email), voucher 1000, escalate.
    let deadline = Utc::now() + chrono::Duration::milliseconds(2500);
    let case = open_case(&intake, "refund", deadline).await;
    let log = wait_for(&intake, &case, "the recovery to complete", |l| {
        count(l, "recovery_completed") == 1
    })
    .await;
    assert_eq!(
        types(&log),
        [
            "case_opened",
            "promise_made",
            "promise_broken",
            "recovery_started",
            "apology_sent",
            "compensation_proposed",
            "compensation_granted",
            "case_escalated",
            "recovery_completed"
        ]
    );
    let broken_at = from_timestamp(log[2].envelope.occurred_at.as_ref().unwrap());
    let late = broken_at - deadline;
    assert!(
        late >= chrono::Duration::zero() && late < chrono::Duration::milliseconds(1500),
        "promise_broken {late} after the deadline"
    );
    let Some(Payload::CompensationGranted(g)) = &log[6].envelope.payload else {
        panic!("grant")
    };
    assert_eq!(g.amount.as_ref().unwrap().amount_minor, 1000);
    // The actions name the broken promise as their cause.
    let broken_id = &log[2].envelope.event_id;
    assert!(
        log[3..]
            .iter()
            .all(|e| &e.envelope.causation_id == broken_id)
    );
    recovery.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_feedback_on_a_kept_promise_gets_an_apology() {
    let server = NatsServer::start_with(&users());
    let (intake, fulfilment) = (
        log_as(&server, Writer::Intake).await,
        log_as(&server, Writer::Fulfilment).await,
    );
    let mut recovery = Replica::start(&server, "recovery-0").await;
    let deadline = Utc::now() + chrono::Duration::hours(4);
    let case = open_case(&intake, "order_change", deadline).await;
    append(
        &fulfilment,
        &case,
        "kept",
        Payload::PromiseKept(pb::PromiseKept {
            run: 1,
            deadline: Some(timestamp(deadline)),
            late: false,
        }),
    )
    .await;
    let feedback = |score| {
        Payload::FeedbackReceived(pb::FeedbackReceived {
            personal: None,
            score,
            comment: "rude agent".into(),
            channel: pb::Channel::Web as i32,
        })
    };
    // A good score first: nothing happens; then a bad one.
    append(&intake, &case, "fb-good", feedback(5)).await;
    append(&intake, &case, "fb-bad", feedback(1)).await;
    let log = wait_for(&intake, &case, "the recovery to complete", |l| {
        count(l, "recovery_completed") == 1
    })
    .await;
    assert_eq!(
        types(&log)[5..],
        ["recovery_started", "apology_sent", "recovery_completed"]
    );
    let Some(Payload::ApologySent(a)) = &log[6].envelope.payload else {
        panic!("apology")
    };
    assert_eq!(a.channel(), pb::Channel::Email);
    assert!(a.reason.contains("1/5") && a.reason.contains("rude agent"));
    assert_eq!(log[6].envelope.causation_id, log[4].envelope.event_id);
    assert_eq!(outcome(&log), Some(pb::RecoveryOutcome::Recovered));
    assert_eq!(count(&log, "promise_broken"), 0);
    recovery.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_compensation_waits_for_approval_and_proceeds_after_it() {
    let server = NatsServer::start_with(&users());
    let intake = log_as(&server, Writer::Intake).await;
    let mut recovery = Replica::start(&server, "recovery-0").await;
    let mut grpc = recovery.client().await;
    // installation_appointment broken: apology (phone), fee waiver 4900 > 2500.
    let case = open_case(
        &intake,
        "installation_appointment",
        Utc::now() + chrono::Duration::seconds(1),
    )
    .await;
    let tenant = "acme".to_owned();
    let pending = eventually(Duration::from_secs(20), "a pending approval", || {
        let mut grpc = grpc.clone();
        let tenant = tenant.clone();
        async move {
            let r = grpc
                .list_pending_approvals(api::ListPendingApprovalsRequest {
                    tenant,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            r.approvals.into_iter().next()
        }
    })
    .await;
    assert_eq!(pending.case_id, case.case_id.as_str());
    assert_eq!(pending.compensation_id, "r1-c2");
    assert_eq!(pending.amount.as_ref().unwrap().amount_minor, 4900);
    let open = grpc
        .list_open_recoveries(api::ListOpenRecoveriesRequest {
            tenant: tenant.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.recoveries.len(), 1);
    assert_eq!(open.recoveries[0].waiting(), api::Waiting::Approval);
    // It waits: nothing is granted without a person.
    let log = intake.read(&case, 0).await.unwrap();
    assert_eq!(count(&log, "compensation_granted"), 0);
    assert_eq!(count(&log, "recovery_completed"), 0);

    let approve = |approver: Option<api::Approver>, comp: &str| api::ApproveCompensationRequest {
        tenant: tenant.clone(),
        case_id: case.case_id.to_string(),
        compensation_id: comp.into(),
        approver,
        note: "loyal customer".into(),
    };
    let dana = Some(api::Approver {
        id: "e-1007".into(),
        display_name: "Dana Scully".into(),
    });
    // Bad input first.
    let e = grpc
        .approve_compensation(approve(None, "r1-c2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("approver"), "{}", e.message());
    let e = grpc
        .approve_compensation(approve(dana.clone(), "r9-c9"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let mut bad_case = approve(dana.clone(), "r1-c2");
    bad_case.case_id = CaseId::from_ulid(ulid::Ulid::new()).to_string();
    let e = grpc.approve_compensation(bad_case).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let mut bad_tenant = approve(dana.clone(), "r1-c2");
    bad_tenant.tenant = "Not A Tenant".into();
    let e = grpc.approve_compensation(bad_tenant).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("tenant"), "{}", e.message());

    let d = grpc
        .approve_compensation(approve(dana.clone(), "r1-c2"))
        .await
        .unwrap()
        .into_inner();
    assert!(!d.already);
    let log = wait_for(&intake, &case, "the grant and completion", |l| {
        count(l, "recovery_completed") == 1
    })
    .await;
    assert_eq!(
        types(&log)[2..],
        [
            "promise_broken",
            "recovery_started",
            "apology_sent",
            "compensation_proposed",
            "compensation_approved",
            "compensation_granted",
            "recovery_completed"
        ]
    );
    let Some(Payload::CompensationApproved(a)) = &log[6].envelope.payload else {
        panic!("approval")
    };
    let by = a.approved_by.as_ref().unwrap();
    assert_eq!(
        (by.kind(), by.id.as_str(), by.display_name.as_str()),
        (pb::ActorKind::Person, "e-1007", "Dana Scully")
    );
    assert_eq!(d.event_id, log[6].envelope.event_id);
    assert_eq!(outcome(&log), Some(pb::RecoveryOutcome::Recovered));
    // Repeating the same approval is answered with the same event; another
    // decision is refused.
    let again = grpc
        .approve_compensation(approve(dana.clone(), "r1-c2"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.already);
    assert_eq!(again.event_id, d.event_id);
    let e = grpc
        .decline_compensation(api::DeclineCompensationRequest {
            tenant: tenant.clone(),
            case_id: case.case_id.to_string(),
            compensation_id: "r1-c2".into(),
            approver: Some(api::Approver {
                id: "e-2".into(),
                display_name: "Fox".into(),
            }),
            reason: "too much".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    // The views follow: nothing pending, nothing open.
    eventually(Duration::from_secs(10), "the views to empty", || {
        let mut grpc = grpc.clone();
        let tenant = tenant.clone();
        async move {
            let p = grpc
                .list_pending_approvals(api::ListPendingApprovalsRequest {
                    tenant: tenant.clone(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            let o = grpc
                .list_open_recoveries(api::ListOpenRecoveriesRequest {
                    tenant,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            (p.approvals.is_empty() && o.recoveries.is_empty()).then_some(())
        }
    })
    .await;
    let view = grpc
        .get_case_recoveries(api::GetCaseRecoveriesRequest {
            tenant: tenant.clone(),
            case_id: case.case_id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(view.promise_broken);
    assert_eq!(
        view.recoveries[0].compensations[0].state(),
        api::CompensationState::Granted
    );
    recovery.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_pending_deadlines_fires_them() {
    let server = NatsServer::start_with(&users());
    let intake = log_as(&server, Writer::Intake).await;
    let mut recovery = Replica::start(&server, "recovery-0").await;
    let now = Utc::now();
    // Some deadlines pass while the service is down, some after it is back.
    let mut cases = Vec::new();
    for i in 0..10 {
        let deadline = now + chrono::Duration::milliseconds(3000 + 300 * i);
        cases.push((
            open_case(&intake, "refund", deadline).await,
            deadline,
            i < 5,
        ));
    }
    // The timers are in the broker once the service has seen the promises.
    let admin = connect(&NatsOptions {
        url: server.url(),
        user: Some("admin".into()),
        password: Some("admin-pw".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let js = async_nats::jetstream::new(admin);
    eventually(Duration::from_secs(10), "10 deadline timers", || {
        let js = js.clone();
        async move {
            let mut s = js.get_stream("TIMERS").await.ok()?;
            let n = s.info().await.ok()?.state.messages;
            (n >= 10).then_some(())
        }
    })
    .await;
    recovery.stop().await;
    // Down until the first five deadlines have passed.
    let first_five_passed = cases[4].1 + chrono::Duration::milliseconds(200);
    eventually(
        Duration::from_secs(20),
        "the first deadlines to pass",
        || async { (Utc::now() > first_five_passed).then_some(()) },
    )
    .await;
    for (case, ..) in &cases {
        assert_eq!(
            count(&intake.read(case, 0).await.unwrap(), "promise_broken"),
            0
        );
    }
    let restarted_at = Utc::now();
    let mut recovery = Replica::start(&server, "recovery-0").await;
    for (case, deadline, passed_while_down) in &cases {
        let log = wait_for(&intake, case, "promise_broken after the restart", |l| {
            count(l, "promise_broken") == 1
        })
        .await;
        let b = log
            .iter()
            .find(|e| e.envelope.event_type == "promise_broken")
            .unwrap();
        let at = from_timestamp(b.envelope.occurred_at.as_ref().unwrap());
        assert!(at >= *deadline, "never before the deadline");
        let due = if *passed_while_down {
            restarted_at.max(*deadline)
        } else {
            *deadline
        };
        assert!(
            at - due < chrono::Duration::milliseconds(1500),
            "promise_broken {} after it was due (passed while down: {passed_while_down})",
            at - due
        );
    }
    recovery.stop().await;
}

/// Fulfilment's side of the race: keep the promise at `at`, with `late`
/// set as fulfilment sets it, retrying on conflict.
async fn keep_at(
    fulfilment: &JetStreamLog,
    case: &CaseKey,
    deadline: DateTime<Utc>,
    at: DateTime<Utc>,
) {
    let wait = (at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await; // the moment the test chose, not a synchronisation
    loop {
        let log = fulfilment.read(case, 0).await.unwrap();
        let broken = count(&log, "promise_broken") > 0;
        let late = broken || Utc::now() > deadline;
        let head = log.last().map(StoredEvent::head);
        let kept = ev(
            case,
            "fulfilment",
            &format!("kept/{late}"),
            Payload::PromiseKept(pb::PromiseKept {
                run: 1,
                deadline: Some(timestamp(deadline)),
                late,
            }),
        );
        match fulfilment.append(case, head.as_ref(), vec![kept]).await {
            Ok(_) => return,
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("keep: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kept_versus_broken_race_holds_its_rule_every_time() {
    let server = NatsServer::start_with(&users());
    let (intake, fulfilment) = (
        log_as(&server, Writer::Intake).await,
        log_as(&server, Writer::Fulfilment).await,
    );
    let mut recovery = Replica::start(&server, "recovery-0").await;
    // 200 cases due on one whole second (when the timers fire), each kept by
    // "fulfilment" between 100 ms before and 1.5 s after its deadline, so
    // every order of the two appends happens.
    let base = Utc::now() + chrono::Duration::seconds(4);
    let deadline = DateTime::from_timestamp(base.timestamp(), 0).unwrap();
    let mut cases = Vec::new();
    for _ in 0..200 {
        cases.push(open_case(&intake, "order_change", deadline).await);
    }
    let mut tasks = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let (f, case) = (fulfilment.clone(), case.clone());
        let at = deadline + chrono::Duration::milliseconds((i as i64 * 37) % 1600 - 100);
        tasks.push(tokio::spawn(async move {
            keep_at(&f, &case, deadline, at).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut tally: HashMap<&str, usize> = HashMap::new();
    for case in &cases {
        // Settled: kept on time, or broken (and every keep recorded).
        let log = wait_for(&intake, case, "the case to settle", |l| {
            let kept = count(l, "promise_kept") == 1;
            let on_time = l
                .iter()
                .any(|e| matches!(&e.envelope.payload, Some(Payload::PromiseKept(k)) if !k.late));
            kept && (on_time || count(l, "promise_broken") == 1)
        })
        .await;
        let broken_at = log
            .iter()
            .position(|e| e.envelope.event_type == "promise_broken");
        let kept_at = log
            .iter()
            .position(|e| e.envelope.event_type == "promise_kept")
            .unwrap();
        let Some(Payload::PromiseKept(k)) = &log[kept_at].envelope.payload else {
            unreachable!()
        };
        match broken_at {
            None => {
                assert!(!k.late, "{case}: kept late but never recorded broken");
                *tally.entry("kept on time").or_default() += 1;
            }
            Some(b) => {
                assert!(k.late, "{case}: both kept on time and broken");
                assert_eq!(count(&log, "promise_broken"), 1);
                *tally
                    .entry(if kept_at > b {
                        "broken, then kept late"
                    } else {
                        "kept late, then broken"
                    })
                    .or_default() += 1;
            }
        }
    }
    eprintln!("race outcomes over {} cases: {tally:?}", cases.len());
    recovery.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_do_not_duplicate_actions() {
    let server = NatsServer::start_with(&users());
    let intake = log_as(&server, Writer::Intake).await;
    let mut a = Replica::start(&server, "recovery-a").await;
    let mut b = Replica::start(&server, "recovery-b").await;
    let deadline = Utc::now() + chrono::Duration::seconds(2);
    let mut cases = Vec::new();
    for _ in 0..30 {
        cases.push(open_case(&intake, "order_change", deadline).await);
    }
    for case in &cases {
        let log = wait_for(&intake, case, "promise_broken and its recovery", |l| {
            count(l, "promise_broken") == 1
                && count(l, "recovery_completed") == count(l, "recovery_started")
                && count(l, "recovery_started") >= 1
        })
        .await;
        let mut ids = std::collections::HashSet::new();
        assert!(
            log.iter().all(|e| ids.insert(e.envelope.event_id.clone())),
            "{case}: a duplicate id"
        );
        let starts = count(&log, "recovery_started");
        // Every recovery's actions appear once: per recovery number and type.
        let mut seen = std::collections::HashSet::new();
        for e in &log {
            let n = match &e.envelope.payload {
                Some(Payload::ApologySent(x)) => x.recovery,
                Some(Payload::CaseEscalated(x)) => x.recovery,
                Some(Payload::RecoveryStarted(x)) => x.recovery,
                Some(Payload::RecoveryCompleted(x)) => x.recovery,
                _ => continue,
            };
            assert!(
                seen.insert((n, e.envelope.event_type.clone())),
                "{case}: {} twice in recovery {n}",
                e.envelope.event_type
            );
        }
        assert_eq!(starts, 1);
        assert_eq!(count(&log, "apology_sent"), 1);
        assert_eq!(count(&log, "compensation_granted"), 1);
        let raw = intake.read_raw(case).await.unwrap();
        assert!(casework_domain::verify(&case.tenant, &case.case_id, &raw, None).is_intact());
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_supervisor_of_the_tenant_approves_and_is_recorded_as_who_they_are() {
    use casework_auth::{Role, dev::DevIssuer};
    let server = NatsServer::start_with(&users());
    let intake = log_as(&server, Writer::Intake).await;
    let issuer = DevIssuer::load_or_create(&server.scratch_dir().join("auth")).unwrap();
    let mut o = options(&server, "recovery-0");
    o.auth = issuer.settings();
    let mut recovery = Replica::start_with(&server, o).await;
    let mut grpc = recovery.client().await;
    let hour = Duration::from_secs(3600);
    let dana = issuer
        .mint(
            "dana",
            Some("Dana Scully"),
            &["acme"],
            &[Role::Supervisor],
            hour,
        )
        .unwrap();
    let elsewhere = issuer
        .mint("eve", None, &["beta"], &[Role::Supervisor], hour)
        .unwrap();
    let agent = issuer
        .mint("ada", None, &["acme"], &[Role::Agent], hour)
        .unwrap();
    let case = open_case(
        &intake,
        "installation_appointment",
        Utc::now() + chrono::Duration::seconds(1),
    )
    .await;
    let list = api::ListPendingApprovalsRequest {
        tenant: "acme".into(),
        ..Default::default()
    };
    let e = grpc.list_pending_approvals(list.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = grpc
        .list_pending_approvals(casework_auth::dev::bearer(list.clone(), &elsewhere))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    eventually(Duration::from_secs(20), "a pending approval", || {
        let (mut grpc, list, dana) = (grpc.clone(), list.clone(), dana.clone());
        async move {
            let r = grpc
                .list_pending_approvals(casework_auth::dev::bearer(list, &dana))
                .await
                .ok()?
                .into_inner();
            r.approvals.into_iter().next()
        }
    })
    .await;
    let approve = |approver: Option<api::Approver>| api::ApproveCompensationRequest {
        tenant: "acme".into(),
        case_id: case.case_id.to_string(),
        compensation_id: "r1-c2".into(),
        approver,
        note: "loyal customer".into(),
    };
    let cfo = Some(api::Approver {
        id: "anyone-at-all".into(),
        display_name: "Definitely The CFO".into(),
    });
    for (token, approver, code) in [
        (&dana, cfo.clone(), tonic::Code::PermissionDenied),
        (&agent, None, tonic::Code::PermissionDenied),
        (&elsewhere, None, tonic::Code::PermissionDenied),
    ] {
        let e = grpc
            .approve_compensation(casework_auth::dev::bearer(approve(approver), token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
    }
    let log = intake.read(&case, 0).await.unwrap();
    assert_eq!(count(&log, "compensation_approved"), 0, "nothing recorded");
    grpc.approve_compensation(casework_auth::dev::bearer(approve(None), &dana))
        .await
        .unwrap();
    let log = wait_for(&intake, &case, "the approval", |l| {
        count(l, "compensation_approved") == 1
    })
    .await;
    let by = log
        .iter()
        .find_map(|e| match &e.envelope.payload {
            Some(Payload::CompensationApproved(a)) => a.approved_by.clone(),
            _ => None,
        })
        .expect("approved_by");
    assert_eq!(
        (
            by.id.as_str(),
            by.display_name.as_str(),
            by.authenticated_by.as_str()
        ),
        ("dana", "Dana Scully", "oidc:casework-dev sub=dana")
    );
    recovery.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_views_follow_the_log_again_after_the_broker_restarts() {
    let mut server = NatsServer::start_with(&users());
    let mut recovery = Replica::start(&server, "recovery-0").await;
    let mut grpc = recovery.client().await;
    let views_consumer = |url: String| async move {
        let admin =
            async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-pw".into())
                .connect(url)
                .await
                .ok()?;
        let stream = async_nats::jetstream::new(admin)
            .get_stream("CASES")
            .await
            .ok()?;
        let mut names = stream.consumer_names();
        while let Some(Ok(n)) = futures::StreamExt::next(&mut names).await {
            if n == casework_caselog::permissions::tail_consumer("recovery", "recovery-0") {
                return Some((stream, n));
            }
        }
        None
    };
    // Running: its views follow the log.
    eventually(Duration::from_secs(30), "the views' consumer", || {
        views_consumer(server.url())
    })
    .await;
    // The broker restarts (the views' tail, held in memory, is gone with it),
    // and the one the views follow with next is deleted from under them.
    server.restart();
    let (stream, name) = eventually(
        Duration::from_secs(30),
        "the views' consumer after the restart",
        || views_consumer(server.url()),
    )
    .await;
    stream.delete_consumer(&name).await.unwrap();
    let intake = log_as(&server, Writer::Intake).await;
    // A case that needs a person's approval, opened after all that: it is
    // listed only if the views follow the log again.
    let case = open_case(
        &intake,
        "installation_appointment",
        Utc::now() + chrono::Duration::seconds(1),
    )
    .await;
    let pending = eventually(
        Duration::from_secs(60),
        "a pending approval after the restart",
        || {
            let mut grpc = grpc.clone();
            async move {
                let r = grpc
                    .list_pending_approvals(api::ListPendingApprovalsRequest {
                        tenant: "acme".into(),
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                r.approvals.into_iter().next()
            }
        },
    )
    .await;
    assert_eq!(pending.case_id, case.case_id.as_str());
    // And the service is still serving.
    assert!(
        grpc.list_open_recoveries(api::ListOpenRecoveriesRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .is_ok()
    );
    recovery.stop().await;
}

/// Every string field of the decision RPCs, each set to each input of the
/// shared bad-text list: refused INVALID_ARGUMENT naming the field, and
/// nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_text_field_refuses_control_and_bidi_characters() {
    let server = NatsServer::start_with(&users());
    let admin = log_as(&server, Writer::Recovery).await;
    let mut recovery = Replica::start(&server, "recovery-0").await;
    let mut grpc = recovery.client().await;
    let before = admin.last_stream_seq().await.unwrap();
    let approver = |id: &str, name: &str| {
        Some(api::Approver {
            id: id.into(),
            display_name: name.into(),
        })
    };
    for (bad, found) in casework_domain::text::BAD_TEXT {
        let approve = |a, comp: &str, note: &str| api::ApproveCompensationRequest {
            tenant: "acme".into(),
            case_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2B".into(),
            compensation_id: comp.into(),
            approver: a,
            note: note.into(),
        };
        for (field, r) in [
            ("approver.id", approve(approver(bad, "Dana"), "r1-c2", "")),
            (
                "approver.display_name",
                approve(approver("e-1", bad), "r1-c2", ""),
            ),
            ("compensation_id", approve(approver("e-1", "Dana"), bad, "")),
            ("note", approve(approver("e-1", "Dana"), "r1-c2", bad)),
        ] {
            let out = grpc.approve_compensation(r).await.map(drop);
            casework_testkit::assert_invalid_field(
                &format!("ApproveCompensation {field} {bad:?}"),
                field,
                found,
                out,
            );
        }
        let out = grpc
            .decline_compensation(api::DeclineCompensationRequest {
                tenant: "acme".into(),
                case_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2B".into(),
                compensation_id: "r1-c2".into(),
                approver: approver("e-1", "Dana"),
                reason: format!("too much {bad}"),
            })
            .await
            .map(drop);
        casework_testkit::assert_invalid_field(
            &format!("DeclineCompensation reason {bad:?}"),
            "reason",
            found,
            out,
        );
    }
    assert_eq!(
        admin.last_stream_seq().await.unwrap(),
        before,
        "nothing written"
    );
    recovery.stop().await;
}
