//! One error type for the FHIR surface, mapped to an OperationOutcome with the right status. Internal
//! details (SQL, paths) are logged, never returned.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fhir::{Severity, outcome};
use store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// FHIR issue-type code.
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "deleted", message)
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "structure", message)
    }
    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, "conflict", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "not-supported", message)
    }
    /// The database cannot answer now: 503 with `Retry-After` (see [`IntoResponse`]).
    pub fn unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "the service cannot reach its database right now; retry after the time given in Retry-After")
    }
    /// A write lost a race with a concurrent transaction and was rolled back whole: the client may send
    /// it again as it is.
    pub fn contention(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "transient", format!("{}; nothing was saved: send the request again", message.into()))
    }

    /// Whether this is [`ApiError::contention`]: the request may be run again as it was.
    pub fn is_contention(&self) -> bool {
        self.status == StatusCode::CONFLICT && self.code == "transient"
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal server error; the details are in the server log")
    }

    pub fn to_outcome(&self) -> serde_json::Value {
        outcome(Severity::Error, self.code, &self.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::precondition_failed(m),
            StoreError::Invalid(m) => ApiError::unprocessable(m),
            StoreError::BadInput(m) => ApiError::bad_request(m),
            StoreError::Backend(m) => {
                tracing::error!(error = %m, "storage error");
                ApiError::internal()
            }
            StoreError::Unavailable(m) => {
                store::error::report_unavailable(&m);
                ApiError::unavailable()
            }
            StoreError::Contention(m) => ApiError::contention(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unavailable = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut r = crate::response::json_response(self.status, &self.to_outcome(), false, crate::response::FHIR_JSON);
        if unavailable {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("5"));
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
