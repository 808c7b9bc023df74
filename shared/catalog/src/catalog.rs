//! Loading one catalogue file: TOML → raw schema → validated [`Catalog`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Weekday};
use sha2::{Digest, Sha256};

use crate::calendar::Calendar;
use crate::error::{Error, Problem, Result};
use crate::messages::{self, MessageContext, MessageTrigger, Messages, RenderedMessage};
use crate::model::{
    Channel, Compensation, CompensationLimits, Currency, Deadline, Handler, Promise, PurchaseStage,
    RecoveryAction, RecoveryPolicy, RetryPolicy, ServiceDef, Step,
};
use crate::raw::{
    RawAction, RawCalendar, RawCatalog, RawHandler, RawLimits, RawRecovery, RawRetry, RawService,
    RawStep,
};
use crate::text::{check_token, parse_duration};
use crate::version::CatalogVersion;

/// The identity a case is pinned to: the catalogue version in force when its
/// promise was made, and the SHA-256 of that file's exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CatalogPin {
    /// The catalogue's `version`.
    pub version: String,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub digest: String,
}

/// One validated catalogue version.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    origin: String,
    version: CatalogVersion,
    digest: String,
    calendars: BTreeMap<String, Arc<Calendar>>,
    services: BTreeMap<String, ServiceDef>,
    messages: Messages,
}

impl Catalog {
    /// Parses and validates catalogue text. `origin` names it in errors
    /// (usually the file name). The digest is taken over `text`'s bytes.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let raw: RawCatalog = toml::from_str(text).map_err(|err| Error::Invalid {
            origin: origin.to_owned(),
            problems: vec![toml_problem(origin, text, &err)],
        })?;
        let mut check = Check {
            origin,
            problems: Vec::new(),
        };
        let catalog = check.catalog(raw);
        match catalog {
            Some((version, calendars, services, messages)) if check.problems.is_empty() => {
                Ok(Self {
                    origin: origin.to_owned(),
                    version,
                    digest: hex::encode(Sha256::digest(text.as_bytes())),
                    calendars,
                    services,
                    messages,
                })
            }
            _ => Err(Error::Invalid {
                origin: origin.to_owned(),
                problems: check.problems,
            }),
        }
    }

    /// Reads and validates a catalogue file; errors name the path.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let read_error = |source| Error::Read {
            path: path.to_owned(),
            source,
        };
        let bytes = std::fs::read(path).map_err(read_error)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            read_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not UTF-8 ({e}); save the file as UTF-8"),
            ))
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Where it was loaded from, as given to the loader.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The declared version.
    pub fn version(&self) -> &CatalogVersion {
        &self.version
    }

    /// Lowercase hex SHA-256 of the exact file bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// `(version, digest)`, to record in the promise a case is pinned by.
    pub fn pin(&self) -> CatalogPin {
        CatalogPin {
            version: self.version.to_string(),
            digest: self.digest.clone(),
        }
    }

    /// The service with `code`.
    pub fn service(&self, code: &str) -> Option<&ServiceDef> {
        self.services.get(code)
    }

    /// All services, by code.
    pub fn services(&self) -> impl Iterator<Item = &ServiceDef> {
        self.services.values()
    }

    /// The services offered at `stage`, by code.
    pub fn services_at(&self, stage: PurchaseStage) -> impl Iterator<Item = &ServiceDef> {
        self.services.values().filter(move |s| s.offered_at(stage))
    }

    /// The calendar called `name`.
    pub fn calendar(&self, name: &str) -> Option<&Calendar> {
        self.calendars.get(name).map(|c| &**c)
    }

    /// All calendars, by name.
    pub fn calendars(&self) -> impl Iterator<Item = &Calendar> {
        self.calendars.values().map(|c| &**c)
    }

    /// The catalogue's default locale for customer messages.
    pub fn default_locale(&self) -> &str {
        &self.messages.default_locale
    }

    /// What a customer of service `service_code` who reads `locale` is told
    /// on `channel` for `trigger`, from the best-matching template (see the
    /// `messages` module for the lookup order): the text, the template's id
    /// and the locale it is in, to record in the event.
    pub fn message(
        &self,
        service_code: &str,
        trigger: MessageTrigger,
        channel: Option<Channel>,
        locale: &str,
        ctx: &MessageContext<'_>,
    ) -> RenderedMessage {
        self.messages
            .render(service_code, trigger, channel, locale, ctx)
    }
}

