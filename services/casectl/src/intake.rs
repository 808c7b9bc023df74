//! Commands served by intake: open, show, list, feedback, withdraw, erase
//! (casework.intake.v1.Intake).

use casework_proto::intake::v1 as api;
use casework_proto::intake::v1::intake_client::IntakeClient;
use clap::{Args, ValueEnum};
use serde_json::json;

use crate::{Channel, Error, Report, Result, Target, parse_case, require_tenant};

async fn client(url: &Target) -> Result<IntakeClient<crate::Authed>> {
    Ok(IntakeClient::new(crate::authed("intake", url).await?))
}

/// Where the customer is in the purchase journey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// Before buying.
    PrePurchase,
    /// While buying.
    DuringPurchase,
    /// After buying.
    PostPurchase,
}

/// `open`.
#[derive(Debug, Clone, Args)]
pub struct OpenArgs {
    /// The tenant's own customer reference.
    #[arg(long)]
    pub customer: String,
    /// Service code from the catalogue (e.g. refund).
    #[arg(long)]
    pub service: String,
    /// The channel the customer used.
    #[arg(long, value_enum, default_value = "web")]
    pub channel: Channel,
    /// Purchase stage.
    #[arg(long, value_enum, default_value = "post-purchase")]
    pub stage: Stage,
    /// What the customer asked for.
    #[arg(long, default_value = "")]
    pub summary: String,
    /// Idempotency key: retrying with the same key finds the same case.
    #[arg(long)]
    pub key: Option<String>,
    /// Attributes from the channel, KEY=VALUE (repeatable).
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    pub attributes: Vec<String>,
    /// The locale the customer reads (e.g. de, de-AT, en-GB); default: the
    /// catalogue's.
    #[arg(long)]
    pub locale: Option<String>,
    /// The customer's IANA time zone (e.g. Europe/Berlin); default: the
    /// promise calendar's.
    #[arg(long)]
    pub time_zone: Option<String>,
}

/// `list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only cases in this status.
    #[arg(long, value_enum)]
    pub status: Option<Status>,
    /// Only this customer's cases.
    #[arg(long)]
    pub customer: Option<String>,
    /// Only cases whose promise is breached.
    #[arg(long)]
    pub breached: bool,
    /// Cases per page.
    #[arg(long, default_value_t = 50)]
    pub page_size: u32,
    /// Continue from a page token printed by a previous list.
    #[arg(long)]
    pub page: Option<String>,
}

/// A case status filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Status {
    /// Open.
    Open,
    /// Fulfilling.
    Fulfilling,
    /// Kept.
    Kept,
    /// Failed.
    Failed,
    /// Recovering.
    Recovering,
    /// Recovered.
    Recovered,
    /// Withdrawn.
    Withdrawn,
    /// Closed.
    Closed,
}

impl Status {
    fn pb(self) -> api::CaseStatus {
        match self {
            Status::Open => api::CaseStatus::Open,
            Status::Fulfilling => api::CaseStatus::Fulfilling,
            Status::Kept => api::CaseStatus::Kept,
            Status::Failed => api::CaseStatus::Failed,
            Status::Recovering => api::CaseStatus::Recovering,
            Status::Recovered => api::CaseStatus::Recovered,
            Status::Withdrawn => api::CaseStatus::Withdrawn,
            Status::Closed => api::CaseStatus::Closed,
        }
    }
}

/// `feedback`.
#[derive(Debug, Clone, Args)]
pub struct FeedbackArgs {
    /// The case: TENANT/CASE_ID, or CASE_ID with --tenant.
    #[arg(value_name = "CASE")]
    pub case: String,
    /// 1 (very bad) to 5 (very good).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub score: u32,
    /// The customer's words.
    #[arg(long, default_value = "")]
    pub comment: String,
    /// The channel the feedback came on.
    #[arg(long, value_enum, default_value = "web")]
    pub channel: Channel,
    /// Request id (a retry with the same id records it once).
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `withdraw`.
#[derive(Debug, Clone, Args)]
pub struct WithdrawArgs {
    /// The case: TENANT/CASE_ID, or CASE_ID with --tenant.
    #[arg(value_name = "CASE")]
    pub case: String,
    /// Why the customer withdrew.
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Request id (a retry with the same id withdraws once).
    #[arg(long)]
    pub request_id: Option<String>,
}

/// `erase`.
#[derive(Debug, Clone, Args)]
pub struct EraseArgs {
    /// The tenant's customer reference, as given when cases were opened.
    #[arg(long)]
    pub customer: String,
    /// Why the data may be erased (article and request reference), recorded
    /// in each erasure event.
    #[arg(long)]
    pub legal_basis: String,
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .map(|t| casework_domain::chain::from_timestamp(t).to_rfc3339())
        .unwrap_or_default()
}

fn status_name(s: i32) -> String {
    api::CaseStatus::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("CASE_STATUS_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".to_owned())
}

/// A proto enum's name as people read it: `CHANNEL_EMAIL` → `email`; empty
/// for UNSPECIFIED.
fn enum_name(name: Option<&str>, prefix: &str) -> String {
    match name {
        Some(n) if n.ends_with("_UNSPECIFIED") => String::new(),
        Some(n) => n.trim_start_matches(prefix).to_lowercase(),
        None => "?".to_owned(),
    }
}

/// Left-aligned columns as wide as their widest cell (counted in
/// characters), two spaces apart, no trailing blanks.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn case_json(c: &api::Case) -> serde_json::Value {
    use casework_proto::events::v1 as ev;
    json!({
        "tenant": c.tenant,
        "case_id": c.case_id,
        "customer_id": c.customer_id,
        "channel": enum_name(ev::Channel::try_from(c.channel).ok().map(|x| x.as_str_name()), "CHANNEL_"),
        "purchase_stage": enum_name(
            ev::PurchaseStage::try_from(c.purchase_stage).ok().map(|x| x.as_str_name()),
            "PURCHASE_STAGE_",
        ),
        "service_code": c.service_code,
        "summary": c.summary,
        "status": status_name(c.status),
        "resolution": enum_name(
            ev::Resolution::try_from(c.resolution).ok().map(|x| x.as_str_name()),
            "RESOLUTION_",
        ),
        "closed_at": ts(&c.closed_at),
        "interactions": c.interactions,
        "deadline": c.promise.as_ref().map(|p| ts(&p.deadline)),
        "breached": c.breached,
        "promise_kept": c.promise_kept,
        "kept_late": c.kept_late,
        "promise_broken": c.promise_broken,
        "events": c.event_count,
        "recoveries": c.recoveries,
        "feedback": c.feedback_scores,
        "opened_at": ts(&c.opened_at),
        "updated_at": ts(&c.updated_at),
    })
}

