//! Kindling's SMART App Launch 2.2 authorisation server.
//!
//! Discovery (`/fhir/.well-known/smart-configuration`, OpenID configuration, JWKS), the authorisation
//! endpoint with sign-in, patient picker and consent pages, the token endpoint (`authorization_code` with
//! PKCE S256, `refresh_token` with rotation and reuse detection), introspection (RFC 7662), revocation
//! (RFC 7009), and the EHR's launch-context API. All state lives in the [`store::AuthStore`], so any node
//! can finish a flow another began. [`AuthServer`] also resolves bearer tokens for the FHIR API.
#![deny(missing_docs)]

pub mod accounts;
pub mod apps;
mod audit;
mod authorize;
mod client_auth;
pub mod crypto;
mod discovery;
pub use discovery::{discovery_response, openid_configuration_document, smart_configuration_document};
pub mod error;
pub mod grants;
mod introspect;
pub mod jose;
pub mod keys;
pub mod launch;
pub mod model;
pub mod outbound;
pub mod pages;
pub mod profile;
pub use token::{CDS_TOKEN_SECS, cds_authorization, operator_tokens};
pub mod registry;
mod revoke;
pub mod session;
mod token;

use api::access::{AccessResolver, TokenAccess};
use async_trait::async_trait;
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fhir::time::{SharedClock, unix_ms};
use model::Grant;
use std::sync::Arc;
use store::Store;

pub use audit::Audit;
pub use error::{ErrorCode, OAuthError};

/// Lifetimes and addresses.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The server's externally visible base, e.g. `http://127.0.0.1:8080`.
    pub public_url: String,
    /// The FHIR base (`{public_url}/fhir`): the `aud` apps must ask for, the `iss` of launches and tokens.
    pub fhir_base: String,
    /// Lifetime of access tokens issued to people's apps (seconds).
    pub access_token_secs: i64,
    /// Backend-services (client_credentials) tokens.
    pub backend_token_secs: i64,
    /// Lifetime of authorisation codes (seconds).
    pub code_secs: i64,
    /// Lifetime of EHR launch handles (seconds).
    pub launch_secs: i64,
    /// Lifetime of refresh tokens (days).
    pub refresh_token_days: i64,
    /// Where a user sees and withdraws the apps they authorised (SMART's `management_endpoint`); the EHR
    /// layer serves it.
    pub manage_url: Option<String>,
    /// The vendor profiles launches and apps may follow (the shipped ones, plus `--profiles DIR`).
    pub profiles: Arc<profile::Profiles>,
}

impl AuthConfig {
    /// The defaults for a server at `public_url`.
    pub fn new(public_url: &str) -> AuthConfig {
        let public_url = public_url.trim_end_matches('/').to_string();
        AuthConfig {
            fhir_base: format!("{public_url}/fhir"),
            public_url,
            access_token_secs: 3600,
            backend_token_secs: 300,
            code_secs: 60,
            launch_secs: 300,
            refresh_token_days: 90,
            manage_url: None,
            profiles: Arc::new(profile::Profiles::builtin()),
        }
    }

    /// An absolute URL of this server (`{public_url}/auth/{path}`).
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}/auth/{path}", self.public_url)
    }

    /// Every FHIR base this server answers at: its own, then each profile's.
    pub fn fhir_bases(&self) -> Vec<String> {
        std::iter::once(self.fhir_base.clone()).chain(self.profiles.all().iter().filter_map(|p| p.fhir_base(&self.public_url))).collect()
    }

    /// The profile whose FHIR base `base` is (strict for this server's own).
    pub fn profile_at(&self, base: &str) -> Option<profile::Profile> {
        if base == self.fhir_base {
            return Some(profile::Profile::strict());
        }
        self.profiles.all().iter().find(|p| p.fhir_base(&self.public_url).as_deref() == Some(base)).map(|p| profile::Profile::named(&p.name))
    }

    /// The FHIR base an app meets under `profile`: the profile's own server when it has one (Epic's
    /// `…/api/FHIR/R4`, Oracle's tenant path), else [`AuthConfig::fhir_base`]. Launches send it as `iss`
    /// and apps ask for it as `aud`.
    pub fn fhir_base_for(&self, profile: &profile::Profile) -> String {
        self.profiles.rules(profile).fhir_base(&self.public_url).unwrap_or_else(|| self.fhir_base.clone())
    }

    /// The authorisation server's issuer under `profile`: the `iss` of its id_tokens and authorisation
    /// responses, and the `issuer` of its discovery (Epic's `…/oauth2`; else the profile's FHIR base).
    pub fn issuer_for(&self, profile: &profile::Profile) -> String {
        let rules = self.profiles.rules(profile);
        rules.issuer(&self.public_url).or_else(|| rules.fhir_base(&self.public_url)).unwrap_or_else(|| self.fhir_base.clone())
    }
}

