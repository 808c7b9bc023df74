//! Crypto-shredding end to end (issue 12 item 5), intake and the ledger on a
//! real nats-server with authentication required: a customer's name and
//! words are readable by those entitled to them and appear nowhere in the
//! broker's store files or in any redb file; only an admin of the tenant
//! may erase them; after the erasure every chain, proof and bundle still
//! verifies, replays show the fields erased, and the wrapped key itself is
//! gone from the broker's files.

use std::path::Path;
use std::time::Duration;

use casework_auth::Role;
use casework_auth::dev::WithToken;
use casework_domain::pb::{self, envelope::Payload};
use casework_e2e::{issuer, nats_users};
use casework_intake::proto as intake;
use casework_ledger::proto as ledger;
use casework_runtime::options::NatsSettings;
use casework_testkit::{NatsServer, eventually};
use casework_tlog::merkle;
use casework_tlog::note::NoteVerifier;
use tonic::Code;

const NAME: &str = "Mustermann";
const CUSTOMER: &str = "erika.mustermann@example.com";
const SUMMARY: &str = "Erika Mustermann wants her money back for the kettle";
const ORDER: &str = "ORDER-MUSTERMANN-4711";

fn files_containing(dir: &Path, needle: &[u8], only_redb: bool) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if (!only_redb || p.extension().is_some_and(|x| x == "redb"))
                && let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

/// None of `needles` is in a file of the broker's `store` or in a redb
/// file under `data`.
fn assert_nowhere(store: &Path, data: &Path, needles: &[&str], when: &str) {
    for needle in needles {
        assert_eq!(
            files_containing(store, needle.as_bytes(), false),
            Vec::<String>::new(),
            "{needle} in the broker's store {when}"
        );
        assert_eq!(
            files_containing(data, needle.as_bytes(), true),
            Vec::<String>::new(),
            "{needle} in a redb file {when}"
        );
    }
}

fn redb_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "redb") {
                n += 1;
            }
        }
    }
    n
}

async fn channel(addr: std::net::SocketAddr, token: &str) -> WithToken {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::service::interceptor::InterceptedService::new(
        ch,
        casework_auth::dev::BearerToken::new(token),
    )
}

/// A fresh signed checkpoint, opened with the key it names.
async fn checkpoint(
    audit: &mut ledger::ledger_client::LedgerClient<WithToken>,
) -> (ledger::SignedCheckpoint, casework_tlog::note::Checkpoint) {
    let cp = audit
        .get_checkpoint(ledger::GetCheckpointRequest {
            tree_size: 0,
            sign_now: true,
        })
        .await
        .unwrap()
        .into_inner();
    let key = NoteVerifier::from_vkey(&cp.public_key).unwrap();
    let opened = casework_tlog::note::open_checkpoint(&key, &cp.note).unwrap();
    (cp, opened)
}

