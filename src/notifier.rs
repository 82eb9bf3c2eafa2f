//! Telling the customer: a trait with a log implementation (development)
//! and an HTTP webhook (production hands the text to a mail or SMS service),
//! and [`Notifications`], which sends and records each attempt so that a
//! failed send is retried by the reconciler's sweep, or given up on the
//! order's timeline, never dropped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use crate::config::{NotificationRetrySettings, NotifierSettings, WorkerSettings};
use crate::store::{Notification, NotificationRetry, Store};

/// The webhook's whole exchange, connection included.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries are at most this far apart.
const MAX_RETRY_GAP: Duration = Duration::from_secs(3600);

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
                .timeout(SEND_TIMEOUT)
                .build()
                .unwrap_or_default(),
            url: url.clone(),
        }),
    }
}

/// Sends notifications and records every attempt's outcome.
pub struct Notifications {
    notifier: Arc<dyn Notifier>,
    retry: NotificationRetrySettings,
}

impl Notifications {
    /// The notifications of a role that sends them; its counters are on
    /// /metrics at 0 from the start, so the first failure shows as an
    /// increase (an alert on it fires) rather than as a new series.
    pub fn new(settings: &WorkerSettings) -> Self {
        metrics::counter!(crate::metrics::NOTIFICATIONS_RETRIED).increment(0);
        metrics::counter!(crate::metrics::NOTIFICATIONS_FAILED).increment(0);
        Self::with(
            from_settings(&settings.notifier),
            settings.notification_retry.clone(),
        )
    }

    pub fn with(notifier: Arc<dyn Notifier>, retry: NotificationRetrySettings) -> Self {
        Self { notifier, retry }
    }

    /// When a notification recorded now falls to the sweep if nobody sent
    /// it: after the handler's own send has certainly ended (it died first).
    pub fn unsent_by() -> chrono::DateTime<Utc> {
        Utc::now() + SEND_TIMEOUT * 2
    }

    /// Sends `n`, whose sends failed `failed_before` times already, and
    /// records the outcome: sent, to be retried later, or given up.
    /// Returns whether it was sent.
    pub async fn deliver(&self, store: &dyn Store, n: &Notification, failed_before: u32) -> bool {
        if failed_before > 0 {
            metrics::counter!(crate::metrics::NOTIFICATIONS_RETRIED).increment(1);
        }
        let error = match self.notifier.notify(n).await {
            Ok(()) => {
                if let Err(e) = store.mark_notification_sent(n.order_id).await {
                    // Unmarked, it is sent again later: twice rather than never.
                    tracing::warn!(error = %e, order_id = %n.order_id, "cannot mark notification sent");
                }
                return true;
            }
            Err(e) => e,
        };
        let attempts = failed_before.saturating_add(1);
        let retry = if attempts >= self.retry.max_attempts {
            metrics::counter!(crate::metrics::NOTIFICATIONS_FAILED).increment(1);
            tracing::error!(order_id = %n.order_id, attempts, error, "customer notification given up");
            NotificationRetry::GiveUp {
                note: format!("customer notification failed after {attempts} attempts: {error}"),
            }
        } else {
            let gap = retry_gap(self.retry.first_retry, attempts);
            tracing::warn!(order_id = %n.order_id, attempts, error, retry_in = ?gap, "notification not sent; will retry");
            NotificationRetry::At(Utc::now() + gap)
        };
        if let Err(e) = store
            .mark_notification_failed(n.order_id, &error, &retry)
            .await
        {
            // Still due as it was: the next sweep tries again.
            tracing::warn!(error = %e, order_id = %n.order_id, "cannot record the failed notification");
        }
        false
    }
}

/// The wait after the `attempts`-th failed send: `first` doubling, at most
/// an hour.
fn retry_gap(first: Duration, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    first.saturating_mul(1 << doublings).min(MAX_RETRY_GAP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderId;

    #[test]
    fn retries_wait_twice_as_long_each_time_up_to_an_hour() {
        let first = Duration::from_secs(30);
        let gaps: Vec<u64> = (1..=9).map(|n| retry_gap(first, n).as_secs()).collect();
        assert_eq!(gaps, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
    }

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
