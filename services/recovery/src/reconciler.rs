//! The thin shell around [`crate::decide`]: load the case, fold the
//! projection, decide, append with optimistic concurrency, then perform the
//! effects (the deadline timer, metrics). Repeats until a decision appends
//! nothing, because one wake-up may take several decisions (`promise_broken`
//! first, then the recovery it triggers, then a queued trigger's recovery).

use std::sync::Arc;

use async_trait::async_trait;
use casework_caselog::{CaseKey, CaseLog};
use casework_catalog::{Catalogs, ServiceDef};
use casework_runtime::reconcile::{Decision, Failure, Reconciler, decide_and_append};
use casework_runtime::timers::Timers;
use chrono::{DateTime, SubsecRound, Utc};

use crate::decide::{Budget, Effect, decide};
use crate::projection::Projection;
use crate::views::Views;

/// The timer kind of a promise's deadline.
pub const DEADLINE_TIMER: &str = "deadline";

/// Most decisions one wake-up takes before it yields.
const MAX_DECISIONS: usize = 16;

/// The catalogue service a case is pinned to.
pub fn service_of<'a>(catalogs: &'a Catalogs, p: &Projection) -> Result<&'a ServiceDef, String> {
    let Some(promise) = &p.promise else {
        return Err("the case has no promise".to_owned());
    };
    let catalog = catalogs.get(&promise.catalog_version).ok_or_else(|| {
        format!(
            "the case is pinned to catalogue version {:?}, which this replica does not have; deploy that catalogue file",
            promise.catalog_version
        )
    })?;
    catalog.service(&promise.service_code).ok_or_else(|| {
        format!(
            "catalogue version {} has no service {:?}",
            promise.catalog_version, promise.service_code
        )
    })
}

/// Recovery's reconciler.
#[derive(Debug, Clone)]
pub struct RecoveryReconciler {
    log: Arc<dyn CaseLog>,
    catalogs: Arc<Catalogs>,
    timers: Timers,
    views: Views,
}

impl RecoveryReconciler {
    /// A reconciler appending to `log`.
    pub fn new(
        log: Arc<dyn CaseLog>,
        catalogs: Arc<Catalogs>,
        timers: Timers,
        views: Views,
    ) -> Self {
        Self {
            log,
            catalogs,
            timers,
            views,
        }
    }

    fn decide_on(
        &self,
        events: &[casework_caselog::StoredEvent],
        now: DateTime<Utc>,
    ) -> Result<Decision<Effect>, String> {
        let p = Projection::fold(events.iter().map(|e| &e.envelope));
        if p.promise.is_none() {
            return Ok(Decision::default());
        }
        let service = service_of(&self.catalogs, &p)?;
        let budget = Budget {
            spent_today_minor: self.views.spent(
                &p.tenant,
                now.date_naive(),
                service.recovery.limits.currency.as_str(),
            ),
        };
        decide(&p, now, service, budget)
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

#[async_trait]
impl Reconciler for RecoveryReconciler {
    async fn reconcile(&self, case: &CaseKey) -> Result<(), Failure> {
        let mut scheduled = false;
        for _ in 0..MAX_DECISIONS {
            let decided = decide_and_append(self.log.as_ref(), case, |events| {
                self.decide_on(events, Utc::now())
            })
            .await?;
            let fresh = decided.appended.as_ref().is_some_and(|a| !a.already);
            for effect in &decided.effects {
                match effect {
                    Effect::ScheduleDeadline { at } if !scheduled => {
                        self.timers
                            .schedule(DEADLINE_TIMER, case, timer_instant(*at))
                            .await
                            .map_err(|e| Failure::Retry(e.to_string()))?;
                        scheduled = true;
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
            if decided.appended.is_none() {
                return Ok(());
            }
        }
        // More to do than one wake-up takes: come back.
        Err(Failure::Retry(format!(
            "case {case} needed more than {MAX_DECISIONS} decisions in one wake-up"
        )))
    }
}
