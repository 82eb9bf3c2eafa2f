//! The outbox relay: publishes committed outbox rows to Kafka and marks them
//! only after the broker acknowledged them.
//!
//! Ordering across processes: one relay is active at a time, elected with the
//! store's lease (a PostgreSQL advisory lock); the others stand by and take
//! over within one poll interval when the leader's session ends. A single
//! active relay reading rows in id order, through an idempotent producer
//! (which neither reorders nor duplicates within a partition), is the
//! simplest design that keeps each order's events in commit order. Lanes by
//! key hash would scale further but multiply locks and producers; one relay
//! batching hundreds of rows per round trip is far from the bottleneck.

use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use std::collections::HashMap;

use crate::config::{Config, OutboxSettings};
use crate::events::{self, DESTINATION_FULFILMENT, DESTINATION_ORDERS};
use crate::kafka::{Brokers, TopicSpec};
use crate::shutdown::Shutdown;
use crate::store::{OutboxRecord, RelayLease, SharedStore};

const PURGE_EVERY: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// After this many failed attempts the rows stay unmarked and are published
/// again later: a duplicate the consumer's inbox absorbs, never a loss.
const MARK_ATTEMPTS: u32 = 20;

pub struct Relay {
    pub store: SharedStore,
    /// Replaced when librdkafka reports a fatal (idempotence) error: such a
    /// producer refuses every later message.
    pub producer: FutureProducer,
    pub brokers: Brokers,
    /// Topics created before the first publish.
    pub topics: Vec<TopicSpec>,
    /// Outbox destination → topic; `None` drops the destination's events
    /// (fulfilment configured as "none").
    pub destinations: HashMap<&'static str, Option<String>>,
    pub settings: OutboxSettings,
    pub kafka_timeout: Duration,
}

/// Where each outbox destination is published under `config`.
pub fn destinations(config: &Config) -> HashMap<&'static str, Option<String>> {
    HashMap::from([
        (DESTINATION_ORDERS, Some(config.kafka.orders.name.clone())),
        (DESTINATION_FULFILMENT, config.fulfilment.topic.clone()),
    ])
}

/// Doubles up to a ceiling; reset after a success.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self {
            next: FIRST_BACKOFF,
            max,
        }
    }

    fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    async fn wait(&mut self, shutdown: &mut Shutdown) {
        tokio::select! {
            _ = tokio::time::sleep(self.next_delay()) => {}
            _ = shutdown.wait() => {}
        }
    }
}

enum Round {
    /// Published this many rows; look again at once.
    Published(usize),
    Empty,
    Failed,
    LeaseLost,
}

