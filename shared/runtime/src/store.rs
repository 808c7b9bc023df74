//! redb helpers (CONVENTIONS.md §6–7): open a service's database under its
//! data directory, run blocking work off the async threads, and treat a
//! failed commit as fatal (exit and let the supervisor restart: the log is
//! the truth and the read model is rebuilt or caught up from it).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use redb;
use redb::Database;

/// Whether a damaged file may be replaced by an empty one the service
/// rebuilds from the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damaged {
    /// Refuse to start, naming the file and the fault (the ledger's
    /// archive is evidence: never silently replaced).
    Refuse,
    /// The file is a cache of the streams: with
    /// `store.rebuild_when_damaged`, move it aside and start empty.
    Rebuildable,
}

/// Opens (or creates) `<dir>/<name>.redb`, creating `dir`; with
/// `store.check_on_open`, verifies every page first. A damaged file is
/// refused with the file and the fault named, or — when it is
/// [`Damaged::Rebuildable`] and `store.rebuild_when_damaged` allows it —
/// moved aside (`<name>.redb.damaged-<time>`, kept for inspection) and
/// replaced by an empty one the service rebuilds from the streams.
pub fn open_checked(
    dir: &Path,
    name: &str,
    settings: &crate::options::StoreSettings,
    kind: Damaged,
) -> anyhow::Result<Arc<Database>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
    let path = dir.join(format!("{name}.redb"));
    let started = std::time::Instant::now();
    match open_file(&path, settings.check_on_open) {
        Ok(db) => {
            if settings.check_on_open {
                let took = started.elapsed();
                metrics::histogram!("casework_store_check_seconds", "file" => name.to_owned())
                    .record(took.as_secs_f64());
                tracing::info!(file = %path.display(), ?took, "store checked");
            }
            Ok(Arc::new(db))
        }
        Err(fault) if kind == Damaged::Rebuildable && settings.rebuild_when_damaged => {
            let aside = dir.join(format!(
                "{name}.redb.damaged-{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
            ));
            std::fs::rename(&path, &aside).map_err(|e| {
                anyhow::anyhow!(
                    "{} is damaged ({fault}) and cannot be moved aside to {}: {e}",
                    path.display(),
                    aside.display()
                )
            })?;
            metrics::counter!("casework_store_rebuilt_total", "file" => name.to_owned())
                .increment(1);
            tracing::error!(
                file = %path.display(),
                moved_to = %aside.display(),
                fault,
                "the store is damaged; it was moved aside and is rebuilt from the streams (store.rebuild_when_damaged)"
            );
            Ok(Arc::new(open_file(&path, false).map_err(|e| {
                anyhow::anyhow!("cannot create {} anew: {e}", path.display())
            })?))
        }
        Err(fault) => Err(anyhow::Error::new(crate::BadConfiguration(format!(
            "cannot open {}: the file is damaged ({fault}); {}",
            path.display(),
            match kind {
                Damaged::Rebuildable =>
                    "move it aside (or set store.rebuild_when_damaged = true) and start again to rebuild it from the streams",
                Damaged::Refuse =>
                    "it is evidence and is never replaced silently: keep it for inspection, restore it from a backup, or move it aside to rebuild the archive from the streams and verify the rebuilt archive against the stream",
            }
        )))),
    }
}

/// Opens `path`, checking every page when `check`; a fault as text. redb
/// panics on some damaged pages instead of returning an error: that is a
/// fault too, never a crash.
fn open_file(path: &Path, check: bool) -> Result<Database, String> {
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut b = Database::builder();
        b.set_check_integrity_on_open(check);
        b.create(path)
    }))
    .map_err(|p| crate::panic_message(p.as_ref()).to_owned())?;
    opened.map_err(|e| e.to_string())
}

/// Opens (or creates) `<dir>/<name>.redb` with the default store settings
/// (checked, never replaced): for tests and tools.
pub fn open(dir: &Path, name: &str) -> anyhow::Result<Arc<Database>> {
    open_checked(dir, name, &Default::default(), Damaged::Refuse)
}

/// Runs `f` on the blocking pool.
pub async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking redb task panicked")
}

/// Commits `tx`; a failed commit is fatal.
pub fn commit(tx: redb::WriteTransaction) {
    if let Err(e) = tx.commit() {
        tracing::error!(error = %e, "redb commit failed; exiting so the supervisor restarts us");
        std::process::exit(70);
    }
}

/// How long a [`Rebuildable`] store's commits may stay in memory only.
pub const REBUILDABLE_SYNC: Duration = Duration::from_secs(1);

/// The commit policy of a store rebuilt from the log: a read model whose
/// tail checkpoint is written in the same transaction as what it applied.
/// Its commits are made durable (fsync) at most once per
/// [`REBUILDABLE_SYNC`]; the ones in between are committed without
/// (`redb::Durability::None`), visible to readers at once. A crash
/// loses at most that last second of commits, data and checkpoint
/// together, and the tail applies those events again on restart — so it
/// costs a replay, never a wrong or missing row, and the fsync leaves the
/// path of every event. Never for state the log cannot give back (task
/// leases, parked-case records).
#[derive(Debug, Default)]
pub struct Rebuildable {
    last_durable: Mutex<Option<Instant>>,
}

impl Rebuildable {
    /// Commits `tx`, durably if the last durable commit is older than
    /// [`REBUILDABLE_SYNC`]; a failed commit is fatal (see [`commit`]).
    pub fn commit(&self, mut tx: redb::WriteTransaction) {
        let now = Instant::now();
        let mut last = self.last_durable.lock().expect("durable commit time");
        let durable = last.is_none_or(|t| now.duration_since(t) >= REBUILDABLE_SYNC)
            || tx.set_durability(redb::Durability::None).is_err();
        commit(tx);
        if durable {
            *last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    fn put(db: &Database, commits: &Rebuildable, k: u64) {
        let tx = db.begin_write().unwrap();
        tx.open_table(T).unwrap().insert(k, k).unwrap();
        commits.commit(tx);
    }

    fn keys(db: &Database) -> Vec<u64> {
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(T).unwrap();
        redb::ReadableTable::iter(&t)
            .unwrap()
            .map(|r| r.unwrap().0.value())
            .collect()
    }

    #[test]
    fn lazy_commits_are_visible_at_once_and_the_durable_ones_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rm.redb");
        let commits = Rebuildable::default();
        {
            let db = Database::create(&path).unwrap();
            put(&db, &commits, 1); // the first commit is durable
            put(&db, &commits, 2); // within the second: in memory only
            assert_eq!(keys(&db), vec![1, 2], "visible to readers at once");
            // Dropped without a durable commit after 2, like a crash.
        }
        let db = Database::create(&path).unwrap();
        let after = keys(&db);
        assert!(
            after.starts_with(&[1]),
            "the durable commit survives: {after:?}"
        );
    }
}
