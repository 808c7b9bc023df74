//! Ownership enforced by the broker (DESIGN.md §3): every service connects
//! with its own NATS user whose publish permissions cover only its own
//! events, `case.*.*.<writer>.>`, and its own timers, plus the JetStream API
//! calls it needs. The ledger and integrators read everything and publish no
//! event. Nobody but an operator may delete or purge a stream.
//!
//! [`nats_authorization`] renders these rules as a nats-server
//! `authorization` block; the local start, the tests and the Kubernetes
//! Secrets use the same scheme.

use casework_domain::Writer;

use crate::jetstream::{CASES_STREAM, TIMERS_STREAM};

/// Who connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Principal {
    /// One of the three writing services.
    Writer(Writer),
    /// The ledger: reads every case, writes no event.
    Ledger,
    /// A read-only integrator: may create its own consumers and read, never
    /// publish an event.
    Integrator,
    /// An operator: everything (stream administration, backups).
    Admin,
}

impl Principal {
    /// The default user name.
    pub fn user(self) -> &'static str {
        match self {
            Principal::Writer(w) => w.as_str(),
            Principal::Ledger => "ledger",
            Principal::Integrator => "integrator",
            Principal::Admin => "admin",
        }
    }
}

/// Publish and subscribe allow-lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects the principal may publish to (`None`: anything).
    pub publish_allow: Option<Vec<String>>,
    /// Subjects the principal may subscribe to (`None`: anything).
    pub subscribe_allow: Option<Vec<String>>,
}

/// The JetStream API calls a reader of a stream needs: stream info, direct
/// get, its own durable consumers (create, info, pull, ack) — no delete, no
/// purge, no update.
fn reader_api(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        // Unnamed (ordered, ephemeral) consumers, as `CaseLog::tail` uses.
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
        format!("$JS.ACK.{stream}.>"),
    ]
}

/// The permissions of `p`.
pub fn permissions(p: Principal) -> Permissions {
    let inbox = vec!["_INBOX.>".to_owned()];
    match p {
        Principal::Admin => Permissions {
            publish_allow: None,
            subscribe_allow: None,
        },
        Principal::Writer(w) => {
            let mut publish = vec![
                format!("case.*.*.{w}.>"),
                format!("timer.{w}.>"),
                "$JS.API.INFO".to_owned(),
                // Services create the streams if absent; they can never
                // delete, purge or reconfigure them.
                format!("$JS.API.STREAM.CREATE.{CASES_STREAM}"),
                format!("$JS.API.STREAM.CREATE.{TIMERS_STREAM}"),
            ];
            publish.extend(reader_api(CASES_STREAM));
            publish.extend(reader_api(TIMERS_STREAM));
            Permissions {
                publish_allow: Some(publish),
                subscribe_allow: Some(inbox),
            }
        }
        Principal::Ledger | Principal::Integrator => {
            let mut publish = vec!["$JS.API.INFO".to_owned()];
            publish.extend(reader_api(CASES_STREAM));
            let mut subscribe = inbox;
            // Live core subscriptions to events (no JetStream state needed).
            subscribe.push("case.>".to_owned());
            Permissions {
                publish_allow: Some(publish),
                subscribe_allow: Some(subscribe),
            }
        }
    }
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A nats-server `authorization { users: [...] }` block for `users`
/// (principal, user name, password).
pub fn nats_authorization(users: &[(Principal, &str, &str)]) -> String {
    let mut out = String::from("authorization {\n  users: [\n");
    for (p, user, password) in users {
        let perms = permissions(*p);
        out.push_str(&format!("    {{ user: {user:?}, password: {password:?}"));
        if perms.publish_allow.is_some() || perms.subscribe_allow.is_some() {
            out.push_str(", permissions: {");
            if let Some(publish) = &perms.publish_allow {
                out.push_str(&format!(" publish: {{ allow: {} }}", list(publish)));
            }
            if let Some(sub) = &perms.subscribe_allow {
                out.push_str(&format!(", subscribe: {{ allow: {} }}", list(sub)));
            }
            out.push_str(" }");
        }
        out.push_str(" }\n");
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_publish_only_their_own_events() {
        for w in Writer::ALL {
            let p = permissions(Principal::Writer(w)).publish_allow.unwrap();
            let events: Vec<_> = p.iter().filter(|s| s.starts_with("case.")).collect();
            assert_eq!(events, vec![&format!("case.*.*.{w}.>")]);
            assert!(
                !p.iter()
                    .any(|s| s.contains("DELETE") || s.contains("PURGE") || s.contains("UPDATE"))
            );
        }
        for p in [Principal::Ledger, Principal::Integrator] {
            let publish = permissions(p).publish_allow.unwrap();
            assert!(
                !publish
                    .iter()
                    .any(|s| s.starts_with("case.") || s.starts_with("timer."))
            );
        }
        let conf = nats_authorization(&[(Principal::Writer(Writer::Intake), "intake", "pw")]);
        assert!(conf.contains("\"case.*.*.intake.>\""), "{conf}");
    }
}
