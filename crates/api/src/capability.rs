//! The CapabilityStatement: built from the same tables the server runs on, so it states what works.

use fhir::params::{self, ParamKind};
use fhir::types::R4_RESOURCE_TYPES;
use serde_json::{Value, json};

const NOT_SERVED: &[&str] = &["Bundle", "OperationOutcome", "Parameters"];

/// The SMART authorisation server's endpoints, for `rest.security`.
#[derive(Clone, Debug)]
pub struct OAuthUris {
    /// The authorisation endpoint.
    pub authorize: String,
    /// The token endpoint.
    pub token: String,
    /// The revocation endpoint (RFC 7009).
    pub revoke: String,
    /// The introspection endpoint (RFC 7662), when the server advertises one.
    pub introspect: Option<String>,
    /// The dynamic registration endpoint (RFC 7591).
    pub register: String,
    /// Where users see and withdraw what they authorised.
    pub manage: Option<String>,
}

const US_CORE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/";

/// The US Core 6.1 profiles by resource type (`supportedProfile`): the data Kindling generates is shaped
/// after them, and the API serves every search their CapabilityStatement requires.
const US_CORE_PROFILES: &[(&str, &[&str])] = &[
    ("AllergyIntolerance", &["us-core-allergyintolerance"]),
    ("CarePlan", &["us-core-careplan"]),
    ("CareTeam", &["us-core-careteam"]),
    ("Condition", &["us-core-condition-encounter-diagnosis", "us-core-condition-problems-health-concerns"]),
    ("Coverage", &["us-core-coverage"]),
    ("Device", &["us-core-implantable-device"]),
    ("DiagnosticReport", &["us-core-diagnosticreport-note", "us-core-diagnosticreport-lab"]),
    ("DocumentReference", &["us-core-documentreference"]),
    ("Encounter", &["us-core-encounter"]),
    ("Goal", &["us-core-goal"]),
    ("Immunization", &["us-core-immunization"]),
    ("Location", &["us-core-location"]),
    ("Medication", &["us-core-medication"]),
    ("MedicationDispense", &["us-core-medicationdispense"]),
    ("MedicationRequest", &["us-core-medicationrequest"]),
    (
        "Observation",
        &[
            "us-core-observation-lab",
            "us-core-observation-pregnancyintent",
            "us-core-observation-pregnancystatus",
            "us-core-observation-occupation",
            "us-core-respiratory-rate",
            "us-core-simple-observation",
            "us-core-heart-rate",
            "us-core-body-temperature",
            "pediatric-weight-for-height",
            "us-core-pulse-oximetry",
            "us-core-smokingstatus",
            "us-core-observation-sexual-orientation",
            "head-occipital-frontal-circumference-percentile",
            "us-core-head-circumference",
            "us-core-body-height",
            "us-core-bmi",
            "us-core-observation-screening-assessment",
            "us-core-blood-pressure",
            "us-core-observation-clinical-result",
            "pediatric-bmi-for-age",
            "us-core-body-weight",
            "us-core-vital-signs",
        ],
    ),
    ("Organization", &["us-core-organization"]),
    ("Patient", &["us-core-patient"]),
    ("Practitioner", &["us-core-practitioner"]),
    ("PractitionerRole", &["us-core-practitionerrole"]),
    ("Procedure", &["us-core-procedure"]),
    ("Provenance", &["us-core-provenance"]),
    ("QuestionnaireResponse", &["us-core-questionnaireresponse"]),
    ("RelatedPerson", &["us-core-relatedperson"]),
    ("ServiceRequest", &["us-core-servicerequest"]),
    ("Specimen", &["us-core-specimen"]),
];

/// `rest.security`: SMART on FHIR, with the endpoints in the `oauth-uris` extension (clients that read
/// only the CapabilityStatement find the authorisation server here; `.well-known/smart-configuration`
/// says more).
fn security(o: &OAuthUris) -> Value {
    let mut uris = vec![
        json!({"url": "authorize", "valueUri": o.authorize}),
        json!({"url": "token", "valueUri": o.token}),
        json!({"url": "revoke", "valueUri": o.revoke}),
    ];
    if let Some(introspect) = &o.introspect {
        uris.push(json!({"url": "introspect", "valueUri": introspect}));
    }
    uris.push(json!({"url": "register", "valueUri": o.register}));
    if let Some(manage) = &o.manage {
        uris.push(json!({"url": "manage", "valueUri": manage}));
    }
    json!({
        "cors": true,
        "service": [{
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
            "text": "OAuth 2.0 with SMART App Launch 2.2 (authorization code with PKCE, backend services)"
        }],
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": uris
        }],
        "description": "Access tokens from the SMART authorisation server are required: patient/, user/ and system/ scopes (v1 and v2, granular) decide what each token reads and writes."
    })
}

