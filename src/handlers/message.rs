//! Reading a Kafka message: its event type (CloudEvents `ce_type`, or
//! KafkaFlow's `Message-Type`), its id, and the command its payload asks
//! for.

use rdkafka::message::{Headers, Message, OwnedMessage};

use super::Command;
use crate::events::{self, EventType};

/// KafkaFlow's type header: an assembly-qualified .NET type name.
pub use crate::events::MESSAGE_TYPE;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Event {
        event_id: String,
        event_type: EventType,
        command: Command,
    },
    /// A type this worker has no handler for.
    Unknown { type_name: String },
}

pub(super) fn header<'a>(message: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    message.headers().and_then(|hs| {
        hs.iter()
            .find(|h| h.key.eq_ignore_ascii_case(name))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    })
}

/// The type's name as the message states it, for logs and metrics.
pub(super) fn type_label(message: &OwnedMessage) -> &str {
    header(message, events::CE_TYPE)
        .or_else(|| header(message, MESSAGE_TYPE))
        .unwrap_or("none")
}

/// `Orders.Contracts.OrderCreated, Orders.Contracts, Version=1.0.0.0` names
/// OrderCreated: the type's simple name, ending in the event's name.
fn type_from_message_type(value: &str) -> Option<EventType> {
    let full_name = value.split(',').next()?.trim();
    let simple = full_name.rsplit(['.', '+']).next()?;
    EventType::ALL
        .into_iter()
        .find(|t| simple.ends_with(t.as_str()))
}

/// Decodes a message; an error is permanent (the message will never decode).
pub fn decode(message: &OwnedMessage) -> Result<Decoded, String> {
    let unknown = |name: &str| {
        Ok(Decoded::Unknown {
            type_name: name.to_string(),
        })
    };
    let event_type = match (
        header(message, events::CE_TYPE),
        header(message, MESSAGE_TYPE),
    ) {
        (Some(ce_type), _) => match ce_type.parse::<EventType>() {
            Ok(t) => t,
            Err(_) => return unknown(ce_type),
        },
        (None, Some(message_type)) => match type_from_message_type(message_type) {
            Some(t) => t,
            None => return unknown(message_type),
        },
        (None, None) => return Err("no ce_type or Message-Type header".into()),
    };
    // Without a CloudEvents id the message's position identifies it: a
    // re-delivery of the same record is still recognised.
    let event_id = header(message, events::CE_ID)
        .map(String::from)
        .unwrap_or_else(|| {
            format!(
                "{}/{}/{}",
                message.topic(),
                message.partition(),
                message.offset()
            )
        });
    let payload = message.payload().unwrap_or_default();
    match Command::from_event(event_type, payload) {
        None => unknown(event_type.as_str()),
        Some(command) => Ok(Decoded::Event {
            event_id,
            event_type,
            command: command.map_err(|e| format!("{event_type} {e}"))?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::{NotifyCustomer, StartShipping};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::Timestamp;

    fn message(headers: &[(&str, &str)], payload: &str) -> OwnedMessage {
        let mut hs = OwnedHeaders::new();
        for (k, v) in headers {
            hs = hs.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        OwnedMessage::new(
            Some(payload.as_bytes().to_vec()),
            Some(b"k".to_vec()),
            "orders".into(),
            Timestamp::NotAvailable,
            3,
            42,
            Some(hs),
        )
    }

    const ID: &str = "01a213f3-3dc1-72b8-b709-f9742926dfe4";

    #[test]
    fn decodes_cloudevents_and_kafkaflow_messages() {
        let ce = message(
            &[("ce_type", "OrderPaid"), ("ce_id", "e-1")],
            &format!(r#"{{"orderId":"{ID}","paymentId":" p-1 "}}"#),
        );
        let Ok(Decoded::Event {
            event_id, command, ..
        }) = decode(&ce)
        else {
            panic!("decodes");
        };
        assert_eq!(event_id, "e-1");
        assert_eq!(
            command,
            Command::StartShipping(StartShipping {
                order_id: ID.parse().expect("id"),
                payment_id: "p-1".into()
            })
        );

        // A .NET producer: PascalCase fields, assembly-qualified type, no ce_id.
        let dotnet = message(
            &[(
                "Message-Type",
                "Shop.Contracts.OrderShipped, Shop.Contracts, Version=1.0.0.0",
            )],
            &format!(r#"{{"OrderId":"{ID}","TrackingNumber":"T-9"}}"#),
        );
        let Ok(Decoded::Event {
            event_id, command, ..
        }) = decode(&dotnet)
        else {
            panic!("decodes");
        };
        assert_eq!(event_id, "orders/3/42");
        assert_eq!(
            command,
            Command::NotifyCustomer(NotifyCustomer {
                order_id: ID.parse().expect("id"),
                tracking_number: Some("T-9".into())
            })
        );
    }

    #[test]
    fn bad_messages_are_permanent_errors_and_unknown_types_are_reported() {
        let not_json = decode(&message(&[("ce_type", "OrderPaid")], "{not json"));
        assert!(not_json.is_err_and(|e| e.contains("not JSON")));
        assert!(decode(&message(&[("ce_type", "OrderPaid")], r#"{"orderId":"x"}"#)).is_err());
        let blank = format!(r#"{{"orderId":"{ID}","paymentId":"  "}}"#);
        assert_eq!(
            decode(&message(&[("ce_type", "OrderPaid")], &blank)),
            Err("OrderPaid has no paymentId".into())
        );
        assert!(decode(&message(&[], "{}")).is_err());
        assert_eq!(
            decode(&message(&[("ce_type", "InvoiceSent")], "{}")),
            Ok(Decoded::Unknown {
                type_name: "InvoiceSent".into()
            })
        );
    }
}
