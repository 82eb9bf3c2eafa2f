//! API security as a client meets it: static bearer
//! tokens and JWTs with scopes (401/403 problem documents with RFC 6750
//! challenges), open health and metrics, the per-client rate limit (429),
//! the connection limit, the request timeout and load shedding.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{self, order_body, tls, Backend, TestApp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const READER: &str = "reader-token-0123456789abcdef";
const WRITER: &str = "writer-token-0123456789abcdef";
const OPS: &str = "ops-token-0123456789abcdef";
const ISSUER: &str = "https://login.example.test/";
const AUDIENCE: &str = "orderflow-api";

fn token_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Api__Auth__Enabled", "true"),
        ("Api__Auth__Tokens__reader__Token", READER),
        ("Api__Auth__Tokens__reader__Scopes", "orders:read"),
        ("Api__Auth__Tokens__writer__Token", WRITER),
        (
            "Api__Auth__Tokens__writer__Scopes",
            "orders:read orders:write",
        ),
        ("Api__Auth__Tokens__ops__Token", OPS),
        ("Api__Auth__Tokens__ops__Scopes", "admin"),
        ("Admin__Enabled", "true"),
    ]
}

/// Sends `method path` with an optional bearer token; returns the status,
/// the WWW-Authenticate header and the body as JSON (Null if not JSON).
async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = app.http.request(method, app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let challenge = common::header(&response, "www-authenticate");
    let content_type = common::header(&response, "content-type");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 401 || status == 403 {
        assert_eq!(content_type, "application/problem+json", "{path}");
        assert_eq!(body["status"], status, "{body}");
    }
    (status, challenge, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_tokens_need_the_right_scope() {
    let app = TestApp::builder(Backend::Sqlite)
        .env(&token_env())
        .spawn()
        .await;
    let order = || Some(order_body("Grace", "untracked-gadget", 1));

    let (status, challenge, body) = call(&app, "POST", "/api/orders", None, order()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(challenge, r#"Bearer realm="orderflow""#);
    let (status, challenge, _) = call(&app, "POST", "/api/orders", Some("nope"), order()).await;
    assert_eq!(status, 401);
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    let (status, challenge, body) = call(&app, "POST", "/api/orders", Some(READER), order()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#) && challenge.contains("orders:write"),
        "{challenge}"
    );
    let (status, _, created) = call(&app, "POST", "/api/orders", Some(WRITER), order()).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let path = format!("/api/orders/{id}");
    assert_eq!(call(&app, "GET", &path, Some(READER), None).await.0, 200);
    assert_eq!(call(&app, "GET", &path, None, None).await.0, 401);
    // Admin is a scope of its own, not a superset.
    assert_eq!(call(&app, "GET", &path, Some(OPS), None).await.0, 403);
    let stock = Some(json!({"onHand": 5}));
    let inventory = "/api/inventory/widget";
    assert_eq!(
        call(&app, "PUT", inventory, Some(WRITER), stock.clone())
            .await
            .0,
        403
    );
    assert_eq!(call(&app, "PUT", inventory, Some(OPS), stock).await.0, 200);
    // The list reads stock as reading one product does.
    let (status, _, listed) = call(&app, "GET", "/api/inventory", Some(READER), None).await;
    assert_eq!(
        (status, listed["items"][0]["productName"].clone()),
        (200, json!("widget"))
    );
    assert_eq!(call(&app, "GET", "/api/inventory", None, None).await.0, 401);
    assert_eq!(
        call(&app, "GET", "/api/inventory", Some(OPS), None).await.0,
        403
    );
    assert_eq!(
        call(&app, "GET", "/admin/api/overview", Some(WRITER), None)
            .await
            .0,
        403
    );
    assert_eq!(
        call(&app, "GET", "/admin/api/overview", Some(OPS), None)
            .await
            .0,
        200
    );
    let (status, _, history) = call(&app, "GET", "/admin/api/history", Some(OPS), None).await;
    assert_eq!((status, history["capacity"].as_u64()), (200, Some(180)));
    assert_eq!(
        call(&app, "GET", "/admin/api/history", Some(READER), None)
            .await
            .0,
        403
    );
    // Unknown paths tell a stranger nothing.
    assert_eq!(call(&app, "GET", "/api/nothing", None, None).await.0, 401);
    assert_eq!(
        call(&app, "GET", "/api/nothing", Some(READER), None)
            .await
            .0,
        404
    );
    // Probes, metrics, the API description and the admin page's shell
    // stay open.
    for open in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
        "/admin",
    ] {
        let status = app.get(open).await.status().as_u16();
        assert!(status == 200 || status == 503, "{open}: {status}");
    }
    // Lower-case scheme, as RFC 7235 allows.
    let response = app
        .http
        .get(app.url(&path))
        .header("authorization", format!("bearer {READER}"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    app.stop().await;
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An issuer of the test's: its RSA key pair (the public half in a JWKS),
/// and a key it never published.
struct Issuer {
    _dir: tempfile::TempDir,
    key: Vec<u8>,
    other_key: Vec<u8>,
    jwks: Value,
    jwks_file: String,
}

impl Issuer {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (key, modulus) = tls::rsa_key(dir.path(), "issuer");
        let (other_key, _) = tls::rsa_key(dir.path(), "impostor");
        let jwks = json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
            "n": modulus, "e": "AQAB"}]});
        let jwks_file = dir.path().join("jwks.json");
        std::fs::write(&jwks_file, jwks.to_string()).expect("write jwks");
        Self {
            jwks_file: jwks_file.display().to_string(),
            _dir: dir,
            key,
            other_key,
            jwks,
        }
    }

    /// `claims` signed RS256 with `pem`, under the published key id.
    fn sign_with(pem: &[u8], claims: Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_rsa_pem(pem).expect("RSA key"),
        )
        .expect("sign")
    }

    fn sign(&self, claims: Value) -> String {
        Self::sign_with(&self.key, claims)
    }

    /// Tokens that must be refused (401, `invalid_token`), each with why.
    fn refused_tokens(&self) -> Vec<(&'static str, String)> {
        let later = now() + 600;
        vec![
            (
                "expired",
                self.sign(claims(ISSUER, AUDIENCE, now() - 600, "orders:read")),
            ),
            (
                "other issuer",
                self.sign(claims("https://evil.test/", AUDIENCE, later, "orders:read")),
            ),
            (
                "other audience",
                self.sign(claims(ISSUER, "someone-else", later, "orders:read")),
            ),
            (
                "other key",
                Self::sign_with(
                    &self.other_key,
                    claims(ISSUER, AUDIENCE, later, "orders:read"),
                ),
            ),
            ("unsigned", {
                // alg "none": the header says so and the signature is empty.
                use base64::Engine;
                let b64 = |v: &Value| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
                };
                format!(
                    "{}.{}.",
                    b64(&json!({"alg": "none", "typ": "JWT"})),
                    b64(&claims(ISSUER, AUDIENCE, later, "orders:read"))
                )
            }),
        ]
    }

    /// Serves the JWKS over HTTP, as an OIDC provider does; its URL.
    async fn serve_jwks(&self) -> String {
        let served = self.jwks.clone();
        let jwks_app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let served = served.clone();
                async move { axum::Json(served) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("addr")
        );
        tokio::spawn(async move { axum::serve(listener, jwks_app).await });
        url
    }
}

