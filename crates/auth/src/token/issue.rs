//! The token response (RFC 6749 §5.1 with SMART's launch context): the access token stored as a record of
//! its grant, a refresh token when `offline_access` or `online_access` was granted, an `id_token` for
//! `openid`, and the context the launch carried.

use crate::client_auth::{Jti, jti_reused};
use crate::crypto::{ordered_token, token_key};
use crate::model::{Client, Grant};
use crate::{OAuthError, Shared};
use serde_json::{Value, json};
use smart::{Scope, ScopeSet};

/// What a token response does about the refresh token.
pub(crate) enum Refresh<'a> {
    /// A new one (first issue, or rotation).
    New,
    /// The one presented, unchanged (no rotation).
    Same(&'a str),
    /// None in the response; the presented one stays valid.
    Omit,
}

/// Issues the tokens of `grant`. With `jti`, the access token is stored only if that assertion `jti` is
/// recorded now for the first time (one write for both).
pub(crate) async fn issue_tokens(
    s: &Shared,
    client: &Client,
    mut grant: Grant,
    narrowed_scope: Option<String>,
    refresh: Refresh<'_>,
    jti: Option<&Jti>,
) -> Result<Value, OAuthError> {
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
    let lifetime = if backend {
        s.config.backend_token_secs
    } else {
        crate::profile::access_token_secs(s.config.profiles.rules(&grant.profile()), &faults, s.config.access_token_secs)
    };
    let access = ordered_token(now);
    let expires = now + lifetime * 1000;
    grant.expires = Some(expires);
    let value = serde_json::to_string(&grant).map_err(OAuthError::internal)?;
    let key = token_key(&access);
    let record = store::NewAuthRecord { kind: "access", key: &key, value: &value, grant_id: Some(&grant.grant_id), expires: Some(expires) };
    let stored = match jti {
        Some(jti) => s.store.auth_insert_new_then_put(jti.record(), record).await?,
        None => s.store.auth_put(record.kind, record.key, record.value, record.grant_id, record.expires).await.map(|_| true)?,
    };
    if !stored {
        return Err(jti_reused());
    }
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": grant.scope,
    });
    if backend {
        tracing::info!(client = %client.client_id, "backend services token issued");
        s.audit("token").client(client.client_id.as_str()).record(format!("client_credentials: {}", grant.scope));
        return Ok(body);
    }
    let wants_refresh = !backend && (scopes.contains(&Scope::OfflineAccess) || scopes.contains(&Scope::OnlineAccess));
    if let (true, Refresh::Same(same)) = (wants_refresh, &refresh) {
        body["refresh_token"] = json!(same);
    }
    if wants_refresh && matches!(refresh, Refresh::New) {
        let refresh = ordered_token(now);
        let refresh_expires = now + s.config.refresh_token_days * 86_400_000;
        s.store.auth_put("refresh", &token_key(&refresh), &value, Some(&grant.grant_id), Some(refresh_expires)).await?;
        body["refresh_token"] = json!(refresh);
    }
    if scopes.contains(&Scope::OpenId)
        && let Some(username) = &grant.username
    {
        let mut claims = json!({
            // The issuer of the profile's server (Epic's `…/oauth2` is not its FHIR base: a classic trap).
            "iss": s.config.issuer_for(&grant.profile()),
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
            claims["fhirUser"] = json!(format!("{}/{fu}", s.config.fhir_base_for(&grant.profile())));
        }
        body["id_token"] = json!(s.keys.sign_jwt(&claims).map_err(OAuthError::internal)?);
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
    if let Some(c) = &launch.app_context {
        body["appContext"] = json!(c);
    }
    let rules = s.config.profiles.rules(&grant.profile());
    // The launch's tenant, else the tenant of the profile's FHIR base (Oracle's).
    if let Some(t) = launch.tenant.as_deref().or(rules.tenant()) {
        body["tenant"] = json!(t);
    }
    for (k, v) in &launch.extra {
        if body.get(k).is_none() {
            body[k] = v.clone();
        }
    }
    crate::profile::shape_response(rules, &grant, &mut body);
    if let Some(st) = request_state
        && rules.tokens.echo_state.as_ref().is_some_and(|r| r.value)
    {
        body["state"] = json!(st);
    }
    // Stored, now checked: a revocation of this grant that raced the issue (a copied refresh token spent
    // on another node, a withdrawn consent) either swept these tokens or is seen here (see `revoke_grant`).
    if s.grant_revoked(&grant.grant_id).await? {
        s.revoke_grant(&grant.grant_id).await?;
        s.audit("token").grant(&grant).refused().record("the grant was revoked while its tokens were issued; they are revoked too");
        return Err(OAuthError::invalid_grant("the grant was revoked"));
    }
    // The user's account disabled since the code was made (disabling revokes the grants it finds, and a
    // code stored at that moment may be missed): nothing issued for it works.
    if let Some(username) = &grant.username
        && crate::registry::get_user(s.store.as_ref(), username).await?.is_none()
    {
        s.revoke_grant(&grant.grant_id).await?;
        s.audit("token").grant(&grant).refused().record("the user's account is disabled or removed; the tokens are revoked");
        return Err(OAuthError::invalid_grant("the user's account is disabled"));
    }
    tracing::info!(client = %client.client_id, user = ?grant.username, patient = ?grant.patient, "tokens issued");
    let refresh_note = match (&refresh, body.get("refresh_token").is_some()) {
        (Refresh::New, true) => "a new refresh token",
        (Refresh::Same(_), _) => "the same refresh token again (no rotation)",
        (Refresh::Omit, _) => "no new refresh token (the old one stays valid)",
        (Refresh::New, false) => "no refresh token",
    };
    let done = if refreshing { "refreshed" } else { "code exchanged" };
    s.audit(if refreshing { "refresh" } else { "token" })
        .grant(&grant)
        .record(format!("{done}: access token for {lifetime} s and {refresh_note}; scope: {}", grant.scope));
    Ok(body)
}
