//! Client authentication at the token, introspection and revocation endpoints (RFC 6749 §2.3): HTTP Basic
//! or `client_secret_post` for symmetric clients, `private_key_jwt` (RFC 7523 §2.2) for asymmetric ones,
//! `client_id` alone for public ones.

use crate::crypto::{token_key, verify_client_secret};
use crate::model::{Client, ClientKind, Grant};
use crate::token::request::Credentials;
use crate::{OAuthError, Shared};
use axum::http::StatusCode;
use std::sync::Arc;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The `jti` of a verified client assertion, still to be recorded: it may be used once while the
/// assertion lives.
pub(crate) struct Jti {
    key: String,
    expires: i64,
}

impl Jti {
    pub(crate) fn record(&self) -> store::NewAuthRecord<'_> {
        store::NewAuthRecord { kind: "jti", key: &self.key, value: "{}", grant_id: None, expires: Some(self.expires) }
    }

    /// Records the `jti` as used; refused when it already was.
    pub(crate) async fn spend(&self, s: &Shared) -> Result<(), OAuthError> {
        let r = self.record();
        match s.store.auth_insert_new(r.kind, r.key, r.value, r.expires).await? {
            true => Ok(()),
            false => Err(jti_reused()),
        }
    }
}

pub(crate) fn jti_reused() -> OAuthError {
    OAuthError::invalid_client("this assertion's jti was already used")
}

/// Authenticates the client, and records (uses up) an assertion's `jti` before returning.
pub(crate) async fn authenticate_client(s: &Shared, credentials: &Credentials) -> Result<Arc<Client>, OAuthError> {
    let (client, jti) = authenticate(s, credentials).await?;
    if let Some(jti) = jti {
        jti.spend(s).await?;
    }
    Ok(client)
}

/// [`authenticate_client`] that leaves an assertion's `jti` to the caller, who must record it before
/// answering (a backend token records it with the token, in one write).
pub(crate) async fn authenticate(s: &Shared, credentials: &Credentials) -> Result<(Arc<Client>, Option<Jti>), OAuthError> {
    let (client_id, secret) = match credentials {
        Credentials::Assertion { assertion_type, assertion, client_id } => {
            let (client, jti) = authenticate_assertion(s, assertion_type.as_deref(), assertion, client_id.as_deref()).await?;
            return Ok((client, Some(jti)));
        }
        Credentials::Anonymous | Credentials::Unreadable => return Err(OAuthError::invalid_client("client authentication is required")),
        Credentials::ClientId(id) => (id, None),
        Credentials::Secret { client_id, secret } => (client_id, Some(secret)),
    };
    let client = s.client(client_id).await?.ok_or_else(|| OAuthError::invalid_client("unknown client"))?;
    let refusal = match (client.kind, secret) {
        (ClientKind::Public, None) => None,
        (ClientKind::Public, Some(_)) => Some("this client is registered as public and has no secret"),
        (ClientKind::ConfidentialSymmetric, Some(secret)) if client.secret_hash.as_deref().is_some_and(|h| verify_client_secret(secret, h)) => None,
        (ClientKind::ConfidentialSymmetric, Some(_)) => Some("client authentication failed"),
        (ClientKind::ConfidentialSymmetric, None) => Some("this confidential client must authenticate with its secret"),
        (ClientKind::ConfidentialAsymmetric, _) => Some("this client must authenticate with a private_key_jwt assertion"),
    };
    match refusal {
        None => Ok((client, None)),
        Some(why) => Err(OAuthError::invalid_client(why)),
    }
}

/// `private_key_jwt`: the assertion is verified against the client's registered keys; its `jti` comes
/// back to be recorded.
async fn authenticate_assertion(s: &Shared, assertion_type: Option<&str>, jwt: &str, client_id: Option<&str>) -> Result<(Arc<Client>, Jti), OAuthError> {
    if assertion_type != Some(JWT_BEARER) {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            crate::ErrorCode::InvalidClient,
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ));
    }
    let unverified = match crate::jose::Unverified::read(jwt) {
        Ok(u) => u,
        Err(why) => {
            // Refused before any client is looked up; still on the audit trail of the client it names,
            // when its claims can be read and name a registered one.
            if let Some(iss) = crate::jose::claimed_issuer(jwt)
                && let Some(client) = s.client(&iss).await?
            {
                s.audit("client-authentication").client(client.client_id.as_str()).refused().record(why.as_str());
            }
            return Err(OAuthError::invalid_client(format!("the client assertion cannot be read: {why}")));
        }
    };
    let iss = unverified.issuer().ok_or_else(|| OAuthError::invalid_client("the client assertion cannot be read"))?;
    if client_id.is_some_and(|id| id != iss) {
        return Err(OAuthError::invalid_client("client_id differs from the assertion's issuer"));
    }
    let client = match s.client(iss).await? {
        Some(c) if c.kind == ClientKind::ConfidentialAsymmetric => c,
        _ => return Err(OAuthError::invalid_client("the assertion's issuer is not a registered asymmetric client")),
    };
    // A vendor that takes backend keys from a JWK Set URL only refuses a client whose keys were uploaded.
    let rules = s.config.profiles.rules(&client.profile.clone().unwrap_or_default());
    if rules.jwks_url_only() && client.jwks_url.is_none() {
        s.audit("client-authentication")
            .client(client.client_id.as_str())
            .refused()
            .record(format!("keys registered inline; the {} profile takes them from a JWK Set URL only", rules.name));
        return Err(OAuthError::invalid_client("this server takes client keys from a JWK Set URL only: register the app's jwks_url instead of its keys"));
    }
    let jwks = s.client_keys(&client).await.map_err(|why| {
        tracing::info!(client = %client.client_id, reason = %why, "client keys unavailable");
        OAuthError::invalid_client(why)
    })?;
    let assertion = unverified.verify(&client, &jwks, &s.config.endpoint("token"), s.now_ms() / 1000).map_err(|why| {
        tracing::info!(client = %client.client_id, reason = %why, "client assertion refused");
        s.audit("client-authentication").client(client.client_id.as_str()).refused().record(why.as_str());
        OAuthError::invalid_client(why)
    })?;
    // Kept while the assertion is accepted (`now` in whole seconds ≤ exp + SKEW) and one second more: the
    // record must not lapse within the last accepted second, or the same assertion is taken twice then.
    // The key starts with the assertion's `exp` (signed, so a replay carries the same): records land in
    // time order at the end of the index instead of each on a random page of it.
    let jti = Jti {
        key: format!("{:012x}|{}|{}", assertion.exp.max(0), assertion.client_id, assertion.jti),
        expires: (assertion.exp + crate::jose::SKEW + 1) * 1000,
    };
    Ok((client, jti))
}

/// The public client a refresh token belongs to, for a refresh request that carries no client
/// identification at all.
pub(crate) async fn public_refresh_client(s: &Shared, credentials: &Credentials, refresh_token: &str) -> Result<Option<Arc<Client>>, OAuthError> {
    if *credentials != Credentials::Anonymous {
        return Ok(None);
    }
    let Some(record) = s.store.auth_get("refresh", &token_key(refresh_token)).await? else { return Ok(None) };
    let Ok(grant) = serde_json::from_str::<Grant>(&record.value) else { return Ok(None) };
    Ok(s.client(&grant.client_id).await?.filter(|c| c.kind == ClientKind::Public))
}
