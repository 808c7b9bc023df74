//! Recovery's read models in redb, fed by one ordered tail of recovery's own
//! events (`case.*.*.recovery.>`) with a checkpoint committed in the same
//! write transaction (CONVENTIONS.md §6), so every replica builds the same
//! views and an empty data directory rebuilds them from the log:
//!
//! - the **daily budget**: granted compensations per (tenant, UTC day,
//!   currency), also held in memory for the pure decision;
//! - **open recoveries** and **pending approvals** for the gRPC API.
//!
//! The budget is **advisory**: it lags the log by the feed's latency (a few
//! milliseconds), so replicas granting on different cases at the same
//! moment may overshoot the daily budget by the compensations in flight —
//! each of them at most the automatic limit. Making it exact would need a
//! per-tenant lock (a shared budget subject with its own optimistic guard);
//! a budget is a spending policy, not a ledger, so we chose availability.
//!
//! The feed also wakes the reconciler when a person approved or declined a
//! compensation (the gRPC API wakes it too; this covers a replica that
//! crashed between the append and its own wake-up).

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use casework_caselog::CaseKey;
use casework_domain::chain::from_timestamp;
use casework_domain::pb::{Envelope, envelope::Payload};
use casework_runtime::Shutdown;
use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::tables::{BUDGET, CHECKPOINT, OPEN_RECOVERIES, PENDING_APPROVALS};
use crate::{Error, Result};

/// The subjects the feed follows.
pub const FEED_FILTER: &str = "case.*.*.recovery.>";

/// An open recovery (JSON in redb).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenRec {
    /// Tenant.
    pub tenant: String,
    /// Case id.
    pub case_id: String,
    /// Recovery number.
    pub recovery: u32,
    /// `RecoveryTrigger` value.
    pub trigger: i32,
    /// Why it started.
    pub reason: String,
    /// The triggering event.
    pub cause_event_id: String,
    /// When it started (RFC 3339).
    pub started_at: Option<DateTime<Utc>>,
    /// Event types of the actions so far.
    pub actions: Vec<String>,
    /// Compensations waiting for a person.
    pub pending: Vec<String>,
    /// True after `retry_requested` until the next action.
    pub waiting_fulfilment: bool,
}

/// A compensation waiting for a person (JSON in redb).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRec {
    /// Tenant.
    pub tenant: String,
    /// Case id.
    pub case_id: String,
    /// Recovery number.
    pub recovery: u32,
    /// Compensation id.
    pub compensation_id: String,
    /// Kind token.
    pub kind: String,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// Why (and why it needs a person).
    pub reason: String,
    /// When proposed.
    pub proposed_at: Option<DateTime<Utc>>,
    /// The `compensation_proposed` event.
    pub proposed_event_id: String,
}

type BudgetKey = (String, NaiveDate, String);

/// The read models.
#[derive(Debug, Clone)]
pub struct Views {
    db: Arc<redb::Database>,
    budget: Arc<Mutex<HashMap<BudgetKey, u64>>>,
    /// Rebuilt from the log: fsynced at most once a second.
    commits: Arc<casework_runtime::store::Rebuildable>,
}

fn budget_key(tenant: &str, day: NaiveDate, currency: &str) -> String {
    format!("{tenant}|{day}|{currency}")
}

fn open_key(tenant: &str, case_id: &str, recovery: u32) -> String {
    format!("{tenant}|{case_id}|{recovery:010}")
}

fn redb_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("redb: {e}"))
}

/// The recovery number in a compensation id `r<n>-c<m>`.
fn recovery_of(comp_id: &str) -> Option<u32> {
    comp_id.strip_prefix('r')?.split('-').next()?.parse().ok()
}

impl Views {
    /// Opens the views in `db` (creating the tables) and loads the budget of
    /// the last two days into memory.
    pub fn open(db: Arc<redb::Database>) -> Result<Self> {
        let tx = db.begin_write().map_err(redb_err)?;
        {
            tx.open_table(BUDGET).map_err(redb_err)?;
            tx.open_table(OPEN_RECOVERIES).map_err(redb_err)?;
            tx.open_table(PENDING_APPROVALS).map_err(redb_err)?;
            tx.open_table(CHECKPOINT).map_err(redb_err)?;
        }
        tx.commit().map_err(redb_err)?;
        let mut budget = HashMap::new();
        let since = Utc::now().date_naive().pred_opt().unwrap_or_default();
        let rx = db.begin_read().map_err(redb_err)?;
        let t = rx.open_table(BUDGET).map_err(redb_err)?;
        for row in t.iter().map_err(redb_err)? {
            let (k, v) = row.map_err(redb_err)?;
            let mut parts = k.value().split('|');
            if let (Some(tenant), Some(day), Some(cur)) = (parts.next(), parts.next(), parts.next())
                && let Ok(day) = day.parse::<NaiveDate>()
                && day >= since
            {
                budget.insert((tenant.to_owned(), day, cur.to_owned()), v.value());
            }
        }
        Ok(Self {
            db,
            budget: Arc::new(Mutex::new(budget)),
            commits: Arc::default(),
        })
    }

