//! `authorization_code` (RFC 6749 §4.1.3) with PKCE S256 (RFC 7636 §4.6).

use super::issue::{Refresh, issue_tokens};
use crate::crypto::{constant_time_eq, pkce_s256, token_key, valid_pkce_verifier};
use crate::model::{Client, Grant};
use crate::{OAuthError, Shared};
use serde_json::Value;

pub(super) async fn exchange(s: &Shared, client: &Client, code: &str, redirect_uri: Option<&str>, code_verifier: &str) -> Result<Value, OAuthError> {
    let key = token_key(code);
    let invalid = || OAuthError::invalid_grant("the code is invalid or has expired");
    let another = || OAuthError::invalid_grant("the code was issued to another client");
    let read = |value: &str| serde_json::from_str::<Grant>(value).map_err(|_| OAuthError::internal("unreadable code record"));
    // Another client's code is refused before anything else, and before it is spent: whoever holds a
    // leaked code must neither use it up for the app it was issued to nor trigger the replay revocation
    // of a grant that is not their own.
    let seen = s.store.auth_get("code", &key).await?.ok_or_else(invalid)?;
    if read(&seen.value)?.client_id != client.client_id {
        return Err(another());
    }
    let record = s.store.auth_consume("code", &key).await?.ok_or_else(invalid)?;
    let grant = read(&record.value)?;
    if grant.client_id != client.client_id {
        return Err(another());
    }
    if record.used || record.revoked {
        // RFC 6749 §4.1.2: a replayed code revokes what it produced.
        let n = s.revoke_grant(&grant.grant_id).await.unwrap_or(0);
        tracing::warn!(client = %client.client_id, revoked = n, "authorisation code replayed; its tokens are revoked");
        s.audit("code-replay").grant(&grant).refused().record("a used code came back; its tokens were revoked");
        return Err(OAuthError::invalid_grant("the code was already used"));
    }
    if redirect_uri != grant.redirect_uri.as_deref() {
        return Err(OAuthError::invalid_grant("redirect_uri does not match the authorisation request"));
    }
    let challenge = grant.code_challenge.as_deref().unwrap_or("");
    if !valid_pkce_verifier(code_verifier) || !constant_time_eq(pkce_s256(code_verifier).as_bytes(), challenge.as_bytes()) {
        return Err(OAuthError::invalid_grant("code_verifier does not match the code_challenge"));
    }
    issue_tokens(s, client, grant, None, Refresh::New, None).await
}
