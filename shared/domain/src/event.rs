//! Event types, their writers and the subject layout of the per-case logs:
//! `case.<tenant>.<case_id>.<writer>.<event_type>`.

use std::fmt;

use crate::pb::envelope::Payload;
use crate::token::{CaseId, Tenant};
use crate::{Error, Result};

/// The three services that write case events. The ledger and casectl only
/// read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Writer {
    /// The front stage.
    Intake,
    /// The back stage.
    Fulfilment,
    /// Service recovery.
    Recovery,
}

impl Writer {
    /// Every writer.
    pub const ALL: [Writer; 3] = [Writer::Intake, Writer::Fulfilment, Writer::Recovery];

    /// The writer's name, as used in subjects and credentials.
    pub fn as_str(self) -> &'static str {
        match self {
            Writer::Intake => "intake",
            Writer::Fulfilment => "fulfilment",
            Writer::Recovery => "recovery",
        }
    }

    /// Parses a writer name.
    pub fn parse(value: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|w| w.as_str() == value)
            .ok_or_else(|| Error::InvalidToken {
                what: "writer",
                value: value.chars().take(80).collect(),
                why: "expected one of intake, fulfilment, recovery".to_owned(),
            })
    }
}

impl fmt::Display for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! event_types {
    ($( $variant:ident => $name:literal, $writer:ident ;)*) => {
        /// Every event type of DESIGN.md §1, in past tense, each with exactly
        /// one writer.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $(
                #[doc = concat!("`", $name, "`, written by ", stringify!($writer), ".")]
                $variant,
            )*
        }

        impl EventType {
            /// Every event type.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),*];

            /// The snake_case name used in subjects and envelopes.
            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $name,)* }
            }

            /// The one service allowed to write this event type.
            pub fn writer(self) -> Writer {
                match self { $(EventType::$variant => Writer::$writer,)* }
            }

            /// The type of a payload.
            pub fn of(payload: &Payload) -> EventType {
                match payload { $(Payload::$variant(_) => EventType::$variant,)* }
            }
        }
    };
}

event_types! {
    CaseOpened => "case_opened", Intake;
    PromiseMade => "promise_made", Intake;
    InteractionRecorded => "interaction_recorded", Intake;
    FeedbackReceived => "feedback_received", Intake;
    CaseWithdrawn => "case_withdrawn", Intake;
    CustomerNotified => "customer_notified", Intake;
    CaseClosed => "case_closed", Intake;
    FulfilmentStarted => "fulfilment_started", Fulfilment;
    StepStarted => "step_started", Fulfilment;
    StepCompleted => "step_completed", Fulfilment;
    StepFailed => "step_failed", Fulfilment;
    PromiseKept => "promise_kept", Fulfilment;
    FulfilmentFailed => "fulfilment_failed", Fulfilment;
    PromiseBroken => "promise_broken", Recovery;
    RecoveryStarted => "recovery_started", Recovery;
    ApologySent => "apology_sent", Recovery;
    CompensationProposed => "compensation_proposed", Recovery;
    CompensationApproved => "compensation_approved", Recovery;
    CompensationDeclined => "compensation_declined", Recovery;
    CompensationGranted => "compensation_granted", Recovery;
    RetryRequested => "retry_requested", Recovery;
    CaseEscalated => "case_escalated", Recovery;
    RecoveryCompleted => "recovery_completed", Recovery;
    PersonalDataErased => "personal_data_erased", Intake;
}

impl EventType {
    /// Parses an event type name.
    pub fn parse(value: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == value)
            .ok_or_else(|| Error::InvalidToken {
                what: "event type",
                value: value.chars().take(80).collect(),
                why: "not an event type of casework.events.v1 (e.g. case_opened, promise_made, step_completed)"
                    .to_owned(),
            })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Subject prefix of every case event.
pub const SUBJECT_PREFIX: &str = "case";

/// The subject of an event: `case.<tenant>.<case_id>.<writer>.<event_type>`.
pub fn subject(tenant: &Tenant, case: &CaseId, event_type: EventType) -> String {
    format!(
        "{SUBJECT_PREFIX}.{tenant}.{case}.{}.{}",
        event_type.writer(),
        event_type
    )
}

/// The filter that selects a case's whole log: `case.<tenant>.<case_id>.>`.
pub fn case_filter(tenant: &Tenant, case: &CaseId) -> String {
    format!("{SUBJECT_PREFIX}.{tenant}.{case}.>")
}

/// The parts of an event subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectParts {
    /// Tenant token.
    pub tenant: Tenant,
    /// Case id token.
    pub case_id: CaseId,
    /// Writer token.
    pub writer: Writer,
    /// Event type token.
    pub event_type: EventType,
}

/// Splits and validates an event subject.
pub fn parse_subject(subject: &str) -> Result<SubjectParts> {
    let parts: Vec<&str> = subject.split('.').collect();
    let [prefix, tenant, case_id, writer, event_type] = parts.as_slice() else {
        return Err(Error::InvalidToken {
            what: "subject",
            value: subject.chars().take(80).collect(),
            why: "expected case.<tenant>.<case_id>.<writer>.<event_type>".to_owned(),
        });
    };
    if *prefix != SUBJECT_PREFIX {
        return Err(Error::InvalidToken {
            what: "subject",
            value: subject.chars().take(80).collect(),
            why: "it does not start with \"case.\"".to_owned(),
        });
    }
    Ok(SubjectParts {
        tenant: Tenant::parse(tenant)?,
        case_id: CaseId::parse(case_id)?,
        writer: Writer::parse(writer)?,
        event_type: EventType::parse(event_type)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_and_has_the_writer_of_design_md() {
        // DESIGN.md §1's 23, and intake's `personal_data_erased` (the
        // erasure of crypto-shredding, DESIGN.md §5).
        assert_eq!(EventType::ALL.len(), 24);
        let count = |w| EventType::ALL.iter().filter(|t| t.writer() == w).count();
        assert_eq!(count(Writer::Intake), 8);
        assert_eq!(count(Writer::Fulfilment), 6);
        assert_eq!(count(Writer::Recovery), 10);
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()).unwrap(), *t);
        }
        assert!(EventType::parse("case_deleted").is_err());
    }

    #[test]
    fn subjects() {
        let t = Tenant::parse("acme").unwrap();
        let c = CaseId::parse("01JD8X3V5R6M2Q4T7W9Y0Z1A2B").unwrap();
        let s = subject(&t, &c, EventType::StepCompleted);
        assert_eq!(
            s,
            "case.acme.01JD8X3V5R6M2Q4T7W9Y0Z1A2B.fulfilment.step_completed"
        );
        let p = parse_subject(&s).unwrap();
        assert_eq!(p.writer, Writer::Fulfilment);
        assert_eq!(p.event_type, EventType::StepCompleted);
        assert_eq!(
            case_filter(&t, &c),
            "case.acme.01JD8X3V5R6M2Q4T7W9Y0Z1A2B.>"
        );
        assert!(parse_subject("case.acme.x.intake.case_opened").is_err());
        assert!(parse_subject("cases.acme.01JD8X3V5R6M2Q4T7W9Y0Z1A2B.intake.case_opened").is_err());
    }
}
