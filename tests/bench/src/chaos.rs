//! `chaos`: the seeded fault probe (`casework_e2e::chaos`) at full size.
//! `CASEWORK_CHAOS_KILLS` (default 100) and `CASEWORK_CHAOS_SEED` (default
//! 1) choose the run; the same seed gives the same schedule of faults.

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the probe and prints its line.
pub async fn chaos() {
    let report = casework_e2e::chaos::run(
        env_u64("CASEWORK_CHAOS_KILLS", 100),
        env_u64("CASEWORK_CHAOS_SEED", 1),
    )
    .await;
    println!("{report}");
}
