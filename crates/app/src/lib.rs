//! Kindling's reference clinician app: a backend-for-frontend built only on the `client` SDK. It launches
//! from the EHR and shows a patient summary — banner, encounter, problems, medications, allergies, vital-sign
//! trends, recent labs — fetched in parallel, each section degrading on its own when a scope was not
//! granted or a request failed. The browser holds only an HttpOnly cookie; tokens stay here, encrypted.
//!
//! Each launch is its own session at `/app/s/{id}/`, bound to a browser secret in a cookie scoped to that
//! path, so two tabs with two patients never mix and a relaunch replaces nothing.
#![deny(missing_docs)]

pub mod cds;
pub mod config;
pub mod store;
pub mod summary;
mod svg;

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use client::{ClientAuth, EhrConfig, Error, Secret, SmartClient};
use config::AppConfig;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use store::{AppSession, AppStore};

/// A running app.
#[derive(Clone)]
pub struct App {
    smart: Arc<SmartClient>,
    store: AppStore,
    config: Arc<AppConfig>,
    csp: HeaderValue,
    /// "Now" (the decision-support service's recency rule).
    clock: client::SharedClock,
    /// One page load at a time per session on this node, so that two loads near a token's expiry do not
    /// both spend the same refresh token (the second would look like reuse and revoke the grant).
    locks: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// The cookie binding a launch to the browser that started it, read back at the callback; one per launch
/// (named after its `state`), so that launches in several tabs at once do not overwrite each other's.
fn launch_cookie(state: &str) -> String {
    format!("kapp_l_{}", &store::hash(state)[..16])
}

impl App {
    /// Builds the app: its EHR registrations (secrets from `secret`, by environment variable name) and its
    /// store (sessions encrypted with `key`).
    pub async fn new(config: AppConfig, key: [u8; 32], secret: impl Fn(&str) -> Option<String>) -> Result<App, String> {
        App::with_clock(config, key, secret, Arc::new(client::SystemClock)).await
    }

    /// [`App::new`] reading "now" from `clock` (session expiry, token refresh): the server that hosts the
    /// app in one process hands it its own clock, so that tests move both together.
    pub async fn with_clock(config: AppConfig, key: [u8; 32], secret: impl Fn(&str) -> Option<String>, clock: client::SharedClock) -> Result<App, String> {
        let mut ehrs = Vec::new();
        for e in &config.ehrs {
            let auth = match &e.client_secret_env {
                None => ClientAuth::Public,
                Some(var) => ClientAuth::SecretBasic(Secret::new(
                    secret(var).ok_or_else(|| format!("the environment variable {var} (the client secret for {}) is not set", e.iss))?,
                )),
            };
            ehrs.push(EhrConfig {
                iss: e.iss.clone(),
                client_id: e.client_id.clone(),
                auth,
                redirect_uri: config.redirect_uri(),
                ehr_scope: config::EHR_SCOPE.into(),
                standalone_scope: config::EHR_SCOPE.replace("launch ", "launch/patient "),
            });
        }
        let store = AppStore::connect(&config.database, key).await.map_err(|e| format!("cannot open the app's database: {e}"))?.with_clock(clock.clone());
        let smart = SmartClient::new(ehrs, Arc::new(store.clone())).map_err(|e| e.to_string())?.with_clock(clock.clone());
        let ancestors = if config.frame_ancestors.is_empty() { "'self'".to_string() } else { format!("'self' {}", config.frame_ancestors.join(" ")) };
        let csp = HeaderValue::from_str(&format!("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'none'; frame-ancestors {ancestors}"))
            .map_err(|e| e.to_string())?;
        Ok(App { smart: Arc::new(smart), store, config: Arc::new(config), csp, clock, locks: Arc::new(std::sync::Mutex::new(HashMap::new())) })
    }

    /// The app's routes, under `/app`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/app/launch", get(launch))
            .route("/app/callback", get(callback))
            .route("/app/s/{sid}/", get(summary_page))
            .route("/app/s/{sid}/signout", post(signout))
            .route("/app/static/app.css", get(css))
            .layer(axum::middleware::from_fn_with_state(self.clone(), page_errors))
            // The decision-support service answers EHRs in JSON, errors included.
            .route("/app/cds-services", get(cds_discovery).fallback(|| async { cds_method_not_allowed("GET, HEAD") }))
            .route("/app/cds-services/{id}", post(cds_call).fallback(|| async { cds_method_not_allowed("POST") }))
            .route("/app/cds-services/{id}/feedback", post(cds_feedback).fallback(|| async { cds_method_not_allowed("POST") }))
            .with_state(self)
    }

