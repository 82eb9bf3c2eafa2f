//! What is on a topic, as any consumer sees it, and messages put there by
//! an outside producer (kcat).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

/// One message as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: HashMap<String, String>,
    pub payload: Value,
}

impl Received {
    /// A header's value, if the message carries it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Reads `topic` from the beginning until `expected` messages arrived (then
/// lingers a moment, so duplicates beyond `expected` are seen too) or
/// `within` elapsed; returns what it read, in (partition, offset) order.
/// Blocking: see [`read_topic_async`] for async tests.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    within: Duration,
) -> Vec<Received> {
    read_topic_raw(bootstrap, topic, expected, within)
        .into_iter()
        .map(|(message, _)| message)
        .collect()
}

/// As [`read_topic`], each message with its value as the bytes on the wire
/// (as text): what a parsed [`Received::payload`] loses, such as a number's
/// digits (`12.10`) or the order of its properties.
pub fn read_topic_raw(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    within: Duration,
) -> Vec<(Received, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition offset");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + within;
    let linger = Duration::from_millis(1500);
    let mut last_arrival = Instant::now();
    let mut out = Vec::new();
    while Instant::now() < deadline && (out.len() < expected || last_arrival.elapsed() < linger) {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        last_arrival = Instant::now();
        let Ok(message) = result else { continue };
        let mut headers = HashMap::new();
        if let Some(hs) = message.headers() {
            for h in hs.iter() {
                let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                headers.insert(h.key.to_string(), value.unwrap_or_default());
            }
        }
        let value = message.payload().unwrap_or_default();
        out.push((
            Received {
                partition: message.partition(),
                offset: message.offset(),
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                headers,
                payload: serde_json::from_slice(value).unwrap_or(Value::Null),
            },
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    out.sort_by_key(|(r, _)| (r.partition, r.offset));
    out
}

/// [`read_topic`] on a blocking thread, for async tests.
pub async fn read_topic_async(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    within: Duration,
) -> Vec<Received> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || read_topic(&bootstrap, &topic, expected, within))
        .await
        .expect("reader")
}

/// [`read_topic_raw`] on a blocking thread, for async tests.
pub async fn read_topic_raw_async(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    within: Duration,
) -> Vec<(Received, String)> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || read_topic_raw(&bootstrap, &topic, expected, within))
        .await
        .expect("reader")
}

/// Produces one message with kcat, as an outside producer would.
pub fn kcat_produce(
    bootstrap: &str,
    topic: &str,
    key: &str,
    headers: &[(&str, &str)],
    payload: &str,
) {
    let mut command = Command::new("kcat");
    command.args(["-b", bootstrap, "-P", "-t", topic, "-k", key]);
    for (k, v) in headers {
        command.arg("-H").arg(format!("{k}={v}"));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat is installed (apt-get install -y kcat)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{payload}").expect("write payload");
    }
    assert!(child.wait().expect("kcat").success(), "kcat produce failed");
}
