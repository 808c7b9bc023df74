//! Least privilege on a real nats-server (casework_caselog::permissions):
//! every refusal below is the broker's, seen twice — the operation fails for
//! the client, and the server reports a permissions violation naming the
//! subject it refused. And each user can still do its own work, so the
//! refusals are not an artefact of a user that can do nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::PullConsumer, consumer::pull};
use casework_caselog::conformance::{interaction, new_case};
use casework_caselog::jetstream::{CHECKPOINT_SUBJECT, StreamOptions, ensure_streams, named_tail};
use casework_caselog::permissions::{
    INTAKE_CLOSER, Principal, RECOVERY_TIMERS, inbox_prefix, nats_authorization, tail_consumer,
};
use casework_caselog::{CaseKey, CaseLog, JetStreamLog};
use casework_domain::Writer;
use casework_testkit::NatsServer;
use futures::StreamExt;

const TENANT: &str = "acme";
const OTHER: &str = "other";
const INTEGRATOR: &str = "integrator-acme";
const INTEGRATOR_CONSUMER: &str = "acme-sync";
/// How long a refused request waits for the reply that never comes.
const REFUSED: Duration = Duration::from_millis(750);

fn users() -> String {
    nats_authorization(&[
        (Principal::Admin, "admin", "pw"),
        (
            Principal::writer(Writer::Intake, ["intake-0"]),
            "intake",
            "pw",
        ),
        (
            Principal::writer(Writer::Fulfilment, ["fulfilment-0"]),
            "fulfilment",
            "pw",
        ),
        (
            Principal::writer(Writer::Recovery, ["recovery-0"]),
            "recovery",
            "pw",
        ),
        (Principal::ledger(["ledger-0"]), "ledger", "pw"),
        (
            Principal::integrator(TENANT, [INTEGRATOR_CONSUMER]).unwrap(),
            INTEGRATOR,
            "pw",
        ),
    ])
}

/// A connection as `user` that records every error the server reports.
struct Conn {
    client: async_nats::Client,
    js: jetstream::Context,
    errors: Arc<Mutex<Vec<String>>>,
}

async fn conn(server: &NatsServer, user: &str) -> Conn {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), "pw".into())
        .custom_inbox_prefix(inbox_prefix(user))
        .request_timeout(Some(REFUSED))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(server.url())
        .await
        .unwrap();
    let js = jetstream::ContextBuilder::new()
        .timeout(REFUSED)
        .build(client.clone());
    Conn { client, js, errors }
}

impl Conn {
    /// Waits until the server has reported a permissions violation for
    /// `subject` (quoted as the server quotes it), or fails after 5 s.
    async fn refused(&self, subject: &str) {
        let needle = format!("\"{subject}\"");
        casework_testkit::eventually_explained(
            Duration::from_secs(5),
            Duration::from_millis(20),
            &format!("a permissions violation for {subject}"),
            || async {
                self.client.flush().await.map_err(|e| e.to_string())?;
                let errors = self.errors.lock().unwrap();
                if errors
                    .iter()
                    .any(|e| e.contains("Permissions Violation") && e.contains(&needle))
                {
                    Ok(())
                } else {
                    Err(format!("the server reported {errors:?}"))
                }
            },
        )
        .await;
    }

    /// A raw request that the broker must refuse: it fails, and the
    /// violation names `subject`.
    async fn request_refused(&self, subject: &str, body: &str) {
        let r = self
            .client
            .request(subject.to_owned(), body.to_owned().into())
            .await;
        assert!(r.is_err(), "{subject} answered: {r:?}");
        self.refused(subject).await;
    }
}

/// Appends `n` intake events to a new case of `tenant`.
async fn events(log: &JetStreamLog, tenant: &str, n: usize) -> CaseKey {
    let case = new_case(tenant);
    let mut head = None;
    for i in 0..n {
        let a = log
            .append(
                &case,
                head.as_ref(),
                vec![interaction(&case, &format!("{i}"))],
            )
            .await
            .unwrap();
        head = Some(a.head);
    }
    case
}

