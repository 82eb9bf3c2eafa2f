//! The shape of the configuration file and environment: plain serde
//! structs with their defaults. Values are checked and turned into typed
//! settings by `validate`; these structs are also what `orderflow config`
//! prints back (secrets redacted).
//!
//! Keys are PascalCase both ways: `sources` folds whatever spelling a user
//! wrote to the field's PascalCase name, which `keys` reads off these
//! structs' own serialization, so a field is spelled in exactly one place.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::properties::RawProperties;
use super::security::{RawAuth, RawKafkaSecurity, RawRateLimit};
use super::settings::redact_url;
use crate::secret::Secret;

#[derive(Clone, Serialize, Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawConfig {
    pub kafka_configuration: RawKafka,
    pub database: RawDatabase,
    pub api: RawApi,
    pub worker: RawWorker,
    pub outbox: RawOutbox,
    pub fulfilment: RawFulfilment,
    pub admin: RawAdmin,
    pub reconcile: RawReconcile,
    pub events: RawEvents,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawKafka {
    pub server_url: String,
    pub orders: RawTopic,
    /// How long a produced message may wait for the broker before the relay
    /// treats it as failed and backs off.
    pub message_timeout_ms: u64,
    pub security: RawKafkaSecurity,
    /// librdkafka properties for every client, by librdkafka's name.
    pub client: RawProperties,
    /// librdkafka properties for producers only.
    pub producer: RawProperties,
    /// librdkafka properties for consumers only.
    pub consumer: RawProperties,
}

