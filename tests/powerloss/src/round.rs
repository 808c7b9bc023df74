//! One power-loss round against a real nats-server: its JetStream store on
//! a [`Disk`], a file-storage stream, publishes under load (each awaiting
//! its PubAck), then the server is killed and the power cut while
//! publishes are in flight; the power comes back, the server restarts on
//! the surviving store, and every acknowledged message is looked for.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use casework_testkit::{NatsServer, poll_until};

use crate::{Disk, Dropped};

/// The stream the round publishes to.
const STREAM: &str = "POWER";

/// What a round does.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `sync_interval: always` (fsync before every ack), else the server's
    /// default (a flush every 2 minutes).
    pub sync_always: bool,
    /// The power is cut once this many publishes were acknowledged.
    pub cut_after: usize,
    /// Publishes awaiting their ack at once (so some are in flight at the
    /// cut).
    pub in_flight: usize,
    /// Bytes per message.
    pub payload_bytes: usize,
    /// What happens between creating the stream and the load.
    pub settle: Settle,
}

/// What a round does between creating the stream and starting the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Nothing: the load starts at once.
    No,
    /// The server is stopped gracefully (SIGTERM) and started again.
    GracefulRestart,
    /// The round waits until the server has synced every file it wrote
    /// (so what the cut can take is messages written since), or
    /// [`FIRST_FLUSH_WAIT`] passed (it says so: nats-server 2.15.1's
    /// default flush leaves the stream's `meta.inf`, `meta.sum` and
    /// `msgs/index.db` unsynced).
    FirstFlush,
    /// The stream is created by a server with `sync_interval: always`
    /// (so its own files are synced), which is then stopped; the server
    /// under test starts on the same store, publishes `cut_after`
    /// messages, and the round waits (up to [`FIRST_FLUSH_WAIT`]) until
    /// the server has synced them before the load that the cut ends:
    /// what the cut can take is the messages acknowledged since the
    /// server's last flush.
    FlushedPrefix,
}

/// How long [`Settle::FirstFlush`] waits: past the server's default
/// 2-minute flush.
pub const FIRST_FLUSH_WAIT: Duration = Duration::from_secs(150);

/// What a round found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The settings it ran with.
    pub settings: Settings,
    /// Publishes acknowledged before the cut (with
    /// [`Settle::FlushedPrefix`], the prefix's `cut_after` included).
    pub acked: usize,
    /// Acknowledged messages missing after the power came back.
    pub lost: usize,
    /// Acknowledged messages present with a different payload.
    pub corrupted: usize,
    /// Whether the stream itself was still there.
    pub stream_survived: bool,
    /// Messages in the stream after the restart.
    pub messages_after: u64,
    /// What was unsynced just before the load (what the settling left
    /// unsynced).
    pub settled: Dropped,
    /// What the cut dropped in the filesystem.
    pub dropped: Dropped,
    /// Publish-to-cut time.
    pub load: Duration,
}

/// The payload of message `i`: its number, then filler derived from it.
pub fn payload(i: usize, len: usize) -> Bytes {
    let mut p = format!("{i:010}:").into_bytes();
    let mut x = i as u64 ^ 0x9e37_79b9_7f4a_7c15;
    while p.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(b'a' + (x % 26) as u8);
    }
    p.truncate(len.max(11));
    Bytes::from(p)
}

/// Acknowledged publishes: (stream sequence, message number).
type Acks = Arc<Mutex<Vec<(u64, usize)>>>;

/// Waits for message `n`'s ack and records its stream sequence.
async fn record_ack(
    acks: &Acks,
    n: usize,
    ack: async_nats::jetstream::context::PublishAckFuture,
) -> Result<(), String> {
    let a = ack.await.map_err(|e| format!("ack of {n}: {e}"))?;
    acks.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((a.sequence, n));
    Ok(())
}

/// Publishes messages `from, from + 1, …` (up to `until`, exclusive)
/// with `in_flight` awaiting their acks, recording each ack, until a
/// publish fails (the server was killed) or all were acknowledged.
async fn publish(
    js: jetstream::Context,
    s: Settings,
    acks: Acks,
    from: usize,
    until: usize,
) -> String {
    let mut pending = VecDeque::new();
    for i in from..until {
        match js.publish("power.msg", payload(i, s.payload_bytes)).await {
            Ok(ack) => pending.push_back((i, ack)),
            Err(e) => return format!("publish {i}: {e}"),
        }
        if pending.len() >= s.in_flight
            && let Some((n, ack)) = pending.pop_front()
            && let Err(e) = record_ack(&acks, n, ack).await
        {
            return e;
        }
    }
    while let Some((n, ack)) = pending.pop_front() {
        if let Err(e) = record_ack(&acks, n, ack).await {
            return e;
        }
    }
    format!("all of {from}..{until} acknowledged")
}

/// Creates the round's stream through the server at `url`.
async fn create_stream(url: &str) -> Result<jetstream::Context, String> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["power.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("create the stream: {e}"))?;
    Ok(js)
}

