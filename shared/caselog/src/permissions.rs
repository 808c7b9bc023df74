//! Least privilege on the broker (DESIGN.md §3): every process connects with
//! its own NATS user, allowed exactly what it needs and nothing another
//! principal could abuse.
//!
//! - A writing service publishes only its own events, `case.*.*.<writer>.>`,
//!   and (fulfilment, recovery) its own timers, `timer.<writer>.>`.
//! - Consumers are permitted **by name**: each service may create, read,
//!   pull from and acknowledge only its own durable consumers
//!   ([`durables`]) and the tail of each of its instances ([`tail_consumer`]);
//!   nobody may create an unnamed consumer (the legacy
//!   `$JS.API.CONSUMER.CREATE.<stream>` takes the name from the body, so it
//!   could re-create another principal's consumer with other filters).
//! - A per-tenant integrator reads only `case.<tenant>.>`: its consumers,
//!   named in its user, may only be created with a filter under its tenant
//!   (the server checks that the filter in the create subject is the one in
//!   the request), its direct gets are only by subject under its tenant, and
//!   its live subscriptions only `case.<tenant>.>`.
//! - Every user receives replies only on its own inbox prefix
//!   (`_INBOX_<user>.`; see [`inbox_prefix`]), so nobody reads the pull
//!   deliveries or API replies meant for another.
//! - Nobody but an operator may delete, purge or reconfigure a stream.
//!
//! The broker cannot check a message's headers, so the rest is enforced by
//! the readers: a fire is acted on only if its schedule was the reader's own
//! (`Nats-Scheduler`), and an event whose type is not owned by the writer in
//! its subject and envelope parks the case.
//!
//! [`nats_authorization`] renders these rules as a nats-server
//! `authorization` block; the local start, the tests and the Kubernetes
//! Helm values use the same scheme.

use casework_domain::Writer;

use crate::jetstream::{CASES_STREAM, CHECKPOINTS_STREAM, KEYS_STREAM, TIMERS_STREAM};

/// Intake's closer: closes a case once its promise is settled.
pub const INTAKE_CLOSER: &str = "intake-closer-v2";
/// Fulfilment's work queue of cases to advance.
pub const FULFILMENT_WAKE: &str = "fulfilment-wake";
/// Fulfilment's timer fires.
pub const FULFILMENT_TIMERS: &str = "fulfilment-timers";
/// Recovery's triggers (failures, breaches, feedback).
pub const RECOVERY_TRIGGERS: &str = "recovery-triggers";
/// Recovery's timer fires.
pub const RECOVERY_TIMERS: &str = "recovery-timers";

/// The durable consumers `w` owns, as (stream, name); every instance of the
/// service shares them (they divide the work).
pub fn durables(w: Writer) -> &'static [(&'static str, &'static str)] {
    match w {
        Writer::Intake => &[(CASES_STREAM, INTAKE_CLOSER)],
        Writer::Fulfilment => &[
            (CASES_STREAM, FULFILMENT_WAKE),
            (TIMERS_STREAM, FULFILMENT_TIMERS),
        ],
        Writer::Recovery => &[
            (CASES_STREAM, RECOVERY_TRIGGERS),
            (TIMERS_STREAM, RECOVERY_TIMERS),
        ],
    }
}

/// The name of the tail consumer (a live, unacknowledged read of `CASES`
/// from a position) of `service`'s `instance`: one per instance, so each
/// instance's permissions can name it. Characters a consumer name may not
/// hold (`.`) become `_`.
pub fn tail_consumer(service: &str, instance: &str) -> String {
    format!("{service}-tail-{instance}").replace(['.', '*', '>', ' '], "_")
}

/// The inbox prefix of `user`: replies to its requests (API answers, pull
/// deliveries) arrive under `<prefix>.`, which only it may subscribe to.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{}", user.replace(['.', '*', '>', ' '], "_"))
}

/// A principal's configuration is not one the broker can enforce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(String);

