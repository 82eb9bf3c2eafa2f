//! Keys and their spelling. The configuration's keys are the raw structs'
//! fields, so their canonical spelling is taken from the structs
//! themselves: the default configuration is serialized (PascalCase, as
//! `orderflow config` prints it) and its keys are walked into a [`Shape`].
//! Folding a key the user wrote (`TOPICNAME`, `topic_name`) to that
//! spelling, naming a key in a message, and reading an environment value as
//! the type its key holds all consult the same shape, so a new field needs
//! no list updated anywhere.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use figment::Metadata;
use serde_json::Value;

use super::properties;
use super::raw::RawConfig;
use super::security::RawToken;

/// What a key holds, as the default configuration serializes it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Shape {
    Text,
    Number,
    Bool,
    List,
    /// A librdkafka property's value: text, a number or a boolean, passed
    /// on as text.
    Scalar,
    /// Keys this configuration defines, by folded name.
    Section(BTreeMap<String, Field>),
    /// Keys the user names (`Api.Auth.Tokens.<name>`), all of one shape.
    Entries(Box<Shape>),
    /// A librdkafka property table: names are librdkafka's, not ours.
    Properties,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Field {
    pub(super) canonical: String,
    pub(super) shape: Shape,
}

/// Stands for any user-chosen key of a map in [`template`].
const ENTRY: &str = "*";

/// What [`Shape::child`] points to under a property table: the values
/// have no field of their own to lend a reference to.
static PROPERTY_VALUE: Shape = Shape::Scalar;

/// The shape of the whole configuration.
pub(super) fn config_shape() -> &'static Shape {
    static SHAPE: LazyLock<Shape> = LazyLock::new(|| shape_of(&template(), &[]));
    &SHAPE
}

/// The default configuration, plus one entry in each map whose keys users
/// choose: an empty map serializes to nothing, which would hide the shape
/// of its entries. `Api.Auth.Tokens` is the only such map; the librdkafka
/// tables are maps too, but their names follow librdkafka's rules
/// ([`properties::is_table`]), not a shape. A map added without an entry
/// here shows up as an empty section, which a test below rejects.
fn template() -> Value {
    let mut raw = RawConfig::default();
    raw.api
        .auth
        .tokens
        .insert(ENTRY.to_string(), RawToken::default());
    // Serializing plain structs of strings, numbers and maps cannot fail.
    serde_json::to_value(&raw).expect("the default configuration serializes")
}

fn shape_of(value: &Value, path: &[String]) -> Shape {
    match value {
        Value::Bool(_) => Shape::Bool,
        Value::Number(_) => Shape::Number,
        Value::Array(_) => Shape::List,
        // No raw field is an Option, so nothing serializes to null.
        Value::String(_) | Value::Null => Shape::Text,
        Value::Object(_) if properties::is_table(path) => Shape::Properties,
        Value::Object(map) => match map.get(ENTRY) {
            Some(entry) if map.len() == 1 => {
                let path = [path, &[ENTRY.to_string()]].concat();
                Shape::Entries(Box::new(shape_of(entry, &path)))
            }
            _ => Shape::Section(
                map.iter()
                    .map(|(name, value)| {
                        let path = [path, std::slice::from_ref(name)].concat();
                        let field = Field {
                            canonical: name.clone(),
                            shape: shape_of(value, &path),
                        };
                        (fold(name), field)
                    })
                    .collect(),
            ),
        },
    }
}

/// The spelling-free form of a key: `TopicName`, `topicname`, `TOPIC_NAME`
/// and `topic_name` are one key, as .NET configuration and serde's field
/// names both have them.
pub(super) fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

impl Shape {
    /// The key `key` under this one, spelled canonically, and what it holds;
    /// `None` for a key the configuration does not have. Keys users choose
    /// are lower-cased, so `[Api.Auth.Tokens.Shop]` in a file and
    /// `Api__Auth__Tokens__shop__Token` in the environment meet.
    pub(super) fn child(&self, key: &str) -> (String, Option<&Shape>) {
        match self {
            Self::Section(fields) => match fields.get(&fold(key)) {
                Some(field) => (field.canonical.clone(), Some(&field.shape)),
                None => (key.to_lowercase(), None),
            },
            Self::Entries(entry) => (key.to_lowercase(), Some(entry)),
            Self::Properties => (key.to_string(), Some(&PROPERTY_VALUE)),
            _ => (key.to_lowercase(), None),
        }
    }

