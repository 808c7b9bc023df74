//! The validated catalogue model: services, their promise, fulfilment
//! workflow and recovery policy. Values of these types come out of the
//! loader already checked; their fields are public for reading.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;

use crate::calendar::Calendar;

/// The purchase stage a case is opened at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurchaseStage {
    /// Before buying: enquiries, advice.
    PrePurchase,
    /// While buying: changing an order, delivery, installation.
    DuringPurchase,
    /// After buying: repairs, replacements, refunds.
    PostPurchase,
}

impl PurchaseStage {
    /// All stages, in purchase order.
    pub const ALL: [Self; 3] = [Self::PrePurchase, Self::DuringPurchase, Self::PostPurchase];

    /// The stage as written in catalogues and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PrePurchase => "pre_purchase",
            Self::DuringPurchase => "during_purchase",
            Self::PostPurchase => "post_purchase",
        }
    }
}

impl fmt::Display for PurchaseStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A channel a customer can be reached on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Telephone.
    Phone,
    /// E-mail.
    Email,
    /// Chat.
    Chat,
    /// At a counter or a visit.
    InPerson,
    /// The web site.
    Web,
    /// A self-service portal or app.
    SelfService,
}

impl Channel {
    /// The channel as written in catalogues and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Phone => "phone",
            Self::Email => "email",
            Self::Chat => "chat",
            Self::InPerson => "in_person",
            Self::Web => "web",
            Self::SelfService => "self_service",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ISO 4217 currency code (three uppercase letters, e.g. `EUR`). Only the
/// shape is checked, not the list of codes in use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(String);

impl Currency {
    /// Checks and wraps a code.
    pub fn parse(code: &str) -> Result<Self, String> {
        crate::text::check_currency(code).map(|()| Self(code.to_owned()))
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The unit of a promise deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadlineUnit {
    /// Real seconds (demos and tests; a service promise is rarely this
    /// tight).
    Seconds,
    /// Real minutes.
    Minutes,
    /// Real hours.
    Hours,
    /// Real days of 24 hours.
    Days,
    /// Minutes of working time in the promise's calendar.
    BusinessMinutes,
    /// Hours of working time in the promise's calendar.
    BusinessHours,
    /// Working days in the promise's calendar (see
    /// [`Calendar::add_business_days`]).
    BusinessDays,
}

impl DeadlineUnit {
    /// Whether the unit counts in a business calendar.
    pub fn is_business(self) -> bool {
        matches!(
            self,
            Self::BusinessMinutes | Self::BusinessHours | Self::BusinessDays
        )
    }

    fn words(self) -> (&'static str, &'static str) {
        match self {
            Self::Seconds => ("second", "seconds"),
            Self::Minutes => ("minute", "minutes"),
            Self::Hours => ("hour", "hours"),
            Self::Days => ("day", "days"),
            Self::BusinessMinutes => ("business minute", "business minutes"),
            Self::BusinessHours => ("business hour", "business hours"),
            Self::BusinessDays => ("business day", "business days"),
        }
    }
}

/// How long the promise gives: an amount of a unit, e.g. `4 business hours`.
///
/// Parsed from `"<n> seconds"` or `"<n> [business] minutes|hours|days"` (singular or plural,
/// optionally preceded by `within`); `Display` writes it back in that form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Deadline {
    /// How many units; at least 1, at most [`Deadline::MAX_AMOUNT`].
    pub amount: u32,
    /// The unit.
    pub unit: DeadlineUnit,
}

impl Deadline {
    /// Largest amount accepted (keeps every deadline within a few decades).
    pub const MAX_AMOUNT: u32 = 10_000;
}

impl FromStr for Deadline {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not a deadline; write e.g. \"4 business hours\", \"2 business days\", \"30 minutes\" or \"48 hours\""
            )
        };
        let mut words: Vec<&str> = text.split_whitespace().collect();
        if words.first() == Some(&"within") {
            words.remove(0);
        }
        let (amount, business, unit) = match words.as_slice() {
            [amount, unit] => (*amount, false, *unit),
            [amount, "business", unit] => (*amount, true, *unit),
            _ => return Err(bad()),
        };
        let amount: u32 = amount.parse().map_err(|_| bad())?;
        let unit = match (business, unit) {
            (false, "second" | "seconds") => DeadlineUnit::Seconds,
            (false, "minute" | "minutes") => DeadlineUnit::Minutes,
            (false, "hour" | "hours") => DeadlineUnit::Hours,
            (false, "day" | "days") => DeadlineUnit::Days,
            (true, "minute" | "minutes") => DeadlineUnit::BusinessMinutes,
            (true, "hour" | "hours") => DeadlineUnit::BusinessHours,
            (true, "day" | "days") => DeadlineUnit::BusinessDays,
            _ => return Err(bad()),
        };
        if amount == 0 || amount > Self::MAX_AMOUNT {
            return Err(format!(
                "{text:?}: the amount must be between 1 and {}",
                Self::MAX_AMOUNT
            ));
        }
        Ok(Self { amount, unit })
    }
}

