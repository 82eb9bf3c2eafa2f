//! Kafka plumbing shared by every role: client configuration, the embedded
//! development broker, topic creation and the relay's producer.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{
    Config, KafkaProperties, KafkaSecurity, KafkaServers, KafkaSettings, PropertyValue,
};

/// A topic this deployment needs, created if missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    /// Log compaction: only the latest value per key is kept.
    pub compacted: bool,
}

/// Which topics a deployment uses, all sized like the orders topic. Each
/// role creates the ones it uses before it uses them, as KafkaFlow's
/// `CreateTopicIfNotExists` does, so pods may start in any order on a
/// cluster that does not auto-create topics.
pub struct Topics {
    /// Where the Kafka relay publishes: orders, and fulfilment when it goes
    /// to Kafka. `serve-api` creates them at start.
    pub published: Vec<TopicSpec>,
    /// What the worker role reads and writes besides: the orders topic it
    /// consumes, the dead-letter topic and the compacted control topic.
    /// `run-worker` creates them before it joins the group.
    pub consumed: Vec<TopicSpec>,
}

impl Topics {
    pub fn of(config: &Config) -> Self {
        let orders = &config.kafka.orders;
        let spec = |name: &str| TopicSpec {
            name: name.to_string(),
            partitions: orders.partitions,
            replication: orders.replication_factor,
            compacted: false,
        };
        let mut published = vec![spec(&orders.name)];
        if let Some(fulfilment) = config.fulfilment.kafka_topic() {
            published.push(spec(fulfilment));
        }
        let consumed = vec![
            spec(&orders.name),
            spec(&config.worker.dead_letter_topic),
            // One partition: the pause switch is one key, read in order.
            TopicSpec {
                name: config.admin.control_topic.clone(),
                partitions: 1,
                replication: orders.replication_factor,
                compacted: true,
            },
            // One partition, one key per worker instance: the latest state
            // of each, read whole by the admin API.
            TopicSpec {
                name: config.admin.telemetry_topic.clone(),
                partitions: 1,
                replication: orders.replication_factor,
                compacted: true,
            },
        ];
        Self {
            published,
            consumed,
        }
    }

    /// Every topic, once (the embedded cluster creates them all at start).
    pub fn all(&self) -> Vec<TopicSpec> {
        let mut all: Vec<TopicSpec> = self.published.clone();
        for topic in &self.consumed {
            if !all.iter().any(|t| t.name == topic.name) {
                all.push(topic.clone());
            }
        }
        all
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("embedded Kafka: {0}")]
    Embedded(String),
    #[error("Kafka client: {0}")]
    Client(#[from] KafkaError),
    #[error("creating topic {topic}: {message}")]
    Topic { topic: String, message: String },
    /// The broker answered and said no: retrying cannot help until an
    /// operator changes the configuration, the cluster or its ACLs.
    #[error("Kafka refused topic {topic}: {reason}")]
    Refused { topic: String, reason: String },
    #[error(
        "Kafka refused the login: {0} (check KafkaConfiguration.Security: \
         Username, Password, SaslMechanism)"
    )]
    AuthenticationFailed(String),
    #[error(
        "the consumer group failed for good: {0} (Worker.GroupProtocol = consumer needs \
         Apache Kafka 4.0 or later with the consumer group protocol enabled, else set \
         Worker.GroupProtocol = classic; with Worker.InstanceId, each worker needs its own)"
    )]
    GroupFailed(String),
}

impl KafkaSetupError {
    /// Whether the broker refused for good (as opposed to being unreachable
    /// or busy).
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Refused { .. } | Self::AuthenticationFailed(_) => true,
            Self::Client(e) => e
                .rdkafka_error_code()
                .is_some_and(|code| refusal_hint(code).is_some()),
            _ => false,
        }
    }
}

