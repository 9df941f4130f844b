//! The authorisation endpoint (GET and POST, RFC 6749 §4.1 with PKCE and SMART's `aud` and `launch`), and
//! the pages a person passes through: sign-in, patient picker, consent.
//!
//! Errors before the redirect URI is trusted (unknown app, unregistered redirect URI) are pages for a
//! person and never redirect; after that, RFC 6749 error codes go back to the app with `state` and `iss`.

use crate::crypto::{random_token, token_hash, verify_password};
use crate::model::{Awaiting, Client, Grant, LaunchContext, PendingAuthorization, Profile, User, UserRole};
use crate::pages::{self, ConsentItem, ConsentView, ErrorView, LoginView, PickerView};
use crate::{AuthServer, Shared, registry, session};
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use smart::{Scope, ScopeSet};
use std::collections::HashMap;

const REQUEST_KIND: &str = "authz_request";

type Params = HashMap<String, String>;

pub async fn authorize_get(State(s): State<Shared>, headers: HeaderMap, Query(p): Query<Params>) -> Response {
    authorize(&s, &headers, p).await
}

pub async fn authorize_post(State(s): State<Shared>, headers: HeaderMap, Form(p): Form<Params>) -> Response {
    authorize(&s, &headers, p).await
}

fn error_page(s: &AuthServer, status: StatusCode, title: &str, explanation: &str, action: &str) -> Response {
    pages::serve(status, s.pages.error(&ErrorView { title, explanation, action }))
}

fn login_page(s: &AuthServer, request_id: &str, app_name: &str, expected_user: Option<&str>, error: Option<&str>) -> Response {
    let status = if error.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK };
    pages::serve(status, s.pages.login(&LoginView { request_id, app_name, expected_user, error }))
}

fn internal(s: &AuthServer, e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "authorisation server error");
    error_page(
        s,
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The sign-in service could not complete this step.",
        "Try launching the app again. If it keeps happening, tell your system administrator.",
    )
}

/// A redirect back to the app with an RFC 6749 error.
fn redirect_error(s: &Shared, trace: Option<&str>, redirect_uri: &str, state: Option<&str>, error: &str, description: &str) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return error_page(s, StatusCode::BAD_REQUEST, "The app's return address is not valid", description, "Tell the app's developer.");
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("error", error);
        q.append_pair("error_description", description);
        if let Some(st) = state {
            q.append_pair("state", st);
        }
        q.append_pair("iss", &s.config.fhir_base);
    }
    tracing::info!(error, "authorisation refused");
    s.audit("authorize").launch(trace).refused().record(format!("refused, sent back to the app: {error}: {description}"));
    Redirect::to(url.as_str()).into_response()
}

