//! The admin dashboard with one API and two worker processes: its
//! endpoints (overview, pause/resume reaching every worker through the
//! control topic, dead-letter replay, the history its charts draw), and
//! the page itself driven in headless Chromium.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::both_backends;
use crate::common::{
    self, kcat_produce, order_body, Backend, Cluster, Metrics, TestApp, TestBroker,
};

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
        .env("Admin__HistoryIntervalMs", "1000")
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

/// Every point of `GET /admin/api/history` the test has seen, by time:
/// polled more often than points fall out of the window, so none is
/// missed, and each snapshot checked as it comes.
#[derive(Default)]
struct Seen {
    points: BTreeMap<String, Value>,
    capacity: usize,
    interval: f64,
    /// The oldest point of the latest snapshot, and how many it had.
    window: (String, usize),
}

impl Seen {
    async fn poll(&mut self, http: &reqwest::Client, base: &str) -> Value {
        let response = http
            .get(format!("{base}/admin/api/history"))
            .send()
            .await
            .expect("history");
        assert_eq!(response.status(), 200);
        let history: Value = response.json().await.expect("history JSON");
        self.capacity = history["capacity"].as_u64().expect("capacity") as usize;
        self.interval = history["intervalSeconds"].as_f64().expect("interval");
        let points = history["points"].as_array().expect("points").clone();
        assert!(points.len() <= self.capacity, "{history}");
        let times: Vec<chrono::DateTime<chrono::Utc>> = points
            .iter()
            .map(|p| p["at"].as_str().and_then(|t| t.parse().ok()).expect("at"))
            .collect();
        for pair in times.windows(2) {
            // The sampler ticks every interval; a slow read only delays.
            let gap = (pair[1] - pair[0]).num_milliseconds() as f64 / 1000.0;
            assert!(gap >= 0.9 * self.interval, "{gap} s apart: {history}");
        }
        for point in &points {
            let at = point["at"].as_str().expect("at").to_string();
            if let Some(before) = self.points.insert(at, point.clone()) {
                assert_eq!(&before, point, "a recorded point changed");
            }
        }
        if let Some(first) = points.first() {
            let first = first["at"].as_str().expect("at").to_string();
            assert!(first >= self.window.0, "the window went back in time");
            self.window = (first, points.len());
        }
        history
    }

