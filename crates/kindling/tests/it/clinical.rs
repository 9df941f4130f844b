//! What a clinician reads from real (Synthea) records, in the EHR chart and in the reference app: blood
//! pressure systolic over diastolic whatever the order of the components, units as people print them, and
//! the blood-pressure trend drawn as two lines.

use crate::ehr_pages::{page, sign_in};
use crate::import::synthea_dir;
use crate::reference_app::standalone_summary;
use crate::spawn_with_reference_app;
use auth::model::UserRole;
use serde_json::Value;
use std::io::Read;

const LOINC: &str = "http://loinc.org";

fn has_code(concept: &Value, code: &str) -> bool {
    concept["coding"].as_array().is_some_and(|c| c.iter().any(|c| c["system"] == LOINC && c["code"] == code))
}

/// The newest Observation with a LOINC code in a Synthea bundle.
fn latest<'a>(bundle: &'a Value, code: &str) -> &'a Value {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Observation" && has_code(&r["code"], code))
        .max_by_key(|r| r["effectiveDateTime"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no {code} in the bundle"))
}

fn component(o: &Value, code: &str) -> f64 {
    o["component"].as_array().unwrap().iter().find(|c| has_code(&c["code"], code)).unwrap()["valueQuantity"]["value"].as_f64().unwrap()
}

/// The part of a page from `start` to the next `end`.
fn slice<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
    let from = html.find(start).unwrap_or_else(|| panic!("no {start:?} in {html}"));
    let rest = &html[from..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

#[tokio::test]
async fn synthea_vitals_and_labs_read_right_in_the_chart_and_the_app() {
    let Some(dir) = synthea_dir() else { return };
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("Abdul_Koepp_"))
        .expect("Abdul Koepp's bundle");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap()).read_to_string(&mut text).unwrap();
    let raw: Value = serde_json::from_str(&text).unwrap();
    let bp = latest(&raw, "55284-4");
    assert!(has_code(&bp["component"][0]["code"], "8462-4"), "Synthea lists the diastolic first: the test needs that order");
    let (sys, dia) = (component(bp, "8480-6").round(), component(bp, "8462-4").round());
    let bp_day = &bp["effectiveDateTime"].as_str().unwrap()[..10];
    let weight = latest(&raw, "29463-7")["valueQuantity"]["value"].as_f64().unwrap();

    let app = spawn_with_reference_app().await;
    let summary = kindling::import::import_files(&app.app_state, vec![file], |_| {}).await.unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    let found = ehr::chart::search(app.app_state.store.as_ref(), "Patient", &[("family", "Koepp")], 1).await.unwrap();
    let pid = found[0].0.clone();
    let store = app.auth.store.as_ref();

    // The EHR chart: 130/75 mmHg, never 75/130 mm[Hg].
    auth::registry::put_user(store, "doc", "Dr Doc", UserRole::Clinician, "doc-pass", &format!("Practitioner/{}", synth::practitioner_id(0))).await.unwrap();
    let cookie = sign_in(&app, "/ehr/login", "doc", "doc-pass").await;
    let (status, chart) = page(&app, &format!("/ehr/patients/{pid}"), &cookie).await;
    assert_eq!(status, 200);
    assert!(chart.contains(&format!("{sys}/{dia} mmHg · {bp_day}")), "systolic over diastolic: {chart}");
    assert!(!chart.contains(&format!("{dia}/{sys}")), "not upside down");
    assert!(chart.contains("kg/m²") && chart.contains(&format!("{} kg", fhir::display::number(weight))), "{chart}");
    for raw_code in ["mm[Hg]", "kg/m2", "{score}"] {
        assert!(!chart.contains(raw_code), "{raw_code} shown as a code");
    }

    // The reference app, launched by the patient: the same reading, a two-line trend, labs with units.
    auth::registry::put_user(store, "abdul", "Abdul Koepp", UserRole::Patient, "abdul-pass", &format!("Patient/{pid}")).await.unwrap();
    let html = standalone_summary(&app, "abdul", "abdul-pass").await;
    let figure = slice(&html, "Blood pressure:", "</figure>");
    assert!(figure.contains(&format!("<strong>{sys}/{dia} mmHg on {bp_day}</strong>")), "{figure}");
    assert_eq!(figure.matches("<polyline").count(), 2, "systolic and diastolic lines: {figure}");
    assert!(figure.contains("Systolic over Diastolic"), "{figure}");
    let weight_figure = slice(&html, "Weight:", "</figure>");
    assert!(weight_figure.contains(&format!("<strong>{} kg on", fhir::display::number(weight))), "{weight_figure}");
    let labs = slice(&html, "id=\"labs\"", "</section>");
    let hb = latest(&raw, "718-7")["valueQuantity"]["value"].as_f64().unwrap();
    assert!(labs.contains(&format!("{} g/dL", fhir::display::number(hb))), "{labs}");
    assert!(!html.contains("mm[Hg]") && !html.contains("10*3/uL") && !html.contains("kg/m2"), "no UCUM codes on the page");
}

