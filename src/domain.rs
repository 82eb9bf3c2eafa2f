//! Order types that can only be built valid: the API parses requests into
//! these at the edge, and the store, relay and handlers trust them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Order ids are UUIDv7: time-ordered, so keyset pagination by id lists
/// orders in creation order without a second sort key.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct OrderId(pub Uuid);

impl OrderId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for OrderId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for OrderId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Status only moves forward; each status has exactly one predecessor, which
/// makes every transition a single guarded `UPDATE ... WHERE status = $from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum OrderStatus {
    Pending,
    Reserved,
    Rejected,
    Paid,
    AwaitingShipment,
    Shipped,
    Fulfilled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 7] = [
        Self::Pending,
        Self::Reserved,
        Self::Rejected,
        Self::Paid,
        Self::AwaitingShipment,
        Self::Shipped,
        Self::Fulfilled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Reserved => "Reserved",
            Self::Rejected => "Rejected",
            Self::Paid => "Paid",
            Self::AwaitingShipment => "AwaitingShipment",
            Self::Shipped => "Shipped",
            Self::Fulfilled => "Fulfilled",
        }
    }

    /// The only status this one may be reached from.
    pub fn predecessor(self) -> Option<OrderStatus> {
        match self {
            Self::Pending => None,
            Self::Reserved | Self::Rejected => Some(Self::Pending),
            Self::Paid => Some(Self::Reserved),
            Self::AwaitingShipment => Some(Self::Paid),
            Self::Shipped => Some(Self::AwaitingShipment),
            Self::Fulfilled => Some(Self::Shipped),
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown status {s:?}; one of {}", names.join(", "))
            })
    }
}

/// One problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Limits on what one order may hold.
#[derive(Debug, Clone, Copy)]
pub struct OrderLimits {
    pub max_items: usize,
}

pub const MAX_NAME_LEN: usize = 200;
pub const MAX_EMAIL_LEN: usize = 254;
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Two decimal places: prices are currency amounts, and a fixed scale keeps
/// totals exact and comparable across backends.
pub const MONEY_SCALE: u32 = 2;
pub const MAX_UNIT_PRICE: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    pub product_name: String,
    pub quantity: i64,
    pub unit_price: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub customer_name: String,
    pub customer_email: String,
    pub customer_id: Option<String>,
    pub items: Vec<NewItem>,
}

impl NewOrder {
    pub fn total(&self) -> Decimal {
        self.items
            .iter()
            .map(|i| i.unit_price * Decimal::from(i.quantity))
            .sum()
    }
}

/// The request body of `POST /api/orders`, as sent; [`CreateOrderRequest::parse`]
/// turns it into a [`NewOrder`] or the list of field errors.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateOrderRequest {
    #[schema(required = true, max_length = 200, example = "Ada Lovelace")]
    pub customer_name: Option<String>,
    #[schema(required = true, max_length = 254, example = "ada@example.com")]
    pub customer_email: Option<String>,
    #[schema(max_length = 200)]
    pub customer_id: Option<String>,
    /// At least one; at most `Api.MaxItemsPerOrder` (100 by default).
    #[schema(required = true, min_items = 1)]
    pub items: Option<Vec<CreateItemRequest>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateItemRequest {
    #[schema(required = true, max_length = 200, example = "notebook")]
    pub product_name: Option<String>,
    #[schema(required = true, minimum = 1, maximum = 1_000_000)]
    pub quantity: Option<i64>,
    /// An exact decimal with at most two places, as a string or a number.
    #[schema(required = true, value_type = String, example = "4.25")]
    pub unit_price: Option<Decimal>,
}

