//! Every search combination Inferno's US Core 6.1.0 kit runs (SHALL and SHOULD, as listed in the kit's
//! `metadata.yml` files; summarised in `../shared/spec/us-core-g10-checklist.md`), run the way the kit runs
//! them, on the seeded population, on both backends:
//!
//! - values are taken from the seeded resources (the first resource with a value for every parameter of
//!   the combination), for each patient;
//! - every page is followed; the result must be exactly what this module's own matcher finds among all the
//!   resources of the type (correct *and* complete). The matcher reads the resources' JSON with paths written
//!   here from the US Core SearchParameter expressions, independently of the server's index;
//! - each search is repeated with `patient=Patient/{id}`, as `POST [type]/_search`, and with `system|code`
//!   for tokens, and must return the same resources;
//! - every date parameter is searched with the `gt`, `ge`, `lt` and `le` comparators;
//! - multipleOr: a comma list of every value seen returns every resource having one of them;
//! - `_revinclude=Provenance:target` on every profile's type, and `_include=MedicationRequest:medication`
//!   and `MedicationDispense:medication`, include exactly the resources that point (or are pointed) there.
//!

use crate::TestApp;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Token,
    Date,
    Reference,
    Str,
    Uri,
}

/// A search parameter as the test's own matcher reads it: paths are dotted JSON paths (arrays are walked);
/// a `[x]` path lists its variants.
struct Param {
    name: &'static str,
    kind: Kind,
    paths: &'static [&'static str],
}

