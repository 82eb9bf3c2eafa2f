//! Where the relay delivers outbox rows: Kafka topics, or an Azure Service
//! Bus queue over AMQP 1.0. A sink reports which rows the far side
//! acknowledged; only those are marked published.

pub mod kafka;
pub mod servicebus;

use async_trait::async_trait;

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
