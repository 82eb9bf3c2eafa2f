//! Raw values → typed settings, one function per section. Every error names
//! the key and the file or environment variable its value came from, which
//! is why the checks go through a [`Check`] holding the merged figment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::{Figment, Metadata};

use super::raw::{
    RawAdmin, RawApi, RawConfig, RawDatabase, RawEvents, RawFulfilment, RawKafka, RawNotifier,
    RawOutbox, RawReconcile, RawRetry, RawTopic, RawWorker,
};
use super::settings::{
    AdminSettings, ApiSettings, Assignor, DatabaseSettings, DatabaseUrl, Distribution, EventFormat,
    FulfilmentSettings, FulfilmentSink, GroupProtocol, KafkaServers, KafkaSettings,
    NotificationRetrySettings, NotifierSettings, OutboxSettings, ReconcileSettings, RetrySettings,
    TopicSettings, UnknownTypes, WorkerSettings,
};
use super::{keys, properties, security, Config, ConfigError, ServiceBusConnection};

/// Builds errors that name a key and its source, and the small checks
/// every section uses.
pub(super) struct Check<'a> {
    figment: &'a Figment,
}

impl<'a> Check<'a> {
    pub(super) fn new(figment: &'a Figment) -> Self {
        Self { figment }
    }

    pub(super) fn figment(&self) -> &'a Figment {
        self.figment
    }

    /// The error for `dotted` (`Api.Listen`, any spelling), naming where
    /// its value came from.
    pub(super) fn error(&self, dotted: &str, message: impl Into<String>) -> ConfigError {
        let path = keys::canonical_path(&dotted.split('.').collect::<Vec<_>>());
        let metadata = self.figment.find_metadata(&path.join("."));
        self.error_at(&path, metadata, message)
    }

    /// The error for a key whose source the caller looked up itself.
    pub(super) fn error_at(
        &self,
        path: &[String],
        metadata: Option<&Metadata>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            key: keys::canonical_key(path),
            message: message.into(),
            source_name: keys::source_name(metadata, path),
        }
    }

    pub(super) fn non_empty(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(self.error(key, "is empty"));
        }
        Ok(trimmed.to_string())
    }

    pub(super) fn in_range(
        &self,
        key: &str,
        value: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        if value < min || value > max {
            return Err(self.error(key, format!("is {value}, must be {min}..={max}")));
        }
        Ok(value)
    }

    /// [`Check::in_range`] for an unsigned raw value, as a `usize`.
    fn count(&self, key: &str, value: u64, min: i64, max: i64) -> Result<usize, ConfigError> {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        Ok(self.in_range(key, value, min, max)? as usize)
    }

    pub(super) fn socket_addr(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.trim().parse().map_err(|_| {
            self.error(
                key,
                format!("{value:?} is not a socket address such as 0.0.0.0:8080"),
            )
        })
    }

    pub(super) fn millis(&self, key: &str, value: u64, min: u64) -> Result<Duration, ConfigError> {
        if value < min {
            return Err(self.error(key, format!("is {value}, must be at least {min}")));
        }
        Ok(Duration::from_millis(value))
    }

    /// Empty means not set; anything else must name a file that is there.
    pub(super) fn optional_file(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Option<PathBuf>, ConfigError> {
        match value.trim() {
            "" => Ok(None),
            path if PathBuf::from(path).is_file() => Ok(Some(PathBuf::from(path))),
            path => Err(self.error(key, format!("{path:?} is not a readable file"))),
        }
    }
}

/// Sections are checked in a fixed order, so a configuration with several
/// mistakes reports the same one on every run.
pub(super) fn config(check: &Check, raw: RawConfig) -> Result<Config, ConfigError> {
    let kafka = kafka(check, &raw.kafka_configuration)?;
    let database = database(check, &raw.database)?;
    let api = api(check, &raw.api)?;
    let embedded = kafka.servers == KafkaServers::Embedded;
    let worker = worker(check, &raw.worker, &kafka.orders.name, embedded)?;
    let fulfilment = fulfilment(check, &raw.fulfilment)?;
    let outbox = outbox(check, &raw.outbox)?;
    let admin = admin(check, &raw.admin)?;
    let reconcile = reconcile(check, &raw.reconcile, embedded)?;
    let events = events(check, &raw.events)?;
    Ok(Config {
        kafka,
        database,
        api,
        worker,
        outbox,
        fulfilment,
        admin,
        reconcile,
        events,
        raw,
    })
}

