//! The order API as a client sees it, on SQLite and on PostgreSQL.

use std::time::Duration;

use crate::both_backends;
use crate::common::{self, order_body, spawn_app, timeline, Backend, TestApp};
use orderflow::domain::{OrderId, OrderStatus};
use orderflow::store::Transition;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn problem(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = common::header(&response, "content-type");
    assert_eq!(content_type, "application/problem+json", "status {status}");
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    (status, body)
}

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["field"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn create_then_read(backend: Backend) {
    let app = spawn_app(backend).await;

    let body = json!({
        "customerName": "Ada Lovelace", "customerEmail": "ada@example.com", "customerId": "c-42",
        "items": [{"productName": "pen", "quantity": 3, "unitPrice": 0.1},
                  {"productName": "ink", "quantity": 1, "unitPrice": "19.99"}]
    });
    let response = app.create_order(&body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location header")
        .to_string();
    let created: Value = response.json().await.expect("order");
    assert_eq!(
        location,
        format!("/api/orders/{}", created["id"].as_str().expect("id"))
    );
    assert_eq!(created["status"], "Pending");
    // Exact decimals: 3 × 0.10 + 19.99, no float rounding.
    assert_eq!(created["totalAmount"], "20.29");

    assert_eq!(created["items"][0]["unitPrice"], "0.10");
    let fetched: Value = app.get_json(&location).await;
    // The create response is built without reading the order back: it
    // must say exactly what a read says (decimal scale, timestamp precision).
    assert_eq!(fetched, created);
    assert_eq!(fetched["customerId"], "c-42");
    assert_eq!(fetched["items"][1]["unitPrice"], "19.99");
    assert_eq!(fetched["timeline"][0]["status"], "Pending");

    let missing = app.get(&format!("/api/orders/{}", OrderId::new())).await;
    assert_eq!(problem(missing).await.0, StatusCode::NOT_FOUND);
    app.stop().await;
}
both_backends!(create_then_read_an_order, create_then_read);

async fn idempotency(backend: Backend) {
    // No dead-letter or control topic: the API role publishes order events
    // without waiting for the worker's topics (which this mock broker could
    // not create on request).
    let app = TestApp::builder(backend)
        .broker(common::start_broker_with(&[
            common::TOPIC,
            common::FULFILMENT_TOPIC,
        ]))
        .spawn()
        .await;
    let body = order_body("Grace Hopper", "compiler", 1);
    let post = |body: Value| {
        app.http
            .post(app.url("/api/orders"))
            .header("Idempotency-Key", "retry-1")
            .json(&body)
            .send()
    };
    let first = post(body.clone()).await.expect("first");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.expect("order");
    let again = post(body.clone()).await.expect("retry");
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.expect("order");
    assert_eq!(first["id"], again["id"]);

    let other = post(order_body("Grace Hopper", "compiler", 2))
        .await
        .expect("other");
    assert_eq!(problem(other).await.0, StatusCode::UNPROCESSABLE_ENTITY);

    // Eight clients retrying one new key at the same moment: one order.
    let racing = futures::future::join_all((0..8).map(|_| {
        app.http
            .post(app.url("/api/orders"))
            .header("Idempotency-Key", "race-1")
            .json(&order_body("Grace Hopper", "compiler", 3))
            .send()
    }))
    .await;
    let mut raced = Vec::new();
    for response in racing {
        let response = response.expect("racing post");
        assert_eq!(response.status(), StatusCode::CREATED);
        let order: Value = response.json().await.expect("order");
        raced.push(order["id"].clone());
    }
    raced.dedup();
    assert_eq!(raced.len(), 1, "{raced:?}");

    let list: Value = app.get_json("/api/orders").await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    // Two orders, one OrderCreated event each on the topic.
    let bootstrap = app.broker.bootstrap_servers();
    let events =
        common::read_topic_async(bootstrap, common::TOPIC, 3, Duration::from_secs(4)).await;
    let mut keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
    keys.sort_unstable();
    let mut ids = [
        first["id"].as_str().expect("id"),
        raced[0].as_str().expect("id"),
    ];
    ids.sort_unstable();
    assert_eq!(keys, ids, "{events:?}");
    app.stop().await;
}
both_backends!(idempotency_key_returns_the_same_order, idempotency);

async fn transitions(backend: Backend) {
    let app = spawn_app(backend).await;
    let created: Value = app
        .create_order(&order_body("Alan Turing", "tape", 1))
        .await
        .json()
        .await
        .expect("order");
    let id = created["id"].as_str().expect("id").to_string();
    let pay = |id: String, payment: &'static str| {
        app.http
            .post(app.url(&format!("/api/orders/{id}/payments")))
            .json(&json!({ "paymentId": payment }))
            .send()
    };
    // Pending cannot be paid: stock is not reserved yet.
    let (status, body) = problem(pay(id.clone(), "p-1").await.expect("pay")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let order_id: OrderId = id.parse().expect("order id");
    app.store
        .transition(
            order_id,
            Transition {
                to: OrderStatus::Reserved,
                note: "stock reserved".into(),
                event: None,
            },
        )
        .await
        .expect("reserve");
    let paid = pay(id.clone(), "p-1").await.expect("pay");
    assert_eq!(paid.status(), StatusCode::OK);
    let paid: Value = paid.json().await.expect("order");
    assert_eq!(paid["status"], "Paid");
    assert_eq!(timeline(&paid), ["Pending", "Reserved", "Paid"]);

    let twice = pay(id.clone(), "p-2").await.expect("pay again");
    assert_eq!(problem(twice).await.0, StatusCode::CONFLICT);
    // Shipping needs AwaitingShipment, which the worker sets after payment.
    let ship = app
        .http
        .post(app.url(&format!("/api/orders/{id}/shipments")))
        .json(&json!({ "trackingNumber": "T-1" }))
        .send()
        .await
        .expect("ship");
    assert_eq!(problem(ship).await.0, StatusCode::CONFLICT);
    let unknown = pay(OrderId::new().to_string(), "p-3").await.expect("pay");
    assert_eq!(problem(unknown).await.0, StatusCode::NOT_FOUND);
    let no_payment_id = app
        .http
        .post(app.url(&format!("/api/orders/{id}/payments")))
        .json(&json!({}))
        .send()
        .await
        .expect("pay");
    let (status, body) = problem(no_payment_id).await;
    assert_eq!(
        (status, fields(&body)),
        (StatusCode::BAD_REQUEST, vec!["paymentId".to_string()])
    );
    app.stop().await;
}
both_backends!(status_moves_only_forward, transitions);

async fn pagination(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let order: Value = app
            .create_order(&order_body(&format!("Customer {i}"), "pen", 1))
            .await
            .json()
            .await
            .expect("order");
        ids.push(order["id"].as_str().expect("id").to_string());
    }
    ids.reverse(); // newest first
    let mut seen = Vec::new();
    let mut url = app.url("/api/orders?limit=2");
    loop {
        let page: Value = app
            .http
            .get(&url)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("page");
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .filter_map(|o| o["id"].as_str().map(String::from)),
        );
        match page["nextCursor"].as_str() {
            Some(cursor) => url = app.url(&format!("/api/orders?limit=2&after={cursor}")),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    let pending: Value = app.get_json("/api/orders?status=pending&limit=100").await;
    assert_eq!(pending["items"].as_array().map(Vec::len), Some(5));
    let paid: Value = app.get_json("/api/orders?status=Paid").await;
    assert_eq!(paid["items"].as_array().map(Vec::len), Some(0));

    let bad = app.get("/api/orders?limit=0&status=Lost&after=xyz").await;
    let (status, body) = problem(bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&body), ["status", "limit", "after"]);
    app.stop().await;
}
both_backends!(keyset_pagination_lists_every_order_once, pagination);

async fn inventory(backend: Backend) {
    let app = spawn_app(backend).await;
    let put = |body: Value| {
        app.http
            .put(app.url("/api/inventory/widget"))
            .json(&body)
            .send()
    };
    let level: Value = put(json!({"onHand": 50}))
        .await
        .expect("put")
        .json()
        .await
        .expect("level");
    assert_eq!(level["onHand"], 50);
    let level: Value = put(json!({"onHand": 7}))
        .await
        .expect("put")
        .json()
        .await
        .expect("level");
    assert_eq!(level["onHand"], 7);
    let got: Value = app.get_json("/api/inventory/widget").await;
    assert_eq!(
        (got["productName"].clone(), got["onHand"].clone()),
        (json!("widget"), json!(7))
    );
    let (status, body) = problem(put(json!({"onHand": -1})).await.expect("put")).await;
    assert_eq!(
        (status, fields(&body)),
        (StatusCode::BAD_REQUEST, vec!["onHand".to_string()])
    );
    let unknown = app.get("/api/inventory/gadget").await;
    assert_eq!(problem(unknown).await.0, StatusCode::NOT_FOUND);
    app.stop().await;
}
both_backends!(inventory_levels_round_trip, inventory);

/// `GET /api/inventory?limit=&after=` as a client pages through it: the
/// products and their levels as set, in name order.
async fn inventory_page(app: &TestApp, limit: Option<&str>, after: Option<&str>) -> Value {
    let mut query = Vec::new();
    query.extend(limit.map(|l| ("limit", l)));
    query.extend(after.map(|a| ("after", a)));
    let response = app
        .http
        .get(app.url("/api/inventory"))
        .query(&query)
        .send()
        .await
        .expect("GET /api/inventory");
    assert_eq!(response.status(), StatusCode::OK, "{query:?}");
    response.json().await.expect("page")
}

/// Every page of the inventory at `limit`, following the cursors.
async fn inventory_pages(app: &TestApp, limit: &str) -> Vec<Vec<(String, i64)>> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = inventory_page(app, Some(limit), after.as_deref()).await;
        let items = page["items"].as_array().expect("items");
        pages.push(
            items
                .iter()
                .map(|i| {
                    let name = i["productName"].as_str().expect("productName");
                    (name.to_string(), i["onHand"].as_i64().expect("onHand"))
                })
                .collect(),
        );
        match page["nextCursor"].as_str() {
            Some(cursor) => after = Some(cursor.to_string()),
            None => break,
        }
        assert!(pages.len() <= 30, "the cursors never end: {pages:?}");
    }
    pages
}

