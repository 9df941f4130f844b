//! `kindling users`: accounts for a real deployment, linked to records that exist; a disabled account
//! loses its sign-in, its sessions and its tokens at once.

use crate::ehr_pages::{page, sign_in};
use crate::spawn_secured_app;

#[tokio::test]
async fn accounts_are_added_linked_disabled_and_given_new_passwords() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 2, 11).await.unwrap();
    let fhir = app.app_state.store.as_ref();
    let practitioner = format!("Practitioner/{}", synth::practitioner_id(1));
    let patient = format!("Patient/{}", synth::patient_id(11, 1));
    let added = kindling::users::add(&app.auth, fhir, "drokafor", "Dr. Ben Okafor", "clinician", &practitioner, "long-enough-1").await.unwrap();
    assert!(!added.password_hash.contains("long-enough-1"), "stored hashed");
    kindling::users::add(&app.auth, fhir, "maria", "Maria", "patient", &patient, "long-enough-2").await.unwrap();
    // Refused, each with its reason.
    for (user, role, linked, password, says) in [
        ("drokafor", "clinician", practitioner.as_str(), "long-enough-3", "exists already"),
        ("x", "clinician", "Practitioner/nobody", "long-enough-3", "no Practitioner/nobody"),
        ("x", "clinician", patient.as_str(), "long-enough-3", "linked to a Practitioner"),
        ("x", "nurse", practitioner.as_str(), "long-enough-3", "clinician or patient"),
        ("x", "clinician", practitioner.as_str(), "short", "at least 10"),
        ("bad name", "clinician", practitioner.as_str(), "long-enough-3", "user name"),
    ] {
        let err = kindling::users::add(&app.auth, fhir, user, "X", role, linked, password).await.unwrap_err().to_string();
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
