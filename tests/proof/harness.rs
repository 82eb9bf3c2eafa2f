//! The proof harness: a broker (librdkafka's mock cluster hosted by the
//! test, or the 3-node Apache Kafka cluster, both reached over TCP), a
//! fresh PostgreSQL database
//! behind a TCP proxy that can cut it off, `serve-api` and `run-worker`
//! processes of the built binary, a load driver that takes orders through
//! their whole life over the public API, and a checker that compares what
//! the API accepted with the database and the topics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};

use super::common::proxy::TcpProxy;
use super::common::{self, Backend, Process, TestBroker, TestDb};

/// A tracked product with stock for every order: the reservation is the
/// effect whose duplication would show in the numbers.
pub const PRODUCT: &str = "proof-widget";
pub const STOCK: i64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
}

pub struct Member {
    pub role: Role,
    pub process: Process,
    pub base: Option<String>,
    pub alive: bool,
}

pub struct Harness {
    /// `<broker>/<scenario>`, e.g. `apache/9-leader-sigkill`.
    pub name: String,
    pub db: TestDb,
    pub broker: TestBroker,
    pub pg_proxy: TcpProxy,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    pub members: Vec<Member>,
    /// The API addresses the driver may use; processes come and go.
    pub bases: Arc<RwLock<Vec<String>>>,
    pub started: Instant,
}

/// `host[:port]` of `postgres://user[:pw]@host[:port]/db`.
fn host_of(url: &str) -> &str {
    url.split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.rsplit('@').next())
        .expect("PostgreSQL URL with a host")
}

fn upstream_of(url: &str) -> SocketAddr {
    let authority = host_of(url);
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:5432")
    };
    with_port
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("PostgreSQL host:port")
}

impl Harness {
    pub async fn start(name: &str, broker: TestBroker, apis: usize, workers: usize) -> Self {
        let db = TestDb::new(Backend::Postgres).await;
        let name = format!(
            "{}/{name}",
            if broker.is_apache() { "apache" } else { "mock" }
        );
        let pg_proxy = TcpProxy::start(upstream_of(&db.url));
        let proxied = db
            .url
            .replacen(host_of(&db.url), &pg_proxy.addr.to_string(), 1);
        let mut env = common::env_for(&db, &broker);
        env.retain(|(k, _)| k != "Database__Url");
        env.extend(
            [
                ("Database__Url", proxied.as_str()),
                ("Database__MaxConnections", "5"),
                ("Worker__MaxWorkers", "4"),
                ("Worker__LagThreshold", "50"),
                ("Worker__Retry__MaxBackoffMs", "1000"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let mut harness = Self {
            name,
            db,
            broker,
            pg_proxy,
            env,
            dir: tempfile::tempdir().expect("temp dir"),
            members: Vec::new(),
            bases: Arc::new(RwLock::new(Vec::new())),
            started: Instant::now(),
        };
        for _ in 0..apis {
            harness.spawn(Role::Api);
        }
        for _ in 0..workers {
            harness.spawn(Role::Worker);
        }
        let base = harness.any_base();
        let stocked = reqwest::Client::new()
            .put(format!("{base}/api/inventory/{PRODUCT}"))
            .json(&json!({"onHand": STOCK}))
            .send()
            .await
            .expect("PUT inventory");
        assert_eq!(stocked.status(), 200);
        harness
    }

    /// Starts a process of `role` and waits until it serves HTTP.
    pub fn spawn(&mut self, role: Role) -> usize {
        tokio::task::block_in_place(|| self.spawn_blocking(role))
    }

    fn spawn_blocking(&mut self, role: Role) -> usize {
        let args = match role {
            Role::Api => "serve-api",
            Role::Worker => "run-worker",
        };
        let mut process = Process::spawn(&[args], &self.env, self.dir.path());
        let base = match role {
            Role::Api => {
                let base = format!("http://{}", process.http_addr());
                self.bases.write().expect("bases").push(base.clone());
                Some(base)
            }
            Role::Worker => {
                process.http_addr();
                None
            }
        };
        self.members.push(Member {
            role,
            process,
            base,
            alive: true,
        });
        self.members.len() - 1
    }

    pub fn any_base(&self) -> String {
        self.bases.read().expect("bases")[0].clone()
    }

    /// The running members of `role`, oldest first.
    pub fn live(&self, role: Role) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].role == role && self.members[*i].alive)
            .collect()
    }

    /// Takes the member out of the load balancer, as a terminating pod is.
    fn retire(&mut self, i: usize) {
        self.members[i].alive = false;
        if let Some(base) = self.members[i].base.take() {
            self.bases.write().expect("bases").retain(|b| b != &base);
        }
    }

    /// SIGKILL: no drain, no commit, no goodbye.
    pub fn kill(&mut self, i: usize) {
        self.retire(i);
        let process = &mut self.members[i].process;
        tokio::task::block_in_place(|| {
            process.signal("KILL");
            process.wait_exit(Duration::from_secs(10));
        });
    }

