//! The admin dashboard with one API and two worker processes: its
//! endpoints (overview, pause/resume reaching every worker through the
//! control topic, dead-letter replay), and the page itself driven in
//! headless Chromium.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{env_for, metric_total as total, order_body, start_broker, Backend, Process, TestDb};
use serde_json::{json, Value};

async fn scrape(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics")
}

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
        sum += total(
            &scrape(http, admin).await,
            "orderflow_events_consumed_total",
        );
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
/// fresh PostgreSQL database and the test's broker.
struct Cluster {
    _db: TestDb,
    broker: common::TestBroker,
    _dir: tempfile::TempDir,
    api: Process,
    _workers: Vec<Process>,
    base: String,
    worker_admins: Vec<String>,
}

async fn start_cluster() -> Cluster {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = start_broker();
    let mut env = env_for(&db, &broker);
    env.push(("Admin__Enabled".into(), "true".into()));
    env.push(("Worker__CommitIntervalMs".into(), "200".into()));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut api = Process::spawn(&["serve-api"], &env, dir.path());
    let base = format!("http://{}", api.http_addr());
    let mut workers: Vec<Process> = (0..2)
        .map(|_| Process::spawn(&["run-worker"], &env, dir.path()))
        .collect();
    let worker_admins = workers
        .iter_mut()
        .map(|w| format!("http://{}", w.http_addr()))
        .collect();
    for w in &mut workers {
        w.wait_for_log("partitions assigned", Duration::from_secs(60));
    }
    Cluster {
        _db: db,
        broker,
        _dir: dir,
        api,
        _workers: workers,
        base,
        worker_admins,
    }
}

fn produce_poison(bootstrap: &str, event_id: &str) {
    let mut kcat = Command::new("kcat")
        .args(["-b", bootstrap, "-P", "-t", "orders", "-k", "poison"])
        .args([
            "-H",
            "ce_type=OrderPaid",
            "-H",
            &format!("ce_id={event_id}"),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat is installed (apt-get install -y kcat)");
    {
        use std::io::Write;
        let mut stdin = kcat.stdin.take().expect("stdin");
        writeln!(stdin, "not json").expect("write");
    }
    assert!(kcat.wait().expect("kcat").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_reaches_every_worker_and_resume_drains_the_lag() {
    let cluster = start_cluster().await;
    let (base, admin_ports) = (cluster.base.clone(), cluster.worker_admins.clone());
    let http = reqwest::Client::new();

    let page = http
        .get(format!("{base}/admin"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("html").contains("Pause"));

    for i in 0..20 {
        common::create_order_at(&http, &base, &order_body(&format!("Early {i}"), "pen", 1)).await;
    }
    let settled = common::eventually(Duration::from_secs(60), || async {
        let o = overview(&http, &base).await;
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

    let paused = http
        .post(format!("{base}/admin/api/pause"))
        .send()
        .await
        .expect("pause");
    assert_eq!(paused.status(), 200);
    for admin in &admin_ports {
        let switched = common::eventually(Duration::from_secs(20), || async {
            (total(&scrape(&http, admin).await, "orderflow_consumption_paused") == 1.0)
                .then_some(())
        })
        .await;
        assert!(switched.is_some(), "worker {admin} paused");
    }
    let consumed_before = consumed(&http, &admin_ports).await;
    for i in 0..10 {
        common::create_order_at(&http, &base, &order_body(&format!("Late {i}"), "pen", 1)).await;
    }
    // The events reach Kafka; nobody consumes them.
    let waiting = common::eventually(Duration::from_secs(30), || async {
        let o = overview(&http, &base).await;
        let lag = total_lag(&o)?;
        (lag == 10).then_some(o)
    })
    .await
    .expect("lag of 10 while paused");
    assert_eq!(waiting["paused"], true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let consumed_paused = consumed(&http, &admin_ports).await;
    assert_eq!(
        consumed_paused, consumed_before,
        "no worker consumed while paused"
    );
    assert_eq!(count(&overview(&http, &base).await, "Pending"), 10);

    let resumed = http
        .post(format!("{base}/admin/api/resume"))
        .send()
        .await
        .expect("resume");
    assert_eq!(resumed.status(), 200);
    let drained = common::eventually(Duration::from_secs(60), || async {
        let o = overview(&http, &base).await;
        (count(&o, "Reserved") == 30).then_some(o)
    })
    .await
    .expect("all 30 reserved after resume");
    assert_eq!(drained["paused"], false);
    let consumed_after = consumed(&http, &admin_ports).await;
    assert_eq!(consumed_after - consumed_before, 10.0);

    // A poison message shows up as a dead letter; replay re-publishes it.
    produce_poison(cluster.broker.bootstrap_servers(), "poison-admin");
    let letter = common::eventually(Duration::from_secs(30), || async {
        let o = overview(&http, &base).await;
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
    let http = reqwest::Client::new();
    for i in 0..3 {
        common::create_order_at(
            &http,
            &cluster.base,
            &order_body(&format!("Before {i}"), "pen", 1),
        )
        .await;
    }
    produce_poison(cluster.broker.bootstrap_servers(), "poison-browser");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).expect("target dir");
    let screenshot = target.join("admin-dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let (base, admins, shot) = (
        cluster.base.clone(),
        cluster.worker_admins.clone(),
        screenshot.clone(),
    );
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
        cluster.api.log_text()
    );
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000),
        "screenshot saved"
    );
}
