//! The proof harness: the shared cluster harness (`tests/common/cluster.rs`:
//! a broker, a fresh PostgreSQL database behind a TCP proxy that can cut it
//! off, `serve-api` and `run-worker` processes of the built binary) with a
//! stocked product, a load driver that takes orders through their whole
//! life over the public API, and a checker that compares what the API
//! accepted with the database and the topics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};

use super::common::proxy::TcpProxy;
use super::common::wait::{eventually_every, poll};
use super::common::{self, Cluster, Metrics, Received, Role, TestBroker, LIFECYCLE};

/// A tracked product with stock for every order: the reservation is the
/// effect whose duplication would show in the numbers.
pub const PRODUCT: &str = "proof-widget";
pub const STOCK: i64 = 1_000_000;

pub struct Harness {
    /// `<broker>/<scenario>`, e.g. `apache/9-leader-sigkill`, with the
    /// group setup when not the default's: `apache/5-rebalance-eager`.
    pub name: String,
    pub cluster: Cluster,
    pub started: Instant,
    /// The group setup the workers were started with, when the scenario
    /// chose one ([`Harness::start_under`]); otherwise the engine's default.
    pub setup: Option<GroupSetup>,
    /// What the orders topic still holds when the checker reads it.
    pub topic: TopicHistory,
    /// Orders re-driven by processes [`Harness::stop`] took away (their
    /// /metrics went with them).
    redriven_by_stopped: f64,
}

/// What the orders topic holds at the end of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicHistory {
    /// Every event published since the start.
    Whole,
    /// Records were deleted from the start of its partitions: an order's
    /// earliest events may be gone.
    Truncated,
}

/// The reconciler's counter of events published again.
const REDRIVEN: &str = "orderflow_orders_redriven_total";

/// How the workers share the orders topic's partitions (issue #23).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSetup {
    /// The classic protocol, `range` assignor: every partition revoked at
    /// every membership change.
    Eager,
    /// The classic protocol, `cooperative-sticky` assignor (the engine's
    /// default): only the partitions that move are revoked.
    Cooperative,
    /// KIP-848's consumer protocol, assignment by the broker; its session
    /// timeout is the cluster's `group.consumer.session.timeout.ms` (6 s on
    /// the test cluster, as the classic `Worker.SessionTimeoutMs` of the
    /// tests).
    Kip848,
}

impl GroupSetup {
    pub fn label(self) -> &'static str {
        match self {
            GroupSetup::Eager => "eager",
            GroupSetup::Cooperative => "cooperative",
            GroupSetup::Kip848 => "kip848",
        }
    }

    /// The workers' settings for it.
    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            GroupSetup::Eager => &[
                ("Worker__GroupProtocol", "classic"),
                ("Worker__Assignor", "range"),
            ],
            GroupSetup::Cooperative => &[
                ("Worker__GroupProtocol", "classic"),
                ("Worker__Assignor", "cooperative-sticky"),
            ],
            GroupSetup::Kip848 => &[("Worker__GroupProtocol", "consumer")],
        }
    }

    /// The scenario's name under it: the default setup's keeps the plain
    /// name (PROOF.md's main tables), the others carry theirs.
    fn scenario(self, name: &str) -> String {
        match self {
            GroupSetup::Cooperative => name.to_string(),
            other => format!("{name}-{}", other.label()),
        }
    }
}

impl Harness {
    /// `apis` APIs and `workers` workers on `broker`, PostgreSQL behind a
    /// proxy, the product stocked.
    pub async fn start(name: &str, broker: TestBroker, apis: usize, workers: usize) -> Self {
        Self::start_with(name, broker, apis, workers, &[]).await
    }

    /// As [`Harness::start`], the workers in group setup `setup`, which the
    /// scenario's name and figures carry.
    pub async fn start_under(
        name: &str,
        broker: TestBroker,
        apis: usize,
        workers: usize,
        setup: GroupSetup,
    ) -> Self {
        // The comparison is Apache Kafka's; on the mock cluster the
        // scenario keeps its plain name.
        let scenario = if broker.is_apache() {
            setup.scenario(name)
        } else {
            name.to_string()
        };
        let mut harness = Self::start_with(&scenario, broker, apis, workers, setup.env()).await;
        harness.setup = Some(setup);
        harness
    }

    /// As [`Harness::start`], every process with the settings `env` on
    /// top.
    pub async fn start_with(
        name: &str,
        broker: TestBroker,
        apis: usize,
        workers: usize,
        env: &[(&str, &str)],
    ) -> Self {
        let started = Instant::now();
        let name = format!(
            "{}/{name}",
            if broker.is_apache() { "apache" } else { "mock" }
        );
        let mut builder = Cluster::builder(broker)
            .pg_proxy()
            .env("Database__MaxConnections", "5")
            .env("Worker__MaxWorkers", "4")
            .env("Worker__LagThreshold", "50")
            .env("Worker__Retry__MaxBackoffMs", "1000");
        for (k, v) in env {
            builder = builder.env(k, v);
        }
        let cluster = builder.apis(apis).workers(workers).start().await;
        let stocked = cluster
            .http
            .put(format!("{}/api/inventory/{PRODUCT}", cluster.base()))
            .json(&json!({"onHand": STOCK}))
            .send()
            .await
            .expect("PUT inventory");
        assert_eq!(stocked.status(), 200);
        Self {
            name,
            cluster,
            started,
            setup: None,
            topic: TopicHistory::Whole,
            redriven_by_stopped: 0.0,
        }
    }

