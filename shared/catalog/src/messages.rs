//! What customers are told: message templates per trigger, channel and
//! locale, with named placeholders, validated when the catalogue loads and
//! rendered by the services into the text an event records.
//!
//! The schema (every table optional):
//!
//! ```toml
//! [messages]
//! default_locale = "en"                     # when the customer's is not covered
//!
//! [messages.de]
//! deadline_format = "%A, %-d. %B %Y um %H:%M %Z"
//! promise_made = "Vielen Dank. {outcome}: bis {deadline}. Ihre Vorgangsnummer ist {case}."
//!
//! [messages.de.email]                       # a channel's own wording
//! promise_made = "Guten Tag, …"
//!
//! [services.refund.messages.en]             # a service's own wording
//! compensation_granted = "We have refunded {amount} to your original payment method."
//! ```
//!
//! A message is looked up for the customer's locale (`de-AT`, then `de`),
//! then the catalogue's default locale, then `en`; within a locale, the
//! service's own templates before the catalogue's before the built-in set
//! (`builtin.toml`, English and German), and a channel's own wording before
//! the locale's. Every trigger therefore always has a message; the template
//! id recorded with the text names exactly which key it came from.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::model::Channel;

/// Why a customer is told something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageTrigger {
    /// The case was opened and its promise made (intake).
    PromiseMade,
    /// The case closed with the promise kept on time (intake).
    PromiseKept,
    /// The case closed with the promise kept, but late (intake).
    PromiseKeptLate,
    /// The apology when the deadline passed (recovery).
    PromiseBroken,
    /// The apology for any other trigger: a step failed for good, bad
    /// feedback (recovery).
    Apology,
    /// A compensation was granted (recovery).
    CompensationGranted,
    /// The case closed after recovery won the customer back (intake).
    ClosedRecovered,
    /// The case closed because the customer withdrew (intake).
    ClosedWithdrawn,
    /// The case closed neither kept nor recovered (intake).
    ClosedUnresolved,
}

impl MessageTrigger {
    /// Every trigger, in schema order.
    pub const ALL: [Self; 9] = [
        Self::PromiseMade,
        Self::PromiseKept,
        Self::PromiseKeptLate,
        Self::PromiseBroken,
        Self::Apology,
        Self::CompensationGranted,
        Self::ClosedRecovered,
        Self::ClosedWithdrawn,
        Self::ClosedUnresolved,
    ];

    /// The trigger as written in catalogues and template ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PromiseMade => "promise_made",
            Self::PromiseKept => "promise_kept",
            Self::PromiseKeptLate => "promise_kept_late",
            Self::PromiseBroken => "promise_broken",
            Self::Apology => "apology",
            Self::CompensationGranted => "compensation_granted",
            Self::ClosedRecovered => "closed_recovered",
            Self::ClosedWithdrawn => "closed_withdrawn",
            Self::ClosedUnresolved => "closed_unresolved",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The placeholders a message for this trigger may use.
    pub fn placeholders(self) -> &'static [Placeholder] {
        use Placeholder::*;
        match self {
            Self::CompensationGranted => &[Service, Outcome, Deadline, Case, Amount],
            _ => &[Service, Outcome, Deadline, Case],
        }
    }
}

/// A named value a template may show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// The service's name (`Refund`).
    Service,
    /// The promised outcome, as promised to the customer.
    Outcome,
    /// The promise's deadline in the customer's time zone and locale.
    Deadline,
    /// The case reference.
    Case,
    /// The amount granted, formatted for the locale (compensations only).
    Amount,
}

