//! Turns a resource into search-index rows, one set per parameter type.
//!
//! Path syntax (see [`crate::params`]): alternatives separated by `|`; each alternative a dotted path of
//! JSON member names from the resource root; a step may carry one filter `step[field=value]` that keeps only
//! array items whose `field` equals `value`. Arrays are flattened at every step.

use crate::params::{self, ParamKind, SearchParam};
use crate::reference::parse_reference;
use crate::time::parse_date_range;
use serde_json::Value;

/// A `string` parameter's value of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct StringRow {
    /// The search parameter's index key (`Type.name`).
    pub key: &'static str,
    /// Lower-cased, accents removed (what `name=` matches).
    pub norm: String,
    /// As written (what `name:exact=` matches).
    pub exact: String,
}

/// A `token` (or `uri`) parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    /// The search parameter's index key (`Type.name`).
    pub key: &'static str,
    /// The code system, when given.
    pub system: Option<String>,
    /// The code, when given.
    pub code: Option<String>,
    /// Display or text, normalised, for `:text`.
    pub text: Option<String>,
}

/// A `reference` parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceRow {
    /// The search parameter's index key (`Type.name`).
    pub key: &'static str,
    /// The referenced type, when the reference names one.
    pub target_type: Option<String>,
    /// The referenced id.
    pub target_id: Option<String>,
    /// The reference as written, when absolute.
    pub url: Option<String>,
}

/// A `date` parameter's value, as the range of instants it covers.
#[derive(Debug, Clone, PartialEq)]
pub struct DateRow {
    /// The search parameter's index key (`Type.name`).
    pub key: &'static str,
    /// The first millisecond (Unix ms).
    pub lo: i64,
    /// The last millisecond (Unix ms).
    pub hi: i64,
}

/// A `quantity` parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantityRow {
    /// The search parameter's index key (`Type.name`).
    pub key: &'static str,
    /// The number.
    pub value: f64,
    /// The unit's system (UCUM).
    pub system: Option<String>,
    /// The unit's code.
    pub code: Option<String>,
    /// The unit as written.
    pub unit: Option<String>,
}

/// A `number` parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub struct NumberRow {
    /// The search parameter's index key (`Type.name`).
    pub key: &'static str,
    /// The number.
    pub value: f64,
}

/// Every index row of one resource version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexRows {
    /// String values.
    pub strings: Vec<StringRow>,
    /// Token values.
    pub tokens: Vec<TokenRow>,
    /// Reference values.
    pub references: Vec<ReferenceRow>,
    /// Date values.
    pub dates: Vec<DateRow>,
    /// Quantity values.
    pub quantities: Vec<QuantityRow>,
    /// Number values.
    pub numbers: Vec<NumberRow>,
    /// Ids of the patients whose compartment holds this resource.
    pub patient_compartments: Vec<String>,
    /// `patient_compartments`, plus the ids of every other patient a reference row of this resource points
    /// to (by an absolute URL elsewhere, through an element outside the compartment definition, or as a
    /// bare string, all of which a `patient=X` or `subject=Patient/X` search matches). The per-patient
    /// token index is keyed by these, so that it holds every resource that a compartment or a patient
    /// reference search can find.
    pub referenced_patients: Vec<String>,
}

/// One row of the per-patient token index (see [`crate::params::indexed_per_patient`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PatientTokenRow<'a> {
    /// The patient (bare id).
    pub patient: &'a str,
    /// Whether the resource is in this patient's compartment.
    pub in_compartment: bool,
    /// The keys of the reference rows that point to `Patient/<patient>`, each between commas
    /// (`,Observation.subject,`), so that a search can test one with `LIKE '%,key,%'`.
    pub via: String,
    /// The token's place among [`IndexRows::tokens`].
    pub seq: usize,
    /// The token.
    pub token: &'a TokenRow,
    /// The range of the resource's date parameter of [`crate::params::dated_per_patient`]: the least `lo`
    /// and the greatest `hi` of its values (what an ascending and a descending sort compare), if it has any.
    pub date: Option<(i64, i64)>,
}

