//! The one place configuration is read.
//!
//! Layers, later wins: built-in defaults → the config file (TOML, or JSON such
//! as an ASP.NET `appsettings.json`) → environment variables in the ASP.NET
//! Core convention (`KafkaConfiguration__Orders__TopicName=...`). Keys match
//! case-insensitively, as .NET configuration does: every key is folded to
//! one spelling before serde sees it, so `serverUrl`, `ServerUrl` and
//! `SERVERURL` are one key.
//!
//! Raw values ([`RawConfig`]) are parsed once into typed settings
//! ([`Config`]); every error names the key in its canonical spelling and the
//! source it came from.
//!
//! - `raw`: the shape of the file and environment, with defaults;
//! - `sources`: the file and environment providers, and key folding;
//! - `keys`: how keys and sources are named in messages;
//! - `validate`: raw → typed, one function per section;
//! - `settings`: the typed settings;
//! - `security`, `properties`: the security sections and librdkafka
//!   property tables, each with its raw shape, settings and validation;
//! - `servicebus`: the Service Bus connection string;
//! - `error`: [`ConfigError`].

use std::path::PathBuf;

use figment::Figment;

mod error;
mod keys;
mod properties;
mod raw;
mod security;
mod servicebus;
mod settings;
mod sources;
#[cfg(test)]
mod tests;
mod validate;

pub use error::ConfigError;
pub use properties::{
    property_name, KafkaProperties, PropertyTable, RawProperties, RawProperty, Scalar,
};
pub use raw::*;
pub use security::*;
pub use servicebus::ServiceBusConnection;
pub use settings::*;

#[derive(Debug, Clone)]
pub struct Config {
    pub kafka: KafkaSettings,
    pub database: DatabaseSettings,
    pub api: ApiSettings,
    pub worker: WorkerSettings,
    pub outbox: OutboxSettings,
    pub fulfilment: FulfilmentSettings,
    pub admin: AdminSettings,
    pub reconcile: ReconcileSettings,
    pub events: EventFormat,
    /// The merged raw values, kept for `orderflow config`.
    pub raw: RawConfig,
}

/// What a command talks to besides the database. A secret only one party
/// uses (the API tokens' values, the SASL credentials, the Service Bus
/// connection string) is required only of a command that talks to that
/// party, so each pod can be given its own role's secrets and no others
/// (the Helm chart does): everything else is checked for every command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uses {
    /// Serves the HTTP order API (and so checks bearer tokens).
    pub api: bool,
    pub kafka: bool,
    /// Delivers fulfilment events to Service Bus (when that is the sink).
    pub service_bus: bool,
}

impl Uses {
    /// `migrate`, `reconcile`, `config`: the database, if anything.
    pub const NOTHING: Self = Self {
        api: false,
        kafka: false,
        service_bus: false,
    };
    pub const API: Self = Self {
        api: true,
        kafka: true,
        service_bus: false,
    };
    pub const WORKER: Self = Self {
        api: false,
        kafka: true,
        service_bus: true,
    };
    pub const ALL: Self = Self {
        api: true,
        kafka: true,
        service_bus: true,
    };
    /// `dlq list` and `dlq replay`.
    pub const KAFKA: Self = Self {
        api: false,
        kafka: true,
        service_bus: false,
    };
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// A path given explicitly must exist; the default `config.toml` may not.
    pub required: bool,
}

impl Config {
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        Self::load_with_env(source, std::env::vars())
    }

    /// Loads with an explicit environment, so tests need not mutate the
    /// process environment.
    pub fn load_with_env(
        source: &ConfigSource,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if source.path.exists() {
            figment = figment.merge(sources::CaseInsensitiveFile::read(&source.path)?);
        } else if source.required {
            return Err(ConfigError::FileNotFound {
                path: source.path.display().to_string(),
            });
        }
        figment = figment.merge(sources::EnvLayer::from_vars(env)?);
        let raw: RawConfig = figment.extract().map_err(|e| error::from_figment(&e))?;
        validate::config(&validate::Check::new(&figment), raw)
    }

    /// Whether a command that `uses` these parties can run: the first
    /// secret it needs and does not have, in the order the sections are
    /// checked.
    pub fn ready_for(&self, uses: Uses) -> Result<(), ConfigError> {
        let missing = [
            (uses.kafka, self.kafka.security.unready.clone()),
            (uses.api, self.api.auth.ready()),
            (uses.service_bus, self.fulfilment.unready.clone()),
        ];
        match missing
            .into_iter()
            .find_map(|(used, error)| error.filter(|_| used))
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.raw.redacted();
        if let KafkaServers::Brokers(list) = &self.kafka.servers {
            shown.kafka_configuration.server_url = list.join(",");
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}
