//! The OpenAPI 3.1 description of every HTTP route Kindling serves, at `GET /openapi.json`.
//!
//! One document for the whole binary: the FHIR API (`/fhir`), the SMART authorisation server (`/auth`,
//! discovery), the EHR simulator and patient portal (`/ehr`, `/portal`, their form posts), the reference
//! clinician app (`/app`, when mounted) and the health probes. The FHIR resource types and search
//! parameters a client may use per type are in the CapabilityStatement (`/fhir/metadata`); here each
//! FHIR interaction is described once over `{type}`.
//!
//! The description is the contract the tests hold the server to: `it::openapi` checks that every route
//! the routers declare is described and every described operation is routed, and `./test.sh` runs
//! schemathesis against a live `kindling up` with it (no 5xx, every response as described, every error an
//! OperationOutcome, RFC 6749 JSON or a page for a person).

use serde_json::{Map, Value, json};
use std::sync::OnceLock;

/// The document (built once; it depends on nothing the server is configured with).
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

const FHIR_JSON: &[&str] = &["application/fhir+json", "application/json"];

/// `{media type: {schema}}` for each media type.
fn content(types: &[&str], schema: Value) -> Value {
    let mut m = Map::new();
    for t in types {
        m.insert((*t).to_string(), json!({ "schema": schema }));
    }
    Value::Object(m)
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn fhir_ok(description: &str, schema: &str) -> Value {
    json!({ "description": description, "content": content(FHIR_JSON, reference(schema)) })
}

fn page(description: &str) -> Value {
    json!({ "description": description, "content": { "text/html": { "schema": { "type": "string" } } } })
}

fn redirect(description: &str) -> Value {
    json!({ "description": description, "headers": { "Location": { "schema": { "type": "string" }, "required": true } } })
}

fn param(name: &str, location: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": location, "required": location == "path", "description": description, "schema": schema })
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn path_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/parameters/{name}") })
}

/// A form body (`application/x-www-form-urlencoded`) with these string fields.
fn form(fields: &[(&str, &str)], required: &[&str]) -> Value {
    let mut props = Map::new();
    for (name, description) in fields {
        props.insert((*name).to_string(), json!({ "type": "string", "description": description }));
    }
    json!({
        "required": true,
        "content": { "application/x-www-form-urlencoded": { "schema": { "type": "object", "properties": props, "required": required } } }
    })
}

/// An operation: `responses` holds the outcomes that are not errors; `errors` names the error response
/// (`FhirError`, `OAuthError`, `PageError`, `TextError`) every other status is answered with.
fn op(tag: &str, summary: &str, parameters: Vec<Value>, body: Option<Value>, responses: Value, errors: &str) -> Value {
    let mut o = json!({ "tags": [tag], "summary": summary, "responses": responses });
    o["responses"]["default"] = json!({ "$ref": format!("#/components/responses/{errors}") });
    if !parameters.is_empty() {
        o["parameters"] = Value::Array(parameters);
    }
    if let Some(b) = body {
        o["requestBody"] = b;
    }
    o
}

/// A FHIR operation: tokens required unless the server is an open sandbox.
fn fhir(summary: &str, parameters: Vec<Value>, body: Option<Value>, responses: Value) -> Value {
    let mut o = op("FHIR", summary, parameters, body, responses, "FhirError");
    o["security"] = json!([{ "smart": [] }]);
    o
}

fn fhir_body(schema: &str) -> Value {
    json!({ "required": true, "content": content(&["application/fhir+json", "application/json"], reference(schema)) })
}

/// The parameters every FHIR read or search takes: format, pretty printing, summaries, elements.
fn format_params() -> Vec<Value> {
    vec![path_ref("_format"), path_ref("_pretty")]
}

fn search_params() -> Vec<Value> {
    let mut p = format_params();
    p.extend(["_count", "_sort", "_summary", "_elements", "_total", "_include", "_revinclude", "_id", "_lastUpdated", "patient"].map(path_ref));
    p
}

fn export_params(with_patient: bool) -> Vec<Value> {
    let mut p = vec![
        param("_outputFormat", "query", "application/fhir+ndjson (the default), application/ndjson or ndjson", string()),
        param("_type", "query", "Comma-separated resource types to export", string()),
        param("_since", "query", "Only resources updated after this instant", json!({ "type": "string", "format": "date-time" })),
        param("_typeFilter", "query", "A search per type, e.g. Observation?category=laboratory", string()),
        param("_elements", "query", "Elements to keep (Type.element or element)", string()),
        param("Prefer", "header", "respond-async is required", json!({ "type": "string", "enum": ["respond-async", "respond-async, handling=lenient"] })),
        param("Kindling-Export-Fault", "header", "Sandbox only (see docs/bulk-export.md): faults to meet, e.g. kickoff-429, slow=2, fail", string()),
    ];
    if with_patient {
        p.push(param("patient", "query", "Patients to export (POST Parameters in the body also)", string()));
    }
    p
}

fn kickoff_responses() -> Value {
    json!({
        "202": { "description": "Accepted: poll the Content-Location", "headers": { "Content-Location": { "schema": { "type": "string" }, "required": true } } }
    })
}

fn build() -> Value {
    let storable: Vec<&str> = fhir::types::R4_RESOURCE_TYPES.iter().copied().filter(|t| fhir::types::is_storable_type(t)).collect();
    let mut paths = Map::new();
    let mut add = |path: &str, method: &str, mut operation: Value| {
        operation["operationId"] = json!(operation_id(method, path));
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[method] = operation;
    };

    // ---- the server itself ----------------------------------------------------------------------------
    add(
        "/",
        "get",
        op("Server", "The start page: links to the EHR, the portal and the FHIR base", vec![], None, json!({ "200": page("The start page") }), "TextError"),
    );
    add(
        "/healthz",
        "get",
        op(
            "Server",
            "Liveness: the process answers",
            vec![],
            None,
            json!({ "200": { "description": "ok", "content": { "text/plain": { "schema": string() } } } }),
            "TextError",
        ),
    );
    add(
        "/readyz",
        "get",
        op(
            "Server",
            "Readiness: the database answers (503 while it does not)",
            vec![],
            None,
            json!({ "200": { "description": "ready", "content": { "text/plain": { "schema": string() } } } }),
            "TextError",
        ),
    );
    add(
        "/openapi.json",
        "get",
        op(
            "Server",
            "This description",
            vec![],
            None,
            json!({ "200": { "description": "OpenAPI 3.1", "content": { "application/json": { "schema": { "type": "object" } } } } }),
            "TextError",
        ),
    );

    // ---- FHIR ---------------------------------------------------------------------------------------
    add("/fhir/metadata", "get", {
        let mut o = op(
            "FHIR",
            "The CapabilityStatement (no token needed)",
            format_params(),
            None,
            json!({ "200": fhir_ok("CapabilityStatement", "Resource") }),
            "FhirError",
        );
        o["parameters"].as_array_mut().expect("op() gives every operation a parameters array").push(param("mode", "query", "full (the default)", string()));
        o
    });
    for base in ["/fhir", "/fhir/"] {
        let mut p = format_params();
        p.push(param("_getpages", "query", "A search snapshot's id (from a next/previous link)", string()));
        p.push(param("_getpagesoffset", "query", "Offset into the snapshot", json!({ "type": "integer", "minimum": 0 })));
        add(base, "get", fhir("A page of an earlier search (the links of a searchset Bundle)", p, None, json!({ "200": fhir_ok("Bundle", "Bundle") })));
        add(
            base,
            "post",
            fhir(
                "A transaction or batch Bundle",
                format_params(),
                Some(fhir_body("Bundle")),
                json!({ "200": fhir_ok("transaction-response or batch-response Bundle", "Bundle") }),
            ),
        );
    }
    add("/fhir/_history", "get", fhir("The history of every resource", history_params(), None, json!({ "200": fhir_ok("history Bundle", "Bundle") })));
    for method in ["get", "post"] {
        add("/fhir/$export", method, fhir("Bulk Data system export (kick-off)", export_params(true), None, kickoff_responses()));
        add("/fhir/Patient/$export", method, fhir("Bulk Data export of all patients (kick-off)", export_params(true), None, kickoff_responses()));
        let mut group = export_params(false);
        group.insert(0, path_ref("id"));
        add("/fhir/Group/{id}/$export", method, fhir("Bulk Data export of a Group's members (kick-off)", group, None, kickoff_responses()));
        let mut docref = format_params();
        docref.extend([
            param("patient", "query", "The patient (required)", string()),
            param("start", "query", "Start of the care period", json!({ "type": "string", "format": "date" })),
            param("end", "query", "End of the care period", json!({ "type": "string", "format": "date" })),
            param("type", "query", "Document type (system|code)", string()),
            param("on-demand", "query", "false (documents are not generated)", json!({ "type": "boolean" })),
        ]);
        add(
            "/fhir/DocumentReference/$docref",
            method,
            fhir("US Core $docref: a patient's documents by care period and type", docref, None, json!({ "200": fhir_ok("searchset Bundle", "Bundle") })),
        );
    }
    add(
        "/fhir/$export-status/{job}",
        "get",
        fhir(
            "Bulk Data export status: in progress (202), complete (the manifest) or failed",
            vec![path_ref("job")],
            None,
            json!({
                "200": { "description": "The manifest", "content": { "application/json": { "schema": reference("ExportManifest") } } },
                "202": { "description": "In progress", "headers": { "X-Progress": { "schema": string() }, "Retry-After": { "schema": string() } } }
            }),
        ),
    );
    add(
        "/fhir/$export-status/{job}",
        "delete",
        fhir("Cancel a Bulk Data export and delete its files", vec![path_ref("job")], None, json!({ "202": { "description": "Cancelled" } })),
    );
    add(
        "/fhir/$export-file/{job}/{file}",
        "get",
        fhir(
            "One file of a completed export",
            vec![path_ref("job"), param("file", "path", "File name, e.g. 0.ndjson", string())],
            None,
            json!({ "200": { "description": "NDJSON", "content": { "application/fhir+ndjson": { "schema": string() } } } }),
        ),
    );
    add(
        "/fhir/AuditEvent",
        "get",
        fhir("Search the access audit (AuditEvent is read-only)", audit_params(), None, json!({ "200": fhir_ok("searchset Bundle", "Bundle") })),
    );
    let mut audit_read = format_params();
    audit_read.insert(0, path_ref("id"));
    add("/fhir/AuditEvent/{id}", "get", fhir("Read one audit event", audit_read, None, json!({ "200": fhir_ok("AuditEvent", "Resource") })));

    let ty = path_ref("type");
    let id = path_ref("id");
    let with = |first: &[&Value], rest: Vec<Value>| -> Vec<Value> { first.iter().map(|v| (*v).clone()).chain(rest).collect() };
    add("/fhir/{type}", "get", fhir("Search a type", with(&[&ty], search_params()), None, json!({ "200": fhir_ok("searchset Bundle", "Bundle") })));
    add(
        "/fhir/{type}",
        "post",
        fhir(
            "Create (conditionally with If-None-Exist)",
            with(&[&ty], vec![path_ref("_format"), path_ref("If-None-Exist"), path_ref("Prefer")]),
            Some(fhir_body("Resource")),
            json!({
                "201": { "description": "Created", "headers": { "Location": { "schema": string() }, "ETag": { "schema": string() } }, "content": content(FHIR_JSON, reference("Resource")) },
                "200": { "description": "A match for If-None-Exist exists", "content": content(FHIR_JSON, reference("Resource")) }
            }),
        ),
    );
    let mut criteria = param(
        "criteria",
        "query",
        "Search parameters naming the one resource (e.g. identifier=system|value)",
        json!({ "type": "object", "additionalProperties": { "type": "string" } }),
    );
    criteria["style"] = json!("form");
    criteria["explode"] = json!(true);
    add(
        "/fhir/{type}",
        "put",
        fhir(
            "Conditional update: update the one match, or create",
            with(&[&ty], vec![criteria.clone(), path_ref("_format"), path_ref("If-Match"), path_ref("Prefer")]),
            Some(fhir_body("Resource")),
            json!({ "200": fhir_ok("Updated", "Resource"), "201": fhir_ok("Created", "Resource") }),
        ),
    );
    add(
        "/fhir/{type}",
        "delete",
        fhir(
            "Conditional delete of the one match",
            with(&[&ty], vec![criteria]),
            None,
            json!({ "200": fhir_ok("Deleted", "OperationOutcome"), "204": { "description": "Deleted (nothing matched)" } }),
        ),
    );
    add(
        "/fhir/{type}/_search",
        "post",
        fhir(
            "Search a type with the parameters in a form body",
            with(&[&ty], search_params()),
            Some(
                json!({ "content": { "application/x-www-form-urlencoded": { "schema": { "type": "object", "additionalProperties": { "type": "string" } } } } }),
            ),
            json!({ "200": fhir_ok("searchset Bundle", "Bundle") }),
        ),
    );
    add(
        "/fhir/{type}/_history",
        "get",
        fhir("The history of a type", with(&[&ty], history_params()), None, json!({ "200": fhir_ok("history Bundle", "Bundle") })),
    );
    add(
        "/fhir/{type}/{id}",
        "get",
        fhir(
            "Read",
            with(&[&ty, &id], vec![path_ref("_format"), path_ref("_pretty"), path_ref("_summary"), path_ref("_elements"), path_ref("If-None-Match")]),
            None,
            json!({ "200": fhir_ok("The current version", "Resource"), "304": { "description": "Not modified (If-None-Match)" } }),
        ),
    );
    add(
        "/fhir/{type}/{id}",
        "put",
        fhir(
            "Update (or create with this id)",
            with(&[&ty, &id], vec![path_ref("_format"), path_ref("If-Match"), path_ref("Prefer")]),
            Some(fhir_body("Resource")),
            json!({ "200": fhir_ok("Updated", "Resource"), "201": fhir_ok("Created", "Resource") }),
        ),
    );
    add(
        "/fhir/{type}/{id}",
        "patch",
        fhir(
            "JSON Patch (RFC 6902)",
            with(&[&ty, &id], vec![path_ref("_format"), path_ref("If-Match"), path_ref("Prefer")]),
            Some(json!({ "required": true, "content": { "application/json-patch+json": { "schema": reference("JsonPatch") } } })),
            json!({ "200": fhir_ok("Patched", "Resource") }),
        ),
    );
    add(
        "/fhir/{type}/{id}",
        "delete",
        fhir("Delete", vec![ty.clone(), id.clone()], None, json!({ "200": fhir_ok("Deleted", "OperationOutcome"), "204": { "description": "Deleted" } })),
    );
    add(
        "/fhir/{type}/{id}/_history",
        "get",
        fhir("The history of a resource", with(&[&ty, &id], history_params()), None, json!({ "200": fhir_ok("history Bundle", "Bundle") })),
    );
    add(
        "/fhir/{type}/{id}/_history/{vid}",
        "get",
        fhir("Read a version", with(&[&ty, &id, &path_ref("vid")], format_params()), None, json!({ "200": fhir_ok("That version", "Resource") })),
    );
    add(
        "/fhir/{type}/{id}/{sub}",
        "get",
        fhir(
            "Patient/{id}/$everything, or a search in a patient's compartment (Patient/{id}/Observation?...)",
            with(&[&ty, &id, &param("sub", "path", "$everything or a resource type", string())], search_params()),
            None,
            json!({ "200": fhir_ok("searchset Bundle", "Bundle") }),
        ),
    );

    // ---- the SMART authorisation server --------------------------------------------------------------
    let json_ok = |description: &str, schema: &str| json!({ "description": description, "content": { "application/json": { "schema": reference(schema) } } });
    add(
        "/fhir/.well-known/smart-configuration",
        "get",
        op("SMART", "SMART App Launch discovery", vec![], None, json!({ "200": json_ok("SMART configuration", "SmartConfiguration") }), "OAuthError"),
    );
    add(
        "/fhir/.well-known/openid-configuration",
        "get",
        op("SMART", "OpenID Connect discovery", vec![], None, json!({ "200": json_ok("OpenID configuration", "SmartConfiguration") }), "OAuthError"),
    );
    add("/auth/jwks", "get", op("SMART", "The server's signing keys (id_tokens)", vec![], None, json!({ "200": json_ok("JWKS", "Jwks") }), "OAuthError"));
    add(
        "/auth/style.json",
        "get",
        op(
            "SMART",
            "The EHR's styling hints (smart_style_url)",
            vec![],
            None,
            json!({ "200": { "description": "Style", "content": { "application/json": { "schema": { "type": "object" } } } } }),
            "OAuthError",
        ),
    );
    let authorize_fields: &[(&str, &str)] = &[
        ("response_type", "code"),
        ("client_id", "The app's client id"),
        ("redirect_uri", "One of the app's registered redirect URIs"),
        ("scope", "Space-separated SMART scopes"),
        ("state", "Opaque value returned to the app"),
        ("aud", "The FHIR base URL"),
        ("code_challenge", "PKCE challenge"),
        ("code_challenge_method", "S256"),
        ("launch", "The EHR launch handle"),
        ("nonce", "OpenID Connect nonce"),
    ];
    let authorize_responses =
        json!({ "200": page("Sign-in, patient picker or consent page, or an error page"), "303": redirect("Back to the app with code or error") });
    add(
        "/auth/authorize",
        "get",
        op(
            "SMART",
            "Authorisation request (authorisation code flow with PKCE)",
            authorize_fields.iter().map(|(n, d)| param(n, "query", d, string())).collect(),
            None,
            authorize_responses.clone(),
            "PageError",
        ),
    );
    add(
        "/auth/authorize",
        "post",
        op("SMART", "Authorisation request sent as a form post", vec![], Some(form(authorize_fields, &[])), authorize_responses.clone(), "PageError"),
    );
    for (path, summary, fields) in [
        (
            "/auth/login",
            "Sign in during an authorisation request",
            &[("request", "The pending request"), ("csrf", "Form token"), ("username", ""), ("password", "")][..],
        ),
        ("/auth/pick", "Choose the patient (standalone launch)", &[("request", "The pending request"), ("csrf", "Form token"), ("patient", "Patient id")][..]),
        (
            "/auth/consent",
            "Approve or refuse the scopes",
            &[("request", "The pending request"), ("csrf", "Form token"), ("decision", "allow or deny"), ("scope", "Scopes granted")][..],
        ),
    ] {
        add(path, "post", op("SMART", summary, vec![], Some(form(fields, &[])), authorize_responses.clone(), "PageError"));
    }
    let token_fields: &[(&str, &str)] = &[
        ("grant_type", "authorization_code, refresh_token or client_credentials"),
        ("code", "The authorisation code"),
        ("redirect_uri", "As in the authorisation request"),
        ("code_verifier", "PKCE verifier"),
        ("refresh_token", "For grant_type=refresh_token"),
        ("scope", "Scopes (client_credentials, or fewer on refresh)"),
        ("client_id", "Public clients"),
        ("client_secret", "Symmetric clients (or HTTP Basic)"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", "private_key_jwt assertion"),
    ];
    add(
        "/auth/token",
        "post",
        op(
            "SMART",
            "Token endpoint: authorisation code, refresh, client credentials",
            vec![],
            Some(form(token_fields, &["grant_type"])),
            json!({ "200": json_ok("Tokens and launch context", "TokenResponse") }),
            "OAuthError",
        ),
    );
    add(
        "/auth/introspect",
        "post",
        op(
            "SMART",
            "Token introspection (RFC 7662)",
            vec![param("Authorization", "header", "Bearer token of the resource server or app", string())],
            Some(form(&[("token", "The token to inspect"), ("token_type_hint", "access_token or refresh_token")], &["token"])),
            json!({ "200": json_ok("Introspection", "Introspection") }),
            "OAuthError",
        ),
    );
    // The same endpoint at two addresses: SMART's, and NextGen Enterprise's (its profile's discovery names it).
    for (path, summary) in [
        ("/auth/revoke", "Token revocation (RFC 7009)"),
        ("/auth/token/revoke", "Token revocation (RFC 7009) at NextGen Enterprise's address (its profile's discovery names it)"),
    ] {
        add(
            path,
            "post",
            op(
                "SMART",
                summary,
                vec![],
                Some(form(
                    &[("token", "The token to revoke"), ("token_type_hint", "access_token or refresh_token"), ("client_id", ""), ("client_secret", "")],
                    &["token"],
                )),
                json!({ "200": { "description": "Revoked (or unknown)" } }),
                "OAuthError",
            ),
        );
    }
    add(
        "/auth/launch",
        "post",
        op(
            "SMART",
            "Create a launch handle (EHR integration; operator credentials)",
            vec![param("Authorization", "header", "Basic credentials of the launching EHR", string())],
            Some(json!({ "required": true, "content": { "application/json": { "schema": { "type": "object", "additionalProperties": true } } } })),
            json!({ "200": json_ok("The launch handle", "Launch"), "201": json_ok("The launch handle", "Launch") }),
            "OAuthError",
        ),
    );
    add(
        "/auth/register",
        "post",
        op(
            "SMART",
            "Dynamic client registration (RFC 7591)",
            vec![param("Authorization", "header", "Bearer registration token", string())],
            Some(json!({ "required": true, "content": { "application/json": { "schema": reference("ClientMetadata") } } })),
            json!({ "201": json_ok("The registered client", "ClientMetadata") }),
            "OAuthError",
        ),
    );

    // ---- the EHR simulator and the portal ------------------------------------------------------------
    let signed_in = json!({ "200": page("The page"), "303": redirect("To sign-in when there is no session") });
    let ehr =
        |summary: &str, parameters: Vec<Value>, body: Option<Value>, responses: &Value| op("EHR", summary, parameters, body, responses.clone(), "PageError");
    add("/ehr", "get", ehr("The EHR's start (redirects to the patient list)", vec![], None, &json!({ "303": redirect("To the patient list") })));
    add("/ehr/login", "get", ehr("The clinician sign-in page", vec![], None, &json!({ "200": page("Sign-in") })));
    add(
        "/ehr/login",
        "post",
        ehr(
            "Sign in",
            vec![],
            Some(form(&[("csrf", "Form token"), ("username", ""), ("password", "")], &[])),
            &json!({ "303": redirect("Into the EHR"), "200": page("Sign-in again") }),
        ),
    );
    add("/ehr/logout", "post", ehr("Sign out", vec![], Some(form(&[("csrf", "Form token")], &[])), &json!({ "303": redirect("To sign-in") })));
    add(
        "/ehr/patients",
        "get",
        ehr(
            "The patient list and search",
            ["name", "birthdate", "identifier", "page"].iter().map(|n| param(n, "query", "", string())).collect(),
            None,
            &signed_in,
        ),
    );
    add("/ehr/patients/{id}", "get", ehr("A patient's chart", vec![param("id", "path", "Patient id", string())], None, &signed_in));
    add(
        "/ehr/launch",
        "post",
        ehr(
            "Launch an app from the chart",
            vec![],
            Some(form(
                &[
                    ("csrf", "Form token"),
                    ("launch", "ehr|client_id or standalone|client_id"),
                    ("patient", "Patient id"),
                    ("encounter", "Encounter id"),
                    ("profile", "Vendor profile"),
                    ("expired_launch", "Fault: an expired launch"),
                    ("deny", "Fault: scopes to deny"),
                    ("no_encounter", "Fault: no encounter in context"),
                    ("token_secs", "Fault: token lifetime"),
                    ("refresh_fails", "Fault: refresh fails"),
                    ("revoke_after_secs", "Fault: revoke after"),
                    ("fhir_error_status", "Fault: 429 or 503"),
                    ("fhir_error_percent", "Fault: how often"),
                    ("fhir_delay_ms", "Fault: delay"),
                ],
                &[],
            )),
            &json!({ "200": page("The app in the chart"), "303": redirect("To the app or to sign-in") }),
        ),
    );
    add("/ehr/launches", "get", ehr("Recent launches", vec![], None, &signed_in));
    add("/ehr/launches/{id}", "get", ehr("The launch inspector", vec![param("id", "path", "Launch id", string())], None, &signed_in));
    add(
        "/ehr/patients/{id}/cds",
        "get",
        ehr(
            "The chart's decision-support cards (CDS Hooks patient-view), as an HTML fragment",
            vec![param("id", "path", "Patient id", string())],
            None,
            &signed_in,
        ),
    );
    let patient_id = || vec![param("id", "path", "Patient id", string())];
    add("/ehr/patients/{id}/orders", "get", ehr("The order panel: draft orders and the decision-support cards on them", patient_id(), None, &signed_in));
    let order_form = |summary: &str, fields: &[(&str, &str)]| {
        ehr(
            summary,
            vec![param("id", "path", "Patient id", string())],
            Some(form(fields, &[])),
            &json!({ "200": page("Signed, or a refusal in words"), "303": redirect("To the order panel, or to sign-in when there is no session") }),
        )
    };
    add(
        "/ehr/patients/{id}/orders",
        "post",
        order_form("Add a draft order from the catalogue (calls the order-select services)", &[("csrf", "Form token"), ("item", "Catalogue key")]),
    );
    add("/ehr/patients/{id}/orders/remove", "post", order_form("Remove a draft order", &[("csrf", "Form token"), ("draft", "Type/id of the draft")]));
    add(
        "/ehr/patients/{id}/orders/cards",
        "post",
        order_form(
            "Accept a card's suggestion (its actions change the drafts) or override the card; the service gets feedback",
            &[
                ("csrf", "Form token"),
                ("ref", "The cards' reference"),
                ("card", "Card index"),
                ("action", "accept or override"),
                ("suggestion", ""),
                ("reason", ""),
                ("comment", ""),
            ],
        ),
    );
    add(
        "/ehr/patients/{id}/orders/sign",
        "post",
        order_form("Sign the drafts (calls the order-sign services; warning and critical cards must be answered first)", &[("csrf", "Form token")]),
    );
    add("/ehr/cds", "get", ehr("The registered decision-support (CDS Hooks) services, for administrators", vec![], None, &signed_in));
    add(
        "/ehr/cds",
        "post",
        ehr(
            "Register a decision-support service",
            vec![],
            Some(form(&[("csrf", "Form token"), ("id", ""), ("name", ""), ("url", "Discovery URL"), ("apps", "Client ids its cards may open")], &[])),
            &json!({ "201": page("Registered"), "303": redirect("To sign-in when there is no session") }),
        ),
    );
    add(
        "/ehr/cds/{id}/fault",
        "post",
        ehr(
            "Inject a fault into the EHR's calls to a decision-support service (none, slow, error, garbled, bad-jwt), for rehearsal",
            vec![param("id", "path", "Service id", string())],
            Some(form(&[("csrf", "Form token"), ("fault", "none, slow, error, garbled or bad-jwt")], &[])),
            &json!({ "303": redirect("To the services page, or to sign-in when there is no session") }),
        ),
    );
    add(
        "/ehr/cds/{id}/status",
        "post",
        ehr(
            "Stop calling a decision-support service, or call it again",
            vec![param("id", "path", "Service id", string())],
            Some(form(&[("csrf", "Form token"), ("status", "enable or disable")], &[])),
            &json!({ "303": redirect("To the services page, or to sign-in") }),
        ),
    );
    add(
        "/ehr/cds/launch",
        "post",
        ehr(
            "Open the app a decision-support card links to (SMART link, with the card's appContext)",
            vec![],
            Some(form(&[("csrf", "Form token"), ("ref", "The cards shown"), ("card", "Card index"), ("link", "Link index")], &[])),
            &signed_in,
        ),
    );
    add("/ehr/connected", "get", ehr("Apps connected to the patient's record (portal)", vec![param("withdrawn", "query", "", string())], None, &signed_in));
    add(
        "/ehr/connected/{client_id}/withdraw",
        "post",
        ehr("Withdraw an app's access", vec![param("client_id", "path", "", string())], Some(form(&[("csrf", "Form token")], &[])), &signed_in),
    );
    let app_fields: &[(&str, &str)] = &[
        ("csrf", "Form token"),
        ("name", ""),
        ("kind", "public, confidential-symmetric or confidential-asymmetric"),
        ("launch_url", ""),
        ("redirect_uris", "One per line"),
        ("scope", ""),
        ("jwks_url", ""),
        ("icon", ""),
        ("profile", "Vendor profile"),
    ];
    add("/ehr/apps", "get", ehr("Registered apps (administrators)", vec![], None, &signed_in));
    add("/ehr/apps", "post", ehr("Register an app", vec![], Some(form(app_fields, &[])), &signed_in));
    add("/ehr/apps/new", "get", ehr("The registration form", vec![], None, &signed_in));
    add("/ehr/apps/{id}", "get", ehr("An app's settings", vec![param("id", "path", "Client id", string())], None, &signed_in));
    add("/ehr/apps/{id}", "post", ehr("Change an app's settings", vec![param("id", "path", "Client id", string())], Some(form(app_fields, &[])), &signed_in));
    add(
        "/ehr/apps/{id}/status",
        "post",
        ehr(
            "Disable or enable an app",
            vec![param("id", "path", "Client id", string())],
            Some(form(&[("csrf", "Form token"), ("disabled", "1 to disable")], &[])),
            &signed_in,
        ),
    );
    add("/ehr/users", "get", ehr("User accounts (administrators)", vec![], None, &signed_in));
    add(
        "/ehr/users",
        "post",
        ehr(
            "Add a user account (administrators)",
            vec![],
            Some(form(
                &[
                    ("csrf", "Form token"),
                    ("username", ""),
                    ("name", "The name shown in the EHR"),
                    ("role", "clinician or patient"),
                    ("fhir_user", "Practitioner/ID or Patient/ID (must exist)"),
                    ("password", "At least 10 characters"),
                ],
                &[],
            )),
            &json!({
                "201": page("Added"),
                "303": redirect("To sign-in when there is no session"),
                "400": page("The account was not added: why, in words"),
                "403": page("Not an administrator, or a form from elsewhere")
            }),
        ),
    );
    add(
        "/ehr/users/{username}",
        "post",
        ehr(
            "Change a user account (administrators)",
            vec![param("username", "path", "User name", string())],
            Some(form(
                &[
                    ("csrf", "Form token"),
                    ("action", "disable, enable, password, rights, admin or unadmin"),
                    ("password", "For action=password"),
                    ("rights", "For action=rights: resource scopes, or empty"),
                ],
                &[],
            )),
            &json!({
                "200": page("Done"),
                "303": redirect("To sign-in when there is no session"),
                "400": page("Not done: why, in words"),
                "403": page("Not an administrator, or a form from elsewhere")
            }),
        ),
    );
    add("/portal", "get", ehr("The patient portal", vec![], None, &signed_in));
    add("/portal/login", "get", ehr("The portal sign-in page", vec![], None, &json!({ "200": page("Sign-in") })));
    add(
        "/portal/login",
        "post",
        ehr(
            "Portal sign-in",
            vec![],
            Some(form(&[("csrf", "Form token"), ("username", ""), ("password", "")], &[])),
            &json!({ "303": redirect("Into the portal"), "200": page("Sign-in again") }),
        ),
    );
    let file = |summary: &str| {
        op(
            "EHR",
            summary,
            vec![param("file", "path", "File name", string())],
            None,
            json!({ "200": { "description": "The file", "content": { "text/css": { "schema": string() }, "text/javascript": { "schema": string() }, "text/html": { "schema": string() } } } }),
            "TextError",
        )
    };
    add("/ehr/static/{file}", "get", file("The EHR's stylesheets and scripts"));
    add("/demo-app/{file}", "get", file("The browser demo app's files"));

    // ---- the reference clinician app ---------------------------------------------------------------
    let app =
        |summary: &str, parameters: Vec<Value>, body: Option<Value>, responses: Value| op("Reference app", summary, parameters, body, responses, "PageError");
    add(
        "/app/launch",
        "get",
        app(
            "SMART launch URL of the reference app",
            vec![param("iss", "query", "The FHIR base", string()), param("launch", "query", "The launch handle", string())],
            None,
            json!({ "303": redirect("To the authorisation server") }),
        ),
    );
    add(
        "/app/callback",
        "get",
        app(
            "The reference app's redirect URI",
            vec![param("code", "query", "", string()), param("state", "query", "", string()), param("error", "query", "", string())],
            None,
            json!({ "303": redirect("To the patient summary") }),
        ),
    );
    add("/app/s/{sid}/", "get", app("The patient summary", vec![param("sid", "path", "Session", string())], None, json!({ "200": page("Summary") })));
    add(
        "/app/s/{sid}/signout",
        "post",
        app(
            "Sign out of the app",
            vec![param("sid", "path", "Session", string())],
            Some(form(&[("csrf", "Form token")], &[])),
            json!({ "200": page("Signed out"), "303": redirect("Signed out") }),
        ),
    );
    add(
        "/app/cds-services",
        "get",
        op(
            "Reference app",
            "CDS Hooks discovery of the reference app's decision-support service",
            vec![],
            None,
            json!({ "200": { "description": "The services", "content": { "application/json": { "schema": { "type": "object", "required": ["services"] } } } } }),
            "OAuthError",
        ),
    );
    add(
        "/app/cds-services/{id}",
        "post",
        op(
            "Reference app",
            "A CDS Hooks call (patient-view, order-select or order-sign), signed by the EHR with an RS384 JWT; answered with cards",
            vec![param("id", "path", "Service id", string()), param("Authorization", "header", "Bearer JWT signed by a configured EHR", string())],
            Some(
                json!({ "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["hook", "hookInstance", "context"] } } } }),
            ),
            json!({ "200": { "description": "Cards", "content": { "application/json": { "schema": { "type": "object", "required": ["cards"] } } } } }),
            "OAuthError",
        ),
    );
    add(
        "/app/cds-services/{id}/feedback",
        "post",
        op(
            "Reference app",
            "CDS Hooks feedback on the service's cards (accepted or overridden), signed by the EHR with an RS384 JWT",
            vec![param("id", "path", "Service id", string()), param("Authorization", "header", "Bearer JWT signed by a configured EHR", string())],
            Some(json!({ "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["feedback"] } } } })),
            json!({ "200": { "description": "Recorded" } }),
            "OAuthError",
        ),
    );
    add(
        "/app/static/app.css",
        "get",
        op(
            "Reference app",
            "The app's stylesheet",
            vec![],
            None,
            json!({ "200": { "description": "CSS", "content": { "text/css": { "schema": string() } } } }),
            "TextError",
        ),
    );

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Kindling",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "A SMART on FHIR platform: FHIR R4 API, SMART App Launch 2.2 authorisation server, EHR simulator, reference app",
            "description": "Per-type search parameters, includes and profiles are in the FHIR CapabilityStatement (GET /fhir/metadata); SMART capabilities in /fhir/.well-known/smart-configuration. Errors: the FHIR API answers OperationOutcome, the OAuth endpoints RFC 6749 JSON, pages for people HTML.",
            "license": { "name": "Apache-2.0", "identifier": "Apache-2.0" }
        },
        "servers": [{ "url": "/" }],
        "tags": [
            { "name": "FHIR", "description": "The FHIR R4 REST API" },
            { "name": "SMART", "description": "The SMART on FHIR authorisation server" },
            { "name": "EHR", "description": "The EHR simulator and patient portal (pages for people)" },
            { "name": "Reference app", "description": "The reference clinician app (when mounted)" },
            { "name": "Server", "description": "Health and this description" }
        ],
        "paths": paths,
        "components": components(&storable),
    })
}

/// `get /fhir/{type}/{id}` → `get_fhir_type_id`; `/fhir/` (the base with a slash) → `..._fhir_slash`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_string();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        id.push('_');
        id.extend(part.chars().filter_map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => Some(c),
            '-' | '.' | '_' => Some('_'),
            _ => None,
        }));
    }
    if path.len() > 1 && path.ends_with('/') {
        id.push_str("_slash");
    }
    if path == "/" {
        id.push_str("_root");
    }
    id
}

