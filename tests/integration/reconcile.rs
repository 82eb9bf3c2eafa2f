//! No accepted order is ever stranded: `orderflow reconcile` finds an order
//! whose event was published but never handled and publishes that event
//! again with its original id (a worker then applies it once), and a
//! customer notification whose webhook send failed is retried by the
//! worker's sweep, then recorded as failed on the order's timeline. On
//! PostgreSQL and the mock cluster, with the real binary as processes.

use std::time::Duration;

use serde_json::Value;

use crate::common::{
    self, order_body, read_topic_async, run_order_to_fulfilment, timeline, Cluster, Metrics,
    Received, Role, TestBroker, Webhook, LIFECYCLE,
};

/// `orderflow reconcile --json --stuck-after-seconds 0` and `extra`: the
/// stuck orders it printed.
fn reconcile(cluster: &Cluster, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["reconcile", "--json", "--stuck-after-seconds", "0"];
    args.extend_from_slice(extra);
    let out = cluster.orderflow(&args);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("`orderflow {args:?}` printed no JSON array ({e}):\n{out}"))
}

/// The entry for order `id` in a `reconcile --json` listing.
fn entry_for(listing: &[Value], id: &str) -> Option<Value> {
    listing.iter().find(|e| e["orderId"] == id).cloned()
}

/// Order `id`'s messages on the orders topic, once `expected` are there (or
/// 30 s passed), and whatever came within a moment after.
async fn copies_on_topic(cluster: &Cluster, id: &str, expected: usize) -> Vec<Received> {
    let events = read_topic_async(
        cluster.broker.bootstrap_servers(),
        &cluster.broker.names.orders,
        expected,
        Duration::from_secs(30),
    )
    .await;
    events.into_iter().filter(|e| e.key == id).collect()
}

/// The first worker's /metrics.
async fn worker_metrics(cluster: &Cluster) -> Metrics {
    let admin = cluster
        .worker_admins()
        .into_iter()
        .next()
        .expect("a worker");
    Metrics::scrape(&cluster.http, &admin).await
}

