//! Bulk Data `$export` (issue 20) over HTTP with backend-services tokens: kick-off, status, files, access
//! and cancel, on SQLite and (in the suite's second run) PostgreSQL.

use crate::{TestApp, spawn_secured_app};
use auth::model::{Client, ClientKind};
use serde_json::{Value, json};

const SEED: u64 = 3;

/// Registers a backend client allowed `scope` and returns a `client_credentials` token for it.
async fn backend_token(app: &TestApp, client_id: &str, scope: &str) -> String {
    let key = register_backend(app, client_id, scope).await;
    let token_url = format!("{}/auth/token", app.base.trim_end_matches("/fhir"));
    let assertion = key.client_assertion(client_id, &token_url).unwrap();
    let form = [
        ("grant_type", "client_credentials"),
        ("scope", scope),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion.as_str()),
    ];
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let r = app.client.post(&token_url).header("content-type", "application/x-www-form-urlencoded").body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
}

/// Registers a backend client allowed `scope`; returns its key.
async fn register_backend(app: &TestApp, client_id: &str, scope: &str) -> client::SigningKey {
    let key = client::SigningKey::generate_es384("k1");
    let client = Client {
        client_id: client_id.into(),
        name: client_id.into(),
        kind: ClientKind::ConfidentialAsymmetric,
        secret_hash: None,
        redirect_uris: Vec::new(),
        launch_url: None,
        allowed_scope: scope.into(),
        jwks: Some(json!({"keys": [key.public_jwk()]})),
        jwks_url: None,
        icon: None,
        disabled: false,
        profile: None,
        self_registered: false,
    };
    auth::registry::put_client(app.auth.store.as_ref(), client).await.unwrap();
    key
}

/// The access of a `system/*.rs` backend token of `client_id`, for calls made in-process (past a token's expiry).
fn system_access(client_id: &str) -> api::access::Access {
    api::access::Access::Token(std::sync::Arc::new(api::access::TokenAccess {
        client_id: client_id.into(),
        scopes: smart::ScopeSet::parse("system/*.rs"),
        patient: None,
        fhir_user: None,
        launch: None,
        faults: None,
        vendor: None,
        audience: None,
    }))
}

async fn kick_off(app: &TestApp, token: &str, path: &str, prefer: &str) -> reqwest::Response {
    app.client.get(app.url(path)).bearer_auth(token).header("prefer", prefer).header("accept", "application/fhir+json").send().await.unwrap()
}

/// Kicks off, expects 202, and returns the manifest from the status URL.
async fn export(app: &TestApp, token: &str, path: &str) -> (String, Value) {
    let r = kick_off(app, token, path, "respond-async").await;
    assert_eq!(r.status(), 202, "{path}: {}", r.text().await.unwrap());
    let status_url = r.headers()["content-location"].to_str().unwrap().to_string();
    let manifest = poll(app, token, &status_url).await;
    (status_url, manifest)
}

/// Polls a status URL until the export is complete (202 with X-Progress and Retry-After until then).
async fn poll(app: &TestApp, token: &str, status_url: &str) -> Value {
    for _ in 0..500 {
        let r = app.client.get(status_url).bearer_auth(token).send().await.unwrap();
        if r.status() == 202 {
            assert!(r.headers().contains_key("x-progress") && r.headers().contains_key("retry-after"));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        }
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("expires"));
        return r.json().await.unwrap();
    }
    panic!("the export at {status_url} did not complete");
}

/// Downloads a file of the manifest: its resources.
async fn download(app: &TestApp, token: &str, url: &str) -> Vec<Value> {
    let r = app.client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    assert_eq!(r.headers()["content-type"], "application/fhir+ndjson");
    r.text().await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn outputs<'a>(manifest: &'a Value, ty: &str) -> Vec<&'a Value> {
    manifest["output"].as_array().unwrap().iter().filter(|o| o["type"] == ty).collect()
}

async fn live_count(app: &TestApp, ty: &str) -> usize {
    app.app_state.store.counts().await.unwrap().into_iter().find(|(t, _)| t == ty).map_or(0, |(_, n)| n as usize)
}

