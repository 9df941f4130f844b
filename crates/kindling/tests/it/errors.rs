use crate::{ids, spawn_app};
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
    assert_outcome(app.client.patch(app.url("Patient")).send().await.unwrap(), 405).await;
    assert_outcome(app.client.patch(app.url("Patient/1")).send().await.unwrap(), 415).await;
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
    let r = app
        .client
        .put(app.url("Patient/x"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "banana")
        .body(json!({"resourceType": "Patient", "id": "x"}).to_string())
        .send()
        .await
        .unwrap();
    assert_outcome(r, 400).await;
    // An If-Match that is not readable text is refused on every write that takes one, not taken as absent
    // (the write would then go through unconditionally); the resource stays as it was.
    let guarded = app.create(json!({"resourceType": "Patient", "name": [{"family": "Guarded"}]})).await;
    let path = format!("Patient/{}", guarded["id"].as_str().unwrap());
    let unreadable = reqwest::header::HeaderValue::from_bytes(b"W/\"1\xff\"").unwrap();
    let changed = json!({"resourceType": "Patient", "id": guarded["id"], "name": [{"family": "Changed"}]});
    let writes = [
        app.client.put(app.url(&path)).header("content-type", "application/fhir+json").body(changed.to_string()),
        app.client.patch(app.url(&path)).header("content-type", "application/json-patch+json").body(r#"[{"op": "remove", "path": "/name"}]"#),
        app.client.delete(app.url(&path)),
    ];
    for write in writes {
        let oo = assert_outcome(write.header("if-match", unreadable.clone()).send().await.unwrap(), 400).await;
        assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("If-Match"), "{oo}");
    }
    let (status, kept) = app.get_json(&path).await;
    assert_eq!((status, kept["name"][0]["family"].as_str()), (200, Some("Guarded")));
    // The same for If-None-Exist: no unconditional create.
    let unreadable = reqwest::header::HeaderValue::from_bytes(b"name=Guarded\xff").unwrap();
    let post = app.client.post(app.url("Patient")).header("content-type", "application/fhir+json").header("if-none-exist", unreadable);
    let oo = assert_outcome(post.body(json!({"resourceType": "Patient", "name": [{"family": "Guarded"}]}).to_string()).send().await.unwrap(), 400).await;
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("If-None-Exist"), "{oo}");
    assert_eq!(ids(&app.search("Patient?name=Guarded").await).len(), 1);
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

/// Limits that hold under abuse, each a clear 4xx with an OperationOutcome: an oversized body, JSON nested
/// past any resource's needs, a Bundle with more entries than a request may carry, a huge `_count`, a very
/// long query string.
#[tokio::test]
async fn limits_hold_under_abuse() {
    let app = spawn_app().await;
    // 64 MiB is the most a request body may hold.
    let big = format!("{{\"resourceType\":\"Patient\",\"text\":{{\"div\":\"{}\"}}}}", "x".repeat(65 * 1024 * 1024));
    let r = app.client.post(app.url("Patient")).header("content-type", "application/fhir+json").body(big).send().await.unwrap();
    let oo = assert_outcome(r, 413).await;
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("64 MiB"), "{oo}");
    // Nesting far deeper than any resource: refused, not a stack overflow.
    let deep = format!("{{\"resourceType\":\"Patient\",\"extension\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let r = app.client.post(app.url("Patient")).header("content-type", "application/fhir+json").body(deep).send().await.unwrap();
    assert_outcome(r, 400).await;
    let nested = (0..200).fold(json!("leaf"), |inner, _| json!({"extension": [{"url": "http://x", "valueString": "v"}], "x": inner}));
    let r = app
        .post_json("Basic", &json!({"resourceType": "Basic", "code": {"text": "deep"}, "extension": [{"url": "http://x", "valueString": nested.to_string()}]}))
        .await;
    assert_eq!(r.status(), 201, "deep content inside a string is only text");
    // A transaction or batch Bundle holds at most 10,000 entries.
    let entries: Vec<Value> = (0..10_001)
        .map(|i| json!({"resource": {"resourceType": "Basic", "code": {"text": format!("{i}")}}, "request": {"method": "POST", "url": "Basic"}}))
        .collect();
    let r = app.post_json("", &json!({"resourceType": "Bundle", "type": "batch", "entry": entries})).await;
    let oo = assert_outcome(r, 413).await;
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("10000"), "{oo}");
    // _count above the most a page holds is lowered to it, not refused and not obeyed.
    let (status, b) = app.get_json("Patient?_count=1000000").await;
    assert_eq!(status, 200);
    assert!(b["entry"].as_array().is_none_or(|e| e.len() <= 1000));
    // A query string of 60 KiB: answered (a search for a name nobody has), not a crash.
    let (status, b) = app.get_json(&format!("Patient?name={}", "a".repeat(60 * 1024))).await;
    assert!(status == 200 || status == 400 || status == 414, "{status}");
    if status != 200 {
        assert_eq!(b["resourceType"], "OperationOutcome");
    }
}

/// Header fields beyond 32 KiB in all are refused with 431 in the shape of the route they were sent to;
/// a request just under the limit is served.
#[tokio::test]
async fn oversized_headers_are_refused_in_each_routes_error_shape() {
    let app = spawn_app().await;
    let origin = app.base.strip_suffix("/fhir").unwrap().to_string();
    let big = "x".repeat(33 * 1024);
    let r = app.client.get(app.url("Patient")).header("x-padding", &big).send().await.unwrap();
    let oo = assert_outcome(r, 431).await;
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("32 KiB"), "{oo}");
    let r = app
        .client
        .post(format!("{origin}/auth/token"))
        .header("x-padding", &big)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 431);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    let r = app.client.get(format!("{origin}/ehr/login")).header("cookie", format!("a={big}")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 431);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("cookies"));
    // Just under the limit: served.
    let r = app.client.get(app.url("Patient?_count=1")).header("x-padding", "x".repeat(30 * 1024)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// Found on review: the token endpoint's repeat check was quadratic in the number of parameters, before
/// any client authentication. OAuth bodies are now at most 64 KiB and 64 parameters, refused in RFC 6749
/// JSON.
#[tokio::test]
async fn oversized_oauth_bodies_are_refused_as_oauth_errors() {
    let app = spawn_app().await;
    let origin = app.base.strip_suffix("/fhir").unwrap().to_string();
    let post =
        |path: &str, body: String| app.client.post(format!("{origin}{path}")).header("content-type", "application/x-www-form-urlencoded").body(body).send();
    // Over 64 KiB: 413 before the form is read.
    let huge: String = (0..20_000).map(|i| format!("k{i}=")).collect::<Vec<_>>().join("&");
    assert!(huge.len() > 64 * 1024);
    for path in ["/auth/token", "/auth/introspect", "/auth/revoke"] {
        let r = post(path, huge.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), 413, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{path}: {body}");
    }
    // Under it, but more parameters than any OAuth request has: 400.
    let many: String = (0..1_000).map(|i| format!("k{i}=")).collect::<Vec<_>>().join("&");
    let r = post("/auth/token", format!("grant_type=client_credentials&{many}")).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("at most 64 parameters"), "{body}");
}
