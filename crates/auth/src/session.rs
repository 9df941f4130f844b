//! Browser sessions of people signed in to Kindling: one cookie shared by the EHR's pages and the
//! authorisation endpoint, so that a clinician signed in to the EHR is not asked to sign in again when an
//! app they launched asks for authorisation. The cookie holds a random token; the store keeps its hash.

use crate::crypto::{random_token, token_hash};
use crate::model::User;
use crate::{Shared, registry};
use axum::http::{HeaderMap, HeaderValue, header};

/// The name of the sign-in session cookie.
pub const COOKIE: &str = "kindling_session";
/// How long a sign-in session lasts (hours).
pub const HOURS: i64 = 8;
const KIND: &str = "session";

/// A signed-in person.
#[derive(Clone)]
pub struct Session {
    /// Who is signed in.
    pub user: User,
    /// Derived from the session token: forms carry it so that another site cannot post them (CSRF).
    pub csrf: String,
    /// The session's key in the store (a hash of the cookie's token): what an `online_access` grant is
    /// tied to.
    pub(crate) key: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Session {
    /// Whether a submitted form's CSRF token is this session's.
    pub fn csrf_ok(&self, submitted: Option<&str>) -> bool {
        submitted.is_some_and(|s| crate::crypto::constant_time_eq(s.as_bytes(), self.csrf.as_bytes()))
    }
}

fn csrf_of(token: &str) -> String {
    token_hash(&format!("csrf:{token}"))
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    cookie_named(headers, COOKIE)
}

fn cookie_named(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

/// The browser-binding cookie: a random value per browser, set by the authorisation endpoint before anyone
/// signs in. A pending authorisation request keeps its hash, and its forms are accepted only with it.
pub const BROWSER_COOKIE: &str = "kindling_authz";

/// The hash of the request's browser-binding cookie and, when the browser had none, the `Set-Cookie` value
/// that gives it one.
pub fn browser_binding(server: &crate::AuthServer, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    if let Some(token) = cookie_named(headers, BROWSER_COOKIE).filter(|t| t.len() >= 32) {
        return (token_hash(&format!("browser:{token}")), None);
    }
    let token = random_token();
    let secure = if server.config.public_url.starts_with("https://") { "; Secure" } else { "" };
    let cookie = HeaderValue::from_str(&format!("{BROWSER_COOKIE}={token}; Path=/auth; HttpOnly; SameSite=Lax; Max-Age={}{secure}", HOURS * 3600)).ok();
    (token_hash(&format!("browser:{token}")), cookie)
}

/// Whether the request comes from the browser whose binding hash is `bound`.
pub fn same_browser(headers: &HeaderMap, bound: &str) -> bool {
    !bound.is_empty()
        && cookie_named(headers, BROWSER_COOKIE)
            .is_some_and(|t| crate::crypto::constant_time_eq(token_hash(&format!("browser:{t}")).as_bytes(), bound.as_bytes()))
}

/// Whether a form post comes from this server's own pages: browsers send `Origin` with every POST, so a
/// post from another site (login CSRF, a forged consent) is recognised and refused. Requests without
/// `Origin` (not from a browser) pass; the session cookie's SameSite=Lax keeps those from riding on a
/// person's session.
pub fn same_origin(server: &crate::AuthServer, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let ours = url::Url::parse(&server.config.public_url).map(|u| u.origin().ascii_serialization()).unwrap_or_default();
    origin.to_str().is_ok_and(|o| o == ours)
}

/// Starts a session for `user`; returns the `Set-Cookie` value.
pub async fn start(server: &Shared, user: &User) -> Result<HeaderValue, store::StoreError> {
    Ok(begin(server, user).await?.0)
}

/// Starts a session for `user`; returns the `Set-Cookie` value and the session.
pub(crate) async fn begin(server: &Shared, user: &User) -> Result<(HeaderValue, Session), store::StoreError> {
    let token = random_token();
    let expires = server.now_ms() + HOURS * 3600 * 1000;
    let key = token_hash(&token);
    server.store.auth_put(KIND, &key, &user.username, None, Some(expires)).await?;
    let secure = if server.config.public_url.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}", HOURS * 3600);
    let cookie = HeaderValue::from_str(&cookie).map_err(|e| store::StoreError::Backend(e.to_string()))?;
    Ok((cookie, Session { user: user.clone(), csrf: csrf_of(&token), key }))
}

/// The session the request's cookie names, when it is live.
pub async fn current(server: &Shared, headers: &HeaderMap) -> Option<Session> {
    let token = cookie_value(headers)?;
    let record = server.store.auth_get(KIND, &token_hash(&token)).await.ok()??;
    if record.revoked || record.expires.is_some_and(|e| e <= server.now_ms()) {
        return None;
    }
    let user = registry::get_user(server.store.as_ref(), &record.value).await.ok()??;
    Some(Session { user, csrf: csrf_of(&token), key: token_hash(&token) })
}

/// Whether the session stored under `key` (a [`Session`]'s) is still live: not ended by signing out, by
/// the account being disabled or given a new password, and not expired.
pub(crate) async fn is_live(server: &Shared, key: &str) -> Result<bool, store::StoreError> {
    Ok(server.store.auth_get(KIND, key).await?.is_some_and(|r| !r.revoked && r.expires.is_none_or(|e| e > server.now_ms())))
}

/// Ends every session of `username` (an account disabled, or given a new password): their cookies stop
/// working for good, also if the account is enabled again. Returns how many ended. (Sessions are found by
/// reading them all: fine for an EHR's few thousand; a larger deployment wants an index by user.)
pub async fn end_all_of(store: &dyn store::AuthStore, username: &str) -> Result<usize, store::StoreError> {
    let mut ended = 0;
    for (key, record) in store.auth_list(KIND).await? {
        if record.value == username {
            store.auth_delete(KIND, &key).await?;
            ended += 1;
        }
    }
    Ok(ended)
}

/// Ends the request's session; returns the `Set-Cookie` value that clears the cookie.
pub async fn end(server: &Shared, headers: &HeaderMap) -> HeaderValue {
    if let Some(token) = cookie_value(headers) {
        let _ = server.store.auth_delete(KIND, &token_hash(&token)).await;
    }
    HeaderValue::from_static("kindling_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
}
