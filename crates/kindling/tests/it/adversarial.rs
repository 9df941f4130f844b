//! Tried as an attacker would: every way found to get tokens without the user's own sign-in and consent,
//! to reach past a patient token's patient, or to make the server answer something other than a clear
//! refusal. Each test names the finding it proves fixed (the security issue's numbering) and its neighbours.

use crate::smart_flows::{
    Auth, Fixture, PUBLIC, browser_form, code, consent, exchange, fhir_get, fixture, fixture_with, inputs, patient_tokens, post_form, root,
};
use crate::{Browser, TestApp};
use serde_json::{Value, json};

/// A launch made through the launch API by the clinician `doc` (no `client_id`: any app may use it).
async fn doc_launch(f: &Fixture, context: Value) -> String {
    let app = &f.app;
    let r = app.client.post(format!("{}/auth/launch", root(app))).basic_auth("doc", Some("doc-pass")).json(&context).send().await.unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["launch"].as_str().unwrap().to_string()
}

/// A browser in which `doc` is signed in to the EHR.
async fn doc_browser(app: &TestApp) -> Browser {
    let b = Browser::new();
    let r = b.post_form(&format!("{}/ehr/login", root(app)), &[("username", "doc"), ("password", "doc-pass")]).await;
    assert_eq!(r.status(), 303);
    assert!(b.has_cookie("kindling_session"));
    b
}

/// A code was not issued: no redirect to the app at all.
fn no_code(r: &reqwest::Response, what: &str) {
    assert!(r.status().is_client_error(), "{what}: {}", r.status());
    assert!(r.headers().get("location").is_none(), "{what}: redirected");
}

/// Registers an app through RFC 7591 (as anyone may) and returns its client id.
async fn self_register(app: &TestApp, metadata: Value) -> String {
    let r = app.client.post(format!("{}/auth/register", root(app))).json(&metadata).send().await.unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["client_id"].as_str().unwrap().to_string()
}

/// Tokens for `doc` through a standalone launch with `scope`.
async fn doc_tokens(f: &Fixture, scope: &str) -> Value {
    crate::review::doc_tokens(f, scope).await.0
}

async fn remembered_consent(f: &Fixture, user: &str) -> bool {
    f.app.auth.store.auth_get("consent", &format!("{user}|{PUBLIC}")).await.unwrap().is_some()
}