/// Only an API runs: the order's OrderCreated is published and nobody
/// handles it. `reconcile --dry-run` lists it and changes nothing;
/// `reconcile` publishes the event again with its original id; a worker
/// started then handles both copies and reserves the order once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_lists_a_stranded_order_and_redrives_its_event_with_the_original_id() {
    let mut cluster = Cluster::builder(TestBroker::mock()).apis(1).start().await;
    let order_id = cluster
        .create_order(&order_body("Stranded Sam", "untracked-gadget", 1))
        .await;
    let id = order_id.to_string();
    let published = copies_on_topic(&cluster, &id, 1).await;
    assert_eq!(published.len(), 1, "OrderCreated published once");
    let event_id = published[0].header("ce_id").expect("ce_id").to_string();

    // Listed once the relay is done with it (no longer waiting in the
    // outbox); a dry run re-drives nothing.
    let listed = common::eventually(Duration::from_secs(20), || async {
        entry_for(&reconcile(&cluster, &["--dry-run"]), &id)
    })
    .await
    .expect("`reconcile --dry-run` lists the stranded order");
    let order = cluster.order(&id).await;
    assert_eq!(listed["status"], "Pending", "{listed}");
    assert_eq!(listed["eventId"], event_id.as_str(), "{listed}");
    assert_eq!(listed["eventType"], "OrderCreated", "{listed}");
    assert_eq!(listed["redrives"], 0, "{listed}");
    assert_eq!(listed["redriven"], false, "{listed}");
    let since = listed["since"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("since is RFC 3339: {listed}"));
    let updated = order["updatedAt"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .expect("updatedAt");
    assert!(
        (since - updated).num_milliseconds().abs() < 1000,
        "Pending since the order's last change ({updated}): {listed}"
    );
    assert_eq!(
        copies_on_topic(&cluster, &id, 1).await.len(),
        1,
        "a dry run publishes nothing"
    );

    // The re-drive: the same event, with its original id, published again
    // by the API's relay.
    let redriven = entry_for(&reconcile(&cluster, &[]), &id).expect("`reconcile` lists it");
    assert_eq!(redriven["redriven"], true, "{redriven}");
    assert_eq!(redriven["eventId"], event_id.as_str(), "{redriven}");
    assert_eq!(redriven["redrives"], 0, "no earlier re-drive: {redriven}");
    let copies = copies_on_topic(&cluster, &id, 2).await;
    assert_eq!(copies.len(), 2, "the original and the re-driven copy");
    for copy in &copies {
        assert_eq!(copy.header("ce_id"), Some(event_id.as_str()));
        assert_eq!(copy.header("ce_type"), Some("OrderCreated"));
        assert_eq!(
            copy.partition, copies[0].partition,
            "one partition per order"
        );
        assert_eq!(copy.payload, copies[0].payload);
    }
    // The listing counts it.
    let counted = common::eventually(Duration::from_secs(20), || async {
        entry_for(&reconcile(&cluster, &["--dry-run"]), &id).filter(|e| e["redrives"] == 1)
    })
    .await;
    assert!(counted.is_some(), "the re-drive is counted in the listing");

    // A worker handles both copies: the order is reserved once.
    cluster.spawn(Role::Worker);
    cluster
        .wait_for_status(order_id, "Reserved", Duration::from_secs(60))
        .await;
    let handled = common::eventually(Duration::from_secs(30), || async {
        let metrics = worker_metrics(&cluster).await;
        let handled = |outcome| {
            let labels = [("type", "OrderCreated"), ("outcome", outcome)];
            let n = metrics.sample("orderflow_events_handled_total", &labels);
            n.unwrap_or(0.0)
        };
        let (ok, duplicate) = (handled("ok"), handled("duplicate"));
        (ok + duplicate >= 2.0).then_some((ok, duplicate))
    })
    .await;
    assert_eq!(
        handled,
        Some((1.0, 1.0)),
        "one copy applied, the other found in the inbox:\n{}",
        cluster.logs(Role::Worker)
    );
    assert_eq!(timeline(&cluster.order(&id).await), ["Pending", "Reserved"]);
    assert_eq!(
        reconcile(&cluster, &["--dry-run"]),
        Vec::<Value>::new(),
        "nothing stuck once the order moved"
    );
}

/// One API and one worker notifying through `webhook`, retries 200 ms
/// apart at first and swept every 200 ms, `env` on top.
async fn notifying_cluster(webhook: &Webhook, env: &[(&str, &str)]) -> Cluster {
    let mut builder = Cluster::builder(TestBroker::mock())
        .env("Worker__Notifier__Kind", "webhook")
        .env("Worker__Notifier__Url", &webhook.url)
        .env("Worker__Notifier__FirstRetryMs", "200")
        .env("Reconcile__IntervalMs", "200")
        .apis(1)
        .workers(1);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let mut cluster = builder.start().await;
    cluster.wait_until_assigned();
    cluster
}

/// The timeline entries of `order` that record a failed notification.
fn notification_failures(order: &Value) -> Vec<Value> {
    order["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|t| {
            t["note"]
                .as_str()
                .is_some_and(|n| n.starts_with("customer notification failed"))
        })
        .cloned()
        .collect()
}

/// The webhook fails the first two sends: the worker's sweep retries until
/// the third is accepted, then stops; the order's timeline is the plain
/// lifecycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_notification_is_retried_until_the_webhook_accepts_it() {
    let webhook = Webhook::start(2).await;
    let cluster = notifying_cluster(&webhook, &[]).await;
    let id = run_order_to_fulfilment(&cluster.http, &cluster.base(), "Retry Ada").await;

    let pool = cluster.db.pg_pool().await;
    let order_id: uuid::Uuid = id.parse().expect("uuid");
    let sent = common::eventually(Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT sent_at IS NOT NULL FROM notifications WHERE order_id = $1",
        )
        .bind(order_id)
        .fetch_one(&pool)
        .await
        .ok()
        .filter(|sent| *sent)
    })
    .await;
    let requests = webhook.requests_for(&id);
    assert!(
        sent.is_some(),
        "notification never marked sent after {} requests:\n{}",
        requests.len(),
        cluster.logs(Role::Worker)
    );
    assert_eq!(requests.len(), 3, "two failures and the accepted send");
    for request in &requests {
        assert_eq!(request["recipient"], "retry.ada@example.com");
        assert_eq!(
            request["text"], requests[0]["text"],
            "the same notification"
        );
    }
    let metrics = common::eventually(Duration::from_secs(10), || async {
        let metrics = worker_metrics(&cluster).await;
        (metrics.total("orderflow_notifications_retried_total") >= 2.0).then_some(metrics)
    })
    .await
    .expect("notifications_retried_total counts the two retries");
    assert_eq!(metrics.total("orderflow_notifications_failed_total"), 0.0);
    let order = cluster.order(&id).await;
    assert_eq!(timeline(&order), LIFECYCLE);
    assert_eq!(notification_failures(&order), Vec::<Value>::new());
}

