//! What every request passes before a handler: the in-flight limit, the
//! caller's identity and scope (401/403), the per-client rate limit (429),
//! and the request timeout (503). Which route needs which scope is decided
//! here and nowhere else.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;

use super::listener::ClientAddr;
use super::ApiError;
use crate::auth::{AuthError, Authenticator, Principal, Scope};
use crate::config::{ApiSettings, AuthSettings};

/// What a route asks of its caller (paths in `Api.Auth.AnonymousPaths`
/// ask nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token: the admin page's static shell (its data needs `admin`).
    Open,
    /// Any valid token (routes that exist for no one in particular, such
    /// as unknown paths: a stranger learns nothing from a 404).
    Authenticated,
    Scope(Scope),
}

/// The scope each route needs. Reading orders and stock is `orders:read`;
/// creating, paying and shipping orders is `orders:write`; setting stock
/// and the admin dashboard are `admin`.
pub fn required_access(method: &Method, route: Option<&str>) -> Access {
    let Some(route) = route else {
        return Access::Authenticated;
    };
    let reads = method == Method::GET || method == Method::HEAD;
    if route == "/admin" && reads {
        Access::Open
    } else if route == "/admin" || route.starts_with("/admin/") {
        Access::Scope(Scope::Admin)
    } else if route.starts_with("/api/inventory") {
        Access::Scope(if reads {
            Scope::OrdersRead
        } else {
            Scope::Admin
        })
    } else if route.starts_with("/api/orders") {
        Access::Scope(if reads {
            Scope::OrdersRead
        } else {
            Scope::OrdersWrite
        })
    } else {
        Access::Authenticated
    }
}

pub struct Guard {
    auth: Option<Authenticator>,
    anonymous_paths: Vec<String>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
}

impl Guard {
    pub async fn new(settings: &ApiSettings) -> Result<Arc<Self>, AuthError> {
        let auth = match settings.auth.enabled {
            true => Some(Authenticator::new(&settings.auth).await?),
            false => None,
        };
        let limiter = settings.rate_limit.and_then(|r| {
            let rate = NonZeroU32::new(r.per_second)?;
            let burst = NonZeroU32::new(r.burst)?;
            Some(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        let guard = Arc::new(Self {
            auth,
            anonymous_paths: anonymous_paths(&settings.auth),
            limiter,
            in_flight: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
            timeout: settings.request_timeout,
        });
        if guard.limiter.is_some() {
            // Forget clients that have been quiet: the key map stays as
            // large as the set of recent clients, not of all clients ever.
            let weak = Arc::downgrade(&guard);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    let Some(guard) = weak.upgrade() else { break };
                    if let Some(limiter) = &guard.limiter {
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                }
            });
        }
        Ok(guard)
    }

    pub fn authenticates(&self) -> bool {
        self.auth.is_some()
    }

    pub fn rate_limited(&self) -> bool {
        self.limiter.is_some()
    }

    pub fn is_anonymous(&self, path: &str) -> bool {
        self.anonymous_paths
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == p,
            })
    }

    /// `Err` carries the response: 429 with the seconds until the client
    /// may try again.
    fn charge(&self, client: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&client.to_string()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::TooManyRequests {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }

    /// The caller, if the route needs one; `Ok(None)` when it does not or
    /// authentication is off.
    async fn admit(
        &self,
        access: Access,
        token: Option<String>,
        client: &str,
    ) -> Result<Option<Principal>, ApiError> {
        let Some(auth) = self.auth.as_ref().filter(|_| access != Access::Open) else {
            self.charge(client)?;
            return Ok(None);
        };
        let Some(token) = token else {
            self.charge(client)?;
            return Err(ApiError::Unauthorized {
                detail: "this endpoint needs an `Authorization: Bearer <token>` header".into(),
                invalid_token: false,
            });
        };
        let principal = match auth.authenticate(&token).await {
            Ok(p) => p,
            Err(e) => {
                // Failed attempts count against the address: guessing
                // tokens is rate limited like any other traffic.
                self.charge(client)?;
                tracing::info!(client, error = %e, "request with an invalid token refused");
                return Err(ApiError::Unauthorized {
                    detail: e.to_string(),
                    invalid_token: true,
                });
            }
        };
        self.charge(&format!("principal:{}", principal.name))?;
        if let Access::Scope(scope) = access {
            if !principal.may(scope) {
                return Err(ApiError::Forbidden { scope });
            }
        }
        Ok(Some(principal))
    }
}

fn anonymous_paths(settings: &AuthSettings) -> Vec<String> {
    settings
        .anonymous_paths
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn bearer(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

fn client_ip(request: &Request) -> Option<IpAddr> {
    let ConnectInfo(ClientAddr(addr)) = request.extensions().get::<ConnectInfo<ClientAddr>>()?;
    Some(addr.ip())
}

pub async fn guard(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    // Probes and scrapes are exempt from every limit: shedding a liveness
    // probe under load would get the pod restarted when it is busiest.
    if guard.is_anonymous(request.uri().path()) {
        return next.run(request).await;
    }
    // Load shedding: an overloaded instance answers at once rather than
    // queueing work its callers will have given up on.
    let Ok(_permit) = guard.in_flight.clone().try_acquire_owned() else {
        return ApiError::Overloaded.into_response();
    };
    let client = client_ip(&request)
        .map(|ip| format!("ip:{ip}"))
        .unwrap_or_else(|| "ip:unknown".into());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let access = required_access(request.method(), route);
    match guard.admit(access, bearer(&request), &client).await {
        Ok(Some(principal)) => {
            tracing::Span::current().record("principal", principal.name.as_str());
            request.extensions_mut().insert(principal);
        }
        Ok(None) => {}
        Err(refused) => return refused.into_response(),
    }
    match tokio::time::timeout(guard.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout {
            after_ms: guard.timeout.as_millis() as u64,
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_documented_scopes() {
        let cases = [
            (Method::GET, "/api/orders", Access::Scope(Scope::OrdersRead)),
            (
                Method::GET,
                "/api/orders/{id}",
                Access::Scope(Scope::OrdersRead),
            ),
            (
                Method::POST,
                "/api/orders",
                Access::Scope(Scope::OrdersWrite),
            ),
            (
                Method::POST,
                "/api/orders/{id}/payments",
                Access::Scope(Scope::OrdersWrite),
            ),
            (
                Method::GET,
                "/api/inventory/{product}",
                Access::Scope(Scope::OrdersRead),
            ),
            (
                Method::PUT,
                "/api/inventory/{product}",
                Access::Scope(Scope::Admin),
            ),
            (Method::GET, "/admin", Access::Open),
            (
                Method::GET,
                "/admin/api/overview",
                Access::Scope(Scope::Admin),
            ),
            (
                Method::POST,
                "/admin/api/pause",
                Access::Scope(Scope::Admin),
            ),
            (Method::GET, "/administrator", Access::Authenticated),
        ];
        for (method, route, access) in cases {
            assert_eq!(
                required_access(&method, Some(route)),
                access,
                "{method} {route}"
            );
        }
        assert_eq!(required_access(&Method::GET, None), Access::Authenticated);
    }
}
