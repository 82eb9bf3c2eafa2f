//! The Service Bus fulfilment sink against a real AMQP 1.0 peer: RabbitMQ
//! with its `rabbitmq_amqp1_0` plugin on 127.0.0.1:5672 (guest/guest), the
//! connection string in emulator mode (plain AMQP, SASL PLAIN).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fe2o3_amqp::types::messaging::{Body, MessageId};
use fe2o3_amqp::types::primitives::Value as AmqpValue;
use fe2o3_amqp::{Connection, Receiver, Session};
use serde_json::Value;
use tokio::net::TcpStream;

use crate::common::proxy::TcpProxy;
use crate::common::{run_order_to_fulfilment, Process};

const RABBITMQ: &str = "127.0.0.1:5672";

async fn rabbitmq_available() {
    if TcpStream::connect(RABBITMQ).await.is_err() {
        panic!(
            "RabbitMQ is not listening on {RABBITMQ}: start it with `rabbitmq-server -detached` \
             and enable AMQP 1.0 with `rabbitmq-plugins enable rabbitmq_amqp1_0` (.ci/run does both)"
        );
    }
}

/// One message as the downstream receiver sees it.
#[derive(Debug)]
struct Received {
    message_id: String,
    subject: String,
    content_type: String,
    /// The `Message-Type` application property, if any.
    message_type: Option<String>,
    body: Value,
}

/// An AMQP 1.0 receiver on `queue`, collecting until `expected` messages
/// arrived (then a short linger to catch extras) or `within` passed.
async fn receive(queue: &str, expected: usize, within: Duration) -> Vec<Received> {
    let mut connection = Connection::open(
        format!("test-receiver-{}", uuid::Uuid::new_v4()),
        format!("amqp://guest:guest@{RABBITMQ}").as_str(),
    )
    .await
    .expect("AMQP connection");
    let mut session = Session::begin(&mut connection).await.expect("session");
    let mut receiver = Receiver::attach(&mut session, "test-receiver", queue)
        .await
        .expect("receiver link");
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait = if out.len() >= expected {
            Duration::from_millis(1500)
        } else {
            deadline - now
        };
        let Ok(Ok(delivery)) = tokio::time::timeout(wait, receiver.recv::<Body<AmqpValue>>()).await
        else {
            break;
        };
        let message = delivery.message();
        let properties = message.properties.clone().unwrap_or_default();
        let message_id = match properties.message_id {
            Some(MessageId::String(s)) => s,
            other => format!("{other:?}"),
        };
        let bytes: Vec<u8> = match &message.body {
            Body::Data(batch) => batch.iter().flat_map(|d| d.0.to_vec()).collect(),
            _ => Vec::new(),
        };
        let message_type = message
            .application_properties
            .as_ref()
            .and_then(|a| a.0.get("Message-Type"))
            .and_then(|v| match v {
                fe2o3_amqp::types::primitives::SimpleValue::String(s) => Some(s.clone()),
                _ => None,
            });
        out.push(Received {
            message_id,
            message_type,
            subject: properties.subject.unwrap_or_default(),
            content_type: properties
                .content_type
                .map(|s| s.to_string())
                .unwrap_or_default(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        });
        receiver.accept(&delivery).await.expect("accept");
    }
    // Bounded: fe2o3-amqp's closing handshake has been seen to wait forever
    // (its session task spinning) after a receive timed out; what was
    // received is all this test needs.
    let grace = Duration::from_secs(3);
    let _ = tokio::time::timeout(grace, receiver.close()).await;
    let _ = tokio::time::timeout(grace, session.end()).await;
    let _ = tokio::time::timeout(grace, connection.close()).await;
    out
}