    /// Polls every 200 ms until `check` holds for what was seen.
    async fn until(
        &mut self,
        http: &reqwest::Client,
        base: &str,
        within: Duration,
        what: &str,
        check: impl Fn(&Seen) -> bool,
    ) {
        let deadline = std::time::Instant::now() + within;
        loop {
            self.poll(http, base).await;
            if check(self) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "history never showed {what}: {:#?}",
                self.points.values().collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn latest(&self) -> &Value {
        self.points.values().next_back().unwrap_or(&Value::Null)
    }

    fn orders_created(&self) -> i64 {
        self.points
            .values()
            .filter_map(|p| p["ordersCreated"].as_i64())
            .sum()
    }

    fn any(&self, key: &str, test: impl Fn(f64) -> bool) -> bool {
        self.points
            .values()
            .filter_map(|p| p[key].as_f64())
            .any(test)
    }
}

/// The history the dashboard's charts draw, against what the test does:
/// orders created add up to the orders it created, each counted once;
/// events handled show while the worker works; the lag climbs while a
/// handler waits on a lock the test holds and falls back once it lets go;
/// the outbox is read throughout; the window stays bounded and moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_follows_orders_events_lag_and_outbox() {
    let mut cluster = Cluster::builder(TestBroker::mock())
        .env("Admin__Enabled", "true")
        .env("Admin__HistoryIntervalMs", "500")
        .env("Admin__HistorySeconds", "4")
        .env("Admin__TelemetryIntervalMs", "500")
        .env("Worker__CommitIntervalMs", "200")
        .apis(1)
        .workers(1)
        .start()
        .await;
    cluster.wait_until_assigned();
    let (http, base) = (&cluster.http, cluster.base());
    let mut seen = Seen::default();

    // A worker reports, nothing is created yet.
    seen.until(
        http,
        &base,
        Duration::from_secs(30),
        "an idle worker",
        |s| s.latest()["consumerLag"] == 0 && s.points.len() >= 2,
    )
    .await;
    assert_eq!((seen.capacity, seen.interval), (8, 0.5));
    assert_eq!(seen.orders_created(), 0);

    assert_eq!(
        cluster
            .http
            .put(format!("{base}/api/inventory/pen"))
            .json(&json!({"onHand": 1000}))
            .send()
            .await
            .expect("PUT inventory")
            .status(),
        200
    );
    for i in 0..12 {
        common::create_order_at(http, &base, &order_body(&format!("Chart {i}"), "pen", 1)).await;
    }
    seen.until(
        http,
        &base,
        Duration::from_secs(60),
        "12 orders created and their events handled",
        |s| {
            s.orders_created() == 12
                && s.any("ordersCreatedPerSecond", |r| r > 0.0)
                && s.any("eventsHandledPerSecond", |r| r > 0.0)
                && s.latest()["consumerLag"] == 0
                && s.latest()["outboxBacklog"] == 0
        },
    )
    .await;

    // A handler stuck on a lock: the events wait, and the lag shows them.
    let pool = sqlx::PgPool::connect(&cluster.db.url).await.expect("db");
    let mut lock = pool.begin().await.expect("begin");
    sqlx::query("SELECT on_hand FROM inventory WHERE product_name = 'pen' FOR UPDATE")
        .execute(&mut *lock)
        .await
        .expect("lock the stock");
    for i in 0..5 {
        common::create_order_at(http, &base, &order_body(&format!("Stuck {i}"), "pen", 1)).await;
    }
    seen.until(http, &base, Duration::from_secs(60), "a lag of 5", |s| {
        s.latest()["consumerLag"] == 5
    })
    .await;
    lock.rollback().await.expect("let go");
    seen.until(
        http,
        &base,
        Duration::from_secs(60),
        "the lag drained",
        |s| s.latest()["consumerLag"] == 0 && s.orders_created() == 17,
    )
    .await;
    let settled = overview(http, &base).await;
    assert_eq!(count(&settled, "Reserved"), 17);

    // A few intervals more: nothing is counted twice, and the window is
    // full and has moved on.
    let first_seen = seen.points.keys().next().cloned().expect("points");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let history = seen.poll(http, &base).await;
    assert_eq!(seen.orders_created(), 17);
    assert_eq!(history["points"].as_array().map(Vec::len), Some(8));
    assert!(seen.window.0 > first_seen, "{history}");
    let figures: Vec<String> = seen
        .points
        .values()
        .map(|p| {
            format!(
                "{} created {} handled/s {} lag {} outbox {}",
                p["at"],
                p["ordersCreated"],
                p["eventsHandledPerSecond"],
                p["consumerLag"],
                p["outboxBacklog"]
            )
        })
        .collect();
    println!("history seen:\n{}", figures.join("\n"));
    for point in seen.points.values() {
        assert!(
            point["outboxBacklog"].as_i64().is_some_and(|n| n >= 0)
                && point["outboxOldestAgeSeconds"]
                    .as_f64()
                    .is_some_and(|s| s >= 0.0),
            "{point}"
        );
    }
}

/// An API without workers, on either store: the orders it creates are
/// counted once each, nothing is handled, and the lag is unknown (`null`,
/// not 0) while no worker reports.
async fn history_without_workers(backend: Backend) {
    let app = TestApp::builder(backend)
        .env(&[
            ("Admin__Enabled", "true"),
            ("Admin__HistoryIntervalMs", "300"),
        ])
        .spawn()
        .await;
    // Orders created before the history's first count are not its to show.
    let mut seen = Seen::default();
    seen.until(
        &app.http,
        &app.base,
        Duration::from_secs(30),
        "a first point",
        |s| !s.points.is_empty(),
    )
    .await;
    for i in 0..7 {
        let created = app
            .create_order(&order_body(&format!("Alone {i}"), "pen", 1))
            .await;
        assert_eq!(created.status(), 201);
    }
    seen.until(
        &app.http,
        &app.base,
        Duration::from_secs(30),
        "7 orders created, published",
        |s| s.orders_created() == 7 && s.latest()["outboxBacklog"] == 0,
    )
    .await;
    assert_eq!(seen.capacity, 3000, "15 minutes at 300 ms");
    let latest = seen.latest();
    assert_eq!(
        (
            latest["eventsHandledPerSecond"].as_f64(),
            &latest["consumerLag"]
        ),
        (Some(0.0), &Value::Null),
        "{latest}"
    );
    app.stop().await;
}
both_backends!(
    history_counts_orders_on_either_store,
    history_without_workers
);

/// PostgreSQL cut off from the API: the figures read from it are `null`
/// (a gap in the chart, not a false zero) while the points keep coming;
/// once it is back, orders are counted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_shows_a_database_outage_as_a_gap() {
    let cluster = Cluster::builder(TestBroker::mock())
        .env("Admin__Enabled", "true")
        .env("Admin__HistoryIntervalMs", "300")
        .pg_proxy()
        .apis(1)
        .start()
        .await;
    let (http, base) = (&cluster.http, cluster.base());
    let proxy = cluster.pg_proxy.as_ref().expect("PostgreSQL proxy");
    let mut seen = Seen::default();
    let counting = |s: &Seen| s.latest()["ordersCreated"].is_i64();
    seen.until(http, &base, Duration::from_secs(30), "a count", counting)
        .await;

    proxy.cut();
    let cut_at = seen.points.len();
    seen.until(
        http,
        &base,
        Duration::from_secs(60),
        "points without the database's figures",
        |s| {
            let latest = s.latest();
            s.points.len() > cut_at
                && latest["ordersCreated"].is_null()
                && latest["outboxBacklog"].is_null()
                && latest["outboxOldestAgeSeconds"].is_null()
                && latest["eventsHandledPerSecond"].as_f64() == Some(0.0)
        },
    )
    .await;

    proxy.restore();
    seen.until(
        http,
        &base,
        Duration::from_secs(60),
        "counts again",
        counting,
    )
    .await;
    let before = seen.orders_created();
    for i in 0..3 {
        common::create_order_at(http, &base, &order_body(&format!("After {i}"), "pen", 1)).await;
    }
    seen.until(
        http,
        &base,
        Duration::from_secs(30),
        "the 3 orders counted",
        |s| s.orders_created() == before + 3 && s.latest()["outboxBacklog"] == 0,
    )
    .await;
}
