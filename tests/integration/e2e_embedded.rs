//! The README's promise: with the committed config, `orderflow all` starts
//! from a clean directory with nothing installed and runs an order through
//! its whole life; an external Kafka client (kcat) sees its events on the
//! embedded broker. And a SIGKILL of `all` strands no order: the embedded
//! broker dies with the process, the events it held do not.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use sqlx::Connection;

use crate::common::{
    self, create_order_at, list_orders, order_body, timeline, Metrics, Process, LIFECYCLE,
};

/// The client's trace: the API continues it into the events, the worker's
/// handler logs carry its trace id.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Every message of `topic` on the broker, as kcat's JSON lines.
fn kcat_read(bootstrap: &str, topic: &str) -> Vec<Value> {
    let output = Command::new("kcat")
        .args([
            "-b",
            bootstrap,
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-J",
        ])
        .output()
        .expect("run kcat");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn kcat_header(event: &Value, name: &str) -> Option<String> {
    let headers: Vec<&str> = event["headers"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    headers
        .chunks(2)
        .find(|kv| kv[0] == name)
        .map(|kv| kv[1].to_string())
}

fn kcat_available() {
    let found = Command::new("kcat").arg("-V").output().is_ok();
    assert!(
        found,
        "kcat is not installed: `apt-get update && apt-get install -y kcat` (.ci/run does this)"
    );
}

/// `orderflow all` in `dir` on a copy of the committed config; its API's
/// base URL and the embedded broker's bootstrap address.
fn start_all(dir: &Path) -> (Process, String, String) {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    std::fs::copy(committed, dir.join("config.toml")).expect("copy config");
    // Port 0 instead of 8080 so tests can run side by side; nothing else
    // differs from the README's `cargo run --release -- all`.
    let env = vec![("Api__Listen".to_string(), "127.0.0.1:0".to_string())];
    let mut process = Process::spawn(&["all"], &env, dir);
    let addr = process.http_addr();
    let embedded = process.wait_for_log("embedded Kafka", Duration::from_secs(10));
    let bootstrap = embedded["bootstrap"]
        .as_str()
        .expect("bootstrap field")
        .to_string();
    assert!(dir.join("orderflow.db").exists(), "SQLite file created");
    (process, format!("http://{addr}"), bootstrap)
}

/// Creates the order in the client's trace; the API answers in it, the
/// order reads back exact, and the API is ready. Returns the order's id.
async fn create_in_trace(http: &reqwest::Client, base: &str) -> String {
    let response = http
        .post(format!("{base}/api/orders"))
        .header("traceparent", TRACEPARENT)
        .json(&json!({
            "customerName": "Ada Lovelace",
            "customerEmail": "ada@example.com",
            "items": [{"productName": "notebook", "quantity": 2, "unitPrice": 4.25}]
        }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["traceparent"], TRACEPARENT);
    let order: Value = response.json().await.expect("order");
    let id = order["id"].as_str().expect("id").to_string();
    let fetched: Value = http
        .get(format!("{base}/api/orders/{id}"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("order");
    assert_eq!(fetched["totalAmount"], "8.50");
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    id
}

/// The worker half reserves stock (notebook is untracked: available); the
/// client pays and ships in its trace; the order ends Fulfilled having
/// passed every status once, in order.
async fn drive_to_fulfilment(http: &reqwest::Client, base: &str, id: &str) {
    let url = format!("{base}/api/orders/{id}");
    let within = Duration::from_secs(30);
    common::wait_for_status(http, base, id, "Reserved", within).await;
    let paid = http
        .post(format!("{url}/payments"))
        .header("traceparent", TRACEPARENT)
        .json(&json!({"paymentId": "pay-1"}))
        .send()
        .await
        .expect("pay");
    assert_eq!(paid.status(), 200);
    common::wait_for_status(http, base, id, "AwaitingShipment", within).await;
    let shipped = http
        .post(format!("{url}/shipments"))
        .header("traceparent", TRACEPARENT)
        .json(&json!({"trackingNumber": "1Z999"}))
        .send()
        .await
        .expect("ship");
    assert_eq!(shipped.status(), 200);
    let fulfilled = common::wait_for_status(http, base, id, "Fulfilled", within).await;
    assert_eq!(timeline(&fulfilled), LIFECYCLE);
}

/// The order's three events as kcat reads them: CloudEvents headers, the
/// client's trace, the payload.
fn assert_order_events(bootstrap: &str, id: &str) {
    let events = kcat_read(bootstrap, "orders");
    let types: Vec<String> = events
        .iter()
        .filter_map(|e| kcat_header(e, "ce_type"))
        .collect();
    assert_eq!(types, ["OrderCreated", "OrderPaid", "OrderShipped"]);
    let created = &events[0];
    assert_eq!(created["key"], id);
    assert_eq!(
        kcat_header(created, "ce_specversion").as_deref(),
        Some("1.0")
    );
    assert_eq!(
        kcat_header(created, "content-type").as_deref(),
        Some("application/json")
    );
    assert!(kcat_header(created, "ce_id").is_some_and(|v| !v.is_empty()));
    assert_eq!(
        kcat_header(created, "traceparent").as_deref(),
        Some(TRACEPARENT)
    );
    let payload: Value =
        serde_json::from_str(created["payload"].as_str().expect("payload")).expect("JSON payload");
    assert_eq!(payload["orderId"], id);
    assert_eq!(payload["totalAmount"], "8.50");
    assert_eq!(payload["customerName"], "Ada Lovelace");
}

/// One OrderFulfilled event for the order, in the client's trace.
async fn assert_fulfilment_event(bootstrap: &str, id: &str, process: &Process) {
    let fulfilments = common::eventually(Duration::from_secs(20), || async {
        let found = kcat_read(bootstrap, "order-fulfilments");
        (!found.is_empty()).then_some(found)
    })
    .await
    .unwrap_or_else(|| panic!("no OrderFulfilled event:\n{}", process.log_text()));
    assert_eq!(fulfilments.len(), 1);
    assert_eq!(fulfilments[0]["key"], id);
    assert_eq!(
        kcat_header(&fulfilments[0], "ce_type").as_deref(),
        Some("OrderFulfilled")
    );
    // The trace reaches the downstream consumer too.
    assert_eq!(
        kcat_header(&fulfilments[0], "traceparent").as_deref(),
        Some(TRACEPARENT)
    );
}

/// Each assigned partition's lag is on /metrics as soon as the worker
/// says it has partitions, not a balance interval later: a dashboard or an
/// autoscaler reading it from the start sees the partitions.
async fn assert_lag_from_the_first_assignment(
    http: &reqwest::Client,
    base: &str,
    process: &mut Process,
) {
    let assigned = process.wait_for_log("partitions assigned", Duration::from_secs(30));
    let partitions: Vec<String> = assigned["partitions"]
        .as_str()
        .expect("partitions field")
        .trim_matches(['[', ']'])
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    assert!(!partitions.is_empty(), "{assigned}");
    let metrics = Metrics::scrape(http, base).await;
    for p in &partitions {
        assert!(
            metrics
                .sample("orderflow_consumer_lag", &[("partition", p)])
                .is_some(),
            "no lag for partition {p} right after its assignment\n{metrics:?}"
        );
    }
}

/// The figures of this run on /metrics: one order, three order events
/// published and handled, one fulfilment event, nothing left behind.
async fn assert_run_metrics(http: &reqwest::Client, base: &str) {
    let metrics = common::eventually(Duration::from_secs(20), || async {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let metrics = Metrics::parse(&text);
        let published = metrics.sample(
            "orderflow_events_published_total",
            &[("destination", "fulfilment"), ("type", "OrderFulfilled")],
        );
        (published == Some(1.0)).then_some(metrics)
    })
    .await
    .expect("the fulfilment event is counted as published");
    for event in ["OrderCreated", "OrderPaid", "OrderShipped"] {
        let published = metrics.sample(
            "orderflow_events_published_total",
            &[("destination", "orders"), ("type", event)],
        );
        assert_eq!(published, Some(1.0), "{event} published\n{metrics:?}");
        let handled = metrics.sample(
            "orderflow_events_handled_total",
            &[("outcome", "ok"), ("type", event)],
        );
        assert_eq!(handled, Some(1.0), "{event} handled\n{metrics:?}");
    }
    let created = metrics.sample(
        "orderflow_http_requests_total",
        &[
            ("method", "POST"),
            ("route", "/api/orders"),
            ("status", "201"),
        ],
    );
    assert_eq!(created, Some(1.0), "{metrics:?}");
    assert!(
        metrics
            .sample(
                "orderflow_http_request_duration_seconds_count",
                &[("route", "/api/orders/{id}")]
            )
            .is_some_and(|n| n >= 1.0),
        "{metrics:?}"
    );
    assert!(
        metrics.sample(
            "orderflow_handler_duration_seconds_count",
            &[("type", "OrderCreated")]
        ) == Some(1.0),
        "{metrics:?}"
    );
    assert_eq!(
        metrics.sample("orderflow_outbox_backlog_rows", &[]),
        Some(0.0)
    );
    assert_eq!(metrics.sample("orderflow_workers_active", &[]), Some(1.0));
    assert!(
        metrics
            .sample("orderflow_consumer_lag", &[("partition", "0")])
            .is_some(),
        "{metrics:?}"
    );
}

#[tokio::test]
async fn all_on_the_committed_config_runs_an_order_to_fulfilment_seen_by_kcat() {
    kcat_available();
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut process, base, bootstrap) = start_all(dir.path());
    let http = reqwest::Client::new();
    assert_lag_from_the_first_assignment(&http, &base, &mut process).await;

    let id = create_in_trace(&http, &base).await;
    drive_to_fulfilment(&http, &base, &id).await;
    assert_order_events(&bootstrap, &id);
    assert_fulfilment_event(&bootstrap, &id, &process).await;
    assert_run_metrics(&http, &base).await;

    // One trace from the HTTP request through the worker: each handled
    // event logged with the client's trace id.
    let logs = process.log_text();
    let handled: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"event handled\"") && l.contains(TRACE_ID))
        .collect();
    assert_eq!(
        handled.len(),
        3,
        "handler log lines with the trace id:\n{logs}"
    );

    process.signal("TERM");
    assert_eq!(
        process.wait_exit(Duration::from_secs(20)),
        Some(0),
        "graceful exit"
    );
}

/// The burst: 400 orders from 16 concurrent clients.
const BURST: usize = 400;
const CLIENTS: usize = 16;
/// How long after its restart `all` may take to move every order on.
const RECOVERY: Duration = Duration::from_secs(10);

/// `SELECT COUNT(*) …` on the SQLite file of `dir` (read while no process
/// runs).
async fn count_in(dir: &Path, sql: &str) -> i64 {
    let url = format!("sqlite://{}", dir.join("orderflow.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open the SQLite file");
    let count = sqlx::query_scalar(sql)
        .fetch_one(&mut db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    db.close().await.expect("close the SQLite file");
    count
}

/// `all` on the committed config takes a burst of orders and is SIGKILLed
/// right after the last 201: the events the relay had handed to the
/// in-memory broker died with it. Started again on the same directory, it
/// moves every one of the orders past Pending within 10 s, each reserved
/// exactly once.
#[tokio::test]
async fn all_sigkilled_after_a_burst_leaves_no_order_pending_10_s_after_its_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut first, base, _) = start_all(dir.path());
    let http = reqwest::Client::new();
    let created: HashSet<String> = stream::iter(0..BURST)
        .map(|i| {
            let (http, base) = (&http, &base);
            async move {
                let body = order_body(&format!("Burst {i}"), "untracked-gadget", 1);
                create_order_at(http, base, &body).await.to_string()
            }
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    assert_eq!(created.len(), BURST, "every order created once");
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    let pending_at_kill = count_in(
        dir.path(),
        "SELECT COUNT(*) FROM orders WHERE status = 'Pending'",
    )
    .await;
    let unpublished_at_kill = count_in(
        dir.path(),
        "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL",
    )
    .await;

    let restarted = Instant::now();
    let (second, base, _) = start_all(dir.path());
    let none_pending = common::eventually(RECOVERY.saturating_sub(restarted.elapsed()), || {
        let (http, base) = (&http, &base);
        async move {
            let page: Value = http
                .get(format!("{base}/api/orders?status=Pending&limit=1"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            page["items"].as_array()?.is_empty().then_some(())
        }
    })
    .await;
    let took = restarted.elapsed();
    println!(
        "all SIGKILLed with {pending_at_kill} of {BURST} orders Pending \
         ({unpublished_at_kill} events not yet relayed); none Pending {:.1} s after the restart",
        took.as_secs_f64()
    );
    if none_pending.is_none() {
        let left = list_orders(&http, &base, "status=Pending").await.len();
        panic!(
            "{left} of {BURST} orders still Pending {RECOVERY:?} after the restart:\n{}",
            second.log_text()
        );
    }

    // One log line per re-drive, naming the order, its status and its
    // event; the counter on /metrics agrees.
    let redriven = second.log_lines("order re-driven");
    let redriven_ids: HashSet<&str> = redriven
        .iter()
        .filter_map(|l| l["order_id"].as_str())
        .collect();
    println!("{} orders re-driven at the restart", redriven.len());
    assert_eq!(
        redriven_ids.len(),
        redriven.len(),
        "each order re-driven once"
    );
    for line in &redriven {
        let id = line["order_id"].as_str().unwrap_or_default();
        assert!(created.contains(id), "a burst order: {line}");
        assert_eq!(line["status"], "Pending", "{line}");
        assert!(
            line["event_id"].as_str().is_some_and(|e| !e.is_empty()),
            "{line}"
        );
    }
    let metrics = Metrics::scrape(&http, &base).await;
    assert_eq!(
        metrics.sample("orderflow_orders_redriven_total", &[("status", "Pending")]),
        Some(redriven.len() as f64),
        "{metrics:?}"
    );

    // Every order of the burst is there and reserved (the product is
    // untracked: always available), none twice.
    let orders = list_orders(&http, &base, "").await;
    let listed: HashSet<String> = orders
        .iter()
        .filter_map(|o| o["id"].as_str().map(String::from))
        .collect();
    assert_eq!(listed, created, "the orders listed are the burst's");
    let mut statuses: BTreeMap<&str, usize> = BTreeMap::new();
    for order in &orders {
        *statuses
            .entry(order["status"].as_str().expect("status"))
            .or_default() += 1;
    }
    assert_eq!(statuses, BTreeMap::from([("Reserved", BURST)]));
    let timelines: Vec<(String, Vec<String>)> = stream::iter(created)
        .map(|id| {
            let (http, base) = (&http, &base);
            async move {
                let order: Value = http
                    .get(format!("{base}/api/orders/{id}"))
                    .send()
                    .await
                    .expect("GET order")
                    .json()
                    .await
                    .expect("order");
                let steps = timeline(&order).into_iter().map(String::from).collect();
                (id, steps)
            }
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    for (id, steps) in &timelines {
        assert_eq!(steps, &["Pending", "Reserved"], "order {id}'s timeline");
    }
}
