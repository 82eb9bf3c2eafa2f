//! The proof suite: DESIGN.md's guarantees (no accepted order lost,
//! per-order ordering, each event's effects exactly once, no partition
//! blocked forever) under crashes, outages, rebalances, duplicates and
//! poison, with the real binary as separate processes. Each scenario prints
//! a `PROOF …` line of figures and leaves them in target/proof/ (PROOF.md
//! has the table of the last run).
//!
//! `cargo test --test proof -- --nocapture --test-threads 2`

mod common;
#[path = "proof/harness.rs"]
mod harness;
#[path = "proof/proxy.rs"]
mod proxy;

use std::time::Duration;

use harness::{check, Driver, Harness, Role};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// How long one step of an order may wait for the pipeline, faults
/// included: longer than the longest fault.
const PATIENCE: Duration = Duration::from_secs(120);

async fn after(seconds: f64) {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
}

fn producer(harness: &Harness) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", harness.broker.bootstrap_servers())
        .create()
        .expect("producer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_api_killed_during_a_burst_of_creations() {
    let mut h = Harness::start("1-api-sigkill", 2, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(300, 60, 64);
    let faults = async {
        after(2.0).await;
        let api = h.live(Role::Api)[0];
        h.kill(api);
        after(2.0).await;
        h.spawn(Role::Api);
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_worker_killed_mid_batch_and_restarted() {
    let mut h = Harness::start("2-worker-sigkill", 1, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(300, 50, 64);
    let faults = async {
        after(3.0).await;
        let worker = h.live(Role::Worker)[0];
        h.kill(worker);
        after(3.0).await;
        h.spawn(Role::Worker);
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_kafka_unavailable_for_30_seconds() {
    let h = Harness::start("3-kafka-outage", 1, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(150, 15, 64);
    let faults = async {
        after(3.0).await;
        h.broker.broker_down().expect("broker down");
        after(30.0).await;
        h.broker.broker_up().expect("broker up");
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_postgres_connections_cut_for_10_seconds() {
    let h = Harness::start("4-postgres-cut", 2, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(200, 20, 64);
    let faults = async {
        after(3.0).await;
        h.pg_proxy.cut();
        after(10.0).await;
        h.pg_proxy.restore();
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_workers_added_and_removed_during_load() {
    let mut h = Harness::start("5-rebalance", 1, 1).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(300, 25, 64);
    let faults = async {
        after(2.0).await;
        h.spawn(Role::Worker);
        after(2.0).await;
        h.spawn(Role::Worker);
        after(2.0).await;
        let oldest = h.live(Role::Worker)[0];
        h.stop(oldest);
        after(2.0).await;
        let next = h.live(Role::Worker)[0];
        h.kill(next);
        after(1.0).await;
        h.spawn(Role::Worker);
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_every_event_delivered_twice() {
    let h = Harness::start("6-duplicate-delivery", 1, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(150, 30, 64);
    let bootstrap = h.broker.bootstrap_servers().to_string();
    let producer = producer(&h);
    // Mid-run, everything on the topic so far is produced again, byte for
    // byte (same key, payload and CloudEvents headers), as a producer's
    // retry or a replayed batch would.
    let duplicates = async {
        after(4.0).await;
        let events = tokio::task::spawn_blocking(move || {
            common::read_topic(&bootstrap, common::TOPIC, 0, Duration::from_secs(5))
        })
        .await
        .expect("read");
        for e in &events {
            let mut headers = OwnedHeaders::new();
            for (k, v) in &e.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                });
            }
            let payload = e.payload.to_string();
            producer
                .send(
                    FutureRecord::to(common::TOPIC)
                        .key(&e.key)
                        .payload(&payload)
                        .headers(headers),
                    Duration::from_secs(10),
                )
                .await
                .expect("duplicate produced");
        }
        events.len()
    };
    let (lifecycles, duplicated) = tokio::join!(load, duplicates);
    println!("re-produced {duplicated} events");
    assert!(duplicated > 0, "something to duplicate");
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_poison_messages_between_good_ones() {
    let h = Harness::start("7-poison", 1, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(200, 25, 64);
    let producer = producer(&h);
    let poison = async {
        let mut keys = Vec::new();
        for n in 0..30 {
            after(0.2).await;
            let key = format!("poison-{n}");
            let missing = uuid::Uuid::new_v4();
            let (kind, payload) = match n % 3 {
                0 => ("OrderCreated", "{not json".to_string()),
                // A well-formed event for an order that does not exist.
                1 => (
                    "OrderPaid",
                    format!(r#"{{"orderId":"{missing}","paymentId":"p"}}"#),
                ),
                _ => ("OrderShipped", r#"{"trackingNumber":"T"}"#.to_string()),
            };
            let id = uuid::Uuid::new_v4().to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "ce_type",
                    value: Some(kind),
                })
                .insert(Header {
                    key: "ce_id",
                    value: Some(id.as_str()),
                });
            producer
                .send(
                    FutureRecord::to(common::TOPIC)
                        .key(&key)
                        .payload(&payload)
                        .headers(headers),
                    Duration::from_secs(10),
                )
                .await
                .expect("poison produced");
            keys.push(key);
        }
        keys
    };
    let (lifecycles, keys) = tokio::join!(load, poison);
    check(&h, &lifecycles, &keys).await.report_and_assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_rolling_restart_of_every_process() {
    let mut h = Harness::start("8-rolling-restart", 2, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(300, 20, 64);
    let faults = async {
        // Each original pod in turn: SIGTERM, drain, exit 0, replacement.
        let originals: Vec<(usize, Role)> = h
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (i, m.role))
            .collect();
        for (i, role) in originals {
            after(2.0).await;
            h.stop(i);
            h.spawn(role);
        }
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}