#[tokio::test]
async fn a_system_export_is_kicked_off_polled_downloaded_and_cancelled() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 2, SEED).await.unwrap();
    let token = backend_token(&app, "exporter", "system/*.rs").await;

    // Stated in the CapabilityStatement, at each level.
    let cs: Value = app.client.get(app.url("metadata")).send().await.unwrap().json().await.unwrap();
    assert!(cs["instantiates"].to_string().contains("bulkdata/CapabilityStatement/bulk-data"));
    assert_eq!(cs["rest"][0]["operation"][0]["definition"], "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export");
    for (ty, definition) in [("Patient", "patient-export"), ("Group", "group-export")] {
        let r = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == ty).unwrap();
        assert!(r["operation"].to_string().contains(definition), "{ty}: {r}");
    }

    // Refusals, each with its reason.
    let r = kick_off(&app, &token, "$export", "").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("respond-async"));
    for (query, says) in [
        ("_outputFormat=text/csv", "_outputFormat"),
        ("_type=Nonsense", "Nonsense"),
        ("_since=yesterday", "_since"),
        ("includeAssociatedData=LatestProvenanceResources", "handling=lenient"),
    ] {
        let r = kick_off(&app, &token, &format!("$export?{query}"), "respond-async").await;
        assert_eq!(r.status(), 400, "{query}");
        let oo: Value = r.json().await.unwrap();
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert!(oo.to_string().contains(says), "{query}: {oo}");
    }
    let r = kick_off(&app, &token, "$export?includeAssociatedData=LatestProvenanceResources", "respond-async, handling=lenient").await;
    assert_eq!(r.status(), 202);
    let r = app.client.get(app.url("$export")).header("prefer", "respond-async").send().await.unwrap();
    assert_eq!(r.status(), 401, "a token is needed");

    // Every type with data, each file as many resources as the manifest says, each of its type.
    let (status_url, manifest) = export(&app, &token, "$export?_outputFormat=application/fhir%2Bndjson").await;
    assert_eq!(manifest["requiresAccessToken"], true);
    assert!(manifest["request"].as_str().unwrap().ends_with("/fhir/$export?_outputFormat=application/fhir%2Bndjson"));
    assert!(manifest["transactionTime"].as_str().unwrap().contains('T'));
    for ty in ["Patient", "Observation", "Condition", "Encounter", "Practitioner"] {
        let files = outputs(&manifest, ty);
        assert_eq!(files.len(), 1, "{ty}: {manifest}");
        let resources = download(&app, &token, files[0]["url"].as_str().unwrap()).await;
        assert_eq!(resources.len(), files[0]["count"].as_u64().unwrap() as usize, "{ty}");
        assert_eq!(resources.len(), live_count(&app, ty).await, "{ty}");
        assert!(resources.iter().all(|r| r["resourceType"] == ty));
    }
    let file = outputs(&manifest, "Patient")[0]["url"].as_str().unwrap().to_string();
    assert_eq!(app.client.get(&file).send().await.unwrap().status(), 401, "files need the token");
    // Compressed on request (the body streams through gzip to its end).
    let r = app.client.get(&file).bearer_auth(&token).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&r.bytes().await.unwrap()[..]), &mut text).unwrap();
    assert_eq!(text.lines().count(), live_count(&app, "Patient").await);

    // Another client sees neither the job nor its files.
    let other = backend_token(&app, "someone-else", "system/*.rs").await;
    assert_eq!(app.client.get(&status_url).bearer_auth(&other).send().await.unwrap().status(), 404);
    assert_eq!(app.client.get(&file).bearer_auth(&other).send().await.unwrap().status(), 404);
    assert_eq!(app.client.delete(&status_url).bearer_auth(&other).send().await.unwrap().status(), 404);

    // The client's grants shrink: a file of a type it may no longer read is refused, the others served.
    let narrower = backend_token(&app, "exporter", "system/Patient.rs").await;
    let observations = outputs(&manifest, "Observation")[0]["url"].as_str().unwrap().to_string();
    assert_eq!(app.client.get(&observations).bearer_auth(&narrower).send().await.unwrap().status(), 403);
    assert_eq!(app.client.get(&file).bearer_auth(&narrower).send().await.unwrap().status(), 200);
    // ... down to a category: only the resources of that category are served from the old job's file.
    let all = download(&app, &token, &observations).await;
    let vitals = backend_token(&app, "exporter", "system/Observation.rs?category=vital-signs").await;
    let served = download(&app, &vitals, &observations).await;
    let is_vital = |o: &&Value| o["category"].to_string().contains("\"vital-signs\"");
    assert!(!served.is_empty() && served.len() < all.len(), "{} of {}", served.len(), all.len());
    assert_eq!(served.len(), all.iter().filter(is_vital).count());
    assert!(served.iter().all(|o| is_vital(&o)), "only vital signs");

    // Cancelled: gone, files too.
    assert_eq!(app.client.delete(&status_url).bearer_auth(&token).send().await.unwrap().status(), 202);
    assert_eq!(app.client.get(&status_url).bearer_auth(&token).send().await.unwrap().status(), 404);
    assert_eq!(app.client.get(&file).bearer_auth(&token).send().await.unwrap().status(), 404);
    let job = status_url.rsplit('/').next().unwrap();
    let kept = app.app_state.store.auth_list("bulk_export_keys").await.unwrap();
    assert!(!kept.iter().any(|(key, _)| key.starts_with(job)), "a cancelled job's file keys go with it");

    // Expired an hour after the kick-off (asked in-process: the token has expired by then too).
    let (status_url, _) = export(&app, &token, "$export?_type=Patient").await;
    let job = status_url.rsplit('/').next().unwrap().to_string();
    let exporter = system_access("exporter");
    assert_eq!(api::export::status(&app.app_state, &exporter, &job).await.unwrap().status(), 200);
    app.clock.advance(time::Duration::minutes(61));
    assert_eq!(api::export::status(&app.app_state, &exporter, &job).await.unwrap_err().status, 404);
}