/// A webhook that fails every send, 3 attempts allowed: three requests,
/// then the order's timeline says the notification failed (the order stays
/// Fulfilled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_that_always_fails_is_recorded_on_the_timeline_after_max_attempts() {
    let webhook = Webhook::start(usize::MAX).await;
    let cluster = notifying_cluster(&webhook, &[("Worker__Notifier__MaxAttempts", "3")]).await;
    let id = run_order_to_fulfilment(&cluster.http, &cluster.base(), "Failing Fay").await;

    let order = common::eventually(Duration::from_secs(30), || async {
        let order = cluster.order(&id).await;
        (!notification_failures(&order).is_empty()).then_some(order)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no failure on the timeline after {} requests:\n{}",
            webhook.requests_for(&id).len(),
            cluster.logs(Role::Worker)
        )
    });
    let failures = notification_failures(&order);
    assert_eq!(failures.len(), 1, "{order}");
    let note = failures[0]["note"].as_str().expect("note");
    assert!(
        note.starts_with("customer notification failed after 3 attempts"),
        "{note}"
    );
    assert_eq!(failures[0]["status"], "Fulfilled");
    assert_eq!(order["status"], "Fulfilled");
    let mut expected = LIFECYCLE.to_vec();
    expected.push("Fulfilled");
    assert_eq!(timeline(&order), expected);

    let failed = common::eventually(Duration::from_secs(10), || async {
        let metrics = worker_metrics(&cluster).await;
        let failed = metrics.total("orderflow_notifications_failed_total");
        (failed >= 1.0).then_some(failed)
    })
    .await;
    assert!(failed.is_some(), "notifications_failed_total counts it");
    assert_eq!(
        webhook.requests_for(&id).len(),
        3,
        "exactly MaxAttempts sends"
    );
}

/// The admin API lists the same stuck orders and re-drives one on request
/// (the dashboard's button).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_stuck_orders_and_redrives_one() {
    let cluster = Cluster::builder(TestBroker::mock())
        .env("Admin__Enabled", "true")
        .env("Reconcile__StuckAfterSeconds", "1")
        .apis(1)
        .start()
        .await;
    let order_id = cluster
        .create_order(&order_body("Stuck Stella", "untracked-gadget", 1))
        .await;
    let id = order_id.to_string();
    assert_eq!(copies_on_topic(&cluster, &id, 1).await.len(), 1);
    let url = |path: &str| format!("{}{path}", cluster.base());
    let listed = common::eventually(Duration::from_secs(20), || async {
        let list: Vec<Value> = cluster
            .http
            .get(url("/admin/api/stuck"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        entry_for(&list, &id)
    })
    .await
    .expect("GET /admin/api/stuck lists the stranded order");
    assert_eq!(listed["redriven"], false, "{listed}");
    let answer: Vec<Value> = cluster
        .http
        .post(url("/admin/api/stuck/redrive"))
        .json(&serde_json::json!({ "orderId": id }))
        .send()
        .await
        .expect("POST redrive")
        .json()
        .await
        .expect("findings");
    let redriven = entry_for(&answer, &id).expect("the order in the answer");
    assert_eq!(redriven["redriven"], true, "{redriven}");
    assert_eq!(
        copies_on_topic(&cluster, &id, 2).await.len(),
        2,
        "published again"
    );
}
