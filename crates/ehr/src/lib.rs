//! Kindling's EHR simulator: the first layer of a SMART integration, where a clinician is already signed
//! in, opens a chart and launches an app.
//!
//! - Clinician EHR (`/ehr`): sign-in, patient list with search and paging, a chart (banner, encounters,
//!   problems, medications, allergies, vital signs), and an Apps panel that creates a launch context and
//!   opens the app in a new tab or inside the chart.
//! - Patient portal (`/portal`): a patient launches patient-facing apps on their own record.
//! - App registration pages (`/ehr/apps`).
//! - Fault injection and vendor profiles chosen per launch, and a launch inspector (`/ehr/launches/{id}`)
//!   that shows the SMART handshake as it happened.
//!
//! Pages are server-rendered (askama) and work without JavaScript; htmx (vendored) only makes the patient
//! search live and the inspector refresh itself. The EHR shares its sign-in session with the
//! authorisation server, so an app launched here does not ask the clinician to sign in again.

mod auth_pages;
pub mod chart;

pub use auth_pages::AuthPages;
mod pages;

use askama::Template;
use auth::Shared;
use auth::model::{ClientKind, Faults, LaunchContext, Profile, UserRole};
use auth::session::{self, Session};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use pages::*;
use std::collections::HashMap;

type Params = HashMap<String, String>;

/// The EHR's routes (mount at the server root).
pub fn router(server: Shared) -> Router {
    Router::new()
        .route("/ehr", get(|| async { Redirect::to("/ehr/patients") }))
        .route("/ehr/login", get(login_page).post(login))
        .route("/ehr/logout", post(logout))
        .route("/ehr/patients", get(patients))
        .route("/ehr/patients/{id}", get(patient_chart))
        .route("/ehr/launch", post(launch))
        .route("/ehr/launches", get(launches))
        .route("/ehr/launches/{id}", get(inspector))
        .route("/ehr/connected", get(connected))
        .route("/ehr/connected/{client_id}/withdraw", post(withdraw))
        .route("/ehr/apps", get(apps_list).post(app_create))
        .route("/ehr/apps/new", get(app_new))
        .route("/ehr/apps/{id}", get(app_edit).post(app_update))
        .route("/ehr/apps/{id}/status", post(app_status))
        .route("/portal", get(portal))
        .route("/portal/login", get(portal_login_page).post(portal_login))
        .route("/ehr/static/{file}", get(static_file))
        .route("/demo-app/{file}", get(demo_app_file))
        .layer(axum::middleware::from_fn(page_errors))
        .with_state(server)
}

/// Every refusal is a page for the person who met it: an extractor's rejection (a form that is not
/// `application/x-www-form-urlencoded`, not UTF-8, too large) or axum's bare 405 is plain text or empty,
/// and becomes the EHR's message page here.
async fn page_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let html = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || html {
        return response;
    }
    let mut page = message(
        Nav::anonymous(),
        status,
        "This request could not be read",
        "The EHR did not understand what the browser sent.",
        "Go back, reload the page and try again.",
        "/ehr",
    );
    if let Some(allow) = response.headers().get(header::ALLOW) {
        page.headers_mut().insert(header::ALLOW, allow.clone());
    }
    page
}

/// Renders a template as a page: never cached, never framed by another site, no referrer leaks.
fn render(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => {
            let mut r = (status, Html(html)).into_response();
            let h = r.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
            h.insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' https: data:; frame-src *; style-src 'self'; script-src 'self'; frame-ancestors 'self'",
                ),
            );
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "EHR page could not be rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered").into_response()
        }
    }
}

fn message(nav: Nav, status: StatusCode, heading: &str, explanation: &str, action: &str, back: &str) -> Response {
    render(status, &MessagePage { nav, heading: heading.into(), explanation: explanation.into(), action: action.into(), back: back.into() })
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "EHR error");
    message(
        Nav::anonymous(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The EHR could not complete this step.",
        "Try again. If it keeps happening, tell your system administrator.",
        "/ehr",
    )
}

