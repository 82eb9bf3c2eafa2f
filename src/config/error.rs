//! Configuration errors: each names the key, in its canonical spelling, and
//! the source its value came from.

use super::keys;

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
    ConfigError::Invalid {
        key: keys::canonical_key(path),
        message: error.kind.to_string(),
        source_name: keys::source_name(error.metadata.as_ref(), path),
    }
}
