//! The authorisation server's people-facing pages (sign-in, patient picker, consent, errors), rendered
//! with the EHR's templates and style. The authorisation server decides their content and how they are
//! served; see `auth::pages`.

use askama::Template;
use auth::pages::{ConsentItem, ConsentView, ErrorView, LoginView, Pages, PickerView};

/// [`Pages`] for `auth::AuthServer`.
pub struct AuthPages;

#[derive(Template)]
#[template(path = "auth_error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    explanation: &'a str,
    action: &'a str,
}

#[derive(Template)]
#[template(path = "auth_login.html")]
struct LoginPage<'a> {
    request_id: &'a str,
    app_name: &'a str,
    expected_user: &'a str,
    error: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "auth_picker.html")]
struct PickerPage<'a> {
    request_id: &'a str,
    app_name: &'a str,
    patients: &'a [(String, String)],
}

#[derive(Template)]
#[template(path = "auth_consent.html")]
struct ConsentPage<'a> {
    request_id: &'a str,
    app_name: &'a str,
    patient_label: Option<&'a str>,
    items: &'a [ConsentItem],
    offline: bool,
    self_registered_to: Option<&'a str>,
}

fn rendered(result: askama::Result<String>) -> String {
    result.unwrap_or_else(|e| {
        tracing::error!(error = %e, "sign-in page could not be rendered");
        "<!doctype html><title>Error</title><p>This page could not be shown. Launch the app again.</p>".to_string()
    })
}

impl Pages for AuthPages {
    fn error(&self, v: &ErrorView<'_>) -> String {
        rendered(ErrorPage { title: v.title, explanation: v.explanation, action: v.action }.render())
    }

    fn login(&self, v: &LoginView<'_>) -> String {
        rendered(LoginPage { request_id: v.request_id, app_name: v.app_name, expected_user: v.expected_user.unwrap_or(""), error: v.error }.render())
    }

    fn patient_picker(&self, v: &PickerView<'_>) -> String {
        rendered(PickerPage { request_id: v.request_id, app_name: v.app_name, patients: v.patients }.render())
    }

    fn consent(&self, v: &ConsentView<'_>) -> String {
        rendered(
            ConsentPage {
                request_id: v.request_id,
                app_name: v.app_name,
                patient_label: v.patient_label,
                items: v.items,
                offline: v.offline,
                self_registered_to: v.self_registered_to,
            }
            .render(),
        )
    }
}
