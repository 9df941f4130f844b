//! Structural validation on write: the checks that catch malformed resources before they are stored.

use crate::types::{is_storable_type, is_valid_id};
use serde_json::Value;

/// Why a resource is not valid (a sentence for the OperationOutcome).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Required elements (cardinality 1..) of the supported resource types; a `[x]` suffix means any choice type.
pub fn required_elements(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "Observation" => &["status", "code"],
        "Condition" => &["subject"],
        "Encounter" => &["status", "class"],
        "MedicationRequest" => &["status", "intent", "medication[x]", "subject"],
        "MedicationDispense" => &["status", "medication[x]"],
        "AllergyIntolerance" => &["patient"],
        "Immunization" => &["status", "vaccineCode", "patient", "occurrence[x]"],
        "Procedure" => &["status", "subject"],
        "DiagnosticReport" => &["status", "code"],
        "DocumentReference" => &["status", "content"],
        "CarePlan" => &["status", "intent", "subject"],
        "CareTeam" => &[],
        "Goal" => &["lifecycleStatus", "description", "subject"],
        "ServiceRequest" => &["status", "intent", "subject"],
        "Coverage" => &["status", "beneficiary", "payor"],
        "Provenance" => &["target", "recorded", "agent"],
        "RelatedPerson" => &["patient"],
        "RiskAssessment" => &["status", "subject"],
        "Claim" => &["status", "type", "use", "patient", "created", "provider", "priority", "insurance"],
        "ExplanationOfBenefit" => &["status", "type", "use", "patient", "created", "insurer", "provider", "outcome", "insurance"],
        "ImagingStudy" => &["status", "subject"],
        "QuestionnaireResponse" => &["status"],
        "Questionnaire" => &["status"],
        _ => &[],
    }
}

fn has_element(resource: &serde_json::Map<String, Value>, name: &str) -> bool {
    let present = |v: &Value| !matches!(v, Value::Null) && !matches!(v, Value::Array(a) if a.is_empty());
    match name.strip_suffix("[x]") {
        Some(prefix) => {
            resource.iter().any(|(k, v)| k.len() > prefix.len() && k.starts_with(prefix) && k.as_bytes()[prefix.len()].is_ascii_uppercase() && present(v))
        }
        None => resource.get(name).is_some_and(present),
    }
}

/// Checks that `body` is a JSON object of a known, storable type, matching `expected_type`, with a valid id
/// (when present) and the required elements of its type.
pub fn validate_resource(body: &Value, expected_type: Option<&str>) -> Result<(), Invalid> {
    let Some(obj) = body.as_object() else {
        return Err(Invalid("the body must be a JSON object holding a FHIR resource".into()));
    };
    let Some(rt) = obj.get("resourceType").and_then(Value::as_str) else {
        return Err(Invalid("the resource has no resourceType".into()));
    };
    if !is_storable_type(rt) {
        return Err(Invalid(format!("'{rt}' is not a FHIR R4 resource type that can be stored")));
    }
    if let Some(expected) = expected_type
        && rt != expected
    {
        return Err(Invalid(format!("resourceType '{rt}' does not match the URL's type '{expected}'")));
    }
    match obj.get("id") {
        None => {}
        Some(Value::String(id)) if is_valid_id(id) => {}
        Some(other) => return Err(Invalid(format!("id {other} is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})"))),
    }
    if let Some(meta) = obj.get("meta")
        && !meta.is_object()
    {
        return Err(Invalid("meta must be an object".into()));
    }
    let missing: Vec<&str> = required_elements(rt).iter().copied().filter(|e| !has_element(obj, e)).collect();
    if !missing.is_empty() {
        return Err(Invalid(format!("{rt} is missing required element(s): {}", missing.join(", "))));
    }
    if rt == "Patient"
        && let Some(g) = obj.get("gender")
        && !matches!(g.as_str(), Some("male" | "female" | "other" | "unknown"))
    {
        return Err(Invalid(format!("Patient.gender {g} is not one of male, female, other, unknown")));
    }
    check_no_empty(body, rt)?;
    Ok(())
}

/// FHIR forbids empty strings, objects and arrays anywhere in a resource (ele-1 and the JSON rules). The
/// path of the offending element is built only when one is found.
fn check_no_empty(v: &Value, root: &str) -> Result<(), Invalid> {
    fn find_empty(v: &Value) -> Option<(Vec<String>, &'static str)> {
        match v {
            Value::String(s) if s.is_empty() => Some((Vec::new(), "an empty string")),
            Value::Array(a) if a.is_empty() => Some((Vec::new(), "an empty array")),
            Value::Object(o) if o.is_empty() => Some((Vec::new(), "an empty object")),
            Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| {
                find_empty(x).map(|(mut path, what)| {
                    path.push(format!("[{i}]"));
                    (path, what)
                })
            }),
            // A member may not be null (FHIR JSON leaves absent elements out); nulls inside arrays of
            // primitives stand for values given only by their `_element` extensions.
            Value::Object(o) => o.iter().find_map(|(k, x)| {
                let found = if x.is_null() { Some((Vec::new(), "null (leave an absent element out)")) } else { find_empty(x) };
                found.map(|(mut path, what)| {
                    path.push(format!(".{k}"));
                    (path, what)
                })
            }),
            _ => None,
        }
    }
    match find_empty(v) {
        None => Ok(()),
        Some((path, what)) => {
            let mut p = root.to_string();
            for seg in path.iter().rev() {
                p.push_str(seg);
            }
            Err(Invalid(format!("{p} is {what}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn checks() {
        assert!(validate_resource(&json!({"resourceType": "Patient"}), Some("Patient")).is_ok());
        assert!(validate_resource(&json!([1]), None).is_err());
        assert!(validate_resource(&json!({"resourceType": "Nope"}), None).is_err());
        assert!(validate_resource(&json!({"resourceType": "Patient"}), Some("Observation")).is_err());
        assert!(validate_resource(&json!({"resourceType": "Patient", "id": "a b"}), None).is_err());
        let e = validate_resource(&json!({"resourceType": "Observation", "status": "final"}), None).unwrap_err();
        assert!(e.0.contains("code"));
        assert!(validate_resource(&json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": {"reference": "Patient/1"}, "medicationCodeableConcept": {"text": "x"}}), None).is_ok());
        assert!(validate_resource(&json!({"resourceType": "Patient", "name": [{"family": ""}]}), None).is_err());
        let null = validate_resource(&json!({"resourceType": "Medication", "code": {"text": "x"}, "name": null}), None).unwrap_err();
        assert_eq!(null.0, "Medication.name is null (leave an absent element out)");
        assert!(validate_resource(&json!({"resourceType": "Patient", "name": [{"given": ["A", null], "_given": [null, {"id": "x"}]}]}), None).is_ok());
        assert!(validate_resource(&json!({"resourceType": "Patient", "gender": "m"}), None).is_err());
    }
}
