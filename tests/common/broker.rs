//! The broker a test's pipeline runs against: librdkafka's mock cluster
//! hosted by the test, the 3-node Apache Kafka cluster the test process
//! shares (or one of the test's own), or nothing at all.

use std::sync::Arc;

use orderflow::brokers::EmbeddedKafka;

use super::kafka_cluster::{self, KafkaCluster};
use super::{
    CONTROL_TOPIC, DLQ_TOPIC, FULFILMENT_TOPIC, PARTITIONS, TELEMETRY_TOPIC, TOPIC, TOPICS,
};

/// The names one test's pipeline uses on its broker.
#[derive(Debug, Clone)]
pub struct Names {
    pub orders: String,
    pub fulfilment: String,
    pub dead_letters: String,
    pub control: String,
    pub telemetry: String,
    pub group: String,
}

impl Names {
    /// The defaults, on a broker of the test's own.
    fn standard() -> Self {
        Self {
            orders: TOPIC.into(),
            fulfilment: FULFILMENT_TOPIC.into(),
            dead_letters: DLQ_TOPIC.into(),
            control: CONTROL_TOPIC.into(),
            telemetry: TELEMETRY_TOPIC.into(),
            group: "order-processing".into(),
        }
    }

    /// Names no other test on a shared cluster uses.
    fn unique() -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
        Self {
            orders: format!("orders-{id}"),
            fulfilment: format!("order-fulfilments-{id}"),
            dead_letters: format!("orders-{id}.dlq"),
            control: format!("orderflow.control-{id}"),
            telemetry: format!("orderflow.telemetry-{id}"),
            group: format!("order-processing-{id}"),
        }
    }
}

pub enum BrokerKind {
    /// Nothing listens: for tests that never reach Kafka.
    Unreachable,
    /// librdkafka's mock cluster, hosted by this test.
    Mock(EmbeddedKafka),
    /// Apache Kafka: the process's shared cluster or one of the test's own.
    Apache(Arc<KafkaCluster>),
}

/// The broker a test runs its pipeline against, and the names it uses there.
pub struct TestBroker {
    pub kind: BrokerKind,
    pub names: Names,
    bootstrap: String,
}

impl TestBroker {
    /// A mock cluster with the topics orderflow uses created (it does not
    /// answer CreateTopics).
    pub fn mock() -> Self {
        start_broker()
    }

    /// The 3-node Apache Kafka cluster this test process shares, with names
    /// of this test's own; orderflow creates its topics there itself.
    pub fn apache() -> Self {
        Self::on(tokio_aware(KafkaCluster::shared))
    }

    /// An address where nothing listens (the discard port).
    pub fn unreachable() -> Self {
        Self {
            bootstrap: "127.0.0.1:9".into(),
            kind: BrokerKind::Unreachable,
            names: Names::standard(),
        }
    }

    /// `cluster`, with names of this broker's own (the benchmark reuses a
    /// cluster across its phases this way).
    pub fn on(cluster: Arc<KafkaCluster>) -> Self {
        Self {
            bootstrap: cluster.bootstrap_servers(),
            kind: BrokerKind::Apache(cluster),
            names: Names::unique(),
        }
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    pub fn replication(&self) -> i32 {
        match &self.kind {
            BrokerKind::Apache(c) => c.replication(),
            _ => 1,
        }
    }

    pub fn mock_cluster(&self) -> &EmbeddedKafka {
        match &self.kind {
            BrokerKind::Mock(m) => m,
            _ => panic!("this test needs the mock cluster"),
        }
    }

    pub fn cluster(&self) -> &KafkaCluster {
        match &self.kind {
            BrokerKind::Apache(c) => c,
            _ => panic!("this test needs Apache Kafka"),
        }
    }
}

/// Faults and clusters of a test's own: the proof suite's.
#[allow(
    dead_code,
    reason = "the proof suite uses these; the integration tests do not take brokers away"
)]
impl TestBroker {
    /// A test's own Apache Kafka cluster (for tests that stop or cut nodes).
    pub fn apache_own(options: kafka_cluster::ClusterOptions) -> Self {
        let cluster = tokio_aware(|| KafkaCluster::start(options));
        Self::on(Arc::new(cluster))
    }

    /// Every broker unreachable (the mock cluster's broker down, or every
    /// Apache Kafka node killed) until [`Self::outage_end`].
    pub fn outage_start(&self) {
        match &self.kind {
            BrokerKind::Mock(m) => m.broker_down().expect("broker down"),
            BrokerKind::Apache(c) => tokio_aware(|| {
                for id in c.node_ids() {
                    c.kill(id);
                }
            }),
            BrokerKind::Unreachable => {}
        }
    }

    pub fn outage_end(&self) {
        match &self.kind {
            BrokerKind::Mock(m) => m.broker_up().expect("broker up"),
            BrokerKind::Apache(c) => tokio_aware(|| c.restart_nodes(&c.node_ids())),
            BrokerKind::Unreachable => {}
        }
    }

    pub fn is_apache(&self) -> bool {
        matches!(self.kind, BrokerKind::Apache(_))
    }
}

/// Runs blocking work (a JVM's start, a child's exit) off the async worker
/// when called from a multi-threaded tokio test.
pub fn tokio_aware<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A mock cluster hosted by the test, with the topics orderflow uses.
pub fn start_broker() -> TestBroker {
    start_broker_with(&TOPICS)
}

/// A mock cluster hosted by the test with only `topics` (the control topic
/// with one partition, the others with `PARTITIONS`).
pub fn start_broker_with(topics: &[&str]) -> TestBroker {
    start_broker_partitioned(topics, PARTITIONS)
}

/// As `start_broker_with`, with `partitions` per topic. The mock cluster
/// keeps at most 5 MiB per partition (older messages are deleted), so a
/// large backlog needs enough partitions to stay whole.
pub fn start_broker_partitioned(topics: &[&str], partitions: i32) -> TestBroker {
    let broker = EmbeddedKafka::start().expect("mock cluster");
    for topic in topics {
        let partitions = if *topic == CONTROL_TOPIC || *topic == TELEMETRY_TOPIC {
            1
        } else {
            partitions
        };
        broker
            .create_topic(topic, partitions)
            .expect("create topic");
    }
    TestBroker {
        bootstrap: broker.bootstrap_servers().to_string(),
        kind: BrokerKind::Mock(broker),
        names: Names::standard(),
    }
}
