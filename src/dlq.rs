//! The dead-letter topic: messages that cannot be handled go there with
//! their original key, value and headers plus why, how often and where from;
//! `orderflow dlq list` shows them and `orderflow dlq replay` re-drives them
//! to the main topic.

use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::backoff::Backoff;
use crate::brokers::{Brokers, KafkaSetupError};
use crate::shutdown::Shutdown;

/// How long a dead letter may still take once shutdown has begun.
const DRAIN_SEND: Duration = Duration::from_secs(5);

pub const X_ERROR: &str = "x-error";
pub const X_ATTEMPTS: &str = "x-attempts";
pub const X_ORIGINAL_TOPIC: &str = "x-original-topic";
pub const X_ORIGINAL_PARTITION: &str = "x-original-partition";
pub const X_ORIGINAL_OFFSET: &str = "x-original-offset";
pub const X_FAILED_AT: &str = "x-failed-at";

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The dead-letter counter at 0 from the role's start, not from its first
/// dead letter: `increase()` over a series that appears at 1 is nothing,
/// so an alert would miss the first dead letter and a panel say "No data".
pub fn register_metrics() {
    metrics::counter!(crate::metrics::DEAD_LETTERS).increment(0);
}

pub struct DeadLetters {
    pub producer: FutureProducer,
    pub topic: String,
    pub timeout: Duration,
}

