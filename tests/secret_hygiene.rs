//! No secret in any log line: a full run of `orderflow all` at debug level
//! with a database password, API tokens, a Kafka password and a webhook URL
//! with credentials configured (and a webhook that fails, so its error path
//! logs), plus the failure paths a misconfiguration takes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Backend, Process, TestDb};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_logs_no_secret() {
    let db = TestDb::new(Backend::Postgres).await;
    let broker = common::start_broker();
    let mut env = common::env_for(&db, &broker);
    let url = db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{DB_PASSWORD}@"),
        1,
    );
    env.retain(|(k, _)| k != "Database__Url");
    let hook = format!("http://orderflow:{HOOK_PASSWORD}@127.0.0.1:9/notify");
    env.extend(
        [
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
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let dir = tempfile::tempdir().expect("temp dir");

    // What an operator prints to check the configuration.
    let shown = Command::new(common::binary())
        .arg("config")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(dir.path())
        .output()
        .expect("orderflow config");
    assert!(shown.status.success());
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert_clean("`orderflow config`", &shown);
    assert!(shown.contains("***"), "{shown}");

    let mut process = Process::spawn(&["all"], &env, dir.path());
    let base = format!("http://{}", process.http_addr());
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{base}/api/orders"))
        .bearer_auth(WRITER_TOKEN)
        .json(&common::order_body("Hygiene", "untracked-gadget", 1))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.expect("order")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let status = |want: &'static str| {
        let (http, base, id) = (http.clone(), base.clone(), id.clone());
        async move {
            common::eventually(Duration::from_secs(60), || {
                let (http, base, id) = (http.clone(), base.clone(), id.clone());
                async move {
                    let order: serde_json::Value = http
                        .get(format!("{base}/api/orders/{id}"))
                        .bearer_auth(WRITER_TOKEN)
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    (order["status"] == want).then_some(())
                }
            })
            .await
            .unwrap_or_else(|| panic!("order never reached {want}"))
        }
    };
    status("Reserved").await;
    for (step, body) in [
        ("payments", serde_json::json!({"paymentId": "pay-1"})),
        ("shipments", serde_json::json!({"trackingNumber": "T-1"})),
    ] {
        let response = http
            .post(format!("{base}/api/orders/{id}/{step}"))
            .bearer_auth(WRITER_TOKEN)
            .json(&body)
            .send()
            .await
            .expect(step);
        assert_eq!(response.status(), 200, "{step}");
        if step == "payments" {
            status("AwaitingShipment").await;
        }
    }
    status("Fulfilled").await;
    // Refused and admin requests log too.
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
    // The failed webhook call (port 9 refuses) has been logged.
    process.wait_for_log("notification not sent", Duration::from_secs(30));
    process.signal("TERM");
    assert_eq!(process.wait_exit(Duration::from_secs(30)), Some(0));
    let logs = process.log_text();
    println!("log lines checked: {}", logs.lines().count());
    assert!(logs.lines().count() > 100, "debug logging was on");
    assert_clean("the run's logs", &logs);

    // A database that refuses: the error names the problem, not the password.
    let unreachable = format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:9/nothing");
    let failed = Command::new(common::binary())
        .arg("migrate")
        .env("Database__Url", &unreachable)
        .env("RUST_LOG", "debug")
        .current_dir(dir.path())
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
