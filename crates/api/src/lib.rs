//! The FHIR R4 REST API of Kindling, served under `/fhir` by axum over any [`store::Store`].
#![deny(missing_docs)]

pub mod access;
mod audit_event;
pub mod bundle;
mod bundle_out;
pub mod capability;
pub mod error;
mod everything;
pub mod export;
pub mod ops;
pub mod policy;
pub mod response;
pub mod rest;
pub mod search;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{MethodRouter, get, post};
use fhir::time::{SharedClock, format_instant, unix_ms};
use std::sync::Arc;
use store::Store;

pub use error::{ApiError, ApiResult};

/// What every FHIR handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Arc<dyn Store>,
    /// The FHIR base URL as clients see it, without a trailing slash (e.g. `http://127.0.0.1:8080/fhir`):
    /// links, `fullUrl`s and `Location`s are written on it.
    pub base_url: String,
    /// The base on which absolute references to this server's resources are recognised (the store's, the
    /// policy's and search's): `base_url`, except at a vendor profile's own base, whose requests are
    /// rewritten to this one before they reach the API.
    pub local_base: String,
    /// "Now" (lastUpdated, history, paging snapshots, export expiry).
    pub clock: SharedClock,
    /// Resolves bearer tokens; `None` is the explicit open-sandbox mode (no token needed).
    pub access: Option<Arc<dyn access::AccessResolver>>,
    /// Where FHIR accesses are recorded (every request when tokens are enforced).
    pub audit: Option<store::audit::AuditSink>,
    /// The SMART authorisation server's endpoints, stated in the CapabilityStatement's `rest.security`
    /// (`None` when tokens are not enforced).
    pub oauth: Option<capability::OAuthUris>,
    /// How long a Bulk Data export job and its files are kept after the kick-off (ms).
    pub export_ttl_ms: i64,
    /// Whether a kick-off's `Kindling-Export-Fault` header is honoured (else refused with 400).
    pub export_faults: bool,
}

impl AppState {
    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        unix_ms(self.clock.now())
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed("this interaction is not supported at this URL")
}

/// The answer to a URL under `/fhir` that no route serves.
pub async fn not_found() -> ApiError {
    ApiError::not_found("there is nothing at this URL of the FHIR API")
}

fn with_405(m: MethodRouter<AppState>) -> MethodRouter<AppState> {
    m.fallback(method_not_allowed)
}

async fn metadata(State(state): State<AppState>, neg: response::Negotiated) -> Response {
    let cs = capability::capability_statement(&state.base_url, env!("CARGO_PKG_VERSION"), &format_instant(state.clock.now()), state.oauth.as_ref());
    response::json_response(StatusCode::OK, &cs, neg.pretty, neg.content_type)
}

/// The message of an error response that is not JSON (an extractor's plain-text rejection), for a
/// middleware that answers it in the endpoint's own error format; a JSON response comes back unchanged.
pub async fn plain_error_text(response: Response) -> Result<String, Response> {
    let json = response.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.contains("json"));
    if json {
        return Err(response);
    }
    let status = response.status();
    Ok(match axum::body::to_bytes(response.into_body(), 16 * 1024).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    })
}

/// Every error from `/fhir` is an OperationOutcome: a refusal produced outside the handlers (an extractor's
/// rejection of a path that is not UTF-8, a body over the limit, ...) is plain text, and becomes one here.
async fn outcome_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::response::IntoResponse;
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let text = match plain_error_text(response).await {
        Ok(text) => text,
        Err(structured) => return structured,
    };
    let text = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("the request body is over {} MiB, the most a request may carry", MAX_BODY_BYTES / (1024 * 1024))
    } else {
        text
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED | StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::NOT_ACCEPTABLE => "not-supported",
        StatusCode::PAYLOAD_TOO_LARGE => "too-costly",
        s if s.is_server_error() => "exception",
        _ => "invalid",
    };
    ApiError::new(status, code, text).into_response()
}

/// The largest request body the FHIR API reads (a 413 beyond).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

// ---- Bulk Data $export ---------------------------------------------------------------------------------

