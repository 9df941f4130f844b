//! What the EHR shows of a patient, read straight from the FHIR store: banner facts, encounters,
//! problems, medications, allergies and the latest vital signs.

use fhir::display;
use fhir::query::{ParseOptions, parse};
use serde_json::Value;
use store::Store;
use time::Date;

/// A patient as listed and bannered.
#[derive(Debug, Clone)]
pub struct PatientFacts {
    /// The Patient id.
    pub id: String,
    /// Given and family name.
    pub name: String,
    /// `male`, `female`, `other` or `unknown` as recorded.
    pub gender: String,
    /// `YYYY-MM-DD`.
    pub birth_date: String,
    /// Age in years today (or months for infants), as the banner shows it.
    pub age: String,
    /// The medical record number.
    pub identifier: String,
}

/// One row of a chart section.
#[derive(Debug, Clone)]
pub struct Line {
    /// The resource id.
    pub id: String,
    /// What a clinician reads first (the display text).
    pub text: String,
    /// The dates, status and values beside it.
    pub detail: String,
}

/// Everything the chart page shows.
#[derive(Debug, Clone)]
pub struct Chart {
    /// The banner.
    pub patient: PatientFacts,
    /// Recent encounters, newest first.
    pub encounters: Vec<Line>,
    /// Active problems.
    pub problems: Vec<Line>,
    /// Active medications.
    pub medications: Vec<Line>,
    /// Allergies and intolerances.
    pub allergies: Vec<Line>,
    /// Latest vital signs.
    pub vitals: Vec<Line>,
}

/// The banner facts of a Patient resource (`v`), with the age on `today`.
pub fn patient_facts(id: &str, v: &Value, today: Date) -> PatientFacts {
    // The official name (else the usual one, else the first that is not an old one): not array position.
    let names = v["name"].as_array().map(Vec::as_slice).unwrap_or_default();
    let by_use = |u: &str| names.iter().find(|n| n["use"] == u);
    let name = by_use("official").or_else(|| by_use("usual")).or_else(|| names.iter().find(|n| n["use"] != "old")).unwrap_or(&Value::Null);
    let given = name["given"].as_array().map(|g| g.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")).unwrap_or_default();
    let family = name["family"].as_str().unwrap_or("");
    let full = format!("{given} {family}").trim().to_string();
    let birth_date = v["birthDate"].as_str().unwrap_or("").to_string();
    let age = display::age(&birth_date, today).unwrap_or_default();
    let identifier = display::mrn(v);
    PatientFacts {
        id: id.to_string(),
        name: if full.is_empty() { format!("Patient {id}") } else { full },
        gender: v["gender"].as_str().unwrap_or("unknown").to_string(),
        birth_date,
        age,
        identifier,
    }
}

/// The words of a CodeableConcept: its text, else the display of any of its codings, else a code.
pub fn concept(v: &Value) -> String {
    if let Some(t) = v["text"].as_str() {
        return t.to_string();
    }
    let codings = v["coding"].as_array().map(Vec::as_slice).unwrap_or_default();
    codings.iter().find_map(|c| c["display"].as_str()).or_else(|| codings.iter().find_map(|c| c["code"].as_str())).unwrap_or("(not coded)").to_string()
}

/// An encounter's class (a Coding) in words: its display, else the v3 ActCode's name.
fn encounter_class(class: &Value) -> String {
    if let Some(d) = class["display"].as_str() {
        return d.to_string();
    }
    let words = match class["code"].as_str().unwrap_or("") {
        "AMB" => "Ambulatory visit",
        "EMER" => "Emergency visit",
        "IMP" => "Inpatient stay",
        "ACUTE" => "Inpatient acute stay",
        "NONAC" => "Inpatient non-acute stay",
        "OBSENC" => "Observation stay",
        "PRENC" => "Pre-admission",
        "SS" => "Short stay",
        "VR" => "Virtual visit",
        "HH" => "Home health visit",
        "FLD" => "Field visit",
        _ => "Encounter",
    };
    words.to_string()
}

fn date_part(v: &Value) -> String {
    v.as_str().map(|s| s.chars().take(10).collect()).unwrap_or_default()
}

/// An Observation's value as a clinician reads it: a quantity with its printed unit, a concept's words,
/// a blood pressure as systolic/diastolic (components found by code), or each coded component labelled.
pub fn observation_value(o: &Value) -> String {
    if let Some(q) = display::quantity(&o["valueQuantity"]) {
        return q;
    }
    if let Some(absent) = display::absent_reason(o) {
        return absent;
    }
    if o["valueCodeableConcept"].is_object() {
        return concept(&o["valueCodeableConcept"]);
    }
    if let Some(s) = o["valueString"].as_str() {
        return s.to_string();
    }
    if display::is_blood_pressure(o) {
        return display::blood_pressure(o).unwrap_or_default();
    }
    let parts: Vec<String> = o["component"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| {
                    let value = display::quantity(&c["valueQuantity"])
                        .or_else(|| c["valueCodeableConcept"].is_object().then(|| concept(&c["valueCodeableConcept"])))
                        .or_else(|| c["valueString"].as_str().map(str::to_string))?;
                    Some(format!("{}: {value}", concept(&c["code"])))
                })
                .collect()
        })
        .unwrap_or_default();
    parts.join("; ")
}

