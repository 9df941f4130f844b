//! The OpenAPI description at `/openapi.json` is kept true: every route the routers declare is described
//! (read from the routers' source, where the routes are written), and every described operation reaches a
//! handler on a running server (not the "nothing at this URL" fallback, not 405).

use std::collections::BTreeSet;

/// The source files that declare routes, and the crate each belongs to.
const ROUTER_SOURCES: &[(&str, &str)] = &[
    ("api", include_str!("../../../api/src/lib.rs")),
    ("auth", include_str!("../../../auth/src/lib.rs")),
    ("ehr", include_str!("../../../ehr/src/lib.rs")),
    ("app", include_str!("../../../app/src/lib.rs")),
    ("kindling", include_str!("../../src/lib.rs")),
];

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

/// `(method, path)` of every `.route("path", method(handler)...)` in the routers' source.
fn declared_routes() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (krate, source) in ROUTER_SOURCES {
        for line in source.lines().map(str::trim).filter(|l| l.starts_with(".route(\"")) {
            let rest = &line[".route(\"".len()..];
            let (path, handlers) = rest.split_once('"').unwrap_or_else(|| panic!("{krate}: cannot read {line}"));
            let mut found = 0;
            for m in METHODS {
                let call = format!("{m}(");
                let called = handlers.match_indices(&call).any(|(i, _)| {
                    let before = handlers[..i].chars().next_back();
                    !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if called {
                    routes.insert((m.to_string(), path.to_string()));
                    found += 1;
                }
            }
            assert!(found > 0, "{krate}: no method found in {line}");
        }
    }
    routes
}

fn described_routes(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            routes.insert((method.clone(), path.clone()));
        }
    }
    routes
}

/// A concrete URL path for a described one: each `{name}` filled with a value the handler accepts.
fn concrete(path: &str) -> String {
    let values = [
        ("{type}", "Patient"),
        ("{id}", "openapi-probe"),
        ("{vid}", "1"),
        ("{job}", "openapi-probe"),
        ("{file}", "openapi-probe.ndjson"),
        ("{sub}", "$everything"),
        ("{client_id}", "openapi-probe"),
        ("{sid}", "openapi-probe"),
        ("{username}", "openapi-probe"),
    ];
    let mut p = path.to_string();
    for (k, v) in values {
        p = p.replace(k, v);
    }
    assert!(!p.contains('{'), "a path parameter without a probe value: {path}");
    p
}

/// The server's origin (the test app's base is the FHIR base, `{origin}/fhir`).
fn origin(app: &crate::TestApp) -> String {
    app.base.strip_suffix("/fhir").expect("the FHIR base ends in /fhir").to_string()
}

#[tokio::test]
async fn every_route_is_described_and_every_described_operation_is_routed() {
    let app = crate::spawn_with_reference_app().await;
    let origin = origin(&app);
    let r = app.client.get(format!("{origin}/openapi.json")).send().await.expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let doc: serde_json::Value = r.json().await.expect("json");
    assert_eq!(doc["openapi"], "3.1.0");

    let declared = declared_routes();
    assert!(declared.len() > 60, "the route scan found only {} routes: has the routers' style changed?", declared.len());
    let described = described_routes(&doc);
    let undescribed: Vec<_> = declared.difference(&described).collect();
    assert!(undescribed.is_empty(), "routes missing from /openapi.json: {undescribed:?}");
    let unrouted: Vec<_> = described.difference(&declared).collect();
    assert!(unrouted.is_empty(), "described in /openapi.json but not declared by a router: {unrouted:?}");

    // Every described operation reaches a handler on the running server.
    for (method, path) in &described {
        let url = format!("{origin}{}", concrete(path));
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = app.client.request(m, &url).send().await.expect("request");
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        assert_ne!(status, 405, "{method} {path}: 405 ({body})");
        assert!(!(status == 404 && body.contains("There is nothing at this URL")), "{method} {path}: not routed");
        assert!(!(status == 404 && body.contains("there is nothing at this URL")), "{method} {path}: not routed");
    }
}

#[tokio::test]
async fn every_reference_in_the_description_resolves() {
    let app = crate::spawn_app().await;
    let r = app.client.get(format!("{}/openapi.json", origin(&app))).send().await.expect("GET");
    let doc: serde_json::Value = r.json().await.expect("json");
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 50);
    for r in refs {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("an external reference: {r}"));
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
    // Every operation says what its errors look like, and has an id of its own.
    let mut operation_ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(operation_ids.insert(id.to_string()), "{method} {path}: operationId {id} is used twice");
            assert!(op["responses"]["default"].is_object(), "{method} {path} has no default (error) response");
            assert!(op["summary"].as_str().is_some_and(|s| !s.is_empty()), "{method} {path} has no summary");
        }
    }
}

fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// Found by schemathesis: the EHR's, the portal's and the reference app's form posts answered a body of the
/// wrong content type with axum's plain text; a person gets a page, and a wrong method keeps its `Allow`.
#[tokio::test]
async fn form_posts_the_pages_cannot_read_are_answered_with_a_page() {
    let app = crate::spawn_with_reference_app().await;
    let origin = origin(&app);
    for path in ["/ehr/login", "/ehr/launch", "/ehr/apps", "/portal/login", "/app/s/openapi-probe/signout"] {
        let r = app.client.post(format!("{origin}{path}")).header("content-type", "application/json").body("{}").send().await.expect("POST");
        assert_eq!(r.status().as_u16(), 415, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/html"), "{path}: {ct}");
        let body = r.text().await.unwrap();
        assert!(body.contains("This request could not be read"), "{path}: {body}");
    }
    // A mistyped page address: a page, not FHIR JSON; under /fhir an OperationOutcome.
    let r = app.client.get(format!("{origin}/ehr/patients/x/nonsense")).send().await.expect("GET");
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let r = app.client.get(format!("{origin}/fhir/Patient/x/y/z/w")).send().await.expect("GET");
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/fhir+json"));
    let r = app.client.delete(format!("{origin}/ehr/login")).send().await.expect("DELETE");
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.headers()["allow"].to_str().unwrap().contains("POST"));
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
}
