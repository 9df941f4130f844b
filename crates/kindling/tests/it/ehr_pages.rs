//! The EHR simulator's pages over HTTP: sessions, CSRF, search and paging, launching, refusals.

use crate::{TestApp, spawn_secured_app};
use serde_json::Value;

fn root(app: &TestApp) -> String {
    app.base.trim_end_matches("/fhir").to_string()
}

pub(crate) async fn form(app: &TestApp, path: &str, cookie: Option<&str>, pairs: &[(&str, &str)]) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
    let mut req = app.client.post(format!("{}{path}", root(app))).header("content-type", "application/x-www-form-urlencoded").body(body);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap()
}

pub(crate) async fn page(app: &TestApp, path: &str, cookie: &str) -> (u16, String) {
    let r = app.client.get(format!("{}{path}", root(app))).header("cookie", cookie).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Signs in and returns the session cookie (`name=value`).
pub(crate) async fn sign_in(app: &TestApp, path: &str, user: &str, password: &str) -> String {
    let r = form(app, path, None, &[("username", user), ("password", password)]).await;
    assert_eq!(r.status(), 303, "sign-in as {user}");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/;"), "{set}");
    set.split(';').next().unwrap().to_string()
}

pub(crate) fn csrf(html: &str) -> String {
    let start = html.find("name=\"csrf\" value=\"").expect("csrf field") + "name=\"csrf\" value=\"".len();
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

#[tokio::test]
async fn ehr_pages_sessions_search_paging_and_launch() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 25, 3).await.unwrap();
    let store = app.auth.store.as_ref();
    auth::registry::put_user(store, "doc", "Dr Doc", auth::model::UserRole::Clinician, "doc-pass", &format!("Practitioner/{}", synth::practitioner_id(0)))
        .await
        .unwrap();
    auth::registry::put_user(store, "pat", "Pat", auth::model::UserRole::Patient, "pat-pass", &format!("Patient/{}", synth::patient_id(3, 0))).await.unwrap();
    ehr::register_demo_app(&app.auth).await.unwrap();

    // No session: to the sign-in page. Wrong password: said plainly.
    let r = app.client.get(format!("{}/ehr/patients", root(&app))).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ehr/login");
    let r = form(&app, "/ehr/login", None, &[("username", "doc"), ("password", "nope")]).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("do not match"));
    // Patients use the portal, clinicians the EHR.
    let r = form(&app, "/ehr/login", None, &[("username", "pat"), ("password", "pat-pass")]).await;
    assert_eq!(r.status(), 401);
    let cookie = sign_in(&app, "/ehr/login", "doc", "doc-pass").await;

    // Paging: 25 patients, 20 per page.
    let (status, html) = page(&app, "/ehr/patients", &cookie).await;
    assert_eq!(status, 200);
    assert!(html.contains("25 patients, showing 1–20"), "{html}");
    assert_eq!(html.matches("href=\"/ehr/patients/kp-3-").count(), 20);
    assert!(html.contains("page=2") && !html.contains("rel=\"prev\""));
    let (_, html2) = page(&app, "/ehr/patients?page=2", &cookie).await;
    assert_eq!(html2.matches("href=\"/ehr/patients/kp-3-").count(), 5);
    assert!(html2.contains("rel=\"prev\"") && !html2.contains("rel=\"next\""));
    // Search by name, by birth date, by identifier.
    let target = app.app_state.store.read("Patient", &synth::patient_id(3, 7)).await.unwrap().unwrap();
    let v: Value = serde_json::from_str(&target.json).unwrap();
    let family = v["name"][0]["family"].as_str().unwrap();
    let birth = v["birthDate"].as_str().unwrap();
    let mrn = v["identifier"][0]["value"].as_str().unwrap();
    for q in [format!("name={family}"), format!("birthdate={birth}"), format!("identifier={mrn}")] {
        let (_, html) = page(&app, &format!("/ehr/patients?{q}"), &cookie).await;
        assert!(html.contains(&format!("href=\"/ehr/patients/{}\"", target.id)), "{q}");
    }
    let (status, html) = page(&app, "/ehr/patients?birthdate=yesterday", &cookie).await;
    assert_eq!(status, 200);
    assert!(html.contains("Birth dates are written YYYY-MM-DD"));

    // The chart, and a launch from it.
    let (status, chart) = page(&app, &format!("/ehr/patients/{}", target.id), &cookie).await;
    assert_eq!(status, 200);
    // Voice control: a button's accessible name starts with the words on it (WCAG 2.5.3).
    assert!(chart.contains("aria-label=\"In chart: open "), "{chart}");
    let (_, list) = page(&app, "/ehr/patients", &cookie).await;
    assert!(list.contains("id=\"result-count\" class=\"skip\" role=\"status\">25 patients found<"), "the search result count is announced");
    assert!(chart.contains(family) && chart.contains("Kindling demo app"));
    let token = csrf(&chart);
    let launch = [("patient", target.id.as_str()), ("encounter", ""), ("launch", "tab|kindling-demo")];
    let r = form(&app, "/ehr/launch", Some(&cookie), &launch).await;
    assert_eq!(r.status(), 403, "no CSRF token, no launch");
    let mut with_csrf = launch.to_vec();
    with_csrf.push(("csrf", &token));
    let r = form(&app, "/ehr/launch", Some(&cookie), &with_csrf).await;
    assert_eq!(r.status(), 303);
    let to = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(to.path(), "/demo-app/launch.html");
    let q: std::collections::HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(q["iss"], app.base);
    assert!(q["launch"].len() >= 43, "an opaque random handle");
    // Under a vendor profile with a server of its own, the launch is sent with that server's FHIR base.
    let mut epic = with_csrf.clone();
    epic.push(("profile", "epic"));
    let r = form(&app, "/ehr/launch", Some(&cookie), &epic).await;
    let to = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(q["iss"], format!("{}/epic/api/FHIR/R4", app.base.trim_end_matches("/fhir")));
    assert!(!q["launch"].contains(&target.id), "the handle carries no context");
    // Impossible faults are refused with a page, not a launch.
    let mut bad = with_csrf.clone();
    bad.push(("fhir_error_status", "500"));
    let r = form(&app, "/ehr/launch", Some(&cookie), &bad).await;
    assert_eq!(r.status(), 400);
    // Another patient's encounter cannot go into this launch.
    let other =
        fhir::query::parse("Encounter", &[("patient".into(), synth::patient_id(3, 1))], fhir::query::ParseOptions { lenient: false, base: None, now_ms: 0 })
            .unwrap();
    let keys = app.app_state.store.search(&other).await.unwrap();
    let foreign = app.app_state.store.fetch(&keys[..1]).await.unwrap().remove(0).id;
    let mut wrong = with_csrf.clone();
    wrong[1] = ("encounter", &foreign);
    assert_eq!(form(&app, "/ehr/launch", Some(&cookie), &wrong).await.status(), 400);
    // The same check as the launch API's (auth::launch::check_context), said for a clinician.
    wrong[1] = ("encounter", "no-such-encounter");
    let r = form(&app, "/ehr/launch", Some(&cookie), &wrong).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("That encounter is not this patient"));
    let mut nobody = with_csrf.clone();
    nobody[0] = ("patient", "no-such-patient");
    let r = form(&app, "/ehr/launch", Some(&cookie), &nobody).await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("No such patient"));

    // The launch is listed and inspectable; unknown launches are not.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, list) = page(&app, "/ehr/launches", &cookie).await;
    assert!(list.contains("kindling-demo") && list.contains(&target.id));
    let (status, _) = page(&app, "/ehr/launches/no-such-launch", &cookie).await;
    assert_eq!(status, 404);

    // A patient in the portal sees their own record and cannot use the clinicians' pages.
    let pat = sign_in(&app, "/portal/login", "pat", "pat-pass").await;
    let (status, portal) = page(&app, "/portal", &pat).await;
    assert_eq!(status, 200);
    assert!(portal.contains("Kindling demo app"));
    assert_eq!(page(&app, "/ehr/patients", &pat).await.0, 403);
    assert_eq!(page(&app, "/ehr/apps", &pat).await.0, 403);
    // A portal launch is always on the patient's own record, whatever the form says.
    let pat_csrf = csrf(&portal);
    let r = form(&app, "/ehr/launch", Some(&pat), &[("patient", &target.id), ("launch", "tab|kindling-demo"), ("csrf", &pat_csrf)]).await;
    assert_eq!(r.status(), 303);

    // Signing out ends the session.
    let r = form(&app, "/ehr/logout", Some(&cookie), &[("csrf", &token)]).await;
    assert_eq!(r.status(), 303);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let r = app.client.get(format!("{}/ehr/patients", root(&app))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 303, "the old cookie no longer works");
}

