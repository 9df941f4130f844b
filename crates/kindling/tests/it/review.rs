//! Found on a fresh-eyes review (session 20), tried as an attacker would. Each test failed before its fix.

use crate::ehr_pages::{csrf, form, page, sign_in};
use crate::smart_flows::{
    Auth, CONFIDENTIAL, Fixture, PUBLIC, browser_form, code, consent, exchange, fhir_get, fixture, login, patient_tokens, post_form, refresh, root,
};
use serde_json::{Value, json};

/// Tokens for `doc` through a standalone launch with `scope`, and the browser `doc` signed in with.
pub(crate) async fn doc_tokens(f: &Fixture, scope: &str) -> (Value, crate::Browser) {
    let app = &f.app;
    let a = Auth::new(app, PUBLIC, scope);
    let page = login(app, &a.browser, a.start(app).await, "doc", "doc-pass").await;
    let r = if page.status() == 303 { page } else { consent(app, &a.browser, page, true, &[], &[]).await };
    let c = code(app, &a, &r);
    let r = exchange(app, PUBLIC, &c, &a.verifier).await;
    assert_eq!(r.status(), 200);
    (r.json().await.unwrap(), a.browser)
}

async fn doc_token(f: &Fixture, scope: &str) -> String {
    doc_tokens(f, scope).await.0["access_token"].as_str().unwrap().to_string()
}

async fn send(f: &Fixture, method: reqwest::Method, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let app = &f.app;
    let mut req = app.client.request(method, app.url(path)).bearer_auth(token).header("content-type", "application/fhir+json");
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn entry_status(bundle: &Value, i: usize) -> String {
    bundle["entry"][i]["response"]["status"].as_str().unwrap_or_default().to_string()
}

/// `_include:iterate` follows only what the token may read: a patient token learns nothing of another
/// patient's prescriptions through a practitioner they share.
#[tokio::test]
async fn an_iterated_include_does_not_walk_through_unreadable_resources() {
    let f = fixture().await;
    let app = &f.app;
    let doc = doc_token(&f, "openid fhirUser user/*.cruds").await;
    let put = |path: &'static str, body: Value| send(&f, reqwest::Method::PUT, path, &doc, Some(body));
    assert_eq!(put("Practitioner/rx-doc", json!({"resourceType": "Practitioner", "id": "rx-doc", "name": [{"family": "Rx"}]})).await.0, 201);
    assert_eq!(put("Medication/rx-med", json!({"resourceType": "Medication", "id": "rx-med", "code": {"text": "secret-med"}})).await.0, 201);
    let prescription = json!({"resourceType": "MedicationRequest", "id": "rx-b", "status": "active", "intent": "order",
        "subject": {"reference": format!("Patient/{}", f.p2)}, "requester": {"reference": "Practitioner/rx-doc"}, "medicationReference": {"reference": "Medication/rx-med"}});
    assert_eq!(put("MedicationRequest/rx-b", prescription).await.0, 201);
    let search = "Practitioner?_id=rx-doc&_revinclude=MedicationRequest:requester&_include:iterate=MedicationRequest:medication";
    let (_, b) = fhir_get(app, search, Some(&doc)).await;
    assert_eq!(b["entry"].as_array().unwrap().len(), 3, "the clinician sees all three: {b}");
    let t = patient_tokens(&f, "launch/patient patient/*.rs").await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(fhir_get(app, "Medication/rx-med", Some(token)).await.0, 200, "the medication itself is readable");
    let (status, b) = fhir_get(app, search, Some(token)).await;
    assert_eq!(status, 200);
    assert_eq!(b["entry"].as_array().unwrap().len(), 1, "only the practitioner: {b}");
    assert!(!b.to_string().contains("secret-med"));
}

/// `$everything` counts only what the token may see: a token that reads Patient records only learns
/// nothing of how many Conditions a patient has.
#[tokio::test]
async fn everything_counts_only_what_the_token_may_read() {
    let f = fixture().await;
    let app = &f.app;
    let doc = doc_token(&f, "openid fhirUser user/*.cruds").await;
    let path = format!("Patient/{}/$everything?_type=Condition&_count=1", f.p2);
    let (_, all) = fhir_get(app, &path, Some(&doc)).await;
    assert!(all["total"].as_u64().unwrap() > 1, "{all}");
    let patients_only = doc_token(&f, "openid fhirUser user/Patient.rs").await;
    let (status, b) = fhir_get(app, &path, Some(&patients_only)).await;
    assert_eq!(status, 200);
    assert_eq!(b["total"].as_u64().unwrap_or(0), 0, "{b}");
    assert!(b["entry"].as_array().is_none_or(Vec::is_empty), "{b}");
    assert!(!b.to_string().contains("_getpages"), "no pages of what it cannot see: {b}");
}

/// A batch's conditional create that matches shows the match only to a token that may read it (as the
/// REST conditional create does).
#[tokio::test]
async fn a_batch_conditional_create_shows_no_match_the_token_cannot_read() {
    let f = fixture().await;
    let doc = doc_token(&f, "openid fhirUser user/*.cruds").await;
    let hidden = json!({"resourceType": "Observation", "id": "hidden", "status": "final", "code": {"text": "x"},
        "subject": {"reference": format!("Patient/{}", f.p2)}, "valueString": "hidden-value"});
    assert_eq!(send(&f, reqwest::Method::PUT, "Observation/hidden", &doc, Some(hidden)).await.0, 201);
    let writer = doc_token(&f, "openid fhirUser user/Observation.cs").await;
    let mine = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p1)}});
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": mine, "request": {"method": "POST", "url": "Observation", "ifNoneExist": "_id=hidden"}}]});
    let (status, r) = send(&f, reqwest::Method::POST, "", &writer, Some(batch)).await;
    assert_eq!(status, 200);
    assert!(!r.to_string().contains("hidden-value"), "{r}");
    assert!(entry_status(&r, 0).starts_with("403"), "{r}");
}

