//! The AsyncAPI document (services/ledger/asyncapi.yaml) against real
//! messages: events of every type are appended through casework-caselog to
//! a real nats-server, read back raw with their stored headers, and checked
//! against the document — subjects against the channel address and its
//! parameters, every header present declared, every required header present
//! and matching its pattern, one message per event type.

mod common;

use std::collections::BTreeSet;

use casework_caselog::CaseLog;
use casework_caselog::conformance::new_case;
use casework_domain::pb::{self, envelope::Payload};
use casework_domain::{CaseId, EventType, Tenant};
use common::*;
use serde_yaml::Value;

fn doc() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/asyncapi.yaml"))
        .expect("asyncapi.yaml");
    serde_yaml::from_str(&text).expect("asyncapi.yaml is YAML")
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A default payload of every event type.
fn payload_of(t: EventType) -> Payload {
    use EventType as E;
    match t {
        E::CaseOpened => Payload::CaseOpened(pb::CaseOpened::default()),
        E::PromiseMade => Payload::PromiseMade(pb::PromiseMade::default()),
        E::InteractionRecorded => Payload::InteractionRecorded(pb::InteractionRecorded::default()),
        E::FeedbackReceived => Payload::FeedbackReceived(pb::FeedbackReceived::default()),
        E::CaseWithdrawn => Payload::CaseWithdrawn(pb::CaseWithdrawn::default()),
        E::CustomerNotified => Payload::CustomerNotified(pb::CustomerNotified::default()),
        E::CaseClosed => Payload::CaseClosed(pb::CaseClosed::default()),
        E::FulfilmentStarted => Payload::FulfilmentStarted(pb::FulfilmentStarted::default()),
        E::StepStarted => Payload::StepStarted(pb::StepStarted::default()),
        E::StepCompleted => Payload::StepCompleted(pb::StepCompleted::default()),
        E::StepFailed => Payload::StepFailed(pb::StepFailed::default()),
        E::PromiseKept => Payload::PromiseKept(pb::PromiseKept::default()),
        E::FulfilmentFailed => Payload::FulfilmentFailed(pb::FulfilmentFailed::default()),
        E::PromiseBroken => Payload::PromiseBroken(pb::PromiseBroken::default()),
        E::RecoveryStarted => Payload::RecoveryStarted(pb::RecoveryStarted::default()),
        E::ApologySent => Payload::ApologySent(pb::ApologySent::default()),
        E::CompensationProposed => {
            Payload::CompensationProposed(pb::CompensationProposed::default())
        }
        E::CompensationApproved => {
            Payload::CompensationApproved(pb::CompensationApproved::default())
        }
        E::CompensationDeclined => {
            Payload::CompensationDeclined(pb::CompensationDeclined::default())
        }
        E::CompensationGranted => Payload::CompensationGranted(pb::CompensationGranted::default()),
        E::RetryRequested => Payload::RetryRequested(pb::RetryRequested::default()),
        E::CaseEscalated => Payload::CaseEscalated(pb::CaseEscalated::default()),
        E::RecoveryCompleted => Payload::RecoveryCompleted(pb::RecoveryCompleted::default()),
        E::PersonalDataErased => Payload::PersonalDataErased(pb::PersonalDataErased::default()),
    }
}

#[test]
fn the_document_describes_every_event_type() {
    let d = doc();
    assert_eq!(d["asyncapi"].as_str(), Some("3.0.0"));
    let channel = &d["channels"]["caseEvents"];
    assert_eq!(
        channel["address"].as_str(),
        Some("case.{tenant}.{caseId}.{writer}.{eventType}")
    );
    let types = strs(&channel["parameters"]["eventType"]["enum"]);
    let names: BTreeSet<String> = d["components"]["messages"]
        .as_mapping()
        .unwrap()
        .values()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    for t in EventType::ALL {
        assert!(
            types.contains(&t.as_str().to_owned()),
            "{t} in the eventType enum"
        );
        assert!(names.contains(t.as_str()), "a message for {t}");
    }
    assert_eq!(names.len(), EventType::ALL.len());
    for m in d["components"]["messages"].as_mapping().unwrap().values() {
        let t = EventType::parse(m["name"].as_str().unwrap()).unwrap();
        assert_eq!(m["x-writer"].as_str(), Some(t.writer().as_str()), "{t}");
        assert!(
            m["payload"]["schema"]
                .as_str()
                .unwrap()
                .contains("casework.events.v1.Envelope")
        );
    }
    assert_eq!(
        strs(&channel["parameters"]["writer"]["enum"]),
        vec!["intake", "fulfilment", "recovery"]
    );
}

