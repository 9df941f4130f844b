//! The token endpoint (`authorization_code` with PKCE, `refresh_token` with rotation and reuse
//! detection), introspection (RFC 7662) and revocation (RFC 7009).

use crate::crypto::{constant_time_eq, ordered_token, pkce_s256, token_key, valid_pkce_verifier, verify_password};
use crate::launch::basic_credentials;
use crate::model::{Client, ClientKind, Grant};
use crate::{Shared, no_store, oauth_error};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use smart::{Scope, ScopeSet};
use std::sync::Arc;

type Pairs = Vec<(String, String)>;

fn get<'a>(pairs: &'a Pairs, k: &str) -> Option<&'a str> {
    pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// A form body's pairs; `None` when it is not UTF-8 (percent-decoded values included).
pub(crate) fn form_pairs(body: &[u8]) -> Option<Pairs> {
    std::str::from_utf8(body).ok()?;
    let pairs: Pairs = url::form_urlencoded::parse(body).into_owned().collect();
    // Decoding replaces invalid UTF-8 with U+FFFD: refuse rather than act on an altered value.
    if pairs.iter().any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}')) {
        return None;
    }
    Some(pairs)
}

pub(crate) fn not_a_form() -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "the body must be application/x-www-form-urlencoded UTF-8 text")
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "token endpoint error");
    oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the request could not be completed")
}

/// Authenticates the client of a token-endpoint request (RFC 6749 §2.3): HTTP Basic, `client_secret` in
/// the body, `private_key_jwt`, or — for public clients only — `client_id` alone. An assertion's `jti`
/// is recorded (used up) before this returns.
async fn authenticate_client(s: &Shared, headers: &HeaderMap, pairs: &Pairs) -> Result<Arc<Client>, Response> {
    let (client, jti) = authenticate(s, headers, pairs).await?;
    if let Some(jti) = jti {
        record_jti(s, &jti).await?;
    }
    Ok(client)
}

/// The `jti` of a verified client assertion, still to be recorded: it may be used once while the
/// assertion lives.
struct Jti {
    key: String,
    expires: i64,
}

impl Jti {
    fn record(&self) -> store::NewAuthRecord<'_> {
        store::NewAuthRecord { kind: "jti", key: &self.key, value: "{}", grant_id: None, expires: Some(self.expires) }
    }
}

fn jti_reused() -> Response {
    oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "this assertion's jti was already used")
}

async fn record_jti(s: &Shared, jti: &Jti) -> Result<(), Response> {
    let r = jti.record();
    match s.store.auth_insert_new(r.kind, r.key, r.value, r.expires).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(jti_reused()),
        Err(e) => Err(crate::unavailable(&e)),
    }
}

