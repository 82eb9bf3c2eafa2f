//! Prometheus metrics: the names in one place, the process-wide recorder,
//! the HTTP middleware that times every request, and the `/metrics` page
//! every role serves.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::api::Readiness;

pub const HTTP_REQUESTS: &str = "orderflow_http_requests_total";
pub const HTTP_DURATION: &str = "orderflow_http_request_duration_seconds";
pub const OUTBOX_BACKLOG: &str = "orderflow_outbox_backlog_rows";
pub const OUTBOX_OLDEST_AGE: &str = "orderflow_outbox_oldest_age_seconds";
pub const EVENTS_PUBLISHED: &str = "orderflow_events_published_total";
pub const SINK_FAILURES: &str = "orderflow_sink_failures_total";
pub const EVENTS_CONSUMED: &str = "orderflow_events_consumed_total";
pub const EVENTS_HANDLED: &str = "orderflow_events_handled_total";
pub const HANDLER_DURATION: &str = "orderflow_handler_duration_seconds";
pub const CONSUMER_LAG: &str = "orderflow_consumer_lag";
pub const WORKERS_ACTIVE: &str = "orderflow_workers_active";
pub const DEAD_LETTERS: &str = "orderflow_dead_letters_total";
pub const CONSUMPTION_PAUSED: &str = "orderflow_consumption_paused";
/// Group commit: statements sent, and the writes they carried (their
/// ratio is the mean batch size).
pub const DB_GROUPS: &str = "orderflow_db_group_statements_total";
pub const DB_GROUPED: &str = "orderflow_db_grouped_writes_total";

/// Latency buckets from 1 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The recorder is process-wide; installed on first use, shared by every
/// role in the process (and by every app a test starts in-process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics shows only its own");
        }
        handle
    })
}

/// Counts and times every request by method, matched route and status.
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route = crate::telemetry::route_template(&request);
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `/metrics`: samples the outbox backlog at scrape time, then renders.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics_page(State(readiness): State<std::sync::Arc<Readiness>>) -> Response {
    if let Ok(backlog) = readiness.store.outbox_backlog().await {
        metrics::gauge!(OUTBOX_BACKLOG).set(backlog.rows as f64);
        let age = backlog
            .oldest
            .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        metrics::gauge!(OUTBOX_OLDEST_AGE).set(age);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle().render(),
    )
        .into_response()
}
