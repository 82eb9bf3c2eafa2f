//! The Kafka sink: an idempotent producer with acks from all in-sync
//! replicas; retries inside librdkafka neither duplicate nor reorder the
//! messages of a partition. The topics it publishes to are created before
//! its first delivery.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::on_the_wire;
use super::{Delivered, Sink};
use crate::brokers::{Brokers, TopicSpec};
use crate::config::EventFormat;
use crate::events;
use crate::store::OutboxRecord;

pub struct KafkaSink {
    /// Replaced when librdkafka reports a fatal (idempotence) error: such a
    /// producer refuses every later message.
    pub producer: FutureProducer,
    pub brokers: Brokers,
    pub client_id: String,
    /// Created if missing before the first delivery.
    pub topics: Vec<TopicSpec>,
    pub topics_ready: bool,
    /// Outbox destination → topic; `None` drops the destination's rows (its
    /// events are not published anywhere, or another sink delivers them
    /// and the relay never reads them).
    pub destinations: HashMap<&'static str, Option<String>>,
    pub timeout: Duration,
    pub format: EventFormat,
}

impl KafkaSink {
    /// The role created them at start; this covers a topic deleted since.
    async fn ensure_topics(&mut self) -> Result<(), String> {
        self.brokers
            .ensure_topics(&self.topics, self.timeout)
            .await
            .map_err(|e| format!("topics not ready: {e}"))?;
        self.topics_ready = true;
        Ok(())
    }

    fn renew_producer_if_fatal(&mut self) {
        let Some((code, reason)) = self.producer.client().fatal_error() else {
            return;
        };
        tracing::error!(?code, %reason, "Kafka producer failed fatally; creating a new one");
        match self.brokers.producer(&self.client_id, self.timeout) {
            Ok(producer) => self.producer = producer,
            Err(e) => tracing::error!(error = %e, "cannot create a new Kafka producer"),
        }
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Delivered {
        if !self.topics_ready {
            if let Err(e) = self.ensure_topics().await {
                return Delivered {
                    acked: Vec::new(),
                    failure: Some(e),
                };
            }
        }
        let mut out = Delivered::default();
        let mut pending = Vec::with_capacity(batch.len());
        for record in batch {
            let topic = match self.destinations.get(record.destination.as_str()) {
                Some(Some(topic)) => topic.as_str(),
                Some(None) => {
                    out.acked.push(record.id);
                    continue;
                }
                None => {
                    out.failure = Some(format!(
                        "unknown outbox destination {:?}",
                        record.destination
                    ));
                    break;
                }
            };
            let (payload, message_type) = on_the_wire(&self.format, record);
            let mut headers = headers(record);
            if let Some(message_type) = &message_type {
                headers = headers.insert(Header {
                    key: events::MESSAGE_TYPE,
                    value: Some(message_type),
                });
            }
            let kafka_record = FutureRecord::to(topic)
                .key(record.key.as_bytes())
                .payload(payload.as_bytes())
                .headers(headers);
            match self.producer.send_result(kafka_record) {
                Ok(delivery) => pending.push((record.id, delivery)),
                Err((e, _)) => {
                    out.failure = Some(e.to_string());
                    break;
                }
            }
        }
        let (ids, deliveries): (Vec<i64>, Vec<_>) = pending.into_iter().unzip();
        for (id, outcome) in ids.into_iter().zip(join_all(deliveries).await) {
            match outcome {
                Ok(Ok(_)) => out.acked.push(id),
                Ok(Err((e, _))) => {
                    out.failure.get_or_insert_with(|| e.to_string());
                }
                Err(_) => {
                    out.failure
                        .get_or_insert_with(|| "producer dropped the delivery".into());
                }
            }
        }
        if out.failure.is_some() {
            self.renew_producer_if_fatal();
        }
        out
    }

    async fn close(&mut self) {
        let _ = self.producer.flush(self.timeout);
    }
}

/// CloudEvents Kafka binary mode: metadata in `ce_*` headers, the payload as
/// the value.
pub fn headers(record: &OutboxRecord) -> OwnedHeaders {
    let id = record.event_id.to_string();
    let time = record.created_at.to_rfc3339();
    let mut headers = OwnedHeaders::new_with_capacity(7);
    for (key, value) in [
        (events::CE_SPECVERSION, events::SPEC_VERSION),
        (events::CE_ID, id.as_str()),
        (events::CE_TYPE, record.event_type.as_str()),
        (events::CE_SOURCE, events::SOURCE),
        (events::CE_TIME, time.as_str()),
        (events::CONTENT_TYPE, events::JSON),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    if let Some(traceparent) = &record.traceparent {
        headers = headers.insert(Header {
            key: events::TRACEPARENT,
            value: Some(traceparent),
        });
    }
    headers
}
