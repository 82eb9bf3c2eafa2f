//! The worker role as separate processes on PostgreSQL and the 3-node
//! Apache Kafka cluster: reservations that never oversell, poison messages
//! dead-lettered and replayed, and a worker killed mid-run without losing or
//! double-applying anything.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{config_from_env, env_for, order_body, Backend, Process, TestBroker, TestDb};
use futures::stream::{self, StreamExt};
use orderflow::domain::{OrderId, OrderStatus};
use orderflow::store::Transition;
use serde_json::{json, Value};
use sqlx::PgPool;

/// One API process and `workers` worker processes on one database and the
/// test's broker.
struct Cluster {
    _api: Process,
    workers: Vec<Process>,
    base: String,
    http: reqwest::Client,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(env: Vec<(String, String)>, workers: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut api = Process::spawn(&["serve-api"], &env, dir.path());
        let base = format!("http://{}", api.http_addr());
        let workers = (0..workers)
            .map(|_| Process::spawn(&["run-worker"], &env, dir.path()))
            .collect();
        let mut cluster = Self {
            _api: api,
            workers,
            base,
            http: reqwest::Client::new(),
            env,
            dir,
        };
        for w in &mut cluster.workers {
            w.wait_for_log("partitions assigned", Duration::from_secs(60));
        }
        cluster
    }

    async fn create(&self, body: &Value) -> OrderId {
        common::create_order_at(&self.http, &self.base, body).await
    }

    async fn post(&self, path: &str, body: Value) -> u16 {
        self.http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("POST")
            .status()
            .as_u16()
    }

    async fn wait_for(&self, id: OrderId, status: &str, within: Duration) {
        let url = format!("{}/api/orders/{id}", self.base);
        let reached = common::eventually(within, || async {
            let order: Value = self.http.get(&url).send().await.ok()?.json().await.ok()?;
            (order["status"] == status).then_some(())
        })
        .await;
        if reached.is_none() {
            let logs: Vec<String> = self.workers.iter().map(Process::log_text).collect();
            panic!(
                "order {id} never reached {status}; worker logs:\n{}",
                logs.join("\n----\n")
            );
        }
    }