/// The SMART authorisation server: its configuration, keys and store, and the clients it has resolved recently.
pub struct AuthServer {
    /// Where its state lives (shared with the FHIR API).
    pub store: Arc<dyn Store>,
    /// Lifetimes and addresses.
    pub config: AuthConfig,
    /// The signing keys (id_tokens) and their JWKS.
    pub keys: keys::Keys,
    /// "Now".
    pub clock: SharedClock,
    /// Renders the sign-in, picker, consent and error pages (the EHR layer provides it).
    pub pages: Arc<dyn pages::Pages>,
    /// Tokens resolved in the last second, by hash: repeated requests with one token skip the store.
    /// One second bounds how long a revocation on another node goes unnoticed here.
    resolved: std::sync::Mutex<std::collections::HashMap<String, (i64, Arc<TokenAccess>)>>,
    pub(crate) audit: Option<store::audit::AuditSink>,
    /// For clients' JWKS URLs: fenced against reaching into the server's own network.
    outbound: outbound::Fetcher,
    /// Fetched JWKS by URL, with the time (Unix ms) until which their Cache-Control allows keeping them.
    jwks_cache: std::sync::Mutex<std::collections::HashMap<String, (i64, serde_json::Value)>>,
    /// Registered clients read in the last second, by id, for the token endpoint (see [`AuthServer::client`]).
    clients: std::sync::Mutex<std::collections::HashMap<String, CachedClient>>,
    /// Injected FHIR faults by grant, so that "every second request" counts across cache refreshes.
    fhir_faults: std::sync::Mutex<std::collections::HashMap<String, Arc<api::access::FhirFaults>>>,
    /// A vendor profile's FHIR request budgets, by profile and client: one per app, whatever its tokens.
    budgets: std::sync::Mutex<std::collections::HashMap<(String, String), Arc<api::access::Budget>>>,
}

/// A registration as the token endpoint read it: when (Unix ms), and [`registry::CHANGES`] then.
struct CachedClient {
    at: i64,
    changes: u64,
    client: Arc<model::Client>,
}

/// How long a resolved token is trusted without asking the store again (revocation latency per node).
const RESOLVE_CACHE_MS: i64 = 1000;
/// The auth-record kind that marks a grant revoked (keyed by grant id, kept as long as any of its tokens
/// could live).
pub const REVOKED_GRANT: &str = "grant-revoked";
const RESOLVE_CACHE_MAX: usize = 10_000;

/// The authorisation server as the routers' state.
pub type Shared = Arc<AuthServer>;

impl AuthServer {
    /// Builds the server: loads (or generates) its signing key from the store.
    pub async fn new(
        store: Arc<dyn Store>,
        config: AuthConfig,
        clock: SharedClock,
        audit: Option<store::audit::AuditSink>,
        pages: Arc<dyn pages::Pages>,
    ) -> Result<Shared, keys::KeyError> {
        let keys = keys::Keys::load_or_create(store.as_ref(), unix_ms(clock.now())).await?;
        let outbound = outbound::Fetcher::new().map_err(|_| keys::KeyError::Crypto)?;
        Ok(Arc::new(AuthServer {
            store,
            config,
            keys,
            clock,
            pages,
            resolved: std::sync::Mutex::new(std::collections::HashMap::new()),
            audit,
            outbound,
            jwks_cache: std::sync::Mutex::new(std::collections::HashMap::new()),
            fhir_faults: std::sync::Mutex::new(std::collections::HashMap::new()),
            budgets: std::sync::Mutex::new(std::collections::HashMap::new()),
            clients: std::sync::Mutex::new(std::collections::HashMap::new()),
        }))
    }