    /// SIGTERMs member `i` (see [`Cluster::stop`]), keeping the count of
    /// orders it re-drove for the figures.
    pub async fn stop(&mut self, i: usize) {
        let base = self.cluster.members[i].base.clone();
        let metrics = Metrics::scrape(&self.cluster.http, &base).await;
        self.redriven_by_stopped += metrics.total(REDRIVEN);
        self.cluster.stop(i);
    }

    /// Orders re-driven by the reconciler in every process of the run
    /// (those stopped by [`Harness::stop`] and those still running; a
    /// SIGKILLed process's count is gone).
    async fn redriven(&self) -> usize {
        let mut total = self.redriven_by_stopped;
        for member in self.cluster.members.iter().filter(|m| m.alive) {
            total += Metrics::scrape(&self.cluster.http, &member.base)
                .await
                .total(REDRIVEN);
        }
        total as usize
    }

    pub fn broker(&self) -> &TestBroker {
        &self.cluster.broker
    }

    /// The proxy between the processes and PostgreSQL.
    pub fn pg_proxy(&self) -> &TcpProxy {
        self.cluster
            .pg_proxy
            .as_ref()
            .expect("started with a proxy")
    }
}

// ---------------------------------------------------------------------------
// Load driver
// ---------------------------------------------------------------------------

/// What the driver saw of one order: its id once the API accepted it, and
/// whether the driver saw it through to Fulfilled.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub id: Option<String>,
    pub seen_fulfilled: bool,
}

pub struct Driver {
    http: reqwest::Client,
    bases: Arc<RwLock<Vec<String>>>,
    next: AtomicUsize,
    scenario: String,
    /// Set when an order is given up: the pipeline is stuck, and starting
    /// more orders would only make the scenario wait out its patience again
    /// for each of them.
    gave_up: std::sync::atomic::AtomicBool,
    /// How long one step may wait for the pipeline (faults included).
    patience: Duration,
}

enum Answer {
    Status(u16, Value),
    Unreachable,
}

