//! Plausibility of the generated population, checked the way a clinician and a FHIR server would.

use super::*;
use std::collections::{BTreeMap, BTreeSet};
use time::Month;

fn today() -> Date {
    Date::from_calendar_date(2026, Month::June, 15).unwrap()
}

fn opts(patients: usize) -> Options {
    Options { patients, seed: 42, today: today() }
}

fn resources(bundles: &[Value]) -> Vec<&Value> {
    bundles.iter().flat_map(|b| b["entry"].as_array().unwrap().iter()).map(|e| &e["resource"]).collect()
}

fn day(s: &str) -> Date {
    patient::parse_day(s).unwrap_or_else(|| panic!("not a date: {s}"))
}

fn moment(s: &str) -> String {
    // Comparable as text: "YYYY-MM-DDTHH:MM".
    s.get(..16).unwrap_or(s).to_string()
}

fn code(r: &Value) -> &str {
    r["code"]["coding"][0]["code"].as_str().unwrap_or_default()
}

fn quantity(r: &Value) -> f64 {
    r["valueQuantity"]["value"].as_f64().unwrap()
}

#[test]
fn deterministic() {
    let a = serde_json::to_string(&generate(&opts(4))).unwrap();
    assert_eq!(a, serde_json::to_string(&generate(&opts(4))).unwrap(), "byte for byte");
    let other = Options { seed: 43, ..opts(4) };
    assert_ne!(generate(&opts(4))[1], generate(&other)[1]);
}

#[test]
fn npis_carry_a_luhn_check_digit() {
    assert_eq!(npi(123_456_789), "1234567893", "the CMS example");
}

#[test]
fn every_resource_is_valid_and_every_reference_resolves() {
    let bundles = generate(&opts(50));
    let all = resources(&bundles);
    let mut ids = BTreeSet::new();
    for r in &all {
        fhir::validate::validate_resource(r, None).unwrap_or_else(|e| panic!("{e}: {r}"));
        let key = format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
        assert!(ids.insert(key.clone()), "{key} twice");
    }
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("reference", Value::String(s)) => out.push(s),
                        ("url", Value::String(s)) if s.starts_with("Binary/") => out.push(s),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for r in &all {
        refs(r, &mut out);
    }
    assert!(out.len() > 1000);
    for r in out {
        assert!(ids.contains(r), "{r} does not resolve");
    }
    // US Core 6.1's resource types, all present.
    let types: BTreeSet<&str> = all.iter().map(|r| r["resourceType"].as_str().unwrap()).collect();
    for t in [
        "AllergyIntolerance",
        "Binary",
        "CarePlan",
        "CareTeam",
        "Condition",
        "Coverage",
        "Device",
        "DiagnosticReport",
        "DocumentReference",
        "Encounter",
        "Endpoint",
        "Goal",
        "Immunization",
        "Location",
        "Medication",
        "MedicationDispense",
        "MedicationRequest",
        "Observation",
        "Organization",
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "Procedure",
        "Provenance",
        "QuestionnaireResponse",
        "RelatedPerson",
        "ServiceRequest",
        "Specimen",
    ] {
        assert!(types.contains(t), "no {t}");
    }
}

#[test]
fn dates_are_consistent() {
    let bundles = generate(&opts(50));
    // Elements that may lie ahead: targets, expiry dates, and when an ordered service is due.
    let ahead = ["dueDate", "expirationDate", "occurrenceDateTime"];
    for b in &bundles[1..] {
        let rs: Vec<&Value> = b["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
        let birth = day(rs[0]["birthDate"].as_str().unwrap());
        let encounters: BTreeMap<String, (String, String)> = rs
            .iter()
            .filter(|r| r["resourceType"] == "Encounter")
            .map(|r| {
                (
                    format!("Encounter/{}", r["id"].as_str().unwrap()),
                    (moment(r["period"]["start"].as_str().unwrap()), moment(r["period"]["end"].as_str().unwrap())),
                )
            })
            .collect();
        for r in &rs {
            fn dates<'a>(v: &'a Value, key: &'a str, out: &mut Vec<(&'a str, &'a str)>) {
                match v {
                    Value::Object(m) => m.iter().for_each(|(k, x)| dates(x, k, out)),
                    Value::Array(a) => a.iter().for_each(|x| dates(x, key, out)),
                    Value::String(s) if s.len() >= 10 && s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-' && s[..4].bytes().all(|c| c.is_ascii_digit()) => {
                        out.push((key, s))
                    }
                    _ => {}
                }
            }
            let mut found = Vec::new();
            dates(r, "", &mut found);
            for (key, s) in found {
                let d = day(s);
                assert!(d >= birth, "{key} {s} before birth {birth}: {r}");
                let may_be_ahead = ahead.contains(&key) && r["resourceType"] != "Immunization" || key == "expirationDate";
                assert!(may_be_ahead || d <= today(), "{key} {s} after today: {r}");
            }
            if let (Some(onset), Some(abatement)) = (r["onsetDateTime"].as_str(), r["abatementDateTime"].as_str()) {
                assert!(day(onset) <= day(abatement), "{r}");
            }
            if r["resourceType"] == "Observation"
                && let Some(enc) = r["encounter"]["reference"].as_str()
            {
                let (start, end) = &encounters[enc];
                let at = moment(r["effectiveDateTime"].as_str().unwrap());
                assert!(*start <= at && at <= *end, "observation at {at} outside its encounter {start}–{end}");
            }
        }
    }
}