/// Finding 1: consent acts only for a browser whose session is the pending request's user, and only for
/// the browser that started the request; a launch handle (even one made without `client_id`) gives
/// nothing by itself, and no forged decision is remembered.
#[tokio::test]
async fn a_launch_handle_alone_mints_no_tokens() {
    let f = fixture().await;
    let app = &f.app;
    let mut a = Auth::new(app, PUBLIC, "launch openid fhirUser user/*.cruds patient/*.cruds");
    a.launch = Some(doc_launch(&f, json!({"patient": f.p2})).await);
    // The attacker's "browser" starts the request: the sign-in page, with the request id in it.
    let page = a.start(app).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Sign in"), "{html}");
    let req = inputs(&html, "request").remove(0);
    let allow = [("request", req.as_str()), ("decision", "allow"), ("scope", "user/*.cruds"), ("scope", "patient/*.cruds")];

    // No cookie at all (a script, not a browser).
    let r = post_form(app, "/auth/consent", &allow).await;
    no_code(&r, "no cookies");
    assert_eq!(r.status(), 403);
    // The browser that started the request, with nobody signed in: nobody has passed the sign-in.
    no_code(&browser_form(app, &a.browser, "/auth/consent", &allow).await, "no session");
    // Another user's session in that browser (the patient signs in through the portal).
    let r = a.browser.post_form(&format!("{}/portal/login", root(app)), &[("username", "pat"), ("password", "pat-pass")]).await;
    assert_eq!(r.status(), 303);
    no_code(&browser_form(app, &a.browser, "/auth/consent", &allow).await, "another user's session");
    // The launching user's own session, but in another browser than the one that started the request
    // (a clinician tricked into submitting the attacker's request).
    let docs = doc_browser(app).await;
    let r = docs.post_form(&format!("{}/auth/consent", root(app)), &allow).await;
    no_code(&r, "another browser's request");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("another browser"));
    // The sign-in form of the request from another browser is refused as well.
    let r = docs.post_form(&format!("{}/auth/login", root(app)), &[("request", &req), ("username", "doc"), ("password", "doc-pass")]).await;
    no_code(&r, "sign-in from another browser");
    assert!(!remembered_consent(&f, "doc").await, "a forged decision was remembered");

    // A request waiting for the clinician's consent, in the clinician's browser: still only their own
    // decision, from that browser, counts.
    let mut own = Auth::new(app, PUBLIC, "launch openid fhirUser user/*.cruds");
    own.browser = doc_browser(app).await;
    own.launch = Some(doc_launch(&f, json!({"patient": f.p2})).await);
    let html = own.start(app).await.text().await.unwrap();
    assert!(html.contains("would like to"), "{html}");
    let req = inputs(&html, "request").remove(0);
    let allow = [("request", req.as_str()), ("decision", "allow"), ("scope", "user/*.cruds")];
    no_code(&post_form(app, "/auth/consent", &allow).await, "no cookies");
    no_code(&docs.post_form(&format!("{}/auth/consent", root(app)), &allow).await, "the clinician's other browser");
    // Someone else signs in at that browser (a shared workstation): the clinician's request is not theirs.
    let r = own.browser.post_form(&format!("{}/portal/login", root(app)), &[("username", "pat"), ("password", "pat-pass")]).await;
    assert_eq!(r.status(), 303);
    let r = browser_form(app, &own.browser, "/auth/consent", &allow).await;
    no_code(&r, "another user's session");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("signed in as someone else"));
    assert!(!remembered_consent(&f, "pat").await && !remembered_consent(&f, "doc").await);
    // The clinician signs in again at their browser and decides.
    let r = own.browser.post_form(&format!("{}/ehr/login", root(app)), &[("username", "doc"), ("password", "doc-pass")]).await;
    assert_eq!(r.status(), 303);
    let r = browser_form(app, &own.browser, "/auth/consent", &allow).await;
    let c = code(app, &own, &r);
    let t: Value = exchange(app, PUBLIC, &c, &own.verifier).await.json().await.unwrap();
    assert_eq!(t["patient"], json!(f.p2));
    assert_eq!(t["scope"], "launch openid fhirUser user/*.cruds");
    assert!(remembered_consent(&f, "doc").await, "a real decision is remembered");
    // The form is single use.
    no_code(&browser_form(app, &own.browser, "/auth/consent", &allow).await, "the same form again");
}
/// Finding 1, the picker: a patient-less launch lets only the signed-in clinician, in the browser that
/// started the request, choose the patient; a form posted out of turn is refused.
#[tokio::test]
async fn the_patient_picker_acts_only_for_the_clinician_at_the_browser() {
    let f = fixture().await;
    let app = &f.app;
    let mut a = Auth::new(app, PUBLIC, "launch launch/patient openid fhirUser patient/*.rs");
    a.launch = Some(doc_launch(&f, json!({})).await);
    let html = a.start(app).await.text().await.unwrap();
    let req = inputs(&html, "request").remove(0);
    // Straight to the picker with the request id, before anyone signed in: out of turn.
    let pick = [("request", req.as_str()), ("patient", f.p1.as_str())];
    no_code(&post_form(app, "/auth/pick", &pick).await, "pick without cookies");
    let r = browser_form(app, &a.browser, "/auth/pick", &pick).await;
    no_code(&r, "pick before sign-in");
    assert!(r.text().await.unwrap().contains("expired"));
    // The clinician signs in at their browser and gets the picker.
    let r = browser_form(app, &a.browser, "/auth/login", &[("request", &req), ("username", "doc"), ("password", "doc-pass")]).await;
    let html = r.text().await.unwrap();
    assert!(html.contains("Which patient"), "{html}");
    let req = inputs(&html, "request").remove(0);
    let pick = [("request", req.as_str()), ("patient", f.p1.as_str())];
    // The clinician's session in another browser, and no cookies at all: refused.
    let other = doc_browser(app).await;
    no_code(&other.post_form(&format!("{}/auth/pick", root(app)), &pick).await, "pick from another browser");
    no_code(&post_form(app, "/auth/pick", &pick).await, "pick without cookies");
    // Consent before the patient is chosen is out of turn.
    let r = browser_form(app, &a.browser, "/auth/consent", &[("request", &req), ("decision", "allow"), ("scope", "patient/*.rs")]).await;
    no_code(&r, "consent before the pick");
    // The right browser picks; the consent page follows, then the code with the chosen patient.
    let r = browser_form(app, &a.browser, "/auth/pick", &pick).await;
    let r = consent(app, &a.browser, r, true, &[], &[]).await;
    let c = code(app, &a, &r);
    let t: Value = exchange(app, PUBLIC, &c, &a.verifier).await.json().await.unwrap();
    assert_eq!(t["patient"], json!(f.p1));
    // A second pick of the same request is refused.
    no_code(&browser_form(app, &a.browser, "/auth/pick", &[("request", &req), ("patient", &f.p2)]).await, "second pick");
}

