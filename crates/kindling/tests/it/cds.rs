//! CDS Hooks in the EHR: a chart asks the registered decision-support services for `patient-view` cards
//! (prefetched under the user's rights, each call signed with an RS384 JWT and bounded in time), shows
//! them, and a card's SMART link opens the app with the card's `appContext`.

use crate::ehr_pages::{form, page, sign_in};
use crate::reference_app::summary_after_launch;
use crate::{TestApp, spawn_with_reference_app};
use auth::model::UserRole;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

pub(crate) fn root(app: &TestApp) -> String {
    app.base.trim_end_matches("/fhir").to_string()
}

/// Today's date on the server's clock, and an instant of it.
pub(crate) fn today(app: &TestApp) -> (String, String) {
    let now = fhir::time::Clock::now(&*app.clock);
    (now.date().to_string(), fhir::time::format_instant(now))
}

/// Records a blood pressure panel (components in the order diastolic, systolic: they are found by code).
pub(crate) async fn record_blood_pressure(app: &TestApp, patient: &str, systolic: f64, diastolic: f64, when: &str) {
    let comp = |code: &str, display: &str, v: f64| json!({"code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]}, "valueQuantity": {"value": v, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}});
    let obs = json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}], "text": "Blood pressure"},
        "subject": {"reference": format!("Patient/{patient}")}, "effectiveDateTime": when,
        "component": [comp("8462-4", "Diastolic blood pressure", diastolic), comp("8480-6", "Systolic blood pressure", systolic)]});
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": obs, "request": {"method": "POST", "url": "Observation"}}]});
    api::bundle::process(&app.app_state, bundle).await.unwrap();
}

