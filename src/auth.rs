//! Who is calling: static bearer tokens (compared in constant time) and
//! JWTs signed by a configured issuer (keys from a JWKS file or URL), each
//! granting scopes. The HTTP side (which route needs which scope, the 401
//! and 403 answers) is `api::guard`.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::RwLock;

use crate::config::{AuthSettings, JwksSource, JwtSettings};
pub use crate::scope::Scope;

/// An authenticated caller: the token's configured name or the JWT's
/// subject (what logs and rate limits use), and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub scopes: Vec<Scope>,
}

impl Principal {
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the token is not valid")]
    UnknownToken,
    #[error("the token is not valid: {0}")]
    InvalidJwt(String),
    #[error("cannot load the JWT signing keys from {source_name}: {message}")]
    Jwks {
        source_name: String,
        message: String,
    },
}

struct TokenEntry {
    name: String,
    /// Only the digest is kept: equal-length comparison in constant time,
    /// and the token itself is not in memory longer than configuration.
    digest: [u8; 32],
    scopes: Vec<Scope>,
}

pub struct Authenticator {
    tokens: Vec<TokenEntry>,
    jwt: Option<JwtVerifier>,
}

impl Authenticator {
    /// Loads the JWKS once, so a wrong file or unreachable issuer is a
    /// start-up error rather than every request's.
    pub async fn new(settings: &AuthSettings) -> Result<Self, AuthError> {
        let tokens = settings
            .tokens
            .iter()
            .map(|t| TokenEntry {
                name: t.name.clone(),
                digest: digest(t.token.expose()),
                scopes: t.scopes.clone(),
            })
            .collect();
        let jwt = match &settings.jwt {
            Some(j) => Some(JwtVerifier::new(j.clone()).await?),
            None => None,
        };
        Ok(Self { tokens, jwt })
    }

    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let presented = digest(token);
        // Every entry is compared, so the time taken does not tell which
        // (or whether any) matched.
        let mut found: Option<&TokenEntry> = None;
        for entry in &self.tokens {
            if bool::from(entry.digest.ct_eq(&presented)) {
                found = Some(entry);
            }
        }
        if let Some(entry) = found {
            return Ok(Principal {
                name: entry.name.clone(),
                scopes: entry.scopes.clone(),
            });
        }
        match &self.jwt {
            Some(jwt) if looks_like_jwt(token) => jwt.verify(token).await,
            _ => Err(AuthError::UnknownToken),
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// Asymmetric algorithms only: a JWKS holds public keys, and accepting HS*
/// would let a public key serve as an HMAC secret.
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// An unknown `kid` refetches the keys (the issuer rotated them), at most
/// this often.
const REFETCH_INTERVAL: Duration = Duration::from_secs(30);

struct JwtVerifier {
    settings: JwtSettings,
    keys: RwLock<(JwkSet, Instant)>,
    http: reqwest::Client,
}

impl JwtVerifier {
    async fn new(settings: JwtSettings) -> Result<Self, AuthError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| jwks_error(&settings.jwks, e.to_string()))?;
        let keys = load_jwks(&settings.jwks, &http).await?;
        Ok(Self {
            settings,
            keys: RwLock::new((keys, Instant::now())),
            http,
        })
    }

    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |e: jsonwebtoken::errors::Error| AuthError::InvalidJwt(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::InvalidJwt(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let key = match self.key(header.kid.as_deref()).await {
            Some(key) => key,
            None if self.refetch().await => self
                .key(header.kid.as_deref())
                .await
                .ok_or_else(|| AuthError::InvalidJwt("no signing key matches its kid".into()))?,
            None => {
                return Err(AuthError::InvalidJwt(
                    "no signing key matches its kid".into(),
                ))
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = 60;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(invalid)?;
        let claims = data.claims;
        Ok(Principal {
            name: claims["sub"].as_str().unwrap_or("jwt").to_string(),
            scopes: scopes_of(&claims),
        })
    }

    async fn key(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let keys = self.keys.read().await;
        let jwk = match kid {
            Some(kid) => keys.0.find(kid),
            // Without a kid, only an issuer with one key is unambiguous.
            None if keys.0.keys.len() == 1 => keys.0.keys.first(),
            None => None,
        }?;
        DecodingKey::from_jwk(jwk).ok()
    }

    /// Reloads the keys unless that happened lately; tells whether it did.
    async fn refetch(&self) -> bool {
        let mut keys = self.keys.write().await;
        if keys.1.elapsed() < REFETCH_INTERVAL {
            return false;
        }
        keys.1 = Instant::now();
        match load_jwks(&self.settings.jwks, &self.http).await {
            Ok(fresh) => {
                keys.0 = fresh;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "keeping the previous JWT signing keys");
                false
            }
        }
    }
}

/// OAuth `scope` (space-separated), Azure AD `scp` (string or list) and
/// `roles` (list) all grant scopes.
fn scopes_of(claims: &Value) -> Vec<Scope> {
    let mut names: Vec<&str> = Vec::new();
    for claim in ["scope", "scp", "roles"] {
        match &claims[claim] {
            Value::String(s) => names.extend(s.split_whitespace()),
            Value::Array(items) => names.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    let mut scopes: Vec<Scope> = names.into_iter().filter_map(Scope::parse).collect();
    scopes.dedup();
    scopes
}

fn jwks_error(source: &JwksSource, message: String) -> AuthError {
    AuthError::Jwks {
        source_name: match source {
            JwksSource::File(p) => p.display().to_string(),
            JwksSource::Url(u) => u.clone(),
        },
        message,
    }
}

async fn load_jwks(source: &JwksSource, http: &reqwest::Client) -> Result<JwkSet, AuthError> {
    let text = match source {
        JwksSource::File(path) => tokio::fs::read_to_string(path)
            .await
            .map_err(|e| jwks_error(source, e.to_string()))?,
        JwksSource::Url(url) => http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| jwks_error(source, e.without_url().to_string()))?
            .text()
            .await
            .map_err(|e| jwks_error(source, e.to_string()))?,
    };
    serde_json::from_str(&text).map_err(|e| jwks_error(source, format!("not a JWKS document: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticToken;
    use crate::secret::Secret;

    #[tokio::test]
    async fn static_tokens_grant_their_scopes_only() {
        let settings = AuthSettings {
            enabled: true,
            tokens: vec![
                StaticToken {
                    name: "shop".into(),
                    token: Secret::new("shop-token-0123456789"),
                    scopes: vec![Scope::OrdersWrite, Scope::OrdersRead],
                },
                StaticToken {
                    name: "ops".into(),
                    token: Secret::new("ops-token-0123456789"),
                    scopes: vec![Scope::Admin],
                },
            ],
            jwt: None,
            anonymous_paths: vec![],
            unready: None,
        };
        let auth = Authenticator::new(&settings).await.expect("authenticator");
        let shop = auth
            .authenticate("shop-token-0123456789")
            .await
            .expect("known token");
        assert_eq!(shop.name, "shop");
        assert!(shop.may(Scope::OrdersWrite) && !shop.may(Scope::Admin));
        let ops = auth
            .authenticate("ops-token-0123456789")
            .await
            .expect("ops");
        assert!(ops.may(Scope::Admin) && !ops.may(Scope::OrdersRead));
        for wrong in [
            "",
            "shop-token-012345678",
            "shop-token-0123456789x",
            "a.b.c",
        ] {
            assert!(auth.authenticate(wrong).await.is_err(), "{wrong:?}");
        }
    }

    #[test]
    fn scopes_come_from_scope_scp_and_roles() {
        let claims = serde_json::json!({
            "scope": "orders:read openid",
            "scp": ["orders:write"],
            "roles": ["admin", "other"],
        });
        assert_eq!(
            scopes_of(&claims),
            [Scope::OrdersRead, Scope::OrdersWrite, Scope::Admin]
        );
    }
}
