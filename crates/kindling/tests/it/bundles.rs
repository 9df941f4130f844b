use crate::{patient, spawn_app};
use serde_json::{Value, json};

#[tokio::test]
async fn transaction_resolves_urn_uuids_and_orders_entries() {
    let app = spawn_app().await;
    let existing = app.create(patient("Gone", "Soon", "male", "1950")).await;
    let gone_id = existing["id"].as_str().unwrap();
    let tx = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": "Patient?family=Trans"}},
            {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "hr"}, "subject": {"reference": "urn:uuid:22222222-2222-2222-2222-222222222222"}},
             "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
             "resource": patient("Trans", "Ann", "female", "1990"),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "id": "fixed-1", "gender": "other"}, "request": {"method": "PUT", "url": "Patient/fixed-1"}},
            {"request": {"method": "DELETE", "url": format!("Patient/{gone_id}")}}
        ]
    });
    let r = app.post_json("", &tx).await;
    assert_eq!(r.status(), 200);
    let resp: Value = r.json().await.unwrap();
    assert_eq!(resp["type"], "transaction-response");
    let entries = resp["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 5, "one response per request, in request order");
    assert!(entries[1]["response"]["status"].as_str().unwrap().starts_with("201"));
    assert!(entries[2]["response"]["status"].as_str().unwrap().starts_with("201"));
    assert!(entries[3]["response"]["status"].as_str().unwrap().starts_with("201"));
    assert!(entries[4]["response"]["status"].as_str().unwrap().starts_with("200"));
    // GET runs after the writes, so it sees the new patient.
    assert_eq!(entries[0]["resource"]["total"], 1);
    let patient_id = entries[2]["resource"]["id"].as_str().unwrap();
    assert_eq!(entries[1]["resource"]["subject"]["reference"], format!("Patient/{patient_id}"));
    let (status, _) = app.get_json(&format!("Patient/{gone_id}")).await;
    assert_eq!(status, 410);
}

#[tokio::test]
async fn transaction_is_all_or_nothing() {
    let app = spawn_app().await;
    let tx = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": patient("Atomic", "One", "female", "1990"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final"}, "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let r = app.post_json("", &tx).await;
    assert_eq!(r.status(), 422, "the invalid Observation (no code) fails the whole transaction");
    let oo: Value = r.json().await.unwrap();
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("entry 1"));
    let b = app.search("Patient?family=Atomic").await;
    assert_eq!(b["total"], 0, "nothing of the failed transaction was stored");
}

#[tokio::test]
async fn conditional_references_and_if_none_exist_in_transactions() {
    let app = spawn_app().await;
    app.create(patient("Cref", "Ida", "female", "1960")).await;
    let tx = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:33333333-3333-3333-3333-333333333333",
             "resource": patient("Cref", "Ida", "female", "1960"),
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:test:mrn|Cref-Ida"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient?identifier=urn:test:mrn|Cref-Ida"}},
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "y"}, "subject": {"reference": "urn:uuid:33333333-3333-3333-3333-333333333333"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let r = app.post_json("", &tx).await;
    assert_eq!(r.status(), 200);
    let resp: Value = r.json().await.unwrap();
    assert!(resp["entry"][0]["response"]["status"].as_str().unwrap().starts_with("200"), "existing patient reused");
    let pid = resp["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(resp["entry"][1]["resource"]["subject"]["reference"], format!("Patient/{pid}"));
    assert_eq!(resp["entry"][2]["resource"]["subject"]["reference"], format!("Patient/{pid}"));
    assert_eq!(app.search("Patient?family=Cref").await["total"], 1);
    let bad = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient?identifier=urn:test:mrn|nobody"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = app.post_json("", &bad).await;
    assert_eq!(r.status(), 412);
}

#[tokio::test]
async fn batch_reports_each_entry() {
    let app = spawn_app().await;
    let batch = json!({
        "resourceType": "Bundle", "type": "batch",
        "entry": [
            {"resource": patient("Batch", "Ok", "female", "1990"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final"}, "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            {"request": {"method": "GET", "url": "Patient?family=Batch"}}
        ]
    });
    let r = app.post_json("", &batch).await;
    assert_eq!(r.status(), 200);
    let resp: Value = r.json().await.unwrap();
    assert_eq!(resp["type"], "batch-response");
    let statuses: Vec<&str> = resp["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert!(statuses[0].starts_with("201"));
    assert!(statuses[1].starts_with("422"));
    assert!(statuses[2].starts_with("404"));
    assert!(statuses[3].starts_with("200"));
    assert_eq!(resp["entry"][1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(app.search("Patient?family=Batch").await["total"], 1, "the good entry was kept");
}

#[tokio::test]
async fn bundle_errors() {
    let app = spawn_app().await;
    for body in [
        json!({"resourceType": "Patient"}),
        json!({"resourceType": "Bundle", "type": "collection"}),
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient"}}]}),
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "FETCH", "url": "Patient"}}]}),
    ] {
        let r = app.post_json("", &body).await;
        assert_eq!(r.status(), 400, "{body}");
        let oo: Value = r.json().await.unwrap();
        assert_eq!(oo["resourceType"], "OperationOutcome");
    }
}

/// A large transaction: on PostgreSQL its index rows go in by COPY, whose text format has its own escapes.
/// Values with tabs, newlines, backslashes and the NULL marker `\N` come back as written, numbers too.
#[tokio::test]
async fn large_transaction_index_rows_keep_every_character() {
    let app = spawn_app().await;
    let odd = ["Tab\there", "New\nline", "Back\\slash", "\\N", "Carriage\rreturn", "Ünïcödé ✓"];
    let mut entries = Vec::new();
    for i in 0..300 {
        let family = format!("{}{i}", odd[i % odd.len()]);
        let patient_url = format!("urn:uuid:00000000-0000-0000-0000-{i:012}");
        entries.push(json!({"fullUrl": patient_url, "resource": patient(&family, "Copy", "female", "1990"), "request": {"method": "POST", "url": "Patient"}}));
        let mut obs = crate::observation("x", "vital-signs", "8867-4", "2020-01-01", i as f64 * 0.1 + 1e-9, "/min");
        obs["subject"] = json!({"reference": patient_url});
        entries.push(json!({"resource": obs, "request": {"method": "POST", "url": "Observation"}}));
    }
    let r = app.post_json("", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    assert_eq!(r.status(), 200);
    for i in [0, 1, 2, 3, 4, 5, 299] {
        let family = format!("{}{i}", odd[i % odd.len()]);
        let q: String = url::form_urlencoded::Serializer::new(String::new()).append_pair("family:exact", &family).finish();
        let b = app.search(&format!("Patient?{q}")).await;
        assert_eq!(b["total"], 1, "{family:?}");
        assert_eq!(b["entry"][0]["resource"]["name"][0]["family"], family.as_str());
        let id = b["entry"][0]["resource"]["id"].as_str().unwrap();
        assert_eq!(app.search(&format!("Observation?patient={id}&category=vital-signs")).await["total"], 1, "{family:?}");
    }
    assert_eq!(app.search("Patient?given=copy&_summary=count").await["total"], 300);
    assert_eq!(app.search("Observation?value-quantity=lt0.25&_summary=count").await["total"], 3);
    assert_eq!(app.search("Observation?value-quantity=29.9&_summary=count").await["total"], 1);
}
