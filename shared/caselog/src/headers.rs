//! The headers every case event carries besides its two append guards:
//! CloudEvents 1.0 attributes in binary mode (`ce-*`), and the W3C
//! `traceparent`, so integrators and tracing tools understand a message
//! without Casework's code.

use casework_domain::SealedEvent;
use sha2::{Digest, Sha256};

/// Content type of every case event's payload.
pub const CONTENT_TYPE: &str = "application/protobuf; messageType=\"casework.events.v1.Envelope\"";

/// The CloudEvents `type` of an event type, e.g. `casework.events.v1.promise_made`.
pub fn ce_type(event_type: &str) -> String {
    format!("casework.events.v1.{event_type}")
}

/// A deterministic W3C traceparent for an event with no incoming trace
/// context: the trace id is derived from the correlation id (so one
/// customer request is one trace by default) and the span id from the event
/// id.
pub fn derived_traceparent(correlation_id: &str, event_id: &str) -> String {
    let trace = Sha256::digest(correlation_id.as_bytes());
    let span = Sha256::digest(event_id.as_bytes());
    format!(
        "00-{}-{}-01",
        hex::encode(&trace[..16]),
        hex::encode(&span[..8])
    )
}

/// Checks a W3C traceparent (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all
/// zero).
pub fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    matches!(parts.as_slice(), [v, t, s, f]
        if hex(v, 2) && *v != "ff" && hex(t, 32) && hex(s, 16) && hex(f, 2)
            && t.bytes().any(|b| b != b'0') && s.bytes().any(|b| b != b'0'))
}

/// The `ce-*` headers, content type and traceparent of one sealed event.
pub fn event_headers(
    tenant: &str,
    case_id: &str,
    sealed: &SealedEvent,
    correlation_id: &str,
    traceparent: Option<&str>,
) -> Vec<(&'static str, String)> {
    let writer = sealed.event_type.writer();
    let tp = traceparent
        .filter(|t| is_valid_traceparent(t))
        .map(str::to_owned)
        .unwrap_or_else(|| derived_traceparent(correlation_id, sealed.event_id.as_str()));
    vec![
        ("ce-specversion", "1.0".to_owned()),
        ("ce-id", sealed.event_id.to_string()),
        ("ce-source", format!("/casework/{tenant}/{writer}")),
        ("ce-type", ce_type(sealed.event_type.as_str())),
        ("ce-subject", case_id.to_owned()),
        (
            "ce-time",
            sealed
                .occurred_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
        ("ce-tenant", tenant.to_owned()),
        ("ce-casesequence", sealed.case_seq.to_string()),
        ("content-type", CONTENT_TYPE.to_owned()),
        ("traceparent", tp),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents() {
        let tp = derived_traceparent("corr", "ev");
        assert!(is_valid_traceparent(&tp), "{tp}");
        assert_eq!(tp, derived_traceparent("corr", "ev"));
        assert_eq!(&tp[3..35], &derived_traceparent("corr", "other")[3..35]);
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad}");
        }
        assert!(is_valid_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
    }
}
