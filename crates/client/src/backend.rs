//! SMART Backend Services: `client_credentials` with a `private_key_jwt` assertion, the token cached until
//! shortly before it expires.

use crate::clock::Clock;
use crate::discovery::SmartConfiguration;
use crate::error::{Error, Result, Secret};
use crate::fhir::Fhir;
use crate::jose::SigningKey;
use crate::launch::{ClientAuth, token_request};
use crate::session::TokenSource;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A system-to-system client for one FHIR server.
pub struct BackendClient {
    http: reqwest::Client,
    iss: String,
    client_id: String,
    key: Arc<SigningKey>,
    scope: String,
    token_endpoint: tokio::sync::OnceCell<String>,
    cached: tokio::sync::Mutex<Option<(Secret, Instant)>>,
}

impl BackendClient {
    /// A client for the FHIR server `iss`, registered as `client_id` with `key`'s public JWK, asking for
    /// `scope` (`system/...` scopes).
    pub fn new(iss: &str, client_id: &str, key: Arc<SigningKey>, scope: &str) -> Result<Arc<BackendClient>> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Arc::new(BackendClient {
            http,
            iss: iss.trim_end_matches('/').to_string(),
            client_id: client_id.into(),
            key,
            scope: scope.into(),
            token_endpoint: tokio::sync::OnceCell::new(),
            cached: tokio::sync::Mutex::new(None),
        }))
    }

    async fn endpoint(&self) -> Result<&str> {
        self.token_endpoint
            .get_or_try_init(|| async { SmartConfiguration::fetch(&self.http, &self.iss).await.map(|c| c.token_endpoint) })
            .await
            .map(String::as_str)
    }

    async fn fetch(&self) -> Result<(Secret, Instant)> {
        let endpoint = self.endpoint().await?.to_string();
        let mut form = vec![("grant_type".to_string(), "client_credentials".to_string()), ("scope".into(), self.scope.clone())];
        let now = crate::clock::SystemClock.now_secs();
        let body = token_request(&self.http, &ClientAuth::PrivateKeyJwt(self.key.clone()), &self.client_id, &endpoint, now, &mut form).await?;
        let token = body["access_token"].as_str().ok_or_else(|| Error::Transport("no access_token".into()))?;
        let lifetime = body["expires_in"].as_u64().unwrap_or(300).min(86_400);
        // Renew 30 s before expiry (at half-life for tokens shorter than a minute).
        let keep = lifetime - (lifetime / 2).min(30);
        Ok((Secret::new(token), Instant::now() + Duration::from_secs(keep)))
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// FHIR access with this client's tokens.
    pub fn fhir(self: &Arc<Self>) -> Fhir {
        Fhir::new(self.http.clone(), self.clone())
    }
}

#[async_trait]
impl TokenSource for BackendClient {
    async fn token(&self) -> Result<Secret> {
        let mut cached = self.cached.lock().await;
        if let Some((t, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let fresh = self.fetch().await?;
        *cached = Some(fresh.clone());
        Ok(fresh.0)
    }

    async fn renew(&self, refused: &Secret) -> Result<()> {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|(t, _)| t != refused) {
            return Ok(());
        }
        *cached = Some(self.fetch().await?);
        Ok(())
    }

    fn base(&self) -> &str {
        &self.iss
    }
}
