//! The Users page (administrators only): every account, adding one, and for each account disabling or
//! enabling it, a new password, its rights (what it may let apps do) and the administrator role. The rules
//! are `auth::accounts`' (the same as `kindling users`); every change is audited with who made it.

use super::*;
use auth::accounts::{self, AccountError};

/// An account as the page lists it.
pub struct UserRow {
    pub username: String,
    pub name: String,
    pub role: &'static str,
    pub fhir_user: String,
    pub rights: String,
    pub admin: bool,
    pub disabled: bool,
}

/// What the add form was filled with (kept when it is refused; never the password).
#[derive(Default)]
pub struct NewUser {
    pub username: String,
    pub name: String,
    pub role: String,
    pub fhir_user: String,
}

#[derive(Template)]
#[template(path = "users.html")]
pub struct UsersPage {
    pub nav: Nav,
    pub users: Vec<UserRow>,
    pub form: NewUser,
    pub notice: Option<String>,
    pub error: Option<String>,
    pub min_password: usize,
}

async fn page(s: &Shared, sess: &Session, status: StatusCode, form: NewUser, notice: Option<String>, error: Option<String>) -> Response {
    let users = match accounts::list(s).await {
        Ok(u) => u,
        Err(e) => return internal(e),
    };
    let users = users
        .into_iter()
        .map(|u| UserRow {
            rights: u.rights.clone().unwrap_or_default(),
            role: accounts::role_name(u.role),
            username: u.username,
            name: u.display_name,
            fhir_user: u.fhir_user,
            admin: u.admin,
            disabled: u.disabled,
        })
        .collect();
    render(status, &UsersPage { nav: Nav::of(sess), users, form, notice, error, min_password: accounts::MIN_PASSWORD })
}

/// `GET /ehr/users`.
pub(crate) async fn users_page(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let sess = match administrator(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    page(&s, &sess, StatusCode::OK, NewUser { role: "clinician".into(), ..NewUser::default() }, None, None).await
}

/// `POST /ehr/users`: adds an account.
pub(crate) async fn user_create(State(s): State<Shared>, headers: HeaderMap, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match administrator(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let get = |k: &str| p.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let form = NewUser { username: get("username"), name: get("name"), role: get("role"), fhir_user: get("fhir_user") };
    let password = p.get("password").cloned().unwrap_or_default();
    match accounts::add(&s, Some(&sess.user.username), &form.username, &form.name, &form.role, &form.fhir_user, &password).await {
        Ok(u) => {
            let notice = format!("Added {} ({}), linked to {}.", u.username, u.display_name, u.fhir_user);
            page(&s, &sess, StatusCode::CREATED, NewUser { role: "clinician".into(), ..NewUser::default() }, Some(notice), None).await
        }
        Err(AccountError::Refused(why)) => page(&s, &sess, StatusCode::BAD_REQUEST, form, None, Some(sentence(&why))).await,
        Err(AccountError::Store(e)) => internal(e),
    }
}

/// `POST /ehr/users/{username}`: one change to an account, named by `action`.
pub(crate) async fn user_change(State(s): State<Shared>, headers: HeaderMap, Path(username): Path<String>, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match administrator(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let by = Some(sess.user.username.as_str());
    let field = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
    let done: Result<String, AccountError> = match field("action") {
        "disable" => accounts::disable(&s, by, &username).await.map(|n| format!("Disabled {username}; {n} app grant(s) revoked.")),
        "enable" => accounts::enable(&s, by, &username).await.map(|()| format!("Enabled {username}.")),
        "password" => accounts::passwd(&s, by, &username, field("password")).await.map(|()| format!("Set a new password for {username}.")),
        "rights" => accounts::set_rights(&s, by, &username, Some(field("rights"))).await.map(|r| match r {
            Some(r) => format!("{username} may now let apps do at most: {r}."),
            None => format!("{username} may now let apps do whatever the role allows."),
        }),
        "admin" => accounts::set_admin(&s, by, &username, true).await.map(|()| format!("{username} is now an administrator.")),
        "unadmin" => accounts::set_admin(&s, by, &username, false).await.map(|()| format!("{username} is no longer an administrator.")),
        _ => Err(AccountError::Refused("choose one of the buttons".into())),
    };
    let blank = NewUser { role: "clinician".into(), ..NewUser::default() };
    match done {
        Ok(notice) => page(&s, &sess, StatusCode::OK, blank, Some(notice), None).await,
        Err(AccountError::Refused(why)) => page(&s, &sess, StatusCode::BAD_REQUEST, blank, None, Some(sentence(&why))).await,
        Err(AccountError::Store(e)) => internal(e),
    }
}

/// A refusal as a sentence: capital first letter, full stop.
fn sentence(why: &str) -> String {
    let mut chars = why.chars();
    let first: String = chars.next().map(|c| c.to_uppercase().collect()).unwrap_or_default();
    let text = format!("{first}{}", chars.as_str());
    if text.ends_with('.') { text } else { format!("{text}.") }
}