/// The broker's answers that no retry changes, with what to do about them.
fn refusal_hint(code: RDKafkaErrorCode) -> Option<&'static str> {
    use RDKafkaErrorCode::*;
    Some(match code {
        InvalidReplicationFactor => {
            "the replication factor exceeds the brokers available: lower \
             KafkaConfiguration.Orders.ReplicationFactor or add brokers"
        }
        InvalidPartitions => "check KafkaConfiguration.Orders.Partitions",
        TopicAuthorizationFailed | ClusterAuthorizationFailed => {
            "the principal may not create or describe this topic: grant it \
             CREATE and DESCRIBE, or create the topic beforehand"
        }
        PolicyViolation | InvalidConfig | InvalidReplicaAssignment => {
            "the cluster's topic policy forbids it: create the topic beforehand"
        }
        InvalidTopic => "the name is not a valid topic name",
        _ => return None,
    })
}

/// librdkafka's in-process mock cluster, a real Kafka-protocol listener on
/// 127.0.0.1. `MockCluster` is not `Send`, so it lives on a thread of its own
/// that takes commands; dropping this handle stops it.
pub struct EmbeddedKafka {
    bootstrap: String,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: mpsc::Sender<Result<(), String>>,
    },
    BrokerDown(mpsc::Sender<Result<(), String>>),
    BrokerUp(mpsc::Sender<Result<(), String>>),
}

/// The mock cluster has one broker: replication is meaningless in memory.
const EMBEDDED_BROKER: i32 = 1;

