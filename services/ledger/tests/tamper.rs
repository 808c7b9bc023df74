//! Tampering with a copy of the stream's store: the ledger archives a case,
//! the broker is killed, its store directory is copied, and each copy is
//! tampered with in one way:
//!
//! - **altered (block file)**: one byte of one event's payload is changed
//!   inside the copied message block file
//!   (`jetstream/$G/streams/CASES/msgs/*.blk`) of a store at rest (after a
//!   clean stop). nats-server checks each record's checksum and withholds
//!   the corrupt record (after a SIGKILL, when it rebuilds the block from
//!   the files, it even drops everything from that record on), so a byte
//!   edit surfaces as the event being *missing* — at the right place;
//! - **altered (rewritten)**: the served bytes themselves differ (see below);
//! - **dropped** / **dropped last** / **reordered**: a server is started on
//!   the copy, and an operator with full rights reads the case's stored
//!   messages, deletes the `CASES` stream and re-creates it with the same
//!   configuration, republishing the exact stored bytes without one event
//!   (or with two swapped). `deny_delete` forbids deleting a *message*, not
//!   the whole stream, so this is the realistic way to rewrite history —
//!   editing records inside `.blk` files is impractical.
//!
//! A nats-server is then started on the tampered copy, the ledger is
//! restarted on (a copy of) its archive against it, and VerifyCase must
//! report the right fault at the right place on the stream side, while the
//! archive stays intact. testkit has no "start on this store" constructor,
//! so [`CopyServer`] starts a raw nats-server here (it should move to
//! testkit).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use casework_caselog::jetstream::{StreamOptions, cases_stream_config};
use casework_caselog::{CaseKey, CaseLog};
use casework_domain::RawEvent;
use casework_proto::ledger::v1 as api;
use common::*;

/// A nats-server started on an existing (copied) store directory.
struct CopyServer {
    child: Child,
    port: u16,
}

impl CopyServer {
    fn start(store: &Path, scratch: &Path) -> CopyServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = scratch.join(format!("copy-{port}.conf"));
        let log = scratch.join(format!("copy-{port}.log"));
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\nserver_name: casework_copy_{port}\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
                store.display().to_string()
            ),
        )
        .unwrap();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(casework_testkit::nats_server_binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start nats-server on the copy");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Server is ready") {
                break;
            }
            assert!(Instant::now() < deadline, "copy server not ready:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
        CopyServer { child, port }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl CopyServer {
    /// Stops the server gracefully (SIGTERM), so it writes its stream state.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for CopyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn block_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            block_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "blk")
            && p.to_string_lossy().contains("/streams/CASES/msgs/")
        {
            out.push(p);
        }
    }
}

/// Changes one byte of event 1's payload ("refund order 42" → "…43")
/// inside the copied message block file.
fn alter_block(store: &Path) {
    let mut blocks = Vec::new();
    block_files(store, &mut blocks);
    let mut hits = 0;
    for b in blocks {
        let mut bytes = std::fs::read(&b).unwrap();
        if let Some(i) = bytes.windows(15).position(|w| w == b"refund order 42") {
            bytes[i + 14] = b'3';
            std::fs::write(&b, bytes).unwrap();
            hits += 1;
        }
    }
    assert_eq!(hits, 1, "the payload is in one block");
}

