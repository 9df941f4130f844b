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
