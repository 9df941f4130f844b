//! Typed views of the resources apps commonly read; everything else stays `serde_json::Value`. Every field
//! is optional or defaulted: real servers omit a great deal. Field names are the FHIR R4 element names
//! in snake_case (`birth_date` is `birthDate`, `type_` is `type`); see the FHIR specification for their
//! meaning.
#![allow(missing_docs)]

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// FHIR R4 `Coding`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Coding {
    pub system: Option<String>,
    pub code: Option<String>,
    pub display: Option<String>,
}

/// FHIR R4 `CodeableConcept`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CodeableConcept {
    #[serde(default)]
    pub coding: Vec<Coding>,
    pub text: Option<String>,
}

impl CodeableConcept {
    /// Words for a person: the text, else the first display, else the first code.
    pub fn display(&self) -> String {
        self.text
            .clone()
            .or_else(|| self.coding.iter().find_map(|c| c.display.clone()))
            .or_else(|| self.coding.iter().find_map(|c| c.code.clone()))
            .unwrap_or_default()
    }

    pub fn has_code(&self, system: &str, code: &str) -> bool {
        self.coding.iter().any(|c| c.system.as_deref() == Some(system) && c.code.as_deref() == Some(code))
    }

    /// The code of the coding in `system` (else of a coding without a system), wherever it sits.
    pub fn code_in(&self, system: &str) -> Option<&str> {
        let of = |s: Option<&str>| self.coding.iter().find(|c| c.system.as_deref() == s).and_then(|c| c.code.as_deref());
        of(Some(system)).or_else(|| of(None))
    }
}

/// FHIR R4 `Reference`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reference {
    pub reference: Option<String>,
    pub display: Option<String>,
}

/// FHIR R4 `Quantity`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Quantity {
    pub value: Option<f64>,
    /// `<`, `<=`, `>=` or `>`: the value is a bound, not a reading.
    pub comparator: Option<String>,
    pub unit: Option<String>,
    pub system: Option<String>,
    pub code: Option<String>,
}

/// FHIR R4 `Period`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Period {
    pub start: Option<String>,
    pub end: Option<String>,
}

/// FHIR R4 `Identifier`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Identifier {
    /// What kind of identifier (v2-0203: `MR` for a medical record number).
    #[serde(rename = "type")]
    pub type_: Option<CodeableConcept>,
    pub system: Option<String>,
    pub value: Option<String>,
}

/// FHIR R4 `HumanName`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HumanName {
    pub text: Option<String>,
    pub family: Option<String>,
    #[serde(default)]
    pub given: Vec<String>,
    #[serde(rename = "use")]
    pub use_: Option<String>,
}

impl HumanName {
    pub fn display(&self) -> String {
        self.text.clone().unwrap_or_else(|| {
            let mut parts = self.given.clone();
            parts.extend(self.family.clone());
            parts.join(" ")
        })
    }
}

/// FHIR R4 `Patient`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Patient {
    pub id: Option<String>,
    #[serde(default)]
    pub name: Vec<HumanName>,
    pub gender: Option<String>,
    pub birth_date: Option<String>,
    #[serde(default)]
    pub identifier: Vec<Identifier>,
}

impl Patient {
    /// The official (else usual, else first not old) name for display.
    pub fn display_name(&self) -> String {
        let by_use = |u: &str| self.name.iter().find(|n| n.use_.as_deref() == Some(u));
        by_use("official")
            .or_else(|| by_use("usual"))
            .or_else(|| self.name.iter().find(|n| n.use_.as_deref() != Some("old")))
            .map(HumanName::display)
            .unwrap_or_default()
    }

    /// The medical record number: the identifier typed `MR` (HL7 v2-0203), wherever it sits. `None` when
    /// none is typed so: another identifier (an SSN, a system's UUID) is not an MRN.
    pub fn mrn(&self) -> Option<&str> {
        self.identifier
            .iter()
            .find(|i| i.type_.as_ref().and_then(|t| t.code_in("http://terminology.hl7.org/CodeSystem/v2-0203")) == Some("MR"))
            .and_then(|i| i.value.as_deref())
    }
}

/// FHIR R4 `Practitioner`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Practitioner {
    pub id: Option<String>,
    #[serde(default)]
    pub name: Vec<HumanName>,
}

/// FHIR R4 `Encounter`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Encounter {
    pub id: Option<String>,
    pub status: Option<String>,
    pub class: Option<Coding>,
    #[serde(default, rename = "type")]
    pub type_: Vec<CodeableConcept>,
    pub period: Option<Period>,
    pub subject: Option<Reference>,
}

/// FHIR R4 `Condition`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub id: Option<String>,
    pub clinical_status: Option<CodeableConcept>,
    pub verification_status: Option<CodeableConcept>,
    #[serde(default)]
    pub category: Vec<CodeableConcept>,
    pub code: Option<CodeableConcept>,
    pub subject: Option<Reference>,
    pub onset_date_time: Option<String>,
    pub recorded_date: Option<String>,
}

/// FHIR R4 `ReferenceRange`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferenceRange {
    pub low: Option<Quantity>,
    pub high: Option<Quantity>,
    pub text: Option<String>,
}

/// FHIR R4 `ObservationComponent`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservationComponent {
    pub code: Option<CodeableConcept>,
    pub value_quantity: Option<Quantity>,
}

