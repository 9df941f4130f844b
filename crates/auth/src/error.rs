//! One shape for every refusal of the authorisation server's JSON endpoints (token, introspection,
//! revocation, registration, launch): an RFC 6749 §5.2 error code, a description for the developer, and
//! the HTTP status it goes with. Handlers return `Result<Response, OAuthError>` and refuse with `?`; the
//! one [`IntoResponse`] writes the body and headers (never cached; `WWW-Authenticate` on 401;
//! `Retry-After` when the database is out of reach).
//!
//! The authorisation endpoint refuses through `authorize::request::Refusal` instead: a person is there,
//! so a refusal is a page or a redirect back to the app, carrying one of the same [`ErrorCode`]s.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::borrow::Cow;

/// The error codes Kindling sends (RFC 6749 §4.1.2.1 and §5.2, RFC 7591 §3.2.2, RFC 6750 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `invalid_request`: a parameter is missing, repeated or malformed.
    InvalidRequest,
    /// `invalid_client`: client authentication failed.
    InvalidClient,
    /// `invalid_grant`: the code or refresh token is invalid, expired, revoked or another client's.
    InvalidGrant,
    /// `unauthorized_client`: the client may not use this grant.
    UnauthorizedClient,
    /// `unsupported_grant_type`.
    UnsupportedGrantType,
    /// `unsupported_response_type`.
    UnsupportedResponseType,
    /// `invalid_scope`.
    InvalidScope,
    /// `access_denied`: the user (or the rules) refused.
    AccessDenied,
    /// `server_error`.
    ServerError,
    /// `temporarily_unavailable`: retry after `Retry-After`.
    TemporarilyUnavailable,
    /// `invalid_client_metadata` (RFC 7591).
    InvalidClientMetadata,
    /// `invalid_redirect_uri` (RFC 7591).
    InvalidRedirectUri,
    /// `login_required` (OpenID Connect).
    LoginRequired,
    /// `consent_required` (OpenID Connect).
    ConsentRequired,
    /// `interaction_required` (OpenID Connect).
    InteractionRequired,
}

impl ErrorCode {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::UnsupportedResponseType => "unsupported_response_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::ServerError => "server_error",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
            ErrorCode::InvalidClientMetadata => "invalid_client_metadata",
            ErrorCode::InvalidRedirectUri => "invalid_redirect_uri",
            ErrorCode::LoginRequired => "login_required",
            ErrorCode::ConsentRequired => "consent_required",
            ErrorCode::InteractionRequired => "interaction_required",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal from a JSON endpoint.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    code: ErrorCode,
    description: Cow<'static, str>,
    /// Seconds for `Retry-After`.
    retry_after: Option<u64>,
}

impl OAuthError {
    /// A refusal with this status, code and description.
    pub fn new(status: StatusCode, code: ErrorCode, description: impl Into<Cow<'static, str>>) -> OAuthError {
        OAuthError { status, code, description: description.into(), retry_after: None }
    }

    /// `400 invalid_request`: a parameter is missing, repeated or malformed.
    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, description)
    }

    /// `401 invalid_client`: client (or EHR user) authentication failed.
    pub fn invalid_client(description: impl Into<Cow<'static, str>>) -> OAuthError {
        OAuthError::new(StatusCode::UNAUTHORIZED, ErrorCode::InvalidClient, description)
    }

    /// `400 invalid_grant`: the code or refresh token is invalid, expired, revoked or another client's.
    pub fn invalid_grant(description: impl Into<Cow<'static, str>>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidGrant, description)
    }

    /// `400 invalid_scope`.
    pub fn invalid_scope(description: impl Into<Cow<'static, str>>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidScope, description)
    }

    /// `400` with an RFC 7591 registration error code.
    pub fn registration(code: ErrorCode, description: impl Into<Cow<'static, str>>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, code, description)
    }

    /// `429 temporarily_unavailable` with `Retry-After`: a vendor profile's throttle.
    pub fn throttled(retry_after_secs: u64, description: impl Into<Cow<'static, str>>) -> OAuthError {
        OAuthError {
            retry_after: Some(retry_after_secs.max(1)),
            ..OAuthError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TemporarilyUnavailable, description)
        }
    }

    /// `500 server_error` for a failure that is not the caller's; the cause is logged, never sent.
    pub fn internal(e: impl std::fmt::Display) -> OAuthError {
        tracing::error!(error = %e, "authorisation server error");
        OAuthError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::ServerError, "the request could not be completed")
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The RFC 6749 code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The description for the developer.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether the refusal is about the server rather than the request (a storage failure): such a refusal
    /// is passed on as it is, never turned into a credential error.
    pub fn is_server_side(&self) -> bool {
        self.status.is_server_error()
    }
}

/// A storage failure: `503 temporarily_unavailable` with `Retry-After` when the database cannot be reached
/// (logged once per outage, not per request), `500 server_error` for other failures. Never a credential
/// error: a valid client or token is not turned away as invalid.
impl From<store::StoreError> for OAuthError {
    fn from(e: store::StoreError) -> OAuthError {
        match e {
            store::StoreError::Unavailable(m) => {
                store::error::report_unavailable(&m);
                OAuthError {
                    retry_after: Some(5),
                    ..OAuthError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::TemporarilyUnavailable,
                        "the authorisation server cannot reach its database right now; retry later",
                    )
                }
            }
            other => {
                tracing::error!(error = %other, "authorisation server storage error");
                OAuthError::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::ServerError, "the authorisation server could not complete the request")
            }
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(json!({"error": self.code.as_str(), "error_description": self.description}))).into_response();
        crate::no_store(&mut r);
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"kindling\""));
        }
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(r: Response) -> serde_json::Value {
        serde_json::from_slice(&axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_refusal_is_rfc_6749_json_that_is_never_cached() {
        let r = OAuthError::invalid_grant("the code was already used").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(body(r).await, json!({"error": "invalid_grant", "error_description": "the code was already used"}));
    }

    #[tokio::test]
    async fn failed_client_authentication_asks_for_credentials() {
        let r = OAuthError::invalid_client("unknown client").into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Basic realm=\"kindling\"");
    }

    #[tokio::test]
    async fn an_unreachable_database_is_a_retryable_503_not_a_credential_error() {
        let e = OAuthError::from(store::StoreError::Unavailable("connection refused".into()));
        assert!(e.is_server_side());
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        let v = body(r).await;
        assert_eq!(v["error"], "temporarily_unavailable");
        assert!(!v.to_string().contains("connection refused"), "the cause stays in the log: {v}");
        let r = OAuthError::from(store::StoreError::Backend("disk I/O error".into())).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body(r).await.to_string().contains("disk"));
    }
}