fn kafka(check: &Check, raw: &RawKafka) -> Result<KafkaSettings, ConfigError> {
    let servers = KafkaServers::parse(&raw.server_url).ok_or_else(|| {
        check.error(
            "KafkaConfiguration.ServerUrl",
            "names no broker (expected \"embedded\" or host:port[,host:port...])",
        )
    })?;
    Ok(KafkaSettings {
        servers,
        orders: topic(check, &raw.orders)?,
        message_timeout: check.millis(
            "KafkaConfiguration.MessageTimeoutMs",
            raw.message_timeout_ms,
            100,
        )?,
        security: security::kafka_security(check, &raw.security)?,
        properties: properties::kafka_properties(check, &raw.client, &raw.producer, &raw.consumer)?,
    })
}

fn topic(check: &Check, raw: &RawTopic) -> Result<TopicSettings, ConfigError> {
    let key = |k: &str| format!("KafkaConfiguration.Orders.{k}");
    Ok(TopicSettings {
        name: check.non_empty(&key("TopicName"), &raw.topic_name)?,
        consumer_group: check.non_empty(&key("ConsumerGroup"), &raw.consumer_group)?,
        consumer_name: check.non_empty(&key("ConsumerName"), &raw.consumer_name)?,
        partitions: check.in_range(&key("Partitions"), raw.partitions, 1, 10_000)? as i32,
        replication_factor: check.in_range(
            &key("ReplicationFactor"),
            raw.replication_factor,
            1,
            32,
        )? as i32,
    })
}

fn database(check: &Check, raw: &RawDatabase) -> Result<DatabaseSettings, ConfigError> {
    Ok(DatabaseSettings {
        url: DatabaseUrl::parse(&raw.url).map_err(|m| check.error("Database.Url", m))?,
        max_connections: check.in_range(
            "Database.MaxConnections",
            raw.max_connections.into(),
            1,
            1_000,
        )? as u32,
        ssl_mode: ssl_mode(check, raw)?,
        ssl_root_cert: check.optional_file("Database.SslRootCert", &raw.ssl_root_cert)?,
    })
}

fn ssl_mode(
    check: &Check,
    raw: &RawDatabase,
) -> Result<Option<sqlx::postgres::PgSslMode>, ConfigError> {
    let mode = raw.ssl_mode.trim();
    if mode.is_empty() {
        return Ok(None);
    }
    if raw.url.trim().starts_with("sqlite:") {
        return Err(check.error("Database.SslMode", "applies to PostgreSQL only"));
    }
    mode.parse().map(Some).map_err(|_| {
        check.error(
            "Database.SslMode",
            format!(
                "{mode:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ),
        )
    })
}

fn api(check: &Check, a: &RawApi) -> Result<ApiSettings, ConfigError> {
    Ok(ApiSettings {
        listen: check.socket_addr("Api.Listen", &a.listen)?,
        max_body_bytes: check.count("Api.MaxBodyBytes", a.max_body_bytes, 1_024, 64 << 20)?,
        max_items_per_order: check.count(
            "Api.MaxItemsPerOrder",
            a.max_items_per_order,
            1,
            10_000,
        )?,
        request_timeout: check.millis("Api.RequestTimeoutMs", a.request_timeout_ms, 100)?,
        max_concurrent_requests: check.count(
            "Api.MaxConcurrentRequests",
            a.max_concurrent_requests,
            1,
            1_000_000,
        )?,
        max_connections: check.count("Api.MaxConnections", a.max_connections, 1, 1_000_000)?,
        rate_limit: security::rate_limit(check, &a.rate_limit)?,
        auth: security::auth(check, &a.auth)?,
    })
}

/// `orders_topic` names the default dead-letter topic.
fn worker(
    check: &Check,
    w: &RawWorker,
    orders_topic: &str,
    embedded: bool,
) -> Result<WorkerSettings, ConfigError> {
    let min_workers = check.in_range("Worker.MinWorkers", w.min_workers, 1, 256)? as usize;
    let max_workers = check.in_range("Worker.MaxWorkers", w.max_workers, 1, 256)? as usize;
    if max_workers < min_workers {
        return Err(check.error(
            "Worker.MaxWorkers",
            format!("is {max_workers}, below Worker.MinWorkers ({min_workers})"),
        ));
    }
    let dead_letter_topic = match w.dead_letter_topic.trim() {
        "" => format!("{orders_topic}.dlq"),
        name => name.to_string(),
    };
    Ok(WorkerSettings {
        admin_listen: check.socket_addr("Worker.AdminListen", &w.admin_listen)?,
        buffer_size: check.in_range("Worker.BufferSize", w.buffer_size, 1, 100_000)? as usize,
        min_workers,
        max_workers,
        lag_threshold: check.in_range("Worker.LagThreshold", w.lag_threshold, 1, i64::MAX)?,
        distribution: distribution(check, &w.distribution_strategy)?,
        commit_interval: check.millis("Worker.CommitIntervalMs", w.commit_interval_ms, 10)?,
        balance_interval: check.millis("Worker.BalanceIntervalMs", w.balance_interval_ms, 100)?,
        session_timeout: check.millis("Worker.SessionTimeoutMs", w.session_timeout_ms, 1_000)?,
        group_protocol: group_protocol(check, &w.group_protocol, &w.assignor, embedded)?,
        instance_id: Some(w.instance_id.trim())
            .filter(|id| !id.is_empty())
            .map(String::from),
        fetch_wait_max: check.millis("Worker.FetchWaitMaxMs", w.fetch_wait_max_ms, 1)?,
        dead_letter_topic,
        unknown_types: unknown_types(check, &w.unknown_types)?,
        retry: retry(check, &w.retry)?,
        notifier: notifier(check, &w.notifier)?,
        notification_retry: NotificationRetrySettings {
            max_attempts: check.in_range(
                "Worker.Notifier.MaxAttempts",
                w.notifier.max_attempts,
                1,
                1_000,
            )? as u32,
            first_retry: check.millis(
                "Worker.Notifier.FirstRetryMs",
                w.notifier.first_retry_ms,
                10,
            )?,
        },
    })
}

fn group_protocol(
    check: &Check,
    protocol: &str,
    assignor: &str,
    embedded: bool,
) -> Result<GroupProtocol, ConfigError> {
    match protocol.trim().to_ascii_lowercase().as_str() {
        "consumer" => Ok(GroupProtocol::Consumer),
        "classic" => Ok(GroupProtocol::Classic(
            match assignor.trim().to_ascii_lowercase().as_str() {
                "" if embedded => Assignor::Range,
                "" => Assignor::CooperativeSticky,
                "cooperative-sticky" => Assignor::CooperativeSticky,
                "range" => Assignor::Range,
                "roundrobin" => Assignor::RoundRobin,
                other => {
                    return Err(check.error(
                        "Worker.Assignor",
                        format!(
                        "{other:?} is not one of \"cooperative-sticky\", \"range\", \"roundrobin\""
                    ),
                    ))
                }
            },
        )),
        other => Err(check.error(
            "Worker.GroupProtocol",
            format!(
                "{other:?} is neither \"classic\" nor \"consumer\" (KIP-848, Apache Kafka 4.0+)"
            ),
        )),
    }
}

fn distribution(check: &Check, raw: &str) -> Result<Distribution, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "by-key" | "bykey" => Ok(Distribution::ByKey),
        "free" => Ok(Distribution::Free),
        other => Err(check.error(
            "Worker.DistributionStrategy",
            format!("{other:?} is neither \"by-key\" nor \"free\""),
        )),
    }
}

