//! `/api/orders`: create (idempotent with `Idempotency-Key`), read, list,
//! and the client-driven transitions (payment, shipment).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::Problem;
use super::{json, paging, ApiError, ApiState};
use crate::domain::text as printable_text;
use crate::domain::{
    printable, CreateOrderRequest, Order, OrderId, OrderStatus, OrderSummary, TextError,
    MAX_NAME_LEN,
};
use crate::events::NewEvent;
use crate::store::{IdempotencyKey, Transition};
use crate::telemetry::RequestTrace;

pub fn router() -> axum::Router<ApiState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/orders", get(list).post(create))
        .route("/api/orders/{id}", get(self::get))
        .route("/api/orders/{id}/payments", post(pay))
        .route("/api/orders/{id}/shipments", post(ship))
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Anything that is not an order id names no order: 404, even a path
/// segment that does not decode (axum's own rejection would be plain text).
fn order_id(path: Result<Path<String>, PathRejection>) -> Result<OrderId, ApiError> {
    let Ok(Path(raw)) = path else {
        return Err(ApiError::NotFound("no such order".into()));
    };
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("order {raw:?} not found")))
}

fn idempotency_key(
    headers: &HeaderMap,
    request: &CreateOrderRequest,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let raw = value
        .to_str()
        .map_err(|_| ApiError::field("Idempotency-Key", "must be visible ASCII"))?;
    let key = raw.trim();
    if key.is_empty() || raw.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::field(
            "Idempotency-Key",
            format!("must be 1..={MAX_IDEMPOTENCY_KEY_LEN} characters"),
        ));
    }
    // The hash covers the parsed request, so a retry that differs only in
    // whitespace or key order is still the same request.
    let canonical = serde_json::to_vec(request).unwrap_or_default();
    let request_hash = format!("{:x}", Sha256::digest(&canonical));
    Ok(Some(IdempotencyKey {
        key: key.to_string(),
        request_hash,
    }))
}

#[utoipa::path(
    post, path = "/api/orders", operation_id = "createOrder", tag = "orders",
    request_body = CreateOrderRequest,
    params(("Idempotency-Key" = Option<String>, Header, max_length = 255, pattern = r"^[\t\x20-\x7e]*[\x21-\x7e][\t\x20-\x7e]*$",
        description = "Makes a retried POST return the same order (1..=255 visible ASCII characters)")),
    responses(
        (status = 201, description = "Created; Location names the order", body = Order),
        (status = 400, description = "Invalid field(s)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency key reused with another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unreachable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<ApiState>,
    trace: RequestTrace,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CreateOrderRequest = json::parse(&headers, body, state.max_body_bytes)?;
    let idempotency = idempotency_key(&headers, &request)?;
    let new_order = request.parse(state.limits).map_err(ApiError::Validation)?;
    let created = state
        .store
        .create_order(&new_order, idempotency.as_ref(), Some(trace.0))
        .await?;
    let location = format!("/api/orders/{}", created.order.id);
    let mut response = (StatusCode::CREATED, Json(created.order)).into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if created.replayed {
        h.insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

#[utoipa::path(
    get, path = "/api/orders/{id}", operation_id = "getOrder", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order with items and timeline", body = Order),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Order>, ApiError> {
    let id = order_id(id)?;
    state
        .store
        .get_order(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("order {id} not found")))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    items: Vec<OrderSummary>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<OrderId>,
}

#[utoipa::path(
    get, path = "/api/orders", operation_id = "listOrders", tag = "orders",
    params(
        ("status" = Option<OrderStatus>, Query, description = "Only orders in this status"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size, 1..=100 (20)"),
        ("after" = Option<String>, Query, format = Uuid, description = "The nextCursor of the previous page"),
    ),
    responses(
        (status = 200, description = "Newest first", body = Page),
        (status = 400, description = "Bad parameter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Page>, ApiError> {
    let mut errors = Vec::new();
    // An empty value is a value the schema's enum and uuid format refuse,
    // so it is refused here too rather than read as absent.
    let status = match query.get("status") {
        None => None,
        Some(s) => s
            .parse::<OrderStatus>()
            .map_err(|m| errors.push(crate::domain::FieldError::new("status", m)))
            .ok(),
    };
    let limit = paging::limit(&query, &mut errors);
    let after = match query.get("after") {
        None => None,
        Some(s) => s
            .parse::<OrderId>()
            .map_err(|_| {
                errors.push(crate::domain::FieldError::new(
                    "after",
                    "is not an order id",
                ))
            })
            .ok(),
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let items = state.store.list_orders(status, after, limit).await?;
    let next_cursor = paging::next_cursor(&items, limit, |o| o.id);
    Ok(Json(Page { items, next_cursor }))
}

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequest {
    /// Printable text; surrounding whitespace is trimmed.
    #[schema(required = true, schema_with = payment_id_schema)]
    payment_id: Option<String>,
}

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShipmentRequest {
    /// Printable text; surrounding whitespace is trimmed.
    #[schema(required = true, schema_with = tracking_number_schema)]
    tracking_number: Option<String>,
}

fn payment_id_schema() -> utoipa::openapi::Object {
    printable_text::schema("pay-1")
}

fn tracking_number_schema() -> utoipa::openapi::Object {
    printable_text::schema("1Z999")
}

fn reference(field: &str, value: Option<String>) -> Result<String, ApiError> {
    match printable(&value.unwrap_or_default()) {
        Ok(text) => Ok(text.to_string()),
        Err(TextError::Empty) => Err(ApiError::field(field, "is required")),
        Err(_) => Err(ApiError::field(
            field,
            format!("must be at most {MAX_NAME_LEN} printable characters"),
        )),
    }
}

async fn apply(
    state: &ApiState,
    trace: RequestTrace,
    id: OrderId,
    to: OrderStatus,
    note: String,
    event: NewEvent,
) -> Result<Json<Order>, ApiError> {
    let event = event.with_traceparent(Some(trace.0));
    let change = Transition {
        to,
        note,
        event: Some(event),
    };
    Ok(Json(state.store.transition(id, change).await?))
}

#[utoipa::path(
    post, path = "/api/orders/{id}/payments", operation_id = "payOrder", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    request_body = PaymentRequest,
    responses(
        (status = 200, description = "Paid; emits OrderPaid", body = Order),
        (status = 400, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order's status forbids payment", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pay(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    trace: RequestTrace,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Order>, ApiError> {
    let id = order_id(id)?;
    let request: PaymentRequest = json::parse(&headers, body, state.max_body_bytes)?;
    let payment_id = reference("paymentId", request.payment_id)?;
    let note = format!("paid (payment {payment_id})");
    let event = NewEvent::order_paid(id, payment_id);
    apply(&state, trace, id, OrderStatus::Paid, note, event).await
}

#[utoipa::path(
    post, path = "/api/orders/{id}/shipments", operation_id = "shipOrder", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    request_body = ShipmentRequest,
    responses(
        (status = 200, description = "Shipped; emits OrderShipped", body = Order),
        (status = 400, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order's status forbids shipping", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ship(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    trace: RequestTrace,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Order>, ApiError> {
    let id = order_id(id)?;
    let request: ShipmentRequest = json::parse(&headers, body, state.max_body_bytes)?;
    let tracking = reference("trackingNumber", request.tracking_number)?;
    let note = format!("shipped (tracking {tracking})");
    let event = NewEvent::order_shipped(id, tracking);
    apply(&state, trace, id, OrderStatus::Shipped, note, event).await
}
