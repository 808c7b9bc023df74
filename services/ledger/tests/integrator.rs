//! The permissions scheme for readers: the ledger runs with its own reader
//! user, and the read-only integrator user can create its own durable
//! consumer and read events, but the broker refuses its attempt to publish
//! an event (casework_caselog::permissions, Principal::Integrator).

mod common;

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use casework_caselog::jetstream::{NatsOptions, StreamOptions, connect, ensure_streams};
use casework_caselog::permissions::{Principal, nats_authorization};
use casework_caselog::{CaseLog, JetStreamLog};
use casework_domain::Writer;
use casework_testkit::NatsServer;
use common::*;
use futures::StreamExt;

/// The ledger's default instance name, which its reader user is allowed to
/// name its tail consumer after.
const LEDGER_INSTANCE: &str = "ledger-0";

async fn client_as(url: &str, user: &str) -> async_nats::Client {
    connect(&NatsOptions {
        url: url.to_owned(),
        user: Some(user.to_owned()),
        password: Some("pw".to_owned()),
        name: user.to_owned(),
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn integrators_and_the_ledger_read_and_cannot_publish() {
    let server = NatsServer::start_with(&nats_authorization(&[
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
        (Principal::ledger([LEDGER_INSTANCE]), "ledger", "pw"),
        (
            Principal::integrator("acme", ["crm-sync"]).unwrap(),
            "integrator",
            "pw",
        ),
    ]));
    let url = server.url();
    ensure_streams(&client_as(&url, "admin").await, &StreamOptions::default())
        .await
        .unwrap();
    let intake = JetStreamLog::new(
        client_as(&url, "intake").await,
        "intake-0",
        Some(Writer::Intake),
    );
    let fulfilment = JetStreamLog::new(
        client_as(&url, "fulfilment").await,
        "fulfilment-0",
        Some(Writer::Fulfilment),
    );
    let case = casework_caselog::conformance::new_case("acme");
    let decisions = kept_case(&case);
    let mut head = None;
    for d in decisions.into_iter().take(3) {
        let writer: &dyn CaseLog = if d[0].event_type().writer() == Writer::Intake {
            &intake
        } else {
            &fulfilment
        };
        head = Some(writer.append(&case, head.as_ref(), d).await.unwrap().head);
    }
    let last = head.unwrap().stream_seq;

    // The ledger, as its own reader user, archives the case.
    let data = tempfile::tempdir().unwrap();
    let mut opts = options(&url, data.path());
    opts.nats.user = Some("ledger".into());
    opts.nats.password = Some("pw".into());
    assert_eq!(opts.instance, LEDGER_INSTANCE);
    let ledger = Ledger::start(opts).await;
    assert_eq!(ledger.wait_for(&case, 6).await.events, 6);
    ledger.stop().await;

    // The integrator creates its own durable consumer and reads.
    let client = client_as(&url, "integrator").await;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream_no_info("CASES").await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("crm-sync".into()),
            filter_subject: "case.acme.>".into(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let mut read = Vec::new();
    while let Some(m) = msgs.next().await {
        let m = m.unwrap();
        read.push(
            casework_domain::chain::decode(&m.payload)
                .unwrap()
                .event_type,
        );
        m.ack().await.unwrap();
    }
    assert_eq!(
        read,
        [
            "case_opened",
            "promise_made",
            "fulfilment_started",
            "step_started",
            "step_completed",
            "promise_kept"
        ]
    );

    // It cannot publish an event: the broker refuses, nothing is stored.
    let forged = js
        .publish(
            format!("case.acme.{}.intake.case_closed", case.case_id),
            "forged".into(),
        )
        .await;
    let refused = match forged {
        Err(_) => true,
        Ok(ack) => ack.await.is_err(),
    };
    assert!(refused, "the integrator's publish must fail");
    let admin = JetStreamLog::new(client_as(&url, "admin").await, "admin", None);
    assert_eq!(
        admin.last_stream_seq().await.unwrap(),
        last,
        "nothing was stored"
    );
    // Nor can it delete the stream.
    assert!(js.delete_stream("CASES").await.is_err());
    assert_eq!(admin.last_stream_seq().await.unwrap(), last);
}
