//! Rebalances under every group protocol on the 3-node Apache Kafka
//! cluster, as separate processes: offsets are committed, a paused group
//! stays paused when a worker joins, and a message waiting to retry when
//! its partition moves is neither lost nor handled twice, while the
//! partitions that moved keep flowing.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::PgPool;

use crate::common::wait::eventually;
use crate::common::{order_body, tokio_aware, Cluster, Metrics, Role, TestBroker, PARTITIONS};

/// The three ways a group can share partitions: the eager classic
/// assignor (every partition revoked at every change), the cooperative
/// one (the default) and KIP-848's broker-side assignment.
const PROTOCOLS: [(&str, &str, &str); 3] = [
    ("eager", "classic", "range"),
    ("cooperative", "classic", "cooperative-sticky"),
    ("kip848", "consumer", "cooperative-sticky"),
];

async fn start(protocol: &str, assignor: &str, env: &[(&str, &str)]) -> Cluster {
    let mut builder = Cluster::builder(TestBroker::apache())
        .env("Worker__GroupProtocol", protocol)
        .env("Worker__Assignor", assignor)
        .apis(1);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    builder.start().await
}

fn spawn_worker(cluster: &mut Cluster) -> usize {
    let i = cluster.spawn(Role::Worker);
    let process = &mut cluster.members[i].process;
    tokio_aware(|| process.wait_for_log("partitions assigned", Duration::from_secs(60)));
    i
}

async fn stock(cluster: &Cluster, product: &str, on_hand: i64) {
    let put = cluster
        .http
        .put(format!("{}/api/inventory/{product}", cluster.base()))
        .json(&json!({ "onHand": on_hand }))
        .send()
        .await
        .expect("PUT inventory");
    assert_eq!(put.status(), 200);
}

async fn statuses(pool: &PgPool, status: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE status = $1")
        .bind(status)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// The group's committed offset of every partition equals the topic's end:
/// everything consumed is committed.
fn committed_equals_end(cluster: &Cluster) -> Result<(), String> {
    let names = &cluster.broker.names;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.broker.bootstrap_servers())
        .set("group.id", &names.group)
        .create()
        .map_err(|e| e.to_string())?;
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(&names.orders, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    for p in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(&names.orders, p, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let at = committed
            .find_partition(&names.orders, p)
            .map(|e| e.offset())
            .unwrap_or(Offset::Invalid);
        let ok = match at {
            Offset::Offset(o) => o == high,
            _ => high == 0,
        };
        if !ok {
            return Err(format!("partition {p}: committed {at:?}, end {high}"));
        }
    }
    Ok(())
}

async fn create(cluster: &Cluster, n: usize, product: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = cluster
            .create_order(&order_body(&format!("Customer {i}"), product, 1))
            .await;
        ids.push(id.to_string());
    }
    ids
}

async fn all_reserved(cluster: &Cluster, pool: &PgPool, n: i64, within: Duration) {
    let reserved = eventually(within, || async {
        (statuses(pool, "Reserved").await == n).then_some(())
    })
    .await;
    assert!(
        reserved.is_some(),
        "{n} orders Reserved; worker logs:\n{}",
        cluster.logs(Role::Worker)
    );
}

/// Under each protocol: 20 orders, a second worker joins, 20 more; every
/// order Reserved once and every consumed offset committed, before and
/// after the rebalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_under_every_protocol() {
    for (name, protocol, assignor) in PROTOCOLS {
        let mut cluster = start(protocol, assignor, &[("Worker__CommitIntervalMs", "200")]).await;
        let pool = PgPool::connect(&cluster.db.url).await.expect("db");
        spawn_worker(&mut cluster);
        create(&cluster, 20, "untracked").await;
        all_reserved(&cluster, &pool, 20, Duration::from_secs(60)).await;
        let committed = eventually(Duration::from_secs(20), || async {
            tokio_aware(|| committed_equals_end(&cluster)).ok()
        })
        .await;
        assert!(
            committed.is_some(),
            "{name}: offsets committed with one worker"
        );

        spawn_worker(&mut cluster);
        create(&cluster, 20, "untracked").await;
        all_reserved(&cluster, &pool, 40, Duration::from_secs(60)).await;
        let committed = eventually(Duration::from_secs(20), || async {
            tokio_aware(|| committed_equals_end(&cluster)).ok()
        })
        .await;
        assert!(
            committed.is_some(),
            "{name}: offsets committed after the rebalance: {:?}\n{}",
            tokio_aware(|| committed_equals_end(&cluster)),
            cluster.logs(Role::Worker)
        );
        let handled: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
            .fetch_one(&pool)
            .await
            .expect("inbox");
        assert_eq!(handled, 40, "{name}: each event handled once");
    }
}