const fn p(name: &'static str, kind: Kind, paths: &'static [&'static str]) -> Param {
    Param { name, kind, paths }
}

struct Profile {
    ty: &'static str,
    /// The path of the reference to the patient (`patient` parameter).
    patient: &'static str,
    params: &'static [Param],
    /// Search combinations besides `patient` alone (which every profile with a patient runs first).
    combos: &'static [&'static [&'static str]],
    /// Parameters with multipleOr.
    mor: &'static [&'static str],
}

use Kind::*;

const STATUS: Param = p("status", Token, &["status"]);

const PROFILES: &[Profile] = &[
    Profile {
        ty: "AllergyIntolerance",
        patient: "patient",
        params: &[p("clinical-status", Token, &["clinicalStatus"])],
        combos: &[&["patient", "clinical-status"]],
        mor: &[],
    },
    Profile {
        ty: "CarePlan",
        patient: "subject",
        params: &[p("category", Token, &["category"]), STATUS, p("date", Date, &["period"])],
        combos: &[&["patient", "category"], &["patient", "category", "status"], &["patient", "category", "status", "date"], &["patient", "category", "date"]],
        mor: &["status"],
    },
    Profile {
        ty: "CareTeam",
        patient: "subject",
        params: &[STATUS, p("role", Token, &["participant.role"])],
        combos: &[&["patient", "status"], &["role"], &["patient", "role"]],
        mor: &["status"],
    },
    Profile {
        ty: "Condition",
        patient: "subject",
        params: &[
            p("category", Token, &["category"]),
            p("clinical-status", Token, &["clinicalStatus"]),
            p("onset-date", Date, &["onsetDateTime", "onsetPeriod"]),
            p("abatement-date", Date, &["abatementDateTime", "abatementPeriod"]),
            p("recorded-date", Date, &["recordedDate"]),
            p("asserted-date", Date, &["extension"]),
            p("code", Token, &["code"]),
            p("encounter", Reference, &["encounter"]),
        ],
        combos: &[
            &["patient", "category"],
            &["patient", "recorded-date"],
            &["patient", "asserted-date"],
            &["patient", "onset-date"],
            &["patient", "abatement-date"],
            &["patient", "clinical-status"],
            &["patient", "category", "clinical-status"],
            &["patient", "category", "encounter"],
            &["patient", "code"],
        ],
        mor: &["clinical-status"],
    },
    Profile { ty: "Coverage", patient: "beneficiary", params: &[], combos: &[], mor: &[] },
    Profile {
        ty: "Device",
        patient: "patient",
        params: &[p("type", Token, &["type"]), STATUS],
        combos: &[&["patient", "type"], &["patient", "status"]],
        mor: &["status"],
    },
    Profile {
        ty: "DiagnosticReport",
        patient: "subject",
        params: &[p("category", Token, &["category"]), p("code", Token, &["code"]), p("date", Date, &["effectiveDateTime", "effectivePeriod"]), STATUS],
        combos: &[&["patient", "category"], &["patient", "code"], &["patient", "category", "date"], &["patient", "status"], &["patient", "code", "date"]],
        mor: &["status"],
    },
    Profile {
        ty: "DocumentReference",
        patient: "subject",
        params: &[
            p("_id", Token, &["id"]),
            p("category", Token, &["category"]),
            p("type", Token, &["type"]),
            p("date", Date, &["date"]),
            STATUS,
            p("period", Date, &["context.period"]),
        ],
        combos: &[
            &["_id"],
            &["patient", "category"],
            &["patient", "type"],
            &["patient", "category", "date"],
            &["patient", "status"],
            &["patient", "type", "period"],
        ],
        mor: &["status"],
    },
    Profile {
        ty: "Encounter",
        patient: "subject",
        params: &[
            p("_id", Token, &["id"]),
            p("date", Date, &["period"]),
            p("identifier", Token, &["identifier"]),
            p("class", Token, &["class"]),
            p("type", Token, &["type"]),
            STATUS,
            p("location", Reference, &["location.location"]),
            p("discharge-disposition", Token, &["hospitalization.dischargeDisposition"]),
        ],
        combos: &[
            &["_id"],
            &["date", "patient"],
            &["identifier"],
            &["class", "patient"],
            &["patient", "type"],
            &["patient", "status"],
            &["patient", "location"],
            &["patient", "discharge-disposition"],
        ],
        mor: &["status"],
    },
    Profile {
        ty: "Goal",
        patient: "subject",
        params: &[p("lifecycle-status", Token, &["lifecycleStatus"]), p("target-date", Date, &["target.dueDate"]), p("description", Token, &["description"])],
        combos: &[&["patient", "lifecycle-status"], &["patient", "target-date"], &["patient", "description"]],
        mor: &["lifecycle-status"],
    },
    Profile {
        ty: "Immunization",
        patient: "patient",
        params: &[p("date", Date, &["occurrenceDateTime"]), STATUS],
        combos: &[&["patient", "date"], &["patient", "status"]],
        mor: &["status"],
    },
    Profile {
        ty: "MedicationDispense",
        patient: "subject",
        params: &[STATUS, p("type", Token, &["type"])],
        combos: &[&["patient", "status"], &["patient", "status", "type"]],
        mor: &["status", "type"],
    },
    Profile {
        ty: "MedicationRequest",
        patient: "subject",
        params: &[p("intent", Token, &["intent"]), STATUS, p("encounter", Reference, &["encounter"]), p("authoredon", Date, &["authoredOn"])],
        combos: &[&["patient", "intent"], &["patient", "intent", "status"], &["patient", "intent", "encounter"], &["patient", "intent", "authoredon"]],
        mor: &["intent", "status"],
    },
    Profile {
        ty: "Observation",
        patient: "subject",
        params: &[
            p("category", Token, &["category"]),
            p("code", Token, &["code"]),
            p("date", Date, &["effectiveDateTime", "effectivePeriod", "effectiveInstant"]),
            STATUS,
        ],
        combos: &[
            &["patient", "category"],
            &["patient", "code"],
            &["patient", "category", "date"],
            &["patient", "category", "status"],
            &["patient", "code", "date"],
        ],
        mor: &["status"],
    },
    Profile {
        ty: "Procedure",
        patient: "subject",
        params: &[p("date", Date, &["performedDateTime", "performedPeriod"]), STATUS, p("code", Token, &["code"])],
        combos: &[&["patient", "date"], &["patient", "status"], &["patient", "code", "date"]],
        mor: &["status"],
    },
    Profile {
        ty: "ServiceRequest",
        patient: "subject",
        params: &[p("_id", Token, &["id"]), p("category", Token, &["category"]), p("code", Token, &["code"]), p("authored", Date, &["authoredOn"]), STATUS],
        combos: &[
            &["_id"],
            &["patient", "category"],
            &["patient", "code"],
            &["patient", "category", "authored"],
            &["patient", "status"],
            &["patient", "code", "authored"],
        ],
        mor: &["status"],
    },
    Profile { ty: "Specimen", patient: "subject", params: &[p("_id", Token, &["id"])], combos: &[&["_id"]], mor: &[] },
    Profile {
        ty: "QuestionnaireResponse",
        patient: "subject",
        params: &[p("_id", Token, &["id"]), p("questionnaire", Uri, &["questionnaire"]), p("authored", Date, &["authored"]), STATUS],
        combos: &[&["_id"], &["patient", "questionnaire"], &["patient", "authored"], &["patient", "status"]],
        mor: &["status"],
    },
    Profile {
        ty: "Patient",
        patient: "",
        params: &[
            p("_id", Token, &["id"]),
            p("identifier", Token, &["identifier"]),
            p("name", Str, &["name.family", "name.given", "name.text", "name.prefix", "name.suffix"]),
            p("family", Str, &["name.family"]),
            p("birthdate", Date, &["birthDate"]),
            p("gender", Token, &["gender"]),
            p("death-date", Date, &["deceasedDateTime"]),
        ],
        combos: &[
            &["_id"],
            &["identifier"],
            &["name"],
            &["birthdate", "name"],
            &["gender", "name"],
            &["birthdate", "family"],
            &["family", "gender"],
            &["death-date", "family"],
        ],
        mor: &[],
    },
];

/// The combinations the seeded data holds no value for (the kit skips them too; both are SHOULD): the
/// generated goals' descriptions are text ("Blood pressure below 140/90 mmHg"), with no code to search by,
/// and the seeded patients are alive.
const NO_DATA: &[(&str, &[&str])] = &[("Goal", &["patient", "description"]), ("Patient", &["death-date", "family"])];

// ---- reading values out of resources ------------------------------------------------------------------

fn walk<'a>(v: &'a Value, path: &str, out: &mut Vec<&'a Value>) {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    match v {
        Value::Array(items) => items.iter().for_each(|i| walk(i, path, out)),
        Value::Object(m) => {
            if let Some(child) = m.get(head) {
                match rest {
                    Some(r) => walk(child, r, out),
                    None => match child {
                        Value::Array(items) => out.extend(items.iter()),
                        other => out.push(other),
                    },
                }
            }
        }
        _ => {}
    }
}

