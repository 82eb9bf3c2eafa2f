//! The `kafkaflow` wire format: what a .NET KafkaFlow consumer with
//! System.Text.Json's default options reads into the contract records
//! (`Orders.Contracts.OrderCreated` and the others, README ".NET interop").
//!
//! - a `Message-Type: {Namespace}.{Event}, {Assembly}` header, which
//!   KafkaFlow's type resolver turns into the record type;
//! - PascalCase property names, exactly the records' (System.Text.Json
//!   binds names case-sensitively by default);
//! - amounts as JSON numbers written from the decimal's own digits (never
//!   through a float: `12.10` stays `12.10`), because the default number
//!   handling refuses a string for a `decimal`;
//! - times in the round-trip form System.Text.Json writes for a UTC
//!   `DateTime` (at most 7 fraction digits, trailing zeros dropped, `Z`);
//! - `CustomerId` always a Guid (see [`customer_guid`]).
//!
//! What orderflow needs beyond a record (items, customer name and e-mail)
//! travels as extra PascalCase properties, which System.Text.Json ignores.
//! Payloads are stored in the outbox in orderflow's own camelCase form and
//! converted here when published, so the header and the payload always
//! agree, whichever process wrote the row.

use chrono::{DateTime, Timelike, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{
    read_payload, EventType, OrderCreated, OrderFulfilled, OrderPaid, OrderRejected, OrderShipped,
};
use crate::domain::OrderId;

/// The namespace of the name-based UUIDs (v5) that stand for a customer
/// without a Guid id: fixed for good, so one e-mail address always gives
/// one CustomerId, in every process and release.
pub const CUSTOMER_NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_9d3e_2b1a_5c47_9e8d_4a7b_3c2d_1e0f);

/// `Message-Type` of an event: `{namespace}.{event}, {assembly}`.
pub fn message_type(namespace: &str, assembly: &str, event: EventType) -> String {
    format!("{namespace}.{event}, {assembly}")
}

/// The customer's Guid: the id given at creation if it is one, else the
/// UUID v5 of the lower-cased e-mail address in [`CUSTOMER_NAMESPACE`].
pub fn customer_guid(customer_id: Option<&str>, email: &str) -> Uuid {
    customer_id
        .and_then(|id| Uuid::parse_str(id.trim()).ok())
        .unwrap_or_else(|| Uuid::new_v5(&CUSTOMER_NAMESPACE, email.to_lowercase().as_bytes()))
}

/// A UTC time as System.Text.Json writes a `DateTime` of kind Utc.
pub fn dotnet_time(at: &DateTime<Utc>) -> String {
    let ticks = at.nanosecond() % 1_000_000_000 / 100;
    let whole = at.format("%Y-%m-%dT%H:%M:%S");
    if ticks == 0 {
        return format!("{whole}Z");
    }
    let fraction = format!("{ticks:07}");
    format!("{whole}.{}Z", fraction.trim_end_matches('0'))
}

/// A decimal as a JSON number with its own digits.
fn number(amount: Decimal) -> Result<Box<RawValue>, String> {
    RawValue::from_string(amount.to_string()).map_err(|e| format!("amount {amount}: {e}"))
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Created {
    order_id: OrderId,
    customer_id: Uuid,
    total_amount: Box<RawValue>,
    created_at: String,
    customer_name: String,
    customer_email: String,
    items: Vec<Item>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Item {
    product_name: String,
    quantity: i64,
    unit_price: Box<RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Paid {
    order_id: OrderId,
    payment_id: String,
    paid_at: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Shipped {
    order_id: OrderId,
    tracking_number: Option<String>,
    shipped_at: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Rejected {
    order_id: OrderId,
    reason: String,
    rejected_at: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Fulfilled {
    order_id: OrderId,
    customer_email: String,
    tracking_number: Option<String>,
    fulfilled_at: String,
}

/// The `kafkaflow` payload of a stored (camelCase) payload of `event`;
/// `occurred_at` stands in for a time the stored payload lacks (another
/// producer's OrderPaid without `paidAt`): a record's `DateTime` cannot be
/// null.
pub fn payload(
    event: EventType,
    stored: &[u8],
    occurred_at: &DateTime<Utc>,
) -> Result<String, String> {
    let json = match event {
        EventType::OrderCreated => {
            let e: OrderCreated = read_payload(stored)?;
            serde_json::to_string(&Created {
                order_id: e.order_id,
                customer_id: customer_guid(e.customer_id.as_deref(), &e.customer_email),
                total_amount: number(e.total_amount)?,
                created_at: dotnet_time(&e.created_at),
                customer_name: e.customer_name,
                customer_email: e.customer_email,
                items: e
                    .items
                    .into_iter()
                    .map(|i| {
                        Ok(Item {
                            product_name: i.product_name,
                            quantity: i.quantity,
                            unit_price: number(i.unit_price)?,
                        })
                    })
                    .collect::<Result<_, String>>()?,
            })
        }
        EventType::OrderPaid => {
            let e: OrderPaid = read_payload(stored)?;
            serde_json::to_string(&Paid {
                order_id: e.order_id,
                payment_id: e.payment_id,
                paid_at: dotnet_time(e.paid_at.as_ref().unwrap_or(occurred_at)),
            })
        }
        EventType::OrderShipped => {
            let e: OrderShipped = read_payload(stored)?;
            serde_json::to_string(&Shipped {
                order_id: e.order_id,
                tracking_number: e.tracking_number,
                shipped_at: dotnet_time(e.shipped_at.as_ref().unwrap_or(occurred_at)),
            })
        }
        EventType::OrderRejected => {
            let e: OrderRejected = read_payload(stored)?;
            serde_json::to_string(&Rejected {
                order_id: e.order_id,
                reason: e.reason,
                rejected_at: dotnet_time(&e.rejected_at),
            })
        }
        EventType::OrderFulfilled => {
            let e: OrderFulfilled = read_payload(stored)?;
            serde_json::to_string(&Fulfilled {
                order_id: e.order_id,
                customer_email: e.customer_email,
                tracking_number: e.tracking_number,
                fulfilled_at: dotnet_time(&e.fulfilled_at),
            })
        }
    };
    json.map_err(|e| format!("{event} payload: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_are_written_as_system_text_json_writes_a_utc_datetime() {
        let at = Utc
            .with_ymd_and_hms(2026, 12, 6, 9, 5, 3)
            .single()
            .expect("time");
        assert_eq!(dotnet_time(&at), "2026-12-06T09:05:03Z");
        let micro = at + chrono::Duration::microseconds(120_500);
        assert_eq!(dotnet_time(&micro), "2026-12-06T09:05:03.1205Z");
        let nanos = at + chrono::Duration::nanoseconds(123_456_789);
        assert_eq!(
            dotnet_time(&nanos),
            "2026-12-06T09:05:03.1234567Z",
            "7 digits"
        );
    }

    #[test]
    fn a_customer_without_a_guid_gets_the_same_one_for_the_same_address() {
        let given = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
        assert_eq!(
            customer_guid(Some(given), "a@x.test").to_string(),
            given,
            "a Guid id is kept"
        );
        let a = customer_guid(None, "Ada@Example.com");
        assert_eq!(a, customer_guid(Some("crm-42"), "ada@example.com"));
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, customer_guid(None, "grace@example.com"));
    }

    #[test]
    fn amounts_keep_their_digits() {
        assert_eq!(number(Decimal::new(1210, 2)).expect("n").get(), "12.10");
        assert_eq!(number(Decimal::new(7, 0)).expect("n").get(), "7");
    }
}