impl Driver {
    pub fn new(harness: &Harness, patience: Duration) -> Arc<Self> {
        Arc::new(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            bases: harness.cluster.bases.clone(),
            next: AtomicUsize::new(0),
            gave_up: Default::default(),
            scenario: harness.name.replace('/', "-"),
            patience,
        })
    }

    /// Round robin over the live APIs, as a load balancer would.
    fn base(&self) -> Option<String> {
        let bases = self.bases.read().expect("bases");
        (!bases.is_empty())
            .then(|| bases[self.next.fetch_add(1, Ordering::Relaxed) % bases.len()].clone())
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Answer {
        let Some(base) = self.base() else {
            return Answer::Unreachable;
        };
        let mut request = self.http.request(method, format!("{base}{path}"));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                Answer::Status(status, response.json().await.unwrap_or(Value::Null))
            }
            Err(_) => Answer::Unreachable,
        }
    }

    /// Retries through outages until the API answers for good: 2xx, or a
    /// 4xx that is the API's final word.
    async fn until_answered(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Option<(u16, Value)> {
        eventually_every(self.patience, Duration::from_millis(200), || async {
            match self.call(method.clone(), path, body, key).await {
                Answer::Status(status, value) if status < 500 => Some((status, value)),
                _ => None,
            }
        })
        .await
    }

    /// Waits until the order has reached `status` or gone past it: after a
    /// lost answer, the step the driver retried may already be followed
    /// by the worker's (Paid by AwaitingShipment, Shipped by Fulfilled).
    /// Waiting for the exact status then waited out the driver's patience
    /// and reported the order lost.
    async fn reached(&self, id: &str, status: &str) -> bool {
        let wanted = LIFECYCLE.iter().position(|s| *s == status);
        let reached = |current: &str| match (wanted, LIFECYCLE.iter().position(|s| *s == current)) {
            (Some(wanted), Some(current)) => current >= wanted,
            _ => current == status,
        };
        let path = format!("/api/orders/{id}");
        eventually_every(self.patience, Duration::from_millis(150), || async {
            match self.call(reqwest::Method::GET, &path, None, None).await {
                Answer::Status(200, order) if order["status"].as_str().is_some_and(reached) => {
                    Some(())
                }
                _ => None,
            }
        })
        .await
        .is_some()
    }

    /// A POST that moves the order forward: a 409 after a retry means an
    /// earlier attempt went through (its answer was lost).
    async fn advance(&self, id: &str, step: &str, body: Value, reached: &str) -> bool {
        match self
            .until_answered(
                reqwest::Method::POST,
                &format!("/api/orders/{id}/{step}"),
                Some(&body),
                None,
            )
            .await
        {
            Some((200, _)) => true,
            Some((409, _)) => self.reached(id, reached).await,
            _ => false,
        }
    }

    /// One order from creation to Fulfilled, through whatever faults.
    pub async fn lifecycle(&self, n: usize) -> Lifecycle {
        if self.gave_up.load(Ordering::Relaxed) {
            return Lifecycle {
                id: None,
                seen_fulfilled: false,
            };
        }
        let key = format!("proof-{}-{n}", self.scenario);
        let body = json!({
            "customerName": format!("Customer {n}"),
            "customerEmail": format!("c{n}@example.test"),
            "items": [{"productName": PRODUCT, "quantity": 1, "unitPrice": "2.50"}],
        });
        let created = self
            .until_answered(
                reqwest::Method::POST,
                "/api/orders",
                Some(&body),
                Some(&key),
            )
            .await;
        let Some((201, order)) = created else {
            return Lifecycle {
                id: None,
                seen_fulfilled: false,
            };
        };
        let id = order["id"].as_str().expect("id").to_string();
        let seen_fulfilled = self.reached(&id, "Reserved").await
            && self
                .advance(
                    &id,
                    "payments",
                    json!({"paymentId": format!("pay-{n}")}),
                    "Paid",
                )
                .await
            && self.reached(&id, "AwaitingShipment").await
            && self
                .advance(
                    &id,
                    "shipments",
                    json!({"trackingNumber": format!("T-{n}")}),
                    "Shipped",
                )
                .await
            && self.reached(&id, "Fulfilled").await;
        if !seen_fulfilled {
            self.gave_up.store(true, Ordering::Relaxed);
        }
        Lifecycle {
            id: Some(id),
            seen_fulfilled,
        }
    }

    /// `orders` lifecycles, started at `rate` per second, `concurrency` at
    /// most at once.
    pub async fn run(
        self: &Arc<Self>,
        orders: usize,
        rate: u64,
        concurrency: usize,
    ) -> Vec<Lifecycle> {
        let interval = Duration::from_micros(1_000_000 / rate.max(1));
        let started = Instant::now();
        stream::iter(0..orders)
            .map(|n| {
                let driver = self.clone();
                async move {
                    let due = started + interval * n as u32;
                    tokio::time::sleep_until(due.into()).await;
                    driver.lifecycle(n).await
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }
}

// ---------------------------------------------------------------------------
// Checker
// ---------------------------------------------------------------------------

#[derive(Debug, Default, serde::Serialize)]
pub struct Figures {
    pub scenario: String,
    pub accepted: usize,
    pub fulfilled: usize,
    pub lost: usize,
    pub duplicated_effects: usize,
    pub out_of_order: usize,
    pub poison_sent: usize,
    pub poison_dead_lettered: usize,
    pub max_delay_ms: i64,
    /// Fulfilment messages published again with the same event id.
    pub redelivered: usize,
    /// Orders whose event the reconciler published again.
    pub redriven: usize,
    pub seconds: f64,
    /// The group setup the scenario chose (`eager`, `cooperative`,
    /// `kip848`); absent: the engine's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_setup: Option<String>,
    /// The rebalancing figures (reported, never asserted).
    #[serde(flatten)]
    pub rebalancing: Rebalancing,
}

/// How the pipeline's steps (Pending → Reserved, Paid → AwaitingShipment,
/// Shipped → Fulfilled) fared while partitions moved between workers. A
/// partition *moved* when the workers' logs (dead ones' included) show it
/// in "partitions assigned" more than once: under eager every rebalance
/// assigns every partition again, so every one moves.
#[derive(Debug, Default, serde::Serialize)]
pub struct Rebalancing {
    /// The steps of every order.
    pub steps: usize,
    /// The p99 of every step's delay.
    pub p99_delay_ms: Option<i64>,
    /// The steps of the orders whose partition (that of their events)
    /// never moved, and their p99: none when every partition moved.
    pub unmoved_steps: usize,
    pub p99_delay_unmoved_ms: Option<i64>,
    /// The steps during which the order's partition stayed where it was:
    /// assigned when the step began (not waiting for the group's first
    /// assignment), not moved before it ended; and their p99.
    pub undisturbed_steps: usize,
    pub p99_delay_undisturbed_ms: Option<i64>,
    /// Partitions that moved at least once.
    pub partitions_moved: usize,
    /// Assignments of a partition after its first, over all partitions.
    pub partition_moves: usize,
}

impl Figures {
    pub fn summary(&self) -> String {
        format!(
            "PROOF {}: accepted={} fulfilled={} lost={} duplicated_effects={} out_of_order={} \
             poison_in_dlq={}/{} max_delay_ms={} redelivered={} redriven={} \
             setup={} p99_delay_ms={} p99_delay_unmoved_ms={} (of {} steps) \
             p99_delay_undisturbed_ms={} (of {} steps) steps={} partitions_moved={} \
             partition_moves={} ({:.0} s)",
            self.scenario,
            self.accepted,
            self.fulfilled,
            self.lost,
            self.duplicated_effects,
            self.out_of_order,
            self.poison_dead_lettered,
            self.poison_sent,
            self.max_delay_ms,
            self.redelivered,
            self.redriven,
            self.group_setup.as_deref().unwrap_or("default"),
            or_none(self.rebalancing.p99_delay_ms),
            or_none(self.rebalancing.p99_delay_unmoved_ms),
            self.rebalancing.unmoved_steps,
            or_none(self.rebalancing.p99_delay_undisturbed_ms),
            self.rebalancing.undisturbed_steps,
            self.rebalancing.steps,
            self.rebalancing.partitions_moved,
            self.rebalancing.partition_moves,
            self.seconds
        )
    }

    /// Prints the summary, keeps the figures for PROOF.md, and asserts the
    /// guarantees.
    pub fn report_and_assert(&self) {
        println!("{}", self.summary());
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/proof");
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(json) = serde_json::to_string_pretty(self) {
            let file = format!("{}.json", self.scenario.replace('/', "-"));
            let _ = std::fs::write(dir.join(file), json);
        }
        assert!(self.accepted > 0, "{}", self.summary());
        assert_eq!(self.lost, 0, "{}", self.summary());
        assert_eq!(self.fulfilled, self.accepted, "{}", self.summary());
        assert_eq!(self.duplicated_effects, 0, "{}", self.summary());
        assert_eq!(self.out_of_order, 0, "{}", self.summary());
        assert_eq!(
            self.poison_dead_lettered,
            self.poison_sent,
            "{}",
            self.summary()
        );
    }
}

fn or_none(ms: Option<i64>) -> String {
    ms.map_or_else(|| "none".to_string(), |ms| ms.to_string())
}

const EVENTS: [&str; 3] = ["OrderCreated", "OrderPaid", "OrderShipped"];

/// What a failed run needs to be understood: the database's sessions (a
/// lock held by a session nobody drives would stop an order for good) and
/// every line the processes logged about each order that did not finish.
async fn explain_lost(harness: &Harness, db: &mut PgConnection, lost: &[&str]) {
    let sessions = sqlx::query(
        "SELECT pid, state, wait_event_type, wait_event, \
         EXTRACT(EPOCH FROM now() - xact_start)::float8, left(query, 120) \
         FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut *db)
    .await
    .unwrap_or_default();
    for r in sessions {
        println!(
            "session {:?} {:?} waits {:?}/{:?}, transaction open {:?} s: {:?}",
            r.get::<i32, _>(0),
            r.get::<Option<String>, _>(1),
            r.get::<Option<String>, _>(2),
            r.get::<Option<String>, _>(3),
            r.get::<Option<f64>, _>(4),
            r.get::<Option<String>, _>(5)
        );
    }
    for member in &harness.cluster.members {
        let log = member.process.log_text();
        for id in lost {
            for line in log.lines().filter(|l| l.contains(id)).take(20) {
                println!("{id} {:?}: {line}", member.role);
            }
        }
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        for line in &warnings[warnings.len().saturating_sub(15)..] {
            println!("{:?} last warnings: {line}", member.role);
        }
    }
}

/// Every order's status in the database, by id.
async fn order_statuses(db: &mut PgConnection) -> HashMap<String, String> {
    sqlx::query("SELECT id::text, status FROM orders")
        .fetch_all(db)
        .await
        .expect("orders")
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// What the timelines say.
struct Timelines {
    /// Statuses entered more than once.
    duplicated: usize,
    /// Orders whose distinct statuses are not a prefix of the chain.
    out_of_order: usize,
    /// The longest step the pipeline itself took.
    max_delay_ms: i64,
    /// Every step the pipeline itself took.
    steps: Vec<Step>,
    /// Orders that got a reservation.
    reserved_orders: i64,
}

type At = chrono::DateTime<chrono::Utc>;

/// One step the pipeline took for an order: from the status the API set to
/// the one the worker set.
struct Step {
    order: String,
    from: At,
    to: At,
}

impl Step {
    fn ms(&self) -> i64 {
        (self.to - self.from).num_milliseconds()
    }
}

/// Timelines: exactly the forward chain, each status once.
async fn read_timelines(db: &mut PgConnection) -> Timelines {
    let mut timelines: BTreeMap<String, Vec<(String, At)>> = BTreeMap::new();
    for row in sqlx::query("SELECT order_id::text, status, at FROM order_timeline ORDER BY id")
        .fetch_all(db)
        .await
        .expect("timeline")
    {
        timelines
            .entry(row.get(0))
            .or_default()
            .push((row.get(1), row.get(2)));
    }
    let mut figures = Timelines {
        duplicated: 0,
        out_of_order: 0,
        max_delay_ms: 0,
        steps: Vec::new(),
        reserved_orders: 0,
    };
    for (order, steps) in &timelines {
        let names: Vec<&str> = steps.iter().map(|(s, _)| s.as_str()).collect();
        let distinct: HashSet<&str> = names.iter().copied().collect();
        figures.duplicated += names.len() - distinct.len();
        if names.len() == distinct.len()
            && names[..] != LIFECYCLE[..names.len().min(LIFECYCLE.len())]
        {
            figures.out_of_order += 1;
        }
        let at = |s: &str| steps.iter().find(|(n, _)| n == s).map(|(_, t)| *t);
        // The pipeline's own steps: what the worker did after the API.
        for (from, to) in [
            ("Pending", "Reserved"),
            ("Paid", "AwaitingShipment"),
            ("Shipped", "Fulfilled"),
        ] {
            if let (Some(from), Some(to)) = (at(from), at(to)) {
                let step = Step {
                    order: order.clone(),
                    from,
                    to,
                };
                figures.max_delay_ms = figures.max_delay_ms.max(step.ms());
                figures.steps.push(step);
            }
        }
    }
    figures.reserved_orders = timelines
        .values()
        .filter(|s| s.iter().any(|(n, _)| n == "Reserved"))
        .count() as i64;
    figures
}

/// Every "partitions assigned" the workers logged (the dead ones'
/// included), as (when, partition), oldest first.
fn assignments(harness: &Harness) -> Vec<(At, i32)> {
    let mut all = Vec::new();
    for member in harness
        .cluster
        .members
        .iter()
        .filter(|m| m.role != Role::Api)
    {
        for line in member.process.log_lines("partitions assigned") {
            let when = line["timestamp"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .unwrap_or_else(|| panic!("no RFC 3339 timestamp in {line}"))
                .with_timezone(&chrono::Utc);
            all.extend(
                partitions_of(&line["partitions"])
                    .into_iter()
                    .map(|p| (when, p)),
            );
        }
    }
    all.sort();
    all
}

/// A logged partition list: `"[0, 1]"` (a `Debug` field) or `[0, 1]`.
fn partitions_of(field: &Value) -> Vec<i32> {
    let parse = |p: &str| -> i32 {
        p.trim()
            .parse()
            .unwrap_or_else(|_| panic!("a partition in {field}"))
    };
    match field {
        Value::Array(items) => items.iter().map(|p| parse(&p.to_string())).collect(),
        Value::String(list) => list
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(parse)
            .collect(),
        _ => panic!("a partition list: {field}"),
    }
}

/// Per partition, when it was assigned, oldest first: the assignment it
/// had when the load began, then each move. `assignments` are oldest
/// first; those up to `load_began` are the group forming (the workers
/// start one after the other, before any order), not moves.
fn assigned_at(assignments: &[(At, i32)], load_began: Option<At>) -> BTreeMap<i32, Vec<At>> {
    let mut assigned: BTreeMap<i32, Vec<At>> = BTreeMap::new();
    for (when, p) in assignments {
        let at = assigned.entry(*p).or_default();
        if load_began.is_some_and(|began| *when <= began) {
            at.clear();
        }
        at.push(*when);
    }
    assigned
}

/// The nearest-rank 99th percentile.
fn p99(mut ms: Vec<i64>) -> Option<i64> {
    ms.sort_unstable();
    let rank = (ms.len() * 99).div_ceil(100);
    rank.checked_sub(1).map(|i| ms[i])
}

/// The rebalancing figures of `steps`, an order's partition being that of
/// its events on the orders topic (an order with none left there counts in
/// the p99 of all steps only), `assigned` from [`assigned_at`].
fn rebalancing(
    steps: &[Step],
    events: &[Received],
    assigned: &BTreeMap<i32, Vec<At>>,
) -> Rebalancing {
    let mut partition_of: HashMap<&str, i32> = HashMap::new();
    for e in events {
        partition_of.entry(e.key.as_str()).or_insert(e.partition);
    }
    let assigned_of = |s: &Step| -> Option<&[At]> {
        let p = partition_of.get(s.order.as_str())?;
        Some(assigned.get(p).map_or(&[][..], Vec::as_slice))
    };
    let unmoved: Vec<i64> = steps
        .iter()
        .filter(|s| assigned_of(s).is_some_and(|at| at.len() <= 1))
        .map(Step::ms)
        .collect();
    // Undisturbed: its partition had an owner when the step began (a
    // step waiting for the group's first assignment waits for no
    // rebalance) and did not move before the step ended.
    let undisturbed: Vec<i64> = steps
        .iter()
        .filter(|s| {
            assigned_of(s).is_some_and(|at| {
                at.first().is_some_and(|first| *first <= s.from)
                    && !at[1..].iter().any(|t| s.from <= *t && *t <= s.to)
            })
        })
        .map(Step::ms)
        .collect();
    Rebalancing {
        steps: steps.len(),
        p99_delay_ms: p99(steps.iter().map(Step::ms).collect()),
        unmoved_steps: unmoved.len(),
        p99_delay_unmoved_ms: p99(unmoved),
        undisturbed_steps: undisturbed.len(),
        p99_delay_undisturbed_ms: p99(undisturbed),
        partitions_moved: assigned.values().filter(|at| at.len() > 1).count(),
        partition_moves: assigned.values().map(|at| at.len().saturating_sub(1)).sum(),
    }
}

/// What the figures do not show: when each partition was assigned and the slowest
/// steps, in seconds after the scenario started.
fn print_assignments_and_slowest_steps(
    harness: &Harness,
    steps: &[Step],
    events: &[Received],
    assigned: &BTreeMap<i32, Vec<At>>,
) {
    let started = chrono::Utc::now()
        - chrono::Duration::from_std(harness.started.elapsed()).unwrap_or_default();
    let since = |t: &At| (*t - started).num_milliseconds() as f64 / 1000.0;
    let assigned: Vec<String> = assigned
        .iter()
        .map(|(p, at)| {
            let at: Vec<String> = at.iter().map(|t| format!("{:.1}", since(t))).collect();
            format!("p{p} [{}]", at.join(", "))
        })
        .collect();
    println!(
        "{}: partitions assigned at (s; the one held when the load began, then each move): {}",
        harness.name,
        assigned.join("; ")
    );
    let partition_of: HashMap<&str, i32> = events
        .iter()
        .map(|e| (e.key.as_str(), e.partition))
        .collect();
    let mut slowest: Vec<&Step> = steps.iter().collect();
    slowest.sort_by_key(|s| std::cmp::Reverse(s.ms()));
    let slowest: Vec<String> = slowest
        .iter()
        .take(8)
        .map(|s| {
            let p = partition_of
                .get(s.order.as_str())
                .map_or("?".to_string(), |p| format!("p{p}"));
            format!(
                "{:.1} s on {p} from {:.1} s",
                s.ms() as f64 / 1000.0,
                since(&s.from)
            )
        })
        .collect();
    println!("{}: slowest steps: {}", harness.name, slowest.join("; "));
}

/// Stock: one unit reserved per order that got a reservation, none created
/// or destroyed; every committed event published. Returns the reservations
/// that were duplicated (or missing).
async fn check_stock_and_outbox(db: &mut PgConnection, reserved_orders: i64) -> usize {
    let row = sqlx::query("SELECT on_hand, reserved FROM inventory WHERE product_name = $1")
        .bind(PRODUCT)
        .fetch_one(&mut *db)
        .await
        .expect("inventory");
    let (on_hand, reserved): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        on_hand + reserved,
        STOCK,
        "stock neither created nor destroyed"
    );
    let unpublished: i64 = sqlx::query("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&mut *db)
        .await
        .expect("outbox")
        .get(0);
    assert_eq!(unpublished, 0, "every committed event published");
    (reserved - reserved_orders).unsigned_abs() as usize
}

/// The orders topic: per order, its events on one partition in order (by
/// distinct event id: a duplicate delivery, or the reconciler's re-drive,
/// is the same event). On a truncated topic an order's earliest events may
/// be gone: what is left must still be in order. Returns the orders for
/// which that does not hold.
fn events_out_of_order(
    events: &[Received],
    accepted: &[&str],
    statuses: &HashMap<String, String>,
    history: TopicHistory,
) -> usize {
    let mut by_order: HashMap<&str, Vec<&Received>> = HashMap::new();
    for e in events {
        by_order.entry(e.key.as_str()).or_default().push(e);
    }
    let mut out_of_order = 0;
    for id in accepted {
        let Some(evs) = by_order.get(id) else {
            continue;
        };
        let mut seen = HashSet::new();
        let types: Vec<&str> = evs
            .iter()
            .filter(|e| seen.insert(e.headers.get("ce_id").cloned().unwrap_or_default()))
            .map(|e| e.headers.get("ce_type").map(String::as_str).unwrap_or(""))
            .collect();
        // An order that stopped early (counted as lost) has a prefix.
        let in_order = match history {
            TopicHistory::Whole if statuses.get(*id).is_some_and(|s| s == "Fulfilled") => {
                types == EVENTS
            }
            TopicHistory::Whole => EVENTS.starts_with(&types),
            TopicHistory::Truncated => is_subsequence(&types, &EVENTS),
        };
        if !in_order || evs.iter().any(|e| e.partition != evs[0].partition) {
            out_of_order += 1;
        }
    }
    out_of_order
}

/// Whether `part` is `whole` with some elements left out (none repeated,
/// none reordered).
fn is_subsequence(part: &[&str], whole: &[&str]) -> bool {
    let mut rest = whole.iter();
    part.iter().all(|p| rest.any(|w| w == p))
}

/// The fulfilment topic: one OrderFulfilled per order. By event id: the
/// relay marks a row only after the broker's ack, so a database cut between
/// the two publishes the same event again (at least once); consumers drop
/// it by `ce_id`. Two *events* for one order would be a duplicated effect.
/// Returns (redelivered, duplicated).
fn fulfilment_figures(fulfilments: &[Received]) -> (usize, usize) {
    let mut per_order: HashMap<&str, HashSet<String>> = HashMap::new();
    for f in fulfilments {
        let id = f.headers.get("ce_id").cloned().unwrap_or_default();
        per_order.entry(f.key.as_str()).or_default().insert(id);
    }
    let distinct: usize = per_order.values().map(HashSet::len).sum();
    let duplicated = per_order
        .values()
        .map(|ids| ids.len().saturating_sub(1))
        .sum::<usize>();
    (fulfilments.len() - distinct, duplicated)
}

/// What happened to the lost orders: dead-lettered (and why), or never
/// handled.
fn explain_lost_letters(letters: &[Received], lost: &[&str], statuses: &HashMap<String, String>) {
    for id in lost {
        let why: Vec<&str> = letters
            .iter()
            .filter(|l| l.key == *id)
            .filter_map(|l| l.headers.get("x-error").map(String::as_str))
            .collect();
        println!(
            "lost {id}: status {:?}, dead-lettered: {why:?}",
            statuses.get(*id)
        );
    }
}

/// How many of the poison messages (by key) are on the dead-letter topic.
fn poison_dead_lettered(harness: &Harness, poison_keys: &[String]) -> usize {
    if poison_keys.is_empty() {
        return 0;
    }
    let broker = harness.broker();
    let letters = common::read_topic(
        broker.bootstrap_servers(),
        &broker.names.dead_letters,
        poison_keys.len(),
        Duration::from_secs(60),
    );
    let keys: HashSet<&str> = letters.iter().map(|l| l.key.as_str()).collect();
    poison_keys
        .iter()
        .filter(|k| keys.contains(k.as_str()))
        .count()
}

/// Compares what the driver was promised with the database and topics.
/// `poison_keys` are the message keys of poison messages sent.
pub async fn check(harness: &Harness, lifecycles: &[Lifecycle], poison_keys: &[String]) -> Figures {
    let accepted: Vec<&str> = lifecycles.iter().filter_map(|l| l.id.as_deref()).collect();
    // Straight to PostgreSQL: the proxy may still be cut.
    let mut db = PgConnection::connect(&harness.cluster.db.url)
        .await
        .expect("checker connects");

    let statuses = order_statuses(&mut db).await;
    let stuck = lifecycles
        .iter()
        .filter(|l| l.id.is_some() && !l.seen_fulfilled)
        .count();
    if stuck > 0 {
        println!("{stuck} orders did not reach Fulfilled within the driver's patience");
    }
    let fulfilled_in_db = |id: &str| statuses.get(id).is_some_and(|s| s == "Fulfilled");
    let lost_ids: Vec<&str> = accepted
        .iter()
        .copied()
        .filter(|id| !fulfilled_in_db(id))
        .collect();
    if !lost_ids.is_empty() {
        explain_lost(harness, &mut db, &lost_ids).await;
    }
    let fulfilled = accepted.iter().filter(|id| fulfilled_in_db(id)).count();

    let timelines = read_timelines(&mut db).await;
    let stock_duplicated = check_stock_and_outbox(&mut db, timelines.reserved_orders).await;

    let (bootstrap, names) = (
        harness.broker().bootstrap_servers(),
        &harness.broker().names,
    );
    // A truncated topic holds what is left of it; a whole one at least
    // every accepted order's three events.
    let expected = match harness.topic {
        TopicHistory::Whole => accepted.len() * 3,
        TopicHistory::Truncated => messages_on(bootstrap, &names.orders),
    };
    let events = common::read_topic(bootstrap, &names.orders, expected, Duration::from_secs(60));
    let topic_out_of_order = events_out_of_order(&events, &accepted, &statuses, harness.topic);
    let fulfilments = common::read_topic(
        bootstrap,
        &names.fulfilment,
        accepted.len(),
        Duration::from_secs(60),
    );
    let (redelivered, fulfilment_dups) = fulfilment_figures(&fulfilments);
    let duplicated = timelines.duplicated + stock_duplicated;
    if duplicated + fulfilment_dups > 0 {
        println!(
            "duplicated effects: {duplicated} in timelines and stock, \
             {fulfilment_dups} extra OrderFulfilled events"
        );
    }
    if !lost_ids.is_empty() {
        let letters =
            common::read_topic(bootstrap, &names.dead_letters, 0, Duration::from_secs(10));
        explain_lost_letters(&letters, &lost_ids, &statuses);
    }
    let load_began = timelines.steps.iter().map(|s| s.from).min();
    let assigned = assigned_at(&assignments(harness), load_began);
    print_assignments_and_slowest_steps(harness, &timelines.steps, &events, &assigned);

    Figures {
        scenario: harness.name.clone(),
        accepted: accepted.len(),
        fulfilled,
        lost: lost_ids.len(),
        duplicated_effects: duplicated + fulfilment_dups,
        out_of_order: timelines.out_of_order + topic_out_of_order,
        poison_sent: poison_keys.len(),
        poison_dead_lettered: poison_dead_lettered(harness, poison_keys),
        max_delay_ms: timelines.max_delay_ms,
        redelivered,
        redriven: harness.redriven().await,
        seconds: harness.started.elapsed().as_secs_f64(),
        group_setup: harness.setup.map(|s| s.label().to_string()),
        rebalancing: rebalancing(&timelines.steps, &events, &assigned),
    }
}

// ---------------------------------------------------------------------------
// The orders topic's messages lost
// ---------------------------------------------------------------------------

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// `topic`'s partitions, with a consumer of group `group`.
fn partitions(bootstrap: &str, topic: &str, group: &str) -> (BaseConsumer, Vec<i32>) {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        // As the workers': should it stay in the group when it joins, the
        // workers wait for it no longer than for one of their own.
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let ids = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    (consumer, ids)
}

/// The messages `topic` holds now: each partition's high watermark less its
/// start.
pub fn messages_on(bootstrap: &str, topic: &str) -> usize {
    let group = format!("proof-{}", uuid::Uuid::new_v4());
    let (consumer, ids) = partitions(bootstrap, topic, &group);
    ids.into_iter()
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (high - low) as usize
        })
        .sum()
}

/// Where group `group` stands on each partition of `topic`: the
/// partition, its end (high watermark) and how many messages before it the
/// group has not consumed.
fn behind(consumer: &BaseConsumer, topic: &str, ids: &[i32]) -> Vec<(i32, i64, usize)> {
    let mut asked = TopicPartitionList::new();
    for p in ids {
        asked.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(asked, Duration::from_secs(10))
        .expect("the group's committed offsets");
    ids.iter()
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, *p, Duration::from_secs(10))
                .expect("watermarks");
            let at = match committed.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(at)) => at.max(low),
                _ => low,
            };
            (*p, high, (high - at).max(0) as usize)
        })
        .collect()
}