async fn authorize(s: &Shared, headers: &HeaderMap, p: Params) -> Response {
    let get = |k: &str| p.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(client_id) = get("client_id") else {
        return error_page(
            s,
            StatusCode::BAD_REQUEST,
            "This app did not say who it is",
            "The request has no client_id.",
            "Tell the app's developer; the app must be registered and send its client id.",
        );
    };
    let client = match registry::get_client(s.store.as_ref(), client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return error_page(
                s,
                StatusCode::BAD_REQUEST,
                "This app is not registered here",
                &format!("No app with the client id '{client_id}' is registered, or it has been disabled."),
                "Ask your administrator to register the app, or check the app's configuration.",
            );
        }
        Err(e) => return internal(s, e),
    };
    let Some(redirect_uri) = get("redirect_uri").filter(|r| client.redirect_uris.iter().any(|u| u == r)) else {
        return error_page(
            s,
            StatusCode::BAD_REQUEST,
            "The app's return address is not registered",
            &format!("{} asked to be sent back to an address it has not registered, so the request was stopped.", client.name),
            "Tell the app's developer: the redirect_uri must match a registered one exactly.",
        );
    };
    let state = get("state");
    // The launch this request belongs to, when it names one (even an expired one), for the inspector.
    let trace = match get("launch") {
        Some(handle) => s.store.auth_get(crate::launch::LAUNCH_REF, &token_hash(handle)).await.ok().flatten().map(|r| r.value),
        None => None,
    };
    if trace.is_some() {
        let show = |k: &str| match k {
            "state" | "nonce" | "code_challenge" => get(k).map(|v| format!("({} characters)", v.len())),
            "launch" => get(k).map(|_| "(handle)".to_string()),
            _ => get(k).map(str::to_string),
        };
        let params: Vec<String> =
            ["response_type", "client_id", "redirect_uri", "scope", "aud", "resource", "state", "nonce", "code_challenge", "code_challenge_method", "launch"]
                .iter()
                .filter_map(|k| show(k).map(|v| format!("{k}={v}")))
                .collect();
        s.audit("authorize-request").launch(trace.as_deref()).client(client.client_id.as_str()).record(params.join("\n"));
    }
    // An app that registered itself may have registered any address as its redirect URI: refusals made
    // before anyone has signed in are pages here, so that this endpoint is no open redirector for it
    // (RFC 9700 §4.11.2). Administrator-registered apps get RFC 6749 error redirects.
    let refuse = |error: &str, description: &str| {
        if client.self_registered {
            s.audit("authorize").launch(trace.as_deref()).client(client.client_id.as_str()).refused().record(format!("refused: {error}: {description}"));
            error_page(s, StatusCode::BAD_REQUEST, "This app's request cannot be accepted", description, "Tell the app's developer.")
        } else {
            redirect_error(s, trace.as_deref(), redirect_uri, state, error, description)
        }
    };
    if get("response_type") != Some("code") {
        return refuse("unsupported_response_type", "only response_type=code is supported");
    }
    let Some(code_challenge) = get("code_challenge") else {
        return refuse("invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256");
    };
    if get("code_challenge_method") != Some("S256") {
        return refuse("invalid_request", "code_challenge_method must be S256");
    }
    let aud = get("aud").or_else(|| get("resource"));
    if aud.map(|a| a.trim_end_matches('/')) != Some(s.config.fhir_base.as_str()) {
        return refuse("invalid_request", "aud must be this server's FHIR base URL");
    }
    let Some(scope) = get("scope") else {
        return refuse("invalid_scope", "scope is required");
    };
    let requested = ScopeSet::parse(scope);
    let mut launch: Option<LaunchContext> = None;
    if let Some(handle) = get("launch") {
        match s.store.auth_consume("launch", &token_hash(handle)).await {
            Ok(Some(r)) if !r.used => launch = serde_json::from_str(&r.value).ok(),
            Ok(Some(_)) => return refuse("invalid_request", "this launch was already used; launch the app again from the EHR"),
            Ok(None) => return refuse("invalid_request", "this launch has expired or is unknown; launch the app again from the EHR"),
            Err(e) => return internal(s, e),
        }
        if launch.is_none() {
            return refuse("invalid_request", "the launch could not be read");
        }
        if launch.as_ref().and_then(|l| l.client_id.as_deref()).is_some_and(|c| c != client.client_id) {
            return refuse("invalid_request", "this launch was made for another app");
        }
        if !requested.contains(&Scope::Launch) {
            return refuse("invalid_scope", "an EHR launch must request the launch scope");
        }
        if let Some(l) = launch.as_mut()
            && l.faults.no_encounter
        {
            l.encounter = None;
        }
    } else if requested.contains(&Scope::Launch) {
        return refuse("invalid_request", "the launch scope needs the launch parameter from the EHR");
    }
    let profile = launch.as_ref().and_then(|l| l.profile).or(client.profile).unwrap_or_default();
    if profile == Profile::Oracle && get("aud").is_none() {
        return refuse("invalid_request", "aud is required");
    }
    // The request belongs to this browser: its forms are accepted only with this browser's binding cookie.
    let (browser, set_cookie) = session::browser_binding(s, headers);
    let pending = PendingAuthorization {
        profile: Some(profile),
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_string(),
        scope: scope.to_string(),
        state: state.map(str::to_string),
        code_challenge: code_challenge.to_string(),
        nonce: get("nonce").map(str::to_string),
        username: launch.as_ref().and_then(|l| l.username.clone()),
        patient: launch.as_ref().and_then(|l| l.patient.clone()),
        launch,
        browser,
        awaiting: Awaiting::SignIn,
    };
    let request_id = random_token();
    if let Err(e) = save_pending(s, &request_id, &pending).await {
        return internal(s, e);
    }
    // Who is at the browser: the session's user. An EHR launch names its user; only that user, signed in
    // here (the EHR's sign-in shares the session), may continue it — the handle alone is not enough.
    let signed_in = session::current(s, headers).await.map(|sess| sess.user);
    let user = match (&pending.username, signed_in) {
        (Some(launcher), Some(user)) if *launcher != user.username => {
            return error_page(
                s,
                StatusCode::FORBIDDEN,
                "You are signed in as someone else",
                "This app was launched by another user than the one signed in to this browser.",
                "Sign out of the EHR, sign in as the user who launched the app, and launch it again from the patient's chart.",
            );
        }
        (_, user) => user,
    };
    let mut response = proceed(s, user, &request_id, pending, &client).await;
    if let Some(cookie) = set_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

