//! Request validation (pure): every field is checked before anything is sent,
//! and each error names the field and says how to fix it. The output is a
//! typed command the decide functions take.

use std::collections::BTreeMap;

use casework_catalog::{Catalog, PurchaseStage as CatalogStage};
use casework_domain::text::TextKind;
use casework_domain::{CaseId, Tenant, pb};
use casework_proto::intake::v1 as api;

use crate::error::{Error, Result};

/// Longest customer reference.
pub const MAX_CUSTOMER_LEN: usize = 128;
/// Longest free text (summary, comment, reason).
pub const MAX_TEXT_LEN: usize = 2000;
/// Most attributes on a case.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute key.
pub const MAX_ATTRIBUTE_KEY_LEN: usize = 64;
/// Longest attribute value.
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 512;
/// Longest idempotency key or request id.
pub const MAX_KEY_LEN: usize = 128;
/// Longest actor id or display name.
pub const MAX_ACTOR_LEN: usize = 128;
/// Default page size of ListCases.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size of ListCases.
pub const MAX_PAGE_SIZE: usize = 500;

/// A validated OpenCase request.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenCase {
    /// The tenant.
    pub tenant: Tenant,
    /// The customer reference.
    pub customer_id: String,
    /// The channel.
    pub channel: pb::Channel,
    /// The purchase stage.
    pub stage: pb::PurchaseStage,
    /// The catalogue service (exists in the current catalogue and is offered
    /// at `stage`).
    pub service_code: String,
    /// What the customer asked for.
    pub summary: String,
    /// Channel attributes.
    pub attributes: BTreeMap<String, String>,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// Who opened the case.
    pub opened_by: Option<pb::Actor>,
    /// The customer's locale, normalised (`de-AT`); empty: the catalogue's
    /// default.
    pub locale: String,
    /// The customer's IANA time zone; empty: the promise calendar's.
    pub time_zone: String,
}

/// A validated request about an existing case (interaction, feedback,
/// withdrawal).
#[derive(Debug, Clone, PartialEq)]
pub struct CaseRequest<T> {
    /// The tenant.
    pub tenant: Tenant,
    /// The case.
    pub case_id: CaseId,
    /// The client's request id, if given (makes retries idempotent).
    pub request_id: Option<String>,
    /// The event payload to record.
    pub payload: T,
}

/// Free text (a summary, a comment, a reason): the shared rule
/// ([`casework_domain::text`]), line breaks allowed.
fn text(field: &str, value: &str, max: usize) -> Result<()> {
    check_text(field, value, TextKind::Free, max)
}

/// A reference, key or name on one line: the shared rule, no control
/// character at all.
fn token_like(field: &str, value: &str, max: usize) -> Result<()> {
    check_text(field, value, TextKind::Line, max)
}

fn check_text(field: &str, value: &str, kind: TextKind, max: usize) -> Result<()> {
    casework_domain::text::check(value, kind, max).map_err(|why| Error::invalid(field, why))
}

/// Validates a tenant field.
pub fn tenant(value: &str) -> Result<Tenant> {
    Tenant::parse(value).map_err(|e| Error::invalid("tenant", domain_why(e)))
}

/// Validates a customer reference (required).
pub fn customer_id(value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(
            "customer_id",
            "is empty; give the tenant's own customer reference",
        ));
    }
    token_like("customer_id", value, MAX_CUSTOMER_LEN)
}

/// Longest legal basis of an erasure.
pub const MAX_LEGAL_BASIS_LEN: usize = 500;

/// Validates the legal basis of an erasure (required).
pub fn legal_basis(value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(
            "legal_basis",
            "is empty; say why the data may be erased, e.g. \"GDPR Art. 17(1)(a), request 2026-118\"",
        ));
    }
    text("legal_basis", value, MAX_LEGAL_BASIS_LEN)
}

/// Validates a case id field.
pub fn case_id(value: &str) -> Result<CaseId> {
    CaseId::parse(value).map_err(|e| Error::invalid("case_id", domain_why(e)))
}

fn domain_why(e: casework_domain::Error) -> String {
    match e {
        casework_domain::Error::InvalidToken { value, why, .. } => format!("{value:?}: {why}"),
        other => other.to_string(),
    }
}

