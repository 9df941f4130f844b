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
    let patient_ids = |b: &serde_json::Value| -> Vec<String> { b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect() };
    let before = patient_ids(&patients);
    let observations = app.search("Observation?_summary=count").await["total"].clone();
    let again = kindling::import::import_files(&app.app_state, files_again, |_| {}).await.unwrap();
    assert!(again.errors.is_empty(), "{:?}", again.errors);
    assert_eq!(again.created, 0, "nothing is created twice: {again:?}");
    assert_eq!(again.updated, summary.resources, "{again:?}");
    let after = app.search("Patient?_count=100").await;
    assert_eq!(after["total"], 12);
    let (mut before, mut after) = (before, patient_ids(&after));
    before.sort();
    after.sort();
    assert_eq!(before, after);
    assert_eq!(app.search("Observation?_summary=count").await["total"], observations);
    let history = app.search(&format!("Patient/{pid}/_history")).await;
    assert_eq!(history["total"], 2, "the re-import is a new version of the same record");
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
