//! Found on a concurrency review (session 21): what happens when a revocation, a delete or a reassignment
//! lands between a check and the write it allowed. The suite's second run puts every server on PostgreSQL.

use crate::review::doc_tokens;
use crate::smart_flows::{fhir_get, fixture, patient_tokens, refresh};
use crate::{TestApp, spawn_app};
use serde_json::{Value, json};

/// A grant revoked while one of its refresh tokens is being spent: the revocation is recorded, then its
/// tokens are swept; a refresh that spent its token just before the sweep stores new tokens the sweep
/// may miss. The issuer looks for the record after storing them: it refuses, and revokes them itself.
#[tokio::test]
async fn a_revocation_racing_a_refresh_leaves_no_live_token() {
    let f = fixture().await;
    let app = &f.app;
    let (t, _) = doc_tokens(&f, "openid fhirUser offline_access user/*.rs").await;
    let access = t["access_token"].as_str().unwrap();
    assert_eq!(fhir_get(app, "Patient?_count=1", Some(access)).await.0, 200);
    let record = app.auth.store.auth_get("access", &auth::crypto::token_key(access)).await.unwrap().unwrap();
    let grant = record.grant_id.unwrap();
    // Another node's revocation, half done: recorded, its sweep not yet run.
    app.auth.store.auth_put(auth::REVOKED_GRANT, &grant, "", None, Some(i64::MAX)).await.unwrap();
    let r = refresh(app, t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    app.clock.advance(time::Duration::milliseconds(1001));
    assert_eq!(fhir_get(app, "Patient?_count=1", Some(access)).await.0, 401, "nothing of the grant lives on");
}

async fn send(app: &TestApp, method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>) -> u16 {
    let mut req = app.client.request(method, app.url(path)).header("content-type", "application/fhir+json");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    req.send().await.unwrap().status().as_u16()
}

/// A conditional update and a delete of its match, sent at once: whichever runs first, the deleted resource
/// is never written back (the update either came first, or finds no match and creates another).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conditional_update_racing_a_delete_never_brings_the_resource_back() {
    let app = spawn_app().await;
    for round in 0..20 {
        let (id, value) = (format!("race-del-{round}"), format!("del-{round}"));
        let patient = |with_id: bool| {
            let mut p = json!({"resourceType": "Patient", "identifier": [{"system": "urn:race", "value": value}], "name": [{"family": "Race"}]});
            if with_id {
                p["id"] = json!(id);
            }
            p
        };
        assert_eq!(send(&app, reqwest::Method::PUT, &format!("Patient/{id}"), None, Some(patient(true))).await, 201);
        let (conditional, instance) = (format!("Patient?identifier=urn:race|{value}"), format!("Patient/{id}"));
        let update = send(&app, reqwest::Method::PUT, &conditional, None, Some(patient(false)));
        let delete = send(&app, reqwest::Method::DELETE, &instance, None, None);
        let (updated, deleted) = tokio::join!(update, delete);
        assert!(matches!(updated, 200 | 201 | 409), "round {round}: the update answered {updated}");
        assert_eq!(deleted, 200, "round {round}");
        assert_eq!(fhir_get(&app, &format!("Patient/{id}"), None).await.0, 410, "round {round}: the deleted resource stays deleted (update {updated})");
    }
}

/// A patient's PUT of their Observation while a clinician moves it to another patient's record: whichever
/// runs first, the Observation ends on the other record (the patient's write, judged on the old subject,
/// is judged again and refused, never written over the other patient's record).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patients_write_racing_a_reassignment_never_lands_on_another_patients_record() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient patient/*.cruds").await;
    let token = t["access_token"].as_str().unwrap();
    let observation = |id: &str, patient: &str, note: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "Mood"}, "valueString": note,
            "subject": {"reference": format!("Patient/{patient}")}})
    };
    let put = |resource: Value| {
        let url = format!("Observation/{}", resource["id"].as_str().unwrap());
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": resource, "request": {"method": "PUT", "url": url}}]})
    };
    for round in 0..20 {
        let id = format!("race-move-{round}");
        api::bundle::process(&app.app_state, put(observation(&id, &f.p1, "recorded"))).await.unwrap();
        let path = format!("Observation/{id}");
        let by_patient = send(app, reqwest::Method::PUT, &path, Some(token), Some(observation(&id, &f.p1, "by the patient")));
        let moved = api::bundle::process(&app.app_state, put(observation(&id, &f.p2, "moved by the clinician")));
        let (status, moved) = tokio::join!(by_patient, moved);
        moved.unwrap();
        assert!(matches!(status, 200 | 403 | 409), "round {round}: {status}");
        let now = app.app_state.store.read("Observation", &id).await.unwrap().unwrap();
        let now: Value = serde_json::from_str(&now.json).unwrap();
        assert_eq!(now["subject"]["reference"], json!(format!("Patient/{}", f.p2)), "round {round}: the patient's write ({status}) landed on another record");
    }
}

/// Withdrawing an app while its refresh token is being spent: the token is already marked used and the
/// access token has expired, so the grant has no unspent live record. It is revoked all the same (the
/// refresh in flight then finds the revocation and stores nothing that works).
#[tokio::test]
async fn a_withdrawal_while_a_refresh_is_in_flight_still_revokes_the_grant() {
    let f = fixture().await;
    let app = &f.app;
    let (t, _) = doc_tokens(&f, "openid fhirUser offline_access user/*.rs").await;
    let record = app.auth.store.auth_get("access", &auth::crypto::token_key(t["access_token"].as_str().unwrap())).await.unwrap().unwrap();
    let grant = record.grant_id.unwrap();
    app.clock.advance(time::Duration::seconds(app.auth.config.access_token_secs + 1));
    // The refresh in flight: its token spent, its new tokens not stored yet.
    let spent = app.auth.store.auth_consume("refresh", &auth::crypto::token_key(t["refresh_token"].as_str().unwrap())).await.unwrap();
    assert!(spent.is_some_and(|r| !r.used));
    let withdrawn = auth::grants::withdraw(&app.auth, "doc", crate::smart_flows::PUBLIC).await.unwrap();
    assert_eq!(withdrawn, 1, "the grant being refreshed is withdrawn too");
    assert!(app.auth.grant_revoked(&grant).await.unwrap());
}

/// An account disabled between the consent that made a code and the code's exchange (disabling revokes
/// the grants it finds; a code stored at that moment may be missed): the exchange is refused.
#[tokio::test]
async fn a_code_made_for_an_account_disabled_since_buys_nothing() {
    use crate::smart_flows::{Auth, PUBLIC, code, consent, exchange, login};
    let f = fixture().await;
    let app = &f.app;
    let a = Auth::new(app, PUBLIC, "openid fhirUser user/*.rs");
    let page = login(app, &a.browser, a.start(app).await, "doc", "doc-pass").await;
    let r = if page.status() == 303 { page } else { consent(app, &a.browser, page, true, &[], &[]).await };
    let c = code(app, &a, &r);
    // Disabled as the code was stored: the account record changes, the sweep found nothing to revoke.
    let mut user: Value = serde_json::from_str(&app.auth.store.auth_get("user", "doc").await.unwrap().unwrap().value).unwrap();
    user["disabled"] = json!(true);
    app.auth.store.auth_put("user", "doc", &user.to_string(), None, None).await.unwrap();
    let r = exchange(app, PUBLIC, &c, &a.verifier).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
}
