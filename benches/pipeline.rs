//! `cargo bench --bench pipeline [-- --broker mock|kafka|both --rate 500 --lifecycle-rate 250 --seconds 20 --concurrency 32 --backlog 100000 --phases api,latency,relay,worker,lifecycle]`
//!
//! Measures the pipeline (the release binary as separate processes, a
//! Kafka-protocol broker, PostgreSQL from `ORDERFLOW_TEST_DATABASE_URL`)
//! and, in the same run, the limits to compare with: pgbench running the
//! API's and the worker's transactions, and a raw rdkafka producer and a
//! bare consumer on the same broker with the relay's and the worker's
//! settings. Prints a summary table; BENCHMARKS.md has one from this
//! machine.
//!
//! The broker (`--broker`): librdkafka's mock cluster hosted here (`mock`,
//! the default), Apache Kafka started by the test harness (`kafka`), or
//! each in turn with the figures side by side (`both`). On Apache Kafka the
//! phases that compare with a raw limit (api, relay, worker) run on a
//! single node (replication 1), the latency and lifecycle phases on the
//! 3-node cluster the tests use (replication 3, acks=all,
//! `min.insync.replicas=2`). Each cluster starts once per run; every phase
//! has topics and a group of its own on it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::TestBroker;
use common::{Backend, Process, TestDb};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;
use sqlx::{Connection, PgConnection, Row};

/// The broker a phase runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum On {
    /// librdkafka's mock cluster, hosted by the benchmark.
    Mock,
    /// Apache Kafka from the test harness.
    Kafka,
}

impl On {
    fn title(self) -> &'static str {
        match self {
            On::Mock => "mock cluster",
            On::Kafka => "Apache Kafka",
        }
    }
}

/// Which Apache Kafka cluster a phase needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Nodes {
    /// One node (replication 1): for the phases measured against a raw
    /// limit on the same broker.
    Single,
    /// The tests' 3-node cluster: replication 3, acks=all,
    /// `min.insync.replicas=2`.
    Replicated,
}

/// Every phase, in the order the summary shows them.
const PHASES: [&str; 5] = ["api", "latency", "relay", "worker", "lifecycle"];

struct Args {
    rate: u64,
    /// The full-lifecycle phase's rate: every order paid and shipped.
    lifecycle_rate: u64,
    seconds: u64,
    concurrency: usize,
    backlog: usize,
    /// Which of `PHASES` run (all by default).
    phases: Vec<String>,
    /// The brokers each phase runs on, in turn.
    brokers: Vec<On>,
}