async fn get(
    front: &mut intake::intake_client::IntakeClient<WithToken>,
    case_id: &str,
) -> intake::Case {
    front
        .get_case(intake::GetCaseRequest {
            tenant: "acme".into(),
            case_id: case_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .case
        .unwrap()
}

fn interaction(
    case_id: &str,
    direction: pb::Direction,
    summary: impl Into<String>,
    request_id: &str,
) -> intake::RecordInteractionRequest {
    intake::RecordInteractionRequest {
        tenant: "acme".into(),
        case_id: case_id.to_owned(),
        channel: pb::Channel::Phone as i32,
        direction: direction as i32,
        summary: summary.into(),
        request_id: request_id.to_owned(),
        ..Default::default()
    }
}

fn token(subject: &str, tenants: &[&str], roles: &[Role]) -> String {
    issuer()
        .mint(
            subject,
            Some(subject),
            tenants,
            roles,
            Duration::from_secs(3600),
        )
        .unwrap()
}

#[tokio::test]
async fn an_erased_customer_leaves_every_proof_intact_and_no_plaintext_anywhere() {
    let nats = NatsServer::start_with(&nats_users());
    let dir = nats.scratch_dir().join("system");
    let shutdown = casework_runtime::Shutdown::new();
    let nats_as = |user: &str| NatsSettings {
        url: nats.url(),
        user: Some(user.into()),
        password: Some(format!("pw-{user}")),
        ..Default::default()
    };
    let mut io = casework_intake::default_options();
    io.data_dir = dir.join("intake");
    io.grpc_listen = "127.0.0.1:0".parse().unwrap();
    io.http_listen = "127.0.0.1:0".parse().unwrap();
    io.nats = nats_as("intake");
    io.auth = issuer().settings();
    let intake_run = casework_intake::start(io, shutdown.clone()).await.unwrap();
    let mut lo = casework_ledger::default_options();
    lo.data_dir = dir.join("ledger");
    lo.grpc_listen = "127.0.0.1:0".parse().unwrap();
    lo.http_listen = "127.0.0.1:0".parse().unwrap();
    lo.nats = nats_as("ledger");
    lo.auth = issuer().settings();
    let ledger_run = casework_ledger::start(lo, shutdown.clone()).await.unwrap();

    let agent = token("agent-7", &["acme"], &[Role::Agent]);
    let auditor = token("audrey", &["acme"], &[Role::Auditor]);
    let admin = token("ada", &["acme"], &[Role::Admin]);
    let other_admin = token("olga", &["globex"], &[Role::Admin]);
    let mut front =
        intake::intake_client::IntakeClient::new(channel(intake_run.grpc, &agent).await);
    let mut audit =
        ledger::ledger_client::LedgerClient::new(channel(ledger_run.grpc, &auditor).await);

    // Two cases of the customer, one of someone else.
    let mut cases = Vec::new();
    for (customer, key) in [
        (CUSTOMER, "k-1"),
        (CUSTOMER, "k-2"),
        ("max@example.com", "k-3"),
    ] {
        let opened = front
            .open_case(intake::OpenCaseRequest {
                tenant: "acme".into(),
                customer_id: customer.into(),
                service_code: "refund".into(),
                channel: pb::Channel::Web as i32,
                purchase_stage: pb::PurchaseStage::PostPurchase as i32,
                summary: if customer == CUSTOMER {
                    SUMMARY.into()
                } else {
                    "kettle broken".into()
                },
                attributes: [("order".to_owned(), ORDER.to_owned())].into(),
                idempotency_key: key.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        cases.push(opened.case_id);
    }
    let erika = &cases[..2];
    front
        .record_interaction(interaction(
            &erika[0],
            pb::Direction::Outbound,
            format!("Called Frau {NAME} back about the refund"),
            "call-1",
        ))
        .await
        .unwrap();
    // A retry with the same request id is the same request (deterministic
    // encryption), not a conflict.
    let again = front
        .record_interaction(interaction(
            &erika[0],
            pb::Direction::Outbound,
            format!("Called Frau {NAME} back about the refund"),
            "call-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(again.recorded.unwrap().replayed);

    // Those entitled read plaintext: the agent from intake...
    let got = get(&mut front, &erika[0]).await;
    assert_eq!(
        (got.customer_id.as_str(), got.summary.as_str()),
        (CUSTOMER, SUMMARY)
    );
    assert!(got.personal.is_none(), "no ciphertext is handed to callers");
    let listed = front
        .list_cases(intake::ListCasesRequest {
            tenant: "acme".into(),
            customer_id: CUSTOMER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<_> = listed.cases.iter().map(|c| c.case_id.clone()).collect();
    ids.sort();
    let mut want = erika.to_vec();
    want.sort();
    assert_eq!(
        ids, want,
        "the customer filter finds the customer by pseudonym"
    );
    // ...and the auditor from the ledger, once it archived the case.
    let reader = audit.clone();
    let history = |case: String| {
        let mut audit = reader.clone();
        async move {
            audit
                .get_history(ledger::GetHistoryRequest {
                    tenant: "acme".into(),
                    case_id: case,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    let h = eventually(
        Duration::from_secs(20),
        "the ledger archives the interaction",
        || {
            let h = history(erika[0].clone());
            async move { h.await.ok().filter(|h| h.events.len() >= 3) }
        },
    )
    .await;
    let opened_payload = h.events[0].envelope.as_ref().unwrap().payload.clone();
    let Some(Payload::CaseOpened(o)) = &opened_payload else {
        panic!("the first event is case_opened: {opened_payload:?}")
    };
    assert_eq!(
        (o.customer_id.as_str(), o.summary.as_str()),
        (CUSTOMER, SUMMARY)
    );
    assert_eq!(o.attributes.get("order").map(String::as_str), Some(ORDER));
    assert!(
        !h.events[0]
            .raw
            .windows(NAME.len())
            .any(|w| w == NAME.as_bytes()),
        "the stored bytes are ciphertext"
    );

    // Nowhere in plaintext: the broker's store, every redb file.
    let store = nats.store_dir();
    assert!(
        redb_files(&dir) >= 2,
        "the services' redb files are searched"
    );
    assert_nowhere(&store, &dir, &[NAME, ORDER, CUSTOMER], "before the erasure");
    let admin_js = async_nats::jetstream::new(
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "pw-admin".into())
            .connect(nats.url())
            .await
            .unwrap(),
    );
    let keys = admin_js.get_stream("KEYS").await.unwrap();
    let subject = got.subject.clone();
    assert_eq!(
        subject.len(),
        26,
        "the case names its customer by pseudonym"
    );
    let wrapped = {
        let m = keys
            .get_last_raw_message_by_subject(&format!("keys.acme.key.{subject}"))
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        v["wrapped"].as_str().unwrap().to_owned()
    };
    assert!(!files_containing(&store, wrapped.as_bytes(), false).is_empty());

    // A signed checkpoint before the erasure, to check later that the log
    // only grew across it.
    let (before, before_note) = checkpoint(&mut audit).await;

    // Only an admin of the tenant erases.
    let erase = intake::EraseCustomerRequest {
        tenant: "acme".into(),
        customer_id: CUSTOMER.into(),
        legal_basis: "GDPR Art. 17(1)(a), request 2026-118".into(),
    };
    let refused = front.erase_customer(erase.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let mut foreign =
        intake::intake_client::IntakeClient::new(channel(intake_run.grpc, &other_admin).await);
    let refused = foreign.erase_customer(erase.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let mut boss = intake::intake_client::IntakeClient::new(channel(intake_run.grpc, &admin).await);
    let bad = boss
        .erase_customer(intake::EraseCustomerRequest {
            legal_basis: " ".into(),
            ..erase.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("legal_basis"), "{}", bad.message());
    let done = boss
        .erase_customer(erase.clone())
        .await
        .unwrap()
        .into_inner();
    let mut erased = done.case_ids.clone();
    erased.sort();
    assert_eq!(erased, want, "each of the customer's cases, and no other");
    assert_eq!(done.subject, subject);
    let again = boss.erase_customer(erase.clone()).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound, "{again:?}");

    // The fields read as erased, everywhere; the other customer's do not.
    let got = get(&mut front, &erika[0]).await;
    assert!(
        got.personal_data_erased && got.customer_id.is_empty() && got.summary.is_empty(),
        "{got:?}"
    );
    let max = get(&mut front, &cases[2]).await;
    assert_eq!(max.customer_id, "max@example.com");
    let refused = front
        .record_interaction(interaction(
            &erika[1],
            pb::Direction::Inbound,
            "Erika again",
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    // A bare score carries no personal data: still taken.
    front
        .submit_feedback(intake::SubmitFeedbackRequest {
            tenant: "acme".into(),
            case_id: erika[1].clone(),
            score: 1,
            channel: pb::Channel::Web as i32,
            ..Default::default()
        })
        .await
        .expect("a score without a comment goes in after the erasure");
    for case in erika {
        let h = eventually(
            Duration::from_secs(20),
            "the ledger archives the erasure",
            || {
                let h = history(case.clone());
                async move {
                    // The erasure, and on the second case the bare score
                    // after it.
                    h.await.ok().filter(|h| {
                        let types: Vec<&str> = h
                            .events
                            .iter()
                            .filter_map(|e| e.envelope.as_ref())
                            .map(|e| e.event_type.as_str())
                            .collect();
                        types.contains(&"personal_data_erased")
                            && (*case != erika[1] || types.last() == Some(&"feedback_received"))
                    })
                }
            },
        )
        .await;
        let Some(Payload::CaseOpened(o)) = &h.events[0].envelope.as_ref().unwrap().payload else {
            panic!("case_opened first")
        };
        assert!(o.customer_id.is_empty() && o.summary.is_empty() && o.attributes.is_empty());
        assert!(o.personal.as_ref().is_some_and(|p| p.erased));
        let Some(x) = h
            .events
            .iter()
            .find_map(|e| match &e.envelope.as_ref()?.payload {
                Some(Payload::PersonalDataErased(x)) => Some(x),
                _ => None,
            })
        else {
            unreachable!()
        };
        assert_eq!(x.legal_basis, erase.legal_basis);
        assert_eq!(x.erased_by.as_ref().map(|a| a.id.as_str()), Some("ada"));
        // Every chain and proof still verifies, from the stream too.
        let v = audit
            .verify_case(ledger::VerifyCaseRequest {
                tenant: "acme".into(),
                case_id: case.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(v.intact, "{v:?}");
        // Signed now, so the bundle's checkpoint covers the erasure.
        let (signed, _) = checkpoint(&mut audit).await;
        let bundle = audit
            .export_case(ledger::ExportCaseRequest {
                tenant: "acme".into(),
                case_id: case.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let key = NoteVerifier::from_vkey(&signed.public_key).unwrap();
        let checked = casework_ledger::bundle::check(&bundle.bundle_json, Some(&key)).unwrap();
        assert!(
            checked.is_intact(),
            "{:?} {:?}",
            checked.problems,
            checked.transparency
        );
        let proven = checked.transparency.as_ref().map_or(0, |t| t.proven);
        assert_eq!(
            proven,
            h.events.len(),
            "every event, the erasure too, is in the signed log"
        );
        let replay = audit
            .replay_case(ledger::ReplayCaseRequest {
                tenant: "acme".into(),
                case_id: case.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        let state = replay.state.unwrap();
        assert!(state.personal_data_erased);
        assert!(state.opened.unwrap().customer_id.is_empty());
    }

    // The log only grew across the erasure: nothing was rewritten.
    let (after, after_note) = checkpoint(&mut audit).await;
    assert!(after.tree_size > before.tree_size);
    let proof = audit
        .get_consistency_proof(ledger::GetConsistencyProofRequest {
            old_size: before.tree_size,
            new_size: after.tree_size,
        })
        .await
        .unwrap()
        .into_inner();
    let path: Vec<merkle::Hash> = proof
        .path
        .iter()
        .map(|h| h.as_slice().try_into().unwrap())
        .collect();
    merkle::verify_consistency(
        before_note.size,
        after_note.size,
        &before_note.root,
        &after_note.root,
        &path,
    )
    .expect("the erasure appended; it rewrote nothing");

    // Still nowhere in plaintext, and the wrapped key is overwritten.
    assert_nowhere(
        &store,
        &dir,
        &[NAME, ORDER, CUSTOMER, wrapped.as_str()],
        "after the erasure",
    );

    // The customer comes back: a new case, a new pseudonym.
    let back = front
        .open_case(intake::OpenCaseRequest {
            tenant: "acme".into(),
            customer_id: CUSTOMER.into(),
            service_code: "refund".into(),
            channel: pb::Channel::Web as i32,
            purchase_stage: pb::PurchaseStage::PostPurchase as i32,
            summary: "a new kettle".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let back = get(&mut front, &back.case_id).await;
    assert_eq!(back.customer_id, CUSTOMER);
    assert_ne!(back.subject, subject);
    shutdown.cancel();
}
