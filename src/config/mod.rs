//! The one place configuration is read.
//!
//! Layers, later wins: built-in defaults → the config file (TOML, or JSON such
//! as an ASP.NET `appsettings.json`) → environment variables in the ASP.NET
//! Core convention (`KafkaConfiguration__Orders__TopicName=...`). Keys match
//! case-insensitively, as .NET configuration does: every key is folded to
//! lower case before serde sees it, so `serverUrl`, `ServerUrl` and
//! `SERVERURL` are one key.
//!
//! Raw values are parsed once into typed settings ([`Config`]); every error
//! names the key in its canonical spelling and the source it came from.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod properties;
mod security;

pub use properties::{
    property_name, KafkaProperties, PropertyTable, RawProperties, RawProperty, Scalar,
};
pub use security::*;

use figment::providers::{Format, Json, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Top-level sections taken from the environment; everything else in the
/// process environment (PATH, HOME, ...) is not configuration.
const SECTIONS: &[&str] = &[
    "kafkaconfiguration",
    "database",
    "api",
    "worker",
    "outbox",
    "fulfilment",
    "admin",
];

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} not found")]
    FileNotFound { path: String },
    #[error("config file {path} cannot be read: {message}")]
    FileUnreadable { path: String, message: String },
    #[error("{key}: {message} ({source_name})")]
    Invalid {
        key: String,
        message: String,
        source_name: String,
    },
}

// ---------------------------------------------------------------------------
// Raw shape: what the file and the environment may contain. Serialized back
// (PascalCase, secrets redacted) by `orderflow config`.
// ---------------------------------------------------------------------------

#[derive(Clone, Serialize, Deserialize, Default)]
#[serde(default, rename_all(serialize = "PascalCase"))]
pub struct RawConfig {
    #[serde(alias = "kafkaconfiguration")]
    pub kafka_configuration: RawKafka,
    pub database: RawDatabase,
    pub api: RawApi,
    pub worker: RawWorker,
    pub outbox: RawOutbox,
    pub fulfilment: RawFulfilment,
    pub admin: RawAdmin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all(serialize = "PascalCase"))]
