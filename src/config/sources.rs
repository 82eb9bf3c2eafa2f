//! Where values come from: the config file (TOML, or JSON such as an
//! ASP.NET `appsettings.json`) and `Section__Key` environment variables,
//! both as figment providers whose keys are folded to one spelling.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::error::Actual;
use figment::providers::{Format, Json, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::keys::{self, Shape};
use super::raw::{split_list, LIST_EXPECTED};
use super::{properties, ConfigError};

/// A TOML or JSON file whose keys are folded to their canonical spelling.
pub(super) struct CaseInsensitiveFile {
    path: PathBuf,
    data: Dict,
}

impl CaseInsensitiveFile {
    pub(super) fn read(path: &Path) -> Result<Self, ConfigError> {
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let parsed = if is_json {
            Json::file_exact(path).data()
        } else {
            Toml::file_exact(path).data()
        };
        let data = parsed.map_err(|e| ConfigError::FileUnreadable {
            path: path.display().to_string(),
            // One line: parsers draw a multi-line caret diagram.
            message: e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
        let dict = data.into_values().next().unwrap_or_default();
        Ok(Self {
            path: path.to_path_buf(),
            data: fold_dict(dict, Some(keys::config_shape())),
        })
    }
}

impl Provider for CaseInsensitiveFile {
    fn metadata(&self) -> Metadata {
        Metadata::from(
            self.path.display().to_string(),
            figment::Source::File(self.path.clone()),
        )
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

/// Keys the configuration has take their field's spelling; others (an
/// ASP.NET file's `Logging`, a token's name) are lower-cased, so that two
/// spellings of one still meet.
fn fold_dict(dict: Dict, shape: Option<&Shape>) -> Dict {
    let mut folded = Dict::new();
    for (key, value) in dict {
        let (key, child) = match shape {
            Some(shape) => shape.child(&key),
            None => (key.to_lowercase(), None),
        };
        let value = match (value, child) {
            (Value::Dict(tag, d), Some(Shape::Properties)) => {
                Value::Dict(tag, properties::fold_names(d))
            }
            (Value::Dict(tag, d), child) => Value::Dict(tag, fold_dict(d, child)),
            (Value::Array(tag, items), _) => {
                Value::Array(tag, items.into_iter().map(fold_value).collect())
            }
            (other, _) => other,
        };
        insert_folded(&mut folded, key, value);
    }
    folded
}

/// `[Orders]` and `[orders]` are two tables to TOML but one section to us:
/// tables whose keys fold together are merged, not overwritten.
fn insert_folded(dict: &mut Dict, key: String, value: Value) {
    match (dict.remove(&key), value) {
        (Some(Value::Dict(tag, mut existing)), Value::Dict(_, more)) => {
            for (k, v) in more {
                insert_folded(&mut existing, k, v);
            }
            dict.insert(key, Value::Dict(tag, existing));
        }
        (_, value) => {
            dict.insert(key, value);
        }
    }
}

fn fold_value(value: Value) -> Value {
    match value {
        Value::Dict(tag, d) => Value::Dict(tag, fold_dict(d, None)),
        Value::Array(tag, items) => Value::Array(tag, items.into_iter().map(fold_value).collect()),
        other => other,
    }
}

/// `Section__Key__Sub=value` variables of the known sections, read as the
/// types their keys hold.
pub(super) struct EnvLayer {
    data: Dict,
}

impl EnvLayer {
    /// Fails on a list that cannot be read: every other value is passed on
    /// as it is, and serde's verdict on it is worded by `error`.
    pub(super) fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut data = Dict::new();
        // ASP.NET binds `Key__0`, `Key__1`, ... to a list, in index order.
        let mut indexed: BTreeMap<Vec<String>, BTreeMap<usize, String>> = BTreeMap::new();
        for (name, value) in vars {
            if !is_configuration(&name) {
                continue;
            }
            match env_key(&name) {
                EnvKey::Item { path, index } => {
                    indexed.entry(path).or_default().insert(index, value);
                }
                EnvKey::Value { path, shape } => {
                    let value = env_value(&path, &value, shape)?;
                    insert_path(&mut data, &path, value);
                }
            }
        }
        for (path, items) in indexed {
            insert_path(
                &mut data,
                &path,
                Value::from(items.into_values().collect::<Vec<_>>()),
            );
        }
        Ok(Self { data })
    }
}

/// Everything else in the process environment (PATH, HOME, ...) is not
/// configuration: only `Section__...` of a section the shape has counts.
fn is_configuration(name: &str) -> bool {
    let Some((section, _)) = name.split_once("__") else {
        return false;
    };
    matches!(
        keys::config_shape().child(section),
        (_, Some(Shape::Section(_)))
    )
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable").interpolater(|_, keys| keys.join("__"))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

/// The key a variable sets, spelled canonically.
enum EnvKey {
    /// The whole value of a key, and what the key holds if it is ours.
    Value {
        path: Vec<String>,
        shape: Option<&'static Shape>,
    },
    /// One item of a list, ASP.NET style (`Scopes__0`).
    Item { path: Vec<String>, index: usize },
}

/// A librdkafka property is one key however it is spelled
/// (`compression.type`, `CompressionType`, `compression__type`), so it
/// merges with the file's value of the same property.
fn env_key(name: &str) -> EnvKey {
    let segments: Vec<&str> = name.split("__").collect();
    let mut path = Vec::with_capacity(segments.len());
    let mut shape = Some(keys::config_shape());
    for (i, segment) in segments.iter().enumerate() {
        let Some(s) = shape else {
            path.push(segment.to_lowercase());
            continue;
        };
        match s {
            Shape::Properties => {
                let (property, value) = s.child(&properties::env_name(&segments[i..]));
                path.push(property);
                return EnvKey::Value { path, shape: value };
            }
            Shape::List if i + 1 == segments.len() => {
                if let Ok(index) = segment.parse() {
                    return EnvKey::Item { path, index };
                }
            }
            _ => {}
        }
        let (key, child) = s.child(segment);
        path.push(key);
        shape = child;
    }
    EnvKey::Value { path, shape }
}

/// An environment value is text; it is read as the type its key holds, so
/// a topic named "123" or a password "007" stays text, as does any
/// librdkafka property (librdkafka takes strings). Keys the configuration
/// does not have are parsed as figment parses its own environment values.
fn env_value(path: &[String], raw: &str, shape: Option<&Shape>) -> Result<Value, ConfigError> {
    Ok(match shape {
        Some(Shape::Text | Shape::Scalar) => Value::from(raw.to_string()),
        Some(Shape::Bool) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" => Value::from(true),
            "false" => Value::from(false),
            _ => Value::from(raw.to_string()),
        },
        Some(Shape::List) => match env_list(raw) {
            Some(items) => Value::from(items),
            None => {
                return Err(ConfigError::Invalid {
                    key: path.join("."),
                    message: format!("expected {LIST_EXPECTED}"),
                    source_name: keys::env_source(path),
                })
            }
        },
        _ => raw.parse().unwrap_or_else(|_| Value::from(raw.to_string())),
    })
}

/// `a,b` (or `a b`, as scopes are written), or an array: JSON
/// (`["a","b"]`) or figment's unquoted `[a, b]`, which was read before
/// lists were typed. `None` for a bracket that opens no such array.
fn env_list(raw: &str) -> Option<Vec<String>> {
    let trimmed = raw.trim();
    if !trimmed.starts_with('[') {
        return Some(split_list(trimmed));
    }
    let Ok(Value::Array(_, items)) = trimmed.parse::<Value>() else {
        return None;
    };
    items
        .iter()
        .map(|item| match item.to_actual() {
            Actual::Str(s) => Some(s),
            Actual::Unsigned(n) => Some(n.to_string()),
            Actual::Signed(n) => Some(n.to_string()),
            Actual::Float(n) => Some(n.to_string()),
            Actual::Bool(b) => Some(b.to_string()),
            _ => None,
        })
        .collect()
}

fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}