/// The signed-in clinician, or a redirect to the sign-in page.
async fn clinician(s: &Shared, headers: &HeaderMap) -> Result<Session, Response> {
    match session::current(s, headers).await {
        Some(sess) if sess.user.role == UserRole::Clinician => Ok(sess),
        Some(sess) => Err(message(
            Nav::of(&sess),
            StatusCode::FORBIDDEN,
            "This page is for clinicians",
            "You are signed in to the patient portal.",
            "Use the patient portal, or sign out and sign in as a clinician.",
            "/portal",
        )),
        None => Err(Redirect::to("/ehr/login").into_response()),
    }
}

/// The page refusing a form that was not sent from this session, if it was not.
fn csrf_refusal(sess: &Session, p: &Params) -> Option<Response> {
    if sess.csrf_ok(p.get("csrf").map(String::as_str)) {
        None
    } else {
        Some(message(
            Nav::of(sess),
            StatusCode::FORBIDDEN,
            "This form has expired",
            "The form was not sent from this EHR session (it may be from an older page or another site).",
            "Reload the page and try again.",
            "/ehr",
        ))
    }
}

// ----- sign-in -----

async fn login_page() -> Response {
    render(StatusCode::OK, &LoginPage::clinician(None))
}

async fn portal_login_page() -> Response {
    render(StatusCode::OK, &LoginPage::portal(None))
}

async fn sign_in(s: &Shared, headers: &HeaderMap, p: &Params, role: UserRole) -> Result<HeaderValue, &'static str> {
    if !session::same_origin(s, headers) {
        return Err("This sign-in form came from another site and was refused. Open the EHR's own sign-in page.");
    }
    let username = p.get("username").map(String::as_str).unwrap_or("");
    let password = p.get("password").map(String::as_str).unwrap_or("");
    let user = match auth::registry::get_user(s.store.as_ref(), username).await {
        Ok(Some(u)) if auth::crypto::verify_password(password, &u.password_hash) => u,
        _ => {
            s.audit("ehr-login").user(username).refused().record("wrong user name or password");
            return Err("That user name and password do not match. Try again.");
        }
    };
    if user.role != role {
        return Err(match role {
            UserRole::Clinician => "This is the clinicians' sign-in. Patients sign in to the patient portal.",
            UserRole::Patient => "This is the patient portal. Clinicians sign in to the EHR.",
        });
    }
    s.audit("ehr-login").user(user.username.as_str()).record("signed in to the EHR");
    session::start(s, &user).await.map_err(|_| "The sign-in could not be saved. Try again.")
}

async fn login(State(s): State<Shared>, headers: HeaderMap, axum::Form(p): axum::Form<Params>) -> Response {
    // A new sign-in replaces whatever session this browser had (not when the post is refused).
    if session::same_origin(&s, &headers) {
        let _ = session::end(&s, &headers).await;
    }
    match sign_in(&s, &headers, &p, UserRole::Clinician).await {
        Ok(cookie) => with_cookie(Redirect::to("/ehr/patients").into_response(), cookie),
        Err(why) => render(StatusCode::UNAUTHORIZED, &LoginPage::clinician(Some(why))),
    }
}

async fn portal_login(State(s): State<Shared>, headers: HeaderMap, axum::Form(p): axum::Form<Params>) -> Response {
    if session::same_origin(&s, &headers) {
        let _ = session::end(&s, &headers).await;
    }
    match sign_in(&s, &headers, &p, UserRole::Patient).await {
        Ok(cookie) => with_cookie(Redirect::to("/portal").into_response(), cookie),
        Err(why) => render(StatusCode::UNAUTHORIZED, &LoginPage::portal(Some(why))),
    }
}

fn with_cookie(mut r: Response, cookie: HeaderValue) -> Response {
    r.headers_mut().append(header::SET_COOKIE, cookie);
    r
}

