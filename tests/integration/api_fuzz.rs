//! Fuzzes the HTTP API of the real binary with schemathesis (PyPI): requests
//! generated from the served OpenAPI document, valid and invalid, one by one
//! and in stateful sequences, every check on. Any 5xx, any response whose
//! status, content type, headers or body the document does not describe,
//! any valid request rejected or invalid one accepted fails the test, and so
//! does a crash of the process under test.
//!
//! Needs `python3 -m pip install -r tests/fuzz/requirements.txt` (`.ci/run`
//! does it).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Metrics, Process};

/// The fewest requests a run must have sent to count as a fuzz test.
const MIN_REQUESTS: u64 = 1_000;
/// Test cases per operation and phase; with the stateful sequences this
/// sends well over `MIN_REQUESTS` in about a minute on two cores.
const MAX_EXAMPLES: &str = "200";
/// A fixed seed keeps runs comparable and failures reproducible
/// (`st run … --seed` with the same value).
const SEED: &str = "20261125";
const INSTALL: &str = "python3 -m pip install -r tests/fuzz/requirements.txt";

fn schemathesis_version() -> String {
    let output = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--version"])
        .output()
        .unwrap_or_else(|e| panic!("python3 is not runnable ({e}); then run `{INSTALL}`"));
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success() && text.contains("version"),
        "schemathesis is not installed: run `{INSTALL}` (.ci/run does this)\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// Sum of the server's own `orderflow_http_requests_total`: what it
/// answered, counted on its side of the wire.
async fn requests_served(http: &reqwest::Client, base: &str) -> u64 {
    Metrics::scrape(http, base)
        .await
        .total("orderflow_http_requests_total") as u64
}

async fn healthy(http: &reqwest::Client, base: &str) -> bool {
    match http.get(format!("{base}/healthz")).send().await {
        Ok(response) => response.status() == 200,
        Err(_) => false,
    }
}

fn report(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json"))
        .unwrap_or_else(|e| panic!("schemathesis wrote no JSON report ({e})"));
    serde_json::from_str(&text).expect("JSON report")
}

/// Runs schemathesis against the document `base` serves, in `dir`, its
/// reports into `reports`.
async fn schemathesis(base: &str, dir: &Path, reports: &Path) -> Output {
    tokio::task::spawn_blocking({
        let (base, dir, reports) = (base.to_string(), dir.to_owned(), reports.to_owned());
        move || {
            Command::new("python3")
                .args(["-m", "schemathesis.cli", "--config-file"])
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/schemathesis.toml"))
                .arg("run")
                .arg(format!("{base}/api/openapi.json"))
                .args(["--checks", "all"])
                .args(["--max-examples", MAX_EXAMPLES])
                .args(["--seed", SEED])
                // One worker thread: with two, Hypothesis parses lambda
                // sources on both at once, which CPython 3.11 can fail with
                // "AST constructor recursion depth mismatch" (a Runtime
                // Error of the tool, seen in CI), not a finding.
                .args(["--workers", "1"])
                .args(["--request-timeout", "10"])
                .args(["--generation-database", "none"])
                .args(["--report", "json,junit"])
                .arg("--report-json-path")
                .arg(reports.join("report.json"))
                .arg("--report-junit-path")
                .arg(reports.join("junit.xml"))
                .args(["--no-color", "--output-truncate", "true"])
                .current_dir(&dir)
                .env("NO_COLOR", "1")
                .output()
                .expect("run schemathesis")
        }
    })
    .await
    .expect("schemathesis task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_in_the_http_api() {
    let version = schemathesis_version();
    let dir = tempfile::tempdir().expect("temp dir");
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    std::fs::copy(committed, dir.path().join("config.toml")).expect("copy config");
    // The committed config as `cargo run -- all` uses it (embedded Kafka,
    // SQLite), on free ports so tests can run side by side.
    let env = vec![
        ("Api__Listen".to_string(), "127.0.0.1:0".to_string()),
        ("Worker__AdminListen".to_string(), "127.0.0.1:0".to_string()),
    ];
    let mut process = Process::spawn(&["all"], &env, dir.path());
    let base = format!("http://{}", process.http_addr());
    let http = reqwest::Client::new();
    assert!(healthy(&http, &base).await, "not healthy before the run");
    let served_before = requests_served(&http, &base).await;

    let reports = dir.path().join("reports");
    let started = Instant::now();
    let output = schemathesis(&base, dir.path(), &reports).await;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    let alive = healthy(&http, &base).await;
    let served = requests_served(&http, &base)
        .await
        .saturating_sub(served_before);
    let report = report(&reports);
    let operations = report["operations"]["tested"].as_u64().unwrap_or(0);
    let test_cases = report["test_cases"]["generated"].as_u64().unwrap_or(0);
    let failures: u64 = report["failures"]
        .as_array()
        .map(|fs| fs.iter().filter_map(|f| f["count"].as_u64()).sum())
        .unwrap_or(0);
    let errors = report["errors"].as_array().map_or(0, Vec::len);
    println!(
        "schemathesis ({version}): {operations} operations, {test_cases} test cases, \
         {served} requests served, {failures} failures, {errors} errors, in {:.1} s",
        elapsed.as_secs_f64()
    );

    assert!(
        output.status.success() && failures == 0 && errors == 0,
        "schemathesis found problems (exit {:?}):\n{stdout}\n{stderr}\norderflow's log:\n{}",
        output.status.code(),
        process.log_text()
    );
    assert!(
        operations >= 15,
        "only {operations} operations tested:\n{stdout}"
    );
    assert!(
        test_cases >= MIN_REQUESTS && served >= MIN_REQUESTS,
        "too little fuzzing: {test_cases} test cases, {served} requests served (want {MIN_REQUESTS})"
    );
    assert!(
        alive,
        "orderflow stopped answering /healthz during the run:\n{}",
        process.log_text()
    );
    process.signal("TERM");
    assert_eq!(
        process.wait_exit(Duration::from_secs(30)),
        Some(0),
        "orderflow did not exit cleanly on SIGTERM:\n{}",
        process.log_text()
    );
}
