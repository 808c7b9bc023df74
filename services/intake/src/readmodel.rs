//! The per-replica read model in redb: a summary per case (the
//! `casework.intake.v1.Case` message), indexes by opening time and by
//! customer, and the checkpoint of the stream tail that feeds it — all
//! written in one transaction per batch of events.
//!
//! [`project`] is the pure projection (it folds through the domain's
//! `evolve`, so status rules live in one place). [`follow`] tails `case.>`
//! from the checkpoint (from sequence 1 on an empty data directory) and
//! holds readiness until it has caught up with the stream as it was at
//! start. Writers of this replica wait for the checkpoint to pass their
//! append ([`ReadModel::wait_for`]) or apply their case directly, so a caller
//! reads its own writes.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use casework_caselog::{CaseKey, CaseLog, StoredEvent};
use casework_domain::chain::from_timestamp;
use casework_domain::pb::envelope::Payload;
use casework_domain::{CaseState, CaseStatus, evolve, state::Promise};
use casework_proto::intake::v1 as api;
use casework_runtime::http::Readiness;
use casework_runtime::{Shutdown, store};
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::watch;

use crate::tables::{CASES, CASES_BY_CUSTOMER, CASES_BY_OPENED, CHECKPOINTS, TAIL_CHECKPOINT};
use crate::validate::{ListQuery, PageToken};

/// Most events applied in one write transaction.
const MAX_BATCH: usize = 1024;

/// The readiness condition this module holds.
pub const READY_CONDITION: &str = "read_model_caught_up";

fn status_to_api(s: CaseStatus) -> api::CaseStatus {
    match s {
        CaseStatus::New => api::CaseStatus::Unspecified,
        CaseStatus::Open => api::CaseStatus::Open,
        CaseStatus::Fulfilling => api::CaseStatus::Fulfilling,
        CaseStatus::Kept => api::CaseStatus::Kept,
        CaseStatus::Failed => api::CaseStatus::Failed,
        CaseStatus::Recovering => api::CaseStatus::Recovering,
        CaseStatus::Recovered => api::CaseStatus::Recovered,
        CaseStatus::Withdrawn => api::CaseStatus::Withdrawn,
        CaseStatus::Closed => api::CaseStatus::Closed,
    }
}

fn status_from_api(s: i32) -> CaseStatus {
    match api::CaseStatus::try_from(s).unwrap_or_default() {
        api::CaseStatus::Unspecified => CaseStatus::New,
        api::CaseStatus::Open => CaseStatus::Open,
        api::CaseStatus::Fulfilling => CaseStatus::Fulfilling,
        api::CaseStatus::Kept => CaseStatus::Kept,
        api::CaseStatus::Failed => CaseStatus::Failed,
        api::CaseStatus::Recovering => CaseStatus::Recovering,
        api::CaseStatus::Recovered => CaseStatus::Recovered,
        api::CaseStatus::Withdrawn => CaseStatus::Withdrawn,
        api::CaseStatus::Closed => CaseStatus::Closed,
    }
}

/// The part of the domain's [`CaseState`] a stored summary carries (enough
/// for `evolve`'s status rules and `is_breached`).
pub fn to_state(c: &api::Case) -> CaseState {
    let status = status_from_api(c.status);
    CaseState {
        tenant: c.tenant.clone(),
        case_id: c.case_id.clone(),
        status,
        opened_at: c.opened_at.as_ref().map(from_timestamp),
        promise: c.promise.as_ref().map(|p| Promise {
            service_code: p.service_code.clone(),
            catalog_version: p.catalog_version.clone(),
            deadline: p.deadline.as_ref().map(from_timestamp).unwrap_or_default(),
            outcome: p.promised_outcome.clone(),
        }),
        promise_kept: c.promise_kept,
        kept_late: c.kept_late,
        promise_broken: c.promise_broken,
        recoveries: c.recoveries,
        feedback: c.feedback_scores.clone(),
        interactions: c.interactions,
        closed: (status == CaseStatus::Closed).then_some(c.resolution),
        events: c.event_count,
        ..Default::default()
    }
}

/// Whether the promise is breached at `now`: recorded broken, kept late, or
/// the deadline passed while the case was open and not kept (the clock stops
/// when the case closes).
pub fn breached(c: &api::Case, now: DateTime<Utc>) -> bool {
    let at = match c.closed_at.as_ref().map(from_timestamp) {
        Some(closed) => closed.min(now),
        None => now,
    };
    to_state(c).is_breached(at)
}

