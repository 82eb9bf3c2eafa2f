//! Events on the wire: their types, payloads (camelCase JSON, the seeds'
//! shapes) and the CloudEvents Kafka binary-mode headers that carry their
//! metadata.
//!
//! The headers are written here rather than through cloudevents-sdk: its
//! rdkafka binding pins an older rdkafka, and two librdkafka builds cannot
//! link into one binary. Binary mode is six plain headers.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{NewOrder, OrderId, OrderStatus};

pub mod kafkaflow;

pub const CE_SPECVERSION: &str = "ce_specversion";
pub const CE_ID: &str = "ce_id";
pub const CE_TYPE: &str = "ce_type";
pub const CE_SOURCE: &str = "ce_source";
pub const CE_TIME: &str = "ce_time";
pub const CONTENT_TYPE: &str = "content-type";
pub const TRACEPARENT: &str = "traceparent";
pub const SPEC_VERSION: &str = "1.0";
pub const JSON: &str = "application/json";
pub const SOURCE: &str = "/orderflow";
/// KafkaFlow's type header: `{Namespace}.{Event}, {Assembly}`.
pub const MESSAGE_TYPE: &str = "Message-Type";

/// Where an outbox row goes: the orders topic, or the fulfilment sink that
/// downstream systems (shipping, invoicing) read.
pub const DESTINATION_ORDERS: &str = "orders";
pub const DESTINATION_FULFILMENT: &str = "fulfilment";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
pub enum EventType {
    OrderCreated,
    OrderPaid,
    OrderShipped,
    OrderRejected,
    OrderFulfilled,
}

impl EventType {
    pub const ALL: [EventType; 5] = [
        Self::OrderCreated,
        Self::OrderPaid,
        Self::OrderShipped,
        Self::OrderRejected,
        Self::OrderFulfilled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => "OrderCreated",
            Self::OrderPaid => "OrderPaid",
            Self::OrderShipped => "OrderShipped",
            Self::OrderRejected => "OrderRejected",
            Self::OrderFulfilled => "OrderFulfilled",
        }
    }
}

impl EventType {
    /// The event that moves an order in `status` on, through a worker's
    /// handler: what the order waits for. `None` where the next step is an
    /// API call (payment, shipment) or there is none.
    pub fn awaited_in(status: OrderStatus) -> Option<EventType> {
        match status {
            OrderStatus::Pending => Some(Self::OrderCreated),
            OrderStatus::Paid => Some(Self::OrderPaid),
            OrderStatus::Shipped => Some(Self::OrderShipped),
            OrderStatus::Reserved
            | OrderStatus::Rejected
            | OrderStatus::AwaitingShipment
            | OrderStatus::Fulfilled => None,
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown event type {s:?}"))
    }
}

/// An event ready for the outbox: the same transaction that changes the order
/// stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: Uuid,
    pub order_id: OrderId,
    pub event_type: EventType,
    pub destination: &'static str,
    pub payload: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
    pub traceparent: Option<String>,
}

impl NewEvent {
    fn new(order_id: OrderId, event_type: EventType, payload: impl Serialize) -> Self {
        let destination = match event_type {
            EventType::OrderCreated | EventType::OrderPaid | EventType::OrderShipped => {
                DESTINATION_ORDERS
            }
            EventType::OrderRejected | EventType::OrderFulfilled => DESTINATION_FULFILMENT,
        };
        Self {
            id: Uuid::now_v7(),
            order_id,
            event_type,
            destination,
            // Serializing plain structs of strings and numbers cannot fail.
            payload: serde_json::to_value(payload).unwrap_or(serde_json::Value::Null),
            occurred_at: Utc::now(),
            traceparent: None,
        }
    }

    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    pub fn order_created(order_id: OrderId, order: &NewOrder, at: DateTime<Utc>) -> Self {
        let payload = OrderCreated {
            order_id,
            customer_id: order.customer_id.clone(),
            customer_name: order.customer_name.clone(),
            customer_email: order.customer_email.clone(),
            total_amount: order.total(),
            created_at: at,
            items: order
                .items
                .iter()
                .map(|i| EventItem {
                    product_name: i.product_name.clone(),
                    quantity: i.quantity,
                    unit_price: i.unit_price,
                })
                .collect(),
        };
        Self::new(order_id, EventType::OrderCreated, payload)
    }

    pub fn order_paid(order_id: OrderId, payment_id: String) -> Self {
        let payload = OrderPaid {
            order_id,
            payment_id,
            paid_at: Some(Utc::now()),
        };
        Self::new(order_id, EventType::OrderPaid, payload)
    }

    pub fn order_shipped(order_id: OrderId, tracking_number: String) -> Self {
        let payload = OrderShipped {
            order_id,
            tracking_number: Some(tracking_number),
            shipped_at: Some(Utc::now()),
        };
        Self::new(order_id, EventType::OrderShipped, payload)
    }

    pub fn order_rejected(order_id: OrderId, reason: String) -> Self {
        let payload = OrderRejected {
            order_id,
            reason,
            rejected_at: Utc::now(),
        };
        Self::new(order_id, EventType::OrderRejected, payload)
    }

    pub fn order_fulfilled(
        order_id: OrderId,
        customer_email: String,
        tracking_number: Option<String>,
    ) -> Self {
        let payload = OrderFulfilled {
            order_id,
            customer_email,
            tracking_number,
            fulfilled_at: Utc::now(),
        };
        Self::new(order_id, EventType::OrderFulfilled, payload)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderRejected {
    pub order_id: OrderId,
    pub reason: String,
    pub rejected_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderFulfilled {
    pub order_id: OrderId,
    pub customer_email: String,
    pub tracking_number: Option<String>,
    pub fulfilled_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub order_id: OrderId,
    pub customer_id: Option<String>,
    pub customer_name: String,
    pub customer_email: String,
    pub total_amount: Decimal,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub items: Vec<EventItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventItem {
    pub product_name: String,
    pub quantity: i64,
    pub unit_price: Decimal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPaid {
    pub order_id: OrderId,
    pub payment_id: String,
    /// Optional on the way in: producers of other stacks may not send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderShipped {
    pub order_id: OrderId,
    /// Optional on the way in: a carrier without tracking is still a
    /// shipment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipped_at: Option<DateTime<Utc>>,
}

/// What any order event is about: all a consumer needs that reads the
/// order itself from the database (the reservation reads the items there,
/// not from the OrderCreated payload).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderSubject {
    pub order_id: OrderId,
}

/// Decodes an event payload. Field names are read in camelCase (ours) or
/// PascalCase (a .NET producer's default).
pub fn read_payload<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    serde_json::from_value(camel_case_keys(value)).map_err(|e| format!("payload: {e}"))
}

fn camel_case_keys(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(key, value)| {
                    let mut chars = key.chars();
                    let key = match chars.next() {
                        Some(first) => first.to_lowercase().chain(chars).collect(),
                        None => key,
                    };
                    (key, camel_case_keys(value))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(camel_case_keys).collect()),
        other => other,
    }
}