fn values<'a>(r: &'a Value, param: &Param) -> Vec<&'a Value> {
    if param.name == "asserted-date" {
        // The condition-assertedDate extension's value.
        let url = "http://hl7.org/fhir/StructureDefinition/condition-assertedDate";
        return r["extension"].as_array().into_iter().flatten().filter(|e| e["url"] == url).map(|e| &e["valueDateTime"]).filter(|v| v.is_string()).collect();
    }
    let mut out = Vec::new();
    for path in param.paths {
        walk(r, path, &mut out);
    }
    out
}

/// `(system, code)` pairs of a token element: CodeableConcept, Coding, Identifier or a code.
fn tokens(v: &Value) -> Vec<(Option<String>, String)> {
    let s = |v: &Value| v.as_str().map(str::to_string);
    match v {
        Value::String(c) => vec![(None, c.clone())],
        Value::Object(m) if m.contains_key("coding") => m["coding"].as_array().into_iter().flatten().flat_map(tokens).collect(),
        Value::Object(m) => match m.get("code").or_else(|| m.get("value")).and_then(s) {
            Some(code) => vec![(m.get("system").and_then(s), code)],
            None => vec![],
        },
        _ => vec![],
    }
}

/// The instants a date element covers, `[lo, hi]` in Unix ms.
fn range(v: &Value) -> Option<(i64, i64)> {
    match v {
        Value::String(s) => fhir::time::parse_date_range(s).map(|r| (r.lo, r.hi)),
        Value::Object(m) => {
            let lo = m.get("start").and_then(Value::as_str).and_then(fhir::time::parse_date_range).map_or(fhir::time::MIN_MS, |r| r.lo);
            let hi = m.get("end").and_then(Value::as_str).and_then(fhir::time::parse_date_range).map_or(fhir::time::MAX_MS, |r| r.hi);
            Some((lo, hi))
        }
        _ => None,
    }
}

