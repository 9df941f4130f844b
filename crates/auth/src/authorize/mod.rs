//! The authorisation endpoint (GET and POST, RFC 6749 §4.1 with PKCE and SMART's `aud` and `launch`), and
//! the pages a person passes through: sign-in, patient picker, consent.
//!
//! Errors before the redirect URI is trusted (unknown app, unregistered redirect URI) are pages for a
//! person and never redirect; after that, RFC 6749 error codes go back to the app with `state` and `iss`.
//!
//! One file per step: `request` (the request itself), `sign_in`, `picker`, `consent` (and the code it
//! ends in); here, what they share: the pending request bound to its browser and user, the next-step
//! decision, and the pages for a person.

use crate::crypto::{random_token, token_hash};
use crate::model::{Awaiting, Client, Grant, LaunchContext, PendingAuthorization, Profile, User, UserRole};
use crate::pages::{self, ConsentItem, ConsentView, ErrorView, LoginView, PickerView};
use crate::session::Session;
use crate::{AuthServer, ErrorCode, Shared, registry, session};
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use smart::{Scope, ScopeSet};
use std::collections::HashMap;

mod consent;
mod picker;
mod request;
mod sign_in;

pub use consent::consent;
use consent::{consent_items, issue_code};
pub(crate) use consent::{explain, grantable, within_rights};
use picker::patient_choices;
use picker::patient_label;
pub use picker::pick;
pub use request::{authorize_get, authorize_post};
pub use sign_in::login;

const REQUEST_KIND: &str = "authz_request";

type Params = HashMap<String, String>;

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
/// An RFC 6749 §4.1.2.1 error redirect. Under a profile that writes errors as `error_uri` (Oracle-style),
/// `error_uri` names what went wrong (`slug`, or the error code) in place of `error_description`.
/// `iss` (RFC 9207) is `issuer`: the authorisation server the app believes it talks to.
fn redirect_error(
    s: &Shared,
    trace: Option<&str>,
    redirect_uri: &str,
    state: Option<&str>,
    profile: Option<&Profile>,
    issuer: &str,
    r: request::Refusal,
) -> Response {
    let (error, description) = (r.code, r.description.as_ref());
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return error_page(s, StatusCode::BAD_REQUEST, "The app's return address is not valid", description, "Tell the app's developer.");
    };
    let error_uri = profile.and_then(|p| s.config.profiles.rules(p).error_uri(r.slug.unwrap_or(error.as_str())));
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("error", error.as_str());
        match &error_uri {
            Some(uri) => q.append_pair("error_uri", uri),
            None => q.append_pair("error_description", description),
        };
        if let Some(st) = state {
            q.append_pair("state", st);
        }
        q.append_pair("iss", issuer);
    }
    tracing::info!(error = error.as_str(), "authorisation refused");
    s.audit("authorize").launch(trace).refused().record(format!("refused, sent back to the app: {error}: {description}"));
    Redirect::to(url.as_str()).into_response()
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
async fn acting_user(s: &Shared, headers: &HeaderMap, pending: &PendingAuthorization) -> Result<Session, Response> {
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
    Ok(session)
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
    if !pages::is_unrendered_error(&response) {
        return response;
    }
    error_page(
        &s,
        response.status(),
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

/// Decides the next step for the person at the browser (`session`, when signed in): sign-in, patient
/// choice, consent, or the code.
async fn proceed(s: &Shared, session: Option<Session>, request_id: &str, mut pending: PendingAuthorization, client: &Client) -> Response {
    let Some(session) = session else { return login_page(s, request_id, &client.name, pending.username.as_deref(), None) };
    let user = &session.user;
    pending.username = Some(user.username.clone());
    if let Some(own) = user.own_patient() {
        // A patient acts only on their own record, whatever a launch or a form said.
        pending.patient = Some(own.to_string());
    }
    let granted = grantable(client, user, &pending.scope);
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
    if let Ok(Some(decision)) = crate::grants::remembered_consent(s.store.as_ref(), &user.username, &client.client_id).await {
        let offered = ScopeSet::parse(&decision.offered);
        let approved = ScopeSet::parse(&decision.approved);
        if offered.narrow(&granted).to_string() == granted.to_string() {
            let approved = approved.narrow(&granted).to_string();
            s.audit("consent")
                .launch(pending.launch_id())
                .client(client.client_id.as_str())
                .user(user.username.as_str())
                .patient(pending.patient.as_deref())
                .record(format!("remembered from an earlier decision: {approved}"));
            return issue_code(s, pending, &session, approved).await;
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
    // The redirect URI was matched exactly against the registration: its host is where the answer goes.
    let site = client
        .self_registered
        .then(|| url::Url::parse(&pending.redirect_uri).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_else(|| pending.redirect_uri.clone()));
    let view = ConsentView {
        request_id,
        app_name: &client.name,
        patient_label: patient_label.as_deref(),
        items: &items,
        offline: granted.contains(&Scope::OfflineAccess),
        self_registered_to: site.as_deref(),
    };
    pages::serve(StatusCode::OK, s.pages.consent(&view))
}

fn cross_site(s: &AuthServer) -> Response {
    error_page(
        s,
        StatusCode::FORBIDDEN,
        "This form came from another site",
        "The sign-in service only accepts its own forms, so the request was stopped.",
        "Go back to the app or the EHR and start again.",
    )
}