pub struct RawKafka {
    #[serde(alias = "serverurl")]
    pub server_url: String,
    pub orders: RawTopic,
    /// How long a produced message may wait for the broker before the relay
    /// treats it as failed and backs off.
    #[serde(alias = "messagetimeoutms")]
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
#[serde(default, rename_all(serialize = "PascalCase"))]
pub struct RawTopic {
    #[serde(alias = "topicname")]
    pub topic_name: String,
    #[serde(alias = "consumergroup")]
    pub consumer_group: String,
    #[serde(alias = "consumername")]
    pub consumer_name: String,
    pub partitions: i64,
    #[serde(alias = "replicationfactor")]
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
#[serde(default, rename_all(serialize = "PascalCase"))]
pub struct RawDatabase {
    pub url: String,
    #[serde(alias = "maxconnections")]
    pub max_connections: u32,
    /// PostgreSQL TLS: disable, allow, prefer, require, verify-ca or
    /// verify-full; empty leaves it to the URL's `sslmode` (default prefer).
    #[serde(alias = "sslmode")]
    pub ssl_mode: String,
    /// PEM file of the CA that signs the server's certificate.
    #[serde(alias = "sslrootcert")]
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
#[serde(default, rename_all(serialize = "PascalCase"))]
pub struct RawApi {
    pub listen: String,
    #[serde(alias = "maxbodybytes")]
    pub max_body_bytes: u64,
    #[serde(alias = "maxitemsperorder")]
    pub max_items_per_order: u64,
    /// A request still running after this gets 503.
    #[serde(alias = "requesttimeoutms")]
    pub request_timeout_ms: u64,
    /// Requests in progress at once; beyond it, 503 with Retry-After.
    #[serde(alias = "maxconcurrentrequests")]
    pub max_concurrent_requests: u64,
    /// Open client connections; further ones wait to be accepted.
    #[serde(alias = "maxconnections")]
    pub max_connections: u64,
    #[serde(alias = "ratelimit")]
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
#[serde(default, rename_all(serialize = "PascalCase"))]
pub struct RawWorker {
    #[serde(alias = "adminlisten")]
    pub admin_listen: String,
    /// Messages queued per worker; a full queue stops polling.
    #[serde(alias = "buffersize")]
    pub buffer_size: i64,
    #[serde(alias = "minworkers")]
    pub min_workers: i64,
    #[serde(alias = "maxworkers")]
    pub max_workers: i64,
    /// Lag (messages) that one worker is expected to absorb.
    #[serde(alias = "lagthreshold")]
    pub lag_threshold: i64,
    /// "by-key" (one order's events in order) or "free" (next free worker).
    #[serde(alias = "distributionstrategy")]
    pub distribution_strategy: String,
    #[serde(alias = "commitintervalms")]
    pub commit_interval_ms: u64,
    #[serde(alias = "balanceintervalms")]
    pub balance_interval_ms: u64,
    /// How soon the group notices a worker that died without leaving.
    #[serde(alias = "sessiontimeoutms")]
    pub session_timeout_ms: u64,
    /// The longest a fetch waits on the broker when nothing is new. Kafka
    /// answers as soon as data arrives; a broker that does not (librdkafka's
    /// mock cluster) adds up to this much latency.
    #[serde(alias = "fetchwaitmaxms")]
    pub fetch_wait_max_ms: u64,
    /// Empty means `<orders topic>.dlq`.
    #[serde(alias = "deadlettertopic")]
    pub dead_letter_topic: String,
    /// "skip" (count and log) or "dead-letter".
    #[serde(alias = "unknowntypes")]
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
            fetch_wait_max_ms: 100,
            dead_letter_topic: String::new(),
            unknown_types: "skip".into(),
            retry: RawRetry::default(),
            notifier: RawNotifier::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all(serialize = "PascalCase"))]
pub struct RawRetry {
    #[serde(alias = "maxattempts")]
    pub max_attempts: i64,
    #[serde(alias = "initialbackoffms")]
    pub initial_backoff_ms: u64,
    #[serde(alias = "maxbackoffms")]
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
#[serde(default, rename_all(serialize = "PascalCase"))]
pub struct RawNotifier {
    /// "log" or "webhook".
    pub kind: String,
    /// The webhook's URL.
    pub url: String,
}

impl Default for RawNotifier {
    fn default() -> Self {
        Self {
            kind: "log".into(),
            url: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all(serialize = "PascalCase"))]
pub struct RawAdmin {
    /// The dashboard and its endpoints on the API role. Off by default
    /// until API authentication lands: they can pause the whole pipeline.
    pub enabled: bool,
    /// The compacted topic workers follow for pause/resume.
    #[serde(alias = "controltopic")]
    pub control_topic: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            enabled: false,
            control_topic: "orderflow.control".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all(serialize = "PascalCase"))]
pub struct RawFulfilment {
    /// "kafka", "servicebus" or "none".
    pub kind: String,
    /// The Kafka topic, for kind "kafka".
    pub topic: String,
    /// The Service Bus connection string, for kind "servicebus": a secret,
    /// from the environment (`Fulfilment__ConnectionString`) or a mounted
    /// secret, never from a committed file.
    #[serde(alias = "connectionstring")]
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
#[serde(default, rename_all(serialize = "PascalCase"))]
pub struct RawOutbox {
    #[serde(alias = "batchsize")]
    pub batch_size: u64,
    /// Fallback poll when no wake-up arrives (another process wrote the row
    /// on SQLite, or a NOTIFY was lost with its connection).
    #[serde(alias = "pollintervalms")]
    pub poll_interval_ms: u64,
    #[serde(alias = "maxbackoffms")]
    pub max_backoff_ms: u64,
    /// Published rows are kept this long for inspection, then deleted; 0
    /// (the default) deletes them as soon as the broker acknowledged them,
    /// which costs the relay a sixth of marking them.
    #[serde(alias = "retentionseconds")]
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

// ---------------------------------------------------------------------------
// Typed settings: valid by construction.
// ---------------------------------------------------------------------------

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
    pub fetch_wait_max: Duration,
    pub dead_letter_topic: String,
    pub unknown_types: UnknownTypes,
    pub retry: RetrySettings,
    pub notifier: NotifierSettings,
}

/// Where `OrderFulfilled` and `OrderRejected` are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FulfilmentSink {
    Kafka {
        topic: String,
    },
    ServiceBus {
        connection: ServiceBusConnection,
        queue: String,
    },
    None,
}

/// A parsed Service Bus connection string. Debug never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceBusConnection {
    pub host: String,
    pub port: Option<u16>,
    pub key_name: String,
    pub key: String,
    /// `UseDevelopmentEmulator=true`: plain AMQP, no TLS.
    pub emulator: bool,
}

impl fmt::Debug for ServiceBusConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBusConnection")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("key_name", &self.key_name)
            .field("key", &"***")
            .field("emulator", &self.emulator)
            .finish()
    }
}

impl ServiceBusConnection {
    /// `Endpoint=sb://<ns>.servicebus.windows.net/;SharedAccessKeyName=...;
    /// SharedAccessKey=...[;UseDevelopmentEmulator=true]`. Errors name the
    /// missing or bad part and never echo the key.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut endpoint = None;
        let mut key_name = None;
        let mut key = None;
        let mut emulator = false;
        for part in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(format!(
                    "part {:?} is not Name=Value",
                    part.split('=').next().unwrap_or("")
                ));
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(value.trim().to_string()),
                "sharedaccesskeyname" => key_name = Some(value.trim().to_string()),
                // The key is base64 and may itself end in '='.
                "sharedaccesskey" => key = Some(value.trim().to_string()),
                "usedevelopmentemulator" => emulator = value.trim().eq_ignore_ascii_case("true"),
                "entitypath" => {}
                other => return Err(format!("unknown part {other:?}")),
            }
        }
        let endpoint = endpoint
            .filter(|e| !e.is_empty())
            .ok_or("missing Endpoint (Endpoint=sb://<namespace>.servicebus.windows.net/)")?;
        let address = endpoint
            .strip_prefix("sb://")
            .ok_or("Endpoint must start with sb://")?
            .trim_end_matches('/');
        let (host, port) = match address.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                Some(
                    p.parse::<u16>()
                        .map_err(|_| format!("Endpoint port {p:?} is not a number"))?,
                ),
            ),
            None => (address.to_string(), None),
        };
        if host.is_empty() {
            return Err("Endpoint has no host".into());
        }
        let key_name = key_name
            .filter(|k| !k.is_empty())
            .ok_or("missing SharedAccessKeyName")?;
        let key = key
            .filter(|k| !k.is_empty())
            .ok_or("missing SharedAccessKey")?;
        Ok(Self {
            host,
            port,
            key_name,
            key,
            emulator,
        })
    }
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub enabled: bool,
    pub control_topic: String,
}