impl EmbeddedKafka {
    pub fn start() -> Result<Self, KafkaSetupError> {
        let (commands, inbox) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(EMBEDDED_BROKER) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Ends when every sender is gone, i.e. the handle dropped.
                for command in inbox {
                    let (reply, result) = match command {
                        Command::CreateTopic {
                            name,
                            partitions,
                            reply,
                        } => (reply, cluster.create_topic(&name, partitions, 1)),
                        Command::BrokerDown(reply) => (reply, cluster.broker_down(EMBEDDED_BROKER)),
                        Command::BrokerUp(reply) => (reply, cluster.broker_up(EMBEDDED_BROKER)),
                    };
                    let _ = reply.send(result.map_err(|e| e.to_string()));
                }
            })
            .map_err(|e| KafkaSetupError::Embedded(e.to_string()))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| KafkaSetupError::Embedded("mock cluster thread died".into()))?
            .map_err(KafkaSetupError::Embedded)?;
        Ok(Self {
            bootstrap,
            commands,
            thread: Some(thread),
        })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    fn call(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<(), String>>) -> Command,
    ) -> Result<(), KafkaSetupError> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| KafkaSetupError::Embedded("mock cluster stopped".into()))?;
        answer
            .recv()
            .map_err(|_| KafkaSetupError::Embedded("mock cluster stopped".into()))?
            .map_err(KafkaSetupError::Embedded)
    }

    /// The mock cluster does not answer the admin CreateTopics request, so
    /// topics are created through its own API.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaSetupError> {
        self.call(|reply| Command::CreateTopic {
            name: name.to_string(),
            partitions,
            reply,
        })
    }

    /// Disconnects the broker and refuses new connections: an outage.
    pub fn broker_down(&self) -> Result<(), KafkaSetupError> {
        self.call(Command::BrokerDown)
    }

    pub fn broker_up(&self) -> Result<(), KafkaSetupError> {
        self.call(Command::BrokerUp)
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop, which drops the cluster.
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.commands, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where the clients of this process connect, and how: the configured
/// brokers with the configured security, or the embedded cluster started
/// for this process (plaintext on loopback).
#[derive(Debug, Clone)]
pub struct Brokers {
    servers: String,
    security: KafkaSecurity,
    /// `KafkaConfiguration.Client`, `.Producer` and `.Consumer`; applied on
    /// the embedded cluster too, so development runs what production does.
    properties: KafkaProperties,
}

impl Brokers {
    /// Starts the embedded cluster when the configuration asks for it; the
    /// returned handle must live as long as the clients.
    pub fn resolve(
        settings: &KafkaSettings,
        topics: &[TopicSpec],
    ) -> Result<(Self, Option<EmbeddedKafka>), KafkaSetupError> {
        match &settings.servers {
            KafkaServers::Brokers(_) => Ok((Self::configured(settings)?, None)),
            KafkaServers::Embedded => {
                let embedded = EmbeddedKafka::start()?;
                for topic in topics {
                    embedded.create_topic(&topic.name, topic.partitions)?;
                }
                tracing::warn!(
                    bootstrap = embedded.bootstrap_servers(),
                    "embedded Kafka (librdkafka mock cluster) started: development only, in memory, \
                     everything on it is lost at exit"
                );
                Ok((
                    Self {
                        servers: embedded.bootstrap_servers().to_string(),
                        security: KafkaSecurity::default(),
                        properties: settings.properties.clone(),
                    },
                    Some(embedded),
                ))
            }
        }
    }

    /// The configured brokers, for tools that do not host the embedded one
    /// (`orderflow dlq`).
    pub fn configured(settings: &KafkaSettings) -> Result<Self, KafkaSetupError> {
        match &settings.servers {
            KafkaServers::Brokers(list) => Ok(Self {
                servers: list.join(","),
                security: settings.security.clone(),
                properties: settings.properties.clone(),
            }),
            KafkaServers::Embedded => Err(KafkaSetupError::Embedded(
                "the embedded broker lives inside the running process; point \
                 KafkaConfiguration.ServerUrl at a broker"
                    .into(),
            )),
        }
    }

    pub fn servers(&self) -> &str {
        &self.servers
    }

    /// The base of every client's configuration: one place sets the
    /// brokers and the security, so no producer, consumer or admin client
    /// can connect without it. The result holds secrets: never log it
    /// (its Debug prints every property).
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        // First, so that what orderflow sets below always wins.
        self.properties.client.apply_to(&mut config);
        config
            .set("bootstrap.servers", &self.servers)
            .set("client.id", client_id);
        for (key, value) in self.security.properties() {
            match value {
                PropertyValue::Plain(v) => config.set(key, v),
                PropertyValue::Secret(v) => config.set(key, v.expose()),
            };
        }
        config
    }

    /// The base of every consumer: [`Self::client_config`] with
    /// `KafkaConfiguration.Consumer`. Callers set the consumer properties
    /// orderflow owns (group, commits) on top.
    pub fn consumer_config(&self, client_id: &str) -> ClientConfig {
        let mut config = self.client_config(client_id);
        self.properties.consumer.apply_to(&mut config);
        config
    }

    /// A consumer that reads the partitions it is assigned and never
    /// commits: for reading a topic whole (control, telemetry, dead
    /// letters). Its group (`{name}-reader`) is never joined.
    pub fn reader(&self, name: &str) -> Result<rdkafka::consumer::BaseConsumer, KafkaSetupError> {
        Ok(self
            .consumer_config(name)
            .set("group.id", format!("{name}-reader"))
            .set("enable.auto.commit", "false")
            .create()?)
    }

    /// The relay's producer: idempotent with acks from all in-sync replicas,
    /// so retries inside librdkafka neither duplicate nor reorder messages of
    /// a partition.
    pub fn producer(
        &self,
        client_id: &str,
        message_timeout: Duration,
    ) -> Result<FutureProducer, KafkaSetupError> {
        let mut config = self.client_config(client_id);
        self.properties.producer.apply_to(&mut config);
        // A default, not a guarantee: `linger.ms` (or its alias) in the
        // Client or Producer table replaces it.
        if ["linger.ms", "queue.buffering.max.ms"]
            .iter()
            .all(|k| config.get(k).is_none())
        {
            config.set("linger.ms", "2");
        }
        Ok(config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                message_timeout.as_millis().to_string(),
            )
            .create()?)
    }

    /// Creates each of `topics` the cluster does not have; "already
    /// exists" is success, so any number of roles may race here.
    pub async fn ensure_topics(
        &self,
        topics: &[TopicSpec],
        timeout: Duration,
    ) -> Result<(), KafkaSetupError> {
        // Metadata first: it avoids CreateTopics where it is not needed (the
        // mock cluster never answers that request). A producer asks, since
        // its poll serves the error callback where a refused login shows:
        // the request itself fails only as a transport failure.
        let probe: BaseProducer<LoginWatch> = self
            .client_config("orderflow-admin")
            .create_with_context(LoginWatch::default())?;
        let existing = tokio::task::spawn_blocking(move || {
            let listed = probe.client().fetch_metadata(None, timeout).map(|m| {
                m.topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .map(|t| t.name().to_string())
                    .collect::<Vec<_>>()
            });
            if listed.is_err() {
                probe.poll(Duration::from_millis(100));
            }
            (listed, probe.context().refusal())
        })
        .await
        .map_err(|e| KafkaSetupError::Embedded(e.to_string()))?;
        let existing = match existing {
            (Err(_), Some(reason)) => return Err(KafkaSetupError::AuthenticationFailed(reason)),
            (listed, _) => listed?,
        };
        let missing: Vec<&TopicSpec> = topics
            .iter()
            .filter(|t| !existing.contains(&t.name))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let new_topics: Vec<NewTopic> = missing
            .iter()
            .map(|spec| {
                let topic = NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication),
                );
                if spec.compacted {
                    topic.set("cleanup.policy", "compact")
                } else {
                    topic
                }
            })
            .collect();
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            self.client_config("orderflow-admin").create()?;
        let options = AdminOptions::new().operation_timeout(Some(timeout));
        let results = admin.create_topics(&new_topics, &options).await?;
        for result in results {
            match result {
                Ok(topic) => {
                    if let Some(spec) = missing.iter().find(|s| s.name == topic) {
                        tracing::info!(
                            topic,
                            partitions = spec.partitions,
                            replication = spec.replication,
                            "topic created"
                        );
                    }
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(match refusal_hint(code) {
                        Some(hint) => KafkaSetupError::Refused {
                            topic,
                            reason: format!("{code} ({hint})"),
                        },
                        None => KafkaSetupError::Topic {
                            topic,
                            message: code.to_string(),
                        },
                    })
                }
            }
        }
        Ok(())
    }

    /// Creates `topics` if missing before a role uses them, retrying with
    /// backoff while the cluster is unreachable or busy, until `shutdown`.
    /// A refusal ends it: the caller stops the role, since nothing it does
    /// can work until an operator acts.
    pub async fn ensure_topics_until_ready(
        &self,
        topics: &[TopicSpec],
        timeout: Duration,
        shutdown: &mut crate::shutdown::Shutdown,
    ) -> Result<(), KafkaSetupError> {
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let attempt = tokio::select! {
                result = self.ensure_topics(topics, timeout) => result,
                _ = shutdown.wait() => return Ok(()),
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) if e.is_refusal() => return Err(e),
                Err(e) => {
                    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
                    tracing::warn!(error = %e, topics = ?names, "topics not ready; retrying");
                    if !backoff.wait(shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// A client context that remembers a refused login (wrong password,
/// unknown user, mechanism the broker does not offer), and logs the rest as
/// the default context does.
#[derive(Default)]
pub struct LoginWatch {
    refused: std::sync::Mutex<Option<String>>,
}

impl LoginWatch {
    pub fn refusal(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl rdkafka::ClientContext for LoginWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication) {
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
        }
        tracing::error!("librdkafka: {error}: {reason}");
    }
}

impl rdkafka::producer::ProducerContext for LoginWatch {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// Whether the cluster answers a metadata request for `topic`: the Kafka half
/// of `/readyz`.
pub async fn topic_reachable(producer: &FutureProducer, topic: &str) -> bool {
    let producer = producer.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(2))
            .map(|m| m.topics().iter().any(|t| t.error().is_none()))
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}