#[tokio::test]
async fn app_registration_pages() {
    let app = spawn_secured_app().await;
    let store = app.auth.store.as_ref();
    auth::registry::put_user(store, "doc", "Dr Doc", auth::model::UserRole::Clinician, "doc-pass", "Practitioner/x").await.unwrap();
    let cookie = sign_in(&app, "/ehr/login", "doc", "doc-pass").await;
    // Registering apps is for administrators.
    let (status, refused) = page(&app, "/ehr/apps/new", &cookie).await;
    assert_eq!(status, 403);
    assert!(refused.contains("This page is for administrators"), "{refused}");
    assert!(!refused.contains("href=\"/ehr/apps\""), "the nav offers no Apps link to a clinician");
    kindling::users::set_admin(&app.auth, "doc", true).await.unwrap();
    let (_, new_page) = page(&app, "/ehr/apps/new", &cookie).await;
    assert!(new_page.contains("href=\"/ehr/apps\"") && new_page.contains("href=\"/ehr/users\""), "and does to an administrator");
    let token = csrf(&new_page);
    // Invalid: an http redirect URI off localhost.
    let r = form(&app, "/ehr/apps", Some(&cookie), &[("csrf", &token), ("name", "Bad"), ("kind", "public"), ("redirect_uris", "http://evil.example/cb")]).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("redirect URI"));
    // A confidential app: the secret is shown once, stored hashed.
    let r = form(
        &app,
        "/ehr/apps",
        Some(&cookie),
        &[
            ("csrf", &token),
            ("name", "Chart Helper"),
            ("kind", "confidential-symmetric"),
            ("launch_url", "https://helper.example/launch"),
            ("redirect_uris", "https://helper.example/cb"),
            ("profile", "epic"),
        ],
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let html = r.text().await.unwrap();
    let id_start = html.find("id=\"client-id\">").unwrap() + "id=\"client-id\">".len();
    let client_id = html[id_start..id_start + html[id_start..].find('<').unwrap()].to_string();
    assert!(client_id.starts_with("chart-helper-"), "{client_id}");
    let s_start = html.find("id=\"client-secret\">").unwrap() + "id=\"client-secret\">".len();
    let secret = html[s_start..s_start + html[s_start..].find('<').unwrap()].to_string();
    let stored = auth::registry::get_client(store, &client_id).await.unwrap().unwrap();
    assert!(auth::crypto::verify_client_secret(&secret, stored.secret_hash.as_deref().unwrap()));
    assert_eq!(stored.profile, Some(auth::model::Profile::named("epic")));
    let (_, edit) = page(&app, &format!("/ehr/apps/{client_id}"), &cookie).await;
    assert!(!edit.contains(&secret), "the secret is never shown again");
    // Edit keeps the secret; disable removes the app from charts and from token requests.
    let r = form(
        &app,
        &format!("/ehr/apps/{client_id}"),
        Some(&cookie),
        &[("csrf", &token), ("name", "Chart Helper 2"), ("launch_url", "https://helper.example/launch"), ("redirect_uris", "https://helper.example/cb")],
    )
    .await;
    assert_eq!(r.status(), 303);
    let stored2 = auth::registry::get_client(store, &client_id).await.unwrap().unwrap();
    assert_eq!(stored2.name, "Chart Helper 2");
    assert_eq!(stored2.secret_hash, stored.secret_hash);
    let r = form(&app, &format!("/ehr/apps/{client_id}/status"), Some(&cookie), &[("csrf", &token), ("disabled", "1")]).await;
    assert_eq!(r.status(), 303);
    assert!(auth::registry::get_client(store, &client_id).await.unwrap().is_none(), "disabled apps are not found for flows");
    let (_, list) = page(&app, "/ehr/apps", &cookie).await;
    assert!(list.contains("Chart Helper 2") && list.contains("disabled"));
}