impl Placeholder {
    const ALL: [Self; 5] = [
        Self::Service,
        Self::Outcome,
        Self::Deadline,
        Self::Case,
        Self::Amount,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Outcome => "outcome",
            Self::Deadline => "deadline",
            Self::Case => "case",
            Self::Amount => "amount",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Value(Placeholder),
}

/// One validated template.
#[derive(Debug, Clone, PartialEq)]
struct Template {
    id: String,
    parts: Vec<Part>,
}

/// The values a message is rendered with.
#[derive(Debug, Clone)]
pub struct MessageContext<'a> {
    /// The service's name.
    pub service: &'a str,
    /// The promised outcome.
    pub outcome: &'a str,
    /// The promise's deadline.
    pub deadline: DateTime<Utc>,
    /// The customer's time zone, the deadline is shown in.
    pub time_zone: Tz,
    /// The case reference.
    pub case: &'a str,
    /// The amount granted, in minor units of an ISO 4217 currency.
    pub amount: Option<(i64, &'a str)>,
}

/// A rendered message: what the customer is told, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMessage {
    /// The key of the template, e.g. `services.refund.messages.de.email.apology`
    /// or `builtin.en.promise_made`.
    pub template_id: String,
    /// The locale the text is in (`de`, `en-GB`).
    pub locale: String,
    /// The text.
    pub text: String,
}

/// The templates of one locale.
#[derive(Debug, Clone, PartialEq, Default)]
struct LocaleSet {
    deadline_format: Option<String>,
    /// A service's promised outcome in this locale.
    outcome: Option<String>,
    any: BTreeMap<MessageTrigger, Template>,
    by_channel: BTreeMap<(Channel, MessageTrigger), Template>,
}

/// Templates by locale, from one scope (the catalogue, a service, built-in).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct MessageSet(BTreeMap<String, LocaleSet>);

/// A catalogue's customer messages.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Messages {
    pub default_locale: String,
    pub catalogue: MessageSet,
    pub services: BTreeMap<String, MessageSet>,
}

impl Default for Messages {
    fn default() -> Self {
        Self {
            default_locale: "en".to_owned(),
            catalogue: MessageSet::default(),
            services: BTreeMap::new(),
        }
    }
}

/// The built-in templates' text.
const BUILTIN_TOML: &str = include_str!("builtin.toml");

fn builtin() -> &'static MessageSet {
    static SET: OnceLock<MessageSet> = OnceLock::new();
    SET.get_or_init(|| {
        let table: toml::Table = toml::from_str(BUILTIN_TOML).expect("builtin.toml is TOML");
        let mut problems = Vec::new();
        let set = parse_set("builtin", &table, true, &mut |f, m| problems.push((f, m)));
        assert!(
            problems.is_empty(),
            "builtin.toml is valid (checked by tests): {problems:?}"
        );
        set
    })
}

/// `de_de`, `DE-de` → `de-DE`; `None` when it is not a language (2–3
/// letters) with an optional region (2 letters).
pub fn normalize_locale(raw: &str) -> Option<String> {
    let mut parts = raw.split(['-', '_']);
    let lang = parts.next()?;
    let region = parts.next();
    if parts.next().is_some()
        || !(2..=3).contains(&lang.len())
        || !lang.bytes().all(|b| b.is_ascii_alphabetic())
    {
        return None;
    }
    let mut out = lang.to_ascii_lowercase();
    if let Some(r) = region {
        if r.len() != 2 || !r.bytes().all(|b| b.is_ascii_alphabetic()) {
            return None;
        }
        out.push('-');
        out.push_str(&r.to_ascii_uppercase());
    }
    Some(out)
}

impl Messages {
    /// The locales tried for a customer who reads `requested`, best first.
    fn candidates(&self, requested: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(full) = normalize_locale(requested) {
            let lang = full.split('-').next().unwrap_or_default().to_owned();
            out.push(full);
            out.push(lang);
        }
        out.push(self.default_locale.clone());
        out.push("en".to_owned());
        out.dedup();
        let mut seen = std::collections::BTreeSet::new();
        out.retain(|l| seen.insert(l.clone()));
        out
    }

