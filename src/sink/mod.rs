//! Where the relay delivers outbox rows: Kafka topics, or an Azure Service
//! Bus queue over AMQP 1.0. A sink reports which rows the far side
//! acknowledged; only those are marked published.

pub mod kafka;
pub mod servicebus;

use std::borrow::Cow;

use async_trait::async_trait;

use crate::config::EventFormat;
use crate::events::{kafkaflow, EventType};
use crate::store::OutboxRecord;

/// What a delivery attempt achieved.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Rows the destination acknowledged (or that the configuration drops).
    pub acked: Vec<i64>,
    /// The first failure; the relay backs off and retries the rest.
    pub failure: Option<String>,
}

#[async_trait]
pub trait Sink: Send + Sync {
    /// Delivers `batch` in order, stopping at the first failure so later
    /// rows of the same order cannot overtake an earlier one.
    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Delivered;
    /// Called at shutdown: whatever is buffered gets its chance to land.
    async fn close(&mut self) {}
}

/// The payload as published, and KafkaFlow's `Message-Type` if the format
/// has one. A stored payload that cannot be converted (not one of
/// orderflow's own events) goes out as stored, without the header.
pub fn on_the_wire<'a>(
    format: &EventFormat,
    record: &'a OutboxRecord,
) -> (Cow<'a, str>, Option<String>) {
    let EventFormat::KafkaFlow {
        namespace,
        assembly,
    } = format
    else {
        return (Cow::Borrowed(&record.payload), None);
    };
    let converted = record.event_type.parse::<EventType>().and_then(|t| {
        Ok((
            t,
            kafkaflow::payload(t, record.payload.as_bytes(), &record.created_at)?,
        ))
    });
    match converted {
        Ok((t, payload)) => (
            Cow::Owned(payload),
            Some(kafkaflow::message_type(namespace, assembly, t)),
        ),
        Err(e) => {
            tracing::warn!(error = %e, event_id = %record.event_id, "published as stored: not convertible to the kafkaflow format");
            (Cow::Borrowed(&record.payload), None)
        }
    }
}
