//! The auditor's invariants on the raw stream, one checker for the e2e
//! suite and the fault probe: every case's log dense with a valid chain,
//! no event id twice, no step attempt started twice, exactly one
//! `promise_made` and exactly one `case_closed`.

use std::collections::{BTreeMap, HashSet};

use casework_caselog::domain::pb::envelope::Payload;
use casework_caselog::domain::{CaseState, verify};
use casework_caselog::{CaseKey, CaseLog, JetStreamLog};

/// Each case's state folded from its log (an unreadable log folds empty).
pub async fn states(log: &JetStreamLog, cases: &[CaseKey]) -> Vec<CaseState> {
    let mut out = Vec::with_capacity(cases.len());
    for c in cases {
        let events = log.read(c, 0).await.unwrap_or_default();
        out.push(CaseState::fold(events.iter().map(|e| &e.envelope)));
    }
    out
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Audit {
    /// Events read.
    pub events: u64,
    /// Cases whose chain does not verify.
    pub broken_chains: Vec<String>,
    /// Event ids seen twice in one case.
    pub duplicate_event_ids: Vec<String>,
    /// Step attempts started twice.
    pub attempts_twice: Vec<String>,
    /// Cases without exactly one `promise_made` and one `case_closed`.
    pub wrong_promise_or_close_counts: Vec<String>,
    /// Each closed case's resolution.
    pub resolutions: BTreeMap<CaseKey, i32>,
}

impl Audit {
    /// Every violation, for a message.
    pub fn violations(&self) -> Vec<&String> {
        self.broken_chains
            .iter()
            .chain(&self.duplicate_event_ids)
            .chain(&self.attempts_twice)
            .chain(&self.wrong_promise_or_close_counts)
            .collect()
    }
}

/// Reads every case's log as an auditor does and checks the invariants.
pub async fn check(log: &JetStreamLog, cases: &[CaseKey]) -> Audit {
    let mut a = Audit::default();
    for c in cases {
        let raw = log.read_raw(c).await.expect("read the raw log");
        let v = verify(&c.tenant, &c.case_id, &raw, None);
        if !v.is_intact() {
            a.broken_chains.push(format!("{c}: {v:?}"));
        }
        let events = log.read(c, 0).await.expect("read the log");
        a.events += events.len() as u64;
        let (mut ids, mut attempts) = (HashSet::new(), HashSet::new());
        let (mut promises, mut closes) = (0, 0);
        for e in &events {
            if !ids.insert(e.envelope.event_id.clone()) {
                a.duplicate_event_ids
                    .push(format!("{c}: event id {} twice", e.envelope.event_id));
            }
            match &e.envelope.payload {
                Some(Payload::StepStarted(s))
                    if !attempts.insert((s.run, s.step_index, s.attempt)) =>
                {
                    a.attempts_twice.push(format!(
                        "{c}: attempt {:?} started twice",
                        (s.run, s.step_index, s.attempt)
                    ));
                }
                Some(Payload::PromiseMade(_)) => promises += 1,
                Some(Payload::CaseClosed(cl)) => {
                    closes += 1;
                    a.resolutions.insert(c.clone(), cl.resolution);
                }
                _ => {}
            }
        }
        if (promises, closes) != (1, 1) {
            a.wrong_promise_or_close_counts.push(format!(
                "{c}: {promises} promise_made, {closes} case_closed"
            ));
        }
    }
    a
}
