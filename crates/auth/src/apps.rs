//! App registration: apps declared in a version-controlled TOML file per environment (secrets come from
//! environment variables, never from the file), and RFC 7591 dynamic registration.

use crate::crypto::random_token;
use crate::model::{Client, ClientKind};
use crate::{ErrorCode, OAuthError, Shared, registry};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use store::{AuthStore, StoreError};

/// A JWKS in the apps file: JSON text, or the same structure written as TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum JwksField {
    /// The JSON text of a JWK Set.
    Text(String),
    /// A JWK Set written as a TOML table.
    Table(Value),
}

/// One `[[app]]` of an apps file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppEntry {
    /// The client id (stable across environments).
    pub client_id: String,
    /// The name people see (EHR app list, consent page).
    pub name: String,
    /// `public`, `confidential-symmetric` or `confidential-asymmetric`.
    #[serde(rename = "type")]
    pub kind: ClientKind,
    /// Where the authorisation code may go; not needed by backend-services apps
    /// (confidential-asymmetric with no user-facing flow).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Where the EHR opens the app for a launch (`?iss=…&launch=…`).
    #[serde(default)]
    pub launch_url: Option<String>,
    /// The most the app may be granted.
    pub scope: String,
    /// For symmetric apps: the environment variable that holds the secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// For asymmetric apps: the JWKS, as JSON text or as a TOML table (or give `jwks_url`).
    #[serde(default)]
    pub jwks: Option<JwksField>,
    /// Where the app publishes its public keys (instead of `jwks`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A logo URL for the EHR's app list.
    #[serde(default)]
    pub icon: Option<String>,
    /// Registered disabled (not offered in charts and the portal until enabled in the EHR). Applies when
    /// the app is first registered; afterwards the EHR's Enable/Disable stands across restarts.
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppsFile {
    #[serde(default)]
    app: Vec<AppEntry>,
    /// The EHR's decision-support services (`[[cds_service]]`), registered by the EHR, not here.
    #[serde(default, rename = "cds_service")]
    _cds_service: Vec<serde::de::IgnoredAny>,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    /// The registration is not valid (the reason, for its author).
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Checks a redirect URI: absolute, no fragment, https — or http on a loopback host, for development.
pub fn valid_redirect_uri(uri: &str) -> bool {
    let Ok(u) = url::Url::parse(uri) else { return false };
    if u.fragment().is_some() {
        return false;
    }
    match u.scheme() {
        "https" => true,
        "http" => matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")),
        // Native apps' private-use schemes (RFC 8252 §7.1) contain a dot.
        other => other.contains('.'),
    }
}

/// Checks a registration: names, redirect URIs, scopes, keys.
pub fn validate(c: &Client) -> Result<(), String> {
    if c.client_id.is_empty() || c.name.is_empty() {
        return Err("client_id and name are required".into());
    }
    if c.redirect_uris.is_empty() && c.kind != ClientKind::ConfidentialAsymmetric {
        return Err(format!("{}: at least one redirect URI is required", c.client_id));
    }
    if let Some(bad) = c.redirect_uris.iter().find(|u| !valid_redirect_uri(u)) {
        return Err(format!("{}: redirect URI '{bad}' must be absolute https (or http on localhost) without a fragment", c.client_id));
    }
    let scopes = smart::ScopeSet::parse(&c.allowed_scope);
    if let Some(e) = scopes.invalid.first() {
        return Err(format!("{}: {e}", c.client_id));
    }
    if c.kind == ClientKind::ConfidentialAsymmetric && c.jwks.is_none() && c.jwks_url.is_none() {
        return Err(format!("{}: an asymmetric app needs its JWKS or a JWKS URL", c.client_id));
    }
    if let Some(jwks) = &c.jwks
        && crate::jose::usable_keys(jwks) == 0
    {
        return Err(format!("{}: the JWKS holds no usable public key (RSA of 2048 bits or more for RS384, or EC P-384 for ES384)", c.client_id));
    }
    for (what, u) in [("launch URL", &c.launch_url), ("icon URL", &c.icon)] {
        if let Some(u) = u
            && !url::Url::parse(u).is_ok_and(|x| matches!(x.scheme(), "https" | "http"))
        {
            return Err(format!("{}: the {what} must be an http(s) URL", c.client_id));
        }
    }
    if let Some(u) = &c.jwks_url {
        let ok = url::Url::parse(u)
            .is_ok_and(|x| x.scheme() == "https" || (x.scheme() == "http" && matches!(x.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))));
        if !ok {
            return Err(format!("{}: the JWKS URL must be https (or http on localhost)", c.client_id));
        }
    }
    Ok(())
}

