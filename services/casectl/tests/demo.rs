//! `casectl dev --demo` on a real nats-server and the real services, in
//! this process: within its first minute a newcomer sees every path of the
//! product — a promise kept late, a promise broken with its apology, a
//! compensation waiting for a supervisor and an escalation — and the
//! summary says so.

use std::time::Duration;

use casectl::dev::{DevArgs, run};
use casework_runtime::Shutdown;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_every_path_within_its_first_minute() {
    // nats-server is found as `casectl dev` finds it: CASEWORK_NATS_SERVER,
    // else PATH (where `.ci/run` installs it).
    let dir = tempfile::tempdir().unwrap();
    let args = DevArgs {
        data_dir: dir.path().to_owned(),
        demo: true,
        nats_port: casework_testkit::free_port(),
        rate: 2.0,
        duration: Some(Duration::from_secs(60)),
        tenant: "acme".to_owned(),
        any_ports: true,
    };
    let shown = run(args, Shutdown::new())
        .await
        .expect("the demo runs")
        .expect("a demo reports what it showed");
    assert!(
        shown.all(),
        "in its first minute the demo showed only {shown:?}"
    );
    for at in [
        shown.kept_late,
        shown.broken_with_apology,
        shown.awaiting_approval,
        shown.escalation,
    ] {
        assert!(at.unwrap() < Duration::from_secs(60), "{shown:?}");
    }
}
