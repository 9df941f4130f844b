//! One launch's tokens and context, and their lifecycle: proactive refresh before expiry, rotation (the new
//! refresh token is kept; the old one when none comes back), a typed error when refresh fails, revocation.

use crate::clock::SharedClock;
use crate::context::{LaunchContext, Tokens};
use crate::error::{Error, Result, Secret};
use crate::fhir::Fhir;
use crate::launch::{ClientAuth, token_request};
use async_trait::async_trait;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Refresh this long before the access token expires (half the lifetime for tokens shorter than two
/// minutes, so that short tokens are not refreshed on every call).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Lifetimes beyond a year are read as a year (no overflow from absurd `expires_in` values).
const MAX_LIFETIME_SECS: i64 = 365 * 86_400;

/// Something that can hand out a bearer token and renew it once it was refused.
#[async_trait]
pub trait TokenSource: Send + Sync {
    /// A token to send now.
    async fn token(&self) -> Result<Secret>;
    /// `refused` was refused (401): get a new token unless another call already did, or fail with a
    /// typed error.
    async fn renew(&self, refused: &Secret) -> Result<()>;
    /// The FHIR base the token is for.
    fn base(&self) -> &str;
}

struct TokenState {
    tokens: Tokens,
    /// When the access token expires (Unix ms, on the session's clock).
    expires_at: Option<i64>,
    /// The access token's whole lifetime, for the refresh margin.
    lifetime: Option<Duration>,
}

impl TokenState {
    /// The state of tokens received at `now_ms`.
    fn new(tokens: Tokens, now_ms: i64) -> TokenState {
        let lifetime = tokens.expires_in.map(|s| Duration::from_secs(s.clamp(0, MAX_LIFETIME_SECS) as u64));
        TokenState { expires_at: lifetime.map(|l| now_ms.saturating_add(l.as_millis() as i64)), lifetime, tokens }
    }

    fn margin(&self) -> Duration {
        self.lifetime.map_or(REFRESH_MARGIN, |l| REFRESH_MARGIN.min(l / 2))
    }

    /// How long the access token has left at `now_ms` (zero once expired), when its lifetime is known.
    fn left(&self, now_ms: i64) -> Option<Duration> {
        self.expires_at.map(|e| Duration::from_millis(e.saturating_sub(now_ms).max(0) as u64))
    }
}

/// What a session knows besides its tokens and context.
pub(crate) struct SessionParts {
    pub iss: String,
    pub client_id: String,
    pub auth: ClientAuth,
    pub token_endpoint: String,
    pub revocation_endpoint: Option<String>,
    pub requested_scope: String,
    /// The token response without its tokens.
    pub context_source: Value,
}

/// A session as saved by the app (server-side only: it contains the tokens; encrypt it at rest), to be
/// restored with [`crate::SmartClient::restore`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoredSession {
    /// The FHIR base.
    pub iss: String,
    /// The app's client id.
    pub client_id: String,
    /// The token endpoint.
    pub token_endpoint: String,
    /// The revocation endpoint, when the server has one.
    pub revocation_endpoint: Option<String>,
    /// The access token.
    pub access_token: Secret,
    /// The refresh token, when one is held.
    pub refresh_token: Option<Secret>,
    /// Unix seconds at which the access token expires, when known.
    pub expires_at: Option<i64>,
    /// The scopes requested (stand in for a missing granted `scope`).
    pub requested_scope: String,
    /// The token response without its tokens (the launch context).
    pub response: Value,
    /// The access token's whole lifetime in seconds, when known (for the refresh margin).
    #[serde(default)]
    pub lifetime: Option<i64>,
    /// The verified id_token claims.
    pub id_claims: Option<Value>,
}

struct Inner {
    http: reqwest::Client,
    clock: SharedClock,
    iss: String,
    client_id: String,
    auth: ClientAuth,
    token_endpoint: String,
    revocation_endpoint: Option<String>,
    requested_scope: String,
    context_source: Value,
    state: tokio::sync::Mutex<TokenState>,
    context: LaunchContext,
    id_claims: Option<Value>,
}

