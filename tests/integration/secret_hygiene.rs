//! No secret in any log line: a full run of `orderflow all` at debug level
//! with a database password, API tokens, a Kafka password and a webhook URL
//! with credentials configured (and a webhook that fails, so its error path
//! logs), plus the failure paths a misconfiguration takes.

use std::process::Command;
use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION};
use serde_json::json;

use crate::common::{self, Cluster, Role, TestBroker};

const DB_PASSWORD: &str = "db-Pw-5e1f93aa";
const WRITER_TOKEN: &str = "writer-Token-0f9e8d7c6b5a4";
const OPS_TOKEN: &str = "ops-Token-a1b2c3d4e5f6a7";
const KAFKA_PASSWORD: &str = "kafka-Pw-77aa55cc";
const HOOK_PASSWORD: &str = "hook-Pw-3c3c3c3c";
const SECRETS: [&str; 5] = [
    DB_PASSWORD,
    WRITER_TOKEN,
    OPS_TOKEN,
    KAFKA_PASSWORD,
    HOOK_PASSWORD,
];

fn assert_clean(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} shows a secret ({secret}):\n{text}"
        );
    }
}

/// A cluster whose every setting that can hold a secret holds one: the
/// database URL's password, API tokens, a Kafka password, a webhook URL with
/// credentials (port 9 refuses, so its error path logs), debug logging.
async fn cluster_full_of_secrets() -> Cluster {
    let mut cluster = Cluster::builder(TestBroker::mock()).start().await;
    let url = cluster.db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{DB_PASSWORD}@"),
        1,
    );
    let hook = format!("http://orderflow:{HOOK_PASSWORD}@127.0.0.1:9/notify");
    for (k, v) in [
        ("Database__Url", url.as_str()),
        ("RUST_LOG", "debug"),
        ("Api__Auth__Enabled", "true"),
        ("Api__Auth__Tokens__shop__Token", WRITER_TOKEN),
        (
            "Api__Auth__Tokens__shop__Scopes",
            "orders:read orders:write",
        ),
        ("Api__Auth__Tokens__ops__Token", OPS_TOKEN),
        ("Api__Auth__Tokens__ops__Scopes", "admin"),
        ("Admin__Enabled", "true"),
        ("KafkaConfiguration__Security__Username", "orderflow"),
        ("KafkaConfiguration__Security__Password", KAFKA_PASSWORD),
        ("Worker__Notifier__Kind", "webhook"),
        ("Worker__Notifier__Url", hook.as_str()),
    ] {
        cluster.set_env(k, v);
    }
    cluster
}

/// An order through its whole life, every request with the shop's token.
async fn an_order_to_fulfilment(base: &str) {
    let mut headers = HeaderMap::new();
    let bearer = format!("Bearer {WRITER_TOKEN}")
        .parse()
        .expect("header value");
    headers.insert(AUTHORIZATION, bearer);
    let shop = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client");
    let within = Duration::from_secs(60);
    let id = common::create_order_at(
        &shop,
        base,
        &common::order_body("Hygiene", "untracked-gadget", 1),
    )
    .await
    .to_string();
    common::wait_for_status(&shop, base, &id, "Reserved", within).await;
    for (step, body) in [
        ("payments", json!({"paymentId": "pay-1"})),
        ("shipments", json!({"trackingNumber": "T-1"})),
    ] {
        let status =
            common::orders::post_json(&shop, base, &format!("/api/orders/{id}/{step}"), &body)
                .await;
        assert_eq!(status, 200, "{step}");
        if step == "payments" {
            common::wait_for_status(&shop, base, &id, "AwaitingShipment", within).await;
        }
    }
    common::wait_for_status(&shop, base, &id, "Fulfilled", within).await;
}

/// Refused and admin requests log too.
async fn admin_requests(http: &reqwest::Client, base: &str) {
    for token in ["not-a-token", WRITER_TOKEN] {
        let response = http
            .get(format!("{base}/admin/api/overview"))
            .bearer_auth(token)
            .send()
            .await
            .expect("admin");
        assert!(response.status().is_client_error());
    }
    let overview = http
        .get(format!("{base}/admin/api/overview"))
        .bearer_auth(OPS_TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(overview.status(), 200);
}

/// A database that refuses: the error names the problem, not the password.
fn a_refused_connection_shows_no_password(dir: &std::path::Path) {
    let unreachable = format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:9/nothing");
    let failed = Command::new(common::binary())
        .arg("migrate")
        .env("Database__Url", &unreachable)
        .env("RUST_LOG", "debug")
        .current_dir(dir)
        .output()
        .expect("orderflow migrate");
    assert!(!failed.status.success());
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&failed.stdout),
        String::from_utf8_lossy(&failed.stderr)
    );
    assert!(output.to_lowercase().contains("refused"), "{output}");
    assert_clean("a failed connection", &output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_logs_no_secret() {
    let mut cluster = cluster_full_of_secrets().await;

    // What an operator prints to check the configuration.
    let shown = cluster.orderflow(&["config"]);
    assert_clean("`orderflow config`", &shown);
    assert!(shown.contains("***"), "{shown}");

    let all = cluster.spawn(Role::All);
    let base = cluster.base();
    an_order_to_fulfilment(&base).await;
    admin_requests(&cluster.http, &base).await;
    // The failed webhook call (port 9 refuses) has been logged.
    let process = &mut cluster.members[all].process;
    tokio::task::block_in_place(|| {
        process.wait_for_log("notification not sent", Duration::from_secs(30))
    });
    cluster.stop_within(all, Duration::from_secs(30));
    let logs = cluster.members[all].process.log_text();
    println!("log lines checked: {}", logs.lines().count());
    assert!(logs.lines().count() > 100, "debug logging was on");
    assert_clean("the run's logs", &logs);

    a_refused_connection_shows_no_password(cluster.dir.path());
}
