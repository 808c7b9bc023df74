//! The ledger against a real nats-server: rebuilding the archive from the
//! stream, history, replay, verification, export, subscriptions that resume
//! with no gap and no duplicate, restart, and a chain break recorded while
//! archiving.

mod common;

use std::collections::BTreeMap;

use casework_caselog::CaseLog;
use casework_domain::chain::{self, timestamp};
use casework_domain::{CaseState, ChainTip, evolve};
use casework_ledger::{bundle, convert};
use casework_proto::ledger::v1 as api;
use casework_testkit::eventually;
use common::*;
use futures::StreamExt;
use tonic::Code;

fn case_req(case: &casework_caselog::CaseKey) -> (String, String) {
    (case.tenant.to_string(), case.case_id.to_string())
}

async fn replay(
    client: &mut api::ledger_client::LedgerClient<tonic::transport::Channel>,
    req: api::ReplayCaseRequest,
) -> Result<Vec<api::ReplayStep>, tonic::Status> {
    let mut s = client.replay_case(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(step) = s.next().await {
        out.push(step?);
    }
    Ok(out)
}

#[tokio::test]
async fn an_empty_archive_is_rebuilt_from_the_stream_and_agrees_with_it() {
    let (server, log) = server().await;
    let mut cases = Vec::new();
    for i in 0..6 {
        cases.push(
            sample(
                log.as_ref(),
                if i % 2 == 0 { "acme" } else { "globex" },
                i % 3 == 0,
            )
            .await,
        );
    }
    let data = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::start(options(&server.url(), data.path())).await;
    ledger.wait_ready().await;
    for case in &cases {
        let stream = log.read(case, 0).await.unwrap();
        let summary = ledger.wait_for(case, stream.len() as u64).await;
        let (tenant, case_id) = case_req(case);
        // archive == stream, byte for byte, in order
        let mut archived = Vec::new();
        let mut token = String::new();
        loop {
            let page = ledger
                .client
                .get_history(api::GetHistoryRequest {
                    tenant: tenant.clone(),
                    case_id: case_id.clone(),
                    page_size: 4,
                    page_token: token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.total, stream.len() as u64);
            archived.extend(page.events);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(archived.len(), stream.len());
        for (a, s) in archived.iter().zip(&stream) {
            assert_eq!(a.raw, s.bytes.to_vec());
            assert_eq!(a.stream_seq, s.stream_seq);
            assert_eq!(a.subject, s.subject);
            assert_eq!(a.envelope.as_ref(), Some(&s.envelope));
            assert_eq!(a.case_position, s.envelope.sequence);
        }
        // The replayed final state equals the state folded independently
        // from the stream, and the ledger's own head.
        let mut folded = CaseState::fold(stream.iter().map(|e| &e.envelope));
        let last = stream.last().unwrap();
        folded.tip = Some(ChainTip {
            case_seq: last.envelope.sequence,
            hash: last.hash,
        });
        let steps = replay(
            &mut ledger.client,
            api::ReplayCaseRequest {
                tenant: tenant.clone(),
                case_id: case_id.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(steps.len(), 1);
        let state = steps[0].state.clone().unwrap();
        assert_eq!(state, convert::state(&folded));
        assert_eq!(state.status, "closed");
        assert_eq!(steps[0].catalog_version, "2025-01");
        assert_eq!(summary.head_sequence, state.tip_sequence);
        assert_eq!(summary.head_sha256, state.tip_sha256);
        assert_eq!(summary.head_stream_seq, last.stream_seq);
        assert_eq!(summary.events, state.events);
        assert!(summary.chain.unwrap().intact);
        assert_eq!(summary.last_event_type, last.envelope.event_type);
    }
    // VerifyAll: every case intact on both sides.
    let mut all = ledger
        .client
        .verify_all(api::VerifyAllRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(v) = all.next().await {
        let v = v.unwrap();
        assert!(v.intact, "{v:?}");
        assert!(v.stream.unwrap().intact);
        n += 1;
    }
    assert_eq!(n, cases.len());
    let only_acme = ledger
        .client
        .verify_all(api::VerifyAllRequest {
            tenant: "acme".into(),
            only_broken: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count()
        .await;
    assert_eq!(only_acme, 0, "no broken case");
    ledger.stop().await;
}

#[tokio::test]
async fn replay_as_of_a_sequence_or_a_time_and_each_event() {
    let (server, log) = server().await;
    let case = sample(log.as_ref(), "acme", true).await;
    let stream = log.read(&case, 0).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::start(options(&server.url(), data.path())).await;
    ledger.wait_for(&case, stream.len() as u64).await;
    let (tenant, case_id) = case_req(&case);
    let base = api::ReplayCaseRequest {
        tenant: tenant.clone(),
        case_id: case_id.clone(),
        ..Default::default()
    };

    // each event: one step per event, the state after it
    let each = replay(
        &mut ledger.client,
        api::ReplayCaseRequest {
            mode: api::ReplayMode::EachEvent as i32,
            ..base.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(each.len(), stream.len());
    let mut s = CaseState::default();
    for (step, e) in each.iter().zip(&stream) {
        s = evolve(s, &e.envelope);
        s.tip = Some(ChainTip {
            case_seq: e.envelope.sequence,
            hash: e.hash,
        });
        assert_eq!(step.state.as_ref().unwrap(), &convert::state(&s));
        assert_eq!(step.event.as_ref().unwrap().stream_seq, e.stream_seq);
    }

    // as of sequence 4 (fulfilment failed? no: after step_failed)
    let at4 = replay(
        &mut ledger.client,
        api::ReplayCaseRequest {
            mode: api::ReplayMode::AtSequence as i32,
            at_sequence: 4,
            ..base.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(at4.len(), 1);
    assert_eq!(
        at4[0].state.as_ref().unwrap(),
        each[3].state.as_ref().unwrap()
    );

    // as of a time: events with occurred_at <= T (at(6) covers up to the apology)
    let t = timestamp(at(6));
    let by_time = replay(
        &mut ledger.client,
        api::ReplayCaseRequest {
            mode: api::ReplayMode::AtTime as i32,
            at_time: Some(t),
            ..base.clone()
        },
    )
    .await
    .unwrap();
    let expected = stream
        .iter()
        .filter(|e| chain::from_timestamp(e.envelope.occurred_at.as_ref().unwrap()) <= at(6))
        .count();
    let st = by_time[0].state.clone().unwrap();
    assert_eq!(st.events, expected as u64);
    assert_eq!(st.status, "recovering");
    // before the case existed: the empty state, no event
    let before = replay(
        &mut ledger.client,
        api::ReplayCaseRequest {
            mode: api::ReplayMode::AtTime as i32,
            at_time: Some(timestamp(at(-60))),
            ..base.clone()
        },
    )
    .await
    .unwrap();
    assert!(before[0].event.is_none());
    assert_eq!(before[0].state.as_ref().unwrap().status, "new");

    // bad input
    let e = replay(
        &mut ledger.client,
        api::ReplayCaseRequest {
            mode: api::ReplayMode::AtSequence as i32,
            at_sequence: 999,
            ..base.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = replay(
        &mut ledger.client,
        api::ReplayCaseRequest {
            mode: api::ReplayMode::AtTime as i32,
            ..base.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("at_time"), "{e:?}");
    let e = replay(
        &mut ledger.client,
        api::ReplayCaseRequest {
            tenant: "ACME!".into(),
            ..base.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("tenant"), "{e:?}");
    let other = casework_caselog::conformance::new_case("acme");
    let e = replay(
        &mut ledger.client,
        api::ReplayCaseRequest {
            case_id: other.case_id.to_string(),
            ..base.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    ledger.stop().await;
}

#[tokio::test]
async fn export_makes_a_bundle_that_verifies_offline_and_catches_tampering() {
    let (server, log) = server().await;
    let case = sample(log.as_ref(), "acme", false).await;
    let n = log.read(&case, 0).await.unwrap().len() as u64;
    let data = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::start(options(&server.url(), data.path())).await;
    ledger.wait_for(&case, n).await;
    let (tenant, case_id) = case_req(&case);
    let v = ledger
        .client
        .verify_case(api::VerifyCaseRequest {
            tenant: tenant.clone(),
            case_id: case_id.clone(),
            archive_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.intact && v.archive.unwrap().intact && v.stream.unwrap().intact);
    assert_eq!(v.first_difference, 0);

    let export = ledger
        .client
        .export_case(api::ExportCaseRequest { tenant, case_id })
        .await
        .unwrap()
        .into_inner();
    assert!(export.file_name.ends_with(".bundle.json"));
    let checked = bundle::check(&export.bundle_json, None).unwrap();
    assert!(
        checked.is_intact(),
        "{:?} {:?}",
        checked.verification,
        checked.problems
    );
    let b = &checked.bundle;
    assert_eq!(b.events.len() as u64, n);
    assert_eq!(b.catalog.as_ref().unwrap().version, "2025-01");
    assert!(
        !b.catalog.as_ref().unwrap().known_to_ledger,
        "the sample catalogue has another version"
    );
    let decoded = b.events[0].decoded.as_ref().unwrap();
    assert_eq!(decoded["event_type"], "case_opened");
    assert_eq!(decoded["case_opened"]["channel"], "CHANNEL_WEB");
    assert_eq!(
        decoded["sequence"], "1",
        "proto3 JSON writes uint64 as a string"
    );

    // Tamper with the bundle: alter one byte of event 3's raw bytes.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut tampered = b.clone();
    let mut raw = b64.decode(&tampered.events[2].raw_base64).unwrap();
    let i = raw.windows(5).position(|w| w == b"check").unwrap();
    raw[i] = b'C';
    tampered.events[2].raw_base64 = b64.encode(&raw);
    tampered.events[2].sha256 = hex::encode(chain::hash(&raw));
    let c = bundle::check(&serde_json::to_vec(&tampered).unwrap(), None).unwrap();
    let brk = c.verification.first_break.unwrap();
    assert_eq!(
        (brk.case_seq, brk.fault),
        (3, casework_domain::LinkFault::Altered)
    );
    // Drop the last event: the head (anchor) notices.
    let mut truncated = b.clone();
    truncated.events.pop();
    let c = bundle::check(&serde_json::to_vec(&truncated).unwrap(), None).unwrap();
    let brk = c.verification.first_break.unwrap();
    assert_eq!(
        (brk.case_seq, brk.fault),
        (n, casework_domain::LinkFault::Missing)
    );
    // A lying sha256 field is a problem of the bundle.
    let mut lying = b.clone();
    lying.events[0].sha256 = "00".repeat(32);
    let c = bundle::check(&serde_json::to_vec(&lying).unwrap(), None).unwrap();
    assert!(!c.is_intact() && c.problems.len() == 1, "{:?}", c.problems);
    assert!(bundle::check(b"{}", None).is_err());
    ledger.stop().await;
}

async fn collect(
    stream: &mut tonic::Streaming<api::SubscribeResponse>,
    n: usize,
) -> Vec<api::SubscribeResponse> {
    let mut out = Vec::new();
    while out.len() < n {
        let item = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("an event within the wait")
            .expect("stream open")
            .expect("event");
        out.push(item);
    }
    out
}

#[tokio::test]
async fn subscribe_resumes_after_a_disconnect_with_no_gap_and_no_duplicate() {
    let (server, log) = server().await;
    let mut cases = Vec::new();
    for i in 0..4 {
        cases.push(
            sample(
                log.as_ref(),
                if i % 2 == 0 { "acme" } else { "globex" },
                false,
            )
            .await,
        );
    }
    let data = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::start(options(&server.url(), data.path())).await;
    ledger.wait_ready().await;

    // Bad filters are refused before anything streams.
    for (req, field) in [
        (
            api::SubscribeRequest {
                tenant: "Acme".into(),
                ..Default::default()
            },
            "tenant",
        ),
        (
            api::SubscribeRequest {
                case_id: "nope".into(),
                ..Default::default()
            },
            "case_id",
        ),
        (
            api::SubscribeRequest {
                writer: "ledger".into(),
                ..Default::default()
            },
            "writer",
        ),
        (
            api::SubscribeRequest {
                event_type: "case_deleted".into(),
                ..Default::default()
            },
            "event_type",
        ),
        (
            api::SubscribeRequest {
                writer: "intake".into(),
                event_type: "promise_kept".into(),
                ..Default::default()
            },
            "event_type",
        ),
        (
            api::SubscribeRequest {
                after_position: "garbage".into(),
                ..Default::default()
            },
            "after_position",
        ),
    ] {
        let e = ledger.client.subscribe(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{field}: {e:?}");
    }

    // Expected: every acme event in stream order, including ones appended
    // while the subscriber is away.
    let req = api::SubscribeRequest {
        tenant: "acme".into(),
        start: api::Start::Beginning as i32,
        ..Default::default()
    };
    let mut first = ledger
        .client
        .subscribe(req.clone())
        .await
        .unwrap()
        .into_inner();
    let got1 = collect(&mut first, 5).await;
    drop(first); // disconnect mid-stream
    // While away: more events for acme (and globex).
    let extra_acme = sample(log.as_ref(), "acme", true).await;
    sample(log.as_ref(), "globex", false).await;
    let mut resumed = ledger
        .client
        .subscribe(api::SubscribeRequest {
            after_position: got1.last().unwrap().position.clone(),
            ..req.clone()
        })
        .await
        .unwrap()
        .into_inner();
    let mut expected: Vec<u64> = Vec::new();
    for c in cases
        .iter()
        .chain([&extra_acme])
        .filter(|c| c.tenant.as_str() == "acme")
    {
        expected.extend(log.read(c, 0).await.unwrap().iter().map(|e| e.stream_seq));
    }
    expected.sort();
    let got2 = collect(&mut resumed, expected.len() - got1.len()).await;
    let seqs: Vec<u64> = got1
        .iter()
        .chain(&got2)
        .map(|r| r.event.as_ref().unwrap().stream_seq)
        .collect();
    assert_eq!(seqs, expected, "no gap, no duplicate, in stream order");
    assert!(
        got2.iter()
            .all(|r| r.event.as_ref().unwrap().subject.starts_with("case.acme."))
    );

    // Live: an event appended now reaches the resumed subscription next.
    let live_case = sample(log.as_ref(), "acme", false).await;
    let live = collect(&mut resumed, 1).await;
    let first_live = log.read(&live_case, 0).await.unwrap()[0].stream_seq;
    assert_eq!(live[0].event.as_ref().unwrap().stream_seq, first_live);

    // Filters by writer and event type; "from now" sees only new events.
    let mut kept = ledger
        .client
        .subscribe(api::SubscribeRequest {
            event_type: "promise_kept".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let c = sample(log.as_ref(), "globex", false).await;
    let k = collect(&mut kept, 1).await;
    let env = k[0].event.as_ref().unwrap().envelope.as_ref().unwrap();
    assert_eq!(
        (env.event_type.as_str(), env.case_id.as_str()),
        ("promise_kept", c.case_id.as_str())
    );
    let mut by_writer = ledger
        .client
        .subscribe(api::SubscribeRequest {
            writer: "recovery".into(),
            start: api::Start::Beginning as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = collect(&mut by_writer, 6).await;
    assert!(
        r.iter()
            .all(|e| e.event.as_ref().unwrap().envelope.as_ref().unwrap().writer == "recovery")
    );
    ledger.stop().await;
}

#[tokio::test]
async fn a_restarted_ledger_continues_from_its_checkpoint_without_duplicates() {
    let (server, log) = server().await;
    let a = sample(log.as_ref(), "acme", false).await;
    let data = tempfile::tempdir().unwrap();
    let ledger = Ledger::start(options(&server.url(), data.path())).await;
    let n = log.read(&a, 0).await.unwrap().len() as u64;
    ledger.wait_for(&a, n).await;
    ledger.stop().await;
    let b = sample(log.as_ref(), "acme", true).await;
    // More events on the archived case too.
    append_all(
        log.as_ref(),
        &a,
        vec![vec![ev(
            &a,
            "late-fb",
            at(20),
            casework_domain::pb::envelope::Payload::FeedbackReceived(
                casework_domain::pb::FeedbackReceived {
                    score: 1,
                    ..Default::default()
                },
            ),
        )]],
    )
    .await;
    let ledger = Ledger::start(options(&server.url(), data.path())).await;
    ledger.wait_ready().await;
    let sa = ledger.wait_for(&a, n + 1).await;
    assert_eq!(sa.events, n + 1);
    assert!(sa.chain.unwrap().intact);
    let nb = log.read(&b, 0).await.unwrap().len() as u64;
    let sb = ledger.wait_for(&b, nb).await;
    assert_eq!(sb.events, nb);
    ledger.stop().await;
}

#[tokio::test]
async fn a_forged_event_is_recorded_as_a_break_and_archiving_goes_on() {
    let (server, log) = server().await;
    let a = sample(log.as_ref(), "acme", false).await;
    let stream = log.read(&a, 0).await.unwrap();
    // An operator with full rights publishes an event that does not continue
    // the chain (wrong prev_hash), straight into the stream.
    let mut forged = stream[2].envelope.clone();
    forged.sequence = stream.len() as u64 + 1;
    forged.event_id = casework_domain::EventId::derive(&a.case_id, "forged", "x").to_string();
    let bytes = prost::Message::encode_to_vec(&forged);
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish(stream[2].subject.clone(), bytes.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let b = sample(log.as_ref(), "acme", false).await;

    let data = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::start(options(&server.url(), data.path())).await;
    let s = ledger.wait_for(&a, stream.len() as u64 + 1).await;
    let chain = s.chain.unwrap();
    assert!(!chain.intact);
    let brk = chain.first_break.unwrap();
    assert_eq!(brk.fault, api::LinkFault::Altered as i32, "{brk:?}");
    // the forged event is the last one: the previous event's hash is not
    // what it recorded
    assert!(
        brk.case_seq == stream.len() as u64 || brk.case_seq == stream.len() as u64 + 1,
        "{brk:?}"
    );
    // archiving went on: the next case is there and intact
    let nb = log.read(&b, 0).await.unwrap().len() as u64;
    assert!(ledger.wait_for(&b, nb).await.chain.unwrap().intact);
    let (tenant, case_id) = case_req(&a);
    let v = ledger
        .client
        .verify_case(api::VerifyCaseRequest {
            tenant,
            case_id,
            archive_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!v.intact);
    assert!(!v.archive.unwrap().intact);
    assert_eq!(
        v.first_difference, 0,
        "the archive holds what the stream holds"
    );
    // the metric counted it
    let metrics = metrics_text(&ledger).await;
    assert!(
        metrics.contains("casework_ledger_chain_breaks_total"),
        "{metrics}"
    );
    ledger.stop().await;
}

async fn metrics_text(ledger: &Ledger) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(ledger.running.http)
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn history_pages_and_bad_requests() {
    let (server, log) = server().await;
    let a = sample(log.as_ref(), "acme", true).await;
    let n = log.read(&a, 0).await.unwrap().len() as u64;
    let data = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::start(options(&server.url(), data.path())).await;
    ledger.wait_for(&a, n).await;
    let (tenant, case_id) = case_req(&a);
    let mut positions = BTreeMap::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let p = ledger
            .client
            .get_history(api::GetHistoryRequest {
                tenant: tenant.clone(),
                case_id: case_id.clone(),
                page_size: 5,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        for e in p.events {
            assert!(positions.insert(e.case_position, e.stream_seq).is_none());
        }
        if p.next_page_token.is_empty() {
            break;
        }
        token = p.next_page_token;
    }
    assert_eq!(positions.len() as u64, n);
    assert_eq!(pages, n.div_ceil(5));
    let e = ledger
        .client
        .get_history(api::GetHistoryRequest {
            tenant: tenant.clone(),
            case_id: case_id.clone(),
            page_size: 100_000,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().starts_with("page_size"),
        "{e:?}"
    );
    let e = ledger
        .client
        .get_history(api::GetHistoryRequest {
            tenant,
            case_id,
            page_size: 0,
            page_token: "zzz".into(),
        })
        .await
        .unwrap_err();
    assert!(
        e.code() == Code::InvalidArgument && e.message().starts_with("page_token"),
        "{e:?}"
    );
    ledger.stop().await;
}

#[tokio::test]
async fn an_auditor_reads_only_its_tenants_and_every_tenant_needs_every_tenant() {
    use casework_auth::{Role, dev::DevIssuer};
    let (nats, log) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let issuer = DevIssuer::load_or_create(&dir.path().join("auth")).unwrap();
    let mut o = options(&nats.url(), &dir.path().join("ledger"));
    o.auth = issuer.settings();
    let ledger = Ledger::start(o).await;
    let acme = sample(log.as_ref(), "acme", false).await;
    let beta = sample(log.as_ref(), "beta", false).await;
    let hour = std::time::Duration::from_secs(3600);
    let auditor = issuer
        .mint("audrey", None, &["acme"], &[Role::Auditor], hour)
        .unwrap();
    let root = issuer
        .mint("root", None, &["*"], &[Role::Auditor], hour)
        .unwrap();
    let agent = issuer
        .mint("ada", None, &["acme"], &[Role::Agent], hour)
        .unwrap();
    let history = |case: &casework_caselog::CaseKey| api::GetHistoryRequest {
        tenant: case.tenant.to_string(),
        case_id: case.case_id.to_string(),
        page_size: 100,
        page_token: String::new(),
    };
    let mut c = ledger.client.clone();
    let got = casework_testkit::eventually(WAIT, "acme's history", || {
        let (mut c, req, t) = (c.clone(), history(&acme), auditor.clone());
        async move {
            let h = c
                .get_history(casework_auth::dev::bearer(req, &t))
                .await
                .ok()?
                .into_inner();
            (!h.events.is_empty()).then_some(h)
        }
    })
    .await;
    assert!(!got.events.is_empty());
    for (token, req, code) in [
        (&auditor, history(&beta), tonic::Code::PermissionDenied),
        (&agent, history(&acme), tonic::Code::PermissionDenied),
    ] {
        let e = c
            .get_history(casework_auth::dev::bearer(req, token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
    }
    let e = c.get_history(history(&acme)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // VerifyAll over every tenant needs the role for all of them.
    let e = c
        .verify_all(casework_auth::dev::bearer(
            api::VerifyAllRequest::default(),
            &auditor,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("tenant *"), "{}", e.message());
    assert!(
        c.verify_all(casework_auth::dev::bearer(
            api::VerifyAllRequest::default(),
            &root
        ))
        .await
        .is_ok()
    );
    // A subscription names its tenant unless the caller may read them all.
    let integrator = issuer
        .mint("feed", None, &["acme"], &[Role::Integrator], hour)
        .unwrap();
    let e = c
        .subscribe(casework_auth::dev::bearer(
            api::SubscribeRequest::default(),
            &integrator,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let other = api::SubscribeRequest {
        tenant: "beta".into(),
        ..Default::default()
    };
    let e = c
        .subscribe(casework_auth::dev::bearer(other, &integrator))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // The transparency log's RPCs: an auditor gets checkpoints and proofs
    // of its tenants' events; an agent or an integrator gets nothing, nor
    // does the auditor for another tenant's event, nor anyone without a
    // token.
    let sign = api::GetCheckpointRequest {
        tree_size: 0,
        sign_now: true,
    };
    let cp = c
        .get_checkpoint(casework_auth::dev::bearer(sign, &auditor))
        .await
        .unwrap()
        .into_inner();
    assert!(cp.tree_size > 0);
    let proof = |case: &casework_caselog::CaseKey| api::GetInclusionProofRequest {
        tenant: case.tenant.to_string(),
        case_id: case.case_id.to_string(),
        case_position: 1,
        tree_size: 0,
    };
    assert!(
        c.get_inclusion_proof(casework_auth::dev::bearer(proof(&acme), &auditor))
            .await
            .is_ok()
    );
    for (token, code) in [
        (Some(&agent), tonic::Code::PermissionDenied),
        (Some(&integrator), tonic::Code::PermissionDenied),
        (None, tonic::Code::Unauthenticated),
    ] {
        let call = |req| match token {
            Some(t) => casework_auth::dev::bearer(req, t),
            None => tonic::Request::new(req),
        };
        let e = c.get_checkpoint(call(sign)).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        let consistency = api::GetConsistencyProofRequest {
            old_size: cp.tree_size,
            new_size: cp.tree_size,
        };
        let e = match token {
            Some(t) => {
                c.get_consistency_proof(casework_auth::dev::bearer(consistency, t))
                    .await
            }
            None => c.get_consistency_proof(consistency).await,
        }
        .unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
    }
    let e = c
        .get_inclusion_proof(casework_auth::dev::bearer(proof(&beta), &auditor))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    ledger.stop().await;
}

/// A subscriber that takes nothing is ended RESOURCE_EXHAUSTED once its
/// buffer has waited `subscribe_stall_seconds`, after every event it was
/// sent, with the position to resume after; resuming there repeats and
/// skips nothing. A caller holds at most `max_subscriptions_per_caller`
/// subscriptions, and an ended one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_is_ended_saying_where_to_resume_and_subscriptions_are_limited() {
    let (nats, log) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&nats.url(), dir.path());
    o.service.subscribe_buffer = 4;
    o.service.subscribe_stall_seconds = 1;
    o.service.max_subscriptions_per_caller = 2;
    let ledger = Ledger::start(o).await;
    // Enough events to fill the buffer, the HTTP/2 window and the
    // server's send buffer many times over.
    let mut last = None;
    for _ in 0..150 {
        last = Some(sample(log.as_ref(), "acme", false).await);
    }
    let last = last.unwrap();
    let total_last = log.read(&last, 0).await.unwrap().len() as u64;
    ledger.wait_for(&last, total_last).await;
    let total = log.last_stream_seq().await.unwrap();
    let from_beginning = api::SubscribeRequest {
        start: api::Start::Beginning as i32,
        ..Default::default()
    };
    // A client that reads nothing, with HTTP/2's default 64 KiB windows
    // (hyper's client would otherwise take 2 MiB before it stops).
    let small_windows =
        tonic::transport::Endpoint::from_shared(format!("http://{}", ledger.running.grpc))
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
    let mut stuck = casework_proto::ledger::v1::ledger_client::LedgerClient::new(small_windows)
        .subscribe(from_beginning.clone())
        .await
        .unwrap()
        .into_inner();
    let _idle = ledger
        .client
        .clone()
        .subscribe(api::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let e = ledger
        .client
        .clone()
        .subscribe(api::SubscribeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("max_subscriptions_per_caller"),
        "{e:?}"
    );
    // The stuck one is ended by the ledger: its place comes free.
    eventually(WAIT, "the stuck subscription's place to come free", || {
        let mut c = ledger.client.clone();
        async move {
            c.subscribe(api::SubscribeRequest::default())
                .await
                .ok()
                .map(drop)
        }
    })
    .await;
    // Its client gets every event it was sent, then why it ended.
    let mut received = Vec::new();
    let ended = loop {
        match tokio::time::timeout(WAIT, stuck.next())
            .await
            .expect("the stream goes on or ends")
        {
            Some(Ok(item)) => received.push(item),
            Some(Err(status)) => break status,
            None => panic!("the stream ended OK after {} events", received.len()),
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    let resume_at = received
        .last()
        .expect("some events were sent")
        .position
        .clone();
    assert!(
        ended
            .message()
            .contains(&format!("after_position = {resume_at:?}")),
        "{ended:?}"
    );
    eprintln!(
        "{} of {total} events were sent before the stall",
        received.len()
    );
    assert!(
        (received.len() as u64) < total,
        "it stopped short of the end"
    );
    // Resuming after that position gives exactly the rest.
    let mut resumed = eventually(WAIT, "a place to resume in", || {
        let mut c = ledger.client.clone();
        let req = api::SubscribeRequest {
            after_position: resume_at.clone(),
            ..Default::default()
        };
        async move { c.subscribe(req).await.ok().map(|r| r.into_inner()) }
    })
    .await;
    let rest = collect(&mut resumed, (total as usize) - received.len()).await;
    let seqs: Vec<u64> = received
        .iter()
        .chain(&rest)
        .map(|r| r.event.as_ref().unwrap().stream_seq)
        .collect();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "nothing repeated, nothing skipped"
    );
    ledger.stop().await;
}
