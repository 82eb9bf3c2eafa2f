//! The outbox relay's guarantees: each committed event on the topic exactly
//! once, each order's events in commit order, even with several API
//! processes relaying from one database; a Kafka outage only delays.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{
    config_from_env, env_for, order_body, read_topic, start_broker, Backend, Process, Received,
    TestApp, TestBroker, TestDb, TOPIC,
};
use futures::stream::{self, StreamExt};
use orderflow::domain::{OrderId, OrderStatus};
use orderflow::store::{SharedStore, Transition};
use serde_json::{json, Value};

const ORDERS: usize = 1_000;
const CONCURRENCY: usize = 32;
const EVENTS_PER_ORDER: [&str; 3] = ["OrderCreated", "OrderPaid", "OrderShipped"];

/// Per-order checks over what a consumer read: every order's events on one
/// partition, in the order they were committed. Returns the number of orders
/// whose events are out of order or split.
fn order_violations(events: &[Received], expected_types: &[&str]) -> usize {
    let mut by_order: HashMap<&str, Vec<&Received>> = HashMap::new();
    for e in events {
        by_order.entry(e.key.as_str()).or_default().push(e);
    }
    by_order
        .values()
        .filter(|evs| {
            let one_partition = evs.iter().all(|e| e.partition == evs[0].partition);
            let types: Vec<&str> = evs
                .iter()
                .map(|e| e.headers.get("ce_type").map(String::as_str).unwrap_or(""))
                .collect();
            !one_partition || types != expected_types
        })
        .count()
}

