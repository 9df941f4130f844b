use crate::spawn_app;
use std::path::PathBuf;

pub(crate) fn synthea_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/synthea-r4");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the Synthea data set is missing at {} but CI always has it", dir.display());
    }
    eprintln!("SKIPPED: Synthea data not found at {}", dir.display());
    None
}

#[tokio::test]
async fn imports_real_synthea_bundles_and_serves_them() {
    let Some(dir) = synthea_dir() else { return };
    let app = spawn_app().await;
    let mut files = kindling::import::collect_files(&[dir]).unwrap();
    assert!(files.len() > 600);
    files.truncate(12);
    let files_again = files.clone();
    let summary = kindling::import::import_files(&app.app_state, files, |_| {}).await.unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    assert!(summary.resources > 1000, "{}", summary.resources);
    let patients = app.search("Patient?_count=100").await;
    assert_eq!(patients["total"], 12);
    let pid = patients["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
    // urn:uuid references were rewritten to the server's ids.
    let obs = app.search(&format!("Observation?patient={pid}&category=vital-signs&_sort=-date&_count=5")).await;
    assert!(obs["total"].as_u64().unwrap() > 0);
    assert!(obs["entry"][0]["resource"]["subject"]["reference"].as_str().unwrap().starts_with("Patient/"));
    let enc = app.search(&format!("Encounter?patient={pid}&_revinclude=Observation:encounter&_count=50")).await;
    assert!(enc["entry"].as_array().unwrap().iter().any(|e| e["search"]["mode"] == "include"));
    let everything = app.search(&format!("Patient/{pid}/$everything?_count=1000")).await;
    assert!(everything["total"].as_u64().unwrap() > 20);
    assert_eq!(summary.created, summary.resources, "a first import creates everything");

    // Synthea's urn:uuid names are the ids, so importing the same files again updates in place.
    let patient_ids =
        |b: &serde_json::Value| -> Vec<String> { b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect() };
    let before = patient_ids(&patients);
    let observations = app.search("Observation?_summary=count").await["total"].clone();
    let again = kindling::import::import_files(&app.app_state, files_again, |_| {}).await.unwrap();
    assert!(again.errors.is_empty(), "{:?}", again.errors);
    assert_eq!((again.created, again.updated), (0, 0), "nothing is created twice, nothing changed: {again:?}");
    assert_eq!(again.unchanged, summary.resources, "{again:?}");
    let after = app.search("Patient?_count=100").await;
    assert_eq!(after["total"], 12);
    let (mut before, mut after) = (before, patient_ids(&after));
    before.sort();
    after.sort();
    assert_eq!(before, after);
    assert_eq!(app.search("Observation?_summary=count").await["total"], observations);
    let history = app.search(&format!("Patient/{pid}/_history")).await;
    assert_eq!(history["total"], 1, "the same content again is no new version");

    // A file whose content changed updates the record in place: a new version of the same id.
    let mut patient = app.search(&format!("Patient/{pid}")).await;
    patient.as_object_mut().unwrap().remove("meta");
    patient["telecom"] = serde_json::json!([{"system": "phone", "value": "555-0142"}]);
    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("changed.json");
    let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"fullUrl": format!("urn:uuid:{pid}"), "resource": patient, "request": {"method": "PUT", "url": format!("Patient/{pid}")}}]});
    std::fs::write(&changed, bundle.to_string()).unwrap();
    let third = kindling::import::import_files(&app.app_state, vec![changed], |_| {}).await.unwrap();
    assert_eq!((third.created, third.updated, third.unchanged), (0, 1, 0), "{third:?}");
    let history = app.search(&format!("Patient/{pid}/_history")).await;
    assert_eq!(history["total"], 2, "the changed record is a new version of the same record");
    assert_eq!(app.search(&format!("Patient/{pid}")).await["telecom"][0]["value"], "555-0142");
}

