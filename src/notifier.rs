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
            .map_err(|e| e.to_string())?;
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
