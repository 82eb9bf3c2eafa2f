//! librdkafka properties passed through as Confluent.Kafka users set them:
//! `KafkaConfiguration.Client` (every producer, consumer and admin client),
//! `KafkaConfiguration.Producer` and `KafkaConfiguration.Consumer`.
//!
//! Their names are librdkafka's (`compression.type`), not keys of this
//! configuration: they are never folded to a field's spelling. The
//! Confluent.Kafka .NET spelling (`CompressionType`) is accepted too, as
//! Kubernetes manifests written for .NET services carry it.

use std::collections::BTreeMap;
use std::fmt;

use figment::value::{Dict, Value};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaConfRes;
use rdkafka::ClientConfig;
use serde::de::{self, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::keys;
use super::validate::Check;
use super::{ConfigError, PropertyValue};
use crate::secret::Secret;

/// The tables under `KafkaConfiguration` whose keys are librdkafka's.
const TABLES: &[&str] = &["client", "producer", "consumer"];

/// Whether `path` (keys in any spelling) is one of the property tables.
pub(super) fn is_table<S: AsRef<str>>(path: &[S]) -> bool {
    match path {
        [section, table] => {
            keys::fold(section.as_ref()) == "kafkaconfiguration"
                && TABLES.contains(&keys::fold(table.as_ref()).as_str())
        }
        _ => false,
    }
}

/// `CompressionType` or `compressionType` → `compression.type`; dotted
/// names are only lower-cased. A run of capitals stays one word
/// (`SSLCaLocation` → `ssl.ca.location`), so an upper-cased environment
/// variable does not fall apart into one segment per letter.
pub fn property_name(raw: &str) -> String {
    let chars: Vec<char> = raw.trim().chars().collect();
    let mut name = String::with_capacity(chars.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_uppercase() && next_is_lower)
            {
                name.push('.');
            }
        }
        name.extend(c.to_lowercase());
    }
    name
}

/// A property table as a file gives it: TOML reads `compression.type = 1`
/// as a nested table `compression` → `type`, so nested tables are joined
/// back into dotted names.
pub(super) fn fold_names(dict: Dict) -> Dict {
    let mut flat = Dict::new();
    flatten_into(&mut flat, "", dict);
    flat
}

fn flatten_into(flat: &mut Dict, prefix: &str, dict: Dict) {
    for (key, value) in dict {
        let name = match prefix {
            "" => property_name(&key),
            prefix => format!("{prefix}.{}", property_name(&key)),
        };
        match value {
            Value::Dict(_, inner) => flatten_into(flat, &name, inner),
            other => {
                flat.insert(name, other);
            }
        }
    }
}

/// The property name an environment variable's segments after
/// `KafkaConfiguration__<Table>__` stand for: `compression.type`,
/// `CompressionType`, or `compression__type`.
pub(super) fn env_name(segments: &[&str]) -> String {
    segments
        .iter()
        .map(|s| property_name(s))
        .collect::<Vec<_>>()
        .join(".")
}

/// Values of properties named like these are credentials.
const SECRET_MARKS: &[&str] = &[
    "password",
    "secret",
    "token",
    "sasl.oauthbearer.config",
    ".key.pem",
    "jaas",
    "credentials",
];

fn looks_secret(name: &str) -> bool {
    SECRET_MARKS.iter().any(|mark| name.contains(mark))
}