impl Args {
    fn parse() -> Self {
        let mut args = Self {
            rate: 500,
            lifecycle_rate: 250,
            seconds: 20,
            concurrency: 32,
            backlog: 100_000,
            phases: PHASES.map(String::from).to_vec(),
            brokers: vec![On::Mock],
        };
        let argv: Vec<String> = std::env::args().collect();
        let value = |name: &str| {
            argv.iter()
                .position(|a| a == name)
                .and_then(|i| argv.get(i + 1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let Some(v) = value("--rate") {
            args.rate = v;
        }
        if let Some(v) = value("--lifecycle-rate") {
            args.lifecycle_rate = v;
        }
        if let Some(v) = value("--seconds") {
            args.seconds = v;
        }
        if let Some(v) = value("--concurrency") {
            args.concurrency = v as usize;
        }
        if let Some(v) = value("--backlog") {
            args.backlog = v as usize;
        }
        if let Some(list) = argv
            .iter()
            .position(|a| a == "--phases")
            .and_then(|i| argv.get(i + 1))
        {
            args.phases = list.split(',').map(|p| p.trim().to_string()).collect();
            for phase in &args.phases {
                assert!(
                    PHASES.contains(&phase.as_str()),
                    "unknown phase {phase}: the phases are {}",
                    PHASES.join(",")
                );
            }
        }
        if let Some(broker) = argv
            .iter()
            .position(|a| a == "--broker")
            .and_then(|i| argv.get(i + 1))
        {
            args.brokers = match broker.as_str() {
                "mock" => vec![On::Mock],
                "kafka" => vec![On::Kafka],
                "both" => vec![On::Mock, On::Kafka],
                other => panic!("--broker {other}: mock, kafka or both"),
            };
        }
        args
    }

    fn runs(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

/// Percentiles of a sample, in milliseconds.
#[derive(Default, Clone, Copy)]
struct Spread {
    p50: f64,
    p99: f64,
    max: f64,
}

fn spread(mut ms: Vec<f64>) -> Spread {
    if ms.is_empty() {
        return Spread::default();
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    Spread {
        p50: at(0.50),
        p99: at(0.99),
        max: ms[ms.len() - 1],
    }
}

/// Peak resident set (VmHWM) of a process, in MB.
fn peak_rss_mb(process: &Process) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", process.child.id())).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// User + system CPU seconds of one process, from /proc/PID/stat; with
/// `children`, also those of its children it has reaped.
fn cpu_seconds(pid: u32, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    let at = |n: usize| fields.get(n - 3).copied().unwrap_or(0.0);
    let ticks = at(14) + at(15) + if children { at(16) + at(17) } else { 0.0 };
    ticks / CLOCK_TICKS
}

/// Linux's USER_HZ, the unit of /proc's CPU times.
const CLOCK_TICKS: f64 = 100.0;

/// CPU seconds used so far by every PostgreSQL process, and by those that
/// exited (their parent, the postmaster, has reaped them): the server's
/// whole work, whichever backend did it.
fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| cpu_seconds(pid, true))
        .sum()
}

/// CPU used between `start` and `stop`: by the processes under test and by
/// PostgreSQL, in microseconds per unit of work. Throughput moves with what
/// else the machine does; CPU per order much less.
#[derive(Default, Clone, Copy)]
struct CpuPer {
    process_us: f64,
    postgres_us: f64,
}

struct CpuMeter {
    pids: Vec<u32>,
    process: f64,
    postgres: f64,
}

impl CpuMeter {
    fn start(processes: &[&Process]) -> Self {
        let pids: Vec<u32> = processes.iter().map(|p| p.child.id()).collect();
        Self {
            process: pids.iter().map(|p| cpu_seconds(*p, false)).sum(),
            postgres: postgres_cpu_seconds(),
            pids,
        }
    }

    fn per(&self, units: f64) -> CpuPer {
        let process: f64 = self.pids.iter().map(|p| cpu_seconds(*p, false)).sum();
        let per = |seconds: f64| seconds * 1e6 / units.max(1.0);
        CpuPer {
            process_us: per(process - self.process),
            postgres_us: per(postgres_cpu_seconds() - self.postgres),
        }
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Enough for a backlog of 100,000 events to fit the mock cluster's 5 MiB
/// per partition (it deletes older messages beyond that). The orders topic
/// has as many on Apache Kafka.
const PARTITIONS: i32 = 16;

/// The Apache Kafka clusters of this run, each started on first use and
/// kept for the phases that follow; each phase has names of its own there.
#[derive(Default)]
struct Clusters {
    single: Option<Arc<common::kafka_cluster::KafkaCluster>>,
    replicated: Option<Arc<common::kafka_cluster::KafkaCluster>>,
}

impl Clusters {
    /// A broker for one phase: a fresh mock cluster, or fresh names on the
    /// Apache Kafka cluster of `nodes` with the orders topic created (the
    /// worker phase fills it before any orderflow process, which would
    /// create it, starts).
    async fn broker(&mut self, on: On, nodes: Nodes) -> TestBroker {
        use common::kafka_cluster::{ClusterOptions, KafkaCluster};
        if on == On::Mock {
            return common::start_broker_partitioned(&common::TOPICS, PARTITIONS);
        }
        let slot = match nodes {
            Nodes::Single => &mut self.single,
            Nodes::Replicated => &mut self.replicated,
        };
        let cluster = slot
            .get_or_insert_with(|| {
                let nodes = match nodes {
                    Nodes::Single => 1,
                    Nodes::Replicated => 3,
                };
                Arc::new(common::tokio_aware(|| {
                    KafkaCluster::start(ClusterOptions {
                        nodes,
                        proxied: false,
                    })
                }))
            })
            .clone();
        let broker = TestBroker::on(cluster);
        create_topic(&broker, &broker.names.orders, PARTITIONS).await;
        broker
    }

    /// Stops the single node once no phase left needs it.
    fn release_single(&mut self) {
        if let Some(cluster) = self.single.take() {
            common::tokio_aware(move || drop(cluster));
        }
    }
}

/// Creates `topic` on an Apache Kafka broker with the broker's replication.
async fn create_topic(broker: &TestBroker, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(broker.replication()),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create topic");
    for result in results {
        if let Err((topic, code)) = result {
            panic!("cannot create {topic}: {code:?}");
        }
    }
}

/// The worker's pool size, and pgbench's clients on its transaction.
const HANDLER_CLIENTS: usize = 8;

/// One system under test: a fresh database, a broker, processes.
struct System {
    db: TestDb,
    broker: TestBroker,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl System {
    async fn new(broker: TestBroker) -> Self {
        let db = TestDb::new(Backend::Postgres).await;
        let mut env = common::env_for(&db, &broker);
        let (partitions, workers) = (PARTITIONS.to_string(), HANDLER_CLIENTS.to_string());
        env.extend(
            [
                (
                    "KafkaConfiguration__Orders__Partitions",
                    partitions.as_str(),
                ),
                ("Database__MaxConnections", "16"),
                // A fixed pool: what is measured is the pipeline, not how
                // fast the lag-based balancer grows it.
                ("Worker__MinWorkers", workers.as_str()),
                ("Worker__MaxWorkers", workers.as_str()),
                ("Worker__LagThreshold", "200"),
                ("Worker__BalanceIntervalMs", "1000"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        if !broker.is_apache() {
            // The mock cluster holds an empty fetch for this long even
            // when messages arrive meanwhile. Apache Kafka answers a fetch
            // as soon as a message arrives (fetch.min.bytes 1), so there
            // the worker keeps orderflow's default (100 ms).
            env.push(("Worker__FetchWaitMaxMs".into(), "10".into()));
        }
        // The per-event info line is not what is measured here
        // (BENCH_LOG=info shows it, and dumps the worker's log).
        env.push((
            "RUST_LOG".into(),
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn,orderflow::app=info".into()),
        ));
        Self {
            db,
            broker,
            env,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn spawn(&self, role: &str) -> (Process, String) {
        let mut process = Process::spawn(&[role], &self.env, self.dir.path());
        let base = format!("http://{}", process.http_addr());
        (process, base)
    }

    async fn sql(&self) -> PgConnection {
        PgConnection::connect(&self.db.url).await.expect("connect")
    }

    /// The configuration the roles read: the raw clients take the relay's
    /// and the worker's settings from it.
    fn config(&self) -> orderflow::config::Config {
        common::config_from_env(self.env.clone())
    }

    /// A producer built as the relay builds its own (`Brokers::producer`:
    /// idempotent, acks=all, linger 2 ms, the message timeout).
    fn producer(&self, client_id: &str) -> FutureProducer {
        let config = self.config();
        let (brokers, _) =
            orderflow::brokers::Brokers::resolve(&config.kafka, &[]).expect("brokers");
        brokers
            .producer(client_id, config.kafka.message_timeout)
            .expect("producer")
    }

    fn orders_topic(&self) -> &str {
        &self.broker.names.orders
    }

    fn migrate(&self) {
        let status = Command::new(common::binary())
            .arg("migrate")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(self.dir.path())
            .status()
            .expect("orderflow migrate");
        assert!(status.success());
    }
}

/// One order in this many is paid and shipped in the fixed-rate phase (its
/// customer is ADVANCED): all of them would triple the requests and events
/// per order, more than two cores carry at 500 orders/s. The lifecycle
/// phase advances every order, at its own (lower) rate.
const ADVANCE_EVERY: usize = 10;
const ADVANCED: &str = "Bench Advance";

fn order_body(advanced: bool) -> serde_json::Value {
    let customer = if advanced { ADVANCED } else { "Bench Customer" };
    json!({
        "customerName": customer,
        "customerEmail": "bench@example.test",
        "items": [{"productName": "bench-untracked", "quantity": 1, "unitPrice": "2.50"}],
    })
}

/// Creates order `n` (for a customer whose orders are paid and shipped
/// when `advanced`); its latency (ms) and id.
async fn create(
    http: &reqwest::Client,
    base: &str,
    n: usize,
    advanced: bool,
) -> Option<(f64, uuid::Uuid)> {
    let started = Instant::now();
    let response = http
        .post(format!("{base}/api/orders"))
        .header(
            "Idempotency-Key",
            format!("bench-{n}-{}", uuid::Uuid::new_v4()),
        )
        .json(&order_body(advanced))
        .send()
        .await
        .ok()?;
    if response.status() != 201 {
        return None;
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let order: serde_json::Value = response.json().await.ok()?;
    Some((ms, order["id"].as_str()?.parse().ok()?))
}

// ---------------------------------------------------------------------------
// 1. API create throughput at full speed
// ---------------------------------------------------------------------------

struct Throughput {
    per_second: f64,
    latency: Spread,
    rss_mb: f64,
    cpu: CpuPer,
}

/// A limit: what pgbench (or the raw producer) reached, and PostgreSQL's
/// CPU per transaction meanwhile.
struct Limit {
    per_second: f64,
    postgres_us: f64,
}

async fn api_full_speed(args: &Args, broker: TestBroker) -> (Throughput, Limit, Limit, f64) {
    let system = System::new(broker).await;
    let (api, base) = system.spawn("serve-api");
    let http = reqwest::Client::new();
    for n in 0..200 {
        let _ = create(&http, &base, n, false).await;
    }
    let duration = Duration::from_secs(args.seconds);
    let bar = bar(args.seconds, "API create, full speed (s)");
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let groups_before = group_counts(&http, &base).await;
    let cpu = CpuMeter::start(&[&api]);
    let started = Instant::now();
    let counter = Arc::new(AtomicUsize::new(1_000));
    let clients: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (http, base, latencies, counter) = (
                http.clone(),
                base.clone(),
                latencies.clone(),
                counter.clone(),
            );
            tokio::spawn(async move {
                while started.elapsed() < duration {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    if let Some((ms, _)) = create(&http, &base, n, false).await {
                        latencies.lock().expect("latencies").push(ms);
                    }
                }
            })
        })
        .collect();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        bar.set_position(started.elapsed().as_secs());
    }
    for c in clients {
        let _ = c.await;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let samples = latencies.lock().expect("latencies").clone();
    let cpu = cpu.per(samples.len() as f64);
    let groups = group_counts(&http, &base).await;
    let mean_group = (groups.1 - groups_before.1) / (groups.0 - groups_before.0).max(1.0);
    let throughput = Throughput {
        per_second: samples.len() as f64 / elapsed,
        latency: spread(samples),
        rss_mb: peak_rss_mb(&api),
        cpu,
    };
    drop(api);
    // The limit: pgbench running the same transaction at the same
    // concurrency on the same database.
    let limit = pgbench(
        &system.db.url,
        "create_order.sql",
        &create_order_script(),
        args.concurrency,
        10,
        0,
    );
    // And what PostgreSQL does with the statements the API sent instead:
    // the grouped create, as many at once as the API's lanes, each with as
    // many orders as the API's mean batch.
    let batch = mean_group.round().max(1.0) as usize;
    let grouped = pgbench(
        &system.db.url,
        "create_orders.sql",
        &create_orders_script(batch),
        orderflow::store::WRITE_LANES,
        10,
        0,
    );
    let grouped = Limit {
        per_second: grouped.per_second * batch as f64,
        postgres_us: grouped.postgres_us / batch as f64,
    };
    (throughput, limit, grouped, mean_group)
}

/// Group commit's statements and the writes they carried so far, from a
/// process's /metrics.
async fn group_counts(http: &reqwest::Client, base: &str) -> (f64, f64) {
    let Ok(response) = http.get(format!("{base}/metrics")).send().await else {
        return (0.0, 0.0);
    };
    let text = response.text().await.unwrap_or_default();
    (
        common::metric_total(&text, "orderflow_db_group_statements_total"),
        common::metric_total(&text, "orderflow_db_grouped_writes_total"),
    )
}

/// The API's create statement as pgbench runs it: the store's own SQL with
/// each parameter replaced by a pgbench expression for one order of one
/// item with an Idempotency-Key (the id is derived from a random 63-bit
/// number instead of a UUIDv7). The API's NOTIFY is a separate statement
/// after commit, shared by the commits that finish while one is in flight;
/// it is not part of this transaction.
fn create_order_script() -> String {
    let id = "md5(:n::text)::uuid";
    pgbench_script(
        orderflow::store::CREATE_ORDER_SQL,
        &[
            id,
            "'Bench Customer'",
            "'bench@example.test'",
            "NULL",
            "2.50",
            "'Pending'",
            "now()",
            "'order created'",
            "('bench-' || :n || '-' || :client_id)",
            "'hash'",
            "'{0}'",
            "'{bench-untracked}'",
            "'{1}'",
            "'{2.50}'",
            "gen_random_uuid()",
            "'orders'",
            "md5(:n::text)",
            "'OrderCreated'",
            // A variable: pgbench would read the JSON's `:null` as one.
            ":payload",
            "'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'",
        ],
        "9000000000000000000",
    )
}

/// The API's grouped create for `batch` orders of one item each, as
/// [`create_order_script`] writes one: each array holds `batch` elements.
fn create_orders_script(batch: usize) -> String {
    let each = |value: &str, ty: &str| format!("array_fill({value}::{ty}, ARRAY[{batch}])");
    let series = |value: &str| format!("ARRAY(SELECT {value} FROM generate_series(1, {batch}) g)");
    let ids = series("md5(:n::text || '-' || g)::uuid");
    pgbench_script(
        orderflow::store::CREATE_ORDERS_SQL,
        &[
            &ids,
            &each("'Bench Customer'", "text"),
            &each("'bench@example.test'", "text"),
            &each("NULL", "text"),
            &each("2.50", "numeric"),
            &each("now()", "timestamptz"),
            &series("'bench-' || :n || '-' || :client_id || '-' || g"),
            &each("'hash'", "text"),
            "'Pending'",
            "'order created'",
            &ids,
            &each("0", "int4"),
            &each("'bench-untracked'", "text"),
            &each("1", "int8"),
            &each("2.50", "numeric"),
            &series("gen_random_uuid()"),
            &each("'orders'", "text"),
            &series("md5(:n::text || '-' || g)"),
            &each("'OrderCreated'", "text"),
            &each("(:payload)", "text"),
            &each(
                "'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'",
                "text",
            ),
        ],
        "9000000000000000000",
    )
}

/// The worker's OrderCreated transaction (the store's one-statement
/// reservation) on one of the pre-filled orders,
/// `backlog` (pgbench -D) of them. pgbench runs after the worker reserved
/// them all, so the guarded move is Reserved → Reserved: the same update
/// and timeline entry, also for an order picked twice. (Pending → Pending,
/// as before, matched no row then and skipped both writes.)
fn handle_created_script() -> String {
    pgbench_script(
        orderflow::store::RESERVE_SQL,
        &[
            "md5(:n::text)::uuid",
            "'pgbench'",
            "gen_random_uuid()::text",
            "'OrderCreated'",
            "now()",
            "'Reserved'",
            "'Reserved'",
            "'stock reserved'",
        ],
        ":backlog",
    )
}

/// [`handle_created_script`] for `batch` distinct orders at once, through
/// the grouped reservation.
fn handle_created_grouped_script(batch: usize) -> String {
    let each = |value: &str| format!("array_fill({value}::text, ARRAY[{batch}])");
    pgbench_script(
        orderflow::store::RESERVE_MANY_SQL,
        &[
            &format!(
                "ARRAY(SELECT md5(((:n + g) % :backlog + 1)::text)::uuid \
                 FROM generate_series(1, {batch}) g)"
            ),
            &each("'pgbench'"),
            &format!("ARRAY(SELECT gen_random_uuid()::text FROM generate_series(1, {batch}))"),
            &each("'OrderCreated'"),
            "now()",
            "'Reserved'",
            "'Reserved'",
            &each("'stock reserved'"),
        ],
        ":backlog",
    )
}

/// `sql` with `$1`, `$2`, … replaced by `values` (highest first, so `$1`
/// does not eat into `$10`), as a pgbench script that draws `n` from 1 to
/// `picks`.
fn pgbench_script(sql: &str, values: &[&str], picks: &str) -> String {
    let mut statement = sql.to_string();
    for (i, value) in values.iter().enumerate().rev() {
        let placeholder = format!("${}", i + 1);
        assert!(
            statement.contains(&placeholder),
            "{placeholder} is not in the statement"
        );
        statement = statement.replace(&placeholder, &format!("({value})"));
    }
    assert!(
        !statement.contains('$'),
        "a parameter of the statement has no value"
    );
    format!("\\set n random(1, {picks})\n{statement};\n")
}

/// pgbench's tps on `script`, with prepared statements as the store uses,
/// and PostgreSQL's CPU per transaction.
fn pgbench(
    url: &str,
    name: &str,
    script: &str,
    clients: usize,
    seconds: u64,
    backlog: usize,
) -> Limit {
    let file = std::env::temp_dir().join(format!("orderflow-bench-{}-{name}", std::process::id()));
    std::fs::write(&file, script).expect("write the pgbench script");
    let postgres_before = postgres_cpu_seconds();
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-T",
            &seconds.to_string(),
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-D",
            &format!("backlog={backlog}"),
            "-D",
            &format!("payload={PAYLOAD}"),
            "-f",
        ])
        .arg(&file)
        .arg(url)
        .output()
        .expect("pgbench is installed with PostgreSQL (apt-get install -y postgresql)");
    let postgres = postgres_cpu_seconds() - postgres_before;
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&output.stdout);
    let figure = |prefix: &str, at: usize| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(at))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "pgbench {name} failed: {text}{}\nscript:\n{script}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })
    };
    let transactions = figure("number of transactions actually processed:", 5);
    Limit {
        per_second: figure("tps = ", 2),
        postgres_us: postgres * 1e6 / transactions.max(1.0),
    }
}

// ---------------------------------------------------------------------------
// 2. Latency at a fixed rate: create → Reserved, create → Fulfilled
// ---------------------------------------------------------------------------

struct Latency {
    api: Spread,
    reserved: Spread,
    /// OrderCreated: commit → published, published → handled.
    relayed: Spread,
    consumed: Spread,
    fulfilled: Spread,
    /// The pipeline's steps after the driver's requests: Paid →
    /// AwaitingShipment and Shipped → Fulfilled.
    paid_to_awaiting: Spread,
    shipped_to_fulfilled: Spread,
    /// The driver's reaction: the status it waits for committed (its
    /// timeline time) → its payment (shipment) request sent.
    react_pay: Spread,
    react_ship: Spread,
    orders: usize,
    advanced: usize,
    api_rss_mb: f64,
    worker_rss_mb: f64,
    /// API and worker together, per order.
    cpu: CpuPer,
}

type Waiting = Arc<Mutex<Vec<uuid::Uuid>>>;

/// When the driver sent each request: order id, Unix time in ms.
type Sent = Arc<Mutex<Vec<(uuid::Uuid, f64)>>>;

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

/// Pays (or ships) each order in `waiting` as soon as it is in `from`, as a
/// client reacting to the order's status would, notes in `sent` when it
/// sent the request, then hands the order to `then`; stops at `stop`. It
/// looks up only the orders it waits for, by key, every 10 ms: a scan of
/// all orders by status would load the database it measures. The
/// latency phase drives one order in ten with it, the lifecycle phase
/// every order; the poll's delay is in the driver's reaction time, which
/// the lifecycle phase reports apart from the pipeline's steps.
async fn advance_loop(
    url: String,
    base: String,
    waiting: Waiting,
    (from, step, body): (&'static str, &'static str, serde_json::Value),
    (sent, then): (Sent, Option<Waiting>),
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut db = PgConnection::connect(&url).await.expect("connect");
    let http = reqwest::Client::new();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let candidates = waiting.lock().expect("waiting").clone();
        if candidates.is_empty() {
            continue;
        }
        // By primary key only: with the status in the condition PostgreSQL
        // walked the (status, id) index through every Reserved order, a
        // tenth of a core at 500/s (BENCHMARKS.md).
        let ready: Vec<uuid::Uuid> =
            sqlx::query("SELECT id, status FROM orders WHERE id = ANY($1)")
                .bind(&candidates)
                .fetch_all(&mut db)
                .await
                .map(|rows| {
                    rows.iter()
                        .filter(|r| r.get::<String, _>(1) == from)
                        .map(|r| r.get(0))
                        .collect()
                })
                .unwrap_or_default();
        if ready.is_empty() {
            continue;
        }
        waiting
            .lock()
            .expect("waiting")
            .retain(|id| !ready.contains(id));
        futures::future::join_all(ready.iter().map(|id| {
            let request = http
                .post(format!("{base}/api/orders/{id}/{step}"))
                .json(&body)
                .send();
            let sent = sent.clone();
            async move {
                // Just before the request goes out: a future does nothing
                // until it is polled.
                sent.lock().expect("sent").push((*id, unix_ms()));
                request.await
            }
        }))
        .await;
        if let Some(next) = &then {
            next.lock().expect("waiting").extend(ready);
        }
    }
}

/// create → Reserved over the phase: the slowest order of each tenth of a
/// second, by creation time (`BENCH_SERIES=1`). A p99 that comes from one
/// stall shows as a run of slow tenths, steady queueing as a slow rise.
fn reserved_series(at: &HashMap<String, HashMap<String, f64>>, measured_from: f64) -> String {
    let mut slowest: std::collections::BTreeMap<i64, f64> = Default::default();
    for statuses in at.values() {
        if let (Some(created), Some(reserved)) = (statuses.get("Pending"), statuses.get("Reserved"))
        {
            if *created >= measured_from {
                let tenth = ((created - measured_from) / 100.0) as i64;
                let worst = slowest.entry(tenth).or_default();
                *worst = worst.max(reserved - created);
            }
        }
    }
    let tenths: Vec<String> = slowest
        .iter()
        .map(|(tenth, ms)| format!("{:.1}s:{ms:.0}", *tenth as f64 / 10.0))
        .collect();
    format!(
        "slowest create → Reserved (ms) per 0.1 s: {}",
        tenths.join(" ")
    )
}

/// Orders created at `rate` for `seconds`, one in `advance_every` of them
/// paid and shipped by the driver as soon as its status allows: the
/// latency phase (1 in 10 at `--rate`) and the lifecycle phase (every
/// order at `--lifecycle-rate`).
async fn fixed_rate(rate: u64, seconds: u64, advance_every: usize, broker: TestBroker) -> Latency {
    let mut system = System::new(broker).await;
    // Published rows stay, marked: their published_at splits each event's
    // time into relay and worker. At this rate marking instead of deleting
    // costs the relay a few milliseconds a second.
    system
        .env
        .push(("Outbox__RetentionSeconds".into(), "3600".into()));
    let (api, base) = system.spawn("serve-api");
    let (worker, _) = system.spawn("run-worker");
    let orders = (rate * seconds) as usize;
    let mut db = system.sql().await;
    // Warm-up, not measured: one second at the same rate, for the consumer
    // group's first join (the broker delays it by 3 s) and the connection
    // pools of the client, the API and the worker.
    let http = reqwest::Client::new();
    let interval = Duration::from_micros(1_000_000 / rate.max(1));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(rate as usize);
    for i in 0..rate as usize {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let (http, base) = (http.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            create(&http, &base, 1_000_000 + i, false).await
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let measured_from: f64 = loop {
        let row = sqlx::query(
            "SELECT count(*), EXTRACT(EPOCH FROM clock_timestamp())::float8 * 1000 \
             FROM orders WHERE status = 'Pending'",
        )
        .fetch_one(&mut db)
        .await
        .expect("warm-up");
        if row.get::<i64, _>(0) == 0 {
            break row.get(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (to_pay, to_ship) = (Waiting::default(), Waiting::default());
    let (paid, shipped) = (Sent::default(), Sent::default());
    let payer = tokio::spawn(advance_loop(
        system.db.url.clone(),
        base.clone(),
        to_pay.clone(),
        ("Reserved", "payments", json!({"paymentId": "pay-bench"})),
        (paid.clone(), Some(to_ship.clone())),
        stop.clone(),
    ));
    let shipper = tokio::spawn(advance_loop(
        system.db.url.clone(),
        base.clone(),
        to_ship,
        (
            "AwaitingShipment",
            "shipments",
            json!({"trackingNumber": "T-bench"}),
        ),
        (shipped.clone(), None),
        stop.clone(),
    ));
    let what = if advance_every == 1 {
        "lifecycle"
    } else {
        "fixed rate"
    };
    let bar = bar(orders as u64, &format!("{what} {rate}/s (orders)"));
    let cpu = CpuMeter::start(&[&api, &worker]);
    let started = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(orders)));
    let mut tasks = Vec::with_capacity(orders);
    for n in 0..orders {
        tokio::time::sleep_until((started + interval * n as u32).into()).await;
        let (http, base, latencies, bar, to_pay) = (
            http.clone(),
            base.clone(),
            latencies.clone(),
            bar.clone(),
            to_pay.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let advanced = n.is_multiple_of(advance_every);
            if let Some((ms, id)) = create(&http, &base, n, advanced).await {
                latencies.lock().expect("latencies").push(ms);
                if advanced {
                    to_pay.lock().expect("waiting").push(id);
                }
            }
            bar.inc(1);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    bar.finish_and_clear();
    // Wait for the pipeline to finish every order (or give up after 2 min).
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let left: i64 = sqlx::query(
            "SELECT count(*) FROM orders WHERE status = 'Pending' \
             OR (customer_name = $1 AND status <> 'Fulfilled')",
        )
        .bind(ADVANCED)
        .fetch_one(&mut db)
        .await
        .expect("count")
        .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = payer.await;
    let _ = shipper.await;
    let cpu = cpu.per(orders as f64);
    let rows = sqlx::query(
        "SELECT t.order_id::text, t.status, \
         EXTRACT(EPOCH FROM t.at)::float8 * 1000 FROM order_timeline t",
    )
    .fetch_all(&mut db)
    .await
    .expect("timeline");
    let mut at: HashMap<String, HashMap<String, f64>> = HashMap::new();
    for r in rows {
        at.entry(r.get(0)).or_default().insert(r.get(1), r.get(2));
    }
    // One step of the measured orders: `from`'s timeline time to `to`'s.
    let step = |from: &str, to: &str| -> Vec<f64> {
        at.values()
            .filter_map(|s| {
                (*s.get("Pending")? >= measured_from).then_some(s.get(to)? - s.get(from)?)
            })
            .collect()
    };
    let since_created = |status: &str| step("Pending", status);
    // The driver's reaction: its status's timeline time → request sent.
    let reaction = |sent: &Sent, status: &str| -> Vec<f64> {
        sent.lock()
            .expect("sent")
            .iter()
            .filter_map(|(id, ms)| {
                let s = at.get(&id.to_string())?;
                (*s.get("Pending")? >= measured_from).then_some(ms - s.get(status)?)
            })
            .collect()
    };
    if std::env::var_os("BENCH_SERIES").is_some() {
        eprintln!("{}", reserved_series(&at, measured_from));
    }
    // Where an OrderCreated spent its time: committed → marked published
    // (the relay; the mark follows the broker's acknowledgement), and
    // marked → handled by the worker.
    let stages = sqlx::query(
        "SELECT EXTRACT(EPOCH FROM (o.published_at - o.created_at))::float8 * 1000, \
         EXTRACT(EPOCH FROM (i.handled_at - o.published_at))::float8 * 1000 \
         FROM outbox o JOIN inbox i ON i.event_id = o.event_id::text \
         WHERE o.event_type = 'OrderCreated' \
         AND EXTRACT(EPOCH FROM o.created_at)::float8 * 1000 >= $1",
    )
    .bind(measured_from)
    .fetch_all(&mut db)
    .await
    .expect("stages");
    let api_latency = latencies.lock().expect("latencies").clone();
    Latency {
        relayed: spread(stages.iter().map(|r| r.get(0)).collect()),
        consumed: spread(stages.iter().map(|r| r.get(1)).collect()),
        api: spread(api_latency),
        reserved: spread(since_created("Reserved")),
        fulfilled: spread(since_created("Fulfilled")),
        paid_to_awaiting: spread(step("Paid", "AwaitingShipment")),
        shipped_to_fulfilled: spread(step("Shipped", "Fulfilled")),
        react_pay: spread(reaction(&paid, "Reserved")),
        react_ship: spread(reaction(&shipped, "AwaitingShipment")),
        orders,
        advanced: orders.div_ceil(advance_every),
        api_rss_mb: peak_rss_mb(&api),
        worker_rss_mb: peak_rss_mb(&worker),
        cpu,
    }
}

// ---------------------------------------------------------------------------
// 3. Relay on a pre-filled backlog; the raw producer as its limit
// ---------------------------------------------------------------------------

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const PAYLOAD: &str = r#"{"orderId":"00000000-0000-0000-0000-000000000000","customerId":null,"customerName":"Bench Customer","customerEmail":"bench@example.test","totalAmount":"2.50","createdAt":"2026-11-25T00:00:00Z","items":[{"productName":"bench-untracked","quantity":1,"unitPrice":"2.50"}]}"#;

async fn relay_backlog(args: &Args, broker: TestBroker) -> (Throughput, f64) {
    let system = System::new(broker).await;
    system.migrate();
    let mut db = system.sql().await;
    sqlx::query(
        "INSERT INTO outbox (event_id, destination, message_key, event_type, payload, traceparent, created_at) \
         SELECT gen_random_uuid(), 'orders', md5(i::text)::uuid::text, 'OrderCreated', $1, $3, now() \
         FROM generate_series(1, $2) AS i",
    )
    .bind(PAYLOAD)
    .bind(args.backlog as i64)
    .bind(TRACEPARENT)
    .execute(&mut db)
    .await
    .expect("pre-fill the outbox");
    let bar = bar(args.backlog as u64, "relay backlog (events)");
    let (api, _) = system.spawn("serve-api");
    let cpu = CpuMeter::start(&[&api]);
    // Progress is read off the broker: counting the outbox every 50 ms
    // was a scan that took a third of PostgreSQL's time from the relay.
    // The run takes well under a second, so the poll is frequent: the
    // last look comes at most one poll after the last message (a bias
    // against the relay of about 2 %).
    let topic = TopicWatch::new(system.broker.bootstrap_servers(), system.orders_topic());
    let last = loop {
        let published = topic.messages().await;
        bar.set_position(published as u64);
        if published as usize >= args.backlog {
            break SystemTime::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    bar.finish_and_clear();
    if std::env::var("BENCH_LOG").is_ok() {
        eprintln!("{}", api.log_text());
    }
    // The start is exact: when the relay handed its first message to the
    // producer. Waiting to see it on the topic came up to a poll late,
    // which on a run this short flattered the relay by up to 10 %.
    let first = topic.first_produced().await;
    let seconds = last
        .duration_since(first)
        .unwrap_or_default()
        .as_secs_f64()
        .max(0.001);
    let relay = Throughput {
        per_second: args.backlog as f64 / seconds,
        latency: Spread::default(),
        rss_mb: peak_rss_mb(&api),
        cpu: cpu.per(args.backlog as f64),
    };
    drop(api);
    let raw = raw_producer(&system, args.backlog).await;
    (relay, raw)
}

/// The number of messages ever written to the orders topic: the sum of its
/// partitions' high watermarks.
struct TopicWatch {
    consumer: Arc<rdkafka::consumer::BaseConsumer>,
    topic: Arc<str>,
}

impl TopicWatch {
    fn new(bootstrap: &str, topic: &str) -> Self {
        let consumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "bench-watch")
            .create()
            .expect("watermark client");
        Self {
            consumer: Arc::new(consumer),
            topic: topic.into(),
        }
    }

    async fn messages(&self) -> i64 {
        use rdkafka::consumer::Consumer;
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            (0..PARTITIONS)
                .map(|p| {
                    consumer
                        .fetch_watermarks(&topic, p, Duration::from_secs(5))
                        .map(|(_, high)| high)
                        .unwrap_or(0)
                })
                .sum()
        })
        .await
        .expect("watermarks")
    }

    /// When the earliest message on the topic was handed to its producer:
    /// the least CreateTime of the partitions' first messages (the topic
    /// must still hold them: the mock cluster keeps 5 MiB per partition).
    async fn first_produced(&self) -> SystemTime {
        use rdkafka::consumer::Consumer;
        use rdkafka::message::Message;
        use rdkafka::{Offset, TopicPartitionList};
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            let mut partitions = TopicPartitionList::new();
            for p in 0..PARTITIONS {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(5))
                    .expect("watermarks");
                assert_eq!(low, 0, "partition {p} lost its first messages");
                if high > 0 {
                    partitions
                        .add_partition_offset(&topic, p, Offset::Beginning)
                        .expect("partition");
                }
            }
            consumer.assign(&partitions).expect("assign");
            let mut first: HashMap<i32, i64> = HashMap::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while first.len() < partitions.count() && Instant::now() < deadline {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                    let millis = message.timestamp().to_millis().expect("CreateTime");
                    first.entry(message.partition()).or_insert(millis);
                }
            }
            consumer.unassign().expect("unassign");
            assert_eq!(
                first.len(),
                partitions.count(),
                "a first message per partition"
            );
            let millis = first.into_values().min().expect("a message");
            SystemTime::UNIX_EPOCH + Duration::from_millis(millis as u64)
        })
        .await
        .expect("first message")
    }
}

/// A bare rdkafka consumer with the worker's fetch settings reading `count`
/// messages of the orders topic from the start: messages per second from
/// the moment it is assigned the partitions to the last message, what
/// consuming alone costs on this broker. Timed from the first message
/// instead, it let librdkafka prefetch during the first poll and reported
/// anything from 14,000 to 1,100,000 msgs/s.
///
/// The settings are the worker's (src/consumer/engine.rs): its consumer
/// base from the same configuration (`Brokers::consumer_config`), its
/// read-ahead defaults (PREFETCH_MESSAGES, PREFETCH_KBYTES,
/// FETCH_QUEUE_BACKOFF_MS there) and `Worker.FetchWaitMaxMs` as the
/// worker was given it (10 ms on the mock cluster, orderflow's default
/// 100 ms on Apache Kafka).
fn raw_consumer(config: &orderflow::config::Config, topic: &str, count: usize) -> f64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let (brokers, _) = orderflow::brokers::Brokers::resolve(&config.kafka, &[]).expect("brokers");
    let consumer: BaseConsumer = brokers
        .consumer_config("bench-raw-consumer")
        .set("group.id", "bench-raw-consumer")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "fetch.wait.max.ms",
            config.worker.fetch_wait_max.as_millis().to_string(),
        )
        .set("fetch.queue.backoff.ms", "10")
        .set("queued.min.messages", "2000")
        .set("queued.max.messages.kbytes", "8192")
        .create()
        .expect("raw consumer");
    let mut partitions = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        partitions
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    let started = Instant::now();
    consumer.assign(&partitions).expect("assign");
    let mut seen = 0;
    let deadline = started + Duration::from_secs(120);
    while seen < count && Instant::now() < deadline {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            seen += 1;
        }
    }
    seen as f64 / started.elapsed().as_secs_f64().max(0.001)
}

/// Events the worker has handled (any outcome), from its /metrics.
async fn handled_events(http: &reqwest::Client, admin: &str) -> i64 {
    let Ok(response) = http.get(format!("{admin}/metrics")).send().await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    common::metric_total(&text, "orderflow_events_handled_total") as i64
}

/// The same messages (key, payload, CloudEvents headers) on the same topic,
/// from a producer built as the relay's (`Brokers::producer` on the same
/// configuration), straight from rdkafka; messages per second.
async fn raw_producer(system: &System, count: usize) -> f64 {
    let producer = system.producer("bench-raw-producer");
    // Warm, as the relay's producer is when its clock starts (at its first
    // message): connected, its metadata fetched and, being idempotent, its
    // producer id given. Cold, a short backlog timed mostly that.
    producer
        .send(
            FutureRecord::to(system.orders_topic())
                .key("bench-warm-up")
                .payload(PAYLOAD),
            Duration::from_secs(30),
        )
        .await
        .expect("the raw producer's first message");
    let bar = bar(count as u64, "raw rdkafka producer (msgs)");
    // The rows the relay would have read, built before the clock starts.
    let created_at = chrono::Utc::now();
    let rows: Vec<orderflow::store::OutboxRecord> = (0..count)
        .map(|i| orderflow::store::OutboxRecord {
            id: i as i64,
            event_id: uuid::Uuid::new_v4(),
            destination: "orders".into(),
            key: format!("{i:032x}"),
            event_type: "OrderCreated".into(),
            payload: PAYLOAD.into(),
            traceparent: Some(TRACEPARENT.into()),
            created_at,
        })
        .collect();
    let started = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    // The limit is the client and the broker at full speed: as many in
    // flight as librdkafka's queue takes (the relay's batch grows to
    // 4,000), with the headers the relay's sink builds.
    for (i, row) in rows.iter().enumerate() {
        let mut record = FutureRecord::to(system.orders_topic())
            .key(&row.key)
            .payload(&row.payload)
            .headers(orderflow::sink::kafka::headers(row));
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((e, back))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    record = back;
                    let _ = pending.next().await;
                }
                Err((e, _)) => panic!("raw producer: {e}"),
            }
        }
        if i % 1000 == 0 {
            bar.set_position(i as u64);
        }
    }
    while pending.next().await.is_some() {}
    bar.finish_and_clear();
    count as f64 / started.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------