/// Folds one stored event into a case summary. Returns `None` when the
/// summary already includes it (its head is at or past the event).
pub fn project(case: Option<api::Case>, ev: &StoredEvent) -> Option<api::Case> {
    let mut c = case.unwrap_or_default();
    if c.head
        .as_ref()
        .is_some_and(|h| h.stream_seq >= ev.stream_seq)
    {
        return None;
    }
    let e = &ev.envelope;
    let s = evolve(to_state(&c), e);
    c.tenant = e.tenant.clone();
    c.case_id = e.case_id.clone();
    c.status = status_to_api(s.status) as i32;
    c.promise_kept = s.promise_kept;
    c.kept_late = s.kept_late;
    c.promise_broken = s.promise_broken;
    c.recoveries = s.recoveries;
    c.interactions = s.interactions;
    c.feedback_scores = s.feedback;
    c.event_count = s.events;
    c.head = Some(api::ChainHead {
        sequence: e.sequence,
        hash: hex::encode(ev.hash),
        event_id: e.event_id.clone(),
        stream_seq: ev.stream_seq,
    });
    c.updated_at = e.occurred_at;
    match &e.payload {
        Some(Payload::CaseOpened(o)) => {
            // Encrypted personal fields stay encrypted here: the read
            // model (a redb file) never holds a customer's plaintext.
            c.customer_id = o.customer_id.clone();
            c.channel = o.channel;
            c.purchase_stage = o.purchase_stage;
            c.service_code = o.service_code.clone();
            c.summary = o.summary.clone();
            c.idempotency_key = o.idempotency_key.clone();
            c.opened_at = e.occurred_at;
            c.subject = o
                .personal
                .as_ref()
                .map(|p| p.subject.clone())
                .unwrap_or_default();
            c.personal = o.personal.clone();
        }
        Some(Payload::PersonalDataErased(_)) => {
            c.personal_data_erased = true;
            c.personal = None;
            c.customer_id.clear();
            c.summary.clear();
        }
        Some(Payload::PromiseMade(p)) => c.promise = Some(promise_to_api(p)),
        Some(Payload::CaseClosed(x)) => {
            c.resolution = x.resolution;
            c.closed_at = e.occurred_at;
        }
        _ => {}
    }
    Some(c)
}

/// The API form of a `promise_made` payload.
pub fn promise_to_api(p: &casework_domain::pb::PromiseMade) -> api::Promise {
    api::Promise {
        service_code: p.service_code.clone(),
        deadline: p.deadline,
        promised_outcome: p.promised_outcome.clone(),
        deadline_rule: p.deadline_rule.clone(),
        calendar: p.calendar.clone(),
        catalog_version: p.catalog_version.clone(),
        catalog_digest: p.catalog_digest.clone(),
        customer_message: p.customer_message.clone(),
    }
}

/// What the customer index is keyed by: the customer's pseudonym when the
/// case's personal data is encrypted, else the customer id.
fn customer_key(c: &api::Case) -> &str {
    if c.subject.is_empty() {
        &c.customer_id
    } else {
        &c.subject
    }
}

fn case_key(tenant: &str, case_id: &str) -> String {
    format!("{tenant}/{case_id}")
}

fn nanos(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.map(from_timestamp)
        .and_then(|t| t.timestamp_nanos_opt())
        .unwrap_or(0)
}

fn decode_case(bytes: &[u8]) -> Option<api::Case> {
    api::Case::decode(bytes).ok()
}

/// Applies `events` in one open write transaction.
fn apply_in(tx: &WriteTransaction, events: &[StoredEvent]) -> Result<(), redb::Error> {
    let mut cases = tx.open_table(CASES)?;
    let mut by_opened = tx.open_table(CASES_BY_OPENED)?;
    let mut by_customer = tx.open_table(CASES_BY_CUSTOMER)?;
    for ev in events {
        let key = case_key(&ev.envelope.tenant, &ev.envelope.case_id);
        let existing = cases
            .get(key.as_str())?
            .and_then(|v| decode_case(v.value()));
        let Some(updated) = project(existing, ev) else {
            continue;
        };
        if matches!(ev.envelope.payload, Some(Payload::CaseOpened(_))) {
            let at = nanos(updated.opened_at.as_ref());
            by_opened.insert((updated.tenant.as_str(), at, updated.case_id.as_str()), ())?;
            by_customer.insert(
                (
                    updated.tenant.as_str(),
                    customer_key(&updated),
                    at,
                    updated.case_id.as_str(),
                ),
                (),
            )?;
        }
        cases.insert(key.as_str(), updated.encode_to_vec().as_slice())?;
    }
    Ok(())
}