/// `casectl open`.
pub async fn open(url: &Target, tenant: Option<&str>, a: OpenArgs) -> Result<Report> {
    let tenant = require_tenant(tenant)?;
    let mut attributes = std::collections::BTreeMap::new();
    for kv in &a.attributes {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--attr {kv:?}: expected KEY=VALUE")))?;
        attributes.insert(k.to_owned(), v.to_owned());
    }
    let stage = match a.stage {
        Stage::PrePurchase => casework_domain::pb::PurchaseStage::PrePurchase,
        Stage::DuringPurchase => casework_domain::pb::PurchaseStage::DuringPurchase,
        Stage::PostPurchase => casework_domain::pb::PurchaseStage::PostPurchase,
    };
    let r = client(url)
        .await?
        .open_case(api::OpenCaseRequest {
            tenant: tenant.clone(),
            customer_id: a.customer,
            channel: a.channel.pb() as i32,
            purchase_stage: stage as i32,
            service_code: a.service,
            summary: a.summary,
            attributes,
            idempotency_key: a.key.unwrap_or_default(),
            opened_by: None,
            locale: a.locale.unwrap_or_default(),
            time_zone: a.time_zone.unwrap_or_default(),
        })
        .await
        .map_err(|e| Error::from_status("open", e))?
        .into_inner();
    let p = r.promise.unwrap_or_default();
    let told = p.customer_message.clone().unwrap_or_default();
    Ok(Report::ok(
        format!(
            "case {tenant}/{}{}\npromise: {} by {} ({}; catalogue {})\ntold the customer ({}, {}): {}\n",
            r.case_id,
            if r.replayed {
                " (already open: same idempotency key)"
            } else {
                ""
            },
            p.promised_outcome,
            ts(&p.deadline),
            p.deadline_rule,
            p.catalog_version,
            told.locale,
            told.template_id,
            told.text
        ),
        json!({
            "tenant": tenant,
            "case_id": r.case_id,
            "replayed": r.replayed,
            "opened_at": ts(&r.opened_at),
            "promise": {
                "service_code": p.service_code,
                "deadline": ts(&p.deadline),
                "promised_outcome": p.promised_outcome,
                "deadline_rule": p.deadline_rule,
                "catalog_version": p.catalog_version,
                "catalog_digest": p.catalog_digest,
                "customer_message": {
                    "template_id": told.template_id,
                    "locale": told.locale,
                    "text": told.text,
                },
            },
        }),
    ))
}

/// `casectl show`.
pub async fn show(url: &Target, tenant: Option<&str>, a: crate::CaseArg) -> Result<Report> {
    let (t, c) = parse_case(&a.case, tenant)?;
    let r = client(url)
        .await?
        .get_case(api::GetCaseRequest {
            tenant: t,
            case_id: c,
        })
        .await
        .map_err(|e| Error::from_status("show", e))?
        .into_inner();
    let c = r
        .case
        .ok_or_else(|| Error::Failed("intake returned no case".to_owned()))?;
    let j = case_json(&c);
    let mut text = String::new();
    for (k, v) in j.as_object().into_iter().flatten() {
        let v = match v {
            // Not set yet (a case still open has no resolution).
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) if s.is_empty() => continue,
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.push_str(&format!("{k:14} {v}\n"));
    }
    Ok(Report::ok(text, j))
}

