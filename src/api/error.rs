//! The one mapping from errors to HTTP responses: RFC 9457 problem documents
//! (`application/problem+json`). Nothing a client sends produces a 500.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::Scope;
use crate::domain::FieldError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request is invalid")]
    Validation(Vec<FieldError>),
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("content type {0:?} is not supported; send application/json")]
    UnsupportedMediaType(String),
    #[error("the body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("cannot read the body: {0}")]
    BadBody(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("the service is temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("{detail}")]
    Unauthorized { detail: String, invalid_token: bool },
    #[error("the token lacks the scope {} this request needs", scope.as_str())]
    Forbidden { scope: Scope },
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("the service is at its limit of requests in progress; retry shortly")]
    Overloaded,
    #[error("the request did not complete within {after_ms} ms")]
    Timeout { after_ms: u64 },
    #[error("internal error")]
    Internal(String),
}

/// An RFC 9457 problem document.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    /// The offending fields, for 400.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
}

impl ApiError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    pub fn body_rejection(rejection: BytesRejection, limit: usize) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge { limit }
        } else {
            Self::BadBody(rejection.body_text())
        }
    }

    /// RFC 6750 challenges and retry hints, beside the problem document.
    fn headers(&self) -> Vec<(header::HeaderName, String)> {
        match self {
            Self::Unauthorized { invalid_token, .. } => vec![(
                header::WWW_AUTHENTICATE,
                if *invalid_token {
                    r#"Bearer realm="orderflow", error="invalid_token""#.to_string()
                } else {
                    r#"Bearer realm="orderflow""#.to_string()
                },
            )],
            Self::Forbidden { scope } => vec![(
                header::WWW_AUTHENTICATE,
                format!(
                    r#"Bearer realm="orderflow", error="insufficient_scope", scope="{}""#,
                    scope.as_str()
                ),
            )],
            Self::TooManyRequests { retry_after_secs } => {
                vec![(header::RETRY_AFTER, retry_after_secs.to_string())]
            }
            Self::Overloaded | Self::Unavailable(_) => vec![(header::RETRY_AFTER, "1".into())],
            _ => Vec::new(),
        }
    }

    fn status_and_title(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Validation(_) | Self::MalformedJson(_) | Self::BadBody(_) => {
                (StatusCode::BAD_REQUEST, "Bad Request")
            }
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type")
            }
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "Not Found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable Content"),
            Self::Unavailable(_) | Self::Overloaded | Self::Timeout { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
            }
            Self::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Self::Forbidden { .. } => (StatusCode::FORBIDDEN, "Forbidden"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::NotFound(e.to_string()),
            StoreError::Conflict { .. } => Self::Conflict(e.to_string()),
            StoreError::IdempotencyMismatch => Self::Unprocessable(e.to_string()),
            StoreError::Unavailable(_) => Self::Unavailable("the database is unreachable".into()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, title) = self.status_and_title();
        let extra = self.headers();
        let detail = match &self {
            // The cause is logged, not shown: it may describe internals.
            Self::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                self.to_string()
            }
            other => other.to_string(),
        };
        let errors = match self {
            Self::Validation(errors) => errors,
            _ => Vec::new(),
        };
        let problem = Problem {
            kind: "about:blank",
            title,
            status: status.as_u16(),
            detail,
            errors,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        for (name, value) in extra {
            if let Ok(value) = header::HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}