#[tokio::test]
async fn an_integrator_cannot_stop_a_service_nor_read_another_tenant() {
    let server = NatsServer::start_with(&users());
    let admin = conn(&server, "admin").await;
    ensure_streams(&admin.client, &StreamOptions::default())
        .await
        .unwrap();
    let intake = conn(&server, "intake").await;
    let cases = intake.js.get_stream_no_info("CASES").await.unwrap();
    let _closer: PullConsumer = cases
        .create_consumer(pull::Config {
            durable_name: Some(INTAKE_CLOSER.into()),
            filter_subject: "case.>".into(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let log = JetStreamLog::new(intake.client.clone(), "intake-0", Some(Writer::Intake));
    let own = events(&log, TENANT, 2).await;
    let foreign = events(&log, OTHER, 1).await;

    let i = conn(&server, INTEGRATOR).await;
    let stream = i.js.get_stream_no_info("CASES").await.unwrap();

    // Re-creating a service's consumer with another filter (the attack that
    // stopped intake from closing cases): new style, legacy with the name
    // in the body, and the durable form — all refused.
    let hijack: Result<PullConsumer, _> = stream
        .create_consumer(pull::Config {
            durable_name: Some(INTAKE_CLOSER.into()),
            filter_subject: "case.nobody-home.>".into(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await;
    assert!(hijack.is_err());
    i.refused(&format!(
        "$JS.API.CONSUMER.CREATE.CASES.{INTAKE_CLOSER}.case.nobody-home.>"
    ))
    .await;
    let body = format!(
        r#"{{"stream_name":"CASES","config":{{"name":"{INTAKE_CLOSER}","durable_name":"{INTAKE_CLOSER}","filter_subjects":["case.nobody-home.>"],"ack_policy":"explicit"}}}}"#
    );
    i.request_refused("$JS.API.CONSUMER.CREATE.CASES", &body)
        .await;
    i.request_refused(
        &format!("$JS.API.CONSUMER.DURABLE.CREATE.CASES.{INTAKE_CLOSER}"),
        &body,
    )
    .await;

    // Pulling from and acknowledging the service's consumer: refused.
    i.request_refused(
        &format!("$JS.API.CONSUMER.MSG.NEXT.CASES.{INTAKE_CLOSER}"),
        r#"{"batch":10,"no_wait":true}"#,
    )
    .await;
    let ack = format!("$JS.ACK.CASES.{INTAKE_CLOSER}.1.1.1.0.0");
    i.client.publish(ack.clone(), "".into()).await.unwrap();
    i.refused(&ack).await;

    // The service's consumer is as intake made it, with nothing taken.
    let mut closer: PullConsumer = admin
        .js
        .get_stream("CASES")
        .await
        .unwrap()
        .get_consumer(INTAKE_CLOSER)
        .await
        .unwrap();
    let info = closer.info().await.unwrap().clone();
    assert_eq!(info.config.filter_subject, "case.>");
    assert!(info.config.filter_subjects.is_empty());
    assert_eq!(info.num_pending, 3, "{info:?}");
    assert_eq!(info.delivered.stream_sequence, 0, "{info:?}");

    // An unnamed consumer, and its own consumer filtered on another
    // tenant: refused.
    let unnamed: Result<PullConsumer, _> = stream
        .create_consumer(pull::Config {
            filter_subject: format!("case.{TENANT}.>"),
            ..Default::default()
        })
        .await;
    assert!(unnamed.is_err());
    i.refused("$JS.API.CONSUMER.CREATE.CASES").await;
    let snooping: Result<PullConsumer, _> = stream
        .create_consumer(pull::Config {
            durable_name: Some(INTEGRATOR_CONSUMER.into()),
            filter_subject: format!("case.{OTHER}.>"),
            ..Default::default()
        })
        .await;
    assert!(snooping.is_err());
    i.refused(&format!(
        "$JS.API.CONSUMER.CREATE.CASES.{INTEGRATOR_CONSUMER}.case.{OTHER}.>"
    ))
    .await;

    // Direct reads of another tenant's subjects, or by stream sequence
    // (which reaches every tenant): refused. Its own tenant's: allowed.
    let other_subject = format!(
        "case.{OTHER}.{}.intake.interaction_recorded",
        foreign.case_id
    );
    assert!(
        stream
            .direct_get_last_for_subject(&other_subject)
            .await
            .is_err()
    );
    i.refused(&format!("$JS.API.DIRECT.GET.CASES.{other_subject}"))
        .await;
    assert!(stream.direct_get(1).await.is_err());
    i.refused("$JS.API.DIRECT.GET.CASES").await;
    let own_subject = format!("case.{TENANT}.{}.intake.interaction_recorded", own.case_id);
    let last = stream
        .direct_get_last_for_subject(&own_subject)
        .await
        .unwrap();
    assert_eq!(last.sequence, 2);

    // Live subjects of another tenant, and other users' inboxes (where
    // their pull requests are answered): refused.
    for subject in [format!("case.{OTHER}.>"), "_INBOX.>".to_owned()] {
        let _sub = i.client.subscribe(subject.clone()).await.unwrap();
        i.refused(&subject).await;
    }

    // What the integrator may do works: its own consumer under its tenant
    // delivers exactly its tenant's events, and it acknowledges them.
    let mine: PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(INTEGRATOR_CONSUMER.into()),
            filter_subject: format!("case.{TENANT}.>"),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = mine.fetch().max_messages(10).messages().await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        got.push(m.subject.to_string());
        m.double_ack().await.unwrap();
    }
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got.iter()
            .all(|s| s.starts_with(&format!("case.{TENANT}.")))
    );
    // And it sees its tenant's events live.
    let mut live = i
        .client
        .subscribe(format!("case.{TENANT}.>"))
        .await
        .unwrap();
    // flush() only empties the socket; a request answered on the same
    // connection proves the server has taken the subscription (it reads a
    // connection's commands in order), before another connection publishes.
    stream
        .direct_get_last_for_subject(&own_subject)
        .await
        .unwrap();
    events(&log, TENANT, 1).await;
    let m = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .expect("a live event of its tenant")
        .unwrap();
    assert!(m.subject.starts_with(&format!("case.{TENANT}.")));

    // Intake, the consumer's owner, still pulls from it.
    let mut owned = closer.fetch().max_messages(1).messages().await.unwrap();
    let first = owned.next().await.unwrap().unwrap();
    assert_eq!(first.info().unwrap().stream_sequence, 1);
}

#[tokio::test]
async fn a_service_touches_only_its_own_consumers() {
    let server = NatsServer::start_with(&users());
    let recovery = conn(&server, "recovery").await;
    ensure_streams(&recovery.client, &StreamOptions::default())
        .await
        .unwrap();
    let timers = recovery.js.get_stream_no_info("TIMERS").await.unwrap();
    let _own: PullConsumer = timers
        .create_consumer(pull::Config {
            durable_name: Some(RECOVERY_TIMERS.into()),
            filter_subject: "timer.recovery.fire.>".into(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let recovery_log = JetStreamLog::new(
        recovery.client.clone(),
        "recovery-0",
        Some(Writer::Recovery),
    );
    let mut recovery_tail = recovery_log.tail("case.>", 1).await.unwrap();

    let intake = conn(&server, "intake").await;
    let log = JetStreamLog::new(intake.client.clone(), "intake-0", Some(Writer::Intake));
    // Intake cannot drain recovery's timers, nor take over or delete its
    // consumers.
    intake
        .request_refused(
            &format!("$JS.API.CONSUMER.MSG.NEXT.TIMERS.{RECOVERY_TIMERS}"),
            r#"{"batch":10,"no_wait":true}"#,
        )
        .await;
    let ack = format!("$JS.ACK.TIMERS.{RECOVERY_TIMERS}.1.1.1.0.0");
    intake.client.publish(ack.clone(), "".into()).await.unwrap();
    intake.refused(&ack).await;
    let taken: Result<PullConsumer, _> = intake
        .js
        .get_stream_no_info("TIMERS")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some(RECOVERY_TIMERS.into()),
            filter_subject: "timer.recovery.fire.>".into(),
            ..Default::default()
        })
        .await;
    assert!(taken.is_err());
    intake
        .refused(&format!(
            "$JS.API.CONSUMER.CREATE.TIMERS.{RECOVERY_TIMERS}.timer.recovery.fire.>"
        ))
        .await;
    let recovery_tail_name = tail_consumer("recovery", "recovery-0");
    intake
        .request_refused(
            &format!("$JS.API.CONSUMER.DELETE.CASES.{recovery_tail_name}"),
            "",
        )
        .await;
    // Nor name a tail after an instance it was not given, nor schedule
    // timers (intake has none), nor write another service's events.
    assert!(
        named_tail(
            &intake.js,
            &tail_consumer("intake", "intake-9"),
            "case.>",
            1
        )
        .await
        .is_err()
    );
    intake
        .refused("$JS.API.CONSUMER.DELETE.CASES.intake-tail-intake-9")
        .await;
    let timer = "timer.intake.sched.deadline.acme.c1";
    intake.client.publish(timer, "".into()).await.unwrap();
    intake.refused(timer).await;
    let fulfilment = conn(&server, "fulfilment").await;
    let aimed = "timer.recovery.sched.deadline.acme.c1";
    fulfilment.client.publish(aimed, "".into()).await.unwrap();
    fulfilment.refused(aimed).await;

    // Recovery's consumers are untouched and work: its tail delivers what
    // intake appends, its timer durable is as it made it.
    let case = events(&log, TENANT, 1).await;
    let d = tokio::time::timeout(Duration::from_secs(5), recovery_tail.next())
        .await
        .expect("recovery's tail delivers")
        .unwrap()
        .unwrap();
    assert!(
        d.subject
            .starts_with(&format!("case.{TENANT}.{}.", case.case_id))
    );
    let admin = conn(&server, "admin").await;
    let mut own: PullConsumer = admin
        .js
        .get_stream("TIMERS")
        .await
        .unwrap()
        .get_consumer(RECOVERY_TIMERS)
        .await
        .unwrap();
    assert_eq!(
        own.info().await.unwrap().config.filter_subject,
        "timer.recovery.fire.>"
    );

    // Intake's own tail, under its own name, works; the ledger's too.
    let mut intake_tail = log.tail("case.>", 1).await.unwrap();
    assert_eq!(intake_tail.next().await.unwrap().unwrap().stream_seq, 1);
    let ledger = conn(&server, "ledger").await;
    let (mut ledger_tail, _) = named_tail(
        &ledger.js,
        &tail_consumer("ledger", "ledger-0"),
        "case.>",
        1,
    )
    .await
    .unwrap();
    assert_eq!(
        ledger_tail
            .next()
            .await
            .unwrap()
            .info()
            .unwrap()
            .stream_sequence,
        1
    );
}

#[tokio::test]
async fn only_the_ledger_publishes_checkpoints_and_only_checkpoints() {
    let server = NatsServer::start_with(&users());
    let admin = conn(&server, "admin").await;
    ensure_streams(&admin.client, &StreamOptions::default())
        .await
        .unwrap();

    // The ledger's checkpoint lands in the CHECKPOINTS stream.
    let ledger = conn(&server, "ledger").await;
    let ack = ledger
        .js
        .publish(
            CHECKPOINT_SUBJECT,
            "casework.local/ledger\n1\nAAAA\n".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "CHECKPOINTS");
    // It writes nothing else: no event, no other subject.
    for subject in [
        "case.acme.c1.intake.case_opened",
        "tlog.checkpoint.other",
        "tlog.witness",
    ] {
        ledger.client.publish(subject, "".into()).await.unwrap();
        ledger.refused(subject).await;
    }
    // No service and no integrator can publish a checkpoint.
    for user in ["intake", "fulfilment", "recovery", INTEGRATOR] {
        let c = conn(&server, user).await;
        c.client
            .publish(CHECKPOINT_SUBJECT, "forged".into())
            .await
            .unwrap();
        c.refused(CHECKPOINT_SUBJECT).await;
    }
    // An integrator reads the checkpoints (a witness), by sequence too:
    // they hold no tenant's data.
    let witness = conn(&server, INTEGRATOR).await;
    let kept = witness
        .js
        .get_stream_no_info("CHECKPOINTS")
        .await
        .unwrap()
        .direct_get(1)
        .await
        .unwrap();
    assert!(kept.payload.starts_with(b"casework.local/ledger\n"));
    // And the stream keeps what it has: no delete, no purge, even for an
    // operator's API call.
    let stream = admin.js.get_stream("CHECKPOINTS").await.unwrap();
    assert_eq!(stream.get_info().await.unwrap().state.messages, 1);
    assert!(stream.delete_message(1).await.is_err());
    assert!(stream.purge().await.is_err());
    assert_eq!(stream.get_info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn only_intake_makes_and_erases_data_keys_and_readers_read_keys_only() {
    let server = NatsServer::start_with(&users());
    let admin = conn(&server, "admin").await;
    ensure_streams(&admin.client, &StreamOptions::default())
        .await
        .unwrap();
    let key = "keys.acme.key.01JD8X3V5R6M2Q4T7W9Y0Z1A2D";
    let lookup = "keys.acme.customer.01JD8X3V5R6M2Q4T7W9Y0Z1A2E";

    // Intake makes a key and a lookup, reads them from the leader, and
    // erases a message.
    let intake = conn(&server, "intake").await;
    for subject in [key, lookup, "keys.acme.key.01JD8X3V5R6M2Q4T7W9Y0Z1A2F"] {
        let ack = intake
            .js
            .publish(subject, r#"{"v":1}"#.into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(ack.stream, "KEYS");
    }
    let keys = intake.js.get_stream_no_info("KEYS").await.unwrap();
    assert!(keys.get_last_raw_message_by_subject(lookup).await.is_ok());
    let erase = intake
        .client
        .request(
            "$JS.API.STREAM.MSG.DELETE.KEYS",
            r#"{"seq":3,"no_erase":false}"#.into(),
        )
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&erase.payload).contains("\"success\":true"),
        "{:?}",
        erase.payload
    );

    // Fulfilment and the ledger read a key by its subject, and nothing else.
    for user in ["fulfilment", "ledger"] {
        let c = conn(&server, user).await;
        let got =
            c.js.get_stream_no_info("KEYS")
                .await
                .unwrap()
                .direct_get_last_for_subject(key)
                .await
                .unwrap();
        assert_eq!(&got.payload[..], br#"{"v":1}"#);
        c.request_refused(&format!("$JS.API.DIRECT.GET.KEYS.{lookup}"), "")
            .await;
        c.request_refused("$JS.API.DIRECT.GET.KEYS", r#"{"seq":1}"#)
            .await;
        c.request_refused("$JS.API.STREAM.MSG.DELETE.KEYS", r#"{"seq":1}"#)
            .await;
        c.request_refused("$JS.API.STREAM.MSG.GET.KEYS", r#"{"seq":1}"#)
            .await;
        c.client.publish(key, "forged".into()).await.unwrap();
        c.refused(key).await;
    }
    // Recovery and integrators get no key at all.
    for user in ["recovery", INTEGRATOR] {
        let c = conn(&server, user).await;
        c.request_refused(&format!("$JS.API.DIRECT.GET.KEYS.{key}"), "")
            .await;
        c.client.publish(lookup, "forged".into()).await.unwrap();
        c.refused(lookup).await;
    }
    // Nobody purges the key stream, not even an operator's API call.
    assert!(
        admin
            .js
            .get_stream("KEYS")
            .await
            .unwrap()
            .purge()
            .await
            .is_err()
    );
}