/// The read model of one replica.
#[derive(Debug, Clone)]
pub struct ReadModel {
    db: Arc<Database>,
    checkpoint: Arc<watch::Sender<u64>>,
    /// Rebuilt from the log: fsynced at most once a second.
    commits: Arc<store::Rebuildable>,
}

impl ReadModel {
    /// Opens the tables in `db` (creating them) and reads the checkpoint.
    pub fn open(db: Arc<Database>) -> anyhow::Result<Self> {
        let tx = db.begin_write()?;
        let checkpoint = {
            tx.open_table(CASES)?;
            tx.open_table(CASES_BY_OPENED)?;
            tx.open_table(CASES_BY_CUSTOMER)?;
            let t = tx.open_table(CHECKPOINTS)?;
            t.get(TAIL_CHECKPOINT)?.map(|v| v.value()).unwrap_or(0)
        };
        tx.commit()?;
        Ok(Self {
            db,
            checkpoint: Arc::new(watch::channel(checkpoint).0),
            commits: Arc::default(),
        })
    }

    /// The last stream sequence the tail applied.
    pub fn checkpoint(&self) -> u64 {
        *self.checkpoint.borrow()
    }

    /// Applies `events` in one write transaction; with `checkpoint`, also
    /// moves the tail checkpoint there (only the tail does: a writer's own
    /// case applied early must not skip other cases' events).
    pub async fn apply(&self, events: Vec<StoredEvent>, checkpoint: Option<u64>) {
        let (db, commits) = (self.db.clone(), self.commits.clone());
        store::blocking(move || {
            let tx = db.begin_write().expect("redb write");
            if let Err(e) = apply_in(&tx, &events) {
                tracing::error!(error = %e, "read model write failed; exiting so the supervisor restarts us");
                std::process::exit(70);
            }
            if let Some(seq) = checkpoint {
                let mut t = tx.open_table(CHECKPOINTS).expect("checkpoint table");
                t.insert(TAIL_CHECKPOINT, seq).expect("checkpoint insert");
            }
            commits.commit(tx);
        })
        .await;
        if let Some(seq) = checkpoint {
            self.checkpoint.send_if_modified(|c| {
                let moved = seq > *c;
                *c = (*c).max(seq);
                moved
            });
        }
    }

    /// Waits until the tail has applied stream sequence `seq`, at most
    /// `timeout`; false on timeout.
    pub async fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.checkpoint.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|c| *c >= seq)).await,
            Ok(Ok(_))
        )
    }

    /// One case summary (with `breached` evaluated at `now`).
    pub async fn get(&self, case: &CaseKey, now: DateTime<Utc>) -> Option<api::Case> {
        let db = self.db.clone();
        let key = case_key(case.tenant.as_str(), case.case_id.as_str());
        store::blocking(move || {
            let tx = db.begin_read().expect("redb read");
            let t = tx.open_table(CASES).expect("cases table");
            let mut c = t
                .get(key.as_str())
                .expect("redb get")
                .and_then(|v| decode_case(v.value()))?;
            c.breached = breached(&c, now);
            Some(c)
        })
        .await
    }

    /// Every case of the customer whose pseudonym is `subject`.
    pub async fn cases_of_subject(
        &self,
        tenant: &casework_domain::Tenant,
        subject: &str,
    ) -> Vec<casework_domain::CaseId> {
        let db = self.db.clone();
        let (tenant, subject) = (tenant.to_string(), subject.to_owned());
        store::blocking(move || {
            let tx = db.begin_read().expect("redb read");
            let idx = tx.open_table(CASES_BY_CUSTOMER).expect("customer index");
            let from = (tenant.as_str(), subject.as_str(), i64::MIN, "");
            let to = (tenant.as_str(), subject.as_str(), i64::MAX, "~");
            idx.range(from..=to)
                .expect("redb range")
                .filter_map(|r| r.ok())
                .filter_map(|(k, _)| casework_domain::CaseId::parse(k.value().3).ok())
                .collect()
        })
        .await
    }

    /// A page of cases matching `q`, oldest first, and the token of the next
    /// page.
    pub async fn list(&self, q: ListQuery, now: DateTime<Utc>) -> (Vec<api::Case>, Option<String>) {
        let db = self.db.clone();
        store::blocking(move || list_in(&db, &q, now).expect("redb list")).await
    }
}

