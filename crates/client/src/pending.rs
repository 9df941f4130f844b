//! Authorisation requests between the redirect to the EHR and the callback, keyed by `state`. Pluggable so
//! an app running on several nodes keeps them in its database; [`MemoryPendingStore`] for one process.

use crate::error::{Result, Secret};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the callback needs to finish an authorisation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingAuthorization {
    /// The FHIR base the launch is for (the `iss`).
    pub iss: String,
    /// The authorisation server's issuer for RFC 9207 `iss` checks (the FHIR base for SMART servers).
    pub issuer: String,
    /// The app's client id at this EHR.
    pub client_id: String,
    /// The redirect URI the request named (sent again with the code).
    pub redirect_uri: String,
    /// The scopes requested.
    pub scope: String,
    /// The PKCE verifier.
    pub code_verifier: Secret,
    /// The OpenID Connect nonce the id_token must carry.
    pub nonce: String,
    /// Where the code is exchanged.
    pub token_endpoint: String,
    /// Hash of the browser secret the launch was bound to (see [`crate::SmartClient::ehr_launch_bound`]).
    #[serde(default)]
    pub browser_binding: Option<String>,
    /// The server said it sends `iss` with every answer (RFC 9207, `authorization_response_iss_parameter_supported`):
    /// a callback without one is refused.
    #[serde(default)]
    pub iss_required: bool,
    /// When it expires (Unix seconds); kept so that putting it back does not make it live longer.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// Where pending authorisations wait for their callback. `take` must remove what it returns (one use).
#[async_trait]
pub trait PendingStore: Send + Sync {
    /// Keeps `pending` under `state` for `ttl`.
    async fn put(&self, state: &str, pending: PendingAuthorization, ttl: Duration) -> Result<()>;
    /// Removes and returns what is kept under `state`, unless it expired.
    async fn take(&self, state: &str) -> Result<Option<PendingAuthorization>>;
}

/// In-process pending authorisations with expiry.
#[derive(Default)]
pub struct MemoryPendingStore {
    map: std::sync::Mutex<HashMap<String, (Instant, PendingAuthorization)>>,
}

impl MemoryPendingStore {
    /// An empty store.
    pub fn new() -> MemoryPendingStore {
        MemoryPendingStore::default()
    }
}

#[async_trait]
impl PendingStore for MemoryPendingStore {
    async fn put(&self, state: &str, pending: PendingAuthorization, ttl: Duration) -> Result<()> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, (until, _)| *until > now);
        map.insert(state.to_string(), (now + ttl, pending));
        Ok(())
    }

    async fn take(&self, state: &str) -> Result<Option<PendingAuthorization>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.remove(state).filter(|(until, _)| *until > Instant::now()).map(|(_, p)| p))
    }
}