/// The value of the hidden field `name` in the first form of `html` that has one.
pub(crate) fn field(html: &str, name: &str) -> String {
    let key = format!("name=\"{name}\" value=\"");
    let start = html.find(&key).unwrap_or_else(|| panic!("no {name} in {html}")) + key.len();
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

#[tokio::test]
async fn a_card_in_the_chart_opens_the_reference_app_on_its_topic() {
    let app = spawn_with_reference_app().await;
    kindling::seed(&app.app_state, 1, 21).await.unwrap();
    let store = app.auth.store.as_ref();
    auth::registry::put_user(store, "doc", "Dr Doc", UserRole::Clinician, "doc-pass", &format!("Practitioner/{}", synth::practitioner_id(0))).await.unwrap();
    let patient = synth::patient_id(21, 0);
    let (date, now) = today(&app);
    record_blood_pressure(&app, &patient, 162.0, 98.0, &now).await;
    let cookie = sign_in(&app, "/ehr/login", "doc", "doc-pass").await;
    // The chart loads its cards on its own, without waiting for them.
    let (status, chart) = page(&app, &format!("/ehr/patients/{patient}"), &cookie).await;
    assert_eq!(status, 200);
    assert!(chart.contains(&format!("hx-get=\"/ehr/patients/{patient}/cds\"")), "{chart}");
    let (status, cards) = page(&app, &format!("/ehr/patients/{patient}/cds"), &cookie).await;
    assert_eq!(status, 200);
    assert!(cards.contains(&format!("Raised blood pressure: 162/98 mmHg on {date}")), "{cards}");
    assert!(cards.contains("cds-warning") && cards.contains(">Warning:</span> Raised blood pressure"), "{cards}");
    assert!(cards.contains("<strong>162/98 mmHg</strong>"), "the detail's Markdown, rendered: {cards}");
    assert!(cards.contains("Source: Kindling reference app: blood pressure check"), "{cards}");
    assert!(cards.contains("Opens Patient summary (reference app)"), "the button names the app it opens: {cards}");
    // The card's SMART link: the reference app, launched on this patient with the card's appContext.
    let launch = [("csrf", field(&cards, "csrf")), ("ref", field(&cards, "ref")), ("card", field(&cards, "card")), ("link", field(&cards, "link"))];
    let pairs: Vec<(&str, &str)> = launch.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = form(&app, "/ehr/cds/launch", Some(&cookie), &pairs).await;
    assert_eq!(r.status(), 303);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    assert!(to.starts_with(&format!("{}/app/launch?iss=", root(&app))), "{to}");
    let summary = summary_after_launch(&app, &to, "card").await;
    assert!(summary.contains("Opened from a decision-support card about blood pressure"), "{summary}");
    assert!(summary.contains("id=\"patient-name\""), "{summary}");
    // The launch inspector tells it as one story: the hook call and its card, the launch, the app's steps.
    let filter = store::audit::AuditFilter { username: Some("doc".into()), limit: 200, ..Default::default() };
    let events = app.app_state.store.audit_events(&filter).await.unwrap();
    let launch_id = events.iter().find(|(_, r)| r.action == "cds-launch").and_then(|(_, r)| r.launch.clone()).expect("the launch from the card is recorded");
    let (status, inspector) = page(&app, &format!("/ehr/launches/{launch_id}"), &cookie).await;
    assert_eq!(status, 200);
    let hook = inspector.find("Decision-support service called").expect("the hook call is a step");
    let card_link =
        inspector.find("opened the card&#39;s app link").or_else(|| inspector.find("opened the card's app link")).expect("the card's link is a step");
    let context = inspector.find("Launch context created").unwrap();
    let token = inspector.find("Token exchange").expect("the app's token exchange");
    assert!(hook < context && context < card_link && card_link < token || hook < card_link && card_link < token, "in order: {inspector}");
    assert!(inspector.contains("/app/cds-services/kindling-blood-pressure") && inspector.contains("Raised blood pressure: 162/98 mmHg"), "{inspector}");
    assert!(inspector.contains("topic"), "the appContext handed over: {inspector}");
    // The cards are the user's who saw them, and the form needs its token.
    let no_csrf: Vec<(&str, &str)> = pairs.iter().filter(|(k, _)| *k != "csrf").copied().collect();
    assert_eq!(form(&app, "/ehr/cds/launch", Some(&cookie), &no_csrf).await.status(), 403);
    auth::registry::put_user(store, "other", "Dr Other", UserRole::Clinician, "other-pass", &format!("Practitioner/{}", synth::practitioner_id(1)))
        .await
        .unwrap();
    let other = sign_in(&app, "/ehr/login", "other", "other-pass").await;
    let (_, other_chart) = page(&app, &format!("/ehr/patients/{patient}"), &other).await;
    let mut theirs: Vec<(&str, String)> = launch.iter().map(|(k, v)| (*k, v.clone())).collect();
    theirs[0].1 = crate::ehr_pages::csrf(&other_chart);
    let theirs: Vec<(&str, &str)> = theirs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(form(&app, "/ehr/cds/launch", Some(&other), &theirs).await.status(), 404, "another user's cards");
    // A controlled reading: no card.
    record_blood_pressure(&app, &patient, 124.0, 78.0, &fhir::time::format_instant(fhir::time::Clock::now(&*app.clock) + time::Duration::minutes(5))).await;
    let (_, cards) = page(&app, &format!("/ehr/patients/{patient}/cds"), &cookie).await;
    assert!(cards.contains("No cards for this patient."), "{cards}");
}

/// What a test service received: the Authorization header and the body.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// The well-behaved service: records the call and answers with a card that counts the prefetched conditions.
async fn echo(
    axum::extract::State(seen): axum::extract::State<Seen>,
    headers: axum::http::HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> axum::Json<Value> {
    let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let n = body["prefetch"]["conditions"]["entry"].as_array().map_or(0, Vec::len);
    seen.lock().unwrap().push((auth, body));
    axum::Json(
        json!({"cards": [{"summary": format!("{n} conditions prefetched"), "indicator": "info", "source": {"label": "Echo", "url": "https://echo.example/about"},
        "detail": "Plain <b>text</b> only", "links": [{"label": "About echo", "url": "https://echo.example/", "type": "absolute"}, {"label": "Bad", "url": "javascript:alert(1)", "type": "absolute"},
            {"label": "Open Unknown", "url": "https://unknown.example/launch", "type": "smart"}]}]}),
    )
}

/// A CDS service written against the spec, with a well-behaved service and three faulty ones.
async fn test_service(other_patient: &str) -> (String, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let other = format!("Patient/{other_patient}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/cds-services", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route(
            "/cds-services",
            get(move || async move {
                axum::Json(json!({"services": [
                    {"hook": "patient-view", "id": "echo", "description": "echo", "prefetch": {
                        "patient": "Patient/{{context.patientId}}", "conditions": "Condition?patient={{context.patientId}}", "encounter": "Encounter/{{context.encounterId}}",
                        // What no chart's prefetch may give: another patient, everyone's observations, a diagnosis told through _has.
                        "other": other, "nobody": "Patient/no-such-patient", "everyone": "Observation?_count=5",
                        "diabetes": "Patient?_id={{context.patientId}}&_has:Condition:patient:code=http://snomed.info/sct|44054006"}},
                    {"hook": "patient-view", "id": "slow", "description": "slow"},
                    {"hook": "patient-view", "id": "broken", "description": "broken"},
                    {"hook": "patient-view", "id": "garbled", "description": "garbled"},
                    {"hook": "order-sign", "id": "orders", "description": "not called on patient-view"}
                ]}))
            }),
        )
        .route("/cds-services/echo", post(echo))
        .route(
            "/cds-services/slow",
            post(|| async {
                tokio::time::sleep(std::time::Duration::from_secs(4)).await;
                axum::Json(json!({"cards": []}))
            }),
        )
        .route("/cds-services/broken", post(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }))
        .route(
            "/cds-services/garbled",
            post(|| async { axum::Json(json!({"cards": [{"summary": "fine", "indicator": "info", "source": {"label": "G"}}, {"summary": 3}, {"indicator": "hard-stop"}]})) }),
        );
    let router = router.with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (base, seen)
}

#[tokio::test]
async fn hook_calls_are_signed_prefetched_under_the_users_rights_and_bounded_in_time() {
    let app = spawn_with_reference_app().await;
    kindling::seed(&app.app_state, 2, 22).await.unwrap();
    let store = app.auth.store.as_ref();
    let practitioner = format!("Practitioner/{}", synth::practitioner_id(0));
    auth::registry::put_user(store, "doc", "Dr Doc", UserRole::Clinician, "doc-pass", &practitioner).await.unwrap();
    let patient = synth::patient_id(22, 0);
    let (base, seen) = test_service(&synth::patient_id(22, 1)).await;
    // The service is a registered client of its own: its calls carry fhirAuthorization.
    let mut spec_client = auth::registry::get_client(store, "kindling-summary").await.unwrap().unwrap();
    spec_client.client_id = "spec-cds".into();
    spec_client.name = "Spec CDS service".into();
    spec_client.allowed_scope = "patient/*.rs".into();
    auth::registry::put_client_as_is(store, &spec_client).await.unwrap();
    let endpoint = ehr::cds::CdsEndpoint {
        id: "spec-service".into(),
        name: "Spec service".into(),
        url: base.clone(),
        disabled: false,
        apps: Vec::new(),
        client_id: Some("spec-cds".into()),
        fault: Default::default(),
    };
    ehr::cds::register(&app.auth, &endpoint).await.unwrap();
    let cookie = sign_in(&app, "/ehr/login", "doc", "doc-pass").await;
    let (status, cards) = page(&app, &format!("/ehr/patients/{patient}/cds"), &cookie).await;
    assert_eq!(status, 200);
    // The well-behaved service's card, its detail escaped, its unsafe link left out.
    assert!(cards.contains("conditions prefetched"), "{cards}");
    assert!(cards.contains("Plain &lt;b&gt;text&lt;/b&gt; only"), "{cards}");
    assert!(cards.contains("href=\"https://echo.example/\"") && !cards.contains("javascript:"), "{cards}");
    // A SMART link no registered app answers: the button says so and cannot be pressed.
    assert!(
        cards
            .contains("type=\"submit\" disabled>Open Unknown</button> <span class=\"muted\">No registered app opens at https://unknown.example/launch.</span>"),
        "{cards}"
    );
    // Each faulty one is named in plain words; the chart goes on.
    assert!(cards.contains("slow did not answer within 2.5 seconds"), "{cards}");
    assert!(cards.contains("broken failed (HTTP 500)"), "{cards}");
    assert!(cards.contains("garbled sent 2 card(s) Kindling cannot read") && cards.contains("</span> fine</h3>"), "{cards}");
    // The call: signed by Kindling (RS384, aud = the service's URL), with the context and the prefetch.
    let (authorization, body) = seen.lock().unwrap().first().cloned().expect("the echo service was called");
    let jwt = authorization.strip_prefix("Bearer ").expect("a Bearer JWT");
    let jwks: Value = app.client.get(format!("{}/auth/jwks", root(&app))).send().await.unwrap().json().await.unwrap();
    let now = fhir::time::unix_ms(fhir::time::Clock::now(&*app.clock)) / 1000;
    let claims = client::cds::verify_request_jwt(jwt, &jwks, &app.base, &format!("{base}/echo"), now).unwrap();
    assert!(claims["exp"].as_i64().unwrap() <= now + 300);
    assert!(client::cds::verify_request_jwt(jwt, &jwks, &app.base, &format!("{base}/slow"), now).is_err(), "a token for one service is not another's");
    assert_eq!(body["hook"], "patient-view");
    assert!(uuid::Uuid::parse_str(body["hookInstance"].as_str().unwrap()).is_ok());
    assert_eq!(body["fhirServer"], app.base);
    assert_eq!(body["context"], json!({"patientId": patient, "userId": practitioner}));
    assert_eq!(body["prefetch"]["patient"]["id"], patient);
    assert!(body["prefetch"]["conditions"]["entry"].as_array().is_some_and(|e| !e.is_empty()), "{}", body["prefetch"]);
    let prefetch = body["prefetch"].as_object().unwrap();
    assert!(!prefetch.contains_key("encounter"), "a template this hook has no value for is left out");
    assert!(!prefetch.contains_key("other"), "another patient's record is not prefetched: {prefetch:?}");
    assert!(!prefetch.contains_key("nobody"), "nor told apart from one that does not exist: {prefetch:?}");
    let everyone = prefetch["everyone"]["entry"].as_array().unwrap();
    assert!(
        !everyone.is_empty() && everyone.iter().all(|e| e["resource"]["subject"]["reference"].as_str().unwrap().ends_with(&format!("Patient/{patient}"))),
        "a search stays in the chart's patient's record"
    );
    // fhirAuthorization: a five-minute read token of the service's client, for this user on this patient,
    // for the types its templates name; it reads this patient's record and nobody else's.
    let fa = &body["fhirAuthorization"];
    assert_eq!((fa["token_type"].as_str(), fa["expires_in"].as_i64(), fa["subject"].as_str()), (Some("Bearer"), Some(300), Some("spec-cds")), "{fa}");
    assert_eq!(fa["patient"], patient);
    let granted: Vec<&str> = fa["scope"].as_str().unwrap().split(' ').collect();
    for want in ["patient/Patient.rs", "patient/Condition.rs", "patient/Observation.rs", "patient/Encounter.rs"] {
        assert!(granted.contains(&want), "{want} in {granted:?}");
    }
    assert!(!granted.iter().any(|g| g.starts_with("user/") || g.contains(".c") || g.contains('*')), "{granted:?}");
    let token = fa["access_token"].as_str().unwrap();
    let r = app.client.get(format!("{}/Condition?patient={patient}", app.base)).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.json::<Value>().await.unwrap()["entry"].as_array().is_some_and(|e| !e.is_empty()));
    let other = synth::patient_id(22, 1);
    assert_eq!(app.client.get(format!("{}/Patient/{other}", app.base)).bearer_auth(token).send().await.unwrap().status(), 403, "another patient");
    assert_eq!(
        app.client.get(format!("{}/MedicationRequest?patient={patient}", app.base)).bearer_auth(token).send().await.unwrap().status(),
        403,
        "a type it did not ask for"
    );
    let write = json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{patient}")}});
    let r = app.client.post(format!("{}/Condition", app.base)).bearer_auth(token).json(&write).send().await.unwrap();
    assert_eq!(r.status(), 403, "read-only");
    // A user whose rights do not cover Conditions: that prefetch is null, the rest as before.
    auth::registry::put_user(store, "desk", "Front Desk", UserRole::Clinician, "desk-pass", &practitioner).await.unwrap();
    auth::accounts::set_rights(&app.auth, None, "desk", Some("user/Patient.rs")).await.unwrap();
    let desk = sign_in(&app, "/ehr/login", "desk", "desk-pass").await;
    seen.lock().unwrap().clear();
    let (_, cards) = page(&app, &format!("/ehr/patients/{patient}/cds"), &desk).await;
    assert!(cards.contains("0 conditions prefetched"), "{cards}");
    let (_, body) = seen.lock().unwrap().first().cloned().unwrap();
    let prefetch = body["prefetch"].as_object().unwrap();
    assert!(!prefetch.contains_key("conditions"), "the rights do not cover Conditions: left out, not null");
    assert!(!prefetch.contains_key("diabetes"), "nor may _has tell of a Condition: {prefetch:?}");
    assert_eq!(body["fhirAuthorization"]["scope"], "patient/Patient.rs", "the token within the user's rights too");
    assert_eq!(prefetch["patient"]["id"], patient);
    // A disabled service is not called.
    ehr::cds::register(&app.auth, &ehr::cds::CdsEndpoint { disabled: true, ..endpoint }).await.unwrap();
    seen.lock().unwrap().clear();
    let (_, cards) = page(&app, &format!("/ehr/patients/{patient}/cds"), &cookie).await;
    assert!(seen.lock().unwrap().is_empty() && !cards.contains("Spec service"), "{cards}");
}

#[tokio::test]
async fn the_reference_apps_service_refuses_calls_it_cannot_verify() {
    let app = spawn_with_reference_app().await;
    let url = format!("{}/app/cds-services/kindling-blood-pressure", root(&app));
    let call = json!({"hook": "patient-view", "hookInstance": "h", "context": {"patientId": "p"}});
    let r = app.client.post(&url).json(&call).send().await.unwrap();
    assert_eq!(r.status(), 401, "no JWT");
    // Signed by a key the EHR does not publish.
    let key = client::SigningKey::generate_rs384("not-the-ehrs");
    let now = fhir::time::unix_ms(fhir::time::Clock::now(&*app.clock)) / 1000;
    let forged = key.sign(&json!({"iss": app.base, "aud": url, "exp": now + 60, "iat": now, "jti": "j"})).unwrap();
    let r = app.client.post(&url).bearer_auth(&forged).json(&call).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("kid"));
    // Signed by the EHR, but for another service; then a good one, and its replay.
    let sign =
        |aud: &str, jti: &str| app.auth.keys.sign_jwt_rs384(&json!({"iss": app.base, "aud": aud, "exp": now + 60, "iat": now, "jti": jti}), "x").unwrap();
    let r = app.client.post(&url).bearer_auth(sign("https://elsewhere.example/cds-services/x", "j1")).json(&call).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let good = sign(&url, "j2");
    let r = app.client.post(&url).bearer_auth(&good).json(&call).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"cards": []}), "nothing prefetched, no card");
    assert_eq!(app.client.post(&url).bearer_auth(&good).json(&call).send().await.unwrap().status(), 401, "a replay");
    let discovery: Value = app.client.get(format!("{}/app/cds-services", root(&app))).send().await.unwrap().json().await.unwrap();
    assert_eq!(discovery["services"][0]["id"], "kindling-blood-pressure");
    assert_eq!(discovery["services"][0]["hook"], "patient-view");
}

