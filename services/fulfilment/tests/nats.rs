//! Fulfilment against a real nats-server: the workflow from promise to
//! kept or failed, timeouts, external workers and people over gRPC, two
//! replicas sharing the work, and parking.

mod common;

use std::time::Duration;

use casework_caselog::CaseLog;
use casework_catalog::Catalogs;
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{EventId, NewEvent, Writer};
use casework_fulfilment::proto as api;
use casework_fulfilment::workflow::Workflow;
use common::{World, assert_sound, client, count, types};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn happy_path_keeps_the_promise() {
    let w = World::new().await;
    let (running, stop) = w.start("f-0").await;
    let case = w.open_case("quick").await;
    let events = w.wait_for(&case, "promise_kept", WAIT).await;
    assert_eq!(
        types(&events),
        [
            "case_opened",
            "promise_made",
            "fulfilment_started",
            "step_started",
            "step_completed",
            "step_started",
            "step_completed",
            "step_started",
            "step_completed",
            "promise_kept"
        ]
    );
    let Some(Payload::PromiseKept(k)) = &events[9].envelope.payload else {
        panic!()
    };
    assert!(!k.late);
    // causation and correlation are set
    assert_eq!(events[2].envelope.causation_id, events[1].envelope.event_id);
    assert!(
        events
            .iter()
            .all(|e| e.envelope.correlation_id == case.case_id.to_string())
    );
    assert_sound(&case, &events);
    stop.cancel();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn a_step_failing_for_good_fails_the_fulfilment() {
    let w = World::new().await;
    let (_running, _stop) = w.start("f-0").await;
    let case = w.open_case("doomed").await;
    let events = w.wait_for(&case, "fulfilment_failed", WAIT).await;
    // two attempts (the policy's maximum), the second without retry_at
    assert_eq!(count(&events, "step_started"), 2);
    let failures: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.envelope.payload {
            Some(Payload::StepFailed(f)) => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 2);
    assert!(failures[0].retry_at.is_some() && failures[1].retry_at.is_none());
    assert_eq!(count(&events, "promise_kept"), 0);
    assert_sound(&case, &events);
}

#[tokio::test]
async fn an_external_step_nobody_polls_times_out() {
    let w = World::new().await;
    let (_running, _stop) = w.start("f-0").await;
    let case = w.open_case("ignored").await;
    let events = w.wait_for(&case, "fulfilment_failed", WAIT).await;
    let f = events
        .iter()
        .find_map(|e| match &e.envelope.payload {
            Some(Payload::StepFailed(f)) => Some(f.clone()),
            _ => None,
        })
        .unwrap();
    assert!(f.timed_out, "{f:?}");
    assert!(f.retry_at.is_none());
    // it fired after the timeout, not before
    let started = events
        .iter()
        .find(|e| e.envelope.event_type == "step_started")
        .unwrap();
    let failed = events
        .iter()
        .find(|e| e.envelope.event_type == "step_failed")
        .unwrap();
    let gap = casework_domain::chain::from_timestamp(failed.envelope.occurred_at.as_ref().unwrap())
        - casework_domain::chain::from_timestamp(started.envelope.occurred_at.as_ref().unwrap());
    assert!(gap >= chrono::Duration::seconds(1), "{gap}");
    assert_sound(&case, &events);
}

/// Only `promise_made` and `retry_requested` wake fulfilment: recovery's
/// retry of a failed fulfilment is one of them, and starts run 2.
#[tokio::test]
async fn a_retry_requested_by_recovery_starts_the_next_run() {
    let w = World::new().await;
    let (_running, _stop) = w.start("f-0").await;
    let case = w.open_case("doomed").await;
    let events = w.wait_for(&case, "fulfilment_failed", WAIT).await;
    let failed = events.last().unwrap();
    let recovery = w.log_as(Writer::Recovery, "recovery-test").await;
    recovery
        .append(
            &case,
            Some(&failed.head()),
            vec![NewEvent {
                event_id: EventId::derive(&case.case_id, &failed.envelope.event_id, "retry"),
                occurred_at: chrono::Utc::now(),
                causation_id: failed.envelope.event_id.clone(),
                correlation_id: case.case_id.to_string(),
                payload: Payload::RetryRequested(pb::RetryRequested {
                    recovery: 1,
                    retry: 1,
                    reason: "try again".into(),
                }),
            }],
        )
        .await
        .unwrap();
    let events = casework_testkit::eventually(WAIT, "run 2 failed", || async {
        let evs = w.events(&case).await;
        (count(&evs, "fulfilment_failed") == 2).then_some(evs)
    })
    .await;
    let runs: Vec<u32> = events
        .iter()
        .filter_map(|e| match &e.envelope.payload {
            Some(Payload::FulfilmentStarted(f)) => Some(f.run),
            _ => None,
        })
        .collect();
    assert_eq!(runs, [1, 2]);
    assert_eq!(count(&events, "step_started"), 4);
    assert_sound(&case, &events);
}

/// One event per append: a replica that died after the first event of a
/// two-event decision (`fulfilment_started`, not yet `step_started`) left a
/// prefix; the next decision finishes it with the same ids.
#[tokio::test]
async fn a_decision_cut_after_its_first_event_is_finished_with_the_same_ids() {
    let w = World::new().await;
    let case = w.open_case("quick").await;
    let events = w.events(&case).await;
    let wf = Workflow::fold(case.clone(), events.iter().map(|e| &e.envelope));
    let catalogs = Catalogs::new([w.catalog.clone()]).unwrap();
    let d = casework_fulfilment::decide::decide(&wf, chrono::Utc::now(), &catalogs).unwrap();
    let decided: Vec<&str> = d.events.iter().map(|e| e.event_type().as_str()).collect();
    assert_eq!(decided, ["fulfilment_started", "step_started"]);
    let died = w.log_as(Writer::Fulfilment, "f-died").await;
    died.append_event(
        &case,
        Some(&events.last().unwrap().head()),
        d.events[0].clone(),
        None,
    )
    .await
    .unwrap();

    let (_running, _stop) = w.start("f-0").await;
    let events = w.wait_for(&case, "promise_kept", WAIT).await;
    assert_eq!(count(&events, "fulfilment_started"), 1);
    let started = events
        .iter()
        .find(|e| e.envelope.event_type == "step_started")
        .unwrap();
    assert_eq!(started.envelope.event_id, d.events[1].event_id.to_string());
    assert_eq!(
        started.envelope.causation_id,
        d.events[0].event_id.to_string()
    );
    assert_eq!(started.envelope.writer_instance, "f-0");
    assert_sound(&case, &events);
}

async fn poll(
    c: &mut api::fulfilment_client::FulfilmentClient<tonic::transport::Channel>,
    worker: &str,
    kind: &str,
) -> api::Task {
    for _ in 0..20 {
        let r = c
            .poll_tasks(api::PollTasksRequest {
                worker_id: worker.into(),
                task_kinds: vec![kind.into()],
                max_tasks: 1,
                wait_seconds: 2,
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(t) = r.tasks.into_iter().next() {
            return t;
        }
    }
    panic!("no {kind} task offered");
}

#[tokio::test]
async fn external_worker_and_person_round_trip_over_grpc() {
    let w = World::new().await;
    let (running, _stop) = w.start("f-0").await;
    let mut c = client(&running).await;
    let case = w.open_case("shipping").await;

    // attempt 1: the worker fails it (retryable)
    let t1 = poll(&mut c, "worker-a", "ship_parcel").await;
    assert_eq!(
        (t1.case_id.as_str(), t1.attempt, t1.step_name.as_str()),
        (case.case_id.as_str(), 1, "ship")
    );
    assert_eq!(t1.input.get("order").map(String::as_str), Some("A-1"));
    assert!(t1.lease_expires_at.is_some());
    // leased: nobody else gets it meanwhile
    let other = c
        .poll_tasks(api::PollTasksRequest {
            worker_id: "worker-b".into(),
            task_kinds: vec!["ship_parcel".into()],
            max_tasks: 5,
            wait_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(other.tasks.is_empty());
    let hb = c
        .heartbeat(api::HeartbeatRequest {
            token: t1.token.clone(),
            worker_id: "worker-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(hb.lease_expires_at.is_some());
    let failed = c
        .fail_task(api::FailTaskRequest {
            token: t1.token.clone(),
            error: "carrier down".into(),
            retryable: true,
            worker_id: "worker-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(failed.retry_at.is_some());

    // attempt 2: the worker completes it
    let t2 = poll(&mut c, "worker-a", "ship_parcel").await;
    assert_eq!(t2.attempt, 2);
    // the stale token of attempt 1 is refused clearly
    let stale = c
        .complete_task(api::CompleteTaskRequest {
            token: t1.token.clone(),
            output: Default::default(),
            worker_id: "worker-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert!(
        stale.message().contains("stale task") && stale.message().contains("ship"),
        "{}",
        stale.message()
    );
    let done = c
        .complete_task(api::CompleteTaskRequest {
            token: t2.token.clone(),
            output: [("tracking".to_owned(), "TRK-1".to_owned())].into(),
            worker_id: "worker-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!done.already_completed);
    // the same completion again: the same answer, no second event
    let again = c
        .complete_task(api::CompleteTaskRequest {
            token: t2.token.clone(),
            output: Default::default(),
            worker_id: "worker-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_completed);
    assert_eq!(again.event_id, done.event_id);
    // bad input is INVALID_ARGUMENT naming the field
    let bad = c
        .complete_task(api::CompleteTaskRequest {
            token: "nonsense".into(),
            output: Default::default(),
            worker_id: "w".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("token"));
    let bad = c
        .poll_tasks(api::PollTasksRequest {
            worker_id: String::new(),
            task_kinds: vec!["x".into()],
            max_tasks: 1,
            wait_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("worker_id"));

    // step 2 is manual: a person completes it from the queue
    let manual = common_eventually_manual(&mut c).await;
    assert_eq!(manual.step_name, "confirm");
    // a worker may not complete a manual step
    let wrong = c
        .complete_task(api::CompleteTaskRequest {
            token: manual.token.clone(),
            output: Default::default(),
            worker_id: "worker-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition);
    let no_person = c
        .complete_manual_step(api::CompleteManualStepRequest {
            token: manual.token.clone(),
            person: None,
            note: String::new(),
            output: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_person.code(), Code::InvalidArgument);
    c.complete_manual_step(api::CompleteManualStepRequest {
        token: manual.token.clone(),
        person: Some(api::Person {
            id: "emp-7".into(),
            display_name: "Dana Weber".into(),
        }),
        note: "checked with the customer".into(),
        output: Default::default(),
    })
    .await
    .unwrap();

    let events = w.wait_for(&case, "promise_kept", WAIT).await;
    assert_eq!(count(&events, "step_completed"), 2);
    let by: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.envelope.payload {
            Some(Payload::StepCompleted(s)) => {
                Some((s.completed_by.clone().unwrap(), s.output.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(by[0].0.id, "worker-a");
    assert_eq!(by[0].1.get("tracking").map(String::as_str), Some("TRK-1"));
    assert_eq!(by[1].0.display_name, "Dana Weber");
    assert_eq!(by[1].0.kind, casework_domain::pb::ActorKind::Person as i32);
    assert_eq!(
        by[1].1.get("note").map(String::as_str),
        Some("checked with the customer")
    );
    assert_sound(&case, &events);
}

async fn common_eventually_manual(
    c: &mut api::fulfilment_client::FulfilmentClient<tonic::transport::Channel>,
) -> api::Task {
    let c = c.clone();
    casework_testkit::eventually(WAIT, "a manual task in queue desk", || {
        let mut c = c.clone();
        async move {
            c.list_manual_tasks(api::ListManualTasksRequest {
                queue: "desk".into(),
                tenant: String::new(),
                limit: 0,
            })
            .await
            .ok()?
            .into_inner()
            .tasks
            .into_iter()
            .next()
        }
    })
    .await
}

#[tokio::test]
async fn two_replicas_share_the_work_and_each_case_completes_once() {
    let w = World::new().await;
    let (a, stop_a) = w.start("f-a").await;
    let (b, stop_b) = w.start("f-b").await;
    let mut cases = Vec::new();
    for _ in 0..40 {
        cases.push(w.open_case("quick").await);
    }
    for case in &cases {
        let events = w.wait_for(case, "promise_kept", WAIT).await;
        assert_eq!(count(&events, "promise_kept"), 1);
        assert_eq!(count(&events, "fulfilment_started"), 1);
        assert_eq!(count(&events, "step_completed"), 3);
        assert_sound(case, &events);
    }
    // both replicas wrote some of the events
    let mut writers = std::collections::HashSet::new();
    for case in &cases {
        for e in w.events(case).await {
            if e.envelope.writer == "fulfilment" {
                writers.insert(e.envelope.writer_instance.clone());
            }
        }
    }
    assert!(
        writers.contains("f-a") && writers.contains("f-b"),
        "{writers:?}"
    );
    stop_a.cancel();
    stop_b.cancel();
    a.wait().await.unwrap();
    b.wait().await.unwrap();
}

#[tokio::test]
async fn an_undecidable_case_is_parked_and_others_keep_flowing() {
    let w = World::new().await;
    let (running, _stop) = w.start("f-0").await;
    let bad = w.open_case_pinned("quick", "2099-01-01.1", "").await;
    let missing = w.open_case("no_such_service").await;
    let good = w.open_case("quick").await;
    let events = w.wait_for(&good, "promise_kept", WAIT).await;
    assert_sound(&good, &events);
    let mut c = client(&running).await;
    let parked = casework_testkit::eventually(WAIT, "two parked cases", || {
        let mut c = c.clone();
        async move {
            let cases = c
                .list_parked_cases(api::ListParkedCasesRequest {})
                .await
                .ok()?
                .into_inner()
                .cases;
            (cases.len() == 2).then_some(cases)
        }
    })
    .await;
    let reason = |case: &casework_caselog::CaseKey| {
        parked
            .iter()
            .find(|p| p.case_id == case.case_id.as_str())
            .map(|p| p.reason.clone())
            .unwrap()
    };
    assert!(reason(&bad).contains("2099-01-01.1"), "{}", reason(&bad));
    assert!(
        reason(&missing).contains("no_such_service"),
        "{}",
        reason(&missing)
    );
    // nothing was written to the parked cases
    assert_eq!(w.events(&bad).await.len(), 2);
    let metrics = reqwest_metrics(running.http).await;
    assert!(metrics.contains("casework_cases_parked_total"), "{metrics}");
    let _ = c
        .list_parked_cases(api::ListParkedCasesRequest {})
        .await
        .unwrap();
}

/// GET /metrics with a bare HTTP/1.0 request.
async fn reqwest_metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn a_worker_sees_and_reports_only_its_tenants_tasks() {
    use casework_auth::{Role, dev::DevIssuer};
    let w = World::new().await;
    let issuer = DevIssuer::load_or_create(&w.dir.path().join("auth")).unwrap();
    let mut o = w.options("f-0");
    o.auth = issuer.settings();
    let shutdown = casework_runtime::Shutdown::new();
    let running = casework_fulfilment::start(o, shutdown.clone())
        .await
        .unwrap();
    let mut c = client(&running).await;
    let hour = Duration::from_secs(3600);
    let acme = issuer
        .mint("worker-a", None, &["acme"], &[Role::Worker], hour)
        .unwrap();
    let beta = issuer
        .mint("worker-b", None, &["beta"], &[Role::Worker], hour)
        .unwrap();
    let case = w.open_case("shipping").await;
    let poll = |worker: &str| api::PollTasksRequest {
        worker_id: worker.into(),
        task_kinds: vec!["ship_parcel".into()],
        max_tasks: 5,
        wait_seconds: 2,
    };
    let e = c.poll_tasks(poll("anon")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // Tenant beta's worker waits out its poll and gets nothing of acme's.
    let none = c
        .poll_tasks(casework_auth::dev::bearer(poll("worker-b"), &beta))
        .await
        .unwrap()
        .into_inner();
    assert!(none.tasks.is_empty(), "{:?}", none.tasks);
    let task = casework_testkit::eventually(Duration::from_secs(20), "acme's task", || {
        let (mut c, acme) = (c.clone(), acme.clone());
        async move {
            let r = c
                .poll_tasks(casework_auth::dev::bearer(poll("worker-a"), &acme))
                .await
                .ok()?
                .into_inner();
            r.tasks.into_iter().next()
        }
    })
    .await;
    assert_eq!(task.case_id, case.case_id.as_str());
    // Beta's worker holding acme's token cannot report on it.
    let complete = |worker: &str| api::CompleteTaskRequest {
        token: task.token.clone(),
        output: Default::default(),
        worker_id: worker.into(),
    };
    let e = c
        .complete_task(casework_auth::dev::bearer(complete("worker-b"), &beta))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    c.complete_task(casework_auth::dev::bearer(complete("worker-a"), &acme))
        .await
        .unwrap();
    let log = w.reader.read(&case, 0).await.unwrap();
    let by = log
        .iter()
        .find_map(|e| match &e.envelope.payload {
            Some(Payload::StepCompleted(s)) => s.completed_by.clone(),
            _ => None,
        })
        .expect("step_completed by");
    assert_eq!(by.authenticated_by, "oidc:casework-dev sub=worker-a");
    assert_eq!(
        count(&log, "step_completed"),
        1,
        "beta's report recorded nothing"
    );
    shutdown.cancel();
    running.wait().await.unwrap();
}

/// Every string field of every fulfilment RPC, each set to each input of
/// the shared bad-text list: refused INVALID_ARGUMENT naming the field,
/// before anything is leased or written; and the documented limit of
/// ListManualTasks is enforced.
#[tokio::test]
async fn every_text_field_refuses_control_and_bidi_characters() {
    let w = World::new().await;
    let (running, shutdown) = w.start("fulfilment-a").await;
    let mut c = client(&running).await;
    let before = w.reader.last_stream_seq().await.unwrap();
    // A well-formed token of a case that does not exist: the text is
    // checked before the case is looked up.
    let token = "ft1.acme.01JD8X3V5R6M2Q4T7W9Y0Z1A2B.1.0.1".to_owned();
    for (bad, found) in casework_domain::text::BAD_TEXT {
        let out = c
            .poll_tasks(api::PollTasksRequest {
                worker_id: bad.to_string(),
                task_kinds: vec!["payment_refund".into()],
                ..Default::default()
            })
            .await
            .map(drop);
        casework_testkit::assert_invalid_field(
            &format!("PollTasks worker_id {bad:?}"),
            "worker_id",
            found,
            out,
        );
        let out = c
            .poll_tasks(api::PollTasksRequest {
                worker_id: "w-1".into(),
                task_kinds: vec![bad.to_string()],
                ..Default::default()
            })
            .await
            .map(drop);
        casework_testkit::assert_invalid_field(
            &format!("PollTasks task_kinds {bad:?}"),
            "task_kinds",
            found,
            out,
        );
        let out = c
            .heartbeat(api::HeartbeatRequest {
                token: token.clone(),
                worker_id: bad.to_string(),
            })
            .await
            .map(drop);
        casework_testkit::assert_invalid_field(
            &format!("Heartbeat worker_id {bad:?}"),
            "worker_id",
            found,
            out,
        );
        for (field, output) in [
            ("output key", [(bad.to_string(), "x".to_owned())]),
            ("output[k]", [("k".to_owned(), bad.to_string())]),
        ] {
            let out = c
                .complete_task(api::CompleteTaskRequest {
                    token: token.clone(),
                    output: output.clone().into(),
                    worker_id: "w-1".into(),
                })
                .await
                .map(drop);
            casework_testkit::assert_invalid_field(
                &format!("CompleteTask {field} {bad:?}"),
                field,
                found,
                out,
            );
        }
        let out = c
            .complete_task(api::CompleteTaskRequest {
                token: token.clone(),
                output: Default::default(),
                worker_id: bad.to_string(),
            })
            .await
            .map(drop);
        casework_testkit::assert_invalid_field(
            &format!("CompleteTask worker_id {bad:?}"),
            "worker_id",
            found,
            out,
        );
        let out = c
            .fail_task(api::FailTaskRequest {
                token: token.clone(),
                error: format!("timed out {bad}"),
                retryable: true,
                worker_id: "w-1".into(),
            })
            .await
            .map(drop);
        casework_testkit::assert_invalid_field(
            &format!("FailTask error {bad:?}"),
            "error",
            found,
            out,
        );
        let out = c
            .list_manual_tasks(api::ListManualTasksRequest {
                queue: bad.to_string(),
                ..Default::default()
            })
            .await
            .map(drop);
        casework_testkit::assert_invalid_field(
            &format!("ListManualTasks queue {bad:?}"),
            "queue",
            found,
            out,
        );
        for (field, person, note) in [
            (
                "person.id",
                api::Person {
                    id: bad.to_string(),
                    display_name: "Dana".into(),
                },
                String::new(),
            ),
            (
                "person.display_name",
                api::Person {
                    id: "e-1".into(),
                    display_name: bad.to_string(),
                },
                String::new(),
            ),
            (
                "note",
                api::Person {
                    id: "e-1".into(),
                    display_name: "Dana".into(),
                },
                bad.to_string(),
            ),
        ] {
            let out = c
                .complete_manual_step(api::CompleteManualStepRequest {
                    token: token.clone(),
                    person: Some(person),
                    note,
                    output: Default::default(),
                })
                .await
                .map(drop);
            casework_testkit::assert_invalid_field(
                &format!("CompleteManualStep {field} {bad:?}"),
                field,
                found,
                out,
            );
        }
    }
    let e = c
        .list_manual_tasks(api::ListManualTasksRequest {
            queue: "returns_desk".into(),
            limit: 1001,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("at most 1000"), "{e:?}");
    let e = c
        .fail_task(api::FailTaskRequest {
            token: token.clone(),
            error: "x".repeat(2001),
            retryable: true,
            worker_id: "w-1".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("at most 2000"), "{e:?}");
    assert_eq!(
        w.reader.last_stream_seq().await.unwrap(),
        before,
        "nothing written"
    );
    shutdown.cancel();
    running.wait().await.unwrap();
}
