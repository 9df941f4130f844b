//! The token response as an app reads it: the authoritative source of launch context. Tolerates the
//! deviations real EHRs are known for (booleans as strings, absolute `fhirUser`, missing `expires_in`) and
//! keeps every vendor-specific field reachable.

use crate::error::Secret;
use serde_json::{Map, Value};
use smart::{Interaction, Level, ScopeSet};

/// Standard token-response fields; everything else is in [`LaunchContext::extra`].
const STANDARD: &[&str] = &[
    "access_token",
    "token_type",
    "expires_in",
    "scope",
    "refresh_token",
    "id_token",
    "patient",
    "encounter",
    "need_patient_banner",
    "smart_style_url",
    "intent",
    "appContext",
    "tenant",
    "fhirContext",
    "fhirUser",
];

/// What a launch gave the app, from the token response (and the verified `id_token`).
#[derive(Debug, Clone)]
pub struct LaunchContext {
    /// Bare Patient id in context.
    pub patient: Option<String>,
    /// Bare Encounter id in context (absent is normal).
    pub encounter: Option<String>,
    /// The signed-in user as `Type/id`, whether the server sent a relative or an absolute reference.
    pub fhir_user: Option<String>,
    /// Whether the app should show its own patient banner (true when the server did not say).
    pub need_patient_banner: bool,
    /// Where the EHR's style for embedded apps is (see [`crate::Session::style`]).
    pub smart_style_url: Option<String>,
    /// The EHR's intent for the launch (e.g. `reconcile-medications`).
    pub intent: Option<String>,
    /// The EHR's tenant or practice, when it sends one.
    pub tenant: Option<String>,
    /// What the decision-support card whose SMART link opened the app handed it (CDS Hooks `appContext`,
    /// a string the card's service defined, often JSON).
    pub app_context: Option<String>,
    /// SMART 2.2 `fhirContext` objects.
    pub fhir_context: Vec<Value>,
    /// What was granted (the `scope` of the response; the requested scopes when the server omitted it).
    pub granted: Granted,
    /// Vendor-specific and other fields (e.g. NextGen `practice_id`, Epic `__epic.dstu2.patient`).
    pub extra: Map<String, Value>,
}

/// Tokens of a session. `Debug` never shows them.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The bearer token for the FHIR API.
    pub access_token: Secret,
    /// Present with `offline_access` or `online_access`.
    pub refresh_token: Option<Secret>,
    /// Present with `openid`.
    pub id_token: Option<Secret>,
    /// Seconds the access token lives, when the server said.
    pub expires_in: Option<i64>,
}

/// Reads a boolean that some servers send as a string.
fn loose_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn loose_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// `Practitioner/1` from `Practitioner/1` or `https://ehr.example/fhir/Practitioner/1`.
pub fn relative_reference(r: &str) -> String {
    let parts: Vec<&str> = r.trim_end_matches('/').rsplitn(3, '/').collect();
    match parts.as_slice() {
        [id, ty, ..] if ty.chars().next().is_some_and(|c| c.is_ascii_uppercase()) => format!("{ty}/{id}"),
        _ => r.to_string(),
    }
}

