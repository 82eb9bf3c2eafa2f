//! .NET interop both ways (issue 24), against the golden files in
//! `tests/contracts/`: the C# records (`Contracts.cs`), the JSON
//! System.Text.Json writes for each with default options (`{Record}.json`)
//! and the exact `Message-Type` (`{Record}.message-type`).
//!
//! - The goldens are what System.Text.Json writes for the records.
//! - With `Events__Format=kafkaflow`, every event of an order's whole life
//!   (and of a rejected order) on the orders and fulfilment topics matches
//!   its golden field by field: the `Message-Type`, every property with its
//!   JSON type and format, extra properties only in PascalCase, the amount's
//!   digits, the CustomerId; the `ce_*` headers still there. With the
//!   default format the payloads stay camelCase, without `Message-Type`.
//! - The worker handles the goldens as a .NET producer sends them, with
//!   and without `ce_*` headers, each exactly once and none dead-lettered;
//!   an order whose events come in both formats, each event twice (once in
//!   each format, one `ce_id`), moves once per event, in order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use chrono::DateTime;
use orderflow::domain::{NewItem, NewOrder, Order, OrderId, OrderStatus};
use orderflow::events::{kafkaflow, EventType, NewEvent};
use orderflow::store::{SharedStore, Transition};
use rust_decimal::Decimal;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::{
    self, kcat_produce, read_topic_raw_async, spawn_app, timeline, Backend, Cluster, Metrics,
    Received, Role, TestBroker, LIFECYCLE,
};

const CONTRACTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/contracts");

/// The namespace of the CustomerId v5 Guids as the README documents it for
/// .NET services that compute them too.
const DOCUMENTED_CUSTOMER_NAMESPACE: &str = "6f0c9d3e-2b1a-5c47-9e8d-4a7b3c2d1e0f";

/// How long an order may take to move on, or a topic to fill.
const WITHIN: Duration = Duration::from_secs(60);

/// An order's statuses through its whole life.
const PATH: [OrderStatus; 6] = [
    OrderStatus::Pending,
    OrderStatus::Reserved,
    OrderStatus::Paid,
    OrderStatus::AwaitingShipment,
    OrderStatus::Shipped,
    OrderStatus::Fulfilled,
];

// ---------------------------------------------------------------------------
// The golden files.

/// One record of `Contracts.cs` with its golden files.
struct Contract {
    event: EventType,
    /// The record's properties, `(name, C# type)`, in declaration order.
    properties: Vec<(String, String)>,
    /// `{Record}.json`, byte for byte.
    golden: String,
    /// `{Record}.message-type`, byte for byte.
    message_type: String,
}

impl Contract {
    /// The golden's value of `property`, as JSON text.
    fn golden_value(&self, property: &str) -> String {
        member(&self.golden, property)
            .unwrap_or_else(|| panic!("{}.json has no {property}", self.event))
    }

    /// The golden payload about order `id`: its OrderId replaced, nothing
    /// else touched.
    fn about(&self, id: OrderId) -> String {
        let golden_id = string(&self.golden_value("OrderId"));
        assert_eq!(
            self.golden.matches(&golden_id).count(),
            1,
            "{}",
            self.golden
        );
        self.golden.replace(&golden_id, &id.to_string())
    }
}

