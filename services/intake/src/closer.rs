//! The closing reconciler (DESIGN.md §2): the front stage closes the loop.
//! Every change to any case wakes it through the shared durable consumer
//! `intake`; it folds the case from the log, asks [`decide_close`] and
//! appends `customer_notified` + `case_closed` atomically with the log's
//! head as expectation. Redelivery, and two replicas racing on one case, are
//! harmless: the ids are deterministic and the loser's append conflicts,
//! reloads and sees the case closed.

use std::sync::Arc;

use async_trait::async_trait;
use casework_caselog::{CaseKey, CaseLog};
use casework_runtime::reconcile::{Failure, Reconciler, decide_and_append};
use chrono::Utc;

use crate::decide::{CaseView, decide_close};

/// The durable consumer that wakes the closer (shared by the replicas).
pub const CLOSER_CONSUMER: &str = "intake-closer";

/// The events after which a case may be ready to close (see
/// [`crate::decide::closing_resolution`]): a withdrawal, a kept promise, a
/// failure for good, and recovery's events (a recovery opening or
/// completing). Steps, interactions and intake's own other events do not
/// wake the closer.
pub const WAKE_FILTERS: [&str; 4] = [
    "case.*.*.intake.case_withdrawn",
    "case.*.*.fulfilment.promise_kept",
    "case.*.*.fulfilment.fulfilment_failed",
    "case.*.*.recovery.>",
];

/// Closes cases whose outcome is settled.
#[derive(Debug)]
pub struct Closer {
    log: Arc<dyn CaseLog>,
}

impl Closer {
    /// A closer appending through `log` (bound to the intake writer).
    pub fn new(log: Arc<dyn CaseLog>) -> Self {
        Self { log }
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
    async fn reconcile(&self, case: &CaseKey) -> Result<(), Failure> {
        let decided = decide_and_append(&*self.log, case, |events| {
            let view = CaseView::fold(events.iter().map(|e| &e.envelope));
            Ok(decide_close(&view, Utc::now()))
        })
        .await?;
        if let Some(a) = &decided.appended
            && !a.already
        {
            for closed in decided.effects {
                tracing::info!(case = %case, resolution = ?closed.resolution, "case closed");
                metrics::counter!(
                    "casework_cases_closed_total",
                    "resolution" => resolution_label(closed.resolution)
                )
                .increment(1);
            }
        }
        Ok(())
    }
}