/// [`authenticate_client`] that leaves an assertion's `jti` to the caller, who must record it before
/// answering (a backend token records it with the token, in one write).
async fn authenticate(s: &Shared, headers: &HeaderMap, pairs: &Pairs) -> Result<(Arc<Client>, Option<Jti>), Response> {
    let bad = |msg: &str| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", msg);
    if get(pairs, "client_assertion").is_some() || get(pairs, "client_assertion_type").is_some() {
        return authenticate_assertion(s, pairs).await.map(|(c, j)| (c, Some(j)));
    }
    let (client_id, secret) = match basic_credentials(headers) {
        Some((id, secret)) => (id, Some(secret)),
        None => match get(pairs, "client_id") {
            Some(id) => (id.to_string(), get(pairs, "client_secret").map(str::to_string)),
            None => return Err(bad("client authentication is required")),
        },
    };
    let client = match s.client(&client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return Err(bad("unknown client")),
        Err(e) => return Err(crate::unavailable(&e)),
    };
    let client = match (client.kind, secret) {
        (ClientKind::Public, None) => Ok(client),
        (ClientKind::Public, Some(_)) => Err(bad("this client is registered as public and has no secret")),
        (ClientKind::ConfidentialSymmetric, Some(secret)) => {
            if client.secret_hash.as_deref().is_some_and(|h| verify_password(&secret, h)) {
                Ok(client)
            } else {
                Err(bad("client authentication failed"))
            }
        }
        (ClientKind::ConfidentialSymmetric, None) => Err(bad("this confidential client must authenticate with its secret")),
        (ClientKind::ConfidentialAsymmetric, _) => Err(bad("this client must authenticate with a private_key_jwt assertion")),
    }?;
    Ok((client, None))
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `private_key_jwt` (RFC 7523 §2.2): the assertion is verified against the client's registered keys; its
/// `jti` comes back to be recorded.
async fn authenticate_assertion(s: &Shared, pairs: &Pairs) -> Result<(Arc<Client>, Jti), Response> {
    let bad = |msg: &str| oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", msg);
    if get(pairs, "client_assertion_type") != Some(JWT_BEARER) {
        return Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ));
    }
    let jwt = get(pairs, "client_assertion").unwrap_or("");
    let Some(iss) = crate::jose::claimed_issuer(jwt) else { return Err(bad("the client assertion cannot be read")) };
    if get(pairs, "client_id").is_some_and(|id| id != iss) {
        return Err(bad("client_id differs from the assertion's issuer"));
    }
    let client = match s.client(&iss).await {
        Ok(Some(c)) if c.kind == ClientKind::ConfidentialAsymmetric => c,
        Ok(_) => return Err(bad("the assertion's issuer is not a registered asymmetric client")),
        Err(e) => return Err(crate::unavailable(&e)),
    };
    let jwks = match s.client_keys(&client).await {
        Ok(k) => k,
        Err(why) => {
            tracing::info!(client = %client.client_id, reason = %why, "client keys unavailable");
            return Err(bad(&why));
        }
    };
    let assertion = match crate::jose::verify(jwt, &client, &jwks, &s.config.endpoint("token"), s.now_ms() / 1000) {
        Ok(a) => a,
        Err(why) => {
            tracing::info!(client = %client.client_id, reason = %why, "client assertion refused");
            s.audit("client-authentication", false, Some(&client.client_id), None, None, &why);
            return Err(bad(&why));
        }
    };
    let jti = Jti { key: format!("{}|{}", assertion.client_id, assertion.jti), expires: assertion.exp * 1000 + 60_000 };
    Ok((client, jti))
}

pub async fn token(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    // Bytes, not String: a body that is not UTF-8 is an OAuth error like any other bad request.
    let Some(pairs) = form_pairs(&body) else { return not_a_form() };
    let grant_type = get(&pairs, "grant_type");
    if !matches!(grant_type, Some("authorization_code") | Some("refresh_token") | Some("client_credentials")) {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "grant_type must be authorization_code, refresh_token or client_credentials");
    }
    let (client, jti) = match authenticate(&s, &headers, &pairs).await {
        Ok(c) => c,
        Err(r) => match public_refresh_client(&s, &headers, &pairs, grant_type).await {
            // RFC 6749 §6 asks public clients for no credentials on refresh (the SMART JavaScript
            // client sends none): the refresh token itself names its public client.
            Ok(Some(c)) => (c, None),
            Ok(None) => return r,
            Err(e) => return crate::unavailable(&e),
        },
    };
    if grant_type == Some("client_credentials") {
        return client_credentials(&s, &client, &pairs, jti).await;
    }
    if let Some(jti) = jti
        && let Err(r) = record_jti(&s, &jti).await
    {
        return r;
    }
    match grant_type {
        Some("authorization_code") => authorization_code(&s, &client, &pairs).await,
        _ => refresh_token(&s, &client, &pairs).await,
    }
}