/// `casectl list`.
pub async fn list(url: &Target, tenant: Option<&str>, a: ListArgs) -> Result<Report> {
    let tenant = require_tenant(tenant)?;
    let r = client(url)
        .await?
        .list_cases(api::ListCasesRequest {
            tenant,
            status: a.status.map_or(0, |s| s.pb() as i32),
            customer_id: a.customer.unwrap_or_default(),
            breached: a.breached.then_some(true),
            page_size: a.page_size,
            page_token: a.page.unwrap_or_default(),
        })
        .await
        .map_err(|e| Error::from_status("list", e))?
        .into_inner();
    let rows: Vec<Vec<String>> = r
        .cases
        .iter()
        .map(|c| {
            vec![
                c.case_id.clone(),
                status_name(c.status),
                c.service_code.clone(),
                c.customer_id.clone(),
                c.event_count.to_string(),
                c.promise
                    .as_ref()
                    .map(|p| ts(&p.deadline))
                    .unwrap_or_default(),
                if c.breached { "BREACHED" } else { "" }.to_owned(),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "CASE", "STATUS", "SERVICE", "CUSTOMER", "EVENTS", "DEADLINE", "",
        ],
        &rows,
    );
    if !r.next_page_token.is_empty() {
        text.push_str(&format!("more: --page {}\n", r.next_page_token));
    }
    Ok(Report::ok(
        text,
        json!({
            "cases": r.cases.iter().map(case_json).collect::<Vec<_>>(),
            "next_page_token": r.next_page_token,
        }),
    ))
}

fn recorded(what: &str, r: Option<api::Recorded>) -> Report {
    let r = r.unwrap_or_default();
    Report::ok(
        format!(
            "{what} recorded as event {} (sequence {}){}\n",
            r.event_id,
            r.sequence,
            if r.replayed {
                ", already recorded before"
            } else {
                ""
            }
        ),
        json!({ "case_id": r.case_id, "event_id": r.event_id, "sequence": r.sequence, "replayed": r.replayed }),
    )
}

/// `casectl feedback`.
pub async fn feedback(url: &Target, tenant: Option<&str>, a: FeedbackArgs) -> Result<Report> {
    let (t, c) = parse_case(&a.case, tenant)?;
    let r = client(url)
        .await?
        .submit_feedback(api::SubmitFeedbackRequest {
            tenant: t,
            case_id: c,
            score: a.score,
            comment: a.comment,
            channel: a.channel.pb() as i32,
            request_id: a.request_id.unwrap_or_default(),
        })
        .await
        .map_err(|e| Error::from_status("feedback", e))?
        .into_inner();
    Ok(recorded("feedback", r.recorded))
}

/// `casectl withdraw`.
pub async fn withdraw(url: &Target, tenant: Option<&str>, a: WithdrawArgs) -> Result<Report> {
    let (t, c) = parse_case(&a.case, tenant)?;
    let r = client(url)
        .await?
        .withdraw_case(api::WithdrawCaseRequest {
            tenant: t,
            case_id: c,
            reason: a.reason,
            actor: None,
            request_id: a.request_id.unwrap_or_default(),
        })
        .await
        .map_err(|e| Error::from_status("withdraw", e))?
        .into_inner();
    Ok(recorded("withdrawal", r.recorded))
}

/// `casectl erase`.
pub async fn erase(url: &Target, tenant: Option<&str>, a: EraseArgs) -> Result<Report> {
    let tenant = require_tenant(tenant)?;
    let r = client(url)
        .await?
        .erase_customer(api::EraseCustomerRequest {
            tenant,
            customer_id: a.customer,
            legal_basis: a.legal_basis,
        })
        .await
        .map_err(|e| Error::from_status("erase", e))?
        .into_inner();
    Ok(Report::ok(
        format!(
            "erased the personal data of pseudonym {} (key {} destroyed) in {} case(s): {}",
            r.subject,
            r.key_id,
            r.case_ids.len(),
            r.case_ids.join(", ")
        ),
        json!({ "subject": r.subject, "key_id": r.key_id, "case_ids": r.case_ids }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let rows = vec![
            vec![
                "a".to_owned(),
                "a-very-long-service-name".to_owned(),
                "x".to_owned(),
            ],
            vec!["bbbb".to_owned(), "refund".to_owned(), String::new()],
        ];
        let t = table(&["ID", "SERVICE", "FLAG"], &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ID    SERVICE                   FLAG");
        assert_eq!(lines[1], "a     a-very-long-service-name  x");
        assert_eq!(lines[2], "bbbb  refund");
        // Every column starts where its header does.
        let col = lines[0].find("FLAG").unwrap();
        assert_eq!(lines[1].find('x'), Some(col));
    }

    #[test]
    fn a_case_shows_its_channel_and_resolution() {
        let c = api::Case {
            channel: casework_proto::events::v1::Channel::InPerson as i32,
            resolution: casework_proto::events::v1::Resolution::Recovered as i32,
            ..Default::default()
        };
        let j = case_json(&c);
        assert_eq!(j["channel"], "in_person");
        assert_eq!(j["resolution"], "recovered");
        let open = case_json(&api::Case::default());
        assert_eq!(open["resolution"], "", "UNSPECIFIED is shown as not set");
    }
}