    /// A registered, enabled client, as the token endpoint authenticates it: read from the store at most
    /// once a second per client (a backend service asks for tokens thousands of times a second). A change
    /// to a registration reaches the token endpoint within a second, like a revocation.
    pub async fn client(&self, client_id: &str) -> Result<Option<Arc<model::Client>>, store::StoreError> {
        let now = self.now_ms();
        let changes = registry::CHANGES.load(std::sync::atomic::Ordering::SeqCst);
        if let Some(c) = self.clients.lock().unwrap_or_else(|p| p.into_inner()).get(client_id)
            && now - c.at < RESOLVE_CACHE_MS
            && now >= c.at
            && c.changes == changes
        {
            return Ok(Some(c.client.clone()));
        }
        let Some(client) = registry::get_client(self.store.as_ref(), client_id).await?.map(Arc::new) else { return Ok(None) };
        let mut cache = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= RESOLVE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(client_id.to_string(), CachedClient { at: now, changes, client: client.clone() });
        Ok(Some(client))
    }

    /// A client's public keys: registered by value, or fetched from its registered JWKS URL and kept no
    /// longer than the response's `Cache-Control: max-age` allows (not at all without one). The error is
    /// the same whatever went wrong (see [`outbound`]); the reason is logged.
    pub async fn client_keys(&self, client: &model::Client) -> Result<serde_json::Value, String> {
        if let Some(jwks) = &client.jwks {
            return Ok(jwks.clone());
        }
        let url = client.jwks_url.as_deref().ok_or("the client has registered no keys")?;
        let now = self.now_ms();
        if let Some((until, jwks)) = self.jwks_cache.lock().unwrap_or_else(|p| p.into_inner()).get(url)
            && *until > now
        {
            return Ok(jwks.clone());
        }
        let (reach, https_only) = self.jwks_reach(client);
        let fetched = match self.outbound.jwks(url, reach, https_only).await {
            Ok(f) => f,
            Err(why) => {
                tracing::info!(client = %client.client_id, reason = %why, "the client's JWKS URL could not be used");
                return Err("the client's keys could not be obtained from its registered JWKS URL".into());
            }
        };
        if fetched.max_age > 0 {
            self.jwks_cache.lock().unwrap_or_else(|p| p.into_inner()).insert(url.to_string(), (now + fetched.max_age * 1000, fetched.jwks.clone()));
        }
        Ok(fetched.jwks)
    }

    /// Where a client's JWKS URL may point: public addresses over https for self-registered apps; private
    /// networks too for apps an administrator registered, and loopback only when this server itself runs on
    /// loopback (development).
    pub fn jwks_reach(&self, client: &model::Client) -> (outbound::Reach, bool) {
        if client.self_registered {
            return (outbound::Reach::PUBLIC, true);
        }
        (outbound::Reach { private: true, loopback: self.on_loopback() }, false)
    }

    /// Whether this server's public URL is on loopback (a developer's machine).
    pub fn on_loopback(&self) -> bool {
        url::Url::parse(&self.config.public_url).ok().and_then(|u| u.host().map(|h| h.to_owned())).is_some_and(|h| match h {
            url::Host::Domain(d) => d == "localhost",
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
        })
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        unix_ms(self.clock.now())
    }

    /// Revokes everything of a grant; this node forgets every token it resolved at once (others within
    /// [`RESOLVE_CACHE_MS`]).
    ///
    /// The revocation is recorded first ([`REVOKED_GRANT`]), then every token stored so far is revoked. A
    /// token being issued on this grant at the same moment (a refresh that spent its token just before)
    /// is stored before its issuer looks for that record ([`Shared::grant_revoked`]): either the sweep
    /// below finds the new token, or the issuer finds the record and revokes it itself.
    pub async fn revoke_grant(&self, grant_id: &str) -> Result<u64, store::StoreError> {
        let until = self.now_ms() + self.config.refresh_token_days.max(1) * 86_400_000;
        self.store.auth_put(REVOKED_GRANT, grant_id, "", None, Some(until)).await?;
        let n = self.store.auth_revoke_grant(grant_id).await?;
        self.resolved.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(n)
    }

