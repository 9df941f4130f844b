//! Kindling's EHR simulator: the first layer of a SMART integration, where a clinician is already signed
//! in, opens a chart and launches an app.
//!
//! - Clinician EHR (`/ehr`): sign-in, patient list with search and paging, a chart (banner, encounters,
//!   problems, medications, allergies, vital signs), and an Apps panel that creates a launch context and
//!   opens the app in a new tab or inside the chart.
//! - Patient portal (`/portal`): a patient launches patient-facing apps on their own record.
//! - App registration pages (`/ehr/apps`) and the Users page (`/ehr/users`), for administrators.
//! - Fault injection and vendor profiles chosen per launch, and a launch inspector (`/ehr/launches/{id}`)
//!   that shows the SMART handshake as it happened.
//!
//! Pages are server-rendered (askama) and work without JavaScript; htmx (vendored) only makes the patient
//! search live and the inspector refresh itself. The EHR shares its sign-in session with the
//! authorisation server, so an app launched here does not ask the clinician to sign in again.
#![deny(missing_docs)]

mod apps;
mod auth_pages;
pub mod cds;
pub mod chart;
mod connected;
mod launch;
mod orders;
mod pages;
mod patients;
mod portal;
mod sign_in;
mod users;

use apps::*;
pub use auth_pages::AuthPages;
use connected::*;
use launch::*;
use patients::*;
use portal::*;
use sign_in::*;

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
        .route("/ehr/patients/{id}/cds", get(cds::chart_cards))
        .route("/ehr/patients/{id}/orders", get(orders::orders).post(orders::order_add))
        .route("/ehr/patients/{id}/orders/remove", post(orders::order_remove))
        .route("/ehr/patients/{id}/orders/cards", post(orders::order_card))
        .route("/ehr/patients/{id}/orders/sign", post(orders::order_sign))
        .route("/ehr/cds/launch", post(cds::launch_from_card))
        .route("/ehr/cds", get(cds::services).post(cds::service_create))
        .route("/ehr/cds/{id}/status", post(cds::service_status))
        .route("/ehr/cds/{id}/fault", post(cds::service_fault))
        .route("/ehr/launch", post(launch))
        .route("/ehr/launches", get(launches))
        .route("/ehr/launches/{id}", get(inspector))
        .route("/ehr/connected", get(connected))
        .route("/ehr/connected/{client_id}/withdraw", post(withdraw))
        .route("/ehr/apps", get(apps_list).post(app_create))
        .route("/ehr/apps/new", get(app_new))
        .route("/ehr/apps/{id}", get(app_edit).post(app_update))
        .route("/ehr/apps/{id}/status", post(app_status))
        .route("/ehr/users", get(users::users_page).post(users::user_create))
        .route("/ehr/users/{username}", post(users::user_change))
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
    if !auth::pages::is_unrendered_error(&response) {
        return response;
    }
    let mut page = message(
        Nav::anonymous(),
        response.status(),
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

/// The signed-in administrator, or the page saying this is theirs to do (or the sign-in page).
async fn administrator(s: &Shared, headers: &HeaderMap) -> Result<Session, Response> {
    let sess = clinician(s, headers).await?;
    if sess.user.admin {
        return Ok(sess);
    }
    Err(message(
        Nav::of(&sess),
        StatusCode::FORBIDDEN,
        "This page is for administrators",
        "Registering apps and managing accounts is for the EHR's administrators.",
        "Ask an administrator of this EHR.",
        "/ehr/patients",
    ))
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

/// The client id of the demo app the EHR registers (`register_demo_app`).
pub const DEMO_APP: &str = "kindling-demo";
