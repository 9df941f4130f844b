//! Order entry with decision support: choosing an order calls the `order-select` services, signing calls
//! the `order-sign` services; a card's suggestion, when accepted, changes the draft orders; warning and
//! critical cards must be accepted or overridden before signing; the services hear what became of their
//! cards (feedback); signed orders are written to the record as active.

use crate::cds::{field, record_blood_pressure, root, today};
use crate::ehr_pages::{form, page, sign_in};
use crate::{TestApp, spawn_with_reference_app};
use auth::model::UserRole;
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// Posts an order form with the page's CSRF token; returns the status and where it leads (or the page).
async fn post_form(app: &TestApp, cookie: &str, path: &str, csrf: &str, pairs: &[(&str, &str)]) -> (u16, String) {
    let mut all = vec![("csrf", csrf)];
    all.extend_from_slice(pairs);
    let r = form(app, path, Some(cookie), &all).await;
    let status = r.status().as_u16();
    let to = r.headers().get("location").map(|l| l.to_str().unwrap().to_string());
    (status, to.unwrap_or(r.text().await.unwrap()))
}

/// The audit records of `action`, waiting up to three seconds for at least `n` (feedback is sent in the
/// background).
async fn audited(app: &TestApp, action: &str, n: usize) -> Vec<String> {
    for _ in 0..30 {
        let filter = store::audit::AuditFilter { limit: 500, ..Default::default() };
        let found: Vec<String> = app
            .app_state
            .store
            .audit_events(&filter)
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, r)| r.action == action)
            .filter_map(|(_, r)| r.detail.clone())
            .collect();
        if found.len() >= n {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("fewer than {n} {action} records");
}

