//! What every role serves for operations (the worker on its admin port):
//! `/healthz`, the process is up; `/readyz`, it can do its work (database
//! reachable, Kafka metadata fetched), so a load balancer may send traffic;
//! `/metrics`, Prometheus text.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rdkafka::producer::FutureProducer;
use serde_json::{json, Value};

use crate::brokers::topic_reachable;
use crate::metrics;
use crate::store::SharedStore;

/// What `/readyz` checks: the database, and Kafka metadata for the topic.
pub struct Readiness {
    pub store: SharedStore,
    pub producer: FutureProducer,
    pub topic: String,
}

pub fn router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state(readiness)
}

#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations",
    responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "operations",
    responses(
        (status = 200, description = "Database reachable and Kafka metadata fetched"),
        (status = 503, description = "Not ready: a check failed"),
    ))]
pub async fn readyz(State(readiness): State<Arc<Readiness>>) -> (StatusCode, Json<Value>) {
    let (database, kafka) = tokio::join!(readiness.store.ping(), async {
        topic_reachable(&readiness.producer, &readiness.topic).await
    });
    let database = database.is_ok();
    let status = if database && kafka {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        status,
        Json(json!({
            "status": if status == StatusCode::OK { "ready" } else { "not ready" },
            "checks": { "database": word(database), "kafka": word(kafka) },
        })),
    )
}

/// `/metrics`: samples the outbox backlog at scrape time, then renders.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics_page(State(readiness): State<Arc<Readiness>>) -> Response {
    if let Ok(backlog) = readiness.store.outbox_backlog().await {
        ::metrics::gauge!(metrics::OUTBOX_BACKLOG).set(backlog.rows as f64);
        let age = backlog
            .oldest
            .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        ::metrics::gauge!(metrics::OUTBOX_OLDEST_AGE).set(age);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::handle().render(),
    )
        .into_response()
}