fn fold(s: &str) -> String {
    s.to_lowercase().chars().filter(|c| c.is_alphanumeric() || c.is_whitespace()).collect()
}

/// Whether `r` matches `name=value` under this module's reading of the parameter (see the module docs for
/// the date comparators: the kit's and the server's overlap semantics).
fn matches(r: &Value, profile: &Profile, name: &str, value: &str) -> bool {
    if name == "patient" {
        let mut refs = Vec::new();
        walk(r, &format!("{}.reference", profile.patient), &mut refs);
        let id = value.trim_start_matches("Patient/");
        return refs.iter().any(|v| v.as_str() == Some(&format!("Patient/{id}")));
    }
    let param = profile.params.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("{}: no parameter {name}", profile.ty));
    let alternatives: Vec<&str> = value.split(',').collect();
    let vals = if param.name == "_id" { vec![&r["id"]] } else { values(r, param) };
    alternatives.iter().any(|alt| match param.kind {
        Token => {
            let (system, code) = match alt.split_once('|') {
                Some((s, c)) => (Some(s), c),
                None => (None, *alt),
            };
            vals.iter().flat_map(|v| tokens(v)).any(|(s, c)| c == code && system.is_none_or(|want| s.as_deref() == Some(want)))
        }
        Reference => vals.iter().any(|v| v["reference"].as_str().is_some_and(|rf| rf == *alt || rf.ends_with(&format!("/{alt}")))),
        Uri => vals.iter().any(|v| v.as_str() == Some(*alt)),
        Str => vals.iter().any(|v| v.as_str().is_some_and(|s| fold(s).starts_with(&fold(alt)))),
        Date => {
            let (prefix, date) = if alt.len() > 2 && alt[..2].chars().all(|c| c.is_ascii_lowercase()) { alt.split_at(2) } else { ("eq", *alt) };
            let s = fhir::time::parse_date_range(date).expect("a search date");
            vals.iter().filter_map(|v| range(v)).any(|(lo, hi)| match prefix {
                "eq" => lo >= s.lo && hi <= s.hi,
                "gt" => hi > s.hi,
                "lt" => lo < s.lo,
                "ge" => hi >= s.lo,
                "le" => lo <= s.hi,
                other => panic!("prefix {other}"),
            })
        }
    })
}

/// The value the kit would search with for `name`, read from `r`.
fn search_value(r: &Value, profile: &Profile, name: &str, with_system: bool) -> Option<String> {
    if name == "patient" {
        let mut refs = Vec::new();
        walk(r, &format!("{}.reference", profile.patient), &mut refs);
        return refs.first().and_then(|v| v.as_str()).map(|s| s.trim_start_matches("Patient/").to_string());
    }
    let param = profile.params.iter().find(|p| p.name == name)?;
    if param.name == "_id" {
        return r["id"].as_str().map(str::to_string);
    }
    let first = *values(r, param).first()?;
    match param.kind {
        Token => tokens(first).into_iter().next().map(|(s, c)| match (with_system, s) {
            (true, Some(s)) => format!("{s}|{c}"),
            _ => c,
        }),
        Reference => first["reference"].as_str().map(str::to_string),
        Uri => first.as_str().map(str::to_string),
        Str => first.as_str().map(|s| s.chars().take(4).collect()),
        // A date or dateTime as written; a Period by its start's day, searched `ge`.
        Date => match first {
            Value::String(s) => Some(s.clone()),
            Value::Object(m) => m.get("start").and_then(Value::as_str).map(|s| format!("ge{}", &s[..10.min(s.len())])),
            _ => None,
        },
    }
}

