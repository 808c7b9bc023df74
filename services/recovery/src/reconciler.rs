//! The thin shell around [`crate::decide`]: load the case, fold the
//! projection, decide, append with optimistic concurrency, then perform the
//! effects (the deadline timer, metrics). Repeats until a decision appends
//! nothing, because one wake-up may take several decisions (`promise_broken`
//! first, then the recovery it triggers, then a queued trigger's recovery).
//! The case is read once per wake-up (and again only after a conflict): each
//! append of ours advances the projection and head locally.

use std::sync::Arc;

use async_trait::async_trait;
use casework_caselog::{CaseKey, CaseLog, Head, StoredEvent};
use casework_catalog::{Catalogs, ServiceDef};
use casework_domain::NewEvent;
use casework_domain::pb::Envelope;
use casework_runtime::reconcile::{Decision, Failure, Reconciler};
use casework_runtime::timers::Timers;
use chrono::{DateTime, SubsecRound, Utc};

use crate::decide::{Budget, Effect, decide};
use crate::projection::Projection;
use crate::views::Views;

/// The timer kind of a promise's deadline.
pub const DEADLINE_TIMER: &str = "deadline";

/// Most decisions one wake-up appends before it yields.
const MAX_DECISIONS: usize = 16;

/// Most conflicts in a row before a wake-up counts as transient.
const MAX_CONFLICTS: usize = 8;

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

    fn decide_on(&self, p: &Projection, now: DateTime<Utc>) -> Result<Decision<Effect>, String> {
        if p.promise.is_none() {
            return Ok(Decision::default());
        }
        let service = service_of(&self.catalogs, p)?;
        let budget = Budget {
            spent_today_minor: self.views.spent(
                &p.tenant,
                now.date_naive(),
                service.recovery.limits.currency.as_str(),
            ),
        };
        decide(p, now, service, budget)
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

/// What one wake-up knows of the case: its projection and the head it ends
/// at. After an append of ours it is advanced locally (the appended events
/// folded onto it, the head the append returned), so the next decision of
/// the same wake-up costs no read; any other writer's append in between
/// makes that next append conflict, and the case is read again.
struct Known {
    p: Projection,
    head: Option<Head>,
}

/// The envelope `e` has in the log once appended as the `i`-th event after
/// `head` — the fields the projection folds (the chain fields are the
/// log's business and are not needed here).
fn envelope_of(case: &CaseKey, head: Option<&Head>, i: usize, e: &NewEvent) -> Envelope {
    let event_type = e.event_type();
    Envelope {
        event_id: e.event_id.to_string(),
        tenant: case.tenant.to_string(),
        case_id: case.case_id.to_string(),
        sequence: head.map_or(0, |h| h.case_seq) + 1 + i as u64,
        event_type: event_type.to_string(),
        writer: event_type.writer().to_string(),
        occurred_at: Some(casework_domain::chain::timestamp(e.occurred_at)),
        causation_id: e.causation_id.clone(),
        correlation_id: e.correlation_id.clone(),
        payload: Some(e.payload.clone()),
        ..Default::default()
    }
}

impl RecoveryReconciler {
    async fn load(&self, case: &CaseKey) -> Result<Known, Failure> {
        let events = self.log.read(case, 0).await?;
        Ok(Known {
            p: Projection::fold(events.iter().map(|e| &e.envelope)),
            head: events.last().map(StoredEvent::head),
        })
    }

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
    /// Decides and appends until a decision appends nothing. The case is
    /// read once; each of our appends advances the known state locally, and
    /// a conflict (someone else wrote first) reads it again. On a deadline
    /// fire this is one read, the single-event append of `promise_broken`
    /// (decided alone, so it lands as soon as possible and the race with
    /// `promise_kept` is decided by one small append), then the recovery it
    /// triggers as the next decision. The caller acknowledges the wake-up
    /// only after this returns `Ok`, so a crash (or an error) between the
    /// two appends leaves the wake-up unacknowledged: it is delivered again
    /// and the next reconcile, deciding from the log, takes the recovery
    /// from where it stopped (`promise_broken` is not appended twice: the
    /// log has it).
    async fn reconcile(&self, case: &CaseKey) -> Result<(), Failure> {
        let mut scheduled = false;
        let mut known: Option<Known> = None;
        let mut conflicts = 0;
        let mut decisions = 0;
        while decisions < MAX_DECISIONS {
            let k = match known.take() {
                Some(k) => k,
                None => self.load(case).await?,
            };
            let decision = self.decide_on(&k.p, Utc::now()).map_err(Failure::Park)?;
            if decision.events.is_empty() {
                self.perform(case, &decision.effects, false, &mut scheduled)
                    .await?;
                return Ok(());
            }
            let ours: Vec<Envelope> = decision
                .events
                .iter()
                .enumerate()
                .map(|(i, e)| envelope_of(case, k.head.as_ref(), i, e))
                .collect();
            let traceparent = casework_telemetry::current_traceparent();
            match self
                .log
                .append_traced(
                    case,
                    k.head.as_ref(),
                    decision.events,
                    traceparent.as_deref(),
                )
                .await
            {
                Ok(a) => {
                    decisions += 1;
                    conflicts = 0;
                    self.perform(case, &decision.effects, !a.already, &mut scheduled)
                        .await?;
                    if !a.already {
                        let mut p = k.p;
                        for e in &ours {
                            p.apply(e);
                        }
                        known = Some(Known {
                            p,
                            head: Some(a.head),
                        });
                    }
                    // An earlier attempt's events landed (`already`): the
                    // log's copies are the truth; read them.
                }
                Err(e) if e.is_conflict() => {
                    metrics::counter!("casework_append_conflicts_total").increment(1);
                    conflicts += 1;
                    if conflicts >= MAX_CONFLICTS {
                        return Err(Failure::Retry(format!(
                            "case {case} kept changing under {MAX_CONFLICTS} decisions in a row"
                        )));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        // More to do than one wake-up takes: come back.
        Err(Failure::Retry(format!(
            "case {case} needed more than {MAX_DECISIONS} decisions in one wake-up"
        )))
    }
}
