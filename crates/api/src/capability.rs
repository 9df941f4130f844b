//! The CapabilityStatement: built from the same tables the server runs on, so it states what works.

use fhir::params::{self, ParamKind};
use fhir::types::R4_RESOURCE_TYPES;
use serde_json::{Value, json};

const NOT_SERVED: &[&str] = &["Bundle", "OperationOutcome", "Parameters"];

pub fn capability_statement(base_url: &str, software_version: &str, date: &str) -> Value {
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
                {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "delete"},
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
            "searchInclude": includes,
            "searchRevInclude": revincludes,
            "searchParam": search_params,
        });
        if *ty == "Patient" {
            r["operation"] = json!([{"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}]);
        }
        resources.push(r);
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "Kindling",
        "kind": "instance",
        "instantiates": ["http://hl7.org/fhir/us/core/CapabilityStatement/us-core-server"],
        "software": {"name": "Kindling", "version": software_version},
        "implementation": {"description": "Kindling FHIR R4 server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json", "application/json"],
        "patchFormat": [],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
            "searchParam": [
                {"name": "_count", "type": "number"},
                {"name": "_sort", "type": "string"},
                {"name": "_summary", "type": "token"},
                {"name": "_elements", "type": "string"},
                {"name": "_total", "type": "token"},
            ],
        }],
    })
}