fn claims(iss: &str, aud: &str, exp: u64, scope: &str) -> Value {
    json!({"iss": iss, "aud": aud, "exp": exp, "sub": "svc-shop", "scope": scope})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_from_the_configured_issuer_carry_scopes() {
    let issuer = Issuer::new();
    let app = TestApp::builder(Backend::Sqlite)
        .env(&[
            ("Api__Auth__Enabled", "true"),
            ("Api__Auth__Jwt__Issuer", ISSUER),
            ("Api__Auth__Jwt__Audience", AUDIENCE),
            ("Api__Auth__Jwt__JwksFile", issuer.jwks_file.as_str()),
        ])
        .spawn()
        .await;

    let later = now() + 600;
    let writer = issuer.sign(claims(ISSUER, AUDIENCE, later, "orders:write orders:read"));
    let reader = issuer.sign(claims(ISSUER, AUDIENCE, later, "orders:read"));
    let order = || Some(order_body("Edsger", "untracked-gadget", 1));
    let (status, _, body) = call(&app, "POST", "/api/orders", Some(&writer), order()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        call(&app, "POST", "/api/orders", Some(&reader), order())
            .await
            .0,
        403
    );
    assert_eq!(
        call(&app, "GET", "/api/orders", Some(&reader), None)
            .await
            .0,
        200
    );

    for (what, token) in issuer.refused_tokens() {
        let (status, challenge, body) = call(&app, "GET", "/api/orders", Some(&token), None).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(challenge.contains("invalid_token"), "{what}: {challenge}");
    }

    // The same issuer's keys served over HTTP, as an OIDC provider does.
    let url = issuer.serve_jwks().await;
    let by_url = TestApp::builder(Backend::Sqlite)
        .env(&[
            ("Api__Auth__Enabled", "true"),
            ("Api__Auth__Jwt__Issuer", ISSUER),
            ("Api__Auth__Jwt__Audience", AUDIENCE),
            ("Api__Auth__Jwt__JwksUrl", url.as_str()),
        ])
        .spawn()
        .await;
    assert_eq!(
        call(&by_url, "GET", "/api/orders", Some(&reader), None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&by_url, "POST", "/api/orders", Some(&reader), order())
            .await
            .0,
        403
    );
    by_url.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_has_its_own_rate_limit() {
    let mut env = token_env();
    env.extend([
        ("Api__RateLimit__PerSecond", "1"),
        ("Api__RateLimit__Burst", "3"),
    ]);
    let app = TestApp::builder(Backend::Sqlite).env(&env).spawn().await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(call(&app, "GET", "/api/orders", Some(READER), None).await.0);
    }
    assert_eq!(statuses[..3], [200, 200, 200], "{statuses:?}");
    assert_eq!(statuses[3..], [429, 429], "{statuses:?}");
    let response = app
        .http
        .get(app.url("/api/orders"))
        .bearer_auth(READER)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["status"], 429);
    // Another client is not slowed by the first; probes never are.
    assert_eq!(
        call(&app, "GET", "/api/orders", Some(WRITER), None).await.0,
        200
    );
    for _ in 0..5 {
        assert_eq!(app.get("/healthz").await.status(), 200);
    }
    // Failed logins from one address are limited too.
    let mut failures = Vec::new();
    for _ in 0..5 {
        failures.push(
            call(&app, "GET", "/api/orders", Some("guess"), None)
                .await
                .0,
        );
    }
    assert_eq!(failures, [401, 401, 401, 429, 429]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::builder(Backend::Sqlite)
        .env(&[("Api__MaxConnections", "1")])
        .spawn()
        .await;
    let addr = app.addr().to_string();
    // One keep-alive connection holds the only slot.
    let mut first = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = first.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let second = tokio::spawn({
        let http = reqwest::Client::new();
        let url = app.url("/healthz");
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !second.is_finished(),
        "a second connection was served while the slot was taken"
    );
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("served once the slot is free")
        .expect("task")
        .expect("request");
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_time_out_and_excess_ones_are_shed() {
    use sqlx::Connection;
    let app = TestApp::builder(Backend::Postgres)
        .env(&[
            ("Api__RequestTimeoutMs", "1500"),
            ("Api__MaxConcurrentRequests", "1"),
        ])
        .spawn()
        .await;
    // A transaction holding the orders table makes every read wait.
    let mut locker = sqlx::PgConnection::connect(&app.db.url)
        .await
        .expect("connect");
    let mut tx = locker.begin().await.expect("begin");
    sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("lock");
    let slow = tokio::spawn({
        let (http, url) = (app.http.clone(), app.url("/api/orders"));
        async move {
            let response = http.get(url).send().await.expect("request");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    });
    // While the one allowed request waits, another is refused at once.
    // (The pause lets the first one reach the lock; a 503 from the first
    // being late would carry the timeout's detail, and fail below.)
    tokio::time::sleep(Duration::from_millis(400)).await;
    let shed = app
        .get("/api/orders/0190b2b4-7d3c-7000-8000-000000000000")
        .await;
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let problem: Value = shed.json().await.expect("problem");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("limit")),
        "{problem}"
    );
    let (status, problem) = slow.await.expect("task");
    assert_eq!(status, 503, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("1500 ms")),
        "{problem}"
    );
    tx.rollback().await.expect("rollback");
    // Free again: requests are served.
    assert_eq!(app.get("/api/orders").await.status(), 200);
    app.stop().await;
}
