//! `refresh_token` (RFC 6749 §6): rotation with reuse detection (OAuth 2.0 Security BCP §4.14), or the
//! vendor profile's own habit (the same token again, or none).

use super::issue::{Refresh, issue_tokens};
use crate::crypto::token_key;
use crate::model::{Client, Grant};
use crate::profile::RefreshHabit;
use crate::{OAuthError, Shared};
use serde_json::Value;
use smart::ScopeSet;

/// The last refresh of a grant, under a profile that throttles refreshes (expires after the interval).
const REFRESHED: &str = "refreshed";

pub(super) async fn exchange(s: &Shared, client: &Client, rt: &str, scope: Option<&str>) -> Result<Value, OAuthError> {
    let hash = token_key(rt);
    let record = s.store.auth_get("refresh", &hash).await?.ok_or_else(|| OAuthError::invalid_grant("the refresh token is invalid or has expired"))?;
    let grant: Grant = serde_json::from_str(&record.value).map_err(|_| OAuthError::internal("unreadable refresh record"))?;
    // Another client's refresh token is refused first: reuse detection (which revokes the grant) is
    // only for the client the token was issued to.
    if grant.client_id != client.client_id {
        return Err(OAuthError::invalid_grant("the refresh token was issued to another client"));
    }
    if record.revoked {
        return Err(OAuthError::invalid_grant("the refresh token was revoked"));
    }
    if record.used {
        return Err(reused(s, client, &grant).await);
    }
    if let Some(session) = &grant.session
        && !crate::session::is_live(s, session).await?
    {
        s.audit("refresh").grant(&grant).refused().record("refused: online access ended when the user signed out");
        return Err(OAuthError::invalid_grant("the user has signed out: online access ends with their sign-in"));
    }
    if grant.revoke_at.is_some_and(|at| at <= s.now_ms()) {
        let _ = s.revoke_grant(&grant.grant_id).await;
        s.audit("refresh").grant(&grant).refused().record("refused: the grant was revoked (injected fault)");
        return Err(OAuthError::invalid_grant("the refresh token was revoked"));
    }
    if grant.faults().refresh_fails {
        s.audit("refresh").grant(&grant).refused().record("refused with invalid_grant (injected fault: refresh fails)");
        return Err(OAuthError::invalid_grant("the refresh token is no longer valid"));
    }
    // The request is checked before the token is spent, so a bad request does not burn it.
    let narrowed = match scope {
        None => None,
        Some(requested) => {
            let requested = ScopeSet::parse(requested);
            let within = ScopeSet::parse(&grant.scope).narrow(&requested);
            if !requested.invalid.is_empty() || within.to_string() != requested.to_string() {
                return Err(OAuthError::invalid_scope("a refresh may only ask for scopes that were granted"));
            }
            Some(within.to_string())
        }
    };
    // The app's registration may have shrunk since: never refresh beyond what it is allowed now.
    let current = narrowed.clone().unwrap_or_else(|| grant.scope.clone());
    let allowed_now = ScopeSet::parse(&client.allowed_scope).narrow(&ScopeSet::parse(&current)).to_string();
    let mut narrowed = if allowed_now == grant.scope { narrowed } else { Some(allowed_now) };
    // So may the user's rights (`kindling users rights`): never refresh beyond them either.
    if let Some(username) = &grant.username
        && let Some(rights) = crate::registry::get_user(s.store.as_ref(), username).await?.and_then(|u| u.rights)
    {
        let current = narrowed.clone().unwrap_or_else(|| grant.scope.clone());
        let bounded = crate::authorize::within_rights(&ScopeSet::parse(&rights), &ScopeSet::parse(&current)).to_string();
        if bounded != current {
            narrowed = Some(bounded);
        }
    }
    let rules = s.config.profiles.rules(&grant.profile());
    // A vendor that throttles refreshes: one per grant per interval, counted on every node alike. The mark
    // is taken back when the refresh then fails on the server's side, so a retry is not throttled.
    let throttled = rules.tokens.min_refresh_interval_secs.as_ref().map(|r| r.value);
    if let Some(min) = throttled {
        let now = s.now_ms();
        if !s.store.auth_insert_new(REFRESHED, &grant.grant_id, "", Some(now + min * 1000)).await? {
            let until = s.store.auth_get(REFRESHED, &grant.grant_id).await?.and_then(|r| r.expires).unwrap_or(now + min * 1000);
            let wait = ((until - now).max(0) as u64).div_ceil(1000);
            s.audit("refresh").grant(&grant).refused().record(format!("throttled: one refresh per {min} s ({} profile)", rules.name));
            return Err(OAuthError::throttled(
                wait,
                format!("refreshed too often: this server allows one refresh per {min} s; retry after the time given in Retry-After"),
            ));
        }
    }
    let grant_id = grant.grant_id.clone();
    let result = refresh_with(s, client, rules.refresh(), grant, rt, &hash, narrowed).await;
    if throttled.is_some() && result.as_ref().is_err_and(OAuthError::is_server_side) {
        let _ = s.store.auth_delete(REFRESHED, &grant_id).await;
    }
    result
}

/// The refresh itself, as the profile answers it: rotation (the old token spent, reuse detected), the same
/// token again, or none.
async fn refresh_with(
    s: &Shared,
    client: &Client,
    habit: RefreshHabit,
    grant: Grant,
    rt: &str,
    hash: &str,
    narrowed: Option<String>,
) -> Result<Value, OAuthError> {
    let keep = match habit {
        RefreshHabit::Rotate => None,
        RefreshHabit::Same => Some(Refresh::Same(rt)),
        RefreshHabit::None => Some(Refresh::Omit),
    };
    if let Some(keep) = keep {
        return issue_tokens(s, client, grant, narrowed, keep, None).await;
    }
    let spent = match s.store.auth_consume("refresh", hash).await? {
        Some(r) if !r.used && !r.revoked => r,
        _ => return Err(reused(s, client, &grant).await),
    };
    let grant_id = grant.grant_id.clone();
    let result = issue_tokens(s, client, grant, narrowed, Refresh::New, None).await;
    // The new tokens could not be stored (the database went away for a moment): the client is told to
    // retry (503), so the token it holds is made unspent again. Kept spent, the retry would read as a
    // stolen copy coming back and revoke the whole grant. Never for a grant revoked meanwhile: looked for
    // before, and after (a revocation in between is then completed here, as `issue_tokens` does).
    if result.as_ref().is_err_and(OAuthError::is_server_side) {
        let restore = async {
            if s.grant_revoked(&grant_id).await? {
                return Ok(());
            }
            s.store.auth_put("refresh", hash, &spent.value, spent.grant_id.as_deref(), spent.expires).await?;
            if s.grant_revoked(&grant_id).await? {
                s.revoke_grant(&grant_id).await?;
            }
            Ok::<(), store::StoreError>(())
        };
        if let Err(e) = restore.await {
            tracing::warn!(error = %e, "a refresh token spent on a failed refresh could not be restored");
        }
    }
    result
}

/// A rotated-out refresh token came back: someone holds a copy. Revoke the whole grant.
async fn reused(s: &Shared, client: &Client, grant: &Grant) -> OAuthError {
    let n = s.revoke_grant(&grant.grant_id).await.unwrap_or(0);
    tracing::warn!(client = %client.client_id, revoked = n, "refresh token reused; the grant is revoked");
    s.audit("refresh-reuse").grant(grant).refused().record("a rotated-out refresh token came back; the grant was revoked");
    OAuthError::invalid_grant("the refresh token was already used")
}
