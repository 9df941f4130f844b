//! A small web app launched from an EHR: `/launch` (the app's launch URL), `/callback` (its redirect URI)
//! and `/` (the patient, from the FHIR API). Sessions live on the server; the browser gets a random cookie.
//!
//! Against `kindling up` (register the app first, then launch it from a chart at /ehr):
//!
//! ```sh
//! kindling apps add --client-id example-app --name "Example app" --type public \
//!     --redirect-uri http://127.0.0.1:3000/callback --launch-url http://127.0.0.1:3000/launch
//! ISS=http://127.0.0.1:8080/fhir CLIENT_ID=example-app cargo run -p client --example ehr_launch_app
//! ```

use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use client::{AuthorizationRequest, ClientAuth, EhrConfig, MemoryPendingStore, Session, SmartClient};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

struct App {
    smart: SmartClient,
    sessions: Mutex<HashMap<String, Session>>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn page(body: &str) -> Response {
    Html(format!("<!doctype html><meta charset=utf-8><title>Example app</title><body style=\"font-family:sans-serif\">{body}</body>")).into_response()
}

async fn launch(State(app): State<Arc<App>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let (Some(iss), Some(handle)) = (q.get("iss"), q.get("launch")) else {
        return page("<p>Open this app from a patient's chart in the EHR.</p>");
    };
    // Bind the launch to this browser: the callback must come back with the same cookie.
    let browser = client::jose::random(24);
    let cookie = format!("example_launch={browser}; Path=/callback; HttpOnly; SameSite=Lax; Max-Age=600");
    match app.smart.ehr_launch_bound(iss, handle, &browser).await {
        Ok(AuthorizationRequest::Redirect { url, .. }) => ([(header::SET_COOKIE, cookie)], Redirect::to(&url)).into_response(),
        Ok(AuthorizationRequest::Post { url, fields, .. }) => {
            let inputs: String = fields.iter().map(|(k, v)| format!("<input type=hidden name=\"{}\" value=\"{}\">", escape(k), escape(v))).collect();
            page(&format!("<form method=post action=\"{}\">{inputs}<button>Continue</button></form>", escape(&url)))
        }
        Err(e) => {
            tracing::warn!(error = %e, "launch refused");
            page(&format!("<p>{}</p>", escape(e.user_message())))
        }
    }
}

async fn callback(State(app): State<Arc<App>>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let browser = headers
        .get(header::COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').find_map(|p| p.trim().strip_prefix("example_launch=").map(str::to_string)));
    match app.smart.callback_bound(&q, browser.as_deref()).await {
        Ok(session) => {
            let id = client::jose::random(24);
            app.sessions.lock().expect("no thread panics holding the session map").insert(id.clone(), session);
            let cookie = format!("example_session={id}; Path=/; HttpOnly; SameSite=Lax");
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "callback failed");
            page(&format!("<p>{}</p>", escape(e.user_message())))
        }
    }
}

async fn home(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let id = headers
        .get(header::COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').find_map(|p| p.trim().strip_prefix("example_session=").map(str::to_string)));
    let Some(session) = id.and_then(|id| app.sessions.lock().expect("no thread panics holding the session map").get(&id).cloned()) else {
        return page("<p>Open this app from a patient's chart in the EHR.</p>");
    };
    let ctx = session.context();
    let Some(patient_id) = ctx.patient.clone() else { return page("<p>No patient was chosen for this launch.</p>") };
    let fhir = session.fhir();
    let name = match fhir.read::<client::types::Patient>("Patient", &patient_id).await {
        Ok(p) => p.display_name(),
        Err(e) => return page(&format!("<p>{}</p>", escape(e.user_message()))),
    };
    let vitals = if ctx.granted.allows_search_with("Observation", "category", "vital-signs") {
        match fhir.search("Observation", &[("patient", &patient_id), ("category", "vital-signs"), ("_summary", "count")]).await {
            Ok(b) => format!("{} vital-sign observations", b.total.unwrap_or(0)),
            Err(e) => e.user_message().to_string(),
        }
    } else {
        "Vital signs were not shared with this app.".to_string()
    };
    let banner = if ctx.need_patient_banner { format!("<h1>{}</h1>", escape(&name)) } else { String::new() };
    page(&format!("{banner}<p>{}</p><p>Encounter: {}</p>", escape(&vitals), escape(ctx.encounter.as_deref().unwrap_or("none"))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber_init();
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let listen = env("LISTEN", "127.0.0.1:3000");
    let ehr = EhrConfig {
        iss: env("ISS", "http://127.0.0.1:8080/fhir"),
        client_id: env("CLIENT_ID", "example-app"),
        auth: ClientAuth::Public,
        redirect_uri: env("REDIRECT_URI", &format!("http://{listen}/callback")),
        ehr_scope: "launch openid fhirUser offline_access patient/*.rs".into(),
        standalone_scope: "launch/patient openid fhirUser offline_access patient/*.rs".into(),
    };
    let app = Arc::new(App { smart: SmartClient::new(vec![ehr], Arc::new(MemoryPendingStore::new()))?, sessions: Mutex::new(HashMap::new()) });
    let router = axum::Router::new().route("/launch", get(launch)).route("/callback", get(callback)).route("/", get(home)).with_state(app);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("example app on http://{listen} (launch URL http://{listen}/launch)");
    axum::serve(listener, router).await?;
    Ok(())
}

fn tracing_subscriber_init() {
    // The SDK logs through `tracing`; wire a subscriber of your choice in a real app.
}
