//! The proof suite: the pipeline's guarantees (no accepted order lost,
//! per-order ordering, each event's effects exactly once, no partition
//! blocked forever) under crashes, outages, rebalances, duplicates and
//! poison, with the real binary as separate processes. Scenarios 1-8 and 12
//! run on both brokers (`…::mock` on librdkafka's mock cluster, `…::apache`
//! on the 3-node Apache Kafka cluster, replication factor 3); 9-11 take
//! Apache Kafka nodes away and run there only. The rebalancing scenarios
//! (5 and 8) also run on Apache Kafka under each group setup (`…::apache`
//! cooperative-sticky, `…::apache_eager`, `…::apache_kip848`), their
//! figures side by side (issue #23). Each scenario prints a `PROOF …` line
//! of figures and leaves them in target/proof/ (PROOF.md has the tables of
//! the last run).
//!
//! `cargo test --test proof -- --nocapture --test-threads 2`
//!
//! Its own binary (it has its own command), on the harness the integration
//! tests use: `tests/common` (the cluster harness, brokers, processes, the
//! waits) and `tests/proof/harness.rs` (driver and checker) on top.

// `tests/common/mod.rs`: the shared harness, of which the proof suite uses
// a part (the integration binary uses, and so checks, all of it).
mod common;
#[path = "proof/harness.rs"]
mod harness;

use std::time::Duration;

use common::kafka_cluster::ClusterOptions;
use common::{Role, TestBroker};
use harness::{check, Driver, GroupSetup, Harness, TopicHistory};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// How long one step of an order may wait for the pipeline, faults
/// included: longer than the longest fault.
const PATIENCE: Duration = Duration::from_secs(120);

async fn after(seconds: f64) {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
}

