//! What vendor profiles and injected faults change in a grant and in the token response. Each rule is a
//! documented behaviour of a real EHR (see `docs/ehr-simulator.md`), reproduced so apps can be rehearsed
//! against it before they meet that EHR.

use crate::model::{Faults, Grant, Profile};
use serde_json::{Value, json};
use smart::{Scope, ScopeSet};

/// The resource types an Epic-style server lists when it expands a wildcard grant.
const EXPANDED_TYPES: &[&str] =
    &["Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "AllergyIntolerance", "Immunization", "Procedure", "DiagnosticReport"];

/// The scope actually granted, after the user's (injected) denials and the profile's rewriting.
pub fn shape_granted(profile: Profile, faults: &Faults, approved: &str) -> String {
    let mut set = ScopeSet::parse(approved);
    // Oracle-style servers drop wildcard resource scopes before anything else is decided.
    if profile == Profile::Oracle {
        set.scopes.retain(|sc| !matches!(sc, Scope::Resource(r) if r.resource_type.is_none()));
    }
    if !faults.deny.is_empty() {
        let denied = |text: &str, ty: Option<&str>| faults.deny.iter().any(|d| d == text || Some(d.as_str()) == ty || (d == "*" && ty.is_none()));
        let mut out = Vec::new();
        for sc in set.scopes {
            match sc {
                Scope::Resource(r) if !denied(&Scope::Resource(r.clone()).to_string(), r.resource_type.as_deref()) => {
                    if r.resource_type.is_none() && faults.deny.iter().any(|d| fhir::types::is_known_type(d)) {
                        // Unticking one type of a wildcard grant leaves every other type, named one by one.
                        for ty in fhir::params::types_with_params() {
                            if !faults.deny.iter().any(|d| d == ty) && (r.level != smart::Level::Patient || fhir::params::in_patient_compartment(ty)) {
                                let mut one = r.clone();
                                one.resource_type = Some(ty.to_string());
                                out.push(Scope::Resource(one));
                            }
                        }
                    } else {
                        out.push(Scope::Resource(r));
                    }
                }
                Scope::Resource(_) => {}
                other => out.push(other),
            }
        }
        set.scopes = out;
    }
    match profile {
        Profile::Strict | Profile::Nextgen | Profile::Oracle => {}
        // Granted in v1 names, wildcards expanded to a list of types.
        Profile::Epic => {
            let mut out = Vec::new();
            for sc in set.scopes {
                match sc {
                    Scope::Resource(r) if r.constraints.is_empty() => {
                        let types: Vec<String> = match &r.resource_type {
                            Some(t) => vec![t.clone()],
                            None => EXPANDED_TYPES.iter().map(|t| t.to_string()).collect(),
                        };
                        for t in types {
                            let mut one = r.clone();
                            one.resource_type = Some(t);
                            one.v1 = true;
                            out.push(Scope::Resource(one));
                        }
                    }
                    other => out.push(other),
                }
            }
            set.scopes = out;
        }
    }
    set.to_string()
}

/// Access-token lifetime under a profile and the launch's faults.
pub fn access_token_secs(profile: Profile, faults: &Faults, default: i64) -> i64 {
    if let Some(s) = faults.token_secs {
        return s;
    }
    match profile {
        Profile::Oracle => 570,
        Profile::Nextgen => 3600,
        // Epic's OAuth 2.0 specification shows `"expires_in": 3240` in its token responses.
        Profile::Epic => 3240,
        Profile::Strict => default,
    }
}

/// Whether a refresh under this profile rotates the refresh token (strict: yes). NextGen-style servers
/// return the same one; Epic- and Oracle-style servers return none (the old one stays valid: Oracle's
/// authorization documentation says a refresh response carries no new refresh token).
pub fn rotates_refresh(profile: Profile) -> bool {
    matches!(profile, Profile::Strict)
}

/// Vendor-specific changes to a token response.
pub fn shape_response(grant: &Grant, body: &mut Value) {
    match grant.profile() {
        Profile::Strict | Profile::Oracle => {}
        Profile::Nextgen => {
            let extra = grant.launch.as_ref().map(|l| &l.extra);
            let pick = |k: &str, default: &str| extra.and_then(|e| e.get(k)).cloned().unwrap_or_else(|| json!(default));
            body["practice_id"] = pick("practice_id", "kindling-practice-1");
            body["enterprise_id"] = pick("enterprise_id", "kindling-enterprise-1");
        }
        Profile::Epic => {
            // As Epic's documentation shows its token responses: `"token_type": "bearer"` in lower case,
            // the banner flag as a string, the DSTU2 patient id. (No `__epic.user`: no public source.)
            body["token_type"] = json!("bearer");
            if let Some(b) = body.get("need_patient_banner").and_then(Value::as_bool) {
                body["need_patient_banner"] = json!(b.to_string());
            }
            if let Some(p) = &grant.patient {
                body["__epic.dstu2.patient"] = json!(format!("E{p}"));
            }
        }
    }
}
