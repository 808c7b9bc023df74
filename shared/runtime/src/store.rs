//! redb helpers (CONVENTIONS.md §6–7): open a service's database under its
//! data directory, run blocking work off the async threads, and treat a
//! failed commit as fatal (exit and let the supervisor restart: the log is
//! the truth and the read model is rebuilt or caught up from it).

use std::path::Path;
use std::sync::Arc;

pub use redb;
use redb::Database;

/// Opens (or creates) `<dir>/<name>.redb`, creating `dir`.
pub fn open(dir: &Path, name: &str) -> anyhow::Result<Arc<Database>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
    let path = dir.join(format!("{name}.redb"));
    let db = Database::create(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
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