#[test]
fn growth_and_vital_signs_are_plausible_for_age_and_sex() {
    let bundles = generate(&opts(50));
    let mut children = 0;
    for b in &bundles[1..] {
        let rs: Vec<&Value> = b["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
        let male = rs[0]["gender"] == "male";
        let birth = day(rs[0]["birthDate"].as_str().unwrap());
        for r in rs.iter().filter(|r| r["resourceType"] == "Observation" && r["valueQuantity"].is_object()) {
            let age = (day(r["effectiveDateTime"].as_str().unwrap()) - birth).whole_days() as f64 / 365.25;
            let v = quantity(r);
            let within = |median: f64, sd: f64| median * (1.0 - 2.5 * sd) <= v && v <= median * (1.0 + 2.5 * sd);
            match code(r) {
                "29463-7" if age < 18.0 => {
                    children += 1;
                    assert!(within(growth::median_weight(age, male), growth::WEIGHT_SD), "weight {v} kg at {age:.2} years: {r}");
                }
                "29463-7" => assert!((38.0..160.0).contains(&v), "adult weight {v}"),
                "8302-2" | "8306-3" if age < 18.0 => assert!(within(growth::median_height(age, male), growth::HEIGHT_SD), "height {v} cm at {age:.2}"),
                "8302-2" => assert!((145.0..205.0).contains(&v), "adult height {v}"),
                "9843-4" => assert!(age < 3.0 && within(growth::median_head(age, male), growth::HEAD_SD), "head {v} at {age:.2}"),
                "39156-5" if age < 18.0 => assert!((12.0..32.0).contains(&v), "child BMI {v} at {age:.2}"),
                "39156-5" => assert!((17.0..45.0).contains(&v), "adult BMI {v}"),
                "59576-9" | "77606-2" | "8289-1" => assert!((0.5..99.5).contains(&v), "percentile {v}"),
                "8867-4" => assert!((45.0..185.0).contains(&v), "heart rate {v} at {age:.2}"),
                "8310-5" => assert!((35.5..40.0).contains(&v), "temperature {v}"),
                _ => {}
            }
        }
        for bp in rs.iter().filter(|r| code(r) == "85354-9") {
            let part = |c: &str| {
                bp["component"].as_array().unwrap().iter().find(|x| x["code"]["coding"][0]["code"] == c).unwrap()["valueQuantity"]["value"].as_f64().unwrap()
            };
            let (s, d) = (part("8480-6"), part("8462-4"));
            assert!((70.0..200.0).contains(&s) && (35.0..120.0).contains(&d) && s - d >= 20.0, "blood pressure {s}/{d}");
        }
    }
    assert!(children > 40, "children's growth was measured ({children})");
}

#[test]
fn a_population_that_looks_like_a_practice() {
    let bundles = generate(&opts(50));
    let patients: Vec<&Value> = bundles[1..].iter().map(|b| &b["entry"][0]["resource"]).collect();
    let names: BTreeSet<String> = patients.iter().map(|p| format!("{} {}", p["name"][0]["given"][0], p["name"][0]["family"])).collect();
    assert_eq!(names.len(), patients.len(), "no two patients share a name");
    for p in &patients {
        assert_ne!(p["name"][0]["given"][0], p["name"][0]["given"][1], "{}", p["name"]);
        assert!(p["telecom"][0]["value"].as_str().unwrap().contains(" 555-01"));
    }
    let ages: Vec<i64> = patients.iter().map(|p| (today() - day(p["birthDate"].as_str().unwrap())).whole_days()).collect();
    assert!(ages.iter().any(|&a| a < 30), "a newborn");
    assert!(ages.iter().any(|&a| a > 95 * 365), "the very old");
    assert!(patients.iter().any(|p| p["gender"] == "male") && patients.iter().any(|p| p["gender"] == "female"));
    let sizes: Vec<usize> = bundles[1..].iter().map(|b| b["entry"].as_array().unwrap().len()).collect();
    assert!(sizes.iter().any(|&s| s > 800), "some long records: {sizes:?}");
    assert!(sizes.iter().any(|&s| s < 60), "some almost empty: {sizes:?}");
}

#[test]
fn the_demo_patient_has_a_chart_worth_opening() {
    let bundles = generate(&opts(1));
    let rs = resources(&bundles[1..]);
    let of = |t: &'static str| rs.iter().filter(move |r| r["resourceType"] == t);
    let active = |r: &&&Value| r["clinicalStatus"]["coding"][0]["code"] == "active";
    assert!(of("Condition").filter(active).filter(|r| r["category"][0]["coding"][0]["code"] == "problem-list-item").count() >= 4);
    assert!(of("MedicationRequest").filter(|r| r["status"] == "active").count() >= 3);
    assert!(of("AllergyIntolerance").count() >= 2);
    assert!(of("Observation").any(|r| r["interpretation"][0]["coding"][0]["code"] == "H" && r["category"][0]["coding"][0]["code"] == "laboratory"));
    assert!(of("Observation").filter(|r| code(r) == "85354-9").count() >= 20, "a blood-pressure trend");
    assert!(of("Observation").filter(|r| code(r) == "4548-4").count() >= 10, "an A1c trend");
    assert!(of("DocumentReference").any(|r| r["content"][0]["attachment"]["contentType"] == "text/plain"));
}

#[test]
fn discharge_summaries_are_pdf_documents() {
    let bundles = generate(&opts(3));
    let rs = resources(&bundles[1..]);
    let pdf = rs.iter().find(|r| r["resourceType"] == "Binary" && r["contentType"] == "application/pdf").expect("a discharge summary");
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, pdf["data"].as_str().unwrap()).unwrap();
    assert!(bytes.starts_with(b"%PDF-1.4") && bytes.ends_with(b"%%EOF\n"));
}