#[tokio::test]
async fn real_messages_match_the_document() {
    let d = doc();
    let (_server, log) = server().await;
    // every event type, one decision each, plus realistic multi-event
    // decisions (one message per event, each with its own guard)
    let case = new_case("acme");
    let mut head = None;
    for (i, t) in EventType::ALL.iter().enumerate() {
        let e = ev(&case, &format!("all-{i}"), at(i as i64), payload_of(*t));
        head = Some(
            log.append(&case, head.as_ref(), vec![e])
                .await
                .unwrap()
                .head,
        );
    }
    sample(log.as_ref(), "globex", true).await;

    let channel = &d["channels"]["caseEvents"];
    let writers = strs(&channel["parameters"]["writer"]["enum"]);
    let types = strs(&channel["parameters"]["eventType"]["enum"]);
    let headers = &d["components"]["schemas"]["EventHeaders"];
    let props = headers["properties"].as_mapping().unwrap();
    let required = strs(&headers["required"]);
    let messages = d["components"]["messages"].as_mapping().unwrap();

    let js = async_nats::jetstream::new(log.client().clone());
    let stream = js.get_stream("CASES").await.unwrap();
    let last = log.last_stream_seq().await.unwrap();
    let mut seen = BTreeSet::new();
    for seq in 1..=last {
        let msg = stream.get_raw_message(seq).await.unwrap();
        // subject against the channel address
        let tokens: Vec<&str> = msg.subject.split('.').collect();
        assert_eq!(tokens.len(), 5, "{}", msg.subject);
        assert_eq!(tokens[0], "case");
        Tenant::parse(tokens[1]).unwrap();
        CaseId::parse(tokens[2]).unwrap();
        assert!(writers.iter().any(|w| w == tokens[3]), "{}", msg.subject);
        assert!(types.iter().any(|t| t == tokens[4]), "{}", msg.subject);
        let message = messages
            .values()
            .find(|m| m["name"].as_str() == Some(tokens[4]))
            .expect("a message for the event type");
        // headers
        let mut present = BTreeSet::new();
        for (name, values) in msg.headers.iter() {
            let name = name.to_string();
            let value = values
                .first()
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let decl = props
                .get(Value::String(name.clone()))
                .unwrap_or_else(|| panic!("header {name} of {} is not declared", msg.subject));
            if let Some(p) = decl["pattern"].as_str() {
                let re = regex::Regex::new(p).unwrap();
                assert!(re.is_match(&value), "{name}: {value:?} does not match {p}");
            }
            if let Some(c) = decl["const"].as_str() {
                assert_eq!(value, c, "{name}");
            }
            present.insert(name);
        }
        for r in &required {
            assert!(
                present.contains(r),
                "required header {r} missing on {}",
                msg.subject
            );
        }
        let h = |k: &str| msg.headers.get(k).unwrap().as_str().to_owned();
        let ce_type = message["headers"]["allOf"][1]["properties"]["ce-type"]["const"]
            .as_str()
            .unwrap();
        assert_eq!(h("ce-type"), ce_type);
        let env = casework_domain::chain::decode(&msg.payload).unwrap();
        assert_eq!(h("ce-id"), env.event_id);
        assert_eq!(h("Nats-Msg-Id"), env.event_id);
        assert_eq!(h("ce-subject"), env.case_id);
        assert_eq!(h("ce-tenant"), env.tenant);
        assert_eq!(h("ce-casesequence"), env.sequence.to_string());
        assert_eq!(
            h("ce-source"),
            format!("/casework/{}/{}", env.tenant, env.writer)
        );
        seen.insert(tokens[4].to_owned());
    }
    assert_eq!(
        seen.len(),
        EventType::ALL.len(),
        "every event type was checked on a real message"
    );
}
