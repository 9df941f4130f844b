//! Response shaping: `_elements` and `_summary=text|data`.

use serde_json::{Value, json};

const SUBSETTED: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

fn mark_subsetted(obj: &mut serde_json::Map<String, Value>) {
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        let tags = m.entry("tag").or_insert_with(|| json!([]));
        if let Some(t) = tags.as_array_mut() {
            t.push(json!({"system": SUBSETTED, "code": "SUBSETTED"}));
        }
    }
}

/// Keeps `resourceType`, `id`, `meta`, the elements the type requires (FHIR: servers SHOULD return the
/// mandatory ones, asked for or not) and the named top-level elements (choice elements by their `[x]`-less
/// name, e.g. `value` keeps `valueQuantity`), and tags the result SUBSETTED.
pub fn apply_elements(resource: &Value, elements: &[String]) -> Value {
    let Some(obj) = resource.as_object() else { return resource.clone() };
    let required = crate::validate::required_elements(obj.get("resourceType").and_then(Value::as_str).unwrap_or_default());
    let named = |k: &str, e: &str| k == e || (k.len() > e.len() && k.starts_with(e) && k.as_bytes()[e.len()].is_ascii_uppercase());
    let mut out = serde_json::Map::new();
    for (k, v) in obj {
        let keep = matches!(k.as_str(), "resourceType" | "id" | "meta")
            || elements.iter().any(|e| named(k, e))
            || required.iter().any(|r| named(k, r.strip_suffix("[x]").unwrap_or(r)));
        if keep {
            out.insert(k.clone(), v.clone());
        }
    }
    mark_subsetted(&mut out);
    Value::Object(out)
}

/// `_summary=text`: only `text`, `id`, `meta` and top-level mandatory status-like elements.
pub fn summary_text(resource: &Value) -> Value {
    let Some(obj) = resource.as_object() else { return resource.clone() };
    let mut out = serde_json::Map::new();
    for (k, v) in obj {
        if matches!(k.as_str(), "resourceType" | "id" | "meta" | "text" | "status") {
            out.insert(k.clone(), v.clone());
        }
    }
    mark_subsetted(&mut out);
    Value::Object(out)
}

/// `_summary=data`: everything but the narrative `text`.
pub fn summary_data(resource: &Value) -> Value {
    let Some(obj) = resource.as_object() else { return resource.clone() };
    let mut out = obj.clone();
    out.remove("text");
    mark_subsetted(&mut out);
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_keep_choice_types() {
        let r = json!({"resourceType": "Observation", "id": "1", "status": "final", "valueQuantity": {"value": 1}, "code": {"text": "x"}});
        let out = apply_elements(&r, &["value".to_string()]);
        assert!(out.get("valueQuantity").is_some());
        // Mandatory elements stay; others go.
        assert!(out.get("status").is_some() && out.get("code").is_some());
        let r = json!({"resourceType": "Patient", "id": "1", "gender": "female", "birthDate": "1970"});
        let out = apply_elements(&r, &["birthDate".to_string()]);
        assert!(out.get("gender").is_none() && out.get("birthDate").is_some());
        let r = json!({"resourceType": "MedicationRequest", "id": "1", "status": "active", "intent": "order", "subject": {}, "medicationCodeableConcept": {}, "note": []});
        let out = apply_elements(&r, &["id".to_string()]);
        assert!(out.get("medicationCodeableConcept").is_some() && out.get("note").is_none());
        assert_eq!(out["meta"]["tag"][0]["code"], "SUBSETTED");
    }
}
