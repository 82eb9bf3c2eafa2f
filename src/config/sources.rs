//! Where values come from: the config file (TOML, or JSON such as an
//! ASP.NET `appsettings.json`) and `Section__Key` environment variables,
//! both as figment providers whose keys are folded to one spelling.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Json, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::keys::{self, Shape};
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

/// `Section__Key__Sub=value` variables of the known sections.
pub(super) struct EnvLayer {
    vars: Vec<(String, String)>,
}

impl EnvLayer {
    pub(super) fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars = vars
            .into_iter()
            .filter(|(name, _)| is_configuration(name))
            .collect();
        Self { vars }
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
        let mut dict = Dict::new();
        for (name, value) in &self.vars {
            let (path, shape) = env_path(name);
            insert_path(&mut dict, &path, env_value(value, shape));
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// The key a variable sets, spelled canonically, and what that key holds.
/// A librdkafka property is one key however it is spelled
/// (`compression.type`, `CompressionType`, `compression__type`), so it
/// merges with the file's value of the same property.
fn env_path(name: &str) -> (Vec<String>, Option<&'static Shape>) {
    let segments: Vec<&str> = name.split("__").collect();
    let mut path = Vec::with_capacity(segments.len());
    let mut shape = Some(keys::config_shape());
    for (i, segment) in segments.iter().enumerate() {
        let Some(s) = shape else {
            path.push(segment.to_lowercase());
            continue;
        };
        if let Shape::Properties = s {
            let (property, value) = s.child(&properties::env_name(&segments[i..]));
            path.push(property);
            return (path, value);
        }
        let (key, child) = s.child(segment);
        path.push(key);
        shape = child;
    }
    (path, shape)
}

/// An environment value is text; it is read as the type its key holds, so
/// a topic named "123" or a password "007" stays text, as does any
/// librdkafka property (librdkafka takes strings). Keys the configuration
/// does not have are parsed as figment parses its own environment values.
fn env_value(raw: &str, shape: Option<&Shape>) -> Value {
    match shape {
        Some(Shape::Text) => Value::from(raw.to_string()),
        Some(Shape::Bool) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" => Value::from(true),
            "false" => Value::from(false),
            _ => Value::from(raw.to_string()),
        },
        _ => raw.parse().unwrap_or_else(|_| Value::from(raw.to_string())),
    }
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