#[tokio::test]
async fn files_hold_resources_as_they_were_at_the_transaction_time_and_since_filters() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 2, SEED).await.unwrap();
    let token = backend_token(&app, "exporter", "system/*.rs").await;
    let (_, manifest) = export(&app, &token, "$export?_type=Patient").await;
    let since = manifest["transactionTime"].as_str().unwrap().to_string();

    // Changed after the kick-off: the file still holds the version current at its transaction time.
    app.clock.advance(time::Duration::seconds(5));
    let first = synth::patient_id(SEED, 0);
    let second = synth::patient_id(SEED, 1);
    let current = app.app_state.store.read("Patient", &first).await.unwrap().unwrap();
    let mut v: Value = serde_json::from_str(&current.json).unwrap();
    v["gender"] = json!("unknown");
    let mut tx = app.app_state.store.begin().await.unwrap();
    api::ops::update(&app.app_state, &mut *tx, "Patient", &first, v, None).await.unwrap();
    tx.commit().await.unwrap();
    let patients = download(&app, &token, outputs(&manifest, "Patient")[0]["url"].as_str().unwrap()).await;
    let exported = patients.iter().find(|p| p["id"] == first.as_str()).unwrap();
    assert_ne!(exported["gender"], "unknown", "the version of the transaction time");
    assert_eq!(exported["meta"]["versionId"], "1");
    assert!(patients.iter().any(|p| p["id"] == second.as_str()));

    // _since: only what changed after it.
    let (_, later) = export(&app, &token, &format!("$export?_type=Patient,Observation&_since={}", since.replace('+', "%2B"))).await;
    let files = outputs(&later, "Patient");
    assert_eq!(files.len(), 1, "{later}");
    assert_eq!(files[0]["count"], 1);
    let patients = download(&app, &token, files[0]["url"].as_str().unwrap()).await;
    assert_eq!(patients[0]["gender"], "unknown");
    assert!(outputs(&later, "Observation").is_empty(), "no observation changed: {later}");
    assert_eq!(later["deleted"], json!([]), "nothing deleted yet");

    // Deleted since: listed in `deleted` as transaction Bundles of DELETE requests, not in the output.
    app.clock.advance(time::Duration::seconds(5));
    let found: Value = app
        .client
        .get(app.url(&format!("Observation?patient={first}&category=vital-signs&_count=1")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let observation = found["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
    let mut tx = app.app_state.store.begin().await.unwrap();
    api::ops::delete(&mut *tx, "Patient", &second, None).await.unwrap();
    api::ops::delete(&mut *tx, "Observation", &observation, None).await.unwrap();
    tx.commit().await.unwrap();
    app.clock.advance(time::Duration::seconds(5));
    let (_, latest) = export(&app, &token, &format!("$export?_type=Patient,Observation&_since={}", since.replace('+', "%2B"))).await;
    let patients = download(&app, &token, outputs(&latest, "Patient")[0]["url"].as_str().unwrap()).await;
    assert_eq!(patients.iter().map(|p| p["id"].as_str().unwrap()).collect::<Vec<_>>(), [first.as_str()], "the deleted one is not exported");
    let deleted = latest["deleted"].as_array().unwrap();
    assert_eq!(deleted.len(), 2, "{latest}");
    let mut requests = Vec::new();
    for file in deleted {
        assert_eq!(file["type"], "Bundle");
        for bundle in download(&app, &token, file["url"].as_str().unwrap()).await {
            assert_eq!((bundle["resourceType"].as_str(), bundle["type"].as_str()), (Some("Bundle"), Some("transaction")));
            for e in bundle["entry"].as_array().unwrap() {
                assert_eq!(e["request"]["method"], "DELETE");
                requests.push(e["request"]["url"].as_str().unwrap().to_string());
            }
        }
    }
    requests.sort();
    assert_eq!(requests, [format!("Observation/{observation}"), format!("Patient/{second}")]);
    // A token that may read only laboratory observations is not told of a deleted vital sign.
    let lab = backend_token(
        &app,
        "lab-exporter",
        "system/Patient.rs system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
    )
    .await;
    let (_, labs) = export(&app, &lab, &format!("$export?_type=Observation&_since={}", since.replace('+', "%2B"))).await;
    assert_eq!(labs["deleted"], json!([]), "{labs}");
}

/// `_elements`: only the named top-level elements (per type or for all), the mandatory ones, and a
/// SUBSETTED tag; a malformed one is refused.
#[tokio::test]
async fn elements_subset_the_exported_resources() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 1, SEED).await.unwrap();
    let token = backend_token(&app, "subsetter", "system/*.rs").await;
    for bad in ["Patient.name.given", "Nonsense.id", "9lives", "Patient."] {
        let r = kick_off(&app, &token, &format!("$export?_type=Patient&_elements={bad}"), "respond-async").await;
        assert_eq!(r.status(), 400, "{bad}");
    }
    let (_, manifest) = export(&app, &token, "$export?_type=Patient,Observation&_elements=Patient.birthDate,subject").await;
    let patients = download(&app, &token, outputs(&manifest, "Patient")[0]["url"].as_str().unwrap()).await;
    assert!(!patients.is_empty());
    for p in &patients {
        assert!(p["birthDate"].is_string() && p["name"].is_null() && p["subject"].is_null(), "{p}");
        assert!(p["meta"]["tag"].to_string().contains("SUBSETTED"), "{p}");
    }
    let observations = download(&app, &token, outputs(&manifest, "Observation")[0]["url"].as_str().unwrap()).await;
    for o in &observations {
        // `subject` as asked (no type named), `status` and `code` as mandatory; the value is left out.
        assert!(o["subject"].is_object() && o["status"].is_string() && o["code"].is_object(), "{o}");
        assert!(o["valueQuantity"].is_null() && o["effectiveDateTime"].is_null() && o["birthDate"].is_null(), "{o}");
    }
}