async fn logout(State(s): State<Shared>, headers: HeaderMap, axum::Form(p): axum::Form<Params>) -> Response {
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

// ----- patients and chart -----

const PAGE_SIZE: usize = 20;

fn today(s: &Shared) -> time::Date {
    s.clock.now().date()
}

async fn patients(State(s): State<Shared>, headers: HeaderMap, Query(p): Query<Params>) -> Response {
    let sess = match clinician(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let q = PatientQuery {
        name: p.get("name").map(|v| v.trim().to_string()).unwrap_or_default(),
        birthdate: p.get("birthdate").map(|v| v.trim().to_string()).unwrap_or_default(),
        identifier: p.get("identifier").map(|v| v.trim().to_string()).unwrap_or_default(),
    };
    let page: usize = p.get("page").and_then(|v| v.parse().ok()).filter(|&n| n >= 1).unwrap_or(1).min(100_000);
    let mut pairs: Vec<(String, String)> = vec![("_sort".into(), "family,given".into())];
    for (k, v) in [("name", &q.name), ("birthdate", &q.birthdate), ("identifier", &q.identifier)] {
        if !v.is_empty() {
            pairs.push((k.into(), v.clone()));
        }
    }
    let mut error = None;
    let (total, rows) = match fhir::query::parse("Patient", &pairs, fhir::query::ParseOptions { lenient: false, base: None, now_ms: s.now_ms() }) {
        Err(_) => {
            error = Some("Birth dates are written YYYY-MM-DD (or YYYY, or YYYY-MM).".to_string());
            (0, Vec::new())
        }
        Ok(query) => match s.store.search(&query).await {
            Err(e) => return internal(e),
            Ok(keys) => {
                let start = ((page - 1) * PAGE_SIZE).min(keys.len());
                let end = (start + PAGE_SIZE).min(keys.len());
                match s.store.fetch(&keys[start..end]).await {
                    Err(e) => return internal(e),
                    Ok(found) => {
                        let today = today(&s);
                        let rows = found.iter().map(|r| chart::patient_facts(&r.id, &serde_json::from_str(&r.json).unwrap_or_default(), today)).collect();
                        (keys.len(), rows)
                    }
                }
            }
        },
    };
    let link = |n: usize| {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("name", &q.name), ("birthdate", &q.birthdate), ("identifier", &q.identifier)] {
            if !v.is_empty() {
                ser.append_pair(k, v);
            }
        }
        ser.append_pair("page", &n.to_string());
        format!("/ehr/patients?{}", ser.finish())
    };
    let first = (page - 1) * PAGE_SIZE + 1;
    let last = ((page - 1) * PAGE_SIZE + rows.len()).max(first.saturating_sub(1));
    let page_view = PatientsPage {
        nav: Nav::of(&sess),
        prev: (page > 1).then(|| link(page - 1)),
        next: (page * PAGE_SIZE < total).then(|| link(page + 1)),
        q,
        patients: rows,
        total,
        first,
        last,
        error,
    };
    render(StatusCode::OK, &page_view)
}

/// Apps that can be launched from a chart (`patient` = for the patient portal).
async fn launchable_apps(s: &Shared, for_patients: bool) -> Result<Vec<AppView>, store::StoreError> {
    let mut apps: Vec<AppView> = auth::registry::list_clients(s.store.as_ref())
        .await?
        .into_iter()
        // An app that registered itself (RFC 7591) is not offered to clinicians or patients until an
        // administrator has reviewed and saved it on the Apps page: anyone may register, under any name.
        .filter(|c| !c.disabled && !c.self_registered && c.launch_url.is_some())
        .filter(|c| !for_patients || smart::ScopeSet::parse(&c.allowed_scope).resource_scopes().any(|r| r.level == smart::Level::Patient))
        .map(|c| AppView { client_id: c.client_id, name: c.name, icon: c.icon })
        .collect();
    apps.sort_by_key(|a| a.name.to_lowercase());
    Ok(apps)
}

async fn patient_chart(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let sess = match clinician(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    chart_page(&s, &sess, &id, None).await
}

async fn chart_page(s: &Shared, sess: &Session, id: &str, embed: Option<(String, String)>) -> Response {
    if !fhir::types::is_valid_id(id) {
        return message(
            Nav::of(sess),
            StatusCode::NOT_FOUND,
            "No such patient",
            "That patient id is not valid.",
            "Find the patient in the patient list.",
            "/ehr/patients",
        );
    }
    let chart = match chart::load(s.store.as_ref(), id, today(s)).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return message(
                Nav::of(sess),
                StatusCode::NOT_FOUND,
                "No such patient",
                "This patient is not in the record system.",
                "Find the patient in the patient list.",
                "/ehr/patients",
            );
        }
        Err(e) => return internal(e),
    };
    let apps = match launchable_apps(s, false).await {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    let (embed_src, embed_name) = match embed {
        Some((src, name)) => (Some(src), name),
        None => (None, String::new()),
    };
    render(StatusCode::OK, &ChartPage { nav: Nav::of(sess), chart, apps, profiles: profiles(), embed: embed_src, embed_name })
}

// ----- launching -----

fn profiles() -> Vec<(&'static str, &'static str)> {
    Profile::ALL.iter().map(|p| (p.as_str(), p.label())).collect()
}

/// Reads the launcher's fault fields.
fn faults_from(p: &Params) -> Result<Faults, String> {
    let flag = |k: &str| p.get(k).is_some_and(|v| v == "1" || v == "on");
    let num = |k: &str| -> Result<Option<i64>, String> {
        match p.get(k).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| format!("{k} must be a whole number")),
        }
    };
    let status = match p.get("fhir_error_status").map(String::as_str).unwrap_or("") {
        "" => None,
        v => Some(v.parse::<u16>().map_err(|_| "the FHIR error status must be 429 or 503".to_string())?),
    };
    let rate = match status {
        None => None,
        Some(_) => Some(num("fhir_error_percent")?.unwrap_or(50) as f64 / 100.0),
    };
    let faults = Faults {
        expired_launch: flag("expired_launch"),
        deny: p.get("deny").map(|v| v.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()).unwrap_or_default(),
        no_encounter: flag("no_encounter"),
        token_secs: num("token_secs")?,
        refresh_fails: flag("refresh_fails"),
        revoke_after_secs: num("revoke_after_secs")?,
        fhir_error_status: status,
        fhir_error_rate: rate,
        fhir_delay_ms: num("fhir_delay_ms")?.map(|v| v.max(0) as u64),
    };
    faults.validate()?;
    Ok(faults)
}

