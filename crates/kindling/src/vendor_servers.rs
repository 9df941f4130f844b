//! The servers of the EHRs the vendor profiles reproduce, at their own addresses: a profile with a
//! `fhir_path` (Epic's `…/api/FHIR/R4`, Oracle's `…/r4/{tenant}`) answers there with the same FHIR API —
//! links, `fullUrl`s and `Location`s on that base — and its own discovery (its issuer, its endpoints), and
//! a profile with an `issuer_path` (Epic's `…/oauth2`) serves its OpenID configuration there.
//!
//! Launches under the profile send that base as `iss`, and its apps must ask for it as `aud`: an app
//! that compares the id_token's `iss` with the FHIR base, or that builds URLs from a hard-coded base,
//! fails here as it would at the vendor's.

use api::AppState;
use auth::profile::Profile;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

/// One profile's server: its path, and the service that answers there (CORS as on `/fhir`).
struct VendorServer {
    /// The path of its FHIR base (`/epic/api/FHIR/R4`).
    path: String,
    /// [`serve`] with this server's [`Face`].
    service: Router,
}

/// What a profile's server answers with.
struct Face {
    /// The path of its FHIR base.
    path: String,
    /// Its FHIR base URL.
    base: String,
    /// This server's own FHIR base, on which the API recognises references to its resources.
    local: String,
    /// The FHIR API with links on this base.
    api: Router,
    /// Its SMART configuration.
    smart: Value,
    /// Its OpenID configuration, served at the FHIR base when the issuer is the FHIR base.
    openid: Option<Value>,
}

/// Every profile's own server.
#[derive(Clone, Default)]
pub(crate) struct VendorServers(Arc<Vec<VendorServer>>);

impl VendorServers {
    /// The server whose FHIR base `path` is at or below.
    fn at(&self, path: &str) -> Option<&VendorServer> {
        self.0.iter().find(|s| path.strip_prefix(s.path.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
    }
}

/// The servers of every profile that has its own, and the routes of their issuers' OpenID configurations.
/// Their FHIR bases are answered by [`answer`] from the server's fallback: routed there, a request would
/// carry the outer route's path parameters into the FHIR API's own routing.
pub(crate) fn build(state: &AppState, auth: &auth::Shared) -> (VendorServers, Router) {
    let c = &auth.config;
    let mut router = Router::new();
    let mut servers = Vec::new();
    for rules in c.profiles.all() {
        let Some(path) = rules.fhir_path() else { continue };
        let profile = Profile::named(&rules.name);
        let mut face = state.clone();
        face.base_url = c.fhir_base_for(&profile);
        face.oauth = state.oauth.clone().map(|o| api::capability::OAuthUris {
            revoke: c.endpoint(rules.revocation_path()),
            introspect: o.introspect.filter(|_| rules.advertises_introspection()),
            ..o
        });
        let openid = auth::openid_configuration_document(c, &profile);
        let face = Arc::new(Face {
            path: path.to_string(),
            base: face.base_url.clone(),
            local: state.base_url.clone(),
            api: api::router(face),
            smart: auth::smart_configuration_document(c, &profile),
            openid: rules.issuer_path().is_none().then(|| openid.clone()),
        });
        let service = Router::new().fallback(serve).with_state(face).layer(crate::cors());
        servers.push(VendorServer { path: path.to_string(), service });
        if let Some(issuer) = rules.issuer_path() {
            router = router.route(&format!("{issuer}/.well-known/openid-configuration"), get(move || async move { auth::discovery_response(openid) }));
        }
    }
    (VendorServers(Arc::new(servers)), router)
}

/// A request no route took: a profile's server answers it when it is at or below its FHIR base.
pub(crate) async fn answer(servers: &VendorServers, request: Request) -> Result<Response, Request> {
    match servers.at(request.uri().path()) {
        Some(server) => Ok(match server.service.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }),
        None => Err(request),
    }
}

/// A request to a profile's server: its discovery, or the FHIR API at `/fhir` with links on its base.
async fn serve(State(server): State<Arc<Face>>, mut request: Request) -> Response {
    let rest = request.uri().path().strip_prefix(server.path.as_str()).unwrap_or_default().to_string();
    let discovery = match rest.as_str() {
        "/.well-known/smart-configuration" => Some(server.smart.clone()),
        "/.well-known/openid-configuration" => server.openid.clone(),
        _ => None,
    };
    if let Some(doc) = discovery {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return api::ApiError::method_not_allowed("discovery documents are read with GET").into_response();
        }
        return auth::discovery_response(doc);
    }
    if rest.starts_with("/.well-known/") {
        return api::ApiError::not_found(format!("this server publishes no {rest}")).into_response();
    }
    // References to this server's resources written on this base are read as the API's own.
    let query = match request.uri().query() {
        Some(q) => format!("?{}", rebase_query(q, &server.base, &server.local)),
        None => String::new(),
    };
    match format!("/fhir{rest}{query}").parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return api::ApiError::bad_request("the request's address cannot be read").into_response(),
    }
    let request = match rebase_body(request, &server.base, &server.local).await {
        Ok(r) => r,
        Err(refusal) => return refusal,
    };
    match server.api.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// `text` with `from` (a FHIR base) replaced by `to` where it starts a URL: the base itself, or followed by
