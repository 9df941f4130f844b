//! The people-facing pages of the authorisation server: sign-in, patient picker, consent, and error pages
//! that say what happened and what to do. Plain server-rendered HTML with labelled controls.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#1a1a1a}\
h1{font-size:1.4rem}fieldset{border:1px solid #ccc;border-radius:6px;margin:1rem 0;padding:.5rem 1rem}\
label{display:block;margin:.4rem 0}input[type=text],input[type=password]{width:100%;padding:.4rem;font-size:1rem}\
button{font-size:1rem;padding:.5rem 1.2rem;margin:.5rem .5rem 0 0;border-radius:6px;border:1px solid #555;background:#f4f4f4;cursor:pointer}\
button.primary{background:#1f5fa8;color:#fff;border-color:#1f5fa8}.hint{color:#555;font-size:.9rem}.error{color:#a40000}";

pub fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} – Kindling</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        escape(title)
    );
    let mut r = (status, Html(html)).into_response();
    r.headers_mut().insert("cache-control", axum::http::HeaderValue::from_static("no-store"));
    r.headers_mut().insert("referrer-policy", axum::http::HeaderValue::from_static("no-referrer"));
    // Sign-in and consent are never framed by another site (clickjacking); the EHR, on this origin, may
    // embed an app in its chart, and the app's authorisation then happens inside that frame.
    r.headers_mut().insert("content-security-policy", axum::http::HeaderValue::from_static("frame-ancestors 'self'; default-src 'self'; style-src 'unsafe-inline'"));
    r.headers_mut().insert("x-frame-options", axum::http::HeaderValue::from_static("SAMEORIGIN"));
    r
}

/// A page for a person when the request cannot be sent back to the app (unknown app, unregistered
/// redirect address): what happened and what to do, never an OAuth code alone.
pub fn error_page(status: StatusCode, title: &str, explanation: &str, action: &str) -> Response {
    page(status, title, &format!("<h1>{}</h1><p>{}</p><p><strong>What to do:</strong> {}</p>", escape(title), escape(explanation), escape(action)))
}

/// The sign-in form; `expected_user` is the user an EHR launch was made by (only they may continue it).
pub fn login(request_id: &str, app_name: &str, expected_user: Option<&str>, error: Option<&str>) -> Response {
    let err = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    page(
        if error.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK },
        "Sign in",
        &format!(
            "<h1>Sign in to continue to {app}</h1>{err}\
             <form method=\"post\" action=\"/auth/login\">\
             <input type=\"hidden\" name=\"request\" value=\"{req}\">\
             <label for=\"username\">User name</label><input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" value=\"{user}\" required>\
             <label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
             <button class=\"primary\" type=\"submit\">Sign in</button></form>",
            app = escape(app_name),
            req = escape(request_id),
            user = escape(expected_user.unwrap_or(""))
        ),
    )
}

pub fn patient_picker(request_id: &str, app_name: &str, patients: &[(String, String)]) -> Response {
    let mut options = String::new();
    for (i, (id, label)) in patients.iter().enumerate() {
        options.push_str(&format!(
            "<label><input type=\"radio\" name=\"patient\" value=\"{}\"{}> {}</label>",
            escape(id),
            if i == 0 { " checked" } else { "" },
            escape(label)
        ));
    }
    page(
        StatusCode::OK,
        "Choose a patient",
        &format!(
            "<h1>Which patient should {app} open?</h1><form method=\"post\" action=\"/auth/pick\">\
             <input type=\"hidden\" name=\"request\" value=\"{req}\"><fieldset><legend>Patients</legend>{options}</fieldset>\
             <button class=\"primary\" type=\"submit\">Continue</button></form>",
            app = escape(app_name),
            req = escape(request_id)
        ),
    )
}

/// One line of the consent screen.
pub struct ConsentItem {
    pub scope: String,
    pub explanation: String,
    /// Resource scopes can be unticked; identity and context scopes come with the launch.
    pub optional: bool,
    /// Category sub-scopes the user may choose instead of the whole type: (value, label).
    pub categories: Vec<(String, String)>,
}

pub fn consent(request_id: &str, app_name: &str, patient_label: Option<&str>, items: &[ConsentItem], offline: bool) -> Response {
    let mut rows = String::new();
    for (i, item) in items.iter().enumerate() {
        if item.optional {
            rows.push_str(&format!(
                "<label><input type=\"checkbox\" name=\"scope\" value=\"{}\" checked id=\"s{i}\"> {}</label>",
                escape(&item.scope),
                escape(&item.explanation)
            ));
            if !item.categories.is_empty() {
                rows.push_str("<fieldset><legend>Only some kinds (optional; none ticked means all kinds)</legend>");
                for (value, label) in &item.categories {
                    rows.push_str(&format!(
                        "<label><input type=\"checkbox\" name=\"category\" value=\"{}\"> {}</label>",
                        escape(&format!("{}|{}", item.scope, value)),
                        escape(label)
                    ));
                }
                rows.push_str("</fieldset>");
            }
        } else {
            rows.push_str(&format!("<p>• {}</p>", escape(&item.explanation)));
        }
    }
    let patient = patient_label.map(|p| format!("<p>Patient: <strong>{}</strong></p>", escape(p))).unwrap_or_default();
    let offline_note = if offline {
        "<p class=\"hint\">This app asks to keep access while you are away (offline access). You can withdraw it at any time.</p>"
    } else {
        ""
    };
    page(
        StatusCode::OK,
        "Allow access",
        &format!(
            "<h1>{app} would like to:</h1>{patient}<form method=\"post\" action=\"/auth/consent\">\
             <input type=\"hidden\" name=\"request\" value=\"{req}\"><fieldset><legend>Access requested</legend>{rows}</fieldset>{offline_note}\
             <button class=\"primary\" type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
             <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
            app = escape(app_name),
            req = escape(request_id)
        ),
    )
}