/// Resources of one type matching FHIR search parameters, at most `limit`.
pub async fn search(store: &dyn Store, resource_type: &str, pairs: &[(&str, &str)], limit: usize) -> Result<Vec<(String, Value)>, store::StoreError> {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let q = parse(resource_type, &pairs, ParseOptions { lenient: false, base: None, now_ms: 0 }).map_err(|e| store::StoreError::Backend(e.0))?;
    let keys = store.search(&q).await?;
    let found = store.fetch(&keys[..keys.len().min(limit)]).await?;
    Ok(found.into_iter().filter_map(|r| serde_json::from_str(&r.json).ok().map(|v| (r.id, v))).collect())
}

/// Reads a patient's chart; `None` when the patient does not exist.
pub async fn load(store: &dyn Store, id: &str, today: Date) -> Result<Option<Chart>, store::StoreError> {
    let Some(p) = store.read("Patient", id).await? else { return Ok(None) };
    if p.deleted {
        return Ok(None);
    }
    let patient_json: Value = serde_json::from_str(&p.json).unwrap_or_default();
    let patient = patient_facts(id, &patient_json, today);
    let (encounters, problems, medications, allergies, vitals) = sections(store, id).await?;
    Ok(Some(Chart { patient, encounters, problems, medications, allergies, vitals }))
}

type Sections = (Vec<Line>, Vec<Line>, Vec<Line>, Vec<Line>, Vec<Line>);