fn history_params() -> Vec<Value> {
    let mut p = format_params();
    p.extend(["_count", "_since"].map(path_ref));
    p
}

fn audit_params() -> Vec<Value> {
    let mut p = format_params();
    p.extend(["_count", "_sort", "_total", "_id", "_lastUpdated", "patient"].map(path_ref));
    p.extend(["date", "agent", "entity", "type", "subtype", "outcome"].map(|n| param(n, "query", "AuditEvent search parameter", string())));
    p
}

fn components(storable: &[&str]) -> Value {
    json!({
        "securitySchemes": {
            "smart": {
                "type": "http",
                "scheme": "bearer",
                "description": "A SMART access token (see /fhir/.well-known/smart-configuration); not needed on an open sandbox"
            }
        },
        "parameters": {
            "type": { "name": "type", "in": "path", "required": true, "description": "A FHIR R4 resource type", "schema": { "type": "string", "enum": storable } },
            "id": { "name": "id", "in": "path", "required": true, "description": "Logical id", "schema": { "type": "string", "pattern": "^[A-Za-z0-9.-]{1,64}$" } },
            "vid": { "name": "vid", "in": "path", "required": true, "description": "Version id", "schema": { "type": "string" } },
            "job": { "name": "job", "in": "path", "required": true, "description": "Export job id", "schema": { "type": "string" } },
            "_format": { "name": "_format", "in": "query", "description": "json, application/json or application/fhir+json (XML is not served)", "schema": { "type": "string" } },
            "_pretty": { "name": "_pretty", "in": "query", "schema": { "type": "boolean" } },
            "_count": { "name": "_count", "in": "query", "description": "Page size (at most 1000)", "schema": { "type": "integer", "minimum": 0 } },
            "_sort": { "name": "_sort", "in": "query", "schema": { "type": "string" } },
            "_summary": { "name": "_summary", "in": "query", "schema": { "type": "string", "enum": ["true", "false", "count", "data", "text"] } },
            "_elements": { "name": "_elements", "in": "query", "schema": { "type": "string" } },
            "_total": { "name": "_total", "in": "query", "schema": { "type": "string", "enum": ["none", "estimate", "accurate"] } },
            "_include": { "name": "_include", "in": "query", "schema": { "type": "string" } },
            "_revinclude": { "name": "_revinclude", "in": "query", "schema": { "type": "string" } },
            "_id": { "name": "_id", "in": "query", "schema": { "type": "string" } },
            "_lastUpdated": { "name": "_lastUpdated", "in": "query", "schema": { "type": "string" } },
            "_since": { "name": "_since", "in": "query", "schema": { "type": "string", "format": "date-time" } },
            "patient": { "name": "patient", "in": "query", "description": "The patient (types with a patient search parameter)", "schema": { "type": "string" } },
            "If-None-Exist": { "name": "If-None-Exist", "in": "header", "description": "Conditional create criteria (a query string)", "schema": { "type": "string" } },
            "If-Match": { "name": "If-Match", "in": "header", "description": "W/\"version\"", "schema": { "type": "string" } },
            "If-None-Match": { "name": "If-None-Match", "in": "header", "schema": { "type": "string" } },
            "Prefer": { "name": "Prefer", "in": "header", "description": "return=minimal, return=representation or return=OperationOutcome", "schema": { "type": "string" } }
        },
        "responses": {
            "FhirError": { "description": "An OperationOutcome", "content": content(FHIR_JSON, reference("OperationOutcome")) },
            "OAuthError": { "description": "An RFC 6749 error", "content": { "application/json": { "schema": reference("OAuthError") } } },
            "PageError": { "description": "A page that tells a person what went wrong", "content": { "text/html": { "schema": { "type": "string" } } } },
            "TextError": { "description": "A short text or page", "content": { "text/plain": { "schema": { "type": "string" } }, "text/html": { "schema": { "type": "string" } }, "application/fhir+json": { "schema": reference("OperationOutcome") } } }
        },
        "schemas": {
            "Resource": {
                "type": "object",
                "required": ["resourceType"],
                "properties": { "resourceType": { "type": "string" }, "id": { "type": "string" }, "meta": { "type": "object" } }
            },
            "Bundle": {
                "type": "object",
                "required": ["resourceType", "type"],
                "properties": {
                    "resourceType": { "const": "Bundle" },
                    "type": { "type": "string", "enum": ["document", "message", "transaction", "transaction-response", "batch", "batch-response", "history", "searchset", "collection"] },
                    "total": { "type": "integer", "minimum": 0 },
                    "link": { "type": "array", "items": { "type": "object", "required": ["relation", "url"], "properties": { "relation": { "type": "string" }, "url": { "type": "string" } } } },
                    "entry": { "type": "array", "items": { "type": "object" } }
                }
            },
            "OperationOutcome": {
                "type": "object",
                "required": ["resourceType", "issue"],
                "properties": {
                    "resourceType": { "const": "OperationOutcome" },
                    "issue": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["severity", "code"],
                            "properties": {
                                "severity": { "type": "string", "enum": ["fatal", "error", "warning", "information"] },
                                "code": { "type": "string" },
                                "diagnostics": { "type": "string" }
                            }
                        }
                    }
                }
            },
            "JsonPatch": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["op", "path"],
                    "properties": { "op": { "type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test"] }, "path": { "type": "string" }, "from": { "type": "string" }, "value": {} }
                }
            },
            "ExportManifest": {
                "type": "object",
                "required": ["transactionTime", "request", "requiresAccessToken", "output", "error"],
                "properties": {
                    "transactionTime": { "type": "string" },
                    "request": { "type": "string" },
                    "requiresAccessToken": { "type": "boolean" },
                    "output": { "type": "array", "items": { "type": "object", "required": ["type", "url"] } },
                    "error": { "type": "array", "items": { "type": "object", "required": ["type", "url"] } }
                }
            },
            "OAuthError": {
                "type": "object",
                "required": ["error"],
                "properties": { "error": { "type": "string" }, "error_description": { "type": "string" }, "error_uri": { "type": "string" } }
            },
            "SmartConfiguration": {
                "type": "object",
                "required": ["issuer", "authorization_endpoint", "token_endpoint"],
                "properties": { "issuer": { "type": "string" }, "authorization_endpoint": { "type": "string" }, "token_endpoint": { "type": "string" }, "capabilities": { "type": "array", "items": { "type": "string" } } }
            },
            "Jwks": { "type": "object", "required": ["keys"], "properties": { "keys": { "type": "array", "items": { "type": "object", "required": ["kty"] } } } },
            "TokenResponse": {
                "type": "object",
                "required": ["access_token", "token_type", "expires_in", "scope"],
                "properties": {
                    "access_token": { "type": "string" },
                    "token_type": { "const": "Bearer" },
                    "expires_in": { "type": "integer" },
                    "scope": { "type": "string" },
                    "refresh_token": { "type": "string" },
                    "id_token": { "type": "string" },
                    "patient": { "type": "string" },
                    "encounter": { "type": "string" },
                    "fhirUser": { "type": "string" },
                    "fhirContext": { "type": "array" },
                    "need_patient_banner": { "type": "boolean" },
                    "smart_style_url": { "type": "string" }
                }
            },
            "Introspection": { "type": "object", "required": ["active"], "properties": { "active": { "type": "boolean" }, "scope": { "type": "string" }, "client_id": { "type": "string" }, "exp": { "type": "integer" } } },
            "Launch": { "type": "object", "required": ["launch"], "properties": { "launch": { "type": "string" } } },
            "ClientMetadata": {
                "type": "object",
                "properties": {
                    "client_id": { "type": "string" },
                    "client_name": { "type": "string" },
                    "redirect_uris": { "type": "array", "items": { "type": "string" } },
                    "grant_types": { "type": "array", "items": { "type": "string" } },
                    "token_endpoint_auth_method": { "type": "string" },
                    "scope": { "type": "string" },
                    "jwks": { "type": "object" },
                    "jwks_uri": { "type": "string" }
                }
            }
        }
    })
}
