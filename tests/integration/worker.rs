//! The worker role as separate processes on PostgreSQL and the 3-node
//! Apache Kafka cluster: reservations that never oversell, poison messages
//! dead-lettered and replayed, and a worker killed mid-run without losing or
//! double-applying anything.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use orderflow::domain::{OrderId, OrderStatus};
use orderflow::store::Transition;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::common::{self, kcat_produce, order_body, read_topic_async, Cluster, Role, TestBroker};

/// One `serve-api` and `workers` `run-worker` processes on the shared
/// Apache Kafka cluster, `env` on top of the test settings; returns once
/// every worker has partitions.
async fn start(env: &[(&str, &str)], workers: usize) -> Cluster {
    let mut builder = Cluster::builder(TestBroker::apache())
        .apis(1)
        .workers(workers);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let mut cluster = builder.start().await;
    cluster.wait_until_assigned();
    cluster
}

async fn statuses(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT status, COUNT(*) FROM orders GROUP BY status ORDER BY status")
        .fetch_all(pool)
        .await
        .expect("status counts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_never_oversell() {
    // Reservations do not depend on each other's order: the free strategy
    // (next free worker, several workers per partition) must hold too.
    let cluster = start(
        &[
            ("Worker__DistributionStrategy", "free"),
            ("Worker__MinWorkers", "3"),
        ],
        2,
    )
    .await;
    let put = cluster
        .http
        .put(format!("{}/api/inventory/widget", cluster.base()))
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
                    .create_order(&order_body(&format!("Buyer {i}"), "widget", 1))
                    .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(ids.len(), 200);

    let pool = cluster.db.pg_pool().await;
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
    let rejected = read_topic_async(
        cluster.broker.bootstrap_servers(),
        &cluster.broker.names.fulfilment,
        150,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(rejected.len(), 150);
    assert!(rejected
        .iter()
        .all(|e| e.header("ce_type") == Some("OrderRejected")));
}

/// Two poison messages from an outside producer: one undecodable on `x`'s
/// partition, and a payment event for `z`, which has not been paid (a
/// forbidden transition: Reserved cannot become AwaitingShipment).
fn produce_poison(cluster: &Cluster, x: OrderId, z: OrderId) {
    let (bootstrap, topic) = (
        cluster.broker.bootstrap_servers(),
        &cluster.broker.names.orders,
    );
    kcat_produce(
        bootstrap,
        topic,
        &x.to_string(),
        &[("ce_type", "OrderPaid"), ("ce_id", "poison-json")],
        "{this is not json",
    );
    kcat_produce(
        bootstrap,
        topic,
        &z.to_string(),
        &[("ce_type", "OrderPaid"), ("ce_id", "pay-z")],
        &format!(r#"{{"orderId":"{z}","paymentId":"kcat-pay"}}"#),
    );
}

/// `orderflow dlq list --json` until it lists two dead letters.
async fn two_dead_letters(cluster: &Cluster) -> Vec<Value> {
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
    letters
}

/// Each dead letter says what failed and where the message came from.
fn assert_dead_letters(letters: &[Value], x: OrderId, topic: &str) {
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
        assert_eq!(letter["originalTopic"], topic);
        assert!(letter["originalPartition"].as_str().is_some());
        assert!(letter["originalOffset"].as_str().is_some());
        assert!(letter["failedAt"].as_str().is_some());
    }
}

/// The operator records `z`'s payment, then re-drives the event: the order
/// moves on with the payment the replayed event carried.
async fn record_payment_and_replay(cluster: &Cluster, z: OrderId) {
    cluster
        .store()
        .await
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
        .wait_for_status(z, "AwaitingShipment", Duration::from_secs(30))
        .await;
    let payment: String =
        sqlx::query_scalar("SELECT payment_id FROM shipment_requests WHERE order_id = $1")
            .bind(z.0)
            .fetch_one(&cluster.db.pg_pool().await)
            .await
            .expect("shipment request");
    assert_eq!(payment, "kcat-pay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_a_fixed_one_replays() {
    let mut cluster = start(&[], 1).await;
    let within = Duration::from_secs(30);
    let x = cluster.create_order(&order_body("Xavier", "pen", 1)).await;
    let z = cluster.create_order(&order_body("Zoe", "pen", 1)).await;
    cluster.wait_for_status(x, "Reserved", within).await;
    cluster.wait_for_status(z, "Reserved", within).await;

    produce_poison(&cluster, x, z);
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
    cluster.wait_for_status(x, "AwaitingShipment", within).await;

    let letters = two_dead_letters(&cluster).await;
    assert_dead_letters(&letters, x, &cluster.broker.names.orders);
    record_payment_and_replay(&cluster, z).await;

    // Graceful stop: drain, commit, leave the group, exit 0.
    let worker = cluster.live(Role::Worker)[0];
    cluster.stop_within(worker, Duration::from_secs(30));
    let log = cluster.members[worker].process.log_text();
    assert!(log.contains("consumer stopped"), "{log}");
}

const LIFECYCLE_ORDERS: usize = 2_000;

/// SIGKILLs process `victim` once a third of the orders are fulfilled,
/// mid-stream.
fn kill_when_a_third_is_fulfilled(pool: PgPool, victim: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        common::eventually(Duration::from_secs(600), || async {
            let fulfilled: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE status = 'Fulfilled'")
                    .fetch_one(&pool)
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
    })
}

/// Order `i` from creation to Fulfilled through the API.
async fn lifecycle(cluster: &Cluster, i: usize) {
    let within = Duration::from_secs(180);
    let id = cluster
        .create_order(&order_body(&format!("Customer {i}"), "gizmo", 1))
        .await;
    cluster.wait_for_status(id, "Reserved", within).await;
    let paid = cluster
        .post(
            &format!("/api/orders/{id}/payments"),
            json!({"paymentId": format!("pay-{i}")}),
        )
        .await;
    assert_eq!(paid, 200);
    cluster
        .wait_for_status(id, "AwaitingShipment", within)
        .await;
    let shipped = cluster
        .post(
            &format!("/api/orders/{id}/shipments"),
            json!({"trackingNumber": format!("T-{i}")}),
        )
        .await;
    assert_eq!(shipped, 200);
    cluster.wait_for_status(id, "Fulfilled", within).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_midway_loses_nothing_and_applies_nothing_twice() {
    let started = Instant::now();
    let cluster = start(&[("Worker__CommitIntervalMs", "500")], 2).await;
    let pool = cluster.db.pg_pool().await;

    let victim = cluster.members[cluster.live(Role::Worker)[0]]
        .process
        .child
        .id();
    let killer = kill_when_a_third_is_fulfilled(pool.clone(), victim);
    stream::iter(0..LIFECYCLE_ORDERS)
        .for_each_concurrent(48, |i| lifecycle(&cluster, i))
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