/// `/`, `?` or `|` (a versioned canonical).
fn rebase_text(text: &str, from: &str, to: &str) -> Option<String> {
    let rest = text.strip_prefix(from)?;
    (rest.is_empty() || rest.starts_with(['/', '?', '|'])).then(|| format!("{to}{rest}"))
}

/// A query string whose values name resources on `from` (`patient=…/Patient/1`), on `to` instead.
fn rebase_query(query: &str, from: &str, to: &str) -> String {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    if !pairs.iter().any(|(_, v)| v.contains(from)) {
        return query.to_string();
    }
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        // A value may list several (`a,b`) or carry a modifier's prefix: each item is rebased.
        let items: Vec<String> = v.split(',').map(|item| rebase_text(item, from, to).unwrap_or_else(|| item.to_string())).collect();
        out.append_pair(k, &items.join(","));
    }
    out.finish()
}

/// Every string of a JSON value that is a URL on `from`, on `to` instead.
fn rebase_json(value: &mut serde_json::Value, from: &str, to: &str) -> bool {
    match value {
        serde_json::Value::String(s) => match rebase_text(s, from, to) {
            Some(t) => {
                *s = t;
                true
            }
            None => false,
        },
        // Every item is visited (no short-circuit): each is rebased.
        serde_json::Value::Array(items) => items.iter_mut().map(|v| rebase_json(v, from, to)).filter(|changed| *changed).count() > 0,
        serde_json::Value::Object(map) => map.values_mut().map(|v| rebase_json(v, from, to)).filter(|changed| *changed).count() > 0,
        _ => false,
    }
}

/// A JSON request body whose references (and transaction `fullUrl`s) are on `from`, on `to` instead, so that
/// the store, the access policy and search see one base.
async fn rebase_body(request: Request, from: &str, to: &str) -> Result<Request, Response> {
    let json = request.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.contains("json"));
    if !json {
        return Ok(request);
    }
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, api::MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            let message = format!("the request body is over {} MiB, the most a request may carry", api::MAX_BODY_BYTES / (1024 * 1024));
            return Err(api::ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too-costly", message).into_response());
        }
    };
    let rebased = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|mut value| rebase_json(&mut value, from, to).then_some(value));
    let body = match rebased {
        Some(value) => {
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            axum::body::Body::from(serde_json::to_vec(&value).unwrap_or_else(|_| bytes.to_vec()))
        }
        // Unchanged, or not JSON (the API answers that in its own words).
        None => axum::body::Body::from(bytes),
    };
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: &str = "http://k.test/epic/api/FHIR/R4";
    const TO: &str = "http://k.test/fhir";

    #[test]
    fn urls_on_the_vendor_base_are_rebased_and_nothing_else() {
        assert_eq!(rebase_text(&format!("{FROM}/Patient/1"), FROM, TO).as_deref(), Some("http://k.test/fhir/Patient/1"));
        assert_eq!(rebase_text(FROM, FROM, TO).as_deref(), Some(TO));
        assert_eq!(rebase_text(&format!("{FROM}x/Patient/1"), FROM, TO), None, "another base that begins alike");
        assert_eq!(rebase_text("Patient/1", FROM, TO), None);
        let q = rebase_query(
            &format!("patient={}&code=1,2", url::form_urlencoded::byte_serialize(format!("{FROM}/Patient/1").as_bytes()).collect::<String>()),
            FROM,
            TO,
        );
        assert_eq!(
            url::form_urlencoded::parse(q.as_bytes()).into_owned().collect::<Vec<_>>(),
            vec![("patient".into(), format!("{TO}/Patient/1")), ("code".into(), "1,2".into())]
        );
        assert_eq!(rebase_query("code=1,2&x=%2F", FROM, TO), "code=1,2&x=%2F", "left as sent when nothing names the base");
        let mut v = serde_json::json!({"subject": {"reference": format!("{FROM}/Patient/1")}, "entry": [{"fullUrl": format!("{FROM}/Observation/o")}], "note": [{"text": "see Patient/1"}]});
        assert!(rebase_json(&mut v, FROM, TO));
        assert_eq!(v["subject"]["reference"], format!("{TO}/Patient/1"));
        assert_eq!(v["entry"][0]["fullUrl"], format!("{TO}/Observation/o"));
        assert_eq!(v["note"][0]["text"], "see Patient/1");
    }
}