/// `orderflow all` on SQLite and the embedded broker, fulfilment to a
/// fresh queue through `endpoint`.
fn start_all(
    endpoint: &str,
    queue: &str,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> (Process, String) {
    let env: Vec<(String, String)> = [
        ("Database__Url", "sqlite://orderflow.db"),
        ("KafkaConfiguration__ServerUrl", "embedded"),
        ("Api__Listen", "127.0.0.1:0"),
        ("Outbox__MaxBackoffMs", "1000"),
        ("Fulfilment__Kind", "servicebus"),
        ("Fulfilment__Queue", queue),
        (
            "Fulfilment__ConnectionString",
            &format!(
                "Endpoint=sb://{endpoint}/;SharedAccessKeyName=guest;SharedAccessKey=guest;\
                 UseDevelopmentEmulator=true"
            ),
        ),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut process = Process::spawn(&["all"], &env, dir);
    let base = format!("http://{}", process.http_addr());
    (process, base)
}

fn fresh_queue() -> String {
    format!("/queue/orderflow-test-{}", uuid::Uuid::new_v4().simple())
}

/// With `Events.Format = kafkaflow` the queue gets what a .NET consumer
/// reads too: the `Message-Type` application property and the PascalCase
/// record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kafkaflow_format_reaches_the_queue_too() {
    rabbitmq_available().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let queue = fresh_queue();
    let (process, base) = start_all(
        RABBITMQ,
        &queue,
        dir.path(),
        &[("Events__Format", "kafkaflow")],
    );
    let http = reqwest::Client::new();
    let id = run_order_to_fulfilment(&http, &base, "Customer K").await;
    let received = receive(&queue, 1, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 1, "{received:?}\n{}", process.log_text());
    let r = &received[0];
    assert_eq!(
        r.message_type.as_deref(),
        Some("Orders.Contracts.OrderFulfilled, Orders.Contracts"),
        "{r:?}"
    );
    assert_eq!(r.body["OrderId"], id.as_str(), "{r:?}");
    assert!(
        r.body["FulfilledAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{r:?}"
    );
    assert!(r.body.get("orderId").is_none(), "PascalCase only: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_fulfilled_order_puts_one_message_on_the_queue() {
    rabbitmq_available().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let queue = fresh_queue();
    let (process, base) = start_all(RABBITMQ, &queue, dir.path(), &[]);
    let http = reqwest::Client::new();
    let mut ids = HashSet::new();
    for i in 0..5 {
        ids.insert(run_order_to_fulfilment(&http, &base, &format!("Customer {i}")).await);
    }
    let received = receive(&queue, 5, Duration::from_secs(30)).await;
    assert_eq!(
        received.len(),
        5,
        "exactly one message per order: {received:?}\n{}",
        process.log_text()
    );
    let orders: HashSet<String> = received
        .iter()
        .filter_map(|r| r.body["orderId"].as_str().map(String::from))
        .collect();
    assert_eq!(orders, ids);
    for r in &received {
        assert_eq!(r.subject, "OrderFulfilled");
        assert_eq!(r.content_type, "application/json");
        assert!(
            uuid::Uuid::parse_str(&r.message_id).is_ok(),
            "message-id is the event id: {r:?}"
        );
    }
    // The connection string never reaches the logs.
    assert!(!process.log_text().contains("SharedAccessKey=guest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_loses_and_duplicates_nothing() {
    rabbitmq_available().await;
    // Between orderflow and RabbitMQ: the broker "goes away" without
    // stopping the shared RabbitMQ.
    let proxy = TcpProxy::start(RABBITMQ.parse().expect("RabbitMQ address"));
    let dir = tempfile::tempdir().expect("temp dir");
    let queue = fresh_queue();
    let (process, base) = start_all(&proxy.addr.to_string(), &queue, dir.path(), &[]);
    let http = reqwest::Client::new();
    let mut ids = HashSet::new();
    for i in 0..3 {
        ids.insert(run_order_to_fulfilment(&http, &base, &format!("Before {i}")).await);
    }
    // Let the sink deliver the first three over its long-lived link.
    tokio::time::sleep(Duration::from_secs(2)).await;

    proxy.cut();
    for i in 0..4 {
        ids.insert(run_order_to_fulfilment(&http, &base, &format!("During {i}")).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();

    let received = receive(&queue, ids.len(), Duration::from_secs(60)).await;
    let distinct: HashSet<&str> = received.iter().map(|r| r.message_id.as_str()).collect();
    let orders: HashSet<String> = received
        .iter()
        .filter_map(|r| r.body["orderId"].as_str().map(String::from))
        .collect();
    println!(
        "servicebus outage summary: fulfilled={} received={} distinct={} duplicates={}",
        ids.len(),
        received.len(),
        distinct.len(),
        received.len() - distinct.len()
    );
    assert_eq!(orders, ids, "no fulfilment lost:\n{}", process.log_text());
    assert_eq!(distinct.len(), ids.len());
    // At-least-once allows the one message in flight when the link broke to
    // arrive twice (receivers deduplicate on message-id); nothing more.
    assert!(received.len() - distinct.len() <= 1, "{received:?}");
    let attached = process
        .log_text()
        .matches("Service Bus sender attached")
        .count();
    assert!(
        attached >= 2,
        "the sink reconnected after the outage ({attached} attaches)"
    );
}