impl IndexRows {
    /// The rows of the per-patient token index: for each referenced patient, each such token with a code.
    pub fn patient_tokens(&self) -> Vec<PatientTokenRow<'_>> {
        let tokens: Vec<(usize, &TokenRow)> = self.tokens.iter().enumerate().filter(|(_, t)| t.code.is_some() && params::indexed_per_patient(t.key)).collect();
        if tokens.is_empty() {
            return Vec::new();
        }
        let date = self.dates.iter().filter(|d| params::dated_per_patient(d.key)).fold(None, |acc: Option<(i64, i64)>, d| match acc {
            None => Some((d.lo, d.hi)),
            Some((lo, hi)) => Some((lo.min(d.lo), hi.max(d.hi))),
        });
        let mut out = Vec::new();
        for patient in &self.referenced_patients {
            let mut keys: Vec<&str> = self
                .references
                .iter()
                .filter(|r| r.target_type.as_deref() == Some("Patient") && r.target_id.as_deref() == Some(patient))
                .map(|r| r.key)
                .collect();
            keys.sort_unstable();
            keys.dedup();
            let via = if keys.is_empty() { String::new() } else { format!(",{},", keys.join(",")) };
            let in_compartment = self.patient_compartments.contains(patient);
            for &(seq, token) in &tokens {
                out.push(PatientTokenRow { patient, in_compartment, via: via.clone(), seq, token, date });
            }
        }
        out
    }
}

/// Why a resource's search values could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{element}: {problem}")]
pub struct ExtractError {
    /// The element (a FHIRPath-like path).
    pub element: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Lower-cases and strips common diacritics, for FHIR's "case- and accent-insensitive" string matching.
pub fn normalize_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let folded = match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => 'a',
            'ç' | 'Ç' => 'c',
            'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => 'i',
            'ñ' | 'Ñ' => 'n',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' | 'Ø' => 'o',
            'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => 'u',
            'ý' | 'ÿ' | 'Ý' => 'y',
            _ => {
                for l in c.to_lowercase() {
                    out.push(l);
                }
                continue;
            }
        };
        out.push(folded);
    }
    out
}

/// The steps of a path: split at dots outside `[...]` filters, whose values may hold dots
/// (`extension[url=http://hl7.org/fhir/StructureDefinition/condition-assertedDate].valueDateTime`).
fn steps(path: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0usize;
    let mut start = 0;
    let mut out = Vec::new();
    for (i, c) in path.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                out.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&path[start..]);
    out.into_iter()
}

/// Collects the values found at `path` (one alternative) below `root`.
pub fn values_at<'a>(root: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut current: Vec<&Value> = vec![root];
    for step in steps(path) {
        let (name, filter) = match step.find('[') {
            Some(i) => {
                let inner = step[i + 1..].trim_end_matches(']');
                (&step[..i], inner.split_once('='))
            }
            None => (step, None),
        };
        let mut next = Vec::new();
        for v in current {
            let Some(child) = v.get(name) else { continue };
            let items: Vec<&Value> = match child {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for item in items {
                if let Some((field, expected)) = filter
                    && item.get(field).and_then(Value::as_str) != Some(expected)
                {
                    continue;
                }
                next.push(item);
            }
        }
        current = next;
        if current.is_empty() {
            break;
        }
    }
    current
}

fn all_values<'a>(root: &'a Value, paths: &str) -> Vec<&'a Value> {
    paths.split('|').flat_map(|p| values_at(root, p)).collect()
}

/// Extracts the index rows of `resource` (whose `resourceType` is `resource_type`). `base` is this server's
/// FHIR base URL, so that absolute references to it are indexed as local ones.
pub fn extract(resource_type: &str, resource: &Value, base: Option<&str>) -> Result<IndexRows, ExtractError> {
    let mut rows = IndexRows::default();
    for param in params::params_for(resource_type).iter().filter(|p| p.index_key == p.key) {
        extract_param(param, resource, base, &mut rows)?;
    }
    let mut compartments = Vec::new();
    if resource_type == "Patient"
        && let Some(id) = resource.get("id").and_then(Value::as_str)
    {
        compartments.push(id.to_string());
    }
    for path in params::patient_compartment_paths(resource_type) {
        for v in values_at(resource, path) {
            if let Some(r) = v.get("reference").and_then(Value::as_str) {
                let parsed = parse_reference(r, base);
                if let Some(("Patient", id)) = parsed.local()
                    && parsed.url.is_none()
                    && !compartments.iter().any(|c| c == id)
                {
                    compartments.push(id.to_string());
                }
            }
        }
    }
    let mut referenced = compartments.clone();
    for r in &rows.references {
        if let (Some("Patient"), Some(id)) = (r.target_type.as_deref(), r.target_id.as_deref())
            && !referenced.iter().any(|c| c == id)
        {
            referenced.push(id.to_string());
        }
    }
    rows.patient_compartments = compartments;
    rows.referenced_patients = referenced;
    Ok(rows)
}