#[tokio::test]
async fn administrators_register_services_in_the_ehr() {
    let app = spawn_with_reference_app().await;
    kindling::seed(&app.app_state, 1, 23).await.unwrap();
    let store = app.auth.store.as_ref();
    let practitioner = format!("Practitioner/{}", synth::practitioner_id(0));
    auth::registry::put_user(store, "doc", "Dr Doc", UserRole::Clinician, "doc-pass", &practitioner).await.unwrap();
    auth::accounts::set_admin(&app.auth, None, "doc", true).await.unwrap();
    auth::registry::put_user(store, "nurse", "Nurse", UserRole::Clinician, "nurse-pass", &practitioner).await.unwrap();
    let cookie = sign_in(&app, "/ehr/login", "doc", "doc-pass").await;
    let (status, listed) = page(&app, "/ehr/cds", &cookie).await;
    assert_eq!(status, 200);
    assert!(listed.contains("/app/cds-services") && listed.contains("kindling-summary"), "the reference app's service: {listed}");
    let csrf = crate::ehr_pages::csrf(&listed);
    let add = |url: &'static str, apps: &'static str| {
        let (app, cookie, csrf) = (&app, cookie.clone(), csrf.clone());
        async move {
            let r = form(app, "/ehr/cds", Some(&cookie), &[("csrf", &csrf), ("id", "remote"), ("name", "Remote service"), ("url", url), ("apps", apps)]).await;
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, html) = add("http://cds.example.org/cds-services", "").await;
    assert_eq!(status, 400);
    assert!(html.contains("must be https") && html.contains("value=\"http://cds.example.org/cds-services\""), "the form keeps what was typed: {html}");
    let (status, html) = add("https://cds.example.org/cds-services", "nosuch").await;
    assert_eq!(status, 400);
    assert!(html.contains("No app &#39;nosuch&#39; is registered") || html.contains("No app 'nosuch' is registered"), "{html}");
    let (status, html) = add("https://cds.example.org/cds-services", "kindling-summary").await;
    assert_eq!(status, 201);
    assert!(html.contains("Remote service is registered"), "{html}");
    let remote = ehr::cds::endpoints(&app.auth).await.unwrap().into_iter().find(|e| e.id == "remote").unwrap();
    assert_eq!(
        (remote.url.as_str(), remote.apps.clone(), remote.disabled),
        ("https://cds.example.org/cds-services", vec!["kindling-summary".to_string()], false)
    );
    // Disabled, then no longer called; the form needs its token.
    assert_eq!(form(&app, "/ehr/cds/remote/status", Some(&cookie), &[("status", "disable")]).await.status(), 403);
    assert_eq!(form(&app, "/ehr/cds/remote/status", Some(&cookie), &[("csrf", &csrf), ("status", "disable")]).await.status(), 303);
    assert!(ehr::cds::endpoints(&app.auth).await.unwrap().into_iter().find(|e| e.id == "remote").unwrap().disabled);
    // For administrators only.
    let nurse = sign_in(&app, "/ehr/login", "nurse", "nurse-pass").await;
    assert_eq!(page(&app, "/ehr/cds", &nurse).await.0, 403);
}

#[tokio::test]
async fn faults_injected_per_service_are_named_and_the_chart_goes_on() {
    let app = spawn_with_reference_app().await;
    kindling::seed(&app.app_state, 1, 24).await.unwrap();
    let store = app.auth.store.as_ref();
    auth::registry::put_user(store, "doc", "Dr Doc", UserRole::Clinician, "doc-pass", &format!("Practitioner/{}", synth::practitioner_id(0))).await.unwrap();
    auth::accounts::set_admin(&app.auth, None, "doc", true).await.unwrap();
    let patient = synth::patient_id(24, 0);
    let (date, now) = today(&app);
    record_blood_pressure(&app, &patient, 150.0, 95.0, &now).await;
    let cookie = sign_in(&app, "/ehr/login", "doc", "doc-pass").await;
    let (_, listed) = page(&app, "/ehr/cds", &cookie).await;
    let csrf = crate::ehr_pages::csrf(&listed);
    let cards_path = format!("/ehr/patients/{patient}/cds");
    let set = |fault: &'static str| {
        let (app, cookie, csrf) = (&app, cookie.clone(), csrf.clone());
        async move { form(app, "/ehr/cds/kindling-summary/fault", Some(&cookie), &[("csrf", &csrf), ("fault", fault)]).await.status().as_u16() }
    };
    // bad-jwt is a real call the reference app refuses; the others are answered by the EHR itself.
    for (fault, said) in [
        ("bad-jwt", "Raised blood pressure failed (HTTP 401)"),
        ("error", "Raised blood pressure failed (HTTP 503)"),
        ("garbled", "Raised blood pressure sent 2 card(s) Kindling cannot read"),
        ("slow", "Raised blood pressure did not answer within 2.5 seconds"),
    ] {
        assert_eq!(set(fault).await, 303);
        let (_, services) = page(&app, "/ehr/cds", &cookie).await;
        assert!(services.contains(&format!("<option value=\"{fault}\" selected>")), "{fault}: {services}");
        let (status, cards) = page(&app, &cards_path, &cookie).await;
        assert_eq!(status, 200);
        assert!(cards.contains(said) && cards.contains("(a fault injected by the EHR)"), "{fault}: {cards}");
        assert!(!cards.contains("Raised blood pressure: 150/95"), "{fault}: {cards}");
    }
    let filter = store::audit::AuditFilter { limit: 500, ..Default::default() };
    let events = app.app_state.store.audit_events(&filter).await.unwrap();
    assert!(
        events.iter().any(|(_, r)| r.detail.as_deref().is_some_and(|d| d.contains("(injected fault: bad-jwt)"))),
        "the audit trail says a fault was injected"
    );
    // Cleared: the card is back. An unknown fault is refused, and faults are for administrators.
    assert_eq!(set("none").await, 303);
    let (_, cards) = page(&app, &cards_path, &cookie).await;
    assert!(cards.contains(&format!("Raised blood pressure: 150/95 mmHg on {date}")) && !cards.contains("fault injected"), "{cards}");
    assert_eq!(set("meltdown").await, 400);
    auth::registry::put_user(store, "nurse", "Nurse", UserRole::Clinician, "nurse-pass", "Practitioner/x").await.unwrap();
    let nurse = sign_in(&app, "/ehr/login", "nurse", "nurse-pass").await;
    assert_eq!(form(&app, "/ehr/cds/kindling-summary/fault", Some(&nurse), &[("csrf", &csrf), ("fault", "slow")]).await.status(), 403);
}

