//! Discovery documents (SMART 2.2 §2.1, OpenID Connect Discovery) and the JWKS. Every URL is absolute and
//! every capability listed works.

use crate::profile::Profile;
use crate::{AuthConfig, Shared};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const CAPABILITIES: &[&str] = &[
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
];

pub const SCOPES_SUPPORTED: &[&str] = &[
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.cruds",
    "patient/*.rs",
    "patient/*.read",
    "patient/*.write",
    "patient/*.*",
    "user/*.cruds",
    "user/*.rs",
    "user/*.read",
    "user/*.write",
    "user/*.*",
    "system/*.cruds",
    "system/*.rs",
    "system/*.read",
    "system/*.write",
    "system/*.*",
];

/// JSON whatever the `Accept` header says (S-02), and readable from any origin (S-09).
fn json_response(v: Value) -> Response {
    let mut r = Json(v).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    r
}

pub async fn smart_configuration(State(s): State<Shared>) -> Response {
    json_response(smart_configuration_document(&s.config, &Profile::strict()))
}

/// The SMART configuration of the server `profile` reproduces (served at its FHIR base): its issuer, and
/// the endpoints its discovery lists (NextGen Enterprise lists no introspection, and revokes at
/// `…/token/revoke`).
pub fn smart_configuration_document(c: &AuthConfig, profile: &Profile) -> Value {
    let rules = c.profiles.rules(profile);
    let mut doc = json!({
        "issuer": c.issuer_for(profile),
        "jwks_uri": c.endpoint("jwks"),
        "authorization_endpoint": c.endpoint("authorize"),
        "token_endpoint": c.endpoint("token"),
        "introspection_endpoint": c.endpoint("introspect"),
        "revocation_endpoint": c.endpoint(rules.revocation_path()),
        "registration_endpoint": c.endpoint("register"),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        // RFC 9207: every authorisation response (code or error) carries `iss`.
        "authorization_response_iss_parameter_supported": true,
        "scopes_supported": SCOPES_SUPPORTED,
        "capabilities": CAPABILITIES,
    });
    if !rules.advertises_introspection()
        && let Some(o) = doc.as_object_mut()
    {
        o.remove("introspection_endpoint");
    }
    if let Some(manage) = &c.manage_url {
        doc["management_endpoint"] = json!(manage);
    }
    doc
}

pub async fn openid_configuration(State(s): State<Shared>) -> Response {
    json_response(openid_configuration_document(&s.config, &Profile::strict()))
}

/// The OpenID Connect configuration of the issuer `profile` reproduces (served at its issuer).
pub fn openid_configuration_document(c: &AuthConfig, profile: &Profile) -> Value {
    json!({
        "issuer": c.issuer_for(profile),
        "authorization_endpoint": c.endpoint("authorize"),
        "token_endpoint": c.endpoint("token"),
        "jwks_uri": c.endpoint("jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "fhirUser", "profile"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser", "name"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "code_challenge_methods_supported": ["S256"],
    })
}

/// A discovery document as JSON, cacheable (the profiles' servers answer with this too).
pub fn discovery_response(doc: Value) -> Response {
    json_response(doc)
}

pub async fn jwks(State(s): State<Shared>) -> Response {
    json_response(s.keys.jwks().clone())
}

/// The style an embedding EHR hands to apps through `smart_style_url` (SMART's `context-style`).
pub async fn style() -> Response {
    json_response(json!({
        "color_background": "#f6f7f9",
        "color_error": "#a40000",
        "color_highlight": "#1f5fa8",
        "color_modal_backdrop": "rgba(0,0,0,0.4)",
        "color_success": "#2e7d32",
        "color_text": "#1a1a1a",
        "dim_border_radius": "6px",
        "dim_font_size": "16px",
        "dim_spacing_size": "16px",
        "font_family_body": "system-ui, sans-serif",
        "font_family_heading": "system-ui, sans-serif"
    }))
}
