//! The `service` section of fulfilment's options (`CASEWORK_SERVICE__*`).

use serde::{Deserialize, Deserializer, Serialize};

/// Fulfilment's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// When set, every simulated step takes this many milliseconds instead
    /// of the catalogue's `latency_ms` (demos, benchmarks, fault tests).
    /// Unset: the catalogue's latency.
    #[serde(
        deserialize_with = "optional_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub simulate_latency_override_ms: Option<u64>,
    /// How long a polled task stays leased to its worker before it is
    /// offered again, in seconds; heartbeats extend it. Never past the
    /// attempt's timeout.
    pub lease_seconds: u64,
    /// Cases reconciled at once (per loop: changes and timers).
    pub concurrency: usize,
    /// Longest long-poll a worker may ask for, in seconds.
    pub max_poll_wait_seconds: u64,
    /// Most tasks one poll returns.
    pub max_tasks_per_poll: u32,
    /// Most cases whose folded state and head this replica holds in memory
    /// (least recently used dropped first). A held case is decided without
    /// reading its log again; a case that is not held is read whole once
    /// when it next wakes. Size it to the cases in flight at once (a case
    /// is a few kilobytes); a smaller cache costs reads, never correctness.
    pub cache_cases: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            simulate_latency_override_ms: None,
            lease_seconds: 30,
            concurrency: 64,
            max_poll_wait_seconds: 60,
            max_tasks_per_poll: 100,
            cache_cases: 10_000,
        }
    }
}

/// Accepts a whole number or a string holding one (environment variables
/// arrive as strings when the default is unset).
fn optional_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Number(n)) => Ok(Some(n)),
        Some(Raw::Text(s)) if s.trim().is_empty() => Ok(None),
        Some(Raw::Text(s)) => s.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not a whole number of milliseconds (e.g. 500)"
            ))
        }),
    }
}

impl casework_runtime::Validate for Settings {
    fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.lease_seconds == 0 {
            p.push("lease_seconds: must be at least 1 (e.g. 30)".to_owned());
        }
        if self.concurrency == 0 || self.concurrency > 10_000 {
            p.push(format!(
                "concurrency: {} must be between 1 and 10000 (e.g. 64)",
                self.concurrency
            ));
        }
        if self.max_poll_wait_seconds == 0 || self.max_poll_wait_seconds > 600 {
            p.push(format!(
                "max_poll_wait_seconds: {} must be between 1 and 600",
                self.max_poll_wait_seconds
            ));
        }
        if self.max_tasks_per_poll == 0 || self.max_tasks_per_poll > 1000 {
            p.push(format!(
                "max_tasks_per_poll: {} must be between 1 and 1000",
                self.max_tasks_per_poll
            ));
        }
        if self.cache_cases == 0 || self.cache_cases > 10_000_000 {
            p.push(format!(
                "cache_cases: {} must be between 1 and 10000000 (e.g. 10000)",
                self.cache_cases
            ));
        }
        if self
            .simulate_latency_override_ms
            .is_some_and(|ms| ms > 3_600_000)
        {
            p.push("simulate_latency_override_ms: at most 3600000 (one hour)".to_owned());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use casework_runtime::options::load;

    use crate::default_options;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_environment() {
        let o = load(default_options(), None, &BTreeMap::new()).unwrap();
        assert_eq!(o.grpc_listen.port(), 50052);
        assert_eq!(o.http_listen.port(), 8082);
        assert_eq!(o.service.simulate_latency_override_ms, None);
        assert_eq!(o.service.cache_cases, 10_000);
        let o = load(
            default_options(),
            None,
            &env(&[
                ("CASEWORK_SERVICE__SIMULATE_LATENCY_OVERRIDE_MS", "250"),
                ("CASEWORK_SERVICE__LEASE_SECONDS", "5"),
                ("CASEWORK_SERVICE__CACHE_CASES", "500"),
            ]),
        )
        .unwrap();
        assert_eq!(o.service.simulate_latency_override_ms, Some(250));
        assert_eq!(o.service.lease_seconds, 5);
        assert_eq!(o.service.cache_cases, 500);
    }

    #[test]
    fn bad_values_are_named() {
        for (vars, needle) in [
            (
                &[("CASEWORK_SERVICE__SIMULATE_LATENCY_OVERRIDE_MS", "soon")][..],
                "whole number",
            ),
            (
                &[("CASEWORK_SERVICE__LEASE_SECONDS", "0")][..],
                "service.lease_seconds",
            ),
            (
                &[("CASEWORK_SERVICE__CONCURRENCY", "0")][..],
                "service.concurrency",
            ),
            (
                &[("CASEWORK_SERVICE__MAX_TASKS_PER_POLL", "5000")][..],
                "service.max_tasks_per_poll",
            ),
            (
                &[("CASEWORK_SERVICE__CACHE_CASES", "0")][..],
                "service.cache_cases",
            ),
        ] {
            let e = load(default_options(), None, &env(vars))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{vars:?}: {e}");
        }
    }
}
