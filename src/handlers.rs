//! Typed handlers: a Kafka message is decoded into its event (by `ce_type`,
//! or a KafkaFlow `Message-Type` header), turned into a store effect, and
//! applied with retries; what cannot be handled goes to the dead-letter
//! topic, and unknown types are skipped or dead-lettered as configured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Headers, Message, OwnedMessage};
use serde_json::Value;

use crate::config::{RetrySettings, UnknownTypes};
use crate::dlq::DeadLetters;
use crate::domain::OrderId;
use crate::events::{self, EventType};
use crate::notifier::Notifier;
use crate::shutdown::Shutdown;
use crate::store::{Applied, Effect, InboxEntry, SharedStore, StoreError};

/// KafkaFlow's type header: an assembly-qualified .NET type name.
pub const MESSAGE_TYPE: &str = "Message-Type";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Event {
        event_id: String,
        event_type: EventType,
        effect: Effect,
    },
    /// A type this worker has no handler for.
    Unknown { type_name: String },
}

/// Counters for the operator (and `/metrics` once it lands).
#[derive(Debug, Default)]
pub struct HandlerStats {
    pub handled: AtomicU64,
    pub duplicates: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub unknown: AtomicU64,
}

pub struct HandlerContext {
    pub store: SharedStore,
    pub consumer_group: String,
    pub retry: RetrySettings,
    pub unknown_types: UnknownTypes,
    pub dead_letters: DeadLetters,
    pub notifier: Arc<dyn Notifier>,
    pub stats: HandlerStats,
}

fn header<'a>(message: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    message.headers().and_then(|hs| {
        hs.iter()
            .find(|h| h.key.eq_ignore_ascii_case(name))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    })
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

