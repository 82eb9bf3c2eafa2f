//! Test helpers: real databases (a fresh SQLite file or PostgreSQL database
//! per test), brokers (librdkafka's mock cluster hosted by the test, or a
//! 3-node Apache Kafka cluster), the application started in-process on
//! port 0, and the real binary spawned as separate processes.
#![allow(dead_code)]

pub mod children;
pub mod kafka_cluster;
pub mod proxy;
pub mod tls;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_cluster::KafkaCluster;
use orderflow::app::{Application, Role};
use orderflow::brokers::EmbeddedKafka;
use orderflow::config::{Config, ConfigSource};
use orderflow::shutdown::{self, ShutdownTrigger};
use orderflow::store::SharedStore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

pub const TOPIC: &str = "orders";
pub const FULFILMENT_TOPIC: &str = "order-fulfilments";
pub const DLQ_TOPIC: &str = "orders.dlq";
pub const CONTROL_TOPIC: &str = "orderflow.control";
pub const PARTITIONS: i32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

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

/// A database of its own for one test. The SQLite file lives in a temporary
/// directory; the PostgreSQL database is created fresh on the test server.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database this test made.
    pg_name: Option<String>,
}

pub fn pg_admin_url() -> String {
    std::env::var("ORDERFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1/test".into())
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("orderflow.db").display());
                Self {
                    url,
                    _dir: Some(dir),
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                use sqlx::Connection;
                let admin = pg_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is not reachable at {admin} ({e}). Start it with \
                         `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                         or point ORDERFLOW_TEST_DATABASE_URL at a server where this user may \
                         CREATE DATABASE."
                    )
                });
                let name = format!("orderflow_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                Self {
                    url: format!("{base}/{name}"),
                    _dir: None,
                    pg_name: Some(name),
                }
            }
        }
    }
}

/// A test's PostgreSQL database goes with it (left behind, they piled up
/// by the dozen and kept autovacuum and the checkpointer busy in later
/// runs), unless the test failed: then it stays for a look.
impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.as_deref() else {
            return;
        };
        if std::thread::panicking() {
            return;
        }
        let _ = std::process::Command::new("psql")
            .arg(pg_admin_url())
            .args([
                "-qc",
                &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
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

/// The names one test's pipeline uses on its broker.
#[derive(Debug, Clone)]
pub struct Names {
    pub orders: String,
    pub fulfilment: String,
    pub dead_letters: String,
    pub control: String,
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

    /// A test's own Apache Kafka cluster (for tests that stop or cut nodes).
    pub fn apache_own(options: kafka_cluster::ClusterOptions) -> Self {
        let cluster = tokio_aware(|| KafkaCluster::start(options));
        Self::on(Arc::new(cluster))
    }

    /// An address where nothing listens (the discard port).
    pub fn unreachable() -> Self {
        Self {
            bootstrap: "127.0.0.1:9".into(),
            kind: BrokerKind::Unreachable,
            names: Names::standard(),
        }
    }

    fn on(cluster: Arc<KafkaCluster>) -> Self {
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
            BrokerKind::Apache(_) => 3,
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

/// Runs blocking start-up work off the async worker when called from a
/// multi-threaded tokio test.
fn tokio_aware<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A mock cluster hosted by the test, with the topics orderflow uses.
pub fn start_broker() -> TestBroker {
    start_broker_with(&[TOPIC, FULFILMENT_TOPIC, DLQ_TOPIC, CONTROL_TOPIC])
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
        let partitions = if *topic == CONTROL_TOPIC {
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

/// The API role running in this test process.
pub struct TestApp {
    pub base: String,
    pub store: SharedStore,
    pub http: reqwest::Client,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
}

impl TestApp {
    pub async fn spawn(db: &TestDb, broker: &TestBroker) -> Self {
        Self::spawn_with(db, broker, &[]).await
    }

    pub async fn spawn_with(db: &TestDb, broker: &TestBroker, extra: &[(&str, &str)]) -> Self {
        let mut env = env_for(db, broker);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = config_from_env(env);
        let app = Application::build(&config, Role::Api)
            .await
            .expect("application builds");
        let addr = app.http_addr().expect("API bound");
        let store = app.store().clone();
        let (trigger, shutdown) = shutdown::channel();
        let task = tokio::spawn(async move {
            app.run(shutdown).await.expect("application runs");
        });
        Self {
            base: format!("http://{addr}"),
            store,
            http: reqwest::Client::new(),
            trigger,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn create_order(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/api/orders"))
            .json(body)
            .send()
            .await
            .expect("POST /api/orders")
    }

    /// `GET path`, the response as it came.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `GET path`, the body as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path)
            .await
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    pub async fn stop(self) {
        self.trigger.trigger();
        self.task.await.expect("application task");
    }
}

pub fn order_body(customer: &str, product: &str, quantity: i64) -> Value {
    serde_json::json!({
        "customerName": customer,
        "customerEmail": format!("{}@example.com", customer.to_lowercase().replace(' ', ".")),
        "items": [{"productName": product, "quantity": quantity, "unitPrice": "12.50"}]
    })
}

/// One message as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: HashMap<String, String>,
    pub payload: Value,
}

/// Reads `topic` from the beginning until `expected` messages arrived (then
/// lingers a moment, so duplicates beyond `expected` are seen too) or
/// `within` elapsed; returns what it read, in (partition, offset) order.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    within: Duration,
) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition offset");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + within;
    let linger = Duration::from_millis(1500);
    let mut last_arrival = Instant::now();
    let mut out = Vec::new();
    while Instant::now() < deadline && (out.len() < expected || last_arrival.elapsed() < linger) {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        last_arrival = Instant::now();
        let Ok(message) = result else { continue };
        let mut headers = HashMap::new();
        if let Some(hs) = message.headers() {
            for h in hs.iter() {
                let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                headers.insert(h.key.to_string(), value.unwrap_or_default());
            }
        }
        out.push(Received {
            partition: message.partition(),
            offset: message.offset(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            headers,
            payload: serde_json::from_slice(message.payload().unwrap_or_default())
                .unwrap_or(Value::Null),
        });
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// The real `orderflow` binary as a child process with JSON logs on stderr,
/// captured line by line.
pub struct Process {
    pub child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    raw: Arc<Mutex<Vec<String>>>,
}

/// The binary cargo built, or `ORDERFLOW_BINARY` (the benchmark's A/B runs
/// against an earlier build).
pub fn binary() -> String {
    std::env::var("ORDERFLOW_BINARY")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_orderflow").into())
}

impl Process {
    pub fn spawn(args: &[&str], env: &[(String, String)], dir: &Path) -> Self {
        let mut command = Command::new(binary());
        command
            .args(["--log-format", "json"])
            .args(args)
            // The test's own RUST_LOG, if it sets one, wins.
            .env("RUST_LOG", "info")
            .envs(env.iter().cloned())
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Bound to the test process: a killed test binary leaves none behind.
        let mut child = children::spawn_bound_to_process(command).expect("spawn orderflow");
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (l, r) = (lines.clone(), raw.clone());
        // ORDERFLOW_TEST_LOG_DIR keeps every process's log as a file, for a
        // run that hangs or aborts before a test can print them.
        let mut file = std::env::var_os("ORDERFLOW_TEST_LOG_DIR").and_then(|dir| {
            let name = format!("{}-{}.log", args.join("-"), child.id());
            std::fs::create_dir_all(&dir).ok()?;
            std::fs::File::create(Path::new(&dir).join(name)).ok()
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    l.lock().expect("log lines").push(v);
                }
                r.lock().expect("raw lines").push(line);
            }
        });
        Self { child, lines, raw }
    }

    /// Waits for a log line whose `message` starts with `prefix`; returns it.
    pub fn wait_for_log(&mut self, prefix: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = self
                .lines
                .lock()
                .expect("log lines")
                .iter()
                .find(|v| v["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
            {
                return v.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "orderflow exited ({status}) before logging {prefix:?}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no log line {prefix:?} within {within:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The HTTP address (API, or the worker's admin port) the process
    /// logged after binding port 0.
    pub fn http_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_log("HTTP listening", Duration::from_secs(60));
        line["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("addr field")
    }

    pub fn log_text(&self) -> String {
        self.raw.lock().expect("raw lines").join("\n")
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "orderflow did not exit within {within:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of every sample of `name` on a /metrics page.
pub fn metric_total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A response header as text ("" when absent or not ASCII).
pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Polls `check` until it returns `Some` or `within` elapses.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `POST {base}/api/orders`, expecting 201; returns the new order's id.
pub async fn create_order_at(
    http: &reqwest::Client,
    base: &str,
    body: &Value,
) -> orderflow::domain::OrderId {
    let response = http
        .post(format!("{base}/api/orders"))
        .json(body)
        .send()
        .await
        .expect("POST /api/orders");
    assert_eq!(response.status(), 201);
    let order: Value = response.json().await.expect("order");
    order["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("order id")
}

/// Polls `GET {base}/api/orders/{id}` until the order has `status`.
pub async fn wait_for_status(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    status: &str,
    within: Duration,
) -> Value {
    let url = format!("{base}/api/orders/{id}");
    eventually(within, || async {
        let order: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
        (order["status"] == status).then_some(order)
    })
    .await
    .unwrap_or_else(|| panic!("order {id} never reached {status}"))
}

/// Creates an order through the API and drives it to Fulfilled (the worker
/// reserves, ships and fulfils); returns its id.
pub async fn run_order_to_fulfilment(http: &reqwest::Client, base: &str, customer: &str) -> String {
    let within = Duration::from_secs(60);
    let id = create_order_at(http, base, &order_body(customer, "untracked-gadget", 1))
        .await
        .to_string();
    wait_for_status(http, base, &id, "Reserved", within).await;
    let paid = http
        .post(format!("{base}/api/orders/{id}/payments"))
        .json(&serde_json::json!({"paymentId": format!("pay-{customer}")}))
        .send()
        .await
        .expect("pay");
    assert_eq!(paid.status(), 200);
    wait_for_status(http, base, &id, "AwaitingShipment", within).await;
    let shipped = http
        .post(format!("{base}/api/orders/{id}/shipments"))
        .json(&serde_json::json!({"trackingNumber": format!("T-{customer}")}))
        .send()
        .await
        .expect("ship");
    assert_eq!(shipped.status(), 200);
    wait_for_status(http, base, &id, "Fulfilled", within).await;
    id
}