    /// SIGTERM, as Kubernetes sends; the process must drain and exit 0.
    pub fn stop(&mut self, i: usize) {
        self.retire(i);
        let process = &mut self.members[i].process;
        let code = tokio::task::block_in_place(|| {
            process.signal("TERM");
            process.wait_exit(Duration::from_secs(60))
        });
        assert_eq!(code, Some(0), "graceful exit:\n{}", process.log_text());
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
            bases: harness.bases.clone(),
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
        let deadline = Instant::now() + self.patience;
        while Instant::now() < deadline {
            match self.call(method.clone(), path, body, key).await {
                Answer::Status(status, value) if status < 500 => return Some((status, value)),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        None
    }

    /// Waits until the order has reached `status` or gone past it: after a
    /// lost answer, the step the driver retried may already be followed
    /// by the worker's (Paid by AwaitingShipment, Shipped by Fulfilled).
    /// Waiting for the exact status then waited out the driver's patience
    /// and reported the order lost.
    async fn wait_for(&self, id: &str, status: &str) -> bool {
        let wanted = CHAIN.iter().position(|s| *s == status);
        let reached = |current: &str| match (wanted, CHAIN.iter().position(|s| *s == current)) {
            (Some(wanted), Some(current)) => current >= wanted,
            _ => current == status,
        };
        let deadline = Instant::now() + self.patience;
        while Instant::now() < deadline {
            if let Answer::Status(200, order) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/orders/{id}"),
                    None,
                    None,
                )
                .await
            {
                if order["status"].as_str().is_some_and(reached) {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        false
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
            Some((409, _)) => self.wait_for(id, reached).await,
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
        let seen_fulfilled = self.wait_for(&id, "Reserved").await
            && self
                .advance(
                    &id,
                    "payments",
                    json!({"paymentId": format!("pay-{n}")}),
                    "Paid",
                )
                .await
            && self.wait_for(&id, "AwaitingShipment").await
            && self
                .advance(
                    &id,
                    "shipments",
                    json!({"trackingNumber": format!("T-{n}")}),
                    "Shipped",
                )
                .await
            && self.wait_for(&id, "Fulfilled").await;
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
    pub seconds: f64,
}

impl Figures {
    pub fn summary(&self) -> String {
        format!(
            "PROOF {}: accepted={} fulfilled={} lost={} duplicated_effects={} out_of_order={} \
             poison_in_dlq={}/{} max_delay_ms={} redelivered={} ({:.0} s)",
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

const CHAIN: [&str; 6] = [
    "Pending",
    "Reserved",
    "Paid",
    "AwaitingShipment",
    "Shipped",
    "Fulfilled",
];
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
    for member in &harness.members {
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

/// Compares what the driver was promised with the database and topics.
/// `poison_keys` are the message keys of poison messages sent.
pub async fn check(harness: &Harness, lifecycles: &[Lifecycle], poison_keys: &[String]) -> Figures {
    let accepted: Vec<&str> = lifecycles.iter().filter_map(|l| l.id.as_deref()).collect();
    // Straight to PostgreSQL: the proxy may still be cut.
    let mut db = PgConnection::connect(&harness.db.url)
        .await
        .expect("checker connects");

    let statuses: HashMap<String, String> = sqlx::query("SELECT id::text, status FROM orders")
        .fetch_all(&mut db)
        .await
        .expect("orders")
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let stuck = lifecycles
        .iter()
        .filter(|l| l.id.is_some() && !l.seen_fulfilled)
        .count();
    if stuck > 0 {
        println!("{stuck} orders did not reach Fulfilled within the driver's patience");
    }
    let lost_ids: Vec<&str> = accepted
        .iter()
        .copied()
        .filter(|id| statuses.get(*id).is_none_or(|s| s != "Fulfilled"))
        .collect();
    if !lost_ids.is_empty() {
        explain_lost(harness, &mut db, &lost_ids).await;
    }
    let lost = lost_ids.len();
    let fulfilled = accepted
        .iter()
        .filter(|id| statuses.get(**id).is_some_and(|s| s == "Fulfilled"))
        .count();

    // Timelines: exactly the forward chain, each status once.
    let mut timelines: BTreeMap<String, Vec<(String, chrono::DateTime<chrono::Utc>)>> =
        BTreeMap::new();
    for row in sqlx::query("SELECT order_id::text, status, at FROM order_timeline ORDER BY id")
        .fetch_all(&mut db)
        .await
        .expect("timeline")
    {
        timelines
            .entry(row.get(0))
            .or_default()
            .push((row.get(1), row.get(2)));
    }
    let mut duplicated = 0;
    let mut out_of_order = 0;
    let mut max_delay_ms = 0i64;
    for steps in timelines.values() {
        let names: Vec<&str> = steps.iter().map(|(s, _)| s.as_str()).collect();
        let distinct: HashSet<&str> = names.iter().copied().collect();
        duplicated += names.len() - distinct.len();
        if names.len() == distinct.len() && names[..] != CHAIN[..names.len().min(CHAIN.len())] {
            out_of_order += 1;
        }
        let at = |s: &str| steps.iter().find(|(n, _)| n == s).map(|(_, t)| *t);
        // The pipeline's own steps: what the worker did after the API.
        for (from, to) in [
            ("Pending", "Reserved"),
            ("Paid", "AwaitingShipment"),
            ("Shipped", "Fulfilled"),
        ] {
            if let (Some(a), Some(b)) = (at(from), at(to)) {
                max_delay_ms = max_delay_ms.max((b - a).num_milliseconds());
            }
        }
    }
    // Stock: one unit reserved per order that got a reservation.
    let reserved_orders = timelines
        .values()
        .filter(|s| s.iter().any(|(n, _)| n == "Reserved"))
        .count() as i64;
    let row = sqlx::query("SELECT on_hand, reserved FROM inventory WHERE product_name = $1")
        .bind(PRODUCT)
        .fetch_one(&mut db)
        .await
        .expect("inventory");
    let (on_hand, reserved): (i64, i64) = (row.get(0), row.get(1));
    duplicated += (reserved - reserved_orders).unsigned_abs() as usize;
    assert_eq!(
        on_hand + reserved,
        STOCK,
        "stock neither created nor destroyed"
    );
    let unpublished: i64 = sqlx::query("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&mut db)
        .await
        .expect("outbox")
        .get(0);
    assert_eq!(unpublished, 0, "every committed event published");

    // The orders topic: per order, its events on one partition in order
    // (by distinct event id: a duplicate delivery is the same event).
    let bootstrap = harness.broker.bootstrap_servers();
    let names = &harness.broker.names;
    let events = common::read_topic(
        bootstrap,
        &names.orders,
        accepted.len() * 3,
        Duration::from_secs(60),
    );
    let mut by_order: HashMap<&str, Vec<&common::Received>> = HashMap::new();
    for e in &events {
        by_order.entry(e.key.as_str()).or_default().push(e);
    }
    for id in &accepted {
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
        let in_order = if statuses.get(*id).is_some_and(|s| s == "Fulfilled") {
            types == EVENTS
        } else {
            EVENTS.starts_with(&types)
        };
        if !in_order || evs.iter().any(|e| e.partition != evs[0].partition) {
            out_of_order += 1;
        }
    }
    // The fulfilment topic: one OrderFulfilled per order.
    let fulfilments = common::read_topic(
        bootstrap,
        &names.fulfilment,
        accepted.len(),
        Duration::from_secs(60),
    );
    // By event id: the relay marks a row only after the broker's ack, so a
    // database cut between the two publishes the same event again (at
    // least once); consumers drop it by `ce_id`. Two *events* for one order
    // would be a duplicated effect.
    let mut per_order: HashMap<&str, HashSet<String>> = HashMap::new();
    for f in &fulfilments {
        let id = f.headers.get("ce_id").cloned().unwrap_or_default();
        per_order.entry(f.key.as_str()).or_default().insert(id);
    }
    let distinct_fulfilments: usize = per_order.values().map(HashSet::len).sum();
    let redelivered = fulfilments.len() - distinct_fulfilments;
    let fulfilment_dups = per_order
        .values()
        .map(|ids| ids.len().saturating_sub(1))
        .sum::<usize>();
    if duplicated + fulfilment_dups > 0 {
        println!(
            "duplicated effects: {duplicated} in timelines and stock, \
             {fulfilment_dups} extra OrderFulfilled events"
        );
    }
    duplicated += fulfilment_dups;

    if lost > 0 {
        // What happened to them: dead-lettered (and why), or never handled.
        let letters =
            common::read_topic(bootstrap, &names.dead_letters, 0, Duration::from_secs(10));
        for id in accepted
            .iter()
            .filter(|id| statuses.get(**id).is_none_or(|s| s != "Fulfilled"))
        {
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
    let poison_dead_lettered = if poison_keys.is_empty() {
        0
    } else {
        let letters = common::read_topic(
            bootstrap,
            &names.dead_letters,
            poison_keys.len(),
            Duration::from_secs(60),
        );
        let keys: HashSet<&str> = letters.iter().map(|l| l.key.as_str()).collect();
        poison_keys
            .iter()
            .filter(|k| keys.contains(k.as_str()))
            .count()
    };

    Figures {
        scenario: harness.name.clone(),
        accepted: accepted.len(),
        fulfilled,
        lost,
        duplicated_effects: duplicated,
        out_of_order,
        poison_sent: poison_keys.len(),
        poison_dead_lettered,
        max_delay_ms,
        redelivered,
        seconds: harness.started.elapsed().as_secs_f64(),
    }
}
