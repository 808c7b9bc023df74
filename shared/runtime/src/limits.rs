//! Limits that protect every tenant from one: a per-tenant rate of write
//! calls (a token bucket per tenant, `governor`'s GCRA) and a cap on how
//! many events callers may add to one case, with warnings before it (a
//! case is a customer's request, not a log to append to forever: Temporal
//! warns at 10,240 events and stops a workflow at 51,200).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};

/// The limits' settings (part of a service's `[service]` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Write calls a tenant may make per minute, sustained (0: no limit).
    pub tenant_writes_per_minute: u32,
    /// Write calls a tenant may make at once above that rate.
    pub tenant_write_burst: u32,
    /// A case that reaches this many events is logged and counted as
    /// nearing its cap (again at every further multiple).
    pub warn_events_per_case: u64,
    /// Callers may not add events to a case that holds this many:
    /// FAILED_PRECONDITION, open a new case. The services' own events
    /// (closing, recovery) are still written.
    pub max_events_per_case: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            tenant_writes_per_minute: 30_000,
            tenant_write_burst: 1_000,
            warn_events_per_case: 10_000,
            max_events_per_case: 50_000,
        }
    }
}

impl LimitSettings {
    /// Every problem, naming the setting.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.tenant_writes_per_minute > 0 && self.tenant_write_burst == 0 {
            p.push(
                "tenant_write_burst is 0: give at least 1 (the calls a tenant may make at once)"
                    .to_owned(),
            );
        }
        if self.max_events_per_case < 10 {
            p.push(format!(
                "max_events_per_case = {} leaves no room for a case's own lifecycle; give at least 10",
                self.max_events_per_case
            ));
        }
        if self.warn_events_per_case == 0 || self.warn_events_per_case > self.max_events_per_case {
            p.push(format!(
                "warn_events_per_case = {} must be between 1 and max_events_per_case ({})",
                self.warn_events_per_case, self.max_events_per_case
            ));
        }
        p
    }
}

/// Tenants tracked before idle ones are forgotten.
const FORGET_ABOVE: usize = 10_000;

/// The per-tenant rate of write calls.
#[derive(Debug)]
pub struct TenantRate {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    settings: LimitSettings,
}

impl TenantRate {
    /// The limiter `settings` describe.
    pub fn new(settings: &LimitSettings) -> Self {
        let limiter = NonZeroU32::new(settings.tenant_writes_per_minute).map(|per_minute| {
            let burst = NonZeroU32::new(settings.tenant_write_burst).unwrap_or(NonZeroU32::MIN);
            DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
        });
        Self {
            limiter,
            settings: settings.clone(),
        }
    }

    /// Admits one write call of `tenant`, or says when to try again
    /// (RESOURCE_EXHAUSTED with the wait in the message and in the
    /// `retry-after-ms` metadata).
    pub fn admit(&self, service: &'static str, tenant: &str) -> Result<(), tonic::Status> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        // Tenants whose buckets are full again are forgotten, so the table
        // stays the size of the tenants recently busy.
        if limiter.len() > FORGET_ABOVE {
            limiter.retain_recent();
        }
        match limiter.check_key(&tenant.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until
                    .wait_time_from(DefaultClock::default().now())
                    .max(Duration::from_millis(1));
                metrics::counter!("casework_rate_limited_total", "service" => service, "tenant" => tenant.to_owned())
                    .increment(1);
                let mut status = tonic::Status::resource_exhausted(format!(
                    "tenant {tenant} is over its write rate ({} calls a minute, bursts of {}; service.tenant_writes_per_minute and service.tenant_write_burst): retry after {} ms with the same idempotency key or request id",
                    self.settings.tenant_writes_per_minute,
                    self.settings.tenant_write_burst,
                    wait.as_millis()
                ));
                if let Ok(v) = wait.as_millis().to_string().parse() {
                    status.metadata_mut().insert("retry-after-ms", v);
                }
                Err(status)
            }
        }
    }
}

/// Whether a caller may add an event to a case that holds `events`
/// events: the refusal names the case and what to do. Logs and counts a
/// case reaching the warning size.
pub fn case_length(
    service: &'static str,
    case: &str,
    events: u64,
    settings: &LimitSettings,
) -> Result<(), String> {
    if events >= settings.max_events_per_case {
        metrics::counter!("casework_case_length_refused_total", "service" => service).increment(1);
        return Err(format!(
            "case {case} holds {events} events, the most callers may add to one case (service.max_events_per_case); open a new case for this customer's further contact"
        ));
    }
    let next = events + 1;
    if next >= settings.warn_events_per_case && next.is_multiple_of(settings.warn_events_per_case) {
        metrics::counter!("casework_case_length_warnings_total", "service" => service).increment(1);
        tracing::warn!(
            service,
            case,
            events = next,
            max = settings.max_events_per_case,
            "a case is growing long; callers cannot add events beyond service.max_events_per_case"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_over_its_burst_waits_and_others_do_not() {
        let settings = LimitSettings {
            tenant_writes_per_minute: 1,
            tenant_write_burst: 3,
            ..Default::default()
        };
        let rate = TenantRate::new(&settings);
        for _ in 0..3 {
            rate.admit("intake", "acme").unwrap();
        }
        let refused = rate.admit("intake", "acme").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("retry after"), "{refused:?}");
        let wait: u64 = refused
            .metadata()
            .get("retry-after-ms")
            .expect("a retry hint")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(wait > 1_000 && wait <= 60_000, "{wait}");
        rate.admit("intake", "globex")
            .expect("another tenant is not held back");
        let unlimited = TenantRate::new(&LimitSettings {
            tenant_writes_per_minute: 0,
            ..settings
        });
        for _ in 0..10_000 {
            unlimited.admit("intake", "acme").unwrap();
        }
    }

    #[test]
    fn callers_may_not_grow_a_case_past_its_cap() {
        let s = LimitSettings {
            warn_events_per_case: 8,
            max_events_per_case: 10,
            ..Default::default()
        };
        for events in 0..10 {
            assert!(
                case_length("intake", "acme/x", events, &s).is_ok(),
                "{events}"
            );
        }
        let e = case_length("intake", "acme/x", 10, &s).unwrap_err();
        assert!(
            e.contains("max_events_per_case") && e.contains("new case"),
            "{e}"
        );
        assert!(s.validate().is_empty());
        let bad = LimitSettings {
            warn_events_per_case: 11,
            ..s
        };
        assert!(bad.validate()[0].contains("warn_events_per_case"));
    }
}