fn optional_key(field: &str, value: &str) -> Result<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    token_like(field, value, MAX_KEY_LEN)?;
    Ok(Some(value.to_owned()))
}

/// Validates a channel enum field (required).
pub fn channel(field: &str, value: i32) -> Result<pb::Channel> {
    match pb::Channel::try_from(value) {
        Ok(pb::Channel::Unspecified) | Err(_) => Err(Error::invalid(
            field,
            format!(
                "{value} is not a channel; give one of CHANNEL_PHONE, CHANNEL_EMAIL, CHANNEL_CHAT, \
                 CHANNEL_IN_PERSON, CHANNEL_WEB, CHANNEL_SELF_SERVICE"
            ),
        )),
        Ok(c) => Ok(c),
    }
}

fn stage(value: i32) -> Result<(pb::PurchaseStage, CatalogStage)> {
    match pb::PurchaseStage::try_from(value) {
        Ok(pb::PurchaseStage::PrePurchase) => {
            Ok((pb::PurchaseStage::PrePurchase, CatalogStage::PrePurchase))
        }
        Ok(pb::PurchaseStage::DuringPurchase) => Ok((
            pb::PurchaseStage::DuringPurchase,
            CatalogStage::DuringPurchase,
        )),
        Ok(pb::PurchaseStage::PostPurchase) => {
            Ok((pb::PurchaseStage::PostPurchase, CatalogStage::PostPurchase))
        }
        _ => Err(Error::invalid(
            "purchase_stage",
            format!(
                "{value} is not a purchase stage; give one of PURCHASE_STAGE_PRE_PURCHASE, \
                 PURCHASE_STAGE_DURING_PURCHASE, PURCHASE_STAGE_POST_PURCHASE"
            ),
        )),
    }
}

fn actor(field: &str, a: Option<&pb::Actor>) -> Result<Option<pb::Actor>> {
    let Some(a) = a else { return Ok(None) };
    if pb::ActorKind::try_from(a.kind).is_err() {
        return Err(Error::invalid(
            format!("{field}.kind"),
            format!(
                "{} is not an actor kind; give ACTOR_KIND_PERSON, ACTOR_KIND_CUSTOMER, ACTOR_KIND_SYSTEM or ACTOR_KIND_WORKER",
                a.kind
            ),
        ));
    }
    token_like(&format!("{field}.id"), &a.id, MAX_ACTOR_LEN)?;
    token_like(
        &format!("{field}.display_name"),
        &a.display_name,
        MAX_ACTOR_LEN,
    )?;
    Ok(Some(a.clone()))
}

