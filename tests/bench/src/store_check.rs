//! `store-check`: what redb's integrity check on open (`store.check_on_open`,
//! on by default) costs at start, on a file the size of a large archive:
//! 1,000,000 rows of 400 bytes (scaled), keyed like the ledger's events.
//! One `store-check` line (open with the check) and one
//! `store-check-plain` line (the same file opened without it); `per_s` is
//! MiB checked per second. Run as root, it drops the page cache before
//! each open (a cold start, as after a reboot).

use std::time::Instant;

use casework_runtime::store::redb::{Database, TableDefinition};

use crate::report::{print, scaled};

const ROWS: TableDefinition<u64, &[u8]> = TableDefinition::new("rows");

/// Runs the scenario.
pub async fn store_check() {
    let dir = casework_testkit::TempDir::new().expect("temporary directory");
    let path = dir.path().join("archive.redb");
    let n = scaled(1_000_000) as u64;
    let row = vec![0x5au8; 400];
    {
        let db = Database::create(&path).expect("create");
        let mut i = 0;
        while i < n {
            let tx = db.begin_write().expect("write");
            {
                let mut t = tx.open_table(ROWS).expect("table");
                for k in i..(i + 10_000).min(n) {
                    t.insert(k, row.as_slice()).expect("insert");
                }
            }
            tx.commit().expect("commit");
            i += 10_000;
        }
    }
    let mib = std::fs::metadata(&path).expect("file").len() as f64 / (1024.0 * 1024.0);
    let units = mib.round().max(1.0) as usize;
    // Dropping the page cache (root only) measures a cold start, as after
    // a reboot; otherwise the file just written is read from memory.
    let cold = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    for (scenario, check) in [("store-check", true), ("store-check-plain", false)] {
        if cold {
            let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
        }
        let t = Instant::now();
        let db = {
            let mut b = Database::builder();
            b.set_check_integrity_on_open(check);
            b.create(&path).expect("open")
        };
        let took = t.elapsed();
        drop(db);
        print(
            scenario,
            1,
            vec![took],
            units,
            took,
            serde_json::json!({
                "rows": n,
                "row_bytes": row.len(),
                "file_mib": (mib * 10.0).round() / 10.0,
                "unit": "MiB",
                "check_integrity_on_open": check,
                "page_cache": if cold { "dropped" } else { "warm" },
            }),
        );
    }
}