/// Who connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// One of the three writing services, with the names of its instances
    /// (`CASEWORK_INSTANCE`, the pod names in Kubernetes): each instance's
    /// tail consumer is permitted by name.
    Writer {
        /// Which service.
        writer: Writer,
        /// Its instances.
        instances: Vec<String>,
    },
    /// The ledger: reads every case, writes no event.
    Ledger {
        /// Its instances.
        instances: Vec<String>,
    },
    /// A read-only integrator of one tenant, with the names of its
    /// consumers; it never publishes an event.
    Integrator {
        /// The tenant it reads.
        tenant: String,
        /// The consumers it may create, pull from and acknowledge.
        consumers: Vec<String>,
    },
    /// An operator: everything (stream administration, backups).
    Admin,
}

fn check_token(what: &str, s: &str) -> Result<(), Invalid> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Invalid(format!(
            "{what} {s:?} must be a non-empty name of ASCII letters, digits, '-' and '_'"
        )));
    }
    Ok(())
}

impl Principal {
    /// A writing service with its instance names.
    pub fn writer<S: Into<String>>(writer: Writer, instances: impl IntoIterator<Item = S>) -> Self {
        Principal::Writer {
            writer,
            instances: instances.into_iter().map(Into::into).collect(),
        }
    }

    /// The ledger with its instance names.
    pub fn ledger<S: Into<String>>(instances: impl IntoIterator<Item = S>) -> Self {
        Principal::Ledger {
            instances: instances.into_iter().map(Into::into).collect(),
        }
    }

