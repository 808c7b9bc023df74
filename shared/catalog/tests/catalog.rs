//! Loading, validation errors, promise deadlines and version sets, through
//! the public API.

use std::path::PathBuf;
use std::time::Duration;

use casework_catalog::{
    Catalog, CatalogPin, Catalogs, DeadlineUnit, Error, Handler, Problem, PurchaseStage,
    RecoveryAction, RecoveryTrigger, SAMPLE_TOML, sample,
};
use chrono::{DateTime, TimeZone, Utc};

/// A small valid catalogue; tests break one line of it at a time.
const BASE: &str = r#"
version = "2026-11-01.1"

[calendars.office]
time_zone = "Europe/Berlin"
working_days = ["mon", "tue", "wed", "thu", "fri"]
opens = "09:00"
closes = "17:00"
holidays = [2026-12-25, "2026-12-26"]

[services.refund]
name = "Refund"
stages = ["post_purchase"]
promise = { deadline = "4 business hours", calendar = "office", outcome = "Money back" }

[[services.refund.steps]]
name = "check"
handler = { type = "manual", queue = "returns_desk" }
timeout = "1h"
retry = { max_attempts = 3, initial_backoff = "1s", max_backoff = "30s", multiplier = 2.0, jitter = 0.2 }

[[services.refund.steps]]
name = "pay"
handler = { type = "simulate", latency_ms = 10, failure_probability = 0.1 }
timeout = "30s"
retry = { max_attempts = 3, initial_backoff = "1s", max_backoff = "30s", multiplier = 2.0, jitter = 0.2 }

