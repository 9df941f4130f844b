//! The clinician's and the patient's sign-in to the EHR and the portal (the authorisation server's session), and sign-out.

use super::*;
use auth::accounts::SignIn;
use std::borrow::Cow;

pub(crate) async fn login_page() -> Response {
    render(StatusCode::OK, &LoginPage::clinician(None))
}

pub(crate) async fn portal_login_page() -> Response {
    render(StatusCode::OK, &LoginPage::portal(None))
}

pub(crate) async fn sign_in(s: &Shared, headers: &HeaderMap, p: &Params, role: UserRole) -> Result<HeaderValue, Cow<'static, str>> {
    if !session::same_origin(s, headers) {
        return Err("This sign-in form came from another site and was refused. Open the EHR's own sign-in page.".into());
    }
    let username = p.get("username").map(String::as_str).unwrap_or("");
    let password = p.get("password").map(String::as_str).unwrap_or("");
    let user = match auth::accounts::sign_in(s, username, password).await {
        Ok(SignIn::Accepted(u)) => u,
        Ok(SignIn::Throttled { retry_after_secs }) => {
            s.audit("ehr-login").user(username).refused().record("refused: too many failed sign-ins");
            return Err(auth::accounts::throttled_message(retry_after_secs).into());
        }
        Ok(SignIn::Refused) => {
            s.audit("ehr-login").user(username).refused().record("wrong user name or password");
            return Err("That user name and password do not match. Try again.".into());
        }
        Ok(SignIn::Busy) => return Err(auth::accounts::BUSY_MESSAGE.into()),
        Err(_) => return Err("The sign-in could not be checked just now. Try again in a moment.".into()),
    };
    if user.role != role {
        return Err(match role {
            UserRole::Clinician => "This is the clinicians' sign-in. Patients sign in to the patient portal.",
            UserRole::Patient => "This is the patient portal. Clinicians sign in to the EHR.",
        }
        .into());
    }
    s.audit("ehr-login").user(user.username.as_str()).record("signed in to the EHR");
    session::start(s, &user).await.map_err(|_| "The sign-in could not be saved. Try again.".into())
}

pub(crate) async fn login(State(s): State<Shared>, headers: HeaderMap, axum::Form(p): axum::Form<Params>) -> Response {
    // A new sign-in replaces whatever session this browser had (not when the post is refused).
    if session::same_origin(&s, &headers) {
        let _ = session::end(&s, &headers).await;
    }
    match sign_in(&s, &headers, &p, UserRole::Clinician).await {
        Ok(cookie) => with_cookie(Redirect::to("/ehr/patients").into_response(), cookie),
        Err(why) => render(StatusCode::UNAUTHORIZED, &LoginPage::clinician(Some(&why))),
    }
}

pub(crate) async fn portal_login(State(s): State<Shared>, headers: HeaderMap, axum::Form(p): axum::Form<Params>) -> Response {
    if session::same_origin(&s, &headers) {
        let _ = session::end(&s, &headers).await;
    }
    match sign_in(&s, &headers, &p, UserRole::Patient).await {
        Ok(cookie) => with_cookie(Redirect::to("/portal").into_response(), cookie),
        Err(why) => render(StatusCode::UNAUTHORIZED, &LoginPage::portal(Some(&why))),
    }
}

pub(crate) fn with_cookie(mut r: Response, cookie: HeaderValue) -> Response {
    r.headers_mut().append(header::SET_COOKIE, cookie);
    r
}

pub(crate) async fn logout(State(s): State<Shared>, headers: HeaderMap, axum::Form(p): axum::Form<Params>) -> Response {
    let back = match session::current(&s, &headers).await {
        Some(sess) => {
            if let Some(r) = csrf_refusal(&sess, &p) {
                return r;
            }
            if sess.user.role == UserRole::Patient { "/portal/login" } else { "/ehr/login" }
        }
        None => "/ehr/login",
    };
    let cookie = session::end(&s, &headers).await;
    with_cookie(Redirect::to(back).into_response(), cookie)
}
