//! The pipeline on Apache Kafka as a Helm install starts it: pods in any
//! order on a cluster that never auto-creates topics. `run-worker` first
//! creates the topics it consumes (partitions and replication as
//! configured); `serve-api` then takes an order through its whole life; a
//! topic the cluster refuses stops the role with the reason.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

use crate::common::{
    self, order_body, read_topic_async, timeline, Cluster, Role, TestBroker, LIFECYCLE,
};

/// Partition count and replication factor of each partition, per topic.
fn topic_layout(bootstrap: &str, topic: &str) -> Option<(usize, Vec<usize>)> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .ok()?;
    let t = metadata.topics().first()?;
    if t.error().is_some() || t.partitions().is_empty() {
        return None;
    }
    Some((
        t.partitions().len(),
        t.partitions().iter().map(|p| p.replicas().len()).collect(),
    ))
}

/// Before any API exists, the worker made what it consumes and writes:
/// the orders and dead-letter topics as configured, the control topic with
/// one partition.
fn assert_worker_made_its_topics(cluster: &Cluster) {
    let (bootstrap, names) = (cluster.broker.bootstrap_servers(), &cluster.broker.names);
    for topic in [&names.orders, &names.dead_letters] {
        assert_eq!(
            topic_layout(bootstrap, topic),
            Some((
                common::PARTITIONS as usize,
                vec![3; common::PARTITIONS as usize]
            )),
            "{topic}"
        );
    }
    assert_eq!(
        topic_layout(bootstrap, &names.control),
        Some((1, vec![3])),
        "the control topic: one partition"
    );
}

/// Creates an order and takes it through payment and shipment to
/// Fulfilled; returns its id.
async fn first_order_to_fulfilment(cluster: &Cluster) -> String {
    let created = Instant::now();
    let id = cluster
        .create_order(&order_body("First Order", "gadget", 1))
        .await;
    cluster
        .wait_for_status(id, "Reserved", Duration::from_secs(60))
        .await;
    // Reported, not asserted: the README's figure comes from here.
    println!(
        "first order Reserved {} ms after its creation (worker started first)",
        created.elapsed().as_millis()
    );
    let paid = cluster
        .post(
            &format!("/api/orders/{id}/payments"),
            json!({"paymentId": "pay-first"}),
        )
        .await;
    assert_eq!(paid, 200);
    cluster
        .wait_for_status(id, "AwaitingShipment", Duration::from_secs(60))
        .await;
    let shipped = cluster
        .post(
            &format!("/api/orders/{id}/shipments"),
            json!({"trackingNumber": "1Z-FIRST"}),
        )
        .await;
    assert_eq!(shipped, 200);
    let order = cluster
        .wait_for_status(id, "Fulfilled", Duration::from_secs(60))
        .await;
    assert_eq!(timeline(&order), LIFECYCLE);
    id.to_string()
}