fn list_in(
    db: &Database,
    q: &ListQuery,
    now: DateTime<Utc>,
) -> Result<(Vec<api::Case>, Option<String>), redb::Error> {
    let tx = db.begin_read()?;
    let cases = tx.open_table(CASES)?;
    let tenant = q.tenant.as_str();
    let mut out: Vec<api::Case> = Vec::new();
    let mut more = false;
    let mut consider = |case_id: &str| -> Result<bool, redb::Error> {
        let Some(mut c) = cases
            .get(case_key(tenant, case_id).as_str())?
            .and_then(|v| decode_case(v.value()))
        else {
            return Ok(true);
        };
        c.breached = breached(&c, now);
        let keep = q.status.is_none_or(|s| c.status == s as i32)
            && q.breached.is_none_or(|b| c.breached == b);
        if keep {
            if out.len() == q.page_size {
                more = true;
                return Ok(false);
            }
            out.push(c);
        }
        Ok(true)
    };
    let after = q.after.as_ref();
    if let Some(customer) = &q.customer_id {
        let idx = tx.open_table(CASES_BY_CUSTOMER)?;
        let start = match after {
            Some(t) => {
                Bound::Excluded((tenant, customer.as_str(), t.opened_at, t.case_id.as_str()))
            }
            None => Bound::Included((tenant, customer.as_str(), i64::MIN, "")),
        };
        for item in idx.range::<(&str, &str, i64, &str)>((start, Bound::Unbounded))? {
            let (k, _) = item?;
            let (t, cust, _, id) = k.value();
            if t != tenant || cust != customer {
                break;
            }
            if !consider(id)? {
                break;
            }
        }
    } else {
        let idx = tx.open_table(CASES_BY_OPENED)?;
        let start = match after {
            Some(t) => Bound::Excluded((tenant, t.opened_at, t.case_id.as_str())),
            None => Bound::Included((tenant, i64::MIN, "")),
        };
        for item in idx.range::<(&str, i64, &str)>((start, Bound::Unbounded))? {
            let (k, _) = item?;
            let (t, _, id) = k.value();
            if t != tenant {
                break;
            }
            if !consider(id)? {
                break;
            }
        }
    }
    let next = if more {
        out.last().map(|c| {
            PageToken {
                opened_at: nanos(c.opened_at.as_ref()),
                case_id: c.case_id.clone(),
            }
            .encode()
        })
    } else {
        None
    };
    Ok((out, next))
}

