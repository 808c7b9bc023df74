//! `deadlines`: the recovery service (in-process, on its own nats-server
//! with `sync_interval: always`) holding 100,000 pending promise deadlines,
//! and how late it breaks promises that fall due at a steady rate meanwhile.
//!
//! 1. *Pending*: 100,000 cases (`CASEWORK_BENCH_SCALE` scales it) are
//!    created directly in the log by many concurrent appenders, with
//!    deadlines two hours away: `case_opened` then `promise_made`, one
//!    append each, as intake writes them. Recovery schedules one durable timer per promise; once the
//!    `TIMERS` stream holds one schedule per case, the memory of this
//!    process (recovery plus the harness) and of nats-server is read.
//! 2. *Measured*: 2,000 more cases (scaled) whose deadlines fall at a
//!    steady 50 per second, evenly spread, starting once they are all
//!    created and scheduled. For each, `promise_broken` is collected from a
//!    tail: how late it was decided (`occurred_at` − deadline, the headline
//!    p50/p99), how late it was seen by the tail, how late relative to the
//!    timer's whole second (timers have second precision), how late the
//!    recovery it triggers completed, the rate promises were broken at, and
//!    the memory at the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use casework_caselog::jetstream::{NatsOptions, StreamOptions, connect, ensure_streams};
use casework_caselog::{CaseKey, CaseLog, JetStreamLog};
use casework_domain::chain::{from_timestamp, timestamp};
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{CaseId, EventId, NewEvent, Tenant, Writer};
use casework_testkit::NatsServer;
use chrono::{DateTime, SubsecRound, Utc};
use futures::StreamExt;

use crate::report::{print, scaled};

/// Appenders creating the pending cases.
const BULK_CONCURRENCY: usize = 128;
/// Appenders creating the measured cases.
const CONCURRENCY: usize = 64;
/// Measured deadlines falling due per second.
const RATE_PER_S: usize = 50;
/// How far away the pending deadlines are.
const PENDING_FOR: chrono::Duration = chrono::Duration::hours(2);

/// `VmRSS` and `VmHWM` (MiB) of a process (`self` or a pid).
fn rss_of(pid: &str) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| (kb / 1024.0 * 10.0).round() / 10.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn opening(case: &CaseKey, deadline: DateTime<Utc>) -> Vec<NewEvent> {
    let ev = |key: &str, payload| NewEvent {
        event_id: EventId::derive(&case.case_id, "bench", key),
        occurred_at: Utc::now(),
        causation_id: String::new(),
        correlation_id: case.case_id.to_string(),
        payload,
    };
    vec![
        ev(
            "opened",
            Payload::CaseOpened(pb::CaseOpened {
                customer_id: "bench".into(),
                channel: pb::Channel::Web as i32,
                service_code: "product_enquiry".into(),
                ..Default::default()
            }),
        ),
        ev(
            "promised",
            Payload::PromiseMade(pb::PromiseMade {
                service_code: "product_enquiry".into(),
                catalog_version: "2026-11-01.1".into(),
                deadline: Some(timestamp(deadline)),
                ..Default::default()
            }),
        ),
    ]
}

/// Creates `n` cases with `concurrency` appenders; case `i` is due at
/// `deadline(i)`. Returns the case ids with their deadlines when `keep`.
async fn create(
    intake: Arc<JetStreamLog>,
    n: usize,
    concurrency: usize,
    keep: bool,
    deadline: impl Fn(usize) -> DateTime<Utc> + Send + Sync + 'static,
) -> HashMap<String, DateTime<Utc>> {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Arc::new(deadline);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (intake, next, deadline) = (intake.clone(), next.clone(), deadline.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return mine;
                    }
                    let case = CaseKey {
                        tenant: Tenant::parse("bench").expect("tenant"),
                        case_id: CaseId::from_ulid(ulid::Ulid::new()),
                    };
                    let due = deadline(i);
                    let events = opening(&case, due);
                    // case_opened then promise_made, one append each, as
                    // intake appends them.
                    intake
                        .append(&case, None, events)
                        .await
                        .expect("open a bench case");
                    if keep {
                        mine.push((case.case_id.to_string(), due));
                    }
                }
            })
        })
        .collect();
    let mut out = HashMap::new();
    for t in tasks {
        out.extend(t.await.expect("creating task"));
    }
    out
}

