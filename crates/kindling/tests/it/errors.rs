use crate::spawn_app;
use serde_json::{Value, json};

async fn assert_outcome(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status().as_u16(), status);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/fhir+json"), "{ct}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    let text = body.to_string();
    for leak in ["SELECT", "sqlite", "sp_token", "/tmp/", "panicked"] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
    body
}

#[tokio::test]
async fn every_error_is_an_operation_outcome() {
    let app = spawn_app().await;
    assert_outcome(app.get("Patient/unknown").await, 404).await;
    assert_outcome(app.get("Nonsense/1").await, 404).await;
    assert_outcome(app.get("Patient/bad id!").await, 400).await;
    assert_outcome(app.get("nothing/here/at/all/really").await, 404).await;
    assert_outcome(app.client.patch(app.url("Patient/1")).send().await.unwrap(), 405).await;
    assert_outcome(app.client.delete(app.url("metadata")).send().await.unwrap(), 405).await;
    let r = app.client.post(app.url("Patient")).header("content-type", "application/fhir+json").body("{not json").send().await.unwrap();
    assert_outcome(r, 400).await;
    let r = app.client.post(app.url("Patient")).header("content-type", "application/xml").body("<Patient/>").send().await.unwrap();
    assert_outcome(r, 415).await;
    let r = app.post_json("Patient", &json!([1, 2])).await;
    assert_outcome(r, 422).await;
    let r = app.post_json("Patient", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})).await;
    assert_outcome(r, 422).await;
    let r = app.post_json("Observation", &json!({"resourceType": "Observation", "status": "final"})).await;
    let oo = assert_outcome(r, 422).await;
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("code"));
    let r = app.post_json("Patient", &json!({"resourceType": "Patient", "birthDate": "not-a-date"})).await;
    assert_outcome(r, 422).await;
    let r = app.post_json("Patient", &json!({"resourceType": "Patient", "name": []})).await;
    assert_outcome(r, 422).await;
    let r = app.client.put(app.url("Patient/x")).header("content-type", "application/fhir+json").header("if-match", "banana").body(json!({"resourceType": "Patient", "id": "x"}).to_string()).send().await.unwrap();
    assert_outcome(r, 400).await;
    assert_outcome(app.get("Patient?_getpages=nope").await, 400).await;
    assert_outcome(app.get("?_getpages=nope").await, 410).await;
    assert_outcome(app.get("Patient/x/_history/abc").await, 400).await;
    // Bodies that are JSON but not objects, on every write path, and absurd paging offsets: clear errors, no crash.
    let r = app.client.put(app.url("Observation?_id=x")).header("content-type", "application/fhir+json").body("[1]").send().await.unwrap();
    assert_outcome(r, 422).await;
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": [1], "request": {"method": "PUT", "url": "Observation?_id=x"}}]});
    let r = app.post_json("", &tx).await;
    assert!(r.status().is_client_error());
    let (status, _) = app.get_json("Patient/_history?_getpagesoffset=18446744073709551615").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn cors_and_health() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("metadata")).header("origin", "https://app.example").send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("Patient"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let root = app.base.trim_end_matches("/fhir").to_string();
    assert_eq!(app.client.get(format!("{root}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(app.client.get(format!("{root}/readyz")).send().await.unwrap().status(), 200);
}