/// Loads an apps file and registers (or updates) every app in it. A symmetric app's secret is read from
/// the environment variable it names.
pub async fn load_apps_file(store: &dyn AuthStore, text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Vec<String>, AppsError> {
    let file: AppsFile = toml::from_str(text).map_err(|e| AppsError::Invalid(format!("apps file: {e}")))?;
    let mut ids = Vec::new();
    for entry in file.app {
        let jwks = match &entry.jwks {
            Some(JwksField::Text(text)) => {
                Some(serde_json::from_str::<Value>(text).map_err(|e| AppsError::Invalid(format!("{}: jwks is not JSON: {e}", entry.client_id)))?)
            }
            Some(JwksField::Table(v)) => Some(v.clone()),
            None => None,
        };
        if entry.secret_env.is_some() && entry.kind != ClientKind::ConfidentialSymmetric {
            return Err(AppsError::Invalid(format!("{}: secret_env is for confidential-symmetric apps only; this one is {:?}", entry.client_id, entry.kind)));
        }
        let secret_hash = match (entry.kind, &entry.secret_env) {
            (ClientKind::ConfidentialSymmetric, Some(var)) => {
                let secret =
                    env(var).ok_or_else(|| AppsError::Invalid(format!("{}: the environment variable {var} holding its secret is not set", entry.client_id)))?;
                Some(crate::crypto::hash_password(&secret))
            }
            (ClientKind::ConfidentialSymmetric, None) => {
                return Err(AppsError::Invalid(format!("{}: a confidential-symmetric app needs secret_env", entry.client_id)));
            }
            _ => None,
        };
        // The file adds apps and updates what it states; the EHR's runtime choices (enabled or disabled, the
        // default vendor profile) stand across restarts.
        let existing = registry::stored_client(store, &entry.client_id).await?;
        let client = Client {
            client_id: entry.client_id,
            name: entry.name,
            kind: entry.kind,
            secret_hash,
            redirect_uris: entry.redirect_uris,
            launch_url: entry.launch_url,
            allowed_scope: entry.scope,
            jwks,
            jwks_url: entry.jwks_url,
            icon: entry.icon,
            disabled: existing.as_ref().map_or(entry.disabled, |c| c.disabled),
            profile: existing.and_then(|c| c.profile.clone()),
            self_registered: false,
        };
        validate(&client).map_err(AppsError::Invalid)?;
        registry::put_client_as_is(store, &client).await?;
        ids.push(client.client_id);
    }
    Ok(ids)
}

/// Registers an app given on the command line or through the API; returns the secret of a symmetric app
/// (shown once).
pub async fn register(store: &dyn AuthStore, client: Client) -> Result<Option<String>, AppsError> {
    validate(&client).map_err(AppsError::Invalid)?;
    Ok(registry::put_client(store, client).await?)
}

/// Disables (or enables again) a registered app; `false` when there is none. A disabled app can neither
/// launch nor get tokens, and every grant it holds is revoked now: its access tokens stop working at once,
/// and enabling it again does not bring them back. Returns the grants revoked.
pub async fn set_disabled(s: &Shared, client_id: &str, disabled: bool, by: Option<&str>) -> Result<Option<usize>, StoreError> {
    let Some(mut client) = registry::stored_client(s.store.as_ref(), client_id).await? else { return Ok(None) };
    client.disabled = disabled;
    registry::put_client_as_is(s.store.as_ref(), &client).await?;
    // After the change is stored: a token issued meanwhile is revoked too (or refused on use, see
    // `AuthServer::resolve`).
    let revoked = if disabled { revoke_grants(s, client_id).await? } else { 0 };
    s.audit(if disabled { "app-disabled" } else { "app-enabled" }).client(client_id).user(by).record(if disabled {
        format!("disabled; {revoked} grant(s) revoked")
    } else {
        "enabled".into()
    });
    Ok(Some(revoked))
}

/// Removes a registration and revokes every grant it held, so that an app registered again under the
/// same client id starts with none. Returns the grants revoked.
pub async fn remove(s: &Shared, client_id: &str, by: Option<&str>) -> Result<usize, StoreError> {
    // Disabled first (no new tokens), then its grants revoked, then removed: a revocation that fails
    // leaves the app registered and disabled, for the removal to be tried again.
    if let Some(mut client) = registry::stored_client(s.store.as_ref(), client_id).await? {
        client.disabled = true;
        registry::put_client_as_is(s.store.as_ref(), &client).await?;
    }
    let revoked = revoke_grants(s, client_id).await?;
    registry::remove_client(s.store.as_ref(), client_id).await?;
    s.audit("app-removed").client(client_id).user(by).record(format!("removed; {revoked} grant(s) revoked"));
    Ok(revoked)
}

async fn revoke_grants(s: &Shared, client_id: &str) -> Result<usize, StoreError> {
    let grants = crate::grants::of_client(s.store.as_ref(), client_id, s.now_ms()).await?;
    for id in &grants {
        s.revoke_grant(id).await?;
    }
    Ok(grants.len())
}

/// The most a self-registered app may be granted: patient-level access and launch/identity scopes. `user/`
/// and `system/` access needs an app registered by an administrator (apps file or `kindling apps add`).
const DYNAMIC_CEILING: &str = "launch launch/patient launch/encounter openid fhirUser profile offline_access online_access patient/*.cruds";

/// RFC 7591 dynamic client registration.
pub async fn register_endpoint(State(s): State<Shared>, body: axum::body::Bytes) -> Result<Response, OAuthError> {
    let bad = |error: ErrorCode, msg: &str| Err(OAuthError::registration(error, msg.to_string()));
    // Parsed here, not by an extractor, so that every refusal is RFC 7591 JSON.
    let m: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return bad(ErrorCode::InvalidClientMetadata, "the registration must be a JSON object"),
        Err(e) => return bad(ErrorCode::InvalidClientMetadata, &format!("the registration is not valid JSON: {e}")),
    };
    for field in ["client_name", "token_endpoint_auth_method", "scope", "jwks_uri", "initiate_login_uri", "logo_uri"] {
        if m.get(field).is_some_and(|v| !v.is_string()) {
            return bad(ErrorCode::InvalidClientMetadata, &format!("{field} must be a string"));
        }
    }
    if m.get("redirect_uris").is_some_and(|v| !v.as_array().is_some_and(|a| a.iter().all(Value::is_string))) {
        return bad(ErrorCode::InvalidRedirectUri, "redirect_uris must be an array of strings");
    }
    if m.get("jwks").is_some_and(|v| !v["keys"].is_array()) {
        return bad(ErrorCode::InvalidClientMetadata, "jwks must be a JWK set: an object with a keys array");
    }
    // A self-registered app's keys URL is fetched by this server: https only, and (at fetch time) public
    // addresses only.
    if let Some(uri) = m["jwks_uri"].as_str() {
        let ok = url::Url::parse(uri).is_ok_and(|u| u.scheme() == "https" && u.host().is_some() && u.username().is_empty() && u.password().is_none());
        if !ok {
            return bad(ErrorCode::InvalidClientMetadata, "jwks_uri must be an https URL");
        }
    }
    let redirect_uris: Vec<String> =
        m["redirect_uris"].as_array().map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_string)).collect()).unwrap_or_default();
    let method = m["token_endpoint_auth_method"].as_str().unwrap_or("client_secret_basic");
    let kind = match method {
        "none" => ClientKind::Public,
        "client_secret_basic" | "client_secret_post" => ClientKind::ConfidentialSymmetric,
        "private_key_jwt" => ClientKind::ConfidentialAsymmetric,
        other => return bad(ErrorCode::InvalidClientMetadata, &format!("token_endpoint_auth_method '{other}' is not supported")),
    };
    let scope = match m["scope"].as_str() {
        Some(requested) => smart::ScopeSet::parse(DYNAMIC_CEILING).narrow(&smart::ScopeSet::parse(requested)).to_string(),
        None => DYNAMIC_CEILING.to_string(),
    };
    let client = Client {
        client_id: uuid::Uuid::new_v4().to_string(),
        name: m["client_name"].as_str().unwrap_or("Unnamed app").to_string(),
        kind,
        secret_hash: None,
        redirect_uris,
        launch_url: m["initiate_login_uri"].as_str().map(str::to_string),
        allowed_scope: scope,
        jwks: m.get("jwks").cloned(),
        jwks_url: m["jwks_uri"].as_str().map(str::to_string),
        icon: m["logo_uri"].as_str().map(str::to_string),
        disabled: false,
        profile: None,
        self_registered: true,
    };
    let invalid_redirect =
        client.redirect_uris.iter().any(|u| !valid_redirect_uri(u)) || (client.redirect_uris.is_empty() && kind != ClientKind::ConfidentialAsymmetric);
    if invalid_redirect {
        return bad(ErrorCode::InvalidRedirectUri, "redirect_uris must be absolute https URLs (or http on localhost) without fragments");
    }
    let secret = match register(s.store.as_ref(), client.clone()).await {
        Ok(secret) => secret,
        Err(AppsError::Invalid(msg)) => return bad(ErrorCode::InvalidClientMetadata, &msg),
        Err(AppsError::Store(e)) => return Err(e.into()),
    };
    tracing::info!(client = %client.client_id, kind = ?client.kind, "app registered dynamically");
    let mut body = json!({
        "client_id": client.client_id,
        "client_id_issued_at": s.now_ms() / 1000,
        "client_name": client.name,
        "redirect_uris": client.redirect_uris,
        "token_endpoint_auth_method": method,
        "grant_types": ["authorization_code", "refresh_token"],
        "scope": client.allowed_scope,
    });
    if let Some(secret) = secret {
        body["client_secret"] = json!(secret);
        body["client_secret_expires_at"] = json!(0);
    }
    let mut r = (StatusCode::CREATED, Json(body)).into_response();
    crate::no_store(&mut r);
    Ok(r)
}

/// A fresh client id for apps added on the command line without one.
pub fn new_client_id() -> String {
    random_token()[..22].to_string()
}