/// A fault injected while another administrator disables the service: both stand, as each change is made
/// on the registration as it is then, not as it was read before.
#[tokio::test]
async fn concurrent_changes_to_a_service_both_stand() {
    let app = spawn_with_reference_app().await;
    let id = "kindling-summary";
    for round in 0..20 {
        let (fault, disabled) = if round % 2 == 0 { (ehr::cds::CdsFault::Slow, true) } else { (ehr::cds::CdsFault::Error, false) };
        let (a, b) =
            tokio::join!(ehr::cds::change_endpoint(&app.auth, id, |e| e.fault = fault), ehr::cds::change_endpoint(&app.auth, id, |e| e.disabled = disabled),);
        assert!(a.unwrap().is_some() && b.unwrap().is_some());
        let e = ehr::cds::endpoints(&app.auth).await.unwrap().into_iter().find(|e| e.id == id).unwrap();
        assert_eq!((e.fault, e.disabled), (fault, disabled), "round {round}");
    }
    assert_eq!(ehr::cds::change_endpoint(&app.auth, "nosuch", |e| e.disabled = true).await.unwrap(), None);
}

#[tokio::test]
async fn services_are_registered_per_environment_in_the_apps_file() {
    let app = spawn_with_reference_app().await;
    let file = r#"
[[app]]
client_id = "file-cds"
name = "File CDS client"
type = "public"
redirect_uris = ["https://cds.example.org/unused"]
scope = "patient/*.rs"

[[cds_service]]
id = "from-file"
name = "Service from the file"
url = "https://cds.example.org/cds-services"
apps = ["kindling-summary"]
client = "file-cds"
"#;
    auth::apps::load_apps_file(app.auth.store.as_ref(), file, |_| None).await.unwrap();
    assert_eq!(ehr::cds::load_services_file(&app.auth, file).await.unwrap(), ["from-file"]);
    let find = || async { ehr::cds::endpoints(&app.auth).await.unwrap().into_iter().find(|e| e.id == "from-file").unwrap() };
    let e = find().await;
    assert_eq!(
        (e.url.as_str(), e.apps.clone(), e.client_id.as_deref(), e.disabled),
        ("https://cds.example.org/cds-services", vec!["kindling-summary".into()], Some("file-cds"), false)
    );
    // The EHR's runtime choices stand when the file is loaded again.
    ehr::cds::register(&app.auth, &ehr::cds::CdsEndpoint { disabled: true, fault: ehr::cds::CdsFault::Slow, ..e }).await.unwrap();
    ehr::cds::load_services_file(&app.auth, file).await.unwrap();
    let again = find().await;
    assert_eq!((again.disabled, again.fault), (true, ehr::cds::CdsFault::Slow));
    // Refused: an app that is not registered, plain http elsewhere, a field the file does not know.
    let e = ehr::cds::load_services_file(&app.auth, &file.replace("kindling-summary", "nosuch")).await.unwrap_err();
    assert!(e.contains("no app 'nosuch' is registered"), "{e}");
    let e = ehr::cds::load_services_file(&app.auth, &file.replace("https://cds.example.org", "http://cds.example.org")).await.unwrap_err();
    assert!(e.contains("must be https"), "{e}");
    assert!(ehr::cds::load_services_file(&app.auth, &file.replace("client = ", "secret = ")).await.is_err());
}