#[tokio::test]
async fn patient_and_group_exports_hold_only_their_patients_and_scopes_decide_the_types() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 3, SEED).await.unwrap();
    let first = synth::patient_id(SEED, 0);
    let second = synth::patient_id(SEED, 1);
    let group = json!({"resourceType": "Group", "id": "panel", "type": "person", "actual": true,
                       "member": [{"entity": {"reference": format!("Patient/{first}")}}, {"entity": {"reference": format!("Patient/{second}")}, "inactive": true}]});
    api::bundle::process(
        &app.app_state,
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": group, "request": {"method": "PUT", "url": "Group/panel"}}]}),
    )
    .await
    .unwrap();
    let token = backend_token(&app, "exporter", "system/*.rs").await;

    // Group: its one active member's compartment.
    let (_, manifest) = export(&app, &token, "Group/panel/$export?_type=Patient,Condition,Practitioner").await;
    let patients = download(&app, &token, outputs(&manifest, "Patient")[0]["url"].as_str().unwrap()).await;
    assert_eq!(patients.len(), 1);
    assert_eq!(patients[0]["id"], first.as_str());
    let conditions = download(&app, &token, outputs(&manifest, "Condition")[0]["url"].as_str().unwrap()).await;
    assert!(!conditions.is_empty());
    assert!(conditions.iter().all(|c| c["subject"]["reference"] == format!("Patient/{first}")));
    // Practitioner lies outside the compartment: reported in the error file.
    assert!(outputs(&manifest, "Practitioner").is_empty());
    let errors = download(&app, &token, manifest["error"][0]["url"].as_str().unwrap()).await;
    assert!(errors[0]["issue"][0]["diagnostics"].as_str().unwrap().contains("Practitioner"), "{errors:?}");
    let r = kick_off(&app, &token, "Group/nosuch/$export", "respond-async").await;
    assert_eq!(r.status(), 404);

    // Patient level: every patient; with POST `patient`, only those.
    let (_, manifest) = export(&app, &token, "Patient/$export?_type=Patient").await;
    assert_eq!(outputs(&manifest, "Patient")[0]["count"], 3);
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient,Encounter"},
        {"name": "patient", "valueReference": {"reference": format!("Patient/{second}")}}]});
    let r = app.client.post(app.url("Patient/$export")).bearer_auth(&token).header("prefer", "respond-async").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let status_url = r.headers()["content-location"].to_str().unwrap().to_string();
    let manifest = poll(&app, &token, &status_url).await;
    let many: Vec<Value> = (0..1001).map(|i| json!({"name": "patient", "valueReference": {"reference": format!("Patient/p{i}")}})).collect();
    let r = app
        .client
        .post(app.url("Patient/$export"))
        .bearer_auth(&token)
        .header("prefer", "respond-async")
        .json(&json!({"resourceType": "Parameters", "parameter": many}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "at most 1,000 patients in one kick-off");
    let encounters = download(&app, &token, outputs(&manifest, "Encounter")[0]["url"].as_str().unwrap()).await;
    assert!(!encounters.is_empty());
    assert!(encounters.iter().all(|e| e["subject"]["reference"] == format!("Patient/{second}")));

    // Granular system scopes: laboratory observations only, and no Patient at all.
    let lab = "system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
    let token = backend_token(&app, "lab-exporter", lab).await;
    let (_, manifest) = export(&app, &token, "$export?_type=Observation,Patient").await;
    let observations = download(&app, &token, outputs(&manifest, "Observation")[0]["url"].as_str().unwrap()).await;
    assert!(!observations.is_empty());
    assert!(observations.iter().all(|o| o["category"].to_string().contains("laboratory")), "only laboratory results");
    assert!(outputs(&manifest, "Patient").is_empty());
    let errors = download(&app, &token, manifest["error"][0]["url"].as_str().unwrap()).await;
    assert!(errors[0].to_string().contains("Patient was not exported"), "{errors:?}");
    // Without a type list, what the scopes allow, silently.
    let (_, manifest) = export(&app, &token, "$export").await;
    let types: Vec<&str> = manifest["output"].as_array().unwrap().iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Observation"]);
    assert!(manifest["error"].as_array().unwrap().is_empty());
}