/// A scenario on both brokers. `own` gives the Apache Kafka run a cluster of
/// its own (its fault takes nodes away); the others share one, each with
/// topics and a group of its own.
macro_rules! on_both_brokers {
    ($scenario:ident) => {
        on_both_brokers!($scenario, TestBroker::apache());
    };
    ($scenario:ident, own) => {
        on_both_brokers!($scenario, TestBroker::apache_own(ClusterOptions::default()));
    };
    ($scenario:ident, $apache:expr) => {
        mod $scenario {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mock() {
                super::$scenario(TestBroker::mock()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn apache() {
                super::$scenario($apache).await
            }
        }
    };
}

/// A rebalancing scenario, given the workers' group setup: on Apache Kafka
/// under cooperative-sticky (the default), the eager assignor and KIP-848;
/// on the mock cluster under the eager assignor, as every test on it runs
/// (its cooperative rebalances left partitions unowned for ~20 s, and once
/// aborted librdkafka in `rd_kafka_cgrp_terminated`).
macro_rules! under_every_group_setup {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mock() {
                super::$scenario(TestBroker::mock(), GroupSetup::Eager).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn apache() {
                super::$scenario(TestBroker::apache(), GroupSetup::Cooperative).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn apache_eager() {
                super::$scenario(TestBroker::apache(), GroupSetup::Eager).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn apache_kip848() {
                super::$scenario(TestBroker::apache(), GroupSetup::Kip848).await
            }
        }
    };
}

fn producer(harness: &Harness) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", harness.broker().bootstrap_servers())
        .create()
        .expect("producer")
}

async fn s1_api_killed_during_a_burst_of_creations(broker: TestBroker) {
    let mut h = Harness::start("1-api-sigkill", broker, 2, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(300, 60, 64);
    let faults = async {
        after(2.0).await;
        let api = h.cluster.live(Role::Api)[0];
        h.cluster.kill(api);
        after(2.0).await;
        h.cluster.spawn(Role::Api);
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

async fn s2_worker_killed_mid_batch_and_restarted(broker: TestBroker) {
    let mut h = Harness::start("2-worker-sigkill", broker, 1, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(300, 50, 64);
    let faults = async {
        after(3.0).await;
        let worker = h.cluster.live(Role::Worker)[0];
        h.cluster.kill(worker);
        after(3.0).await;
        h.cluster.spawn(Role::Worker);
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

async fn s3_kafka_unavailable_for_30_seconds(broker: TestBroker) {
    // On the mock cluster the workers' sessions outlast the outage: its
    // group coordinator names a member after the address of its record, so
    // a member expired during the outage that rejoins under its old id can
    // land on a fresh joiner's record at the reused address, and the mock
    // aborts the whole test process (`Assertion '!member->resp'`). Apache
    // Kafka expires them (6 s), as in production.
    let env: &[(&str, &str)] = if broker.is_apache() {
        &[]
    } else {
        &[("Worker__SessionTimeoutMs", "45000")]
    };
    let h = Harness::start_with("3-kafka-outage", broker, 1, 2, env).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(150, 15, 64);
    let faults = async {
        after(3.0).await;
        h.broker().outage_start();
        after(30.0).await;
        h.broker().outage_end();
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

async fn s4_postgres_connections_cut_for_10_seconds(broker: TestBroker) {
    let h = Harness::start("4-postgres-cut", broker, 2, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(200, 20, 64);
    let faults = async {
        after(3.0).await;
        h.pg_proxy().cut();
        after(10.0).await;
        h.pg_proxy().restore();
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

async fn s5_workers_added_and_removed_during_load(broker: TestBroker, setup: GroupSetup) {
    // The first two workers stay throughout: under an incremental protocol
    // the partitions they keep never move, and their orders are the ones
    // that should not notice the four rebalances around them.
    let mut h = Harness::start_under("5-rebalance", broker, 1, 2, setup).await;
    h.cluster.wait_until_each_worker_owns_partitions();
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(300, 25, 64);
    let faults = async {
        after(2.0).await;
        h.cluster.spawn(Role::Worker);
        after(2.0).await;
        h.cluster.spawn(Role::Worker);
        after(2.0).await;
        let third = h.cluster.live(Role::Worker)[2];
        h.cluster.stop(third);
        after(2.0).await;
        let fourth = h.cluster.live(Role::Worker)[2];
        h.cluster.kill(fourth);
        after(1.0).await;
        h.cluster.spawn(Role::Worker);
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

async fn s6_every_event_delivered_twice(broker: TestBroker) {
    let h = Harness::start("6-duplicate-delivery", broker, 1, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(150, 30, 64);
    let bootstrap = h.broker().bootstrap_servers().to_string();
    let topic = h.broker().names.orders.clone();
    let producer = producer(&h);
    // Mid-run, everything on the topic so far is produced again, byte for
    // byte (same key, payload and CloudEvents headers), as a producer's
    // retry or a replayed batch would.
    let duplicates = async {
        after(4.0).await;
        let events = tokio::task::spawn_blocking(move || {
            common::read_topic(&bootstrap, &topic, 0, Duration::from_secs(5))
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
                    FutureRecord::to(&h.broker().names.orders)
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

async fn s7_poison_messages_between_good_ones(broker: TestBroker) {
    let h = Harness::start("7-poison", broker, 1, 2).await;
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
                    FutureRecord::to(&h.broker().names.orders)
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

async fn s8_rolling_restart_of_every_process(broker: TestBroker, setup: GroupSetup) {
    let mut h = Harness::start_under("8-rolling-restart", broker, 2, 2, setup).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(300, 20, 64);
    let faults = async {
        // Each original pod in turn: SIGTERM, drain, exit 0, replacement.
        let originals: Vec<(usize, Role)> = h
            .cluster
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (i, m.role))
            .collect();
        for (i, role) in originals {
            after(2.0).await;
            h.cluster.stop(i);
            h.cluster.spawn(role);
        }
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

/// The workers stop (SIGTERM) while orders keep coming, and the messages
/// they have not consumed are lost: on Apache Kafka every record of the
/// orders topic is deleted up to the end of each partition (a retention
/// shorter than the outage); the mock cluster answers no DeleteRecords, so
/// there the group's offsets are moved to the end (a group reset to
/// latest). The workers start again; only the reconciler can move the
/// orders whose events are gone.
async fn lose_the_unconsumed_orders_events(h: &mut Harness) {
    let workers = h.cluster.live(Role::Worker);
    for i in &workers {
        h.stop(*i).await;
    }
    // The load goes on meanwhile: events nobody will consume.
    after(2.0).await;
    let names = h.broker().names.clone();
    let bootstrap = h.broker().bootstrap_servers().to_string();
    let lost = if h.broker().is_apache() {
        harness::delete_to_the_end(&bootstrap, &names.orders, &names.group).await
    } else {
        blocking(|| harness::skip_to_the_end(&bootstrap, &names.orders, &names.group))
    };
    println!("{lost} unconsumed events of the orders topic lost");
    assert!(lost > 0, "events were lost");
    for _ in &workers {
        h.cluster.spawn(Role::Worker);
    }
    h.cluster.wait_until_assigned();
}

async fn s12_orders_topic_messages_lost_during_load(broker: TestBroker) {
    let mut h = Harness::start_with(
        "12-topic-loss",
        broker,
        1,
        2,
        &[
            ("Reconcile__StuckAfterSeconds", "5"),
            ("Reconcile__IntervalMs", "1000"),
        ],
    )
    .await;
    h.cluster.wait_until_assigned();
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(300, 20, 64);
    let faults = async {
        for _ in 0..2 {
            after(3.0).await;
            lose_the_unconsumed_orders_events(&mut h).await;
        }
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    if h.broker().is_apache() {
        h.topic = TopicHistory::Truncated;
    }
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

on_both_brokers!(s1_api_killed_during_a_burst_of_creations);
on_both_brokers!(s2_worker_killed_mid_batch_and_restarted);
on_both_brokers!(s3_kafka_unavailable_for_30_seconds, own);
on_both_brokers!(s4_postgres_connections_cut_for_10_seconds);
under_every_group_setup!(s5_workers_added_and_removed_during_load);
on_both_brokers!(s6_every_event_delivered_twice);
on_both_brokers!(s7_poison_messages_between_good_ones);
under_every_group_setup!(s8_rolling_restart_of_every_process);
on_both_brokers!(s12_orders_topic_messages_lost_during_load);

/// Runs blocking cluster work (a node's exit or start takes seconds) off
/// the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The node that leads the orders topic's partition 0, which every
/// scenario's load keeps busy.
fn busy_leader(h: &Harness) -> i32 {
    blocking(|| h.broker().cluster().leader_of(&h.broker().names.orders, 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_partition_leader_killed_and_back_20_seconds_later() {
    let broker = TestBroker::apache_own(ClusterOptions::default());
    let h = Harness::start("9-leader-sigkill", broker, 1, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(300, 20, 64);
    let faults = async {
        after(3.0).await;
        let leader = busy_leader(&h);
        println!("killing node {leader}, leader of partition 0");
        blocking(|| h.broker().cluster().kill(leader));
        after(20.0).await;
        blocking(|| h.broker().cluster().restart(leader));
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_a_brokers_connections_cut_for_20_seconds() {
    // Clients reach every node through a proxy of the test; the nodes
    // replicate among themselves directly, so only the clients lose it.
    let broker = TestBroker::apache_own(ClusterOptions {
        proxied: true,
        ..ClusterOptions::default()
    });
    let h = Harness::start("10-broker-cut", broker, 1, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(300, 20, 64);
    let faults = async {
        after(3.0).await;
        let leader = busy_leader(&h);
        println!("cutting the clients' connections to node {leader}");
        h.broker().cluster().proxy(leader).cut();
        after(20.0).await;
        h.broker().cluster().proxy(leader).restore();
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_cluster_down_to_one_node_for_20_seconds() {
    let broker = TestBroker::apache_own(ClusterOptions::default());
    let h = Harness::start("11-one-node-left", broker, 1, 2).await;
    let driver = Driver::new(&h, PATIENCE);
    let load = driver.run(300, 20, 64);
    let faults = async {
        after(3.0).await;
        // The busy partition's leader stays, alone: below
        // min.insync.replicas = 2 it must refuse acks=all writes, and the
        // relay must wait rather than lose or duplicate.
        let leader = busy_leader(&h);
        let others: Vec<i32> = h
            .broker()
            .cluster()
            .node_ids()
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        println!("killing nodes {others:?}; node {leader} stays");
        blocking(|| others.iter().for_each(|id| h.broker().cluster().kill(*id)));
        after(20.0).await;
        blocking(|| h.broker().cluster().restart_nodes(&others));
    };
    let (lifecycles, ()) = tokio::join!(load, faults);
    check(&h, &lifecycles, &[]).await.report_and_assert();
}
