//! The reference clinician app over HTTP: the launch → authorise → callback → summary chain, its cookie
//! and security headers, encryption of tokens at rest, CSRF on sign-out, the refusal of unknown EHRs, and
//! that no token material ever reaches the logs.

use crate::{TestApp, spawn_with_reference_app, spawn_with_reference_app_on};
use auth::model::UserRole;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

fn root(app: &TestApp) -> String {
    app.base.trim_end_matches("/fhir").to_string()
}

fn hidden(html: &str, name: &str) -> String {
    let key = format!("name=\"{name}\" value=\"");
    let start = html.find(&key).unwrap_or_else(|| panic!("no {name} in {html}")) + key.len();
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

async fn post(app: &TestApp, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let mut req = app.client.post(format!("{}{path}", root(app))).header("content-type", "application/x-www-form-urlencoded").body(body);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_string()
}

/// The `name=value` of the launch-binding cookie the app set when it started a launch.
fn launch_cookie(r: &reqwest::Response) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("kapp_l_"))
        .expect("launch cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// A patient's standalone launch of the reference app, consenting to every scope offered: the summary page.
pub(crate) async fn standalone_summary(app: &TestApp, user: &str, password: &str) -> String {
    let r = app.client.get(format!("{}/app/launch?iss={}", root(app), app.base)).send().await.unwrap();
    let bound = launch_cookie(&r);
    let browser = crate::Browser::new();
    let html = browser.get(location(&r)).await.text().await.unwrap();
    let r =
        browser.post_form(&format!("{}/auth/login", root(app)), &[("request", &hidden(&html, "request")), ("username", user), ("password", password)]).await;
    let html = r.text().await.unwrap();
    let mut form = vec![("request".to_string(), hidden(&html, "request")), ("decision".into(), "allow".into())];
    for s in html.split("name=\"scope\" value=\"").skip(1) {
        form.push(("scope".into(), s[..s.find('"').unwrap()].to_string()));
    }
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = browser.post_form(&format!("{}/auth/consent", root(app)), &pairs).await;
    let r = app.client.get(location(&r)).header("cookie", &bound).send().await.unwrap();
    assert_eq!(r.status(), 303, "the callback starts a session");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let r = app.client.get(format!("{}{}", root(app), location(&r))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Captured log output of the whole test process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn launch_to_summary_cookies_headers_encryption_signout_and_clean_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    // Everything at DEBUG, from every crate of the process, into the buffer.
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("debug")).with_writer(move || writer.clone()).try_init();

    let app = spawn_with_reference_app().await;
    kindling::seed(&app.app_state, 2, 4).await.unwrap();
    let store = app.auth.store.as_ref();
    auth::registry::put_user(store, "doc", "Dr Doc", UserRole::Clinician, "doc-pass", &format!("Practitioner/{}", synth::practitioner_id(0))).await.unwrap();
    let patient = synth::patient_id(4, 1);
    let r = app
        .client
        .post(format!("{}/auth/launch", root(&app)))
        .basic_auth("doc", Some("doc-pass"))
        .json(&serde_json::json!({"patient": patient, "need_patient_banner": true}))
        .send()
        .await
        .unwrap();
    let handle = r.json::<serde_json::Value>().await.unwrap()["launch"].as_str().unwrap().to_string();

    // The EHR opens the app's launch URL; the app sends the browser to authorise.
    let mut launch_url = url::Url::parse(&format!("{}/app/launch", root(&app))).unwrap();
    launch_url.query_pairs_mut().append_pair("iss", &app.base).append_pair("launch", &handle);
    let r = app.client.get(launch_url).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let bound = launch_cookie(&r);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Path=/app/callback; HttpOnly"));
    let authorize = location(&r);
    assert!(authorize.contains("code_challenge_method=S256") && authorize.contains("client_id=kindling-summary"));
    // The sign-in pages in the same browser (their cookies: the request's binding, then the session).
    let browser = crate::Browser::new();
    let html = browser.get(&authorize).await.text().await.unwrap();
    let r = browser
        .post_form(&format!("{}/auth/login", root(&app)), &[("request", &hidden(&html, "request")), ("username", "doc"), ("password", "doc-pass")])
        .await;
    let html = r.text().await.unwrap();
    let mut form = vec![("request".to_string(), hidden(&html, "request")), ("decision".into(), "allow".into())];
    for s in html.split("name=\"scope\" value=\"").skip(1) {
        form.push(("scope".into(), s[..s.find('"').unwrap()].to_string()));
    }
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = browser.post_form(&format!("{}/auth/consent", root(&app)), &pairs).await;
    let callback = location(&r);
    assert!(callback.starts_with(&format!("{}/app/callback?", root(&app))), "{callback}");
    let code: String = url::Url::parse(&callback).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();

    // The callback: a session of its own, a cookie scoped to it, and the browser never sees a token.
    let r = app.client.get(&callback).header("cookie", &bound).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let summary_path = location(&r);
    assert!(summary_path.starts_with("/app/s/") && summary_path.ends_with('/'));
    let sid = summary_path.trim_start_matches("/app/s/").trim_end_matches('/').to_string();
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Lax", &format!("Path={summary_path}")] {
        assert!(set_cookie.contains(attr), "{attr} missing: {set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let secret = cookie.split_once('=').unwrap().1.to_string();

    let r = app.client.get(format!("{}{summary_path}", root(&app))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert!(h["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'self'"));
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["cache-control"], "no-store");
    assert!(h["server-timing"].to_str().unwrap().starts_with("app;dur="));
    let page = r.text().await.unwrap();
    assert!(page.contains("Active problems") && page.contains("id=\"patient-name\""), "{page}");

    // Tokens are stored encrypted.
    let reference = app.reference_app.as_ref().unwrap();
    let stored = reference.store().load_session(&sid, &app::store::hash(&secret)).await.unwrap().unwrap();
    let access = stored.smart.access_token.expose().to_string();
    let refresh = stored.smart.refresh_token.as_ref().unwrap().expose().to_string();
    let raw = reference.store().raw_session(&sid).await.unwrap().unwrap();
    for t in [&access, &refresh] {
        assert!(!raw.windows(t.len()).any(|w| w == t.as_bytes()), "a token is stored in the clear");
        assert!(!page.contains(t.as_str()), "a token reached the page");
    }
    // Another browser (no cookie, or a wrong one) gets guidance, not the session.
    let r = app.client.get(format!("{}{summary_path}", root(&app))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("Open the app in a new tab"));
    let r = app.client.get(format!("{}{summary_path}", root(&app))).header("cookie", format!("kapp_{sid}=forged")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Sign-out needs the page's CSRF token; then the session is gone and the grant revoked.
    let r = post(&app, &format!("{summary_path}signout"), Some(&cookie), &[("csrf", "forged")]).await;
    assert_eq!(r.status(), 403);
    let csrf = hidden(&page, "csrf");
    let r = post(&app, &format!("{summary_path}signout"), Some(&cookie), &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 200);
    let r = app.client.get(format!("{}{summary_path}", root(&app))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = app.client.get(format!("{}/Patient/{patient}", app.base)).bearer_auth(&access).send().await.unwrap();
    assert_eq!(r.status(), 401, "revoked at sign-out");

    // An EHR the app does not know is refused, not followed.
    let r = app.client.get(format!("{}/app/launch?iss=https://evil.example/fhir&launch=x", root(&app))).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("This EHR is not known to the app"));
    // A reused launch (the callback again) gets the relaunch page.
    let r = app.client.get(&callback).header("cookie", &bound).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("This launch has expired"));
    // A callback link opened in another browser (without the launch's cookie) is refused.
    let r = app
        .client
        .post(format!("{}/auth/launch", root(&app)))
        .basic_auth("doc", Some("doc-pass"))
        .json(&serde_json::json!({"patient": patient}))
        .send()
        .await
        .unwrap();
    let handle2 = r.json::<serde_json::Value>().await.unwrap()["launch"].as_str().unwrap().to_string();
    let mut u = url::Url::parse(&format!("{}/app/launch", root(&app))).unwrap();
    u.query_pairs_mut().append_pair("iss", &app.base).append_pair("launch", &handle2);
    let r = app.client.get(u).send().await.unwrap();
    let bound2 = launch_cookie(&r);
    let browser = crate::Browser::new();
    let html = browser.get(location(&r)).await.text().await.unwrap();
    let r = browser
        .post_form(&format!("{}/auth/login", root(&app)), &[("request", &hidden(&html, "request")), ("username", "doc"), ("password", "doc-pass")])
        .await;
    let forwarded = location(&r);
    assert!(forwarded.contains("/app/callback?"), "consent remembered: straight back to the app");
    let r = app.client.get(&forwarded).send().await.unwrap();
    assert_eq!(r.status(), 400, "not the browser that started the launch");
    // ... and does not use up the launch of the browser that did.
    let r = app.client.get(&forwarded).header("cookie", &bound2).send().await.unwrap();
    assert_eq!(r.status(), 303, "the browser that started the launch still finishes it");

    // Nothing secret in the logs of the whole flow.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(text.contains("session started") && text.contains("summary shown"), "the flow was logged:\n{text}");
    let secrets: HashMap<&str, &str> = HashMap::from([
        ("access token", access.as_str()),
        ("refresh token", refresh.as_str()),
        ("code", code.as_str()),
        ("launch handle", handle.as_str()),
        ("browser secret", secret.as_str()),
    ]);
    for (what, value) in secrets {
        assert!(!text.contains(value), "the {what} appears in the logs");
    }
}

#[tokio::test]
async fn consent_denied_and_standalone_launch() {
    let app = spawn_with_reference_app().await;
    kindling::seed(&app.app_state, 1, 6).await.unwrap();
    let store = app.auth.store.as_ref();
    let patient = synth::patient_id(6, 0);
    auth::registry::put_user(store, "pat", "Pat", UserRole::Patient, "pat-pass", &format!("Patient/{patient}")).await.unwrap();
    // Standalone (no launch handle): the patient signs in, then denies.
    let r = app.client.get(format!("{}/app/launch?iss={}", root(&app), app.base)).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let bound = launch_cookie(&r);
    let browser = crate::Browser::new();
    let html = browser.get(location(&r)).await.text().await.unwrap();
    let r = browser
        .post_form(&format!("{}/auth/login", root(&app)), &[("request", &hidden(&html, "request")), ("username", "pat"), ("password", "pat-pass")])
        .await;
    let html = r.text().await.unwrap();
    let r = browser.post_form(&format!("{}/auth/consent", root(&app)), &[("request", &hidden(&html, "request")), ("decision", "deny")]).await;
    let r = app.client.get(location(&r)).header("cookie", &bound).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let page = r.text().await.unwrap();
    assert!(page.contains("Access was not allowed") && page.contains("Without that access this app cannot"), "{page}");
    // Allowed this time: the patient's own summary.
    let page = standalone_summary(&app, "pat", "pat-pass").await;
    assert!(page.contains("id=\"patient-name\""), "a standalone launch shows the banner");
}

/// An EHR launch of the reference app for `patient` under `profile`, as the clinician `doc`: the summary page.
async fn ehr_launch_summary(app: &TestApp, patient: &str, profile: &str) -> String {
    let r = app
        .client
        .post(format!("{}/auth/launch", root(app)))
        .basic_auth("doc", Some("doc-pass"))
        .json(&serde_json::json!({"patient": patient, "profile": profile, "need_patient_banner": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{profile}");
    let created = r.json::<serde_json::Value>().await.unwrap();
    let handle = created["launch"].as_str().unwrap().to_string();
    // The launch's `iss`: the FHIR base of the EHR the profile reproduces.
    let iss = created["iss"].as_str().unwrap();
    assert_eq!(iss, app.auth.config.fhir_base_for(&auth::model::Profile::named(profile)), "{profile}");
    let mut u = url::Url::parse(&format!("{}/app/launch", root(app))).unwrap();
    u.query_pairs_mut().append_pair("iss", iss).append_pair("launch", &handle);
    summary_after_launch(app, u.as_str(), profile).await
}

/// The reference app's summary after the EHR opened `launch_url` (its launch URL with `iss` and `launch`):
/// `doc` signs in and allows what the consent page offers. `what` names the case in messages.
pub(crate) async fn summary_after_launch(app: &TestApp, launch_url: &str, what: &str) -> String {
    let profile = what;
    let r = app.client.get(launch_url).send().await.unwrap();
    assert_eq!(r.status(), 303, "{profile}");
    let bound = launch_cookie(&r);
    let browser = crate::Browser::new();
    let html = browser.get(location(&r)).await.text().await.unwrap();
    let mut r =
        browser.post_form(&format!("{}/auth/login", root(app)), &[("request", &hidden(&html, "request")), ("username", "doc"), ("password", "doc-pass")]).await;
    if r.status() == 200 {
        let html = r.text().await.unwrap();
        let mut form = vec![("request".to_string(), hidden(&html, "request")), ("decision".into(), "allow".into())];
        for s in html.split("name=\"scope\" value=\"").skip(1) {
            form.push(("scope".into(), s[..s.find('"').unwrap()].to_string()));
        }
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        r = browser.post_form(&format!("{}/auth/consent", root(app)), &pairs).await;
    }
    let callback = location(&r);
    assert!(callback.contains("/app/callback?") && !callback.contains("error="), "{profile}: {callback}");
    let r = app.client.get(&callback).header("cookie", &bound).send().await.unwrap();
    assert_eq!(r.status(), 303, "{profile}: the callback starts a session");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let r = app.client.get(format!("{}{}", root(app), location(&r))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 200, "{profile}");
    r.text().await.unwrap()
}

/// The reference app works on every vendor profile the EHR offers: the summary shows the patient, and
/// what a profile does not grant (Oracle drops wildcard scopes) degrades to plain words, not an error page.
#[tokio::test]
async fn the_reference_app_works_under_every_vendor_profile() {
    let app = spawn_with_reference_app().await;
    kindling::seed(&app.app_state, 1, 5).await.unwrap();
    let store = app.auth.store.as_ref();
    auth::registry::put_user(store, "doc", "Dr Doc", UserRole::Clinician, "doc-pass", &format!("Practitioner/{}", synth::practitioner_id(0))).await.unwrap();
    let patient = synth::patient_id(5, 0);
    let profiles: Vec<String> = app.auth.config.profiles.all().iter().map(|p| p.name.clone()).collect();
    assert!(profiles.len() >= 5, "{profiles:?}");
    for profile in profiles {
        let page = ehr_launch_summary(&app, &patient, &profile).await;
        assert!(page.contains("id=\"patient-name\"") && page.contains("Active problems"), "{profile}: {page}");
        for code in ["invalid_scope", "invalid_grant", "insufficient_scope", "OperationOutcome", "access_token"] {
            assert!(!page.contains(code), "{profile}: the page speaks OAuth ({code})");
        }
    }
}

/// The app's sessions and pending authorisations on PostgreSQL (a database of its own, dropped after).
/// Skipped with a message when PostgreSQL is not reachable, except in CI.
#[tokio::test]
async fn reference_app_on_postgres() {
    let Some(db) = crate::ScratchPostgres::create("app").await else { return };
    let app = spawn_with_reference_app_on(&db.url).await;
    kindling::seed(&app.app_state, 1, 8).await.unwrap();
    let patient = synth::patient_id(8, 0);
    auth::registry::put_user(app.auth.store.as_ref(), "pat", "Pat", UserRole::Patient, "pat-pass", &format!("Patient/{patient}")).await.unwrap();
    let page = standalone_summary(&app, "pat", "pat-pass").await;
    assert!(page.contains("id=\"patient-name\""), "the callback found its pending authorisation in PostgreSQL");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM app_sessions").fetch_one(&sqlx::PgPool::connect(&db.url).await.unwrap()).await.unwrap();
    assert_eq!(stored, 1);
    drop(app);
    db.drop_database().await;
}