/// The public client a refresh token belongs to, for a refresh request that carries no client
/// identification at all.
async fn public_refresh_client(s: &Shared, headers: &HeaderMap, pairs: &Pairs, grant_type: Option<&str>) -> Result<Option<Arc<Client>>, store::StoreError> {
    let anonymous = grant_type == Some("refresh_token")
        && headers.get(axum::http::header::AUTHORIZATION).is_none()
        && get(pairs, "client_id").is_none()
        && get(pairs, "client_assertion").is_none();
    let Some(refresh) = get(pairs, "refresh_token").filter(|_| anonymous) else { return Ok(None) };
    let Some(record) = s.store.auth_get("refresh", &token_key(refresh)).await? else { return Ok(None) };
    let Ok(grant) = serde_json::from_str::<Grant>(&record.value) else { return Ok(None) };
    Ok(s.client(&grant.client_id).await?.filter(|c| c.kind == ClientKind::Public))
}

/// Backend services: `system/` scopes for an asymmetric client, within what it was registered for. Short
/// lived (five minutes) and without a refresh token.
///
/// The assertion's `jti` is recorded in the same write as the token; a refusal records it on its own.
async fn client_credentials(s: &Shared, client: &Client, pairs: &Pairs, jti: Option<Jti>) -> Response {
    let refuse = async |r: Response| match &jti {
        Some(j) => record_jti(s, j).await.err().unwrap_or(r),
        None => r,
    };
    let Some(jti) = jti.as_ref().filter(|_| client.kind == ClientKind::ConfidentialAsymmetric) else {
        return refuse(oauth_error(StatusCode::BAD_REQUEST, "unauthorized_client", "client_credentials is for clients that authenticate with private_key_jwt"))
            .await;
    };
    let requested = ScopeSet::parse(get(pairs, "scope").unwrap_or(""));
    let mut granted = ScopeSet::parse(&client.allowed_scope).narrow(&requested);
    granted.scopes.retain(|sc| matches!(sc, Scope::Resource(r) if r.level == smart::Level::System));
    if granted.scopes.is_empty() {
        return refuse(oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "none of the requested system/ scopes is allowed for this client")).await;
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

/// What a token response does about the refresh token.
enum Refresh<'a> {
    /// A new one (first issue, or rotation).
    New,
    /// The one presented, unchanged (no rotation).
    Same(&'a str),
    /// None in the response; the presented one stays valid.
    Omit,
}

fn invalid_grant(msg: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", msg)
}

async fn authorization_code(s: &Shared, client: &Client, pairs: &Pairs) -> Response {
    let Some(code) = get(pairs, "code") else { return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "code is required") };
    let record = match s.store.auth_consume("code", &token_key(code)).await {
        Ok(Some(r)) => r,
        Ok(None) => return invalid_grant("the code is invalid or has expired"),
        Err(e) => return crate::unavailable(&e),
    };
    let Ok(grant) = serde_json::from_str::<Grant>(&record.value) else { return internal("unreadable code record") };
    // Another client's code is refused before anything else: it must not be able to trigger the replay
    // revocation of a grant that is not its own.
    if grant.client_id != client.client_id {
        return invalid_grant("the code was issued to another client");
    }
    if record.used || record.revoked {
        // RFC 6749 §4.1.2: a replayed code revokes what it produced.
        let n = s.revoke_grant(&grant.grant_id).await.unwrap_or(0);
        tracing::warn!(client = %client.client_id, revoked = n, "authorisation code replayed; its tokens are revoked");
        s.audit_in(
            grant.launch_id(),
            "code-replay",
            false,
            Some(&client.client_id),
            grant.username.as_deref(),
            grant.patient.as_deref(),
            "a used code came back; its tokens were revoked",
        );
        return invalid_grant("the code was already used");
    }
    if get(pairs, "redirect_uri") != grant.redirect_uri.as_deref() {
        return invalid_grant("redirect_uri does not match the authorisation request");
    }
    let verifier = get(pairs, "code_verifier").unwrap_or("");
    let challenge = grant.code_challenge.as_deref().unwrap_or("");
    if !valid_pkce_verifier(verifier) || !constant_time_eq(pkce_s256(verifier).as_bytes(), challenge.as_bytes()) {
        return invalid_grant("code_verifier does not match the code_challenge");
    }
    issue_tokens(s, client, grant, None, Refresh::New, None).await
}