/// FHIR R4 `Observation`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation {
    pub id: Option<String>,
    pub status: Option<String>,
    #[serde(default)]
    pub category: Vec<CodeableConcept>,
    pub code: Option<CodeableConcept>,
    pub subject: Option<Reference>,
    pub encounter: Option<Reference>,
    pub effective_date_time: Option<String>,
    pub value_quantity: Option<Quantity>,
    pub value_codeable_concept: Option<CodeableConcept>,
    pub value_string: Option<String>,
    /// Why there is no value.
    pub data_absent_reason: Option<CodeableConcept>,
    #[serde(default)]
    pub interpretation: Vec<CodeableConcept>,
    #[serde(default)]
    pub reference_range: Vec<ReferenceRange>,
    #[serde(default)]
    pub component: Vec<ObservationComponent>,
}

/// FHIR R4 `Dosage`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dosage {
    pub text: Option<String>,
}

/// FHIR R4 `MedicationRequest`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MedicationRequest {
    pub id: Option<String>,
    pub status: Option<String>,
    pub intent: Option<String>,
    pub medication_codeable_concept: Option<CodeableConcept>,
    pub medication_reference: Option<Reference>,
    pub subject: Option<Reference>,
    pub authored_on: Option<String>,
    #[serde(default)]
    pub dosage_instruction: Vec<Dosage>,
}

/// FHIR R4 `AllergyIntolerance`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllergyIntolerance {
    pub id: Option<String>,
    pub clinical_status: Option<CodeableConcept>,
    pub verification_status: Option<CodeableConcept>,
    pub code: Option<CodeableConcept>,
    pub criticality: Option<String>,
    pub patient: Option<Reference>,
}

/// FHIR R4 `Immunization`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Immunization {
    pub id: Option<String>,
    pub status: Option<String>,
    pub vaccine_code: Option<CodeableConcept>,
    pub patient: Option<Reference>,
    pub occurrence_date_time: Option<String>,
}

/// FHIR R4 `OperationOutcomeIssue`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationOutcomeIssue {
    pub severity: Option<String>,
    pub code: Option<String>,
    pub diagnostics: Option<String>,
}

/// FHIR R4 `OperationOutcome`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationOutcome {
    #[serde(default)]
    pub issue: Vec<OperationOutcomeIssue>,
}

/// FHIR R4 `BundleLink`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BundleLink {
    pub relation: String,
    pub url: String,
}

/// FHIR R4 `BundleSearch`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BundleSearch {
    pub mode: Option<String>,
}

/// FHIR R4 `BundleEntry`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleEntry {
    pub full_url: Option<String>,
    #[serde(default)]
    pub resource: Value,
    pub search: Option<BundleSearch>,
}

/// FHIR R4 `Bundle`: the elements apps commonly read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bundle {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub total: Option<u64>,
    #[serde(default)]
    pub link: Vec<BundleLink>,
    #[serde(default)]
    pub entry: Vec<BundleEntry>,
}

impl Bundle {
    pub fn next_link(&self) -> Option<&str> {
        self.link.iter().find(|l| l.relation == "next").map(|l| l.url.as_str())
    }

    /// The matches (not the `_include`d resources) of type `T`'s resource type.
    pub fn matches<T: serde::de::DeserializeOwned>(&self, resource_type: &str) -> Vec<T> {
        self.entry
            .iter()
            .filter(|e| e.search.as_ref().and_then(|s| s.mode.as_deref()).unwrap_or("match") == "match")
            .filter(|e| e.resource["resourceType"] == resource_type)
            .filter_map(|e| serde_json::from_value(e.resource.clone()).ok())
            .collect()
    }

    /// Resolves a reference (`Type/id`, or an absolute URL ending so) against the bundle's entries, which
    /// is how `_include`d resources are found.
    pub fn resolve(&self, reference: &str) -> Option<&Value> {
        let rel = crate::context::relative_reference(reference);
        self.entry.iter().map(|e| &e.resource).find(|r| r["resourceType"].as_str().zip(r["id"].as_str()).is_some_and(|(t, i)| format!("{t}/{i}") == rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bundles_resolve_includes_and_find_next() {
        let b: Bundle = serde_json::from_value(json!({"resourceType": "Bundle", "type": "searchset", "total": 1,
            "link": [{"relation": "next", "url": "https://x/fhir?_getpages=a"}],
            "entry": [
                {"resource": {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "medicationReference": {"reference": "Medication/med1"}}, "search": {"mode": "match"}},
                {"resource": {"resourceType": "Medication", "id": "med1", "code": {"text": "Aspirin"}}, "search": {"mode": "include"}}
            ]}))
        .unwrap();
        let meds: Vec<MedicationRequest> = b.matches("MedicationRequest");
        assert_eq!(meds.len(), 1);
        let med = b.resolve(meds[0].medication_reference.as_ref().unwrap().reference.as_deref().unwrap()).unwrap();
        assert_eq!(med["code"]["text"], "Aspirin");
        assert_eq!(b.next_link(), Some("https://x/fhir?_getpages=a"));
        assert!(b.matches::<Value>("Medication").is_empty(), "included resources are not matches");
    }

    #[test]
    fn sparse_resources_still_parse() {
        let p: Patient = serde_json::from_value(json!({"resourceType": "Patient"})).unwrap();
        assert_eq!(p.display_name(), "");
        let p: Patient =
            serde_json::from_value(json!({"resourceType": "Patient", "name": [{"given": ["Ann", "B"], "family": "Lee"}], "birthDate": "1970"})).unwrap();
        assert_eq!(p.display_name(), "Ann B Lee");
    }
}