// ---------------------------------------------------------------------------
// TOML errors: add the line, the service and the field path.

fn toml_problem(origin: &str, text: &str, err: &toml::de::Error) -> Problem {
    let message = err.message().trim_end();
    let hint = if message.starts_with("unknown field") {
        "; remove it or correct its spelling"
    } else if message.starts_with("missing field") {
        "; add it"
    } else if message.starts_with("duplicate key") {
        "; each key may appear only once (service codes, calendar names): remove or rename the second one"
    } else if message.starts_with("unknown variant") {
        "; use one of the values listed"
    } else if message.starts_with("invalid type") {
        "; write a value of the expected type"
    } else {
        ""
    };
    let (position, mut path) = match err.span() {
        Some(span) => {
            let at = span.start.min(text.len());
            (Some(line_column(text, at)), key_path(text, at))
        }
        None => (None, Vec::new()),
    };
    if let Some(missing) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        path.push(missing.to_owned());
    }
    let (service, field) = match path.as_slice() {
        [top, code, rest @ ..] if top == "services" => (Some(code.clone()), rest.join(".")),
        _ => (None, path.join(".")),
    };
    Problem {
        origin: origin.to_owned(),
        position,
        service,
        field,
        message: format!("{message}{hint}"),
    }
}

fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..floor_char_boundary(text, at)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Best-effort key path of the value at byte `at`: the last table header
/// before it (with the index of an array-of-tables entry) plus the last
/// `key =` line between that header and `at`.
fn key_path(text: &str, at: usize) -> Vec<String> {
    let mut header: Vec<String> = Vec::new();
    let mut key: Vec<String> = Vec::new();
    let mut array_counts: HashMap<String, usize> = HashMap::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if offset > at {
            break;
        }
        offset += line.len();
        let trimmed = line.trim();
        if let Some(inner) = trimmed.strip_prefix("[[") {
            let inner = inner.split("]]").next().unwrap_or_default();
            let count = array_counts.entry(inner.trim().to_owned()).or_default();
            *count += 1;
            header = split_key(inner);
            if let Some(last) = header.last_mut() {
                *last = format!("{last}[{}]", *count - 1);
            }
            key.clear();
        } else if let Some(inner) = trimmed.strip_prefix('[') {
            header = split_key(inner.split(']').next().unwrap_or_default());
            key.clear();
        } else if let Some((k, _)) = trimmed.split_once('=') {
            let k = k.trim();
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\''))
            {
                key = split_key(k);
            }
        }
    }
    header.extend(key);
    header
}

fn split_key(key: &str) -> Vec<String> {
    key.split('.')
        .map(|part| part.trim().trim_matches(['"', '\'']).to_owned())
        .filter(|part| !part.is_empty())
        .collect()
}

// ---------------------------------------------------------------------------
// Validation: raw schema → model, collecting every problem.

type Validated = (
    CatalogVersion,
    BTreeMap<String, Arc<Calendar>>,
    BTreeMap<String, ServiceDef>,
    Messages,
);

struct Check<'a> {
    origin: &'a str,
    problems: Vec<Problem>,
}