async fn refresh_token(s: &Shared, client: &Client, pairs: &Pairs) -> Response {
    let Some(rt) = get(pairs, "refresh_token") else { return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "refresh_token is required") };
    let hash = token_key(rt);
    let record = match s.store.auth_get("refresh", &hash).await {
        Ok(Some(r)) => r,
        Ok(None) => return invalid_grant("the refresh token is invalid or has expired"),
        Err(e) => return crate::unavailable(&e),
    };
    let Ok(grant) = serde_json::from_str::<Grant>(&record.value) else { return internal("unreadable refresh record") };
    // Another client's refresh token is refused first: reuse detection (which revokes the grant) is
    // only for the client the token was issued to.
    if grant.client_id != client.client_id {
        return invalid_grant("the refresh token was issued to another client");
    }
    if record.revoked {
        return invalid_grant("the refresh token was revoked");
    }
    if record.used {
        return reused(s, client, &grant).await;
    }
    let trace = grant.launch_id().map(str::to_string);
    if grant.revoke_at.is_some_and(|at| at <= s.now_ms()) {
        let _ = s.revoke_grant(&grant.grant_id).await;
        s.audit_in(
            trace.as_deref(),
            "refresh",
            false,
            Some(&client.client_id),
            grant.username.as_deref(),
            grant.patient.as_deref(),
            "refused: the grant was revoked (injected fault)",
        );
        return invalid_grant("the refresh token was revoked");
    }
    if grant.faults().refresh_fails {
        s.audit_in(
            trace.as_deref(),
            "refresh",
            false,
            Some(&client.client_id),
            grant.username.as_deref(),
            grant.patient.as_deref(),
            "refused with invalid_grant (injected fault: refresh fails)",
        );
        return invalid_grant("the refresh token is no longer valid");
    }
    // The request is checked before the token is spent, so a bad request does not burn it.
    let narrowed = match get(pairs, "scope") {
        None => None,
        Some(requested) => {
            let requested = ScopeSet::parse(requested);
            let original = ScopeSet::parse(&grant.scope);
            let within = original.narrow(&requested);
            if !requested.invalid.is_empty() || within.to_string() != requested.to_string() {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "a refresh may only ask for scopes that were granted");
            }
            Some(within.to_string())
        }
    };
    // The app's registration may have shrunk since: never refresh beyond what it is allowed now.
    let current = narrowed.clone().unwrap_or_else(|| grant.scope.clone());
    let allowed_now = ScopeSet::parse(&client.allowed_scope).narrow(&ScopeSet::parse(&current)).to_string();
    let narrowed = if allowed_now == grant.scope { narrowed } else { Some(allowed_now) };
    let profile = grant.profile();
    if !crate::profile::rotates_refresh(profile) {
        let keep = if profile == crate::model::Profile::Nextgen { Refresh::Same(rt) } else { Refresh::Omit };
        return issue_tokens(s, client, grant, narrowed, keep, None).await;
    }
    match s.store.auth_consume("refresh", &hash).await {
        Ok(Some(r)) if !r.used && !r.revoked => {}
        Ok(_) => return reused(s, client, &grant).await,
        Err(e) => return crate::unavailable(&e),
    }
    issue_tokens(s, client, grant, narrowed, Refresh::New, None).await
}

/// A rotated-out refresh token came back: someone holds a copy. Revoke the whole grant (OAuth 2.0
/// Security BCP §4.14).
async fn reused(s: &Shared, client: &Client, grant: &Grant) -> Response {
    let n = s.revoke_grant(&grant.grant_id).await.unwrap_or(0);
    tracing::warn!(client = %client.client_id, revoked = n, "refresh token reused; the grant is revoked");
    s.audit_in(
        grant.launch_id(),
        "refresh-reuse",
        false,
        Some(&client.client_id),
        grant.username.as_deref(),
        grant.patient.as_deref(),
        "a rotated-out refresh token came back; the grant was revoked",
    );
    invalid_grant("the refresh token was already used")
}

