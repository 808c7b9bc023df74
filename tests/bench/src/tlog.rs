//! `tlog`: what the transparency log costs (no broker: the ledger's
//! archive on a real redb file, in-process).
//!
//! - `tlog-ingest`: 20,000 chained events of 500 cases archived in
//!   batches of 1,024 — events, indexes, chain check, tree leaves and the
//!   case-head map in each write transaction (events/s).
//! - `tlog-tree-only`: the same events' tree leaves and map updates alone,
//!   on their own redb file, batch by batch: the part of ingest the
//!   transparency log adds.
//! - `tlog-sign`: signed checkpoints (tree head from a snapshot, Ed25519,
//!   stored) of a growing log; `tlog-open`: opening a signed note.
//! - `tlog-inclusion` / `tlog-consistency` / `tlog-case-evidence`: proofs
//!   from the archive of 20,000 leaves (every event of one case with its
//!   map proof, for the last).

use std::sync::Arc;
use std::time::Instant;

use casework_caselog::conformance::{interaction, new_case};
use casework_domain::RawEvent;
use casework_domain::chain::{self, ChainTip};
use casework_ledger::archive::Archive;
use casework_tlog::{leaf, map, merkle, note};

use crate::report::{print, scaled};

fn events(cases: usize, per_case: usize) -> Vec<RawEvent> {
    let mut by_case = Vec::new();
    for _ in 0..cases {
        let case = new_case("bench");
        let mut tip = ChainTip::EMPTY;
        let mut sealed = Vec::new();
        for i in 0..per_case {
            let s = chain::seal(
                &case.tenant,
                &case.case_id,
                "bench-0",
                tip,
                vec![interaction(&case, &i.to_string())],
            )
            .expect("seal")
            .remove(0);
            tip = ChainTip {
                case_seq: s.case_seq,
                hash: s.hash,
            };
            sealed.push(s);
        }
        by_case.push(sealed);
    }
    // Stream order: the cases interleaved.
    let mut out = Vec::new();
    for i in 0..per_case {
        for c in &by_case {
            let s = &c[i];
            out.push(RawEvent {
                stream_seq: out.len() as u64 + 1,
                subject: s.subject.clone(),
                bytes: s.bytes.clone(),
            });
        }
    }
    out
}

fn archive(dir: &std::path::Path) -> Archive {
    let db = casework_runtime::store::open(dir, "bench-ledger").expect("redb");
    Archive::open(db).expect("archive")
}

/// Runs every `tlog` figure.
pub async fn tlog() {
    let cases = 500;
    let per_case = scaled(40);
    let all = events(cases, per_case);
    let n = all.len();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = archive(dir.path());

    let mut latencies = Vec::new();
    let start = Instant::now();
    for batch in all.chunks(1024) {
        let t = Instant::now();
        a.ingest(batch).expect("ingest");
        latencies.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    print(
        "tlog-ingest",
        1,
        latencies,
        n,
        elapsed,
        serde_json::json!({"batch": 1024, "cases": cases}),
    );

    // The tree and map alone, on their own file, batch by batch.
    let tree_dir = tempfile::tempdir().expect("tempdir");
    let db = casework_runtime::store::open(tree_dir.path(), "bench-tree").expect("redb");
    tree_only(&db, &all);

    // Signing: a checkpoint per grown size.
    let key = note::NoteSigner::new("bench.local/ledger", [9; 32]).expect("key");
    let signer = casework_ledger::signer::CheckpointSigner::new(
        note::NoteSigner::from_skey(&key.skey()).expect("key"),
        a.clone(),
    );
    let signs = scaled(2_000);
    let mut more = events(1, signs);
    for (i, e) in more.iter_mut().enumerate() {
        e.stream_seq = n as u64 + 1 + i as u64;
    }
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(signs);
    let mut last_note = String::new();
    for raw in more {
        a.ingest(std::slice::from_ref(&raw)).expect("ingest");
        let t = Instant::now();
        last_note = signer
            .sign_if_grown()
            .await
            .expect("sign")
            .expect("grown")
            .1;
        latencies.push(t.elapsed());
    }
    let sign_elapsed = start.elapsed();
    print(
        "tlog-sign",
        1,
        latencies,
        signs,
        sign_elapsed,
        serde_json::json!({"includes": "one 1-event ingest per checkpoint (not timed per op)"}),
    );
    let verifier = key.verifier();
    let opens = scaled(20_000);
    let start = Instant::now();
    for _ in 0..opens {
        note::open_checkpoint(&verifier, &last_note).expect("opens");
    }
    print(
        "tlog-open",
        1,
        Vec::new(),
        opens,
        start.elapsed(),
        serde_json::json!({}),
    );

    // Proofs from the archive.
    let size = a.tree_size().expect("size");
    let proofs = scaled(20_000);
    timed(
        "tlog-inclusion",
        proofs,
        serde_json::json!({"tree_size": size}),
        |i| {
            a.inclusion_proof((i as u64 * 7919) % size, size)
                .expect("proof")
        },
    );
    timed(
        "tlog-consistency",
        proofs,
        serde_json::json!({"tree_size": size}),
        |i| {
            a.consistency_proof(1 + (i as u64 * 7919) % (size - 1), size)
                .expect("proof")
        },
    );
    let tenant_case = {
        let s = &all[0].subject;
        let t: Vec<&str> = s.split('.').collect();
        (t[1].to_owned(), t[2].to_owned())
    };
    timed(
        "tlog-case-evidence",
        scaled(500),
        serde_json::json!({"events_per_case": per_case, "tree_size": size}),
        |_| {
            a.case_evidence(&tenant_case.0, &tenant_case.1)
                .expect("evidence")
        },
    );
}

/// Runs `op` `n` times, timing each, and prints the line of `scenario`.
fn timed<T>(scenario: &str, n: usize, extra: serde_json::Value, mut op: impl FnMut(usize) -> T) {
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let out = op(i);
        latencies.push(t.elapsed());
        std::hint::black_box(out);
    }
    print(scenario, 1, latencies, n, start.elapsed(), extra);
}