/// Payload field names are matched case-insensitively, so a .NET producer's
/// PascalCase JSON works as well as our camelCase.
fn field<'a>(payload: &'a Value, name: &str) -> Option<&'a Value> {
    payload
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn text_field(payload: &Value, name: &str) -> Option<String> {
    field(payload, name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// Decodes a message; an error is permanent (the message will never decode).
pub fn decode(message: &OwnedMessage) -> Result<Decoded, String> {
    let event_type = match (
        header(message, events::CE_TYPE),
        header(message, MESSAGE_TYPE),
    ) {
        (Some(ce_type), _) => match ce_type.parse::<EventType>() {
            Ok(t) => t,
            Err(_) => {
                return Ok(Decoded::Unknown {
                    type_name: ce_type.to_string(),
                })
            }
        },
        (None, Some(message_type)) => match type_from_message_type(message_type) {
            Some(t) => t,
            None => {
                return Ok(Decoded::Unknown {
                    type_name: message_type.to_string(),
                })
            }
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
    let payload: Value = serde_json::from_slice(message.payload().unwrap_or_default())
        .map_err(|e| format!("payload is not JSON: {e}"))?;
    let order_id: OrderId = text_field(&payload, "orderId")
        .and_then(|s| s.parse().ok())
        .ok_or("payload has no valid orderId")?;
    let effect = match event_type {
        EventType::OrderCreated => Effect::Reserve { order_id },
        EventType::OrderPaid => Effect::RequestShipment {
            order_id,
            payment_id: text_field(&payload, "paymentId").ok_or("OrderPaid has no paymentId")?,
        },
        EventType::OrderShipped => Effect::Fulfil {
            order_id,
            tracking_number: text_field(&payload, "trackingNumber"),
        },
        other => {
            return Ok(Decoded::Unknown {
                type_name: other.to_string(),
            })
        }
    };
    Ok(Decoded::Event {
        event_id,
        event_type,
        effect,
    })
}

fn retry_delay(retry: &RetrySettings, attempt: u32) -> Duration {
    crate::backoff::delay(retry.initial_backoff, retry.max_backoff, attempt)
}

fn count(event_type: &str, outcome: &'static str) {
    metrics::counter!(
        crate::prometheus::EVENTS_HANDLED,
        "type" => event_type.to_string(),
        "outcome" => outcome
    )
    .increment(1);
}

/// Handles one message to completion: applied, skipped as a duplicate or
/// unknown, or dead-lettered; returns true then, and its offset may be
/// stored. Returns false only when shutdown came while the database was
/// unreachable: the message is left for the next owner of its partition.
pub async fn process(ctx: &HandlerContext, message: &OwnedMessage, shutdown: &Shutdown) -> bool {
    let started = std::time::Instant::now();
    let type_label = header(message, events::CE_TYPE)
        .or_else(|| header(message, MESSAGE_TYPE))
        .unwrap_or("none")
        .to_string();
    metrics::counter!(crate::prometheus::EVENTS_CONSUMED, "type" => type_label.clone())
        .increment(1);
    // The producer's W3C trace continues here: every log line of the
    // handler carries its trace id, and the events it emits carry it on.
    let span = tracing::info_span!(
        "handle",
        otel.name = %format!("{type_label} process"),
        otel.kind = "consumer",
        messaging.destination.name = message.topic(),
        trace_id = tracing::field::Empty,
        event_type = %type_label,
        partition = message.partition(),
        offset = message.offset()
    );
    let traceparent = crate::telemetry::continue_trace(&span, header(message, events::TRACEPARENT));
    let handling = handle(ctx, message, &type_label, traceparent, shutdown);
    let outcome = tracing::Instrument::instrument(handling, span).await;
    count(&type_label, outcome);
    metrics::histogram!(crate::prometheus::HANDLER_DURATION, "type" => type_label)
        .record(started.elapsed().as_secs_f64());
    outcome != ABANDONED
}

const ABANDONED: &str = "abandoned";

/// Returns the outcome label: ok, duplicate, unknown, dead_lettered or
/// abandoned.
async fn handle(
    ctx: &HandlerContext,
    message: &OwnedMessage,
    type_label: &str,
    traceparent: String,
    shutdown: &Shutdown,
) -> &'static str {
    let (event_id, event_type, effect) = match decode(message) {
        Ok(Decoded::Event {
            event_id,
            event_type,
            effect,
        }) => (event_id, event_type, effect),
        Ok(Decoded::Unknown { type_name }) => {
            ctx.stats.unknown.fetch_add(1, Ordering::Relaxed);
            match ctx.unknown_types {
                UnknownTypes::Skip => {
                    tracing::info!(
                        type_name,
                        offset = message.offset(),
                        "no handler for this type; skipped"
                    )
                }
                UnknownTypes::DeadLetter => {
                    let error = format!("no handler for type {type_name}");
                    return dead_letter(ctx, message, &error, 1, shutdown).await;
                }
            }
            return "unknown";
        }
        Err(error) => {
            return dead_letter(ctx, message, &error, 1, shutdown).await;
        }
    };
    let inbox = InboxEntry {
        consumer_group: ctx.consumer_group.clone(),
        event_id,
        event_type: event_type.to_string(),
        traceparent: Some(traceparent),
    };
    let mut attempt = 1;
    loop {
        match ctx.store.apply(&inbox, &effect).await {
            Ok(Applied::Done {
                status,
                notification,
            }) => {
                ctx.stats.handled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(event_id = %inbox.event_id, %event_type, %status, "event handled");
                if let Some(n) = notification {
                    // After commit: a failed send leaves the row unsent for
                    // a later sweep rather than undoing the fulfilment.
                    match ctx.notifier.notify(&n).await {
                        Ok(()) => {
                            if let Err(e) = ctx.store.mark_notification_sent(n.order_id).await {
                                tracing::warn!(error = %e, "cannot mark notification sent");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, order_id = %n.order_id, "notification not sent")
                        }
                    }
                }
                return "ok";
            }
            Ok(Applied::Duplicate) => {
                ctx.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(event_id = %inbox.event_id, "already handled; skipped");
                return "duplicate";
            }
            // An unreachable database is an outage, not a bad message:
            // dead-lettering would lose the event of an order that is fine.
            // Retry until it is back (every partition needs it anyway). With
            // retries used up on another transient error, dead-letter only
            // if the database answers a ping.
            Err(e)
                if matches!(e, StoreError::Unavailable(_))
                    || (e.is_transient()
                        && attempt >= ctx.retry.max_attempts
                        && ctx.store.ping().await.is_err()) =>
            {
                ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
                count(type_label, "retried");
                let delay = retry_delay(&ctx.retry, attempt);
                tracing::warn!(error = %e, attempt, ?delay, event_id = %inbox.event_id, "database unreachable; retrying until it is back");
                let mut stop = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait() => return ABANDONED,
                }
                attempt = attempt.saturating_add(1);
            }
            Err(e) if e.is_transient() && attempt < ctx.retry.max_attempts => {
                ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
                count(type_label, "retried");
                let delay = retry_delay(&ctx.retry, attempt);
                tracing::warn!(error = %e, attempt, ?delay, event_id = %inbox.event_id, "handler failed; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => {
                return dead_letter(ctx, message, &e.to_string(), attempt, shutdown).await;
            }
        }
    }
}

/// The outcome label: dead_lettered, or abandoned when shutdown came while
/// the dead-letter topic was unreachable (the message stays uncommitted and
/// its partition's next owner dead-letters it).
async fn dead_letter(
    ctx: &HandlerContext,
    message: &OwnedMessage,
    error: &str,
    attempts: u32,
    shutdown: &Shutdown,
) -> &'static str {
    if !ctx
        .dead_letters
        .send(message, error, attempts, shutdown)
        .await
    {
        return ABANDONED;
    }
    ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    "dead_lettered"
}

#[cfg(test)]
mod tests {
    use super::*;
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
            &format!(r#"{{"orderId":"{ID}","paymentId":"p-1"}}"#),
        );
        let Ok(Decoded::Event {
            event_id, effect, ..
        }) = decode(&ce)
        else {
            panic!("decodes");
        };
        assert_eq!(event_id, "e-1");
        assert!(
            matches!(effect, Effect::RequestShipment { payment_id, .. } if payment_id == "p-1")
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
            event_id, effect, ..
        }) = decode(&dotnet)
        else {
            panic!("decodes");
        };
        assert_eq!(event_id, "orders/3/42");
        assert!(matches!(effect, Effect::Fulfil { tracking_number: Some(t), .. } if t == "T-9"));
    }

    #[test]
    fn bad_messages_are_permanent_errors_and_unknown_types_are_reported() {
        assert!(decode(&message(&[("ce_type", "OrderPaid")], "{not json")).is_err());
        assert!(decode(&message(&[("ce_type", "OrderPaid")], r#"{"orderId":"x"}"#)).is_err());
        assert!(decode(&message(&[], "{}")).is_err());
        assert_eq!(
            decode(&message(&[("ce_type", "InvoiceSent")], "{}")),
            Ok(Decoded::Unknown {
                type_name: "InvoiceSent".into()
            })
        );
    }
}
