//! App registration pages.

use super::*;

pub(crate) fn kind_str(k: ClientKind) -> &'static str {
    match k {
        ClientKind::Public => "public",
        ClientKind::ConfidentialSymmetric => "confidential-symmetric",
        ClientKind::ConfidentialAsymmetric => "confidential-asymmetric",
    }
}

pub(crate) async fn apps_list(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let sess = match administrator(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut apps = match auth::registry::list_clients(s.store.as_ref()).await {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    apps.sort_by_key(|a| a.name.to_lowercase());
    let rows = apps.into_iter().map(|c| AppRow { kind: kind_str(c.kind), client_id: c.client_id, name: c.name, disabled: c.disabled }).collect();
    render(StatusCode::OK, &AppsPage { nav: Nav::of(&sess), apps: rows })
}

pub(crate) async fn app_new(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let sess = match administrator(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    render(StatusCode::OK, &AppFormPage::new_app(Nav::of(&sess), AppForm::default(), None).offering(profiles(&s)))
}

pub(crate) async fn app_create(State(s): State<Shared>, headers: HeaderMap, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match administrator(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let mut form = AppForm::from_params(&p);
    let slug: String = form
        .name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|x| !x.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    form.client_id = format!("{}-{suffix}", if slug.is_empty() { "app" } else { &slug[..slug.len().min(24)] });
    let client = match form.to_client(None, &s.config.profiles) {
        Ok(c) => c,
        Err(why) => return render(StatusCode::BAD_REQUEST, &AppFormPage::new_app(Nav::of(&sess), form, Some(why)).offering(profiles(&s))),
    };
    match auth::registry::put_client(s.store.as_ref(), client).await {
        Ok(secret) => {
            s.audit("app-registered").client(form.client_id.as_str()).user(sess.user.username.as_str()).record("registered in the EHR");
            render(StatusCode::CREATED, &AppFormPage::created(Nav::of(&sess), form, secret).offering(profiles(&s)))
        }
        Err(e) => internal(e),
    }
}

/// The page for an app id that is not registered.
fn no_such_app(sess: &Session) -> Response {
    message(Nav::of(sess), StatusCode::NOT_FOUND, "No such app", "No app with this client id is registered.", "Pick an app from the list.", "/ehr/apps")
}

pub(crate) async fn stored_client(s: &Shared, id: &str) -> Result<Option<auth::model::Client>, store::StoreError> {
    auth::registry::stored_client(s.store.as_ref(), id).await
}

pub(crate) async fn app_edit(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let sess = match administrator(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match stored_client(&s, &id).await {
        Ok(Some(c)) => render(StatusCode::OK, &AppFormPage::edit(Nav::of(&sess), AppForm::from_client(&c), None).offering(profiles(&s))),
        Ok(None) => no_such_app(&sess),
        Err(e) => internal(e),
    }
}

pub(crate) async fn app_update(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match administrator(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let existing = match stored_client(&s, &id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return no_such_app(&sess);
        }
        Err(e) => return internal(e),
    };
    let mut form = AppForm::from_params(&p);
    form.client_id = existing.client_id.clone();
    form.kind = kind_str(existing.kind).to_string();
    form.disabled = existing.disabled;
    let client = match form.to_client(Some(&existing), &s.config.profiles) {
        Ok(c) => c,
        Err(why) => return render(StatusCode::BAD_REQUEST, &AppFormPage::edit(Nav::of(&sess), form, Some(why)).offering(profiles(&s))),
    };
    match auth::registry::put_client_as_is(s.store.as_ref(), &client).await {
        Ok(()) => {
            s.audit("app-updated").client(client.client_id.as_str()).user(sess.user.username.as_str()).record("registration edited in the EHR");
            Redirect::to(&format!("/ehr/apps/{}", client.client_id)).into_response()
        }
        Err(e) => internal(e),
    }
}

pub(crate) async fn app_status(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match administrator(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let disabled = p.get("disabled").map(String::as_str) == Some("1");
    match auth::apps::set_disabled(&s, &id, disabled, Some(sess.user.username.as_str())).await {
        Ok(Some(_)) => {}
        Ok(None) => return no_such_app(&sess),
        Err(e) => return internal(e),
    }
    Redirect::to(&format!("/ehr/apps/{id}")).into_response()
}