/// Properties orderflow sets itself, with what to do instead: either the
/// pipeline's guarantees depend on the value, or another key of this
/// configuration sets it. librdkafka's aliases are listed with their names.
const OWNED: &[(&str, &str)] = &[
    (
        "bootstrap.servers",
        "set KafkaConfiguration.ServerUrl instead",
    ),
    (
        "metadata.broker.list",
        "set KafkaConfiguration.ServerUrl instead",
    ),
    ("client.id", "each client is named after its role"),
    (
        "group.id",
        "set KafkaConfiguration.Orders.ConsumerGroup instead",
    ),
    (
        "enable.idempotence",
        "the relay's producer must be idempotent, or retries duplicate and reorder events",
    ),
    ("acks", "the relay waits for all in-sync replicas"),
    (
        "request.required.acks",
        "the relay waits for all in-sync replicas",
    ),
    (
        "max.in.flight.requests.per.connection",
        "the idempotent producer bounds it",
    ),
    ("max.in.flight", "the idempotent producer bounds it"),
    (
        "message.timeout.ms",
        "set KafkaConfiguration.MessageTimeoutMs instead",
    ),
    (
        "delivery.timeout.ms",
        "set KafkaConfiguration.MessageTimeoutMs instead",
    ),
    (
        "transactional.id",
        "the relay's delivery guarantee comes from the outbox, not transactions",
    ),
    (
        "enable.auto.commit",
        "workers commit an offset only after its event is handled",
    ),
    (
        "auto.commit.enable",
        "workers commit an offset only after its event is handled",
    ),
    (
        "enable.auto.offset.store",
        "workers store an offset only after its event is handled",
    ),
    (
        "auto.offset.reset",
        "a new consumer group starts at the earliest offset, so no event is skipped",
    ),
    ("isolation.level", "workers read committed messages only"),
    (
        "enable.partition.eof",
        "orderflow's consumers are written for its default",
    ),
    (
        "partition.assignment.strategy",
        "set Worker.Assignor instead",
    ),
    ("group.protocol", "set Worker.GroupProtocol instead"),
    ("group.instance.id", "set Worker.InstanceId instead"),
    (
        "group.remote.assignor",
        "the broker's default assignor serves every worker",
    ),
    ("session.timeout.ms", "set Worker.SessionTimeoutMs instead"),
    (
        "heartbeat.interval.ms",
        "it follows Worker.SessionTimeoutMs",
    ),
    ("fetch.wait.max.ms", "set Worker.FetchWaitMaxMs instead"),
    (
        "statistics.interval.ms",
        "it follows Worker.BalanceIntervalMs; the worker measures its lag from the statistics",
    ),
    (
        "security.protocol",
        "set KafkaConfiguration.Security.Protocol instead",
    ),
    (
        "sasl.mechanism",
        "set KafkaConfiguration.Security.SaslMechanism instead",
    ),
    (
        "sasl.mechanisms",
        "set KafkaConfiguration.Security.SaslMechanism instead",
    ),
    (
        "sasl.username",
        "set KafkaConfiguration.Security.Username instead",
    ),
    (
        "sasl.password",
        "set KafkaConfiguration.Security.Password instead",
    ),
    (
        "ssl.ca.location",
        "set KafkaConfiguration.Security.CaFile instead",
    ),
    (
        "ssl.certificate.location",
        "set KafkaConfiguration.Security.CertificateFile instead",
    ),
    (
        "ssl.key.location",
        "set KafkaConfiguration.Security.KeyFile instead",
    ),
    (
        "ssl.key.password",
        "set KafkaConfiguration.Security.KeyPassword instead",
    ),
    (
        "ssl.endpoint.identification.algorithm",
        "set KafkaConfiguration.Security.EndpointIdentification instead",
    ),
];

fn owner(name: &str) -> Option<&'static str> {
    OWNED.iter().find(|(n, _)| *n == name).map(|(_, why)| *why)
}

// ---------------------------------------------------------------------------
// Raw shape
// ---------------------------------------------------------------------------

/// A value as TOML or JSON has it; librdkafka takes every value as a string.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Bool(bool),
    Integer(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Integer(i) => write!(f, "{i}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Text(s) => f.write_str(s),
        }
    }
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Bool(b) => serializer.serialize_bool(*b),
            Self::Integer(i) => serializer.serialize_i64(*i),
            Self::Float(x) => serializer.serialize_f64(*x),
            Self::Text(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Integer(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(i64::try_from(v).map_or_else(|_| Scalar::Text(v.to_string()), Scalar::Integer))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// One property's value; a credential is a [`Secret`] from the moment it
/// is read.
#[derive(Clone)]
pub enum RawProperty {
    Plain(Scalar),
    Secret(Secret),
}

impl fmt::Debug for RawProperty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(Scalar::Text(s)) => write!(f, "{s:?}"),
            Self::Plain(other) => write!(f, "{other}"),
            Self::Secret(s) => write!(f, "{s:?}"),
        }
    }
}

/// A property table: librdkafka name → value.
#[derive(Clone, Default)]
pub struct RawProperties(pub BTreeMap<String, RawProperty>);

impl fmt::Debug for RawProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(&self.0).finish()
    }
}

