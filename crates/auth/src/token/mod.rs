//! The token endpoint: a request is parsed once ([`request`]), the client authenticated
//! ([`crate::client_auth`]), and the grant decided by its own module — [`authorization_code`] (PKCE),
//! [`refresh_token`] (rotation and reuse detection), [`client_credentials`] (backend services) — which
//! all end in [`issue`].

mod authorization_code;
mod client_credentials;
mod issue;
mod refresh_token;
pub(crate) mod request;

use crate::client_auth::{authenticate, public_refresh_client};
use crate::model::Grant;
use crate::{OAuthError, Shared, no_store};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use issue::{Refresh, issue_tokens};
use request::{Form, GrantRequest, TokenRequest};
use serde_json::Value;

pub async fn token(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, OAuthError> {
    // Bytes, not a typed form: a body that is not UTF-8 is an OAuth error like any other bad request.
    let TokenRequest { credentials, grant } = TokenRequest::parse(&headers, Form::parse(&body)?)?;
    let (client, jti) = match authenticate(&s, &credentials).await {
        Ok(c) => c,
        Err(refusal) => match &grant {
            GrantRequest::RefreshToken { refresh_token, .. } => match public_refresh_client(&s, &credentials, refresh_token).await? {
                // RFC 6749 §6 asks public clients for no credentials on refresh (the SMART JavaScript
                // client sends none): the refresh token itself names its public client.
                Some(c) => (c, None),
                None => return Err(refusal),
            },
            _ => return Err(refusal),
        },
    };
    let body = match grant {
        // A backend token is stored in the same write that spends the assertion's jti.
        GrantRequest::ClientCredentials { scope } => client_credentials::exchange(&s, &client, &scope, jti).await?,
        other => {
            if let Some(jti) = jti {
                jti.spend(&s).await?;
            }
            match other {
                GrantRequest::AuthorizationCode { code, redirect_uri, code_verifier } => {
                    authorization_code::exchange(&s, &client, &code, redirect_uri.as_deref(), &code_verifier).await?
                }
                GrantRequest::RefreshToken { refresh_token, scope } => refresh_token::exchange(&s, &client, &refresh_token, scope.as_deref()).await?,
                GrantRequest::ClientCredentials { .. } => unreachable!("handled above"),
            }
        }
    };
    let mut r = (StatusCode::OK, Json(body)).into_response();
    no_store(&mut r);
    Ok(r)
}

/// Tokens for `username` through `client_id` without the browser flow, for a developer's `curl` against
/// a sandbox (`kindling token`): what the user could be granted through that app (the app's allowance, and
/// patient users only patient-level scopes), with the patient in context when one is given (a patient user's
/// own record always). Refuses what the flow would refuse: an unknown or disabled app, an unknown user, a
/// patient that does not exist, patient-level scopes without a patient, or nothing grantable.
pub async fn operator_tokens(s: &Shared, client_id: &str, username: &str, patient: Option<&str>, scope: &str) -> Result<Value, String> {
    let client = crate::registry::get_client(s.store.as_ref(), client_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no app '{client_id}' is registered"))?;
    if client.disabled {
        return Err(format!("the app '{client_id}' is disabled"));
    }
    let user = crate::registry::get_user(s.store.as_ref(), username).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no user '{username}'"))?;
    let patient = match (user.own_patient(), patient) {
        (Some(own), Some(asked)) if own != asked => return Err(format!("'{username}' is a patient user: tokens are for their own record ({own}) only")),
        (Some(own), _) => Some(own.to_string()),
        (None, asked) => asked.map(str::to_string),
    };
    if let Some(p) = &patient
        && s.store.read("Patient", p).await.map_err(|e| e.to_string())?.is_none_or(|r| r.deleted)
    {
        return Err(format!("there is no Patient/{p}"));
    }
    let granted = crate::authorize::grantable(&client, &user, scope);
    if granted.scopes.is_empty() {
        return Err(format!("'{client_id}' may not be granted any of '{scope}' for '{username}' (the app allows: {})", client.allowed_scope));
    }
    if patient.is_none() && granted.resource_scopes().any(|r| r.level == smart::Level::Patient) {
        return Err("patient/ scopes need a patient: add --patient ID".into());
    }
    let grant = Grant {
        // Time-ordered, as everywhere else grant ids are made (they are indexed).
        grant_id: uuid::Uuid::now_v7().to_string(),
        client_id: client.client_id.clone(),
        scope: granted.to_string(),
        username: Some(user.username.clone()),
        fhir_user: Some(user.fhir_user.clone()),
        patient,
        ..Grant::default()
    };
    issue_tokens(s, &client, grant, None, Refresh::New, None).await.map_err(|e| format!("the token could not be issued: {}: {}", e.code(), e.description()))
}

/// How long a CDS Hooks `fhirAuthorization` token lives.
pub const CDS_TOKEN_SECS: i64 = 300;

/// The `fhirAuthorization` of a CDS Hooks call (CDS Hooks 2.0): a bearer token for the CDS service's own
/// registered client (`client_id`), for `user` on `patient`, with `wanted` (patient-level read scopes)
/// narrowed to what the client is allowed and the user's rights allow, living [`CDS_TOKEN_SECS`].
/// No refresh token and no id_token; revoked with the user like any of their tokens. `Ok(None)` when
/// nothing of `wanted` may be granted; `Err` when the client is not registered or disabled.
pub async fn cds_authorization(s: &Shared, client_id: &str, user: &crate::model::User, patient: &str, wanted: &str) -> Result<Option<Value>, String> {
    let client = crate::registry::get_client(s.store.as_ref(), client_id)
        .await
        .map_err(|e| e.to_string())?
        .filter(|c| !c.disabled)
        .ok_or_else(|| format!("the client '{client_id}' is not registered or is disabled"))?;
    // The account as it is now (a chart opened just before the account was disabled mints nothing), and
    // only a clinician's: patients do not call decision support.
    let user = crate::registry::get_user(s.store.as_ref(), &user.username)
        .await
        .map_err(|e| e.to_string())?
        .filter(|u| u.role == crate::model::UserRole::Clinician)
        .ok_or("the user is not an enabled clinician")?;
    let user = &user;
    let mut granted = crate::authorize::grantable(&client, user, wanted);
    // Patient-level resource scopes only: nothing else is asked for, nor given.
    granted.scopes.retain(|sc| matches!(sc, smart::Scope::Resource(r) if r.level == smart::Level::Patient));
    if granted.scopes.is_empty() {
        return Ok(None);
    }
    let now = s.now_ms();
    let expires = now + CDS_TOKEN_SECS * 1000;
    let grant = Grant {
        grant_id: uuid::Uuid::now_v7().to_string(),
        client_id: client.client_id.clone(),
        scope: granted.to_string(),
        username: Some(user.username.clone()),
        fhir_user: Some(user.fhir_user.clone()),
        patient: Some(patient.to_string()),
        expires: Some(expires),
        ..Grant::default()
    };
    let access = crate::crypto::ordered_token(now);
    let value = serde_json::to_string(&grant).map_err(|e| e.to_string())?;
    s.store.auth_put("access", &crate::crypto::token_key(&access), &value, Some(&grant.grant_id), Some(expires)).await.map_err(|e| e.to_string())?;
    s.audit("token")
        .client(client.client_id.as_str())
        .user(user.username.as_str())
        .patient(Some(patient))
        .record(format!("CDS Hooks fhirAuthorization: {}", grant.scope));
    Ok(Some(serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": CDS_TOKEN_SECS,
        "scope": grant.scope,
        "subject": client.client_id,
        "patient": patient,
    })))
}
