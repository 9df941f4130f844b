//! What a user has authorised: every app with a remembered consent or live tokens, and withdrawing an
//! app's access at once (its tokens revoked, its remembered consent forgotten). The EHR and the portal show
//! this as "Connected apps", the SMART `management_endpoint`.

use crate::model::Grant;
use std::collections::BTreeMap;
use store::{AuthStore, StoreError};

/// An app the user authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedApp {
    /// The app's client id.
    pub client_id: String,
    /// The registered name (the client id when the app is no longer registered).
    pub name: String,
    /// The scopes the user approved (remembered consent), or those of the live tokens.
    pub scope: String,
    /// When consent was given (Unix ms), for consents recorded with their time.
    pub authorised: Option<i64>,
    /// Grants (a sign-in and consent each) that still have a live token.
    pub live_grants: usize,
    /// Until when its newest access token works (Unix ms).
    pub access_until: Option<i64>,
}

const CONSENT: &str = "consent";

/// The key of the consent `username` gave `client_id` (kind `consent`).
fn consent_key(username: &str, client_id: &str) -> String {
    format!("{username}|{client_id}")
}

/// A remembered consent: what a user decided for an app, so that a repeat launch asking no more than was
/// offered then needs no extra click. Its stored form (kind `consent`, key `user|client`) is this type's
/// serde form and is read and written only here.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsentDecision {
    /// The scopes the consent page offered.
    #[serde(default)]
    pub offered: String,
    /// The scopes the user approved (narrowed to categories where they chose some).
    #[serde(default)]
    pub approved: String,
    /// When (Unix ms); absent in consents recorded before it was kept.
    #[serde(default)]
    pub at: Option<i64>,
}

/// The consent `username` gave `client_id`, if one is remembered (an unreadable record counts as none).
pub async fn remembered_consent(store: &dyn AuthStore, username: &str, client_id: &str) -> Result<Option<ConsentDecision>, StoreError> {
    Ok(store.auth_get(CONSENT, &consent_key(username, client_id)).await?.and_then(|r| serde_json::from_str(&r.value).ok()))
}

/// Remembers `decision` (replacing an earlier one).
pub async fn remember_consent(store: &dyn AuthStore, username: &str, client_id: &str, decision: &ConsentDecision) -> Result<(), StoreError> {
    let value = serde_json::to_string(decision).map_err(|e| StoreError::Backend(e.to_string()))?;
    store.auth_put(CONSENT, &consent_key(username, client_id), &value, None, None).await
}

/// The token kinds a grant lives in: what makes an app connected, and what withdrawing stops (with the
/// codes not yet exchanged).
const TOKENS: &[&str] = &["refresh", "access"];
const TOKENS_AND_CODES: &[&str] = &["refresh", "access", "code"];

/// Whether a grant whose only unexpired record was just spent counts: for what is revoked it does (a
/// refresh token or code being exchanged at that moment is about to become new tokens), for what is shown
/// it does not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spent {
    Counted,
    Skipped,
}

/// The user's grants with a live record of one of `kinds`, by client: (grant ids, newest access expiry, a
/// scope).
async fn live_grants(
    store: &dyn AuthStore,
    username: &str,
    now: i64,
    kinds: &[&str],
    spent: Spent,
) -> Result<BTreeMap<String, (Vec<String>, Option<i64>, String)>, StoreError> {
    live_grants_where(store, now, kinds, spent, |g| g.username.as_deref() == Some(username)).await
}

/// The grants `of` picks with a live record of one of `kinds`, by client: (grant ids, newest access
/// expiry, a scope). Found by reading every record of those kinds: fine for what people do now and then
/// (withdrawing an app, disabling an account or an app).
async fn live_grants_where(
    store: &dyn AuthStore,
    now: i64,
    kinds: &[&str],
    spent: Spent,
    of: impl Fn(&Grant) -> bool,
) -> Result<BTreeMap<String, (Vec<String>, Option<i64>, String)>, StoreError> {
    let mut out: BTreeMap<String, (Vec<String>, Option<i64>, String)> = BTreeMap::new();
    for &kind in kinds {
        for (_, r) in store.auth_list(kind).await? {
            if r.revoked || (r.used && spent == Spent::Skipped) || r.expires.is_some_and(|e| e <= now) {
                continue;
            }
            let Ok(g) = serde_json::from_str::<Grant>(&r.value) else { continue };
            if !of(&g) || g.revoke_at.is_some_and(|t| t <= now) {
                continue;
            }
            let e = out.entry(g.client_id.clone()).or_insert_with(|| (Vec::new(), None, g.scope.clone()));
            if !e.0.contains(&g.grant_id) {
                e.0.push(g.grant_id.clone());
            }
            if kind == "access" {
                e.1 = e.1.max(r.expires.or(g.expires));
            }
        }
    }
    Ok(out)
}