impl CreateOrderRequest {
    pub fn parse(self, limits: OrderLimits) -> Result<NewOrder, Vec<FieldError>> {
        let mut errors = Vec::new();
        let customer_name = required_text(
            &mut errors,
            "customerName",
            self.customer_name,
            MAX_NAME_LEN,
        );
        let customer_email = required_text(
            &mut errors,
            "customerEmail",
            self.customer_email,
            MAX_EMAIL_LEN,
        );
        if let Some(email) = &customer_email {
            if !is_plausible_email(email) {
                errors.push(FieldError::new("customerEmail", "is not an email address"));
            }
        }
        let customer_id = match self.customer_id.map(|s| s.trim().to_string()) {
            Some(id) if id.chars().count() > MAX_NAME_LEN => {
                errors.push(FieldError::new(
                    "customerId",
                    format!("is longer than {MAX_NAME_LEN} characters"),
                ));
                None
            }
            Some(id) if id.is_empty() => None,
            other => other,
        };
        let raw_items = self.items.unwrap_or_default();
        if raw_items.is_empty() {
            errors.push(FieldError::new("items", "must hold at least one item"));
        } else if raw_items.len() > limits.max_items {
            errors.push(FieldError::new(
                "items",
                format!(
                    "holds {} items, at most {} allowed",
                    raw_items.len(),
                    limits.max_items
                ),
            ));
        }
        let mut items = Vec::with_capacity(raw_items.len());
        for (i, item) in raw_items.into_iter().enumerate() {
            let at = |f: &str| format!("items[{i}].{f}");
            let product_name = required_text(
                &mut errors,
                &at("productName"),
                item.product_name,
                MAX_NAME_LEN,
            );
            let quantity = match item.quantity {
                None => {
                    errors.push(FieldError::new(at("quantity"), "is required"));
                    None
                }
                Some(q) if !(1..=MAX_QUANTITY).contains(&q) => {
                    errors.push(FieldError::new(
                        at("quantity"),
                        format!("is {q}, must be 1..={MAX_QUANTITY}"),
                    ));
                    None
                }
                Some(q) => Some(q),
            };
            let unit_price = match item.unit_price {
                None => {
                    errors.push(FieldError::new(at("unitPrice"), "is required"));
                    None
                }
                Some(p) if p.is_sign_negative() && !p.is_zero() => {
                    errors.push(FieldError::new(at("unitPrice"), "must not be negative"));
                    None
                }
                Some(p) if p > MAX_UNIT_PRICE => {
                    errors.push(FieldError::new(
                        at("unitPrice"),
                        format!("must not exceed {MAX_UNIT_PRICE}"),
                    ));
                    None
                }
                Some(p) if p.normalize().scale() > MONEY_SCALE => {
                    errors.push(FieldError::new(
                        at("unitPrice"),
                        format!("has more than {MONEY_SCALE} decimal places"),
                    ));
                    None
                }
                Some(mut p) => {
                    p.rescale(MONEY_SCALE);
                    Some(p)
                }
            };
            if let (Some(product_name), Some(quantity), Some(unit_price)) =
                (product_name, quantity, unit_price)
            {
                items.push(NewItem {
                    product_name,
                    quantity,
                    unit_price,
                });
            }
        }
        match (customer_name, customer_email) {
            (Some(customer_name), Some(customer_email)) if errors.is_empty() => Ok(NewOrder {
                customer_name,
                customer_email,
                customer_id,
                items,
            }),
            _ => Err(errors),
        }
    }
}

fn required_text(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<String>,
    max_len: usize,
) -> Option<String> {
    let value = value.map(|s| s.trim().to_string()).unwrap_or_default();
    if value.is_empty() {
        errors.push(FieldError::new(field, "is required"));
        None
    } else if value.chars().count() > max_len {
        errors.push(FieldError::new(
            field,
            format!("is longer than {max_len} characters"),
        ));
        None
    } else if value.chars().any(char::is_control) {
        errors.push(FieldError::new(field, "contains control characters"));
        None
    } else {
        Some(value)
    }
}

/// Deliberately loose (RFC 5322 is not worth enforcing at an order API): one
/// `@`, a non-empty local part, a dotted domain, no whitespace.
fn is_plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace)
}

/// An order as stored, with its items and timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: OrderId,
    pub status: OrderStatus,
    pub customer_name: String,
    pub customer_email: String,
    pub customer_id: Option<String>,
    #[schema(value_type = String, example = "8.50")]
    pub total_amount: Decimal,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub items: Vec<OrderItem>,
    pub timeline: Vec<TimelineEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    pub product_name: String,
    pub quantity: i64,
    #[schema(value_type = String, example = "4.25")]
    pub unit_price: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub status: OrderStatus,
    pub note: String,
    pub at: DateTime<Utc>,
}

/// A row of the order list: the order without items and timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderSummary {
    pub id: OrderId,
    pub status: OrderStatus,
    pub customer_name: String,
    pub customer_email: String,
    #[schema(value_type = String, example = "8.50")]
    pub total_amount: Decimal,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryLevel {
    pub product_name: String,
    pub on_hand: i64,
    pub reserved: i64,
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> CreateOrderRequest {
        serde_json::from_value(json).expect("request shape")
    }

    const LIMITS: OrderLimits = OrderLimits { max_items: 3 };

    #[test]
    fn valid_order_has_exact_total() {
        let order = request(serde_json::json!({
            "customerName": " Ada ", "customerEmail": "ada@example.com",
            "items": [{"productName": "pen", "quantity": 3, "unitPrice": 0.1},
                      {"productName": "ink", "quantity": 1, "unitPrice": "19.99"}]
        }))
        .parse(LIMITS)
        .expect("valid");
        assert_eq!(order.customer_name, "Ada");
        assert_eq!(order.total().to_string(), "20.29");
    }

    #[test]
    fn every_bad_field_is_reported() {
        let errors = request(serde_json::json!({
            "customerName": "", "customerEmail": "nope",
            "items": [{"productName": "pen", "quantity": -1, "unitPrice": "1.001"}]
        }))
        .parse(LIMITS)
        .expect_err("invalid");
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "customerName",
                "customerEmail",
                "items[0].quantity",
                "items[0].unitPrice"
            ]
        );
    }

    #[test]
    fn status_moves_only_forward_from_its_predecessor() {
        assert_eq!(OrderStatus::Paid.predecessor(), Some(OrderStatus::Reserved));
        assert_eq!(OrderStatus::Pending.predecessor(), None);
        assert_eq!(
            "awaitingshipment".parse(),
            Ok(OrderStatus::AwaitingShipment)
        );
        assert!("Lost".parse::<OrderStatus>().is_err());
    }
}
