//! A broker whose storage is full, against a real nats-server whose
//! JetStream may store only a little: the refusal keeps its meaning all the
//! way to the caller (RESOURCE_EXHAUSTED saying the broker cannot store
//! more), and nothing is half-written.

use casework_caselog::conformance::{interaction, new_case};
use casework_caselog::jetstream::{NatsOptions, StreamOptions, connect, ensure_streams};
use casework_caselog::{BrokerTrouble, CaseLog, JetStreamLog};
use casework_testkit::NatsServer;

const LIMIT: u64 = 256 * 1024;

#[tokio::test]
async fn a_broker_out_of_storage_is_resource_exhausted_and_says_so() {
    let server = NatsServer::start_with_store_limit("", LIMIT);
    let client = connect(&NatsOptions {
        url: server.url(),
        ..Default::default()
    })
    .await
    .expect("connect");
    ensure_streams(&client, &StreamOptions::default())
        .await
        .expect("streams");
    let log = JetStreamLog::new(client, "test-0", None);
    let case = new_case("acme");
    let mut head = None;
    let mut appended = 0u64;
    let mut refused = None;
    // Each event is a few hundred bytes: the limit is reached long before
    // the loop ends.
    for i in 0..20_000 {
        match log
            .append(
                &case,
                head.as_ref(),
                vec![interaction(&case, &format!("{i}"))],
            )
            .await
        {
            Ok(a) => {
                head = Some(a.head);
                appended += 1;
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the broker refuses once its storage is full");
    assert_eq!(
        e.broker_trouble(),
        Some(BrokerTrouble::OutOfResources),
        "after {appended} events: {e}"
    );
    eprintln!("refused after {appended} events: {e}");
    let status = casework_runtime::grpc::log_status(&e);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("cannot store more"), "{status:?}");
    // Nothing half-written: the case holds exactly what was acknowledged.
    let events = log.read(&case, 0).await.expect("read back");
    assert_eq!(events.len() as u64, appended);
    assert!(appended > 0);
}