// 4. Worker on a pre-filled topic; pgbench on its transaction as the limit
// ---------------------------------------------------------------------------

async fn worker_backlog(args: &Args, broker: TestBroker) -> (Throughput, Limit, Limit, f64, f64) {
    let system = System::new(broker).await;
    system.migrate();
    let mut db = system.sql().await;
    for statement in [
        "INSERT INTO orders (id, status, customer_name, customer_email, total_amount, created_at, updated_at) \
         SELECT md5(i::text)::uuid, 'Pending', 'Bench Customer', 'bench@example.test', 2.50, now(), now() \
         FROM generate_series(1, $1) AS i",
        "INSERT INTO order_items (order_id, line, product_name, quantity, unit_price) \
         SELECT md5(i::text)::uuid, 0, 'bench-untracked', 1, 2.50 FROM generate_series(1, $1) AS i",
        "INSERT INTO order_timeline (order_id, status, note, at) \
         SELECT md5(i::text)::uuid, 'Pending', 'order created', now() FROM generate_series(1, $1) AS i",
    ] {
        sqlx::query(statement)
            .bind(args.backlog as i64)
            .execute(&mut db)
            .await
            .expect("pre-fill orders");
    }
    let ids: Vec<String> = sqlx::query("SELECT id::text FROM orders")
        .fetch_all(&mut db)
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let producer = system.producer("bench-pre-fill");
    eprintln!("worker phase: {} orders in the database", ids.len());
    let fill = bar(ids.len() as u64, "pre-fill topic (events)");
    let mut pending = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for (i, id) in ids.iter().enumerate() {
        let event = uuid::Uuid::new_v4().to_string();
        let payload = PAYLOAD.replace("00000000-0000-0000-0000-000000000000", id);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "ce_id",
                value: Some(event.as_str()),
            })
            .insert(Header {
                key: "ce_type",
                value: Some("OrderCreated"),
            });
        let record = FutureRecord::to(system.orders_topic())
            .key(id)
            .payload(&payload)
            .headers(headers);
        // Handed to librdkafka at once: nothing borrowed stays in flight.
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => panic!("cannot produce the pre-fill: {e}"),
        }
        if pending.len() >= 1000 {
            let _ = pending.next().await;
        }
        if i % 1000 == 0 {
            fill.set_position(i as u64);
        }
    }
    while pending.next().await.is_some() {}
    fill.finish_and_clear();
    eprintln!("worker phase: {} events on the topic", ids.len());
    let bar = bar(ids.len() as u64, "worker backlog (events)");
    let (worker, admin) = system.spawn("run-worker");
    let cpu = CpuMeter::start(&[&worker]);
    let mut first: Option<Instant> = None;
    let last;
    let mut progress = (0i64, Instant::now());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    loop {
        // From the worker's /metrics: counting the inbox every 50 ms took
        // PostgreSQL's time from the worker.
        let handled = handled_events(&http, &admin).await;
        if handled > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if handled != progress.0 {
            progress = (handled, Instant::now());
        }
        assert!(
            progress.1.elapsed() < Duration::from_secs(30),
            "the worker made no progress for 30 s at {handled}:\n{}",
            worker.log_text()
        );
        bar.set_position(handled as u64);
        if handled as usize >= ids.len() {
            last = Instant::now();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    if std::env::var("BENCH_LOG").is_ok() {
        eprintln!("{}", worker.log_text());
    }
    let seconds = (last - first.unwrap_or(last)).as_secs_f64().max(0.001);
    let cpu = cpu.per(ids.len() as f64);
    let groups = group_counts(&http, &admin).await;
    let mean_group = groups.1 / groups.0.max(1.0);
    let throughput = Throughput {
        per_second: ids.len() as f64 / seconds,
        latency: Spread::default(),
        rss_mb: peak_rss_mb(&worker),
        cpu,
    };
    drop(worker);
    let (config, topic, count) = (
        system.config(),
        system.orders_topic().to_string(),
        ids.len(),
    );
    let consumed = tokio::task::spawn_blocking(move || raw_consumer(&config, &topic, count))
        .await
        .expect("raw consumer");
    // The worker runs up to Worker.MaxWorkers transactions at once.
    let limit = pgbench(
        &system.db.url,
        "handle_created.sql",
        &handle_created_script(),
        HANDLER_CLIENTS,
        10,
        ids.len(),
    );
    // And the grouped reservation the worker sent instead, as many at once
    // as its lanes, each with as many events as its mean batch.
    let batch = mean_group.round().max(1.0) as usize;
    let grouped = pgbench(
        &system.db.url,
        "handle_created_grouped.sql",
        &handle_created_grouped_script(batch),
        orderflow::store::WRITE_LANES,
        10,
        ids.len(),
    );
    let grouped = Limit {
        per_second: grouped.per_second * batch as f64,
        postgres_us: grouped.postgres_us / batch as f64,
    };
    (throughput, limit, grouped, mean_group, consumed)
}

/// One line of the summary: the figure (named alike on every broker) and,
/// per broker, what the pipeline did, its limit and the ratio.
struct SummaryRow {
    figure: String,
    cells: [String; 3],
}

fn row(figure: String, pipeline: String, limit: String, ratio: String) -> SummaryRow {
    SummaryRow {
        figure,
        cells: [pipeline, limit, ratio],
    }
}

/// What one broker's phases reported: rows by phase, and the peak RSS of
/// each process measured.
#[derive(Default)]
struct Report {
    rows: HashMap<&'static str, Vec<SummaryRow>>,
    rss: Vec<String>,
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.0} %", 100.0 * a / b)
}