[services.refund.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "retry", max_retries = 2 }, { action = "escalate", tier = "tier2" }]
on_promise_broken = [{ action = "apology" }, { action = "compensation", kind = "voucher", amount_minor = 500, currency = "EUR" }]
on_negative_feedback = [{ action = "apology", channel = "email" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 10000 }
"#;

fn problems(text: &str) -> Vec<Problem> {
    match Catalog::from_toml_str(text, "catalog.toml") {
        Err(Error::Invalid { origin, problems }) => {
            assert_eq!(origin, "catalog.toml");
            assert!(!problems.is_empty());
            problems
        }
        Err(other) => panic!("expected Error::Invalid, got {other}"),
        Ok(_) => panic!("expected the catalogue to be rejected:\n{text}"),
    }
}

fn replace(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE lacks {from:?}");
    BASE.replacen(from, to, 1)
}

#[test]
fn base_loads() {
    let catalog = Catalog::from_toml_str(BASE, "catalog.toml").unwrap();
    assert_eq!(catalog.version(), "2026-11-01.1");
    let refund = catalog.service("refund").unwrap();
    assert_eq!(refund.promise.deadline.unit, DeadlineUnit::BusinessHours);
    assert_eq!(refund.steps.len(), 2);
    let office = catalog.calendar("office").unwrap();
    assert_eq!(office.holidays().count(), 2);
}

/// (case, edit, expected service, expected field path, words the message must contain)
type ErrorCase = (
    &'static str,
    String,
    Option<&'static str>,
    &'static str,
    &'static str,
);

#[test]
fn validation_errors_name_service_and_field() {
    let cases: Vec<ErrorCase> = vec![
        (
            "misspelt deadline",
            replace("\"4 business hours\"", "\"4 buisness hours\""),
            Some("refund"),
            "promise.deadline",
            "\"4 business hours\"",
        ),
        (
            "unknown calendar",
            replace("calendar = \"office\"", "calendar = \"ofice\""),
            Some("refund"),
            "promise.calendar",
            "unknown calendar",
        ),
        (
            "business deadline without calendar",
            replace("calendar = \"office\", ", ""),
            Some("refund"),
            "promise.calendar",
            "needs a calendar",
        ),
        (
            "calendar on a real-time deadline",
            replace("\"4 business hours\"", "\"4 hours\""),
            Some("refund"),
            "promise.calendar",
            "counts real time",
        ),
        (
            "unknown time zone",
            replace("Europe/Berlin", "Europe/Berln"),
            None,
            "calendars.office.time_zone",
            "IANA",
        ),
        (
            "closing before opening",
            replace("closes = \"17:00\"", "closes = \"08:00\""),
            None,
            "calendars.office.closes",
            "not after opening",
        ),
        (
            "bad clock time",
            replace("opens = \"09:00\"", "opens = \"9am\""),
            None,
            "calendars.office.opens",
            "HH:MM",
        ),
        (
            "no working days",
            replace(
                "working_days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]",
                "working_days = []",
            ),
            None,
            "calendars.office.working_days",
            "at least one",
        ),
        (
            "bad day name",
            replace("\"wed\"", "\"wednes\""),
            None,
            "calendars.office.working_days[2]",
            "day of the week",
        ),
        (
            "bad holiday",
            replace("\"2026-12-26\"", "\"26.12.2026\""),
            None,
            "calendars.office.holidays[1]",
            "2026-12-25",
        ),
        (
            "empty workflow",
            {
                let start = BASE.find("[[services.refund.steps]]").unwrap();
                let end = BASE.find("[services.refund.recovery]").unwrap();
                format!("{}steps = []\n{}", &BASE[..start], &BASE[end..])
            },
            Some("refund"),
            "steps",
            "empty",
        ),
        (
            "duplicate step name",
            replace("name = \"pay\"", "name = \"check\""),
            Some("refund"),
            "steps[1].name",
            "twice",
        ),
        (
            "step name not a token",
            replace("name = \"pay\"", "name = \"Pay Out\""),
            Some("refund"),
            "steps[1].name",
            "\"pay_out\"",
        ),
        (
            "probability out of range",
            replace("failure_probability = 0.1", "failure_probability = 1.5"),
            Some("refund"),
            "steps[1].handler.failure_probability",
            "probability",
        ),
        (
            "bad timeout",
            replace("timeout = \"30s\"", "timeout = \"soon\""),
            Some("refund"),
            "steps[1].timeout",
            "not a duration",
        ),
        (
            "zero attempts",
            replace("max_attempts = 3", "max_attempts = 0"),
            Some("refund"),
            "steps[0].retry.max_attempts",
            "including the first",
        ),
        (
            "shrinking multiplier",
            replace("multiplier = 2.0", "multiplier = 0.5"),
            Some("refund"),
            "steps[0].retry.multiplier",
            "1.0",
        ),
        (
            "jitter out of range",
            replace("jitter = 0.2", "jitter = 2.0"),
            Some("refund"),
            "steps[0].retry.jitter",
            "fraction",
        ),
        (
            "cap below first delay",
            replace("max_backoff = \"30s\"", "max_backoff = \"100ms\""),
            Some("refund"),
            "steps[0].retry.max_backoff",
            "at least",
        ),
        (
            "bad compensation currency",
            replace("currency = \"EUR\" }]", "currency = \"euro\" }]"),
            Some("refund"),
            "recovery.on_promise_broken[1].currency",
            "ISO 4217",
        ),
        (
            "compensation currency differs from limits",
            replace("currency = \"EUR\" }]", "currency = \"USD\" }]"),
            Some("refund"),
            "recovery.on_promise_broken[1].currency",
            "limits.currency EUR",
        ),
        (
            "bad limits currency",
            replace(
                "limits = { currency = \"EUR\"",
                "limits = { currency = \"EU\"",
            ),
            Some("refund"),
            "recovery.limits.currency",
            "three uppercase",
        ),
        (
            "automatic limit above budget",
            replace(
                "auto_approve_limit_minor = 1000",
                "auto_approve_limit_minor = 100000",
            ),
            Some("refund"),
            "recovery.limits.auto_approve_limit_minor",
            "daily budget",
        ),
        (
            "retry rung with zero retries",
            replace("max_retries = 2", "max_retries = 0"),
            Some("refund"),
            "recovery.on_step_failed[0].max_retries",
            "at least 1",
        ),
        (
            "threshold outside 1-5",
            replace(
                "negative_feedback_threshold = 2",
                "negative_feedback_threshold = 7",
            ),
            Some("refund"),
            "recovery.negative_feedback_threshold",
            "1 (worst) to 5",
        ),
        (
            "empty ladder",
            replace(
                "on_negative_feedback = [{ action = \"apology\", channel = \"email\" }]",
                "on_negative_feedback = []",
            ),
            Some("refund"),
            "recovery.on_negative_feedback",
            "empty",
        ),
        (
            "service code not a token",
            BASE.replace("services.refund", "services.Refund"),
            Some("Refund"),
            "",
            "lowercase",
        ),
        (
            "bad version",
            replace("version = \"2026-11-01.1\"", "version = \"2026 11 01\""),
            None,
            "version",
            "catalogue version",
        ),
    ];
    for (case, text, service, field, words) in cases {
        let found = problems(&text);
        let hit = found
            .iter()
            .find(|p| p.service.as_deref() == service && p.field == field);
        let Some(problem) = hit else {
            panic!("{case}: no problem at {service:?} {field:?}; got:\n{found:#?}");
        };
        assert!(problem.message.contains(words), "{case}: {problem}");
        let shown = problem.to_string();
        assert!(shown.starts_with("catalog.toml: "), "{case}: {shown}");
        if let Some(service) = service {
            assert!(
                shown.contains(&format!("service \"{service}\"")),
                "{case}: {shown}"
            );
        }
        assert!(shown.contains(field), "{case}: {shown}");
    }
}

/// (case, edit, expected service, expected field path, expected line, words)
type SyntaxCase = (
    &'static str,
    String,
    Option<&'static str>,
    &'static str,
    usize,
    &'static str,
);

#[test]
fn toml_errors_have_line_service_and_field() {
    let line_of = |text: &str, needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .unwrap()
    };
    let unknown = replace("name = \"Refund\"", "name = \"Refund\"\ncolour = \"red\"");
    let missing = replace("timeout = \"1h\"\n", "");
    let duplicate = format!("{BASE}\n[services.refund]\nname = \"Again\"\n");
    let bad_stage = replace("[\"post_purchase\"]", "[\"post_purchse\"]");
    let bad_handler = replace("type = \"manual\"", "type = \"manul\"");
    let unknown_in_inline = replace(
        "queue = \"returns_desk\"",
        "queue = \"returns_desk\", colour = 1",
    );
    let missing_retry_max = replace(
        "retry = { max_attempts = 3, initial_backoff = \"1s\", max_backoff = \"30s\", multiplier = 2.0, jitter = 0.2 }\n\n[services",
        "retry = { initial_backoff = \"1s\", max_backoff = \"30s\", multiplier = 2.0, jitter = 0.2 }\n\n[services",
    );
    let missing_ladder_max = replace(
        "{ action = \"retry\", max_retries = 2 }",
        "{ action = \"retry\" }",
    );
    let syntax = replace("name = \"Refund\"", "name = \"Refund");
    let cases: Vec<SyntaxCase> = vec![
        (
            "unknown field",
            unknown.clone(),
            Some("refund"),
            "colour",
            line_of(&unknown, "colour"),
            "unknown field `colour`",
        ),
        (
            "missing field",
            missing.clone(),
            Some("refund"),
            "steps[0].timeout",
            line_of(&missing, "[[services.refund.steps]]"),
            "missing field `timeout`",
        ),
        (
            "duplicate service code",
            duplicate.clone(),
            Some("refund"),
            "",
            duplicate.lines().count() - 1,
            "duplicate key",
        ),
        (
            "unknown stage",
            bad_stage.clone(),
            Some("refund"),
            "stages",
            line_of(&bad_stage, "post_purchse"),
            "unknown variant `post_purchse`",
        ),
        (
            "unknown handler type",
            bad_handler.clone(),
            Some("refund"),
            "steps[0].handler",
            line_of(&bad_handler, "manul"),
            "unknown variant `manul`",
        ),
        (
            "unknown field in inline table",
            unknown_in_inline.clone(),
            Some("refund"),
            "steps[0].handler",
            line_of(&unknown_in_inline, "colour"),
            "unknown field `colour`",
        ),
        (
            "retry policy without max_attempts",
            missing_retry_max.clone(),
            Some("refund"),
            "steps[1].retry.max_attempts",
            line_of(&missing_retry_max, "retry = { initial_backoff"),
            "missing field `max_attempts`",
        ),
        (
            "retry rung without max_retries",
            missing_ladder_max.clone(),
            Some("refund"),
            "recovery.on_step_failed.max_retries",
            line_of(&missing_ladder_max, "{ action = \"retry\" }"),
            "missing field `max_retries`",
        ),
        (
            "syntax error",
            syntax.clone(),
            Some("refund"),
            "name",
            line_of(&syntax, "name = \"Refund"),
            "",
        ),
    ];
    for (case, text, service, field, line, words) in cases {
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{case}: {found:#?}");
        let p = &found[0];
        assert_eq!(p.service.as_deref(), service, "{case}: {p}");
        assert_eq!(p.field, field, "{case}: {p}");
        assert_eq!(p.position.map(|(l, _)| l), Some(line), "{case}: {p}");
        assert!(p.message.contains(words), "{case}: {p}");
        assert!(
            p.to_string().starts_with(&format!("catalog.toml:{line}:")),
            "{case}: {p}"
        );
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = replace("failure_probability = 0.1", "failure_probability = -1.0")
        .replace("\"4 business hours\"", "\"soon\"")
        .replace("Europe/Berlin", "Mars/Olympus");
    let found = problems(&text);
    let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
    assert!(fields.contains(&"promise.deadline"), "{fields:?}");
    assert!(
        fields.contains(&"steps[1].handler.failure_probability"),
        "{fields:?}"
    );
    assert!(fields.contains(&"calendars.office.time_zone"), "{fields:?}");
    let count = fields.len();
    let shown = Error::Invalid {
        origin: "catalog.toml".into(),
        problems: found,
    }
    .to_string();
    assert_eq!(shown.lines().count(), count);
}

fn at_utc(y: i32, m: u32, d: u32, hh: u32, mm: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, hh, mm, 0).unwrap()
}

#[test]
fn sample_loads_and_is_complete() {
    let catalog = sample();
    assert_eq!(catalog.version(), "2026-11-01.1");
    assert_eq!(catalog.digest().len(), 64);
    assert!(catalog.services().count() >= 5);
    for stage in PurchaseStage::ALL {
        assert!(catalog.services_at(stage).count() > 0, "{stage}");
    }
    let non_utc = catalog.calendars().any(|c| c.time_zone() != chrono_tz::UTC);
    let always = catalog.calendars().any(|c| {
        c.working_days().len() == 7 && c.working_day_length() == Duration::from_secs(86_400)
    });
    assert!(non_utc && always);
    let handlers = catalog
        .services()
        .flat_map(|s| &s.steps)
        .map(|s| &s.handler);
    let (mut simulate, mut external, mut manual) = (0, 0, 0);
    for handler in handlers {
        match handler {
            Handler::Simulate { .. } => simulate += 1,
            Handler::External { .. } => external += 1,
            Handler::Manual { .. } => manual += 1,
        }
    }
    assert!(simulate > 0 && external > 0 && manual > 0);
    for service in catalog.services() {
        for trigger in [
            RecoveryTrigger::StepFailed,
            RecoveryTrigger::PromiseBroken,
            RecoveryTrigger::NegativeFeedback,
        ] {
            assert!(!service.recovery.ladder(trigger).is_empty());
        }
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample/catalog.toml");
    let from_file = Catalog::load(&path).unwrap();
    assert_eq!(from_file.digest(), catalog.digest());
    assert_eq!(from_file.service("refund"), catalog.service("refund"));
}

#[test]
fn promise_deadlines_from_the_sample() {
    let catalog = sample();
    // product_enquiry: 4 business hours, Berlin office 09:00-17:30 Mon-Fri.
    // Friday 6 Nov 2026 16:00 CET (15:00 UTC): 1.5 h Friday, 2.5 h Monday
    // from 09:00 -> Monday 11:30 CET = 10:30 UTC.
    let enquiry = catalog.service("product_enquiry").unwrap();
    assert_eq!(
        enquiry.promise_deadline(at_utc(2026, 11, 6, 15, 0)),
        at_utc(2026, 11, 9, 10, 30)
    );
    // installation_appointment: 48 real hours.
    let install = catalog.service("installation_appointment").unwrap();
    assert_eq!(
        install.promise_deadline(at_utc(2026, 11, 7, 3, 0)),
        at_utc(2026, 11, 9, 3, 0)
    );
    // refund: 3 business days; Wed 23 Dec 2026 10:00 CET, with 24-26 and 31
    // Dec holidays: 28, 29, 30 Dec -> Wed 30 Dec 10:00 CET.
    let refund = catalog.service("refund").unwrap();
    assert_eq!(
        refund.promise_deadline(at_utc(2026, 12, 23, 9, 0)),
        at_utc(2026, 12, 30, 9, 0)
    );
    // order_change: 2 business hours in the 24x7 calendar = 2 real hours.
    let change = catalog.service("order_change").unwrap();
    assert_eq!(
        change.promise_deadline(at_utc(2026, 11, 8, 23, 30)),
        at_utc(2026, 11, 9, 1, 30)
    );
    let approval = &refund.recovery.limits;
    assert!(approval.needs_approval(2501) && !approval.needs_approval(2500));
    assert!(refund.recovery.is_negative_feedback(2) && !refund.recovery.is_negative_feedback(3));
    assert!(matches!(
        refund.recovery.ladder(RecoveryTrigger::StepFailed)[0],
        RecoveryAction::Retry { max_retries: 2 }
    ));
}

fn with_version(version: &str, extra: &str) -> String {
    format!(
        "{}{extra}",
        SAMPLE_TOML.replace(
            "version = \"2026-11-01.1\"",
            &format!("version = \"{version}\"")
        )
    )
}

#[test]
fn catalogs_lookup_by_version() {
    let dir = std::env::temp_dir().join(format!("casework-catalog-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let versions = [
        "2026-11-01.1",
        "2026-11-01.2",
        "2026-11-01.10",
        "2026-09-01.1",
    ];
    for (i, version) in versions.iter().enumerate() {
        std::fs::write(dir.join(format!("c{i}.toml")), with_version(version, "")).unwrap();
    }
    // A copy of a file with identical bytes is accepted, other files ignored.
    std::fs::write(dir.join("c0-copy.toml"), with_version(versions[0], "")).unwrap();
    std::fs::write(dir.join("README.md"), "not a catalogue").unwrap();
    let catalogs = Catalogs::load_dir(&dir).unwrap();
    assert_eq!(catalogs.len(), 4);
    assert_eq!(catalogs.current().version(), "2026-11-01.10");
    let ordered: Vec<String> = catalogs.versions().map(ToString::to_string).collect();
    assert_eq!(
        ordered,
        [
            "2026-09-01.1",
            "2026-11-01.1",
            "2026-11-01.2",
            "2026-11-01.10"
        ]
    );
    let pin = catalogs.get("2026-11-01.2").unwrap().pin();
    assert_eq!(catalogs.pinned(&pin).unwrap().version(), "2026-11-01.2");
    assert!(catalogs.get("2030-01-01.1").is_none());
    let unknown = CatalogPin {
        version: "2030-01-01.1".into(),
        digest: pin.digest.clone(),
    };
    assert!(matches!(
        catalogs.pinned(&unknown),
        Err(Error::UnknownVersion { .. })
    ));
    let altered = CatalogPin {
        version: pin.version.clone(),
        digest: "0".repeat(64),
    };
    assert!(matches!(
        catalogs.pinned(&altered),
        Err(Error::DigestMismatch { .. })
    ));

    // Same version, different bytes: refused, naming both files.
    std::fs::write(
        dir.join("c9.toml"),
        with_version(versions[1], "\n# edited\n"),
    )
    .unwrap();
    let err = Catalogs::load_dir(&dir).unwrap_err();
    let Error::ConflictingVersion {
        version,
        first,
        second,
        ..
    } = &err
    else {
        panic!("expected a conflict, got {err}");
    };
    assert_eq!(version, "2026-11-01.2");
    assert!(
        first.ends_with("c1.toml") && second.ends_with("c9.toml"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn catalogs_errors() {
    assert!(matches!(
        Catalogs::new(Vec::new()),
        Err(Error::NoCatalog { .. })
    ));
    let missing = Catalogs::load_files(["/nonexistent/catalog.toml"]).unwrap_err();
    assert!(matches!(missing, Error::Read { .. }));
    assert!(missing.to_string().contains("/nonexistent/catalog.toml"));
    let a = Catalog::from_toml_str(&with_version("7", ""), "a.toml").unwrap();
    let b = Catalog::from_toml_str(&with_version("7", " "), "b.toml").unwrap();
    assert!(matches!(
        Catalogs::new([a.clone(), b]),
        Err(Error::ConflictingVersion { .. })
    ));
    assert_eq!(Catalogs::new([a.clone(), a]).unwrap().len(), 1);
}