/// Feeds the read model from the log until `shutdown`: tails `case.>` from
/// the checkpoint, applies batches in one transaction each, and sets the
/// readiness condition once it has reached the stream's last sequence as
/// of the start.
pub async fn follow(
    rm: ReadModel,
    log: Arc<dyn CaseLog>,
    readiness: Readiness,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let target = loop {
        match log.last_stream_seq().await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the stream's last sequence; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    readiness.set(READY_CONDITION, rm.checkpoint() >= target);
    tracing::info!(
        checkpoint = rm.checkpoint(),
        target,
        "read model catching up"
    );
    loop {
        let from = rm.checkpoint() + 1;
        let mut deliveries = match log.tail("case.>", from).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, from, "cannot tail the case log; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                n = deliveries.next() => n,
            };
            let mut batch = match first {
                Some(Ok(d)) => vec![d],
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "case log tail failed; resubscribing");
                    break;
                }
                None => break,
            };
            while batch.len() < MAX_BATCH {
                match deliveries.next().now_or_never() {
                    Some(Some(Ok(d))) => batch.push(d),
                    _ => break,
                }
            }
            let last = batch.last().map_or(0, |d| d.stream_seq);
            let events: Vec<StoredEvent> = batch
                .iter()
                .filter_map(|d| match d.decode() {
                    Ok(e) => Some(e),
                    Err(e) => {
                        tracing::error!(error = %e, "undecodable event skipped by the read model");
                        None
                    }
                })
                .collect();
            rm.apply(events, Some(last)).await;
            metrics::gauge!("casework_read_model_checkpoint", "service" => "intake")
                .set(last as f64);
            if last >= target {
                readiness.set(READY_CONDITION, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casework_domain::chain::timestamp;
    use casework_domain::pb;

    fn stored(seq: u64, payload: Payload) -> StoredEvent {
        StoredEvent {
            stream_seq: seq * 10,
            subject: String::new(),
            bytes: bytes::Bytes::new(),
            hash: [seq as u8; 32],
            envelope: pb::Envelope {
                event_id: format!("E{seq}"),
                tenant: "acme".into(),
                case_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2B".into(),
                sequence: seq,
                event_type: casework_domain::EventType::of(&payload).to_string(),
                occurred_at: Some(timestamp(
                    DateTime::from_timestamp(1_700_000_000 + seq as i64, 0).unwrap(),
                )),
                payload: Some(payload),
                ..Default::default()
            },
        }
    }

    #[test]
    fn projection_given_when_then() {
        let deadline = DateTime::from_timestamp(1_700_000_100, 0).unwrap();
        let log = [
            stored(
                1,
                Payload::CaseOpened(pb::CaseOpened {
                    customer_id: "c1".into(),
                    service_code: "refund".into(),
                    ..Default::default()
                }),
            ),
            stored(
                2,
                Payload::PromiseMade(pb::PromiseMade {
                    service_code: "refund".into(),
                    deadline: Some(timestamp(deadline)),
                    ..Default::default()
                }),
            ),
            stored(
                3,
                Payload::FulfilmentStarted(pb::FulfilmentStarted::default()),
            ),
            stored(4, Payload::PromiseKept(pb::PromiseKept::default())),
            stored(
                5,
                Payload::CaseClosed(pb::CaseClosed {
                    resolution: pb::Resolution::PromiseKept as i32,
                    ..Default::default()
                }),
            ),
            stored(
                6,
                Payload::FeedbackReceived(pb::FeedbackReceived {
                    score: 5,
                    ..Default::default()
                }),
            ),
        ];
        // then the status after each event
        let want = [
            api::CaseStatus::Open,
            api::CaseStatus::Open,
            api::CaseStatus::Fulfilling,
            api::CaseStatus::Kept,
            api::CaseStatus::Closed,
            api::CaseStatus::Closed,
        ];
        let mut c: Option<api::Case> = None;
        for (ev, want) in log.iter().zip(want) {
            c = Some(project(c, ev).expect("a new event changes the summary"));
            assert_eq!(
                c.as_ref().unwrap().status,
                want as i32,
                "after {}",
                ev.envelope.event_type
            );
        }
        let c = c.unwrap();
        // a redelivered event is ignored
        assert!(project(Some(c.clone()), &log[3]).is_none());
        assert_eq!(c.customer_id, "c1");
        assert_eq!(c.event_count, 6);
        assert_eq!(c.head.as_ref().unwrap().sequence, 6);
        assert_eq!(c.head.as_ref().unwrap().stream_seq, 60);
        assert_eq!(c.head.as_ref().unwrap().hash, hex::encode([6u8; 32]));
        assert_eq!(c.resolution, pb::Resolution::PromiseKept as i32);
        assert_eq!(c.feedback_scores, vec![5]);
        assert!(c.promise_kept && !breached(&c, deadline + chrono::Duration::days(1)));
    }

    #[test]
    fn breach_is_judged_at_read_time_and_stops_at_closing() {
        let deadline = DateTime::from_timestamp(1_700_000_100, 0).unwrap();
        let mut c = api::Case {
            status: api::CaseStatus::Fulfilling as i32,
            promise: Some(api::Promise {
                deadline: Some(timestamp(deadline)),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(!breached(&c, deadline - chrono::Duration::seconds(1)));
        assert!(breached(&c, deadline));
        // withdrawn and closed before the deadline: never breached
        c.status = api::CaseStatus::Closed as i32;
        c.closed_at = Some(timestamp(deadline - chrono::Duration::seconds(10)));
        assert!(!breached(&c, deadline + chrono::Duration::days(3)));
        c.promise_broken = true;
        assert!(breached(&c, deadline));
    }
}