/// The order's events, as any consumer of the topics sees them.
async fn assert_events_on_the_topics(cluster: &Cluster, id: &str) {
    let (bootstrap, names) = (cluster.broker.bootstrap_servers(), &cluster.broker.names);
    let events = read_topic_async(bootstrap, &names.orders, 3, Duration::from_secs(30)).await;
    let types: Vec<&str> = events.iter().filter_map(|e| e.header("ce_type")).collect();
    assert_eq!(types, ["OrderCreated", "OrderPaid", "OrderShipped"]);
    assert!(events.iter().all(|e| e.key == id));
    let fulfilled =
        read_topic_async(bootstrap, &names.fulfilment, 1, Duration::from_secs(30)).await;
    assert_eq!(fulfilled.len(), 1);
    assert_eq!(fulfilled[0].header("ce_type"), Some("OrderFulfilled"));
    assert_eq!(fulfilled[0].payload["orderId"], Value::from(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_started_first_creates_its_topics_and_an_order_runs_to_fulfilment() {
    let mut cluster = Cluster::builder(TestBroker::apache()).start().await;
    assert!(
        topic_layout(
            cluster.broker.bootstrap_servers(),
            &cluster.broker.names.orders
        )
        .is_none(),
        "a fresh cluster has no orders topic"
    );

    let worker = cluster.spawn(Role::Worker);
    cluster.wait_until_assigned();
    assert_worker_made_its_topics(&cluster);

    let api = cluster.spawn(Role::Api);
    let id = first_order_to_fulfilment(&cluster).await;
    assert_events_on_the_topics(&cluster, &id).await;

    cluster.stop_within(api, Duration::from_secs(30));
    cluster.stop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_the_cluster_refuses_stops_the_role_with_the_reason() {
    // Five replicas on three brokers.
    let cluster = Cluster::builder(TestBroker::apache())
        .env("KafkaConfiguration__Orders__ReplicationFactor", "5")
        .start()
        .await;
    for role in ["run-worker", "serve-api"] {
        let mut process = cluster.launch(&[role], &cluster.env);
        let code = tokio::task::block_in_place(|| process.wait_exit(Duration::from_secs(60)));
        let log = process.log_text();
        assert_eq!(code, Some(1), "{role}:\n{log}");
        let refusal = log
            .lines()
            .find(|l| l.contains("Kafka refused topic"))
            .unwrap_or_else(|| panic!("{role} did not say why:\n{log}"));
        assert!(
            refusal.contains(&cluster.broker.names.orders) && refusal.contains("ReplicationFactor"),
            "{refusal}"
        );
    }
}

/// The compression codec of every record batch in a partition's log
/// segments (the low three bits of a batch's attributes: 4 is zstd).
fn batch_codecs(partition_dir: &std::path::Path) -> Vec<u16> {
    let mut codecs = Vec::new();
    let Ok(entries) = std::fs::read_dir(partition_dir) else {
        return codecs;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry.path().extension().is_none_or(|e| e != "log") {
            continue;
        }
        let bytes = std::fs::read(entry.path()).expect("log segment");
        // baseOffset i64, batchLength i32, partitionLeaderEpoch i32,
        // magic i8, crc u32, attributes i16, …
        let mut at = 0;
        while at + 23 <= bytes.len() {
            let length = i32::from_be_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
            if length <= 0 {
                break;
            }
            let attributes = u16::from_be_bytes([bytes[at + 21], bytes[at + 22]]);
            codecs.push(attributes & 0x7);
            at += 12 + length as usize;
        }
    }
    codecs
}

/// `[KafkaConfiguration.Producer]` reaches librdkafka: with
/// `compression.type = zstd` the brokers store zstd batches, and consumers
/// read the events intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_properties_reach_the_broker_zstd_batches() {
    let mut cluster = Cluster::builder(TestBroker::apache())
        .env("KafkaConfiguration__Producer__compression.type", "zstd")
        .apis(1)
        .start()
        .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let body = order_body(&format!("Zed {i}"), "squeezed", 1);
        ids.push(cluster.create_order(&body).await.to_string());
    }
    let (broker, names) = (&cluster.broker, &cluster.broker.names);
    let events = read_topic_async(
        broker.bootstrap_servers(),
        &names.orders,
        20,
        Duration::from_secs(30),
    )
    .await;
    let mut keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
    keys.sort();
    ids.sort();
    assert_eq!(keys, ids);
    assert!(events.iter().all(|e| e.payload["customerName"]
        .as_str()
        .is_some_and(|n| n.starts_with("Zed"))));

    // Every node holds every partition (replication factor 3).
    let log_dir = broker.cluster().log_dir(1);
    let codecs: Vec<u16> = (0..common::PARTITIONS)
        .flat_map(|p| batch_codecs(&log_dir.join(format!("{}-{p}", names.orders))))
        .collect();
    assert!(
        !codecs.is_empty(),
        "no batches found under {}",
        log_dir.display()
    );
    assert!(
        codecs.iter().all(|c| *c == 4),
        "codecs {codecs:?} (4 = zstd)"
    );
    cluster.stop_within(0, Duration::from_secs(30));
}
