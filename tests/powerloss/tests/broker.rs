//! The broker on a disk that loses power: with `sync_interval: always`
//! no acknowledged message is lost; with the default flush acknowledged
//! messages are lost (which also proves the disk really drops unsynced
//! writes, so the first check means something).

use casework_powerloss::fuse_unavailable;
use casework_powerloss::round::{Settings, Settle, round};

fn settings(sync_always: bool) -> Settings {
    Settings {
        sync_always,
        cut_after: 300,
        in_flight: 16,
        payload_bytes: 256,
        settle: Settle::No,
    }
}

#[tokio::test]
async fn with_sync_always_no_acknowledged_message_is_lost() {
    if let Some(why) = fuse_unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    for r in 1..=2 {
        let o = round(settings(true)).await.expect("the round ran");
        eprintln!("always, round {r}: {o:?}");
        assert!(o.acked >= 300, "{o:?}");
        assert!(o.stream_survived, "the stream is gone: {o:?}");
        assert_eq!(
            (o.lost, o.corrupted),
            (0, 0),
            "acknowledged messages lost: {o:?}"
        );
    }
}

#[tokio::test]
async fn with_the_default_flush_acknowledged_messages_are_lost() {
    if let Some(why) = fuse_unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let o = round(settings(false)).await.expect("the round ran");
    eprintln!("default: {o:?}");
    assert!(o.acked >= 300, "{o:?}");
    // The cut comes seconds after the start, long before the server's
    // 2-minute flush: the disk drops what the server had not synced.
    assert!(o.dropped.bytes > 0, "the cut dropped nothing: {o:?}");
    assert!(o.lost > 0, "nothing acknowledged was lost: {o:?}");
}

#[tokio::test]
async fn with_the_default_flush_a_graceful_restart_does_not_save_the_stream() {
    if let Some(why) = fuse_unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let o = round(Settings {
        settle: Settle::GracefulRestart,
        ..settings(false)
    })
    .await
    .expect("the round ran");
    eprintln!("default, after a graceful restart: {o:?}");
    assert!(o.acked >= 300, "{o:?}");
    // SIGTERM makes the server close its files, not sync them: the
    // stream's files are still unsynced when the load starts.
    assert!(o.settled.files > 0, "{o:?}");
    assert!(o.lost > 0, "nothing acknowledged was lost: {o:?}");
}
