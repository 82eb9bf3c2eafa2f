//! The switches that reach every worker pod, as KafkaFlow's admin does it:
//! a compacted control topic holding the latest value of each under its
//! key (`consumption`: paused or not; `workers`: a worker count that
//! overrides the lag balancer). The admin API writes it; every worker
//! follows it from the beginning, so a worker started later still learns
//! the current state.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::brokers::{Brokers, KafkaSetupError};
use crate::shutdown::Shutdown;

const CONSUMPTION_KEY: &str = "consumption";
const WORKERS_KEY: &str = "workers";
const RESTART_KEY: &str = "restart";
const OFFSETS_KEY: &str = "offsets";

/// What the control topic says, as every worker holds it.
#[derive(Debug, Default)]
pub struct Controls {
    pub paused: AtomicBool,
    /// The worker count set by an operator; 0: the lag balancer decides.
    pub workers: AtomicUsize,
    /// An operator asked this instance to leave the group and rejoin.
    pub restart: AtomicBool,
    /// An operator asked to move the group's offsets.
    pub offsets: std::sync::Mutex<Option<MoveOffsets>>,
}

impl Controls {
    /// The offsets move asked for, if any, once.
    pub fn take_offsets(&self) -> Option<MoveOffsets> {
        self.offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Where to move the group's committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", tag = "kind", content = "at")]
pub enum OffsetTarget {
    /// The start of each partition (what retention kept).
    Earliest,
    /// The end: every event not yet handled is skipped.
    Latest,
    /// The first event at or after this time.
    Time(DateTime<Utc>),
}

/// A request to move the committed offsets of some partitions (all when
/// `partitions` is `None`); each instance moves those it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoveOffsets {
    pub to: OffsetTarget,
    pub partitions: Option<Vec<i32>>,
    pub requested_at: DateTime<Utc>,
}

pub async fn publish_offsets(
    producer: &FutureProducer,
    topic: &str,
    to: OffsetTarget,
    partitions: Option<Vec<i32>>,
    timeout: Duration,
) -> Result<MoveOffsets, KafkaSetupError> {
    let request = MoveOffsets {
        to,
        partitions,
        requested_at: Utc::now(),
    };
    send(producer, topic, OFFSETS_KEY, &request, timeout).await?;
    Ok(request)
}

/// A request to restart consumption (leave the group, rejoin), on every
/// instance or the one named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Restart {
    /// `null`: every instance.
    pub instance: Option<String>,
    pub requested_at: DateTime<Utc>,
}

pub async fn publish_restart(
    producer: &FutureProducer,
    topic: &str,
    instance: Option<String>,
    timeout: Duration,
) -> Result<Restart, KafkaSetupError> {
    let request = Restart {
        instance,
        requested_at: Utc::now(),
    };
    send(producer, topic, RESTART_KEY, &request, timeout).await?;
    Ok(request)
}

/// An operator's worker count for every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerCount {
    /// `null`: the lag balancer decides again.
    pub count: Option<usize>,
    pub changed_at: DateTime<Utc>,
}

/// Sets (or with `None` clears) the worker count of every instance.
pub async fn publish_workers(
    producer: &FutureProducer,
    topic: &str,
    count: Option<usize>,
    timeout: Duration,
) -> Result<WorkerCount, KafkaSetupError> {
    let state = WorkerCount {
        count,
        changed_at: Utc::now(),
    };
    send(producer, topic, WORKERS_KEY, &state, timeout).await?;
    Ok(state)
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &impl Serialize,
    timeout: Duration,
) -> Result<(), KafkaSetupError> {
    let payload = serde_json::to_vec(value).unwrap_or_default();
    producer
        .send(FutureRecord::to(topic).key(key).payload(&payload), timeout)
        .await
        .map_err(|(e, _)| KafkaSetupError::Client(e))?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumptionState {
    pub paused: bool,
    pub changed_at: DateTime<Utc>,
}

pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    paused: bool,
    timeout: Duration,
) -> Result<ConsumptionState, KafkaSetupError> {
    let state = ConsumptionState {
        paused,
        changed_at: Utc::now(),
    };
    send(producer, topic, CONSUMPTION_KEY, &state, timeout).await?;
    Ok(state)
}

