//! casectl against a real nats-server and an in-process ledger: replay as a
//! timeline, verify (case, all, bundle offline), export, tail with resume,
//! and the exit codes of unreachable servers and unknown cases.

use std::time::Duration;

use casectl::{Cli, Report};
use casework_caselog::conformance::new_case;
use casework_caselog::jetstream::{NatsOptions, StreamOptions, connect, ensure_streams};
use casework_caselog::{CaseKey, CaseLog, Head, JetStreamLog};
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{EventId, NewEvent};
use casework_runtime::Shutdown;
use casework_testkit::{NatsServer, eventually};
use clap::Parser;

fn ev(case: &CaseKey, key: &str, s: i64, payload: Payload) -> NewEvent {
    NewEvent {
        event_id: EventId::derive(&case.case_id, "casectl-test", key),
        occurred_at: chrono::DateTime::from_timestamp(1_750_000_000 + s, 0).unwrap(),
        causation_id: String::new(),
        correlation_id: case.case_id.to_string(),
        payload,
    }
}

async fn a_case(log: &JetStreamLog) -> (CaseKey, u64) {
    let c = new_case("acme");
    let decisions = vec![
        vec![
            ev(
                &c,
                "o",
                0,
                Payload::CaseOpened(pb::CaseOpened {
                    service_code: "refund".into(),
                    customer_id: "C-1".into(),
                    channel: 5,
                    ..Default::default()
                }),
            ),
            ev(
                &c,
                "p",
                0,
                Payload::PromiseMade(pb::PromiseMade {
                    service_code: "refund".into(),
                    catalog_version: "2025-01".into(),
                    catalog_digest: "ab".repeat(32),
                    ..Default::default()
                }),
            ),
        ],
        vec![ev(
            &c,
            "f",
            1,
            Payload::FulfilmentStarted(pb::FulfilmentStarted {
                run: 1,
                steps: vec!["ship".into()],
                ..Default::default()
            }),
        )],
        vec![ev(
            &c,
            "ff",
            2,
            Payload::FulfilmentFailed(pb::FulfilmentFailed {
                run: 1,
                step_name: "ship".into(),
                ..Default::default()
            }),
        )],
        vec![ev(
            &c,
            "r",
            3,
            Payload::RecoveryStarted(pb::RecoveryStarted {
                recovery: 1,
                reason: "ship failed".into(),
                ..Default::default()
            }),
        )],
    ];
    let mut head: Option<Head> = None;
    for d in decisions {
        head = Some(log.append(&c, head.as_ref(), d).await.unwrap().head);
    }
    (c, 5)
}

