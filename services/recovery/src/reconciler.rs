//! The thin shell around [`crate::decide`], on the runtime's one
//! decide-and-append loop ([`decide_and_append`]): bring the case's held
//! [`Projection`] up to date, decide, append the events one by one with
//! optimistic concurrency, then perform the effects (the deadline timer,
//! metrics). Repeats until a decision appends nothing, because one wake-up
//! may take several decisions (`promise_broken` first, then the recovery it
//! triggers, then a queued trigger's recovery). The projection is held
//! between wake-ups in a [`CaseCache`] shared with the API: a wake-up whose
//! delivered event continues the held head costs no read, a timer fire
//! reads only what follows the head (nothing at all on a final case), and
//! each append of ours folds its stored copy.
//!
//! Effects are performed per decision: the deadline timer once per wake-up,
//! the metrics of a decision only when its events were stored now (not by
//! an earlier attempt) and are byte for byte ours (a racing replica that
//! decided the same counts its own).
//!
//! Timers don't outlive their case: the `case_closed` delivery removes the
//! case's deadline timer. A fire that raced that removal is cheap — the
//! projection is final ([`casework_runtime::held::Fold::is_final`]), so the
//! fire decides on the held state without reading the log.

use std::sync::Arc;

use async_trait::async_trait;
use casework_caselog::{CaseKey, CaseLog, StoredEvent};
use casework_catalog::{Catalog, Catalogs, ServiceDef};
use casework_runtime::held::CaseCache;
use casework_runtime::reconcile::{
    Decision, Failure, MAX_ROUNDS, Reconciler, Rounds, decide_and_append,
};
use casework_runtime::timers::Timers;
use chrono::{DateTime, SubsecRound, Utc};

use crate::decide::{Budget, Effect, decide};
use crate::projection::Projection;
use crate::views::Views;

/// The timer kind of a promise's deadline.
pub const DEADLINE_TIMER: &str = "deadline";

/// The catalogue service a case is pinned to: the version its promise
/// names, and (when the promise recorded one) the very file, by digest, as
/// fulfilment checks it. Anything else is a reason to park the case.
pub fn service_of<'a>(catalogs: &'a Catalogs, p: &Projection) -> Result<&'a ServiceDef, String> {
    pinned_service(catalogs, p).map(|(_, s)| s)
}

/// The catalogue version the case is pinned to, and its service (see
/// [`service_of`]).
pub fn pinned_service<'a>(
    catalogs: &'a Catalogs,
    p: &Projection,
) -> Result<(&'a Catalog, &'a ServiceDef), String> {
    let Some(promise) = &p.promise else {
        return Err("the case has no promise".to_owned());
    };
    let catalog = catalogs.get(&promise.catalog_version).ok_or_else(|| {
        format!(
            "the case is pinned to catalogue version {:?}, which this replica does not have; deploy that catalogue file",
            promise.catalog_version
        )
    })?;
    if !promise.catalog_digest.is_empty() && catalog.digest() != promise.catalog_digest {
        return Err(format!(
            "the case is pinned to catalogue {} with digest {}, but the loaded file {} has digest {}; deploy the exact file the promise was made with",
            promise.catalog_version,
            promise.catalog_digest,
            catalog.origin(),
            catalog.digest()
        ));
    }
    let service = catalog.service(&promise.service_code).ok_or_else(|| {
        format!(
            "catalogue version {} has no service {:?}",
            promise.catalog_version, promise.service_code
        )
    })?;
    Ok((catalog, service))
}

/// Recovery's reconciler.
#[derive(Debug, Clone)]
pub struct RecoveryReconciler {
    log: Arc<dyn CaseLog>,
    catalogs: Arc<Catalogs>,
    timers: Timers,
    views: Views,
    cache: Arc<CaseCache<Projection>>,
}

impl RecoveryReconciler {
    /// A reconciler appending to `log`, holding case state in `cache`
    /// (shared with the API, so both decide on the same held state).
    pub fn new(
        log: Arc<dyn CaseLog>,
        catalogs: Arc<Catalogs>,
        timers: Timers,
        views: Views,
        cache: Arc<CaseCache<Projection>>,
    ) -> Self {
        Self {
            log,
            catalogs,
            timers,
            views,
            cache,
        }
    }

    /// The held case state.
    pub fn cache(&self) -> &Arc<CaseCache<Projection>> {
        &self.cache
    }

    fn decide_on(&self, p: &Projection, now: DateTime<Utc>) -> Result<Decision<Effect>, String> {
        if p.promise.is_none() {
            return Ok(Decision::default());
        }
        let (catalog, service) = pinned_service(&self.catalogs, p)?;
        let budget = Budget {
            spent_today_minor: self.views.spent(
                &p.tenant,
                now.date_naive(),
                service.recovery.limits.currency.as_str(),
            ),
        };
        decide(p, now, catalog, service, budget)
    }
}

