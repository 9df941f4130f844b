//! Launching: EHR launch (`iss` + `launch`) and standalone launch build the authorisation request; the
//! callback checks `state` and RFC 9207 `iss`, turns errors into typed ones and exchanges the code.

use crate::clock::{SharedClock, SystemClock};
use crate::context::{LaunchContext, Tokens};
use crate::discovery::SmartConfiguration;
use crate::error::{Error, Result, Secret};
use crate::jose::{self, SigningKey};
use crate::pending::{PendingAuthorization, PendingStore};
use crate::session::Session;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the app authenticates at the token endpoint.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// A public app (browser or native): `client_id` only.
    Public,
    /// `client_secret_basic`.
    SecretBasic(Secret),
    /// `client_secret_post`.
    SecretPost(Secret),
    /// `private_key_jwt` with an RS384 or ES384 key; each request gets a fresh assertion.
    PrivateKeyJwt(Arc<SigningKey>),
}

impl ClientAuth {
    /// Adds this authentication to a request to `token_url` (form pairs and the request builder); an
    /// assertion is issued at `now` (Unix seconds).
    pub(crate) fn apply(
        &self,
        client_id: &str,
        token_url: &str,
        now: i64,
        form: &mut Vec<(String, String)>,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder> {
        match self {
            ClientAuth::Public => {
                form.push(("client_id".into(), client_id.into()));
                Ok(req)
            }
            ClientAuth::SecretBasic(secret) => {
                let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                Ok(req.basic_auth(enc(client_id), Some(enc(secret.expose()))))
            }
            ClientAuth::SecretPost(secret) => {
                form.push(("client_id".into(), client_id.into()));
                form.push(("client_secret".into(), secret.expose().into()));
                Ok(req)
            }
            ClientAuth::PrivateKeyJwt(key) => {
                form.push(("client_id".into(), client_id.into()));
                form.push(("client_assertion_type".into(), "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()));
                form.push(("client_assertion".into(), key.client_assertion_at(client_id, token_url, now)?));
                Ok(req)
            }
        }
    }
}

/// One EHR the app is configured for. Only these issuers are ever contacted.
#[derive(Clone, Debug)]
pub struct EhrConfig {
    /// The EHR's FHIR base URL, exactly as it sends it in `iss`.
    pub iss: String,
    /// The app's client id at this EHR.
    pub client_id: String,
    /// How the app authenticates at this EHR's token endpoint.
    pub auth: ClientAuth,
    /// The app's registered redirect URI at this EHR.
    pub redirect_uri: String,
    /// Scopes asked for in an EHR launch (`launch` is added when missing).
    pub ehr_scope: String,
    /// Scopes asked for in a standalone launch.
    pub standalone_scope: String,
}

/// Where to send the user's browser.
#[derive(Debug, Clone)]
pub enum AuthorizationRequest {
    /// Redirect the browser here (GET).
    #[allow(missing_docs)]
    Redirect { url: String, state: String },
    /// Auto-submit a form to `url` with these fields (POST; used for long scope strings when the server
    /// advertises `authorize-post`).
    #[allow(missing_docs)]
    Post { url: String, fields: Vec<(String, String)>, state: String },
}

impl AuthorizationRequest {
    /// The `state` of this request (the key of its pending authorisation).
    pub fn state(&self) -> &str {
        match self {
            AuthorizationRequest::Redirect { state, .. } | AuthorizationRequest::Post { state, .. } => state,
        }
    }
}

/// GET URLs longer than this go by POST when the server allows it.
const MAX_GET_URL: usize = 2000;
/// How long a pending authorisation waits for its callback.
const PENDING_TTL: Duration = Duration::from_secs(600);
/// How long a discovery document is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

/// The SMART side of an app: several EHRs, any number of concurrent launches, no global state.
pub struct SmartClient {
    ehrs: Vec<EhrConfig>,
    pending: Arc<dyn PendingStore>,
    http: reqwest::Client,
    discovery: std::sync::Mutex<HashMap<String, (Instant, Arc<SmartConfiguration>)>>,
    post_threshold: usize,
    clock: SharedClock,
    /// `jti`s of the CDS Hooks calls verified lately, with their expiry (seconds): a replay is refused.
    cds_jtis: std::sync::Mutex<HashMap<String, i64>>,
    /// The EHRs' JWK Sets for CDS Hooks calls, with when they were fetched.
    cds_jwks: std::sync::Mutex<HashMap<String, (Instant, Value)>>,
}

/// How long an EHR's JWK Set is reused for CDS Hooks calls.
const CDS_JWKS_TTL: Duration = Duration::from_secs(300);
/// An unknown `kid` refetches the JWK Set at most this often (a caller cannot make the app hammer the EHR).
const CDS_JWKS_REFETCH: Duration = Duration::from_secs(30);

impl SmartClient {
    /// A client for these EHRs, keeping pending authorisations in `pending`.
    pub fn new(ehrs: Vec<EhrConfig>, pending: Arc<dyn PendingStore>) -> Result<SmartClient> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(SmartClient {
            ehrs,
            pending,
            http,
            discovery: std::sync::Mutex::new(HashMap::new()),
            post_threshold: MAX_GET_URL,
            clock: Arc::new(SystemClock),
            cds_jtis: std::sync::Mutex::new(HashMap::new()),
            cds_jwks: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Reads "now" from `clock` (token expiry and refresh, assertions, `id_token` checks) instead of the
    /// system's clock: in tests, a [`crate::ManualClock`] moves a session to its refresh without waiting.
    pub fn with_clock(mut self, clock: SharedClock) -> SmartClient {
        self.clock = clock;
        self
    }

    /// The HTTP client the SDK uses (timeouts set, redirects not followed).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Authorisation requests whose GET URL would be longer than `bytes` go by POST when the server
    /// advertises `authorize-post` (default 2000).
    pub fn with_post_threshold(mut self, bytes: usize) -> SmartClient {
        self.post_threshold = bytes;
        self
    }

    /// Restores a session saved with [`Session::to_stored`] (e.g. by another node of the app). The EHR
    /// must still be configured; the client authentication comes from its configuration.
    pub fn restore(&self, stored: crate::session::StoredSession) -> Result<Session> {
        let ehr = self.ehr(&stored.iss)?.clone();
        Ok(Session::restore(self.http.clone(), self.clock.clone(), ehr.auth, stored))
    }

    /// The configured EHR for an `iss`; an unknown issuer is refused and never contacted.
    pub fn ehr(&self, iss: &str) -> Result<&EhrConfig> {
        let norm = |s: &str| s.trim_end_matches('/').to_string();
        self.ehrs.iter().find(|e| norm(&e.iss) == norm(iss)).ok_or_else(|| Error::UnknownIssuer { iss: iss.to_string() })
    }

    /// The EHR's SMART configuration, fetched once an hour at most.
    pub async fn configuration(&self, iss: &str) -> Result<Arc<SmartConfiguration>> {
        let ehr = self.ehr(iss)?;
        if let Some((at, c)) = self.discovery.lock().unwrap_or_else(|p| p.into_inner()).get(&ehr.iss)
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(c.clone());
        }
        let c = Arc::new(SmartConfiguration::fetch(&self.http, &ehr.iss).await?);
        self.discovery.lock().unwrap_or_else(|p| p.into_inner()).insert(ehr.iss.clone(), (Instant::now(), c.clone()));
        Ok(c)
    }

    /// Checks a CDS Hooks call to this app's service at `service_url`: the `Authorization: Bearer` JWT must
    /// come from a configured EHR (its `iss` on the allow-list; no other issuer is contacted), verify with
    /// that EHR's JWK Set (the `jwks_uri` of its discovery), name this service as `aud`, be current and not
    /// replayed. Returns the claims.
    pub async fn verify_cds_request(&self, authorization: Option<&str>, service_url: &str) -> Result<Value> {
        let bad = |m: &str| Error::CdsJwt(m.to_string());
        let jwt = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).ok_or_else(|| bad("no Bearer JWT"))?;
        let unverified: Value =
            jwt.split('.').nth(1).and_then(jose::b64url_decode).and_then(|b| serde_json::from_slice(&b).ok()).ok_or_else(|| bad("unreadable claims"))?;
        let iss = unverified["iss"].as_str().ok_or_else(|| bad("no iss"))?;
        let ehr = self.ehr(iss)?.iss.clone();
        let kid = jwt
            .split('.')
            .next()
            .and_then(jose::b64url_decode)
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|h| h["kid"].as_str().map(str::to_string))
            .unwrap_or_default();
        let jwks = self.cds_jwks(&ehr, &kid).await?;
        let now = self.clock.now_secs();
        let claims = crate::cds::verify_request_jwt(jwt, &jwks, iss, service_url, now)?;
        let jti = claims["jti"].as_str().unwrap_or_default().to_string();
        let mut seen = self.cds_jtis.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, exp| *exp + 60 >= now);
        if seen.insert(jti, claims["exp"].as_i64().unwrap_or(now)).is_some() {
            return Err(bad("this request's jti was seen before (a replay)"));
        }
        Ok(claims)
    }

    /// The EHR's JWK Set for CDS Hooks calls: reused for five minutes, fetched again sooner only when it
    /// lacks `kid` (a rotated key), and then at most every thirty seconds.
    async fn cds_jwks(&self, ehr: &str, kid: &str) -> Result<Value> {
        let has_kid = |jwks: &Value| jwks["keys"].as_array().is_some_and(|keys| keys.iter().any(|k| k["kid"] == kid));
        if let Some((at, jwks)) = self.cds_jwks.lock().unwrap_or_else(|p| p.into_inner()).get(ehr)
            && (at.elapsed() < CDS_JWKS_REFETCH || (at.elapsed() < CDS_JWKS_TTL && has_kid(jwks)))
        {
            return Ok(jwks.clone());
        }
        let conf = self.configuration(ehr).await?;
        let jwks_uri = conf.jwks_uri.as_deref().ok_or_else(|| Error::CdsJwt("the EHR publishes no jwks_uri".into()))?;
        let response = self.http.get(jwks_uri).send().await.map_err(Error::transport)?.error_for_status().map_err(Error::transport)?;
        let jwks: Value = response.json().await.map_err(Error::transport)?;
        self.cds_jwks.lock().unwrap_or_else(|p| p.into_inner()).insert(ehr.to_string(), (Instant::now(), jwks.clone()));
        Ok(jwks)
    }

    /// An EHR launch: the EHR opened the app's launch URL with `iss` and `launch`.
    pub async fn ehr_launch(&self, iss: &str, launch: &str) -> Result<AuthorizationRequest> {
        self.ehr_launch_inner(iss, launch, None).await
    }

    /// [`SmartClient::ehr_launch`] bound to the browser: `browser_secret` is a random value the app keeps
    /// in a short-lived HttpOnly cookie and hands to [`SmartClient::callback_bound`], so that a callback
    /// link started in another browser (login CSRF, a forwarded link) is refused. Web apps should use this.
    pub async fn ehr_launch_bound(&self, iss: &str, launch: &str, browser_secret: &str) -> Result<AuthorizationRequest> {
        self.ehr_launch_inner(iss, launch, Some(browser_secret)).await
    }

    async fn ehr_launch_inner(&self, iss: &str, launch: &str, browser: Option<&str>) -> Result<AuthorizationRequest> {
        let ehr = self.ehr(iss)?;
        let mut scope = ehr.ehr_scope.clone();
        if !scope.split_whitespace().any(|s| s == "launch") {
            scope = format!("launch {scope}");
        }
        self.authorize(ehr, &scope, Some(launch), browser).await
    }

    /// A standalone launch: the user starts the app, which picks the EHR.
    pub async fn standalone_launch(&self, iss: &str) -> Result<AuthorizationRequest> {
        let ehr = self.ehr(iss)?;
        self.authorize(ehr, &ehr.standalone_scope.clone(), None, None).await
    }

    /// [`SmartClient::standalone_launch`] bound to the browser (see [`SmartClient::ehr_launch_bound`]).
    pub async fn standalone_launch_bound(&self, iss: &str, browser_secret: &str) -> Result<AuthorizationRequest> {
        let ehr = self.ehr(iss)?;
        self.authorize(ehr, &ehr.standalone_scope.clone(), None, Some(browser_secret)).await
    }

    async fn authorize(&self, ehr: &EhrConfig, scope: &str, launch: Option<&str>, browser: Option<&str>) -> Result<AuthorizationRequest> {
        let conf = self.configuration(&ehr.iss).await?;
        let state = jose::random(24);
        let verifier = jose::random(48);
        let nonce = jose::random(16);
        let mut fields = vec![
            ("response_type".to_string(), "code".to_string()),
            ("client_id".into(), ehr.client_id.clone()),
            ("redirect_uri".into(), ehr.redirect_uri.clone()),
            ("scope".into(), scope.to_string()),
            ("state".into(), state.clone()),
            ("aud".into(), ehr.iss.clone()),
            ("code_challenge".into(), jose::pkce_challenge(&verifier)),
            ("code_challenge_method".into(), "S256".into()),
            ("nonce".into(), nonce.clone()),
        ];
        if let Some(l) = launch {
            fields.push(("launch".into(), l.to_string()));
        }
        let pending = PendingAuthorization {
            iss: ehr.iss.clone(),
            issuer: conf.issuer.clone().unwrap_or_else(|| ehr.iss.clone()),
            client_id: ehr.client_id.clone(),
            redirect_uri: ehr.redirect_uri.clone(),
            scope: scope.to_string(),
            code_verifier: Secret::new(verifier),
            nonce,
            token_endpoint: conf.token_endpoint.clone(),
            browser_binding: browser.map(jose::pkce_challenge),
            iss_required: conf.raw["authorization_response_iss_parameter_supported"] == true,
            expires_at: Some(self.clock.now_secs() + PENDING_TTL.as_secs() as i64),
        };
        self.pending.put(&state, pending, PENDING_TTL).await?;
        let mut url = url::Url::parse(&conf.authorization_endpoint).map_err(|e| Error::Config(e.to_string()))?;
        url.query_pairs_mut().extend_pairs(fields.iter());
        if url.as_str().len() > self.post_threshold && conf.supports("authorize-post") {
            return Ok(AuthorizationRequest::Post { url: conf.authorization_endpoint.clone(), fields, state });
        }
        Ok(AuthorizationRequest::Redirect { url: url.to_string(), state })
    }

    /// Finishes an authorisation from the callback's query parameters: checks `state` (single use) and
    /// the RFC 9207 `iss` (required when the server's discovery says it sends it), turns `error` into a typed error, exchanges the code, and verifies
    /// the `id_token` when there is one.
    pub async fn callback(&self, params: &HashMap<String, String>) -> Result<Session> {
        self.callback_bound(params, None).await
    }

    /// [`SmartClient::callback`] for a launch made with a browser binding: `browser_secret` must be the one
    /// the launch was bound to (from the app's cookie), otherwise the callback is refused as
    /// [`Error::UnknownState`]. A launch made without a binding accepts any.
    pub async fn callback_bound(&self, params: &HashMap<String, String>, browser_secret: Option<&str>) -> Result<Session> {
        let state = params.get("state").ok_or(Error::UnknownState)?;
        let pending = self.pending.take(state).await?.ok_or(Error::UnknownState)?;
        if let Some(expected) = &pending.browser_binding {
            let presented = browser_secret.map(jose::pkce_challenge).unwrap_or_default();
            if aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), expected.as_bytes()).is_err() {
                tracing::warn!(iss = %pending.iss, "callback from another browser than the launch's refused");
                // Kept for the browser that started it, until it would have expired anyway: a callback
                // forged in another browser (with a state seen elsewhere) must not use up the launch of
                // the one it belongs to.
                let left = pending.expires_at.map_or(PENDING_TTL.as_secs() as i64, |at| at - self.clock.now_secs());
                if left > 0 {
                    self.pending.put(state, pending, Duration::from_secs(left as u64)).await?;
                }
                return Err(Error::UnknownState);
            }
        }
        match params.get("iss") {
            Some(iss) if iss.trim_end_matches('/') != pending.issuer.trim_end_matches('/') => {
                return Err(Error::IssuerMismatch { expected: pending.issuer, got: iss.clone() });
            }
            Some(_) => {}
            // A server that says it sends `iss` (RFC 9207) always does: an answer without it did not come
            // from that server (a mix-up attack strips it).
            None if pending.iss_required => return Err(Error::IssuerMismatch { expected: pending.issuer, got: "(none)".into() }),
            None => {}
        }
        if let Some(code) = params.get("error") {
            return Err(Error::from_oauth(code, params.get("error_description").map(String::as_str).unwrap_or("")));
        }
        let code =
            params.get("code").ok_or_else(|| Error::OAuth { code: "invalid_request".into(), description: "the callback has neither code nor error".into() })?;
        let ehr = self.ehr(&pending.iss)?;
        let mut form = vec![
            ("grant_type".to_string(), "authorization_code".to_string()),
            ("code".into(), code.clone()),
            ("redirect_uri".into(), pending.redirect_uri.clone()),
            ("code_verifier".into(), pending.code_verifier.expose().to_string()),
        ];
        let body = token_request(&self.http, &ehr.auth, &ehr.client_id, &pending.token_endpoint, self.clock.now_secs(), &mut form).await?;
        let tokens = Tokens::from_response(&body).ok_or_else(|| Error::Transport("the token response has no access_token".into()))?;
        let conf = self.configuration(&pending.iss).await?;
        let claims = match (&tokens.id_token, &conf.jwks_uri) {
            (Some(id), Some(jwks_uri)) => {
                let jwks: Value = self.http.get(jwks_uri).send().await.map_err(Error::transport)?.json().await.map_err(Error::transport)?;
                Some(jose::verify_id_token(id.expose(), &jwks, &pending.issuer, &pending.client_id, Some(&pending.nonce), self.clock.now_secs())?)
            }
            (Some(_), None) => return Err(Error::IdToken("the server publishes no jwks_uri to verify it with".into())),
            _ => None,
        };
        let context = LaunchContext::from_response(&body, &pending.scope, claims.as_ref());
        tracing::info!(iss = %pending.iss, client = %pending.client_id, patient = ?context.patient, "SMART launch completed");
        // What the context is rebuilt from when a stored session is restored: the response without tokens.
        let mut context_source = body.clone();
        if let Some(o) = context_source.as_object_mut() {
            for k in ["access_token", "refresh_token", "id_token"] {
                o.remove(k);
            }
        }
        Ok(Session::new(
            self.http.clone(),
            self.clock.clone(),
            crate::session::SessionParts {
                iss: pending.iss,
                client_id: ehr.client_id.clone(),
                auth: ehr.auth.clone(),
                token_endpoint: pending.token_endpoint,
                revocation_endpoint: conf.revocation_endpoint.clone(),
                requested_scope: pending.scope,
                context_source,
            },
            tokens,
            context,
            claims,
        ))
    }
}

/// POSTs a token request with the client's authentication; the response JSON, or a typed error.
pub(crate) async fn token_request(
    http: &reqwest::Client,
    auth: &ClientAuth,
    client_id: &str,
    token_url: &str,
    now: i64,
    form: &mut Vec<(String, String)>,
) -> Result<Value> {
    let req = http.post(token_url).header("accept", "application/json");
    let req = auth.apply(client_id, token_url, now, form, req)?;
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form.iter()).finish();
    let r = req.header("content-type", "application/x-www-form-urlencoded").body(body).send().await.map_err(Error::transport)?;
    let status = r.status();
    let json: Value = r.json().await.map_err(Error::transport)?;
    if !status.is_success() {
        return Err(Error::from_oauth(json["error"].as_str().unwrap_or("server_error"), json["error_description"].as_str().unwrap_or("")));
    }
    Ok(json)
}
