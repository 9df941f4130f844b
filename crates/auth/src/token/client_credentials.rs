//! Backend services (`client_credentials` with a `private_key_jwt` assertion, SMART App Launch §Backend
//! Services): `system/` scopes for an asymmetric client, within what it was registered for. Short lived
//! (five minutes) and without a refresh token.

use super::issue::{Refresh, issue_tokens};
use crate::client_auth::Jti;
use crate::model::{Client, ClientKind, Grant};
use crate::{ErrorCode, OAuthError, Shared};
use axum::http::StatusCode;
use serde_json::Value;
use smart::{Scope, ScopeSet};

/// The assertion's `jti` is recorded in the same write as the token; a refusal records it on its own.
pub(super) async fn exchange(s: &Shared, client: &Client, scope: &str, jti: Option<Jti>) -> Result<Value, OAuthError> {
    let refuse = async |e: OAuthError| match &jti {
        Some(j) => j.spend(s).await.err().unwrap_or(e),
        None => e,
    };
    let Some(jti) = jti.as_ref().filter(|_| client.kind == ClientKind::ConfidentialAsymmetric) else {
        let e =
            OAuthError::new(StatusCode::BAD_REQUEST, ErrorCode::UnauthorizedClient, "client_credentials is for clients that authenticate with private_key_jwt");
        return Err(refuse(e).await);
    };
    let requested = ScopeSet::parse(scope);
    let mut granted = ScopeSet::parse(&client.allowed_scope).narrow(&requested);
    granted.scopes.retain(|sc| matches!(sc, Scope::Resource(r) if r.level == smart::Level::System));
    if granted.scopes.is_empty() {
        return Err(refuse(OAuthError::invalid_scope("none of the requested system/ scopes is allowed for this client")).await);
    }
    let grant = Grant {
        // Time-ordered, as token keys are (see `crypto::token_key`): grant ids are indexed too.
        grant_id: uuid::Uuid::now_v7().to_string(),
        client_id: client.client_id.clone(),
        scope: granted.to_string(),
        ..Grant::default()
    };
    issue_tokens(s, client, grant, None, Refresh::New, Some(jti)).await
}