/// Two nodes on one PostgreSQL database: a job kicked off on one is polled and downloaded on the other; a
/// job left planning by a node that stopped is planned again by the next status request, on any node.
#[tokio::test]
async fn a_job_started_on_one_node_is_served_by_another_and_survives_a_stopped_node() {
    let Some(pg) = crate::ScratchPostgres::create("export").await else { return };
    let a = crate::spawn_secured_on(&pg.url).await;
    let b = crate::spawn_secured_on(&pg.url).await;
    kindling::seed(&a.app_state, 2, SEED).await.unwrap();
    let token = backend_token(&a, "exporter", "system/*.rs").await;
    let r = kick_off(&a, &token, "$export?_type=Patient,Encounter", "respond-async").await;
    assert_eq!(r.status(), 202);
    let on_a = r.headers()["content-location"].to_str().unwrap().to_string();
    let on_b = on_a.replace(&a.base, &b.base);
    assert_ne!(on_a, on_b);
    let manifest = poll(&b, &token, &on_b).await;
    for ty in ["Patient", "Encounter"] {
        let url = outputs(&manifest, ty)[0]["url"].as_str().unwrap().replace(&a.base, &b.base);
        let resources = download(&b, &token, &url).await;
        assert_eq!(resources.len(), live_count(&b, ty).await, "{ty}");
    }

    // A node stopped while planning: the record says "planning" since long ago, with no files. While the
    // lease is live nobody takes over.
    let job = on_a.rsplit('/').next().unwrap();
    let record = a.app_state.store.auth_get("bulk_export", job).await.unwrap().unwrap();
    let mut left: Value = serde_json::from_str(&record.value).unwrap();
    left["state"] = json!("Planning");
    left["files"] = json!([]);
    left["planning_since"] = json!(left["transaction_time"].as_i64().unwrap() - 60_000);
    a.app_state.store.auth_put("bulk_export", job, &left.to_string(), None, record.expires).await.unwrap();
    for _ in 0..3 {
        assert_eq!(b.client.get(&on_b).bearer_auth(&token).send().await.unwrap().status(), 202, "the lease is live: nobody plans again");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Its lease lapsed (the planner renews it as it goes; a stopped one does not).
    a.app_state.store.auth_delete("bulk_export_lease", job).await.unwrap();
    let r = b.client.get(&on_b).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 202, "taken over, planning again");
    let again = poll(&b, &token, &on_b).await;
    assert_eq!(again["output"], manifest["output"]);
    drop((a, b));
    pg.drop_database().await;
}