/// Issues the tokens of `grant`. With `jti`, the access token is stored only if that assertion `jti` is
/// recorded now for the first time (one write for both).
async fn issue_tokens(s: &Shared, client: &Client, mut grant: Grant, narrowed_scope: Option<String>, refresh: Refresh<'_>, jti: Option<&Jti>) -> Response {
    let refreshing = grant.expires.is_some();
    if let Some(sc) = narrowed_scope {
        grant.scope = sc;
    }
    grant.redirect_uri = None;
    grant.code_challenge = None;
    // The request's `state` lives on the code only: echoed once (Epic-style), never kept with the tokens.
    let request_state = grant.state.take();
    let now = s.now_ms();
    let scopes = ScopeSet::parse(&grant.scope);
    let backend = grant.username.is_none();
    let faults = grant.faults();
    if grant.revoke_at.is_none()
        && let Some(after) = faults.revoke_after_secs
    {
        grant.revoke_at = Some(now + after * 1000);
    }
    let lifetime = if backend { s.config.backend_token_secs } else { crate::profile::access_token_secs(grant.profile(), &faults, s.config.access_token_secs) };
    let access = ordered_token(now);
    let expires = now + lifetime * 1000;
    grant.expires = Some(expires);
    let value = match serde_json::to_string(&grant) {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let key = token_key(&access);
    let record = store::NewAuthRecord { kind: "access", key: &key, value: &value, grant_id: Some(&grant.grant_id), expires: Some(expires) };
    let stored = match jti {
        Some(jti) => s.store.auth_insert_new_then_put(jti.record(), record).await,
        None => s.store.auth_put(record.kind, record.key, record.value, record.grant_id, record.expires).await.map(|_| true),
    };
    match stored {
        Ok(true) => {}
        Ok(false) => return jti_reused(),
        Err(e) => return crate::unavailable(&e),
    }
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": grant.scope,
    });
    if backend {
        tracing::info!(client = %client.client_id, "backend services token issued");
        s.audit("token", true, Some(&client.client_id), None, None, &format!("client_credentials: {}", grant.scope));
        let mut r = (StatusCode::OK, Json(body)).into_response();
        no_store(&mut r);
        return r;
    }
    let wants_refresh = !backend && (scopes.contains(&Scope::OfflineAccess) || scopes.contains(&Scope::OnlineAccess));
    if let (true, Refresh::Same(same)) = (wants_refresh, &refresh) {
        body["refresh_token"] = json!(same);
    }
    if wants_refresh && matches!(refresh, Refresh::New) {
        let refresh = ordered_token(now);
        let refresh_expires = now + s.config.refresh_token_days * 86_400_000;
        if let Err(e) = s.store.auth_put("refresh", &token_key(&refresh), &value, Some(&grant.grant_id), Some(refresh_expires)).await {
            return internal(e);
        }
        body["refresh_token"] = json!(refresh);
    }
    if scopes.contains(&Scope::OpenId)
        && let Some(username) = &grant.username
    {
        let mut claims = json!({
            "iss": s.config.fhir_base,
            "sub": username,
            "aud": client.client_id,
            "iat": now / 1000,
            "exp": now / 1000 + s.config.access_token_secs,
        });
        if let Some(n) = &grant.nonce {
            claims["nonce"] = json!(n);
        }
        if scopes.contains(&Scope::FhirUser)
            && let Some(fu) = &grant.fhir_user
        {
            claims["fhirUser"] = json!(format!("{}/{fu}", s.config.fhir_base));
        }
        match s.keys.sign_jwt(&claims) {
            Ok(jwt) => body["id_token"] = json!(jwt),
            Err(e) => return internal(e),
        }
    }
    if let Some(p) = &grant.patient {
        body["patient"] = json!(p);
    }
    if let Some(e) = &grant.encounter {
        body["encounter"] = json!(e);
    }
    let launch = grant.launch.clone().unwrap_or_default();
    let ehr_launch = grant.launch.is_some();
    body["need_patient_banner"] = json!(launch.need_patient_banner.unwrap_or(!ehr_launch));
    body["smart_style_url"] = json!(launch.smart_style_url.clone().unwrap_or_else(|| s.config.endpoint("style.json")));
    if !launch.fhir_context.is_empty() {
        body["fhirContext"] = json!(launch.fhir_context);
    }
    if let Some(i) = &launch.intent {
        body["intent"] = json!(i);
    }
    if let Some(t) = &launch.tenant {
        body["tenant"] = json!(t);
    }
    for (k, v) in &launch.extra {
        if body.get(k).is_none() {
            body[k] = v.clone();
        }
    }
    crate::profile::shape_response(&grant, &mut body);
    if let Some(st) = request_state
        && grant.profile() == crate::model::Profile::Epic
    {
        body["state"] = json!(st);
    }
    tracing::info!(client = %client.client_id, user = ?grant.username, patient = ?grant.patient, "tokens issued");
    let refresh_note = match (&refresh, body.get("refresh_token").is_some()) {
        (Refresh::New, true) => "a new refresh token",
        (Refresh::Same(_), _) => "the same refresh token again (no rotation)",
        (Refresh::Omit, _) => "no new refresh token (the old one stays valid)",
        (Refresh::New, false) => "no refresh token",
    };
    s.audit_in(
        grant.launch_id(),
        if refreshing { "refresh" } else { "token" },
        true,
        Some(&client.client_id),
        grant.username.as_deref(),
        grant.patient.as_deref(),
        &format!("{}: access token for {lifetime} s and {refresh_note}; scope: {}", if refreshing { "refreshed" } else { "code exchanged" }, grant.scope),
    );
    let mut r = (StatusCode::OK, Json(body)).into_response();
    no_store(&mut r);
    r
}