/// Validates an OpenCase request against the current catalogue.
pub fn open_case(req: &api::OpenCaseRequest, catalog: &Catalog) -> Result<OpenCase> {
    let tenant = tenant(&req.tenant)?;
    customer_id(&req.customer_id)?;
    let channel = channel("channel", req.channel)?;
    let (stage, catalog_stage) = stage(req.purchase_stage)?;
    let offered = || {
        let codes: Vec<&str> = catalog
            .services_at(catalog_stage)
            .map(|s| s.code.as_str())
            .collect();
        if codes.is_empty() {
            "nothing".to_owned()
        } else {
            codes.join(", ")
        }
    };
    if req.service_code.is_empty() {
        return Err(Error::invalid(
            "service_code",
            format!(
                "is empty; services offered at {catalog_stage}: {}",
                offered()
            ),
        ));
    }
    let Some(service) = catalog.service(&req.service_code) else {
        return Err(Error::invalid(
            "service_code",
            format!(
                "unknown service {:?} in catalogue version {}; services offered at {catalog_stage}: {}",
                req.service_code.chars().take(80).collect::<String>(),
                catalog.version(),
                offered()
            ),
        ));
    };
    if !service.offered_at(catalog_stage) {
        let stages: Vec<&str> = service.stages.iter().map(|s| s.as_str()).collect();
        return Err(Error::invalid(
            "service_code",
            format!(
                "service {:?} is not offered at {catalog_stage} (it is offered at {}); services offered at {catalog_stage}: {}",
                service.code,
                stages.join(", "),
                offered()
            ),
        ));
    }
    text("summary", &req.summary, MAX_TEXT_LEN)?;
    if req.attributes.len() > MAX_ATTRIBUTES {
        return Err(Error::invalid(
            "attributes",
            format!(
                "has {} entries; give at most {MAX_ATTRIBUTES}",
                req.attributes.len()
            ),
        ));
    }
    for (k, v) in &req.attributes {
        if k.is_empty() {
            return Err(Error::invalid("attributes", "has an empty key"));
        }
        token_like("attributes (key)", k, MAX_ATTRIBUTE_KEY_LEN)?;
        token_like(&format!("attributes[{k}]"), v, MAX_ATTRIBUTE_VALUE_LEN)?;
    }
    let idempotency_key = optional_key("idempotency_key", &req.idempotency_key)?;
    let opened_by = actor("opened_by", req.opened_by.as_ref())?;
    let locale = if req.locale.is_empty() {
        String::new()
    } else {
        casework_catalog::normalize_locale(&req.locale).ok_or_else(|| {
            Error::invalid(
                "locale",
                format!(
                    "{:?} is not a locale; give a BCP 47 language with an optional region, e.g. \"de\", \"de-AT\" or \"en-GB\" (or leave it empty for the catalogue's default, {})",
                    req.locale.chars().take(40).collect::<String>(),
                    catalog.default_locale()
                ),
            )
        })?
    };
    if !req.time_zone.is_empty() && req.time_zone.parse::<chrono_tz::Tz>().is_err() {
        return Err(Error::invalid(
            "time_zone",
            format!(
                "{:?} is not an IANA time zone; give e.g. \"Europe/Berlin\" or \"America/New_York\" (or leave it empty for the promise calendar's)",
                req.time_zone.chars().take(60).collect::<String>()
            ),
        ));
    }
    Ok(OpenCase {
        tenant,
        customer_id: req.customer_id.clone(),
        channel,
        stage,
        service_code: service.code.clone(),
        summary: req.summary.clone(),
        attributes: req.attributes.clone().into_iter().collect(),
        idempotency_key,
        opened_by,
        locale,
        time_zone: req.time_zone.clone(),
    })
}

/// Validates a RecordInteraction request.
pub fn record_interaction(
    req: &api::RecordInteractionRequest,
) -> Result<CaseRequest<pb::InteractionRecorded>> {
    let (tenant, case_id) = (tenant(&req.tenant)?, case_id(&req.case_id)?);
    let channel = channel("channel", req.channel)?;
    let direction = match pb::Direction::try_from(req.direction) {
        Ok(pb::Direction::Unspecified) | Err(_) => {
            return Err(Error::invalid(
                "direction",
                format!(
                    "{} is not a direction; give DIRECTION_INBOUND or DIRECTION_OUTBOUND",
                    req.direction
                ),
            ));
        }
        Ok(d) => d,
    };
    text("summary", &req.summary, MAX_TEXT_LEN)?;
    let actor = actor("actor", req.actor.as_ref())?;
    Ok(CaseRequest {
        tenant,
        case_id,
        request_id: optional_key("request_id", &req.request_id)?,
        payload: pb::InteractionRecorded {
            channel: channel as i32,
            direction: direction as i32,
            summary: req.summary.clone(),
            actor,
            personal: None,
        },
    })
}

/// Validates a SubmitFeedback request.
pub fn submit_feedback(
    req: &api::SubmitFeedbackRequest,
) -> Result<CaseRequest<pb::FeedbackReceived>> {
    let (tenant, case_id) = (tenant(&req.tenant)?, case_id(&req.case_id)?);
    if !(1..=5).contains(&req.score) {
        return Err(Error::invalid(
            "score",
            format!(
                "{} is out of range; give 1 (very bad) to 5 (very good)",
                req.score
            ),
        ));
    }
    text("comment", &req.comment, MAX_TEXT_LEN)?;
    let channel = channel("channel", req.channel)?;
    Ok(CaseRequest {
        tenant,
        case_id,
        request_id: optional_key("request_id", &req.request_id)?,
        payload: pb::FeedbackReceived {
            score: req.score,
            comment: req.comment.clone(),
            channel: channel as i32,
            personal: None,
        },
    })
}

