//! The apps a user has authorised, and withdrawing one.

use super::*;

/// The apps the signed-in user (clinician or patient) authorised, with what each may do, and a button to
/// withdraw each one's access.
pub(crate) async fn connected(State(s): State<Shared>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(sess) = session::current(&s, &headers).await else { return Redirect::to("/ehr/login").into_response() };
    let now = s.now_ms();
    let apps = match auth::grants::connected_apps(s.store.as_ref(), &sess.user.username, now).await {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    let rows = apps
        .into_iter()
        .map(|a| ConnectedRow {
            may: auth::grants::in_plain_words(&a.scope),
            authorised: a.authorised.map_or_else(|| "—".to_string(), |t| clock_time(t, true)),
            status: match a.access_until {
                Some(t) if t > now => format!("Has access now (until {} UTC)", clock_time(t, true)),
                _ if a.live_grants > 0 => "Can renew its access without asking you".to_string(),
                _ => "No access now; it may reconnect without asking while your consent stands".to_string(),
            },
            client_id: a.client_id,
            name: a.name,
        })
        .collect();
    let withdrawn = q.get("withdrawn").cloned();
    render(StatusCode::OK, &ConnectedPage { nav: Nav::of(&sess), apps: rows, withdrawn })
}

/// Withdraws an app's access for the signed-in user: its tokens stop working now and the next launch asks
/// for consent again.
pub(crate) async fn withdraw(State(s): State<Shared>, headers: HeaderMap, Path(client_id): Path<String>, axum::Form(p): axum::Form<Params>) -> Response {
    let Some(sess) = session::current(&s, &headers).await else { return Redirect::to("/ehr/login").into_response() };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let revoked = match auth::grants::withdraw(&s, &sess.user.username, &client_id).await {
        Ok(n) => n,
        Err(e) => return internal(e),
    };
    tracing::info!(client = %client_id, user = %sess.user.username, grants = revoked, "access withdrawn");
    s.audit("withdraw")
        .client(client_id.as_str())
        .user(sess.user.username.as_str())
        .record(format!("access withdrawn by the user; {revoked} grant(s) revoked"));
    let to = format!("/ehr/connected?withdrawn={}", url::form_urlencoded::byte_serialize(client_id.as_bytes()).collect::<String>());
    Redirect::to(&to).into_response()
}
