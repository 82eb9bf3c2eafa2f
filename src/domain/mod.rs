//! Order types that can only be built valid: the API parses requests into
//! these at the edge, and the store, relay and handlers trust them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod request;
pub mod text;

pub use request::{whole_number, CreateItemRequest, CreateOrderRequest, PRICE_PATTERN};
pub use text::{printable, TextError, PRINTABLE_PATTERN};

/// The first timeline entry of every order.
pub const CREATED_NOTE: &str = "order created";

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

    /// The smallest id minted at `at` or later. Ids are UUIDv7, whose
    /// leading 48 bits are the Unix time in milliseconds, so the orders
    /// created in a time range are one range of the primary key.
    pub fn minted_from(at: DateTime<Utc>) -> Self {
        let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
        Self(uuid::Builder::from_unix_timestamp_millis(millis, &[0; 10]).into_uuid())
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

impl Order {
    /// The order `new` becomes when it is written at `at` with `note` as
    /// its first timeline entry: what reading it back would return, so the
    /// create response needs no second round of queries. `at` must already
    /// be in the database's precision (microseconds).
    pub fn pending(id: OrderId, new: &NewOrder, at: DateTime<Utc>, note: &str) -> Self {
        Self {
            id,
            status: OrderStatus::Pending,
            customer_name: new.customer_name.clone(),
            customer_email: new.customer_email.clone(),
            customer_id: new.customer_id.clone(),
            total_amount: new.total(),
            created_at: at,
            updated_at: at,
            items: new
                .items
                .iter()
                .map(|i| OrderItem {
                    product_name: i.product_name.clone(),
                    quantity: i.quantity,
                    unit_price: i.unit_price,
                })
                .collect(),
            timeline: vec![TimelineEntry {
                status: OrderStatus::Pending,
                note: note.to_string(),
                at,
            }],
        }
    }
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

    #[test]
    fn ids_minted_in_a_millisecond_lie_between_its_floor_and_the_next() {
        let before = Utc::now();
        let ids: Vec<OrderId> = (0..100).map(|_| OrderId::new()).collect();
        let after = Utc::now() + chrono::Duration::milliseconds(1);
        for id in &ids {
            assert!(OrderId::minted_from(before) <= *id, "{id}");
            assert!(*id < OrderId::minted_from(after), "{id}");
        }
        let later = OrderId::minted_from(after + chrono::Duration::milliseconds(1));
        assert!(OrderId::minted_from(after) < later);
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