#[derive(Debug, Clone)]
pub struct FulfilmentSettings {
    pub sink: FulfilmentSink,
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

#[derive(Debug, Clone)]
pub struct Config {
    pub kafka: KafkaSettings,
    pub database: DatabaseSettings,
    pub api: ApiSettings,
    pub worker: WorkerSettings,
    pub outbox: OutboxSettings,
    pub fulfilment: FulfilmentSettings,
    pub admin: AdminSettings,
    /// The merged raw values, kept for `orderflow config`.
    pub raw: RawConfig,
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// A path given explicitly must exist; the default `config.toml` may not.
    pub required: bool,
}

impl Config {
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        Self::load_with_env(source, std::env::vars())
    }

    /// Loads with an explicit environment, so tests need not mutate the
    /// process environment.
    pub fn load_with_env(
        source: &ConfigSource,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if source.path.exists() {
            figment = figment.merge(CaseInsensitiveFile::read(&source.path)?);
        } else if source.required {
            return Err(ConfigError::FileNotFound {
                path: source.path.display().to_string(),
            });
        }
        figment = figment.merge(EnvLayer::from_vars(env));
        let raw: RawConfig = figment.extract().map_err(|e| from_figment(&e))?;
        Validator { figment: &figment }.validate(raw)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.raw.redacted();
        if let KafkaServers::Brokers(list) = &self.kafka.servers {
            shown.kafka_configuration.server_url = list.join(",");
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

impl RawConfig {
    /// URLs lose their passwords; [`Secret`] fields show themselves as `***`
    /// when serialized.
    fn redacted(&self) -> Self {
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

// ---------------------------------------------------------------------------
// Providers
// ---------------------------------------------------------------------------

/// A TOML or JSON file whose keys are folded to lower case.
struct CaseInsensitiveFile {
    path: PathBuf,
    data: Dict,
}

impl CaseInsensitiveFile {
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let parsed = if is_json {
            Json::file_exact(path).data()
        } else {
            Toml::file_exact(path).data()
        };
        let data = parsed.map_err(|e| ConfigError::FileUnreadable {
            path: path.display().to_string(),
            // One line: parsers draw a multi-line caret diagram.
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        let dict = data.into_values().next().unwrap_or_default();
        Ok(Self {
            path: path.to_path_buf(),
            data: fold_keys(dict),
        })
    }
}

impl Provider for CaseInsensitiveFile {
    fn metadata(&self) -> Metadata {
        Metadata::from(
            self.path.display().to_string(),
            figment::Source::File(self.path.clone()),
        )
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

fn fold_keys(dict: Dict) -> Dict {
    fold_dict(dict, &[])
}

fn fold_dict(dict: Dict, parent: &[String]) -> Dict {
    if properties::is_table(parent) {
        return properties::fold_names(dict);
    }
    let mut folded = Dict::new();
    for (key, value) in dict {
        let key = key.to_lowercase();
        let value = match value {
            Value::Dict(tag, d) => {
                let path = [parent, std::slice::from_ref(&key)].concat();
                Value::Dict(tag, fold_dict(d, &path))
            }
            other => fold_value(other),
        };
        insert_folded(&mut folded, key, value);
    }
    folded
}

/// `[Orders]` and `[orders]` are two tables to TOML but one section to us:
/// tables whose keys fold together are merged, not overwritten.
fn insert_folded(dict: &mut Dict, key: String, value: Value) {
    match (dict.remove(&key), value) {
        (Some(Value::Dict(tag, mut existing)), Value::Dict(_, more)) => {
            for (k, v) in more {
                insert_folded(&mut existing, k, v);
            }
            dict.insert(key, Value::Dict(tag, existing));
        }
        (_, value) => {
            dict.insert(key, value);
        }
    }
}

fn fold_value(value: Value) -> Value {
    match value {
        Value::Dict(tag, d) => Value::Dict(tag, fold_keys(d)),
        Value::Array(tag, items) => Value::Array(tag, items.into_iter().map(fold_value).collect()),
        other => other,
    }
}

/// `Section__Key__Sub=value` variables of the known sections.
struct EnvLayer {
    vars: Vec<(String, String)>,
}

impl EnvLayer {
    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars = vars
            .into_iter()
            .filter(|(k, _)| {
                let first = k.split("__").next().unwrap_or_default().to_lowercase();
                k.contains("__") && SECTIONS.contains(&first.as_str())
            })
            .collect();
        Self { vars }
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable").interpolater(|_, keys| keys.join("__"))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, value) in &self.vars {
            let segments: Vec<&str> = key.split("__").collect();
            let mut path: Vec<String> = segments.iter().map(|s| s.to_lowercase()).collect();
            // A librdkafka property is one key however it is spelled
            // (`compression.type`, `CompressionType`, `compression__type`),
            // so it merges with the file's value of the same property.
            let property = path.len() > 2 && properties::is_table(&path[..2]);
            if property {
                path.truncate(2);
                path.push(properties::env_name(&segments[2..]));
            }
            // Parsed as figment parses its own environment values: "12"
            // becomes a number, "true" a boolean, anything else a string.
            // Credentials and URLs stay verbatim: a password "007" or
            // "[x]" is not a number or a list; librdkafka takes every
            // property as a string anyway.
            let verbatim = property
                || path
                    .last()
                    .is_some_and(|k| VERBATIM_KEYS.contains(&k.as_str()));
            let value: Value = match verbatim {
                true => Value::from(value.clone()),
                false => value.parse().unwrap_or_else(|_| Value::from(value.clone())),
            };
            insert_path(&mut dict, &path, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

const VERBATIM_KEYS: &[&str] = &[
    "password",
    "keypassword",
    "token",
    "username",
    "connectionstring",
    "url",
    "serverurl",
];

fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Validation: raw → typed, each error naming key and source.
// ---------------------------------------------------------------------------

/// Canonical spelling of every key segment, for messages.
fn canonical(segment: &str) -> &str {
    const NAMES: &[&str] = &[
        "KafkaConfiguration",
        "ServerUrl",
        "MessageTimeoutMs",
        "Orders",
        "TopicName",
        "ConsumerGroup",
        "ConsumerName",
        "Partitions",
        "ReplicationFactor",
        "Database",
        "Url",
        "MaxConnections",
        "Api",
        "Listen",
        "MaxBodyBytes",
        "MaxItemsPerOrder",
        "Worker",
        "AdminListen",
        "Outbox",
        "BatchSize",
        "PollIntervalMs",
        "MaxBackoffMs",
        "RetentionSeconds",
        "BufferSize",
        "MinWorkers",
        "MaxWorkers",
        "LagThreshold",
        "DistributionStrategy",
        "CommitIntervalMs",
        "BalanceIntervalMs",
        "SessionTimeoutMs",
        "FetchWaitMaxMs",
        "DeadLetterTopic",
        "UnknownTypes",
        "Retry",
        "MaxAttempts",
        "InitialBackoffMs",
        "Notifier",
        "Kind",
        "Fulfilment",
        "Topic",
        "ConnectionString",
        "Queue",
        "Admin",
        "Enabled",
        "ControlTopic",
        "Security",
        "Protocol",
        "SaslMechanism",
        "Username",
        "Password",
        "CaFile",
        "CertificateFile",
        "KeyFile",
        "KeyPassword",
        "EndpointIdentification",
        "SslMode",
        "SslRootCert",
        "RequestTimeoutMs",
        "MaxConcurrentRequests",
        "RateLimit",
        "PerSecond",
        "Burst",
        "Auth",
        "Tokens",
        "Token",
        "Scopes",
        "Jwt",
        "Issuer",
        "Audience",
        "JwksFile",
        "JwksUrl",
        "AnonymousPaths",
        "Client",
        "Producer",
        "Consumer",
    ];
    NAMES
        .iter()
        .find(|n| n.eq_ignore_ascii_case(&segment.replace('_', "")))
        .copied()
        .unwrap_or(segment)
}

/// Key segments as messages spell them. librdkafka property names are
/// free-form and stay as they are, whatever our key list holds.
fn canonical_segments(path: &[String]) -> Vec<&str> {
    let in_table = path.len() > 2 && properties::is_table(&path[..2]);
    path.iter()
        .enumerate()
        .map(|(i, s)| match in_table && i >= 2 {
            true => s.as_str(),
            false => canonical(s),
        })
        .collect()
}

fn canonical_key(path: &[String]) -> String {
    canonical_segments(path).join(".")
}

fn source_name(metadata: Option<&Metadata>, path: &[String]) -> String {
    match metadata {
        None => "built-in default".into(),
        Some(md) => match &md.source {
            Some(figment::Source::File(p)) => p.display().to_string(),
            _ => {
                let key = canonical_segments(path).join("__");
                format!("{} {key}", md.name)
            }
        },
    }
}

fn from_figment(error: &figment::Error) -> ConfigError {
    let path: Vec<String> = error
        .path
        .iter()
        .filter(|s| s.as_str() != "default")
        .cloned()
        .collect();
    ConfigError::Invalid {
        key: canonical_key(&path),
        message: error.kind.to_string(),
        source_name: source_name(error.metadata.as_ref(), &path),
    }
}

struct Validator<'a> {
    figment: &'a Figment,
}

impl Validator<'_> {
    fn error(&self, dotted: &str, message: impl Into<String>) -> ConfigError {
        let path: Vec<String> = dotted.split('.').map(str::to_lowercase).collect();
        ConfigError::Invalid {
            key: canonical_key(&path),
            message: message.into(),
            source_name: source_name(self.figment.find_metadata(&path.join(".")), &path),
        }
    }

    fn non_empty(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(self.error(key, "is empty"));
        }
        Ok(trimmed.to_string())
    }

    fn in_range(&self, key: &str, value: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
        if value < min || value > max {
            return Err(self.error(key, format!("is {value}, must be {min}..={max}")));
        }
        Ok(value)
    }

    fn socket_addr(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.trim().parse().map_err(|_| {
            self.error(
                key,
                format!("{value:?} is not a socket address such as 0.0.0.0:8080"),
            )
        })
    }

    fn millis(&self, key: &str, value: u64, min: u64) -> Result<Duration, ConfigError> {
        if value < min {
            return Err(self.error(key, format!("is {value}, must be at least {min}")));
        }
        Ok(Duration::from_millis(value))
    }

    fn ssl_mode(
        &self,
        raw: &RawDatabase,
    ) -> Result<Option<sqlx::postgres::PgSslMode>, ConfigError> {
        let mode = raw.ssl_mode.trim();
        if mode.is_empty() {
            return Ok(None);
        }
        if raw.url.trim().starts_with("sqlite:") {
            return Err(self.error("database.sslmode", "applies to PostgreSQL only"));
        }
        mode.parse().map(Some).map_err(|_| {
            self.error(
                "database.sslmode",
                format!(
                    "{mode:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ),
            )
        })
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let k = &raw.kafka_configuration;
        let servers = KafkaServers::parse(&k.server_url).ok_or_else(|| {
            self.error(
                "kafkaconfiguration.serverurl",
                "names no broker (expected \"embedded\" or host:port[,host:port...])",
            )
        })?;
        let orders = TopicSettings {
            name: self.non_empty("kafkaconfiguration.orders.topicname", &k.orders.topic_name)?,
            consumer_group: self.non_empty(
                "kafkaconfiguration.orders.consumergroup",
                &k.orders.consumer_group,
            )?,
            consumer_name: self.non_empty(
                "kafkaconfiguration.orders.consumername",
                &k.orders.consumer_name,
            )?,
            partitions: self.in_range(
                "kafkaconfiguration.orders.partitions",
                k.orders.partitions,
                1,
                10_000,
            )? as i32,
            replication_factor: self.in_range(
                "kafkaconfiguration.orders.replicationfactor",
                k.orders.replication_factor,
                1,
                32,
            )? as i32,
        };
        let kafka = KafkaSettings {
            servers,
            orders,
            message_timeout: self.millis(
                "kafkaconfiguration.messagetimeoutms",
                k.message_timeout_ms,
                100,
            )?,
            security: self.kafka_security(&k.security)?,
            properties: self.kafka_properties(&k.client, &k.producer, &k.consumer)?,
        };
        let database = DatabaseSettings {
            url: DatabaseUrl::parse(&raw.database.url)
                .map_err(|m| self.error("database.url", m))?,
            max_connections: self.in_range(
                "database.maxconnections",
                raw.database.max_connections.into(),
                1,
                1_000,
            )? as u32,
            ssl_mode: self.ssl_mode(&raw.database)?,
            ssl_root_cert: match raw.database.ssl_root_cert.trim() {
                "" => None,
                path if PathBuf::from(path).is_file() => Some(PathBuf::from(path)),
                path => {
                    return Err(self.error(
                        "database.sslrootcert",
                        format!("{path:?} is not a readable file"),
                    ))
                }
            },
        };
        let api = ApiSettings {
            listen: self.socket_addr("api.listen", &raw.api.listen)?,
            max_body_bytes: self.in_range(
                "api.maxbodybytes",
                raw.api.max_body_bytes.min(i64::MAX as u64) as i64,
                1_024,
                64 * 1024 * 1024,
            )? as usize,
            max_items_per_order: self.in_range(
                "api.maxitemsperorder",
                raw.api.max_items_per_order.min(i64::MAX as u64) as i64,
                1,
                10_000,
            )? as usize,
            request_timeout: self.millis(
                "api.requesttimeoutms",
                raw.api.request_timeout_ms,
                100,
            )?,
            max_concurrent_requests: self.in_range(
                "api.maxconcurrentrequests",
                raw.api.max_concurrent_requests.min(i64::MAX as u64) as i64,
                1,
                1_000_000,
            )? as usize,
            max_connections: self.in_range(
                "api.maxconnections",
                raw.api.max_connections.min(i64::MAX as u64) as i64,
                1,
                1_000_000,
            )? as usize,
            rate_limit: self.rate_limit(&raw.api.rate_limit)?,
            auth: self.auth(&raw.api.auth)?,
        };
        let w = &raw.worker;
        let min_workers = self.in_range("worker.minworkers", w.min_workers, 1, 256)? as usize;
        let max_workers = self.in_range("worker.maxworkers", w.max_workers, 1, 256)? as usize;
        if max_workers < min_workers {
            return Err(self.error(
                "worker.maxworkers",
                format!("is {max_workers}, below Worker.MinWorkers ({min_workers})"),
            ));
        }
        let dead_letter_topic = match w.dead_letter_topic.trim() {
            "" => format!("{}.dlq", kafka.orders.name),
            name => name.to_string(),
        };
        let worker = WorkerSettings {
            admin_listen: self.socket_addr("worker.adminlisten", &w.admin_listen)?,
            buffer_size: self.in_range("worker.buffersize", w.buffer_size, 1, 100_000)? as usize,
            min_workers,
            max_workers,
            lag_threshold: self.in_range("worker.lagthreshold", w.lag_threshold, 1, i64::MAX)?,
            distribution: match w.distribution_strategy.trim().to_ascii_lowercase().as_str() {
                "by-key" | "bykey" => Distribution::ByKey,
                "free" => Distribution::Free,
                other => {
                    return Err(self.error(
                        "worker.distributionstrategy",
                        format!("{other:?} is neither \"by-key\" nor \"free\""),
                    ))
                }
            },
            commit_interval: self.millis("worker.commitintervalms", w.commit_interval_ms, 10)?,
            balance_interval: self.millis(
                "worker.balanceintervalms",
                w.balance_interval_ms,
                100,
            )?,
            session_timeout: self.millis("worker.sessiontimeoutms", w.session_timeout_ms, 1_000)?,
            fetch_wait_max: self.millis("worker.fetchwaitmaxms", w.fetch_wait_max_ms, 1)?,
            dead_letter_topic,
            unknown_types: match w.unknown_types.trim().to_ascii_lowercase().as_str() {
                "skip" => UnknownTypes::Skip,
                "dead-letter" | "deadletter" => UnknownTypes::DeadLetter,
                other => {
                    return Err(self.error(
                        "worker.unknowntypes",
                        format!("{other:?} is neither \"skip\" nor \"dead-letter\""),
                    ))
                }
            },
            retry: RetrySettings {
                max_attempts: self.in_range(
                    "worker.retry.maxattempts",
                    w.retry.max_attempts,
                    1,
                    100,
                )? as u32,
                initial_backoff: self.millis(
                    "worker.retry.initialbackoffms",
                    w.retry.initial_backoff_ms,
                    1,
                )?,
                max_backoff: self.millis("worker.retry.maxbackoffms", w.retry.max_backoff_ms, 1)?,
            },
            notifier: match w.notifier.kind.trim().to_ascii_lowercase().as_str() {
                "log" => NotifierSettings::Log,
                "webhook" => {
                    let url = w.notifier.url.trim();
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(self.error(
                            "worker.notifier.url",
                            "must be an http:// or https:// URL for the webhook notifier",
                        ));
                    }
                    NotifierSettings::Webhook(url.to_string())
                }
                other => {
                    return Err(self.error(
                        "worker.notifier.kind",
                        format!("{other:?} is neither \"log\" nor \"webhook\""),
                    ))
                }
            },
        };
        let f = &raw.fulfilment;
        let fulfilment = FulfilmentSettings {
            sink: match f.kind.trim().to_ascii_lowercase().as_str() {
                "kafka" => FulfilmentSink::Kafka {
                    topic: self.non_empty("fulfilment.topic", &f.topic)?,
                },
                "servicebus" => FulfilmentSink::ServiceBus {
                    connection: ServiceBusConnection::parse(f.connection_string.expose())
                        .map_err(|m| self.error("fulfilment.connectionstring", m))?,
                    queue: self.non_empty("fulfilment.queue", &f.queue)?,
                },
                "none" => FulfilmentSink::None,
                other => {
                    return Err(self.error(
                        "fulfilment.kind",
                        format!("{other:?} is not one of \"kafka\", \"servicebus\", \"none\""),
                    ))
                }
            },
        };
        let o = &raw.outbox;
        let outbox = OutboxSettings {
            batch_size: self.in_range(
                "outbox.batchsize",
                o.batch_size.min(i64::MAX as u64) as i64,
                1,
                10_000,
            )? as usize,
            poll_interval: self.millis("outbox.pollintervalms", o.poll_interval_ms, 10)?,
            max_backoff: self.millis("outbox.maxbackoffms", o.max_backoff_ms, 10)?,
            retention: Duration::from_secs(o.retention_seconds),
        };
        Ok(Config {
            kafka,
            database,
            api,
            worker,
            outbox,
            fulfilment,
            admin: AdminSettings {
                enabled: raw.admin.enabled,
                control_topic: self.non_empty("admin.controltopic", &raw.admin.control_topic)?,
            },
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, ext: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(format!("config.{ext}"));
        std::fs::write(&path, file).expect("write config");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_with_env(
            &ConfigSource {
                path,
                required: true,
            },
            env,
        )
    }

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
    fn keys_match_case_insensitively_and_env_wins() {
        let cfg = load(
            "[kafkaconfiguration]\nSERVERURL = \"a:1\"\n[KafkaConfiguration.orders]\ntopicName = \"t1\"\n",
            "toml",
            &[("KAFKACONFIGURATION__Orders__Partitions", "12")],
        )
        .expect("valid");
        assert_eq!(cfg.kafka.servers, KafkaServers::Brokers(vec!["a:1".into()]));
        assert_eq!(cfg.kafka.orders.name, "t1");
        assert_eq!(cfg.kafka.orders.partitions, 12);
    }

    #[test]
    fn errors_name_key_and_source() {
        let err = load("[Api]\nListen = \"nowhere\"\n", "toml", &[])
            .expect_err("invalid listen")
            .to_string();
        assert!(err.starts_with("Api.Listen: "), "{err}");
        assert!(err.ends_with("config.toml)"), "{err}");

        let err = load(
            "",
            "toml",
            &[("KafkaConfiguration__Orders__Partitions", "0")],
        )
        .expect_err("zero partitions")
        .to_string();
        assert!(
            err.contains("KafkaConfiguration.Orders.Partitions")
                && err.contains("environment variable"),
            "{err}"
        );
    }

    #[test]
    fn service_bus_connection_strings_parse_and_name_missing_parts() {
        let c = ServiceBusConnection::parse(
            "Endpoint=sb://shop.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=abc==",
        )
        .expect("valid");
        assert_eq!(
            (c.host.as_str(), c.port, c.key.as_str()),
            ("shop.servicebus.windows.net", None, "abc==")
        );
        assert!(!c.emulator);
        assert!(!format!("{c:?}").contains("abc=="));
        let e = ServiceBusConnection::parse(
            "Endpoint=sb://localhost:5673;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true",
        )
        .expect("emulator");
        assert_eq!((e.port, e.emulator), (Some(5673), true));
        for (raw, missing) in [
            ("SharedAccessKeyName=k;SharedAccessKey=v", "Endpoint"),
            ("Endpoint=sb://x/;SharedAccessKey=v", "SharedAccessKeyName"),
            ("Endpoint=sb://x/;SharedAccessKeyName=k", "SharedAccessKey"),
        ] {
            let err = ServiceBusConnection::parse(raw).expect_err(missing);
            assert!(err.contains(missing), "{err}");
        }
    }

    #[test]
    fn secrets_stay_verbatim_and_never_show() {
        let cfg = load(
            "",
            "toml",
            &[
                ("Api__Auth__Enabled", "true"),
                ("Api__Auth__Tokens__ci__Token", "0001234567890123456"),
                ("Api__Auth__Tokens__ci__Scopes", "orders:read,orders:write"),
                ("KafkaConfiguration__ServerUrl", "b:9093"),
                ("KafkaConfiguration__Security__Protocol", "SASL_SSL"),
                ("KafkaConfiguration__Security__Username", "key"),
                ("KafkaConfiguration__Security__Password", "[not-a-list]"),
                ("Database__Url", "postgres://u:pw-in-url@db/orders"),
            ],
        )
        .expect("valid");
        let token = &cfg.api.auth.tokens[0];
        assert_eq!(token.token.expose(), "0001234567890123456");
        assert_eq!(token.scopes.len(), 2);
        let sasl = cfg.kafka.security.sasl.as_ref().expect("sasl");
        assert_eq!(sasl.password.expose(), "[not-a-list]");
        let shown = format!("{}\n{cfg:?}", cfg.to_redacted_toml());
        for secret in ["0001234567890123456", "[not-a-list]", "pw-in-url"] {
            assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        }
        assert!(shown.contains("Password = \"***\""), "{shown}");
    }

    fn plain(v: &str) -> Option<PropertyValue> {
        Some(PropertyValue::Plain(v.into()))
    }

    #[test]
    fn property_tables_parse_from_toml() {
        let cfg = load(
            "[KafkaConfiguration.Producer]\n\
             compression.type = \"lz4\"\n\
             linger.ms = 5\n\
             \"batch.num.messages\" = 1000\n\
             [kafkaconfiguration.client]\n\
             socket.keepalive.enable = true\n\
             [KafkaConfiguration.Consumer]\n\
             FetchMinBytes = 2\n",
            "toml",
            &[],
        )
        .expect("valid");
        let p = &cfg.kafka.properties;
        assert_eq!(p.producer.get("compression.type").cloned(), plain("lz4"));
        assert_eq!(p.producer.get("linger.ms").cloned(), plain("5"));
        assert_eq!(p.producer.get("batch.num.messages").cloned(), plain("1000"));
        assert_eq!(
            p.client.get("socket.keepalive.enable").cloned(),
            plain("true")
        );
        assert_eq!(p.consumer.get("fetch.min.bytes").cloned(), plain("2"));
        assert_eq!(p.consumer.0.len(), 1);
    }

    #[test]
    fn property_tables_parse_from_json_in_dotnet_spelling() {
        let cfg = load(
            r#"{"KafkaConfiguration": {
                "Producer": {"CompressionType": "lz4", "LingerMs": 5, "compression": {"level": 3}},
                "Client": {"SocketKeepaliveEnable": true, "ReconnectBackoffMs": 50}
            }}"#,
            "json",
            &[],
        )
        .expect("valid");
        let p = &cfg.kafka.properties;
        assert_eq!(p.producer.get("compression.type").cloned(), plain("lz4"));
        assert_eq!(p.producer.get("linger.ms").cloned(), plain("5"));
        assert_eq!(p.producer.get("compression.level").cloned(), plain("3"));
        assert_eq!(
            p.client.get("socket.keepalive.enable").cloned(),
            plain("true")
        );
        assert_eq!(p.client.get("reconnect.backoff.ms").cloned(), plain("50"));
    }

    #[test]
    fn dotnet_property_names_map_to_librdkafka_names() {
        for (raw, name) in [
            ("CompressionType", "compression.type"),
            ("SaslOauthbearerClientId", "sasl.oauthbearer.client.id"),
            ("lingerMs", "linger.ms"),
            ("compression.type", "compression.type"),
            ("COMPRESSION.TYPE", "compression.type"),
            ("SSLCaLocation", "ssl.ca.location"),
            ("debug", "debug"),
        ] {
            assert_eq!(property_name(raw), name, "{raw}");
        }
        assert_eq!(Scalar::Float(0.5).to_string(), "0.5");
        assert_eq!(Scalar::Bool(false).to_string(), "false");
    }

    #[test]
    fn environment_overrides_properties_one_by_one() {
        let cfg = load(
            "[KafkaConfiguration.Producer]\ncompression.type = \"lz4\"\nlinger.ms = 5\n",
            "toml",
            &[
                ("KafkaConfiguration__Producer__linger.ms", "10"),
                ("KAFKACONFIGURATION__PRODUCER__BatchNumMessages", "500"),
                ("KafkaConfiguration__Producer__compression__level", "4"),
                (
                    "KafkaConfiguration__Client__TopicMetadataRefreshIntervalMs",
                    "60000",
                ),
            ],
        )
        .expect("valid");
        let p = &cfg.kafka.properties;
        assert_eq!(p.producer.get("linger.ms").cloned(), plain("10"));
        assert_eq!(p.producer.get("compression.type").cloned(), plain("lz4"));
        assert_eq!(p.producer.get("batch.num.messages").cloned(), plain("500"));
        assert_eq!(p.producer.get("compression.level").cloned(), plain("4"));
        assert_eq!(
            p.client.get("topic.metadata.refresh.interval.ms").cloned(),
            plain("60000")
        );
    }

    #[test]
    fn unknown_properties_and_rejected_values_name_key_and_source() {
        let err = load(
            "[KafkaConfiguration.Producer]\ncompression.typo = \"lz4\"\n",
            "toml",
            &[],
        )
        .expect_err("unknown property")
        .to_string();
        assert!(
            err.starts_with(
                "KafkaConfiguration.Producer.compression.typo: librdkafka has no such property ("
            ) && err.ends_with("config.toml)"),
            "{err}"
        );

        let err = load(
            "",
            "toml",
            &[("KafkaConfiguration__Consumer__FetchWaitMaxxMs", "1")],
        )
        .expect_err("unknown property from env")
        .to_string();
        assert_eq!(
            err,
            "KafkaConfiguration.Consumer.fetch.wait.maxx.ms: librdkafka has no such property \
             (environment variable KafkaConfiguration__Consumer__fetch.wait.maxx.ms)"
        );

        let err = load(
            "[KafkaConfiguration.Client]\n\"compression.type\" = \"snappy-ish\"\n",
            "toml",
            &[],
        )
        .expect_err("bad value")
        .to_string();
        assert!(
            err.starts_with("KafkaConfiguration.Client.compression.type: librdkafka rejects it: ")
                && err.contains("snappy-ish")
                && err.ends_with("config.toml)"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");

        let err = load(
            "",
            "toml",
            &[("KafkaConfiguration__Client__ssl.keystore.password", "pw\0x")],
        )
        .expect_err("a secret librdkafka cannot take")
        .to_string();
        assert!(
            err.contains("ssl.keystore.password: librdkafka rejects its value"),
            "{err}"
        );
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn owned_properties_name_the_key_to_use() {
        for (table, name, owner) in [
            (
                "Producer",
                "message.timeout.ms",
                "KafkaConfiguration.MessageTimeoutMs",
            ),
            ("Consumer", "session.timeout.ms", "Worker.SessionTimeoutMs"),
            (
                "Client",
                "security.protocol",
                "KafkaConfiguration.Security.Protocol",
            ),
            (
                "Client",
                "sasl.password",
                "KafkaConfiguration.Security.Password",
            ),
            (
                "Client",
                "bootstrap.servers",
                "KafkaConfiguration.ServerUrl",
            ),
            (
                "Consumer",
                "group.id",
                "KafkaConfiguration.Orders.ConsumerGroup",
            ),
        ] {
            let err = load(
                &format!("[KafkaConfiguration.{table}]\n\"{name}\" = \"1\"\n"),
                "toml",
                &[],
            )
            .expect_err(name)
            .to_string();
            assert!(
                err.starts_with(&format!(
                    "KafkaConfiguration.{table}.{name}: is set by orderflow; set {owner} instead ("
                )),
                "{err}"
            );
        }
        for (name, value) in [
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("enable.auto.commit", "true"),
            ("auto.offset.reset", "latest"),
            ("EnableAutoOffsetStore", "true"),
        ] {
            let var = format!("KafkaConfiguration__Client__{name}");
            let err = load("", "toml", &[(var.as_str(), value)])
                .expect_err(name)
                .to_string();
            assert!(
                err.contains(": is set by orderflow; ") && err.contains("environment variable"),
                "{err}"
            );
        }
    }

    #[test]
    fn secret_properties_never_show() {
        let cfg = load(
            "[KafkaConfiguration.Client]\n\
             sasl.oauthbearer.config = \"principal=s3cr3t-in-file\"\n\
             client.rack = \"rack-1\"\n\
             [KafkaConfiguration.Producer]\n\
             compression.type = \"lz4\"\n",
            "toml",
            &[(
                "KafkaConfiguration__Consumer__SslKeystorePassword",
                "007-from-env",
            )],
        )
        .expect("valid");
        let p = &cfg.kafka.properties;
        match p.client.get("sasl.oauthbearer.config") {
            Some(PropertyValue::Secret(s)) => assert_eq!(s.expose(), "principal=s3cr3t-in-file"),
            other => panic!("not a secret: {other:?}"),
        }
        match p.consumer.get("ssl.keystore.password") {
            Some(PropertyValue::Secret(s)) => assert_eq!(s.expose(), "007-from-env"),
            other => panic!("not a secret: {other:?}"),
        }
        let toml_text = cfg.to_redacted_toml();
        let shown: toml::Value = toml::from_str(&toml_text).expect("TOML");
        let kafka = &shown["KafkaConfiguration"];
        assert_eq!(
            kafka["Client"]["sasl.oauthbearer.config"].as_str(),
            Some("***")
        );
        assert_eq!(kafka["Client"]["client.rack"].as_str(), Some("rack-1"));
        assert_eq!(kafka["Producer"]["compression.type"].as_str(), Some("lz4"));
        assert_eq!(
            kafka["Consumer"]["ssl.keystore.password"].as_str(),
            Some("***")
        );
        let everything = format!("{toml_text}\n{cfg:?}");
        for secret in ["s3cr3t-in-file", "007-from-env"] {
            assert!(!everything.contains(secret), "{secret} in:\n{everything}");
        }
    }

    /// librdkafka must be built with zstd: without it, setting
    /// `compression.type = zstd` fails.
    #[test]
    fn a_producer_with_the_producer_table_and_zstd_is_created() {
        let cfg = load(
            "[KafkaConfiguration]\nServerUrl = \"127.0.0.1:9\"\n\
             [KafkaConfiguration.Producer]\ncompression.type = \"zstd\"\nlinger.ms = 7\n\
             [KafkaConfiguration.Client]\nsocket.keepalive.enable = true\n\
             [KafkaConfiguration.Consumer]\nfetch.min.bytes = 3\n",
            "toml",
            &[],
        )
        .expect("valid");
        let brokers = crate::brokers::Brokers::configured(&cfg.kafka).expect("brokers");
        let _producer = brokers
            .producer("orderflow-test", cfg.kafka.message_timeout)
            .expect("zstd producer");
        let client = brokers.client_config("orderflow-test");
        assert_eq!(client.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9"));
        assert_eq!(client.get("fetch.min.bytes"), None);
        let consumer = brokers.consumer_config("orderflow-test");
        assert_eq!(consumer.get("fetch.min.bytes"), Some("3"));
        assert_eq!(consumer.get("socket.keepalive.enable"), Some("true"));
    }

    #[test]
    fn the_embedded_cluster_gets_the_tables_too() {
        let cfg = load(
            "[KafkaConfiguration.Consumer]\nfetch.min.bytes = 3\n",
            "toml",
            &[],
        )
        .expect("valid");
        let (brokers, embedded) =
            crate::brokers::Brokers::resolve(&cfg.kafka, &[]).expect("embedded");
        assert!(embedded.is_some());
        assert_eq!(
            brokers
                .consumer_config("orderflow-test")
                .get("fetch.min.bytes"),
            Some("3")
        );
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
