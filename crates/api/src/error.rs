//! One error type for the FHIR surface, mapped to an OperationOutcome with the right status. Internal
//! details (SQL, paths) are logged, never returned.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fhir::{Severity, outcome};
use store::StoreError;

/// A refusal or failure of the FHIR API: its HTTP status, FHIR issue code and a message safe to show (an OperationOutcome).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// FHIR issue-type code.
    pub code: &'static str,
    /// What went wrong, for the client's developer (never SQL, paths or secrets).
    pub message: String,
}

impl ApiError {
    /// An error with this status, issue code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
    /// `400 invalid`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    /// `404 not-found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }
    /// `410 deleted`.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "deleted", message)
    }
    /// `422 structure` (the content is not a valid resource).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "structure", message)
    }
    /// `412 conflict` (a version or condition did not hold).
    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, "conflict", message)
    }
    /// `409 conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// `405 not-supported`.
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

    /// `500 exception`, with a generic message (the cause is logged, not shown).
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", "internal server error; the details are in the server log")
    }

    /// The error as an OperationOutcome.
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

/// The result of a FHIR API operation.
pub type ApiResult<T> = Result<T, ApiError>;