async fn inventory_listing(backend: Backend) {
    let app = spawn_app(backend).await;
    let empty = inventory_page(&app, None, None).await;
    assert_eq!(empty, json!({"items": []}));

    // Set in no particular order; names a cursor must carry through a
    // query string intact (space, ampersand, non-ASCII).
    let mut products: Vec<(String, i64)> = (0..23)
        .map(|i| (format!("product-{:02}", (i * 7) % 23), i))
        .collect();
    products.push(("pen & ink".into(), 100));
    products.push(("ünïcode pad".into(), 101));
    for (name, on_hand) in &products {
        let put = app
            .http
            .put(app.url(&format!("/api/inventory/{}", urlencoding(name))))
            .json(&json!({ "onHand": on_hand }))
            .send()
            .await
            .expect("PUT");
        assert_eq!(put.status(), StatusCode::OK, "{name}");
    }
    products.sort();

    let pages = inventory_pages(&app, "10").await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(pages.concat(), products, "every product once, by name");

    // A last page exactly full still has a cursor; the page after it is
    // empty and has none.
    let pages = inventory_pages(&app, "5").await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [5, 5, 5, 5, 5, 0]);
    assert_eq!(pages.concat(), products);

    let first = inventory_page(&app, None, None).await;
    assert_eq!(first["items"].as_array().map(Vec::len), Some(20));
    assert_eq!(first["nextCursor"], json!(products[19].0));
    let level = &first["items"][0];
    assert_eq!(level["productName"], json!(products[0].0));
    assert_eq!(level["reserved"], 0);
    assert!(level["updatedAt"].is_string(), "{level}");

    // After the last name: nothing. After a name that is not tracked:
    // the products that follow it.
    let last = products.last().map(|(name, _)| name.as_str());
    let past = inventory_page(&app, None, last).await;
    assert_eq!(past, json!({"items": []}));
    let between = inventory_page(&app, Some("2"), Some("product-10a")).await;
    assert_eq!(between["items"][0]["productName"], "product-11");
    assert_eq!(between["nextCursor"], "product-12");

    for (query, expected) in [
        ("limit=0&after=", vec!["limit", "after"]),
        ("limit=101", vec!["limit"]),
        ("limit=ten", vec!["limit"]),
        ("limit=-1", vec!["limit"]),
        ("after=%20%20", vec!["after"]),
        ("after=pen%07", vec!["after"]),
    ] {
        let bad = app.get(&format!("/api/inventory?{query}")).await;
        let (status, body) = problem(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(fields(&body), expected, "{query}: {body}");
    }
    let long = "x".repeat(201);
    let bad = app.get(&format!("/api/inventory?after={long}")).await;
    assert_eq!(problem(bad).await.0, StatusCode::BAD_REQUEST);
    app.stop().await;
}
both_backends!(
    inventory_lists_every_product_once_by_name,
    inventory_listing
);

