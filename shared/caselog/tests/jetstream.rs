//! The JetStream log against a real nats-server (started per test by
//! casework-testkit): the shared conformance suite, the racing writers of
//! the foundation issue, broker-enforced ownership, tamper detection on
//! messages read back from the stream, headers, and a server restart in the
//! middle of a stream of appends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use casework_caselog::conformance::{self, interaction, new_case};
use casework_caselog::jetstream::{NatsOptions, StreamOptions, connect, ensure_streams};
use casework_caselog::permissions::{Principal, nats_authorization};
use casework_caselog::{CaseLog, Error, JetStreamLog};
use casework_domain::{LinkFault, Writer, verify};
use casework_testkit::NatsServer;

async fn log_on(server: &NatsServer) -> JetStreamLog {
    let client = connect(&NatsOptions {
        url: server.url(),
        ..Default::default()
    })
    .await
    .expect("connect");
    ensure_streams(&client, &StreamOptions::default())
        .await
        .expect("streams");
    JetStreamLog::new(client, "test-0", None)
}

#[tokio::test]
async fn conformance_suite() {
    let server = NatsServer::start();
    conformance::run_all(&|| log_on(&server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_race_on_one_case() {
    let server = NatsServer::start();
    let log = Arc::new(log_on(&server).await);
    conformance::racing_writers(log, 8, 200).await;
}

#[tokio::test]
async fn streams_are_created_with_the_contract_and_checked_again() {
    let server = NatsServer::start();
    let log = log_on(&server).await;
    let js = async_nats::jetstream::new(log.client().clone());
    let mut cases = js.get_stream("CASES").await.unwrap();
    let cfg = &cases.info().await.unwrap().config;
    assert!(cfg.deny_delete && cfg.deny_purge && cfg.allow_direct);
    assert!(
        !cfg.allow_atomic_publish,
        "one event per append: the stream allows no atomic batch"
    );
    assert_eq!(
        cfg.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert_eq!(cfg.max_age, Duration::ZERO);
    assert_eq!(cfg.max_messages, -1);
    let timers = js.get_stream("TIMERS").await.unwrap();
    assert!(timers.cached_info().config.allow_message_schedules);
    // A second start finds and accepts them.
    ensure_streams(log.client(), &StreamOptions::default())
        .await
        .unwrap();
    // The audit log refuses deletion.
    let case = new_case("acme");
    let a = log
        .append(&case, None, vec![interaction(&case, "1")])
        .await
        .unwrap();
    assert!(cases.delete_message(a.head.stream_seq).await.is_err());
    assert!(cases.purge().await.is_err());
}

#[tokio::test]
async fn an_existing_stream_without_the_contract_is_refused_clearly() {
    let server = NatsServer::start();
    let client = connect(&NatsOptions {
        url: server.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "CASES".into(),
        subjects: vec!["case.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let err = ensure_streams(&client, &StreamOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Misconfigured { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("deny_purge") && msg.contains("deny_delete"),
        "{msg}"
    );
}

#[tokio::test]
async fn every_message_carries_cloudevents_and_traceparent() {
    let server = NatsServer::start();
    let log = log_on(&server).await;
    let case = new_case("acme");
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let a = log
        .append_traced(
            &case,
            None,
            vec![interaction(&case, "1"), interaction(&case, "2")],
            Some(tp),
        )
        .await
        .unwrap();
    let js = async_nats::jetstream::new(log.client().clone());
    let stream = js.get_stream("CASES").await.unwrap();
    for seq in [a.first_stream_seq, a.head.stream_seq] {
        let m = stream.get_raw_message(seq).await.unwrap();
        let h = &m.headers;
        let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned()).unwrap_or_default();
        assert_eq!(get("ce-specversion"), "1.0");
        assert_eq!(get("ce-type"), "casework.events.v1.interaction_recorded");
        assert_eq!(get("ce-source"), "/casework/acme/intake");
        assert_eq!(get("ce-subject"), case.case_id.to_string());
        assert!(!get("ce-id").is_empty() && !get("ce-time").is_empty());
        assert_eq!(get("traceparent"), tp);
        assert_eq!(get("Nats-Msg-Id"), get("ce-id"));
    }
    // Without a trace context a valid one is derived from the correlation id.
    let b = log
        .append(&case, Some(&a.head), vec![interaction(&case, "3")])
        .await
        .unwrap();
    let m = stream.get_raw_message(b.head.stream_seq).await.unwrap();
    let derived = m.headers.get("traceparent").unwrap().as_str().to_owned();
    assert!(
        casework_caselog::headers::is_valid_traceparent(&derived),
        "{derived}"
    );
}

#[tokio::test]
async fn bad_tokens_never_reach_the_broker() {
    for (tenant, case) in [
        ("Acme", "01JD8X3V5R6M2Q4T7W9Y0Z1A2B"),
        ("acme", "01JD8X3V5R6M2Q4T7W9Y0Z1A2*"),
        ("ac.me", "01JD8X3V5R6M2Q4T7W9Y0Z1A2B"),
        ("acme", ""),
    ] {
        let err = casework_caselog::CaseKey::parse(tenant, case).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    }
}

#[tokio::test]
async fn tampering_is_reported_at_the_right_place() {
    let server = NatsServer::start();
    let log = log_on(&server).await;
    let case = new_case("acme");
    let mut head = None;
    for i in 0..6 {
        head = Some(
            log.append(
                &case,
                head.as_ref(),
                vec![interaction(&case, &i.to_string())],
            )
            .await
            .unwrap()
            .head,
        );
    }
    let raw = log.read_raw(&case).await.unwrap();
    assert!(verify(&case.tenant, &case.case_id, &raw, None).is_intact());
    let check = |raw: &[casework_domain::RawEvent]| {
        let b = verify(&case.tenant, &case.case_id, raw, None)
            .first_break
            .expect("a break");
        (b.case_seq, b.fault)
    };
    // An altered byte in event 3's summary.
    let mut altered = raw.clone();
    let i = altered[2]
        .bytes
        .windows(13)
        .position(|w| w == b"interaction 2")
        .unwrap();
    altered[2].bytes[i + 12] = b'7';
    assert_eq!(check(&altered), (3, LinkFault::Altered));
    // A dropped event 4.
    let mut dropped = raw.clone();
    dropped.remove(3);
    assert_eq!(check(&dropped), (4, LinkFault::Missing));
    // Events 2 and 3 swapped.
    let mut swapped = raw.clone();
    swapped.swap(1, 2);
    assert_eq!(check(&swapped), (2, LinkFault::Reordered));
}

fn users() -> String {
    let mut users = vec![(Principal::Admin, "admin", "admin-pw")];
    users.extend(Writer::ALL.map(|w| (Principal::writer(w, [format!("{w}-0")]), w.as_str(), "pw")));
    users.push((
        Principal::integrator("acme", ["acme-sync"]).unwrap(),
        "integrator",
        "pw",
    ));
    nats_authorization(&users)
}

async fn client_as(server: &NatsServer, user: &str, password: &str) -> async_nats::Client {
    connect(&NatsOptions {
        url: server.url(),
        user: Some(user.into()),
        password: Some(password.into()),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_broker_refuses_a_service_publishing_another_writers_event() {
    let server = NatsServer::start_with(&users());
    // The services can create and check the streams themselves.
    let intake = client_as(&server, "intake", "pw").await;
    ensure_streams(&intake, &StreamOptions::default())
        .await
        .unwrap();
    let intake_log = JetStreamLog::new(intake.clone(), "intake-0", None)
        .with_request_timeout(Duration::from_millis(500));

    let case = new_case("acme");
    // Its own events go through.
    let own = intake_log
        .append(&case, None, vec![interaction(&case, "own")])
        .await
        .unwrap();

    // A fulfilment event published with intake's credentials (bypassing the
    // client-side writer check) is refused by the broker.
    let forged = casework_domain::NewEvent {
        payload: casework_domain::pb::envelope::Payload::PromiseKept(Default::default()),
        ..interaction(&case, "forged")
    };
    let err = intake_log
        .append(&case, Some(&own.head), vec![forged.clone()])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unavailable(_)),
        "no ack for a refused publish: {err:?}"
    );
    let admin = JetStreamLog::new(client_as(&server, "admin", "admin-pw").await, "admin", None);
    let events = admin.read(&case, 0).await.unwrap();
    assert_eq!(events.len(), 1, "the forged event was not stored");
    assert_eq!(events[0].envelope.event_type, "interaction_recorded");

    // The fulfilment user can write it.
    let fulfilment = JetStreamLog::new(client_as(&server, "fulfilment", "pw").await, "f-0", None);
    fulfilment
        .append(&case, Some(&own.head), vec![forged])
        .await
        .unwrap();

    // The integrator cannot publish any event, nor delete the stream, nor
    // read by stream sequence (which would reach every tenant; it reads
    // through its own consumers, see tests/least_privilege.rs).
    let integrator = client_as(&server, "integrator", "pw").await;
    let ilog = JetStreamLog::new(integrator.clone(), "i", None)
        .with_request_timeout(Duration::from_millis(500));
    assert!(ilog.read(&case, 0).await.is_err());
    assert!(
        ilog.append(&case, None, vec![interaction(&case, "x")])
            .await
            .is_err()
    );
    let js = async_nats::jetstream::new(integrator);
    assert!(js.delete_stream("CASES").await.is_err());
    assert_eq!(admin.read(&case, 0).await.unwrap().len(), 2);

    // And the client-side guard refuses before sending.
    let guarded = JetStreamLog::new(intake, "intake-0", Some(Writer::Intake));
    let err = guarded
        .append(
            &case,
            None,
            vec![casework_domain::NewEvent {
                payload: casework_domain::pb::envelope::Payload::PromiseKept(Default::default()),
                ..interaction(&case, "g")
            }],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_stream_loses_no_acknowledged_event() {
    let mut server = NatsServer::start();
    let log = Arc::new(
        log_on(&server)
            .await
            .with_request_timeout(Duration::from_secs(2)),
    );
    let case = new_case("acme");
    let writer = {
        let log = log.clone();
        let case = case.clone();
        tokio::spawn(async move {
            let mut acked: BTreeMap<u64, String> = BTreeMap::new();
            let mut head = None;
            let mut failures = 0;
            let mut i = 0;
            while acked.len() < 300 && failures < 200 {
                let ev = interaction(&case, &i.to_string());
                let id = ev.event_id.to_string();
                match log.append(&case, head.as_ref(), vec![ev]).await {
                    Ok(a) => {
                        acked.insert(a.head.case_seq, id);
                        head = Some(a.head);
                        i += 1;
                    }
                    Err(Error::Conflict { .. }) => {
                        head = log.head(&case).await.ok().flatten();
                    }
                    Err(_) => {
                        failures += 1;
                        // Our outcome is unknown: reload and decide again.
                        if let Ok(h) = log.head(&case).await {
                            head = h;
                        }
                        i += 1;
                    }
                }
            }
            acked
        })
    };
    // Restart once the writer is well under way.
    casework_testkit::eventually(Duration::from_secs(30), "100 appends", || {
        let log = log.clone();
        let case = case.clone();
        async move {
            let h = log.head(&case).await.ok().flatten()?;
            (h.case_seq >= 100).then_some(())
        }
    })
    .await;
    server.kill();
    server.start_again();
    let acked = writer.await.unwrap();
    assert!(
        acked.len() >= 300,
        "the writer got going again after the restart"
    );
    let events = log.read(&case, 0).await.unwrap();
    let in_log: BTreeMap<u64, String> = events
        .iter()
        .map(|e| (e.envelope.sequence, e.envelope.event_id.clone()))
        .collect();
    for (seq, id) in &acked {
        assert_eq!(
            in_log.get(seq),
            Some(id),
            "acknowledged event {seq} survived the restart"
        );
    }
    let raw = log.read_raw(&case).await.unwrap();
    let v = verify(&case.tenant, &case.case_id, &raw, None);
    assert!(v.is_intact(), "{v:?}");
}
