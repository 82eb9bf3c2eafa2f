//! Logging (text or JSON, filtered by `RUST_LOG`), W3C trace context, and
//! optional OpenTelemetry span export over OTLP/HTTP.
//!
//! The trace context is always carried (HTTP request → outbox row → Kafka
//! headers → handler span → emitted events → sink), whether or not spans are
//! exported: the `trace_id` field of the request and handler spans puts it on
//! every log line. With `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, those spans are also exported,
//! parented on the incoming `traceparent`, so a collector shows one trace
//! from the client's request to the worker that handled each event.

use std::collections::HashMap;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

const TRACEPARENT: &str = "traceparent";

/// Keeps the span exporter alive; [`Telemetry::shutdown`] flushes what is
/// still buffered (call it outside the async runtime: the OTLP client is a
/// blocking one with a runtime of its own).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("orderflow: flushing spans to the OTLP endpoint failed: {e}");
            }
        }
    }
}

/// Installs the global subscriber; `RUST_LOG` wins over the default level.
/// Spans are exported when an OTLP endpoint is configured in the standard
/// OpenTelemetry environment variables.
pub fn init(format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let (provider, otel_error) = match otlp_endpoint_configured() {
        true => match otlp_provider() {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        },
        false => (None, None),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("orderflow"))
            .with_tracked_inactivity(false)
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    if let Some(e) = otel_error {
        // Tracing is an aid, not a dependency: run without export.
        tracing::warn!(error = %e, "OTLP span export disabled");
    }
    Telemetry { provider }
}

fn otlp_endpoint_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
        && !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// OTLP over HTTP with protobuf bodies, batched; endpoint, headers, timeout
/// and batch settings come from the standard `OTEL_*` variables, and the
/// service name from `OTEL_SERVICE_NAME` (default `orderflow`).
fn otlp_provider() -> Result<SdkTracerProvider, String> {
    if let Ok(protocol) = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL") {
        if !protocol.eq_ignore_ascii_case("http/protobuf") {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; use http/protobuf"
            ));
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("orderflow");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The trace context of the request being served, for what it writes (the
/// outbox row's `traceparent`). Put in the request's extensions by
/// [`trace_http`].
#[derive(Debug, Clone)]
pub struct RequestTrace(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestTrace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(match parts.extensions.get::<RequestTrace>() {
            Some(trace) => trace.clone(),
            // A router served without [`trace_http`]: continue the caller's
            // trace in whatever span is current.
            None => RequestTrace(continue_trace(
                &tracing::Span::current(),
                incoming(&parts.headers),
            )),
        })
    }
}

/// The route template the request matched (`/api/orders/{id}`), not its
/// path: one metric series and one span name per endpoint, not per id.
pub fn route_template(request: &Request) -> String {
    request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into())
}

/// One server span per request, continuing the client's `traceparent`; the
/// response carries the trace context back so the caller can follow it.
pub async fn trace_http(mut request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_string();
    let route = route_template(&request);
    let span = tracing::info_span!(
        "http request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        principal = tracing::field::Empty,
    );
    let traceparent = continue_trace(&span, incoming(request.headers()));
    request
        .extensions_mut()
        .insert(RequestTrace(traceparent.clone()));
    let mut response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        response
            .headers_mut()
            .entry(HeaderName::from_static(TRACEPARENT))
            .or_insert(value);
    }
    response
}

fn incoming(headers: &HeaderMap) -> Option<&str> {
    headers.get(TRACEPARENT).and_then(|v| v.to_str().ok())
}

/// Makes `span` a child of `incoming` (a `traceparent`, if valid) and
/// records its trace id; returns the `traceparent` that what the span
/// produces carries: the span's own context when spans are exported, else
/// the incoming one, else a new trace.
pub fn continue_trace(span: &tracing::Span, incoming: Option<&str>) -> String {
    let incoming = incoming.filter(|tp| is_valid_traceparent(tp));
    if let Some(tp) = incoming {
        let carrier = HashMap::from([(TRACEPARENT.to_string(), tp.to_string())]);
        span.set_parent(TraceContextPropagator::new().extract(&carrier));
    }
    let traceparent = span_traceparent(span)
        .or_else(|| incoming.map(str::to_string))
        .unwrap_or_else(new_traceparent);
    if let Some(trace_id) = traceparent.split('-').nth(1) {
        span.record("trace_id", trace_id);
    }
    traceparent
}

/// The span's OpenTelemetry context as a `traceparent`; `None` when spans
/// are not exported (or this one is filtered out).
fn span_traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let otel_span = context.span();
    let sc = otel_span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    matches!(parts.as_slice(), [version, trace, span, flags]
        if *version == "00" && hex(trace, 32) && hex(span, 16) && hex(flags, 2)
            && trace.bytes().any(|b| b != b'0') && span.bytes().any(|b| b != b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_valid_and_replaces_invalid_traceparents() {
        // No exporter here: the incoming context is passed on unchanged.
        let span = tracing::Span::none();
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(continue_trace(&span, Some(valid)), valid);
        for invalid in [Some("00-zz-00-01"), Some(""), None] {
            let fresh = continue_trace(&span, invalid);
            assert!(is_valid_traceparent(&fresh), "{fresh}");
            assert_ne!(fresh, valid);
        }
    }
}
