//! The transparency log on a real nats-server: every archived event is a
//! leaf of an RFC 9162 tree whose checkpoints the ledger signs; inclusion
//! and consistency proofs verify with `casework-tlog`'s verifiers (not by
//! asking the ledger); a ledger rebuilt from the stream has the same roots;
//! a bundle's checkpoint and proofs catch an altered, dropped or reordered
//! event; and an operator who rewrites a whole case with a consistent new
//! chain (and even signs with the ledger's own key) is caught against the
//! checkpoint published before.

mod common;

use casework_caselog::CaseLog;
use casework_domain::chain;
use casework_ledger::bundle;
use casework_proto::ledger::v1 as api;
use casework_tlog::{leaf, merkle, note};
use common::*;

fn hash(b: &[u8]) -> merkle::Hash {
    b.try_into().expect("32 bytes")
}

async fn checkpoint(ledger: &Ledger) -> (api::SignedCheckpoint, note::Checkpoint) {
    let cp = ledger
        .client
        .clone()
        .get_checkpoint(api::GetCheckpointRequest {
            tree_size: 0,
            sign_now: true,
        })
        .await
        .unwrap()
        .into_inner();
    let key = note::NoteVerifier::from_vkey(&cp.public_key).unwrap();
    let opened = note::open_checkpoint(&key, &cp.note).expect("the note opens with its key");
    assert_eq!(
        (opened.size, opened.root.to_vec()),
        (cp.tree_size, cp.root_hash.clone())
    );
    (cp, opened)
}

