//! Typed settings: what the rest of orderflow reads, valid by construction
//! (`validate` builds them from the raw shape).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::properties::KafkaProperties;
use super::security::{AuthSettings, KafkaSecurity, RateLimitSettings};
use super::servicebus::ServiceBusConnection;
use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaServers {
    /// librdkafka's in-process mock cluster: development only, in memory.
    Embedded,
    Brokers(Vec<String>),
}

impl KafkaServers {
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.trim().eq_ignore_ascii_case("embedded") {
            return Some(Self::Embedded);
        }
        let brokers: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        (!brokers.is_empty()).then_some(Self::Brokers(brokers))
    }
}

#[derive(Debug, Clone)]
pub struct TopicSettings {
    pub name: String,
    pub consumer_group: String,
    pub consumer_name: String,
    pub partitions: i32,
    pub replication_factor: i32,
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub servers: KafkaServers,
    pub orders: TopicSettings,
    pub message_timeout: Duration,
    pub security: KafkaSecurity,
    pub properties: KafkaProperties,
}

#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Postgres(String),
    Sqlite(String),
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = raw.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_string()))
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(url.to_string()))
        } else if url.is_empty() {
            Err("is empty".into())
        } else {
            Err(format!(
                "unsupported database {:?}: expected postgres://... or sqlite://...",
                redact_url(url)
            ))
        }
    }

    pub fn expose(&self) -> &str {
        match self {
            Self::Postgres(u) | Self::Sqlite(u) => u,
        }
    }
}

/// The URL may carry a password: Debug shows it redacted, so a logged config
/// or error never leaks it.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", redact_url(self.expose()))
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: DatabaseUrl,
    pub max_connections: u32,
    pub ssl_mode: Option<sqlx::postgres::PgSslMode>,
    pub ssl_root_cert: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_items_per_order: usize,
    pub request_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub max_connections: usize,
    pub rate_limit: Option<RateLimitSettings>,
    pub auth: AuthSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    ByKey,
    Free,
}

/// How the consumer group shares the partitions among the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    /// The classic protocol with this assignor (librdkafka's name).
    Classic(Assignor),
    /// KIP-848: the broker assigns, incrementally.
    Consumer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    CooperativeSticky,
    Range,
    RoundRobin,
}

impl Assignor {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CooperativeSticky => "cooperative-sticky",
            Self::Range => "range",
            Self::RoundRobin => "roundrobin",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownTypes {
    Skip,
    DeadLetter,
}

#[derive(Debug, Clone)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub enum NotifierSettings {
    Log,
    /// The URL may carry credentials.
    Webhook(String),
}

impl fmt::Debug for NotifierSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Log => f.write_str("Log"),
            Self::Webhook(url) => write!(f, "Webhook({})", redact_url(url)),
        }
    }
}

/// How events are written on Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFormat {
    /// camelCase payloads, CloudEvents `ce_*` headers.
    CloudEvents,
    /// What .NET KafkaFlow consumers read (`events::kafkaflow`), with the
    /// `ce_*` headers alongside.
    KafkaFlow { namespace: String, assembly: String },
}

/// How a notification whose send failed is retried.
#[derive(Debug, Clone)]
pub struct NotificationRetrySettings {
    /// Sends in all, the first included.
    pub max_attempts: u32,
    pub first_retry: Duration,
}

#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    pub enabled: bool,
    pub stuck_after: Duration,
    pub interval: Duration,
    pub batch_size: usize,
    pub max_redrives: u32,
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub admin_listen: SocketAddr,
    pub buffer_size: usize,
    pub min_workers: usize,
    pub max_workers: usize,
    pub lag_threshold: i64,
    pub distribution: Distribution,
    pub commit_interval: Duration,
    pub balance_interval: Duration,
    pub session_timeout: Duration,
    pub group_protocol: GroupProtocol,
    /// `group.instance.id`, for static membership.
    pub instance_id: Option<String>,
    pub fetch_wait_max: Duration,
    pub dead_letter_topic: String,
    pub unknown_types: UnknownTypes,
    pub retry: RetrySettings,
    pub notifier: NotifierSettings,
    pub notification_retry: NotificationRetrySettings,
}

/// Where `OrderFulfilled` and `OrderRejected` are delivered.
#[derive(Debug, Clone, PartialEq)]
pub enum FulfilmentSink {
    Kafka {
        topic: String,
    },
    ServiceBus {
        /// `None` only while `FulfilmentSettings::unready` says why.
        connection: Option<ServiceBusConnection>,
        queue: String,
    },
    None,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub enabled: bool,
    pub control_topic: String,
    pub telemetry_topic: String,
    pub telemetry_interval: Duration,
    /// The charts' resolution, and how many points they keep (at least 2).
    pub history_interval: Duration,
    pub history_points: usize,
}

#[derive(Debug, Clone)]
pub struct FulfilmentSettings {
    pub sink: FulfilmentSink,
    /// Service Bus without a connection string: this stops the worker,
    /// which delivers to the queue, not the API or the migrate Job, which
    /// are not given it.
    pub unready: Option<ConfigError>,
}

impl FulfilmentSettings {
    /// The Kafka topic fulfilment events go to, if they go to Kafka.
    pub fn kafka_topic(&self) -> Option<&str> {
        match &self.sink {
            FulfilmentSink::Kafka { topic } => Some(topic),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub batch_size: usize,
    pub poll_interval: Duration,
    pub max_backoff: Duration,
    pub retention: Duration,
}

/// Replaces the password of a `scheme://user:password@host` URL with `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &url[scheme_end + 3 + at..]
        ),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_url_is_split_trimmed_and_empties_dropped() {
        assert_eq!(
            KafkaServers::parse(" kafka-1:9092, ,kafka-2:9092 ,"),
            Some(KafkaServers::Brokers(vec![
                "kafka-1:9092".into(),
                "kafka-2:9092".into()
            ]))
        );
        assert_eq!(
            KafkaServers::parse("Embedded"),
            Some(KafkaServers::Embedded)
        );
        assert_eq!(KafkaServers::parse(" , "), None);
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/orders?sslmode=require"),
            "postgres://app:***@db:5432/orders?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://app@db/orders"),
            "postgres://app@db/orders"
        );
        assert_eq!(redact_url("sqlite://orderflow.db"), "sqlite://orderflow.db");
    }
}