impl DeadLetters {
    /// Publishes `message` to the dead-letter topic, retrying until the
    /// broker acknowledges: a message is never dropped silently, and its
    /// offset is stored only after this returns true. False if shutdown came
    /// first: the caller leaves the message uncommitted, so the next owner
    /// of its partition dead-letters it (a delivery still queued here may
    /// make that a duplicate).
    pub async fn send(
        &self,
        message: &OwnedMessage,
        error: &str,
        attempts: u32,
        shutdown: &Shutdown,
    ) -> bool {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let attempts = attempts.to_string();
        let failed_at = Utc::now().to_rfc3339();
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
        let mut stop = shutdown.clone();
        loop {
            let record = republished(
                message,
                &self.topic,
                &[
                    (X_ERROR, error),
                    (X_ATTEMPTS, attempts.as_str()),
                    (X_ORIGINAL_TOPIC, message.topic()),
                    (X_ORIGINAL_PARTITION, partition.as_str()),
                    (X_ORIGINAL_OFFSET, offset.as_str()),
                    (X_FAILED_AT, failed_at.as_str()),
                ],
            );
            let send = self.producer.send(record, self.timeout);
            tokio::pin!(send);
            let sent = tokio::select! {
                sent = &mut send => sent,
                // Draining: a reachable broker still gets the message (a
                // poison message met during shutdown), a gone one no longer
                // holds the process past its grace period.
                _ = stop.wait() => match tokio::time::timeout(DRAIN_SEND, &mut send).await {
                    Ok(sent) => sent,
                    Err(_) => return false,
                },
            };
            match sent {
                Ok(_) => {
                    metrics::counter!(crate::metrics::DEAD_LETTERS).increment(1);
                    tracing::warn!(
                        topic = message.topic(), partition = message.partition(),
                        offset = message.offset(), %error, "message dead-lettered"
                    );
                    return true;
                }
                Err((e, _)) => {
                    if stop.is_triggered() {
                        return false;
                    }
                    tracing::error!(error = %e, "cannot publish to the dead-letter topic; retrying");
                    if !backoff.wait(&stop).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// `message` for `topic` with its key, value and headers, less earlier
/// `x-*` failure headers, plus `extra`.
fn republished<'a>(
    message: &'a OwnedMessage,
    topic: &'a str,
    extra: &[(&str, &str)],
) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for h in original.iter().filter(|h| !h.key.starts_with("x-")) {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    for (key, value) in extra {
        headers = headers.insert(Header {
            key,
            value: Some(*value),
        });
    }
    let mut record = FutureRecord::to(topic).headers(headers);
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    record
}

/// One dead-lettered message, as `dlq list` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub error: Option<String>,
    pub attempts: Option<String>,
    pub original_topic: Option<String>,
    pub original_partition: Option<String>,
    pub original_offset: Option<String>,
    pub failed_at: Option<String>,
    #[serde(skip)]
    pub message: Option<OwnedMessage>,
}

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    message.headers().and_then(|hs| {
        hs.iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// Reads the whole dead-letter topic, from the beginning to its current end.
pub async fn read_all(brokers: &Brokers, topic: &str) -> Result<Vec<DeadLetter>, KafkaSetupError> {
    let brokers = brokers.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || read_all_blocking(&brokers, &topic))
        .await
        .map_err(|e| KafkaSetupError::Embedded(e.to_string()))?
}

fn read_all_blocking(brokers: &Brokers, topic: &str) -> Result<Vec<DeadLetter>, KafkaSetupError> {
    let timeout = Duration::from_secs(10);
    let consumer = brokers.reader("orderflow-dlq")?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0usize;
    let mut ends = std::collections::HashMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
        if high > low {
            assignment.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
            ends.insert(p.id(), high);
            remaining += 1;
        }
    }
    let mut out = Vec::new();
    if remaining == 0 {
        return Ok(out);
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while remaining > 0 && std::time::Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.detach();
        if ends.get(&message.partition()) == Some(&(message.offset() + 1)) {
            remaining -= 1;
        }
        out.push(DeadLetter {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            event_id: header(&message, crate::events::CE_ID),
            event_type: header(&message, crate::events::CE_TYPE),
            error: header(&message, X_ERROR),
            attempts: header(&message, X_ATTEMPTS),
            original_topic: header(&message, X_ORIGINAL_TOPIC),
            original_partition: header(&message, X_ORIGINAL_PARTITION),
            original_offset: header(&message, X_ORIGINAL_OFFSET),
            failed_at: header(&message, X_FAILED_AT),
            message: Some(message),
        });
    }
    out.sort_by_key(|d| (d.partition, d.offset));
    Ok(out)
}

/// Re-publishes dead letters to their original topic with their original
/// key, value and headers. The event id is unchanged, so a message that did
/// get handled meanwhile is recognised by the inbox and not applied twice.
pub async fn replay(
    producer: &FutureProducer,
    letters: &[DeadLetter],
    fallback_topic: &str,
    timeout: Duration,
) -> Result<usize, KafkaSetupError> {
    let mut replayed = 0;
    for letter in letters {
        let Some(message) = &letter.message else {
            continue;
        };
        let topic = letter.original_topic.as_deref().unwrap_or(fallback_topic);
        let record = republished(message, topic, &[]);
        producer
            .send(record, timeout)
            .await
            .map_err(|(e, _)| KafkaSetupError::Client(e))?;
        replayed += 1;
    }
    Ok(replayed)
}

/// Which dead letters `replay` re-drives.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    EventIds(Vec<String>),
}

fn brokers_for_cli(config: &crate::config::Config) -> Result<Brokers, KafkaSetupError> {
    Brokers::configured(&config.kafka)
}

/// `orderflow dlq list`.
pub async fn list(config: &crate::config::Config) -> Result<Vec<DeadLetter>, KafkaSetupError> {
    read_all(&brokers_for_cli(config)?, &config.worker.dead_letter_topic).await
}

/// `orderflow dlq replay`: returns how many messages were re-published.
pub async fn replay_selected(
    config: &crate::config::Config,
    selection: &Selection,
) -> Result<usize, KafkaSetupError> {
    let brokers = brokers_for_cli(config)?;
    let letters = read_all(&brokers, &config.worker.dead_letter_topic).await?;
    let chosen: Vec<DeadLetter> = letters
        .into_iter()
        .filter(|l| match selection {
            Selection::All => true,
            Selection::EventIds(ids) => l.event_id.as_ref().is_some_and(|id| ids.contains(id)),
        })
        .collect();
    let producer = brokers.producer("orderflow-dlq-replay", config.kafka.message_timeout)?;
    replay(
        &producer,
        &chosen,
        &config.kafka.orders.name,
        config.kafka.message_timeout,
    )
    .await
}