    /// The app's store (for tests that look at what is kept).
    pub fn store(&self) -> &AppStore {
        &self.store
    }

    fn secure(&self) -> bool {
        self.config.public_url.starts_with("https://")
    }

    /// Security headers of every page: CSP (frames only from the EHRs), no referrer, no caching.
    fn page(&self, status: StatusCode, html: Result<String, askama::Error>) -> Response {
        let html = html.unwrap_or_else(|e| {
            tracing::error!(error = %e, "page could not be rendered");
            "<!doctype html><title>Error</title><p>This page could not be shown.</p>".into()
        });
        let mut r = (status, Html(html)).into_response();
        let h = r.headers_mut();
        h.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
        r
    }

    fn message(&self, status: StatusCode, m: Message) -> Response {
        self.page(status, m.render())
    }

    fn session_lock(&self, sid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() > 10_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(sid.to_string()).or_default().clone()
    }
}

/// Every refusal is a page in the app's words: an extractor's rejection (a form that is not
/// `application/x-www-form-urlencoded`, a bad query string) or axum's bare 405 is plain text or empty, and
/// becomes the app's message page here.
/// The same rule as `auth::pages::is_unrendered_error` (the app depends on the SDK only, not on the
/// server's crates).
async fn page_errors(State(app): State<App>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let html = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || html {
        return response;
    }
    let mut page = app.message(
        status,
        Message {
            kind: "error",
            heading: "This request could not be read".into(),
            explanation: "The app did not understand what the browser sent.".into(),
            action: "Go back to the EHR and open the app again.".into(),
            ..Message::default()
        },
    );
    if let Some(allow) = response.headers().get(header::ALLOW) {
        page.headers_mut().insert(header::ALLOW, allow.clone());
    }
    page
}

#[derive(Template, Default)]
#[template(path = "message.html")]
struct Message {
    kind: &'static str,
    heading: String,
    explanation: String,
    action: String,
    patient: Option<String>,
    missing: Vec<&'static str>,
}

#[derive(Template)]
#[template(path = "summary.html")]
struct SummaryPage {
    s: summary::Summary,
    banner: bool,
    csrf: String,
    /// Why the app was opened, when a decision-support card opened it on a topic.
    topic: Option<&'static str>,
}

/// The page for an SDK error, in clinical language.
fn error_message(e: &Error) -> (StatusCode, Message) {
    match e {
        Error::LaunchExpired { .. } | Error::UnknownState => (
            StatusCode::BAD_REQUEST,
            Message {
                kind: "launch-expired",
                heading: "This launch has expired".into(),
                explanation: "The link from the EHR is valid for a few minutes and only once.".into(),
                action: "Relaunch the app from the patient's chart.".into(),
                ..Default::default()
            },
        ),
        Error::AccessDenied { .. } => (
            StatusCode::FORBIDDEN,
            Message {
                kind: "denied",
                heading: "Access was not allowed".into(),
                explanation: "The app was not given access to the patient's record, so it has nothing to show.".into(),
                action: "If this was a mistake, relaunch the app from the patient's chart and allow access.".into(),
                missing: vec!["show the patient's problems, medications and allergies", "show vital-sign trends and laboratory results"],
                ..Default::default()
            },
        ),
        Error::UnknownIssuer { .. } => (
            StatusCode::FORBIDDEN,
            Message {
                kind: "unknown-ehr",
                heading: "This EHR is not known to the app".into(),
                explanation: "The app was opened by a system it is not set up to work with, so it did not connect to it.".into(),
                action: "Open the app from your organisation's EHR. If you believe this EHR should work, tell your administrator.".into(),
                ..Default::default()
            },
        ),
        other => (
            StatusCode::BAD_GATEWAY,
            Message {
                kind: "error",
                heading: "The app could not connect to the record system".into(),
                explanation: other.user_message().into(),
                action: "Relaunch the app from the patient's chart.".into(),
                ..Default::default()
            },
        ),
    }
}

