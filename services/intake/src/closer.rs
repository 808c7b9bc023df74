//! The closing reconciler (DESIGN.md §2): the front stage closes the loop.
//! The events that can settle a case wake it through the shared durable
//! consumer `intake-closer`; on the case's held state (shared with the API,
//! brought up to date with what woke it) it asks [`decide_closer`]: the
//! promise of a case found opened without one (a crash between OpenCase's
//! two appends), else `customer_notified` then `case_closed`, each appended
//! on the head the previous one produced. Redelivery, a crash between two
//! events, and two replicas racing on one case, are harmless: the ids are
//! deterministic, every prefix is a state the rules continue from, and the
//! loser's append conflicts, reloads and sees the case closed.

use std::sync::Arc;

use async_trait::async_trait;
use casework_caselog::{CaseKey, CaseLog, StoredEvent};
use casework_catalog::Catalogs;
use casework_runtime::held::CaseCache;
use casework_runtime::reconcile::{Failure, Reconciler, Rounds, decide_and_append};
use chrono::Utc;

use crate::decide::{CaseView, decide_closer};

/// The durable consumer that wakes the closer (shared by the replicas; its
/// filters are [`WAKE_FILTERS`], and a consumer of the same name with other
/// filters is refused, hence the version in the name).
pub const CLOSER_CONSUMER: &str = casework_caselog::permissions::INTAKE_CLOSER;

/// The events after which the closer may have something to do: a case
/// opened (its promise may be missing after a crash; when the API made it,
/// the held state already has it and the wake-up costs no read), and those
/// after which a case may be ready to close (see
/// [`crate::decide::closing_resolution`]): a withdrawal, a kept promise, a
/// failure for good, and recovery's events (a recovery opening or
/// completing). Steps, interactions and intake's other events do not wake
/// the closer.
pub const WAKE_FILTERS: [&str; 5] = [
    "case.*.*.intake.case_opened",
    "case.*.*.intake.case_withdrawn",
    "case.*.*.fulfilment.promise_kept",
    "case.*.*.fulfilment.fulfilment_failed",
    "case.*.*.recovery.>",
];

/// Closes cases whose outcome is settled.
#[derive(Debug)]
pub struct Closer {
    log: Arc<dyn CaseLog>,
    cache: Arc<CaseCache<CaseView>>,
    catalogs: Catalogs,
}

impl Closer {
    /// A closer appending through `log` (bound to the intake writer), on
    /// the held states in `cache` (shared with the API); a missing promise
    /// is made from `catalogs.current()`.
    pub fn new(log: Arc<dyn CaseLog>, cache: Arc<CaseCache<CaseView>>, catalogs: Catalogs) -> Self {
        Self {
            log,
            cache,
            catalogs,
        }
    }
}

/// The resolution's short name for metrics (`promise_kept`, `recovered`…).
pub fn resolution_label(r: casework_domain::pb::Resolution) -> String {
    r.as_str_name()
        .trim_start_matches("RESOLUTION_")
        .to_ascii_lowercase()
}

#[async_trait]
impl Reconciler for Closer {
    async fn reconcile(&self, case: &CaseKey, woke: &[StoredEvent]) -> Result<(), Failure> {
        let decided = decide_and_append(
            &*self.log,
            &self.cache,
            case,
            woke,
            Rounds::UntilIdle,
            |view, _| decide_closer(view, &self.catalogs, Utc::now()),
        )
        .await?;
        for round in &decided.rounds {
            if !round.appended.as_ref().is_some_and(|a| a.fresh()) {
                continue;
            }
            for closed in &round.effects {
                tracing::info!(case = %case, resolution = ?closed.resolution, "case closed");
                metrics::counter!(
                    "casework_cases_closed_total",
                    "resolution" => resolution_label(closed.resolution)
                )
                .increment(1);
            }
        }
        if decided.unfinished {
            return Err(Failure::Retry(format!(
                "case {case} had more to decide than one wake-up takes"
            )));
        }
        Ok(())
    }
}
