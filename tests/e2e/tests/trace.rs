//! One case's journey caller → intake → fulfilment → recovery → intake is
//! one trace, the caller's (sent as `traceparent` gRPC metadata): the services run in this process (each with its own NATS user and
//! data directory, talking only through NATS) with OTLP export pointed at an
//! in-process OTLP/gRPC receiver; the spans it receives for the case — from
//! every service's reconcile — share one trace id. Nothing is read from our
//! own logs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use casework_e2e::nats_users;
use casework_proto::events::v1 as pb;
use casework_proto::fulfilment::v1 as fapi;
use casework_proto::intake::v1 as iapi;
use casework_runtime::options::NatsSettings;
use casework_testkit::{NatsServer, eventually};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

/// (trace id hex, span name, attributes) of every span received.
type Spans = Arc<Mutex<Vec<(String, String, BTreeMap<String, String>)>>>;

#[derive(Clone)]
struct Receiver(Spans);

#[async_trait::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = s
                        .attributes
                        .iter()
                        .filter_map(|kv| {
                            let v = match kv.value.as_ref()?.value.as_ref()? {
                                AnyValue::StringValue(v) => v.clone(),
                                AnyValue::IntValue(v) => v.to_string(),
                                other => format!("{other:?}"),
                            };
                            Some((kv.key.clone(), v))
                        })
                        .collect();
                    spans.push((hex(&s.trace_id), s.name.clone(), attrs));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const CATALOG: &str = r#"
version = "trace-1"

[services.doomed]
name = "Fails, is retried, fails again, is escalated"
stages = ["post_purchase"]
promise = { deadline = "30 minutes", outcome = "Never happens" }

[[services.doomed.steps]]
name = "impossible"
handler = { type = "simulate", latency_ms = 50, failure_probability = 1.0 }
timeout = "3s"
retry = { max_attempts = 1, initial_backoff = "200ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.1 }

[services.doomed.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "apology" }, { action = "retry", max_retries = 1 }, { action = "escalate", tier = "tier2" }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 1000000 }

[services.outsourced]
name = "Done by an external worker"
stages = ["post_purchase"]
promise = { deadline = "30 minutes", outcome = "Done by the back office" }

[[services.outsourced.steps]]
name = "back_office"
handler = { type = "external", task = "trace_task" }
timeout = "30s"
retry = { max_attempts = 1, initial_backoff = "200ms", max_backoff = "1s", multiplier = 2.0, jitter = 0.1 }