impl Default for RawKafka {
    fn default() -> Self {
        Self {
            server_url: "embedded".into(),
            orders: RawTopic::default(),
            message_timeout_ms: 30_000,
            security: RawKafkaSecurity::default(),
            client: RawProperties::default(),
            producer: RawProperties::default(),
            consumer: RawProperties::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawTopic {
    pub topic_name: String,
    pub consumer_group: String,
    pub consumer_name: String,
    pub partitions: i64,
    pub replication_factor: i64,
}

impl Default for RawTopic {
    fn default() -> Self {
        Self {
            topic_name: "orders".into(),
            consumer_group: "order-processing".into(),
            consumer_name: "order-events-handler".into(),
            partitions: 10,
            replication_factor: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawDatabase {
    pub url: String,
    pub max_connections: u32,
    /// PostgreSQL TLS: disable, allow, prefer, require, verify-ca or
    /// verify-full; empty leaves it to the URL's `sslmode` (default prefer).
    pub ssl_mode: String,
    /// PEM file of the CA that signs the server's certificate.
    pub ssl_root_cert: String,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: "sqlite://orderflow.db".into(),
            max_connections: 10,
            ssl_mode: String::new(),
            ssl_root_cert: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawApi {
    pub listen: String,
    pub max_body_bytes: u64,
    pub max_items_per_order: u64,
    /// A request still running after this gets 503.
    pub request_timeout_ms: u64,
    /// Requests in progress at once; beyond it, 503 with Retry-After.
    pub max_concurrent_requests: u64,
    /// Open client connections; further ones wait to be accepted.
    pub max_connections: u64,
    pub rate_limit: RawRateLimit,
    pub auth: RawAuth,
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            max_body_bytes: 256 * 1024,
            max_items_per_order: 100,
            request_timeout_ms: 30_000,
            max_concurrent_requests: 1_024,
            max_connections: 10_000,
            rate_limit: RawRateLimit::default(),
            auth: RawAuth::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawWorker {
    pub admin_listen: String,
    /// Messages queued per worker; a full queue stops polling.
    pub buffer_size: i64,
    pub min_workers: i64,
    pub max_workers: i64,
    /// Lag (messages) that one worker is expected to absorb.
    pub lag_threshold: i64,
    /// "by-key" (one order's events in order) or "free" (next free worker).
    pub distribution_strategy: String,
    pub commit_interval_ms: u64,
    pub balance_interval_ms: u64,
    /// How soon the group notices a worker that died without leaving
    /// (classic protocol; with "consumer" the broker sets it).
    pub session_timeout_ms: u64,
    /// "classic" (JoinGroup/SyncGroup, client-side assignor) or "consumer"
    /// (KIP-848: the broker assigns, incrementally; Apache Kafka 4.0+).
    pub group_protocol: String,
    /// The classic protocol's assignor: "cooperative-sticky" (incremental:
    /// only moved partitions stop) or the eager "range" / "roundrobin"
    /// (every partition revoked at every change). Empty: cooperative-sticky,
    /// but range on the embedded broker (librdkafka's mock cluster handles
    /// cooperative rebalances poorly).
    pub assignor: String,
    /// Static membership (`group.instance.id`): a member that restarts
    /// within the session timeout gets its partitions back without a
    /// rebalance. Must be unique per worker, e.g. a StatefulSet pod's name.
    pub instance_id: String,
    /// The longest a fetch waits on the broker when nothing is new. Kafka
    /// answers as soon as data arrives; a broker that does not (librdkafka's
    /// mock cluster) adds up to this much latency.
    pub fetch_wait_max_ms: u64,
    /// Empty means `<orders topic>.dlq`.
    pub dead_letter_topic: String,
    /// "skip" (count and log) or "dead-letter".
    pub unknown_types: String,
    pub retry: RawRetry,
    pub notifier: RawNotifier,
}

impl Default for RawWorker {
    fn default() -> Self {
        Self {
            admin_listen: "0.0.0.0:9090".into(),
            buffer_size: 100,
            min_workers: 1,
            max_workers: 4,
            lag_threshold: 500,
            distribution_strategy: "by-key".into(),
            commit_interval_ms: 1_000,
            balance_interval_ms: 5_000,
            session_timeout_ms: 45_000,
            group_protocol: "classic".into(),
            assignor: String::new(),
            instance_id: String::new(),
            fetch_wait_max_ms: 100,
            dead_letter_topic: String::new(),
            unknown_types: "skip".into(),
            retry: RawRetry::default(),
            notifier: RawNotifier::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawRetry {
    pub max_attempts: i64,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RawRetry {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff_ms: 200,
            max_backoff_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawNotifier {
    /// "log" or "webhook".
    pub kind: String,
    /// The webhook's URL.
    pub url: String,
    /// Sends of one notification in all, the first included, before it is
    /// given up (and the order's timeline says so).
    pub max_attempts: i64,
    /// The wait before the first retry; it doubles with each, up to an hour.
    pub first_retry_ms: u64,
}

impl Default for RawNotifier {
    fn default() -> Self {
        Self {
            kind: "log".into(),
            url: String::new(),
            max_attempts: 8,
            first_retry_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawEvents {
    /// "cloudevents" (camelCase payloads, `ce_*` headers) or "kafkaflow"
    /// (what a .NET KafkaFlow consumer reads: PascalCase payloads and a
    /// `Message-Type` header, the `ce_*` headers alongside).
    pub format: String,
    pub kafka_flow: RawKafkaFlow,
}

impl Default for RawEvents {
    fn default() -> Self {
        Self {
            format: "cloudevents".into(),
            kafka_flow: RawKafkaFlow::default(),
        }
    }
}

/// `Message-Type: {Namespace}.{Event}, {Assembly}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawKafkaFlow {
    pub namespace: String,
    pub assembly: String,
}

impl Default for RawKafkaFlow {
    fn default() -> Self {
        Self {
            namespace: "Orders.Contracts".into(),
            assembly: "Orders.Contracts".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawReconcile {
    /// The sweep that re-drives stuck orders and retries notifications.
    pub enabled: bool,
    /// How long an order may wait for a handler's event before its event
    /// is published again; 0 picks 300 on Kafka, 30 on the embedded broker.
    pub stuck_after_seconds: u64,
    pub interval_ms: u64,
    /// Stuck orders (and due notifications) looked at per sweep.
    pub batch_size: u64,
    /// Re-drives of one event, spaced by StuckAfterSeconds doubling each
    /// time; after that the order is only reported.
    pub max_redrives: i64,
}

impl Default for RawReconcile {
    fn default() -> Self {
        Self {
            enabled: true,
            stuck_after_seconds: 0,
            interval_ms: 10_000,
            batch_size: 500,
            max_redrives: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawAdmin {
    /// The dashboard and its endpoints on the API role. Off by default
    /// until API authentication lands: they can pause the whole pipeline.
    pub enabled: bool,
    /// The compacted topic workers follow for pause/resume.
    pub control_topic: String,
    /// The compacted topic each worker publishes its state to, under its
    /// instance id.
    pub telemetry_topic: String,
    pub telemetry_interval_ms: u64,
    /// How often the API process samples the dashboard's charts, and how
    /// far back they reach (kept in memory, so bounded).
    pub history_interval_ms: u64,
    pub history_seconds: u64,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            enabled: false,
            control_topic: "orderflow.control".into(),
            telemetry_topic: "orderflow.telemetry".into(),
            telemetry_interval_ms: 5_000,
            history_interval_ms: 5_000,
            history_seconds: 900,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawFulfilment {
    /// "kafka", "servicebus" or "none".
    pub kind: String,
    /// The Kafka topic, for kind "kafka".
    pub topic: String,
    /// The Service Bus connection string, for kind "servicebus": a secret,
    /// from the environment (`Fulfilment__ConnectionString`) or a mounted
    /// secret, never from a committed file.
    pub connection_string: Secret,
    /// The Service Bus queue (an AMQP target address), for "servicebus".
    pub queue: String,
}

impl Default for RawFulfilment {
    fn default() -> Self {
        Self {
            kind: "kafka".into(),
            topic: "order-fulfilments".into(),
            connection_string: Secret::default(),
            queue: "order-fulfilments".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawOutbox {
    pub batch_size: u64,
    /// Fallback poll when no wake-up arrives (another process wrote the row
    /// on SQLite, or a NOTIFY was lost with its connection).
    pub poll_interval_ms: u64,
    pub max_backoff_ms: u64,
    /// Published rows are kept this long for inspection, then deleted; 0
    /// (the default) deletes them as soon as the broker acknowledged them,
    /// which costs the relay a sixth of marking them.
    pub retention_seconds: u64,
}

impl Default for RawOutbox {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval_ms: 1_000,
            max_backoff_ms: 30_000,
            retention_seconds: 0,
        }
    }
}

impl RawConfig {
    /// URLs lose their passwords; [`Secret`] fields show themselves as `***`
    /// when serialized.
    pub(super) fn redacted(&self) -> Self {
        let mut shown = self.clone();
        shown.database.url = redact_url(&shown.database.url);
        shown.worker.notifier.url = redact_url(&shown.worker.notifier.url);
        shown
    }
}

/// As `orderflow config` shows it: a logged configuration leaks nothing.
impl fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match toml::to_string(&self.redacted()) {
            Ok(text) => f.write_str(&text),
            Err(_) => f.write_str("RawConfig { .. }"),
        }
    }
}

/// What a list key takes, in messages.
pub(super) const LIST_EXPECTED: &str =
    "a list, comma-separated (`a,b`) or a JSON array (`[\"a\",\"b\"]`)";

/// A list key: a list, or one string of items separated by commas or
/// spaces (as scopes are written). A visitor rather than an untagged enum,
/// whose error ("data did not match any variant") says nothing useful.
pub(super) fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(LIST_EXPECTED)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(split_list(v))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_any(ListVisitor)
}

pub(super) fn split_list(text: &str) -> Vec<String> {
    text.split([' ', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
