//! An order's life through the public HTTP API, as a client drives it.

use std::time::Duration;

use serde_json::{json, Value};

use super::wait::eventually;

/// Every status of a fulfilled order, in order.
pub const LIFECYCLE: [&str; 6] = [
    "Pending",
    "Reserved",
    "Paid",
    "AwaitingShipment",
    "Shipped",
    "Fulfilled",
];

pub fn order_body(customer: &str, product: &str, quantity: i64) -> Value {
    json!({
        "customerName": customer,
        "customerEmail": format!("{}@example.com", customer.to_lowercase().replace(' ', ".")),
        "items": [{"productName": product, "quantity": quantity, "unitPrice": "12.50"}]
    })
}

/// A response header as text ("" when absent or not ASCII).
pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The statuses of an order's timeline, oldest first.
pub fn timeline(order: &Value) -> Vec<&str> {
    order["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|t| t["status"].as_str())
        .collect()
}

/// `POST {base}/api/orders`, expecting 201; returns the new order's id.
pub async fn create_order_at(
    http: &reqwest::Client,
    base: &str,
    body: &Value,
) -> orderflow::domain::OrderId {
    let response = http
        .post(format!("{base}/api/orders"))
        .json(body)
        .send()
        .await
        .expect("POST /api/orders");
    assert_eq!(response.status(), 201);
    let order: Value = response.json().await.expect("order");
    order["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("order id")
}

/// `POST {base}{path}` with a JSON body; the status code.
pub async fn post_json(http: &reqwest::Client, base: &str, path: &str, body: &Value) -> u16 {
    http.post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
        .status()
        .as_u16()
}

/// Polls `GET {base}/api/orders/{id}` until the order has `status`;
/// `None` after `within`.
pub async fn status_within(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    status: &str,
    within: Duration,
) -> Option<Value> {
    let url = format!("{base}/api/orders/{id}");
    eventually(within, || async {
        let order: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
        (order["status"] == status).then_some(order)
    })
    .await
}

/// Polls `GET {base}/api/orders/{id}` until the order has `status`.
pub async fn wait_for_status(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    status: &str,
    within: Duration,
) -> Value {
    status_within(http, base, id, status, within)
        .await
        .unwrap_or_else(|| panic!("order {id} never reached {status}"))
}

/// Creates an order through the API and drives it to Fulfilled (the worker
/// reserves, ships and fulfils); returns its id.
pub async fn run_order_to_fulfilment(http: &reqwest::Client, base: &str, customer: &str) -> String {
    let within = Duration::from_secs(60);
    let id = create_order_at(http, base, &order_body(customer, "untracked-gadget", 1))
        .await
        .to_string();
    wait_for_status(http, base, &id, "Reserved", within).await;
    let paid = post_json(
        http,
        base,
        &format!("/api/orders/{id}/payments"),
        &json!({"paymentId": format!("pay-{customer}")}),
    )
    .await;
    assert_eq!(paid, 200);
    wait_for_status(http, base, &id, "AwaitingShipment", within).await;
    let shipped = post_json(
        http,
        base,
        &format!("/api/orders/{id}/shipments"),
        &json!({"trackingNumber": format!("T-{customer}")}),
    )
    .await;
    assert_eq!(shipped, 200);
    wait_for_status(http, base, &id, "Fulfilled", within).await;
    id
}

/// Every order `GET {base}/api/orders?{query}` lists, page after page
/// (newest first); `query` filters, e.g. `status=Pending`.
pub async fn list_orders(http: &reqwest::Client, base: &str, query: &str) -> Vec<Value> {
    let mut orders = Vec::new();
    let mut after = String::new();
    loop {
        let url = format!("{base}/api/orders?limit=100&{query}{after}");
        let response = http
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(response.status(), 200, "GET {url}");
        let page: Value = response.json().await.expect("a page of orders");
        orders.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["nextCursor"].as_str() {
            Some(cursor) => after = format!("&after={cursor}"),
            None => return orders,
        }
    }
}
