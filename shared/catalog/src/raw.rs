//! The file schema exactly as written, before validation. Every table denies
//! unknown fields so a misspelt key is an error, not a silent default.
//! Values with their own syntax (deadlines, durations, times, currencies,
//! tokens) are kept as text here and checked by the loader, which can then
//! say which service and field is wrong.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::{Channel, CompensationKind, PurchaseStage};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCatalog {
    pub version: String,
    #[serde(default)]
    pub calendars: BTreeMap<String, RawCalendar>,
    pub services: BTreeMap<String, RawService>,
    /// Customer message templates (checked by `messages`).
    #[serde(default)]
    pub messages: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCalendar {
    pub time_zone: String,
    pub working_days: Vec<String>,
    pub opens: String,
    pub closes: String,
    /// TOML dates (`2026-12-25`) or strings (`"2026-12-25"`).
    #[serde(default)]
    pub holidays: Vec<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub name: String,
    pub stages: Vec<PurchaseStage>,
    pub promise: RawPromise,
    pub steps: Vec<RawStep>,
    pub recovery: RawRecovery,
    /// The service's own customer message templates.
    #[serde(default)]
    pub messages: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPromise {
    pub deadline: String,
    #[serde(default)]
    pub calendar: Option<String>,
    pub outcome: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    pub name: String,
    pub handler: RawHandler,
    pub timeout: String,
    pub retry: RawRetry,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RawHandler {
    Simulate {
        latency_ms: u64,
        failure_probability: f64,
    },
    External {
        task: String,
    },
    Manual {
        queue: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub max_attempts: u32,
    pub initial_backoff: String,
    pub max_backoff: String,
    pub multiplier: f64,
    pub jitter: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRecovery {
    pub negative_feedback_threshold: u8,
    pub on_step_failed: Vec<RawAction>,
    pub on_promise_broken: Vec<RawAction>,
    pub on_negative_feedback: Vec<RawAction>,
    pub limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RawAction {
    Apology {
        #[serde(default)]
        channel: Option<Channel>,
    },
    Compensation {
        kind: CompensationKind,
        amount_minor: u64,
        currency: String,
    },
    Retry {
        max_retries: u32,
    },
    Escalate {
        tier: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub currency: String,
    pub auto_approve_limit_minor: u64,
    pub daily_budget_minor: u64,
}