fn contract_file(name: &str) -> String {
    let path = format!("{CONTRACTS}/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `public record Name(Type Property, …);` lines of `Contracts.cs`.
fn records() -> Vec<(String, Vec<(String, String)>)> {
    contract_file("Contracts.cs")
        .lines()
        .filter_map(|line| line.trim().strip_prefix("public record "))
        .map(|declaration| {
            let (name, rest) = declaration
                .split_once('(')
                .unwrap_or_else(|| panic!("a positional record: {declaration}"));
            let parameters = rest
                .strip_suffix(");")
                .unwrap_or_else(|| panic!("one record per line: {declaration}"));
            let properties = parameters
                .split(',')
                .map(|parameter| {
                    let (ty, property) = parameter
                        .trim()
                        .rsplit_once(' ')
                        .unwrap_or_else(|| panic!("Type Name: {parameter}"));
                    (property.to_string(), ty.to_string())
                })
                .collect();
            (name.to_string(), properties)
        })
        .collect()
}

fn contracts() -> Vec<Contract> {
    records()
        .into_iter()
        .map(|(name, properties)| Contract {
            event: name.parse().unwrap_or_else(|e| panic!("Contracts.cs: {e}")),
            properties,
            golden: contract_file(&format!("{name}.json")),
            message_type: contract_file(&format!("{name}.message-type")),
        })
        .collect()
}

fn contract(event: EventType) -> Contract {
    contracts()
        .into_iter()
        .find(|c| c.event == event)
        .unwrap_or_else(|| panic!("Contracts.cs has no record {event}"))
}

// ---------------------------------------------------------------------------
// JSON as written: members in order, each value's text untouched (a parsed
// number loses its digits: 12.10 would become 12.1).

/// A JSON object's members, in the order written, each value as its text.
struct Members(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push((name, value.get().to_string()));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

fn members(json: &str) -> Vec<(String, String)> {
    serde_json::from_str::<Members>(json)
        .unwrap_or_else(|e| panic!("not a JSON object ({e}): {json}"))
        .0
}

fn member(json: &str, name: &str) -> Option<String> {
    members(json)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

/// The JSON type of a value's text.
fn kind(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'"') => "string",
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// A JSON string's value.
fn string(raw: &str) -> String {
    serde_json::from_str(raw).unwrap_or_else(|e| panic!("not a JSON string ({e}): {raw}"))
}

/// A Guid as System.Text.Json writes it: the "D" format, lower case.
fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_digit() || ('a'..='f').contains(&c),
        })
}

/// A UTC DateTime as System.Text.Json writes it:
/// `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z$`, the fraction's trailing
/// zeros trimmed (none at all when it is zero).
fn is_utc_datetime(s: &str) -> bool {
    let Some((whole, rest)) = s.split_at_checked(19) else {
        return false;
    };
    let shape = whole
        .chars()
        .zip("dddd-dd-ddTdd:dd:dd".chars())
        .all(|(c, p)| if p == 'd' { c.is_ascii_digit() } else { c == p });
    let fraction_ok = match rest.strip_suffix('Z') {
        Some("") => true,
        Some(f) => f.strip_prefix('.').is_some_and(|digits| {
            (1..=7).contains(&digits.len())
                && digits.chars().all(|c| c.is_ascii_digit())
                && !digits.ends_with('0')
        }),
        None => false,
    };
    shape && fraction_ok && DateTime::parse_from_rfc3339(s).is_ok()
}

/// A decimal as System.Text.Json writes it: a plain JSON number with the
/// value's own digits (no exponent).
fn is_decimal_number(raw: &str) -> bool {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    let (int, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    let all_digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    all_digits(int) && all_digits(fraction) && (int == "0" || !int.starts_with('0'))
}

/// Whether `raw` is what System.Text.Json writes (and, with default
/// options, reads back) for a value of the C# type `ty`.
fn stj_form(ty: &str, raw: &str) -> Result<(), String> {
    let ok = match ty {
        "Guid" => kind(raw) == "string" && is_guid(&string(raw)),
        "DateTime" => kind(raw) == "string" && is_utc_datetime(&string(raw)),
        "decimal" => kind(raw) == "number" && is_decimal_number(raw),
        "string" => kind(raw) == "string",
        "string?" => matches!(kind(raw), "string" | "null"),
        other => panic!("Contracts.cs: no System.Text.Json rule here for {other}"),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{raw} is not how System.Text.Json writes a {ty}"))
    }
}

/// The names in `value`'s objects, at any depth, that do not start with
/// an upper-case letter, each with its path (`Items[0].unitPrice`).
fn not_pascal_case(value: &Value, at: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (name, inner) in fields {
                let path = if at.is_empty() {
                    name.clone()
                } else {
                    format!("{at}.{name}")
                };
                if !name.starts_with(|c: char| c.is_ascii_uppercase()) {
                    out.push(path.clone());
                }
                not_pascal_case(inner, &path, out);
            }
        }
        Value::Array(items) => {
            for (i, inner) in items.iter().enumerate() {
                not_pascal_case(inner, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// The goldens themselves.

/// The goldens hold to the records of `Contracts.cs` and to
/// System.Text.Json's default output: one golden pair per record, the
/// properties in declaration order with nothing else, compact, every value
/// in the form System.Text.Json writes for its C# type, and the
/// `Message-Type` KafkaFlow writes for the record in `Orders.Contracts`.
#[test]
fn the_goldens_are_what_system_text_json_writes_for_the_records() {
    let contracts = contracts();
    let mut events: Vec<EventType> = contracts.iter().map(|c| c.event).collect();
    events.sort_by_key(|e| e.as_str());
    let mut all = EventType::ALL.to_vec();
    all.sort_by_key(|e| e.as_str());
    assert_eq!(events, all, "one record per event orderflow publishes");
    for c in &contracts {
        let golden = members(&c.golden);
        let names: Vec<&str> = golden.iter().map(|(n, _)| n.as_str()).collect();
        let declared: Vec<&str> = c.properties.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, declared, "{}.json: the record's properties", c.event);
        let compact = format!(
            "{{{}}}",
            golden
                .iter()
                .map(|(n, v)| format!("{}:{v}", json!(n)))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(c.golden, compact, "{}.json: compact, no newline", c.event);
        for ((name, ty), (_, raw)) in c.properties.iter().zip(&golden) {
            if let Err(e) = stj_form(ty, raw) {
                panic!("{}.json: {name}: {e}", c.event);
            }
            // The default encoder escapes these; the goldens hold none.
            assert!(
                !raw.contains(|ch: char| "<>&'+`".contains(ch) || !ch.is_ascii()),
                "{}.json: {name} holds a character System.Text.Json escapes",
                c.event
            );
        }
        assert_eq!(
            c.message_type,
            format!("Orders.Contracts.{}, Orders.Contracts", c.event),
            "{}.message-type",
            c.event
        );
    }
}

// ---------------------------------------------------------------------------
// orderflow's output against the goldens.

/// The one message of `ce_type` about order `key` in `messages`.
fn one<'a>(messages: &'a [(Received, String)], key: &str, ce_type: EventType) -> &'a str {
    let found: Vec<&str> = messages
        .iter()
        .filter(|(m, _)| m.key == key && m.header("ce_type") == Some(ce_type.as_str()))
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(found.len(), 1, "{ce_type} of {key}: {found:?}");
    found[0]
}

/// `(key, ce_type)` of every message, sorted.
fn keys_and_types(messages: &[(Received, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = messages
        .iter()
        .map(|(m, _)| {
            let ce_type = m.header("ce_type").unwrap_or("none").to_string();
            (m.key.clone(), ce_type)
        })
        .collect();
    out.sort();
    out
}

/// Asserts that `message` is what a KafkaFlow consumer with the contracts
/// and System.Text.Json's default options reads as `contract`'s record,
/// and that a CloudEvents consumer still reads it too; returns its
/// members (name → JSON text).
fn assert_matches_golden(
    contract: &Contract,
    message: &(Received, String),
) -> HashMap<String, String> {
    let (received, value) = message;
    let what = format!("{} of order {}", contract.event, received.key);
    assert_eq!(
        received.header("Message-Type"),
        Some(contract.message_type.as_str()),
        "{what}: Message-Type"
    );
    // The CloudEvents binary-mode headers stay alongside.
    assert_eq!(received.header("ce_specversion"), Some("1.0"), "{what}");
    assert_eq!(
        received.header("ce_type"),
        Some(contract.event.as_str()),
        "{what}"
    );
    assert!(
        received
            .header("ce_id")
            .is_some_and(|id| Uuid::parse_str(id).is_ok()),
        "{what}: ce_id {:?}",
        received.header("ce_id")
    );
    assert_eq!(received.header("ce_source"), Some("/orderflow"), "{what}");
    assert!(
        received
            .header("ce_time")
            .is_some_and(|t| DateTime::parse_from_rfc3339(t).is_ok()),
        "{what}: ce_time {:?}",
        received.header("ce_time")
    );
    assert_eq!(
        received.header("content-type"),
        Some("application/json"),
        "{what}"
    );

    let written = members(value);
    let mut seen = HashSet::new();
    for (name, _) in &written {
        assert!(seen.insert(name.as_str()), "{what}: {name} twice: {value}");
    }
    let by_name: HashMap<String, String> = written.into_iter().collect();
    let golden = members(&contract.golden);
    for ((name, ty), (_, golden_raw)) in contract.properties.iter().zip(&golden) {
        let raw = by_name
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no {name} (the record's property): {value}"));
        let null_where_nullable = ty.ends_with('?') && kind(raw) == "null";
        assert!(
            null_where_nullable || kind(raw) == kind(golden_raw),
            "{what}: {name} is a JSON {}, the golden's a {}: {value}",
            kind(raw),
            kind(golden_raw)
        );
        if let Err(e) = stj_form(ty, raw) {
            panic!("{what}: {name}: {e}: {value}");
        }
    }
    // Beyond the record: only PascalCase, at any depth (a .NET consumer
    // that declares them binds them by their exact names).
    let mut wrong = Vec::new();
    for (name, raw) in &by_name {
        if contract.properties.iter().any(|(p, _)| p == name) {
            continue;
        }
        let mut extra = serde_json::Map::new();
        extra.insert(name.clone(), serde_json::from_str(raw).expect("JSON value"));
        not_pascal_case(&Value::Object(extra), "", &mut wrong);
    }
    assert!(
        wrong.is_empty(),
        "{what}: not PascalCase: {wrong:?}: {value}"
    );
    by_name
}

/// The CustomerId a .NET service expects for an order without a Guid
/// customer id: the UUID v5 of its (lower-cased) e-mail `address`.
fn customer_guid_of(address: &str) -> String {
    Uuid::new_v5(&kafkaflow::CUSTOMER_NAMESPACE, address.as_bytes()).to_string()
}

/// With `Events__Format=kafkaflow`, every event of an order's whole life
/// (created, paid, shipped, fulfilled), of a rejected order and of a merely
/// reserved one, on the orders and the fulfilment topic of Apache Kafka, is
/// what a KafkaFlow consumer with the contracts reads: the golden's
/// `Message-Type`, every property of the record with the golden's JSON type
/// and System.Text.Json's format for its C# type, extras only in PascalCase,
/// `ce_*` headers alongside; `TotalAmount` a JSON number with the total's
/// own digits; `CustomerId` the given Guid, else the v5 Guid of the
/// lower-cased e-mail address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafkaflow_output_matches_the_goldens_field_by_field() {
    assert_eq!(
        kafkaflow::CUSTOMER_NAMESPACE.to_string(),
        DOCUMENTED_CUSTOMER_NAMESPACE,
        "the namespace the README documents"
    );
    let mut cluster = Cluster::builder(TestBroker::apache())
        .env("Events__Format", "kafkaflow")
        .apis(1)
        .workers(1)
        .start()
        .await;
    cluster.wait_until_assigned();
    let put = cluster
        .http
        .put(format!("{}/api/inventory/scarce", cluster.base()))
        .json(&json!({"onHand": 0}))
        .send()
        .await
        .expect("PUT inventory");
    assert_eq!(put.status(), 200);

    // Ada: no customer id, an e-mail address in mixed case, 2 × 6.05.
    let ada_email = "Ada.Lovelace@Example.COM";
    let ada = cluster
        .create_order(&json!({
            "customerName": "Ada Lovelace",
            "customerEmail": ada_email,
            "items": [{"productName": "lamp", "quantity": 2, "unitPrice": "6.05"}]
        }))
        .await;
    // Grace: a Guid customer id; out of stock, so rejected.
    let grace_customer = "0b6e3c1d-9f2a-4e8b-a7c5-d4f3e2b1a090";
    let grace = cluster
        .create_order(&json!({
            "customerName": "Grace Hopper",
            "customerEmail": "grace@example.com",
            "customerId": grace_customer,
            "items": [{"productName": "scarce", "quantity": 1, "unitPrice": "7"}]
        }))
        .await;
    // Linus: a customer id that is no Guid; 3 × 0.1.
    let linus = cluster
        .create_order(&json!({
            "customerName": "Linus Torvalds",
            "customerEmail": "Linus@Example.org",
            "customerId": "crm-42",
            "items": [{"productName": "pen", "quantity": 3, "unitPrice": "0.1"}]
        }))
        .await;

    cluster.wait_for_status(ada, "Reserved", WITHIN).await;
    let paid = cluster
        .post(
            &format!("/api/orders/{ada}/payments"),
            json!({"paymentId": "pay-ada"}),
        )
        .await;
    assert_eq!(paid, 200);
    cluster
        .wait_for_status(ada, "AwaitingShipment", WITHIN)
        .await;
    let shipped = cluster
        .post(
            &format!("/api/orders/{ada}/shipments"),
            json!({"trackingNumber": "1Z-ADA"}),
        )
        .await;
    assert_eq!(shipped, 200);
    let fulfilled = cluster.wait_for_status(ada, "Fulfilled", WITHIN).await;
    assert_eq!(timeline(&fulfilled), LIFECYCLE);
    cluster.wait_for_status(grace, "Rejected", WITHIN).await;
    cluster.wait_for_status(linus, "Reserved", WITHIN).await;

    let (bootstrap, names) = (cluster.broker.bootstrap_servers(), &cluster.broker.names);
    let orders = read_topic_raw_async(bootstrap, &names.orders, 5, WITHIN).await;
    let fulfilment = read_topic_raw_async(bootstrap, &names.fulfilment, 2, WITHIN).await;
    let (ada, grace, linus) = (ada.to_string(), grace.to_string(), linus.to_string());
    let expected = |events: &[(&str, EventType)]| {
        let mut out: Vec<(String, String)> = events
            .iter()
            .map(|(k, e)| (k.to_string(), e.to_string()))
            .collect();
        out.sort();
        out
    };
    assert_eq!(
        keys_and_types(&orders),
        expected(&[
            (&ada, EventType::OrderCreated),
            (&ada, EventType::OrderPaid),
            (&ada, EventType::OrderShipped),
            (&grace, EventType::OrderCreated),
            (&linus, EventType::OrderCreated),
        ])
    );
    assert_eq!(
        keys_and_types(&fulfilment),
        expected(&[
            (&ada, EventType::OrderFulfilled),
            (&grace, EventType::OrderRejected),
        ])
    );

    // Every message against its golden; its OrderId is its key.
    for message in orders.iter().chain(&fulfilment) {
        let ce_type = message.0.header("ce_type").expect("ce_type");
        let fields = assert_matches_golden(&contract(ce_type.parse().expect("type")), message);
        assert_eq!(string(&fields["OrderId"]), message.0.key, "{ce_type}");
    }

    // The values a .NET consumer reads.
    let field = |messages: &[(Received, String)], key: &str, event: EventType, name: &str| {
        member(one(messages, key, event), name)
            .unwrap_or_else(|| panic!("{event} of {key} has no {name}"))
    };
    let created = EventType::OrderCreated;
    // The total's own digits, never through a float.
    assert_eq!(field(&orders, &ada, created, "TotalAmount"), "12.10");
    assert_eq!(field(&orders, &grace, created, "TotalAmount"), "7.00");
    assert_eq!(field(&orders, &linus, created, "TotalAmount"), "0.30");
    let customer = |key: &str| string(&field(&orders, key, created, "CustomerId"));
    assert_eq!(customer(&ada), customer_guid_of("ada.lovelace@example.com"));
    assert_eq!(customer(&grace), grace_customer, "the given Guid");
    assert_eq!(customer(&linus), customer_guid_of("linus@example.org"));
    assert_eq!(
        string(&field(&orders, &ada, EventType::OrderPaid, "PaymentId")),
        "pay-ada"
    );
    assert_eq!(
        string(&field(
            &orders,
            &ada,
            EventType::OrderShipped,
            "TrackingNumber"
        )),
        "1Z-ADA"
    );
    let fulfilled = EventType::OrderFulfilled;
    assert_eq!(
        string(&field(&fulfilment, &ada, fulfilled, "CustomerEmail")),
        ada_email
    );
    assert_eq!(
        string(&field(&fulfilment, &ada, fulfilled, "TrackingNumber")),
        "1Z-ADA"
    );
    let reason = string(&field(
        &fulfilment,
        &grace,
        EventType::OrderRejected,
        "Reason",
    ));
    assert!(reason.contains("scarce"), "{reason}");
}

/// With the default format, the payloads stay orderflow's camelCase form
/// and carry no `Message-Type`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_format_stays_camel_case_without_message_type() {
    let app = spawn_app(Backend::Postgres).await;
    let response = app
        .create_order(&json!({
            "customerName": "Ada Lovelace",
            "customerEmail": "ada@example.com",
            "items": [{"productName": "lamp", "quantity": 2, "unitPrice": "6.05"}]
        }))
        .await;
    assert_eq!(response.status(), 201);
    let events = read_topic_raw_async(
        app.broker.bootstrap_servers(),
        &app.broker.names.orders,
        1,
        WITHIN,
    )
    .await;
    assert_eq!(events.len(), 1);
    let (message, value) = &events[0];
    assert_eq!(message.header("ce_type"), Some("OrderCreated"));
    assert_eq!(message.header("Message-Type"), None);
    let names: Vec<String> = members(value).into_iter().map(|(n, _)| n).collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with(|c: char| c.is_ascii_lowercase())),
        "{value}"
    );
    for name in ["orderId", "customerId", "totalAmount", "createdAt"] {
        assert!(names.iter().any(|n| n == name), "no {name}: {value}");
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------
// The worker reads the goldens.

/// A mock cluster and a fresh PostgreSQL database with orderflow's schema;
/// no process runs yet.
async fn cluster_and_store() -> (Cluster, SharedStore) {
    let cluster = Cluster::builder(TestBroker::mock()).start().await;
    let store = cluster.store().await;
    store.migrate().await.expect("migrate");
    (cluster, store)
}

/// An order made in the database and moved to `status` there, as the
/// steps before it (the API's, the worker's) would have.
async fn order_in(store: &SharedStore, customer: &str, status: OrderStatus) -> OrderId {
    let new = NewOrder {
        customer_name: customer.to_string(),
        customer_email: format!("{}@example.com", customer.to_lowercase()),
        customer_id: None,
        items: vec![NewItem {
            product_name: "lamp".into(),
            quantity: 2,
            unit_price: Decimal::new(605, 2),
        }],
    };
    let id = store
        .create_order(&new, None, None)
        .await
        .expect("create order")
        .order
        .id;
    let until = PATH.iter().position(|s| *s == status).expect("on the path");
    for step in &PATH[1..=until] {
        move_to(store, id, *step).await;
    }
    id
}

async fn move_to(store: &SharedStore, id: OrderId, to: OrderStatus) {
    let change = Transition {
        to,
        note: "set up by the test".into(),
        event: None,
    };
    store.transition(id, change).await.expect("transition");
}

/// Empties the outbox (no relay publishes the set-up orders' own events),
/// then starts a worker and waits until it has its partitions.
async fn start_worker_on_an_empty_outbox(cluster: &mut Cluster) {
    sqlx::query("DELETE FROM outbox")
        .execute(&cluster.db.pg_pool().await)
        .await
        .expect("empty the outbox");
    cluster.spawn(Role::Worker);
    cluster.wait_until_assigned();
}

/// Produces a message about order `id` to the orders topic, as an outside
/// producer does.
fn produce(cluster: &Cluster, id: OrderId, headers: &[(&str, &str)], payload: &str) {
    kcat_produce(
        cluster.broker.bootstrap_servers(),
        &cluster.broker.names.orders,
        &id.to_string(),
        headers,
        payload,
    );
}

/// Polls the database until the order has `status`; fails with the
/// worker's log.
async fn wait_for(
    cluster: &Cluster,
    store: &SharedStore,
    id: OrderId,
    status: OrderStatus,
) -> Order {
    common::eventually(WITHIN, || async {
        store
            .get_order(id)
            .await
            .ok()
            .flatten()
            .filter(|o| o.status == status)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "order {id} never reached {status}; worker log:\n{}",
            cluster.logs(Role::Worker)
        )
    })
}

fn statuses(order: &Order) -> Vec<OrderStatus> {
    order.timeline.iter().map(|t| t.status).collect()
}

/// The worker's handled events by outcome (`ok`, `duplicate`,
/// `dead_lettered`, …), once it has handled `ok` of them.
async fn outcomes_once_handled(cluster: &Cluster, ok: f64) -> BTreeMap<String, f64> {
    common::eventually(WITHIN, || async {
        let mut by_outcome = BTreeMap::new();
        for admin in cluster.worker_admins() {
            for sample in Metrics::scrape(&cluster.http, &admin).await.samples {
                if sample.name == orderflow::metrics::EVENTS_HANDLED {
                    let outcome = sample.labels.get("outcome").cloned().unwrap_or_default();
                    *by_outcome.entry(outcome).or_insert(0.0) += sample.value;
                }
            }
        }
        (by_outcome.get("ok") == Some(&ok)).then_some(by_outcome)
    })
    .await
    .unwrap_or_else(|| panic!("the worker never handled {ok} events"))
}

/// The inbox: `(event_id, event_type)` in the order handled.
async fn inbox(cluster: &Cluster) -> Vec<(String, String)> {
    sqlx::query_as("SELECT event_id, event_type FROM inbox ORDER BY handled_at, event_id")
        .fetch_all(&cluster.db.pg_pool().await)
        .await
        .expect("inbox")
}

/// The goldens the worker handles (OrderCreated, OrderPaid, OrderShipped),
/// each sent as a .NET KafkaFlow producer sends it (Message-Type only) and
/// with the CloudEvents `ce_type`/`ce_id` besides, about orders set up in
/// the status each awaits: every order moves on exactly once (its
/// timeline), with the golden's payment id and tracking number; nothing is
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_handles_the_goldens_with_and_without_ce_headers() {
    let (mut cluster, store) = cluster_and_store().await;
    // (golden, the status its order awaits it in, the status it moves to)
    let steps = [
        (
            EventType::OrderCreated,
            OrderStatus::Pending,
            OrderStatus::Reserved,
        ),
        (
            EventType::OrderPaid,
            OrderStatus::Paid,
            OrderStatus::AwaitingShipment,
        ),
        (
            EventType::OrderShipped,
            OrderStatus::Shipped,
            OrderStatus::Fulfilled,
        ),
    ];
    let mut cases = Vec::new();
    for (event, awaits, moves_to) in steps {
        for with_ce in [false, true] {
            let customer = format!("{event}-{}", if with_ce { "ce" } else { "plain" });
            let id = order_in(&store, &customer, awaits).await;
            cases.push((contract(event), with_ce, id, moves_to));
        }
    }
    start_worker_on_an_empty_outbox(&mut cluster).await;

    let mut ce_ids = Vec::new();
    for (contract, with_ce, id, _) in &cases {
        let ce_id = format!("golden-{}-{id}", contract.event);
        let mut headers = vec![("Message-Type", contract.message_type.as_str())];
        if *with_ce {
            headers.push(("ce_type", contract.event.as_str()));
            headers.push(("ce_id", ce_id.as_str()));
        }
        produce(&cluster, *id, &headers, &contract.about(*id));
        if *with_ce {
            ce_ids.push(ce_id);
        }
    }

    for (contract, with_ce, id, moves_to) in &cases {
        let order = wait_for(&cluster, &store, *id, *moves_to).await;
        let until = PATH
            .iter()
            .position(|s| s == moves_to)
            .expect("on the path");
        assert_eq!(
            statuses(&order),
            PATH[..=until],
            "{} (ce headers: {with_ce}): each step once",
            contract.event
        );
    }
    let pool = cluster.db.pg_pool().await;
    let paid = contract(EventType::OrderPaid);
    let shipped = contract(EventType::OrderShipped);
    for (contract, _, id, _) in &cases {
        match contract.event {
            EventType::OrderPaid => {
                let payment: String = sqlx::query_scalar(
                    "SELECT payment_id FROM shipment_requests WHERE order_id = $1",
                )
                .bind(id.0)
                .fetch_one(&pool)
                .await
                .expect("shipment request");
                assert_eq!(payment, string(&paid.golden_value("PaymentId")));
            }
            EventType::OrderShipped => {
                let text: String =
                    sqlx::query_scalar("SELECT text FROM notifications WHERE order_id = $1")
                        .bind(id.0)
                        .fetch_one(&pool)
                        .await
                        .expect("notification");
                let tracking = string(&shipped.golden_value("TrackingNumber"));
                assert!(text.contains(&tracking), "{text}");
            }
            _ => {}
        }
    }

    // Each golden once in the inbox: by its ce_id, or (Message-Type only)
    // by its position on the topic.
    let inbox = inbox(&cluster).await;
    assert_eq!(inbox.len(), cases.len(), "{inbox:?}");
    for ce_id in &ce_ids {
        assert!(
            inbox.iter().any(|(id, _)| id == ce_id),
            "{ce_id}: {inbox:?}"
        );
    }
    let topic = format!("{}/", cluster.broker.names.orders);
    let by_position = inbox
        .iter()
        .filter(|(id, _)| id.starts_with(&topic))
        .count();
    assert_eq!(by_position, cases.len() - ce_ids.len(), "{inbox:?}");

    let outcomes = outcomes_once_handled(&cluster, cases.len() as f64).await;
    assert_eq!(outcomes.get("dead_lettered"), None, "{outcomes:?}");
    assert_eq!(outcomes.get("unknown"), None, "{outcomes:?}");
    // Only the goldens were on the topic: no relay published the orders'
    // own events.
    let on_topic = read_topic_raw_async(
        cluster.broker.bootstrap_servers(),
        &cluster.broker.names.orders,
        cases.len(),
        WITHIN,
    )
    .await;
    assert_eq!(on_topic.len(), cases.len());
}

/// A mixed-format order: its OrderCreated in the CloudEvents form
/// (camelCase, `ce_*` headers), then the same event (same `ce_id`) in the
/// kafkaflow form; its OrderPaid in the kafkaflow form (`Message-Type` and
/// `ce_*`), then the same in the CloudEvents form; then a .NET producer's
/// OrderShipped golden. Each event is handled once (the inbox), in order,
/// and the order takes each step of its life once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_format_order_moves_once_per_event_in_order() {
    let (mut cluster, store) = cluster_and_store().await;
    let id = order_in(&store, "Mixed", OrderStatus::Pending).await;
    // OrderCreated as orderflow stored it (the CloudEvents form's payload).
    let (created_id, created): (String, String) = sqlx::query_as(
        "SELECT event_id::text, payload FROM outbox \
         WHERE message_key = $1 AND event_type = 'OrderCreated'",
    )
    .bind(id.to_string())
    .fetch_one(&cluster.db.pg_pool().await)
    .await
    .expect("the order's OrderCreated");
    start_worker_on_an_empty_outbox(&mut cluster).await;

    let cloudevents = |ce_type: EventType, ce_id: &str, payload: &str| {
        let headers = [
            ("ce_specversion", "1.0"),
            ("ce_id", ce_id),
            ("ce_type", ce_type.as_str()),
            ("ce_source", "/orderflow"),
            ("content-type", "application/json"),
        ];
        produce(&cluster, id, &headers, payload);
    };
    let kafkaflow_form = |ce_type: EventType, ce_id: &str, cloudevents_payload: &str| {
        let message_type = contract(ce_type).message_type;
        let headers = [
            ("Message-Type", message_type.as_str()),
            ("ce_specversion", "1.0"),
            ("ce_id", ce_id),
            ("ce_type", ce_type.as_str()),
            ("ce_source", "/orderflow"),
            ("content-type", "application/json"),
        ];
        let payload =
            kafkaflow::payload(ce_type, cloudevents_payload.as_bytes(), &chrono::Utc::now())
                .expect("the kafkaflow form");
        produce(&cluster, id, &headers, &payload);
    };

    cloudevents(EventType::OrderCreated, &created_id, &created);
    kafkaflow_form(EventType::OrderCreated, &created_id, &created);
    wait_for(&cluster, &store, id, OrderStatus::Reserved).await;

    move_to(&store, id, OrderStatus::Paid).await;
    let paid = NewEvent::order_paid(id, "pay-mixed".into());
    let (paid_id, paid_payload) = (paid.id.to_string(), paid.payload.to_string());
    kafkaflow_form(EventType::OrderPaid, &paid_id, &paid_payload);
    cloudevents(EventType::OrderPaid, &paid_id, &paid_payload);
    wait_for(&cluster, &store, id, OrderStatus::AwaitingShipment).await;

    move_to(&store, id, OrderStatus::Shipped).await;
    let shipped = contract(EventType::OrderShipped);
    produce(
        &cluster,
        id,
        &[("Message-Type", shipped.message_type.as_str())],
        &shipped.about(id),
    );
    // The order's events are handled in order on its partition: once it
    // is Fulfilled, both duplicates before the shipment were handled.
    let order = wait_for(&cluster, &store, id, OrderStatus::Fulfilled).await;
    assert_eq!(statuses(&order), PATH, "each step once, in order");

    let inbox = inbox(&cluster).await;
    let types: Vec<&str> = inbox.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        types,
        ["OrderCreated", "OrderPaid", "OrderShipped"],
        "{inbox:?}"
    );
    assert_eq!(inbox[0].0, created_id);
    assert_eq!(inbox[1].0, paid_id);
    let payment: String =
        sqlx::query_scalar("SELECT payment_id FROM shipment_requests WHERE order_id = $1")
            .bind(id.0)
            .fetch_one(&cluster.db.pg_pool().await)
            .await
            .expect("shipment request");
    assert_eq!(payment, "pay-mixed");

    let outcomes = outcomes_once_handled(&cluster, 3.0).await;
    assert_eq!(outcomes.get("duplicate"), Some(&2.0), "{outcomes:?}");
    assert_eq!(outcomes.get("dead_lettered"), None, "{outcomes:?}");
}