async fn save_pending(s: &Shared, request_id: &str, pending: &PendingAuthorization) -> Result<(), store::StoreError> {
    let value = serde_json::to_string(pending).map_err(|e| store::StoreError::Backend(e.to_string()))?;
    s.store.auth_put(REQUEST_KIND, &token_hash(request_id), &value, None, Some(s.now_ms() + 15 * 60 * 1000)).await
}

async fn load_pending(s: &Shared, request_id: &str) -> Option<PendingAuthorization> {
    let r = s.store.auth_get(REQUEST_KIND, &token_hash(request_id)).await.ok()??;
    serde_json::from_str(&r.value).ok()
}

/// The pending request a posted form continues: only from the browser that started it, and only for the
/// step it waits for. Anything else gets a page for a person (and nothing about the request).
async fn bound_request(s: &Shared, headers: &HeaderMap, request_id: &str, step: Awaiting) -> Result<PendingAuthorization, Response> {
    if !session::same_origin(s, headers) {
        return Err(cross_site(s));
    }
    let Some(pending) = load_pending(s, request_id).await else { return Err(expired_request(s)) };
    if !session::same_browser(headers, &pending.browser) {
        tracing::info!(client = %pending.client_id, "authorisation form from another browser refused");
        s.audit("authorize")
            .launch(pending.launch_id())
            .client(pending.client_id.as_str())
            .refused()
            .record("a form of this request was posted by another browser (or without its cookie): refused");
        return Err(other_browser(s));
    }
    if pending.awaiting != step {
        return Err(expired_request(s));
    }
    Ok(pending)
}

/// The signed-in user of this browser, when they are the user the pending request is for: pick and consent
/// act only for that person (whatever the form or a launch handle says).
async fn acting_user(s: &Shared, headers: &HeaderMap, pending: &PendingAuthorization) -> Result<User, Response> {
    let Some(session) = session::current(s, headers).await else {
        return Err(error_page(
            s,
            StatusCode::UNAUTHORIZED,
            "You are not signed in",
            "Your sign-in ended before this step was finished.",
            "Go back to the app or the EHR and launch it again.",
        ));
    };
    if pending.username.as_deref() != Some(session.user.username.as_str()) {
        s.audit("authorize")
            .launch(pending.launch_id())
            .client(pending.client_id.as_str())
            .user(session.user.username.as_str())
            .refused()
            .record("a form of another user's request was posted: refused");
        return Err(error_page(
            s,
            StatusCode::FORBIDDEN,
            "You are signed in as someone else",
            "This sign-in belongs to another user than the one signed in to this browser.",
            "Sign out, sign in as the user who launched the app, and launch it again.",
        ));
    }
    Ok(session.user)
}

fn unreadable_form(s: &AuthServer) -> Response {
    error_page(
        s,
        StatusCode::BAD_REQUEST,
        "This form could not be read",
        "The page sent something the sign-in service does not understand.",
        "Go back to the app or the EHR and launch it again.",
    )
}

/// The person-facing routes answer every refusal with a page: an extractor's rejection (a form that is
/// not UTF-8, a wrong content type) is plain text, and becomes the sign-in service's error page here.
pub async fn page_errors(State(s): State<Shared>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let html = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || html {
        return response;
    }
    error_page(
        &s,
        status,
        "This request could not be read",
        "The sign-in service did not understand what the browser sent.",
        "Go back to the app or the EHR and launch it again.",
    )
}

fn other_browser(s: &AuthServer) -> Response {
    error_page(
        s,
        StatusCode::FORBIDDEN,
        "This sign-in was started in another browser",
        "The form was sent by a browser other than the one that opened this sign-in (or one that does not keep cookies), so it was stopped.",
        "Go back to the app or the EHR in this browser and launch the app again.",
    )
}

