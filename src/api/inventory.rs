//! `PUT/GET /api/inventory/{productName}`: stock levels the worker reserves
//! from. Products without a row are untracked (always available).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;

use super::error::Problem;
use super::{json, ApiError, ApiState};
use crate::domain::{InventoryLevel, MAX_NAME_LEN};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PutInventory {
    #[schema(required = true, minimum = 0, example = 50)]
    on_hand: Option<i64>,
}

fn product_name(raw: &str) -> Result<&str, ApiError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(ApiError::field(
            "productName",
            format!("must be 1..={MAX_NAME_LEN} characters"),
        ));
    }
    Ok(name)
}

#[utoipa::path(
    put, path = "/api/inventory/{product}", operation_id = "putInventory", tag = "inventory",
    params(("product" = String, Path, description = "Product name")),
    request_body = PutInventory,
    responses(
        (status = 200, description = "The stock level", body = InventoryLevel),
        (status = 400, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put(
    State(state): State<ApiState>,
    Path(product): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<InventoryLevel>, ApiError> {
    let product = product_name(&product)?;
    let request: PutInventory = json::parse(&headers, body, state.max_body_bytes)?;
    let on_hand = match request.on_hand {
        None => return Err(ApiError::field("onHand", "is required")),
        Some(n) if n < 0 => return Err(ApiError::field("onHand", "must not be negative")),
        Some(n) => n,
    };
    Ok(Json(state.store.put_inventory(product, on_hand).await?))
}

#[utoipa::path(
    get, path = "/api/inventory/{product}", operation_id = "getInventory", tag = "inventory",
    params(("product" = String, Path, description = "Product name")),
    responses(
        (status = 200, description = "The stock level", body = InventoryLevel),
        (status = 400, description = "Invalid product name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Untracked product", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<ApiState>,
    Path(product): Path<String>,
) -> Result<Json<InventoryLevel>, ApiError> {
    let product = product_name(&product)?;
    state
        .store
        .get_inventory(product)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("product {product:?} is not tracked")))
}
