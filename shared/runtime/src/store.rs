//! redb helpers (CONVENTIONS.md §6–7): open a service's database under its
//! data directory, run blocking work off the async threads, and treat a
//! failed commit as fatal (exit and let the supervisor restart: the log is
//! the truth and the read model is rebuilt or caught up from it).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use redb;
use redb::Database;

/// Opens (or creates) `<dir>/<name>.redb`, creating `dir`.
pub fn open(dir: &Path, name: &str) -> anyhow::Result<Arc<Database>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
    let path = dir.join(format!("{name}.redb"));
    // redb panics on some damaged pages instead of returning an error:
    // either way the service refuses to start, saying which file and what
    // to do, rather than dying with a panic.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Database::create(&path)))
        .map_err(|p| {
            let why = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("a panic inside redb");
            anyhow::anyhow!(
                "cannot open {}: the file is damaged ({why}); move it aside and start again to rebuild it from the streams",
                path.display()
            )
        })?;
    let db = opened.map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    Ok(Arc::new(db))
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