/// The whole second at or after `at` (timers have second precision, and a
/// deadline timer must never fire before its deadline).
pub fn timer_instant(at: DateTime<Utc>) -> DateTime<Utc> {
    let whole = at.trunc_subsecs(0);
    if whole == at {
        at
    } else {
        whole + chrono::Duration::seconds(1)
    }
}

impl RecoveryReconciler {
    /// Performs a committed decision's effects (`fresh`: its events were
    /// appended now, not by an earlier attempt, so they are counted).
    async fn perform(
        &self,
        case: &CaseKey,
        effects: &[Effect],
        fresh: bool,
        scheduled: &mut bool,
    ) -> Result<(), Failure> {
        for effect in effects {
            match effect {
                Effect::ScheduleDeadline { at } if !*scheduled => {
                    self.timers
                        .schedule(DEADLINE_TIMER, case, timer_instant(*at))
                        .await
                        .map_err(|e| Failure::Retry(e.to_string()))?;
                    *scheduled = true;
                }
                Effect::PromiseBroken if fresh => {
                    metrics::counter!("casework_promises_broken_total").increment(1);
                }
                Effect::RecoveryCompleted { trigger, outcome } if fresh => {
                    metrics::counter!("casework_recoveries_total", "trigger" => *trigger, "outcome" => *outcome)
                        .increment(1);
                }
                Effect::Granted {
                    currency,
                    amount_minor,
                } if fresh => {
                    metrics::counter!("casework_compensation_granted_minor_total", "currency" => currency.clone())
                        .increment(*amount_minor);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Reconciler for RecoveryReconciler {
    /// Decides and appends until a decision appends nothing
    /// ([`Rounds::UntilIdle`]), on the case's held projection: the events
    /// that woke it are folded (no read when they continue the held head),
    /// each append of ours folds its stored copy, and a conflict (someone
    /// else wrote first) reads only what follows the head. On a deadline
    /// fire this is the single-event append of `promise_broken` (decided
    /// alone, so it lands as soon as possible and the race with
    /// `promise_kept` is decided by one small append), then the recovery it
    /// triggers as the next decisions, each of its events appended on the
    /// head the previous one produced. The caller acknowledges the wake-up
    /// only after this returns `Ok`, so a crash (or an error) between two
    /// appends leaves the wake-up unacknowledged: it is delivered again and
    /// the next reconcile, deciding on what landed, appends the rest with
    /// the same ids (`promise_broken` is not appended twice: the log has
    /// it). The caller holds the case's lock
    /// ([`casework_runtime::reconcile::lock_case`] with `"recovery"`).
    async fn reconcile(&self, case: &CaseKey, woke: &[StoredEvent]) -> Result<(), Failure> {
        let decided = decide_and_append(
            self.log.as_ref(),
            &self.cache,
            case,
            woke,
            Rounds::UntilIdle,
            |p: &Projection, _| self.decide_on(p, Utc::now()),
        )
        .await?;
        let unfinished = decided.unfinished;
        let mut scheduled = false;
        for round in &decided.rounds {
            let fresh = round.appended.as_ref().is_some_and(|a| a.fresh());
            self.perform(case, &round.effects, fresh, &mut scheduled)
                .await?;
        }
        // Timers don't outlive their case: once it is closed, its deadline
        // is settled and its timer removed (a pending schedule never fires,
        // and TIMERS keeps nothing for the case).
        if woke.iter().any(|e| e.envelope.event_type == "case_closed") {
            self.timers
                .cancel(DEADLINE_TIMER, case)
                .await
                .map_err(|e| Failure::Retry(e.to_string()))?;
        }
        if unfinished {
            // More to do than one wake-up takes: come back.
            return Err(Failure::Retry(format!(
                "case {case} needed more than {MAX_ROUNDS} decisions in one wake-up"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casework_domain::pb::{self, Envelope, envelope::Payload};

    fn pinned(version: &str, digest: &str) -> Projection {
        let mut p = Projection::default();
        p.apply(&Envelope {
            event_id: "e-1".into(),
            sequence: 1,
            payload: Some(Payload::PromiseMade(pb::PromiseMade {
                service_code: "refund".into(),
                catalog_version: version.into(),
                catalog_digest: digest.into(),
                ..Default::default()
            })),
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_case_pinned_to_another_file_of_its_catalogue_version_is_refused() {
        let sample = casework_catalog::sample();
        let catalogs = Catalogs::new([sample.clone()]).unwrap();
        let version = sample.version().to_string();
        // The exact file the promise was made with, or no digest recorded.
        for digest in [sample.digest(), ""] {
            let s = service_of(&catalogs, &pinned(&version, digest)).unwrap();
            assert_eq!(s.code.as_str(), "refund");
        }
        // Same version, other bytes: parked with a reason that says what
        // to deploy.
        let e = service_of(&catalogs, &pinned(&version, "00")).unwrap_err();
        assert!(
            e.contains("digest 00") && e.contains(sample.digest()) && e.contains("deploy"),
            "{e}"
        );
        let e = service_of(&catalogs, &pinned("2030-01-01.1", "")).unwrap_err();
        assert!(e.contains("2030-01-01.1"), "{e}");
    }
}