    /// Renders the message for `trigger` of service `service_code` to a
    /// customer on `channel` who reads `locale`.
    pub fn render(
        &self,
        service_code: &str,
        trigger: MessageTrigger,
        channel: Option<Channel>,
        locale: &str,
        ctx: &MessageContext<'_>,
    ) -> RenderedMessage {
        let scopes = [
            self.services.get(service_code),
            Some(&self.catalogue),
            Some(builtin()),
        ];
        for loc in self.candidates(locale) {
            for set in scopes.iter().flatten() {
                let Some(ls) = set.0.get(&loc) else { continue };
                let found = channel
                    .and_then(|c| ls.by_channel.get(&(c, trigger)))
                    .or_else(|| ls.any.get(&trigger));
                if let Some(t) = found {
                    let format = self.deadline_format(&loc);
                    let outcome = self.outcome(service_code, &loc);
                    let ctx = MessageContext {
                        outcome: outcome.unwrap_or(ctx.outcome),
                        ..ctx.clone()
                    };
                    return RenderedMessage {
                        template_id: t.id.clone(),
                        locale: loc.clone(),
                        text: fill(t, &loc, &format, &ctx),
                    };
                }
            }
        }
        unreachable!("the built-in set has every trigger in English (checked by tests)")
    }

    /// The service's promised outcome as worded for `locale` (or its
    /// language), if the service words it.
    fn outcome(&self, service_code: &str, locale: &str) -> Option<&str> {
        let set = self.services.get(service_code)?;
        let lang = locale.split('-').next().unwrap_or_default();
        [locale, lang]
            .iter()
            .find_map(|l| set.0.get(*l).and_then(|ls| ls.outcome.as_deref()))
    }

    /// How `locale` writes a deadline: the catalogue's format for it (or its
    /// language), else the built-in one, else ISO-like.
    fn deadline_format(&self, locale: &str) -> String {
        let lang = locale.split('-').next().unwrap_or_default();
        [locale, lang]
            .iter()
            .find_map(|l| {
                [&self.catalogue, builtin()]
                    .iter()
                    .find_map(|s| s.0.get(*l).and_then(|ls| ls.deadline_format.clone()))
            })
            .unwrap_or_else(|| "%Y-%m-%d %H:%M %Z".to_owned())
    }
}

fn chrono_locale(locale: &str) -> chrono::Locale {
    let mut parts = locale.split('-');
    let lang = parts.next().unwrap_or_default();
    let name = match (lang, parts.next()) {
        (l, Some(r)) => format!("{l}_{r}"),
        ("en", None) => "en_GB".to_owned(),
        (l, None) => format!("{l}_{}", l.to_ascii_uppercase()),
    };
    chrono::Locale::try_from(name.as_str())
        .or_else(|_| {
            chrono::Locale::try_from(format!("{lang}_{}", lang.to_ascii_uppercase()).as_str())
        })
        .unwrap_or(chrono::Locale::POSIX)
}

fn fill(t: &Template, locale: &str, deadline_format: &str, ctx: &MessageContext<'_>) -> String {
    let mut out = String::new();
    for part in &t.parts {
        match part {
            Part::Text(s) => out.push_str(s),
            Part::Value(Placeholder::Service) => out.push_str(ctx.service),
            Part::Value(Placeholder::Outcome) => out.push_str(ctx.outcome),
            Part::Value(Placeholder::Case) => out.push_str(ctx.case),
            Part::Value(Placeholder::Deadline) => out.push_str(
                &ctx.deadline
                    .with_timezone(&ctx.time_zone)
                    .format_localized(deadline_format, chrono_locale(locale))
                    .to_string(),
            ),
            Part::Value(Placeholder::Amount) => {
                if let Some((minor, code)) = ctx.amount {
                    out.push_str(&casework_domain::money::format(
                        minor,
                        code,
                        &casework_domain::money::locale(locale),
                    ));
                }
            }
        }
    }
    out
}