#[test]
fn groups_hold_the_panel_and_the_diabetes_registry() {
    let bundles = generate(&opts(50));
    let groups = crate::groups(1, &bundles[1..]);
    let resources: Vec<&Value> = groups["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    assert_eq!(resources.len(), 2);
    let patients: BTreeMap<String, &Value> =
        bundles[1..].iter().map(|b| (format!("Patient/{}", b["entry"][0]["resource"]["id"].as_str().unwrap()), b)).collect();
    for g in &resources {
        assert!(fhir::validate::validate_resource(g, Some("Group")).is_ok(), "{g}");
        let members: Vec<&str> = g["member"].as_array().unwrap().iter().map(|m| m["entity"]["reference"].as_str().unwrap()).collect();
        assert!(members.len() >= 3, "{}: {members:?}", g["id"]);
        assert_eq!(g["quantity"], members.len());
        assert!(members.iter().all(|m| patients.contains_key(*m)), "members are generated patients");
        if g["id"] == "kp-1-diabetes" {
            for m in &members {
                let text = patients[*m].to_string();
                assert!(text.contains("44054006"), "{m} has type 2 diabetes");
            }
        }
    }
}

/// Every prescription is dosed for the patient it was written for: no tablet or capsule for a child under
/// two, children's products by weight from two to eleven (acetaminophen at most 15 mg/kg a dose, 75 a
/// day; ibuprofen at most 10 mg/kg a dose), an inhaler inhaled, and a short course active while it lasts.
#[test]
fn prescriptions_are_dosed_for_the_patients_age_and_weight() {
    let bundles = generate(&opts(60));
    let (mut children, mut courses) = (0, 0);
    for b in &bundles[1..] {
        let rs: Vec<&Value> = b["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
        let birth = day(rs[0]["birthDate"].as_str().unwrap());
        let weights: Vec<(Date, f64)> =
            rs.iter().filter(|r| code(r) == "29463-7").map(|r| (day(r["effectiveDateTime"].as_str().unwrap()), quantity(r))).collect();
        for m in rs.iter().filter(|r| r["resourceType"] == "MedicationRequest" && r["medicationCodeableConcept"].is_object()) {
            let written = day(m["authoredOn"].as_str().unwrap());
            let age = (written - birth).whole_days() as f64 / 365.25;
            let coding = &m["medicationCodeableConcept"]["coding"][0];
            let (rx, display) = (coding["code"].as_str().unwrap(), coding["display"].as_str().unwrap());
            let text = m["dosageInstruction"][0]["text"].as_str().unwrap();
            let known = MEDICATIONS.iter().map(|(c, d, _)| (*c, *d)).chain(CHILD_MEDICATIONS.iter().map(|c| (c.1, c.2))).any(|p| p == (rx, display));
            assert!(known, "{rx} {display}: one code, one product");
            let route = m["dosageInstruction"][0]["route"]["coding"][0]["display"].as_str().unwrap();
            assert_eq!(route == "Respiratory tract route", display.contains("Inhaler"), "{display} by {route}");
            assert!(age >= 2.0 || m["category"][0]["coding"][0]["code"] == "community", "a sick visit's {display} for a child of {age:.1}");
            if m["category"][0]["coding"][0]["code"] == "outpatient" {
                courses += 1;
                let days = m["dispenseRequest"]["expectedSupplyDuration"]["value"].as_i64().unwrap();
                let running = written + time::Duration::days(days) > today();
                assert_eq!(m["status"] == "active", running, "{display} written {written} for {days} days: {}", m["status"]);
            }
            if age >= 12.0 || m["category"][0]["coding"][0]["code"] != "outpatient" {
                continue;
            }
            children += 1;
            assert!(CHILD_MEDICATIONS.iter().any(|c| c.1 == rx), "a child of {age:.1} given the adult {display}");
            // The nearest weight measured (each sick visit weighs the child).
            let kg = weights.iter().min_by_key(|(d, _)| (*d - written).whole_days().abs()).map(|w| w.1).unwrap();
            let units: f64 = text.split(' ').next().unwrap().parse().unwrap();
            let mg = units * CHILD_MEDICATIONS.iter().find(|c| c.1 == rx).unwrap().3;
            match rx {
                "282464" => assert!(mg / kg <= 17.0 && mg * 4.0 / kg <= 75.0, "acetaminophen {mg} mg for {kg} kg"),
                "198405" => assert!(mg / kg <= 11.0, "ibuprofen {mg} mg for {kg} kg"),
                "308182" => assert!(mg * 2.0 / kg <= 95.0, "amoxicillin {mg} mg twice daily for {kg} kg"),
                _ => {}
            }
        }
    }
    assert!(children > 0 && courses > children, "children's prescriptions {children}, short courses {courses}");
}

/// Vaccines by their route (rotavirus swallowed, MMR and varicella under the skin), and no ACE inhibitor
/// for a pregnant patient.
#[test]
fn routes_and_contraindications() {
    let bundles = generate(&opts(60));
    let mut seen = BTreeSet::new();
    for b in &bundles[1..] {
        let rs: Vec<&Value> = b["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
        for imm in rs.iter().filter(|r| r["resourceType"] == "Immunization" && r["status"] == "completed") {
            let cvx = imm["vaccineCode"]["coding"][0]["code"].as_str().unwrap();
            let route = imm["route"]["coding"][0]["code"].as_str().unwrap();
            let expected = match cvx {
                "119" => "PO",
                "03" | "21" => "SQ",
                _ => "IM",
            };
            assert_eq!(route, expected, "CVX {cvx}");
            assert_eq!(imm["site"].is_object(), route != "PO", "CVX {cvx}: a site only where it is injected");
            seen.insert(route.to_string());
        }
        let pregnant = rs.iter().any(|r| r["resourceType"] == "Condition" && code(r) == "72892002");
        let ace = rs.iter().any(|r| r["resourceType"] == "MedicationRequest" && r["medicationCodeableConcept"]["coding"][0]["code"] == "314076");
        assert!(!(pregnant && ace), "lisinopril for a pregnant patient");
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// A patient with anaemia on the problem list has the haemoglobin to show for it.
#[test]
fn anaemia_shows_in_the_blood_count() {
    let bundles = generate(&opts(120));
    let mut anaemic = 0;
    for b in &bundles[1..] {
        let rs: Vec<&Value> = b["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
        let Some(onset) = rs.iter().find(|r| r["resourceType"] == "Condition" && code(r) == "271737000").map(|c| day(c["onsetDateTime"].as_str().unwrap()))
        else {
            continue;
        };
        let male = rs[0]["gender"] == "male";
        let after: Vec<f64> = rs.iter().filter(|r| code(r) == "718-7" && day(r["effectiveDateTime"].as_str().unwrap()) >= onset).map(|r| quantity(r)).collect();
        if after.is_empty() {
            continue;
        }
        anaemic += 1;
        let mean = after.iter().sum::<f64>() / after.len() as f64;
        assert!(mean < if male { 13.5 } else { 12.0 }, "haemoglobin {after:?} with anaemia");
    }
    assert!(anaemic > 0, "an anaemic patient with a blood count");
}