impl LaunchContext {
    /// Reads a token response; `requested` stands in for a missing `scope`, `id_claims` supply `fhirUser`.
    pub fn from_response(body: &Value, requested: &str, id_claims: Option<&Value>) -> LaunchContext {
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let fhir_user = id_claims.and_then(|c| c["fhirUser"].as_str()).or_else(|| body.get("fhirUser").and_then(Value::as_str)).map(relative_reference);
        let extra = body
            .as_object()
            .map(|o| o.iter().filter(|(k, _)| !STANDARD.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        LaunchContext {
            patient: s("patient"),
            encounter: s("encounter"),
            fhir_user,
            need_patient_banner: body.get("need_patient_banner").and_then(loose_bool).unwrap_or(true),
            smart_style_url: s("smart_style_url"),
            intent: s("intent"),
            tenant: s("tenant"),
            app_context: s("appContext"),
            fhir_context: body.get("fhirContext").and_then(Value::as_array).cloned().unwrap_or_default(),
            granted: Granted::new(&s("scope").unwrap_or_else(|| requested.to_string())),
            extra,
        }
    }
}

impl Tokens {
    /// The tokens of a token response; `None` without an `access_token`.
    pub fn from_response(body: &Value) -> Option<Tokens> {
        Some(Tokens {
            access_token: Secret::new(body.get("access_token")?.as_str()?),
            refresh_token: body.get("refresh_token").and_then(Value::as_str).map(Secret::new),
            id_token: body.get("id_token").and_then(Value::as_str).map(Secret::new),
            expires_in: body.get("expires_in").and_then(loose_i64),
        })
    }
}

/// Granted scopes, parsed (v1 and v2, granular), to gate features before calling.
#[derive(Debug, Clone)]
pub struct Granted {
    /// The parsed scopes.
    pub scopes: ScopeSet,
    raw: String,
}

impl Granted {
    /// Parses a granted `scope` string.
    pub fn new(scope: &str) -> Granted {
        Granted { scopes: ScopeSet::parse(scope), raw: scope.to_string() }
    }

    /// The scope string as granted.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether some granted scope allows `interaction` on `resource_type` at any level an app launched
    /// for a patient or a user can use (patient, then user, then system).
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        [Level::Patient, Level::User, Level::System].into_iter().any(|l| self.scopes.access(l, resource_type, interaction).is_some())
    }

    /// Whether a search of `resource_type` restricted to `param=value` (e.g. `category` =
    /// `http://terminology.hl7.org/CodeSystem/observation-category|vital-signs`, or just `vital-signs`) is
    /// covered by what was granted, granular `?category=` scopes included.
    pub fn allows_search_with(&self, resource_type: &str, param: &str, value: &str) -> bool {
        [Level::Patient, Level::User, Level::System].into_iter().any(|l| match self.scopes.access(l, resource_type, Interaction::Search) {
            None => false,
            Some(alternatives) => {
                alternatives.is_empty()
                    || alternatives.iter().any(|constraints| {
                        constraints.is_empty()
                            || constraints
                                .iter()
                                .all(|(p, v)| p == param && (v == value || v.rsplit('|').next() == Some(value) || value.rsplit('|').next() == Some(v.as_str())))
                    })
            }
        })
    }

    /// Whether exactly this scope (e.g. `offline_access`, `launch/patient`) was granted.
    pub fn has(&self, scope: &str) -> bool {
        smart::Scope::parse(scope).is_ok_and(|s| self.scopes.contains(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vendor_deviations_are_tolerated() {
        let body = json!({"access_token": "a", "token_type": "bearer", "scope": "launch patient/Observation.read", "patient": "123",
            "need_patient_banner": "false", "__epic.dstu2.patient": "E123", "practice_id": "P-1"});
        let c = LaunchContext::from_response(&body, "", Some(&json!({"fhirUser": "https://ehr.example/fhir/Practitioner/9"})));
        assert!(!c.need_patient_banner);
        assert_eq!(c.fhir_user.as_deref(), Some("Practitioner/9"));
        assert_eq!(c.extra["__epic.dstu2.patient"], "E123");
        assert_eq!(c.extra["practice_id"], "P-1");
        assert!(c.encounter.is_none());
        let t = Tokens::from_response(&body).unwrap();
        assert_eq!(t.expires_in, None, "missing expires_in is allowed");
        assert!(!format!("{t:?}").contains("\"a\""));
        let t2 = Tokens::from_response(&json!({"access_token": "a", "expires_in": "3600"})).unwrap();
        assert_eq!(t2.expires_in, Some(3600));
    }

    #[test]
    fn missing_scope_means_what_was_requested_and_banner_defaults_to_true() {
        let c = LaunchContext::from_response(&json!({"access_token": "a"}), "launch/patient patient/*.rs", None);
        assert!(c.need_patient_banner);
        assert!(c.granted.allows("Condition", Interaction::Read));
    }

    #[test]
    fn granular_questions() {
        let g = Granted::new("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs patient/Condition.read");
        assert!(g.allows_search_with("Observation", "category", "vital-signs"));
        assert!(g.allows_search_with("Observation", "category", "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"));
        assert!(!g.allows_search_with("Observation", "category", "laboratory"));
        assert!(g.allows("Condition", Interaction::Search), "v1 .read covers search");
        assert!(!g.allows("Condition", Interaction::Create));
        assert!(!g.allows("MedicationRequest", Interaction::Read));
        assert!(Granted::new("patient/*.rs").allows_search_with("Observation", "category", "laboratory"));
    }
}