fn expired_request(s: &AuthServer) -> Response {
    error_page(
        s,
        StatusCode::BAD_REQUEST,
        "This sign-in has expired",
        "The page was open too long or was already used.",
        "Go back to the app (or the patient's chart in the EHR) and launch it again.",
    )
}

/// Decides the next step for the person at the browser (`user`, when signed in): sign-in, patient
/// choice, consent, or the code.
async fn proceed(s: &Shared, user: Option<User>, request_id: &str, mut pending: PendingAuthorization, client: &Client) -> Response {
    let Some(user) = user else { return login_page(s, request_id, &client.name, pending.username.as_deref(), None) };
    pending.username = Some(user.username.clone());
    if let Some(own) = user.own_patient() {
        // A patient acts only on their own record, whatever a launch or a form said.
        pending.patient = Some(own.to_string());
    }
    let granted = grantable(client, &user, &pending.scope);
    let wants_patient = granted.contains(&Scope::LaunchContext { context: "patient".into(), role: None })
        || granted.resource_scopes().any(|r| r.level == smart::Level::Patient);
    if pending.patient.is_none() {
        if let Some(own) = user.own_patient() {
            pending.patient = Some(own.to_string());
        } else if wants_patient {
            pending.awaiting = Awaiting::Patient;
            if let Err(e) = save_pending(s, request_id, &pending).await {
                return internal(s, e);
            }
            return match patient_choices(s).await {
                Ok(list) => pages::serve(StatusCode::OK, s.pages.patient_picker(&PickerView { request_id, app_name: &client.name, patients: &list })),
                Err(e) => internal(s, e),
            };
        }
    }
    // A repeat launch with consent already given needs no extra click: when everything asked now was
    // offered before, the user's earlier decision stands.
    let consent_key = crate::grants::consent_key(&user.username, &client.client_id);
    if let Ok(Some(r)) = s.store.auth_get("consent", &consent_key).await
        && let Ok(decision) = serde_json::from_str::<serde_json::Value>(&r.value)
    {
        let offered = ScopeSet::parse(decision["offered"].as_str().unwrap_or(""));
        let approved = ScopeSet::parse(decision["approved"].as_str().unwrap_or(""));
        if offered.narrow(&granted).to_string() == granted.to_string() {
            let approved = approved.narrow(&granted).to_string();
            s.audit("consent")
                .launch(pending.launch_id())
                .client(client.client_id.as_str())
                .user(user.username.as_str())
                .patient(pending.patient.as_deref())
                .record(format!("remembered from an earlier decision: {approved}"));
            return issue_code(s, pending, &user, approved).await;
        }
    }
    pending.awaiting = Awaiting::Consent;
    if let Err(e) = save_pending(s, request_id, &pending).await {
        return internal(s, e);
    }
    let patient_label = match &pending.patient {
        Some(p) => patient_label(s, p).await,
        None => None,
    };
    let items = consent_items(&granted);
    let view = ConsentView {
        request_id,
        app_name: &client.name,
        patient_label: patient_label.as_deref(),
        items: &items,
        offline: granted.contains(&Scope::OfflineAccess),
    };
    pages::serve(StatusCode::OK, s.pages.consent(&view))
}

async fn patient_choices(s: &Shared) -> Result<Vec<(String, String)>, store::StoreError> {
    let mut q = fhir::query::SearchQuery::new("Patient");
    q.sort.push(fhir::query::Sort { key: fhir::query::SortKey::Param { key: "Patient.family", kind: fhir::params::ParamKind::String }, descending: false });
    let keys = s.store.search(&q).await?;
    let patients = s.store.fetch(&keys[..keys.len().min(200)]).await?;
    Ok(patients.iter().map(|r| (r.id.clone(), label_of(&r.json, &r.id))).collect())
}

fn label_of(json: &str, id: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let name = &v["name"][0];
    let given = name["given"].as_array().map(|g| g.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" ")).unwrap_or_default();
    let family = name["family"].as_str().unwrap_or("");
    let birth = v["birthDate"].as_str().unwrap_or("unknown");
    format!("{given} {family} (born {birth}, id {id})").trim().to_string()
}