/// Percent-encodes a path segment.
fn urlencoding(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One bad request: what it is, its body and content type, the status and
/// the problem document's `errors[].field`s expected.
type Malformed = (
    &'static str,
    String,
    &'static str,
    StatusCode,
    Vec<&'static str>,
);

/// Ten kinds of bad request.
fn malformed_cases() -> Vec<Malformed> {
    let good_item = json!({"productName": "pen", "quantity": 1, "unitPrice": "1.00"});
    let with = |patch: Value| {
        let mut body = json!({"customerName": "Ada", "customerEmail": "ada@example.com", "items": [good_item.clone()]});
        if let (Some(b), Some(p)) = (body.as_object_mut(), patch.as_object()) {
            for (k, v) in p {
                b.insert(k.clone(), v.clone());
            }
        }
        body.to_string()
    };
    let too_many: Vec<Value> = (0..101).map(|_| good_item.clone()).collect();
    vec![
        (
            "bad JSON",
            "{\"customerName\": ".into(),
            "application/json",
            StatusCode::BAD_REQUEST,
            vec![],
        ),
        (
            "empty body",
            String::new(),
            "application/json",
            StatusCode::BAD_REQUEST,
            vec![],
        ),
        (
            "negative quantity",
            with(json!({"items": [{"productName": "pen", "quantity": -2, "unitPrice": "1.00"}]})),
            "application/json",
            StatusCode::BAD_REQUEST,
            vec!["items[0].quantity"],
        ),
        (
            "quantity of wrong type",
            with(
                json!({"items": [{"productName": "pen", "quantity": "two", "unitPrice": "1.00"}]}),
            ),
            "application/json",
            StatusCode::BAD_REQUEST,
            vec!["items[0].quantity"],
        ),
        (
            "empty items",
            with(json!({"items": []})),
            "application/json",
            StatusCode::BAD_REQUEST,
            vec!["items"],
        ),
        (
            "bad email",
            with(json!({"customerEmail": "not-an-email"})),
            "application/json",
            StatusCode::BAD_REQUEST,
            vec!["customerEmail"],
        ),
        (
            "sub-cent price",
            with(json!({"items": [{"productName": "pen", "quantity": 1, "unitPrice": "0.001"}]})),
            "application/json",
            StatusCode::BAD_REQUEST,
            vec!["items[0].unitPrice"],
        ),
        (
            "101 items",
            with(json!({"items": too_many})),
            "application/json",
            StatusCode::BAD_REQUEST,
            vec!["items"],
        ),
        (
            "form content type",
            "customerName=Ada".into(),
            "application/x-www-form-urlencoded",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            vec![],
        ),
        (
            "missing name, negative price",
            with(
                json!({"customerName": null, "items": [{"productName": "pen", "quantity": 1, "unitPrice": -1}]}),
            ),
            "application/json",
            StatusCode::BAD_REQUEST,
            vec!["customerName", "items[0].unitPrice"],
        ),
    ]
}

/// Ten kinds of bad request, each answered with the right problem document,
/// and none of them writes anything.
async fn malformed(backend: Backend) {
    let app = spawn_app(backend).await;
    for (what, body, content_type, expected, expected_fields) in malformed_cases() {
        let response = app
            .http
            .post(app.url("/api/orders"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST");
        let (status, problem) = problem(response).await;
        assert_eq!(status, expected, "{what}: {problem}");
        assert_eq!(fields(&problem), expected_fields, "{what}: {problem}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}"
        );
    }
    let (status, head) = oversized_post(&app, 5 * 1024 * 1024).await;
    assert_eq!(status, 413, "5 MB body: {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("application/problem+json"),
        "{head}"
    );

    let list: Value = app.get_json("/api/orders").await;
    assert_eq!(list["items"], json!([]), "no order written");
    assert_eq!(
        app.store
            .outbox_pending(10, &Default::default(), &[])
            .await
            .expect("outbox"),
        vec![],
        "no event written"
    );
    app.stop().await;
}
both_backends!(
    malformed_requests_get_problem_documents_and_write_nothing,
    malformed
);

/// A client announcing a 5 MB body gets 413 as soon as the server sees the
/// Content-Length; the server does not read (or buffer) the body. Spoken in
/// raw HTTP/1.1 because a client that insists on writing the whole body
/// first meets a closed socket instead of the answer.
async fn oversized_post(app: &TestApp, len: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.addr().to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/orders HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n{{\"customerName\":\""
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream
        .write_all(&vec![b'x'; 64 * 1024])
        .await
        .expect("write start of body");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}
