//! The HTTP API: one module per resource, one shared state, one error type.

pub mod admin;
mod error;
pub mod guard;
pub mod history;
mod http_metrics;
mod inventory;
mod json;
pub mod listener;
pub mod openapi;
mod operations;
mod orders;
mod paging;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use http_metrics::track_http;
pub use operations::{router as operations_router, Readiness};

use crate::domain::OrderLimits;
use crate::store::SharedStore;

/// Everything a handler may use.
#[derive(Clone)]
pub struct ApiState {
    pub store: SharedStore,
    pub limits: OrderLimits,
    pub max_body_bytes: usize,
}

/// The order API, health endpoints, the OpenAPI document and, when
/// enabled, the admin dashboard.
pub fn router(
    state: ApiState,
    readiness: Arc<Readiness>,
    admin: Option<Arc<admin::AdminState>>,
    guard: Arc<guard::Guard>,
) -> Router {
    let body_limit = state.max_body_bytes;
    let max_items = state.limits.max_items;
    let admin = admin.map_or_else(admin::disabled_router, admin::router);
    Router::new()
        .merge(orders::router())
        .merge(inventory::router())
        .with_state(state)
        .merge(openapi::router(max_items, guard.clone()))
        .merge(operations::router(readiness))
        .merge(admin)
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
        // Runs before any handler reads the body: a caller without the
        // right token costs no more than its headers.
        .layer(axum::middleware::from_fn_with_state(guard, guard::guard))
        .layer(axum::middleware::from_fn(move |req, next| {
            reject_declared_oversize(req, next, body_limit)
        }))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TraceLayer::new_for_http())
}

/// Answers 413 from the declared Content-Length before reading any of the
/// body; bodies without one (chunked) are cut off by `DefaultBodyLimit`.
async fn reject_declared_oversize(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    limit: usize,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit as u64 => ApiError::PayloadTooLarge { limit }.into_response(),
        _ => next.run(request).await,
    }
}
