//! `PUT/GET /api/inventory/{productName}`: stock levels the worker reserves
//! from. Products without a row are untracked (always available).
//! `GET /api/inventory` lists the tracked ones, paged like the orders.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::Problem;
use super::{json, paging, ApiError, ApiState};
use crate::domain::{printable, FieldError, InventoryLevel, MAX_NAME_LEN};

/// The `{product}` of the inventory routes, for the OpenAPI document
/// (written out: the derive drops `required` and the description of a
/// parameter whose schema comes from a function).
struct ProductPath;

impl utoipa::IntoParams for ProductPath {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::Required;
        vec![ParameterBuilder::new()
            .name("product")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some(
                "Product name: printable, surrounding whitespace trimmed",
            ))
            .schema(Some(crate::domain::text::product_name_schema()))
            .build()]
    }
}

/// The query of `GET /api/inventory`, for the OpenAPI document (written
/// out for the same reason as [`ProductPath`]).
struct ListParams;

impl utoipa::IntoParams for ListParams {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::Required;
        let limit = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(paging::MAX_PAGE))
            .build();
        vec![
            ParameterBuilder::new()
                .name("limit")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(format!(
                    "Page size, 1..={} ({})",
                    paging::MAX_PAGE,
                    paging::DEFAULT_PAGE
                )))
                .schema(Some(limit))
                .build(),
            ParameterBuilder::new()
                .name("after")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some("The nextCursor of the previous page (a product name)"))
                .schema(Some(crate::domain::text::product_name_schema()))
                .build(),
        ]
    }
}

pub fn router() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/api/inventory", axum::routing::get(list))
        .route(
            "/api/inventory/{product}",
            axum::routing::get(self::get).put(put),
        )
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PutInventory {
    #[schema(
        required = true,
        nullable = false,
        minimum = 0,
        maximum = 1_000_000_000,
        example = 50
    )]
    #[serde(default, deserialize_with = "crate::domain::whole_number")]
    on_hand: Option<i64>,
}

/// The most stock one product may hold: far above any real shelf, far
/// below where sums of levels could overflow.
const MAX_ON_HAND: i64 = 1_000_000_000;

/// The rules of an order item's productName (trimmed, printable, raw length
/// at most 200): a name no order could carry cannot be stocked either.
fn product_name(path: &Result<Path<String>, PathRejection>) -> Result<&str, ApiError> {
    let Ok(Path(raw)) = path else {
        return Err(ApiError::field("productName", "is not UTF-8"));
    };
    printable(raw).map_err(|_| {
        ApiError::field(
            "productName",
            format!("must be 1..={MAX_NAME_LEN} printable characters"),
        )
    })
}

#[utoipa::path(
    put, path = "/api/inventory/{product}", operation_id = "putInventory", tag = "inventory",
    params(ProductPath),
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
    product: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<InventoryLevel>, ApiError> {
    let product = product_name(&product)?;
    let request: PutInventory = json::parse(&headers, body, state.max_body_bytes)?;
    let on_hand = match request.on_hand {
        None => return Err(ApiError::field("onHand", "is required")),
        Some(n) if n < 0 => return Err(ApiError::field("onHand", "must not be negative")),
        Some(n) if n > MAX_ON_HAND => {
            return Err(ApiError::field(
                "onHand",
                format!("must not exceed {MAX_ON_HAND}"),
            ))
        }
        Some(n) => n,
    };
    Ok(Json(state.store.put_inventory(product, on_hand).await?))
}

#[utoipa::path(
    get, path = "/api/inventory/{product}", operation_id = "getInventory", tag = "inventory",
    params(ProductPath),
    responses(
        (status = 200, description = "The stock level", body = InventoryLevel),
        (status = 400, description = "Invalid product name", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Untracked product", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<ApiState>,
    product: Result<Path<String>, PathRejection>,
) -> Result<Json<InventoryLevel>, ApiError> {
    let product = product_name(&product)?;
    state
        .store
        .get_inventory(product)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("product {product:?} is not tracked")))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryPage {
    items: Vec<InventoryLevel>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/api/inventory", operation_id = "listInventory", tag = "inventory",
    params(ListParams),
    responses(
        (status = 200, description = "Tracked products by name", body = InventoryPage),
        (status = 400, description = "Bad parameter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unreachable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<InventoryPage>, ApiError> {
    let mut errors = Vec::new();
    let limit = paging::limit(&query, &mut errors);
    // A cursor is a product name as a page gave it; anything no product
    // could be called is refused, as the path's name is.
    let after = match query.get("after").map(|raw| printable(raw)) {
        None => None,
        Some(Ok(name)) => Some(name),
        Some(Err(_)) => {
            errors.push(FieldError::new(
                "after",
                format!("must be 1..={MAX_NAME_LEN} printable characters"),
            ));
            None
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let items = state.store.list_inventory(after, limit).await?;
    let next_cursor = paging::next_cursor(&items, limit, |i| i.product_name.clone());
    Ok(Json(InventoryPage { items, next_cursor }))
}
