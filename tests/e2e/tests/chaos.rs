//! The seeded fault probe at the size CI runs (12 faults; the bench's
//! `chaos` runs 100): a service killed with SIGKILL or the broker killed or
//! stopped, one at a time under load, and afterwards every case closed,
//! every chain intact, no event id twice, one promise and one close per
//! case, the ledger equal to the stream. `CASEWORK_CHAOS_SEED` picks
//! another schedule (the report names the seed, so a failure reproduces).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_run_of_faults_loses_and_duplicates_nothing() {
    let seed = std::env::var("CASEWORK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let report = casework_e2e::chaos::run(12, seed).await;
    println!("{report}");
    assert!(report["cases"].as_u64().unwrap() > 0, "{report}");
    for counter in casework_e2e::chaos::VIOLATIONS {
        assert_eq!(report[counter], 0, "{counter}: {report}");
    }
}