fn ms(s: Spread) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.p50, s.p99, s.max
    )
}

/// Runs `phase` on `on` and adds its rows to `report`.
async fn run_phase(
    phase: &'static str,
    args: &Args,
    on: On,
    clusters: &mut Clusters,
    report: &mut Report,
) {
    let mut rows = Vec::new();
    let label = on.title();
    match phase {
        "api" => {
            let broker = clusters.broker(on, Nodes::Single).await;
            let (api, limit, grouped, mean_group) = api_full_speed(args, broker).await;
            eprintln!(
                "{label}: API full speed: {:.0} orders/s p50 {:.1} ms p99 {:.1} ms rss {:.1} MB, groups of {mean_group:.1}; pgbench {:.0} tps, grouped {:.0} orders/s",
                api.per_second, api.latency.p50, api.latency.p99, api.rss_mb, limit.per_second, grouped.per_second
            );
            rows.push(row(
                format!("API create, full speed ({} clients)", args.concurrency),
                format!(
                    "{:.0} orders/s, p50 {:.1} ms, p99 {:.1} ms",
                    api.per_second, api.latency.p50, api.latency.p99
                ),
                format!(
                    "pgbench, one order per transaction, {} clients: {:.0} tps",
                    args.concurrency, limit.per_second
                ),
                ratio(api.per_second, limit.per_second),
            ));
            rows.push(row(
                format!(
                    "… against what the API sent: its mean group, {} at once",
                    orderflow::store::WRITE_LANES
                ),
                format!("groups of {mean_group:.1} orders"),
                format!(
                    "pgbench, grouped create of {:.0}, {} clients: {:.0} orders/s",
                    mean_group.round().max(1.0),
                    orderflow::store::WRITE_LANES,
                    grouped.per_second
                ),
                ratio(api.per_second, grouped.per_second),
            ));
            rows.push(row(
                "CPU per order, API full speed".into(),
                format!(
                    "API process {:.0} µs, PostgreSQL {:.0} µs",
                    api.cpu.process_us, api.cpu.postgres_us
                ),
                format!(
                    "pgbench: PostgreSQL {:.0} µs (one order), {:.0} µs (grouped)",
                    limit.postgres_us, grouped.postgres_us
                ),
                String::new(),
            ));
            report
                .rss
                .push(format!("API {:.1} MB (full speed)", api.rss_mb));
        }
        "latency" => {
            let broker = clusters.broker(on, Nodes::Replicated).await;
            let latency = fixed_rate(args.rate, args.seconds, ADVANCE_EVERY, broker).await;
            eprintln!(
                "{label}: fixed rate: API p99 {:.1} ms; create→Reserved p50 {:.1} p99 {:.1} max {:.1} ms; create→Fulfilled p50 {:.1} p99 {:.1} ms; rss api {:.1} worker {:.1} MB",
                latency.api.p99, latency.reserved.p50, latency.reserved.p99, latency.reserved.max,
                latency.fulfilled.p50, latency.fulfilled.p99, latency.api_rss_mb, latency.worker_rss_mb
            );
            rows.push(row(
                format!("API create at {}/s", args.rate),
                format!("{} orders, {}", latency.orders, ms(latency.api)),
                String::new(),
                String::new(),
            ));
            let target = match on {
                On::Mock => "target p99 ≤ 50 ms",
                On::Kafka => "target p50 ≤ 5 ms, p99 ≤ 15 ms",
            };
            rows.push(row(
                format!("create → Reserved at {}/s", args.rate),
                ms(latency.reserved),
                target.into(),
                String::new(),
            ));
            rows.push(row(
                "of which: commit → published (relay) / published → handled (worker)".into(),
                format!(
                    "p50 {:.1} / {:.1} ms, p99 {:.1} / {:.1} ms",
                    latency.relayed.p50,
                    latency.consumed.p50,
                    latency.relayed.p99,
                    latency.consumed.p99
                ),
                String::new(),
                String::new(),
            ));
            rows.push(row(
                format!(
                    "create → Fulfilled at {}/s (1 in {ADVANCE_EVERY} paid and shipped by a client reacting to their status)",
                    args.rate
                ),
                format!("{} orders, {}", latency.advanced, ms(latency.fulfilled)),
                String::new(),
                String::new(),
            ));
            rows.push(row(
                format!("CPU per order at {}/s", args.rate),
                format!(
                    "API + worker {:.0} µs, PostgreSQL {:.0} µs",
                    latency.cpu.process_us, latency.cpu.postgres_us
                ),
                String::new(),
                String::new(),
            ));
            report.rss.push(format!(
                "API {:.1} MB / worker {:.1} MB (at {}/s)",
                latency.api_rss_mb, latency.worker_rss_mb, args.rate
            ));
        }
        "relay" => {
            let broker = clusters.broker(on, Nodes::Single).await;
            let (relay, limit) = relay_backlog(args, broker).await;
            eprintln!(
                "{label}: relay: {:.0} events/s rss {:.1} MB; raw producer {limit:.0} msgs/s",
                relay.per_second, relay.rss_mb
            );
            rows.push(row(
                format!("relay, backlog of {}", args.backlog),
                format!("{:.0} events/s", relay.per_second),
                format!("raw rdkafka producer, the relay's settings: {limit:.0} msgs/s"),
                ratio(relay.per_second, limit),
            ));
            rows.push(row(
                "CPU per event, relay".into(),
                format!(
                    "API process {:.1} µs, PostgreSQL {:.1} µs",
                    relay.cpu.process_us, relay.cpu.postgres_us
                ),
                String::new(),
                String::new(),
            ));
            report.rss.push(format!("relay {:.1} MB", relay.rss_mb));
        }
        "worker" => {
            let broker = clusters.broker(on, Nodes::Single).await;
            let (worker, limit, grouped, mean_group, consumed) = worker_backlog(args, broker).await;
            eprintln!(
                "{label}: worker: {:.0} events/s rss {:.1} MB, groups of {mean_group:.1}; pgbench {:.0} tps, grouped {:.0} events/s; raw consumer {consumed:.0} msgs/s",
                worker.per_second, worker.rss_mb, limit.per_second, grouped.per_second
            );
            rows.push(row(
                format!("worker, topic of {}", args.backlog),
                format!("{:.0} events/s", worker.per_second),
                format!(
                    "pgbench, one event per transaction, {HANDLER_CLIENTS} clients: {:.0} tps",
                    limit.per_second
                ),
                ratio(worker.per_second, limit.per_second),
            ));
            rows.push(row(
                format!(
                    "… against what the worker sent: its mean group, {} at once",
                    orderflow::store::WRITE_LANES
                ),
                format!("groups of {mean_group:.1} events"),
                format!(
                    "pgbench, grouped reservation of {:.0}, {} clients: {:.0} events/s",
                    mean_group.round().max(1.0),
                    orderflow::store::WRITE_LANES,
                    grouped.per_second
                ),
                ratio(worker.per_second, grouped.per_second),
            ));
            rows.push(row(
                "… against consuming alone".into(),
                String::new(),
                format!("a bare rdkafka consumer with the worker's fetch settings: {consumed:.0} msgs/s"),
                ratio(worker.per_second, consumed),
            ));
            rows.push(row(
                "CPU per event, worker".into(),
                format!(
                    "worker process {:.0} µs, PostgreSQL {:.0} µs",
                    worker.cpu.process_us, worker.cpu.postgres_us
                ),
                format!(
                    "pgbench: PostgreSQL {:.0} µs (one event), {:.0} µs (grouped)",
                    limit.postgres_us, grouped.postgres_us
                ),
                String::new(),
            ));
            report
                .rss
                .push(format!("worker {:.1} MB (backlog)", worker.rss_mb));
        }
        "lifecycle" => {
            let broker = clusters.broker(on, Nodes::Replicated).await;
            let rate = args.lifecycle_rate;
            let life = fixed_rate(rate, args.seconds, 1, broker).await;
            eprintln!(
                "{label}: lifecycle {rate}/s: create→Reserved p99 {:.1} ms, Paid→AwaitingShipment p99 {:.1} ms, Shipped→Fulfilled p99 {:.1} ms; driver p99 {:.1} / {:.1} ms; rss api {:.1} worker {:.1} MB",
                life.reserved.p99, life.paid_to_awaiting.p99, life.shipped_to_fulfilled.p99,
                life.react_pay.p99, life.react_ship.p99, life.api_rss_mb, life.worker_rss_mb
            );
            let target = match on {
                On::Mock => "",
                On::Kafka => "target p99 ≤ 15 ms",
            };
            rows.push(row(
                format!("lifecycle at {rate}/s: API create (every order paid and shipped by the driver as soon as its status allows)"),
                format!("{} orders, {}", life.orders, ms(life.api)),
                String::new(),
                String::new(),
            ));
            for (step, spread) in [
                ("create → Reserved", life.reserved),
                ("Paid → AwaitingShipment", life.paid_to_awaiting),
                ("Shipped → Fulfilled", life.shipped_to_fulfilled),
            ] {
                rows.push(row(
                    format!("lifecycle at {rate}/s: {step}"),
                    ms(spread),
                    target.into(),
                    String::new(),
                ));
            }
            rows.push(row(
                format!("lifecycle at {rate}/s: the driver's reaction, Reserved → payment sent / AwaitingShipment → shipment sent"),
                format!(
                    "p50 {:.1} / {:.1} ms, p99 {:.1} / {:.1} ms, max {:.1} / {:.1} ms",
                    life.react_pay.p50, life.react_ship.p50, life.react_pay.p99,
                    life.react_ship.p99, life.react_pay.max, life.react_ship.max
                ),
                String::new(),
                String::new(),
            ));
            rows.push(row(
                format!("lifecycle at {rate}/s: create → Fulfilled (driver included)"),
                ms(life.fulfilled),
                String::new(),
                String::new(),
            ));
            rows.push(row(
                format!("CPU per order, lifecycle at {rate}/s"),
                format!(
                    "API + worker {:.0} µs, PostgreSQL {:.0} µs",
                    life.cpu.process_us, life.cpu.postgres_us
                ),
                String::new(),
                String::new(),
            ));
            report.rss.push(format!(
                "API {:.1} MB / worker {:.1} MB (lifecycle at {rate}/s)",
                life.api_rss_mb, life.worker_rss_mb
            ));
        }
        other => unreachable!("phase {other}"),
    }
    report.rows.entry(phase).or_default().extend(rows);
}

