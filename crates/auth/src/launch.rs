//! The EHR's launch-context API: `POST /auth/launch` with the EHR user's credentials (HTTP Basic) and the
//! context as JSON; answers an opaque, single-use `launch` handle that expires (5 minutes by default).

use crate::crypto::{random_token, token_hash, verify_password};
use crate::model::LaunchContext;
use crate::{Shared, oauth_error, registry};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;

/// `(username, password)` from an HTTP Basic header.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    // RFC 6749 §2.3.1: client credentials in Basic are form-urlencoded first.
    let dec = |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((dec(user)?, dec(pass)?))
}

/// Stores a launch context and returns its handle.
pub async fn new_launch(server: &Shared, context: &LaunchContext) -> Result<String, store::StoreError> {
    let handle = random_token();
    let value = serde_json::to_string(context).map_err(|e| store::StoreError::Backend(e.to_string()))?;
    let expires = server.now_ms() + server.config.launch_secs * 1000;
    server.store.auth_put("launch", &token_hash(&handle), &value, None, Some(expires)).await?;
    Ok(handle)
}

pub async fn create_launch(State(server): State<Shared>, headers: HeaderMap, Json(mut context): Json<LaunchContext>) -> Response {
    let Some((username, password)) = basic_credentials(&headers) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "sign in with the EHR user's name and password (HTTP Basic)");
    };
    let user = match registry::get_user(server.store.as_ref(), &username).await {
        Ok(Some(u)) if verify_password(&password, &u.password_hash) => u,
        Ok(_) => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown user or wrong password"),
        Err(e) => {
            tracing::error!(error = %e, "launch: store error");
            return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the launch could not be stored");
        }
    };
    // Patients launch apps on their own record only (portal launches); clinicians on any.
    if let Some(own) = user.own_patient() {
        if context.patient.as_deref().is_some_and(|p| p != own) {
            return oauth_error(StatusCode::FORBIDDEN, "access_denied", "a patient can launch apps only on their own record");
        }
        context.patient = Some(own.to_string());
    }
    if let Some(p) = &context.patient {
        match server.store.read("Patient", p).await {
            Ok(Some(r)) if !r.deleted => {}
            _ => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "the patient of the launch does not exist"),
        }
    }
    if let Some(e) = &context.encounter {
        match server.store.read("Encounter", e).await {
            Ok(Some(r)) if !r.deleted => {}
            _ => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "the encounter of the launch does not exist"),
        }
    }
    context.username = Some(user.username);
    match new_launch(&server, &context).await {
        Ok(handle) => {
            let mut r = (StatusCode::CREATED, Json(json!({"launch": handle, "expires_in": server.config.launch_secs, "iss": server.config.fhir_base}))).into_response();
            crate::no_store(&mut r);
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "launch: store error");
            oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the launch could not be stored")
        }
    }
}