    /// Whether the grant was revoked (see [`Shared::revoke_grant`]).
    pub async fn grant_revoked(&self, grant_id: &str) -> Result<bool, store::StoreError> {
        Ok(self.store.auth_get(REVOKED_GRANT, grant_id).await?.is_some())
    }

    /// The grant behind a live (unexpired, unrevoked) access token.
    pub async fn access_grant(&self, token: &str) -> Result<Option<Grant>, store::StoreError> {
        let Some(record) = self.store.auth_get("access", &crypto::token_key(token)).await? else { return Ok(None) };
        if record.revoked {
            return Ok(None);
        }
        Ok(serde_json::from_str(&record.value).ok())
    }
}

/// Bearer tokens for the FHIR API.
#[async_trait]
impl AccessResolver for AuthServer {
    async fn resolve(&self, bearer_token: &str) -> Result<Option<Arc<TokenAccess>>, store::StoreError> {
        let hash = crypto::token_key(bearer_token);
        let now = self.now_ms();
        if let Some((at, access)) = self.resolved.lock().unwrap_or_else(|p| p.into_inner()).get(&hash)
            && now - at < RESOLVE_CACHE_MS
            && now >= *at
        {
            return Ok(Some(access.clone()));
        }
        let Some(record) = self.store.auth_get("access", &hash).await? else { return Ok(None) };
        if record.revoked {
            return Ok(None);
        }
        let Ok(grant) = serde_json::from_str::<Grant>(&record.value) else { return Ok(None) };
        // An app disabled or removed since: its grants were revoked then, and this refuses a token issued
        // while that happened (the registration is cached for a second, as on the token endpoint).
        if self.client(&grant.client_id).await?.is_none() {
            return Ok(None);
        }
        if let Some(at) = grant.revoke_at
            && at <= now
        {
            // An injected revocation: from now on the grant is revoked like any other.
            let _ = self.revoke_grant(&grant.grant_id).await;
            self.audit("revoke").grant(&grant).record("tokens revoked by the server (injected fault)");
            return Ok(None);
        }
        let faults = grant.faults();
        let fhir_faults = (faults.fhir_delay_ms.is_some() || faults.fhir_error_status.is_some()).then(|| {
            let mut map = self.fhir_faults.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > RESOLVE_CACHE_MAX {
                map.clear();
            }
            map.entry(grant.grant_id.clone())
                .or_insert_with(|| {
                    Arc::new(api::access::FhirFaults::new(faults.fhir_error_status, faults.fhir_error_rate.unwrap_or(0.0), faults.fhir_delay_ms.unwrap_or(0)))
                })
                .clone()
        });
        let launch = grant.launch_id().map(str::to_string);
        let vendor = self.config.profiles.rules(&grant.profile()).fhir_rules().map(|mut v| {
            if v.requests_per_minute.is_some() {
                let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
                if budgets.len() > RESOLVE_CACHE_MAX {
                    // Budgets no cached token holds any more (the rest stay, so no app gets two at once).
                    budgets.retain(|_, b| Arc::strong_count(b) > 1);
                }
                v.budget = Some(budgets.entry((v.profile.clone(), grant.client_id.clone())).or_default().clone());
            }
            Arc::new(v)
        });
        let audience = Some(self.config.fhir_base_for(&grant.profile()));
        let access = Arc::new(TokenAccess {
            audience,
            client_id: grant.client_id,
            scopes: smart::ScopeSet::parse(&grant.scope),
            patient: grant.patient,
            fhir_user: grant.fhir_user,
            launch,
            faults: fhir_faults,
            vendor,
        });
        // Never trust a cached token past its own expiry (or its injected revocation).
        let until = match (record.expires, grant.revoke_at) {
            (Some(e), Some(r)) => Some(e.min(r)),
            (e, r) => e.or(r),
        };
        if until.is_none_or(|e| e > now + RESOLVE_CACHE_MS) {
            let mut cache = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= RESOLVE_CACHE_MAX {
                cache.retain(|_, (at, _)| now - *at < RESOLVE_CACHE_MS);
                if cache.len() >= RESOLVE_CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(hash, (now, access.clone()));
        }
        Ok(Some(access))
    }
}

/// Marks a response as never to be cached (RFC 6749 §5.1: `Cache-Control: no-store`, `Pragma: no-cache`).
pub fn no_store(r: &mut Response) {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Every error from an OAuth endpoint (token, introspection, revocation, registration, launch) is RFC 6749
/// JSON: a refusal produced outside the handlers (a body over the limit, a wrong method, ...) is plain
/// text, and becomes `invalid_request` JSON here.
async fn oauth_json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let text = match api::plain_error_text(response).await {
        Ok(text) => text,
        Err(structured) => return structured,
    };
    let code = if status.is_server_error() { ErrorCode::ServerError } else { ErrorCode::InvalidRequest };
    OAuthError::new(status, code, text).into_response()
}

/// The authorisation server's paths outside `/fhir/.well-known/` whose every answer, refusals included, is
/// JSON: the OAuth endpoints (RFC 6749 errors), the key set and the EHR style. Kept beside [`router`].
const JSON_PATHS: &[&str] =
    &["/auth/token", "/auth/introspect", "/auth/revoke", "/auth/token/revoke", "/auth/launch", "/auth/register", "/auth/jwks", "/auth/style.json"];

/// Whether the authorisation server answers `path` in JSON (so that a refusal made before it, such as
/// oversized headers, can answer in the same shape); the other `/auth` paths are pages for a person.
pub fn answers_json(path: &str) -> bool {
    path.starts_with("/fhir/.well-known/") || JSON_PATHS.contains(&path)
}

/// The largest body the OAuth endpoints read (a 413 in RFC 6749 JSON beyond): token requests, assertions,
/// registrations with a JWK Set and launch contexts are a few KiB.
pub const MAX_OAUTH_BODY: usize = 64 * 1024;

/// The routes of the authorisation server (mount at the server root).
pub fn router(server: Shared) -> Router {
    let oauth = Router::new()
        .route("/auth/token", post(token::token))
        .route("/auth/introspect", post(introspect::introspect))
        .route("/auth/revoke", post(revoke::revoke))
        // NextGen Enterprise's address for the same endpoint (its profile's discovery names it).
        .route("/auth/token/revoke", post(revoke::revoke))
        .route("/auth/launch", post(launch::create_launch))
        .route("/auth/register", post(apps::register_endpoint))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_OAUTH_BODY))
        .layer(axum::middleware::from_fn(oauth_json_errors));
    let pages = Router::new()
        .route("/auth/authorize", get(authorize::authorize_get).post(authorize::authorize_post))
        .route("/auth/login", post(authorize::login))
        .route("/auth/pick", post(authorize::pick))
        .route("/auth/consent", post(authorize::consent))
        .layer(axum::middleware::from_fn_with_state(server.clone(), authorize::page_errors));
    Router::new()
        .route("/fhir/.well-known/smart-configuration", get(discovery::smart_configuration))
        .route("/fhir/.well-known/openid-configuration", get(discovery::openid_configuration))
        .route("/auth/jwks", get(discovery::jwks))
        .route("/auth/style.json", get(discovery::style))
        .merge(pages)
        .merge(oauth)
        .with_state(server)
}