/// The SDK's `BackendClient::export`: kicks off, polls, streams each file resource by resource, reports a
/// refusal as a typed error, and cancels.
#[tokio::test]
async fn the_sdk_exports_streams_and_cancels() {
    use client::{Error, ExportLevel, ExportRequest};
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 3, SEED).await.unwrap();
    let key = register_backend(&app, "sdk-exporter", "system/*.rs").await;
    let backend = client::BackendClient::new(&app.base, "sdk-exporter", std::sync::Arc::new(key), "system/*.rs").unwrap();
    let export = backend.export(&ExportRequest { types: vec!["Patient".into(), "Condition".into()], ..Default::default() }).await.unwrap();
    assert!(export.manifest.requires_access_token);
    for ty in ["Patient", "Condition"] {
        let file = export.manifest.output.iter().find(|f| f.resource_type == ty).unwrap();
        let mut seen = 0;
        let n = export
            .resources(file, |r| {
                assert_eq!(r["resourceType"], ty);
                seen += 1;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!((n, seen), (file.count.unwrap(), live_count(&app, ty).await as u64), "{ty}");
    }
    // Group level: the panel's members.
    let group: Value = serde_json::from_str(&app.app_state.store.read("Group", &format!("kp-{SEED}-diabetes")).await.unwrap().unwrap().json).unwrap();
    let members = group["member"].as_array().unwrap().len() as u64;
    let by_group = backend
        .export(&ExportRequest { level: ExportLevel::Group(format!("kp-{SEED}-diabetes")), types: vec!["Patient".into()], ..Default::default() })
        .await
        .unwrap();
    let exported: u64 = by_group.manifest.output.iter().map(|f| f.count.unwrap()).sum();
    assert_eq!(exported, members);
    // A refusal is typed, with the server's reason.
    let e = backend.export(&ExportRequest { types: vec!["Nonsense".into()], ..Default::default() }).await.err().unwrap();
    assert!(matches!(&e, Error::Fhir { status: 400, detail } if detail.contains("Nonsense")), "{e}");
    // Cancelled: the status URL is gone.
    let status_url = export.status_url.clone();
    let token = client::TokenSource::token(backend.as_ref()).await.unwrap();
    assert_eq!(app.client.get(&status_url).bearer_auth(token.expose()).send().await.unwrap().status(), 200);
    export.cancel().await.unwrap();
    assert_eq!(app.client.get(&status_url).bearer_auth(token.expose()).send().await.unwrap().status(), 404);
}

/// Jobs belong to the client and the person it acts for: two users of one app do not see each other's
/// exports; and one owner keeps at most five at a time (429 with Retry-After beyond).
#[tokio::test]
async fn jobs_belong_to_their_user_and_are_limited_per_owner() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 1, SEED).await.unwrap();
    ehr::register_demo_app(&app.auth).await.unwrap();
    for (user, practitioner) in [("doc1", 0), ("doc2", 1)] {
        let linked = format!("Practitioner/{}", synth::practitioner_id(practitioner));
        auth::registry::put_user(app.auth.store.as_ref(), user, user, auth::model::UserRole::Clinician, "long-enough-1", &linked).await.unwrap();
    }
    let token = |user: &'static str| {
        let auth = app.auth.clone();
        async move { auth::operator_tokens(&auth, "kindling-demo", user, None, "user/*.rs").await.unwrap()["access_token"].as_str().unwrap().to_string() }
    };
    let (one, two) = (token("doc1").await, token("doc2").await);
    let (status_url, manifest) = export(&app, &one, "$export?_type=Patient").await;
    let file = outputs(&manifest, "Patient")[0]["url"].as_str().unwrap().to_string();
    assert_eq!(app.client.get(&status_url).bearer_auth(&two).send().await.unwrap().status(), 404, "another user of the same app");
    assert_eq!(app.client.get(&file).bearer_auth(&two).send().await.unwrap().status(), 404);
    assert_eq!(download(&app, &one, &file).await.len(), 1);

    for _ in 1..5 {
        export(&app, &one, "$export?_type=Patient").await;
    }
    let r = kick_off(&app, &one, "$export?_type=Patient", "respond-async").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(kick_off(&app, &two, "$export?_type=Patient", "respond-async").await.status(), 202, "the limit is per owner");
    assert_eq!(app.client.delete(&status_url).bearer_auth(&one).send().await.unwrap().status(), 202);
    assert_eq!(kick_off(&app, &one, "$export?_type=Patient", "respond-async").await.status(), 202, "room again after a cancel");
}

/// A patient-level token exports its own record only: not another Patient that links to it (which its
/// compartment holds), and not a type it may search but not read.
#[tokio::test]
async fn a_patient_token_exports_only_what_it_may_read() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 1, SEED).await.unwrap();
    ehr::register_demo_app(&app.auth).await.unwrap();
    let own = synth::patient_id(SEED, 0);
    let linked = json!({"resourceType": "Patient", "id": "duplicate", "name": [{"family": "Other"}],
                        "link": [{"other": {"reference": format!("Patient/{own}")}, "type": "seealso"}]});
    api::bundle::process(
        &app.app_state,
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": linked, "request": {"method": "PUT", "url": "Patient/duplicate"}}]}),
    )
    .await
    .unwrap();
    let practitioner = format!("Practitioner/{}", synth::practitioner_id(0));
    auth::registry::put_user(app.auth.store.as_ref(), "doc", "Doc", auth::model::UserRole::Clinician, "long-enough-1", &practitioner).await.unwrap();
    let token =
        auth::operator_tokens(&app.auth, "kindling-demo", "doc", Some(&own), "patient/*.rs").await.unwrap()["access_token"].as_str().unwrap().to_string();
    let (_, manifest) = export(&app, &token, "Patient/$export?_type=Patient,Condition").await;
    let patients = download(&app, &token, outputs(&manifest, "Patient")[0]["url"].as_str().unwrap()).await;
    let ids: Vec<&str> = patients.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [own.as_str()], "the linked record stays out");
    let conditions = download(&app, &token, outputs(&manifest, "Condition")[0]["url"].as_str().unwrap()).await;
    assert!(conditions.iter().all(|c| c["subject"]["reference"] == format!("Patient/{own}")));
}

