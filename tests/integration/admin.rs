//! The admin dashboard with one API and two worker processes: its
//! endpoints (overview, pause/resume reaching every worker through the
//! control topic, dead-letter replay), and the page itself driven in
//! headless Chromium.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{self, kcat_produce, order_body, Cluster, Metrics, TestBroker};

async fn overview(http: &reqwest::Client, base: &str) -> Value {
    let response = http
        .get(format!("{base}/admin/api/overview"))
        .send()
        .await
        .expect("overview");
    let status = response.status();
    let body: Value = response.json().await.expect("overview JSON");
    assert_eq!(status, 200, "{body}");
    body
}

fn total_lag(overview: &Value) -> Option<i64> {
    Some(
        overview["partitions"]
            .as_array()?
            .iter()
            .filter_map(|p| p["lag"].as_i64())
            .sum(),
    )
}

/// Events consumed so far by all the workers, from their /metrics.
async fn consumed(http: &reqwest::Client, admins: &[String]) -> f64 {
    let mut sum = 0.0;
    for admin in admins {
        sum += Metrics::scrape(http, admin)
            .await
            .total("orderflow_events_consumed_total");
    }
    sum
}

fn count(overview: &Value, status: &str) -> i64 {
    overview["ordersByStatus"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["status"] == status)
        .and_then(|s| s["orders"].as_i64())
        .unwrap_or(0)
}

/// One `serve-api` with the dashboard on and two `run-worker` processes on a
/// fresh PostgreSQL database and a mock cluster of the test's.
async fn start_cluster() -> Cluster {
    let mut cluster = Cluster::builder(TestBroker::mock())
        .env("Admin__Enabled", "true")
        .env("Worker__CommitIntervalMs", "200")
        .apis(1)
        .workers(2)
        .start()
        .await;
    cluster.wait_until_assigned();
    cluster
}

/// An undecodable message on the orders topic, as an outside producer
/// would put it there.
fn produce_poison(cluster: &Cluster, event_id: &str) {
    kcat_produce(
        cluster.broker.bootstrap_servers(),
        &cluster.broker.names.orders,
        "poison",
        &[("ce_type", "OrderPaid"), ("ce_id", event_id)],
        "not json",
    );
}

async fn post(http: &reqwest::Client, url: String) -> reqwest::StatusCode {
    http.post(url).send().await.expect("POST").status()
}

/// 20 orders reserved and their offsets committed: no lag, not paused.
async fn settle_twenty_orders(http: &reqwest::Client, base: &str) {
    for i in 0..20 {
        common::create_order_at(http, base, &order_body(&format!("Early {i}"), "pen", 1)).await;
    }
    let settled = common::eventually(Duration::from_secs(60), || async {
        let o = overview(http, base).await;
        let lag = total_lag(&o)?;
        (count(&o, "Reserved") == 20 && lag == 0).then_some(o)
    })
    .await
    .expect("20 orders reserved, offsets committed");
    assert_eq!(
        settled["partitions"].as_array().map(Vec::len),
        Some(common::PARTITIONS as usize)
    );
    assert_eq!(settled["paused"], false);
}

