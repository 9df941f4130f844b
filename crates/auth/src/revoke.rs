//! Token revocation (RFC 7009): an app's refresh or access token ends its whole grant.

use crate::client_auth::authenticate_client;
use crate::model::Grant;
use crate::token::request::{Credentials, Form};
use crate::{OAuthError, Shared, no_store};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

pub async fn revoke(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, OAuthError> {
    let mut form = Form::parse(&body)?;
    let token = form.take("token");
    let client = authenticate_client(&s, &Credentials::parse(&headers, &mut form)).await?;
    let token = token.ok_or_else(|| OAuthError::invalid_request("token is required"))?;
    let hash = crate::crypto::token_key(&token);
    for kind in ["access", "refresh"] {
        // A revocation that could not be carried out must not answer 200 (the app would believe it done).
        if let Some(r) = s.store.auth_get(kind, &hash).await?
            && let Ok(g) = serde_json::from_str::<Grant>(&r.value)
            && g.client_id == client.client_id
        {
            let n = s.revoke_grant(&g.grant_id).await?;
            tracing::info!(client = %client.client_id, revoked = n, "tokens revoked");
            s.audit("revoke").grant(&g).record("tokens revoked at the app's request (RFC 7009)");
        }
    }
    // RFC 7009 §2.2: 200 whether or not the token was known.
    let mut r = StatusCode::OK.into_response();
    no_store(&mut r);
    Ok(r)
}