impl Check<'_> {
    fn report(
        &mut self,
        service: Option<&str>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            origin: self.origin.to_owned(),
            position: None,
            service: service.map(str::to_owned),
            field: field.into(),
            message: message.into(),
        });
    }

    /// Runs `result`, reporting its error at `field`; `None` if it failed.
    fn ok<T>(
        &mut self,
        service: Option<&str>,
        field: impl Into<String>,
        result: std::result::Result<T, String>,
    ) -> Option<T> {
        result
            .map_err(|message| self.report(service, field, message))
            .ok()
    }

    fn catalog(&mut self, raw: RawCatalog) -> Option<Validated> {
        let version = self.ok(None, "version", CatalogVersion::parse(&raw.version));
        let declared: BTreeSet<String> = raw.calendars.keys().cloned().collect();
        let mut calendars = BTreeMap::new();
        for (name, rc) in &raw.calendars {
            if let Some(calendar) = self.calendar(name, rc) {
                calendars.insert(name.clone(), Arc::new(calendar));
            }
        }
        if raw.services.is_empty() {
            self.report(
                None,
                "services",
                "the catalogue has no services; add at least one [services.<code>] table",
            );
        }
        let own: Vec<(String, Option<toml::Table>)> = raw
            .services
            .iter()
            .map(|(code, rs)| (code.clone(), rs.messages.clone()))
            .collect();
        let messages = messages::parse_messages(raw.messages.as_ref(), &own, &mut |svc, f, m| {
            self.report(svc, f, m)
        });
        let mut services = BTreeMap::new();
        for (code, rs) in raw.services {
            if let Some(service) = self.service(&code, rs, &calendars, &declared) {
                services.insert(code, service);
            }
        }
        Some((version?, calendars, services, messages))
    }

    fn calendar(&mut self, name: &str, rc: &RawCalendar) -> Option<Calendar> {
        let at = |field: &str| format!("calendars.{name}.{field}");
        let mut days = Vec::new();
        for (i, day) in rc.working_days.iter().enumerate() {
            let parsed = Weekday::from_str(day).map_err(|_| {
                format!(
                    "{day:?} is not a day of the week; write mon, tue, wed, thu, fri, sat or sun"
                )
            });
            days.extend(self.ok(None, at(&format!("working_days[{i}]")), parsed));
        }
        let mut holidays = Vec::new();
        for (i, value) in rc.holidays.iter().enumerate() {
            holidays.extend(self.ok(None, at(&format!("holidays[{i}]")), holiday(value)));
        }
        let bad_days = days.len() != rc.working_days.len();
        match Calendar::build(name, &rc.time_zone, &days, &rc.opens, &rc.closes, &holidays) {
            Ok(calendar) => Some(calendar),
            Err(problems) => {
                for (field, message) in problems {
                    if bad_days && field == "working_days" {
                        continue; // already reported day by day
                    }
                    let field = if field == "name" {
                        format!("calendars.{name}")
                    } else {
                        at(field)
                    };
                    self.report(None, field, message);
                }
                None
            }
        }
    }

    fn service(
        &mut self,
        code: &str,
        rs: RawService,
        calendars: &BTreeMap<String, Arc<Calendar>>,
        declared: &BTreeSet<String>,
    ) -> Option<ServiceDef> {
        let before = self.problems.len();
        let svc = Some(code);
        if let Err(why) = check_token(code) {
            self.report(svc, "", format!("the service code {why}"));
        }
        if rs.name.trim().is_empty() {
            self.report(
                svc,
                "name",
                "is empty; give the service a name people read, e.g. \"Refund\"",
            );
        }
        if rs.stages.is_empty() {
            self.report(
                svc,
                "stages",
                "is empty; list the purchase stages the service is offered at: pre_purchase, during_purchase, post_purchase",
            );
        }
        let mut seen = BTreeSet::new();
        for stage in &rs.stages {
            if !seen.insert(*stage) {
                self.report(
                    svc,
                    "stages",
                    format!("{stage} is listed twice; list each stage once"),
                );
            }
        }
        let promise = self.promise(code, &rs, calendars, declared);
        let steps = self.steps(code, rs.steps);
        let recovery = self.recovery(code, rs.recovery);
        if self.problems.len() > before {
            return None;
        }
        Some(ServiceDef {
            code: code.to_owned(),
            name: rs.name,
            stages: rs.stages,
            promise: promise?,
            steps: steps?,
            recovery: recovery?,
        })
    }

    fn promise(
        &mut self,
        code: &str,
        rs: &RawService,
        calendars: &BTreeMap<String, Arc<Calendar>>,
        declared: &BTreeSet<String>,
    ) -> Option<Promise> {
        let svc = Some(code);
        let raw = &rs.promise;
        let deadline = self.ok(svc, "promise.deadline", Deadline::from_str(&raw.deadline));
        if raw.outcome.trim().is_empty() {
            self.report(
                svc,
                "promise.outcome",
                "is empty; say in words what the customer will get, e.g. \"Refund paid to the original payment method\"",
            );
        }
        let deadline = deadline?;
        let known = || {
            if declared.is_empty() {
                "none are declared".to_owned()
            } else {
                format!(
                    "declared: {}",
                    declared
                        .iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        };
        let calendar = match (&raw.calendar, deadline.unit.is_business()) {
            (None, false) => None,
            (None, true) => {
                self.report(
                    svc,
                    "promise.calendar",
                    format!(
                        "is missing: the deadline \"{deadline}\" counts business time, so it needs a calendar; add calendar = \"<name>\" ({})",
                        known()
                    ),
                );
                return None;
            }
            (Some(name), false) => {
                self.report(
                    svc,
                    "promise.calendar",
                    format!(
                        "{name:?} is set but the deadline \"{deadline}\" counts real time; remove the calendar or write the deadline in business units, e.g. \"{} business {}\"",
                        deadline.amount,
                        deadline.to_string().rsplit(' ').next().unwrap_or("hours")
                    ),
                );
                return None;
            }
            (Some(name), true) => match calendars.get(name) {
                Some(calendar) => Some(Arc::clone(calendar)),
                None if declared.contains(name) => return None, // reported with the calendar
                None => {
                    self.report(
                        svc,
                        "promise.calendar",
                        format!(
                            "unknown calendar {name:?} ({}); declare it as [calendars.{name}] or fix the name",
                            known()
                        ),
                    );
                    return None;
                }
            },
        };
        Some(Promise {
            deadline,
            calendar,
            outcome: raw.outcome.clone(),
        })
    }

    fn steps(&mut self, code: &str, raw: Vec<RawStep>) -> Option<Vec<Step>> {
        let svc = Some(code);
        if raw.is_empty() {
            self.report(
                svc,
                "steps",
                format!(
                    "the fulfilment workflow is empty; add at least one [[services.{code}.steps]] with a name, handler, timeout and retry"
                ),
            );
            return None;
        }
        let mut names = BTreeSet::new();
        let mut steps = Vec::new();
        let mut failed = false;
        for (i, rs) in raw.into_iter().enumerate() {
            let at = |field: &str| format!("steps[{i}].{field}");
            let before = self.problems.len();
            if let Err(why) = check_token(&rs.name) {
                self.report(svc, at("name"), format!("the step name {why}"));
            } else if !names.insert(rs.name.clone()) {
                self.report(
                    svc,
                    at("name"),
                    format!("step {:?} is declared twice; step names must be unique within a service — rename one", rs.name),
                );
            }
            let handler = self.handler(code, &at("handler"), rs.handler);
            let timeout = self.ok(svc, at("timeout"), positive_duration(&rs.timeout));
            let retry = self.retry(code, &at("retry"), &rs.retry);
            match (handler, timeout, retry) {
                (Some(handler), Some(timeout), Some(retry)) if self.problems.len() == before => {
                    steps.push(Step {
                        name: rs.name,
                        handler,
                        timeout,
                        retry,
                    });
                }
                _ => failed = true,
            }
        }
        (!failed).then_some(steps)
    }

    fn handler(&mut self, code: &str, at: &str, raw: RawHandler) -> Option<Handler> {
        let svc = Some(code);
        match raw {
            RawHandler::Simulate {
                latency_ms,
                failure_probability,
            } => {
                if !(0.0..=1.0).contains(&failure_probability) {
                    self.report(
                        svc,
                        format!("{at}.failure_probability"),
                        format!(
                            "{failure_probability} is not a probability; write a number from 0.0 (never fails) to 1.0 (always fails)"
                        ),
                    );
                    return None;
                }
                Some(Handler::Simulate {
                    latency: Duration::from_millis(latency_ms),
                    failure_probability,
                })
            }
            RawHandler::External { task } => {
                let checked = check_token(&task).map_err(|why| format!("the task kind {why}"));
                self.ok(svc, format!("{at}.task"), checked)?;
                Some(Handler::External { task })
            }
            RawHandler::Manual { queue } => {
                let checked = check_token(&queue).map_err(|why| format!("the queue {why}"));
                self.ok(svc, format!("{at}.queue"), checked)?;
                Some(Handler::Manual { queue })
            }
        }
    }

    fn retry(&mut self, code: &str, at: &str, raw: &RawRetry) -> Option<RetryPolicy> {
        let svc = Some(code);
        let before = self.problems.len();
        if raw.max_attempts == 0 {
            self.report(
                svc,
                format!("{at}.max_attempts"),
                "is 0; it counts every attempt including the first, so write 1 for \"no retry\" or more",
            );
        }
        let initial = self.ok(
            svc,
            format!("{at}.initial_backoff"),
            parse_duration(&raw.initial_backoff),
        );
        let max = self.ok(
            svc,
            format!("{at}.max_backoff"),
            parse_duration(&raw.max_backoff),
        );
        if let (Some(initial), Some(max)) = (initial, max)
            && max < initial
        {
            self.report(
                svc,
                format!("{at}.max_backoff"),
                format!(
                    "{:?} is shorter than initial_backoff {:?}; the cap must be at least the first delay",
                    raw.max_backoff, raw.initial_backoff
                ),
            );
        }
        if !(raw.multiplier.is_finite() && raw.multiplier >= 1.0) {
            self.report(
                svc,
                format!("{at}.multiplier"),
                format!(
                    "{} would shrink the delays; write 1.0 (constant) or more, e.g. 2.0 (doubling)",
                    raw.multiplier
                ),
            );
        }
        if !(0.0..=1.0).contains(&raw.jitter) {
            self.report(
                svc,
                format!("{at}.jitter"),
                format!(
                    "{} is out of range; write a fraction from 0.0 (no jitter) to 1.0 (anything from 0 to the full delay)",
                    raw.jitter
                ),
            );
        }
        if self.problems.len() > before {
            return None;
        }
        Some(RetryPolicy {
            max_attempts: raw.max_attempts,
            initial_backoff: initial?,
            max_backoff: max?,
            multiplier: raw.multiplier,
            jitter: raw.jitter,
        })
    }

    fn recovery(&mut self, code: &str, raw: RawRecovery) -> Option<RecoveryPolicy> {
        let svc = Some(code);
        let before = self.problems.len();
        if !(1..=5).contains(&raw.negative_feedback_threshold) {
            self.report(
                svc,
                "recovery.negative_feedback_threshold",
                format!(
                    "{} is not a feedback score; scores run from 1 (worst) to 5 (best), and feedback at or below the threshold triggers recovery — write e.g. 2",
                    raw.negative_feedback_threshold
                ),
            );
        }
        let limits = self.limits(code, &raw.limits);
        let on_step_failed = self.ladder(
            code,
            "recovery.on_step_failed",
            raw.on_step_failed,
            limits.as_ref(),
        );
        let on_promise_broken = self.ladder(
            code,
            "recovery.on_promise_broken",
            raw.on_promise_broken,
            limits.as_ref(),
        );
        let on_negative_feedback = self.ladder(
            code,
            "recovery.on_negative_feedback",
            raw.on_negative_feedback,
            limits.as_ref(),
        );
        if self.problems.len() > before {
            return None;
        }
        Some(RecoveryPolicy {
            negative_feedback_threshold: raw.negative_feedback_threshold,
            on_step_failed: on_step_failed?,
            on_promise_broken: on_promise_broken?,
            on_negative_feedback: on_negative_feedback?,
            limits: limits?,
        })
    }

    fn limits(&mut self, code: &str, raw: &RawLimits) -> Option<CompensationLimits> {
        let svc = Some(code);
        let currency = self.ok(
            svc,
            "recovery.limits.currency",
            Currency::parse(&raw.currency),
        );
        if raw.auto_approve_limit_minor > raw.daily_budget_minor {
            self.report(
                svc,
                "recovery.limits.auto_approve_limit_minor",
                format!(
                    "{} is above daily_budget_minor {}; the automatic limit must fit in the daily budget — lower it or raise the budget",
                    raw.auto_approve_limit_minor, raw.daily_budget_minor
                ),
            );
            return None;
        }
        Some(CompensationLimits {
            currency: currency?,
            auto_approve_limit_minor: raw.auto_approve_limit_minor,
            daily_budget_minor: raw.daily_budget_minor,
        })
    }

    fn ladder(
        &mut self,
        code: &str,
        at: &str,
        raw: Vec<RawAction>,
        limits: Option<&CompensationLimits>,
    ) -> Option<Vec<RecoveryAction>> {
        let svc = Some(code);
        if raw.is_empty() {
            self.report(
                svc,
                at,
                "the ladder is empty; give at least one action, e.g. [{ action = \"apology\" }, { action = \"escalate\", tier = \"tier2\" }]",
            );
            return None;
        }
        let before = self.problems.len();
        let mut actions = Vec::new();
        for (i, action) in raw.into_iter().enumerate() {
            let at = format!("{at}[{i}]");
            match action {
                RawAction::Apology { channel } => actions.push(RecoveryAction::Apology { channel }),
                RawAction::Retry { max_retries } => {
                    if max_retries == 0 {
                        self.report(
                            svc,
                            format!("{at}.max_retries"),
                            "is 0; a retry rung must allow at least 1 retry (or remove the rung)",
                        );
                    }
                    actions.push(RecoveryAction::Retry { max_retries });
                }
                RawAction::Escalate { tier } => {
                    let checked = check_token(&tier).map_err(|why| format!("the tier {why}"));
                    if self.ok(svc, format!("{at}.tier"), checked).is_some() {
                        actions.push(RecoveryAction::Escalate { tier });
                    }
                }
                RawAction::Compensation {
                    kind,
                    amount_minor,
                    currency,
                } => {
                    let Some(currency) =
                        self.ok(svc, format!("{at}.currency"), Currency::parse(&currency))
                    else {
                        continue;
                    };
                    if amount_minor == 0 {
                        self.report(
                            svc,
                            format!("{at}.amount_minor"),
                            "is 0; give the amount in minor units (e.g. 500 for 5.00), or remove the rung",
                        );
                    }
                    if let Some(limits) = limits {
                        if currency != limits.currency {
                            self.report(
                                svc,
                                format!("{at}.currency"),
                                format!(
                                    "{currency} differs from recovery.limits.currency {}; a service's compensations and limits use one currency — write {} here or change the limits",
                                    limits.currency, limits.currency
                                ),
                            );
                        } else if amount_minor > limits.daily_budget_minor {
                            self.report(
                                svc,
                                format!("{at}.amount_minor"),
                                format!(
                                    "{amount_minor} is above recovery.limits.daily_budget_minor {}, so it could never be granted; lower it or raise the budget",
                                    limits.daily_budget_minor
                                ),
                            );
                        }
                    }
                    actions.push(RecoveryAction::Compensation(Compensation {
                        kind,
                        amount_minor,
                        currency,
                    }));
                }
            }
        }
        (self.problems.len() == before).then_some(actions)
    }
}

fn positive_duration(text: &str) -> std::result::Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!(
            "{text:?} is zero; a timeout must be positive, e.g. \"30s\""
        )),
        d => Ok(d),
    }
}

fn holiday(value: &toml::Value) -> std::result::Result<NaiveDate, String> {
    let bad = || format!("{value} is not a date; write a date like 2026-12-25");
    match value {
        toml::Value::Datetime(dt) => match (dt.date, dt.time, dt.offset) {
            (Some(d), None, None) => {
                NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
                    .ok_or_else(bad)
            }
            _ => Err(bad()),
        },
        toml::Value::String(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad()),
        _ => Err(bad()),
    }
}
