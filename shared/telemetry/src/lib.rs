//! `casework-telemetry` owns how Casework reports on itself: `tracing` logs
//! (human text or one JSON object per line), OpenTelemetry traces exported
//! over OTLP/gRPC when an endpoint is configured, and the W3C trace context
//! that crosses NATS in each event's `traceparent` header, so one case's
//! journey through intake, fulfilment, recovery and back is one trace. It
//! must not know the domain: it deals in spans and header strings only.
//!
//! The setup is process-wide (one subscriber, one tracer provider): when
//! `casectl dev` runs several services in one process, the first `init`
//! wins and spans carry a `service` field to tell them apart.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static PROVIDER: OnceLock<Option<SdkTracerProvider>> = OnceLock::new();

/// What to set up.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// `service.name` of exported traces.
    pub service_name: String,
    /// One JSON object per log line instead of text.
    pub json_logs: bool,
    /// A `tracing` filter, e.g. `info,casework=debug` (`CASEWORK_LOG`
    /// overrides it).
    pub filter: String,
    /// OTLP/gRPC endpoint, e.g. `http://otel-collector:4317`.
    pub otlp_endpoint: Option<String>,
}

/// Whether `filter` is a valid `tracing` filter (e.g. `info,casework=debug`),
/// or what is wrong with it: a bad filter is refused at start, never
/// silently replaced.
pub fn check_filter(filter: &str) -> Result<(), String> {
    EnvFilter::try_new(filter).map(|_| ()).map_err(|e| {
        format!(
            "{filter:?} is not a log filter ({e}): use e.g. \"info\" or \"info,casework=debug\""
        )
    })
}

/// Whether log lines carry colour codes: only on a terminal, and never
/// when `NO_COLOR` is set to anything but the empty string
/// (<https://no-color.org>). A file, a pipe or a log collector gets plain
/// text.
pub fn colours(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs logs and (when configured) trace export for the process. Later
/// calls are no-ops. Returns whether this call installed them.
pub fn init(config: &Config) -> bool {
    let mut installed = false;
    PROVIDER.get_or_init(|| {
        installed = true;
        let filter = std::env::var("CASEWORK_LOG")
            .ok()
            .and_then(|f| EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| {
                EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"))
            });
        let fmt = if config.json_logs {
            tracing_subscriber::fmt::layer().json().boxed()
        } else {
            let ansi = colours(
                std::io::IsTerminal::is_terminal(&std::io::stdout()),
                std::env::var_os("NO_COLOR").as_deref(),
            );
            tracing_subscriber::fmt::layer().with_ansi(ansi).boxed()
        };
        let provider = config.otlp_endpoint.as_ref().and_then(|endpoint| {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(Duration::from_secs(5))
                .build();
            match exporter {
                Ok(exporter) => Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(
                            opentelemetry_sdk::Resource::builder()
                                .with_service_name(config.service_name.clone())
                                .build(),
                        )
                        .build(),
                ),
                Err(e) => {
                    eprintln!("OTLP exporter for {endpoint} not started: {e}");
                    None
                }
            }
        });
        let otel = provider.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("casework"))
                .boxed()
        });
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .with(otel)
            .try_init();
        provider
    });
    installed
}

/// Flushes buffered spans (bounded by the exporter's timeout). Call on
/// shutdown.
pub fn flush() {
    if let Some(Some(p)) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}

/// The W3C `traceparent` of the current span, if it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Parses a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut it = value.trim().split('-');
    let (Some(version), Some(trace), Some(span), Some(flags), None) =
        (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return None;
    };
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// Makes `span` a child of the remote span named by `traceparent` (from an
/// event's headers). An absent or invalid value leaves the span as it is.
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(sc) = traceparent.and_then(parse_traceparent) {
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colours(true, None));
        assert!(
            colours(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colours(true, Some(OsStr::new("1"))));
        assert!(!colours(false, None), "a pipe or a file gets plain text");
    }

    #[test]
    fn traceparents_parse() {
        let sc =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(sc.is_sampled());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-xyz7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