/// The tree leaves and map updates of `all`, batch by batch, each batch in
/// one write transaction of their own tables.
fn tree_only(db: &Arc<redb::Database>, all: &[RawEvent]) {
    use redb::TableDefinition;
    const NODES: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("nodes");
    const MAP: TableDefinition<(u16, &[u8]), &[u8]> = TableDefinition::new("map");
    struct Nodes<'a>(&'a redb::Table<'a, (u8, u64), &'static [u8]>);
    impl merkle::Nodes for Nodes<'_> {
        fn node(&self, level: u8, index: u64) -> Result<merkle::Hash, merkle::Error> {
            use redb::ReadableTable;
            let v = self
                .0
                .get((level, index))
                .ok()
                .flatten()
                .ok_or(merkle::Error::MissingNode { level, index })?;
            Ok(v.value().try_into().expect("32 bytes"))
        }
    }
    struct Map<'a>(&'a redb::Table<'a, (u16, &'static [u8]), &'static [u8]>);
    impl map::MapNodes for Map<'_> {
        fn get(
            &self,
            depth: u16,
            prefix: &map::Hash,
        ) -> Result<Option<map::MapNode>, map::MapError> {
            use redb::ReadableTable;
            self.0
                .get((depth, prefix.as_slice()))
                .ok()
                .flatten()
                .map(|v| map::MapNode::decode(v.value()))
                .transpose()
        }
    }
    let mut size = 0u64;
    let mut positions: std::collections::HashMap<String, u64> = Default::default();
    let mut latencies = Vec::new();
    let start = Instant::now();
    for batch in all.chunks(1024) {
        let t = Instant::now();
        let tx = db.begin_write().expect("tx");
        {
            let mut nodes = tx.open_table(NODES).expect("table");
            let mut m = tx.open_table(MAP).expect("table");
            let mut heads: std::collections::HashMap<(String, String), (u64, merkle::Hash)> =
                Default::default();
            for raw in batch {
                let t: Vec<&str> = raw.subject.split('.').collect();
                let pos = positions.entry(format!("{}.{}", t[1], t[2])).or_insert(0);
                *pos += 1;
                let h = chain::hash(&raw.bytes);
                let l = leaf::event_leaf_hash(t[1], t[2], *pos, &h);
                let new = merkle::appended(size, l, &Nodes(&nodes)).expect("append");
                for (level, index, hash) in new {
                    nodes
                        .insert((level, index), hash.as_slice())
                        .expect("insert");
                }
                size += 1;
                heads.insert((t[1].to_owned(), t[2].to_owned()), (*pos, h));
            }
            let pending = {
                let base = Map(&m);
                let mut batch = map::Overlay::new(&base);
                for ((tenant, case), (pos, h)) in heads {
                    let key = map::case_key(&tenant, &case);
                    batch.set(&key, map::head_leaf(&key, pos, &h)).expect("set");
                }
                batch.pending
            };
            for ((d, p), node) in pending.0 {
                m.insert((d, p.as_slice()), node.encode().as_slice())
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
        latencies.push(t.elapsed());
    }
    print(
        "tlog-tree-only",
        1,
        latencies,
        all.len(),
        start.elapsed(),
        serde_json::json!({"batch": 1024}),
    );
}
