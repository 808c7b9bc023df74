//! `casework-catalog` owns the versioned **service catalogue**: the TOML
//! schema, loading and validating it with errors that name the file, the
//! service and the field and say how to fix them, the typed model every
//! service reads (promise, fulfilment workflow, recovery policy,
//! compensation limits), the business calendars and their arithmetic
//! (promise deadlines across nights, weekends, holidays and DST), retry
//! back-off, and the set of catalogue versions a case can be pinned to by
//! `(version, digest)`. It is pure code: it must not do network I/O, spawn
//! tasks, read the clock or draw random numbers — the only I/O is reading
//! catalogue files when asked, and callers pass in `now` and jitter samples.
//!
//! Layout: `raw` (the file schema as serde structs, unknown fields denied),
//! `catalog` (loading and validation into [`Catalog`]), `catalogs` (the
//! version set, [`Catalogs`]), `model` (services, promises, steps, recovery),
//! `calendar` (business time), `version` (version order), `text` (small
//! parsers), `error` ([`Error`], [`Problem`]).
//!
//! Decisions, recorded here because DESIGN.md is silent on them:
//! - Services are keyed by code (`[services.refund]`), so the code is the
//!   key and a duplicate code is a TOML duplicate-key error with its line.
//! - Business hours add real time inside working intervals; business days
//!   keep the wall-clock time of day (2 business days from 16:00 Friday is
//!   16:00 Tuesday). A start outside hours counts from the next opening, and
//!   a deadline that lands on a closing time stays there.
//! - `current()` is the highest version in natural order
//!   (`2026-11-01.10` > `2026-11-01.9`); the version in force when a promise
//!   is made is recorded with it as a [`CatalogPin`], and replay asks
//!   [`Catalogs::pinned`], which also checks the digest.
//! - Retry back-off jitter only shortens a delay (by up to `jitter` of it),
//!   so `max_backoff` is a hard cap.
//!
//! The schema, in brief (see `sample/catalog.toml` for a full example):
//!
//! ```toml
//! version = "2026-11-01.1"
//!
//! [calendars.berlin_office]
//! time_zone = "Europe/Berlin"
//! working_days = ["mon", "tue", "wed", "thu", "fri"]
//! opens = "09:00"
//! closes = "17:30"           # "24:00" closes at midnight
//! holidays = [2026-12-25, 2026-12-26]
//!
//! [services.refund]
//! name = "Refund"
//! stages = ["post_purchase"]
//! promise = { deadline = "2 business days", calendar = "berlin_office", outcome = "Money back on the original payment method" }
//!
//! [[services.refund.steps]]
//! name = "issue_refund"
//! handler = { type = "external", task = "payment_refund" }  # or simulate / manual
//! timeout = "30s"
//! retry = { max_attempts = 5, initial_backoff = "1s", max_backoff = "1m", multiplier = 2.0, jitter = 0.2 }
//!
//! [services.refund.recovery]
//! negative_feedback_threshold = 2
//! on_step_failed = [{ action = "retry", max_retries = 2 }, { action = "escalate", tier = "payments" }]
//! on_promise_broken = [{ action = "apology" }, { action = "compensation", kind = "voucher", amount_minor = 1000, currency = "EUR" }]
//! on_negative_feedback = [{ action = "apology", channel = "email" }]
//! limits = { currency = "EUR", auto_approve_limit_minor = 2500, daily_budget_minor = 100000 }
//! ```

mod calendar;
mod catalog;
mod catalogs;
mod error;
mod messages;
mod model;
mod raw;
mod text;
mod version;

pub use calendar::Calendar;
pub use catalog::{Catalog, CatalogPin};
pub use catalogs::Catalogs;
pub use error::{Error, Problem, Result};
pub use messages::{
    MessageContext, MessageTrigger, Placeholder, RenderedMessage, normalize_locale,
};
pub use model::{
    Channel, Compensation, CompensationKind, CompensationLimits, Currency, Deadline, DeadlineUnit,
    Handler, Promise, PurchaseStage, RecoveryAction, RecoveryPolicy, RecoveryTrigger, RetryPolicy,
    ServiceDef, Step,
};
pub use text::{MAX_TOKEN_LEN, parse_duration};
pub use version::CatalogVersion;

/// The bundled sample catalogue's text (`sample/catalog.toml`).
pub const SAMPLE_TOML: &str = include_str!("../sample/catalog.toml");

/// The name the sample catalogue reports in errors and as its origin.
pub const SAMPLE_ORIGIN: &str = "sample/catalog.toml";

/// The bundled sample catalogue, for tests and the local demo.
///
/// # Panics
///
/// Never in practice: the sample is validated by this crate's tests.
pub fn sample() -> Catalog {
    Catalog::from_toml_str(SAMPLE_TOML, SAMPLE_ORIGIN)
        .expect("the bundled sample catalogue is valid (checked by the crate's tests)")
}