async fn launch(State(s): State<Shared>, headers: HeaderMap, axum::Form(p): axum::Form<Params>) -> Response {
    let Some(sess) = session::current(&s, &headers).await else { return Redirect::to("/ehr/login").into_response() };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let nav = Nav::of(&sess);
    let back = if sess.user.role == UserRole::Patient {
        "/portal".to_string()
    } else {
        format!("/ehr/patients/{}", p.get("patient").map(String::as_str).unwrap_or(""))
    };
    let Some((mode, client_id)) = p.get("launch").and_then(|v| v.split_once('|')) else {
        return message(nav, StatusCode::BAD_REQUEST, "Choose an app", "No app was chosen.", "Click the Launch button next to an app.", &back);
    };
    let client = match auth::registry::get_client(s.store.as_ref(), client_id).await {
        Ok(Some(c)) if c.launch_url.is_some() && !c.self_registered => c,
        Ok(_) => {
            return message(
                nav,
                StatusCode::NOT_FOUND,
                "This app cannot be launched",
                "The app is not registered, is disabled, or has no launch URL.",
                "Ask your administrator to check the app's registration.",
                &back,
            );
        }
        Err(e) => return internal(e),
    };
    let patient = match sess.user.own_patient() {
        Some(own) => {
            // Patients launch only the apps the portal offers them.
            if !smart::ScopeSet::parse(&client.allowed_scope).resource_scopes().any(|r| r.level == smart::Level::Patient) {
                return message(
                    nav,
                    StatusCode::FORBIDDEN,
                    "This app is not for patients",
                    "The app is not offered in the patient portal.",
                    "Choose one of the apps listed in your portal.",
                    &back,
                );
            }
            own.to_string()
        }
        None => match p.get("patient").filter(|v| fhir::types::is_valid_id(v)) {
            Some(v) => v.clone(),
            None => {
                return message(
                    nav,
                    StatusCode::BAD_REQUEST,
                    "Open a chart first",
                    "Apps are launched from a patient's chart.",
                    "Open the patient's chart and launch the app there.",
                    "/ehr/patients",
                );
            }
        },
    };
    match s.store.read("Patient", &patient).await {
        Ok(Some(r)) if !r.deleted => {}
        Ok(_) => {
            return message(
                nav,
                StatusCode::NOT_FOUND,
                "No such patient",
                "This patient is not in the record system.",
                "Find the patient in the patient list.",
                "/ehr/patients",
            );
        }
        Err(e) => return internal(e),
    }
    let faults = match faults_from(&p) {
        Ok(f) => f,
        Err(why) => {
            return message(nav, StatusCode::BAD_REQUEST, "These launch options do not fit together", &why, "Go back and correct the injected faults.", &back);
        }
    };
    let encounter = p.get("encounter").filter(|v| !v.is_empty() && fhir::types::is_valid_id(v)).cloned();
    if let Some(e) = &encounter {
        match chart::search(s.store.as_ref(), "Encounter", &[("_id", e), ("patient", &patient)], 1).await {
            Ok(found) if !found.is_empty() => {}
            Ok(_) => {
                return message(
                    nav,
                    StatusCode::BAD_REQUEST,
                    "That encounter is not this patient's",
                    "The chosen encounter belongs to another patient.",
                    "Choose one of the encounters listed in the chart.",
                    &back,
                );
            }
            Err(e) => return internal(e),
        }
    }
    let embed = mode == "embed" && sess.user.role == UserRole::Clinician;
    let context = LaunchContext {
        client_id: Some(client.client_id.clone()),
        username: Some(sess.user.username.clone()),
        patient: Some(patient.clone()),
        encounter,
        need_patient_banner: Some(!embed),
        smart_style_url: embed.then(|| s.config.endpoint("style.json")),
        profile: p.get("profile").and_then(|v| Profile::parse(v)).or(client.profile),
        faults,
        ..LaunchContext::default()
    };
    let created = match auth::launch::new_launch(&s, &context).await {
        Ok(c) => c,
        Err(e) => return internal(e),
    };
    let Some(url) = client.launch_url.as_deref().and_then(|u| url::Url::parse(u).ok()) else {
        return message(
            nav,
            StatusCode::BAD_REQUEST,
            "This app's launch URL is not valid",
            "The registered launch URL cannot be opened.",
            "Ask your administrator to correct the app's registration.",
            &back,
        );
    };
    let mut url = url;
    url.query_pairs_mut().append_pair("iss", &s.config.fhir_base).append_pair("launch", &created.handle);
    tracing::info!(client = %client.client_id, user = %sess.user.username, launch = %created.id, embed, "app launched from the EHR");
    if embed { chart_page(&s, &sess, &patient, Some((url.to_string(), client.name.clone()))).await } else { Redirect::to(url.as_str()).into_response() }
}

