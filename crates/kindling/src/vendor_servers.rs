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
        face.oauth = state.oauth.clone().map(|o| api::capability::OAuthUris { revoke: c.endpoint(rules.revocation_path()), ..o });
        let openid = auth::openid_configuration_document(c, &profile);
        let face = Arc::new(Face {
            path: path.to_string(),
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
            return (StatusCode::METHOD_NOT_ALLOWED, "discovery documents are read with GET").into_response();
        }
        return auth::discovery_response(doc);
    }
    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    match format!("/fhir{rest}{query}").parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => return api::ApiError::bad_request("the request's address cannot be read").into_response(),
    }
    match server.api.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
