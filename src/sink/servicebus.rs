//! The Azure Service Bus sink over AMQP 1.0 (fe2o3-amqp): SASL PLAIN with
//! the shared access key name and key (which Service Bus accepts), TLS on
//! 5671 for real namespaces, plain AMQP for the development emulator. One
//! long-lived connection, session and sender link serve every message; a
//! broken link is dropped and re-opened on the next delivery, with the
//! relay's backoff in between. A row is acknowledged only when the queue
//! settled its message as accepted.

use std::time::Duration;

use async_trait::async_trait;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Message, Outcome, Properties};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::{Connection, Sender, Session};

use super::on_the_wire;
use super::{Delivered, Sink};
use crate::config::{EventFormat, ServiceBusConnection};
use crate::events;
use crate::store::OutboxRecord;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Each step of the closing handshake; a peer that is gone never answers.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

struct Link {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    sender: Sender,
}

pub struct ServiceBusSink {
    connection: ServiceBusConnection,
    queue: String,
    format: EventFormat,
    link: Option<Link>,
}

impl ServiceBusSink {
    pub fn new(connection: ServiceBusConnection, queue: String, format: EventFormat) -> Self {
        Self {
            connection,
            queue,
            format,
            link: None,
        }
    }

    fn url(&self) -> String {
        let c = &self.connection;
        let (scheme, default_port) = if c.emulator {
            ("amqp", 5672)
        } else {
            ("amqps", 5671)
        };
        format!("{scheme}://{}:{}", c.host, c.port.unwrap_or(default_port))
    }

    async fn open(&self) -> Result<Link, String> {
        let c = &self.connection;
        let url = self.url();
        let mut connection = Connection::builder()
            .container_id(format!("orderflow-{}", uuid::Uuid::new_v4()))
            .hostname(c.host.as_str())
            .sasl_profile(SaslProfile::Plain {
                username: c.key_name.clone(),
                password: c.key.expose().to_string(),
            })
            .open(url.as_str())
            .await
            .map_err(|e| format!("AMQP connection to {url}: {e}"))?;
        let mut session = Session::begin(&mut connection)
            .await
            .map_err(|e| format!("AMQP session: {e}"))?;
        let sender = Sender::attach(&mut session, "orderflow-fulfilment", self.queue.as_str())
            .await
            .map_err(|e| format!("AMQP sender link to {}: {e}", self.queue))?;
        tracing::info!(%url, queue = %self.queue, "Service Bus sender attached");
        Ok(Link {
            connection,
            session,
            sender,
        })
    }
}

/// Closes sender, session and connection in order, each step bounded: an
/// unreachable peer must not hold up shutdown or the reconnect.
async fn close_link(mut link: Link) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.sender.close()).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.session.end()).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.connection.close()).await;
}

/// The properties the seed sets: message-id = event id (receivers
/// deduplicate on it), subject = event type, content type JSON; and the
/// trace context as the application property `traceparent` (and
/// `Diagnostic-Id`, where Azure SDKs look for it).
fn message(
    record: &OutboxRecord,
    format: &EventFormat,
) -> Message<fe2o3_amqp::types::messaging::Data> {
    let (payload, message_type) = on_the_wire(format, record);
    let mut application = ApplicationProperties::builder();
    if let Some(message_type) = message_type {
        application = application.insert(events::MESSAGE_TYPE, message_type);
    }
    if let Some(traceparent) = &record.traceparent {
        application = application
            .insert("traceparent", traceparent.clone())
            .insert("Diagnostic-Id", traceparent.clone());
    }
    Message::builder()
        .application_properties(application.build())
        .properties(
            Properties::builder()
                .message_id(record.event_id.to_string())
                .subject(record.event_type.clone())
                .content_type(events::JSON)
                .build(),
        )
        .data(Binary::from(payload.as_bytes().to_vec()))
        .build()
}

#[async_trait]
impl Sink for ServiceBusSink {
    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Delivered {
        let mut out = Delivered::default();
        if self.link.is_none() {
            match tokio::time::timeout(CONNECT_TIMEOUT, self.open()).await {
                Ok(Ok(link)) => self.link = Some(link),
                Ok(Err(e)) => {
                    out.failure = Some(e);
                    return out;
                }
                Err(_) => {
                    out.failure = Some(format!("AMQP connection to {} timed out", self.url()));
                    return out;
                }
            }
        }
        let Some(link) = self.link.as_mut() else {
            return out;
        };
        let mut broken = false;
        for record in batch {
            let sent = tokio::time::timeout(
                SEND_TIMEOUT,
                link.sender.send(message(record, &self.format)),
            )
            .await;
            match sent {
                Ok(Ok(Outcome::Accepted(_))) => out.acked.push(record.id),
                Ok(Ok(other)) => {
                    out.failure = Some(format!(
                        "queue did not accept event {}: {other:?}",
                        record.event_id
                    ));
                    break;
                }
                Ok(Err(e)) => {
                    out.failure = Some(format!("AMQP send: {e}"));
                    broken = true;
                    break;
                }
                Err(_) => {
                    out.failure = Some("AMQP send timed out waiting for settlement".into());
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            // Reconnect from scratch next time; the unsettled message is
            // sent again then (at-least-once, deduplicated on message-id).
            if let Some(link) = self.link.take() {
                close_link(link).await;
            }
        }
        out
    }

    async fn close(&mut self) {
        if let Some(link) = self.link.take() {
            close_link(link).await;
        }
    }
}