#[tokio::test]
async fn an_order_check_suggestion_changes_the_draft_and_signing_waits_for_an_answer() {
    let app = spawn_with_reference_app().await;
    kindling::seed(&app.app_state, 1, 31).await.unwrap();
    let store = app.auth.store.as_ref();
    let practitioner = format!("Practitioner/{}", synth::practitioner_id(0));
    auth::registry::put_user(store, "doc", "Dr Doc", UserRole::Clinician, "doc-pass", &practitioner).await.unwrap();
    let patient = synth::patient_id(31, 0);
    let (date, now) = today(&app);
    record_blood_pressure(&app, &patient, 162.0, 98.0, &now).await;
    let cookie = sign_in(&app, "/ehr/login", "doc", "doc-pass").await;
    let orders = format!("/ehr/patients/{patient}/orders");
    let (status, chart) = page(&app, &format!("/ehr/patients/{patient}"), &cookie).await;
    assert_eq!(status, 200);
    assert!(chart.contains(&format!("href=\"{orders}\"")), "the chart leads to the orders: {chart}");
    let (status, html) = page(&app, &orders, &cookie).await;
    assert_eq!(status, 200);
    let csrf = crate::ehr_pages::csrf(&html);
    // Choosing ibuprofen: the order-select service warns at once.
    assert_eq!(form(&app, &orders, Some(&cookie), &[("item", "ibuprofen-200")]).await.status(), 403, "the form needs its token");
    let (status, to) = post_form(&app, &cookie, &orders, &csrf, &[("item", "ibuprofen-200")]).await;
    assert_eq!((status, to.as_str()), (303, orders.as_str()));
    let (_, html) = page(&app, &orders, &cookie).await;
    let ibuprofen = field(&html, "draft");
    assert!(ibuprofen.starts_with("MedicationRequest/"), "{ibuprofen}");
    assert!(html.contains("On the order just chosen"), "{html}");
    assert!(html.contains(&format!("Ibuprofen 200 MG Oral Tablet can raise blood pressure: latest 162/98 mmHg on {date}")), "{html}");
    assert!(html.contains("Accept: Order acetaminophen 325 mg instead") && html.contains("Short course; the risk was discussed with the patient"), "{html}");
    // Signing asks the order-sign service, whose warning waits for an answer.
    let sign = format!("{orders}/sign");
    let (status, to) = post_form(&app, &cookie, &sign, &csrf, &[]).await;
    assert_eq!((status, to.as_str()), (303, format!("{orders}#review").as_str()));
    let (_, html) = page(&app, &orders, &cookie).await;
    assert!(html.contains("Before signing") && html.contains("1 card(s) below need an answer before signing"), "{html}");
    let id = ibuprofen.split('/').nth(1).unwrap();
    assert!(app.app_state.store.read("MedicationRequest", id).await.unwrap().is_none(), "nothing signed yet");
    let (status, _) = post_form(&app, &cookie, &sign, &csrf, &[]).await;
    assert_eq!(status, 303, "asked again, still unanswered");
    // Accepting the suggestion: ibuprofen out, acetaminophen in, as a draft.
    let (_, html) = page(&app, &orders, &cookie).await;
    let reference = field(&html, "ref");
    let cards = format!("{orders}/cards");
    let (status, _) = post_form(&app, &cookie, &cards, &csrf, &[("ref", &reference), ("card", "0"), ("action", "accept"), ("suggestion", "0")]).await;
    assert_eq!(status, 303);
    let (_, html) = page(&app, &orders, &cookie).await;
    assert!(html.contains("Accepted: Order acetaminophen 325 mg instead"), "{html}");
    assert!(!html.contains(&format!("value=\"{ibuprofen}\"")) && html.contains("<strong>Acetaminophen 325 MG Oral Tablet</strong>"), "{html}");
    let (status, _) = post_form(&app, &cookie, &cards, &csrf, &[("ref", &reference), ("card", "0"), ("action", "accept"), ("suggestion", "0")]).await;
    assert_eq!(status, 409, "a card is answered once");
    let acetaminophen = field(&html, "draft");
    assert!(html.contains("Your drafts changed since these cards were given"), "{html}");
    // Signed: the order-sign service has nothing more to say; the order is active in the record.
    let (status, signed) = post_form(&app, &cookie, &sign, &csrf, &[]).await;
    assert_eq!(status, 200, "{signed}");
    assert!(signed.contains("Orders signed") && signed.contains("Acetaminophen 325 MG Oral Tablet"), "{signed}");
    let stored = app.app_state.store.read("MedicationRequest", acetaminophen.split('/').nth(1).unwrap()).await.unwrap().unwrap();
    let order: Value = serde_json::from_str(&stored.json).unwrap();
    assert_eq!((order["status"].as_str(), order["intent"].as_str()), (Some("active"), Some("order")));
    assert_eq!(order["subject"]["reference"], format!("Patient/{patient}"));
    assert_eq!(order["requester"]["reference"], practitioner);
    assert!(app.app_state.store.read("MedicationRequest", id).await.unwrap().is_none(), "the ibuprofen order never reached the record");
    let (_, chart) = page(&app, &format!("/ehr/patients/{patient}"), &cookie).await;
    assert!(chart.contains("Acetaminophen 325 MG Oral Tablet"), "the chart's medications: {chart}");
    let (_, html) = page(&app, &orders, &cookie).await;
    assert!(html.contains("No draft orders"), "{html}");
    let feedback = audited(&app, "cds-feedback", 1).await;
    assert!(feedback[0].starts_with("accepted card ") && feedback[0].contains("/app/cds-services/kindling-order-review/feedback: HTTP 200"), "{feedback:?}");
    // Naproxen, overridden with a reason: signed as written, and the service is told why.
    post_form(&app, &cookie, &orders, &csrf, &[("item", "naproxen-500")]).await;
    assert_eq!(post_form(&app, &cookie, &sign, &csrf, &[]).await.0, 303);
    let (_, html) = page(&app, &orders, &cookie).await;
    let reference = field(&html, "ref");
    let (status, _) =
        post_form(&app, &cookie, &cards, &csrf, &[("ref", &reference), ("card", "0"), ("action", "override"), ("reason", "7"), ("comment", "x")]).await;
    assert_eq!(status, 409, "a reason the card does not offer");
    let (status, html) = post_form(&app, &cookie, &cards, &csrf, &[("ref", &reference), ("card", "0"), ("action", "override"), ("reason", "")]).await;
    assert_eq!(status, 409, "a warning is not set aside without a reason");
    assert!(html.contains("choose a reason or write a comment"), "{html}");
    let (status, _) =
        post_form(&app, &cookie, &cards, &csrf, &[("ref", &reference), ("card", "0"), ("action", "override"), ("reason", "0"), ("comment", "Three days only")])
            .await;
    assert_eq!(status, 303);
    let (_, html) = page(&app, &orders, &cookie).await;
    assert!(html.contains("Overridden: Short course; the risk was discussed with the patient"), "{html}");
    let review = field(&html, "review");
    assert!(!review.is_empty(), "the Sign button confirms the review it shows");
    assert_eq!(post_form(&app, &cookie, &sign, &csrf, &[("review", "not-the-one-shown")]).await.0, 303, "another review: the services are asked again");
    let (_, html) = page(&app, &orders, &cookie).await;
    assert!(html.contains("1 card(s) below need an answer"), "asked again, answered anew: {html}");
    let reference = field(&html, "ref");
    let override_again = [("ref", reference.as_str()), ("card", "0"), ("action", "override"), ("reason", "0"), ("comment", "Three days only")];
    assert_eq!(post_form(&app, &cookie, &cards, &csrf, &override_again).await.0, 303);
    let (_, html) = page(&app, &orders, &cookie).await;
    let (status, signed) = post_form(&app, &cookie, &sign, &csrf, &[("review", &field(&html, "review"))]).await;
    assert_eq!(status, 200);
    assert!(signed.contains("Naproxen 500 MG Oral Tablet"), "{signed}");
    let feedback = audited(&app, "cds-feedback", 2).await;
    assert!(feedback.iter().any(|f| f.starts_with("overridden card ") && f.ends_with("HTTP 200")), "{feedback:?}");
    // An account whose rights do not create orders (the front desk) writes none.
    auth::registry::put_user(store, "desk", "Front Desk", UserRole::Clinician, "desk-pass", &practitioner).await.unwrap();
    auth::accounts::set_rights(&app.auth, None, "desk", Some("user/Patient.rs user/Appointment.rs")).await.unwrap();
    let desk = sign_in(&app, "/ehr/login", "desk", "desk-pass").await;
    let (_, desk_page) = page(&app, &orders, &desk).await;
    let desk_csrf = crate::ehr_pages::csrf(&desk_page);
    let (status, html) = post_form(&app, &desk, &orders, &desk_csrf, &[("item", "ibuprofen-200")]).await;
    assert_eq!(status, 403);
    assert!(html.contains("Your account does not write orders"), "{html}");
    // Drafts are the clinician's own.
    auth::registry::put_user(store, "other", "Dr Other", UserRole::Clinician, "other-pass", &practitioner).await.unwrap();
    let other = sign_in(&app, "/ehr/login", "other", "other-pass").await;
    post_form(&app, &cookie, &orders, &csrf, &[("item", "hba1c")]).await;
    let (_, theirs) = page(&app, &orders, &other).await;
    assert!(theirs.contains("No draft orders"), "{theirs}");
}

