//! `PUT/GET /api/inventory/{productName}`: stock levels the worker reserves
//! from. Products without a row are untracked (always available).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;

use super::{json, ApiError, ApiState};
use crate::domain::{InventoryLevel, MAX_NAME_LEN};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutInventory {
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