async fn kick_off_with_fault(app: &TestApp, token: &str, path: &str, fault: &str) -> reqwest::Response {
    app.client.get(app.url(path)).bearer_auth(token).header("prefer", "respond-async").header("kindling-export-fault", fault).send().await.unwrap()
}

/// Rehearsal: each injected export fault, as a client meets it over HTTP — a refused kick-off, slow progress,
/// a failed job, a file that 404s once, a job that expires — and unknown faults refused.
#[tokio::test]
async fn injected_export_faults_are_met_as_a_client_would_meet_real_ones() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 1, SEED).await.unwrap();
    let token = backend_token(&app, "rehearser", "system/*.rs").await;

    for bad in ["sometimes", "slow", "slow=99999", "expire=soon", "fail=1"] {
        let r = kick_off_with_fault(&app, &token, "$export?_type=Patient", bad).await;
        assert_eq!(r.status(), 400, "{bad}");
        let oo: Value = r.json().await.unwrap();
        assert_eq!(oo["resourceType"], "OperationOutcome", "{bad}");
    }

    // kickoff-429: refused with Retry-After, let through on the retry, refused again on the next one.
    let r = kick_off_with_fault(&app, &token, "$export?_type=Patient", "kickoff-429").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(r.text().await.unwrap().contains("injected fault"));
    let r = kick_off_with_fault(&app, &token, "$export?_type=Patient", "kickoff-429").await;
    assert_eq!(r.status(), 202);
    let first = r.headers()["content-location"].to_str().unwrap().to_string();
    assert_eq!(kick_off_with_fault(&app, &token, "$export?_type=Patient", "kickoff-429").await.status(), 429);
    assert_eq!(app.client.delete(&first).bearer_auth(&token).send().await.unwrap().status(), 202);

    // slow=N: the status says how far planning got, then completes.
    let r = kick_off_with_fault(&app, &token, "$export?_type=Patient,Condition,Observation", "slow=400").await;
    assert_eq!(r.status(), 202);
    let status_url = r.headers()["content-location"].to_str().unwrap().to_string();
    let r = app.client.get(&status_url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 202);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let r = app.client.get(&status_url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let progress = r.headers()["x-progress"].to_str().unwrap().to_string();
    assert!(["1 of 3 resource types searched", "2 of 3 resource types searched"].contains(&progress.as_str()), "{progress}");
    let manifest = poll(&app, &token, &status_url).await;
    assert_eq!(manifest["output"].as_array().unwrap().len(), 3);
    assert_eq!(app.client.delete(&status_url).bearer_auth(&token).send().await.unwrap().status(), 202);

    // fail: the status answers 500 with an OperationOutcome that says why.
    let r = kick_off_with_fault(&app, &token, "$export?_type=Patient", "fail").await;
    let status_url = r.headers()["content-location"].to_str().unwrap().to_string();
    let r = loop {
        let r = app.client.get(&status_url).bearer_auth(&token).send().await.unwrap();
        if r.status() != 202 {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(r.status(), 500);
    let oo: Value = r.json().await.unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(oo.to_string().contains("injected fault (fail)"), "{oo}");
    assert_eq!(app.client.delete(&status_url).bearer_auth(&token).send().await.unwrap().status(), 202);

    // file-404-once: each file's first download is a 404 with Retry-After, the second one serves it.
    let r = kick_off_with_fault(&app, &token, "$export?_type=Patient,Condition", "file-404-once, expire=120").await;
    let status_url = r.headers()["content-location"].to_str().unwrap().to_string();
    let manifest = poll(&app, &token, &status_url).await;
    for file in manifest["output"].as_array().unwrap() {
        let url = file["url"].as_str().unwrap();
        let r = app.client.get(url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 404, "{url}");
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(download(&app, &token, url).await.len(), file["count"].as_u64().unwrap() as usize);
        assert_eq!(download(&app, &token, url).await.len(), file["count"].as_u64().unwrap() as usize, "only once");
    }
    // expire=N: the manifest's Expires says when, and after it the job and its files are gone.
    let r = app.client.get(&status_url).bearer_auth(&token).send().await.unwrap();
    let expires = time::OffsetDateTime::parse(r.headers()["expires"].to_str().unwrap(), &time::format_description::well_known::Rfc2822).unwrap();
    let transaction_time = time::OffsetDateTime::parse(manifest["transactionTime"].as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    assert!((119..=120).contains(&(expires - transaction_time).whole_seconds()), "{expires} vs {transaction_time}: HTTP dates are whole seconds");
    app.clock.advance(time::Duration::seconds(121));
    let token = backend_token(&app, "rehearser", "system/*.rs").await;
    assert_eq!(app.client.get(&status_url).bearer_auth(&token).send().await.unwrap().status(), 404);
    let file = manifest["output"][0]["url"].as_str().unwrap();
    assert_eq!(app.client.get(file).bearer_auth(&token).send().await.unwrap().status(), 404);
}

/// The SDK rides out the recoverable faults (a refused kick-off, slow progress, a file that 404s once) and
/// reports the others as typed errors with the server's reason.
#[tokio::test]
async fn the_sdk_rides_out_recoverable_export_faults() {
    use client::{Error, ExportRequest};
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 1, SEED).await.unwrap();
    let key = register_backend(&app, "sdk-rehearser", "system/*.rs").await;
    let backend = client::BackendClient::new(&app.base, "sdk-rehearser", std::sync::Arc::new(key), "system/*.rs").unwrap();
    let request = |fault: &str| ExportRequest { types: vec!["Patient".into(), "Condition".into()], fault: Some(fault.into()), ..Default::default() };
    let export = backend.export(&request("kickoff-429, slow=200, file-404-once")).await.unwrap();
    for ty in ["Patient", "Condition"] {
        let file = export.manifest.output.iter().find(|f| f.resource_type == ty).unwrap();
        let n = export.resources(file, |_| Ok(())).await.unwrap();
        assert_eq!(n, live_count(&app, ty).await as u64, "{ty}");
    }
    let e = backend.export(&request("fail")).await.err().unwrap();
    assert!(matches!(&e, Error::Fhir { status: 500, detail } if detail.contains("injected fault")), "{e}");
    let e = backend.export(&request("expire=0")).await.err().unwrap();
    assert!(matches!(&e, Error::Fhir { status: 404, .. }), "{e}");
}

/// The server's keeping time (`--export-ttl-secs`, here set on the state directly) decides when a job and
/// its files go.
#[tokio::test]
async fn jobs_are_kept_as_long_as_the_server_is_configured_to() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 1, SEED).await.unwrap();
    let state = api::AppState { export_ttl_ms: 120_000, ..app.app_state.clone() };
    let exporter = system_access("exporter");
    let params = api::export::KickOff { types: Some(vec!["Patient".into()]), ..Default::default() };
    let r = api::export::kick_off(&state, &exporter, api::export::Level::System, params, "http://x/fhir/$export".into()).await.unwrap();
    let job = r.headers()["content-location"].to_str().unwrap().rsplit('/').next().unwrap().to_string();
    let manifest = loop {
        let r = api::export::status(&state, &exporter, &job).await.unwrap();
        if r.status() == 200 {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let expires = time::OffsetDateTime::parse(manifest.headers()["expires"].to_str().unwrap(), &time::format_description::well_known::Rfc2822).unwrap();
    let left = expires - fhir::time::Clock::now(app.clock.as_ref());
    assert!((118..=120).contains(&left.whole_seconds()), "{left}");
    app.clock.advance(time::Duration::seconds(121));
    assert_eq!(api::export::status(&state, &exporter, &job).await.unwrap_err().status, 404);

    // A server that does not inject faults (kindling serve without --export-faults) refuses to be asked.
    let production = api::AppState { export_faults: false, ..app.app_state.clone() };
    let faults = api::export::ExportFaults::parse("slow=100").unwrap();
    let params = api::export::KickOff { types: Some(vec!["Patient".into()]), faults, ..Default::default() };
    let e = api::export::kick_off(&production, &exporter, api::export::Level::System, params, "http://x/fhir/$export".into()).await.unwrap_err();
    assert_eq!(e.status, 400);
    assert!(e.message.contains("--export-faults"), "{}", e.message);
}

/// A job cancelled while its searches run stays cancelled: the planner does not bring it back, nor leave
/// its files' keys behind.
#[tokio::test]
async fn a_job_cancelled_while_planning_stays_cancelled() {
    let app = spawn_secured_app().await;
    kindling::seed(&app.app_state, 1, SEED).await.unwrap();
    let token = backend_token(&app, "canceller", "system/*.rs").await;
    let r = kick_off_with_fault(&app, &token, "$export?_type=Patient,Condition", "slow=300").await;
    let status_url = r.headers()["content-location"].to_str().unwrap().to_string();
    assert_eq!(app.client.get(&status_url).bearer_auth(&token).send().await.unwrap().status(), 202);
    assert_eq!(app.client.delete(&status_url).bearer_auth(&token).send().await.unwrap().status(), 202);
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    assert_eq!(app.client.get(&status_url).bearer_auth(&token).send().await.unwrap().status(), 404);
    let job = status_url.rsplit('/').next().unwrap();
    assert!(app.app_state.store.auth_get("bulk_export", job).await.unwrap().is_none());
    let kept = app.app_state.store.auth_list("bulk_export_keys").await.unwrap();
    assert!(!kept.iter().any(|(key, _)| key.starts_with(job)));
}
