//! `kindling users`: accounts for a real deployment, linked to records that exist; a disabled account
//! loses its sign-in, its sessions and its tokens at once.

use crate::ehr_pages::{page, sign_in};
use crate::spawn_secured_app;

#[tokio::test]
async fn accounts_are_added_linked_disabled_and_given_new_passwords() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 2, 11).await.unwrap();
    let practitioner = format!("Practitioner/{}", synth::practitioner_id(1));
    let patient = format!("Patient/{}", synth::patient_id(11, 1));
    let added = kindling::users::add(&app.auth, "drokafor", "Dr. Ben Okafor", "clinician", &practitioner, "long-enough-1").await.unwrap();
    assert!(!added.password_hash.contains("long-enough-1"), "stored hashed");
    kindling::users::add(&app.auth, "maria", "Maria", "patient", &patient, "long-enough-2").await.unwrap();
    // Refused, each with its reason.
    for (user, role, linked, password, says) in [
        ("drokafor", "clinician", practitioner.as_str(), "long-enough-3", "exists already"),
        ("x", "clinician", "Practitioner/nobody", "long-enough-3", "no Practitioner/nobody"),
        ("x", "clinician", patient.as_str(), "long-enough-3", "linked to a Practitioner"),
        ("x", "nurse", practitioner.as_str(), "long-enough-3", "clinician or patient"),
        ("x", "clinician", practitioner.as_str(), "short", "at least 10"),
        ("bad name", "clinician", practitioner.as_str(), "long-enough-3", "user name"),
    ] {
        let err = kindling::users::add(&app.auth, user, "X", role, linked, password).await.unwrap_err().to_string();
        assert!(err.contains(says), "{user}/{role}/{linked}: {err}");
    }
    let list = kindling::users::list(&app.auth).await.unwrap().join("\n");
    assert!(list.contains(&format!("drokafor\tclinician\t{practitioner}")) && list.contains(&format!("maria\tpatient\t{patient}")), "{list}");

    // They sign in where they belong.
    let doc = sign_in(&app, "/ehr/login", "drokafor", "long-enough-1").await;
    assert_eq!(page(&app, "/ehr/patients", &doc).await.0, 200);
    let pat = sign_in(&app, "/portal/login", "maria", "long-enough-2").await;
    assert_eq!(page(&app, "/portal", &pat).await.0, 200);
    ehr::register_demo_app(&app.auth).await.unwrap();
    let token = auth::operator_tokens(&app.auth, "kindling-demo", "drokafor", None, "user/*.rs").await.unwrap()["access_token"].as_str().unwrap().to_string();
    let read = |t: String| {
        let c = app.client.clone();
        let url = app.url(&patient);
        async move { c.get(url).bearer_auth(t).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(read(token.clone()).await, 200);

    // Disabled: the session ends, the password no longer signs in, the token stops.
    assert_eq!(kindling::users::disable(&app.auth, "drokafor").await.unwrap(), 1);
    assert_eq!(page(&app, "/ehr/patients", &doc).await.0, 303, "the session ended");
    let r = app
        .client
        .post(format!("{}/ehr/login", app.base.trim_end_matches("/fhir")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=drokafor&password=long-enough-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.clock.advance(time::Duration::milliseconds(1001));
    assert_eq!(read(token).await, 401);
    assert!(kindling::users::list(&app.auth).await.unwrap().iter().any(|l| l.starts_with("drokafor\t") && l.ends_with("\tdisabled")));
    // Enabled again, with a new password: the old one is gone.
    kindling::users::enable(&app.auth, "drokafor").await.unwrap();
    kindling::users::passwd(&app.auth, "drokafor", "a-new-password").await.unwrap();
    assert!(kindling::users::passwd(&app.auth, "drokafor", "short").await.is_err());
    let r = app
        .client
        .post(format!("{}/ehr/login", app.base.trim_end_matches("/fhir")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=drokafor&password=long-enough-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    sign_in(&app, "/ehr/login", "drokafor", "a-new-password").await;
    assert!(kindling::users::disable(&app.auth, "nobody").await.unwrap_err().to_string().contains("no user"));
}

/// The sandbox's personas: the nurse and the front desk may let an app do less than the physician,
/// whatever the app asks — in the authorisation flow (the consent page offers less) and in the token.
#[tokio::test]
async fn personas_grant_apps_no_more_than_their_rights() {
    use crate::smart_flows::{Auth, browser_form, code, exchange, inputs, login};
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 2, 12).await.unwrap();
    kindling::ensure_demo_users(&app.app_state, 12).await.unwrap();
    let patient = synth::patient_id(12, 0);
    let client = crate::test_client("writer", auth::model::ClientKind::Public, "launch/patient openid fhirUser offline_access patient/*.cruds user/*.cruds");
    auth::registry::put_client(app.auth.store.as_ref(), client).await.unwrap();
    let list = kindling::users::list(&app.auth).await.unwrap().join("\n");
    assert!(list.contains("frontdesk\tclinician\tPractitioner/kp-practitioner-10\t") && list.contains("at most user/Patient.rus"), "{list}");
    let token = |user: &'static str| {
        let auth = app.auth.clone();
        let patient = patient.clone();
        async move {
            let t = auth::operator_tokens(&auth, "writer", user, Some(&patient), "openid fhirUser patient/*.cruds").await.unwrap();
            (t["access_token"].as_str().unwrap().to_string(), t["scope"].as_str().unwrap().to_string())
        }
    };
    let status = |method: reqwest::Method, path: String, token: String, body: Option<serde_json::Value>| {
        let mut req = app.client.request(method, app.url(&path)).bearer_auth(token).header("content-type", "application/fhir+json");
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let vital = serde_json::json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": format!("Patient/{patient}")}, "effectiveDateTime": "2026-12-06T10:00:00Z",
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}});
    let problem = serde_json::json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{patient}")}, "code": {"text": "Headache"}});
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    // The physician: everything the app asks.
    let (doc, scope) = token("clinician").await;
    assert_eq!(scope, "openid fhirUser patient/*.cruds");
    assert_eq!(status(post.clone(), "Condition".into(), doc, Some(problem.clone())).await, 201);
    // The nurse: reads everything, records observations, nothing else.
    let (nurse, scope) = token("nurse").await;
    assert_eq!(scope, "openid fhirUser patient/*.rs patient/Observation.c");
    assert_eq!(status(get.clone(), format!("Condition?patient={patient}"), nurse.clone(), None).await, 200);
    assert_eq!(status(post.clone(), "Observation".into(), nurse.clone(), Some(vital.clone())).await, 201);
    assert_eq!(status(post.clone(), "Condition".into(), nurse, Some(problem)).await, 403);
    // The front desk: demographics and scheduling, no clinical data.
    let (desk, scope) = token("frontdesk").await;
    assert!(scope.contains("patient/Patient.rus") && !scope.contains("Observation") && !scope.contains("*"), "{scope}");
    assert_eq!(status(get.clone(), format!("Patient/{patient}"), desk.clone(), None).await, 200);
    assert_eq!(status(get.clone(), format!("Observation?patient={patient}"), desk.clone(), None).await, 403);
    assert_eq!(status(post, "Observation".into(), desk, Some(vital)).await, 403);

    // In the authorisation flow the consent page offers the front desk only what it may allow, and the
    // token carries no more.
    let a = Auth::new(&app, "writer", "launch/patient openid fhirUser patient/*.rs");
    let page = login(&app, &a.browser, a.start(&app).await, "frontdesk", "kindling-frontdesk").await;
    let html = page.text().await.unwrap();
    assert!(html.contains("Which patient"), "{html}");
    let req = inputs(&html, "request").remove(0);
    let picked = browser_form(&app, &a.browser, "/auth/pick", &[("request", &req), ("patient", &patient)]).await;
    assert_eq!(picked.status(), 200);
    let html = picked.text().await.unwrap();
    let offered = inputs(&html, "scope");
    assert!(offered.contains(&"patient/Patient.rs".to_string()) && offered.contains(&"patient/Appointment.rs".to_string()), "{offered:?}");
    assert!(!offered.iter().any(|o| o.contains("Observation") || o.contains('*')), "{offered:?}");
    let req = inputs(&html, "request").remove(0);
    let mut form: Vec<(&str, &str)> = vec![("request", &req), ("decision", "allow")];
    for o in &offered {
        form.push(("scope", o));
    }
    // A tampered form asks for more than the page offered: ignored.
    form.extend([
        ("scope", "patient/*.rs"),
        ("scope", "patient/Observation.rs"),
        ("category", "patient/Observation.rs|http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"),
    ]);
    let r = browser_form(&app, &a.browser, "/auth/consent", &form).await;
    let t: serde_json::Value = exchange(&app, "writer", &code(&app, &a, &r), &a.verifier).await.json().await.unwrap();
    let granted = t["scope"].as_str().unwrap();
    assert!(!granted.contains("Observation") && !granted.contains('*'), "{t}");
    assert_eq!(status(get.clone(), format!("Observation?patient={patient}"), t["access_token"].as_str().unwrap().to_string(), None).await, 403);

    // Rights bounded after the fact bound the next refresh too.
    let t = auth::operator_tokens(&app.auth, "writer", "clinician", Some(&patient), "openid fhirUser offline_access patient/*.rs").await.unwrap();
    kindling::users::set_rights(&app.auth, "clinician", Some("user/Patient.rs")).await.unwrap();
    let r = crate::smart_flows::post_form(
        &app,
        "/auth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", t["refresh_token"].as_str().unwrap()), ("client_id", "writer")],
    )
    .await;
    let refreshed: serde_json::Value = r.json().await.unwrap();
    assert_eq!(refreshed["scope"], "openid fhirUser offline_access patient/Patient.rs", "{refreshed}");

    // Rights are set with `kindling users rights`, and checked.
    assert!(kindling::users::set_rights(&app.auth, "nurse", Some("openid")).await.unwrap_err().to_string().contains("resource scopes"));
    assert!(kindling::users::set_rights(&app.auth, "nurse", Some("user/Nope.rs")).await.unwrap_err().to_string().contains("no FHIR R4 resource type"));
    assert!(kindling::users::set_rights(&app.auth, "nurse", Some("user/Patient.xyz")).await.unwrap_err().to_string().contains("not a SMART scope"));
    assert_eq!(kindling::users::set_rights(&app.auth, "nurse", None).await.unwrap(), None);
    let (_, scope) = token("nurse").await;
    assert_eq!(scope, "openid fhirUser patient/*.cruds", "the bound lifted");
}

