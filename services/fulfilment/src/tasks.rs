//! The task board of one replica: which external and manual attempts are
//! running (an in-memory index, rebuilt at start from a `tail` of
//! `case.*.*.fulfilment.>` and fed directly by this replica's decisions),
//! and to whom each polled task is leased (in memory, written through to
//! redb so a restart does not hand a leased task to a second worker before
//! the lease ends). The board is only a hint: every task is validated
//! against the case's log before it is handed out, and every completion is
//! validated and guarded again when it is appended.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::Notify;

use crate::decide::Offer;
use crate::token::TaskToken;

/// `task_leases`: token → `{"worker": …, "until_ms": …}`.
const LEASES: TableDefinition<&str, &str> = TableDefinition::new("task_leases");

/// One running external or manual attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Step name.
    pub step_name: String,
    /// Task kind or queue; `None` until resolved from the catalogue.
    pub kind: Option<String>,
    /// True for a manual step.
    pub manual: bool,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
    /// When it times out.
    pub timeout_at: DateTime<Utc>,
    /// The trace the attempt was started in (its `step_started`'s
    /// `traceparent`), so the worker's or person's report continues the
    /// case's trace.
    pub traceparent: Option<String>,
}

/// A lease of a task to a worker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// The worker.
    pub worker: String,
    /// Until when (epoch milliseconds).
    pub until_ms: i64,
}

impl Lease {
    /// Until when.
    pub fn until(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.until_ms).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: BTreeMap<TaskToken, Entry>,
    leases: HashMap<TaskToken, Lease>,
}

/// The task board.
#[derive(Debug)]
pub struct TaskBoard {
    inner: Mutex<Inner>,
    /// Signalled when a task becomes available.
    pub notify: Notify,
    db: Option<Arc<redb::Database>>,
}

impl TaskBoard {
    /// A board whose leases live in `db` (loaded now); `None`: memory only.
    pub fn open(db: Option<Arc<redb::Database>>) -> anyhow::Result<Self> {
        let mut inner = Inner::default();
        if let Some(db) = &db {
            let tx = db.begin_write()?;
            tx.open_table(LEASES)?;
            tx.commit()?;
            let tx = db.begin_read()?;
            let t = tx.open_table(LEASES)?;
            for row in t.iter()? {
                let (k, v) = row?;
                if let (Ok(token), Ok(lease)) = (
                    TaskToken::parse(k.value()),
                    serde_json::from_str::<Lease>(v.value()),
                ) {
                    inner.leases.insert(token, lease);
                }
            }
        }
        Ok(Self {
            inner: Mutex::new(inner),
            notify: Notify::new(),
            db,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("task board lock")
    }

    /// Records a task this replica just started (kind known).
    pub fn offer(&self, token: TaskToken, o: &Offer) {
        self.lock().entries.insert(
            token,
            Entry {
                step_name: o.step_name.clone(),
                kind: Some(o.kind.clone()),
                manual: o.manual,
                started_at: o.started_at,
                timeout_at: o.timeout_at,
                traceparent: casework_telemetry::current_traceparent(),
            },
        );
        self.notify.notify_waiters();
    }

    /// Records a task seen in the log; returns true when it is new and
    /// needs resolving.
    pub fn seen(&self, token: TaskToken, entry: Entry) -> bool {
        let mut g = self.lock();
        if g.entries.contains_key(&token) {
            return false;
        }
        g.entries.insert(token, entry);
        true
    }

    /// Sets the kind of a task seen in the log.
    pub fn resolve(&self, token: &TaskToken, kind: String) {
        if let Some(e) = self.lock().entries.get_mut(token) {
            e.kind = Some(kind);
        }
        self.notify.notify_waiters();
    }

    /// The entry of `token`, if running.
    pub fn get(&self, token: &TaskToken) -> Option<Entry> {
        self.lock().entries.get(token).cloned()
    }

    /// Forgets a task (completed, failed, or found not running).
    pub fn remove(&self, token: &TaskToken) {
        let mut g = self.lock();
        g.entries.remove(token);
    }

    /// Running tasks of one of `kinds` (external) not leased at `now`,
    /// oldest first, at most `max`.
    pub fn available(
        &self,
        kinds: &[String],
        manual: bool,
        now: DateTime<Utc>,
        max: usize,
    ) -> Vec<(TaskToken, Entry)> {
        let g = self.lock();
        let mut out: Vec<(TaskToken, Entry)> = g
            .entries
            .iter()
            .filter(|(t, e)| {
                e.manual == manual
                    && e.timeout_at > now
                    && e.kind.as_ref().is_some_and(|k| kinds.contains(k))
                    && g.leases.get(t).is_none_or(|l| l.until() <= now)
            })
            .map(|(t, e)| (t.clone(), e.clone()))
            .collect();
        out.sort_by_key(|(_, e)| e.started_at);
        out.truncate(max);
        out
    }

    /// Leases `token` to `worker` until `until` unless another worker holds
    /// an unexpired lease; returns whether it did.
    pub fn try_lease(
        &self,
        token: &TaskToken,
        worker: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> bool {
        let mut g = self.lock();
        if let Some(l) = g.leases.get(token)
            && l.worker != worker
            && l.until() > now
        {
            return false;
        }
        g.leases.insert(
            token.clone(),
            Lease {
                worker: worker.to_owned(),
                until_ms: until.timestamp_millis(),
            },
        );
        true
    }

    /// Takes back a lease just given (the task turned out not to run).
    pub fn release(&self, token: &TaskToken) {
        self.lock().leases.remove(token);
    }

    /// The lease of `token`, if any.
    pub fn lease(&self, token: &TaskToken) -> Option<Lease> {
        self.lock().leases.get(token).cloned()
    }

    /// Writes the leases of `tokens` through to redb (one transaction).
    pub async fn persist(&self, tokens: Vec<TaskToken>) {
        let Some(db) = self.db.clone() else {
            return;
        };
        let rows: Vec<(String, Option<String>)> = {
            let g = self.lock();
            tokens
                .iter()
                .map(|t| {
                    (
                        t.encode(),
                        g.leases
                            .get(t)
                            .map(|l| serde_json::to_string(l).expect("lease json")),
                    )
                })
                .collect()
        };
        if rows.is_empty() {
            return;
        }
        casework_runtime::store::blocking(move || {
            let tx = db.begin_write().expect("redb write");
            {
                let mut t = tx.open_table(LEASES).expect("task_leases table");
                for (k, v) in &rows {
                    match v {
                        Some(v) => {
                            t.insert(k.as_str(), v.as_str()).expect("insert lease");
                        }
                        None => {
                            t.remove(k.as_str()).expect("remove lease");
                        }
                    }
                }
            }
            casework_runtime::store::commit(tx);
        })
        .await;
    }

    /// Drops leases that ended before `now` or whose task is gone, in
    /// memory and in redb.
    pub async fn prune(&self, now: DateTime<Utc>) {
        let gone: Vec<TaskToken> = {
            let mut g = self.lock();
            let Inner { entries, leases } = &mut *g;
            let gone: Vec<TaskToken> = leases
                .iter()
                .filter(|(t, l)| l.until() <= now || !entries.contains_key(t))
                .map(|(t, _)| t.clone())
                .collect();
            for t in &gone {
                leases.remove(t);
            }
            // Entries past their timeout are re-validated by the log when
            // the timeout is decided; drop them from the board meanwhile.
            entries.retain(|_, e| e.timeout_at > now - chrono::Duration::minutes(1));
            gone
        };
        self.persist(gone).await;
    }

    /// Number of running tasks on the board.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when no task is on the board.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
