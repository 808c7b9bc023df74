//! `deadlines`: the recovery service (in-process, on its own nats-server)
//! holding 100,000 pending promise deadlines. The cases are created
//! directly in the log (`case_opened` + `promise_made` as one atomic batch,
//! 64 at a time), with deadlines spread evenly over a window of 60 s
//! (scaled by `CASEWORK_BENCH_SCALE`, at least 5 s) that starts 60 s
//! (scaled) plus one second per 150 cases ahead, so all are created and
//! pending before the first one falls due. It reports how late `promise_broken` is recorded (its
//! `occurred_at` − the deadline, p50/p99), how many were broken per second,
//! and the memory of this process (the service plus the harness) and of
//! nats-server, which holds the pending timers as message schedules.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use casework_caselog::jetstream::{NatsOptions, StreamOptions, connect, ensure_streams};
use casework_caselog::{CaseKey, CaseLog, JetStreamLog};
use casework_domain::chain::{from_timestamp, timestamp};
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{CaseId, EventId, NewEvent, Tenant, Writer};
use casework_testkit::NatsServer;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::report::{print, scaled};

const CONCURRENCY: usize = 64;

/// `VmRSS` and `VmHWM` (MiB) of a process.
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

/// The nats-server process of `server`, found by its configuration path
/// (testkit does not expose the pid).
fn nats_pid(server: &NatsServer) -> Option<String> {
    let conf = server.scratch_dir().join("nats-server.conf");
    let out = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(conf.display().to_string())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_owned)
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

/// Runs the scenario.
pub async fn deadlines() {
    let n = scaled(100_000);
    // Creating cases is bound by the broker's atomic-batch rate (a few
    // hundred batches/s on a busy 2-core machine), so the first deadline
    // also leaves time to create them all: every deadline is still pending
    // when the measurement starts.
    let lead = Duration::from_secs((scaled(60).max(5) + n / 150) as u64);
    let window = Duration::from_secs(scaled(60).max(5) as u64);
    let server = NatsServer::start();
    let nats = nats_pid(&server);
    let client = connect(&NatsOptions {
        url: server.url(),
        ..Default::default()
    })
    .await
    .expect("connect to the bench nats-server");
    ensure_streams(&client, &StreamOptions::default())
        .await
        .expect("streams");
    let intake = Arc::new(JetStreamLog::new(
        client.clone(),
        "bench-intake",
        Some(Writer::Intake),
    ));
    let reader = JetStreamLog::new(client.clone(), "bench-reader", None);
    let (rss_before, _) = rss_of("self");

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

    // Tail promise_broken from now on.
    let from = reader.last_stream_seq().await.expect("last seq") + 1;
    let mut broken = reader
        .tail("case.*.*.recovery.promise_broken", from)
        .await
        .expect("tail");

    // Create the cases.
    let base = Utc::now() + chrono::Duration::from_std(lead).expect("lead");
    let span = chrono::Duration::from_std(window).expect("window");
    let created = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (intake, next) = (intake.clone(), next.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return mine;
                    }
                    let case = CaseKey {
                        tenant: Tenant::parse("bench").expect("tenant"),
                        case_id: CaseId::from_ulid(ulid::Ulid::new()),
                    };
                    let deadline = base + span * (i as i32) / (n as i32);
                    intake
                        .append(&case, None, opening(&case, deadline))
                        .await
                        .expect("open a bench case");
                    mine.push((case.case_id.to_string(), deadline));
                }
            })
        })
        .collect();
    let mut deadlines: HashMap<String, DateTime<Utc>> = HashMap::with_capacity(n);
    for t in tasks {
        deadlines.extend(t.await.expect("creating task"));
    }
    let create_s = created.elapsed().as_secs_f64();
    let created_all_before_first_deadline = Utc::now() < base;

    // Wait until the first deadline approaches, then look at memory and the
    // pending timers.
    let until_base = (base - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until_base.saturating_sub(Duration::from_millis(500))).await;
    let (rss_pending, _) = rss_of("self");
    let (nats_rss_pending, _) = nats.as_deref().map(rss_of).unwrap_or_default();
    let js = async_nats::jetstream::new(client.clone());
    let timers_msgs = match js.get_stream("TIMERS").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    };

    // Collect every promise_broken.
    let mut lateness = Vec::with_capacity(n);
    let mut observed = Vec::with_capacity(n);
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let give_up = Instant::now() + window + Duration::from_secs(300);
    while lateness.len() < n && Instant::now() < give_up {
        let d = match tokio::time::timeout(Duration::from_secs(30), broken.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => {
                eprintln!("tail error: {e}");
                continue;
            }
            Ok(None) | Err(_) => break,
        };
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
        let now = Utc::now();
        lateness.push((at - *deadline).to_std().unwrap_or_default());
        observed.push((now - *deadline).to_std().unwrap_or_default());
        first.get_or_insert_with(Instant::now);
        last = Instant::now();
    }
    let fired = lateness.len();
    let elapsed = first
        .map_or(Duration::ZERO, |f| last - f)
        .max(Duration::from_millis(1));
    let (rss_end, rss_peak) = rss_of("self");
    let (nats_rss_end, nats_rss_peak) = nats.as_deref().map(rss_of).unwrap_or_default();
    observed.sort();
    let pct = |v: &[Duration], p: f64| {
        v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(0.0, |d| (d.as_secs_f64() * 1e6).round() / 1e3)
    };
    let max_late = lateness.iter().max().copied().unwrap_or_default();
    let extra = serde_json::json!({
        "pending_deadlines": n,
        "broken": fired,
        "window_s": window.as_secs(),
        "lead_s": lead.as_secs(),
        "create_per_s": (n as f64 / create_s).round(),
        "created_before_first_deadline": created_all_before_first_deadline,
        "max_late_ms": (max_late.as_secs_f64() * 1e6).round() / 1e3,
        "observed_p50_ms": pct(&observed, 0.5),
        "observed_p99_ms": pct(&observed, 0.99),
        "timers_stream_msgs_when_pending": timers_msgs,
        "rss_before_service_mib": rss_before,
        "rss_pending_mib": rss_pending,
        "rss_end_mib": rss_end,
        "rss_peak_mib": rss_peak,
        "nats_rss_pending_mib": nats_rss_pending,
        "nats_rss_end_mib": nats_rss_end,
        "nats_rss_peak_mib": nats_rss_peak,
        "note": "lateness = promise_broken.occurred_at - deadline; observed = when the bench saw it; rss_* is this process (recovery in-process + the harness's map of deadlines)",
    });
    print("deadlines", CONCURRENCY, lateness, fired, elapsed, extra);
    stop.cancel();
    let _ = running.wait().await;
}
