//! Metrics: every name in one place, and the process-wide Prometheus
//! recorder. A leaf: whoever records a metric depends on this module, and
//! it on nothing of the crate.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "orderflow_http_requests_total";
pub const HTTP_DURATION: &str = "orderflow_http_request_duration_seconds";
pub const OUTBOX_BACKLOG: &str = "orderflow_outbox_backlog_rows";
pub const OUTBOX_OLDEST_AGE: &str = "orderflow_outbox_oldest_age_seconds";
/// 1 while this process holds the relay lease named by the `lease` label,
/// else 0: a fleet whose maximum is 0 relays nothing, and its outbox only
/// grows.
pub const RELAY_LEADER: &str = "orderflow_relay_leader";
pub const EVENTS_PUBLISHED: &str = "orderflow_events_published_total";
pub const SINK_FAILURES: &str = "orderflow_sink_failures_total";
pub const EVENTS_CONSUMED: &str = "orderflow_events_consumed_total";
pub const EVENTS_HANDLED: &str = "orderflow_events_handled_total";
pub const HANDLER_DURATION: &str = "orderflow_handler_duration_seconds";
pub const CONSUMER_LAG: &str = "orderflow_consumer_lag";
pub const WORKERS_ACTIVE: &str = "orderflow_workers_active";
/// The `outcome` label of a handler attempt that will be retried.
pub const RETRIED: &str = "retried";
pub const DEAD_LETTERS: &str = "orderflow_dead_letters_total";
pub const CONSUMPTION_PAUSED: &str = "orderflow_consumption_paused";
/// The reconciler: orders found stuck by its last sweep (by status), events
/// published again, notifications retried and given up.
pub const ORDERS_STUCK: &str = "orderflow_orders_stuck";
pub const ORDERS_REDRIVEN: &str = "orderflow_orders_redriven_total";
pub const NOTIFICATIONS_RETRIED: &str = "orderflow_notifications_retried_total";
pub const NOTIFICATIONS_FAILED: &str = "orderflow_notifications_failed_total";
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