/// Deletes and re-creates `CASES` on the copy with the case's stored
/// messages rewritten by `tamper`, as an operator with full rights.
async fn rewrite_case(url: &str, case: &CaseKey, tamper: impl FnOnce(&mut Vec<RawEvent>)) {
    let log = log_for(url).await;
    let mut raw = log.read_raw(case).await.unwrap();
    tamper(&mut raw);
    let js = async_nats::jetstream::new(log.client().clone());
    js.delete_stream("CASES").await.unwrap();
    js.create_stream(cases_stream_config(&StreamOptions::default()))
        .await
        .unwrap();
    for r in raw {
        js.publish(r.subject, r.bytes.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// A rewrite of the case's stored messages.
type StreamEdit = Box<dyn FnOnce(&mut Vec<RawEvent>)>;

struct Fixture {
    _tmp: tempfile::TempDir,
    store: PathBuf,
    archive: PathBuf,
    case: CaseKey,
    events: u64,
}

/// A case archived by the ledger; the broker is then killed (nothing is
/// flushed beyond what `sync_interval: always` already wrote).
async fn fixture() -> Fixture {
    let mut server = casework_testkit::NatsServer::start();
    let log = log_for(&server.url()).await;
    let case = sample(log.as_ref(), "acme", false).await;
    let events = log.read(&case, 0).await.unwrap().len() as u64;
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("archive");
    let ledger = Ledger::start(options(&server.url(), &archive)).await;
    ledger.wait_for(&case, events).await;
    ledger.stop().await;
    drop(log);
    server.kill();
    let store = tmp.path().join("store");
    copy_dir(&server.store_dir(), &store);
    Fixture {
        _tmp: tmp,
        store,
        archive,
        case,
        events,
    }
}

/// Copies the store and the archive, tampers the store copy with `store_edit`
/// (file level) and `stream_edit` (through a server on the copy), then runs
/// VerifyCase against a server on the tampered copy.
async fn verify_tampered(
    f: &Fixture,
    name: &str,
    store_edit: impl FnOnce(&Path),
    stream_edit: Option<StreamEdit>,
) -> api::CaseVerification {
    let dir = f._tmp.path().join(name);
    let store = dir.join("store");
    let archive = dir.join("archive");
    copy_dir(&f.store, &store);
    copy_dir(&f.archive, &archive);
    // A clean stop first, so the copy has its stream state written as after
    // an orderly shutdown; the edit happens on a store at rest.
    CopyServer::start(&store, &dir).stop();
    store_edit(&store);
    let server = CopyServer::start(&store, &dir);
    if let Some(edit) = stream_edit {
        rewrite_case(&server.url(), &f.case, edit).await;
    }
    let mut ledger = Ledger::start(options(&server.url(), &archive)).await;
    ledger.wait_ready().await;
    let v = ledger
        .client
        .verify_case(api::VerifyCaseRequest {
            tenant: f.case.tenant.to_string(),
            case_id: f.case.case_id.to_string(),
            archive_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    ledger.stop().await;
    assert!(
        v.archive.as_ref().unwrap().intact,
        "the archive is untouched: {v:?}"
    );
    assert!(!v.intact, "{name}: {v:?}");
    v
}

fn stream_break(v: &api::CaseVerification) -> (u64, api::LinkFault) {
    let b = v
        .stream
        .as_ref()
        .unwrap()
        .first_break
        .clone()
        .expect("a stream break");
    (b.case_seq, api::LinkFault::try_from(b.fault).unwrap())
}

#[tokio::test]
async fn verify_catches_tampering_with_a_copy_of_the_store() {
    let f = fixture().await;
    assert_eq!(f.events, 9);

    // Untouched copy: intact on both sides.
    {
        let dir = f._tmp.path().join("untouched");
        copy_dir(&f.store, &dir.join("store"));
        copy_dir(&f.archive, &dir.join("archive"));
        let server = CopyServer::start(&dir.join("store"), &dir);
        let mut ledger = Ledger::start(options(&server.url(), &dir.join("archive"))).await;
        ledger.wait_ready().await;
        let v = ledger
            .client
            .verify_case(api::VerifyCaseRequest {
                tenant: f.case.tenant.to_string(),
                case_id: f.case.case_id.to_string(),
                archive_only: false,
            })
            .await
            .unwrap()
            .into_inner();
        ledger.stop().await;
        assert!(v.intact, "{v:?}");
    }

    // Altered in the block file: the broker's own per-record checksum
    // rejects the record, so the stream serves the case without event 1 —
    // verify reports the log untrustworthy from event 1 (missing).
    let v = verify_tampered(&f, "altered-block", alter_block, None).await;
    assert_eq!(stream_break(&v), (1, api::LinkFault::Missing), "{v:?}");
    assert_eq!(v.first_difference, 1);

    // Altered by an operator rewriting the stream (the bytes served are the
    // altered ones): verify names event 1 as altered.
    let v = verify_tampered(
        &f,
        "altered",
        |_| {},
        Some(Box::new(|r: &mut Vec<RawEvent>| {
            let b = &mut r[0].bytes;
            let i = b.windows(15).position(|w| w == b"refund order 42").unwrap();
            b[i + 14] = b'3';
        })),
    )
    .await;
    assert_eq!(stream_break(&v), (1, api::LinkFault::Altered), "{v:?}");
    assert_eq!(v.first_difference, 1);

    // Dropped: event 4 removed.
    let v = verify_tampered(
        &f,
        "dropped",
        |_| {},
        Some(Box::new(|r: &mut Vec<RawEvent>| {
            r.remove(3);
        })),
    )
    .await;
    assert_eq!(stream_break(&v), (4, api::LinkFault::Missing), "{v:?}");
    assert_eq!(v.first_difference, 4);

    // Dropped last: the chain alone cannot see it; the archive's anchor can.
    let v = verify_tampered(
        &f,
        "dropped-last",
        |_| {},
        Some(Box::new(|r: &mut Vec<RawEvent>| {
            r.pop();
        })),
    )
    .await;
    assert_eq!(stream_break(&v), (9, api::LinkFault::Missing), "{v:?}");
    assert_eq!(v.first_difference, 9);

    // Reordered: events 5 and 6 swapped.
    let v = verify_tampered(
        &f,
        "reordered",
        |_| {},
        Some(Box::new(|r: &mut Vec<RawEvent>| {
            r.swap(4, 5);
        })),
    )
    .await;
    assert_eq!(stream_break(&v), (5, api::LinkFault::Reordered), "{v:?}");
    assert_eq!(v.first_difference, 5);
}

#[tokio::test]
async fn a_fresh_ledger_on_an_altered_store_records_the_break_while_archiving() {
    let f = fixture().await;
    let dir = f._tmp.path().join("fresh");
    let store = dir.join("store");
    copy_dir(&f.store, &store);
    CopyServer::start(&store, &dir).stop();
    alter_block(&store);
    let server = CopyServer::start(&store, &dir);
    let ledger = Ledger::start(options(&server.url(), &dir.join("empty-archive"))).await;
    // The broker withholds the corrupt record: 8 events reach the ledger,
    // the first of which (event 2) does not follow genesis.
    let s = ledger.wait_for(&f.case, f.events - 1).await;
    let chain = s.chain.unwrap();
    assert!(!chain.intact);
    let b = chain.first_break.unwrap();
    assert_eq!(
        (b.case_seq, b.fault),
        (1, api::LinkFault::Missing as i32),
        "{b:?}"
    );
    assert_eq!(
        chain.events_after_break,
        f.events - 2,
        "the events after the break are still archived"
    );
    ledger.stop().await;
}
