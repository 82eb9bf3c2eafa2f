//! The README's promise: with the committed config, `orderflow all` starts
//! from a clean directory with nothing installed, takes an order, and an
//! external Kafka client (kcat) sees its event on the embedded broker.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Process;
use serde_json::{json, Value};

fn kcat_available() {
    let found = Command::new("kcat").arg("-V").output().is_ok();
    assert!(
        found,
        "kcat is not installed: `apt-get update && apt-get install -y kcat` (.ci/run does this)"
    );
}

#[tokio::test]
async fn all_on_the_committed_config_takes_an_order_that_kcat_reads() {
    kcat_available();
    let dir = tempfile::tempdir().expect("temp dir");
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    std::fs::copy(committed, dir.path().join("config.toml")).expect("copy config");
    // Port 0 instead of 8080 so tests can run side by side; nothing else
    // differs from the README's `cargo run --release -- all`.
    let env = vec![("Api__Listen".to_string(), "127.0.0.1:0".to_string())];
    let mut process = Process::spawn(&["all"], &env, dir.path());
    let addr = process.api_addr();
    let embedded = process.wait_for_log("embedded Kafka", Duration::from_secs(10));
    let bootstrap = embedded["bootstrap"]
        .as_str()
        .expect("bootstrap field")
        .to_string();
    assert!(
        dir.path().join("orderflow.db").exists(),
        "SQLite file created"
    );

    let http = reqwest::Client::new();
    let response = http
        .post(format!("http://{addr}/api/orders"))
        .json(&json!({
            "customerName": "Ada Lovelace",
            "customerEmail": "ada@example.com",
            "items": [{"productName": "notebook", "quantity": 2, "unitPrice": 4.25}]
        }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 201);
    let order: Value = response.json().await.expect("order");
    let id = order["id"].as_str().expect("id").to_string();
    let fetched: Value = http
        .get(format!("http://{addr}/api/orders/{id}"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("order");
    assert_eq!(fetched["totalAmount"], "8.50");
    assert_eq!(fetched["status"], "Pending");
    let ready = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);

    let event = common::eventually(Duration::from_secs(20), || {
        let bootstrap = bootstrap.clone();
        async move {
            let output = Command::new("kcat")
                .args([
                    "-b",
                    &bootstrap,
                    "-C",
                    "-t",
                    "orders",
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
                .next()
        }
    })
    .await
    .unwrap_or_else(|| panic!("kcat read no event:\n{}", process.log_text()));
    assert_eq!(event["key"], id.as_str());
    let headers: Vec<&str> = event["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let header = |name: &str| {
        headers
            .chunks(2)
            .find(|kv| kv[0] == name)
            .map(|kv| kv[1].to_string())
    };
    assert_eq!(header("ce_type").as_deref(), Some("OrderCreated"));
    assert_eq!(header("ce_specversion").as_deref(), Some("1.0"));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert!(header("ce_id").is_some_and(|v| !v.is_empty()));
    assert!(header("traceparent").is_some_and(|v| v.starts_with("00-")));
    let payload: Value =
        serde_json::from_str(event["payload"].as_str().expect("payload")).expect("JSON payload");
    assert_eq!(payload["orderId"], id.as_str());
    assert_eq!(payload["totalAmount"], "8.50");
    assert_eq!(payload["customerName"], "Ada Lovelace");

    process.signal("TERM");
    assert_eq!(
        process.wait_exit(Duration::from_secs(20)),
        Some(0),
        "graceful exit"
    );
}
