//! Telling the customer: the one way intake and recovery turn a catalogue
//! template into the `CustomerMessage` an event records — the customer's
//! locale and time zone as the case was opened with, the promise's
//! deadline and outcome, the pinned catalogue's wording. Pure: no I/O.

use casework_catalog::{Catalog, MessageContext, MessageTrigger, ServiceDef};
use casework_domain::pb;
use chrono::{DateTime, Utc};

/// What a message needs to know of its case.
#[derive(Debug, Clone, Copy)]
pub struct CaseFacts<'a> {
    /// The case id, shown as the customer's reference.
    pub case_id: &'a str,
    /// The locale the case was opened with (empty: the catalogue's default).
    pub locale: &'a str,
    /// The customer's time zone (empty: the promise calendar's, else UTC).
    pub time_zone: &'a str,
    /// The promise's deadline.
    pub deadline: DateTime<Utc>,
}

/// The catalogue channel of an event-contract channel (none for
/// UNSPECIFIED or an unknown value).
pub fn catalog_channel(channel: i32) -> Option<casework_catalog::Channel> {
    use casework_catalog::Channel as C;
    Some(match pb::Channel::try_from(channel).ok()? {
        pb::Channel::Phone => C::Phone,
        pb::Channel::Email => C::Email,
        pb::Channel::Chat => C::Chat,
        pb::Channel::InPerson => C::InPerson,
        pb::Channel::Web => C::Web,
        pb::Channel::SelfService => C::SelfService,
        pb::Channel::Unspecified => return None,
    })
}

/// The message for `trigger`, sent on `channel`, rendered from `catalog`
/// (the case's pinned version) for `service`.
pub fn tell(
    catalog: &Catalog,
    service: &ServiceDef,
    case: CaseFacts<'_>,
    trigger: MessageTrigger,
    channel: i32,
    amount: Option<&pb::Money>,
) -> pb::CustomerMessage {
    let time_zone = case
        .time_zone
        .parse::<chrono_tz::Tz>()
        .ok()
        .or_else(|| service.promise.calendar.as_ref().map(|c| c.time_zone()))
        .unwrap_or(chrono_tz::UTC);
    let locale = if case.locale.is_empty() {
        catalog.default_locale()
    } else {
        case.locale
    };
    let ctx = MessageContext {
        service: &service.name,
        outcome: &service.promise.outcome,
        deadline: case.deadline,
        time_zone,
        case: case.case_id,
        amount: amount.map(|m| (m.amount_minor, m.currency.as_str())),
    };
    let m = catalog.message(
        &service.code,
        trigger,
        catalog_channel(channel),
        locale,
        &ctx,
    );
    pb::CustomerMessage {
        template_id: m.template_id,
        locale: m.locale,
        text: m.text,
    }
}