/// A completed launch. Cheap to clone; clones share the tokens.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("iss", &self.inner.iss)
            .field("client_id", &self.inner.client_id)
            .field("context", &self.inner.context)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(
        http: reqwest::Client,
        clock: SharedClock,
        parts: SessionParts,
        tokens: Tokens,
        context: LaunchContext,
        id_claims: Option<Value>,
    ) -> Session {
        let state = TokenState::new(tokens, clock.now_ms());
        Session::with_state(http, clock, parts, state, context, id_claims)
    }

    fn with_state(
        http: reqwest::Client,
        clock: SharedClock,
        parts: SessionParts,
        state: TokenState,
        context: LaunchContext,
        id_claims: Option<Value>,
    ) -> Session {
        Session {
            inner: Arc::new(Inner {
                http,
                clock,
                iss: parts.iss,
                client_id: parts.client_id,
                auth: parts.auth,
                token_endpoint: parts.token_endpoint,
                revocation_endpoint: parts.revocation_endpoint,
                requested_scope: parts.requested_scope,
                context_source: parts.context_source,
                state: tokio::sync::Mutex::new(state),
                context,
                id_claims,
            }),
        }
    }

    pub(crate) fn restore(http: reqwest::Client, clock: SharedClock, auth: ClientAuth, s: StoredSession) -> Session {
        let now = clock.now_secs();
        let tokens =
            Tokens { access_token: s.access_token, refresh_token: s.refresh_token, id_token: None, expires_in: s.expires_at.map(|e| e.saturating_sub(now)) };
        let context = LaunchContext::from_response(&s.response, &s.requested_scope, s.id_claims.as_ref());
        let parts = SessionParts {
            iss: s.iss,
            client_id: s.client_id,
            auth,
            token_endpoint: s.token_endpoint,
            revocation_endpoint: s.revocation_endpoint,
            requested_scope: s.requested_scope,
            context_source: s.response,
        };
        let mut state = TokenState::new(tokens, clock.now_ms());
        if let Some(l) = s.lifetime {
            state.lifetime = Some(Duration::from_secs(l.clamp(0, MAX_LIFETIME_SECS) as u64));
        }
        Session::with_state(http, clock, parts, state, context, s.id_claims)
    }

    /// The session as data for the app's session store (tokens included: keep it server-side, encrypted).
    pub async fn to_stored(&self) -> StoredSession {
        let state = self.inner.state.lock().await;
        StoredSession {
            iss: self.inner.iss.clone(),
            client_id: self.inner.client_id.clone(),
            token_endpoint: self.inner.token_endpoint.clone(),
            revocation_endpoint: self.inner.revocation_endpoint.clone(),
            access_token: state.tokens.access_token.clone(),
            refresh_token: state.tokens.refresh_token.clone(),
            expires_at: state.expires_at.map(|e| e.div_euclid(1000)),
            lifetime: state.lifetime.map(|l| l.as_secs() as i64),
            requested_scope: self.inner.requested_scope.clone(),
            response: self.inner.context_source.clone(),
            id_claims: self.inner.id_claims.clone(),
        }
    }

    /// The launch context from the token response.
    pub fn context(&self) -> &LaunchContext {
        &self.inner.context
    }

    /// The verified `id_token` claims, when `openid` was granted.
    pub fn id_claims(&self) -> Option<&Value> {
        self.inner.id_claims.as_ref()
    }

    /// The FHIR base (`iss`) of this session.
    pub fn iss(&self) -> &str {
        &self.inner.iss
    }

    /// FHIR access with this session's token.
    pub fn fhir(&self) -> Fhir {
        Fhir::new(self.inner.http.clone(), Arc::new(self.clone()))
    }

    /// The EHR's style for embedded apps (`smart_style_url`), fetched without the token; `None` when the
    /// launch gave no style.
    pub async fn style(&self) -> Result<Option<Value>> {
        let Some(u) = &self.inner.context.smart_style_url else { return Ok(None) };
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            return Err(Error::Config(format!("smart_style_url is not an http(s) URL: {u}")));
        }
        let r = self.inner.http.get(u).header("accept", "application/json").send().await.map_err(Error::transport)?;
        if !r.status().is_success() {
            return Err(Error::Transport(format!("the style answered {}", r.status())));
        }
        r.json().await.map(Some).map_err(Error::transport)
    }

    /// Whether a refresh token is held.
    pub async fn can_refresh(&self) -> bool {
        self.inner.state.lock().await.tokens.refresh_token.is_some()
    }

    /// Seconds until the access token expires, when known.
    pub async fn expires_in(&self) -> Option<u64> {
        self.inner.state.lock().await.left(self.inner.clock.now_ms()).map(|d| d.as_secs())
    }

    /// The current access token, refreshed first when it expires within a minute and can be refreshed.
    pub async fn access_token(&self) -> Result<Secret> {
        let mut state = self.inner.state.lock().await;
        let left = state.left(self.inner.clock.now_ms());
        let due = left.is_some_and(|l| l < state.margin());
        if due && state.tokens.refresh_token.is_some() {
            self.refresh_locked(&mut state).await?;
        } else if left.is_some_and(|l| l.is_zero()) {
            return Err(Error::SessionEnded { detail: "the access token expired and there is no refresh token".into() });
        }
        Ok(state.tokens.access_token.clone())
    }

    /// Refreshes now (rotation-aware; asymmetric clients sign a fresh assertion).
    pub async fn refresh(&self) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        self.refresh_locked(&mut state).await
    }

    async fn refresh_locked(&self, state: &mut TokenState) -> Result<()> {
        let Some(rt) = state.tokens.refresh_token.clone() else {
            return Err(Error::RefreshFailed { detail: "no refresh token was issued".into() });
        };
        let mut form = vec![("grant_type".to_string(), "refresh_token".to_string()), ("refresh_token".into(), rt.expose().to_string())];
        let now = self.inner.clock.now_secs();
        let body = match token_request(&self.inner.http, &self.inner.auth, &self.inner.client_id, &self.inner.token_endpoint, now, &mut form).await {
            Ok(b) => b,
            Err(Error::Transport(t)) => return Err(Error::Transport(t)),
            Err(e) => {
                tracing::info!(iss = %self.inner.iss, client = %self.inner.client_id, "refresh refused");
                return Err(Error::RefreshFailed { detail: e.to_string() });
            }
        };
        let mut tokens = Tokens::from_response(&body).ok_or_else(|| Error::RefreshFailed { detail: "the refresh response has no access_token".into() })?;
        if tokens.refresh_token.is_none() {
            // No rotation (or an Epic-style response without one): the old refresh token stays valid.
            tokens.refresh_token = Some(rt);
        }
        *state = TokenState::new(tokens, self.inner.clock.now_ms());
        tracing::info!(iss = %self.inner.iss, client = %self.inner.client_id, "access token refreshed");
        Ok(())
    }

    /// Revokes the refresh token (or the access token when there is none) at sign-out (RFC 7009).
    pub async fn revoke(&self) -> Result<()> {
        let Some(endpoint) = &self.inner.revocation_endpoint else { return Ok(()) };
        let state = self.inner.state.lock().await;
        let (token, hint) = match &state.tokens.refresh_token {
            Some(rt) => (rt.clone(), "refresh_token"),
            None => (state.tokens.access_token.clone(), "access_token"),
        };
        let mut form = vec![("token".to_string(), token.expose().to_string()), ("token_type_hint".into(), hint.into())];
        let req = self.inner.http.post(endpoint);
        let req = self.inner.auth.apply(&self.inner.client_id, endpoint, self.inner.clock.now_secs(), &mut form, req)?;
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form.iter()).finish();
        let r = req.header("content-type", "application/x-www-form-urlencoded").body(body).send().await.map_err(Error::transport)?;
        if !r.status().is_success() {
            return Err(Error::OAuth { code: r.status().as_u16().to_string(), description: "revocation failed".into() });
        }
        Ok(())
    }
}

#[async_trait]
impl TokenSource for Session {
    async fn token(&self) -> Result<Secret> {
        self.access_token().await
    }

    async fn renew(&self, refused: &Secret) -> Result<()> {
        let mut state = self.inner.state.lock().await;
        if state.tokens.access_token != *refused {
            // Another call already renewed it.
            return Ok(());
        }
        self.refresh_locked(&mut state).await.map_err(|e| match e {
            Error::RefreshFailed { detail } => Error::SessionEnded { detail },
            other => other,
        })
    }

    fn base(&self) -> &str {
        &self.inner.iss
    }
}
