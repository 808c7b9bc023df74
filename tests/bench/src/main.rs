//! `casework-bench`: the benchmark harness. Each scenario starts its own
//! nats-server (the pinned version, through casework-testkit) and prints one
//! JSON line per result with at least `scenario`, `n`, `concurrency`,
//! `per_s`, `p50_ms`, `p99_ms`. Scenarios ending in `-raw` do the same work
//! on the bare broker in the same run, so Casework's overhead is a ratio.
//! It never fails on a timing: it measures and prints.
//!
//! Usage: `cargo run --release -p casework-bench -- <scenario>...` where a
//! scenario is one of those listed by `--help` (e.g. `append`, `lifecycle`,
//! `long-case`) or `all`. `CASEWORK_BENCH_SCALE` (default
//! 1.0) scales the operation counts.

mod append;
mod auth;
mod chaos;
mod deadlines;
mod fulfil;
mod hot_case;
mod ledger;
mod lifecycle;
mod lifecycle_raw;
mod long_case;
mod open_case;
mod power_loss;
mod privacy;
mod report;
mod store_check;
mod tlog;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!(
            "usage: casework-bench <scenario>...\n\
             scenarios:\n  \
               append   appends/s and latency through casework-caselog at 1 and 64 cases in flight,\n           \
                        single events and 3-event batches, plus the same as raw JetStream (-raw)\n  \
               replay   reading one case of 10,000 events (and -raw: an ordered consumer)\n  \
               open-case  OpenCase/s and latency over gRPC, 64 clients, intake in-process\n  \
               open-case-plaintext  the same with personal data unencrypted\n  \
               open-case-new-customers  every case a new customer (a data key made per call)\n  \
               privacy    encrypting and decrypting one event's personal fields, per second\n  \
               fulfil   cases/s from promise_made to promise_kept, 3 simulated steps (and -external: 3 steps by a gRPC worker)\n  \
               deadlines  100,000 pending promise deadlines in recovery: promise_broken lateness p50/p99, memory\n  \
               replay-ledger  one 10,000-event case: archive rebuild from the stream, ReplayCase and GetHistory events/s\n  \
               lifecycle  whole cases/s and open-to-closed latency, the four services as release processes, 1 and 64 in flight, sync default/always, peak memory;\n           \
                        each result preceded by its lifecycle-raw twin\n  \
               lifecycle-cluster  lifecycle on a 3-node JetStream cluster on loopback (R3 streams, always), each point after its raw twin\n  \
               lifecycle-raw  the same 12 appends per case on bare JetStream, each after the first two made by a consumer that saw the previous one\n  \
               long-case  RecordInteraction latency on a fresh case and on one of 1,000 and 10,000 events (and -raw: direct get + one OCC publish)\n  \
               hot-case  3,000 RecordInteraction calls on one case at 16 in flight, and what they do to another tenant's OpenCase (and -raw: 16 OCC appenders on one case)\n  \
               store-check  opening a 400 MB redb file with its integrity check, and without (-plain)\n  \
               subscribe  events/s through the ledger's gRPC Subscribe from the beginning of 50,000 events (and -raw)\n  \
               auth     the gRPC edge admitting one call with an EdDSA bearer token, and with authentication off (auth-off)\n  \
               chaos    the seeded fault probe: CASEWORK_CHAOS_KILLS (100) faults of a service or the broker under load, then every case closed and the auditor's invariants\n  \
               power-loss  the store on a disk that drops unsynced writes at a power cut: acked and lost messages per round,\n           \
                        sync always and default (3 rounds each, then one default round on a stream 150 s old, past the 2-minute flush, and one\n           \
                        whose first half the server flushed before the load: ~5 min)\n  \
               tlog     the transparency log: archive ingest with the tree and case map, the tree and map alone, checkpoint signing and opening, inclusion/consistency/case proofs\n  \
               all      every scenario\n\
             env: CASEWORK_BENCH_SCALE=0.1 runs a tenth of the operations"
        );
        return if args.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    for a in &args {
        match a.as_str() {
            "append" => append::append().await,
            "replay" => append::replay().await,
            "open-case" => open_case::open_case().await,
            "open-case-plaintext" => open_case::open_case_plaintext().await,
            "open-case-new-customers" => open_case::open_case_new_customers().await,
            "fulfil" => fulfil::fulfil().await,
            "deadlines" => deadlines::deadlines().await,
            "lifecycle" => lifecycle::lifecycle().await,
            "lifecycle-raw" => lifecycle_raw::lifecycle_raw().await,
            "lifecycle-cluster" => lifecycle::lifecycle_cluster().await,
            "long-case" => long_case::long_case().await,
            "hot-case" => hot_case::hot_case().await,
            "store-check" => store_check::store_check().await,
            "replay-ledger" | "subscribe" => ledger::run(a).await,
            "auth" => auth::auth().await,
            "tlog" => tlog::tlog().await,
            "privacy" => privacy::privacy().await,
            "chaos" => chaos::chaos().await,
            "power-loss" => power_loss::power_loss().await,
            "all" => {
                append::append().await;
                append::replay().await;
            }
            other => {
                eprintln!("unknown scenario {other:?}; run with --help for the list");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}