async fn launch(State(app): State<App>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(iss) = q.get("iss") else {
        return app.message(
            StatusCode::BAD_REQUEST,
            Message {
                kind: "no-launch",
                heading: "Open this app from the EHR".into(),
                explanation: "The app starts from a patient's chart.".into(),
                action: "Open the patient's chart and launch the app from there.".into(),
                ..Default::default()
            },
        );
    };
    // The launch is bound to this browser: only it can finish the callback (no login CSRF, no forwarded
    // callback links showing someone else's patient).
    let browser = client::jose::random(24);
    let started = match q.get("launch") {
        Some(handle) => app.smart.ehr_launch_bound(iss, handle, &browser).await,
        None => app.smart.standalone_launch_bound(iss, &browser).await,
    };
    match started {
        Ok(client::AuthorizationRequest::Redirect { url, state }) => {
            tracing::info!(event = "launch", iss = %iss, outcome = "redirected to authorise");
            let secure = if app.secure() { "; Secure" } else { "" };
            let mut r = Redirect::to(&url).into_response();
            if let Ok(v) =
                HeaderValue::from_str(&format!("{}={browser}; Path=/app/callback; HttpOnly; SameSite=Lax; Max-Age=600{secure}", launch_cookie(&state)))
            {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Ok(client::AuthorizationRequest::Post { url, .. }) => {
            // The app's scopes keep the URL short; a POST form would need a script this CSP forbids.
            tracing::error!(event = "launch", iss = %iss, outcome = "authorisation URL too long");
            app.message(
                StatusCode::INTERNAL_SERVER_ERROR,
                Message {
                    kind: "error",
                    heading: "The app could not start".into(),
                    explanation: format!("The authorisation request to {url} is too long."),
                    action: "Tell your administrator.".into(),
                    ..Default::default()
                },
            )
        }
        Err(e) => {
            tracing::warn!(event = "launch", iss = %iss, outcome = "refused", reason = %e);
            let (status, m) = error_message(&e);
            app.message(status, m)
        }
    }
}

async fn callback(State(app): State<App>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let started = Instant::now();
    let launch_cookie_name = q.get("state").map(|s| launch_cookie(s));
    let browser = launch_cookie_name.as_deref().and_then(|name| cookie(&headers, name));
    let session = match app.smart.callback_bound(&q, browser.as_deref()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(event = "token", outcome = "failed", reason = %e);
            let (status, m) = error_message(&e);
            return app.message(status, m);
        }
    };
    let ctx = session.context();
    if ctx.patient.is_none() {
        if let Err(e) = session.revoke().await {
            tracing::warn!(error = %e, "revocation of a launch without a patient failed");
        }
        return app.message(
            StatusCode::BAD_REQUEST,
            Message {
                kind: "no-patient",
                heading: "No patient was chosen".into(),
                explanation: "The launch did not say which patient to show.".into(),
                action: "Relaunch the app from the patient's chart.".into(),
                ..Default::default()
            },
        );
    }
    tracing::info!(event = "token", outcome = "session started", iss = %session.iss(), user = ?ctx.fhir_user, patient = ?ctx.patient, scope = %ctx.granted.as_str());
    let sid = client::jose::random(16);
    let browser_secret = client::jose::random(32);
    let stored = AppSession { smart: session.to_stored().await, patient_name: None };
    if let Err(e) = app.store.save_session(&sid, &store::hash(&browser_secret), &stored).await {
        tracing::error!(error = %e, "session could not be saved");
        return app.message(
            StatusCode::INTERNAL_SERVER_ERROR,
            Message {
                kind: "error",
                heading: "The app could not start".into(),
                explanation: "Its session could not be saved.".into(),
                action: "Relaunch the app; if it keeps happening, tell your administrator.".into(),
                ..Default::default()
            },
        );
    }
    let secure = if app.secure() { "; Secure" } else { "" };
    let cookie = format!("kapp_{sid}={browser_secret}; Path=/app/s/{sid}/; HttpOnly; SameSite=Lax; Max-Age={}{secure}", store::SESSION_SECS);
    let mut r = Redirect::to(&format!("/app/s/{sid}/")).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    if let Some(name) = launch_cookie_name
        && let Ok(v) = HeaderValue::from_str(&format!("{name}=; Path=/app/callback; HttpOnly; SameSite=Lax; Max-Age=0"))
    {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r.headers_mut().insert(
        "server-timing",
        HeaderValue::from_str(&format!("app;dur={:.1}", started.elapsed().as_secs_f64() * 1000.0)).unwrap_or(HeaderValue::from_static("app")),
    );
    r
}

fn browser_secret(headers: &HeaderMap, sid: &str) -> Option<String> {
    cookie(headers, &format!("kapp_{sid}"))
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn cookie_missing() -> Message {
    Message {
        kind: "cookie-missing",
        heading: "This app cannot keep its session here".into(),
        explanation: "Your browser did not send the app's session cookie. This happens when the app runs inside the EHR's window and the browser blocks cookies there, or when the session has ended.".into(),
        action: "Open the app in a new tab from the patient's chart (the Launch button), or relaunch it.".into(),
        ..Default::default()
    }
}

async fn load(app: &App, sid: &str, headers: &HeaderMap) -> Result<(AppSession, String), Response> {
    let Some(secret) = browser_secret(headers, sid) else { return Err(app.message(StatusCode::UNAUTHORIZED, cookie_missing())) };
    match app.store.load_session(sid, &store::hash(&secret)).await {
        Ok(Some(s)) => Ok((s, secret)),
        Ok(None) => Err(app.message(StatusCode::UNAUTHORIZED, cookie_missing())),
        Err(e) => {
            tracing::error!(error = %e, "session could not be read");
            Err(app.message(
                StatusCode::INTERNAL_SERVER_ERROR,
                Message {
                    kind: "error",
                    heading: "The app could not read its session".into(),
                    explanation: "Something went wrong on the app's server.".into(),
                    action: "Relaunch the app from the patient's chart.".into(),
                    ..Default::default()
                },
            ))
        }
    }
}

async fn summary_page(State(app): State<App>, Path(sid): Path<String>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let lock = app.session_lock(&sid);
    let _one_at_a_time = lock.lock().await;
    let (mut stored, secret) = match load(&app, &sid, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let session = match app.smart.restore(stored.smart) {
        Ok(s) => s,
        Err(e) => {
            let (status, m) = error_message(&e);
            return app.message(status, m);
        }
    };
    let s = summary::load(&session).await;
    let patient = session.context().patient.clone();
    if s.session_ended {
        tracing::info!(event = "access", patient = ?patient, outcome = "session ended");
        let _ = app.store.delete_session(&sid).await;
        return app.message(
            StatusCode::UNAUTHORIZED,
            Message {
                kind: "session-ended",
                heading: "Your session with the record system has ended".into(),
                explanation: "The app can no longer read this patient's record: its access expired and could not be renewed.".into(),
                action: "Relaunch the app from this patient's chart to continue.".into(),
                patient: stored.patient_name.clone().or(patient),
                ..Default::default()
            },
        );
    }
    if let Some(p) = &s.patient.data {
        stored.patient_name = Some(p.name.clone());
    }
    // Tokens may have been refreshed (and rotated) while loading: keep the newest.
    stored.smart = session.to_stored().await;
    if let Err(e) = app.store.save_session(&sid, &store::hash(&secret), &stored).await {
        tracing::error!(error = %e, "session could not be saved");
    }
    let degraded = [
        s.patient.message.is_some(),
        s.problems.message.is_some(),
        s.medications.message.is_some(),
        s.allergies.message.is_some(),
        s.vitals.message.is_some(),
        s.labs.message.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(event = "access", patient = ?patient, user = ?session.context().fhir_user, degraded_sections = degraded, ms = elapsed, outcome = "summary shown");
    let banner = session.context().need_patient_banner;
    let csrf = store::hash(&format!("csrf:{secret}"));
    let topic = cds::topic_note(session.context().app_context.as_deref());
    let mut r = app.page(StatusCode::OK, SummaryPage { s, banner, csrf, topic }.render());
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={elapsed:.1}")) {
        r.headers_mut().insert("server-timing", v);
    }
    r
}

async fn signout(State(app): State<App>, Path(sid): Path<String>, headers: HeaderMap, axum::Form(form): axum::Form<HashMap<String, String>>) -> Response {
    let (stored, secret) = match load(&app, &sid, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let expected = store::hash(&format!("csrf:{secret}"));
    let presented = form.get("csrf").map(String::as_str).unwrap_or("");
    if aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_bytes(), expected.as_bytes()).is_err() {
        return app.message(
            StatusCode::FORBIDDEN,
            Message {
                kind: "csrf",
                heading: "This form has expired".into(),
                explanation: "The sign-out did not come from this app's page.".into(),
                action: "Reload the page and try again.".into(),
                ..Default::default()
            },
        );
    }
    if let Ok(session) = app.smart.restore(stored.smart)
        && let Err(e) = session.revoke().await
    {
        tracing::warn!(error = %e, "revocation at sign-out failed");
    }
    let _ = app.store.delete_session(&sid).await;
    tracing::info!(event = "signout", outcome = "session ended by the user");
    let mut r = app.message(
        StatusCode::OK,
        Message {
            kind: "signed-out",
            heading: "Signed out".into(),
            explanation: "The app's access to the record was withdrawn.".into(),
            action: "Launch the app again from a patient's chart when you need it.".into(),
            ..Default::default()
        },
    );
    if let Ok(v) = HeaderValue::from_str(&format!("kapp_{sid}=; Path=/app/s/{sid}/; HttpOnly; SameSite=Lax; Max-Age=0")) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")], include_str!("../static/app.css")).into_response()
}

/// A random 32-byte key (sessions then do not survive a restart).
pub fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    aws_lc_rs::rand::fill(&mut k).expect("randomness");
    k
}

/// The key from a base64 environment variable.
pub fn key_from_base64(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| "the session key is not base64".to_string())?;
    bytes.try_into().map_err(|_| "the session key must be 32 bytes".to_string())
}

/// `GET /app/cds-services`: the CDS Hooks discovery document.
async fn cds_discovery() -> Response {
    axum::Json(cds::discovery()).into_response()
}

fn cds_method_not_allowed(allow: &'static str) -> Response {
    let mut r = cds_error(StatusCode::METHOD_NOT_ALLOWED, "this method is not supported here");
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn cds_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": message}))).into_response()
}

/// Checks the EHR's signed JWT for a call to `url`: `None` when it holds, else the answer refusing the call.
async fn cds_refusal(app: &App, headers: &HeaderMap, url: &str) -> Option<Response> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match app.smart.verify_cds_request(authorization, url).await {
        Ok(_) => None,
        // The EHR's keys could not be fetched: not the caller's fault, and nothing about it is told.
        Err(e @ (Error::Transport(_) | Error::Discovery { .. })) => {
            tracing::warn!(error = %e, "CDS Hooks call not verified: the EHR's keys could not be fetched");
            Some(cds_error(StatusCode::SERVICE_UNAVAILABLE, "the EHR's keys could not be fetched; try again"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "CDS Hooks call refused");
            Some(cds_error(StatusCode::UNAUTHORIZED, &e.to_string()))
        }
    }
}

/// The hook each of the app's services answers.
fn cds_hook_of(id: &str) -> Option<&'static str> {
    match id {
        cds::SERVICE_ID => Some("patient-view"),
        cds::ORDER_SELECT_ID => Some("order-select"),
        cds::ORDER_SIGN_ID => Some("order-sign"),
        _ => None,
    }
}

/// `POST /app/cds-services/{id}`: a hook call, answered with cards once the EHR's signed JWT holds.
async fn cds_call(State(app): State<App>, Path(id): Path<String>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Some(hook) = cds_hook_of(&id) else { return cds_error(StatusCode::NOT_FOUND, "no such service") };
    let url = format!("{}/app/cds-services/{id}", app.config.public_url.trim_end_matches('/'));
    if let Some(refusal) = cds_refusal(&app, &headers, &url).await {
        return refusal;
    }
    let request: client::cds::HookRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return cds_error(StatusCode::BAD_REQUEST, &format!("not a CDS Hooks request: {e}")),
    };
    if request.hook != hook {
        return cds_error(StatusCode::BAD_REQUEST, &format!("this service answers {hook} only"));
    }
    let cards = match hook {
        "patient-view" => cds::patient_view(&request, &app.config.launch_url(), app.clock.now_ms()),
        _ => cds::order_review(&request, app.clock.now_ms()),
    };
    tracing::info!(event = "cds", hook = %request.hook, cards = cards.cards.len(), "CDS Hooks call answered");
    axum::Json(cards).into_response()
}

/// `POST /app/cds-services/{id}/feedback`: what became of the service's cards (accepted, or overridden and
/// why), recorded in the app's log.
async fn cds_feedback(State(app): State<App>, Path(id): Path<String>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if cds_hook_of(&id).is_none() {
        return cds_error(StatusCode::NOT_FOUND, "no such service");
    }
    let url = format!("{}/app/cds-services/{id}/feedback", app.config.public_url.trim_end_matches('/'));
    if let Some(refusal) = cds_refusal(&app, &headers, &url).await {
        return refusal;
    }
    let feedback: client::cds::Feedback = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return cds_error(StatusCode::BAD_REQUEST, &format!("not CDS Hooks feedback: {e}")),
    };
    for f in &feedback.feedback {
        let reason = f.override_reason.as_ref().and_then(|r| r.reason.as_ref()).map(|c| c.code.as_str()).unwrap_or_default();
        tracing::info!(event = "cds-feedback", service = %id, card = %f.card, outcome = %f.outcome, accepted = f.accepted_suggestions.len(), reason, "CDS Hooks feedback");
    }
    StatusCode::OK.into_response()
}
