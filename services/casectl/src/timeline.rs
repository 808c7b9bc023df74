//! The timeline of a replayed case: one row per event in three lanes —
//! front stage (intake), back stage (fulfilment), recovery — and the state
//! at the end. Pure formatting, no I/O.

use casework_domain::chain::from_timestamp;
use casework_domain::pb::{self, Envelope, envelope::Payload};
use casework_proto::ledger::v1 as api;

/// Width of one lane.
pub const LANE: usize = 38;

fn channel(c: i32) -> String {
    pb::Channel::try_from(c)
        .map(|c| {
            c.as_str_name()
                .trim_start_matches("CHANNEL_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".to_owned())
}

fn resolution(r: i32) -> String {
    pb::Resolution::try_from(r)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("RESOLUTION_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".to_owned())
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .map(|t| from_timestamp(t).format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".to_owned())
}

fn money(m: &Option<pb::Money>) -> String {
    m.as_ref()
        .map(|m| {
            casework_domain::money::format(
                m.amount_minor,
                &m.currency,
                &casework_domain::money::locale("en"),
            )
        })
        .unwrap_or_default()
}

/// One event in a few words.
pub fn describe(e: &Envelope) -> String {
    let Some(p) = &e.payload else {
        return e.event_type.clone();
    };
    if casework_domain::personal::protected(p).is_some_and(|x| x.erased) {
        return format!("{} (personal data erased)", e.event_type);
    }
    match p {
        Payload::PersonalDataErased(x) => format!("personal data erased: {}", x.legal_basis),
        Payload::CaseOpened(o) => format!(
            "opened: {} via {} for {}",
            o.service_code,
            channel(o.channel),
            o.customer_id
        ),
        Payload::PromiseMade(p) => format!("promised by {}", ts(&p.deadline)),
        Payload::InteractionRecorded(i) => {
            format!("interaction ({}): {}", channel(i.channel), i.summary)
        }
        Payload::FeedbackReceived(f) => format!("feedback {}/5 {}", f.score, f.comment),
        Payload::CaseWithdrawn(w) => format!("withdrawn: {}", w.reason),
        Payload::CustomerNotified(n) => format!("customer told: {}", resolution(n.resolution)),
        Payload::CaseClosed(c) => format!("closed: {}", resolution(c.resolution)),
        Payload::FulfilmentStarted(f) => format!("run {} started ({} steps)", f.run, f.steps.len()),
        Payload::StepStarted(s) => format!("{} attempt {}", s.step_name, s.attempt),
        Payload::StepCompleted(s) => format!("{} done", s.step_name),
        Payload::StepFailed(s) => format!(
            "{} failed{}: {}",
            s.step_name,
            if s.retry_at.is_some() { " (retry)" } else { "" },
            s.error
        ),
        Payload::PromiseKept(k) => format!("PROMISE KEPT{}", if k.late { " (late)" } else { "" }),
        Payload::FulfilmentFailed(f) => format!("run {} FAILED at {}", f.run, f.step_name),
        Payload::PromiseBroken(_) => "PROMISE BROKEN (deadline passed)".to_owned(),
        Payload::RecoveryStarted(r) => format!("recovery {} started: {}", r.recovery, r.reason),
        Payload::ApologySent(_) => "apology sent".to_owned(),
        Payload::CompensationProposed(c) => format!(
            "proposed {} {}{}",
            c.kind,
            money(&c.amount),
            if c.requires_approval {
                " (needs approval)"
            } else {
                ""
            }
        ),
        Payload::CompensationApproved(c) => format!(
            "{} approved by {}",
            c.compensation_id,
            c.approved_by
                .as_ref()
                .map(|a| a.display_name.as_str())
                .unwrap_or("?")
        ),
        Payload::CompensationDeclined(c) => format!("{} declined", c.compensation_id),
        Payload::CompensationGranted(c) => format!("granted {} {}", c.kind, money(&c.amount)),
        Payload::RetryRequested(r) => format!("retry {} requested", r.retry),
        Payload::CaseEscalated(e) => format!("escalated to {}", e.tier),
        Payload::RecoveryCompleted(r) => format!(
            "recovery {} done: {}",
            r.recovery,
            pb::RecoveryOutcome::try_from(r.outcome)
                .map(|o| o
                    .as_str_name()
                    .trim_start_matches("RECOVERY_OUTCOME_")
                    .to_lowercase())
                .unwrap_or_default()
        ),
    }
}

fn fit(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        format!("{s:width$}")
    } else {
        let mut t: String = s.chars().take(width - 1).collect();
        t.push('…');
        t
    }
}

/// The lane of an event: 0 front stage, 1 back stage, 2 recovery.
pub fn lane(e: &Envelope) -> usize {
    match e.writer.as_str() {
        "intake" => 0,
        "fulfilment" => 1,
        _ => 2,
    }
}

/// Renders the timeline of `events` and the final `state`.
pub fn render(
    case: &str,
    events: &[Envelope],
    state: &api::CaseState,
    catalog: (&str, &str),
    as_of: Option<&str>,
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "case {case}{}\n",
        as_of.map(|a| format!(" as of {a}")).unwrap_or_default()
    ));
    if !catalog.0.is_empty() {
        out.push_str(&format!(
            "catalogue {} (sha256 {})\n",
            catalog.0,
            &catalog.1[..catalog.1.len().min(16)]
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:>4}  {:20}  {} | {} | {}\n",
        "SEQ",
        "OCCURRED",
        fit("FRONT STAGE", LANE),
        fit("BACK STAGE", LANE),
        fit("RECOVERY", LANE)
    ));
    for e in events {
        let mut lanes = [String::new(), String::new(), String::new()];
        lanes[lane(e)] = describe(e);
        out.push_str(&format!(
            "{:>4}  {:20}  {} | {} | {}\n",
            e.sequence,
            ts(&e.occurred_at),
            fit(&lanes[0], LANE),
            fit(&lanes[1], LANE),
            fit(&lanes[2], LANE).trim_end()
        ));
    }
    out.push('\n');
    out.push_str(&summary(state));
    out
}