#[cfg(test)]
mod tests {
    /// The paths the router serves in a block of this file's `router` (between `start` and `end`).
    fn routes_between(start: &str, end: &str) -> Vec<String> {
        let src = include_str!("lib.rs");
        let from = src.find(start).expect("block start");
        let block = &src[from..from + src[from..].find(end).expect("block end")];
        block.split(".route(\"").skip(1).map(|r| r[..r.find('"').expect("closing quote")].to_string()).collect()
    }

    #[test]
    fn the_json_paths_are_the_routers_json_routes() {
        let oauth = routes_between("let oauth = Router::new()", "oauth_json_errors");
        let pages = routes_between("let pages = Router::new()", "page_errors");
        assert!(oauth.len() >= 5 && pages.len() >= 4, "{oauth:?} {pages:?}");
        for p in &oauth {
            assert!(super::answers_json(p), "{p} answers JSON errors");
        }
        for p in &pages {
            assert!(!super::answers_json(p), "{p} is a page for a person");
        }
        for p in ["/fhir/.well-known/smart-configuration", "/fhir/.well-known/openid-configuration", "/auth/jwks", "/auth/style.json"] {
            assert!(super::answers_json(p), "{p}");
        }
        assert!(!super::answers_json("/fhir/Patient") && !super::answers_json("/ehr/patients"));
    }
}
