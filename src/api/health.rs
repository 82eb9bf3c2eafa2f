//! `/healthz`: the process is up. `/readyz`: it can do its work (database
//! reachable, Kafka metadata fetched), so a load balancer may send traffic.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use std::sync::Arc;

use super::Readiness;
use crate::kafka::topic_reachable;

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
