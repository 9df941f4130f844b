//! The people-facing pages of the authorisation server: sign-in, patient picker, consent, and error pages
//! that say what happened and what to do. The authorisation server decides what a page says and how it is
//! served (status, no-store, framing rules); the EHR layer renders it ([`Pages`], implemented by the `ehr`
//! crate with askama templates), so the pages look like the EHR they belong to.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// Renders the authorisation server's pages to HTML. Implementations must escape every value.
pub trait Pages: Send + Sync {
    /// An error page for a person.
    fn error(&self, view: &ErrorView<'_>) -> String;
    /// The sign-in page.
    fn login(&self, view: &LoginView<'_>) -> String;
    /// The patient picker.
    fn patient_picker(&self, view: &PickerView<'_>) -> String;
    /// The consent page.
    fn consent(&self, view: &ConsentView<'_>) -> String;
}

/// What an error page says.
pub struct ErrorView<'a> {
    /// The heading.
    pub title: &'a str,
    /// What happened, in plain words.
    pub explanation: &'a str,
    /// What the person can do.
    pub action: &'a str,
}

/// What the sign-in page shows.
pub struct LoginView<'a> {
    /// The pending authorisation request the form continues.
    pub request_id: &'a str,
    /// The app asking.
    pub app_name: &'a str,
    /// The user an EHR launch was made by (only they may continue it).
    pub expected_user: Option<&'a str>,
    /// Why the last attempt failed.
    pub error: Option<&'a str>,
}

/// What the patient picker shows.
pub struct PickerView<'a> {
    /// The pending request the form continues.
    pub request_id: &'a str,
    /// The app asking.
    pub app_name: &'a str,
    /// (id, label)
    pub patients: &'a [(String, String)],
}

/// One line of the consent screen.
pub struct ConsentItem {
    /// The scope as granted.
    pub scope: String,
    /// What it allows, in plain words.
    pub explanation: String,
    /// Resource scopes can be unticked; identity and context scopes come with the launch.
    pub optional: bool,
    /// Category sub-scopes the user may choose instead of the whole type: (value, label).
    pub categories: Vec<(String, String)>,
}

/// What the consent page shows.
pub struct ConsentView<'a> {
    /// The pending request the form continues.
    pub request_id: &'a str,
    /// The app asking.
    pub app_name: &'a str,
    /// The patient the app would see.
    pub patient_label: Option<&'a str>,
    /// One line per scope.
    pub items: &'a [ConsentItem],
    /// The app asks for offline access.
    pub offline: bool,
    /// For an app that registered itself (RFC 7591): the site the browser goes back to. Its name was chosen
    /// by whoever registered it, and nobody checked it, so the page says so and names the site.
    pub self_registered_to: Option<&'a str>,
}

/// Whether `response` is a refusal no page was rendered for (an extractor's plain-text rejection, axum's
/// bare 405): the person-facing routes (here and in the EHR) turn those into their own message page.
pub fn is_unrendered_error(response: &Response) -> bool {
    let status = response.status();
    let html = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.starts_with("text/html"));
    (status.is_client_error() || status.is_server_error()) && !html
}

/// Serves a rendered page: never cached, no referrer, framed only by this origin (the EHR may embed an app
/// in its chart, and the app's authorisation then happens inside that frame; other sites never can).
pub fn serve(status: StatusCode, html: String) -> Response {
    let mut r = (status, Html(html)).into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'self'; default-src 'self'; style-src 'self'"));
    h.insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
    r
}
