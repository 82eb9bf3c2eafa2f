//! The outbox relay's guarantees: each committed event on the topic exactly
//! once, each order's events in commit order, even with several API
//! processes relaying from one database; a Kafka outage only delays.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::both_backends;
use crate::common::{
    self, config_from_env, env_for, order_body, read_topic_async, spawn_app, Backend, Cluster,
    Received, Role, TestBroker, TestDb, TOPIC,
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

/// `ORDERS` orders, created round robin over `apis`.
async fn create_orders(http: &reqwest::Client, apis: &[String]) -> Vec<OrderId> {
    stream::iter(0..ORDERS)
        .map(|i| {
            let (http, base) = (http.clone(), apis[i % apis.len()].clone());
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
        .await
}

/// Pays and ships every order through `apis`; the test plays the worker's
/// part (Pending → Reserved, Paid → AwaitingShipment) straight on the
/// database.
async fn pay_and_ship(
    http: &reqwest::Client,
    store: &SharedStore,
    apis: &[String],
    ids: &[OrderId],
) {
    stream::iter(ids.iter().copied().enumerate())
        .for_each_concurrent(CONCURRENCY, |(i, id)| {
            let (http, store, base) = (http.clone(), store.clone(), apis[i % apis.len()].clone());
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
}

/// What the topic holds against the outbox, the ledger of committed events.
struct Ledger {
    committed: usize,
    on_topic: usize,
    lost: usize,
    duplicated: usize,
    strangers: usize,
    out_of_order: usize,
    all_marked_published: bool,
}

async fn compare_with_outbox(cluster: &Cluster, events: &[Received]) -> Ledger {
    let outbox: Vec<(uuid::Uuid, bool)> =
        sqlx::query_as("SELECT event_id, published_at IS NOT NULL FROM outbox")
            .fetch_all(&cluster.db.pg_pool().await)
            .await
            .expect("outbox rows");
    let committed: HashSet<String> = outbox.iter().map(|(id, _)| id.to_string()).collect();
    let on_topic: Vec<String> = events
        .iter()
        .filter_map(|e| e.headers.get("ce_id").cloned())
        .collect();
    let distinct: HashSet<String> = on_topic.iter().cloned().collect();
    Ledger {
        committed: committed.len(),
        on_topic: on_topic.len(),
        lost: committed.difference(&distinct).count(),
        duplicated: on_topic.len() - distinct.len(),
        strangers: distinct.difference(&committed).count(),
        out_of_order: order_violations(events, &EVENTS_PER_ORDER),
        all_marked_published: outbox.iter().all(|(_, published)| *published),
    }
}

/// On the 3-node Apache Kafka cluster, replication factor 3: the relay
/// produces with acks=all and idempotence, to a topic `serve-api` created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_api_processes_relay_every_event_exactly_once_in_order() {
    let started = Instant::now();
    // Published rows stay (marked), so the outbox is the ledger of every
    // committed event to compare the topic with.
    let mut cluster = Cluster::builder(TestBroker::apache())
        .env("Outbox__RetentionSeconds", "3600")
        .apis(3)
        .start()
        .await;
    let apis: Vec<String> = cluster.members.iter().map(|m| m.base.clone()).collect();
    let ids = create_orders(&cluster.http, &apis).await;

    // A rolling restart begins: the first process drains and leaves; if it
    // was the active relay, another takes over.
    cluster.stop_within(0, Duration::from_secs(30));
    let store = cluster.store().await;
    pay_and_ship(&cluster.http, &store, &apis[1..], &ids).await;

    let expected = ORDERS * EVENTS_PER_ORDER.len();
    let names = &cluster.broker.names;
    let events = read_topic_async(
        cluster.broker.bootstrap_servers(),
        &names.orders,
        expected,
        Duration::from_secs(120),
    )
    .await;
    let ledger = compare_with_outbox(&cluster, &events).await;
    println!(
        "relay summary: orders={ORDERS} committed={} on_topic={} lost={} duplicated={} \
         out_of_order={} elapsed={:.1}s",
        ledger.committed,
        ledger.on_topic,
        ledger.lost,
        ledger.duplicated,
        ledger.out_of_order,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(ledger.committed, expected, "one outbox row per event");
    assert_eq!(
        (
            ledger.lost,
            ledger.duplicated,
            ledger.strangers,
            ledger.out_of_order
        ),
        (0, 0, 0, 0)
    );
    assert!(ledger.all_marked_published, "every row marked published");
    let leaders = cluster
        .members
        .iter()
        .filter(|m| m.role == Role::Api)
        .filter(|m| m.process.log_text().contains("outbox relay active"))
        .count();
    assert!(leaders >= 1, "some process relayed");
}

/// Kafka goes away while orders keep coming: the API keeps answering 201,
/// `/readyz` reports the outage, and once the broker is back every event is
/// published, once, in order.
async fn outage(backend: Backend) {
    let app = spawn_app(backend).await;
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
    let bootstrap = app.broker.bootstrap_servers();
    let before = read_topic_async(bootstrap, TOPIC, 10, Duration::from_secs(30)).await;
    assert_eq!(before.len(), 10);

    app.broker
        .mock_cluster()
        .broker_down()
        .expect("broker down");
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
    app.broker.mock_cluster().broker_up().expect("broker up");

    let drained = common::eventually(Duration::from_secs(60), || async {
        (app.store.outbox_backlog().await.ok()?.rows == 0).then_some(())
    })
    .await;
    assert!(drained.is_some(), "outbox drained after the outage");
    let after = read_topic_async(bootstrap, TOPIC, 50, Duration::from_secs(30)).await;
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

/// `orderflow_relay_leader`, what the OrderflowRelayNotLeased alert reads:
/// of two API processes on one database exactly one says it holds the
/// relay's lease; when it stops, the other takes the lease over and says so.
/// A standby reports 0 rather than nothing, so "nobody leads" is a maximum
/// of 0 and not a missing series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_api_process_reports_the_relay_lease_and_a_standby_takes_it_over() {
    let mut cluster = Cluster::builder(TestBroker::mock())
        .env("Outbox__PollIntervalMs", "200")
        .apis(2)
        .start()
        .await;
    let leader_gauge = |http: reqwest::Client, base: String| async move {
        common::Metrics::scrape(&http, &base).await.sample(
            orderflow::metrics::RELAY_LEADER,
            &[("lease", orderflow::outbox::MAIN_LEASE)],
        )
    };
    let bases: Vec<String> = cluster.members.iter().map(|m| m.base.clone()).collect();
    let http = cluster.http.clone();
    let leader = common::eventually(Duration::from_secs(30), || {
        let (http, bases) = (http.clone(), bases.clone());
        async move {
            let mut gauges = Vec::new();
            for base in bases {
                gauges.push(leader_gauge(http.clone(), base).await?);
            }
            let leaders: Vec<usize> = (0..gauges.len()).filter(|i| gauges[*i] == 1.0).collect();
            let standbys = gauges.iter().filter(|g| **g == 0.0).count();
            (leaders.len() == 1 && standbys == 1).then(|| leaders[0])
        }
    })
    .await
    .expect("one API process reports 1 and the other 0 for the outbox relay's lease");

    cluster.stop(leader);
    let survivor = bases[1 - leader].clone();
    let took_over = common::eventually(Duration::from_secs(30), || {
        let (http, survivor) = (http.clone(), survivor.clone());
        async move { (leader_gauge(http, survivor).await? == 1.0).then_some(()) }
    })
    .await;
    assert!(
        took_over.is_some(),
        "the standby reports the lease once the leader is gone:\n{}",
        cluster.logs(Role::Api)
    );
}
