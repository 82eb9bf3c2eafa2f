//! The OpenAPI 3.1 document: valid (checked by the PyPI
//! `openapi-spec-validator`, a real validator), covering every route the
//! API serves, and browsable.

use std::collections::BTreeSet;
use std::process::Command;

use crate::common::{self, spawn_app, Backend, TestApp};
use serde_json::Value;

/// Every (method, route) the API role serves (the admin routes with
/// `Admin.Enabled`).
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/orders"),
    ("get", "/api/orders"),
    ("get", "/api/orders/{id}"),
    ("post", "/api/orders/{id}/payments"),
    ("post", "/api/orders/{id}/shipments"),
    ("put", "/api/inventory/{product}"),
    ("get", "/api/inventory/{product}"),
    ("get", "/api/inventory"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/openapi.json"),
    ("get", "/api/docs"),
    ("get", "/admin"),
    ("get", "/admin/api/overview"),
    ("get", "/admin/api/instances"),
    ("get", "/admin/api/history"),
    ("post", "/admin/api/workers"),
    ("post", "/admin/api/restart"),
    ("post", "/admin/api/offsets"),
    ("get", "/admin/api/stuck"),
    ("post", "/admin/api/stuck/redrive"),
    ("post", "/admin/api/pause"),
    ("post", "/admin/api/resume"),
    ("post", "/admin/api/dlq/replay"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_covers_every_route() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|ops| ops.keys())
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
    // Every documented operation answers (none is a 404 of the router).
    let order: Value = app
        .create_order(&common::order_body("Ada", "pen", 1))
        .await
        .json()
        .await
        .expect("order");
    assert!(order["id"].is_string());
    let problem = &doc["components"]["schemas"]["Problem"];
    assert!(problem["properties"]["detail"].is_object(), "{problem}");

    validate(&text);

    let docs = app
        .http
        .get(app.url("/api/docs"))
        .send()
        .await
        .expect("docs");
    assert_eq!(docs.status(), 200);
    assert!(docs
        .text()
        .await
        .expect("html")
        .contains("/api/openapi.json"));
    app.stop().await;
}

/// With authentication and a rate limit on, the served document says so:
/// the bearer scheme, each operation's scope, its 401/403/429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_states_the_security_in_force() {
    let app = TestApp::builder(Backend::Sqlite)
        .env(&[
            ("Api__Auth__Enabled", "true"),
            ("Api__Auth__Tokens__ci__Token", "ci-token-0123456789abcdef"),
            ("Api__Auth__Tokens__ci__Scopes", "orders:read"),
            ("Api__RateLimit__PerSecond", "100"),
        ])
        .spawn()
        .await;
    // The document itself is open.
    let text = app
        .get("/api/openapi.json")
        .await
        .text()
        .await
        .expect("body");
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let op = |method: &str, path: &str| doc["paths"][path][method].clone();
    let create = op("post", "/api/orders");
    assert_eq!(
        create["security"],
        serde_json::json!([{"bearer": ["orders:write"]}])
    );
    for status in ["401", "403", "429", "503"] {
        assert!(
            create["responses"][status].is_object(),
            "{status}: {create}"
        );
    }
    assert_eq!(
        op("get", "/api/orders/{id}")["security"],
        serde_json::json!([{"bearer": ["orders:read"]}])
    );
    assert_eq!(
        op("put", "/api/inventory/{product}")["security"],
        serde_json::json!([{"bearer": ["admin"]}])
    );
    assert_eq!(
        op("get", "/api/inventory")["security"],
        serde_json::json!([{"bearer": ["orders:read"]}])
    );
    let health = op("get", "/healthz");
    assert!(
        health["security"].is_null() && health["responses"]["401"].is_null(),
        "{health}"
    );
    validate(&text);
    app.stop().await;
}

/// Runs the PyPI `openapi-spec-validator` on the document.
fn validate(text: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, text).expect("write");
    let validated = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );
    assert!(
        !output.contains("No module named"),
        "openapi-spec-validator is missing: pip install -r tests/deploy/requirements.txt ({output})"
    );
    assert!(validated.status.success(), "{output}");
}