async fn export(ledger: &Ledger, case: &casework_caselog::CaseKey) -> bundle::Bundle {
    let json = ledger
        .client
        .clone()
        .export_case(api::ExportCaseRequest {
            tenant: case.tenant.to_string(),
            case_id: case.case_id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .bundle_json;
    serde_json::from_slice(&json).unwrap()
}

fn check(b: &bundle::Bundle, key: &note::NoteVerifier) -> bundle::Checked {
    bundle::check(&serde_json::to_vec(b).unwrap(), Some(key)).unwrap()
}

#[tokio::test]
async fn every_event_is_proven_in_signed_checkpoints_of_a_log_that_only_grows() {
    let (server, log) = server().await;
    let a = sample(log.as_ref(), "acme", false).await;
    let b = sample(log.as_ref(), "acme", true).await;
    let data = tempfile::tempdir().unwrap();
    let mut opts = options(&server.url(), data.path());
    opts.service.checkpoint_interval_seconds = 1;
    let ledger = Ledger::start(opts).await;
    let na = log.read(&a, 0).await.unwrap().len() as u64;
    let nb = log.read(&b, 0).await.unwrap().len() as u64;
    ledger.wait_for(&a, na).await;
    ledger.wait_for(&b, nb).await;

    let (cp1, opened1) = checkpoint(&ledger).await;
    assert_eq!(cp1.tree_size, na + nb, "one leaf per archived event");
    assert_eq!(opened1.origin, "casework.local/ledger");
    // The key the ledger made on first start is in its data directory,
    // readable by its owner only, and signs exactly these notes.
    let skey = std::fs::read_to_string(data.path().join("checkpoint.key")).unwrap();
    let signer = note::NoteSigner::from_skey(skey.trim()).unwrap();
    assert_eq!(signer.verifier().vkey(), cp1.public_key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.path().join("checkpoint.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the private key is not readable by others");
    }

    // Every event of case a: the leaf computed here from its raw bytes is
    // in the signed tree.
    let history = ledger
        .client
        .clone()
        .get_history(api::GetHistoryRequest {
            tenant: a.tenant.to_string(),
            case_id: a.case_id.to_string(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.events.len() as u64, na);
    for e in &history.events {
        let p = ledger
            .client
            .clone()
            .get_inclusion_proof(api::GetInclusionProofRequest {
                tenant: a.tenant.to_string(),
                case_id: a.case_id.to_string(),
                case_position: e.case_position,
                tree_size: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mine = leaf::event_leaf_hash(
            a.tenant.as_str(),
            a.case_id.as_str(),
            e.case_position,
            &chain::hash(&e.raw),
        );
        assert_eq!(p.leaf_hash, mine.to_vec());
        let path: Vec<merkle::Hash> = p.path.iter().map(|h| hash(h)).collect();
        merkle::verify_inclusion(p.leaf_index, p.tree_size, &mine, &path, &opened1.root)
            .unwrap_or_else(|err| panic!("event {}: {err}", e.case_position));
        // The same proof for another event's leaf does not verify.
        let other = leaf::event_leaf_hash(
            a.tenant.as_str(),
            a.case_id.as_str(),
            e.case_position + 1,
            &chain::hash(&e.raw),
        );
        assert!(
            merkle::verify_inclusion(p.leaf_index, p.tree_size, &other, &path, &opened1.root)
                .is_err()
        );
    }
    // An event that is not archived, a tree the ledger never signed.
    let missing = ledger
        .client
        .clone()
        .get_inclusion_proof(api::GetInclusionProofRequest {
            tenant: a.tenant.to_string(),
            case_id: a.case_id.to_string(),
            case_position: na + 1,
            tree_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing}");
    let unsigned = ledger
        .client
        .clone()
        .get_consistency_proof(api::GetConsistencyProofRequest {
            old_size: 1,
            new_size: cp1.tree_size,
        })
        .await
        .unwrap_err();
    assert_eq!(unsigned.code(), tonic::Code::NotFound, "{unsigned}");

    // The log grows; the new checkpoint is consistent with the old one.
    let c = sample(log.as_ref(), "globex", false).await;
    let nc = log.read(&c, 0).await.unwrap().len() as u64;
    ledger.wait_for(&c, nc).await;
    let (cp2, opened2) = checkpoint(&ledger).await;
    assert_eq!(cp2.tree_size, cp1.tree_size + nc);
    let proof = ledger
        .client
        .clone()
        .get_consistency_proof(api::GetConsistencyProofRequest {
            old_size: cp1.tree_size,
            new_size: cp2.tree_size,
        })
        .await
        .unwrap()
        .into_inner();
    let path: Vec<merkle::Hash> = proof.path.iter().map(|h| hash(h)).collect();
    merkle::verify_consistency(
        opened1.size,
        opened2.size,
        &opened1.root,
        &opened2.root,
        &path,
    )
    .expect("the log only grew");
    let mut wrong = opened1.root;
    wrong[0] ^= 1;
    assert!(
        merkle::verify_consistency(opened1.size, opened2.size, &wrong, &opened2.root, &path)
            .is_err()
    );

    // Each checkpoint was published on the CHECKPOINTS stream, for
    // witnesses to keep.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let stream = js.get_stream("CHECKPOINTS").await.unwrap();
    casework_testkit::eventually(WAIT, "checkpoint published", || {
        let stream = stream.clone();
        let want = cp2.note.clone();
        async move {
            let m = stream
                .direct_get_last_for_subject("tlog.checkpoint")
                .await
                .ok()?;
            (m.payload.as_ref() == want.as_bytes()).then_some(())
        }
    })
    .await;

    // A ledger rebuilt from the stream on an empty directory has the same
    // roots (and, with the same key, signs the same checkpoint).
    let data2 = tempfile::tempdir().unwrap();
    std::fs::copy(
        data.path().join("checkpoint.key"),
        data2.path().join("checkpoint.key"),
    )
    .unwrap();
    let mut opts2 = options(&server.url(), data2.path());
    opts2.instance = "ledger-rebuilt".to_owned(); // its own tail consumer
    let rebuilt = Ledger::start(opts2).await;
    rebuilt.wait_for(&c, nc).await;
    let (cp3, _) = checkpoint(&rebuilt).await;
    assert_eq!(
        (cp3.tree_size, &cp3.root_hash),
        (cp2.tree_size, &cp2.root_hash)
    );
    assert_eq!(cp3.note, cp2.note, "Ed25519 signatures are deterministic");
    rebuilt.stop().await;

    // The exported bundle proves every event in the signed log.
    let key = note::NoteVerifier::from_vkey(&cp2.public_key).unwrap();
    let bundled = export(&ledger, &a).await;
    assert_eq!(bundled.format, bundle::FORMAT);
    let ok = check(&bundled, &key);
    assert!(ok.is_intact(), "{:?} {:?}", ok.problems, ok.transparency);
    assert_eq!(ok.transparency.as_ref().unwrap().proven as u64, na);
    // With another key: refused.
    let stranger = note::NoteSigner::new("casework.local/ledger", [7; 32])
        .unwrap()
        .verifier();
    let c2 = check(&bundled, &stranger);
    assert!(!c2.is_intact());
    assert!(c2.transparency.unwrap().problems[0].contains("checkpoint"));
    ledger.stop().await;
}

#[tokio::test]
async fn an_altered_dropped_or_reordered_event_is_named_by_its_proof() {
    let (server, log) = server().await;
    let a = sample(log.as_ref(), "acme", true).await;
    let data = tempfile::tempdir().unwrap();
    let ledger = Ledger::start(options(&server.url(), data.path())).await;
    let n = log.read(&a, 0).await.unwrap().len() as u64;
    ledger.wait_for(&a, n).await;
    let bundled = export(&ledger, &a).await;
    let (cp, _) = checkpoint(&ledger).await;
    let key = note::NoteVerifier::from_vkey(&cp.public_key).unwrap();
    assert!(check(&bundled, &key).is_intact());
    let problems = |b: &bundle::Bundle| check(b, &key).transparency.unwrap().problems;

    // Altered: one byte of event 3, with its sha256 recomputed so the
    // bundle is self-consistent.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut altered = bundled.clone();
    let mut raw = b64.decode(&altered.events[2].raw_base64).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0x20;
    altered.events[2].raw_base64 = b64.encode(&raw);
    altered.events[2].sha256 = hex::encode(chain::hash(&raw));
    let p = problems(&altered);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("event at position 3 "), "{p:?}");

    // Dropped from the middle: the events after it keep valid proofs, the
    // chain names the gap.
    let mut dropped = bundled.clone();
    dropped.events.remove(3);
    let c = check(&dropped, &key);
    assert!(!c.is_intact());
    let brk = c.verification.first_break.unwrap();
    assert_eq!(
        (brk.case_seq, brk.fault),
        (4, casework_domain::LinkFault::Missing)
    );

    // Reordered, positions swapped to hide it: each swapped event's proof
    // fails, naming both.
    let mut reordered = bundled.clone();
    reordered.events.swap(1, 2);
    let (p1, p2) = (
        reordered.events[1].case_position,
        reordered.events[2].case_position,
    );
    reordered.events[1].case_position = p2;
    reordered.events[2].case_position = p1;
    let p = problems(&reordered);
    assert!(
        p.iter().any(|m| m.starts_with("event at position 2 "))
            && p.iter().any(|m| m.starts_with("event at position 3 ")),
        "{p:?}"
    );
    // Cut short at its end with the head rewritten to match (the chain
    // alone cannot see it): the signed map of case heads says the case
    // went on.
    let mut cut = bundled.clone();
    for _ in 0..3 {
        cut.events.pop();
    }
    let last = cut.events.last().unwrap().clone();
    cut.head = Some(bundle::BundleHead {
        sequence: last.case_position,
        sha256: last.sha256.clone(),
        stream_seq: last.stream_seq,
    });
    let c = check(&cut, &key);
    assert!(c.verification.is_intact(), "the chain alone is fooled");
    let p = c.transparency.unwrap().problems;
    assert!(
        p.len() == 1 && p[0].contains("missing from its end"),
        "{p:?}"
    );
    // A proof from another event: refused.
    let mut borrowed = bundled.clone();
    borrowed.events[0].inclusion = bundled.events[1].inclusion.clone();
    assert!(problems(&borrowed)[0].starts_with("event at position 1 "));
    ledger.stop().await;
}

/// The operator's attack: rewrite a whole case with a new, internally
/// consistent chain (here: the same case id on a copy of the broker), have
/// a ledger archive it and sign with the real ledger's key. Every local
/// check passes — and the checkpoint published before catches it.
#[tokio::test]
async fn a_case_rewritten_with_a_consistent_chain_fails_against_the_earlier_checkpoint() {
    let (server, log) = server().await;
    let case = casework_caselog::conformance::new_case("acme");
    append_all(log.as_ref(), &case, kept_case(&case)).await;
    let n = log.read(&case, 0).await.unwrap().len() as u64;
    let data = tempfile::tempdir().unwrap();
    let honest = Ledger::start(options(&server.url(), data.path())).await;
    honest.wait_for(&case, n).await;
    let (published, opened) = checkpoint(&honest).await;
    let key = note::NoteVerifier::from_vkey(&published.public_key).unwrap();
    honest.stop().await;

    // The rewrite: same case, recovered instead of kept, a fresh chain.
    let (forged_server, forged_log) = common::server().await;
    append_all(forged_log.as_ref(), &case, recovered_case(&case)).await;
    let m = forged_log.read(&case, 0).await.unwrap().len() as u64;
    let forged_data = tempfile::tempdir().unwrap();
    std::fs::copy(
        data.path().join("checkpoint.key"),
        forged_data.path().join("checkpoint.key"),
    )
    .unwrap();
    let forger = Ledger::start(options(&forged_server.url(), forged_data.path())).await;
    forger.wait_for(&case, m).await;
    let forged = export(&forger, &case).await;
    // On its own the forgery is flawless: chain intact, signed by the key,
    // every event proven in its own checkpoint.
    let alone = check(&forged, &key);
    assert!(alone.is_intact(), "{:?}", alone.transparency);
    let (forged_cp, forged_opened) = checkpoint(&forger).await;

    // Against what was published: the forger cannot show its log extends
    // the published one (whatever proof it offers).
    let proof = if forged_opened.size >= opened.size {
        forger
            .client
            .clone()
            .get_consistency_proof(api::GetConsistencyProofRequest {
                old_size: opened.size,
                new_size: forged_opened.size,
            })
            .await
            .map(|p| p.into_inner().path)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let path: Vec<merkle::Hash> = proof.iter().map(|h| hash(h)).collect();
    assert!(
        merkle::verify_consistency(
            opened.size,
            forged_opened.size,
            &opened.root,
            &forged_opened.root,
            &path
        )
        .is_err(),
        "the rewritten log is not an extension of the published one"
    );
    assert_ne!(forged_cp.root_hash, published.root_hash);
    // And its events, checked against the published checkpoint, are named.
    let mut against = forged.clone();
    against.checkpoint.as_mut().unwrap().note = published.note.clone();
    against.checkpoint.as_mut().unwrap().tree_size = published.tree_size;
    against.checkpoint.as_mut().unwrap().root_hash = hex::encode(&published.root_hash);
    let p = check(&against, &key).transparency.unwrap().problems;
    assert!(
        p.iter().any(|m| m.starts_with("event at position "))
            && p.iter().any(|m| m.starts_with("case map: "))
            && p.iter()
                .all(|m| m.starts_with("event at position ") || m.starts_with("case map: ")),
        "{p:?}"
    );
    forger.stop().await;
}
