//! The security sections, each with its raw shape, typed settings and
//! validation: how the Kafka clients authenticate and encrypt
//! (`KafkaConfiguration.Security`), who may call the API (`Api.Auth`) and
//! how often (`Api.RateLimit`). PostgreSQL TLS and the request limits are
//! plain keys of their sections, checked in `validate`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::raw::list;
use super::validate::Check;
use super::ConfigError;
use crate::scope::Scope;
use crate::secret::Secret;

// ---------------------------------------------------------------------------
// Raw shape
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawKafkaSecurity {
    /// PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    pub protocol: String,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (for the SASL protocols).
    pub sasl_mechanism: String,
    /// Confluent Cloud: the API key; Event Hubs: `$ConnectionString`.
    pub username: String,
    /// Confluent Cloud: the API secret; Event Hubs: the connection string.
    pub password: Secret,
    /// PEM file of the CA(s) that sign the brokers' certificates; empty
    /// means the system's roots.
    pub ca_file: String,
    /// mTLS: the client's certificate and key (PEM).
    pub certificate_file: String,
    pub key_file: String,
    pub key_password: Secret,
    /// Check that the broker's certificate names the host connected to.
    pub endpoint_identification: bool,
}

impl Default for RawKafkaSecurity {
    fn default() -> Self {
        Self {
            protocol: "PLAINTEXT".into(),
            sasl_mechanism: "PLAIN".into(),
            username: String::new(),
            password: Secret::default(),
            ca_file: String::new(),
            certificate_file: String::new(),
            key_file: String::new(),
            key_password: Secret::default(),
            endpoint_identification: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawAuth {
    /// Off on the embedded default; the Helm chart turns it on.
    pub enabled: bool,
    /// Static bearer tokens by name (the name is what logs and rate limits
    /// show, never the token).
    pub tokens: BTreeMap<String, RawToken>,
    pub jwt: RawJwt,
    /// Paths served without a token (exact, or a prefix ending in `*`).
    #[serde(deserialize_with = "list")]
    pub anonymous_paths: Vec<String>,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            enabled: false,
            tokens: BTreeMap::new(),
            jwt: RawJwt::default(),
            anonymous_paths: [
                "/healthz",
                "/readyz",
                "/metrics",
                "/api/openapi.json",
                "/api/docs",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawToken {
    pub token: Secret,
    /// `orders:read`, `orders:write`, `admin`: a list, or one string
    /// separated by spaces or commas (as an environment variable is).
    #[serde(deserialize_with = "list")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawJwt {
    /// Required `iss`; empty turns JWT validation off.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// The issuer's signing keys: a JWKS document on disk, or its URL.
    pub jwks_file: String,
    pub jwks_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawRateLimit {
    /// Sustained requests per second per client; 0 turns the limit off.
    pub per_second: u32,
    /// Requests a client may send at once above the sustained rate.
    pub burst: u32,
}

impl Default for RawRateLimit {
    fn default() -> Self {
        Self {
            per_second: 0,
            burst: 50,
        }
    }
}

// ---------------------------------------------------------------------------
// Typed settings
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl KafkaProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SaslCredentials {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub certificate_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub key_password: Option<Secret>,
    pub endpoint_identification: bool,
}

#[derive(Debug, Clone)]
pub struct KafkaSecurity {
    pub protocol: KafkaProtocol,
    /// `None` with a SASL protocol only while `unready` says why.
    pub sasl: Option<SaslCredentials>,
    pub tls: Option<TlsFiles>,
    /// A SASL protocol without its username or password: this stops a
    /// command that talks to Kafka (`Config::ready_for`), not the migrate
    /// Job, which is not given the credentials.
    pub unready: Option<ConfigError>,
}

impl Default for KafkaSecurity {
    fn default() -> Self {
        Self {
            protocol: KafkaProtocol::Plaintext,
            sasl: None,
            tls: None,
            unready: None,
        }
    }
}

/// What one librdkafka property is set to; secrets stay wrapped until the
/// moment they are handed to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum PropertyValue {
    Plain(String),
    Secret(Secret),
}

impl KafkaSecurity {
    /// The librdkafka properties for every client (producer, consumer,
    /// admin): one list, so no client can miss one.
    pub fn properties(&self) -> Vec<(&'static str, PropertyValue)> {
        let plain = |v: &str| PropertyValue::Plain(v.to_string());
        let mut props = vec![("security.protocol", plain(self.protocol.as_str()))];
        if let Some(sasl) = &self.sasl {
            props.push(("sasl.mechanism", plain(sasl.mechanism.as_str())));
            props.push(("sasl.username", plain(&sasl.username)));
            props.push((
                "sasl.password",
                PropertyValue::Secret(sasl.password.clone()),
            ));
        }
        if let Some(tls) = &self.tls {
            let path = |p: &PathBuf| plain(&p.display().to_string());
            if let Some(ca) = &tls.ca_file {
                props.push(("ssl.ca.location", path(ca)));
            }
            if let Some(cert) = &tls.certificate_file {
                props.push(("ssl.certificate.location", path(cert)));
            }
            if let Some(key) = &tls.key_file {
                props.push(("ssl.key.location", path(key)));
            }
            if let Some(pass) = &tls.key_password {
                props.push(("ssl.key.password", PropertyValue::Secret(pass.clone())));
            }
            let algorithm = if tls.endpoint_identification {
                "https"
            } else {
                "none"
            };
            props.push(("ssl.endpoint.identification.algorithm", plain(algorithm)));
        }
        props
    }
}

#[derive(Debug, Clone)]
pub struct StaticToken {
    pub name: String,
    pub token: Secret,
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    pub jwks: JwksSource,
}

#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    pub enabled: bool,
    pub tokens: Vec<StaticToken>,
    pub jwt: Option<JwtSettings>,
    pub anonymous_paths: Vec<String>,
    /// What keeps the API role from starting (a configured token without
    /// a value, no way to authenticate at all); other roles start anyway.
    pub unready: Option<ConfigError>,
}

impl AuthSettings {
    /// `Some(error)` when the API role cannot serve with these settings.
    pub fn ready(&self) -> Option<ConfigError> {
        self.unready.clone().filter(|_| self.enabled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSettings {
    pub per_second: u32,
    pub burst: u32,
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Tokens shorter than this are guessable; the chart generates 32+.
const MIN_TOKEN_LEN: usize = 16;

pub(super) fn kafka_security(
    check: &Check,
    raw: &RawKafkaSecurity,
) -> Result<KafkaSecurity, ConfigError> {
    let protocol = match raw.protocol.trim().to_ascii_uppercase().as_str() {
        "PLAINTEXT" => KafkaProtocol::Plaintext,
        "SSL" => KafkaProtocol::Ssl,
        "SASL_PLAINTEXT" => KafkaProtocol::SaslPlaintext,
        "SASL_SSL" => KafkaProtocol::SaslSsl,
        other => {
            return Err(check.error(
                &security_key("Protocol"),
                format!("{other:?} is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
            ))
        }
    };
    let (sasl, unready) = match protocol.uses_sasl() {
        true => match sasl(check, raw, protocol)? {
            Ok(credentials) => (Some(credentials), None),
            Err(missing) => (None, Some(missing)),
        },
        false => (None, None),
    };
    let tls = match protocol.uses_tls() {
        true => Some(tls(check, raw)?),
        false => None,
    };
    Ok(KafkaSecurity {
        protocol,
        sasl,
        tls,
        unready,
    })
}

fn security_key(name: &str) -> String {
    format!("KafkaConfiguration.Security.{name}")
}

/// The outer error stops every command; the inner one (a credential not
/// given) only those that talk to Kafka.
fn sasl(
    check: &Check,
    raw: &RawKafkaSecurity,
    protocol: KafkaProtocol,
) -> Result<Result<SaslCredentials, ConfigError>, ConfigError> {
    let mechanism = match raw.sasl_mechanism.trim().to_ascii_uppercase().as_str() {
        "PLAIN" => SaslMechanism::Plain,
        "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
        "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
        other => {
            return Err(check.error(
                &security_key("SaslMechanism"),
                format!("{other:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
            ))
        }
    };
    let username = match check.non_empty(&security_key("Username"), &raw.username) {
        Ok(username) => username,
        Err(missing) => return Ok(Err(missing)),
    };
    if raw.password.is_empty() {
        let needs = protocol.as_str().to_ascii_uppercase();
        return Ok(Err(check.error(
            &security_key("Password"),
            format!("is empty; {needs} needs one"),
        )));
    }
    Ok(Ok(SaslCredentials {
        mechanism,
        username,
        password: raw.password.clone(),
    }))
}

fn tls(check: &Check, raw: &RawKafkaSecurity) -> Result<TlsFiles, ConfigError> {
    let file = |name: &str, value: &str| check.optional_file(&security_key(name), value);
    let certificate_file = file("CertificateFile", &raw.certificate_file)?;
    let key_file = file("KeyFile", &raw.key_file)?;
    if certificate_file.is_some() != key_file.is_some() {
        let missing = match key_file {
            None => "KeyFile",
            Some(_) => "CertificateFile",
        };
        return Err(check.error(
            &security_key(missing),
            "mutual TLS needs both CertificateFile and KeyFile",
        ));
    }
    Ok(TlsFiles {
        ca_file: file("CaFile", &raw.ca_file)?,
        certificate_file,
        key_file,
        key_password: (!raw.key_password.is_empty()).then(|| raw.key_password.clone()),
        endpoint_identification: raw.endpoint_identification,
    })
}

/// A token configured without a value does not stop the other roles: it
/// makes the settings unready, which only the API role checks.
pub(super) fn auth(check: &Check, raw: &RawAuth) -> Result<AuthSettings, ConfigError> {
    let mut tokens = Vec::new();
    let mut unready = None;
    for (name, token) in &raw.tokens {
        match static_token(check, name, token)? {
            Ok(token) => tokens.push(token),
            Err(missing) => {
                unready.get_or_insert(missing);
            }
        }
    }
    let jwt = jwt(check, &raw.jwt)?;
    if raw.tokens.is_empty() && jwt.is_none() {
        unready.get_or_insert(check.error(
            "Api.Auth.Enabled",
            "is true, but no Api.Auth.Tokens and no Api.Auth.Jwt.Issuer are configured: \
             nobody could call the API",
        ));
    }
    Ok(AuthSettings {
        enabled: raw.enabled,
        tokens,
        jwt,
        anonymous_paths: raw.anonymous_paths.clone(),
        unready,
    })
}

/// The outer error stops every role; the inner one (no value) only the API.
fn static_token(
    check: &Check,
    name: &str,
    raw: &RawToken,
) -> Result<Result<StaticToken, ConfigError>, ConfigError> {
    let key = |k: &str| format!("Api.Auth.Tokens.{name}.{k}");
    let value = raw.token.expose().trim();
    if value.is_empty() {
        return Ok(Err(check.error(
            &key("Token"),
            "is not set (the API role needs a value for every configured token)",
        )));
    }
    if value.len() < MIN_TOKEN_LEN {
        return Err(check.error(
            &key("Token"),
            format!("must be at least {MIN_TOKEN_LEN} characters"),
        ));
    }
    let scopes = raw
        .scopes
        .iter()
        .map(|s| {
            Scope::parse(s).ok_or_else(|| {
                check.error(
                    &key("Scopes"),
                    format!("{s:?} is not one of {}", Scope::ALL_NAMES),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Ok(StaticToken {
        name: name.to_string(),
        token: Secret::new(value),
        scopes,
    }))
}

/// No issuer turns JWT validation off.
fn jwt(check: &Check, raw: &RawJwt) -> Result<Option<JwtSettings>, ConfigError> {
    let issuer = raw.issuer.trim();
    if issuer.is_empty() {
        return Ok(None);
    }
    let jwks = match (raw.jwks_file.trim(), raw.jwks_url.trim()) {
        ("", "") => {
            return Err(check.error(
                "Api.Auth.Jwt.JwksUrl",
                "is empty; with Api.Auth.Jwt.Issuer set, give JwksUrl or JwksFile",
            ))
        }
        (file, "") => JwksSource::File(PathBuf::from(file)),
        ("", url) if url.starts_with("https://") || url.starts_with("http://") => {
            JwksSource::Url(url.to_string())
        }
        ("", url) => {
            return Err(check.error(
                "Api.Auth.Jwt.JwksUrl",
                format!("{url:?} is not an http(s) URL"),
            ))
        }
        _ => {
            return Err(check.error(
                "Api.Auth.Jwt.JwksFile",
                "give JwksFile or JwksUrl, not both",
            ))
        }
    };
    Ok(Some(JwtSettings {
        issuer: issuer.to_string(),
        audience: check.non_empty("Api.Auth.Jwt.Audience", &raw.audience)?,
        jwks,
    }))
}

/// A zero rate turns the limit off.
pub(super) fn rate_limit(
    check: &Check,
    raw: &RawRateLimit,
) -> Result<Option<RateLimitSettings>, ConfigError> {
    if raw.per_second == 0 {
        return Ok(None);
    }
    let burst = check.in_range("Api.RateLimit.Burst", raw.burst.into(), 1, 1_000_000)? as u32;
    Ok(Some(RateLimitSettings {
        per_second: raw.per_second,
        burst,
    }))
}