/// A patient token learns from no Bundle GET and no DELETE whether another patient exists: the answer is
/// the same 403 for a patient who exists and one who does not.
#[tokio::test]
async fn bundle_reads_and_deletes_do_not_reveal_whether_another_patient_exists() {
    let f = fixture().await;
    let t = patient_tokens(&f, "launch/patient patient/*.cruds").await;
    let token = t["access_token"].as_str().unwrap();
    for (them, nobody) in
        [(format!("Patient/{}", f.p2), "Patient/nobody".to_string()), (format!("Patient/{}/_history/1", f.p2), "Patient/nobody/_history/1".into())]
    {
        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": them}}, {"request": {"method": "GET", "url": nobody}}]});
        let (_, r) = send(&f, reqwest::Method::POST, "", token, Some(batch)).await;
        assert_eq!((entry_status(&r, 0).get(..3), entry_status(&r, 1).get(..3)), (Some("403"), Some("403")), "{them}: {r}");
    }
    let them = format!("Patient/{}", f.p2);
    assert_eq!(send(&f, reqwest::Method::DELETE, &them, token, None).await.0, 403);
    assert_eq!(send(&f, reqwest::Method::DELETE, "Patient/nobody", token, None).await.0, 403);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "DELETE", "url": them}}, {"request": {"method": "DELETE", "url": "Patient/nobody"}}]});
    let (_, r) = send(&f, reqwest::Method::POST, "", token, Some(batch)).await;
    assert_eq!((entry_status(&r, 0).get(..3), entry_status(&r, 1).get(..3)), (Some("403"), Some("403")), "{r}");
    let doc = doc_token(&f, "openid fhirUser user/*.cruds").await;
    assert_eq!(fhir_get(&f.app, &them, Some(&doc)).await.0, 200, "still there");
}

/// An app an administrator disables (or removes) loses its tokens at once: the access tokens stop
/// working and the refresh tokens stay dead when it is enabled again.
#[tokio::test]
async fn a_disabled_app_loses_its_tokens_at_once() {
    let f = fixture().await;
    let app = &f.app;
    let (t, _) = doc_tokens(&f, "openid fhirUser offline_access user/*.rs").await;
    let token = t["access_token"].as_str().unwrap();
    let read = format!("Patient/{}", f.p1);
    assert_eq!(fhir_get(app, &read, Some(token)).await.0, 200);
    kindling::users::set_admin(&app.auth, "doc", true).await.unwrap();
    let cookie = sign_in(app, "/ehr/login", "doc", "doc-pass").await;
    let (_, edit) = page(app, &format!("/ehr/apps/{PUBLIC}"), &cookie).await;
    let status = format!("/ehr/apps/{PUBLIC}/status");
    assert_eq!(form(app, &status, Some(&cookie), &[("csrf", &csrf(&edit)), ("disabled", "1")]).await.status(), 303);
    assert_eq!(fhir_get(app, &read, Some(token)).await.0, 401, "the access token stopped working");
    assert_eq!(form(app, &status, Some(&cookie), &[("csrf", &csrf(&edit)), ("disabled", "0")]).await.status(), 303);
    assert_eq!(fhir_get(app, &read, Some(token)).await.0, 401, "and stays revoked when the app is enabled again");
    assert_eq!(refresh(app, t["refresh_token"].as_str().unwrap()).await.status(), 400);
    // Removed, then registered again under the same id: the old grants stay dead.
    let (t, _) = doc_tokens(&f, "openid fhirUser offline_access user/*.rs").await;
    let client = auth::registry::stored_client(app.auth.store.as_ref(), PUBLIC).await.unwrap().unwrap();
    auth::apps::remove(&app.auth, PUBLIC, Some("doc")).await.unwrap();
    auth::registry::put_client_as_is(app.auth.store.as_ref(), &client).await.unwrap();
    assert_eq!(fhir_get(app, &read, Some(t["access_token"].as_str().unwrap())).await.0, 401);
    assert_eq!(refresh(app, t["refresh_token"].as_str().unwrap()).await.status(), 400);
}