/// The state in a few lines.
pub fn summary(s: &api::CaseState) -> String {
    let mut out = format!("status      {}\n", s.status);
    out.push_str(&format!("events      {}\n", s.events));
    if let Some(p) = &s.promise {
        out.push_str(&format!(
            "promise     {} by {} — {}\n",
            p.service_code,
            ts(&p.deadline),
            if s.promise_kept {
                if s.kept_late { "kept late" } else { "kept" }
            } else if s.promise_broken {
                "broken"
            } else {
                "open"
            }
        ));
    }
    if s.runs > 0 {
        let done = s.steps.iter().filter(|st| st.completed).count();
        out.push_str(&format!(
            "fulfilment  run {} — {done}/{} steps done\n",
            s.runs,
            s.steps.len()
        ));
    }
    if let Some(r) = &s.recovery {
        out.push_str(&format!(
            "recovery    {} of {} — {}\n",
            r.recovery,
            s.recoveries,
            if r.actions.is_empty() {
                "no action yet".to_owned()
            } else {
                r.actions.join(", ")
            }
        ));
    }
    if !s.feedback.is_empty() {
        let f: Vec<String> = s.feedback.iter().map(u32::to_string).collect();
        out.push_str(&format!("feedback    {}\n", f.join(", ")));
    }
    if s.closed != 0 {
        out.push_str(&format!("closed      {}\n", resolution(s.closed)));
    }
    if !s.tip_sha256.is_empty() {
        let h: String = s
            .tip_sha256
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        out.push_str(&format!("head        #{} sha256 {h}…\n", s.tip_sequence));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(seq: u64, writer: &str, p: Payload) -> Envelope {
        Envelope {
            sequence: seq,
            writer: writer.into(),
            event_type: casework_domain::EventType::of(&p).to_string(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: 1_750_000_000 + seq as i64,
                nanos: 0,
            }),
            payload: Some(p),
            ..Default::default()
        }
    }

    #[test]
    fn events_land_in_their_writers_lane() {
        let events = vec![
            env(
                1,
                "intake",
                Payload::CaseOpened(pb::CaseOpened {
                    service_code: "refund".into(),
                    channel: 5,
                    ..Default::default()
                }),
            ),
            env(
                2,
                "fulfilment",
                Payload::FulfilmentFailed(pb::FulfilmentFailed {
                    run: 1,
                    step_name: "ship".into(),
                    ..Default::default()
                }),
            ),
            env(
                3,
                "recovery",
                Payload::CaseEscalated(pb::CaseEscalated {
                    tier: "tier2".into(),
                    ..Default::default()
                }),
            ),
        ];
        let state = api::CaseState {
            status: "recovering".into(),
            events: 3,
            ..Default::default()
        };
        let text = render(
            "acme/X",
            &events,
            &state,
            ("2025-01", "abcdef0123456789ff"),
            Some("3"),
        );
        let rows: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .collect();
        assert_eq!(rows.len(), 3, "{text}");
        // given the event / then the lane it is in
        for (row, (lane, needle)) in rows.iter().zip([
            (0, "opened: refund via web"),
            (1, "run 1 FAILED at ship"),
            (2, "escalated to tier2"),
        ]) {
            let cols: Vec<&str> = row.split_once("Z  ").unwrap().1.split(" | ").collect();
            assert!(cols[lane].contains(needle), "{row}");
            for (i, c) in cols.iter().enumerate() {
                if i != lane {
                    assert!(c.trim().is_empty(), "{row}");
                }
            }
        }
        assert!(text.contains("as of 3") && text.contains("catalogue 2025-01"));
        assert!(text.contains("status      recovering"));
    }

    #[test]
    fn long_text_is_cut_to_the_lane() {
        assert_eq!(fit("abc", 5), "abc  ");
        assert_eq!(fit("abcdefgh", 5).chars().count(), 5);
        assert!(fit("abcdefgh", 5).ends_with('…'));
    }
}