// ----- launch inspector -----

async fn launches(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let Some(sess) = session::current(&s, &headers).await else { return Redirect::to("/ehr/login").into_response() };
    let filter = store::audit::AuditFilter { username: Some(sess.user.username.clone()), limit: 500, ..Default::default() };
    let events = match s.store.audit_events(&filter).await {
        Ok(e) => e,
        Err(e) => return internal(e),
    };
    let rows = events
        .into_iter()
        .filter(|(_, r)| r.action == "launch" && r.launch.is_some())
        .take(50)
        .map(|(_, r)| LaunchRow {
            id: r.launch.unwrap_or_default(),
            when: clock_time(r.recorded, true),
            app: r.client_id.unwrap_or_default(),
            patient: r.patient.unwrap_or_default(),
        })
        .collect();
    render(StatusCode::OK, &LaunchesPage { nav: Nav::of(&sess), launches: rows })
}

/// The apps the signed-in user (clinician or patient) authorised, with what each may do, and a button to
/// withdraw each one's access.
async fn connected(State(s): State<Shared>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
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
async fn withdraw(State(s): State<Shared>, headers: HeaderMap, Path(client_id): Path<String>, axum::Form(p): axum::Form<Params>) -> Response {
    let Some(sess) = session::current(&s, &headers).await else { return Redirect::to("/ehr/login").into_response() };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let revoked = match auth::grants::withdraw(s.store.as_ref(), &sess.user.username, &client_id, s.now_ms()).await {
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

fn clock_time(ms: i64, with_date: bool) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = if with_date {
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]")
    } else {
        time::macros::format_description!("[hour]:[minute]:[second].[subsecond digits:3]")
    };
    t.format(&f).unwrap_or_default()
}

async fn inspector(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(sess) = session::current(&s, &headers).await else { return Redirect::to("/ehr/login").into_response() };
    let filter = store::audit::AuditFilter { launch: Some(id.clone()), limit: 1000, ..Default::default() };
    let mut events = match s.store.audit_events(&filter).await {
        Ok(e) => e,
        Err(e) => return internal(e),
    };
    events.reverse();
    // Clinicians see every launch; a patient only the launches made on their own record.
    let visible = match sess.user.own_patient() {
        None => true,
        Some(own) => events.iter().any(|(_, r)| r.action == "launch" && r.patient.as_deref() == Some(own)),
    };
    if events.is_empty() || !visible {
        return message(
            Nav::of(&sess),
            StatusCode::NOT_FOUND,
            "No such launch",
            "Nothing was recorded for this launch, or it is not yours to see.",
            "Pick a launch from the list.",
            "/ehr/launches",
        );
    }
    let start = events.first().map(|(_, r)| r.recorded).unwrap_or(0);
    let steps = events.iter().map(|(_, r)| pages::step(r, start, clock_time(r.recorded, false))).collect();
    render(StatusCode::OK, &InspectorPage { nav: Nav::of(&sess), id, steps })
}

// ----- app registration -----

fn kind_str(k: ClientKind) -> &'static str {
    match k {
        ClientKind::Public => "public",
        ClientKind::ConfidentialSymmetric => "confidential-symmetric",
        ClientKind::ConfidentialAsymmetric => "confidential-asymmetric",
    }
}