fn extract_param(param: &'static SearchParam, resource: &Value, base: Option<&str>, rows: &mut IndexRows) -> Result<(), ExtractError> {
    let key = param.key.as_str();
    for v in all_values(resource, param.paths) {
        match param.kind {
            ParamKind::String => {
                let mut strings = Vec::new();
                collect_strings(v, &mut strings);
                for s in strings {
                    rows.strings.push(StringRow { key, norm: normalize_string(s), exact: s.to_string() });
                }
            }
            ParamKind::Token | ParamKind::Uri => collect_tokens(key, v, rows),
            ParamKind::Reference => {
                let reference = match v {
                    Value::Object(o) => o.get("reference").and_then(Value::as_str),
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                };
                if let Some(r) = reference {
                    let parsed = parse_reference(r, base);
                    if parsed.resource_type.is_none() && parsed.url.is_none() {
                        continue;
                    }
                    if let (Some(targets), Some(t)) = (param.targets, parsed.resource_type.as_deref())
                        && !targets.contains(&t)
                    {
                        continue;
                    }
                    rows.references.push(ReferenceRow { key, target_type: parsed.resource_type, target_id: parsed.id, url: parsed.url });
                }
            }
            ParamKind::Date => {
                let range = match v {
                    Value::String(s) => Some(parse_date_range(s).ok_or_else(|| bad_date(param, s))?),
                    Value::Object(o) => {
                        let start = match o.get("start").and_then(Value::as_str) {
                            Some(s) => Some(parse_date_range(s).ok_or_else(|| bad_date(param, s))?),
                            None => None,
                        };
                        let end = match o.get("end").and_then(Value::as_str) {
                            Some(s) => Some(parse_date_range(s).ok_or_else(|| bad_date(param, s))?),
                            None => None,
                        };
                        match (start, end) {
                            (None, None) => None,
                            (s, e) => Some(crate::time::MsRange { lo: s.map_or(crate::time::MIN_MS, |r| r.lo), hi: e.map_or(crate::time::MAX_MS, |r| r.hi) }),
                        }
                    }
                    _ => None,
                };
                if let Some(r) = range {
                    rows.dates.push(DateRow { key, lo: r.lo, hi: r.hi });
                }
            }
            ParamKind::Quantity => {
                if let Some(value) = v.get("value").and_then(Value::as_f64) {
                    let s = |f: &str| v.get(f).and_then(Value::as_str).map(str::to_string);
                    rows.quantities.push(QuantityRow { key, value, system: s("system"), code: s("code"), unit: s("unit") });
                }
            }
            ParamKind::Number => {
                if let Some(value) = v.as_f64() {
                    rows.numbers.push(NumberRow { key, value });
                }
            }
        }
    }
    Ok(())
}

fn bad_date(param: &SearchParam, s: &str) -> ExtractError {
    ExtractError {
        element: format!("{}.{}", param.resource, param.paths.split('|').next().unwrap_or(param.paths)),
        problem: format!("'{s}' is not a valid FHIR date, dateTime or instant"),
    }
}

/// Strings of a string-typed element: the value itself, or the text parts of HumanName / Address.
fn collect_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                if matches!(k.as_str(), "use" | "type" | "period" | "extension" | "id" | "system") {
                    continue;
                }
                collect_strings(x, out);
            }
        }
        _ => {}
    }
}