fn unknown_types(check: &Check, raw: &str) -> Result<UnknownTypes, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "skip" => Ok(UnknownTypes::Skip),
        "dead-letter" | "deadletter" => Ok(UnknownTypes::DeadLetter),
        other => Err(check.error(
            "Worker.UnknownTypes",
            format!("{other:?} is neither \"skip\" nor \"dead-letter\""),
        )),
    }
}

fn retry(check: &Check, raw: &RawRetry) -> Result<RetrySettings, ConfigError> {
    let key = |k: &str| format!("Worker.Retry.{k}");
    Ok(RetrySettings {
        max_attempts: check.in_range(&key("MaxAttempts"), raw.max_attempts, 1, 100)? as u32,
        initial_backoff: check.millis(&key("InitialBackoffMs"), raw.initial_backoff_ms, 1)?,
        max_backoff: check.millis(&key("MaxBackoffMs"), raw.max_backoff_ms, 1)?,
    })
}

fn notifier(check: &Check, raw: &RawNotifier) -> Result<NotifierSettings, ConfigError> {
    match raw.kind.trim().to_ascii_lowercase().as_str() {
        "log" => Ok(NotifierSettings::Log),
        "webhook" => {
            let url = raw.url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(check.error(
                    "Worker.Notifier.Url",
                    "must be an http:// or https:// URL for the webhook notifier",
                ));
            }
            Ok(NotifierSettings::Webhook(url.to_string()))
        }
        other => Err(check.error(
            "Worker.Notifier.Kind",
            format!("{other:?} is neither \"log\" nor \"webhook\""),
        )),
    }
}

/// A connection string that is there must parse, whichever role reads it;
/// one that is not stops only the worker (`Config::ready_for`).
fn fulfilment(check: &Check, raw: &RawFulfilment) -> Result<FulfilmentSettings, ConfigError> {
    let mut unready = None;
    let sink = match raw.kind.trim().to_ascii_lowercase().as_str() {
        "kafka" => FulfilmentSink::Kafka {
            topic: check.non_empty("Fulfilment.Topic", &raw.topic)?,
        },
        "servicebus" => {
            let given = raw.connection_string.expose().trim();
            let connection = if given.is_empty() {
                unready = Some(check.error(
                    "Fulfilment.ConnectionString",
                    "is empty; Fulfilment.Kind \"servicebus\" needs one",
                ));
                None
            } else {
                Some(
                    ServiceBusConnection::parse(given)
                        .map_err(|m| check.error("Fulfilment.ConnectionString", m))?,
                )
            };
            FulfilmentSink::ServiceBus {
                connection,
                queue: check.non_empty("Fulfilment.Queue", &raw.queue)?,
            }
        }
        "none" => FulfilmentSink::None,
        other => {
            return Err(check.error(
                "Fulfilment.Kind",
                format!("{other:?} is not one of \"kafka\", \"servicebus\", \"none\""),
            ))
        }
    };
    Ok(FulfilmentSettings { sink, unready })
}