    fn orderflow(&self, args: &[&str]) -> String {
        let output = Command::new(common::binary())
            .args(args)
            .envs(self.env.iter().cloned())
            .current_dir(self.dir.path())
            .stderr(Stdio::inherit())
            .output()
            .expect("run orderflow");
        assert!(output.status.success(), "orderflow {args:?} failed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

async fn statuses(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT status, COUNT(*) FROM orders GROUP BY status ORDER BY status")
        .fetch_all(pool)
        .await
        .expect("status counts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_never_oversell() {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = TestBroker::apache();
    let mut env = env_for(&db, &broker);
    // Reservations do not depend on each other's order: the free strategy
    // (next free worker, several workers per partition) must hold too.
    env.push(("Worker__DistributionStrategy".into(), "free".into()));
    env.push(("Worker__MinWorkers".into(), "3".into()));
    let cluster = Cluster::start(env, 2);
    let put = cluster
        .http
        .put(format!("{}/api/inventory/widget", cluster.base))
        .json(&json!({"onHand": 50}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 200);

    let ids: Vec<OrderId> = stream::iter(0..200)
        .map(|i| {
            let cluster = &cluster;
            async move {
                cluster
                    .create(&order_body(&format!("Buyer {i}"), "widget", 1))
                    .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(ids.len(), 200);

    let pool = PgPool::connect(&db.url).await.expect("pool");
    let settled = common::eventually(Duration::from_secs(90), || async {
        let counts = statuses(&pool).await;
        (counts.iter().all(|(s, _)| s != "Pending")).then_some(counts)
    })
    .await
    .expect("every order reserved or rejected");
    assert_eq!(
        settled,
        [("Rejected".to_string(), 150), ("Reserved".to_string(), 50)]
    );
    let (on_hand, reserved): (i64, i64) =
        sqlx::query_as("SELECT on_hand, reserved FROM inventory WHERE product_name = 'widget'")
            .fetch_one(&pool)
            .await
            .expect("inventory");
    assert_eq!((on_hand, reserved), (0, 50));
    // Each rejection is announced to the fulfilment sink.
    let bootstrap = broker.bootstrap_servers().to_string();
    let topic = broker.names.fulfilment.clone();
    let rejected = tokio::task::spawn_blocking(move || {
        common::read_topic(&bootstrap, &topic, 150, Duration::from_secs(30))
    })
    .await
    .expect("reader");
    assert_eq!(rejected.len(), 150);
    assert!(rejected
        .iter()
        .all(|e| e.headers.get("ce_type").map(String::as_str) == Some("OrderRejected")));
}

fn kcat_produce(broker: &TestBroker, key: &str, headers: &[(&str, &str)], payload: &str) {
    let mut args = vec![
        "-b".to_string(),
        broker.bootstrap_servers().to_string(),
        "-P".into(),
        "-t".into(),
        broker.names.orders.clone(),
        "-k".into(),
        key.to_string(),
    ];
    for (k, v) in headers {
        args.push("-H".into());
        args.push(format!("{k}={v}"));
    }
    let mut child = Command::new("kcat")
        .args(&args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat is installed (apt-get install -y kcat)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{payload}").expect("write payload");
    }
    assert!(child.wait().expect("kcat").success(), "kcat produce failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_a_fixed_one_replays() {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = TestBroker::apache();
    let env = env_for(&db, &broker);
    let cluster = Cluster::start(env.clone(), 1);
    let x = cluster.create(&order_body("Xavier", "pen", 1)).await;
    let z = cluster.create(&order_body("Zoe", "pen", 1)).await;
    cluster
        .wait_for(x, "Reserved", Duration::from_secs(30))
        .await;
    cluster
        .wait_for(z, "Reserved", Duration::from_secs(30))
        .await;

    // Undecodable, on X's partition.
    kcat_produce(
        &broker,
        &x.to_string(),
        &[("ce_type", "OrderPaid"), ("ce_id", "poison-json")],
        "{this is not json",
    );
    // A payment event for Z, which has not been paid: a forbidden
    // transition (Reserved cannot become AwaitingShipment).
    kcat_produce(
        &broker,
        &z.to_string(),
        &[("ce_type", "OrderPaid"), ("ce_id", "pay-z")],
        &format!(r#"{{"orderId":"{z}","paymentId":"kcat-pay"}}"#),
    );
    // X's partition keeps flowing past the poison.
    assert_eq!(
        cluster
            .post(
                &format!("/api/orders/{x}/payments"),
                json!({"paymentId": "p-x"})
            )
            .await,
        200
    );
    cluster
        .wait_for(x, "AwaitingShipment", Duration::from_secs(30))
        .await;

    let letters = common::eventually(Duration::from_secs(30), || async {
        let out = cluster.orderflow(&["dlq", "list", "--json"]);
        let letters: Vec<Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (letters.len() >= 2).then_some(letters)
    })
    .await
    .expect("two dead letters");
    assert_eq!(letters.len(), 2, "{letters:?}");
    let by_id = |id: &str| {
        letters
            .iter()
            .find(|l| l["eventId"] == id)
            .unwrap_or_else(|| panic!("{id} dead-lettered: {letters:?}"))
            .clone()
    };
    let json_poison = by_id("poison-json");
    assert!(
        json_poison["error"]
            .as_str()
            .is_some_and(|e| e.contains("not JSON")),
        "{json_poison}"
    );
    assert_eq!(json_poison["key"], x.to_string());
    let forbidden = by_id("pay-z");
    assert!(
        forbidden["error"]
            .as_str()
            .is_some_and(|e| e.contains("Reserved") && e.contains("AwaitingShipment")),
        "{forbidden}"
    );
    for letter in [&json_poison, &forbidden] {
        assert_eq!(letter["attempts"], "1");
        assert_eq!(letter["originalTopic"], broker.names.orders.as_str());
        assert!(letter["originalPartition"].as_str().is_some());
        assert!(letter["originalOffset"].as_str().is_some());
        assert!(letter["failedAt"].as_str().is_some());
    }

    // The operator records Z's payment, then re-drives the event.
    let store = orderflow::store::connect(&config_from_env(env).database)
        .await
        .expect("store");
    store
        .transition(
            z,
            Transition {
                to: OrderStatus::Paid,
                note: "payment recorded by operator".into(),
                event: None,
            },
        )
        .await
        .expect("record payment");
    let out = cluster.orderflow(&["dlq", "replay", "--event-id", "pay-z"]);
    assert!(out.contains("replayed 1"), "{out}");
    cluster
        .wait_for(z, "AwaitingShipment", Duration::from_secs(30))
        .await;
    let pool = PgPool::connect(&db.url).await.expect("pool");
    let payment: String =
        sqlx::query_scalar("SELECT payment_id FROM shipment_requests WHERE order_id = $1")
            .bind(z.0)
            .fetch_one(&pool)
            .await
            .expect("shipment request");
    assert_eq!(payment, "kcat-pay");

    // Graceful stop: drain, commit, leave the group, exit 0.
    let mut cluster = cluster;
    cluster.workers[0].signal("TERM");
    assert_eq!(
        cluster.workers[0].wait_exit(Duration::from_secs(30)),
        Some(0)
    );
    let log = cluster.workers[0].log_text();
    assert!(log.contains("consumer stopped"), "{log}");
}

const LIFECYCLE_ORDERS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_midway_loses_nothing_and_applies_nothing_twice() {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = TestBroker::apache();
    let started = Instant::now();
    let mut env = env_for(&db, &broker);
    env.push(("Worker__CommitIntervalMs".into(), "500".into()));
    let cluster = Cluster::start(env, 2);
    let pool = PgPool::connect(&db.url).await.expect("pool");

    // Kill one worker once a third of the orders are fulfilled, mid-stream.
    let victim = cluster.workers[0].child.id();
    let killer_pool = pool.clone();
    let killer = tokio::spawn(async move {
        common::eventually(Duration::from_secs(600), || async {
            let fulfilled: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE status = 'Fulfilled'")
                    .fetch_one(&killer_pool)
                    .await
                    .ok()?;
            (fulfilled >= (LIFECYCLE_ORDERS / 3) as i64).then_some(())
        })
        .await;
        let killed = Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
    });

    stream::iter(0..LIFECYCLE_ORDERS)
        .for_each_concurrent(48, |i| {
            let cluster = &cluster;
            async move {
                let within = Duration::from_secs(180);
                let id = cluster
                    .create(&order_body(&format!("Customer {i}"), "gizmo", 1))
                    .await;
                cluster.wait_for(id, "Reserved", within).await;
                let paid = cluster
                    .post(
                        &format!("/api/orders/{id}/payments"),
                        json!({"paymentId": format!("pay-{i}")}),
                    )
                    .await;
                assert_eq!(paid, 200);
                cluster.wait_for(id, "AwaitingShipment", within).await;
                let shipped = cluster
                    .post(
                        &format!("/api/orders/{id}/shipments"),
                        json!({"trackingNumber": format!("T-{i}")}),
                    )
                    .await;
                assert_eq!(shipped, 200);
                cluster.wait_for(id, "Fulfilled", within).await;
            }
        })
        .await;
    killer.await.expect("killer");

    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .expect(sql)
        }
    };
    let fulfilled = count("SELECT COUNT(*) FROM orders WHERE status = 'Fulfilled'").await;
    let shipments = count("SELECT COUNT(*) FROM shipment_requests").await;
    let notifications = count("SELECT COUNT(*) FROM notifications").await;
    let inbox = count("SELECT COUNT(*) FROM inbox").await;
    // Every order's timeline is exactly the six steps, in order: no step
    // applied twice, none out of order.
    let bad_timelines = count(
        "SELECT COUNT(*) FROM (SELECT order_id, string_agg(status, ',' ORDER BY id) AS steps \
         FROM order_timeline GROUP BY order_id) t \
         WHERE steps <> 'Pending,Reserved,Paid,AwaitingShipment,Shipped,Fulfilled'",
    )
    .await;
    let n = LIFECYCLE_ORDERS as i64;
    println!(
        "lifecycle summary: orders={n} fulfilled={fulfilled} shipment_requests={shipments} \
         notifications={notifications} inbox={inbox} bad_timelines={bad_timelines} \
         elapsed={:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (fulfilled, shipments, notifications, inbox, bad_timelines),
        (n, n, n, 3 * n, 0)
    );
}

/// A dead letter that cannot reach any broker (nothing listens on the
/// address) is retried while the worker runs and given up once shutdown
/// begins, so the caller leaves the message uncommitted and the process
/// can stop. It used to retry forever: a worker that met a poison message
/// during a Kafka outage ignored SIGTERM until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_gives_up_when_shutdown_begins() {
    use rdkafka::message::{OwnedMessage, Timestamp};
    use rdkafka::producer::FutureProducer;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9")
        .set("message.timeout.ms", "1000")
        .create()
        .expect("producer");
    let letters = orderflow::dlq::DeadLetters {
        producer,
        topic: common::DLQ_TOPIC.into(),
        timeout: Duration::from_secs(1),
    };
    let message = OwnedMessage::new(
        Some(b"not json".to_vec()),
        Some(b"poison-1".to_vec()),
        common::TOPIC.into(),
        Timestamp::NotAvailable,
        0,
        7,
        None,
    );
    let (trigger, shutdown) = orderflow::shutdown::channel();
    let sending = tokio::spawn(async move { letters.send(&message, "boom", 1, &shutdown).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!sending.is_finished(), "gave up while the worker still ran");
    trigger.trigger();
    let sent = tokio::time::timeout(Duration::from_secs(10), sending)
        .await
        .expect("still retrying 10 s after shutdown began")
        .expect("send task");
    assert!(!sent, "reported a dead letter that no broker took");
}
