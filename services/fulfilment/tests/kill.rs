//! Fault test: the service is killed with SIGKILL in the middle of a step
//! and started again. The case still completes, no event is duplicated, no
//! attempt is started twice, and the attempt that was running when the
//! process died is not run again by us: its timeout decides it.

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use casework_domain::pb::envelope::Payload;
use common::{World, assert_sound, count};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(w: &World, data_dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_casework-fulfilment"))
        .env("CASEWORK_NATS__URL", w.nats.url())
        .env("CASEWORK_DATA_DIR", data_dir)
        .env("CASEWORK_CATALOG", &w.catalog_path)
        .env("CASEWORK_INSTANCE", "fulfilment-kill")
        .env("CASEWORK_GRPC_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("CASEWORK_HTTP_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("CASEWORK_LOG", "warn")
        .spawn()
        .expect("start casework-fulfilment")
}

#[tokio::test]
async fn kill_9_mid_step_then_restart_completes_the_case_once() {
    let w = World::new().await;
    let data_dir = w.dir.path().join("fulfilment-data");
    let mut process = spawn(&w, &data_dir);
    let case = w.open_case("slow").await;
    // the slow step (2.5 s, timeout 4 s) has started: kill the process
    w.wait_for(&case, "step_completed", Duration::from_secs(20))
        .await;
    casework_testkit::eventually(Duration::from_secs(20), "the slow step started", || async {
        let evs = w.events(&case).await;
        (count(&evs, "step_started") == 2).then_some(())
    })
    .await;
    process.kill().expect("SIGKILL");
    process.wait().unwrap();

    let mut process = spawn(&w, &data_dir);
    let events = w
        .wait_for(&case, "promise_kept", Duration::from_secs(40))
        .await;
    process.kill().unwrap();
    process.wait().unwrap();

    assert_sound(&case, &events);
    assert_eq!(count(&events, "promise_kept"), 1);
    // the attempt that was running when we died: timed out, never completed
    let crawl: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.envelope.payload {
            Some(Payload::StepFailed(f)) if f.step_index == 1 => {
                Some(("failed", f.attempt, f.timed_out))
            }
            Some(Payload::StepCompleted(c)) if c.step_index == 1 => {
                Some(("completed", c.attempt, false))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        crawl,
        [("failed", 1, true), ("completed", 2, false)],
        "{crawl:?}"
    );
}
