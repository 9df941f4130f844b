//! Token introspection (RFC 7662, as SMART App Launch 2.2 profiles it).

use crate::client_auth::authenticate_client;
use crate::model::{ClientKind, Grant};
use crate::token::request::{Credentials, Form};
use crate::{OAuthError, Shared, no_store};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Who asks: a client that authenticated, or the client of a live access token sent as `Bearer`.
enum Caller {
    /// A confidential client an administrator registered (a resource server): told about any token.
    ResourceServer,
    /// Any other client (a public client's id proves nothing; a bearer token is its app's): told only
    /// about its own app's tokens, so that one app's token (or a public client id anyone can send) does
    /// not describe what other apps hold.
    Client(String),
}

/// Introspection is for authenticated clients, or callers holding a live access token (SMART 2.2).
async fn caller(s: &Shared, headers: &HeaderMap, credentials: &Credentials) -> Result<Caller, OAuthError> {
    let refused = || OAuthError::invalid_client("introspection needs client authentication or a bearer token");
    if let Some(bearer) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) {
        return match s.access_grant(bearer.trim()).await? {
            Some(g) => Ok(Caller::Client(g.client_id)),
            None => Err(refused()),
        };
    }
    match authenticate_client(s, credentials).await {
        Ok(c) if c.kind != ClientKind::Public && !c.self_registered => Ok(Caller::ResourceServer),
        Ok(c) => Ok(Caller::Client(c.client_id.clone())),
        // A storage failure stays a 503 (or 500); any other refusal is the same 401.
        Err(e) if e.is_server_side() => Err(e),
        Err(_) => Err(refused()),
    }
}

pub async fn introspect(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, OAuthError> {
    let mut form = Form::parse(&body)?;
    let token = form.take("token").unwrap_or_default();
    let caller = caller(&s, &headers, &Credentials::parse(&headers, &mut form)).await?;
    let hash = crate::crypto::token_key(&token);
    let mut found = None;
    for kind in ["access", "refresh"] {
        if let Some(r) = s.store.auth_get(kind, &hash).await?
            && !(r.revoked || kind == "refresh" && r.used)
        {
            found = Some((kind, r));
            break;
        }
    }
    let now = s.now_ms();
    // A grant whose injected revocation time has passed is revoked, whether or not the FHIR API has seen
    // one of its tokens since.
    let body = match found
        .and_then(|(kind, r)| serde_json::from_str::<Grant>(&r.value).ok().map(|g| (kind, r, g)))
        .filter(|(_, _, g)| g.revoke_at.is_none_or(|at| at > now))
        .filter(|(_, _, g)| match &caller {
            Caller::ResourceServer => true,
            Caller::Client(id) => *id == g.client_id,
        }) {
        None => json!({"active": false}),
        Some((kind, record, grant)) => {
            let mut v = json!({
                "active": true,
                "client_id": grant.client_id,
                "scope": grant.scope,
                "token_type": if kind == "access" { "Bearer" } else { "refresh_token" },
                "iss": s.config.issuer_for(&grant.profile()),
                "aud": s.config.fhir_base_for(&grant.profile()),
            });
            if let Some(exp) = record.expires {
                v["exp"] = json!(exp / 1000);
            }
            if let Some(u) = &grant.username {
                v["sub"] = json!(u);
                v["username"] = json!(u);
            }
            if let Some(fu) = &grant.fhir_user {
                v["fhirUser"] = json!(format!("{}/{fu}", s.config.fhir_base_for(&grant.profile())));
            }
            if let Some(p) = &grant.patient {
                v["patient"] = json!(p);
            }
            if let Some(e) = &grant.encounter {
                v["encounter"] = json!(e);
            }
            v
        }
    };
    let mut r = Json::<Value>(body).into_response();
    no_store(&mut r);
    Ok(r)
}