/// Two administrators (or two nodes) changing one account at once: every change is kept. A password
/// change that read the account before a concurrent disable must not write it back enabled.
#[tokio::test]
async fn concurrent_account_changes_are_all_kept() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 1, 12).await.unwrap();
    let practitioner = format!("Practitioner/{}", synth::practitioner_id(1));
    for i in 0..4 {
        let name = format!("racer{i}");
        kindling::users::add(&app.auth, &name, "Racer", "clinician", &practitioner, "long-enough-0").await.unwrap();
        let (disabled, password, rights, admin) = tokio::join!(
            auth::accounts::disable(&app.auth, Some("root"), &name),
            auth::accounts::passwd(&app.auth, Some("root"), &name, "long-enough-9"),
            auth::accounts::set_rights(&app.auth, Some("root"), &name, Some("user/Patient.rs")),
            auth::accounts::set_admin(&app.auth, Some("root"), &name, true),
        );
        disabled.unwrap();
        password.unwrap();
        rights.unwrap();
        admin.unwrap();
        let user = auth::registry::stored_user(app.auth.store.as_ref(), &name).await.unwrap().unwrap();
        assert!(user.disabled, "{name}: the disable was kept");
        assert!(auth::crypto::verify_password("long-enough-9", &user.password_hash), "{name}: the new password was kept");
        assert_eq!(user.rights.as_deref(), Some("user/Patient.rs"), "{name}: the rights were kept");
        assert!(user.admin, "{name}: the administrator role was kept");
    }
    // Two administrators adding one name at once: one account, the other told it exists.
    let (a, b) = tokio::join!(
        kindling::users::add(&app.auth, "twin", "First", "clinician", &practitioner, "long-enough-1"),
        kindling::users::add(&app.auth, "twin", "Second", "clinician", &practitioner, "long-enough-2"),
    );
    assert!(a.is_ok() != b.is_ok(), "exactly one add succeeds: {a:?} {b:?}");
    let err = match (a, b) {
        (Err(e), _) | (_, Err(e)) => e,
        _ => unreachable!("one of the two failed"),
    };
    assert!(err.to_string().contains("exists already"), "{err}");
}