async fn move_to(store: &SharedStore, id: OrderId, to: OrderStatus) {
    store
        .transition(
            id,
            Transition {
                to,
                note: format!("test moved to {to}"),
                event: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{id} → {to}: {e}"));
}

/// On the 3-node Apache Kafka cluster, replication factor 3: the relay
/// produces with acks=all and idempotence, to a topic `serve-api` created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_api_processes_relay_every_event_exactly_once_in_order() {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = TestBroker::apache();
    let started = Instant::now();
    let mut env = env_for(&db, &broker);
    // Published rows stay (marked), so the outbox is the ledger of every
    // committed event to compare the topic with.
    env.push(("Outbox__RetentionSeconds".into(), "3600".into()));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut apis: Vec<Process> = (0..3)
        .map(|_| Process::spawn(&["serve-api"], &env, dir.path()))
        .collect();
    let addrs: Vec<String> = apis
        .iter_mut()
        .map(|p| format!("http://{}", p.http_addr()))
        .collect();
    // The test plays the worker's part (Pending → Reserved, Paid →
    // AwaitingShipment) straight on the database.
    let store = orderflow::store::connect(&config_from_env(env.clone()).database)
        .await
        .expect("store");
    let http = reqwest::Client::new();

    let ids: Vec<OrderId> = stream::iter(0..ORDERS)
        .map(|i| {
            let (http, base) = (http.clone(), addrs[i % 3].clone());
            async move {
                common::create_order_at(
                    &http,
                    &base,
                    &order_body(&format!("Customer {i}"), "widget", 1),
                )
                .await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;

    // A rolling restart begins: the first process drains and leaves; if it
    // was the active relay, another takes over.
    apis[0].signal("TERM");
    assert_eq!(apis[0].wait_exit(Duration::from_secs(30)), Some(0));

    stream::iter(ids.iter().copied().enumerate())
        .for_each_concurrent(CONCURRENCY, |(i, id)| {
            let (http, store, base) = (http.clone(), store.clone(), addrs[1 + i % 2].clone());
            async move {
                move_to(&store, id, OrderStatus::Reserved).await;
                let paid = http
                    .post(format!("{base}/api/orders/{id}/payments"))
                    .json(&json!({ "paymentId": format!("pay-{i}") }))
                    .send()
                    .await
                    .expect("pay");
                assert_eq!(paid.status(), 200);
                move_to(&store, id, OrderStatus::AwaitingShipment).await;
                let shipped = http
                    .post(format!("{base}/api/orders/{id}/shipments"))
                    .json(&json!({ "trackingNumber": format!("track-{i}") }))
                    .send()
                    .await
                    .expect("ship");
                assert_eq!(shipped.status(), 200);
            }
        })
        .await;

    let expected = ORDERS * EVENTS_PER_ORDER.len();
    let bootstrap = broker.bootstrap_servers().to_string();
    let topic = broker.names.orders.clone();
    let events = tokio::task::spawn_blocking(move || {
        read_topic(&bootstrap, &topic, expected, Duration::from_secs(120))
    })
    .await
    .expect("reader");

    let outbox: Vec<(uuid::Uuid, bool)> =
        sqlx::query_as("SELECT event_id, published_at IS NOT NULL FROM outbox")
            .fetch_all(&sqlx::PgPool::connect(&db.url).await.expect("pool"))
            .await
            .expect("outbox rows");
    let committed: HashSet<String> = outbox.iter().map(|(id, _)| id.to_string()).collect();
    let on_topic: Vec<String> = events
        .iter()
        .filter_map(|e| e.headers.get("ce_id").cloned())
        .collect();
    let distinct: HashSet<String> = on_topic.iter().cloned().collect();
    let lost = committed.difference(&distinct).count();
    let duplicated = on_topic.len() - distinct.len();
    let strangers = distinct.difference(&committed).count();
    let violations = order_violations(&events, &EVENTS_PER_ORDER);
    println!(
        "relay summary: orders={ORDERS} committed={} on_topic={} lost={lost} duplicated={duplicated} \
         out_of_order={violations} elapsed={:.1}s",
        committed.len(),
        on_topic.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(committed.len(), expected, "one outbox row per event");
    assert_eq!((lost, duplicated, strangers, violations), (0, 0, 0, 0));
    assert!(
        outbox.iter().all(|(_, published)| *published),
        "every row marked published"
    );
    let leaders = apis
        .iter()
        .filter(|p| p.log_text().contains("outbox relay active"))
        .count();
    assert!(leaders >= 1, "some process relayed");
}

/// Kafka goes away while orders keep coming: the API keeps answering 201,
/// `/readyz` reports the outage, and once the broker is back every event is
/// published, once, in order.
async fn outage(backend: Backend) {
    let db = TestDb::new(backend).await;
    let broker = start_broker();
    let app = TestApp::spawn(&db, &broker).await;
    let mut ids = Vec::new();
    let mut create = async |i: usize| {
        let response = app
            .create_order(&order_body(&format!("Customer {i}"), "widget", 1))
            .await;
        assert_eq!(response.status(), 201, "order {i} accepted");
        let order: Value = response.json().await.expect("order");
        ids.push(order["id"].as_str().expect("id").to_string());
    };
    for i in 0..10 {
        create(i).await;
    }
    let bootstrap = broker.bootstrap_servers().to_string();
    let before = {
        let b = bootstrap.clone();
        tokio::task::spawn_blocking(move || read_topic(&b, TOPIC, 10, Duration::from_secs(30)))
            .await
            .expect("reader")
    };
    assert_eq!(before.len(), 10);

    broker.mock_cluster().broker_down().expect("broker down");
    for i in 10..50 {
        create(i).await;
    }
    let not_ready = common::eventually(Duration::from_secs(20), || async {
        let r = app.http.get(app.url("/readyz")).send().await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
    assert!(not_ready.is_some(), "/readyz reports the outage");
    // Longer than the producer's message timeout (3 s in tests): deliveries
    // fail and the relay backs off, rather than librdkafka hiding the outage.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(app.store.outbox_backlog().await.expect("backlog").rows > 0);
    broker.mock_cluster().broker_up().expect("broker up");

    let drained = common::eventually(Duration::from_secs(60), || async {
        (app.store.outbox_backlog().await.ok()?.rows == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "outbox drained after the outage");
    let after = tokio::task::spawn_blocking(move || {
        read_topic(&bootstrap, TOPIC, 50, Duration::from_secs(30))
    })
    .await
    .expect("reader");
    let keys: HashSet<&str> = after.iter().map(|e| e.key.as_str()).collect();
    let ce_ids: HashSet<&str> = after
        .iter()
        .filter_map(|e| e.headers.get("ce_id").map(String::as_str))
        .collect();
    assert_eq!(
        keys,
        ids.iter().map(String::as_str).collect(),
        "no order lost"
    );
    assert_eq!((after.len(), ce_ids.len()), (50, 50), "each event once");
    // Nothing is retained by default: published rows were deleted, so a
    // purge of everything published finds none.
    let left = app
        .store
        .outbox_purge(chrono::Utc::now() + chrono::Duration::days(1))
        .await
        .expect("purge");
    assert_eq!(left, 0, "published rows deleted on publish");
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    app.stop().await;
}
both_backends!(kafka_outage_delays_but_loses_nothing, outage);

/// While a batch is delivered the relay reads the next one, skipping the
/// rows in flight. It must skip exactly those: a row whose id falls between
/// two of them committed after the batch was read, and a later event of its
/// order may already be waiting behind it. Skipping the id range instead
/// held that row back and let the later event overtake it.
async fn read_ahead_skips_exactly_the_rows_in_flight(backend: Backend) {
    let db = TestDb::new(backend).await;
    let config = config_from_env(env_for(&db, &TestBroker::unreachable()));
    let store = orderflow::store::connect(&config.database)
        .await
        .expect("store");
    store.migrate().await.expect("migrate");
    let request: orderflow::domain::CreateOrderRequest =
        serde_json::from_value(order_body("Ada", "pen", 1)).expect("request");
    let order = request
        .parse(orderflow::domain::OrderLimits { max_items: 10 })
        .expect("valid order");
    for _ in 0..5 {
        store
            .create_order(&order, None, None)
            .await
            .expect("create");
    }
    let filter = Default::default();
    let ids = |rows: Vec<orderflow::store::OutboxRecord>| -> Vec<i64> {
        rows.iter().map(|r| r.id).collect()
    };
    let all = ids(store.outbox_pending(10, &filter, &[]).await.expect("read"));
    assert_eq!(all.len(), 5, "{all:?}");
    // The middle row stands for one committed after the batch was read.
    let in_flight = [all[0], all[1], all[3], all[4]];
    let ahead = ids(store
        .outbox_pending(10, &filter, &in_flight)
        .await
        .expect("read ahead"));
    assert_eq!(ahead, vec![all[2]]);
    let none = store
        .outbox_pending(10, &filter, &all)
        .await
        .expect("read ahead");
    assert!(none.is_empty(), "{none:?}");
}
both_backends!(
    read_ahead_skips_exactly_the_rows_in_flight_test,
    read_ahead_skips_exactly_the_rows_in_flight
);