/// Each partition's end, from [`behind`].
fn ends(topic: &str, positions: &[(i32, i64, usize)]) -> TopicPartitionList {
    let mut ends = TopicPartitionList::new();
    for (p, high, _) in positions {
        ends.add_partition_offset(topic, *p, Offset::Offset(*high))
            .expect("end offset");
    }
    ends
}

/// Group `group`'s offsets on `topic` moved to the end of each partition,
/// as `kafka-consumer-groups --reset-offsets --to-latest` does while the
/// group has no member: what it had not consumed, it never will. The
/// commit comes from a member (it joins, takes every partition, commits,
/// leaves): the mock cluster refuses one from outside the group. Returns
/// how many messages it skips.
pub fn skip_to_the_end(bootstrap: &str, topic: &str, group: &str) -> usize {
    let (consumer, ids) = partitions(bootstrap, topic, group);
    let positions = behind(&consumer, topic, &ids);
    consumer.subscribe(&[topic]).expect("subscribe");
    let assigned = poll(Duration::from_secs(30), Duration::ZERO, || {
        // Polling drives the join; a message it returns is not consumed
        // (nothing is committed but the ends).
        let _ = consumer.poll(Duration::from_millis(100));
        let assignment = consumer.assignment().ok()?;
        (assignment.count() == ids.len()).then_some(())
    });
    assigned.expect("the group's only member, assigned every partition");
    consumer
        .commit(&ends(topic, &positions), CommitMode::Sync)
        .expect("commit the group's offsets at the end");
    consumer.unsubscribe();
    positions.iter().map(|(_, _, skipped)| skipped).sum()
}

