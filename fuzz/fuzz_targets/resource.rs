//! FHIR JSON resources as a client sends them: validation and search-index extraction never panic, and a
//! JSON Patch applied to a resource never panics (both come from outside: request bodies).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    // `[resource, patch]` exercises JSON Patch; anything else is a resource.
    if let Some([doc, patch]) = v.as_array().map(Vec::as_slice) {
        let _ = fhir::patch::apply(doc, patch);
        return;
    }
    if fhir::validate::validate_resource(&v, None).is_err() {
        return;
    }
    if let Some(ty) = v.get("resourceType").and_then(Value::as_str) {
        let _ = fhir::extract::extract(ty, &v, Some("http://fuzz.example/fhir"));
    }
});
