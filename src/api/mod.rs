//! The HTTP API: one module per resource, one shared state, one error type.

mod error;
mod health;
mod inventory;
mod json;
mod orders;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use rdkafka::producer::FutureProducer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::domain::OrderLimits;
use crate::store::SharedStore;

/// Everything a handler may use.
#[derive(Clone)]
pub struct ApiState {
    pub store: SharedStore,
    pub limits: OrderLimits,
    pub max_body_bytes: usize,
    pub readiness: Arc<Readiness>,
}

/// What `/readyz` checks besides the database.
pub struct Readiness {
    pub producer: FutureProducer,
    pub topic: String,
}

pub fn router(state: ApiState) -> Router {
    let body_limit = state.max_body_bytes;
    Router::new()
        .route("/api/orders", get(orders::list).post(orders::create))
        .route("/api/orders/{id}", get(orders::get))
        .route(
            "/api/orders/{id}/payments",
            axum::routing::post(orders::pay),
        )
        .route(
            "/api/orders/{id}/shipments",
            axum::routing::post(orders::ship),
        )
        .route(
            "/api/inventory/{product}",
            get(inventory::get).put(inventory::put),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