/// The summary: a column group (pipeline, limit, ratio) per broker, one
/// line per figure.
fn print_summary(reports: &[(On, Report)]) {
    let several = reports.len() > 1;
    let mut figures: Vec<String> = Vec::new();
    for phase in PHASES {
        for (_, report) in reports {
            for r in report.rows.get(phase).into_iter().flatten() {
                if !figures.contains(&r.figure) {
                    figures.push(r.figure.clone());
                }
            }
        }
    }
    let cells = |report: &Report, figure: &str| -> [String; 3] {
        if figure == "peak RSS" {
            return [
                report.rss.join(", "),
                "target ≤ 50 MB".into(),
                String::new(),
            ];
        }
        PHASES
            .iter()
            .flat_map(|p| report.rows.get(p).into_iter().flatten())
            .find(|r| r.figure == figure)
            .map(|r| r.cells.clone())
            .unwrap_or_default()
    };
    figures.push("peak RSS".into());
    println!();
    for (on, _) in reports {
        match on {
            On::Mock => println!("{}: librdkafka's mock cluster, in the benchmark's process", on.title()),
            On::Kafka => println!(
                "{}: api, relay, worker on a single node (replication 1); latency, lifecycle on 3 nodes (replication 3, acks=all, min.insync.replicas=2)",
                on.title()
            ),
        }
    }
    println!();
    let mut header = vec!["figure".to_string()];
    for (on, _) in reports {
        for column in ["pipeline", "limit", "ratio"] {
            header.push(if several {
                format!("{column} ({})", on.title())
            } else {
                column.to_string()
            });
        }
    }
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for figure in figures {
        let mut line = vec![figure.clone()];
        for (_, report) in reports {
            line.extend(cells(report, &figure));
        }
        println!("| {} |", line.join(" | "));
    }
    println!();
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let started = Instant::now();
        eprintln!(
            "orderflow pipeline benchmark: PostgreSQL {}, rate {}/s (lifecycle {}/s) for {} s, {} clients, backlog {}, on {}",
            common::pg_admin_url(),
            args.rate,
            args.lifecycle_rate,
            args.seconds,
            args.concurrency,
            args.backlog,
            args.brokers
                .iter()
                .map(|b| b.title())
                .collect::<Vec<_>>()
                .join(" and ")
        );
        if args.brokers.contains(&On::Kafka) {
            // The harness's nodes start with a small heap, SerialGC and
            // the C1 compiler only unless this says otherwise. Apache
            // Kafka's own settings (G1, the full JIT) put create → Reserved
            // at 600-800 ms on a shared 2-core machine in a 10 s run,
            // against 13 ms with the harness's: say which ran.
            eprintln!(
                "Apache Kafka JVM options: {}",
                std::env::var("ORDERFLOW_KAFKA_JVM_OPTS")
                    .unwrap_or_else(|_| "the test harness's (ORDERFLOW_KAFKA_JVM_OPTS unset)".into())
            );
        }
        let mut clusters = Clusters::default();
        let mut reports = Vec::new();
        for on in args.brokers.clone() {
            let mut report = Report::default();
            // The single-node phases first: the single node stops before
            // the 3-node cluster starts, so no idle JVM shares the cores
            // with the phases measured there.
            for phase in ["api", "relay", "worker"] {
                if args.runs(phase) {
                    run_phase(phase, &args, on, &mut clusters, &mut report).await;
                }
            }
            clusters.release_single();
            for phase in ["latency", "lifecycle"] {
                if args.runs(phase) {
                    run_phase(phase, &args, on, &mut clusters, &mut report).await;
                }
            }
            reports.push((on, report));
        }
        print_summary(&reports);
        eprintln!("benchmark took {:.0} s", started.elapsed().as_secs_f64());
    });
}