    /// What `tenant` was granted on `day` (UTC) in `currency`.
    pub fn spent(&self, tenant: &str, day: NaiveDate, currency: &str) -> u64 {
        self.budget
            .lock()
            .expect("budget lock")
            .get(&(tenant.to_owned(), day, currency.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// The last stream sequence applied.
    pub fn checkpoint(&self) -> Result<u64> {
        let rx = self.db.begin_read().map_err(redb_err)?;
        let t = rx.open_table(CHECKPOINT).map_err(redb_err)?;
        Ok(t.get("feed").map_err(redb_err)?.map_or(0, |v| v.value()))
    }

    fn page<T: for<'de> Deserialize<'de>>(
        &self,
        table: redb::TableDefinition<&str, &str>,
        tenant: &str,
        token: &str,
        limit: usize,
    ) -> Result<(Vec<T>, String)> {
        let prefix = format!("{tenant}|");
        let end = format!("{tenant}}}");
        if !token.is_empty() && !token.starts_with(&prefix) {
            return Err(Error::InvalidArgument {
                field: "page_token",
                why: "is not a token of this listing for this tenant; pass the next_page_token of the previous page, or leave it empty for the first page".into(),
            });
        }
        let start = if token.is_empty() {
            Bound::Included(prefix.as_str())
        } else {
            Bound::Excluded(token)
        };
        let rx = self.db.begin_read().map_err(redb_err)?;
        let t = rx.open_table(table).map_err(redb_err)?;
        let mut out = Vec::new();
        let mut last = String::new();
        for row in t
            .range::<&str>((start, Bound::Excluded(end.as_str())))
            .map_err(redb_err)?
        {
            let (k, v) = row.map_err(redb_err)?;
            if out.len() == limit {
                return Ok((out, last));
            }
            last = k.value().to_owned();
            out.push(
                serde_json::from_str(v.value())
                    .map_err(|e| Error::Internal(format!("read model row {last}: {e}")))?,
            );
        }
        Ok((out, String::new()))
    }

    /// A page of `tenant`'s open recoveries after `token`.
    pub fn open_recoveries(
        &self,
        tenant: &str,
        token: &str,
        limit: usize,
    ) -> Result<(Vec<OpenRec>, String)> {
        self.page(OPEN_RECOVERIES, tenant, token, limit)
    }

    /// A page of `tenant`'s pending approvals after `token`.
    pub fn pending_approvals(
        &self,
        tenant: &str,
        token: &str,
        limit: usize,
    ) -> Result<(Vec<PendingRec>, String)> {
        self.page(PENDING_APPROVALS, tenant, token, limit)
    }

    /// Every case with an open recovery (for the start-up sweep).
    pub fn cases_with_open_recoveries(&self) -> Result<Vec<CaseKey>> {
        let rx = self.db.begin_read().map_err(redb_err)?;
        let t = rx.open_table(OPEN_RECOVERIES).map_err(redb_err)?;
        let mut out: Vec<CaseKey> = Vec::new();
        for row in t.iter().map_err(redb_err)? {
            let (k, _) = row.map_err(redb_err)?;
            let mut parts = k.value().split('|');
            if let (Some(tenant), Some(case)) = (parts.next(), parts.next())
                && let Ok(key) = CaseKey::parse(tenant, case)
                && out.last() != Some(&key)
            {
                out.push(key);
            }
        }
        Ok(out)
    }

    /// Applies a batch of recovery events (stream sequence, envelope) and
    /// the checkpoint in one write transaction. Returns the cases whose
    /// compensation a person decided on.
    pub fn apply(&self, batch: &[(u64, Envelope)]) -> Result<Vec<CaseKey>> {
        let Some(last_seq) = batch.last().map(|(s, _)| *s) else {
            return Ok(Vec::new());
        };
        let mut wake = Vec::new();
        let mut budget_delta: HashMap<BudgetKey, u64> = HashMap::new();
        let tx = self.db.begin_write().map_err(redb_err)?;
        {
            let mut open = tx.open_table(OPEN_RECOVERIES).map_err(redb_err)?;
            let mut pending = tx.open_table(PENDING_APPROVALS).map_err(redb_err)?;
            let mut budget = tx.open_table(BUDGET).map_err(redb_err)?;
            let mut checkpoint = tx.open_table(CHECKPOINT).map_err(redb_err)?;
            let done = checkpoint
                .get("feed")
                .map_err(redb_err)?
                .map_or(0, |v| v.value());
            for (seq, e) in batch {
                if *seq <= done {
                    continue;
                }
                let Some(payload) = &e.payload else { continue };
                let (t, c) = (e.tenant.as_str(), e.case_id.as_str());
                let at = e.occurred_at.as_ref().map(from_timestamp);
                let mut update = |n: u32, f: &mut dyn FnMut(&mut OpenRec)| -> Result<()> {
                    let key = open_key(t, c, n);
                    let cur = open
                        .get(key.as_str())
                        .map_err(redb_err)?
                        .map(|v| v.value().to_owned());
                    if let Some(json) = cur
                        && let Ok(mut rec) = serde_json::from_str::<OpenRec>(&json)
                    {
                        f(&mut rec);
                        rec.actions.push(e.event_type.clone());
                        let json = serde_json::to_string(&rec)
                            .map_err(|e| Error::Internal(e.to_string()))?;
                        open.insert(key.as_str(), json.as_str()).map_err(redb_err)?;
                    }
                    Ok(())
                };
                match payload {
                    Payload::RecoveryStarted(r) => {
                        let rec = OpenRec {
                            tenant: t.to_owned(),
                            case_id: c.to_owned(),
                            recovery: r.recovery,
                            trigger: r.trigger,
                            reason: r.reason.clone(),
                            cause_event_id: e.causation_id.clone(),
                            started_at: at,
                            actions: Vec::new(),
                            pending: Vec::new(),
                            waiting_fulfilment: false,
                        };
                        let json = serde_json::to_string(&rec)
                            .map_err(|e| Error::Internal(e.to_string()))?;
                        open.insert(open_key(t, c, r.recovery).as_str(), json.as_str())
                            .map_err(redb_err)?;
                    }
                    Payload::RecoveryCompleted(r) => {
                        open.remove(open_key(t, c, r.recovery).as_str())
                            .map_err(redb_err)?;
                    }
                    Payload::ApologySent(a) => {
                        update(a.recovery, &mut |r| r.waiting_fulfilment = false)?
                    }
                    Payload::CaseEscalated(a) => {
                        update(a.recovery, &mut |r| r.waiting_fulfilment = false)?
                    }
                    Payload::RetryRequested(a) => {
                        update(a.recovery, &mut |r| r.waiting_fulfilment = true)?
                    }
                    Payload::CompensationProposed(p) => {
                        update(p.recovery, &mut |r| {
                            r.waiting_fulfilment = false;
                            if p.requires_approval {
                                r.pending.push(p.compensation_id.clone());
                            }
                        })?;
                        if p.requires_approval {
                            let amount = p.amount.clone().unwrap_or_default();
                            let rec = PendingRec {
                                tenant: t.to_owned(),
                                case_id: c.to_owned(),
                                recovery: p.recovery,
                                compensation_id: p.compensation_id.clone(),
                                kind: p.kind.clone(),
                                amount_minor: amount.amount_minor,
                                currency: amount.currency,
                                reason: p.reason.clone(),
                                proposed_at: at,
                                proposed_event_id: e.event_id.clone(),
                            };
                            let json = serde_json::to_string(&rec)
                                .map_err(|e| Error::Internal(e.to_string()))?;
                            pending
                                .insert(
                                    format!("{t}|{c}|{}", p.compensation_id).as_str(),
                                    json.as_str(),
                                )
                                .map_err(redb_err)?;
                        }
                    }
                    Payload::CompensationApproved(x) => {
                        decided(&mut pending, &mut update, t, c, &x.compensation_id)?;
                        if let Ok(k) = CaseKey::parse(t, c) {
                            wake.push(k);
                        }
                    }
                    Payload::CompensationDeclined(x) => {
                        decided(&mut pending, &mut update, t, c, &x.compensation_id)?;
                        if let Ok(k) = CaseKey::parse(t, c) {
                            wake.push(k);
                        }
                    }
                    Payload::CompensationGranted(g) => {
                        decided(&mut pending, &mut update, t, c, &g.compensation_id)?;
                        let amount = g.amount.clone().unwrap_or_default();
                        let day = at.unwrap_or_default().date_naive();
                        let key = (t.to_owned(), day, amount.currency.clone());
                        let add = u64::try_from(amount.amount_minor).unwrap_or(0);
                        let k = budget_key(t, day, &amount.currency);
                        let before = budget
                            .get(k.as_str())
                            .map_err(redb_err)?
                            .map_or(0, |v| v.value());
                        budget.insert(k.as_str(), before + add).map_err(redb_err)?;
                        *budget_delta.entry(key).or_default() += add;
                    }
                    _ => {}
                }
            }
            checkpoint
                .insert("feed", last_seq.max(done))
                .map_err(redb_err)?;
        }
        self.commits.commit(tx);
        let mut mem = self.budget.lock().expect("budget lock");
        for (k, v) in budget_delta {
            *mem.entry(k).or_default() += v;
        }
        Ok(wake)
    }
}

/// Applies a change to open recovery `n` of the case being fed.
type UpdateOpen<'a> = dyn FnMut(u32, &mut dyn FnMut(&mut OpenRec)) -> Result<()> + 'a;

fn decided(
    pending: &mut redb::Table<&str, &str>,
    update: &mut UpdateOpen<'_>,
    t: &str,
    c: &str,
    comp_id: &str,
) -> Result<()> {
    pending
        .remove(format!("{t}|{c}|{comp_id}").as_str())
        .map_err(redb_err)?;
    if let Some(n) = recovery_of(comp_id) {
        update(n, &mut |r| r.pending.retain(|p| p != comp_id))?;
    }
    Ok(())
}

/// Follows recovery's events from the views' checkpoint, applying them in
/// batches; sends `true` on `caught_up` once everything that was in the log
/// at start is applied, and each case a person decided on to `wake`.
pub async fn run_feed(
    client: async_nats::Client,
    instance: String,
    views: Views,
    caught_up: watch::Sender<bool>,
    wake: mpsc::Sender<CaseKey>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    // A tail that fails (the broker restarted and its in-memory consumer is
    // gone, a heartbeat missed) is followed again from the checkpoint, as
    // the other read models do: the views never stop while the service runs.
    let mut pause = Duration::from_millis(200);
    loop {
        match feed_once(&client, &instance, &views, &caught_up, &wake, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, ?pause, "recovery views: the tail failed; following again from the checkpoint");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Follows the feed from the checkpoint until shutdown (`Ok`) or until the
/// tail fails (`Err`).
async fn feed_once(
    client: &async_nats::Client,
    instance: &str,
    views: &Views,
    caught_up: &watch::Sender<bool>,
    wake: &mpsc::Sender<CaseKey>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let from = {
        let v = views.clone();
        casework_runtime::store::blocking(move || v.checkpoint()).await?
    };
    let js = jetstream::new(client.clone());
    let name = casework_caselog::permissions::tail_consumer("recovery", instance);
    let (messages, pending) =
        casework_caselog::jetstream::named_tail(&js, &name, FEED_FILTER, from + 1)
            .await
            .map_err(|e| anyhow::anyhow!("recovery views: {e}"))?;
    if pending == 0 {
        let _ = caught_up.send(true);
    }
    let mut messages = messages.map(Ok::<_, std::convert::Infallible>);
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let mut batch = Vec::new();
        let mut at_end = false;
        let mut take = |m: Option<Result<jetstream::Message, _>>| -> anyhow::Result<bool> {
            let Some(m) = m else {
                anyhow::bail!("recovery views: the tail ended");
            };
            let m = m.map_err(|e| anyhow::anyhow!("recovery views: {e}"))?;
            let info = m
                .info()
                .map_err(|e| anyhow::anyhow!("recovery views: {e}"))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            match casework_domain::chain::decode(&m.payload) {
                Ok(env) if casework_domain::verify::not_its_writers(&m.subject, &env).is_some() => {
                    tracing::error!(stream_seq = seq, subject = %m.subject, "an event its subject's writer does not own, skipped by the views")
                }
                Ok(env) => batch.push((seq, env)),
                Err(e) => {
                    tracing::error!(stream_seq = seq, subject = %m.subject, error = %e, "undecodable recovery event skipped by the views")
                }
            }
            Ok(pending == 0)
        };
        at_end |= take(first)?;
        for _ in 1..1000 {
            match tokio::time::timeout(Duration::from_millis(2), messages.next()).await {
                Ok(m) => at_end |= take(m)?,
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let v = views.clone();
        let woken = casework_runtime::store::blocking(move || v.apply(&batch)).await?;
        for case in woken {
            let _ = wake.try_send(case);
        }
        if at_end {
            let _ = caught_up.send(true);
        }
    }
}