/// Waits until nothing on `disk` is unsynced, at most [`FIRST_FLUSH_WAIT`];
/// says what is left if that never happened.
async fn wait_for_flush(disk: &Disk) {
    let flushed = poll_until(FIRST_FLUSH_WAIT, Duration::from_millis(200), || {
        let pending = disk.unsynced();
        async move {
            if pending.files == 0 {
                Ok(())
            } else {
                Err(pending)
            }
        }
    })
    .await;
    if let Err(left) = flushed {
        eprintln!("after {FIRST_FLUSH_WAIT:?} the server still had not synced {left:?}");
    }
}

/// Runs one round: see the module's documentation.
pub async fn round(s: Settings) -> Result<Outcome, String> {
    let mut disk = Disk::new().map_err(|e| format!("cannot mount the lossy disk: {e}"))?;
    let acks: Acks = Arc::default();
    let mut server;
    let js = match s.settle {
        Settle::No => {
            server = NatsServer::start_on_store("", s.sync_always, disk.path());
            create_stream(&server.url()).await?
        }
        Settle::GracefulRestart => {
            server = NatsServer::start_on_store("", s.sync_always, disk.path());
            create_stream(&server.url()).await?;
            server.stop_gracefully();
            server.start_again();
            let client = async_nats::connect(server.url())
                .await
                .map_err(|e| format!("connect after the graceful restart: {e}"))?;
            jetstream::new(client)
        }
        Settle::FirstFlush => {
            server = NatsServer::start_on_store("", s.sync_always, disk.path());
            let js = create_stream(&server.url()).await?;
            wait_for_flush(&disk).await;
            js
        }
        Settle::FlushedPrefix => {
            let mut creator = NatsServer::start_on_store("", true, disk.path());
            create_stream(&creator.url()).await?;
            creator.stop_gracefully();
            drop(creator);
            server = NatsServer::start_on_store("", s.sync_always, disk.path());
            let client = async_nats::connect(server.url())
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let js = jetstream::new(client);
            let done = publish(js.clone(), s, acks.clone(), 0, s.cut_after).await;
            let n = acks.lock().unwrap_or_else(|e| e.into_inner()).len();
            if n != s.cut_after {
                return Err(format!("the prefix stopped after {n} acks: {done}"));
            }
            wait_for_flush(&disk).await;
            js
        }
    };
    let settled = disk.unsynced();

    let started = Instant::now();
    let from = acks.lock().unwrap_or_else(|e| e.into_inner()).len();
    let cut_at = from + s.cut_after;
    let publisher = tokio::spawn(publish(js, s, acks.clone(), from, usize::MAX));
    let reached = poll_until(Duration::from_secs(120), Duration::from_millis(5), || {
        let n = acks.lock().unwrap_or_else(|e| e.into_inner()).len();
        let finished = publisher.is_finished();
        async move {
            if n >= cut_at {
                Ok(())
            } else if finished {
                Err(format!("the publisher stopped after {n} acks"))
            } else {
                Err(format!("{n} of {cut_at} acks"))
            }
        }
    })
    .await;
    // The power fails: the server dies first (a dead process syncs
    // nothing more), then everything it had not synced is gone.
    server.kill();
    let dropped = disk.cut_power();
    let load = started.elapsed();
    publisher.abort();
    if let Err(why) = reached {
        let end = publisher.await.map_err(|e| e.to_string()).err();
        return Err(format!("the load never reached the cut: {why} {end:?}"));
    }
    let acked: Vec<(u64, usize)> = acks.lock().unwrap_or_else(|e| e.into_inner()).clone();

    disk.power_on()
        .map_err(|e| format!("cannot mount the lossy disk again: {e}"))?;
    server.start_again();
    let client = async_nats::connect(server.url())
        .await
        .map_err(|e| format!("connect after the restart: {e}"))?;
    let js = jetstream::new(client);
    let found = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let js = js.clone();
        async move {
            match js.get_stream(STREAM).await {
                Ok(mut st) => {
                    let messages = st
                        .info()
                        .await
                        .map_err(|e| format!("stream info: {e}"))?
                        .state
                        .messages;
                    Ok(Some((st, messages)))
                }
                Err(e) => match e.kind() {
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                    {
                        Ok(None)
                    }
                    _ => Err(format!("get the stream: {e}")),
                },
            }
        }
    })
    .await?;
    let mut outcome = Outcome {
        settings: s,
        acked: acked.len(),
        lost: 0,
        corrupted: 0,
        stream_survived: found.is_some(),
        messages_after: 0,
        settled,
        dropped,
        load,
    };
    let Some((st, messages)) = found else {
        outcome.lost = acked.len();
        return Ok(outcome);
    };
    outcome.messages_after = messages;
    for &(seq, i) in &acked {
        match st.get_raw_message(seq).await {
            Ok(m) if m.payload == payload(i, s.payload_bytes) => {}
            Ok(_) => outcome.corrupted += 1,
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                outcome.lost += 1;
            }
            Err(e) => return Err(format!("get message {seq}: {e}")),
        }
    }
    Ok(outcome)
}
