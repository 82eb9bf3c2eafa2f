//! The fleet admin: every `run-worker` instance publishes its state to the
//! telemetry topic and `GET /admin/api/instances` (and `orderflow admin
//! instances`) lists them with their partitions; a worker that stops
//! leaves the list.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use sqlx::PgPool;

use crate::common::wait::eventually;
use crate::common::{order_body, Cluster, Metrics, Role, TestBroker, PARTITIONS};

async fn instances(cluster: &Cluster) -> Vec<Value> {
    let response = cluster
        .http
        .get(format!("{}/admin/api/instances", cluster.base()))
        .send()
        .await
        .expect("GET instances");
    assert_eq!(response.status(), 200);
    response.json::<Vec<Value>>().await.expect("instances")
}

fn partitions(instance: &Value) -> BTreeSet<i64> {
    instance["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
        .collect()
}

/// The instances `up`, when there are `n` of them and between them they
/// hold every partition, each once.
fn settled(list: &[Value], n: usize) -> Option<Vec<Value>> {
    let up: Vec<Value> = list
        .iter()
        .filter(|i| i["state"] == "up")
        .cloned()
        .collect();
    let held: Vec<i64> = up.iter().flat_map(partitions).collect();
    let all: BTreeSet<i64> = (0..i64::from(PARTITIONS)).collect();
    // Each holds some: with fewer instances than partitions, one holding
    // none is still joining (a cooperative rebalance gives it its share in
    // a second round) and may not have reported its first status yet.
    let each_holds = up.iter().all(|i| !partitions(i).is_empty());
    (up.len() == n
        && each_holds
        && held.len() == all.len()
        && held.iter().copied().collect::<BTreeSet<_>>() == all)
        .then_some(up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_lists_every_worker_with_its_partitions_and_drops_one_that_stops() {
    let mut cluster = Cluster::builder(TestBroker::apache())
        .env("Admin__Enabled", "true")
        .env("Admin__TelemetryIntervalMs", "500")
        .env("Worker__BalanceIntervalMs", "500")
        .apis(1)
        .workers(2)
        .start()
        .await;
    cluster.wait_until_assigned();

    let both = eventually(Duration::from_secs(30), || async {
        settled(&instances(&cluster).await, 2)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "two instances sharing the partitions: {:?}",
            cluster.logs(Role::Worker)
        )
    });
    for i in &both {
        assert!(i["instance"].as_str().is_some_and(|s| !s.is_empty()), "{i}");
        assert!(i["workers"].as_u64().is_some_and(|w| w >= 1), "{i}");
        assert_eq!(i["paused"], false, "{i}");
        assert!(
            i["version"].is_string() && i["startedAt"].is_string() && i["lastSeen"].is_string(),
            "{i}"
        );
    }
    assert_ne!(both[0]["instance"], both[1]["instance"]);

    // The CLI, through the API, sees the same two.
    let base = cluster.base();
    let printed = cluster.orderflow(&["admin", "--url", &base, "instances", "--json"]);
    let listed: Vec<Value> = serde_json::from_str(&printed).expect("JSON array");
    let names = |l: &[Value]| -> BTreeSet<String> {
        l.iter()
            .filter_map(|i| i["instance"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(names(&listed), names(&both));

    // A worker count set for the fleet reaches both instances' telemetry;
    // `auto` gives it back to the lag balancer (1 without lag).
    let set = cluster.orderflow(&["admin", "--url", &base, "workers", "4"]);
    assert!(set.contains("\"count\":4"), "{set}");
    for wanted in [4, 1] {
        let reached = eventually(Duration::from_secs(20), || async {
            let list = instances(&cluster).await;
            (list.len() == 2 && list.iter().all(|i| i["workers"] == wanted)).then_some(())
        })
        .await;
        assert!(
            reached.is_some(),
            "{wanted} workers on both: {:?}",
            instances(&cluster).await
        );
        if wanted == 4 {
            cluster.orderflow(&["admin", "--url", &base, "workers", "auto"]);
        }
    }
    let refused = cluster
        .http
        .post(format!("{base}/admin/api/workers"))
        .json(&serde_json::json!({"count": 99}))
        .send()
        .await
        .expect("POST workers");
    assert_eq!(refused.status(), 400);
    let problem: Value = refused.json().await.expect("problem");
    assert_eq!(problem["errors"][0]["field"], "count", "{problem}");

    // A restart of one instance: it leaves the group and rejoins (its log
    // says so, the other's does not), and the two share the partitions again.
    let target = both[0]["instance"].as_str().expect("instance").to_string();
    let restarted = cluster.orderflow(&["admin", "--url", &base, "restart", "--instance", &target]);
    assert!(restarted.contains(&target), "{restarted}");
    let logged = eventually(Duration::from_secs(20), || async {
        let logs: Vec<String> = cluster
            .live(Role::Worker)
            .into_iter()
            .map(|i| cluster.members[i].process.log_text())
            .collect();
        (logs
            .iter()
            .filter(|l| l.contains("consumption restarted"))
            .count()
            == 1)
            .then_some(())
    })
    .await;
    assert!(
        logged.is_some(),
        "exactly one instance restarted: {}",
        cluster.logs(Role::Worker)
    );
    let again = eventually(Duration::from_secs(30), || async {
        settled(&instances(&cluster).await, 2)
    })
    .await;
    assert!(
        again.is_some(),
        "both share the partitions after the restart"
    );

    // Pause and resume from the CLI reach both instances' telemetry.
    for (action, paused) in [("pause", true), ("resume", false)] {
        cluster.orderflow(&["admin", "--url", &base, action]);
        let seen = eventually(Duration::from_secs(20), || async {
            let list = instances(&cluster).await;
            (list.len() == 2 && list.iter().all(|i| i["paused"] == paused)).then_some(())
        })
        .await;
        assert!(seen.is_some(), "{action}: {:?}", instances(&cluster).await);
    }

    // A worker that stops cleanly leaves a tombstone: one instance, which
    // now holds every partition.
    let first = cluster.live(Role::Worker)[0];
    cluster.stop(first);
    let one = eventually(Duration::from_secs(30), || async {
        let list = instances(&cluster).await;
        (list.len() == 1).then_some(()).and(settled(&list, 1))
    })
    .await;
    assert!(
        one.is_some(),
        "the stopped worker left the list: {:?}",
        instances(&cluster).await
    );
}

/// `orderflow_events_handled_total{type="OrderCreated",outcome}` over the
/// running workers.
async fn created_handled(cluster: &Cluster, outcome: &str) -> f64 {
    let mut sum = 0.0;
    for admin in cluster.worker_admins() {
        sum += Metrics::scrape(&cluster.http, &admin)
            .await
            .sample(
                "orderflow_events_handled_total",
                &[("type", "OrderCreated"), ("outcome", outcome)],
            )
            .unwrap_or(0.0);
    }
    sum
}

/// A rewind to a time before the last 100 orders: every one of their
/// events is delivered again and found handled (the inbox), nothing
/// changes; skipping to `latest` needs a confirmation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_before_the_last_100_orders_redelivers_them_and_changes_nothing() {
    let mut cluster = Cluster::builder(TestBroker::apache())
        .env("Admin__Enabled", "true")
        .env("Worker__CommitIntervalMs", "200")
        .apis(1)
        .workers(2)
        .start()
        .await;
    cluster.wait_until_assigned();
    let pool = PgPool::connect(&cluster.db.url).await.expect("db");
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    for i in 0..100 {
        cluster
            .create_order(&order_body(&format!("Rewind {i}"), "untracked", 1))
            .await;
    }
    let reserved = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM orders WHERE status = 'Reserved'")
            .fetch_one(&pool)
            .await
            .expect("count")
    };
    let all = eventually(Duration::from_secs(60), || async {
        (reserved().await == 100).then_some(())
    })
    .await;
    assert!(all.is_some(), "100 orders Reserved");
    let handled = created_handled(&cluster, "ok").await;
    assert_eq!(handled, 100.0);
    let duplicates = created_handled(&cluster, "duplicate").await;

    let base = cluster.base();
    let refused = cluster
        .http
        .post(format!("{base}/admin/api/offsets"))
        .json(&serde_json::json!({"to": "latest"}))
        .send()
        .await
        .expect("POST offsets");
    assert_eq!(refused.status(), 400);
    let problem: Value = refused.json().await.expect("problem");
    assert_eq!(problem["errors"][0]["field"], "confirm", "{problem}");

    let moved = cluster.orderflow(&[
        "admin",
        "--url",
        &base,
        "offsets",
        "--to",
        &since.to_rfc3339(),
    ]);
    assert!(moved.contains("\"time\""), "{moved}");
    let redelivered = eventually(Duration::from_secs(60), || async {
        (created_handled(&cluster, "duplicate").await - duplicates >= 100.0).then_some(())
    })
    .await;
    assert!(
        redelivered.is_some(),
        "the 100 OrderCreated delivered again: {} duplicates\n{}",
        created_handled(&cluster, "duplicate").await - duplicates,
        cluster.logs(Role::Worker)
    );
    assert_eq!(
        created_handled(&cluster, "ok").await,
        handled,
        "nothing handled twice"
    );
    assert_eq!(reserved().await, 100);
    let entries: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM order_timeline")
        .fetch_one(&pool)
        .await
        .expect("timeline");
    assert_eq!(entries, 200, "Pending and Reserved once each");
}
