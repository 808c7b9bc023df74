//! The vault against a real nats-server: keys made once per customer (also
//! by two owners racing), read by readers, destroyed for good — and the
//! wrapped key's bytes gone from the broker's store files.

use std::path::Path;
use std::time::Duration;

use casework_caselog::jetstream::{StreamOptions, ensure_streams};
use casework_domain::pb::{self, envelope::Payload};
use casework_privacy::{Access, Kek, KeyRef, Place, Revealed, Vault};
use casework_testkit::NatsServer;

fn kek(text: &str) -> Kek {
    Kek::from_hex(text, "test").unwrap()
}

async fn vaults(server: &NatsServer) -> (Vault, Vault, Vault) {
    let client = async_nats::connect(server.url()).await.unwrap();
    ensure_streams(&client, &StreamOptions::default())
        .await
        .unwrap();
    let (_, text) = Kek::generate();
    let ttl = Duration::from_secs(30);
    (
        Vault::new(client.clone(), kek(&text), Access::Owner, ttl, 100),
        Vault::new(client.clone(), kek(&text), Access::Owner, ttl, 100),
        Vault::new(client, kek(&text), Access::Reader, ttl, 100),
    )
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

fn feedback(comment: &str) -> Payload {
    Payload::FeedbackReceived(pb::FeedbackReceived {
        score: 1,
        comment: comment.to_owned(),
        ..Default::default()
    })
}

const AT: Place<'static> = Place {
    tenant: "acme",
    case_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2B",
    event_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2C",
};

#[tokio::test]
async fn one_key_per_customer_readable_by_readers_until_it_is_destroyed() {
    let server = NatsServer::start();
    let (owner, racer, reader) = vaults(&server).await;

    // Two owners (two intake replicas) racing for a new customer agree.
    let (a, b) = tokio::join!(
        owner.key_for_customer("acme", "erika@example.com"),
        racer.key_for_customer("acme", "erika@example.com")
    );
    let ((kref, key), (kref_b, _)) = (a.unwrap(), b.unwrap());
    assert_eq!(kref, kref_b, "one key per customer, whoever asks");
    let (again, _) = owner
        .key_for_customer("acme", "erika@example.com")
        .await
        .unwrap();
    assert_eq!(again, kref);
    let (other, _) = owner
        .key_for_customer("acme", "max@example.com")
        .await
        .unwrap();
    assert_ne!(other.subject, kref.subject);
    let (elsewhere, _) = owner
        .key_for_customer("globex", "erika@example.com")
        .await
        .unwrap();
    assert_ne!(
        elsewhere.subject, kref.subject,
        "tenants never share a pseudonym"
    );

    // Encrypt with the owner's key, decrypt with the reader's.
    let mut p = feedback("Erika Mustermann waited 3 weeks");
    assert!(owner.protect(&mut p, AT, &kref, &key));
    let stored = p.clone();
    let mut read = stored.clone();
    assert_eq!(
        reader.reveal_payload(&mut read, AT).await.unwrap(),
        Revealed::Decrypted
    );
    assert_eq!(read, feedback("Erika Mustermann waited 3 weeks"));

    // The wrapped key is in the store before the erasure...
    let store = server.store_dir();
    let wrapped_key_record = {
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let stream = js.get_stream("KEYS").await.unwrap();
        let m = stream
            .get_last_raw_message_by_subject(&format!("keys.acme.key.{}", kref.subject))
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        v["wrapped"].as_str().unwrap().to_owned()
    };
    assert!(
        !files_containing(&store, wrapped_key_record.as_bytes()).is_empty(),
        "the wrapped key is stored in the broker's files before the erasure"
    );

    // ...and gone after it.
    owner.destroy("acme", &kref).await.unwrap();
    owner.destroy("acme", &kref).await.unwrap();
    assert_eq!(
        files_containing(&store, wrapped_key_record.as_bytes()),
        Vec::<String>::new(),
        "the broker overwrote the wrapped key in its store"
    );
    // A reader that held the key drops it when it sees the erasure event.
    let mut erasure = pb::Envelope {
        tenant: "acme".into(),
        payload: Some(Payload::PersonalDataErased(pb::PersonalDataErased {
            subject: kref.subject.clone(),
            key_id: kref.key_id.clone(),
            ..Default::default()
        })),
        ..Default::default()
    };
    reader.reveal(&mut erasure).await.unwrap();
    let mut read = stored.clone();
    assert_eq!(
        reader.reveal_payload(&mut read, AT).await.unwrap(),
        Revealed::Erased
    );
    let Payload::FeedbackReceived(f) = &read else {
        unreachable!()
    };
    assert!(f.comment.is_empty() && f.personal.as_ref().unwrap().erased);
    assert_eq!(reader.key("acme", &kref).await.unwrap().map(|_| ()), None);
    // Until its lookup is erased (the last step of an erasure), a repeated
    // erasure still finds the customer; then nothing links the id to the
    // pseudonym.
    assert_eq!(
        owner
            .find_customer("acme", "erika@example.com")
            .await
            .unwrap(),
        Some(kref.clone())
    );
    owner
        .forget_customer("acme", "erika@example.com", &kref)
        .await
        .unwrap();
    assert_eq!(
        owner
            .find_customer("acme", "erika@example.com")
            .await
            .unwrap(),
        None
    );

    // The customer comes back: a new pseudonym and key, the old data stays
    // unreadable.
    let (next, _) = owner
        .key_for_customer("acme", "erika@example.com")
        .await
        .unwrap();
    assert_ne!(next.subject, kref.subject);
    assert_eq!(reader.key("acme", &kref).await.unwrap().map(|_| ()), None);
    // Other customers are untouched.
    assert!(reader.key("acme", &other).await.unwrap().is_some());
}

#[tokio::test]
async fn a_reader_cannot_make_or_destroy_keys_and_another_kek_is_named() {
    let server = NatsServer::start();
    let (owner, _, reader) = vaults(&server).await;
    let e = reader
        .key_for_customer("acme", "c-1")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("reader vault"), "{e}");
    let (kref, _) = owner.key_for_customer("acme", "c-1").await.unwrap();
    let e = reader.destroy("acme", &kref).await.unwrap_err().to_string();
    assert!(e.contains("reader vault"), "{e}");
    let client = async_nats::connect(server.url()).await.unwrap();
    let stranger = Vault::new(
        client,
        Kek::generate().0,
        Access::Reader,
        Duration::from_secs(1),
        10,
    );
    let e = stranger.key("acme", &kref).await.unwrap_err().to_string();
    assert!(
        e.contains("wrapped by KEK") && e.contains("same KEK"),
        "{e}"
    );
    let missing = KeyRef {
        subject: "01JD8X3V5R6M2Q4T7W9Y0Z1A2Z".into(),
        key_id: kref.key_id.clone(),
    };
    let e = reader.key("acme", &missing).await.unwrap_err().to_string();
    assert!(e.contains("not in the key stream"), "{e}");
}