    /// A read-only integrator of `tenant` owning `consumers`. Refused: a
    /// tenant or consumer name that is not a plain token, no consumer, or a
    /// consumer name that a service's consumer has or could have (an
    /// integrator must never be able to touch a service's consumer).
    pub fn integrator<S: Into<String>>(
        tenant: &str,
        consumers: impl IntoIterator<Item = S>,
    ) -> Result<Self, Invalid> {
        check_token("integrator tenant", tenant)?;
        let consumers: Vec<String> = consumers.into_iter().map(Into::into).collect();
        if consumers.is_empty() {
            return Err(Invalid(format!(
                "the integrator of {tenant:?} needs at least one consumer name"
            )));
        }
        for c in &consumers {
            check_token("consumer name", c)?;
            let reserved = Writer::ALL
                .iter()
                .map(|w| w.as_str())
                .chain(["ledger"])
                .find(|s| c == s || c.starts_with(&format!("{s}-")));
            if let Some(s) = reserved {
                return Err(Invalid(format!(
                    "consumer name {c:?} is reserved for the {s} service (names starting {s:?}); choose another, e.g. \"{tenant}-{c}\""
                )));
            }
        }
        Ok(Principal::Integrator {
            tenant: tenant.to_owned(),
            consumers,
        })
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

/// The API calls on one named consumer: create (the name in the subject,
/// with or without a filter after it), info, pull, and (`ack`) acknowledge.
fn consumer_api(stream: &str, name: &str, ack: bool) -> Vec<String> {
    let mut v = vec![
        format!("$JS.API.CONSUMER.CREATE.{stream}.{name}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.{name}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.{name}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"),
    ];
    if ack {
        v.push(format!("$JS.ACK.{stream}.{name}.>"));
    }
    v
}

/// A tail: created afresh at a position (so also deleted), never acked.
fn tail_api(name: &str) -> Vec<String> {
    let mut v = consumer_api(CASES_STREAM, name, false);
    v.push(format!("$JS.API.CONSUMER.DELETE.{CASES_STREAM}.{name}"));
    v
}

/// Reading any case of `CASES` by sequence or subject, and its state.
fn case_reader_api() -> Vec<String> {
    vec![
        "$JS.API.INFO".to_owned(),
        format!("$JS.API.STREAM.INFO.{CASES_STREAM}"),
        format!("$JS.API.DIRECT.GET.{CASES_STREAM}"),
        format!("$JS.API.DIRECT.GET.{CASES_STREAM}.>"),
    ]
}

/// Reading the last message of a data key's subject (direct get), never a
/// customer lookup or a message by sequence.
fn key_reader_api() -> String {
    format!("$JS.API.DIRECT.GET.{KEYS_STREAM}.keys.*.key.*")
}

/// The permissions of `p`, connecting as `user`.
pub fn permissions(user: &str, p: &Principal) -> Permissions {
    let inbox = vec![format!("{}.>", inbox_prefix(user))];
    match p {
        Principal::Admin => Permissions {
            publish_allow: None,
            subscribe_allow: None,
        },
        Principal::Writer { writer, instances } => {
            let w = *writer;
            let mut publish = vec![format!("case.*.*.{w}.>")];
            let has_timers = durables(w).iter().any(|(s, _)| *s == TIMERS_STREAM);
            if has_timers {
                publish.push(format!("timer.{w}.>"));
            }
            publish.extend(case_reader_api());
            // Services create the streams if absent; they can never
            // delete, purge or reconfigure them.
            publish.push(format!("$JS.API.STREAM.CREATE.{CASES_STREAM}"));
            publish.push(format!("$JS.API.STREAM.CREATE.{TIMERS_STREAM}"));
            publish.push(format!("$JS.API.STREAM.INFO.{TIMERS_STREAM}"));
            publish.push(format!("$JS.API.STREAM.CREATE.{CHECKPOINTS_STREAM}"));
            publish.push(format!("$JS.API.STREAM.INFO.{CHECKPOINTS_STREAM}"));
            publish.push(format!("$JS.API.STREAM.CREATE.{KEYS_STREAM}"));
            publish.push(format!("$JS.API.STREAM.INFO.{KEYS_STREAM}"));
            match w {
                // The owner of customers' data keys: makes them (and the
                // lookups), reads them from the stream leader, and erases
                // them (JetStream's secure erase of one message).
                Writer::Intake => publish.extend([
                    "keys.*.key.*".to_owned(),
                    "keys.*.customer.*".to_owned(),
                    format!("$JS.API.STREAM.MSG.GET.{KEYS_STREAM}"),
                    format!("$JS.API.STREAM.MSG.DELETE.{KEYS_STREAM}"),
                ]),
                // Decrypts a task's input for its worker: reads a key by
                // its subject, nothing else of the stream.
                Writer::Fulfilment => publish.push(key_reader_api()),
                Writer::Recovery => {}
            }
            for (stream, name) in durables(w) {
                publish.extend(consumer_api(stream, name, true));
            }
            for i in instances {
                publish.extend(tail_api(&tail_consumer(w.as_str(), i)));
            }
            Permissions {
                publish_allow: Some(publish),
                subscribe_allow: Some(inbox),
            }
        }
        Principal::Ledger { instances } => {
            let mut publish = case_reader_api();
            for i in instances {
                publish.extend(tail_api(&tail_consumer("ledger", i)));
            }
            // Its signed checkpoints, and nothing else it writes.
            publish.push(crate::jetstream::CHECKPOINT_SUBJECT.to_owned());
            // Customers' data keys, to show auditors plaintext.
            publish.push(key_reader_api());
            Permissions {
                publish_allow: Some(publish),
                subscribe_allow: Some(inbox),
            }
        }
        Principal::Integrator { tenant, consumers } => {
            let mut publish = vec![
                "$JS.API.INFO".to_owned(),
                // The last event on a subject of its tenant, never a read
                // by sequence (which would reach any tenant).
                format!("$JS.API.DIRECT.GET.{CASES_STREAM}.case.{tenant}.>"),
                // The ledger's signed checkpoints (no tenant data: sizes and
                // roots), to keep them and act as a witness.
                format!("$JS.API.DIRECT.GET.{CHECKPOINTS_STREAM}"),
                format!("$JS.API.DIRECT.GET.{CHECKPOINTS_STREAM}.>"),
            ];
            for c in consumers {
                publish.extend([
                    // Only with a single filter under its tenant, which the
                    // server checks against the request.
                    format!("$JS.API.CONSUMER.CREATE.{CASES_STREAM}.{c}.case.{tenant}.>"),
                    format!("$JS.API.CONSUMER.INFO.{CASES_STREAM}.{c}"),
                    format!("$JS.API.CONSUMER.MSG.NEXT.{CASES_STREAM}.{c}"),
                    format!("$JS.API.CONSUMER.DELETE.{CASES_STREAM}.{c}"),
                    format!("$JS.ACK.{CASES_STREAM}.{c}.>"),
                ]);
            }
            let mut subscribe = inbox;
            // Live core subscriptions to its tenant's events, and to the
            // checkpoints as they are signed.
            subscribe.push(format!("case.{tenant}.>"));
            subscribe.push(crate::jetstream::CHECKPOINT_SUBJECT.to_owned());
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
        let perms = permissions(user, p);
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

    fn publish(user: &str, p: &Principal) -> Vec<String> {
        permissions(user, p).publish_allow.unwrap()
    }

    #[test]
    fn writers_publish_only_their_own_events_and_name_every_consumer() {
        for w in Writer::ALL {
            let p = publish(w.as_str(), &Principal::writer(w, [format!("{w}-0")]));
            let events: Vec<_> = p.iter().filter(|s| s.starts_with("case.")).collect();
            assert_eq!(events, vec![&format!("case.*.*.{w}.>")]);
            assert!(!p.iter().any(|s| s.contains("PURGE")
                || s.contains("UPDATE")
                || s.contains("STREAM.DELETE")));
            for s in p
                .iter()
                .filter(|s| s.contains("CONSUMER.") || s.starts_with("$JS.ACK."))
            {
                // The consumer's name is the token after the stream's.
                let tokens: Vec<_> = s.split('.').collect();
                let name = tokens
                    .iter()
                    .position(|t| *t == "CASES" || *t == "TIMERS")
                    .and_then(|i| tokens.get(i + 1))
                    .copied()
                    .unwrap_or_default();
                assert!(
                    name.starts_with(&format!("{w}-")),
                    "{w} may touch only its own consumers: {s}"
                );
            }
            assert!(
                p.contains(&format!("$JS.API.CONSUMER.DELETE.CASES.{w}-tail-{w}-0")),
                "{p:?}"
            );
        }
        let intake = publish("intake", &Principal::writer(Writer::Intake, ["intake-0"]));
        assert!(!intake.iter().any(|s| s.starts_with("timer.")));
        let conf = nats_authorization(&[(
            Principal::writer(Writer::Intake, ["intake-0"]),
            "intake",
            "pw",
        )]);
        assert!(conf.contains("\"case.*.*.intake.>\""), "{conf}");
        assert!(conf.contains("\"_INBOX_intake.>\""), "{conf}");
    }

    #[test]
    fn integrators_read_only_their_tenant() {
        let p = Principal::integrator("acme", ["acme-crm"]).unwrap();
        let perms = permissions("acme-sync", &p);
        let publish = perms.publish_allow.unwrap();
        assert!(
            !publish
                .iter()
                .any(|s| s.starts_with("case.") || s.starts_with("timer."))
        );
        // Everything that reaches CASES is narrowed to its tenant; the rest
        // is the server's info and the checkpoints (no tenant data).
        for s in &publish {
            assert!(
                s == "$JS.API.INFO" || s.contains("acme") || s.contains(".CHECKPOINTS"),
                "{s} is not narrowed to acme"
            );
        }
        assert_eq!(
            perms.subscribe_allow.unwrap(),
            vec![
                "_INBOX_acme-sync.>".to_owned(),
                "case.acme.>".to_owned(),
                "tlog.checkpoint".to_owned()
            ]
        );
    }

    #[test]
    fn integrator_names_that_could_touch_a_service_are_refused() {
        for bad in [
            "intake-closer-v2",
            "recovery-timers",
            "ledger-tail-x",
            "fulfilment",
        ] {
            let e = Principal::integrator("acme", [bad]).unwrap_err();
            assert!(e.to_string().contains("reserved"), "{bad}: {e}");
        }
        assert!(Principal::integrator("acme", ["a.b"]).is_err());
        assert!(Principal::integrator("ac.me", ["crm"]).is_err());
        assert!(Principal::integrator("acme", Vec::<String>::new()).is_err());
    }

    #[test]
    fn tail_names_are_consumer_names() {
        assert_eq!(tail_consumer("intake", "pod.0"), "intake-tail-pod_0");
        assert_eq!(inbox_prefix("a.b"), "_INBOX_a_b");
    }
}