/// Messages in the `TIMERS` stream (one schedule per pending timer).
async fn timer_messages(js: &async_nats::jetstream::Context) -> u64 {
    match js.get_stream("TIMERS").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Waits until `TIMERS` holds at least `target` messages, giving up after
/// `stall` without progress. Returns the last count.
async fn wait_for_timers(js: &async_nats::jetstream::Context, target: u64, stall: Duration) -> u64 {
    // (last count, when it last grew)
    let seen = Arc::new(std::sync::Mutex::new((0, Instant::now())));
    // No overall limit: only a stall ends the wait early.
    casework_testkit::eventually_explained(
        Duration::from_secs(24 * 3600),
        Duration::from_millis(250),
        "TIMERS to hold every schedule",
        || {
            let (counted, seen) = (timer_messages(js), seen.clone());
            async move {
                let now = counted.await;
                if now >= target {
                    return Ok(now);
                }
                let mut seen = seen.lock().expect("progress lock");
                if now > seen.0 {
                    *seen = (now, Instant::now());
                } else if seen.1.elapsed() > stall {
                    eprintln!("deadlines: TIMERS stuck at {now} of {target} messages");
                    return Ok(now);
                }
                Err(format!("{now} of {target}"))
            }
        },
    )
    .await
}

fn ms(d: chrono::Duration) -> Duration {
    d.to_std().unwrap_or_default()
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
        .map_or(0.0, |d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

/// Runs the scenario.
pub async fn deadlines() {
    let pending_n = scaled(100_000);
    let measured_n = scaled(2_000);
    let window = Duration::from_secs_f64(measured_n as f64 / RATE_PER_S as f64);
    let server = NatsServer::start();
    let nats = server.pid().map(|p| p.to_string());
    let client = connect(&NatsOptions {
        url: server.url(),
        ..Default::default()
    })
    .await
    .expect("connect to the bench nats-server");
    ensure_streams(&client, &StreamOptions::default())
        .await
        .expect("streams");
    let js = async_nats::jetstream::new(client.clone());
    let intake = Arc::new(JetStreamLog::new(
        client.clone(),
        "bench-intake",
        Some(Writer::Intake),
    ));
    let reader = JetStreamLog::new(client.clone(), "bench-reader", None);
    let (rss_harness, _) = rss_of("self");
    let (nats_rss_empty, _) = nats.as_deref().map(rss_of).unwrap_or_default();

    let mut options = casework_recovery::default_options();
    options.instance = "recovery-bench".into();
    options.data_dir = server.scratch_dir().join("recovery");
    options.grpc_listen = "127.0.0.1:0".parse().expect("address");
    options.http_listen = "127.0.0.2:0".parse().expect("address");
    options.nats.url = server.url();
    let stop = casework_recovery::Shutdown::new();
    let running = casework_recovery::start(options, stop.clone())
        .await
        .expect("start recovery");
    let timers_base = timer_messages(&js).await;

    // 1. The pending deadlines, two hours away.
    let created = Instant::now();
    let far = Utc::now() + PENDING_FOR;
    create(
        intake.clone(),
        pending_n,
        BULK_CONCURRENCY,
        false,
        move |_| far,
    )
    .await;
    let create_s = created.elapsed().as_secs_f64();
    let pending_target = timers_base + pending_n as u64;
    let timers_pending = wait_for_timers(&js, pending_target, Duration::from_secs(120)).await;
    let scheduled_s = created.elapsed().as_secs_f64();
    let (rss_pending, _) = rss_of("self");
    let (nats_rss_pending, _) = nats.as_deref().map(rss_of).unwrap_or_default();

    // 2. The measured deadlines, falling due at a steady rate from `base`,
    // which leaves time to create and schedule them all first.
    // (Give it 20 ms per measured case, plus 20 s; the report says if that
    // was enough.)
    let lead = Duration::from_secs(20 + (measured_n / 50) as u64);
    let from = reader.last_stream_seq().await.expect("last seq") + 1;
    let mut tail = reader
        .tail("case.*.*.recovery.>", from)
        .await
        .expect("tail");
    let base = Utc::now() + chrono::Duration::from_std(lead).expect("lead");
    let step = chrono::Duration::from_std(window).expect("window") / measured_n as i32;
    let deadlines = create(intake.clone(), measured_n, CONCURRENCY, true, move |i| {
        base + step * i as i32
    })
    .await;
    let timers_measured = wait_for_timers(
        &js,
        pending_target + measured_n as u64,
        Duration::from_secs(30),
    )
    .await;
    let ready_before_first_deadline = Utc::now() < base;

    // Collect promise_broken and recovery_completed of the measured cases.
    let mut decided = Vec::with_capacity(measured_n);
    let mut vs_timer = Vec::with_capacity(measured_n);
    let mut observed = Vec::with_capacity(measured_n);
    let mut completed = Vec::with_capacity(measured_n);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let give_up = Instant::now() + lead + window + Duration::from_secs(300);
    while (decided.len() < measured_n || completed.len() < measured_n) && Instant::now() < give_up {
        // Nothing may come until the first deadline; then no more than a
        // minute between events.
        let quiet = if first.is_none() {
            give_up.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(60)
        };
        let d = match tokio::time::timeout(quiet, tail.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => {
                eprintln!("deadlines: tail error: {e}");
                continue;
            }
            Ok(None) | Err(_) => break,
        };
        let seen = Utc::now();
        let Ok(env) = casework_domain::chain::decode(&d.bytes) else {
            continue;
        };
        let Some(deadline) = deadlines.get(&env.case_id) else {
            continue;
        };
        let at = env
            .occurred_at
            .as_ref()
            .map(from_timestamp)
            .unwrap_or_default();
        match env.payload {
            Some(Payload::PromiseBroken(_)) => {
                let whole = deadline.trunc_subsecs(0);
                let timer = if whole == *deadline {
                    whole
                } else {
                    whole + chrono::Duration::seconds(1)
                };
                decided.push(ms(at - *deadline));
                vs_timer.push(ms(at - timer));
                observed.push(ms(seen - *deadline));
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
            }
            Some(Payload::RecoveryCompleted(_)) => completed.push(ms(seen - *deadline)),
            _ => {}
        }
    }
    let broken = decided.len();
    let elapsed = first
        .map_or(Duration::ZERO, |f| last - f)
        .max(Duration::from_millis(1));
    let (rss_end, rss_peak) = rss_of("self");
    let (nats_rss_end, nats_rss_peak) = nats.as_deref().map(rss_of).unwrap_or_default();
    let max_late = decided.iter().max().copied().unwrap_or_default();
    let extra = serde_json::json!({
        "pending_deadlines": pending_n,
        "timers_stream_msgs_when_pending": timers_pending - timers_base,
        "timers_stream_msgs_with_measured": timers_measured - timers_base,
        "create_pending_per_s": (pending_n as f64 / create_s).round(),
        "create_pending_s": create_s.round(),
        "all_pending_scheduled_after_s": scheduled_s.round(),
        "bulk_concurrency": BULK_CONCURRENCY,
        "opening": "case_opened then promise_made, one append each, as intake",
        "measured": measured_n,
        "deadline_rate_per_s": RATE_PER_S,
        "window_s": window.as_secs_f64(),
        "ready_before_first_deadline": ready_before_first_deadline,
        "broken": broken,
        "recoveries_completed": completed.len(),
        "max_late_ms": (max_late.as_secs_f64() * 1e6).round() / 1e3,
        "late_vs_timer_second_p50_ms": pct(&mut vs_timer, 0.5),
        "late_vs_timer_second_p99_ms": pct(&mut vs_timer, 0.99),
        "observed_p50_ms": pct(&mut observed, 0.5),
        "observed_p99_ms": pct(&mut observed, 0.99),
        "recovery_completed_observed_p50_ms": pct(&mut completed, 0.5),
        "recovery_completed_observed_p99_ms": pct(&mut completed, 0.99),
        "rss_harness_before_service_mib": rss_harness,
        "rss_pending_mib": rss_pending,
        "rss_end_mib": rss_end,
        "rss_peak_mib": rss_peak,
        "nats_rss_empty_mib": nats_rss_empty,
        "nats_rss_pending_mib": nats_rss_pending,
        "nats_rss_end_mib": nats_rss_end,
        "nats_rss_peak_mib": nats_rss_peak,
        "nats_sync_interval": "always",
        "note": "p50/p99 = promise_broken.occurred_at - deadline over the measured cases; late_vs_timer_second = the same from the deadline rounded up to its whole second (timers have second precision); observed = when the bench's tail saw it; per_s = promises broken per second; rss_* = this process (recovery in-process + the harness), nats_rss_* = nats-server holding the pending timers",
    });
    print("deadlines", CONCURRENCY, decided, broken, elapsed, extra);
    stop.cancel();
    let _ = running.wait().await;
}