/// Introspection is for authenticated clients, or callers holding a live access token (SMART 2.2). A
/// refusal is the response to send.
async fn may_introspect(s: &Shared, headers: &HeaderMap, pairs: &Pairs) -> Result<(), Response> {
    let refused = || oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "introspection needs client authentication or a bearer token");
    if let Some(bearer) = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) {
        return match s.access_grant(bearer.trim()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(refused()),
            Err(e) => Err(crate::unavailable(&e)),
        };
    }
    match authenticate_client(s, headers, pairs).await {
        Ok(_) => Ok(()),
        // A storage failure stays a 503; any other refusal is the same 401.
        Err(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE || r.status() == StatusCode::INTERNAL_SERVER_ERROR => Err(r),
        Err(_) => Err(refused()),
    }
}

pub async fn introspect(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    // Bytes, not String: a body that is not UTF-8 is an OAuth error like any other bad request.
    let Some(pairs) = form_pairs(&body) else { return not_a_form() };
    if let Err(r) = may_introspect(&s, &headers, &pairs).await {
        return r;
    }
    let token = get(&pairs, "token").unwrap_or("");
    let hash = token_key(token);
    let mut found = None;
    for kind in ["access", "refresh"] {
        match s.store.auth_get(kind, &hash).await {
            Ok(Some(r)) if !(r.revoked || kind == "refresh" && r.used) => {
                found = Some((kind, r));
                break;
            }
            Ok(_) => {}
            Err(e) => return crate::unavailable(&e),
        }
    }
    let now = s.now_ms();
    // A grant whose injected revocation time has passed is revoked, whether or not the FHIR API has seen
    // one of its tokens since.
    let body = match found
        .and_then(|(kind, r)| serde_json::from_str::<Grant>(&r.value).ok().map(|g| (kind, r, g)))
        .filter(|(_, _, g)| g.revoke_at.is_none_or(|at| at > now))
    {
        None => json!({"active": false}),
        Some((kind, record, grant)) => {
            let mut v = json!({
                "active": true,
                "client_id": grant.client_id,
                "scope": grant.scope,
                "token_type": if kind == "access" { "Bearer" } else { "refresh_token" },
                "iss": s.config.fhir_base,
                "aud": s.config.fhir_base,
            });
            if let Some(exp) = record.expires {
                v["exp"] = json!(exp / 1000);
            }
            if let Some(u) = &grant.username {
                v["sub"] = json!(u);
                v["username"] = json!(u);
            }
            if let Some(fu) = &grant.fhir_user {
                v["fhirUser"] = json!(format!("{}/{fu}", s.config.fhir_base));
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
    r
}

pub async fn revoke(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    // Bytes, not String: a body that is not UTF-8 is an OAuth error like any other bad request.
    let Some(pairs) = form_pairs(&body) else { return not_a_form() };
    let client = match authenticate_client(&s, &headers, &pairs).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(token) = get(&pairs, "token") else { return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is required") };
    let hash = token_key(token);
    for kind in ["access", "refresh"] {
        // A revocation that could not be carried out must not answer 200 (the app would believe it done).
        let record = match s.store.auth_get(kind, &hash).await {
            Ok(r) => r,
            Err(e) => return crate::unavailable(&e),
        };
        if let Some(r) = record
            && let Ok(g) = serde_json::from_str::<Grant>(&r.value)
            && g.client_id == client.client_id
        {
            let n = match s.revoke_grant(&g.grant_id).await {
                Ok(n) => n,
                Err(e) => return crate::unavailable(&e),
            };
            tracing::info!(client = %client.client_id, revoked = n, "tokens revoked");
            s.audit_in(
                g.launch_id(),
                "revoke",
                true,
                Some(&client.client_id),
                g.username.as_deref(),
                g.patient.as_deref(),
                "tokens revoked at the app's request (RFC 7009)",
            );
        }
    }
    // RFC 7009 §2.2: 200 whether or not the token was known.
    let mut r = StatusCode::OK.into_response();
    no_store(&mut r);
    r
}

/// Tokens for `username` through `client_id` without the browser flow, for a developer's `curl` against
/// a sandbox (`kindling token`): what the user could be granted through that app (the app's allowance, and
/// patient users only patient-level scopes), with the patient in context when one is given (a patient user's
/// own record always). Refuses what the flow would refuse: an unknown or disabled app, an unknown user, a
/// patient that does not exist, patient-level scopes without a patient, or nothing grantable.
pub async fn operator_tokens(s: &Shared, client_id: &str, username: &str, patient: Option<&str>, scope: &str) -> Result<Value, String> {
    let client = crate::registry::get_client(s.store.as_ref(), client_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no app '{client_id}' is registered"))?;
    if client.disabled {
        return Err(format!("the app '{client_id}' is disabled"));
    }
    let user = crate::registry::get_user(s.store.as_ref(), username).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no user '{username}'"))?;
    let patient = match (user.own_patient(), patient) {
        (Some(own), Some(asked)) if own != asked => return Err(format!("'{username}' is a patient user: tokens are for their own record ({own}) only")),
        (Some(own), _) => Some(own.to_string()),
        (None, asked) => asked.map(str::to_string),
    };
    if let Some(p) = &patient
        && s.store.read("Patient", p).await.map_err(|e| e.to_string())?.is_none_or(|r| r.deleted)
    {
        return Err(format!("there is no Patient/{p}"));
    }
    let granted = crate::authorize::grantable(&client, &user, scope);
    if granted.scopes.is_empty() {
        return Err(format!("'{client_id}' may not be granted any of '{scope}' for '{username}' (the app allows: {})", client.allowed_scope));
    }
    if patient.is_none() && granted.resource_scopes().any(|r| r.level == smart::Level::Patient) {
        return Err("patient/ scopes need a patient: add --patient ID".into());
    }
    let grant = Grant {
        // Time-ordered, as everywhere else grant ids are made (they are indexed).
        grant_id: uuid::Uuid::now_v7().to_string(),
        client_id: client.client_id.clone(),
        scope: granted.to_string(),
        username: Some(user.username.clone()),
        fhir_user: Some(user.fhir_user.clone()),
        patient,
        ..Grant::default()
    };
    let response = issue_tokens(s, &client, grant, None, Refresh::New, None).await;
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("the token could not be issued: {}", String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}
