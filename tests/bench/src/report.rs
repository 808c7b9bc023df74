//! Measuring and printing results.

use std::time::Duration;

/// Scales an operation count by `CASEWORK_BENCH_SCALE`.
pub fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("CASEWORK_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale).round() as usize).max(1)
}

/// Peak resident memory of this process in MiB (VmHWM).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The `p` percentile of `sorted` latencies, in milliseconds.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Prints one result line. `ops` is the number of operations timed in
/// `latencies` (one latency each); `units` is how many units of `per_s`
/// they represent (e.g. events).
pub fn print(
    scenario: &str,
    concurrency: usize,
    mut latencies: Vec<Duration>,
    units: usize,
    elapsed: Duration,
    extra: serde_json::Value,
) {
    latencies.sort();
    let mut line = serde_json::json!({
        "scenario": scenario,
        "n": units,
        "concurrency": concurrency,
        "per_s": (units as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "p50_ms": (percentile(&latencies, 0.50) * 1000.0).round() / 1000.0,
        "p99_ms": (percentile(&latencies, 0.99) * 1000.0).round() / 1000.0,
        "ops": latencies.len(),
        "elapsed_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "rss_mib": (peak_rss_mib() * 10.0).round() / 10.0,
    });
    if let (Some(obj), serde_json::Value::Object(more)) = (line.as_object_mut(), extra) {
        obj.extend(more);
    }
    println!("{line}");
}