/// Pauses through the dashboard: every worker says so on its /metrics, and
/// 10 new orders wait on the topic, consumed by nobody. Returns the events
/// consumed before the pause.
async fn pause_and_leave_ten_waiting(http: &reqwest::Client, base: &str, admins: &[String]) -> f64 {
    assert_eq!(post(http, format!("{base}/admin/api/pause")).await, 200);
    for admin in admins {
        let switched = common::eventually(Duration::from_secs(20), || async {
            let metrics = Metrics::scrape(http, admin).await;
            (metrics.total("orderflow_consumption_paused") == 1.0).then_some(())
        })
        .await;
        assert!(switched.is_some(), "worker {admin} paused");
    }
    let consumed_before = consumed(http, admins).await;
    for i in 0..10 {
        common::create_order_at(http, base, &order_body(&format!("Late {i}"), "pen", 1)).await;
    }
    // The events reach Kafka; nobody consumes them.
    let waiting = common::eventually(Duration::from_secs(30), || async {
        let o = overview(http, base).await;
        let lag = total_lag(&o)?;
        (lag == 10).then_some(o)
    })
    .await
    .expect("lag of 10 while paused");
    assert_eq!(waiting["paused"], true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let consumed_paused = consumed(http, admins).await;
    assert_eq!(
        consumed_paused, consumed_before,
        "no worker consumed while paused"
    );
    assert_eq!(count(&overview(http, base).await, "Pending"), 10);
    consumed_before
}

/// Resumes: the 10 waiting orders are consumed and reserved.
async fn resume_and_drain(
    http: &reqwest::Client,
    base: &str,
    admins: &[String],
    consumed_before: f64,
) {
    assert_eq!(post(http, format!("{base}/admin/api/resume")).await, 200);
    let drained = common::eventually(Duration::from_secs(60), || async {
        let o = overview(http, base).await;
        (count(&o, "Reserved") == 30).then_some(o)
    })
    .await
    .expect("all 30 reserved after resume");
    assert_eq!(drained["paused"], false);
    let consumed_after = consumed(http, admins).await;
    assert_eq!(consumed_after - consumed_before, 10.0);
}

/// A poison message shows up as a dead letter; replay re-publishes it, and
/// an unknown event id is a 404.
async fn dead_letter_listed_and_replayed(cluster: &Cluster) {
    let (http, base) = (&cluster.http, cluster.base());
    produce_poison(cluster, "poison-admin");
    let letter = common::eventually(Duration::from_secs(30), || async {
        let o = overview(http, &base).await;
        o["deadLetters"]
            .as_array()?
            .iter()
            .find(|d| d["eventId"] == "poison-admin")
            .cloned()
    })
    .await
    .expect("the poison message is listed");
    assert!(
        letter["error"]
            .as_str()
            .is_some_and(|e| e.contains("not JSON")),
        "{letter}"
    );
    let replay = http
        .post(format!("{base}/admin/api/dlq/replay"))
        .json(&json!({"eventId": "poison-admin"}))
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.json::<Value>().await.expect("body")["replayed"], 1);
    let missing = http
        .post(format!("{base}/admin/api/dlq/replay"))
        .json(&json!({"eventId": "no-such-event"}))
        .send()
        .await
        .expect("replay");
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_reaches_every_worker_and_resume_drains_the_lag() {
    let cluster = start_cluster().await;
    let (http, base, admins) = (&cluster.http, cluster.base(), cluster.worker_admins());

    let page = http
        .get(format!("{base}/admin"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("html").contains("Pause"));

    settle_twenty_orders(http, &base).await;
    let consumed_before = pause_and_leave_ten_waiting(http, &base, &admins).await;
    resume_and_drain(http, &base, &admins, consumed_before).await;
    dead_letter_listed_and_replayed(&cluster).await;
}

/// The page in a real browser: headless Chromium driven by playwright-core
/// (tests/browser/admin.mjs) sees the tables, pauses both workers, resumes
/// them, and leaves a screenshot in target/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_pauses_and_resumes_workers_in_a_browser() {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: (cd tests/browser && npm ci) (.ci/run does this)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Chromium is not installed: apt-get install -y chromium (.ci/run does this)"
    );
    let cluster = start_cluster().await;
    for i in 0..3 {
        cluster
            .create_order(&order_body(&format!("Before {i}"), "pen", 1))
            .await;
    }
    produce_poison(&cluster, "poison-browser");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).expect("target dir");
    let screenshot = target.join("admin-dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let (base, admins, shot) = (cluster.base(), cluster.worker_admins(), screenshot.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("admin.mjs")
            .arg(&base)
            .args(&admins)
            .arg(&shot)
            .current_dir(&browser_dir)
            .output()
            .expect("node")
    })
    .await
    .expect("browser run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(
        output.status.success(),
        "browser test failed:\n{text}\nAPI log:\n{}",
        cluster.logs(common::Role::Api)
    );
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000),
        "screenshot saved"
    );
}
