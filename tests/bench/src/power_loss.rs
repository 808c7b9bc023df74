//! `power-loss`: the broker's store on a disk that drops unsynced writes
//! when its power is cut (casework-powerloss): per round, messages
//! acknowledged before the cut and how many of them are gone after it,
//! with `sync_interval: always` and with the server's default flush
//! (a stream created just before the load; one 150 s old — past the
//! server's 2-minute flush — when the load starts; and one created under
//! `always`, then as many messages again published and flushed by the
//! default server before the load that the cut ends).

use std::time::Duration;

use casework_powerloss::fuse_unavailable;
use casework_powerloss::round::{Settings, Settle, round};

use crate::report::{print, scaled};

const ROUNDS: usize = 3;

pub async fn power_loss() {
    if let Some(why) = fuse_unavailable() {
        eprintln!("power-loss skipped: {why}");
        return;
    }
    let base = Settings {
        sync_always: true,
        cut_after: scaled(2_000),
        in_flight: 16,
        payload_bytes: 256,
        settle: Settle::No,
    };
    let plan = [
        ("power-loss-always", base, ROUNDS),
        (
            "power-loss-default",
            Settings {
                sync_always: false,
                ..base
            },
            ROUNDS,
        ),
        (
            "power-loss-default-aged",
            Settings {
                sync_always: false,
                settle: Settle::FirstFlush,
                ..base
            },
            1,
        ),
        (
            "power-loss-default-flushed",
            Settings {
                sync_always: false,
                settle: Settle::FlushedPrefix,
                ..base
            },
            1,
        ),
    ];
    for (scenario, settings, rounds) in plan {
        for r in 1..=rounds {
            match round(settings).await {
                Ok(o) => print(
                    scenario,
                    settings.in_flight,
                    Vec::new(),
                    o.acked,
                    o.load.max(Duration::from_micros(1)),
                    serde_json::json!({
                        "round": r,
                        "sync": if settings.sync_always { "always" } else { "default" },
                        "acked": o.acked,
                        "lost": o.lost,
                        "corrupted": o.corrupted,
                        "stream_survived": o.stream_survived,
                        "messages_after": o.messages_after,
                        "unsynced_files_at_load": o.settled.files,
                        "dropped_files": o.dropped.paths,
                        "dropped_bytes": o.dropped.bytes,
                    }),
                ),
                Err(e) => eprintln!("{scenario} round {r} failed: {e}"),
            }
        }
    }
}