/// The apps `username` has authorised, by name.
pub async fn connected_apps(store: &dyn AuthStore, username: &str, now: i64) -> Result<Vec<ConnectedApp>, StoreError> {
    let mut apps: BTreeMap<String, ConnectedApp> = BTreeMap::new();
    let prefix = format!("{username}|");
    for (key, r) in store.auth_list(CONSENT).await? {
        let Some(client_id) = key.strip_prefix(&prefix) else { continue };
        let decision: ConsentDecision = serde_json::from_str(&r.value).unwrap_or_default();
        apps.insert(
            client_id.to_string(),
            ConnectedApp {
                client_id: client_id.to_string(),
                name: client_id.to_string(),
                scope: decision.approved,
                authorised: decision.at,
                live_grants: 0,
                access_until: None,
            },
        );
    }
    for (client_id, (grants, until, scope)) in live_grants(store, username, now, TOKENS, Spent::Skipped).await? {
        let app = apps.entry(client_id.clone()).or_insert_with(|| ConnectedApp {
            client_id: client_id.clone(),
            name: client_id.clone(),
            scope,
            authorised: None,
            live_grants: 0,
            access_until: None,
        });
        app.live_grants = grants.len();
        app.access_until = until;
    }
    let mut out: Vec<ConnectedApp> = Vec::with_capacity(apps.len());
    for (_, mut app) in apps {
        if let Some(c) = crate::registry::get_client(store, &app.client_id).await? {
            app.name = c.name;
        }
        out.push(app);
    }
    out.sort_by(|a, b| a.name.to_lowercase().cmp(&b.name.to_lowercase()).then(a.client_id.cmp(&b.client_id)));
    Ok(out)
}

/// Withdraws what `username` authorised `client_id` to do: every grant's tokens (access, refresh, unused
/// codes) stop working now, and the remembered consent is forgotten, so the next launch asks again.
/// Returns how many grants were revoked.
pub async fn withdraw(s: &crate::Shared, username: &str, client_id: &str) -> Result<usize, StoreError> {
    let store = s.store.as_ref();
    store.auth_delete(CONSENT, &consent_key(username, client_id)).await?;
    let grant_ids = live_grants(store, username, s.now_ms(), TOKENS_AND_CODES, Spent::Counted).await?.remove(client_id).map(|g| g.0).unwrap_or_default();
    for id in &grant_ids {
        s.revoke_grant(id).await?;
    }
    Ok(grant_ids.len())
}

/// Approved scopes in plain words, as the consent page words them.
pub fn in_plain_words(scope: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for token in scope.split_whitespace() {
        if let Ok(s) = smart::Scope::parse(token) {
            let words = crate::authorize::explain(&s);
            if !out.contains(&words) {
                out.push(words);
            }
        }
    }
    out
}

/// Revokes every grant `username` holds, through any app (their account was disabled): all their tokens and
/// unused codes stop working now. Remembered consents stay, for when the account is enabled again. Returns how many
/// grants were revoked.
pub async fn revoke_all(s: &crate::Shared, username: &str) -> Result<usize, StoreError> {
    let mut n = 0;
    for (_, (grants, _, _)) in live_grants(s.store.as_ref(), username, s.now_ms(), TOKENS_AND_CODES, Spent::Counted).await? {
        for id in grants {
            s.revoke_grant(&id).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// The grants of `client_id` that still have a live token or an unused code, whoever they were issued
/// for (users, and the app itself for backend services).
pub async fn of_client(store: &dyn AuthStore, client_id: &str, now: i64) -> Result<Vec<String>, StoreError> {
    Ok(live_grants_where(store, now, TOKENS_AND_CODES, Spent::Counted, |g| g.client_id == client_id).await?.remove(client_id).map(|g| g.0).unwrap_or_default())
}
