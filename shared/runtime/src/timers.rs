//! Durable timers on the broker (DESIGN.md §3): a timer is a JetStream
//! message schedule on the `TIMERS` stream (never on `CASES`). Scheduling
//! publishes to `timer.<writer>.sched.<kind>.<tenant>.<case_id>` with
//! `Nats-Schedule: @at <RFC 3339>` and a target of
//! `timer.<writer>.fire.<kind>.<tenant>.<case_id>`; at its time the server
//! publishes the fire message, which the service's durable consumer
//! delivers to the reconcile loop. One schedule per subject: scheduling the
//! same (kind, case) again replaces the earlier time. Timers survive the
//! crash of any process (they are stored by the broker with the stream's
//! durability) and are level-triggered: a fire only wakes the case, whose
//! state decides whether anything is due — so a stale or early fire is
//! harmless.

use async_nats::HeaderMap;
use casework_caselog::CaseKey;
use casework_caselog::domain::Writer;
use chrono::{DateTime, SecondsFormat, Utc};

/// The header that marks a timer's cancellation (a tombstone that replaces
/// its schedule and its last fire, and expires): the timer loop
/// acknowledges it without waking the case.
pub const CANCELLED_HEADER: &str = "Casework-Timer";

/// How long a cancellation tombstone stays before the broker removes it
/// (the stream's per-message TTL; whole seconds).
const TOMBSTONE_TTL: &str = "1s";

/// Schedules timers for one writer.
#[derive(Debug, Clone)]
pub struct Timers {
    client: async_nats::Client,
    writer: Writer,
}

/// A parsed fire subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// The timer kind (e.g. `deadline`, `step`).
    pub kind: String,
    /// The case to wake.
    pub case: CaseKey,
}

impl Timers {
    /// Timers of `writer`, on `client` (whose user may publish
    /// `timer.<writer>.>`).
    pub fn new(client: async_nats::Client, writer: Writer) -> Self {
        Self { client, writer }
    }

    /// The filter of this writer's fire messages.
    pub fn fire_filter(&self) -> String {
        format!("timer.{}.fire.>", self.writer)
    }

    /// Schedules (or moves) the `kind` timer of `case` to `at`. `kind` is a
    /// token of `[a-z0-9_]`.
    pub async fn schedule(
        &self,
        kind: &str,
        case: &CaseKey,
        at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            !kind.is_empty()
                && kind
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "timer kind {kind:?} must be a token of a-z, 0-9 and _"
        );
        let w = self.writer;
        let subject = format!("timer.{w}.sched.{kind}.{}.{}", case.tenant, case.case_id);
        let target = format!("timer.{w}.fire.{kind}.{}.{}", case.tenant, case.case_id);
        // Schedules have second precision: round up, so a timer never fires
        // before its time (an early fire would find nothing due and
        // reschedule the same second). A time in the past fires at once.
        let at = at.max(Utc::now());
        let at = match at.timestamp_subsec_nanos() {
            0 => at,
            n => at + chrono::Duration::nanoseconds(1_000_000_000 - i64::from(n)),
        };
        let mut h = HeaderMap::new();
        h.insert(
            "Nats-Schedule",
            format!("@at {}", at.to_rfc3339_opts(SecondsFormat::Secs, true)).as_str(),
        );
        h.insert("Nats-Schedule-Target", target.as_str());
        h.insert("Nats-Rollup", "sub");
        if let Some(tp) = casework_telemetry::current_traceparent() {
            h.insert("traceparent", tp.as_str());
        }
        self.publish(subject, h, &format!("scheduling {kind} timer of {case}"))
            .await
    }

    /// Removes the `kind` timer of `case` (its case is closed): a pending
    /// schedule no longer fires, and the stream keeps nothing for it. Each of
    /// the timer's two subjects (its schedule, its last fire) is rolled up
    /// into a tombstone that expires a second later, so `TIMERS` holds
    /// messages for open cases only. The tombstone on the fire subject is
    /// delivered to the timer loop, which acknowledges it without waking the
    /// case. Idempotent.
    pub async fn cancel(&self, kind: &str, case: &CaseKey) -> anyhow::Result<()> {
        let w = self.writer;
        for part in ["sched", "fire"] {
            let subject = format!("timer.{w}.{part}.{kind}.{}.{}", case.tenant, case.case_id);
            let mut h = HeaderMap::new();
            h.insert("Nats-Rollup", "sub");
            h.insert("Nats-TTL", TOMBSTONE_TTL);
            h.insert(CANCELLED_HEADER, "cancelled");
            self.publish(subject, h, &format!("cancelling {kind} timer of {case}"))
                .await?;
        }
        Ok(())
    }

    /// Publishes an empty message with `headers` to `subject` on TIMERS and
    /// waits for the stream's ack; `what` names the operation in errors.
    async fn publish(&self, subject: String, headers: HeaderMap, what: &str) -> anyhow::Result<()> {
        let reply = self
            .client
            .request_with_headers(subject, headers, bytes::Bytes::new())
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        let v: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| anyhow::anyhow!("{what}: unreadable reply ({e})"))?;
        if let Some(err) = v.get("error") {
            anyhow::bail!("{what}: {err}");
        }
        Ok(())
    }

    /// True for a cancellation tombstone (see [`Timers::cancel`]).
    pub fn is_cancellation(headers: Option<&HeaderMap>) -> bool {
        headers
            .and_then(|h| h.get(CANCELLED_HEADER))
            .is_some_and(|v| v.as_str() == "cancelled")
    }

    /// Whether a fire on `subject` came from this writer's own schedule for
    /// it. The broker lets a writer publish only under its own `timer.`
    /// subjects, but a schedule's target is not checked: another writer
    /// could aim one at our fire subject. A fired message names the
    /// schedule that produced it (`Nats-Scheduler`), which must be ours
    /// for the same kind and case; a message without one was published on
    /// the fire subject directly, which only this writer may do.
    pub fn scheduled_by_us(&self, subject: &str, headers: Option<&HeaderMap>) -> bool {
        let Some(scheduler) = headers.and_then(|h| h.get("Nats-Scheduler")) else {
            return true;
        };
        let own = format!("timer.{}.fire.", self.writer);
        let Some(rest) = subject.strip_prefix(&own) else {
            return false;
        };
        scheduler.as_str() == format!("timer.{}.sched.{rest}", self.writer)
    }

    /// Parses a fire subject of this writer.
    pub fn parse_fire(&self, subject: &str) -> Option<Fire> {
        let mut it = subject.split('.');
        let (Some("timer"), Some(w), Some("fire"), Some(kind), Some(t), Some(c), None) = (
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
            it.next(),
        ) else {
            return None;
        };
        if w != self.writer.as_str() {
            return None;
        }
        Some(Fire {
            kind: kind.to_owned(),
            case: CaseKey::parse(t, c).ok()?,
        })
    }
}