/// What the spec-only order service received: (path, Authorization, body).
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A CDS service written against the spec: `order-select` and `order-sign` services that record their calls
/// and feedback. On signing it answers with a critical card (no suggestion) and an info card suggesting a
/// potassium test; `bad` suggests something no EHR should apply (a Patient).
async fn order_service() -> (String, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/cds-services", listener.local_addr().unwrap());
    let record = |path: &'static str| {
        move |axum::extract::State(seen): axum::extract::State<Seen>, headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| async move {
            let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            seen.lock().unwrap().push((path.to_string(), auth, body));
            let cards = match path {
                "sign" => json!([
                    {"uuid": "critical-1", "summary": "Potassium 6.1 mmol/L yesterday", "indicator": "critical", "source": {"label": "Spec"},
                     "overrideReasons": [{"system": "urn:test", "code": "aware", "display": "Aware; repeat ordered"}]},
                    {"uuid": "info-1", "summary": "Consider a potassium test", "indicator": "info", "source": {"label": "Spec"}, "selectionBehavior": "at-most-one",
                     "suggestions": [{"label": "Add a potassium test", "uuid": "sg-1", "actions": [{"type": "create", "description": "potassium",
                        "resource": {"resourceType": "ServiceRequest", "status": "draft", "intent": "order", "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}], "text": "Potassium"}}}]},
                        {"label": "Bad", "uuid": "sg-2", "actions": [{"type": "create", "description": "bad", "resource": {"resourceType": "Patient"}}]}]}
                ]),
                _ => json!([]),
            };
            axum::Json(json!({"cards": cards}))
        }
    };
    let router = axum::Router::new()
        .route(
            "/cds-services",
            get(|| async {
                axum::Json(json!({"services": [
                    {"hook": "order-select", "id": "select", "description": "select", "prefetch": {"patient": "Patient/{{context.patientId}}"}},
                    {"hook": "order-sign", "id": "sign", "description": "sign"},
                    {"hook": "patient-view", "id": "view", "description": "not called on orders"}
                ]}))
            }),
        )
        .route("/cds-services/select", post(record("select")))
        .route("/cds-services/sign", post(record("sign")))
        .route("/cds-services/sign/feedback", post(record("feedback")))
        .route("/cds-services/view", post(record("view")))
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (base, seen)
}

fn calls(seen: &Seen, path: &str) -> Vec<(String, Value)> {
    seen.lock().unwrap().iter().filter(|(p, _, _)| p == path).map(|(_, a, b)| (a.clone(), b.clone())).collect()
}

#[tokio::test]
async fn order_hooks_carry_the_drafts_and_feedback_reaches_the_service() {
    let app = spawn_with_reference_app().await;
    kindling::seed(&app.app_state, 1, 32).await.unwrap();
    let store = app.auth.store.as_ref();
    let practitioner = format!("Practitioner/{}", synth::practitioner_id(0));
    auth::registry::put_user(store, "doc", "Dr Doc", UserRole::Clinician, "doc-pass", &practitioner).await.unwrap();
    let patient = synth::patient_id(32, 0);
    // Only the spec service: the reference app's is disabled.
    for mut e in ehr::cds::endpoints(&app.auth).await.unwrap() {
        e.disabled = true;
        ehr::cds::register(&app.auth, &e).await.unwrap();
    }
    let (base, seen) = order_service().await;
    // A registration whose URL carries a query string (a tenant, say): each service's and feedback's
    // address keeps it after its own path.
    let endpoint = ehr::cds::CdsEndpoint {
        id: "spec-orders".into(),
        name: "Spec orders".into(),
        url: format!("{base}?tenant=t1"),
        disabled: false,
        apps: Vec::new(),
        client_id: None,
        fault: Default::default(),
    };
    ehr::cds::register(&app.auth, &endpoint).await.unwrap();
    let cookie = sign_in(&app, "/ehr/login", "doc", "doc-pass").await;
    let orders = format!("/ehr/patients/{patient}/orders");
    let (_, html) = page(&app, &orders, &cookie).await;
    let csrf = crate::ehr_pages::csrf(&html);
    post_form(&app, &cookie, &orders, &csrf, &[("item", "lisinopril-10")]).await;
    post_form(&app, &cookie, &orders, &csrf, &[("item", "bmp")]).await;
    // order-select: the new order is the selection, every draft is in draftOrders.
    let selects = calls(&seen, "select");
    assert_eq!(selects.len(), 2);
    let (authorization, body) = &selects[1];
    assert_eq!(body["hook"], "order-select");
    assert_eq!(body["context"]["userId"], practitioner);
    assert_eq!(body["context"]["patientId"], patient);
    let drafts = body["context"]["draftOrders"]["entry"].as_array().unwrap();
    assert_eq!(drafts.len(), 2);
    assert_eq!(drafts[0]["resource"]["resourceType"], "MedicationRequest");
    assert_eq!(drafts[0]["resource"]["medicationCodeableConcept"]["coding"][0]["code"], "314076");
    let lab = &drafts[1]["resource"];
    assert_eq!(
        (lab["resourceType"].as_str(), lab["status"].as_str(), lab["code"]["coding"][0]["code"].as_str()),
        (Some("ServiceRequest"), Some("draft"), Some("51990-0"))
    );
    assert_eq!(body["context"]["selections"], json!([format!("ServiceRequest/{}", lab["id"].as_str().unwrap())]));
    assert_eq!(body["prefetch"]["patient"]["id"], patient);
    let jwks: Value = app.client.get(format!("{}/auth/jwks", root(&app))).send().await.unwrap().json().await.unwrap();
    let now = fhir::time::unix_ms(fhir::time::Clock::now(&*app.clock)) / 1000;
    client::cds::verify_request_jwt(authorization.strip_prefix("Bearer ").unwrap(), &jwks, &app.base, &format!("{base}/select?tenant=t1"), now).unwrap();
    // order-sign: the critical card holds the signing until it is overridden.
    let sign = format!("{orders}/sign");
    assert_eq!(post_form(&app, &cookie, &sign, &csrf, &[]).await.0, 303);
    let signs = calls(&seen, "sign");
    assert_eq!(signs.len(), 1);
    assert_eq!(signs[0].1["hook"], "order-sign");
    assert!(signs[0].1["context"].get("selections").is_none(), "order-sign carries no selection");
    assert_eq!(signs[0].1["context"]["draftOrders"]["entry"].as_array().unwrap().len(), 2);
    assert!(calls(&seen, "view").is_empty(), "patient-view services are not called on orders");
    let (_, html) = page(&app, &orders, &cookie).await;
    assert!(html.contains("1 card(s) below need an answer") && html.contains("Potassium 6.1 mmol/L yesterday"), "the info card does not hold it: {html}");
    let reference = field(&html, "ref");
    let cards = format!("{orders}/cards");
    // A suggestion creating a Patient is not applied; the drafts are unchanged.
    let (status, page_html) = post_form(&app, &cookie, &cards, &csrf, &[("ref", &reference), ("card", "1"), ("action", "accept"), ("suggestion", "1")]).await;
    assert_eq!(status, 409);
    assert!(page_html.contains("This suggestion cannot be applied: it proposes a Patient"), "{page_html}");
    // The critical card overridden; then the info card's suggestion adds a potassium test to the drafts.
    assert_eq!(
        post_form(&app, &cookie, &cards, &csrf, &[("ref", &reference), ("card", "0"), ("action", "override"), ("reason", "0"), ("comment", "Repeat today")])
            .await
            .0,
        303
    );
    assert_eq!(post_form(&app, &cookie, &cards, &csrf, &[("ref", &reference), ("card", "1"), ("action", "accept"), ("suggestion", "0")]).await.0, 303);
    let (_, html) = page(&app, &orders, &cookie).await;
    assert!(html.contains("<strong>Potassium [Moles/volume] in Serum or Plasma</strong>"), "the test as this EHR's catalogue names it: {html}");
    // The drafts changed: signing asks again, and the advice on the new drafts is answered again.
    let (status, to) = post_form(&app, &cookie, &sign, &csrf, &[]).await;
    assert_eq!((status, to.as_str()), (303, format!("{orders}#review").as_str()));
    assert_eq!(calls(&seen, "sign").len(), 2);
    let (_, html) = page(&app, &orders, &cookie).await;
    assert!(html.contains("1 card(s) below need an answer"), "{html}");
    let reference = field(&html, "ref");
    assert_eq!(
        post_form(&app, &cookie, &cards, &csrf, &[("ref", &reference), ("card", "0"), ("action", "override"), ("reason", "0"), ("comment", "Repeat today")])
            .await
            .0,
        303
    );
    let (_, html) = page(&app, &orders, &cookie).await;
    let (status, signed) = post_form(&app, &cookie, &sign, &csrf, &[("review", &field(&html, "review"))]).await;
    assert_eq!(status, 200, "{signed}");
    assert_eq!(calls(&seen, "sign").len(), 2, "signed on the review shown");
    assert_eq!(calls(&seen, "sign")[1].1["context"]["draftOrders"]["entry"].as_array().unwrap().len(), 3);
    // Feedback: one per answered card, signed for the feedback URL.
    for _ in 0..30 {
        if calls(&seen, "feedback").len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let feedback = calls(&seen, "feedback");
    assert_eq!(feedback.len(), 3, "{feedback:?}");
    let items: Vec<&Value> = feedback.iter().map(|(_, b)| &b["feedback"][0]).collect();
    let accepted = items.iter().find(|f| f["outcome"] == "accepted").unwrap();
    assert_eq!((accepted["card"].as_str(), &accepted["acceptedSuggestions"]), (Some("info-1"), &json!([{"id": "sg-1"}])));
    let overridden = items.iter().find(|f| f["outcome"] == "overridden").unwrap();
    assert_eq!(overridden["card"], "critical-1");
    assert_eq!(
        overridden["overrideReason"],
        json!({"reason": {"system": "urn:test", "code": "aware", "display": "Aware; repeat ordered"}, "userComment": "Repeat today"})
    );
    assert!(fhir::time::parse_date_range(overridden["outcomeTimestamp"].as_str().unwrap()).is_some());
    let jwt = feedback[0].0.strip_prefix("Bearer ").unwrap();
    client::cds::verify_request_jwt(jwt, &jwks, &app.base, &format!("{base}/sign/feedback?tenant=t1"), now).unwrap();
    assert!(
        client::cds::verify_request_jwt(jwt, &jwks, &app.base, &format!("{base}/sign?tenant=t1"), now).is_err(),
        "feedback's token is for the feedback URL"
    );

    // Cards shown, then the registration pointed at another address: a clinician's answer to those cards
    // (and its comment) is not sent there, nor to the old one.
    post_form(&app, &cookie, &orders, &csrf, &[("item", "bmp")]).await;
    assert_eq!(post_form(&app, &cookie, &sign, &csrf, &[]).await.0, 303);
    let (_, html) = page(&app, &orders, &cookie).await;
    let reference = field(&html, "ref");
    ehr::cds::register(&app.auth, &ehr::cds::CdsEndpoint { url: format!("{base}/moved?tenant=t1"), ..endpoint.clone() }).await.unwrap();
    let answer = [("ref", reference.as_str()), ("card", "0"), ("action", "override"), ("reason", "0"), ("comment", "Repeat today")];
    assert_eq!(post_form(&app, &cookie, &cards, &csrf, &answer).await.0, 303);
    let audit = audited(&app, "cds-feedback", 4).await;
    assert!(audit.iter().any(|a| a.contains("no longer enabled at the address that sent the card")), "{audit:?}");
    assert_eq!(calls(&seen, "feedback").len(), 3, "nothing more was sent");
}