/// Parses a template's text: `{name}` is a placeholder, `{{` and `}}` are
/// literal braces.
fn parse_template(text: &str, trigger: MessageTrigger) -> Result<Vec<Part>, String> {
    if text.trim().is_empty() {
        return Err("is empty; write the text the customer reads".to_owned());
    }
    if let Some(c) = text
        .chars()
        .find(|c| (c.is_control() && *c != '\n') || casework_domain::text::is_bidi_control(*c))
    {
        return Err(format!(
            "contains the control character U+{:04X}; remove it (a line break is allowed)",
            u32::from(c)
        ));
    }
    let allowed = trigger.placeholders();
    let list = || {
        allowed
            .iter()
            .map(|p| format!("{{{}}}", p.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '}' => {
                return Err(
                    "has a '}' that closes no placeholder; write '}}' for a literal brace"
                        .to_owned(),
                );
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => {
                            return Err(format!(
                                "has an unclosed placeholder \"{{{name}\"; close it with '}}', or write '{{{{' for a literal brace"
                            ));
                        }
                    }
                }
                let Some(p) = Placeholder::ALL.into_iter().find(|p| p.as_str() == name) else {
                    return Err(format!(
                        "names the unknown placeholder {{{name}}}; a {} message may use {}",
                        trigger.as_str(),
                        list()
                    ));
                };
                if !allowed.contains(&p) {
                    return Err(format!(
                        "uses {{{name}}}, which a {} message does not have; it may use {}",
                        trigger.as_str(),
                        list()
                    ));
                }
                if !lit.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut lit)));
                }
                parts.push(Part::Value(p));
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Text(lit));
    }
    Ok(parts)
}

fn check_deadline_format(format: &str) -> Result<(), String> {
    if StrftimeItems::new(format).any(|i| matches!(i, Item::Error)) {
        return Err(format!(
            "{format:?} is not a strftime format; write e.g. \"%A %-d %B %Y, %H:%M %Z\""
        ));
    }
    Ok(())
}

fn channel_named(s: &str) -> Option<Channel> {
    [
        Channel::Phone,
        Channel::Email,
        Channel::Chat,
        Channel::InPerson,
        Channel::Web,
        Channel::SelfService,
    ]
    .into_iter()
    .find(|c| c.as_str() == s)
}