async fn patient_label(s: &Shared, id: &str) -> Option<String> {
    let r = s.store.read("Patient", id).await.ok()??;
    Some(label_of(&r.json, id))
}

const OBSERVATION_CATEGORIES: &[(&str, &str)] = &[
    ("http://terminology.hl7.org/CodeSystem/observation-category|vital-signs", "Vital signs"),
    ("http://terminology.hl7.org/CodeSystem/observation-category|laboratory", "Laboratory results"),
    ("http://terminology.hl7.org/CodeSystem/observation-category|social-history", "Social history"),
    ("http://terminology.hl7.org/CodeSystem/observation-category|survey", "Surveys and assessments"),
    ("http://terminology.hl7.org/CodeSystem/observation-category|procedure", "Clinical tests"),
    ("http://hl7.org/fhir/us/core/CodeSystem/us-core-category|sdoh", "Social determinants of health"),
];

const CONDITION_CATEGORIES: &[(&str, &str)] = &[
    ("http://terminology.hl7.org/CodeSystem/condition-category|problem-list-item", "Problem list"),
    ("http://terminology.hl7.org/CodeSystem/condition-category|encounter-diagnosis", "Encounter diagnoses"),
    ("http://hl7.org/fhir/us/core/CodeSystem/condition-category|health-concern", "Health concerns"),
];