// ---- talking to the server ----------------------------------------------------------------------------

/// Every resource a search finds, following `next` links; included resources apart.
async fn search_all(app: &TestApp, query: &str) -> (Vec<Value>, Vec<Value>) {
    let mut url = app.url(query);
    let (mut matches, mut included) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let r = app.client.get(&url).send().await.expect("GET");
        let status = r.status().as_u16();
        let b: Value = r.json().await.expect("json");
        assert_eq!(status, 200, "{query}: {b}");
        for e in b["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] == "include" { &mut included } else { &mut matches }.push(e["resource"].clone());
        }
        match b["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next") {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => return (matches, included),
        }
    }
    panic!("{query}: more than 100 pages");
}

fn id_set(resources: &[Value]) -> BTreeSet<String> {
    resources.iter().map(|r| format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())).collect()
}

fn encode(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

fn query_string(pairs: &[(String, String)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect::<Vec<_>>().join("&")
}

/// Runs one search and checks it against the matcher over `universe`: the same resources, no more, no less.
async fn check(app: &TestApp, profile: &Profile, universe: &[Value], pairs: &[(String, String)]) -> usize {
    let expected: Vec<Value> = universe.iter().filter(|r| pairs.iter().all(|(k, v)| matches(r, profile, k, v))).cloned().collect();
    let query = format!("{}?{}&_count=7", profile.ty, query_string(pairs));
    let (got, _) = search_all(app, &query).await;
    assert_eq!(got.len(), id_set(&got).len(), "{query}: an entry repeated across pages");
    assert_eq!(id_set(&got), id_set(&expected), "{query}: the server's result (left) is not the matcher's (right)");
    expected.len()
}

#[tokio::test]
async fn every_us_core_search_the_kit_runs_is_correct_and_complete() {
    let app = crate::spawn_app().await;
    kindling::seed(&app.app_state, 3, 12).await.unwrap();
    let patients: Vec<String> = (0..3).map(|n| synth::patient_id(12, n)).collect();
    let (provenance, _) = search_all(&app, "Provenance?_count=500").await;
    let mut ran = 0;
    let mut missing: Vec<(String, Vec<&str>)> = Vec::new();
    for profile in PROFILES {
        let (universe, _) = search_all(&app, &format!("{}?_count=500", profile.ty)).await;
        assert!(!universe.is_empty(), "no seeded {}", profile.ty);
        let mut combos: Vec<&[&str]> = profile.combos.to_vec();
        if !profile.patient.is_empty() {
            combos.insert(0, &["patient"]);
        }
        for combo in combos {
            let mut seen_any = false;
            for patient in &patients {
                // The first resource (of this patient, when the combination has `patient`) with a value for
                // every parameter of the combination.
                let source = universe.iter().find(|r| {
                    (!combo.contains(&"patient") || matches(r, profile, "patient", patient))
                        && combo.iter().all(|name| search_value(r, profile, name, false).is_some())
                });
                let Some(r) = source else { continue };
                seen_any = true;
                let pairs: Vec<(String, String)> = combo.iter().map(|n| (n.to_string(), search_value(r, profile, n, false).unwrap())).collect();
                let n = check(&app, profile, &universe, &pairs).await;
                assert!(n > 0, "{} {pairs:?}: the resource the values came from is not found", profile.ty);
                ran += 1;
                // The kit's variants: reference form, POST _search, system|code.
                let qs = query_string(&pairs);
                if combo.contains(&"patient") {
                    let reference: Vec<(String, String)> =
                        pairs.iter().map(|(k, v)| if k == "patient" { (k.clone(), format!("Patient/{v}")) } else { (k.clone(), v.clone()) }).collect();
                    assert_eq!(check(&app, profile, &universe, &reference).await, n);
                }
                let posted = app
                    .client
                    .post(app.url(&format!("{}/_search", profile.ty)))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("{qs}&_count=500"))
                    .send()
                    .await
                    .unwrap();
                let posted: Value = posted.json().await.unwrap();
                assert_eq!(posted["total"], json!(n), "POST {}/_search {qs}", profile.ty);
                let with_system: Vec<(String, String)> = combo.iter().map(|name| (name.to_string(), search_value(r, profile, name, true).unwrap())).collect();
                if with_system != pairs {
                    assert_eq!(check(&app, profile, &universe, &with_system).await, n, "system|code variant");
                }
                // Comparators on every date parameter, on the value's day.
                for (k, v) in &pairs {
                    let is_date = profile.params.iter().any(|p| p.name == k && p.kind == Date);
                    if !is_date {
                        continue;
                    }
                    let day = v.trim_start_matches(|c: char| c.is_ascii_lowercase()).chars().take(10).collect::<String>();
                    for prefix in ["gt", "ge", "lt", "le"] {
                        let compared: Vec<(String, String)> =
                            pairs.iter().map(|(k2, v2)| if k2 == k { (k2.clone(), format!("{prefix}{day}")) } else { (k2.clone(), v2.clone()) }).collect();
                        check(&app, profile, &universe, &compared).await;
                        ran += 1;
                    }
                }
                if !combo.contains(&"patient") {
                    break; // the same search for every patient
                }
            }
            if !seen_any {
                missing.push((profile.ty.to_string(), combo.to_vec()));
            }
        }
        // multipleOr: every value seen, as one comma list, for each patient.
        for name in profile.mor {
            for patient in &patients {
                let mut all: BTreeMap<String, ()> = BTreeMap::new();
                for r in universe.iter().filter(|r| matches(r, profile, "patient", patient)) {
                    let param = profile.params.iter().find(|p| p.name == *name).unwrap();
                    for v in values(r, param) {
                        for (_, c) in tokens(v) {
                            all.insert(c, ());
                        }
                    }
                }
                if all.len() < 2 {
                    continue;
                }
                let list = all.keys().cloned().collect::<Vec<_>>().join(",");
                check(&app, profile, &universe, &[("patient".into(), patient.clone()), (name.to_string(), list)]).await;
                ran += 1;
            }
        }
        // _revinclude=Provenance:target: exactly the Provenance pointing at the matches.
        {
            for patient in &patients {
                let query = if profile.patient.is_empty() {
                    format!("Patient?_id={patient}&_revinclude=Provenance:target&_count=7")
                } else {
                    format!("{}?patient={patient}&_revinclude=Provenance:target&_count=7", profile.ty)
                };
                let (got, included) = search_all(&app, &query).await;
                let targets = id_set(&got);
                let expected: Vec<Value> = provenance
                    .iter()
                    .filter(|p| p["target"].as_array().into_iter().flatten().any(|t| t["reference"].as_str().is_some_and(|r| targets.contains(r))))
                    .cloned()
                    .collect();
                assert_eq!(id_set(&included), id_set(&expected), "{query}");
                ran += 1;
            }
        }
    }
    assert!(provenance.len() >= 3, "the seeded population carries Provenance");

    // _include of the medication, for MedicationRequest and MedicationDispense.
    for ty in ["MedicationRequest", "MedicationDispense"] {
        for patient in &patients {
            let query = format!("{ty}?patient={patient}&_include={ty}:medication&_count=7");
            let (got, included) = search_all(&app, &query).await;
            let expected: BTreeSet<String> = got.iter().filter_map(|r| r["medicationReference"]["reference"].as_str().map(str::to_string)).collect();
            assert_eq!(id_set(&included), expected, "{query}");
            ran += 1;
        }
    }
    let missing_expected: Vec<(String, Vec<&str>)> = NO_DATA.iter().map(|(t, c)| (t.to_string(), c.to_vec())).collect();
    assert_eq!(missing, missing_expected, "combinations the seeded data has no values for");
    eprintln!("US Core kit searches run and checked: {ran}");
    assert!(ran > 300, "{ran} searches");
}