/// Validates a WithdrawCase request.
pub fn withdraw_case(req: &api::WithdrawCaseRequest) -> Result<CaseRequest<pb::CaseWithdrawn>> {
    let (tenant, case_id) = (tenant(&req.tenant)?, case_id(&req.case_id)?);
    text("reason", &req.reason, MAX_TEXT_LEN)?;
    let actor = actor("actor", req.actor.as_ref())?;
    Ok(CaseRequest {
        tenant,
        case_id,
        request_id: optional_key("request_id", &req.request_id)?,
        payload: pb::CaseWithdrawn {
            reason: req.reason.clone(),
            actor,
            personal: None,
        },
    })
}

/// A page position: after (opened_at nanos, case id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    /// opened_at of the last case of the previous page (Unix nanos).
    pub opened_at: i64,
    /// Its case id.
    pub case_id: String,
}

impl PageToken {
    /// The opaque text form.
    pub fn encode(&self) -> String {
        format!("v1.{}.{}", self.opened_at, self.case_id)
    }

    /// Parses the text form.
    pub fn decode(text: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "page_token",
                "is not a token this service issued; pass the next_page_token of the previous page, or leave it empty for the first page",
            )
        };
        let mut parts = text.splitn(3, '.');
        let (Some("v1"), Some(at), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let opened_at = at.parse().map_err(|_| bad())?;
        let case_id = CaseId::parse(id).map_err(|_| bad())?;
        Ok(Self {
            opened_at,
            case_id: case_id.to_string(),
        })
    }
}

/// A validated ListCases request.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// The tenant.
    pub tenant: Tenant,
    /// Only this status.
    pub status: Option<api::CaseStatus>,
    /// Only this customer.
    pub customer_id: Option<String>,
    /// Only breached / not breached.
    pub breached: Option<bool>,
    /// Cases per page.
    pub page_size: usize,
    /// Start after this position.
    pub after: Option<PageToken>,
}