impl fmt::Display for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (one, many) = self.unit.words();
        let word = if self.amount == 1 { one } else { many };
        write!(f, "{} {word}", self.amount)
    }
}

/// What the front stage promises when it takes a case for this service.
#[derive(Debug, Clone, PartialEq)]
pub struct Promise {
    /// By when.
    pub deadline: Deadline,
    /// The calendar business units count in; `Some` exactly when the
    /// deadline's unit is a business unit.
    pub calendar: Option<Arc<Calendar>>,
    /// The promised outcome in words, as told to the customer.
    pub outcome: String,
}

impl Promise {
    /// The instant the promise falls due when it is made at `made_at`.
    pub fn due(&self, made_at: DateTime<Utc>) -> DateTime<Utc> {
        let amount = u64::from(self.deadline.amount);
        let elapsed = |seconds: u64| {
            let delta = TimeDelta::seconds(i64::try_from(amount * seconds).unwrap_or(i64::MAX));
            made_at
                .checked_add_signed(delta)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        };
        let business = |seconds: u64| match &self.calendar {
            Some(cal) => cal.add_business_time(made_at, Duration::from_secs(amount * seconds)),
            None => elapsed(seconds),
        };
        match self.deadline.unit {
            DeadlineUnit::Seconds => elapsed(1),
            DeadlineUnit::Minutes => elapsed(60),
            DeadlineUnit::Hours => elapsed(3600),
            DeadlineUnit::Days => elapsed(86_400),
            DeadlineUnit::BusinessMinutes => business(60),
            DeadlineUnit::BusinessHours => business(3600),
            DeadlineUnit::BusinessDays => match &self.calendar {
                Some(cal) => cal.add_business_days(made_at, self.deadline.amount),
                None => elapsed(86_400),
            },
        }
    }
}

/// Who carries out a fulfilment step.
#[derive(Debug, Clone, PartialEq)]
pub enum Handler {
    /// Simulated in-process (demos, load tests): waits `latency`, then fails
    /// with probability `failure_probability` (in `0..=1`).
    Simulate {
        /// How long the step takes.
        latency: Duration,
        /// Chance that an attempt fails.
        failure_probability: f64,
    },
    /// An external worker that polls fulfilment for tasks of this kind.
    External {
        /// The task kind token workers subscribe to.
        task: String,
    },
    /// A person: the step waits in a work queue until someone completes it.
    Manual {
        /// The queue (or role) token the task is offered to.
        queue: String,
    },
}

/// How a failed step attempt is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts including the first; at least 1 (1 = no retry).
    pub max_attempts: u32,
    /// Delay after the first failed attempt.
    pub initial_backoff: Duration,
    /// Upper bound for any delay; at least `initial_backoff`.
    pub max_backoff: Duration,
    /// Growth factor per attempt; at least 1.0.
    pub multiplier: f64,
    /// Fraction of the delay that may be randomly taken off, `0..=1`.
    pub jitter: f64,
}

