use crate::{patient, spawn_app};
use serde_json::json;

#[tokio::test]
async fn create_read_vread_update_delete() {
    let app = spawn_app().await;
    let r = app.post_json("Patient", &patient("Smith", "Ann", "female", "1970-01-02")).await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&app.base) && location.ends_with("/_history/1"), "{location}");
    assert_eq!(r.headers()["etag"], "W/\"1\"");
    assert!(r.headers().contains_key("last-modified"));
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/fhir+json"));
    let created: serde_json::Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["meta"]["versionId"], "1");
    assert!(created["meta"]["lastUpdated"].is_string());

    let (status, read) = app.get_json(&format!("Patient/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(read, created);

    let mut changed = created.clone();
    changed["gender"] = json!("other");
    let r = app.put_json(&format!("Patient/{id}"), &changed).await;
    assert_eq!(r.status(), 200);
    let updated: serde_json::Value = r.json().await.unwrap();
    assert_eq!(updated["meta"]["versionId"], "2");

    let (status, v1) = app.get_json(&format!("Patient/{id}/_history/1")).await;
    assert_eq!(status, 200);
    assert_eq!(v1["gender"], "female");
    let (status, _) = app.get_json(&format!("Patient/{id}/_history/9")).await;
    assert_eq!(status, 404);

    let r = app.client.delete(app.url(&format!("Patient/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, oo) = app.get_json(&format!("Patient/{id}")).await;
    assert_eq!(status, 410);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    // Deleting again is fine (idempotent); the history still has every version.
    let r = app.client.delete(app.url(&format!("Patient/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, hist) = app.get_json(&format!("Patient/{id}/_history")).await;
    assert_eq!(hist["total"], 3);
    // Resurrect through update.
    let r = app.put_json(&format!("Patient/{id}"), &changed).await;
    assert_eq!(r.status(), 201);
    let back: serde_json::Value = r.json().await.unwrap();
    assert_eq!(back["meta"]["versionId"], "4");
}

#[tokio::test]
async fn update_as_create_and_id_mismatch() {
    let app = spawn_app().await;
    let mut p = patient("Jones", "Bo", "male", "1980");
    p["id"] = json!("chosen-id");
    let r = app.put_json("Patient/chosen-id", &p).await;
    assert_eq!(r.status(), 201);
    let r = app.put_json("Patient/other-id", &p).await;
    assert_eq!(r.status(), 400);
    let mut no_id = p.clone();
    no_id.as_object_mut().unwrap().remove("id");
    let r = app.put_json("Patient/chosen-id", &no_id).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn if_match_optimistic_locking() {
    let app = spawn_app().await;
    let created = app.create(patient("Lock", "Ed", "male", "1990")).await;
    let id = created["id"].as_str().unwrap();
    let send = |etag: &'static str, body: serde_json::Value| {
        app.client.put(app.url(&format!("Patient/{id}"))).header("content-type", "application/fhir+json").header("if-match", etag).body(body.to_string()).send()
    };
    let r = send("W/\"1\"", created.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = send("W/\"1\"", created.clone()).await.unwrap();
    assert_eq!(r.status(), 412, "stale version must conflict");
    let oo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    let r = send("W/\"2\"", created.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.client.delete(app.url(&format!("Patient/{id}"))).header("if-match", "W/\"1\"").send().await.unwrap();
    assert_eq!(r.status(), 412);
}

#[tokio::test]
async fn concurrent_if_match_updates_one_wins() {
    let app = spawn_app().await;
    let created = app.create(patient("Race", "Al", "male", "1990")).await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut handles = Vec::new();
    for i in 0..8 {
        let client = app.client.clone();
        let url = app.url(&format!("Patient/{id}"));
        let mut body = created.clone();
        body["name"][0]["given"] = json!([format!("Al{i}")]);
        handles.push(tokio::spawn(async move {
            client
                .put(url)
                .header("content-type", "application/fhir+json")
                .header("if-match", "W/\"1\"")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for h in handles {
        statuses.push(h.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 412).count(), 7, "{statuses:?}");
}

#[tokio::test]
async fn conditional_create_and_prefer() {
    let app = spawn_app().await;
    let p = patient("Cond", "Cy", "female", "1975");
    let r = app
        .client
        .post(app.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "identifier=urn:test:mrn|Cond-Cy")
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = app
        .client
        .post(app.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "identifier=urn:test:mrn|Cond-Cy")
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "an existing match is returned, not duplicated");
    let b = app.search("Patient?identifier=urn:test:mrn|Cond-Cy").await;
    assert_eq!(b["total"], 1);

    let r = app
        .client
        .post(app.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("location"));
    assert!(r.text().await.unwrap().is_empty());
    let r = app
        .client
        .post(app.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=OperationOutcome")
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let oo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    // Two matches now: If-None-Exist must refuse.
    let r = app
        .client
        .post(app.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "identifier=urn:test:mrn|Cond-Cy")
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
}

#[tokio::test]
async fn conditional_update_and_delete() {
    let app = spawn_app().await;
    let p = patient("Cu", "Di", "female", "1975");
    let r = app.put_json("Patient?identifier=urn:test:mrn|Cu-Di", &p).await;
    assert_eq!(r.status(), 201);
    let r = app.put_json("Patient?identifier=urn:test:mrn|Cu-Di", &p).await;
    assert_eq!(r.status(), 200);
    let b = app.search("Patient?identifier=urn:test:mrn|Cu-Di").await;
    assert_eq!(b["total"], 1);
    let r = app.client.delete(app.url("Patient?identifier=urn:test:mrn|Cu-Di")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let b = app.search("Patient?identifier=urn:test:mrn|Cu-Di").await;
    assert_eq!(b["total"], 0);
}

#[tokio::test]
async fn formats_pretty_gzip_and_etag_caching() {
    let app = spawn_app().await;
    let created = app.create(patient("Fmt", "Ev", "female", "1975")).await;
    let id = created["id"].as_str().unwrap();
    let r = app.client.get(app.url(&format!("Patient/{id}?_pretty=true"))).header("accept", "application/json").send().await.unwrap();
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    assert!(r.text().await.unwrap().contains("\n  \"resourceType\""));
    let r = app.client.get(app.url(&format!("Patient/{id}?_format=json"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.client.get(app.url(&format!("Patient/{id}?_format=xml"))).send().await.unwrap();
    assert_eq!(r.status(), 406);
    let r = app.client.get(app.url("metadata")).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let r = app.client.get(app.url(&format!("Patient/{id}"))).header("if-none-match", "W/\"1\"").send().await.unwrap();
    assert_eq!(r.status(), 304);
}

#[tokio::test]
async fn capability_statement_is_truthful() {
    let app = spawn_app().await;
    let (status, cs) = app.get_json("metadata").await;
    assert_eq!(status, 200);
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert!(cs["format"].as_array().unwrap().iter().any(|f| f == "json"));
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    let obs = resources.iter().find(|r| r["type"] == "Observation").unwrap();
    let names: Vec<&str> = obs["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for n in ["patient", "subject", "category", "code", "date", "status", "_id", "_lastUpdated"] {
        assert!(names.contains(&n), "{n}");
    }
    // Every advertised search parameter of every type is accepted by the server.
    for r in resources.iter().filter(|r| r["type"] == "Patient" || r["type"] == "Observation" || r["type"] == "MedicationRequest") {
        for p in r["searchParam"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            let value = match p["type"].as_str().unwrap() {
                "date" => "2020",
                "quantity" | "number" => "5",
                "reference" => "x1",
                _ => "x",
            };
            let (status, body) = app.get_json(&format!("{}?{name}={value}", r["type"].as_str().unwrap())).await;
            assert_eq!(status, 200, "{}.{name}: {body}", r["type"]);
        }
    }
    assert!(resources.iter().all(|r| r["type"] != "Bundle" && r["type"] != "OperationOutcome"));
    // The open sandbox enforces no tokens and says so by stating no security.
    assert!(cs["rest"][0].get("security").is_none());
}

/// With tokens enforced, the statement names the SMART authorisation server (the `oauth-uris` extension
/// that clients reading only `/metadata` rely on), the same endpoints as `.well-known/smart-configuration`,
/// and the US Core profiles; it is readable without a token.
#[tokio::test]
async fn capability_statement_states_smart_security_and_us_core_profiles() {
    let app = crate::spawn_secured_app().await;
    let cs: serde_json::Value = app.client.get(app.url("metadata")).send().await.unwrap().json().await.unwrap();
    let smart: serde_json::Value = app.client.get(app.url(".well-known/smart-configuration")).send().await.unwrap().json().await.unwrap();
    let security = &cs["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let uris = security["extension"][0]["extension"].as_array().unwrap();
    let uri = |name: &str| uris.iter().find(|e| e["url"] == name).map(|e| e["valueUri"].clone()).unwrap();
    assert_eq!(uri("authorize"), smart["authorization_endpoint"]);
    assert_eq!(uri("token"), smart["token_endpoint"]);
    assert_eq!(uri("revoke"), smart["revocation_endpoint"]);
    assert_eq!(uri("introspect"), smart["introspection_endpoint"]);
    assert_eq!(uri("register"), smart["registration_endpoint"]);
    let patient = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").unwrap();
    assert_eq!(patient["supportedProfile"][0], "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|6.1.0");
    assert_eq!(cs["instantiates"][0], "http://hl7.org/fhir/us/core/CapabilityStatement/us-core-server");
}

/// Many reads at once (on PostgreSQL they are answered together by one statement): each gets its own
/// resource, unknown ids get 404 and deleted ones 410, and a write is seen by every read asked after it.
#[tokio::test]
async fn concurrent_reads_each_get_their_own_answer() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let p = app.create(patient(&format!("Many{i}"), "Read", "female", "1980-01-01")).await;
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    let gone = ids.pop().unwrap();
    assert_eq!(app.client.delete(app.url(&format!("Patient/{gone}"))).send().await.unwrap().status(), 200);
    let mut asks: Vec<(String, u16, Option<String>)> = Vec::new();
    for round in 0..6 {
        for (i, id) in ids.iter().enumerate() {
            asks.push((format!("Patient/{id}"), 200, Some(format!("Many{i}"))));
        }
        asks.push((format!("Patient/unknown-{round}"), 404, None));
        asks.push((format!("Patient/{gone}"), 410, None));
        asks.push((format!("Observation/{}", ids[0]), 404, None));
    }
    let answers = get_all(&app, asks.iter().map(|(path, _, _)| path.clone()).collect()).await;
    for ((path, status, family), (got, body)) in asks.iter().zip(answers) {
        assert_eq!(got, *status, "{path}: {body}");
        if let Some(f) = family {
            assert_eq!(body["name"][0]["family"], f.as_str(), "{path}");
        }
    }
    // Read after write, while other reads are in flight.
    let (_, mut p) = app.get_json(&format!("Patient/{}", ids[1])).await;
    p["gender"] = json!("other");
    assert_eq!(app.put_json(&format!("Patient/{}", ids[1]), &p).await.status(), 200);
    let answers = get_all(&app, (0..40).map(|i| format!("Patient/{}", ids[i % ids.len()])).collect()).await;
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200);
        if i % ids.len() == 1 {
            assert_eq!(body["gender"], "other");
            assert_eq!(body["meta"]["versionId"], "2");
        }
    }
}

/// GETs `paths` all at once (each on its own task) and returns (status, JSON body) in order.
async fn get_all(app: &crate::TestApp, paths: Vec<String>) -> Vec<(u16, serde_json::Value)> {
    let tasks: Vec<_> = paths
        .into_iter()
        .map(|path| {
            let (client, url) = (app.client.clone(), app.url(&path));
            tokio::spawn(async move {
                let r = client.get(url).send().await.expect("request");
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or_default())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

async fn patch(app: &crate::TestApp, path: &str, content_type: &str, body: &serde_json::Value, if_match: Option<&str>) -> reqwest::Response {
    let mut r = app.client.patch(app.url(path)).header("content-type", content_type).body(body.to_string());
    if let Some(v) = if_match {
        r = r.header("if-match", v);
    }
    r.send().await.unwrap()
}

/// `PATCH` with a JSON Patch: applied to the current version and written as an update (new version,
/// validation, `If-Match`); malformed patches, failed tests and id changes are refused with their reason.
#[tokio::test]
async fn json_patch_updates_a_resource() {
    let app = spawn_app().await;
    let created: serde_json::Value = app.post_json("Patient", &patient("Smith", "Ann", "female", "1970-01-02")).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("Patient/{id}");
    let ops = json!([
        {"op": "test", "path": "/gender", "value": "female"},
        {"op": "replace", "path": "/birthDate", "value": "1970-01-03"},
        {"op": "add", "path": "/telecom", "value": [{"system": "phone", "value": "555-0100", "use": "home"}]},
        {"op": "add", "path": "/name/0/given/-", "value": "Marie"}
    ]);
    let r = patch(&app, &path, "application/json-patch+json", &ops, Some("W/\"1\"")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "W/\"2\"");
    let (status, read) = app.get_json(&path).await;
    assert_eq!(status, 200);
    assert_eq!(read["birthDate"], "1970-01-03");
    assert_eq!(read["telecom"][0]["value"], "555-0100");
    assert_eq!(read["name"][0]["given"], json!(["Ann", "Marie"]));
    assert_eq!(read["meta"]["versionId"], "2");
    // Without If-Match it applies to whatever is current.
    let r = patch(&app, &path, "application/json-patch+json", &json!([{"op": "remove", "path": "/telecom"}]), None).await;
    assert_eq!(r.status(), 200);
    assert!(app.get_json(&path).await.1.get("telecom").is_none());

    for (content_type, body, if_match, status, says) in [
        ("application/json-patch+json", json!([{"op": "remove", "path": "/gender"}]), Some("W/\"1\""), 412, "version"),
        ("application/fhir+json", json!([{"op": "remove", "path": "/gender"}]), None, 415, "json-patch"),
        ("application/json-patch+json", json!({"op": "remove", "path": "/gender"}), None, 400, "array"),
        ("application/json-patch+json", json!([{"op": "remove", "path": "/deceasedBoolean"}]), None, 422, "does not exist"),
        ("application/json-patch+json", json!([{"op": "test", "path": "/gender", "value": "male"}]), None, 422, "test"),
        ("application/json-patch+json", json!([{"op": "replace", "path": "/id", "value": "other"}]), None, 422, "type or id"),
        ("application/json-patch+json", json!([{"op": "replace", "path": "/gender", "value": 7}]), None, 422, "gender"),
    ] {
        let r = patch(&app, &path, content_type, &body, if_match).await;
        assert_eq!(r.status(), status, "{body}");
        let text = r.text().await.unwrap();
        assert!(text.contains("OperationOutcome") && text.contains(says), "{body}: {text}");
    }
    assert_eq!(app.get_json(&path).await.1["meta"]["versionId"], "3", "no refused patch wrote anything");
    assert_eq!(patch(&app, "Patient/nobody", "application/json-patch+json", &json!([]), None).await.status(), 404);
    // A patch that leaves the resource invalid is refused like such an update.
    let obs: serde_json::Value =
        app.post_json("Observation", &crate::observation(&id, "vital-signs", "8867-4", "2020-01-01", 70.0, "/min")).await.json().await.unwrap();
    let r = patch(
        &app,
        &format!("Observation/{}", obs["id"].as_str().unwrap()),
        "application/json-patch+json",
        &json!([{"op": "remove", "path": "/status"}]),
        None,
    )
    .await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("status"));
}

/// `PATCH` under a token: as an update, judged on the resource before and after — a read-only token, a
/// patient token on another patient's record, and a granular token moving a result out of its category are
/// refused, and nothing is written.
#[tokio::test]
async fn json_patch_is_held_to_the_tokens_update_rules() {
    let app = crate::spawn_secured_app().await;
    kindling::seed(&app.app_state, 2, 5).await.unwrap();
    let client = auth::model::Client {
        client_id: "patcher".into(),
        name: "Patcher".into(),
        kind: auth::model::ClientKind::Public,
        secret_hash: None,
        redirect_uris: vec!["https://patcher.example/cb".into()],
        launch_url: None,
        allowed_scope: "launch/patient openid fhirUser patient/*.cruds user/*.cruds user/*.rs patient/*.rs".into(),
        jwks: None,
        jwks_url: None,
        icon: None,
        disabled: false,
        profile: None,
        self_registered: false,
    };
    auth::registry::put_client(app.auth.store.as_ref(), client).await.unwrap();
    auth::registry::put_user(app.auth.store.as_ref(), "doc", "Doc", auth::model::UserRole::Clinician, "long-enough-1", "Practitioner/doc").await.unwrap();
    let token = async |patient: Option<&str>, scope: &str| {
        auth::operator_tokens(&app.auth, "patcher", "doc", patient, scope).await.unwrap()["access_token"].as_str().unwrap().to_string()
    };
    let (ann, bob) = (synth::patient_id(5, 0), synth::patient_id(5, 1));
    let vital = {
        let r = app
            .client
            .get(app.url(&format!("Observation?patient={bob}&category=vital-signs&_count=1")))
            .bearer_auth(token(None, "user/*.rs").await)
            .send()
            .await
            .unwrap();
        let b: serde_json::Value = r.json().await.unwrap();
        b["entry"][0]["resource"]["id"].as_str().unwrap().to_string()
    };
    let send = async |token: &str, path: &str, ops: serde_json::Value| {
        app.client
            .patch(app.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json-patch+json")
            .body(ops.to_string())
            .send()
            .await
            .unwrap()
            .status()
    };
    let gender = json!([{"op": "replace", "path": "/gender", "value": "unknown"}]);
    assert_eq!(send(&token(None, "user/*.rs").await, &format!("Patient/{bob}"), gender.clone()).await, 403, "read-only");
    assert_eq!(send(&token(Some(&ann), "patient/*.cruds").await, &format!("Patient/{bob}"), gender.clone()).await, 403, "another patient");
    let to_lab = json!([{"op": "replace", "path": "/category/0/coding/0/code", "value": "laboratory"}]);
    let vitals_only = token(None, "user/Observation.cruds?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs").await;
    assert_eq!(send(&vitals_only, &format!("Observation/{vital}"), to_lab).await, 403, "out of the granted category");
    let stored = app.app_state.store.read("Observation", &vital).await.unwrap().unwrap();
    assert_eq!(stored.version, 1, "nothing written");
    let note = json!([{"op": "add", "path": "/note", "value": [{"text": "checked"}]}]);
    assert_eq!(send(&vitals_only, &format!("Observation/{vital}"), note).await, 200, "within the category");
    assert_eq!(send(&token(Some(&bob), "patient/*.cruds").await, &format!("Patient/{bob}"), gender).await, 200, "the patient's own record");
}

/// PATCH entries in Bundles: the JSON Patch as a Binary (`application/json-patch+json`), applied in a
/// transaction after the creates (references to their `fullUrl`s rewritten inside the patch), and on its
/// own in a batch; a failed test fails the transaction whole and only its entry in a batch.
#[tokio::test]
async fn json_patch_entries_in_transactions_and_batches() {
    use base64::Engine as _;
    let app = spawn_app().await;
    let created: serde_json::Value = app.post_json("Patient", &patient("Smith", "Ann", "female", "1970-01-02")).await.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let binary = |ops: serde_json::Value| {
        json!({"resourceType": "Binary", "contentType": "application/json-patch+json",
               "data": base64::engine::general_purpose::STANDARD.encode(ops.to_string())})
    };
    let entry = |ops: serde_json::Value| json!({"resource": binary(ops), "request": {"method": "PATCH", "url": format!("Patient/{id}")}});
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(json!([{"op": "add", "path": "/generalPractitioner", "value": [{"reference": "urn:uuid:9d1e4a2c-0000-4000-8000-000000000001"}]}])),
        {"fullUrl": "urn:uuid:9d1e4a2c-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Practitioner", "name": [{"family": "Okafor"}]},
         "request": {"method": "POST", "url": "Practitioner"}}
    ]});
    let r = app.post_json("", &transaction).await;
    assert_eq!(r.status(), 200);
    let response: serde_json::Value = r.json().await.unwrap();
    assert!(response["entry"][0]["response"]["status"].as_str().unwrap().starts_with("200"), "{response}");
    let practitioner = response["entry"][1]["response"]["location"].as_str().unwrap().split("/_history").next().unwrap().to_string();
    let (_, read) = app.get_json(&format!("Patient/{id}")).await;
    assert_eq!(read["generalPractitioner"][0]["reference"], practitioner.as_str(), "the fullUrl inside the patch was rewritten");
    assert_eq!(read["meta"]["versionId"], "2");

    // A failed test fails the whole transaction; nothing of it stays.
    let failing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Practitioner", "name": [{"family": "Never"}]}, "request": {"method": "POST", "url": "Practitioner"}},
        entry(json!([{"op": "replace", "path": "/gender", "value": "other"}, {"op": "test", "path": "/gender", "value": "male"}])),
    ]});
    let r = app.post_json("", &failing).await;
    assert_eq!(r.status(), 422);
    assert_eq!(app.get_json(&format!("Patient/{id}")).await.1["gender"], "female");
    assert_eq!(app.get_json("Practitioner?family=Never").await.1["total"], 0);
    // Two entries writing one resource: the transaction fails (FHIR), whatever they would do.
    let twice = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(json!([{"op": "replace", "path": "/gender", "value": "other"}])),
        entry(json!([{"op": "replace", "path": "/gender", "value": "male"}])),
    ]});
    let r = app.post_json("", &twice).await;
    assert_eq!(r.status(), 400);
    let outcome: serde_json::Value = r.json().await.unwrap();
    assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("is written by more than one entry"), "{outcome}");
    assert_eq!(app.get_json(&format!("Patient/{id}")).await.1["gender"], "female");
    // A conditional DELETE's match counts: deleting and writing back one resource in one transaction fails.
    let (_, patient) = app.get_json(&format!("Patient/{id}")).await;
    let both = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": format!("Patient?_id={id}")}},
        {"resource": patient, "request": {"method": "PUT", "url": format!("Patient/{id}")}},
    ]});
    assert_eq!(app.post_json("", &both).await.status(), 400);
    assert_eq!(app.get_json(&format!("Patient/{id}")).await.0, 200, "nothing of it ran");

    // A PATCH entry whose Binary is not a JSON Patch is refused (415) before anything runs.
    let other = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Binary", "contentType": "application/fhir+json", "data": "e30="}, "request": {"method": "PATCH", "url": format!("Patient/{id}")}},
    ]});
    assert_eq!(app.post_json("", &other).await.status(), 415);
    // In a batch each entry stands alone.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        entry(json!([{"op": "replace", "path": "/gender", "value": "other"}])),
        entry(json!([{"op": "test", "path": "/gender", "value": "male"}])),
    ]});
    let r = app.post_json("", &batch).await;
    assert_eq!(r.status(), 200);
    let response: serde_json::Value = r.json().await.unwrap();
    let statuses: Vec<&str> = response["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert!(statuses[0].starts_with("200") && statuses[1].starts_with("422"), "{statuses:?}");
    assert_eq!(app.get_json(&format!("Patient/{id}")).await.1["gender"], "other");
}