impl Serialize for RawProperties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            match value {
                RawProperty::Plain(v) => map.serialize_entry(name, v)?,
                RawProperty::Secret(v) => map.serialize_entry(name, v)?,
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for RawProperties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let plain = BTreeMap::<String, Scalar>::deserialize(deserializer)?;
        Ok(Self(
            plain
                .into_iter()
                .map(|(name, value)| {
                    let value = if looks_secret(&name) {
                        RawProperty::Secret(Secret::new(value.to_string()))
                    } else {
                        RawProperty::Plain(value)
                    };
                    (name, value)
                })
                .collect(),
        ))
    }
}

// ---------------------------------------------------------------------------
// Typed settings
// ---------------------------------------------------------------------------

/// Validated properties of one table, in librdkafka's spelling.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PropertyTable(pub BTreeMap<String, PropertyValue>);

impl PropertyTable {
    /// Sets every property on `config`. Callers set orderflow's own
    /// properties after this, so those win even if validation were bypassed.
    pub fn apply_to(&self, config: &mut ClientConfig) {
        for (name, value) in &self.0 {
            match value {
                PropertyValue::Plain(v) => config.set(name, v),
                PropertyValue::Secret(v) => config.set(name, v.expose()),
            };
        }
    }

    pub fn get(&self, name: &str) -> Option<&PropertyValue> {
        self.0.get(name)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KafkaProperties {
    /// Every client: producers, consumers, admin clients.
    pub client: PropertyTable,
    pub producer: PropertyTable,
    pub consumer: PropertyTable,
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

pub(super) fn kafka_properties(
    check: &Check,
    client: &RawProperties,
    producer: &RawProperties,
    consumer: &RawProperties,
) -> Result<KafkaProperties, ConfigError> {
    Ok(KafkaProperties {
        client: property_table(check, "Client", client)?,
        producer: property_table(check, "Producer", producer)?,
        consumer: property_table(check, "Consumer", consumer)?,
    })
}

fn property_table(
    check: &Check,
    table: &str,
    raw: &RawProperties,
) -> Result<PropertyTable, ConfigError> {
    let mut valid = BTreeMap::new();
    for (name, value) in &raw.0 {
        let value = match value {
            RawProperty::Plain(v) => PropertyValue::Plain(v.to_string()),
            RawProperty::Secret(v) => PropertyValue::Secret(v.clone()),
        };
        let verdict = match owner(name) {
            Some(why) => Err(format!("is set by orderflow; {why}")),
            None => librdkafka_accepts(name, &value),
        };
        if let Err(message) = verdict {
            return Err(property_error(check, table, name, message));
        }
        valid.insert(name.clone(), value);
    }
    Ok(PropertyTable(valid))
}

/// librdkafka checks names and enumerated values when a property is set,
/// which is what creating its native configuration does: a typo stops the
/// program here, not at the first client.
fn librdkafka_accepts(name: &str, value: &PropertyValue) -> Result<(), String> {
    let text = match value {
        PropertyValue::Plain(v) => v.as_str(),
        PropertyValue::Secret(v) => v.expose(),
    };
    let mut probe = ClientConfig::new();
    probe.set(name, text);
    let Err(e) = probe.create_native_config() else {
        return Ok(());
    };
    Err(match e {
        KafkaError::ClientConfig(RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN, ..) => {
            "librdkafka has no such property".to_string()
        }
        // Its message quotes the value.
        _ if matches!(value, PropertyValue::Secret(_)) => {
            "librdkafka rejects its value".to_string()
        }
        KafkaError::ClientConfig(_, description, ..) => {
            format!("librdkafka rejects it: {}", one_line(&description))
        }
        other => format!("librdkafka rejects it: {}", one_line(&other.to_string())),
    })
}

/// The error for one property, naming the file or environment variable its
/// value came from. figment looks keys up by dotted path, which a dotted
/// property name would split, so the value is found in its table by name.
fn property_error(check: &Check, table: &str, name: &str, message: String) -> ConfigError {
    let path = [
        "KafkaConfiguration".to_string(),
        table.to_string(),
        name.to_string(),
    ];
    let figment = check.figment();
    let metadata = match figment.find_value(&path[..2].join(".")) {
        Ok(Value::Dict(_, properties)) => properties
            .get(name)
            .and_then(|v| figment.get_metadata(v.tag())),
        _ => None,
    };
    check.error_at(&path, metadata, message)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