impl RetryPolicy {
    /// The delay to wait after failed attempt number `attempt` (1-based)
    /// before the next one.
    ///
    /// `initial_backoff × multiplier^(attempt−1)`, capped at `max_backoff`,
    /// then reduced by up to `jitter` of itself: the result is
    /// `capped × (1 − jitter × jitter_sample)`. The caller passes the random
    /// `jitter_sample` from `0..1` (values outside are clamped), so the policy
    /// stays pure and deterministic; the result never exceeds `max_backoff`.
    pub fn backoff(&self, attempt: u32, jitter_sample: f64) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let cap = self.max_backoff.as_secs_f64();
        let grown = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = if grown.is_nan() { cap } else { grown.min(cap) };
        let sample = if jitter_sample.is_finite() {
            jitter_sample.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Duration::try_from_secs_f64(capped * (1.0 - jitter * sample)).unwrap_or(self.max_backoff)
    }

    /// Whether another attempt may follow `attempts_made` attempts.
    pub fn allows_another_attempt(&self, attempts_made: u32) -> bool {
        attempts_made < self.max_attempts
    }
}

/// One step of a service's fulfilment workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Token, unique within the service.
    pub name: String,
    /// Who does the work.
    pub handler: Handler,
    /// How long one attempt may take before it counts as failed.
    pub timeout: Duration,
    /// How failed attempts are retried.
    pub retry: RetryPolicy,
}

/// What kind of compensation is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationKind {
    /// Money back.
    Refund,
    /// A voucher for a later purchase.
    Voucher,
    /// Credit on the customer's account.
    Credit,
    /// A fee that is not charged.
    FeeWaiver,
}

impl CompensationKind {
    /// The kind as written in catalogues and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refund => "refund",
            Self::Voucher => "voucher",
            Self::Credit => "credit",
            Self::FeeWaiver => "fee_waiver",
        }
    }
}

/// A compensation offered by a recovery ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compensation {
    /// Refund, voucher, credit or fee waiver.
    pub kind: CompensationKind,
    /// Amount in minor units (cents); positive.
    pub amount_minor: u64,
    /// Same as the service's limits currency.
    pub currency: Currency,
}

/// One rung of a recovery ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryAction {
    /// Apologise to the customer.
    Apology {
        /// Where; `None` means the channel the case was opened on.
        channel: Option<Channel>,
    },
    /// Offer a compensation (needs a person's approval above the limit).
    Compensation(Compensation),
    /// Send the case back to fulfilment, at most `max_retries` times.
    Retry {
        /// At least 1.
        max_retries: u32,
    },
    /// Hand the case to a support tier.
    Escalate {
        /// The tier token, e.g. `tier2`.
        tier: String,
    },
}

/// What sets recovery off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecoveryTrigger {
    /// A fulfilment step failed for good.
    StepFailed,
    /// The deadline passed without the promise being kept.
    PromiseBroken,
    /// Feedback scored at or below the threshold.
    NegativeFeedback,
}

/// Compensation limits for one service, per tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompensationLimits {
    /// Currency of the limits and of every compensation in the ladders.
    pub currency: Currency,
    /// Compensations above this need a person's approval.
    pub auto_approve_limit_minor: u64,
    /// Most that may be granted per tenant per day for this service.
    pub daily_budget_minor: u64,
}

impl CompensationLimits {
    /// Whether a compensation of `amount_minor` needs a person's approval.
    pub fn needs_approval(&self, amount_minor: u64) -> bool {
        amount_minor > self.auto_approve_limit_minor
    }
}

/// What recovery does for a service.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryPolicy {
    /// Feedback scored at or below this (1–5) triggers recovery.
    pub negative_feedback_threshold: u8,
    /// Ladder for a step that failed for good.
    pub on_step_failed: Vec<RecoveryAction>,
    /// Ladder for a broken promise.
    pub on_promise_broken: Vec<RecoveryAction>,
    /// Ladder for negative feedback.
    pub on_negative_feedback: Vec<RecoveryAction>,
    /// Compensation limits.
    pub limits: CompensationLimits,
}