async fn consumed(cluster: &Cluster) -> f64 {
    let mut sum = 0.0;
    for admin in cluster.worker_admins() {
        sum += Metrics::scrape(&cluster.http, &admin)
            .await
            .total("orderflow_events_consumed_total");
    }
    sum
}

async fn all_paused(cluster: &Cluster, paused: f64) -> bool {
    for admin in cluster.worker_admins() {
        let m = Metrics::scrape(&cluster.http, &admin).await;
        if m.total("orderflow_consumption_paused") != paused {
            return false;
        }
    }
    true
}

async fn admin(cluster: &Cluster, action: &str) {
    let status = cluster
        .http
        .post(format!("{}/admin/api/{action}", cluster.base()))
        .send()
        .await
        .expect("admin call")
        .status();
    assert_eq!(status, 200, "{action}");
}

/// Paused from the admin API, the group stays paused when a worker joins
/// (the newcomer's partitions and the ones that moved included) and
/// resumes everywhere on resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_group_stays_paused_across_a_rebalance() {
    for (name, protocol, assignor) in &PROTOCOLS[1..] {
        let mut cluster = start(protocol, assignor, &[("Admin__Enabled", "true")]).await;
        let pool = PgPool::connect(&cluster.db.url).await.expect("db");
        spawn_worker(&mut cluster);
        admin(&cluster, "pause").await;
        let paused = eventually(Duration::from_secs(20), || async {
            all_paused(&cluster, 1.0).await.then_some(())
        })
        .await;
        assert!(paused.is_some(), "{name}: the worker paused");

        spawn_worker(&mut cluster);
        let before = consumed(&cluster).await;
        create(&cluster, 10, "untracked").await;
        // The newcomer joined paused and the rebalance kept everyone paused:
        // nothing is consumed while the orders wait (a bounded look, the
        // negative of the eventual check below).
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            all_paused(&cluster, 1.0).await,
            "{name}: both workers paused"
        );
        assert_eq!(consumed(&cluster).await, before, "{name}: nothing consumed");
        assert_eq!(statuses(&pool, "Pending").await, 10, "{name}: all waiting");

        admin(&cluster, "resume").await;
        all_reserved(&cluster, &pool, 10, Duration::from_secs(60)).await;
        assert!(all_paused(&cluster, 0.0).await, "{name}: both resumed");
    }
}

/// Worker A's database is cut: its messages wait to retry. Worker B joins
/// and takes some of A's partitions: their messages, abandoned by A
/// without waiting out its retries, are handled by B while A is still cut
/// off; the rest follow once A's database is back. Every order is
/// Reserved exactly once, its stock taken once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_waiting_to_retry_when_its_partition_moves_is_handled_once() {
    for (name, protocol, assignor) in &PROTOCOLS[1..] {
        let mut cluster = start(protocol, assignor, &[]).await;
        let pool = PgPool::connect(&cluster.db.url).await.expect("db");
        stock(&cluster, "widget", 100).await;
        let (proxy, proxied) = cluster.db_proxy();
        let direct = cluster.db.url.clone();
        cluster.set_env("Database__Url", &proxied);
        let a = spawn_worker(&mut cluster);
        cluster.set_env("Database__Url", &direct);
        proxy.cut();
        let ids = create(&cluster, 20, "widget").await;
        {
            let process = &mut cluster.members[a].process;
            tokio_aware(|| process.wait_for_log("database unreachable", Duration::from_secs(30)));
        }

        spawn_worker(&mut cluster);
        let moved = eventually(Duration::from_secs(30), || async {
            let n = statuses(&pool, "Reserved").await;
            (n > 0).then_some(n)
        })
        .await;
        assert!(
            moved.is_some(),
            "{name}: orders on the partitions B took are Reserved while A is cut off:\n{}",
            cluster.logs(Role::Worker)
        );

        // A let its revoked partitions go at once rather than waiting out
        // the drain deadline for the retries.
        let a_log = cluster.members[a].process.log_text();
        assert!(
            a_log.contains("partitions revoked"),
            "{name}: A lost partitions"
        );
        assert!(
            !a_log.contains("revoked partitions still busy"),
            "{name}: A's retrying messages gave up at the revocation:\n{a_log}"
        );
        proxy.restore();
        all_reserved(&cluster, &pool, 20, Duration::from_secs(60)).await;
        for id in &ids {
            let order = cluster.order(id).await;
            let reserved = crate::common::timeline(&order)
                .iter()
                .filter(|s| **s == "Reserved")
                .count();
            assert_eq!(reserved, 1, "{name}: {id} reserved once: {order}");
        }
        let (on_hand, taken): (i64, i64) =
            sqlx::query_as("SELECT on_hand, reserved FROM inventory WHERE product_name = 'widget'")
                .fetch_one(&pool)
                .await
                .expect("inventory");
        assert_eq!(
            (on_hand, taken),
            (80, 20),
            "{name}: stock taken once per order"
        );
    }
}
