//! A customer-notification webhook served by the test on loopback (what
//! `Worker.Notifier.Kind = "webhook"` posts to): it keeps every request and
//! answers 500 to the first `failures` requests of each order, 204 after.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

/// Requests received, by the `orderId` of their body.
type Received = Arc<Mutex<HashMap<String, Vec<Value>>>>;

pub struct Webhook {
    /// `http://127.0.0.1:port/notify`: the `Worker__Notifier__Url`.
    pub url: String,
    received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    /// Fails each order's first `failures` requests (`usize::MAX`: every
    /// one), then accepts.
    pub async fn start(failures: usize) -> Self {
        let received = Received::default();
        let app = axum::Router::new()
            .route(
                "/notify",
                axum::routing::post(
                    move |State(received): State<Received>, Json(body): Json<Value>| async move {
                        let order = body["orderId"].as_str().unwrap_or_default().to_string();
                        let mut received = received.lock().expect("webhook requests");
                        let requests = received.entry(order).or_default();
                        requests.push(body);
                        if requests.len() <= failures {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::NO_CONTENT
                        }
                    },
                ),
            )
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook");
        let addr = listener.local_addr().expect("webhook address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("webhook serves");
        });
        Self {
            url: format!("http://{addr}/notify"),
            received,
            task,
        }
    }

    /// The requests received for `order_id` so far, oldest first.
    pub fn requests_for(&self, order_id: &str) -> Vec<Value> {
        self.received
            .lock()
            .expect("webhook requests")
            .get(order_id)
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}
