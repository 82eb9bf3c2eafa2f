//! The fleet, as KafkaFlow's admin shows it: every `run-worker` instance
//! publishes its state every `Admin.TelemetryIntervalMs` to a compacted
//! telemetry topic, keyed by its instance id; the admin API reads the topic
//! whole and lists the instances, marking one silent for three intervals as
//! gone. A worker that stops cleanly leaves a tombstone, so it disappears at
//! once; one that dies is shown gone, then dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::brokers::{Brokers, KafkaSetupError};
use crate::consumer::EngineStatus;
use crate::handlers::HandlerContext;
use crate::shutdown::Shutdown;

/// Silent for this many intervals: gone.
const GONE_AFTER: u32 = 3;
/// Silent for this many intervals: no longer listed.
const DROPPED_AFTER: u32 = 20;

/// One instance's state, as it publishes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    /// `Worker.InstanceId`, else the host (pod) name and the process id.
    pub instance: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// Partitions of the orders topic assigned to it.
    pub partitions: Vec<i32>,
    /// Worker tasks running.
    pub workers: usize,
    pub paused: bool,
    /// Messages not yet handled, per assigned partition.
    pub lag: BTreeMap<i32, i64>,
    /// Events handled since it started.
    pub handled: u64,
    /// Over the last interval.
    pub handled_per_second: f64,
    pub last_handled_at: Option<DateTime<Utc>>,
    pub last_seen: DateTime<Utc>,
}

/// An instance as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    #[serde(flatten)]
    pub report: InstanceReport,
    /// `up`, or `gone` once silent for three telemetry intervals.
    pub state: &'static str,
}

/// This process's instance id.
pub fn instance_id(configured: Option<&str>) -> String {
    if let Some(id) = configured {
        return id.to_string();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}-{}", std::process::id())
}

/// What the worker reports from.
pub struct Source {
    pub instance: String,
    pub started_at: DateTime<Utc>,
    pub status: Arc<Mutex<EngineStatus>>,
    pub handlers: Arc<HandlerContext>,
}

impl Source {
    fn report(&self, previous: Option<&InstanceReport>, interval: Duration) -> InstanceReport {
        let status = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let stats = &self.handlers.stats;
        let handled = stats.handled.load(Ordering::Relaxed);
        let last_ms = stats.last_handled_ms.load(Ordering::Relaxed);
        let since = previous.map_or(0, |p| p.handled);
        InstanceReport {
            instance: self.instance.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: self.started_at,
            partitions: status.partitions,
            workers: status.workers,
            paused: status.paused,
            lag: status.lag,
            handled,
            handled_per_second: handled.saturating_sub(since) as f64
                / interval.as_secs_f64().max(0.001),
            last_handled_at: (last_ms > 0)
                .then(|| DateTime::from_timestamp_millis(last_ms))
                .flatten(),
            last_seen: Utc::now(),
        }
    }
}

/// Publishes the instance's state every `interval` until shutdown, then a
/// tombstone.
pub async fn publish(
    producer: FutureProducer,
    topic: String,
    interval: Duration,
    source: Source,
    mut shutdown: Shutdown,
) {
    let mut previous: Option<InstanceReport> = None;
    while !shutdown.is_triggered() {
        let report = source.report(previous.as_ref(), interval);
        let payload = serde_json::to_vec(&report).unwrap_or_default();
        let record = FutureRecord::to(&topic)
            .key(&source.instance)
            .payload(&payload);
        if let Err((e, _)) = producer.send(record, interval).await {
            tracing::debug!(error = %e, "telemetry not published");
        }
        previous = Some(report);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait() => {}
        }
    }
    let tombstone: FutureRecord<'_, String, [u8]> = FutureRecord::to(&topic).key(&source.instance);
    let _ = producer.send(tombstone, Duration::from_secs(2)).await;
}

/// Every instance the telemetry topic knows, by instance id, with its
/// state as of now.
pub async fn instances(
    brokers: &Brokers,
    topic: &str,
    interval: Duration,
) -> Result<Vec<Instance>, KafkaSetupError> {
    let brokers = brokers.clone();
    let topic = topic.to_string();
    let reports = tokio::task::spawn_blocking(move || read_all(&brokers, &topic))
        .await
        .map_err(|e| KafkaSetupError::Embedded(e.to_string()))??;
    Ok(listed(reports, Utc::now(), interval))
}

fn listed(
    reports: HashMap<String, InstanceReport>,
    now: DateTime<Utc>,
    interval: Duration,
) -> Vec<Instance> {
    let silent_for = |r: &InstanceReport| (now - r.last_seen).to_std().unwrap_or_default();
    let mut out: Vec<Instance> = reports
        .into_values()
        .filter(|r| silent_for(r) < interval * DROPPED_AFTER)
        .map(|r| Instance {
            state: if silent_for(&r) < interval * GONE_AFTER {
                "up"
            } else {
                "gone"
            },
            report: r,
        })
        .collect();
    out.sort_by(|a, b| a.report.instance.cmp(&b.report.instance));
    out
}

/// The latest report of each instance: the topic read from its start to
/// its end (compaction keeps it short); a tombstone removes an instance.
fn read_all(
    brokers: &Brokers,
    topic: &str,
) -> Result<HashMap<String, InstanceReport>, KafkaSetupError> {
    let consumer = brokers.reader("orderflow-fleet")?;
    let mut reports = HashMap::new();
    // No topic yet (no worker ever started): no instance.
    let Ok((low, high)) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(5)) else {
        return Ok(reports);
    };
    if high <= low {
        return Ok(reports);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        if let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) {
            match message
                .payload()
                .and_then(|p| serde_json::from_slice::<InstanceReport>(p).ok())
            {
                Some(report) => reports.insert(key.to_string(), report),
                None => reports.remove(key),
            };
        }
        if message.offset() + 1 >= high {
            break;
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(instance: &str, seen_secs_ago: i64, now: DateTime<Utc>) -> InstanceReport {
        InstanceReport {
            instance: instance.into(),
            version: "0".into(),
            started_at: now,
            partitions: vec![0],
            workers: 1,
            paused: false,
            lag: BTreeMap::new(),
            handled: 0,
            handled_per_second: 0.0,
            last_handled_at: None,
            last_seen: now - chrono::Duration::seconds(seen_secs_ago),
        }
    }

    #[test]
    fn a_silent_instance_is_gone_after_three_intervals_and_dropped_later() {
        let now = Utc::now();
        let reports = HashMap::from([
            ("a".to_string(), report("a", 2, now)),
            ("b".to_string(), report("b", 16, now)),
            ("c".to_string(), report("c", 101, now)),
        ]);
        let listed = listed(reports, now, Duration::from_secs(5));
        let states: Vec<(&str, &str)> = listed
            .iter()
            .map(|i| (i.report.instance.as_str(), i.state))
            .collect();
        assert_eq!(states, [("a", "up"), ("b", "gone")]);
    }
}
