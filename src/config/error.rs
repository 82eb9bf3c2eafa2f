//! Configuration errors: each names the key, in its canonical spelling, and
//! the source its value came from.

use figment::error::{Actual, Kind};

use super::keys::{self, Shape};
use super::raw::LIST_EXPECTED;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} not found")]
    FileNotFound { path: String },
    #[error("config file {path} cannot be read: {message}")]
    FileUnreadable { path: String, message: String },
    #[error("{key}: {message} ({source_name})")]
    Invalid {
        key: String,
        message: String,
        source_name: String,
    },
}

/// A value serde could not take, as figment reports it.
pub(super) fn from_figment(error: &figment::Error) -> ConfigError {
    let path = match error.path.split_first() {
        Some((profile, rest)) if profile == "default" => rest,
        _ => &error.path[..],
    };
    let shape = keys::config_shape();
    // An item of a list is reported at the list's key.
    let (path, message) = match path.split_last() {
        Some((index, list)) if shape.at(list) == Some(&Shape::List) => {
            let found = match &error.kind {
                Kind::InvalidType(found, _) | Kind::InvalidValue(found, _) => {
                    found_text(found, None)
                }
                _ => "another kind of value".into(),
            };
            let message = format!("expected {LIST_EXPECTED}; item {index} is {found}");
            (list, message)
        }
        _ => (path, plain_message(&error.kind, shape.at(path))),
    };
    ConfigError::Invalid {
        key: keys::canonical_key(path),
        message,
        source_name: keys::source_name(error.metadata.as_ref(), path),
    }
}

/// serde words its errors in Rust types ("invalid type: found string, expected
/// u32", "data did not match any variant of untagged enum"); a message says
/// instead what the key takes, in the configuration's terms, which the
/// key's shape tells.
fn plain_message(kind: &Kind, shape: Option<&Shape>) -> String {
    match kind {
        Kind::InvalidType(found, expected) | Kind::InvalidValue(found, expected) => format!(
            "expected {}, found {}",
            expected_text(shape, expected),
            found_text(found, shape)
        ),
        Kind::InvalidLength(..) | Kind::Message(_) => {
            format!("expected {}", expected_text(shape, ""))
        }
        Kind::UnknownVariant(found, _) => format!("{found:?} is not a value it takes"),
        Kind::UnknownField(found, _) => format!("has no key {found:?}"),
        Kind::MissingField(name) => format!("needs {name}"),
        Kind::DuplicateField(name) => format!("sets {name} twice"),
        Kind::ISizeOutOfRange(n) => format!("{n} is out of range"),
        Kind::USizeOutOfRange(n) => format!("{n} is out of range"),
        Kind::Unsupported(found) | Kind::UnsupportedKey(found, _) => {
            format!("cannot hold {}", found_text(found, shape))
        }
    }
}

/// `serde_expected` is serde's name for the Rust type, which tells a
/// number's range.
fn expected_text(shape: Option<&Shape>, serde_expected: &str) -> String {
    let text = match shape {
        Some(Shape::Text) => "text",
        Some(Shape::Number) => match serde_expected {
            "u32" => "a whole number from 0 to 4294967295",
            "u64" | "usize" => "a whole number, 0 or more",
            _ => "a whole number",
        },
        Some(Shape::Bool) => "true or false",
        Some(Shape::List) => LIST_EXPECTED,
        Some(Shape::Scalar) => "text, a number or true/false",
        Some(Shape::Section(_) | Shape::Entries(_)) => "a section of keys",
        Some(Shape::Properties) => "a table of librdkafka properties",
        None => "another kind of value",
    };
    text.to_string()
}

/// The value itself only where its key holds a number or a boolean: a text
/// key may hold a credential, which a message must not repeat.
fn found_text(found: &Actual, shape: Option<&Shape>) -> String {
    let shown = matches!(shape, Some(Shape::Number | Shape::Bool));
    match found {
        Actual::Str(s) if shown => format!("{s:?}"),
        Actual::Str(_) | Actual::Char(_) => "text".into(),
        Actual::Unsigned(n) if shown => n.to_string(),
        Actual::Signed(n) if shown => n.to_string(),
        Actual::Float(n) if shown => n.to_string(),
        Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) => "a number".into(),
        Actual::Bool(b) if shown => b.to_string(),
        Actual::Bool(_) => "true/false".into(),
        Actual::Seq => "a list".into(),
        Actual::Map => "a section".into(),
        _ => "another kind of value".into(),
    }
}
