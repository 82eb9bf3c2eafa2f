// The test harness's module root for the integration binary
// (`tests/integration/main.rs` includes this file as its `common` module,
// so the compiler finds any part of the harness no test uses). The proof
// suite and the benchmark include it through `mod.rs`, which adds what only
// they use. See `mod.rs` for what is here.

pub mod app;
pub mod broker;
pub mod children;
pub mod cluster;
pub mod db;
pub mod kafka_cluster;
pub mod metrics;
pub mod orders;
pub mod process;
pub mod proxy;
pub mod tls;
pub mod topics;
pub mod wait;
pub mod webhook;

use std::path::PathBuf;

use orderflow::config::{Config, ConfigSource};

pub use app::{spawn_app, TestApp};
pub use broker::{start_broker, start_broker_with, tokio_aware, TestBroker};
pub use cluster::{Cluster, Role};
pub use db::{pg_admin_url, Backend, TestDb};
pub use metrics::{metric_total, Metrics};
pub use orders::{
    create_order_at, header, list_orders, order_body, run_order_to_fulfilment, timeline,
    wait_for_status, LIFECYCLE,
};
pub use process::{binary, Process};
pub use topics::{kcat_produce, read_topic_async, read_topic_raw_async, Received};
pub use wait::eventually;
pub use webhook::Webhook;

pub const TOPIC: &str = "orders";
pub const FULFILMENT_TOPIC: &str = "order-fulfilments";
pub const DLQ_TOPIC: &str = "orders.dlq";
pub const CONTROL_TOPIC: &str = "orderflow.control";
pub const TELEMETRY_TOPIC: &str = "orderflow.telemetry";
/// Every topic a pipeline uses: what a mock cluster (which creates none on
/// request) must have before the roles start.
pub const TOPICS: [&str; 5] = [
    TOPIC,
    FULFILMENT_TOPIC,
    DLQ_TOPIC,
    CONTROL_TOPIC,
    TELEMETRY_TOPIC,
];
pub const PARTITIONS: i32 = 4;

/// Runs an async test body once per backend: `both_backends!(name, body)`
/// where `body` is `async fn(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::common::Backend::Postgres).await
            }
        }
    };
}

/// The environment that points orderflow at the test's broker, its topics
/// and group, and its database.
pub fn env_for(db: &TestDb, broker: &TestBroker) -> Vec<(String, String)> {
    let names = &broker.names;
    [
        ("Database__Url", db.url.as_str()),
        ("KafkaConfiguration__ServerUrl", broker.bootstrap_servers()),
        ("KafkaConfiguration__Orders__TopicName", &names.orders),
        ("KafkaConfiguration__Orders__ConsumerGroup", &names.group),
        ("Fulfilment__Topic", &names.fulfilment),
        ("Worker__DeadLetterTopic", &names.dead_letters),
        ("Admin__ControlTopic", &names.control),
        ("Admin__TelemetryTopic", &names.telemetry),
        (
            "KafkaConfiguration__Orders__Partitions",
            &PARTITIONS.to_string(),
        ),
        (
            "KafkaConfiguration__Orders__ReplicationFactor",
            &broker.replication().to_string(),
        ),
        ("KafkaConfiguration__MessageTimeoutMs", "3000"),
        ("Api__Listen", "127.0.0.1:0"),
        ("Worker__AdminListen", "127.0.0.1:0"),
        ("Worker__SessionTimeoutMs", "6000"),
        ("Worker__BalanceIntervalMs", "1000"),
        ("Worker__Retry__InitialBackoffMs", "50"),
        ("Outbox__PollIntervalMs", "200"),
        ("Outbox__MaxBackoffMs", "1000"),
    ]
    .into_iter()
    // librdkafka's mock cluster handles cooperative rebalances poorly
    // (partitions unowned for ~20 s, an abort once): tests on it rebalance
    // eagerly, as the embedded broker does by default.
    .chain((!broker.is_apache()).then_some(("Worker__Assignor", "range")))
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub fn config_from_env(env: Vec<(String, String)>) -> Config {
    let source = ConfigSource {
        path: PathBuf::from("/nonexistent/orderflow-test.toml"),
        required: false,
    };
    Config::load_with_env(&source, env).expect("test configuration is valid")
}