/// Finding 3: If-None-Exist under a patient token is evaluated only inside the patient's record, so its
/// answer is the same whatever another patient's record holds.
#[tokio::test]
async fn conditional_create_says_nothing_about_other_patients() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient patient/*.cruds").await;
    let token = t["access_token"].as_str().unwrap();
    let theirs = app
        .app_state
        .store
        .search(
            &fhir::query::parse("Condition", &[("patient".into(), f.p2.clone())], fhir::query::ParseOptions { lenient: false, base: None, now_ms: 0 }).unwrap(),
        )
        .await
        .unwrap();
    let theirs = app.app_state.store.fetch(&theirs[..1]).await.unwrap().remove(0);
    let code = serde_json::from_str::<Value>(&theirs.json).unwrap()["code"]["coding"][0]["code"].as_str().unwrap().to_string();
    let mut answers = Vec::new();
    for criteria in [
        format!("patient={}&code={code}", f.p2),
        format!("patient={}&code=no-such-code", f.p2),
        format!("_id={}", theirs.id),
        format!("subject=Patient/{}", f.p2),
    ] {
        let mine = json!({"resourceType": "Condition", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p1)}});
        let r = app
            .client
            .post(app.url("Condition"))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", &criteria)
            .body(mine.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert!(!body.contains(&theirs.id), "{criteria}: {body}");
        answers.push(status);
    }
    assert_eq!(answers, [201, 201, 201, 201], "the same answer whatever the other record holds");
    // Within the patient's own record the condition still works.
    let r = app
        .client
        .post(app.url("Condition"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "code:text=x")
        .body(json!({"resourceType": "Condition", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p1)}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412, "four of the patient's own records match");
}

/// Finding 4: a record filed under B and corrected to A: A's token reads the corrected version, never
/// B's, through vread, instance history and Bundle GETs.
#[tokio::test]
async fn a_refiled_records_old_versions_stay_with_their_patient() {
    let f = fixture().await;
    let app = &f.app;
    let doc = doc_tokens(&f, "openid fhirUser user/*.cruds").await;
    let doc = doc["access_token"].as_str().unwrap();
    let put = |subject: &str| {
        let body = json!({"resourceType": "Observation", "id": "refiled", "status": "final", "code": {"text": "glucose"}, "subject": {"reference": format!("Patient/{subject}")}, "valueString": format!("filed under {subject}")});
        app.client.put(app.url("Observation/refiled")).bearer_auth(doc).header("content-type", "application/fhir+json").body(body.to_string()).send()
    };
    assert_eq!(put(&f.p2).await.unwrap().status(), 201);
    assert_eq!(put(&f.p1).await.unwrap().status(), 200);
    let t = patient_tokens(&f, "launch/patient patient/*.rs").await;
    let token = t["access_token"].as_str().unwrap();
    let (status, now) = fhir_get(app, "Observation/refiled", Some(token)).await;
    assert_eq!((status, now["meta"]["versionId"].as_str()), (200, Some("2")));
    let (status, _) = fhir_get(app, "Observation/refiled/_history/1", Some(token)).await;
    assert_eq!(status, 403, "vread of the version filed under the other patient");
    let (status, history) = fhir_get(app, "Observation/refiled/_history", Some(token)).await;
    assert_eq!(status, 200);
    let versions: Vec<&str> = history["entry"].as_array().unwrap().iter().map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap()).collect();
    assert_eq!(versions, ["2"]);
    assert!(!history.to_string().contains(&f.p2), "history shows the other patient");
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Observation/refiled/_history/1"}}]});
    let r: Value = app
        .client
        .post(app.url(""))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["entry"][0]["response"]["status"].as_str().unwrap().starts_with("403"), "{r}");
    assert!(!r.to_string().contains(&f.p2));
    // The other patient sees the version filed under them, not the corrected one.
    let other = doc_tokens_for_patient(&f).await;
    assert_eq!(fhir_get(app, "Observation/refiled/_history/1", Some(&other)).await.0, 200);
    assert_eq!(fhir_get(app, "Observation/refiled", Some(&other)).await.0, 403);
}

/// A patient-scoped token for the fixture's second patient (an EHR launch on them, with patient scopes).
async fn doc_tokens_for_patient(f: &Fixture) -> String {
    let t = crate::smart_flows::ehr_tokens(f, json!({"patient": f.p2}), "launch openid fhirUser patient/*.rs").await;
    t["access_token"].as_str().unwrap().to_string()
}

/// Findings 5 and 6: deletes are judged as updates are (the record must be the patient's own), and a
/// patient-scoped write may name no other patient anywhere; a deleted foreign record cannot be taken
/// over by a PUT, by REST or in a Bundle.
#[tokio::test]
async fn patient_writes_and_deletes_stay_in_their_own_record() {
    let f = fixture().await;
    let app = &f.app;
    let doc = doc_tokens(&f, "openid fhirUser user/*.cruds").await;
    let doc = doc["access_token"].as_str().unwrap();
    let t = patient_tokens(&f, "launch/patient patient/*.cruds").await;
    let token = t["access_token"].as_str().unwrap();
    let send = |method: reqwest::Method, path: &str, bearer: &str, body: Option<Value>| {
        let mut req = app.client.request(method, app.url(path)).bearer_auth(bearer.to_string()).header("content-type", "application/fhir+json");
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        req.send()
    };
    // B's record naming A as performer: A may read it (A is in its compartment), not delete or change it.
    let foreign = json!({"resourceType": "Observation", "id": "foreign", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p2)}, "performer": [{"reference": format!("Patient/{}", f.p1)}]});
    assert_eq!(send(reqwest::Method::PUT, "Observation/foreign", doc, Some(foreign.clone())).await.unwrap().status(), 201);
    assert_eq!(fhir_get(app, "Observation/foreign", Some(token)).await.0, 200);
    assert_eq!(send(reqwest::Method::DELETE, "Observation/foreign", token, None).await.unwrap().status(), 403);
    assert_eq!(send(reqwest::Method::PUT, "Observation/foreign", token, Some(foreign)).await.unwrap().status(), 403);
    assert_eq!(fhir_get(app, "Observation/foreign", Some(doc)).await.0, 200, "still there");
    // A's own record naming B anywhere (performer) is refused: it would show in B's compartment.
    let in_b = async || fhir_get(app, &format!("Observation?patient={}&code:text=x&_count=0", f.p2), Some(doc)).await.1["total"].clone();
    let before = in_b().await;
    let smuggled = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p1)}, "performer": [{"reference": format!("Patient/{}", f.p2)}]});
    assert_eq!(send(reqwest::Method::POST, "Observation", token, Some(smuggled.clone())).await.unwrap().status(), 403);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": smuggled, "request": {"method": "POST", "url": "Observation"}}]});
    assert_eq!(send(reqwest::Method::POST, "", token, Some(tx)).await.unwrap().status(), 403);
    assert_eq!(in_b().await, before, "nothing was written into B's compartment");
    // A's own record, naming only A, is fine.
    let own = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p1)}, "performer": [{"reference": format!("Patient/{}", f.p1)}]});
    assert_eq!(send(reqwest::Method::POST, "Observation", token, Some(own)).await.unwrap().status(), 201);
    // B's deleted record cannot be re-filed under A by PUT (REST or Bundle): its last version is B's.
    let gone =
        json!({"resourceType": "Observation", "id": "gone", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p2)}});
    assert_eq!(send(reqwest::Method::PUT, "Observation/gone", doc, Some(gone)).await.unwrap().status(), 201);
    assert!(send(reqwest::Method::DELETE, "Observation/gone", doc, None).await.unwrap().status().is_success());
    let takeover =
        json!({"resourceType": "Observation", "id": "gone", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", f.p1)}});
    assert_eq!(send(reqwest::Method::PUT, "Observation/gone", token, Some(takeover.clone())).await.unwrap().status(), 403);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": takeover, "request": {"method": "PUT", "url": "Observation/gone"}}]});
    let r: Value = send(reqwest::Method::POST, "", token, Some(batch)).await.unwrap().json().await.unwrap();
    assert!(r["entry"][0]["response"]["status"].as_str().unwrap().starts_with("403"), "{r}");
    let (status, _) = fhir_get(app, "Observation/gone", Some(doc)).await;
    assert_eq!(status, 410, "still deleted");
}

/// Finding 7: a search with too many parameters or values is a 400 that says the limit, never a 500,
/// with `handling=lenient` too.
#[tokio::test]
async fn oversized_searches_get_a_clear_400() {
    let app = crate::spawn_app().await;
    let many_values = (0..1000).map(|i| format!("c{i}")).collect::<Vec<_>>().join(",");
    let many_params = (0..940).map(|i| format!("_id=x{i}")).collect::<Vec<_>>().join("&");
    let spread = (0..80).map(|i| format!("code={}", (0..10).map(|j| format!("c{i}-{j}")).collect::<Vec<_>>().join(","))).collect::<Vec<_>>().join("&");
    for (what, query, limit) in [
        ("values", format!("Observation?code={many_values}"), "at most 100 comma-separated"),
        ("parameters", format!("Observation?{many_params}"), "at most 100 parameters"),
        ("values in all", format!("Observation?{spread}"), "at most 400 values"),
    ] {
        for prefer in [None, Some("handling=lenient")] {
            let mut req = app.client.get(app.url(&query));
            if let Some(p) = prefer {
                req = req.header("prefer", p);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 400, "{what} {prefer:?}");
            let b: Value = r.json().await.unwrap();
            assert_eq!(b["resourceType"], "OperationOutcome");
            assert!(b.to_string().contains(limit), "{what}: {b}");
        }
    }
    // At the limits, the searches run (on SQLite and PostgreSQL alike).
    let hundred = (0..100).map(|i| format!("c{i}")).collect::<Vec<_>>().join(",");
    assert_eq!(app.get(&format!("Observation?code={hundred}")).await.status(), 200);
    let hundred_params = (0..100).map(|i| format!("_id=x{i}")).collect::<Vec<_>>().join("&");
    assert_eq!(app.get(&format!("Observation?{hundred_params}")).await.status(), 200);
    let four_hundred = (0..40).map(|i| format!("code={}", (0..10).map(|j| format!("c{i}-{j}")).collect::<Vec<_>>().join(","))).collect::<Vec<_>>().join("&");
    assert_eq!(app.get(&format!("Observation?{four_hundred}")).await.status(), 200);
    let post = app
        .client
        .post(app.url("Observation/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("code={many_values}"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 400, "POST _search too");
}

/// Finding 10: every refusal from `/fhir` is an OperationOutcome, and every refusal from an OAuth
/// endpoint is RFC 6749 JSON, whatever the client sent.
#[tokio::test]
async fn malformed_requests_get_structured_errors() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient patient/*.rs").await;
    let token = t["access_token"].as_str().unwrap();
    for path in ["Patient/%ff", "Patient/%ff/_history/1", "Patient/x/_history/%ff"] {
        let r = app.client.get(app.url(path)).bearer_auth(token).send().await.unwrap();
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        assert!(r.headers()["content-type"].to_str().unwrap().contains("json"), "{path}");
        assert_eq!(r.json::<Value>().await.unwrap()["resourceType"], "OperationOutcome", "{path}");
    }
    let r =
        app.client.post(app.url("Patient")).bearer_auth(token).header("content-type", "application/fhir+json").body(vec![0xff_u8, 0xfe]).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["resourceType"], "OperationOutcome");
    let oauth = |path: &str, body: Vec<u8>, content_type: &str| {
        app.client.post(format!("{}{path}", root(app))).header("content-type", content_type.to_string()).body(body).send()
    };
    for path in ["/auth/token", "/auth/introspect", "/auth/revoke"] {
        for body in [vec![0xff_u8, 0xfe, b'=', 0xc3], b"grant_type=%ff%fe&client_id=x".to_vec()] {
            let r = oauth(path, body, "application/x-www-form-urlencoded").await.unwrap();
            assert_eq!(r.status(), 400, "{path}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"], "invalid_request", "{path}: {v}");
        }
    }
    for body in
        ["{", "[1]", r#"{"redirect_uris": 5}"#, r#"{"client_name": 7, "redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "none"}"#]
    {
        let r = oauth("/auth/register", body.into(), "application/json").await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().starts_with("invalid_"), "{body}");
    }
    for body in ["{", r#"{"patient": 5}"#, r#"{"faults": {"nope": 1}}"#] {
        let r = app
            .client
            .post(format!("{}/auth/launch", root(app)))
            .basic_auth("doc", Some("doc-pass"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request", "{body}");
    }
    // A form the sign-in service cannot read is a page for a person.
    let r = post_form(app, "/auth/consent", &[]).await;
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let r = app
        .client
        .post(format!("{}/auth/consent", root(app)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![0xff_u8])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
}

/// Finding 11 (and the extra values): the launch API refuses a context that would hand an app another
/// patient's records than the patient it names.
#[tokio::test]
async fn launch_contexts_hold_together() {
    let f = fixture().await;
    let app = &f.app;
    let first = |ty: &str, patient: &str| {
        let q =
            fhir::query::parse(ty, &[("patient".into(), patient.to_string())], fhir::query::ParseOptions { lenient: false, base: None, now_ms: 0 }).unwrap();
        async move {
            let keys = app.app_state.store.search(&q).await.unwrap();
            app.app_state.store.fetch(&keys[..1]).await.unwrap().remove(0).id
        }
    };
    let theirs_enc = first("Encounter", &f.p1).await;
    let mine_enc = first("Encounter", &f.p2).await;
    let theirs_obs = first("Observation", &f.p1).await;
    let launch = |ctx: Value| app.client.post(format!("{}/auth/launch", root(app))).basic_auth("doc", Some("doc-pass")).json(&ctx).send();
    for (what, ctx) in [
        ("another patient's encounter", json!({"patient": f.p2, "encounter": theirs_enc})),
        ("an encounter without its patient", json!({"encounter": mine_enc})),
        ("another patient's record in fhirContext", json!({"patient": f.p2, "fhirContext": [{"reference": format!("Observation/{theirs_obs}")}]})),
        ("another patient in fhirContext", json!({"patient": f.p2, "fhirContext": [{"reference": format!("Patient/{}", f.p1)}]})),
        ("a record about a patient without one", json!({"fhirContext": [{"reference": format!("Observation/{theirs_obs}")}]})),
        ("a missing record", json!({"patient": f.p2, "fhirContext": [{"reference": "Observation/no-such"}]})),
        ("an extra value posing as the encounter", json!({"patient": f.p2, "extra": {"encounter": theirs_enc}})),
        ("an extra value posing as a token", json!({"patient": f.p2, "extra": {"access_token": "x"}})),
    ] {
        let r = launch(ctx).await.unwrap();
        assert_eq!(r.status(), 400, "{what}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request", "{what}");
    }
    let ok = launch(json!({"patient": f.p2, "encounter": mine_enc, "fhirContext": [{"reference": format!("Encounter/{mine_enc}")}, {"reference": format!("Practitioner/{}", synth::practitioner_id(0))}], "extra": {"practice_id": "P-1"}})).await.unwrap();
    assert_eq!(ok.status(), 201);
}

/// Finding 12 and RFC 9207: discovery says that every authorisation response carries `iss`.
#[tokio::test]
async fn discovery_advertises_the_iss_parameter() {
    let app = crate::spawn_secured_app().await;
    let (_, d) = app.get_json(".well-known/smart-configuration").await;
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
}

/// An app that registered itself is not offered in the EHR's or the portal's launchers (anyone may
/// register, under any name) until an administrator saves it on the Apps page, and cannot be launched.
#[tokio::test]
async fn self_registered_apps_are_not_offered_to_users() {
    let f = fixture().await;
    let app = &f.app;
    let client_id = self_register(app, json!({"client_name": "Kindling Health Records", "redirect_uris": ["https://evil.example/cb"], "token_endpoint_auth_method": "none", "initiate_login_uri": "https://evil.example/launch"})).await;
    let client_id = client_id.as_str();
    let docs = doc_browser(app).await;
    let chart = docs.get(format!("{}/ehr/patients/{}", root(app), f.p2)).await.text().await.unwrap();
    assert!(chart.contains("Launch") && !chart.contains("Kindling Health Records"), "{chart}");
    let csrf = inputs(&chart, "csrf").remove(0);
    let r = docs.post_form(&format!("{}/ehr/launch", root(app)), &[("csrf", &csrf), ("patient", &f.p2), ("launch", &format!("new|{client_id}"))]).await;
    assert_eq!(r.status(), 404);
    assert!(r.headers().get("location").is_none());
}

/// Finding 9: with the database unreachable, a valid token is not "invalid": the FHIR API answers 503
/// with Retry-After and an OperationOutcome, the OAuth endpoints `temporarily_unavailable`; once the
/// database is back, the same token works.
#[tokio::test]
async fn a_database_outage_is_a_503_not_a_bad_credential() {
    let Some(db) = crate::ScratchPostgres::create("outage").await else { return };
    let f = fixture_with(crate::spawn_secured_on(&db.url).await).await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient offline_access patient/*.rs").await;
    let token = t["access_token"].as_str().unwrap();
    let path = format!("Patient/{}", f.p1);
    assert_eq!(fhir_get(app, &path, Some(token)).await.0, 200);
    db.cut().await;
    // Past the one second for which a node trusts a token it resolved.
    app.clock.advance(time::Duration::seconds(2));
    let r = app.client.get(app.url(&path)).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.headers().get("www-authenticate").is_none());
    assert_eq!(r.json::<Value>().await.unwrap()["resourceType"], "OperationOutcome");
    let r =
        post_form(app, "/auth/token", &[("grant_type", "refresh_token"), ("refresh_token", t["refresh_token"].as_str().unwrap()), ("client_id", PUBLIC)]).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "temporarily_unavailable");
    let r = post_form(app, "/auth/introspect", &[("token", token), ("client_id", PUBLIC)]).await;
    assert_eq!(r.status(), 503, "introspection does not call a live token inactive");
    let r = post_form(app, "/auth/revoke", &[("token", token), ("client_id", PUBLIC)]).await;
    assert_eq!(r.status(), 503, "a revocation that could not be done is not a 200");
    assert_eq!(app.client.get(format!("{}/readyz", root(app))).send().await.unwrap().status(), 503);
    db.restore().await;
    let mut back = 0;
    for _ in 0..50 {
        back = fhir_get(app, &path, Some(token)).await.0;
        if back == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(back, 200, "the same token works once the database is back");
    drop(f);
    db.drop_database().await;
}

/// Found on review: a self-registered app (which may register any redirect URI) cannot use the
/// authorisation endpoint's error redirects as an open redirector; administrator-registered apps still get
/// RFC 6749 error redirects.
#[tokio::test]
async fn self_registered_apps_get_no_error_redirects() {
    let f = fixture().await;
    let app = &f.app;
    let client_id =
        self_register(app, json!({"client_name": "Redirector", "redirect_uris": ["https://evil.example/x"], "token_endpoint_auth_method": "none"})).await;
    let client_id = client_id.as_str();
    let mut url = url::Url::parse(&format!("{}/auth/authorize", root(app))).unwrap();
    url.query_pairs_mut().append_pair("client_id", client_id).append_pair("redirect_uri", "https://evil.example/x").append_pair("response_type", "token");
    let r = app.client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none(), "redirected to the self-registered address");
    let mut url = url::Url::parse(&format!("{}/auth/authorize", root(app))).unwrap();
    url.query_pairs_mut().append_pair("client_id", PUBLIC).append_pair("redirect_uri", crate::smart_flows::REDIRECT).append_pair("response_type", "token");
    let r = app.client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 303, "a registered app's error goes back to it");
}

/// Found on review: a patient-level token asking for another patient's compartment or `$everything` is
/// refused before the patient is looked up, so that the answer does not tell whether that patient exists.
#[tokio::test]
async fn compartment_requests_do_not_reveal_other_patients() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient patient/*.rs").await;
    let token = t["access_token"].as_str().unwrap();
    for path in [
        format!("Patient/{}/Observation", f.p2),
        "Patient/no-such-patient/Observation".to_string(),
        format!("Patient/{}/$everything", f.p2),
        "Patient/no-such-patient/$everything".to_string(),
    ] {
        let (status, body) = fhir_get(app, &path, Some(token)).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(body["resourceType"], "OperationOutcome");
    }
    for path in [
        format!("Patient/{}", f.p2),
        "Patient/no-such-patient".to_string(),
        format!("Patient/{}/_history", f.p2),
        "Patient/no-such-patient/_history".to_string(),
        "Patient/no-such-patient/_history/1".to_string(),
    ] {
        assert_eq!(fhir_get(app, &path, Some(token)).await.0, 403, "{path}");
    }
    let (status, b) = fhir_get(app, &format!("Patient/{}/Observation", f.p1), Some(token)).await;
    assert_eq!(status, 200);
    assert!(b["total"].as_u64().unwrap() > 0);
}

/// Found on review: a patient token cannot make its own Patient record point at another patient
/// (`link.other` would put it in that patient's compartment).
#[tokio::test]
async fn a_patient_record_cannot_be_linked_to_another_patient() {
    let f = fixture().await;
    let app = &f.app;
    let t = patient_tokens(&f, "launch/patient patient/*.cruds").await;
    let token = t["access_token"].as_str().unwrap();
    let (_, mut me) = fhir_get(app, &format!("Patient/{}", f.p1), Some(token)).await;
    me["link"] = json!([{"other": {"reference": format!("Patient/{}", f.p2)}, "type": "seealso"}]);
    let r = app
        .client
        .put(app.url(&format!("Patient/{}", f.p1)))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(me.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    me.as_object_mut().unwrap().remove("link");
    let r = app
        .client
        .put(app.url(&format!("Patient/{}", f.p1)))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(me.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the patient's own record without the link is fine");
}

/// Found on review: a registration stored before the `self_registered` field existed counts as
/// self-registered (the fenced side) until an administrator saves it again.
#[test]
fn registrations_of_unknown_origin_count_as_self_registered() {
    let old = json!({"client_id": "old", "name": "Old", "kind": "public", "redirect_uris": ["https://a.example/cb"], "allowed_scope": "patient/*.rs"});
    let c: auth::model::Client = serde_json::from_value(old).unwrap();
    assert!(c.self_registered);
    let mut admin = c.clone();
    admin.self_registered = false;
    let back: auth::model::Client = serde_json::from_value(serde_json::to_value(&admin).unwrap()).unwrap();
    assert!(!back.self_registered, "an administrator's registration keeps its origin when stored");
}