[services.outsourced.recovery]
negative_feedback_threshold = 2
on_step_failed = [{ action = "apology" }]
on_promise_broken = [{ action = "apology" }]
on_negative_feedback = [{ action = "apology" }]
limits = { currency = "EUR", auto_approve_limit_minor = 1000, daily_budget_minor = 1000000 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cases_journey_through_every_service_is_one_trace() {
    // The in-process OTLP receiver.
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let receiver = Receiver(spans.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    assert!(
        casework_telemetry::init(&casework_telemetry::Config {
            service_name: "casework-trace-test".into(),
            filter: "info".into(),
            otlp_endpoint: Some(format!("http://{otlp}")),
            ..Default::default()
        }),
        "telemetry is installed once, by this test"
    );

    let nats = NatsServer::start_with(&nats_users());
    let dir = nats.scratch_dir().to_owned();
    let catalog = dir.join("catalog.toml");
    std::fs::write(&catalog, CATALOG).unwrap();
    let shutdown = casework_runtime::Shutdown::new();
    macro_rules! start {
        ($krate:ident, $name:literal) => {{
            let mut o = $krate::default_options();
            o.instance = format!("{}-0", $name);
            o.data_dir = dir.join($name);
            o.grpc_listen = "127.0.0.1:0".parse().unwrap();
            o.http_listen = "127.0.0.1:0".parse().unwrap();
            o.catalog = vec![catalog.clone()];
            o.nats = NatsSettings {
                url: nats.url(),
                user: Some($name.into()),
                password: Some(format!("pw-{}", $name)),
                ..Default::default()
            };
            $krate::start(o, shutdown.clone()).await.unwrap()
        }};
    }
    let intake = start!(casework_intake, "intake");
    let fulfilment = start!(casework_fulfilment, "fulfilment");
    let _recovery = start!(casework_recovery, "recovery");

    let mut client = iapi::intake_client::IntakeClient::connect(format!("http://{}", intake.grpc))
        .await
        .unwrap();
    // The caller is traced: its context travels as `traceparent` metadata,
    // and the journey continues the caller's trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut open = tonic::Request::new(iapi::OpenCaseRequest {
        tenant: "acme".into(),
        customer_id: "C-1".into(),
        channel: pb::Channel::Phone as i32,
        purchase_stage: pb::PurchaseStage::PostPurchase as i32,
        service_code: "doomed".into(),
        summary: "trace me".into(),
        ..Default::default()
    });
    open.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let case_id = client.open_case(open).await.unwrap().into_inner().case_id;

    // Wait until intake has closed the case (escalated → unresolved).
    eventually(Duration::from_secs(60), "the case to be closed", || {
        let mut c = client.clone();
        let case_id = case_id.clone();
        async move {
            let case = c
                .get_case(iapi::GetCaseRequest {
                    tenant: "acme".into(),
                    case_id,
                })
                .await
                .ok()?
                .into_inner()
                .case?;
            (case.status == iapi::CaseStatus::Closed as i32).then_some(())
        }
    })
    .await;

    // Every service's reconcile of this case reaches the receiver, all in one
    // trace.
    let case_key = format!("acme/{case_id}");
    let (services, traces) = eventually(Duration::from_secs(30), "spans of every service", || {
        casework_telemetry::flush();
        let spans = spans.clone();
        let case_key = case_key.clone();
        async move {
            let spans = spans.lock().unwrap();
            let ours: Vec<_> = spans
                .iter()
                .filter(|(_, name, a)| name == "reconcile" && a.get("case") == Some(&case_key))
                .collect();
            let services: BTreeSet<String> = ours
                .iter()
                .filter_map(|(_, _, a)| a.get("service").cloned())
                .collect();
            let traces: BTreeSet<String> = ours.iter().map(|(t, _, _)| t.clone()).collect();
            (services.len() >= 3).then_some((services, traces))
        }
    })
    .await;
    assert!(
        ["intake", "fulfilment", "recovery"]
            .iter()
            .all(|s| services.contains(*s)),
        "spans from intake, fulfilment and recovery: {services:?}"
    );
    assert_eq!(
        traces,
        BTreeSet::from([caller_trace.to_owned()]),
        "one trace for the whole journey, the caller's"
    );

    // A step done by an external worker that sends no trace context: its
    // completion continues the trace the task was offered in.
    let outsourced_trace = "5cf92f3577b34da6a3ce929d0e0e4737";
    let mut open = tonic::Request::new(iapi::OpenCaseRequest {
        tenant: "acme".into(),
        customer_id: "C-2".into(),
        channel: pb::Channel::Web as i32,
        purchase_stage: pb::PurchaseStage::PostPurchase as i32,
        service_code: "outsourced".into(),
        summary: "trace the worker".into(),
        ..Default::default()
    });
    open.metadata_mut().insert(
        "traceparent",
        format!("00-{outsourced_trace}-00f067aa0ba902b8-01")
            .parse()
            .unwrap(),
    );
    let case_id = client.open_case(open).await.unwrap().into_inner().case_id;
    let mut worker =
        fapi::fulfilment_client::FulfilmentClient::connect(format!("http://{}", fulfilment.grpc))
            .await
            .unwrap();
    let task = eventually(Duration::from_secs(30), "the task to be offered", || {
        let mut w = worker.clone();
        async move {
            w.poll_tasks(fapi::PollTasksRequest {
                worker_id: "trace-worker".into(),
                task_kinds: vec!["trace_task".into()],
                max_tasks: 1,
                wait_seconds: 1,
            })
            .await
            .ok()?
            .into_inner()
            .tasks
            .pop()
        }
    })
    .await;
    worker
        .complete_task(fapi::CompleteTaskRequest {
            token: task.token,
            output: Default::default(),
            worker_id: "trace-worker".into(),
        })
        .await
        .unwrap();
    let case_key = format!("acme/{case_id}");
    let traces = eventually(
        Duration::from_secs(30),
        "intake's closing reconcile of the outsourced case",
        || {
            casework_telemetry::flush();
            let spans = spans.clone();
            let case_key = case_key.clone();
            async move {
                let spans = spans.lock().unwrap();
                let ours: Vec<_> = spans
                    .iter()
                    .filter(|(_, name, a)| name == "reconcile" && a.get("case") == Some(&case_key))
                    .collect();
                // Closing happens after the worker's completion.
                let closed_by_intake = ours
                    .iter()
                    .any(|(_, _, a)| a.get("service").map(String::as_str) == Some("intake"));
                let traces: BTreeSet<String> = ours.iter().map(|(t, _, _)| t.clone()).collect();
                closed_by_intake.then_some(traces)
            }
        },
    )
    .await;
    assert_eq!(
        traces,
        BTreeSet::from([outsourced_trace.to_owned()]),
        "the worker's completion stays in the case's trace"
    );
    shutdown.cancel();
}