fn triggers_list() -> String {
    MessageTrigger::ALL
        .iter()
        .map(|t| t.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses the locale tables of `table` (keys are locales) of scope
/// `scope` (`messages`, `services.refund.messages`, `builtin`), reporting
/// each problem as (field path, message). `catalogue_level` allows
/// `deadline_format`.
pub(crate) fn parse_set(
    scope: &str,
    table: &toml::Table,
    catalogue_level: bool,
    report: &mut dyn FnMut(String, String),
) -> MessageSet {
    let mut set = MessageSet::default();
    for (loc, value) in table {
        if catalogue_level && loc == "default_locale" {
            continue;
        }
        let at = format!("{scope}.{loc}");
        if normalize_locale(loc).as_deref() != Some(loc.as_str()) {
            report(
                at.clone(),
                format!(
                    "{loc:?} is not a locale; write a language, optionally with a region, e.g. \"en\", \"de\" or \"de-AT\""
                ),
            );
            continue;
        }
        let Some(entries) = value.as_table() else {
            report(
                at,
                "is not a table; write [messages.<locale>] with one message per trigger".to_owned(),
            );
            continue;
        };
        let mut ls = LocaleSet::default();
        for (key, v) in entries {
            let field = format!("{at}.{key}");
            if key == "outcome" {
                match v.as_str() {
                    Some(_) if catalogue_level => report(
                        field,
                        "only a service words its promised outcome; move it to [services.<code>.messages.<locale>]".to_owned(),
                    ),
                    Some(o) if o.trim().is_empty() => {
                        report(field, "is empty; word the promised outcome for this locale".to_owned())
                    }
                    Some(o) => ls.outcome = Some(o.to_owned()),
                    None => report(field, "is not a string".to_owned()),
                }
                continue;
            }
            if key == "deadline_format" {
                if !catalogue_level {
                    report(
                        field,
                        "a service cannot set its own deadline format; set it in the catalogue's [messages.<locale>]".to_owned(),
                    );
                } else if let Some(f) = v.as_str() {
                    match check_deadline_format(f) {
                        Ok(()) => ls.deadline_format = Some(f.to_owned()),
                        Err(m) => report(field, m),
                    }
                } else {
                    report(field, "is not a string".to_owned());
                }
                continue;
            }
            if let Some(trigger) = MessageTrigger::parse(key) {
                if let Some(t) = template(&field, trigger, v, report) {
                    ls.any.insert(trigger, t);
                }
                continue;
            }
            let Some(channel) = channel_named(key) else {
                report(
                    field,
                    format!(
                        "is neither a trigger nor a channel; triggers are {}, channels phone, email, chat, in_person, web, self_service",
                        triggers_list()
                    ),
                );
                continue;
            };
            let Some(by_trigger) = v.as_table() else {
                report(
                    field,
                    "is not a table; write one message per trigger for this channel".to_owned(),
                );
                continue;
            };
            for (tk, tv) in by_trigger {
                let tfield = format!("{field}.{tk}");
                let Some(trigger) = MessageTrigger::parse(tk) else {
                    report(
                        tfield,
                        format!("is not a trigger; write one of {}", triggers_list()),
                    );
                    continue;
                };
                if let Some(t) = template(&tfield, trigger, tv, report) {
                    ls.by_channel.insert((channel, trigger), t);
                }
            }
        }
        set.0.insert(loc.clone(), ls);
    }
    set
}

fn template(
    field: &str,
    trigger: MessageTrigger,
    v: &toml::Value,
    report: &mut dyn FnMut(String, String),
) -> Option<Template> {
    let Some(text) = v.as_str() else {
        report(
            field.to_owned(),
            "is not a string; write the message text".to_owned(),
        );
        return None;
    };
    match parse_template(text, trigger) {
        Ok(parts) => Some(Template {
            id: field.to_owned(),
            parts,
        }),
        Err(m) => {
            report(field.to_owned(), m);
            None
        }
    }
}

/// Parses the catalogue's `[messages]` table and the services' own,
/// reporting problems as (service, field, message).
pub(crate) fn parse_messages(
    catalogue: Option<&toml::Table>,
    services: &[(String, Option<toml::Table>)],
    report: &mut dyn FnMut(Option<&str>, String, String),
) -> Messages {
    let mut m = Messages::default();
    if let Some(t) = catalogue {
        m.catalogue = parse_set("messages", t, true, &mut |f, msg| report(None, f, msg));
        match t.get("default_locale") {
            None => {}
            Some(toml::Value::String(l)) => {
                let covered = m.catalogue.0.contains_key(l) || builtin().0.contains_key(l);
                if normalize_locale(l).as_deref() != Some(l.as_str()) {
                    report(
                        None,
                        "messages.default_locale".to_owned(),
                        format!("{l:?} is not a locale; write e.g. \"en\" or \"de\""),
                    );
                } else if !covered {
                    report(
                        None,
                        "messages.default_locale".to_owned(),
                        format!(
                            "{l:?} has no messages; add a [messages.{l}] table, or choose a locale that has them (built in: en, de)"
                        ),
                    );
                } else {
                    m.default_locale = l.clone();
                }
            }
            Some(_) => report(
                None,
                "messages.default_locale".to_owned(),
                "is not a string; write e.g. \"en\"".to_owned(),
            ),
        }
    }
    for (code, table) in services {
        if let Some(t) = table {
            let set = parse_set("messages", t, false, &mut |f, msg| {
                report(Some(code), f, msg)
            });
            // Ids name the key from the top of the file.
            let set = MessageSet(
                set.0
                    .into_iter()
                    .map(|(l, mut ls)| {
                        for t in ls.any.values_mut().chain(ls.by_channel.values_mut()) {
                            t.id = format!("services.{code}.{}", t.id);
                        }
                        (l, ls)
                    })
                    .collect(),
            );
            m.services.insert(code.clone(), set);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ctx(tz: Tz) -> MessageContext<'static> {
        MessageContext {
            service: "Refund",
            outcome: "Money back on your card",
            deadline: Utc.with_ymd_and_hms(2026, 12, 4, 17, 30, 0).unwrap(),
            time_zone: tz,
            case: "01JD8X3V5R6M2Q4T7W9Y0Z1A2B",
            amount: Some((1250, "EUR")),
        }
    }

    fn messages(toml_text: &str) -> Result<Messages, Vec<(Option<String>, String, String)>> {
        let raw: toml::Table = toml::from_str(toml_text).unwrap();
        let cat = raw.get("messages").and_then(|v| v.as_table()).cloned();
        let services: Vec<(String, Option<toml::Table>)> = raw
            .get("services")
            .and_then(|v| v.as_table())
            .map(|s| {
                s.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.get("messages").and_then(|m| m.as_table()).cloned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut problems = Vec::new();
        let m = parse_messages(cat.as_ref(), &services, &mut |s, f, msg| {
            problems.push((s.map(str::to_owned), f, msg))
        });
        if problems.is_empty() {
            Ok(m)
        } else {
            Err(problems)
        }
    }

    #[test]
    fn the_builtin_set_covers_every_trigger_in_english_and_german() {
        for loc in ["en", "de"] {
            let ls = &builtin().0[loc];
            for t in MessageTrigger::ALL {
                assert!(ls.any.contains_key(&t), "{loc} lacks {}", t.as_str());
            }
            assert!(ls.deadline_format.is_some());
        }
    }

    #[test]
    fn renders_in_the_customers_locale_time_zone_and_currency() {
        let m = Messages::default();
        let berlin = m.render(
            "refund",
            MessageTrigger::PromiseMade,
            None,
            "de-DE",
            &ctx(chrono_tz::Europe::Berlin),
        );
        assert_eq!(berlin.locale, "de");
        assert_eq!(berlin.template_id, "builtin.de.promise_made");
        assert!(
            berlin
                .text
                .contains("Freitag, 4. Dezember 2026 um 18:30 CET"),
            "{}",
            berlin.text
        );
        let tokyo = m.render(
            "refund",
            MessageTrigger::PromiseMade,
            None,
            "en",
            &ctx(chrono_tz::Asia::Tokyo),
        );
        assert!(
            tokyo.text.contains("Saturday 5 December 2026 at 02:30 JST"),
            "{}",
            tokyo.text
        );
        let granted = m.render(
            "refund",
            MessageTrigger::CompensationGranted,
            None,
            "de",
            &ctx(chrono_tz::UTC),
        );
        assert!(granted.text.contains("12,50\u{a0}EUR"), "{}", granted.text);
        let granted = m.render(
            "refund",
            MessageTrigger::CompensationGranted,
            None,
            "en",
            &ctx(chrono_tz::UTC),
        );
        assert!(granted.text.contains("EUR 12.50"), "{}", granted.text);
    }

    #[test]
    fn service_then_catalogue_then_builtin_and_channel_before_locale() {
        let m = messages(
            r#"
            [messages]
            default_locale = "de"
            [messages.en]
            apology = "Catalogue apology for {service}."
            [messages.en.email]
            apology = "Dear customer, catalogue email apology."
            [services.refund.messages.en]
            apology = "Refund's own apology."
            "#,
        )
        .unwrap();
        let c = ctx(chrono_tz::UTC);
        let r = |svc, ch, loc| m.render(svc, MessageTrigger::Apology, ch, loc, &c);
        assert_eq!(
            r("refund", None, "en").template_id,
            "services.refund.messages.en.apology"
        );
        assert_eq!(r("refund", None, "en").text, "Refund's own apology.");
        assert_eq!(
            r("repair", Some(Channel::Email), "en").template_id,
            "messages.en.email.apology"
        );
        assert_eq!(
            r("repair", Some(Channel::Phone), "en-GB").text,
            "Catalogue apology for Refund."
        );
        // A locale nobody has falls back to the catalogue's default.
        let fr = r("repair", None, "fr");
        assert_eq!(
            (fr.locale.as_str(), fr.template_id.as_str()),
            ("de", "builtin.de.apology")
        );
        // Unreadable locales too.
        assert_eq!(r("repair", None, "??").locale, "de");
    }

    #[test]
    fn literal_braces_and_every_placeholder() {
        let m = messages(
            r#"
            [messages.en]
            compensation_granted = "{{{service}}} {outcome} {case} {amount}"
            "#,
        )
        .unwrap();
        let r = m.render(
            "x",
            MessageTrigger::CompensationGranted,
            None,
            "en",
            &ctx(chrono_tz::UTC),
        );
        assert_eq!(
            r.text,
            "{Refund} Money back on your card 01JD8X3V5R6M2Q4T7W9Y0Z1A2B EUR 12.50"
        );
    }

    #[test]
    fn bad_templates_are_catalogue_errors_naming_the_key() {
        let cases = [
            (
                r#"[messages.en]
                promise_made = "By {deadlin}""#,
                "messages.en.promise_made",
                "unknown placeholder {deadlin}",
            ),
            (
                r#"[messages.en]
                apology = "You get {amount}""#,
                "messages.en.apology",
                "which a apology message does not have",
            ),
            (
                r#"[messages.en]
                apology = "Sorry {case""#,
                "messages.en.apology",
                "unclosed placeholder",
            ),
            (
                r#"[messages.en]
                apology = "Sorry }""#,
                "messages.en.apology",
                "closes no placeholder",
            ),
            (
                r#"[messages.en]
                apologie = "Sorry""#,
                "messages.en.apologie",
                "neither a trigger nor a channel",
            ),
            (
                r#"[messages.en.email]
                apologie = "Sorry""#,
                "messages.en.email.apologie",
                "is not a trigger",
            ),
            (
                r#"[messages.english]
                apology = "Sorry""#,
                "messages.english",
                "is not a locale",
            ),
            (
                r#"[messages]
                default_locale = "fr""#,
                "messages.default_locale",
                "has no messages",
            ),
            (
                r#"[messages.en]
                apology = "  ""#,
                "messages.en.apology",
                "is empty",
            ),
            (
                "[messages.en]\napology = \"Sorry\\u0007\"",
                "messages.en.apology",
                "U+0007",
            ),
            (
                r#"[messages.en]
                deadline_format = "%Q""#,
                "messages.en.deadline_format",
                "not a strftime format",
            ),
            (
                r#"[messages.en]
                outcome = "Money back""#,
                "messages.en.outcome",
                "only a service words its promised outcome",
            ),
            (
                r#"[services.refund.messages.en]
                deadline_format = "%F""#,
                "messages.en.deadline_format",
                "cannot set its own deadline format",
            ),
        ];
        for (text, field, needle) in cases {
            let problems = messages(text).expect_err(text);
            assert!(
                problems
                    .iter()
                    .any(|(_, f, m)| f == field && m.contains(needle)),
                "{text}: {problems:?}"
            );
        }
    }

    #[test]
    fn locales_are_normalised() {
        assert_eq!(normalize_locale("de_de").as_deref(), Some("de-DE"));
        assert_eq!(normalize_locale("EN").as_deref(), Some("en"));
        assert_eq!(normalize_locale("de-DE-x"), None);
        assert_eq!(normalize_locale("deutsch"), None);
        assert_eq!(normalize_locale(""), None);
    }
}
