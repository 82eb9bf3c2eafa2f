//! The pipeline on Apache Kafka as a Helm install starts it: pods in any
//! order on a cluster that never auto-creates topics. `run-worker` first
//! creates the topics it consumes (partitions and replication as
//! configured); `serve-api` then takes an order through its whole life; a
//! topic the cluster refuses stops the role with the reason.

mod common;

use std::time::{Duration, Instant};

use common::{order_body, Backend, Process, TestBroker, TestDb};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_started_first_creates_its_topics_and_an_order_runs_to_fulfilment() {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = TestBroker::apache();
    let env = common::env_for(&db, &broker);
    let dir = tempfile::tempdir().expect("temp dir");
    let names = broker.names.clone();
    let bootstrap = broker.bootstrap_servers().to_string();
    assert!(
        topic_layout(&bootstrap, &names.orders).is_none(),
        "a fresh cluster has no orders topic"
    );

    let mut worker = Process::spawn(&["run-worker"], &env, dir.path());
    tokio::task::block_in_place(|| {
        worker.wait_for_log("partitions assigned", Duration::from_secs(60));
    });
    // Before any API exists, the worker made what it consumes and writes.
    for topic in [&names.orders, &names.dead_letters] {
        assert_eq!(
            topic_layout(&bootstrap, topic),
            Some((
                common::PARTITIONS as usize,
                vec![3; common::PARTITIONS as usize]
            )),
            "{topic}"
        );
    }
    assert_eq!(
        topic_layout(&bootstrap, &names.control),
        Some((1, vec![3])),
        "the control topic: one partition"
    );

    let mut api = Process::spawn(&["serve-api"], &env, dir.path());
    let base = format!("http://{}", api.http_addr());
    let http = reqwest::Client::new();
    let created = Instant::now();
    let id = common::create_order_at(&http, &base, &order_body("First Order", "gadget", 1))
        .await
        .to_string();
    common::wait_for_status(&http, &base, &id, "Reserved", Duration::from_secs(60)).await;
    // Reported, not asserted: the README's figure comes from here.
    println!(
        "first order Reserved {} ms after its creation (worker started first)",
        created.elapsed().as_millis()
    );

    let paid = http
        .post(format!("{base}/api/orders/{id}/payments"))
        .json(&json!({"paymentId": "pay-first"}))
        .send()
        .await
        .expect("pay");
    assert_eq!(paid.status(), 200);
    common::wait_for_status(
        &http,
        &base,
        &id,
        "AwaitingShipment",
        Duration::from_secs(60),
    )
    .await;
    let shipped = http
        .post(format!("{base}/api/orders/{id}/shipments"))
        .json(&json!({"trackingNumber": "1Z-FIRST"}))
        .send()
        .await
        .expect("ship");
    assert_eq!(shipped.status(), 200);
    let order =
        common::wait_for_status(&http, &base, &id, "Fulfilled", Duration::from_secs(60)).await;
    let timeline: Vec<&str> = order["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|t| t["status"].as_str())
        .collect();
    assert_eq!(
        timeline,
        [
            "Pending",
            "Reserved",
            "Paid",
            "AwaitingShipment",
            "Shipped",
            "Fulfilled"
        ]
    );

    // The events, as any consumer of the topics sees them.
    let (b, orders) = (bootstrap.clone(), names.orders.clone());
    let events = tokio::task::spawn_blocking(move || {
        common::read_topic(&b, &orders, 3, Duration::from_secs(30))
    })
    .await
    .expect("reader");
    let types: Vec<&str> = events
        .iter()
        .filter_map(|e| e.headers.get("ce_type").map(String::as_str))
        .collect();
    assert_eq!(types, ["OrderCreated", "OrderPaid", "OrderShipped"]);
    assert!(events.iter().all(|e| e.key == id));
    let fulfilment = names.fulfilment.clone();
    let fulfilled = tokio::task::spawn_blocking(move || {
        common::read_topic(&bootstrap, &fulfilment, 1, Duration::from_secs(30))
    })
    .await
    .expect("reader");
    assert_eq!(fulfilled.len(), 1);
    assert_eq!(
        fulfilled[0].headers.get("ce_type").map(String::as_str),
        Some("OrderFulfilled")
    );
    assert_eq!(fulfilled[0].payload["orderId"], Value::from(id.as_str()));

    for p in [&api, &worker] {
        p.signal("TERM");
    }
    tokio::task::block_in_place(|| {
        assert_eq!(api.wait_exit(Duration::from_secs(30)), Some(0));
        assert_eq!(worker.wait_exit(Duration::from_secs(60)), Some(0));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_the_cluster_refuses_stops_the_role_with_the_reason() {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = TestBroker::apache();
    let mut env = common::env_for(&db, &broker);
    // Five replicas on three brokers.
    env.push((
        "KafkaConfiguration__Orders__ReplicationFactor".into(),
        "5".into(),
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    for role in ["run-worker", "serve-api"] {
        let mut process = Process::spawn(&[role], &env, dir.path());
        let code = tokio::task::block_in_place(|| process.wait_exit(Duration::from_secs(60)));
        let log = process.log_text();
        assert_eq!(code, Some(1), "{role}:\n{log}");
        let refusal = log
            .lines()
            .find(|l| l.contains("Kafka refused topic"))
            .unwrap_or_else(|| panic!("{role} did not say why:\n{log}"));
        assert!(
            refusal.contains(&broker.names.orders) && refusal.contains("ReplicationFactor"),
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
    let db = TestDb::new(Backend::Postgres).await;
    let broker = TestBroker::apache();
    let mut env = common::env_for(&db, &broker);
    env.push((
        "KafkaConfiguration__Producer__compression.type".into(),
        "zstd".into(),
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut api = Process::spawn(&["serve-api"], &env, dir.path());
    let base = format!("http://{}", api.http_addr());
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..20 {
        let body = order_body(&format!("Zed {i}"), "squeezed", 1);
        ids.push(
            common::create_order_at(&http, &base, &body)
                .await
                .to_string(),
        );
    }
    let (bootstrap, topic) = (
        broker.bootstrap_servers().to_string(),
        broker.names.orders.clone(),
    );
    let events = tokio::task::spawn_blocking(move || {
        common::read_topic(&bootstrap, &topic, 20, Duration::from_secs(30))
    })
    .await
    .expect("reader");
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
        .flat_map(|p| batch_codecs(&log_dir.join(format!("{}-{p}", broker.names.orders))))
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
    api.signal("TERM");
    assert_eq!(
        tokio::task::block_in_place(|| api.wait_exit(Duration::from_secs(30))),
        Some(0)
    );
}