impl Relay {
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new(self.settings.max_backoff);
        for topic in &self.topics {
            while !shutdown.is_triggered() {
                match self
                    .brokers
                    .ensure_topic(
                        &topic.name,
                        topic.partitions,
                        topic.replication,
                        self.kafka_timeout,
                    )
                    .await
                {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, topic = %topic.name, "topic not ready; retrying");
                        backoff.wait(&mut shutdown).await;
                    }
                }
            }
        }
        let mut standing_by_logged = false;
        while !shutdown.is_triggered() {
            match self.store.try_relay_lease().await {
                Ok(Some(lease)) => {
                    tracing::info!("outbox relay active");
                    standing_by_logged = false;
                    self.lead(lease, &mut shutdown).await;
                }
                Ok(None) => {
                    if !standing_by_logged {
                        tracing::info!("another process relays the outbox; standing by");
                        standing_by_logged = true;
                    }
                    self.idle(&mut shutdown).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the relay lease");
                    backoff.wait(&mut shutdown).await;
                }
            }
        }
        // Whatever is still queued in librdkafka gets its chance to land
        // before the process exits; rows not yet marked are re-sent by the
        // next leader (the consumer's inbox absorbs the duplicate).
        let _ = self.producer.flush(self.kafka_timeout);
        tracing::info!("outbox relay stopped");
    }

    fn renew_producer_if_fatal(&mut self) {
        let Some((code, reason)) = self.producer.client().fatal_error() else {
            return;
        };
        tracing::error!(?code, %reason, "Kafka producer failed fatally; creating a new one");
        match self.brokers.producer("orderflow-relay", self.kafka_timeout) {
            Ok(producer) => self.producer = producer,
            Err(e) => tracing::error!(error = %e, "cannot create a new Kafka producer"),
        }
    }

    async fn idle(&self, shutdown: &mut Shutdown) {
        tokio::select! {
            _ = tokio::time::sleep(self.settings.poll_interval) => {}
            _ = shutdown.wait() => {}
        }
    }

    async fn lead(&mut self, mut lease: Box<dyn RelayLease>, shutdown: &mut Shutdown) {
        let mut backoff = Backoff::new(self.settings.max_backoff);
        let mut last_purge = std::time::Instant::now();
        while !shutdown.is_triggered() {
            match self.round(lease.as_mut()).await {
                Round::Published(n) => {
                    tracing::debug!(rows = n, "outbox batch published");
                    backoff.reset();
                }
                Round::Empty => {
                    backoff.reset();
                    if last_purge.elapsed() >= PURGE_EVERY {
                        last_purge = std::time::Instant::now();
                        self.purge().await;
                    }
                    tokio::select! {
                        _ = self.store.wait_for_outbox(self.settings.poll_interval) => {}
                        _ = shutdown.wait() => {}
                    }
                }
                Round::Failed => {
                    self.renew_producer_if_fatal();
                    backoff.wait(shutdown).await
                }
                Round::LeaseLost => {
                    tracing::warn!("relay lease lost; standing by");
                    return;
                }
            }
        }
    }

    async fn round(&self, lease: &mut dyn RelayLease) -> Round {
        if !lease.still_held().await {
            return Round::LeaseLost;
        }
        let batch = match self.store.outbox_pending(self.settings.batch_size).await {
            Ok(batch) if batch.is_empty() => return Round::Empty,
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox");
                return Round::Failed;
            }
        };
        let (acked, failure) = self.publish(&batch).await;
        let published = acked.len();
        if !acked.is_empty() {
            self.mark(&acked).await;
        }
        match failure {
            Some(e) => {
                tracing::warn!(
                    error = %e,
                    published,
                    pending = batch.len() - published,
                    "Kafka did not acknowledge every event; backing off"
                );
                Round::Failed
            }
            None => Round::Published(published),
        }
    }

    /// Sends the batch and waits for every acknowledgement. Returns the ids
    /// the broker acknowledged and the first error, if any.
    async fn publish(&self, batch: &[OutboxRecord]) -> (Vec<i64>, Option<String>) {
        let mut pending = Vec::with_capacity(batch.len());
        let mut dropped = Vec::new();
        let mut failure = None;
        for record in batch {
            let topic = match self.destinations.get(record.destination.as_str()) {
                Some(Some(topic)) => topic.as_str(),
                Some(None) => {
                    dropped.push(record.id);
                    continue;
                }
                None => {
                    failure.get_or_insert_with(|| {
                        format!("unknown outbox destination {:?}", record.destination)
                    });
                    continue;
                }
            };
            let kafka_record = FutureRecord::to(topic)
                .key(record.key.as_bytes())
                .payload(record.payload.as_bytes())
                .headers(headers(record));
            match self.producer.send_result(kafka_record) {
                Ok(delivery) => pending.push((record.id, delivery)),
                Err((e, _)) => {
                    // Stop here: sending later rows now could overtake this
                    // one if it is for the same order.
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        let (ids, deliveries): (Vec<i64>, Vec<_>) = pending.into_iter().unzip();
        let mut acked = dropped;
        for (id, outcome) in ids.into_iter().zip(join_all(deliveries).await) {
            match outcome {
                Ok(Ok(_)) => acked.push(id),
                Ok(Err((e, _))) => {
                    failure.get_or_insert_with(|| e.to_string());
                }
                Err(_) => {
                    failure.get_or_insert_with(|| "producer dropped the delivery".into());
                }
            }
        }
        (acked, failure)
    }

    /// Marks published rows, retrying until the database takes it: rows left
    /// unmarked would be published a second time.
    async fn mark(&self, ids: &[i64]) {
        let mut backoff = Backoff::new(self.settings.max_backoff);
        let mut attempts = 0u32;
        loop {
            match self.store.outbox_mark_published(ids).await {
                Ok(()) => return,
                Err(e) => {
                    attempts += 1;
                    tracing::warn!(error = %e, attempts, rows = ids.len(), "cannot mark outbox rows published");
                    if attempts >= MARK_ATTEMPTS {
                        return;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    async fn purge(&self) {
        let Ok(retention) = chrono::Duration::from_std(self.settings.retention) else {
            return;
        };
        match self.store.outbox_purge(Utc::now() - retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "purged published outbox rows"),
            Err(e) => tracing::warn!(error = %e, "outbox purge failed"),
        }
    }
}

/// CloudEvents Kafka binary mode: metadata in `ce_*` headers, the payload as
/// the value.
fn headers(record: &OutboxRecord) -> OwnedHeaders {
    let id = record.event_id.to_string();
    let time = record.created_at.to_rfc3339();
    let mut headers = OwnedHeaders::new_with_capacity(7)
        .insert(Header {
            key: events::CE_SPECVERSION,
            value: Some(events::SPEC_VERSION),
        })
        .insert(Header {
            key: events::CE_ID,
            value: Some(&id),
        })
        .insert(Header {
            key: events::CE_TYPE,
            value: Some(&record.event_type),
        })
        .insert(Header {
            key: events::CE_SOURCE,
            value: Some(events::SOURCE),
        })
        .insert(Header {
            key: events::CE_TIME,
            value: Some(&time),
        })
        .insert(Header {
            key: events::CONTENT_TYPE,
            value: Some(events::JSON),
        });
    if let Some(traceparent) = &record.traceparent {
        headers = headers.insert(Header {
            key: events::TRACEPARENT,
            value: Some(traceparent),
        });
    }
    headers
}
