//! Where values come from: the config file (TOML, or JSON such as an
//! ASP.NET `appsettings.json`) and `Section__Key` environment variables,
//! both as figment providers whose keys are folded to one spelling.

use std::path::{Path, PathBuf};

use figment::providers::{Format, Json, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::{properties, ConfigError};

/// Top-level sections taken from the environment; everything else in the
/// process environment (PATH, HOME, ...) is not configuration.
const SECTIONS: &[&str] = &[
    "kafkaconfiguration",
    "database",
    "api",
    "worker",
    "outbox",
    "fulfilment",
    "admin",
];

/// A TOML or JSON file whose keys are folded to lower case.
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
            data: fold_keys(dict),
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

fn fold_keys(dict: Dict) -> Dict {
    fold_dict(dict, &[])
}

fn fold_dict(dict: Dict, parent: &[String]) -> Dict {
    if properties::is_table(parent) {
        return properties::fold_names(dict);
    }
    let mut folded = Dict::new();
    for (key, value) in dict {
        let key = key.to_lowercase();
        let value = match value {
            Value::Dict(tag, d) => {
                let path = [parent, std::slice::from_ref(&key)].concat();
                Value::Dict(tag, fold_dict(d, &path))
            }
            other => fold_value(other),
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
        Value::Dict(tag, d) => Value::Dict(tag, fold_keys(d)),
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
            .filter(|(k, _)| {
                let first = k.split("__").next().unwrap_or_default().to_lowercase();
                k.contains("__") && SECTIONS.contains(&first.as_str())
            })
            .collect();
        Self { vars }
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable").interpolater(|_, keys| keys.join("__"))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, value) in &self.vars {
            let segments: Vec<&str> = key.split("__").collect();
            let mut path: Vec<String> = segments.iter().map(|s| s.to_lowercase()).collect();
            // A librdkafka property is one key however it is spelled
            // (`compression.type`, `CompressionType`, `compression__type`),
            // so it merges with the file's value of the same property.
            let property = path.len() > 2 && properties::is_table(&path[..2]);
            if property {
                path.truncate(2);
                path.push(properties::env_name(&segments[2..]));
            }
            // Parsed as figment parses its own environment values: "12"
            // becomes a number, "true" a boolean, anything else a string.
            // Credentials and URLs stay verbatim: a password "007" or
            // "[x]" is not a number or a list; librdkafka takes every
            // property as a string anyway.
            let verbatim = property
                || path
                    .last()
                    .is_some_and(|k| VERBATIM_KEYS.contains(&k.as_str()));
            let value: Value = match verbatim {
                true => Value::from(value.clone()),
                false => value.parse().unwrap_or_else(|_| Value::from(value.clone())),
            };
            insert_path(&mut dict, &path, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

const VERBATIM_KEYS: &[&str] = &[
    "password",
    "keypassword",
    "token",
    "username",
    "connectionstring",
    "url",
    "serverurl",
];

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