/// Every record of `topic` deleted, up to the end of each partition (Apache
/// Kafka's DeleteRecords; the mock cluster does not answer it). Returns how
/// many of them group `group` had not consumed.
pub async fn delete_to_the_end(bootstrap: &str, topic: &str, group: &str) -> usize {
    let positions = tokio::task::block_in_place(|| {
        let (consumer, ids) = partitions(bootstrap, topic, group);
        behind(&consumer, topic, &ids)
    });
    let ends = ends(topic, &positions);
    let admin: AdminClient<DefaultClientContext> =
        client_config(bootstrap).create().expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let deleted = admin
        .delete_records(&ends, &options)
        .await
        .expect("DeleteRecords");
    for partition in deleted.elements() {
        if let Err(e) = partition.error() {
            panic!(
                "records of partition {} deleted: {e}",
                partition.partition()
            );
        }
    }
    positions.iter().map(|(_, _, lost)| lost).sum()
}

/// The checker's topic-order check, on topics made up for it: a mistake in
/// it would pass a wrong scenario.
#[test]
fn the_topic_order_check_accepts_a_truncated_topic_only_in_order() {
    let event = |order: &str, partition: i32, kind: &str, id: &str| Received {
        partition,
        offset: 0,
        key: order.to_string(),
        headers: HashMap::from([
            ("ce_type".to_string(), kind.to_string()),
            ("ce_id".to_string(), id.to_string()),
        ]),
        payload: Value::Null,
    };
    let statuses: HashMap<String, String> = ["whole", "tail", "redriven", "back", "split"]
        .into_iter()
        .map(|o| (o.to_string(), "Fulfilled".to_string()))
        .collect();
    let orders = |events: &[Received]| -> Vec<String> {
        let mut keys: Vec<String> = events.iter().map(|e| e.key.clone()).collect();
        keys.dedup();
        keys
    };
    let out_of_order = |events: Vec<Received>, history| {
        let keys = orders(&events);
        let accepted: Vec<&str> = keys.iter().map(String::as_str).collect();
        events_out_of_order(&events, &accepted, &statuses, history)
    };
    let whole = vec![
        event("whole", 0, "OrderCreated", "c"),
        event("whole", 0, "OrderPaid", "p"),
        event("whole", 0, "OrderShipped", "s"),
    ];
    let tail = vec![
        event("tail", 1, "OrderPaid", "p"),
        event("tail", 1, "OrderShipped", "s"),
    ];
    // A re-driven event is the same event (same id) again.
    let redriven = vec![
        event("redriven", 2, "OrderCreated", "c"),
        event("redriven", 2, "OrderCreated", "c"),
        event("redriven", 2, "OrderPaid", "p"),
    ];
    let back = vec![
        event("back", 0, "OrderPaid", "p"),
        event("back", 0, "OrderCreated", "c"),
    ];
    let split = vec![
        event("split", 0, "OrderPaid", "p"),
        event("split", 1, "OrderShipped", "s"),
    ];
    assert_eq!(out_of_order(whole.clone(), TopicHistory::Whole), 0);
    assert_eq!(out_of_order(whole, TopicHistory::Truncated), 0);
    assert_eq!(out_of_order(tail.clone(), TopicHistory::Whole), 1);
    assert_eq!(out_of_order(tail, TopicHistory::Truncated), 0);
    assert_eq!(out_of_order(redriven, TopicHistory::Truncated), 0);
    assert_eq!(out_of_order(back, TopicHistory::Truncated), 1);
    assert_eq!(out_of_order(split, TopicHistory::Truncated), 1);
}