    /// What `path` (in any spelling) holds, if the configuration has it.
    pub(super) fn at<S: AsRef<str>>(&self, path: &[S]) -> Option<&Shape> {
        path.iter()
            .try_fold(self, |shape, key| shape.child(key.as_ref()).1)
    }
}

/// `path` spelled as messages spell it; librdkafka property names stay as
/// they are.
pub(super) fn canonical_path<S: AsRef<str>>(path: &[S]) -> Vec<String> {
    let mut shape = Some(config_shape());
    path.iter()
        .map(|key| match shape {
            Some(s) => {
                let (name, child) = s.child(key.as_ref());
                shape = child;
                name
            }
            None => key.as_ref().to_string(),
        })
        .collect()
}

pub(super) fn canonical_key<S: AsRef<str>>(path: &[S]) -> String {
    canonical_path(path).join(".")
}

pub(super) fn source_name<S: AsRef<str>>(metadata: Option<&Metadata>, path: &[S]) -> String {
    match metadata {
        None => "built-in default".into(),
        Some(md) => match &md.source {
            Some(figment::Source::File(p)) => p.display().to_string(),
            _ => env_source(&canonical_path(path)),
        },
    }
}

/// The variable that sets `path` (canonical), as messages name it.
pub(super) fn env_source<S: AsRef<str>>(path: &[S]) -> String {
    let name: Vec<&str> = path.iter().map(AsRef::as_ref).collect();
    format!("environment variable {}", name.join("__"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_spelled_as_the_raw_fields_are() {
        for (written, canonical) in [
            (
                "kafkaconfiguration.orders.topicname",
                "KafkaConfiguration.Orders.TopicName",
            ),
            ("DATABASE.SSL_ROOT_CERT", "Database.SslRootCert"),
            ("api.auth.tokens.Shop.scopes", "Api.Auth.Tokens.shop.Scopes"),
            ("api.auth.tokens.admin.token", "Api.Auth.Tokens.admin.Token"),
            (
                "kafkaconfiguration.client.linger.ms",
                "KafkaConfiguration.Client.linger.ms",
            ),
            ("worker.nosuchkey", "Worker.nosuchkey"),
        ] {
            let path: Vec<&str> = match written.split_once(".client.") {
                Some((head, name)) => head.split('.').chain(["client", name]).collect(),
                None => written.split('.').collect(),
            };
            assert_eq!(canonical_key(&path), canonical, "{written}");
        }
    }

    #[test]
    fn leaves_have_the_type_of_their_default() {
        let at = |path: &[&str]| config_shape().at(path);
        assert_eq!(at(&["Api", "Listen"]), Some(&Shape::Text));
        assert_eq!(at(&["api", "maxbodybytes"]), Some(&Shape::Number));
        assert_eq!(at(&["Admin", "Enabled"]), Some(&Shape::Bool));
        assert_eq!(at(&["Api", "Auth", "AnonymousPaths"]), Some(&Shape::List));
        assert_eq!(
            at(&["Api", "Auth", "Tokens", "ci", "Scopes"]),
            Some(&Shape::List)
        );
        assert_eq!(at(&["Fulfilment", "ConnectionString"]), Some(&Shape::Text));
        assert_eq!(
            at(&["KafkaConfiguration", "Producer"]),
            Some(&Shape::Properties)
        );
        assert_eq!(
            at(&["KafkaConfiguration", "Producer", "linger.ms"]),
            Some(&Shape::Scalar)
        );
        assert_eq!(at(&["Api", "Nope"]), None);
    }

    /// A map with user-chosen keys and no entry in `template` would
    /// serialize as an empty section, and its keys would not be folded.
    #[test]
    fn every_section_has_keys() {
        fn walk(shape: &Shape, path: &str) {
            match shape {
                Shape::Section(fields) => {
                    assert!(
                        !fields.is_empty(),
                        "{path} is an empty map: give it a template entry"
                    );
                    for field in fields.values() {
                        walk(&field.shape, &format!("{path}.{}", field.canonical));
                    }
                }
                Shape::Entries(entry) => walk(entry, &format!("{path}.<name>")),
                _ => {}
            }
        }
        walk(config_shape(), "");
    }
}
