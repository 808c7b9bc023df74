//! Durable timers against a real nats-server: a schedule fires its target
//! once, at its time; rescheduling moves it; a timer survives a server
//! restart.

use std::time::Duration;

use async_nats::jetstream;
use casework_caselog::CaseKey;
use casework_caselog::conformance::new_case;
use casework_caselog::domain::Writer;
use casework_runtime::options::NatsSettings;
use casework_runtime::timers::Timers;
use casework_testkit::NatsServer;
use chrono::Utc;
use futures::StreamExt;

async fn fires(client: &async_nats::Client, filter: &str) -> jetstream::consumer::pull::Stream {
    let js = jetstream::new(client.clone());
    let s = js.get_stream("TIMERS").await.unwrap();
    let c: jetstream::consumer::PullConsumer = s
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(format!("t{}", ulid::Ulid::new())),
            filter_subject: filter.to_owned(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    c.messages().await.unwrap()
}

async fn connect(server: &NatsServer) -> async_nats::Client {
    casework_runtime::nats::connect(
        &NatsSettings {
            url: server.url(),
            ..Default::default()
        },
        "timers-test",
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_timer_fires_once_at_its_time_and_rescheduling_moves_it() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let timers = Timers::new(client.clone(), Writer::Recovery);
    let mut fired = fires(&client, &timers.fire_filter()).await;
    let case: CaseKey = new_case("acme");
    let other: CaseKey = new_case("acme");

    let first = Utc::now() + chrono::Duration::seconds(30);
    timers.schedule("deadline", &case, first).await.unwrap();
    // Moved earlier: the 30 s schedule is replaced, not kept beside it.
    let at = Utc::now() + chrono::Duration::seconds(2);
    timers.schedule("deadline", &case, at).await.unwrap();
    timers
        .schedule(
            "deadline",
            &other,
            Utc::now() + chrono::Duration::seconds(1),
        )
        .await
        .unwrap();

    let mut seen = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(10), fired.next())
            .await
            .expect("a fire within 10 s")
            .unwrap()
            .unwrap();
        let f = timers.parse_fire(&m.subject).expect("a fire subject");
        assert_eq!(f.kind, "deadline");
        if f.case == case {
            let late = Utc::now() - at;
            assert!(
                late >= chrono::Duration::milliseconds(-1000),
                "not early: {late}"
            );
        }
        seen.push(f.case);
        m.ack().await.unwrap();
    }
    assert!(seen.contains(&case) && seen.contains(&other));
    let js = jetstream::new(client.clone());
    let mut s = js.get_stream("TIMERS").await.unwrap();
    // Nothing else is pending for `case`: the replaced 30 s schedule is gone.
    let info = s.info().await.unwrap();
    assert_eq!(
        info.state.messages, 2,
        "only the two fire messages remain: {:?}",
        info.state
    );
    assert!(timers.schedule("Bad Kind", &case, at).await.is_err());
}

#[tokio::test]
async fn a_timer_survives_a_server_restart() {
    let mut server = NatsServer::start();
    let client = connect(&server).await;
    let timers = Timers::new(client.clone(), Writer::Fulfilment);
    let case = new_case("acme");
    timers
        .schedule("step", &case, Utc::now() + chrono::Duration::seconds(3))
        .await
        .unwrap();
    server.kill();
    server.start_again();
    let client = connect(&server).await;
    let mut fired = fires(&client, &timers.fire_filter()).await;
    let m = tokio::time::timeout(Duration::from_secs(15), fired.next())
        .await
        .expect("the timer fired after the restart")
        .unwrap()
        .unwrap();
    assert_eq!(timers.parse_fire(&m.subject).unwrap().case, case);
}

/// A closed case's timer is removed: its pending schedule never fires, and
/// once the tombstones expire `TIMERS` holds nothing for it, so the stream
/// stays bounded by the open cases.
#[tokio::test]
async fn a_cancelled_timer_never_fires_and_leaves_nothing_behind() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let timers = Timers::new(client.clone(), Writer::Recovery);
    let mut fired = fires(&client, &timers.fire_filter()).await;
    let case: CaseKey = new_case("acme");
    let other: CaseKey = new_case("acme");
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream("TIMERS").await.unwrap();

    // A fired timer (its fire message stays) and a pending one.
    timers.schedule("step", &case, Utc::now()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), fired.next())
        .await
        .expect("a fire within 10 s")
        .unwrap()
        .unwrap();
    assert!(!Timers::is_cancellation(m.headers.as_ref()));
    m.ack().await.unwrap();
    let at = Utc::now() + chrono::Duration::seconds(2);
    timers.schedule("deadline", &case, at).await.unwrap();
    timers.cancel("deadline", &case).await.unwrap();
    timers.cancel("step", &case).await.unwrap();
    timers.cancel("step", &case).await.unwrap();

    // Another case's timer, due after the cancelled one would have fired:
    // everything delivered before it is a tombstone, never a fire of `case`.
    timers
        .schedule("deadline", &other, at + chrono::Duration::seconds(1))
        .await
        .unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(15), fired.next())
            .await
            .expect("the other case's fire within 15 s")
            .unwrap()
            .unwrap();
        let f = timers.parse_fire(&m.subject).expect("a fire subject");
        m.ack().await.unwrap();
        if f.case == other {
            break;
        }
        assert!(
            Timers::is_cancellation(m.headers.as_ref()),
            "the cancelled timer of {case} fired: {}",
            m.subject
        );
    }
    // The tombstones expire: only the other case's fire remains.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let state = stream.info().await.unwrap().state.clone();
        if state.messages == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "TIMERS still holds {} messages for a closed case: {state:?}",
            state.messages
        );
        tokio::task::yield_now().await;
        let _ =
            tokio::time::timeout(Duration::from_millis(200), std::future::pending::<()>()).await;
    }
}

#[tokio::test]
async fn a_fire_aimed_at_another_writer_is_told_apart_from_its_own() {
    let server = NatsServer::start();
    let client = connect(&server).await;
    let recovery = Timers::new(client.clone(), Writer::Recovery);
    let mut fired = fires(&client, &recovery.fire_filter()).await;
    let case: CaseKey = new_case("acme");
    // Intake's own schedule subject, aimed at recovery's fire subject.
    let at = Utc::now() + chrono::Duration::seconds(1);
    let mut h = async_nats::HeaderMap::new();
    h.insert(
        "Nats-Schedule",
        format!(
            "@at {}",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
        .as_str(),
    );
    let target = format!(
        "timer.recovery.fire.deadline.{}.{}",
        case.tenant, case.case_id
    );
    h.insert("Nats-Schedule-Target", target.as_str());
    let js = jetstream::new(client.clone());
    js.publish_with_headers(
        format!(
            "timer.intake.sched.deadline.{}.{}",
            case.tenant, case.case_id
        ),
        h,
        bytes::Bytes::new(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let forged = tokio::time::timeout(Duration::from_secs(10), fired.next())
        .await
        .expect("the forged fire arrives")
        .unwrap()
        .unwrap();
    assert_eq!(forged.subject.as_str(), target);
    assert!(!recovery.scheduled_by_us(&forged.subject, forged.headers.as_ref()));
    forged.ack().await.unwrap();
    // Recovery's own schedule for the same case is its own.
    recovery.schedule("deadline", &case, at).await.unwrap();
    let own = tokio::time::timeout(Duration::from_secs(10), fired.next())
        .await
        .expect("the own fire arrives")
        .unwrap()
        .unwrap();
    assert!(recovery.scheduled_by_us(&own.subject, own.headers.as_ref()));
}