#[tokio::test]
async fn imports_ndjson_gzip_and_reports_errors_with_file() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let nd = dir.path().join("patients.ndjson.gz");
    {
        use std::io::Write;
        let f = std::fs::File::create(&nd).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        for i in 0..30 {
            writeln!(gz, "{}", serde_json::json!({"resourceType": "Patient", "id": format!("nd-{i}"), "gender": "female"})).unwrap();
        }
        gz.finish().unwrap();
    }
    std::fs::write(dir.path().join("broken.json"), "{ nope").unwrap();
    let bad_tx = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "name": [{"family": "Halfway"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "subject": {"reference": "urn:uuid:1"}}, "request": {"method": "POST", "url": "Observation"}}
    ]});
    std::fs::write(dir.path().join("bad-tx.json"), bad_tx.to_string()).unwrap();
    std::fs::write(dir.path().join("single.json"), serde_json::json!({"resourceType": "Practitioner", "name": [{"family": "Solo"}]}).to_string()).unwrap();
    let files = kindling::import::collect_files(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(files.len(), 4);
    let summary = kindling::import::import_files(&app.app_state, files, |_| {}).await.unwrap();
    assert_eq!(summary.resources, 31);
    assert_eq!(summary.errors.len(), 2, "{:?}", summary.errors);
    assert!(summary.errors.iter().any(|e| e.contains("broken.json")));
    assert!(summary.errors.iter().any(|e| e.contains("bad-tx.json") && e.contains("entry 1")), "{:?}", summary.errors);
    assert_eq!(app.search("Patient?family=halfway").await["total"], 0, "a failing transaction stores nothing");
    assert_eq!(app.search("Patient?gender=female").await["total"], 30);
    assert_eq!(app.search("Practitioner?family=solo").await["total"], 1);
}

/// Eight files imported at once, each naming the same Organization (as Synthea's files name their
/// practitioners and organisations): every file lands, the shared record exists once, and only one file
/// creates it. On PostgreSQL the eight run in concurrent transactions.
#[tokio::test]
async fn concurrent_imports_of_a_shared_resource_all_land() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let org = serde_json::json!({"resourceType": "Organization", "id": "shared-org", "name": "Shared Clinic"});
    let mut tasks = Vec::new();
    for i in 0..8 {
        let path = dir.path().join(format!("p{i}.json"));
        let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:shared-org", "resource": org, "request": {"method": "PUT", "url": "Organization/shared-org"}},
            {"fullUrl": format!("urn:uuid:cp-{i}"), "resource": {"resourceType": "Patient", "managingOrganization": {"reference": "urn:uuid:shared-org"}}, "request": {"method": "POST", "url": "Patient"}}
        ]});
        std::fs::write(&path, bundle.to_string()).unwrap();
        let state = app.app_state.clone();
        tasks.push(tokio::spawn(async move { kindling::import::import_files(&state, vec![path], |_| {}).await.unwrap() }));
    }
    let (mut created, mut unchanged) = (0, 0);
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        created += s.created;
        unchanged += s.unchanged;
    }
    assert_eq!((created, unchanged), (9, 7), "eight patients and one organisation created; the organisation seven times unchanged");
    let orgs = app.search("Organization?_id=shared-org").await;
    assert_eq!(orgs["total"], 1);
    let history = app.search("Organization/shared-org/_history").await;
    assert_eq!(history["total"], 1);
    let patients = app.search("Patient?organization=Organization/shared-org").await;
    assert_eq!(patients["total"], 8);
}

/// The write path an import falls back to, one record at a time: eight transactions create the same new
/// id at once (`IfChanged`, as imports write); all commit, one creates, the others find it and leave it
/// unchanged (the same content) or update it. On PostgreSQL they race on the unique key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_import_writes_of_one_new_id_all_land() {
    let app = spawn_app().await;
    for round in 0..5 {
        let id = format!("import-race-{round}");
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = app.app_state.store.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    let mut tx = store.begin().await.unwrap();
                    let w =
                        tx.put(serde_json::json!({"resourceType": "Organization", "id": id, "name": "Race Clinic"}), store::Precondition::IfChanged).await?;
                    tx.commit().await?;
                    Ok::<_, store::StoreError>(w)
                })
            })
            .collect();
        let mut created = 0;
        for t in tasks {
            let w = t.await.unwrap().unwrap_or_else(|e| panic!("round {round}: an import write failed: {e}"));
            created += usize::from(w.created);
        }
        assert_eq!(created, 1, "round {round}");
        let history = app.search(&format!("Organization/{id}/_history")).await;
        assert_eq!(history["total"], 1, "round {round}: the same content is one version");
    }
}