#[tokio::test]
async fn sign_in_and_consent_forms_from_another_site_are_refused() {
    let app = spawn_secured_app().await;
    auth::registry::put_user(app.auth.store.as_ref(), "doc", "Dr Doc", auth::model::UserRole::Clinician, "doc-pass", "Practitioner/x").await.unwrap();
    let ours = root(&app);
    let post = |path: &str, origin: &str, body: &'static str| {
        app.client.post(format!("{ours}{path}")).header("origin", origin).header("content-type", "application/x-www-form-urlencoded").body(body).send()
    };
    // Login CSRF: another site posting the EHR's or the authorisation server's sign-in form.
    let r = post("/ehr/login", "https://evil.example", "username=doc&password=doc-pass").await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none(), "no session for a cross-site sign-in");
    assert!(r.text().await.unwrap().contains("came from another site"));
    for path in ["/auth/login", "/auth/consent", "/auth/pick"] {
        let r = post(path, "https://evil.example", "request=x&username=doc&password=doc-pass").await.unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
    // The same form from the server's own pages works.
    let r = post("/ehr/login", &ours, "username=doc&password=doc-pass").await.unwrap();
    assert_eq!(r.status(), 303);
}

/// The Users page: administrators only; adding an account (checked as `kindling users` checks it), and
/// disabling, enabling, new passwords, rights and the administrator role, each CSRF-checked and audited.
#[tokio::test]
async fn administrators_manage_accounts_on_the_users_page() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 1, 13).await.unwrap();
    let store = app.auth.store.as_ref();
    let practitioner = format!("Practitioner/{}", synth::practitioner_id(2));
    auth::registry::put_user(store, "boss", "Dr Boss", auth::model::UserRole::Clinician, "boss-pass", &practitioner).await.unwrap();
    auth::registry::put_user(store, "doc", "Dr Doc", auth::model::UserRole::Clinician, "doc-pass", &practitioner).await.unwrap();
    kindling::users::set_admin(&app.auth, "boss", true).await.unwrap();
    let doc = sign_in(&app, "/ehr/login", "doc", "doc-pass").await;
    assert_eq!(page(&app, "/ehr/users", &doc).await.0, 403, "not for a clinician who is no administrator");
    let doc_csrf = csrf(&page(&app, "/ehr/patients", &doc).await.1);
    let r = form(&app, "/ehr/users/boss", Some(&doc), &[("csrf", &doc_csrf), ("action", "disable")]).await;
    assert_eq!(r.status(), 403, "nor its forms");
    let r = form(
        &app,
        "/ehr/users",
        Some(&doc),
        &[("csrf", &doc_csrf), ("username", "x1"), ("name", "X"), ("role", "clinician"), ("fhir_user", &practitioner), ("password", "long-enough-0")],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert!(!auth::registry::get_user(store, "boss").await.unwrap().unwrap().disabled && auth::registry::get_user(store, "x1").await.unwrap().is_none());
    // Nor for a patient in the portal.
    let patient = format!("Patient/{}", synth::patient_id(13, 0));
    auth::registry::put_user(store, "pat", "Pat", auth::model::UserRole::Patient, "pat-pass", &patient).await.unwrap();
    let pat = sign_in(&app, "/portal/login", "pat", "pat-pass").await;
    assert_eq!(page(&app, "/ehr/users", &pat).await.0, 403);

    let boss = sign_in(&app, "/ehr/login", "boss", "boss-pass").await;
    let (status, html) = page(&app, "/ehr/users", &boss).await;
    assert_eq!(status, 200);
    assert!(html.contains("<code>doc</code>") && html.contains("clinician, administrator"), "{html}");
    assert!(!html.contains("$argon2"), "no password hash on the page");
    let token = csrf(&html);
    // Without the page's CSRF token: refused.
    let r = form(&app, "/ehr/users", Some(&boss), &[("username", "x")]).await;
    assert_eq!(r.status(), 403);
    // A link to a record that does not exist, said in words; the form keeps what was typed.
    let add = |link: &'static str| {
        let token = token.clone();
        let boss = boss.clone();
        let app = &app;
        async move {
            form(
                app,
                "/ehr/users",
                Some(&boss),
                &[("csrf", &token), ("username", "nurse2"), ("name", "Nurse Two"), ("role", "clinician"), ("fhir_user", link), ("password", "long-enough-9")],
            )
            .await
        }
    };
    let r = add("Practitioner/nobody").await;
    assert_eq!(r.status(), 400);
    let html = r.text().await.unwrap();
    assert!(html.contains("There is no Practitioner/nobody in the record") && html.contains("value=\"nurse2\""), "{html}");
    assert!(!html.contains("long-enough-9"), "the password is never sent back");
    let link: &'static str = Box::leak(practitioner.clone().into_boxed_str());
    let r = add(link).await;
    assert_eq!(r.status(), 201);
    assert!(r.text().await.unwrap().contains("Added nurse2"));
    assert_eq!(add(link).await.status(), 400, "the same user name again");
    let nurse = sign_in(&app, "/ehr/login", "nurse2", "long-enough-9").await;
    assert_eq!(page(&app, "/ehr/patients", &nurse).await.0, 200);

    // Rights, a new password, the administrator role, disabling: each said on the page.
    let change = |user: &'static str, pairs: Vec<(&'static str, &'static str)>| {
        let mut all = vec![("csrf", token.clone())];
        all.extend(pairs.into_iter().map(|(k, v)| (k, v.to_string())));
        let boss = boss.clone();
        let app = &app;
        async move {
            let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
            form(app, &format!("/ehr/users/{user}"), Some(&boss), &pairs).await
        }
    };
    let r = form(&app, "/ehr/users/nurse2", Some(&boss), &[("action", "disable")]).await;
    assert_eq!(r.status(), 403, "a change without the page's CSRF token");
    let r = change("nurse2", vec![("action", "rights"), ("rights", "user/Patient.rs user/Nope.rs")]).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("&#39;Nope&#39; is no FHIR R4 resource type"), "refused in words");
    let r = change("nurse2", vec![("action", "rights"), ("rights", "user/Patient.rs")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(auth::registry::get_user(store, "nurse2").await.unwrap().unwrap().rights.as_deref(), Some("user/Patient.rs"));
    assert_eq!(change("nurse2", vec![("action", "password"), ("password", "short")]).await.status(), 400);
    assert_eq!(change("nurse2", vec![("action", "password"), ("password", "another-long-1")]).await.status(), 200);
    assert_eq!(change("boss", vec![("action", "disable")]).await.status(), 400, "not one's own account");
    assert_eq!(change("boss", vec![("action", "unadmin")]).await.status(), 400, "nor one's own role");
    assert_eq!(change("nurse2", vec![("action", "admin")]).await.status(), 200);
    assert!(auth::registry::get_user(store, "nurse2").await.unwrap().unwrap().admin);
    let r = change("nurse2", vec![("action", "disable")]).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Disabled nurse2"));
    assert_eq!(page(&app, "/ehr/patients", &nurse).await.0, 303, "the session ended");
    let r = form(&app, "/ehr/login", None, &[("username", "nurse2"), ("password", "another-long-1")]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(change("nurse2", vec![("action", "enable")]).await.status(), 200);
    assert_eq!(page(&app, "/ehr/patients", &nurse).await.0, 303, "the old session stays ended when the account is enabled again");
    let again = sign_in(&app, "/ehr/login", "nurse2", "another-long-1").await;
    // A new password signs every session out.
    assert_eq!(change("nurse2", vec![("action", "password"), ("password", "third-long-pw")]).await.status(), 200);
    assert_eq!(page(&app, "/ehr/patients", &again).await.0, 303);
    sign_in(&app, "/ehr/login", "nurse2", "third-long-pw").await;
    // Who did what is in the audit trail (written in the background: waited for).
    let filter = store::audit::AuditFilter { username: Some("nurse2".into()), limit: 100, ..Default::default() };
    let mut said = String::new();
    for _ in 0..50 {
        let events = store.audit_events(&filter).await.unwrap();
        said = events.iter().map(|(_, e)| format!("{} {}", e.action, e.detail.clone().unwrap_or_default())).collect::<Vec<_>>().join("\n");
        if said.contains("user-enabled") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for what in ["user-added", "user-rights", "user-password", "user-admin", "user-disabled", "user-enabled"] {
        assert!(said.lines().any(|l| l.starts_with(what) && l.contains("(by boss)")), "{what} by boss in:\n{said}");
    }
}