/// The rebalancing figures, on logs and timelines made up for them.
#[test]
fn the_rebalancing_figures_tell_the_steps_of_moved_partitions_apart() {
    let t = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).expect("time");
    assert_eq!(partitions_of(&json!("[0, 3]")), vec![0, 3]);
    assert_eq!(partitions_of(&json!("[]")), Vec::<i32>::new());
    assert_eq!(partitions_of(&json!([1, 2])), vec![1, 2]);
    assert_eq!(p99((1..=100).collect()), Some(99));
    assert_eq!(p99(vec![7]), Some(7));
    assert_eq!(p99(Vec::new()), None);
    // p0 and p1 assigned at 0 s, p1 again at 10 s; p2 assigned at 5 s only;
    // p0 assigned at -2 s too, as the group formed before the load began.
    let assigned = assigned_at(
        &[(t(-2), 0), (t(0), 0), (t(0), 1), (t(5), 2), (t(10), 1)],
        Some(t(0)),
    );
    assert_eq!(assigned[&0], vec![t(0)]);
    let event = |order: &str, partition: i32| Received {
        partition,
        offset: 0,
        key: order.to_string(),
        headers: HashMap::new(),
        payload: Value::Null,
    };
    let events = [event("a", 0), event("b", 1), event("c", 1), event("d", 2)];
    let step = |order: &str, from: i64, to: i64| Step {
        order: order.to_string(),
        from: t(from),
        to: t(to),
    };
    let steps = [
        // On p0, which never moved.
        step("a", 9, 11),
        // On p1 while it moved.
        step("b", 9, 12),
        // On p1 before it moved.
        step("c", 1, 2),
        // On p2 before its first assignment: unmoved, not undisturbed.
        step("d", 3, 7),
        // Its events gone from the topic: its partition is unknown.
        step("gone", 0, 50),
    ];
    let figures = rebalancing(&steps, &events, &assigned);
    assert_eq!(figures.steps, 5);
    assert_eq!(figures.p99_delay_ms, Some(50_000));
    assert_eq!(figures.unmoved_steps, 2);
    assert_eq!(figures.p99_delay_unmoved_ms, Some(4_000));
    assert_eq!(figures.undisturbed_steps, 2);
    assert_eq!(figures.p99_delay_undisturbed_ms, Some(2_000));
    assert_eq!(figures.partitions_moved, 1);
    assert_eq!(figures.partition_moves, 1);
}