/// `online_access` lasts while the user is signed in (SMART App Launch): the refresh token stops working
/// when they sign out; `offline_access` does not.
#[tokio::test]
async fn online_access_ends_when_the_user_signs_out() {
    let f = fixture().await;
    let app = &f.app;
    let (online, browser) = doc_tokens(&f, "openid fhirUser online_access user/*.rs").await;
    let r = refresh(app, online["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status(), 200, "refreshes while signed in");
    let online: Value = r.json().await.unwrap();
    let (offline, _) = doc_tokens(&f, "openid fhirUser offline_access user/*.rs").await;
    let html = browser.get(format!("{}/ehr/patients", root(app))).await.text().await.unwrap();
    assert_eq!(browser_form(app, &browser, "/ehr/logout", &[("csrf", &csrf(&html))]).await.status(), 303);
    let r = refresh(app, online["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"], "invalid_grant");
    assert!(e["error_description"].as_str().unwrap().contains("signed out"), "{e}");
    assert_eq!(refresh(app, offline["refresh_token"].as_str().unwrap()).await.status(), 200, "offline access outlives the sign-in");
}

/// Introspection tells a caller only about its own tokens: a public client id (anyone may send one) or
/// another app's bearer token does not unlock what other apps hold.
#[tokio::test]
async fn introspection_answers_only_about_the_callers_own_tokens() {
    let f = fixture().await;
    let app = &f.app;
    let (t, _) = doc_tokens(&f, "openid fhirUser offline_access user/*.rs").await;
    let (refresh_token, access) = (t["refresh_token"].as_str().unwrap(), t["access_token"].as_str().unwrap());
    let active = async |form: &[(&str, &str)], bearer: Option<&str>| {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let mut req = app.client.post(format!("{}/auth/introspect", root(app))).header("content-type", "application/x-www-form-urlencoded").body(body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["active"].clone()
    };
    assert_eq!(active(&[("token", refresh_token), ("client_id", PUBLIC)], None).await, true, "its own app may");
    // The patient's app (another client) holds a live token; with it, or with the public id of another
    // registered app, the clinician's tokens are not described.
    auth::registry::put_client(
        app.auth.store.as_ref(),
        auth::model::Client { client_id: "other-public".into(), ..auth::registry::stored_client(app.auth.store.as_ref(), PUBLIC).await.unwrap().unwrap() },
    )
    .await
    .unwrap();
    assert_eq!(active(&[("token", refresh_token), ("client_id", "other-public")], None).await, false);
    let a = Auth::new(app, "other-public", "launch/patient patient/*.rs");
    let r = login(app, &a.browser, a.start(app).await, "pat", "pat-pass").await;
    let r = crate::smart_flows::consent_if_asked(app, &a.browser, r).await;
    let c = code(app, &a, &r);
    let other: Value = exchange(app, "other-public", &c, &a.verifier).await.json().await.unwrap();
    let other = other["access_token"].as_str().unwrap();
    assert_eq!(active(&[("token", access)], Some(other)).await, false);
    assert_eq!(active(&[("token", other)], Some(other)).await, true, "its own token");
    // An administrator-registered confidential client (a resource server) may introspect any token.
    assert_eq!(active(&[("token", access), ("client_id", CONFIDENTIAL), ("client_secret", &f.secret)], None).await, true);
}

/// A code sent by another client is refused without spending it: the app it was issued to still
/// exchanges it (nothing is revoked, nothing blamed on that app).
#[tokio::test]
async fn another_clients_exchange_does_not_spend_a_code() {
    let f = fixture().await;
    let app = &f.app;
    let a = Auth::new(app, PUBLIC, "openid fhirUser user/*.rs");
    let r = login(app, &a.browser, a.start(app).await, "doc", "doc-pass").await;
    let r = crate::smart_flows::consent_if_asked(app, &a.browser, r).await;
    let c = code(app, &a, &r);
    let r = post_form(
        app,
        "/auth/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", &c),
            ("redirect_uri", crate::smart_flows::REDIRECT),
            ("code_verifier", &a.verifier),
            ("client_id", CONFIDENTIAL),
            ("client_secret", &f.secret),
        ],
    )
    .await;
    assert_eq!(r.status(), 400);
    let r = exchange(app, PUBLIC, &c, &a.verifier).await;
    assert_eq!(r.status(), 200, "the rightful app still gets its tokens");
}

/// The audit trail a patient-level token reads is that of its patient, and tells who did what and when,
/// not the requests' paths: a clinician in this patient's chart may have read another patient's record
/// with the token of that launch (filed under this patient), and that patient's id is not theirs to see.
#[tokio::test]
async fn a_patients_audit_trail_names_no_other_patient() {
    let f = fixture().await;
    let app = &f.app;
    let t = crate::smart_flows::ehr_tokens(&f, json!({"patient": f.p1}), "launch openid fhirUser user/*.rs").await;
    let in_chart = t["access_token"].as_str().unwrap();
    assert_eq!(fhir_get(app, &format!("Patient/{}", f.p2), Some(in_chart)).await.0, 200);
    let doc = doc_token(&f, "openid fhirUser user/*.rs").await;
    let trail = format!("AuditEvent?patient={}&_count=200", f.p1);
    let mut recorded = false;
    for _ in 0..60 {
        recorded = fhir_get(app, &trail, Some(&doc)).await.1.to_string().contains(&format!("/fhir/Patient/{}", f.p2));
        if recorded {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(recorded, "the read is on the trail, filed under the chart's patient");
    let p = patient_tokens(&f, "launch/patient patient/*.rs").await;
    let (status, own) = fhir_get(app, "AuditEvent?_count=200", Some(p["access_token"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    let entries = own["entry"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["resource"]["subtype"][0]["code"] == "read"), "the patient sees that their record was read: {own}");
    assert!(!own.to_string().contains(&f.p2), "{own}");
    let id = entries[0]["resource"]["id"].as_str().unwrap();
    let (status, one) = fhir_get(app, &format!("AuditEvent/{id}"), Some(p["access_token"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert!(one.get("outcomeDesc").is_none() && !one.to_string().contains("/fhir/"), "{one}");
}

/// Anyone may register an app (RFC 7591) under any name: its consent page says that nobody checked the
/// name, and names the site the answer goes to. An administrator's app shows no such warning.
#[tokio::test]
async fn a_self_registered_apps_consent_page_names_where_the_answer_goes() {
    let f = fixture().await;
    let app = &f.app;
    let r = app
        .client
        .post(format!("{}/auth/register", crate::smart_flows::root(app)))
        .json(&json!({"client_name": "Kindling demo app", "redirect_uris": ["https://evil.example/cb"], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let client_id = r.json::<Value>().await.unwrap()["client_id"].as_str().unwrap().to_string();
    let (_, challenge) = crate::smart_flows::pkce();
    let mut url = url::Url::parse(&format!("{}/auth/authorize", crate::smart_flows::root(app))).unwrap();
    url.query_pairs_mut().extend_pairs([
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", "https://evil.example/cb"),
        ("scope", "launch/patient patient/*.rs"),
        ("state", "s"),
        ("aud", app.base.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ]);
    let browser = crate::Browser::new();
    let page = login(app, &browser, browser.get(url).await, "pat", "pat-pass").await;
    let html = page.text().await.unwrap();
    assert!(html.contains("would like to") && html.contains("id=\"self-registered\""), "{html}");
    assert!(html.contains("nobody has checked") && html.contains("<strong>evil.example</strong>"), "{html}");
    // The fixture's apps were registered by an administrator.
    let a = Auth::new(app, PUBLIC, "launch/patient patient/*.rs");
    let html = login(app, &a.browser, a.start(app).await, "pat", "pat-pass").await.text().await.unwrap();
    assert!(html.contains("would like to") && !html.contains("self-registered"), "{html}");
}

/// A password cannot be guessed faster than ten tries per account in fifteen minutes, on any sign-in
/// page: after ten failures even the right password is refused (saying why) until the window ends, and an
/// administrator's new password lifts it at once.
#[tokio::test]
async fn failed_sign_ins_are_throttled_per_account() {
    let f = fixture().await;
    let app = &f.app;
    let attempt = async |password: &str| {
        let r = crate::smart_flows::post_form(app, "/ehr/login", &[("username", "doc"), ("password", password)]).await;
        (r.status().as_u16(), r.text().await.unwrap())
    };
    // Guesses sent at once each count.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..auth::accounts::MAX_FAILURES {
        let (http, url) = (app.client.clone(), format!("{}/ehr/login", root(app)));
        burst.spawn(async move {
            let r = http.post(url).header("content-type", "application/x-www-form-urlencoded").body("username=doc&password=wrong-guess").send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
    }
    for (status, page) in burst.join_all().await {
        assert_eq!(status, 401);
        assert!(page.contains("do not match"), "{page}");
    }
    let (status, page) = attempt("doc-pass").await;
    assert_eq!(status, 401, "the right password, throttled");
    assert!(page.contains("Too many failed sign-ins for this account. Try again in 15 minutes"), "{page}");
    // The authorisation server's sign-in page and the launch API share the count.
    let a = Auth::new(app, PUBLIC, "openid fhirUser user/*.rs");
    let r = login(app, &a.browser, a.start(app).await, "doc", "doc-pass").await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("Too many failed sign-ins"));
    let r = app.client.post(format!("{}/auth/launch", root(app))).basic_auth("doc", Some("doc-pass")).json(&json!({"patient": f.p1})).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let r = crate::smart_flows::post_form(app, "/portal/login", &[("username", "pat"), ("password", "pat-pass")]).await;
    assert_eq!(r.status(), 303, "another account is not affected");
    // The window passes.
    app.clock.advance(time::Duration::minutes(16));
    assert_eq!(attempt("doc-pass").await.0, 303);
    // Throttled again, then a new password set by an administrator lifts it.
    for _ in 0..auth::accounts::MAX_FAILURES {
        attempt("wrong-guess").await;
    }
    assert_eq!(attempt("doc-pass").await.0, 401);
    auth::accounts::passwd(&app.auth, Some("admin"), "doc", "a-new-pass-1").await.unwrap();
    assert_eq!(attempt("a-new-pass-1").await.0, 303);
}

/// A conditional update or delete answers what its criteria match (none, one, or a 412 saying how many):
/// by REST as in a Bundle, it takes the right to search the type.
#[tokio::test]
async fn conditional_writes_need_the_right_to_search() {
    let f = fixture().await;
    let writer = doc_token(&f, "openid fhirUser user/Observation.cud").await;
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p1)}});
    let (status, body) = send(&f, reqwest::Method::PUT, "Observation?status=final", &writer, Some(obs)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("search"), "{body}");
    assert_eq!(send(&f, reqwest::Method::DELETE, "Observation?status=final", &writer, None).await.0, 403);
    let searcher = doc_token(&f, "openid fhirUser user/Observation.cruds").await;
    assert_eq!(send(&f, reqwest::Method::DELETE, "Observation?code:text=no-such-thing", &searcher, None).await.0 / 100, 2);
}

/// A type's history lists the deletion of a resource only to a token that could read what was deleted (a
/// token may search a type but read only some of its resources).
#[tokio::test]
async fn history_lists_no_deletion_of_what_the_token_could_not_read() {
    let f = fixture().await;
    let app = &f.app;
    let doc = doc_token(&f, "openid fhirUser user/*.cruds").await;
    let lab = |id: &str, category: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p1)},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}]})
    };
    assert_eq!(send(&f, reqwest::Method::PUT, "Observation/gone-lab", &doc, Some(lab("gone-lab", "laboratory"))).await.0, 201);
    assert_eq!(send(&f, reqwest::Method::PUT, "Observation/gone-vital", &doc, Some(lab("gone-vital", "vital-signs"))).await.0, 201);
    for id in ["gone-lab", "gone-vital"] {
        assert_eq!(send(&f, reqwest::Method::DELETE, &format!("Observation/{id}"), &doc, None).await.0 / 100, 2);
    }
    // History across resources needs an unconstrained search; what it shows, the read scope decides.
    let vitals =
        doc_token(&f, "openid fhirUser user/Observation.s user/Observation.r?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs")
            .await;
    let (status, b) = fhir_get(app, "Observation/_history?_count=1000", Some(&vitals)).await;
    assert_eq!(status, 200, "{b}");
    let text = b.to_string();
    assert!(text.contains("Observation/gone-vital"), "the deleted vital sign is listed");
    assert!(!text.contains("gone-lab"), "the deleted lab result is not: {text}");
}