/// The server's CapabilityStatement (US Core Server, SMART `rest.security`), for `GET [base]/metadata`.
pub fn capability_statement(base_url: &str, software_version: &str, date: &str, oauth: Option<&OAuthUris>) -> Value {
    let mut resources = Vec::new();
    for ty in R4_RESOURCE_TYPES.iter().filter(|t| !NOT_SERVED.contains(t)) {
        let mut search_params = vec![
            json!({"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"}),
            json!({"name": "_lastUpdated", "type": "date", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"}),
        ];
        let mut includes = Vec::new();
        for p in params::params_for(ty) {
            search_params.push(json!({"name": p.name, "type": p.kind.as_str()}));
            if p.kind == ParamKind::Reference {
                includes.push(format!("{ty}:{}", p.name));
            }
        }
        let mut revincludes = Vec::new();
        for source in params::types_with_params() {
            for p in params::params_for(source) {
                if p.kind == ParamKind::Reference && p.targets.is_none_or(|t| t.contains(ty)) {
                    revincludes.push(format!("{source}:{}", p.name));
                }
            }
        }
        let mut r = json!({
            "type": ty,
            "interaction": [
                {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "patch"}, {"code": "delete"},
                {"code": "history-instance"}, {"code": "history-type"}, {"code": "create"}, {"code": "search-type"}
            ],
            "versioning": "versioned-update",
            "readHistory": true,
            "updateCreate": true,
            "conditionalCreate": true,
            "conditionalUpdate": true,
            "conditionalDelete": "single",
            "conditionalRead": "not-supported",
            "referencePolicy": ["literal", "local"],
            "searchParam": search_params,
        });
        // FHIR JSON has no empty arrays: the lists are stated only where they have something.
        if !includes.is_empty() {
            r["searchInclude"] = json!(includes);
        }
        if !revincludes.is_empty() {
            r["searchRevInclude"] = json!(revincludes);
        }
        if let Some((_, profiles)) = US_CORE_PROFILES.iter().find(|(t, _)| t == ty) {
            r["supportedProfile"] = json!(profiles.iter().map(|p| format!("{US_CORE}{p}|6.1.0")).collect::<Vec<_>>());
        }
        if *ty == "Patient" {
            r["operation"] = json!([
                {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
                {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"},
            ]);
        }
        if *ty == "DocumentReference" {
            r["operation"] = json!([{"name": "docref", "definition": "http://hl7.org/fhir/us/core/OperationDefinition/docref"}]);
        }
        if *ty == "Group" {
            r["operation"] = json!([{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}]);
        }
        resources.push(r);
    }
    let mut statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "Kindling",
        "kind": "instance",
        "instantiates": ["http://hl7.org/fhir/us/core/CapabilityStatement/us-core-server", "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "software": {"name": "Kindling", "version": software_version},
        "implementation": {"description": "Kindling FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json", "application/json"],
        "patchFormat": ["application/json-patch+json"],
        "implementationGuide": ["http://hl7.org/fhir/us/core/ImplementationGuide/hl7.fhir.us.core|6.1.0"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
            "operation": [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}],
            "searchParam": [
                {"name": "_count", "type": "number"},
                {"name": "_sort", "type": "string"},
                {"name": "_summary", "type": "token"},
                {"name": "_elements", "type": "string"},
                {"name": "_total", "type": "token"},
            ],
        }],
    });
    if let Some(o) = oauth {
        statement["rest"][0]["security"] = security(o);
    }
    statement
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every array and object in the statement has something in it, and every string too.
    fn assert_nothing_empty(v: &Value, path: &str) {
        match v {
            Value::Array(a) => {
                assert!(!a.is_empty(), "{path} is an empty array");
                a.iter().enumerate().for_each(|(i, x)| assert_nothing_empty(x, &format!("{path}[{i}]")));
            }
            Value::Object(m) => {
                assert!(!m.is_empty(), "{path} is an empty object");
                m.iter().for_each(|(k, x)| assert_nothing_empty(x, &format!("{path}.{k}")));
            }
            Value::String(s) => assert!(!s.trim().is_empty(), "{path} is an empty string"),
            Value::Null => panic!("{path} is null"),
            _ => {}
        }
    }

    fn uris() -> OAuthUris {
        let e = |p: &str| format!("https://ehr.example/auth/{p}");
        OAuthUris {
            authorize: e("authorize"),
            token: e("token"),
            revoke: e("revoke"),
            introspect: Some(e("introspect")),
            register: e("register"),
            manage: Some("https://ehr.example/ehr/connected".into()),
        }
    }

    #[test]
    fn no_empty_arrays_objects_or_strings_anywhere() {
        assert_nothing_empty(&capability_statement("https://ehr.example/fhir", "1.0.0", "2026-12-05T00:00:00Z", Some(&uris())), "CapabilityStatement");
        assert_nothing_empty(&capability_statement("https://ehr.example/fhir", "1.0.0", "2026-12-05T00:00:00Z", None), "CapabilityStatement");
    }

    #[test]
    fn states_the_us_core_profiles_and_the_smart_endpoints() {
        let cs = capability_statement("https://ehr.example/fhir", "1.0.0", "2026-12-05T00:00:00Z", Some(&uris()));
        let resources = cs["rest"][0]["resource"].as_array().unwrap();
        let profiles: Vec<&str> = resources.iter().flat_map(|r| r["supportedProfile"].as_array().into_iter().flatten()).filter_map(Value::as_str).collect();
        assert!(profiles.len() >= 42, "{}", profiles.len());
        assert!(profiles.contains(&"http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|6.1.0"));
        // Every profiled type is one the server serves.
        for (ty, _) in US_CORE_PROFILES {
            assert!(resources.iter().any(|r| r["type"] == *ty), "{ty}");
        }
        let security = &cs["rest"][0]["security"];
        assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
        let uris = security["extension"][0]["extension"].as_array().unwrap();
        let token = uris.iter().find(|e| e["url"] == "token").unwrap();
        assert_eq!(token["valueUri"], "https://ehr.example/auth/token");
        assert_eq!(cs["patchFormat"], json!(["application/json-patch+json"]));
        assert!(resources.iter().all(|r| r["interaction"].as_array().unwrap().iter().any(|i| i["code"] == "patch")));
        // The open sandbox states no security it does not enforce.
        assert!(capability_statement("https://ehr.example/fhir", "1.0.0", "2026-12-05T00:00:00Z", None)["rest"][0].get("security").is_none());
    }
}
