//! The sign-in form of a pending request.

use super::*;

/// Sign-in form submission.
pub async fn login(State(s): State<Shared>, headers: HeaderMap, Form(p): Form<Params>) -> Response {
    let request_id = p.get("request").cloned().unwrap_or_default();
    let mut pending = match bound_request(&s, &headers, &request_id, Awaiting::SignIn).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let client = match registry::get_client(s.store.as_ref(), &pending.client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return expired_request(&s),
        Err(e) => return internal(&s, e),
    };
    let username = p.get("username").map(String::as_str).unwrap_or("");
    let password = p.get("password").map(String::as_str).unwrap_or("");
    let user = match crate::accounts::sign_in(&s, username, password).await {
        Ok(crate::accounts::SignIn::Accepted(u)) => u,
        Ok(crate::accounts::SignIn::Throttled { retry_after_secs }) => {
            s.audit("login").client(client.client_id.as_str()).user(username).refused().record("refused: too many failed sign-ins");
            let why = crate::accounts::throttled_message(retry_after_secs);
            return login_page(&s, &request_id, &client.name, pending.username.as_deref(), Some(&why));
        }
        Ok(crate::accounts::SignIn::Busy) => {
            return login_page(&s, &request_id, &client.name, pending.username.as_deref(), Some(crate::accounts::BUSY_MESSAGE));
        }
        Ok(crate::accounts::SignIn::Refused) => {
            tracing::info!("sign-in failed");
            s.audit("login").client(client.client_id.as_str()).user(username).refused().record("wrong user name or password");
            return login_page(&s, &request_id, &client.name, pending.username.as_deref(), Some("That user name and password do not match. Try again."));
        }
        Err(e) => return internal(&s, e),
    };
    // An EHR launch continues only as the user who launched it.
    if pending.username.as_ref().is_some_and(|launcher| *launcher != user.username) {
        s.audit("login").client(client.client_id.as_str()).user(user.username.as_str()).refused().record("signed in as another user than the launch's");
        return login_page(&s, &request_id, &client.name, pending.username.as_deref(), Some("This app was launched by another user. Sign in as that user."));
    }
    let (cookie, session) = match session::begin(&s, &user).await {
        Ok(c) => c,
        Err(e) => return internal(&s, e),
    };
    tracing::info!(user = %user.username, "signed in");
    s.audit("login").client(client.client_id.as_str()).user(user.username.as_str()).record("signed in");
    pending.username = Some(user.username.clone());
    let mut response = proceed(&s, Some(session), &request_id, pending, &client).await;
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}