impl RecoveryPolicy {
    /// The ordered actions for `trigger`; never empty.
    pub fn ladder(&self, trigger: RecoveryTrigger) -> &[RecoveryAction] {
        match trigger {
            RecoveryTrigger::StepFailed => &self.on_step_failed,
            RecoveryTrigger::PromiseBroken => &self.on_promise_broken,
            RecoveryTrigger::NegativeFeedback => &self.on_negative_feedback,
        }
    }

    /// Whether a feedback `score` (1–5) triggers recovery.
    pub fn is_negative_feedback(&self, score: u8) -> bool {
        score <= self.negative_feedback_threshold
    }
}

/// One service of the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDef {
    /// Token, unique in the catalogue.
    pub code: String,
    /// Human-readable name.
    pub name: String,
    /// The purchase stages it is offered at; not empty, no repeats.
    pub stages: Vec<PurchaseStage>,
    /// What is promised.
    pub promise: Promise,
    /// The fulfilment workflow, in order; not empty.
    pub steps: Vec<Step>,
    /// What recovery does.
    pub recovery: RecoveryPolicy,
}

impl ServiceDef {
    /// When a promise for this service made at `made_at` falls due.
    pub fn promise_deadline(&self, made_at: DateTime<Utc>) -> DateTime<Utc> {
        self.promise.due(made_at)
    }

    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Whether the service is offered at `stage`.
    pub fn offered_at(&self, stage: PurchaseStage) -> bool {
        self.stages.contains(&stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_parsing_table() {
        use DeadlineUnit::*;
        let ok = [
            ("4 business hours", 4, BusinessHours),
            ("1 business hour", 1, BusinessHours),
            ("2 business days", 2, BusinessDays),
            ("90 business minutes", 90, BusinessMinutes),
            ("30 minutes", 30, Minutes),
            ("20 seconds", 20, Seconds),
            ("1 second", 1, Seconds),
            ("48 hours", 48, Hours),
            ("3 days", 3, Days),
            ("within 4 business hours", 4, BusinessHours),
            ("  2   business   days ", 2, BusinessDays),
        ];
        for (text, amount, unit) in ok {
            assert_eq!(text.parse(), Ok(Deadline { amount, unit }), "{text}");
        }
        let bad = [
            "4 buisness hours",
            "4",
            "hours",
            "four hours",
            "4 weeks",
            "-1 hours",
            "4 business",
            "business 4 hours",
            "0 minutes",
            "99999 days",
            "",
        ];
        for text in bad {
            let err = text.parse::<Deadline>().unwrap_err();
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
        }
    }

    #[test]
    fn deadline_display_round_trips() {
        for text in ["1 business day", "4 business hours", "30 minutes", "1 hour"] {
            assert_eq!(text.parse::<Deadline>().unwrap().to_string(), text);
        }
    }

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = policy(0.0);
        let secs: Vec<f64> = (1..=7).map(|a| p.backoff(a, 0.5).as_secs_f64()).collect();
        assert_eq!(secs, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]);
        assert_eq!(p.backoff(0, 0.0), Duration::from_secs(1));
        assert_eq!(p.backoff(u32::MAX, 0.0), Duration::from_secs(30));
        assert!(p.allows_another_attempt(4));
        assert!(!p.allows_another_attempt(5));
    }

    #[test]
    fn backoff_jitter_bounds() {
        let p = policy(0.25);
        for attempt in 1..=8 {
            let full = policy(0.0).backoff(attempt, 0.0);
            for sample in [0.0, 0.1, 0.5, 0.999, 1.0, -3.0, 7.0, f64::NAN] {
                let d = p.backoff(attempt, sample);
                assert!(d <= full, "attempt {attempt} sample {sample}");
                assert!(d >= full.mul_f64(0.75), "attempt {attempt} sample {sample}");
                assert!(d <= p.max_backoff);
            }
        }
        assert_eq!(p.backoff(3, 0.0), Duration::from_secs(4));
        assert_eq!(p.backoff(3, 1.0), Duration::from_secs(3));
    }
}