async fn run(args: &[&str]) -> (Result<Option<Report>, casectl::Error>, String) {
    let cli = Cli::try_parse_from(std::iter::once("casectl").chain(args.iter().copied())).unwrap();
    let mut out = Vec::new();
    let r = casectl::run(cli, &mut out).await;
    (r, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn auditors_replay_verify_export_and_tail() {
    let server = NatsServer::start();
    let client = connect(&NatsOptions {
        url: server.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    ensure_streams(&client, &StreamOptions::default())
        .await
        .unwrap();
    let log = JetStreamLog::new(client, "test-0", None);
    let (case, n) = a_case(&log).await;
    let data = tempfile::tempdir().unwrap();
    let mut opts = casework_ledger::default_options();
    opts.data_dir = data.path().join("ledger");
    opts.grpc_listen = "127.0.0.1:0".parse().unwrap();
    opts.http_listen = "127.0.0.1:0".parse().unwrap();
    opts.nats.url = server.url();
    let shutdown = Shutdown::new();
    let running = casework_ledger::start(opts, shutdown.clone())
        .await
        .unwrap();
    let ledger = format!("http://{}", running.grpc);
    let name = case.to_string();
    eventually(Duration::from_secs(20), "case archived", || {
        let (ledger, name) = (ledger.clone(), name.clone());
        async move {
            let (r, _) = run(&["--ledger", &ledger, "--json", "replay", &name]).await;
            r.ok().flatten().filter(|r| r.json["state"]["events"] == n)
        }
    })
    .await;

    // replay: the timeline in three lanes, and as of a sequence
    let (r, _) = run(&["--ledger", &ledger, "replay", &name]).await;
    let r = r.unwrap().unwrap();
    assert!(
        r.text.contains("FRONT STAGE")
            && r.text.contains("BACK STAGE")
            && r.text.contains("RECOVERY")
    );
    assert!(r.text.contains("run 1 FAILED at ship"), "{}", r.text);
    assert!(r.text.contains("status      recovering"), "{}", r.text);
    let (r, _) = run(&["--ledger", &ledger, "--json", "replay", &name, "--at", "3"]).await;
    let r = r.unwrap().unwrap();
    assert_eq!(r.json["state"]["status"], "fulfilling");
    assert_eq!(r.json["events"].as_array().unwrap().len(), 3);
    assert_eq!(r.json["events"][2]["lane"], "back_stage");
    let (r, _) = run(&[
        "--ledger",
        &ledger,
        "--json",
        "replay",
        &name,
        "--at",
        "2025-06-15T15:06:41Z",
    ])
    .await;
    assert_eq!(
        r.unwrap().unwrap().json["state"]["events"],
        3,
        "events up to 1_750_000_001"
    );
    let (r, _) = run(&["--ledger", &ledger, "replay", &name, "--at", "yesterday"]).await;
    assert_eq!(r.unwrap_err().exit_code(), 2);

    // verify one case and all
    let (r, _) = run(&["--ledger", &ledger, "verify", &name]).await;
    let r = r.unwrap().unwrap();
    assert!(!r.problem && r.text.contains("intact"), "{}", r.text);
    let (r, _) = run(&["--ledger", &ledger, "--json", "verify", "--all"]).await;
    let r = r.unwrap().unwrap();
    assert_eq!(r.json["broken"], 0);
    assert!(!r.problem);

    // export, then verify the bundle offline (no server flag needed)
    let file = data.path().join("case.bundle.json");
    let (r, _) = run(&[
        "--ledger",
        &ledger,
        "export",
        &name,
        "-o",
        file.to_str().unwrap(),
    ])
    .await;
    assert!(r.unwrap().unwrap().text.contains("wrote"));
    let (r, _) = run(&[
        "--ledger",
        "http://127.0.0.1:1",
        "verify",
        "--bundle",
        file.to_str().unwrap(),
    ])
    .await;
    let r = r.unwrap().unwrap();
    assert!(!r.problem, "{}", r.text);
    // a tampered bundle: exit 1 with the place of the break
    let mut b: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    b["events"].as_array_mut().unwrap().remove(1);
    let bad = data.path().join("bad.bundle.json");
    std::fs::write(&bad, serde_json::to_vec(&b).unwrap()).unwrap();
    let (r, _) = run(&["verify", "--bundle", bad.to_str().unwrap()]).await;
    let r = r.unwrap().unwrap();
    assert!(
        r.problem && r.text.contains("BROKEN at event 2"),
        "{}",
        r.text
    );
    let (r, _) = run(&["verify", "--bundle", "/nonexistent.json"]).await;
    assert_eq!(r.unwrap_err().exit_code(), 2);

    // The signed checkpoint, saved; the bundle proven in the signed log with
    // the ledger's public key; a stranger's key refused (exit 1); a bad key
    // a usage error (exit 2).
    let old_cp = data.path().join("old.checkpoint");
    let (r, _) = run(&[
        "--ledger",
        &ledger,
        "--json",
        "checkpoint",
        "--now",
        "-o",
        old_cp.to_str().unwrap(),
    ])
    .await;
    let r = r.unwrap().unwrap();
    let public_key = r.json["public_key"].as_str().unwrap().to_owned();
    assert!(r.json["tree_size"].as_u64().unwrap() >= n);
    assert!(
        std::fs::read_to_string(&old_cp)
            .unwrap()
            .contains("\n\n\u{2014} ")
    );
    let (r, _) = run(&[
        "verify",
        "--bundle",
        file.to_str().unwrap(),
        "--public-key",
        &public_key,
    ])
    .await;
    let r = r.unwrap().unwrap();
    assert!(!r.problem, "{}", r.text);
    assert!(
        r.text
            .contains(&format!("inclusion: {n} of {n} events proven")),
        "{}",
        r.text
    );
    let stranger = data.path().join("stranger.key");
    let (r, _) = run(&[
        "--json",
        "keygen",
        "--origin",
        "casework.local/ledger",
        "-o",
        stranger.to_str().unwrap(),
    ])
    .await;
    let stranger_pub = r.unwrap().unwrap().json["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        std::fs::read_to_string(&stranger)
            .unwrap()
            .starts_with("PRIVATE+KEY+casework.local/ledger+")
    );
    let (r, _) = run(&[
        "keygen",
        "--origin",
        "casework.local/ledger",
        "-o",
        stranger.to_str().unwrap(),
    ])
    .await;
    assert_eq!(
        r.unwrap_err().exit_code(),
        2,
        "an existing key is never overwritten"
    );
    let (r, _) = run(&[
        "verify",
        "--bundle",
        file.to_str().unwrap(),
        "--public-key",
        &stranger_pub,
    ])
    .await;
    let r = r.unwrap().unwrap();
    assert!(r.problem && r.text.contains("checkpoint:"), "{}", r.text);
    let (r, _) = run(&[
        "verify",
        "--bundle",
        file.to_str().unwrap(),
        "--public-key",
        "not-a-key",
    ])
    .await;
    assert_eq!(r.unwrap_err().exit_code(), 2);
    // The log grows; the two checkpoints are consistent.
    let (more, _) = a_case(&log).await;
    let more_name = more.to_string();
    eventually(Duration::from_secs(20), "second case archived", || {
        let (ledger, name) = (ledger.clone(), more_name.clone());
        async move {
            let (r, _) = run(&["--ledger", &ledger, "--json", "replay", &name]).await;
            r.ok().flatten().filter(|r| r.json["state"]["events"] == n)
        }
    })
    .await;
    let new_cp = data.path().join("new.checkpoint");
    let (r, _) = run(&[
        "--ledger",
        &ledger,
        "checkpoint",
        "--now",
        "-o",
        new_cp.to_str().unwrap(),
    ])
    .await;
    r.unwrap().unwrap();
    let (r, _) = run(&[
        "--ledger",
        &ledger,
        "verify",
        "--consistency",
        old_cp.to_str().unwrap(),
        new_cp.to_str().unwrap(),
        "--public-key",
        &public_key,
    ])
    .await;
    let r = r.unwrap().unwrap();
    assert!(!r.problem && r.text.starts_with("consistent"), "{}", r.text);
    // Given the other way round: a usage error naming the order.
    let (r, _) = run(&[
        "--ledger",
        &ledger,
        "verify",
        "--consistency",
        new_cp.to_str().unwrap(),
        old_cp.to_str().unwrap(),
        "--public-key",
        &public_key,
    ])
    .await;
    assert_eq!(r.unwrap_err().exit_code(), 2);

    // tail from the start, then resume after the last position printed
    let (r, out) = run(&[
        "--ledger",
        &ledger,
        "--tenant",
        "acme",
        "tail",
        "--from-start",
        "--limit",
        "3",
    ])
    .await;
    assert_eq!(r.unwrap(), None);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let pos = lines[2]
        .rsplit('[')
        .next()
        .unwrap()
        .trim_end_matches(']')
        .to_owned();
    let (_, out) = run(&[
        "--ledger", &ledger, "--json", "tail", "--from", &pos, "--limit", "2",
    ])
    .await;
    let seqs: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]["sequence"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![4, 5], "resumes right after event 3");

    // exit codes: not found, unreachable, bad input
    let other = new_case("acme").to_string();
    let (r, _) = run(&["--ledger", &ledger, "verify", &other]).await;
    assert_eq!(r.unwrap_err().exit_code(), 4);
    let (r, _) = run(&["--ledger", "http://127.0.0.1:1", "verify", &name]).await;
    assert_eq!(r.unwrap_err().exit_code(), 3);
    let (r, _) = run(&["--intake", "http://127.0.0.1:1", "show", &name]).await;
    assert_eq!(r.unwrap_err().exit_code(), 3);
    let (r, _) = run(&[
        "--ledger", &ledger, "tail", "--writer", "ledger", "--limit", "1",
    ])
    .await;
    assert_eq!(r.unwrap_err().exit_code(), 2);
    shutdown.cancel();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn with_authentication_required_casectl_sends_the_token_it_minted() {
    let server = NatsServer::start();
    let client = connect(&NatsOptions {
        url: server.url(),
        ..Default::default()
    })
    .await
    .unwrap();
    ensure_streams(&client, &StreamOptions::default())
        .await
        .unwrap();
    let log = JetStreamLog::new(client, "test-0", None);
    let (case, n) = a_case(&log).await;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_owned();
    // The token first: it creates the development key the ledger trusts.
    let (r, token) = run(&[
        "token",
        "--for-tenant",
        case.tenant.as_str(),
        "--role",
        "auditor",
        "--subject",
        "audrey",
        "--ttl",
        "10m",
        "--data-dir",
        &data_dir,
    ])
    .await;
    assert!(r.unwrap().is_none());
    let token = token.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let issuer = casework_auth::dev::DevIssuer::load_or_create(&data.path().join("auth")).unwrap();
    let mut opts = casework_ledger::default_options();
    opts.data_dir = data.path().join("ledger");
    opts.grpc_listen = "127.0.0.1:0".parse().unwrap();
    opts.http_listen = "127.0.0.1:0".parse().unwrap();
    opts.nats.url = server.url();
    opts.auth = issuer.settings();
    let shutdown = Shutdown::new();
    let running = casework_ledger::start(opts, shutdown.clone())
        .await
        .unwrap();
    let ledger = format!("http://{}", running.grpc);
    let name = case.to_string();
    eventually(Duration::from_secs(20), "case archived", || {
        let (ledger, name, token) = (ledger.clone(), name.clone(), token.clone());
        async move {
            let (r, _) = run(&[
                "--ledger", &ledger, "--token", &token, "--json", "replay", &name,
            ])
            .await;
            r.ok().flatten().filter(|r| r.json["state"]["events"] == n)
        }
    })
    .await;
    // Without the token: refused, exit 5, and told how to fix it.
    let (r, _) = run(&["--ledger", &ledger, "replay", &name]).await;
    let e = r.unwrap_err();
    assert_eq!(e.exit_code(), 5, "{e}");
    assert!(e.to_string().contains("casectl token"), "{e}");
    // Bad token arguments are usage errors.
    for bad in [
        vec![
            "token",
            "--for-tenant",
            "acme",
            "--role",
            "cfo",
            "--subject",
            "x",
        ],
        vec![
            "token",
            "--for-tenant",
            "acme",
            "--role",
            "agent",
            "--subject",
            "x",
            "--ttl",
            "99d",
        ],
    ] {
        let (r, _) = run(&bad).await;
        assert_eq!(r.unwrap_err().exit_code(), 2, "{bad:?}");
    }
    shutdown.cancel();
    running.wait().await.unwrap();
}