/// What the generator writes is what a reader gets back: every element of every seeded resource (the US
/// Core must-support elements among them) survives the write and the read unchanged, only `meta` added.
#[tokio::test]
async fn every_generated_element_survives_a_round_trip() {
    let app = crate::spawn_app().await;
    let today = app.app_state.clock.now().date();
    kindling::seed(&app.app_state, 5, 21).await.unwrap();
    let bundles = synth::generate(&synth::Options { patients: 5, seed: 21, today });
    let mut compared = 0;
    for entry in bundles.iter().flat_map(|b| b["entry"].as_array().unwrap()) {
        let sent = &entry["resource"];
        let (ty, id) = (sent["resourceType"].as_str().unwrap(), sent["id"].as_str().unwrap());
        let stored = app.app_state.store.read(ty, id).await.unwrap().unwrap_or_else(|| panic!("{ty}/{id} was not stored"));
        let mut got: Value = serde_json::from_str(&stored.json).unwrap();
        assert!(got["meta"]["versionId"].is_string() && got["meta"]["lastUpdated"].is_string(), "{ty}/{id}");
        got.as_object_mut().unwrap().remove("meta");
        assert_eq!(&got, sent, "{ty}/{id} changed on the way");
        compared += 1;
    }
    assert!(compared > 1000, "{compared}");
}

