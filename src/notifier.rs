//! Telling the customer: a trait with a log implementation (development)
//! and an HTTP webhook (production hands the text to a mail or SMS service).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::NotifierSettings;
use crate::store::Notification;

#[async_trait]
pub trait Notifier: Send + Sync {
    async fn notify(&self, notification: &Notification) -> Result<(), String>;
}

pub struct LogNotifier;

#[async_trait]
impl Notifier for LogNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), String> {
        tracing::info!(order_id = %n.order_id, recipient = %n.recipient, text = %n.text, "customer notified");
        Ok(())
    }
}

pub struct WebhookNotifier {
    client: reqwest::Client,
    url: String,
}

#[async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), String> {
        let body = serde_json::json!({
            "orderId": n.order_id,
            "recipient": n.recipient,
            "text": n.text,
        });
        let response = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            // The URL may carry credentials: the error must not.
            .map_err(|e| e.without_url().to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("webhook answered {}", response.status()))
        }
    }
}

pub fn from_settings(settings: &NotifierSettings) -> Arc<dyn Notifier> {
    match settings {
        NotifierSettings::Log => Arc::new(LogNotifier),
        NotifierSettings::Webhook(url) => Arc::new(WebhookNotifier {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            url: url.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderId;

    /// A real HTTP round trip to a webhook served on loopback.
    #[tokio::test]
    async fn webhook_posts_the_notification() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<serde_json::Value>(1);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(body).await;
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let notifier = from_settings(&NotifierSettings::Webhook(format!("http://{addr}/hook")));
        let n = Notification {
            order_id: OrderId::new(),
            recipient: "ada@example.com".into(),
            text: "on its way".into(),
        };
        notifier.notify(&n).await.expect("delivered");
        let body = rx.recv().await.expect("received");
        assert_eq!(body["recipient"], "ada@example.com");
        assert_eq!(body["orderId"], n.order_id.to_string());

        let missing = from_settings(&NotifierSettings::Webhook(format!("http://{addr}/nope")));
        assert!(
            missing.notify(&n).await.is_err(),
            "a 404 is a failed delivery"
        );
    }
}