async fn apps_list(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let sess = match clinician(&s, &headers).await {
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

async fn app_new(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let sess = match clinician(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    render(StatusCode::OK, &AppFormPage::new_app(Nav::of(&sess), AppForm::default(), None))
}

async fn app_create(State(s): State<Shared>, headers: HeaderMap, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match clinician(&s, &headers).await {
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
    let client = match form.to_client(None) {
        Ok(c) => c,
        Err(why) => return render(StatusCode::BAD_REQUEST, &AppFormPage::new_app(Nav::of(&sess), form, Some(why))),
    };
    match auth::registry::put_client(s.store.as_ref(), client).await {
        Ok(secret) => {
            s.audit("app-registered").client(form.client_id.as_str()).user(sess.user.username.as_str()).record("registered in the EHR");
            render(StatusCode::CREATED, &AppFormPage::created(Nav::of(&sess), form, secret))
        }
        Err(e) => internal(e),
    }
}

async fn stored_client(s: &Shared, id: &str) -> Result<Option<auth::model::Client>, store::StoreError> {
    auth::registry::stored_client(s.store.as_ref(), id).await
}

async fn app_edit(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let sess = match clinician(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match stored_client(&s, &id).await {
        Ok(Some(c)) => render(StatusCode::OK, &AppFormPage::edit(Nav::of(&sess), AppForm::from_client(&c), None)),
        Ok(None) => message(
            Nav::of(&sess),
            StatusCode::NOT_FOUND,
            "No such app",
            "No app with this client id is registered.",
            "Pick an app from the list.",
            "/ehr/apps",
        ),
        Err(e) => internal(e),
    }
}

async fn app_update(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match clinician(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let existing = match stored_client(&s, &id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return message(
                Nav::of(&sess),
                StatusCode::NOT_FOUND,
                "No such app",
                "No app with this client id is registered.",
                "Pick an app from the list.",
                "/ehr/apps",
            );
        }
        Err(e) => return internal(e),
    };
    let mut form = AppForm::from_params(&p);
    form.client_id = existing.client_id.clone();
    form.kind = kind_str(existing.kind).to_string();
    form.disabled = existing.disabled;
    let client = match form.to_client(Some(&existing)) {
        Ok(c) => c,
        Err(why) => return render(StatusCode::BAD_REQUEST, &AppFormPage::edit(Nav::of(&sess), form, Some(why))),
    };
    match auth::registry::put_client_as_is(s.store.as_ref(), &client).await {
        Ok(()) => {
            s.audit("app-updated").client(client.client_id.as_str()).user(sess.user.username.as_str()).record("registration edited in the EHR");
            Redirect::to(&format!("/ehr/apps/{}", client.client_id)).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn app_status(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>, axum::Form(p): axum::Form<Params>) -> Response {
    let sess = match clinician(&s, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let Some(r) = csrf_refusal(&sess, &p) {
        return r;
    }
    let mut client = match stored_client(&s, &id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return message(
                Nav::of(&sess),
                StatusCode::NOT_FOUND,
                "No such app",
                "No app with this client id is registered.",
                "Pick an app from the list.",
                "/ehr/apps",
            );
        }
        Err(e) => return internal(e),
    };
    client.disabled = p.get("disabled").map(String::as_str) == Some("1");
    if let Err(e) = auth::registry::put_client_as_is(s.store.as_ref(), &client).await {
        return internal(e);
    }
    s.audit(if client.disabled { "app-disabled" } else { "app-enabled" })
        .client(client.client_id.as_str())
        .user(sess.user.username.as_str())
        .record("changed in the EHR");
    Redirect::to(&format!("/ehr/apps/{}", client.client_id)).into_response()
}

// ----- patient portal -----

async fn portal(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let Some(sess) = session::current(&s, &headers).await else { return Redirect::to("/portal/login").into_response() };
    let Some(own) = sess.user.own_patient().map(str::to_string) else { return Redirect::to("/ehr/patients").into_response() };
    let patient = match s.store.read("Patient", &own).await {
        Ok(Some(r)) if !r.deleted => chart::patient_facts(&own, &serde_json::from_str(&r.json).unwrap_or_default(), today(&s)),
        Ok(_) => {
            return message(
                Nav::of(&sess),
                StatusCode::NOT_FOUND,
                "Your record was not found",
                "Your account is not linked to a record here.",
                "Contact the practice.",
                "/portal",
            );
        }
        Err(e) => return internal(e),
    };
    let apps = match launchable_apps(&s, true).await {
        Ok(a) => a,
        Err(e) => return internal(e),
    };
    render(StatusCode::OK, &PortalPage { nav: Nav::of(&sess), patient, apps, profiles: profiles() })
}

// ----- static files -----

async fn static_file(Path(file): Path<String>) -> Response {
    let (body, ty): (&'static str, &str) = match file.as_str() {
        "ehr.css" => (include_str!("../static/ehr.css"), "text/css; charset=utf-8"),
        "htmx-2.0.11.min.js" => (include_str!("../static/htmx-2.0.11.min.js"), "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    ([(header::CONTENT_TYPE, ty), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
}

/// The demo app: a public SMART client that runs in the browser (vanilla JavaScript, PKCE S256), served
/// here so that `kindling up` has an app to launch with nothing else installed.
async fn demo_app_file(Path(file): Path<String>) -> Response {
    let (body, ty): (&'static str, &str) = match file.as_str() {
        "launch.html" => (include_str!("../static/demo-app/launch.html"), "text/html; charset=utf-8"),
        "index.html" => (include_str!("../static/demo-app/index.html"), "text/html; charset=utf-8"),
        "demo.js" => (include_str!("../static/demo-app/demo.js"), "text/javascript; charset=utf-8"),
        "icon.svg" => (include_str!("../static/demo-app/icon.svg"), "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    let mut r = ([(header::CONTENT_TYPE, ty), (header::CACHE_CONTROL, "no-cache")], body).into_response();
    r.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// Registers the demo app (a public client served by this server under `/demo-app/`).
pub async fn register_demo_app(s: &Shared) -> Result<(), store::StoreError> {
    let base = &s.config.public_url;
    let client = auth::model::Client {
        client_id: DEMO_APP.to_string(),
        name: "Kindling demo app".into(),
        kind: ClientKind::Public,
        secret_hash: None,
        redirect_uris: vec![format!("{base}/demo-app/index.html")],
        launch_url: Some(format!("{base}/demo-app/launch.html")),
        allowed_scope: "launch launch/patient launch/encounter openid fhirUser offline_access online_access patient/*.rs user/*.rs".into(),
        jwks: None,
        jwks_url: None,
        icon: Some(format!("{base}/demo-app/icon.svg")),
        disabled: false,
        profile: None,
        self_registered: false,
    };
    // Keep an administrator's changes (disabled, profile) when the app exists.
    let merged = match stored_client(s, DEMO_APP).await? {
        Some(old) => auth::model::Client { disabled: old.disabled, profile: old.profile, ..client },
        None => client,
    };
    auth::registry::put_client_as_is(s.store.as_ref(), &merged).await
}

pub const DEMO_APP: &str = "kindling-demo";