async fn export_kick_off(
    state: &AppState,
    access: &access::Access,
    level: export::Level,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> ApiResult<Response> {
    let pairs = search::parse_pairs(uri.query().unwrap_or(""));
    let body: Option<serde_json::Value> = if body.is_empty() {
        None
    } else {
        Some(serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the kick-off body is not JSON: {e}")))?)
    };
    let params = export::kick_off_parameters(headers, &pairs, body.as_ref(), &level)?;
    // The kick-off as the client sent it: on the base it called (a vendor profile's server serves the API
    // at its own base; the routes are under `/fhir`).
    let path_and_query = uri.path_and_query().map_or("", |p| p.as_str());
    let request = format!("{}{}", state.base_url, path_and_query.strip_prefix("/fhir").unwrap_or(path_and_query));
    export::kick_off(state, access, level, params, request).await
}

async fn export_system(
    State(state): State<AppState>,
    axum::Extension(access): axum::Extension<access::Access>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    export_kick_off(&state, &access, export::Level::System, &uri, &headers, &body).await
}

async fn export_patients(
    State(state): State<AppState>,
    axum::Extension(access): axum::Extension<access::Access>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    export_kick_off(&state, &access, export::Level::Patients, &uri, &headers, &body).await
}

async fn export_group(
    State(state): State<AppState>,
    axum::Extension(access): axum::Extension<access::Access>,
    axum::extract::Path(id): axum::extract::Path<String>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    export_kick_off(&state, &access, export::Level::Group(id), &uri, &headers, &body).await
}

async fn export_status(
    State(state): State<AppState>,
    axum::Extension(access): axum::Extension<access::Access>,
    axum::extract::Path(job): axum::extract::Path<String>,
) -> ApiResult<Response> {
    export::status(&state, &access, &job).await
}

async fn export_cancel(
    State(state): State<AppState>,
    axum::Extension(access): axum::Extension<access::Access>,
    axum::extract::Path(job): axum::extract::Path<String>,
) -> ApiResult<Response> {
    export::cancel(&state, &access, &job).await
}

async fn export_file(
    State(state): State<AppState>,
    axum::Extension(access): axum::Extension<access::Access>,
    axum::extract::Path((job, file)): axum::extract::Path<(String, String)>,
) -> ApiResult<Response> {
    export::file(&state, &access, &job, &file).await
}

/// The `/fhir` routes. Mount the result at the root of the server.
pub fn router(state: AppState) -> Router {
    use rest::*;
    let protected = Router::new()
        .route("/fhir/AuditEvent", get(audit_event::search).fallback(audit_event::read_only))
        .route("/fhir/AuditEvent/{id}", get(audit_event::read).fallback(audit_event::read_only))
        .route("/fhir", with_405(get(system_get).post(bundle::system_post)))
        .route("/fhir/", with_405(get(system_get).post(bundle::system_post)))
        .route("/fhir/_history", with_405(get(system_history)))
        .route("/fhir/$export", with_405(get(export_system).post(export_system)))
        .route("/fhir/Patient/$export", with_405(get(export_patients).post(export_patients)))
        .route("/fhir/Group/{id}/$export", with_405(get(export_group).post(export_group)))
        .route("/fhir/$export-status/{job}", with_405(get(export_status).delete(export_cancel)))
        .route("/fhir/$export-file/{job}/{file}", with_405(get(export_file)))
        .route("/fhir/DocumentReference/$docref", with_405(get(docref).post(docref)))
        .route("/fhir/{type}", with_405(get(type_search).post(type_create).put(type_conditional_update).delete(type_conditional_delete)))
        .route("/fhir/{type}/_search", with_405(post(type_search_post)))
        .route("/fhir/{type}/_history", with_405(get(type_history)))
        .route("/fhir/{type}/{id}", with_405(get(instance_read).put(instance_update).patch(instance_patch).delete(instance_delete)))
        .route("/fhir/{type}/{id}/_history", with_405(get(instance_history)))
        .route("/fhir/{type}/{id}/_history/{vid}", with_405(get(instance_vread)))
        .route("/fhir/{type}/{id}/{sub}", with_405(get(instance_sub)))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access::require_access));
    Router::new()
        .route("/fhir/metadata", with_405(get(metadata)))
        .merge(protected)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(outcome_errors))
        .with_state(state)
}