/// Validates a ListCases request.
pub fn list_cases(req: &api::ListCasesRequest) -> Result<ListQuery> {
    let tenant = tenant(&req.tenant)?;
    let status = match api::CaseStatus::try_from(req.status) {
        Ok(api::CaseStatus::Unspecified) => None,
        Ok(s) => Some(s),
        Err(_) => {
            return Err(Error::invalid(
                "status",
                format!(
                    "{} is not a case status; give e.g. CASE_STATUS_OPEN or CASE_STATUS_CLOSED, or leave it unset for any",
                    req.status
                ),
            ));
        }
    };
    let customer_id = if req.customer_id.is_empty() {
        None
    } else {
        token_like("customer_id", &req.customer_id, MAX_CUSTOMER_LEN)?;
        Some(req.customer_id.clone())
    };
    let page_size = match req.page_size as usize {
        0 => DEFAULT_PAGE_SIZE,
        n if n > MAX_PAGE_SIZE => {
            return Err(Error::invalid(
                "page_size",
                format!(
                    "{n} is above the maximum; give at most {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"
                ),
            ));
        }
        n => n,
    };
    let after = if req.page_token.is_empty() {
        None
    } else {
        Some(PageToken::decode(&req.page_token)?)
    };
    Ok(ListQuery {
        tenant,
        status,
        customer_id,
        breached: req.breached,
        page_size,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> api::OpenCaseRequest {
        api::OpenCaseRequest {
            tenant: "acme".into(),
            customer_id: "cust-1".into(),
            channel: pb::Channel::Web as i32,
            purchase_stage: pb::PurchaseStage::PostPurchase as i32,
            service_code: "refund".into(),
            summary: "Parcel returned, want my money".into(),
            attributes: [("order".to_owned(), "A-1".to_owned())].into(),
            idempotency_key: "order-A-1".into(),
            opened_by: None,
            locale: "de_at".into(),
            time_zone: "Europe/Vienna".into(),
        }
    }

    #[test]
    fn a_good_request_passes() {
        let c = open_case(&good(), &casework_catalog::sample()).unwrap();
        assert_eq!(c.service_code, "refund");
        assert_eq!(c.idempotency_key.as_deref(), Some("order-A-1"));
        assert_eq!(c.locale, "de-AT", "normalised");
        assert_eq!(c.time_zone, "Europe/Vienna");
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutate = fn(&mut api::OpenCaseRequest);
        // given a change to a good request / then the error names this field
        let cases: &[(Mutate, &str, &str)] = &[
            (|r| r.tenant = "Acme".into(), "tenant", "lowercase"),
            (|r| r.tenant = String::new(), "tenant", "empty"),
            (|r| r.customer_id = String::new(), "customer_id", "empty"),
            (|r| r.customer_id = "x".repeat(129), "customer_id", "128"),
            (|r| r.channel = 0, "channel", "CHANNEL_PHONE"),
            (|r| r.channel = 99, "channel", "CHANNEL_PHONE"),
            (|r| r.purchase_stage = 0, "purchase_stage", "PRE_PURCHASE"),
            (
                |r| r.service_code = "teleport".into(),
                "service_code",
                "unknown service",
            ),
            (|r| r.service_code = String::new(), "service_code", "empty"),
            (
                |r| r.service_code = "product_enquiry".into(),
                "service_code",
                "not offered at post_purchase",
            ),
            (|r| r.summary = "s".repeat(2001), "summary", "2000"),
            (
                |r| r.attributes = (0..33).map(|i| (format!("k{i}"), "v".into())).collect(),
                "attributes",
                "at most 32",
            ),
            (
                |r| {
                    r.attributes = [("k".repeat(65), "v".into())].into();
                },
                "attributes (key)",
                "64",
            ),
            (
                |r| {
                    r.attributes = [("k".into(), "v".repeat(513))].into();
                },
                "attributes[k]",
                "512",
            ),
            (
                |r| r.idempotency_key = "k".repeat(129),
                "idempotency_key",
                "128",
            ),
            (
                |r| r.idempotency_key = "a\nb".into(),
                "idempotency_key",
                "control",
            ),
            (|r| r.locale = "german".into(), "locale", "not a locale"),
            (|r| r.locale = "de-AT-x".into(), "locale", "BCP 47"),
            (
                |r| r.time_zone = "Europe/Bxl".into(),
                "time_zone",
                "not an IANA time zone",
            ),
            (
                |r| r.time_zone = "CEST+2".into(),
                "time_zone",
                "Europe/Berlin",
            ),
        ];
        for (mutate, field, hint) in cases {
            let mut r = good();
            mutate(&mut r);
            let e = open_case(&r, &casework_catalog::sample()).unwrap_err();
            let Error::InvalidArgument { field: f, message } = &e else {
                panic!("{field}: expected InvalidArgument, got {e:?}");
            };
            assert_eq!(f, field, "{message}");
            assert!(message.contains(hint), "{field}: {message}");
        }
    }

    #[test]
    fn feedback_score_and_page_limits() {
        let fb = |score| api::SubmitFeedbackRequest {
            tenant: "acme".into(),
            case_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2B".into(),
            score,
            channel: pb::Channel::Email as i32,
            ..Default::default()
        };
        for (score, ok) in [(0, false), (1, true), (5, true), (6, false)] {
            assert_eq!(submit_feedback(&fb(score)).is_ok(), ok, "score {score}");
        }
        let mut bad_case = fb(3);
        bad_case.case_id = "nope".into();
        assert!(matches!(
            submit_feedback(&bad_case),
            Err(Error::InvalidArgument { field, .. }) if field == "case_id"
        ));
        let list = |page_size, page_token: &str| api::ListCasesRequest {
            tenant: "acme".into(),
            page_size,
            page_token: page_token.into(),
            ..Default::default()
        };
        assert_eq!(list_cases(&list(0, "")).unwrap().page_size, 50);
        assert_eq!(list_cases(&list(500, "")).unwrap().page_size, 500);
        assert!(matches!(
            list_cases(&list(501, "")),
            Err(Error::InvalidArgument { field, .. }) if field == "page_size"
        ));
        assert!(matches!(
            list_cases(&list(10, "garbage")),
            Err(Error::InvalidArgument { field, .. }) if field == "page_token"
        ));
        let t = PageToken {
            opened_at: 1_700_000_000_000_000_000,
            case_id: "01JD8X3V5R6M2Q4T7W9Y0Z1A2B".into(),
        };
        assert_eq!(PageToken::decode(&t.encode()).unwrap(), t);
    }
}