fn events(check: &Check, raw: &RawEvents) -> Result<EventFormat, ConfigError> {
    match raw.format.trim().to_ascii_lowercase().as_str() {
        "cloudevents" => Ok(EventFormat::CloudEvents),
        "kafkaflow" => {
            // A .NET type name: dotted identifiers; the assembly name may
            // not hold the separator of Message-Type's parts.
            let name = |key: &str, value: &str| {
                let value = check.non_empty(key, value)?;
                if value.split('.').all(|part| {
                    !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_')
                }) {
                    Ok(value)
                } else {
                    Err(check.error(
                        key,
                        format!("{value:?} is not a dotted .NET name such as Orders.Contracts"),
                    ))
                }
            };
            Ok(EventFormat::KafkaFlow {
                namespace: name("Events.KafkaFlow.Namespace", &raw.kafka_flow.namespace)?,
                assembly: name("Events.KafkaFlow.Assembly", &raw.kafka_flow.assembly)?,
            })
        }
        other => Err(check.error(
            "Events.Format",
            format!("{other:?} is neither \"cloudevents\" nor \"kafkaflow\""),
        )),
    }
}

/// Stuck orders are looked for sooner on the embedded broker: a restart
/// loses what it held.
fn reconcile(
    check: &Check,
    raw: &RawReconcile,
    embedded: bool,
) -> Result<ReconcileSettings, ConfigError> {
    let stuck_after = match (raw.stuck_after_seconds, embedded) {
        (0, true) => 30,
        (0, false) => 300,
        (seconds, _) => seconds,
    };
    Ok(ReconcileSettings {
        enabled: raw.enabled,
        stuck_after: Duration::from_secs(stuck_after),
        interval: check.millis("Reconcile.IntervalMs", raw.interval_ms, 100)?,
        batch_size: check.count("Reconcile.BatchSize", raw.batch_size, 1, 100_000)?,
        max_redrives: check.in_range("Reconcile.MaxRedrives", raw.max_redrives, 0, 1_000)? as u32,
    })
}

/// The most points the dashboard's history keeps: every refresh of the
/// page carries them all.
const MAX_HISTORY_POINTS: u64 = 10_000;

fn admin(check: &Check, raw: &RawAdmin) -> Result<AdminSettings, ConfigError> {
    let history_interval = check.millis("Admin.HistoryIntervalMs", raw.history_interval_ms, 100)?;
    let interval_ms = history_interval.as_millis() as u64;
    let window_ms = raw.history_seconds.saturating_mul(1000);
    if window_ms < 2 * interval_ms {
        return Err(check.error(
            "Admin.HistorySeconds",
            format!(
                "is {}, must cover at least two samples of Admin.HistoryIntervalMs ({interval_ms} ms)",
                raw.history_seconds
            ),
        ));
    }
    let points = window_ms.div_ceil(interval_ms);
    if points > MAX_HISTORY_POINTS {
        return Err(check.error(
            "Admin.HistorySeconds",
            format!(
                "is {}, {points} samples of {interval_ms} ms; at most {MAX_HISTORY_POINTS} are kept",
                raw.history_seconds
            ),
        ));
    }
    Ok(AdminSettings {
        enabled: raw.enabled,
        control_topic: check.non_empty("Admin.ControlTopic", &raw.control_topic)?,
        telemetry_topic: check.non_empty("Admin.TelemetryTopic", &raw.telemetry_topic)?,
        telemetry_interval: check.millis(
            "Admin.TelemetryIntervalMs",
            raw.telemetry_interval_ms,
            100,
        )?,
        history_interval,
        history_points: points as usize,
    })
}

fn outbox(check: &Check, raw: &RawOutbox) -> Result<OutboxSettings, ConfigError> {
    Ok(OutboxSettings {
        batch_size: check.count("Outbox.BatchSize", raw.batch_size, 1, 10_000)?,
        poll_interval: check.millis("Outbox.PollIntervalMs", raw.poll_interval_ms, 10)?,
        max_backoff: check.millis("Outbox.MaxBackoffMs", raw.max_backoff_ms, 10)?,
        retention: Duration::from_secs(raw.retention_seconds),
    })
}