pub(crate) fn explain(scope: &Scope) -> String {
    match scope {
        Scope::OpenId | Scope::Profile => "Know who you are".into(),
        Scope::FhirUser => "Know your user record (who you are in the record system)".into(),
        Scope::OfflineAccess => "Keep access when you are not signed in, until you withdraw it".into(),
        Scope::OnlineAccess => "Keep access while you are signed in".into(),
        Scope::Launch => "Open with the patient and encounter you are working on".into(),
        Scope::LaunchContext { context, .. } => format!("Know which {context} is selected"),
        Scope::Resource(r) => {
            let what = match r.resource_type.as_deref() {
                Some(t) => format!("{t} records"),
                None => "all kinds of records".to_string(),
            };
            let whose = match r.level {
                smart::Level::Patient => "for this patient",
                smart::Level::User => "that you can see",
                smart::Level::System => "for every patient",
            };
            let mut verbs = Vec::new();
            for (i, v) in [
                (smart::Interaction::Read, "read"),
                (smart::Interaction::Search, "search"),
                (smart::Interaction::Create, "create"),
                (smart::Interaction::Update, "change"),
                (smart::Interaction::Delete, "delete"),
            ] {
                if r.permissions.allows(i) {
                    verbs.push(v);
                }
            }
            let only = if r.constraints.is_empty() {
                String::new()
            } else {
                format!(" (only {})", r.constraints.iter().map(|(_, v)| v.rsplit('|').next().unwrap_or(v)).collect::<Vec<_>>().join(", "))
            };
            format!("{} {what} {whose}{only}", capitalise(&verbs.join(", ")))
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

fn categories_for(resource_type: Option<&str>) -> &'static [(&'static str, &'static str)] {
    match resource_type {
        Some("Observation") => OBSERVATION_CATEGORIES,
        Some("Condition") => CONDITION_CATEGORIES,
        _ => &[],
    }
}

/// What may be granted to this user through this app: requested ∩ the app's allowance, and for patient
/// users only patient-level resource scopes (their `user/` access would be every record; `system/` is for
/// backend services only).
pub(crate) fn grantable(client: &Client, user: &User, requested: &str) -> ScopeSet {
    let mut granted = ScopeSet::parse(&client.allowed_scope).narrow(&ScopeSet::parse(requested));
    let patient_user = user.role == UserRole::Patient;
    granted.scopes.retain(|s| match s {
        Scope::Resource(r) => r.level == smart::Level::Patient || (r.level == smart::Level::User && !patient_user),
        _ => true,
    });
    granted
}

fn consent_items(granted: &ScopeSet) -> Vec<ConsentItem> {
    granted
        .scopes
        .iter()
        .map(|sc| {
            let categories = match sc {
                Scope::Resource(r) if r.constraints.is_empty() => {
                    categories_for(r.resource_type.as_deref()).iter().map(|(v, l)| (v.to_string(), l.to_string())).collect()
                }
                _ => Vec::new(),
            };
            ConsentItem { scope: sc.to_string(), explanation: explain(sc), optional: matches!(sc, Scope::Resource(_)), categories }
        })
        .collect()
}

/// Sign-in form submission.
fn cross_site(s: &AuthServer) -> Response {
    error_page(
        s,
        StatusCode::FORBIDDEN,
        "This form came from another site",
        "The sign-in service only accepts its own forms, so the request was stopped.",
        "Go back to the app or the EHR and start again.",
    )
}

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
    let user = match registry::get_user(s.store.as_ref(), username).await {
        Ok(Some(u)) if verify_password(password, &u.password_hash) => u,
        Ok(_) => {
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
    let cookie = match session::start(&s, &user).await {
        Ok(c) => c,
        Err(e) => return internal(&s, e),
    };
    tracing::info!(user = %user.username, "signed in");
    s.audit("login").client(client.client_id.as_str()).user(user.username.as_str()).record("signed in");
    pending.username = Some(user.username.clone());
    let mut response = proceed(&s, Some(user), &request_id, pending, &client).await;
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

/// Patient picker submission.
pub async fn pick(State(s): State<Shared>, headers: HeaderMap, Form(p): Form<Params>) -> Response {
    let request_id = p.get("request").cloned().unwrap_or_default();
    let mut pending = match bound_request(&s, &headers, &request_id, Awaiting::Patient).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let picker = match acting_user(&s, &headers, &pending).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(patient) = p.get("patient").filter(|v| fhir::types::is_valid_id(v)) else { return expired_request(&s) };
    match s.store.read("Patient", patient).await {
        Ok(Some(r)) if !r.deleted => {}
        Ok(_) => {
            return error_page(
                &s,
                StatusCode::BAD_REQUEST,
                "That patient was not found",
                "The chosen patient does not exist.",
                "Go back and choose another patient.",
            );
        }
        Err(e) => return internal(&s, e),
    }
    // Only a clinician chooses a patient, and only while no patient is set for the request.
    if picker.role != UserRole::Clinician || pending.patient.is_some() {
        return expired_request(&s);
    }
    pending.patient = Some(patient.clone());
    let client = match registry::get_client(s.store.as_ref(), &pending.client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return expired_request(&s),
        Err(e) => return internal(&s, e),
    };
    proceed(&s, Some(picker), &request_id, pending, &client).await
}

/// Consent submission: the ticked scopes (with category sub-scopes in place of whole types), or a denial.
pub async fn consent(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    // Repeated fields (`scope`, `category`) need the raw pairs.
    let Some(pairs) = crate::token::request::form_pairs(&body) else { return unreadable_form(&s) };
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let request_id = get("request").unwrap_or_default();
    let pending = match bound_request(&s, &headers, &request_id, Awaiting::Consent).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    // The decision is the signed-in user's own, or nobody's: it is what the remembered consent records.
    let user = match acting_user(&s, &headers, &pending).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    // Single use: of two posts of one form, only the first decides.
    match s.store.auth_consume(REQUEST_KIND, &token_hash(&request_id)).await {
        Ok(Some(r)) if !r.used => {}
        Ok(_) => return expired_request(&s),
        Err(e) => return internal(&s, e),
    }
    if get("decision").as_deref() != Some("allow") {
        tracing::info!(client = %pending.client_id, user = %user.username, "consent denied");
        s.audit("consent")
            .launch(pending.launch_id())
            .client(pending.client_id.as_str())
            .user(user.username.as_str())
            .patient(pending.patient.as_deref())
            .refused()
            .record("the user denied access");
        return redirect_error(
            &s,
            pending.launch.as_ref().and_then(|l| l.id.as_deref()),
            &pending.redirect_uri,
            pending.state.as_deref(),
            "access_denied",
            "the user did not allow access",
        );
    }
    let client = match registry::get_client(s.store.as_ref(), &pending.client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => return expired_request(&s),
        Err(e) => return internal(&s, e),
    };
    let granted = grantable(&client, &user, &pending.scope);
    let ticked: Vec<String> = pairs.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    let categories: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k == "category")
        .filter_map(|(_, v)| {
            // "<scope>|<system>|<code>": the scope is everything before the category's system.
            let (scope, rest) = v.split_once('|')?;
            Some((scope.to_string(), rest.to_string()))
        })
        .collect();
    let mut approved: Vec<String> = Vec::new();
    for sc in &granted.scopes {
        let text = sc.to_string();
        match sc {
            Scope::Resource(r) => {
                if !ticked.contains(&text) {
                    continue;
                }
                // Only the offered category codes are accepted: the value becomes part of a scope.
                let offered = categories_for(r.resource_type.as_deref());
                let chosen: Vec<&String> = categories.iter().filter(|(s, c)| *s == text && offered.iter().any(|(v, _)| v == c)).map(|(_, c)| c).collect();
                if chosen.is_empty() || !r.constraints.is_empty() {
                    approved.push(text);
                } else {
                    for c in chosen {
                        let mut narrowed = r.clone();
                        narrowed.v1 = false;
                        narrowed.constraints = vec![("category".into(), c.clone())];
                        approved.push(narrowed.to_string());
                    }
                }
            }
            _ => approved.push(text),
        }
    }
    let scope = approved.join(" ");
    let consent_key = crate::grants::consent_key(&user.username, &client.client_id);
    let decision = serde_json::json!({"offered": granted.to_string(), "approved": scope, "at": s.now_ms()}).to_string();
    if let Err(e) = s.store.auth_put("consent", &consent_key, &decision, None, None).await {
        return internal(&s, e);
    }
    tracing::info!(client = %client.client_id, user = %user.username, "consent given");
    s.audit("consent")
        .launch(pending.launch_id())
        .client(client.client_id.as_str())
        .user(user.username.as_str())
        .patient(pending.patient.as_deref())
        .record(format!("approved: {scope}"));
    issue_code(&s, pending, &user, scope).await
}

async fn issue_code(s: &Shared, pending: PendingAuthorization, user: &User, approved: String) -> Response {
    let code = crate::crypto::ordered_token(s.now_ms());
    let profile = pending.profile.unwrap_or_default();
    let faults = pending.launch.as_ref().map(|l| l.faults.clone()).unwrap_or_default();
    let scope = crate::profile::shape_granted(profile, &faults, &approved);
    let trace = pending.launch.as_ref().and_then(|l| l.id.clone());
    if !faults.deny.is_empty() {
        s.audit("consent")
            .launch(trace.as_deref())
            .client(pending.client_id.as_str())
            .user(user.username.as_str())
            .patient(pending.patient.as_deref())
            .record(format!("injected fault: the user denied {}", faults.deny.join(", ")));
    }
    let grant = Grant {
        grant_id: uuid::Uuid::now_v7().to_string(),
        client_id: pending.client_id.clone(),
        scope,
        username: Some(user.username.clone()),
        fhir_user: Some(user.fhir_user.clone()),
        patient: pending.patient.clone(),
        encounter: pending.launch.as_ref().and_then(|l| l.encounter.clone()),
        launch: pending.launch.clone(),
        nonce: pending.nonce.clone(),
        redirect_uri: Some(pending.redirect_uri.clone()),
        state: pending.state.clone(),
        code_challenge: Some(pending.code_challenge.clone()),
        expires: None,
        revoke_at: None,
        profile: Some(profile),
    };
    let value = match serde_json::to_string(&grant) {
        Ok(v) => v,
        Err(e) => return internal(s, e),
    };
    let expires = s.now_ms() + s.config.code_secs * 1000;
    if let Err(e) = s.store.auth_put("code", &crate::crypto::token_key(&code), &value, Some(&grant.grant_id), Some(expires)).await {
        return internal(s, e);
    }
    let role = match user.role {
        UserRole::Clinician => "clinician",
        UserRole::Patient => "patient",
    };
    tracing::info!(client = %grant.client_id, user = %user.username, role, patient = ?grant.patient, "authorisation code issued");
    s.audit("code")
        .launch(trace.as_deref())
        .client(grant.client_id.as_str())
        .user(user.username.as_str())
        .patient(grant.patient.as_deref())
        .record(format!("code issued (lives {} s) for scope: {}", s.config.code_secs, grant.scope));
    let Ok(mut url) = url::Url::parse(&pending.redirect_uri) else { return internal(s, "stored redirect URI no longer parses") };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("code", &code);
        if let Some(st) = &pending.state {
            q.append_pair("state", st);
        }
        q.append_pair("iss", &s.config.fhir_base);
    }
    Redirect::to(url.as_str()).into_response()
}