async fn sections(store: &dyn Store, id: &str) -> Result<Sections, store::StoreError> {
    let encounters = search(store, "Encounter", &[("patient", id), ("_sort", "-date")], 10).await?;
    let encounters = encounters
        .iter()
        .map(|(eid, e)| {
            let what = e["type"].as_array().and_then(|t| t.first()).map(concept).unwrap_or_else(|| encounter_class(&e["class"]));
            let status = e["status"].as_str().unwrap_or("");
            Line { id: eid.clone(), text: what, detail: format!("{} · {status}", date_part(&e["period"]["start"])) }
        })
        .collect();
    let problems = search(store, "Condition", &[("patient", id), ("clinical-status", display::CURRENT_PROBLEMS), ("_sort", "-onset-date")], 50).await?;
    let problems = problems
        .iter()
        .map(|(cid, c)| Line { id: cid.clone(), text: concept(&c["code"]), detail: format!("since {}", date_part(&c["onsetDateTime"])) })
        .collect();
    let meds = search(store, "MedicationRequest", &[("patient", id), ("status", "active")], 50).await?;
    let medications = meds
        .iter()
        .map(|(mid, m)| {
            let dose = m["dosageInstruction"][0]["text"].as_str().unwrap_or("").to_string();
            Line {
                id: mid.clone(),
                // A drug given by reference reads by the reference's display.
                text: match m["medicationReference"]["display"].as_str() {
                    Some(d) if !m["medicationCodeableConcept"].is_object() => d.to_string(),
                    _ => concept(&m["medicationCodeableConcept"]),
                },
                detail: if dose.is_empty() { format!("since {}", date_part(&m["authoredOn"])) } else { dose },
            }
        })
        .collect();
    let allergies = search(store, "AllergyIntolerance", &[("patient", id)], 50).await?;
    // Refuted or entered in error: not an allergy. Unconfirmed or no longer active: said so.
    let allergies = allergies
        .iter()
        .filter_map(|(aid, a)| {
            let note = display::allergy_note_of(a)?;
            let detail = [a["criticality"].as_str().map(|c| format!("criticality {c}")).unwrap_or_default(), note.to_string()];
            Some(Line { id: aid.clone(), text: concept(&a["code"]), detail: detail.into_iter().filter(|d| !d.is_empty()).collect::<Vec<_>>().join(" · ") })
        })
        .collect();
    let obs = search(store, "Observation", &[("patient", id), ("category", "vital-signs"), ("_sort", "-date")], 200).await?;
    let mut seen = std::collections::HashSet::new();
    // The latest result of each kind (by its LOINC code, else its words), never one entered in error.
    let vitals = obs
        .iter()
        .filter(|(_, o)| display::is_result(o["status"].as_str()))
        .filter(|(_, o)| {
            let codings = o["code"]["coding"].as_array().map(Vec::as_slice).unwrap_or_default();
            let loinc = codings.iter().find(|c| c["system"] == display::LOINC).and_then(|c| c["code"].as_str());
            seen.insert(loinc.map(str::to_string).unwrap_or_else(|| concept(&o["code"])))
        })
        .map(|(oid, o)| Line {
            id: oid.clone(),
            text: concept(&o["code"]),
            detail: format!("{} · {}", observation_value(o), date_part(&o["effectiveDateTime"])),
        })
        .collect();
    Ok((encounters, problems, medications, allergies, vitals))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::date;

    #[test]
    fn banners_take_the_official_name_and_the_mrn() {
        let p = json!({"name": [{"use": "old", "family": "Maiden", "given": ["Ann"]}, {"use": "official", "family": "Smith", "given": ["Ann", "B"]}],
            "identifier": [{"value": "uuid-1"}, {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]}, "value": "999-99-9999"},
                {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}, "value": "MRN-7"}],
            "birthDate": "2026-05-01", "gender": "female"});
        let f = patient_facts("p", &p, date!(2026 - 12 - 07));
        assert_eq!((f.name.as_str(), f.identifier.as_str(), f.age.as_str()), ("Ann B Smith", "MRN-7", "7 mo"));
        let no_mrn = json!({"identifier": [{"value": "uuid-1"}]});
        assert_eq!(patient_facts("p", &no_mrn, date!(2026 - 12 - 07)).identifier, "", "an untyped identifier is not an MRN");
    }

    #[test]
    fn observation_values_read_like_a_chart() {
        assert_eq!(observation_value(&json!({"valueQuantity": {"value": 72.0, "unit": "/min"}})), "72 /min");
        assert_eq!(observation_value(&json!({"valueQuantity": {"value": 36.55, "unit": "Cel"}})), "36.5°C");
        let part = |code: &str, v: f64| json!({"code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": code}, "valueQuantity": {"value": v, "unit": "mm[Hg]"}});
        let bp = json!({"code": {"coding": [{"system": "http://loinc.org", "code": "55284-4"}]}, "component": [part("8462-4", 86.0), part("8480-6", 130.0)]});
        assert_eq!(observation_value(&bp), "130/86 mmHg", "systolic first, whatever the array order");
        let other = json!({"code": {"text": "Panel"}, "component": [{"code": {"text": "Left"}, "valueQuantity": {"value": 1.5, "unit": "cm"}}, {"code": {"text": "Right"}, "valueString": "absent"}]});
        assert_eq!(observation_value(&other), "Left: 1.5 cm; Right: absent");
        assert_eq!(observation_value(&json!({"valueQuantity": {"value": 600.0, "comparator": ">", "unit": "mg/dL"}})), ">600 mg/dL");
        let absent = json!({"dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error", "display": "Error"}]}});
        assert_eq!(observation_value(&absent), "no value (error)");
    }
}