fn reader(brokers: &Brokers, topic: &str, offset: Offset) -> Result<BaseConsumer, KafkaSetupError> {
    // Assigned, not subscribed: every worker reads the whole topic.
    let consumer = brokers.reader("orderflow-control")?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, offset)?;
    consumer.assign(&assignment)?;
    Ok(consumer)
}

fn parse(message: &rdkafka::message::BorrowedMessage<'_>) -> Option<ConsumptionState> {
    parse_keyed(message, CONSUMPTION_KEY)
}

fn parse_keyed<T: serde::de::DeserializeOwned>(
    message: &rdkafka::message::BorrowedMessage<'_>,
    key: &str,
) -> Option<T> {
    (message.key() == Some(key.as_bytes()))
        .then(|| serde_json::from_slice(message.payload()?).ok())
        .flatten()
}

/// Follows the control topic on a thread of its own and keeps `controls`
/// up to date until shutdown.
pub fn follow(
    brokers: &Brokers,
    topic: &str,
    instance: String,
    controls: Arc<Controls>,
    shutdown: Shutdown,
) -> Result<std::thread::JoinHandle<()>, KafkaSetupError> {
    // Requests from before this process started were for its predecessors.
    let started = Utc::now();
    let consumer = reader(brokers, topic, Offset::Beginning)?;
    std::thread::Builder::new()
        .name("kafka-control".into())
        .spawn(move || {
            while !shutdown.is_triggered() {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                if let Some(restart) = parse_keyed::<Restart>(&message, RESTART_KEY) {
                    let mine = restart.instance.as_deref().is_none_or(|i| i == instance);
                    if mine && restart.requested_at > started {
                        tracing::warn!(requested_at = %restart.requested_at,
                            "consumption restart requested by the control topic");
                        controls.restart.store(true, Ordering::SeqCst);
                    }
                }
                if let Some(request) = parse_keyed::<MoveOffsets>(&message, OFFSETS_KEY) {
                    if request.requested_at > started {
                        tracing::warn!(to = ?request.to, partitions = ?request.partitions,
                            "offsets move requested by the control topic");
                        *controls.offsets.lock().unwrap_or_else(|e| e.into_inner()) = Some(request);
                    }
                }
                if let Some(count) = parse_keyed::<WorkerCount>(&message, WORKERS_KEY) {
                    let wanted = count.count.unwrap_or(0);
                    if controls.workers.swap(wanted, Ordering::SeqCst) != wanted {
                        tracing::warn!(count = ?count.count, changed_at = %count.changed_at,
                            "worker count set by the control topic");
                    }
                }
                if let Some(state) = parse(&message) {
                    let paused = &controls.paused;
                    if paused.swap(state.paused, Ordering::SeqCst) != state.paused {
                        tracing::warn!(paused = state.paused, changed_at = %state.changed_at,
                            "consumption {} by the control topic",
                            if state.paused { "paused" } else { "resumed" });
                    }
                }
            }
        })
        .map_err(|e| KafkaSetupError::Embedded(e.to_string()))
}

/// The current state as the control topic holds it (not paused when the
/// topic is empty).
pub async fn current(
    brokers: &Brokers,
    topic: &str,
) -> Result<Option<ConsumptionState>, KafkaSetupError> {
    let brokers = brokers.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let probe = reader(&brokers, &topic, Offset::End)?;
        // Watermarks need the partition's leader, which metadata tells.
        probe.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
        let (low, high) = probe.fetch_watermarks(&topic, 0, Duration::from_secs(5))?;
        if high <= low {
            return Ok(None);
        }
        let consumer = reader(&brokers, &topic, Offset::Offset(high - 1))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                return Ok(parse(&message));
            }
        }
        Ok(None)
    })
    .await
    .map_err(|e| KafkaSetupError::Embedded(e.to_string()))?
}