/// Results entered in error, refuted allergies and bounds read as what they are, in the chart and in the
/// app: an erroneous potassium of 6.8 is not the latest result, a refuted penicillin allergy is not listed,
/// `>600` is not 600, a relapse is a current problem, and the MRN is the identifier typed MR.
#[tokio::test]
async fn what_is_wrong_withdrawn_or_a_bound_is_never_shown_as_a_plain_result() {
    let app = spawn_with_reference_app().await;
    let pid = "kp-status";
    let subject = serde_json::json!({"reference": format!("Patient/{pid}")});
    let v2 = "http://terminology.hl7.org/CodeSystem/v2-0203";
    let patient = serde_json::json!({"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1961-03-02",
        "name": [{"use": "old", "family": "Maiden", "given": ["Ruth"]}, {"use": "official", "family": "Okafor", "given": ["Ruth"]}],
        "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": "0b7c-uuid"},
            {"type": {"coding": [{"system": v2, "code": "SS"}]}, "system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-12-3456"},
            {"type": {"coding": [{"system": v2, "code": "MR"}]}, "system": "urn:kindling:mrn", "value": "MRN-4417"}]});
    let lab = |id: &str, code: &str, name: &str, status: &str, when: &str, value: Value| {
        let mut o = serde_json::json!({"resourceType": "Observation", "id": id, "status": status, "subject": subject, "effectiveDateTime": when,
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": name}], "text": name}});
        o.as_object_mut().unwrap().extend(value.as_object().unwrap().clone());
        o
    };
    let mmol = |v: f64| {
        serde_json::json!({"valueQuantity": {"value": v, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "referenceRange": [{"low": {"value": 3.5, "unit": "mmol/L"}, "high": {"value": 5.1, "unit": "mmol/L"}}]})
    };
    let vital = |id: &str, status: &str, when: &str, v: f64| {
        serde_json::json!({"resourceType": "Observation", "id": id, "status": status, "subject": subject,
        "effectiveDateTime": when, "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}], "text": "Heart rate"},
        "valueQuantity": {"value": v, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})
    };
    let allergy = |id: &str, what: &str, clinical: &str, verification: &str| {
        serde_json::json!({"resourceType": "AllergyIntolerance", "id": id, "patient": subject,
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": clinical}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": verification}]},
        "criticality": "high", "code": {"text": what}})
    };
    let resources = vec![
        patient,
        lab("kp-k-1", "2823-3", "Potassium", "final", "2026-11-01T09:00:00Z", mmol(4.1)),
        lab("kp-k-2", "2823-3", "Potassium", "entered-in-error", "2026-11-20T09:00:00Z", mmol(6.8)),
        lab(
            "kp-glu",
            "2345-7",
            "Glucose",
            "final",
            "2026-11-18T09:00:00Z",
            serde_json::json!({
            "valueQuantity": {"value": 600.0, "comparator": ">", "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
            "referenceRange": [{"low": {"value": 70.0, "unit": "mg/dL"}, "high": {"value": 99.0, "unit": "mg/dL"}}]}),
        ),
        lab(
            "kp-na",
            "2951-2",
            "Sodium",
            "final",
            "2026-11-17T09:00:00Z",
            serde_json::json!({
            "dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error", "display": "Error"}]}}),
        ),
        vital("kp-hr-1", "final", "2026-11-02T09:00:00Z", 72.0),
        vital("kp-hr-2", "entered-in-error", "2026-11-21T09:00:00Z", 180.0),
        allergy("kp-al-1", "Penicillin V", "active", "refuted"),
        allergy("kp-al-2", "Latex", "resolved", "confirmed"),
        allergy("kp-al-3", "Peanut", "active", "confirmed"),
        serde_json::json!({"resourceType": "Condition", "id": "kp-dep", "subject": subject, "onsetDateTime": "2019-05-01",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "relapse"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
            "code": {"text": "Major depressive disorder, recurrent"}}),
        serde_json::json!({"resourceType": "MedicationRequest", "id": "kp-enox", "status": "active", "intent": "order", "subject": subject,
            "authoredOn": "2026-11-19", "medicationReference": {"reference": "Medication/kp-med-enox", "display": "enoxaparin 40 MG/0.4 ML injection"}}),
    ];
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let url = format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
            serde_json::json!({"resource": r, "request": {"method": "PUT", "url": url}})
        })
        .collect();
    api::bundle::process(&app.app_state, serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await.unwrap();
    let store = app.auth.store.as_ref();

    // The EHR chart.
    auth::registry::put_user(store, "doc", "Dr Doc", UserRole::Clinician, "doc-pass", &format!("Practitioner/{}", synth::practitioner_id(0))).await.unwrap();
    let cookie = sign_in(&app, "/ehr/login", "doc", "doc-pass").await;
    let (status, chart) = page(&app, &format!("/ehr/patients/{pid}"), &cookie).await;
    assert_eq!(status, 200);
    assert!(chart.contains("Ruth Okafor") && !chart.contains("Maiden"), "the official name: {chart}");
    assert!(chart.contains("MRN: <strong>MRN-4417</strong>"), "{chart}");
    assert!(chart.contains("72 /min") && !chart.contains("180 /min"), "the heart rate entered in error is not the latest: {chart}");
    assert!(!chart.contains("Penicillin"), "a refuted allergy is not an allergy: {chart}");
    assert!(chart.contains("Latex") && chart.contains("no longer active"), "{chart}");
    assert!(chart.contains("Peanut"), "{chart}");
    assert!(chart.contains("Major depressive disorder, recurrent"), "a relapse is a current problem: {chart}");
    assert!(chart.contains("enoxaparin 40 MG/0.4 ML injection"), "a drug given by reference: {chart}");

    // The reference app, launched by the patient.
    auth::registry::put_user(store, "ruth", "Ruth Okafor", UserRole::Patient, "ruth-pass", &format!("Patient/{pid}")).await.unwrap();
    let html = standalone_summary(&app, "ruth", "ruth-pass").await;
    assert!(html.contains("MRN: <strong>MRN-4417</strong>") && !html.contains("0b7c-uuid"), "{html}");
    let labs = slice(&html, "id=\"labs\"", "</section>");
    assert!(labs.contains("4.1 mmol/L") && !labs.contains("6.8"), "the potassium entered in error is not shown: {labs}");
    assert!(labs.contains("&#62;600 mg/dL"), "a bound stays a bound (&#62; is >): {labs}");
    assert!(labs.contains("High"), "above the range: {labs}");
    assert!(labs.contains("no value (error)"), "{labs}");
    let vitals = slice(&html, "id=\"vitals\"", "</section>");
    assert!(vitals.contains("72 /min on 2026-11-02") && !vitals.contains("180"), "{vitals}");
    let allergies = slice(&html, "id=\"allergies\"", "</section>");
    assert!(!allergies.contains("Penicillin") && allergies.contains("Latex") && allergies.contains("no longer active"), "{allergies}");
    assert!(slice(&html, "id=\"problems\"", "</section>").contains("Major depressive disorder, recurrent"), "{html}");
    assert!(slice(&html, "id=\"medications\"", "</section>").contains("enoxaparin 40 MG/0.4 ML injection"), "{html}");
}