fn collect_tokens(key: &'static str, v: &Value, rows: &mut IndexRows) {
    let text = |s: Option<&Value>| s.and_then(Value::as_str).map(normalize_string);
    let s = |o: &Value, f: &str| o.get(f).and_then(Value::as_str).map(str::to_string);
    match v {
        Value::String(code) => rows.tokens.push(TokenRow { key, system: None, code: Some(code.clone()), text: None }),
        Value::Bool(b) => rows.tokens.push(TokenRow { key, system: None, code: Some(b.to_string()), text: None }),
        Value::Object(o) => {
            if let Some(codings) = o.get("coding").and_then(Value::as_array) {
                // CodeableConcept
                let cc_text = text(o.get("text"));
                for c in codings {
                    rows.tokens.push(TokenRow { key, system: s(c, "system"), code: s(c, "code"), text: text(c.get("display")).or_else(|| cc_text.clone()) });
                }
                if codings.is_empty() && cc_text.is_some() {
                    rows.tokens.push(TokenRow { key, system: None, code: None, text: cc_text });
                }
            } else if o.contains_key("code") {
                // Coding (or Quantity used as a token)
                rows.tokens.push(TokenRow { key, system: s(v, "system"), code: s(v, "code"), text: text(o.get("display")) });
            } else if o.contains_key("value") {
                // Identifier, ContactPoint
                let type_text = o.get("type").and_then(|t| t.get("text")).and_then(Value::as_str).map(normalize_string);
                rows.tokens.push(TokenRow { key, system: s(v, "system"), code: s(v, "value"), text: type_text });
            } else if let Some(t) = text(o.get("text")) {
                rows.tokens.push(TokenRow { key, system: None, code: None, text: Some(t) });
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_filter_value_may_hold_dots() {
        let url = "http://hl7.org/fhir/StructureDefinition/condition-assertedDate";
        let c = json!({"resourceType": "Condition", "extension": [
            {"url": "http://example.org/other", "valueDateTime": "2001-01-01"},
            {"url": url, "valueDateTime": "2020-05-06"}
        ]});
        let found = values_at(&c, &format!("extension[url={url}].valueDateTime"));
        assert_eq!(found, [&json!("2020-05-06")]);
        assert_eq!(steps("a[x=b.c].d.e").collect::<Vec<_>>(), ["a[x=b.c]", "d", "e"]);
        let rows = extract("Condition", &c, None).unwrap();
        assert!(format!("{rows:?}").contains("Condition.asserted-date"), "{rows:?}");
    }

    #[test]
    fn observation_rows() {
        let obs = json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "Heart rate"},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2020-01-02T03:04:05Z",
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
        });
        let rows = extract("Observation", &obs, None).unwrap();
        assert!(rows.tokens.iter().any(|t| t.key == "Observation.category" && t.code.as_deref() == Some("vital-signs")));
        assert!(rows.tokens.iter().any(|t| t.key == "Observation.code" && t.text.as_deref() == Some("heart rate")));
        assert!(rows.tokens.iter().any(|t| t.key == "Observation.status" && t.code.as_deref() == Some("final")));
        assert_eq!(rows.references.iter().filter(|r| r.target_id.as_deref() == Some("p1")).count(), 1, "patient shares subject's row");
        assert_eq!(rows.dates.len(), 1);
        assert_eq!(rows.quantities[0].value, 72.0);
        assert_eq!(rows.patient_compartments, vec!["p1".to_string()]);
    }

    #[test]
    fn per_patient_category_rows_say_how_the_patient_is_referenced() {
        let obs = json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}, {"code": "extra"}]},
                         {"text": "no code, not indexed per patient"}],
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "Patient/p2"}, {"reference": "Patient/p1"}, {"reference": "http://elsewhere.example/fhir/Patient/p3"}]
        });
        let rows = extract("Observation", &obs, None).unwrap();
        assert_eq!(rows.patient_compartments, vec!["p1", "p2"]);
        assert_eq!(rows.referenced_patients, vec!["p1", "p2", "p3"]);
        let patient_tokens = rows.patient_tokens();
        let got: Vec<(&str, bool, &str, &str)> =
            patient_tokens.iter().map(|r| (r.patient, r.in_compartment, r.via.as_str(), r.token.code.as_deref().unwrap())).collect();
        assert_eq!(
            got,
            vec![
                ("p1", true, ",Observation.performer,Observation.subject,", "vital-signs"),
                ("p1", true, ",Observation.performer,Observation.subject,", "extra"),
                ("p2", true, ",Observation.performer,", "vital-signs"),
                ("p2", true, ",Observation.performer,", "extra"),
                ("p3", false, ",Observation.performer,", "vital-signs"),
                ("p3", false, ",Observation.performer,", "extra"),
            ]
        );
        assert!(patient_tokens.iter().all(|r| rows.tokens[r.seq] == *r.token));
        // A reference given as a bare string is indexed (a `patient=p5` search finds it) but does not
        // place the resource in p5's compartment: the per-patient rows are there all the same.
        let bare = json!({"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"},
                          "category": [{"coding": [{"code": "vital-signs"}]}], "subject": "Patient/p5"});
        let rows = extract("Observation", &bare, None).unwrap();
        assert!(rows.patient_compartments.is_empty());
        let got: Vec<(&str, bool, String)> = rows.patient_tokens().into_iter().map(|r| (r.patient, r.in_compartment, r.via)).collect();
        assert_eq!(got, vec![("p5", false, ",Observation.subject,".to_string())]);
    }

    #[test]
    fn per_patient_category_rows_carry_the_date_range() {
        let obs = json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "category": [{"coding": [{"code": "vital-signs"}, {"code": "extra"}]}],
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
            "effectivePeriod": {"start": "2020-01-02", "end": "2020-03-04T05:06:07Z"},
            "issued": "2021-01-01T00:00:00Z"
        });
        let rows = extract("Observation", &obs, None).unwrap();
        let date = rows.dates.iter().find(|d| d.key == "Observation.date").unwrap();
        assert!(date.lo < date.hi);
        let tokens = rows.patient_tokens();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.iter().all(|r| r.date == Some((date.lo, date.hi))), "{tokens:?}");
        // No `date`: the row carries none (and sorts last, as with the date index).
        let undated = json!({"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"},
                             "category": [{"coding": [{"code": "vital-signs"}]}], "subject": {"reference": "Patient/p1"},
                             "issued": "2021-01-01T00:00:00Z"});
        let rows = extract("Observation", &undated, None).unwrap();
        assert_eq!(rows.patient_tokens()[0].date, None);
        // Several values: the least start and the greatest end; other date parameters do not count.
        let date = |key, lo, hi| DateRow { key, lo, hi };
        let rows = IndexRows {
            tokens: vec![TokenRow { key: "Observation.category", system: None, code: Some("vital-signs".into()), text: None }],
            dates: vec![date("Observation.date", 10, 20), date("Observation.issued", 1, 100), date("Observation.date", 5, 15)],
            referenced_patients: vec!["p1".into()],
            ..Default::default()
        };
        assert_eq!(rows.patient_tokens()[0].date, Some((5, 20)));
    }

    #[test]
    fn patient_names_and_filters() {
        let p = json!({
            "resourceType": "Patient", "id": "p1",
            "name": [{"use": "official", "family": "Müller", "given": ["Anna", "Lena"]}],
            "telecom": [{"system": "phone", "value": "555-1"}, {"system": "email", "value": "a@b.test"}],
            "birthDate": "1980-05"
        });
        let rows = extract("Patient", &p, None).unwrap();
        let names: Vec<_> = rows.strings.iter().filter(|s| s.key == "Patient.name").map(|s| s.norm.as_str()).collect();
        assert_eq!(names, vec!["muller", "anna", "lena"]);
        let email: Vec<_> = rows.tokens.iter().filter(|t| t.key == "Patient.email").collect();
        assert_eq!(email.len(), 1);
        assert_eq!(email[0].code.as_deref(), Some("a@b.test"));
        assert_eq!(rows.patient_compartments, vec!["p1".to_string()]);
    }

    #[test]
    fn invalid_dates_are_errors() {
        let p = json!({"resourceType": "Patient", "birthDate": "yesterday"});
        let err = extract("Patient", &p, None).unwrap_err();
        assert!(err.problem.contains("yesterday"));
    }
}
