//! What the authorisation server keeps, as stored (JSON in the auth store).

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// No client authentication (`client-public`).
    Public,
    /// A client secret, by HTTP Basic or in the body (`client-confidential-symmetric`).
    ConfidentialSymmetric,
    /// A `private_key_jwt` assertion (`client-confidential-asymmetric`).
    ConfidentialAsymmetric,
}

/// A registered app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    pub kind: ClientKind,
    /// Argon2 hash of the secret (symmetric clients only); the secret itself is shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    pub redirect_uris: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_url: Option<String>,
    /// The most this client may be granted.
    pub allowed_scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    Clinician,
    Patient,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    pub display_name: String,
    pub role: UserRole,
    pub password_hash: String,
    /// `Practitioner/x` or `Patient/y`.
    pub fhir_user: String,
}

impl User {
    /// The patient a patient user is (their own record).
    pub fn own_patient(&self) -> Option<&str> {
        match self.role {
            UserRole::Patient => self.fhir_user.strip_prefix("Patient/"),
            UserRole::Clinician => None,
        }
    }
}

/// Context created by the EHR before it launches an app; redeemed once through the opaque `launch` handle.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LaunchContext {
    /// The app the EHR launched; when set, only that app can redeem the handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The signed-in EHR user who launched the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// SMART 2.2 `fhirContext` objects.
    #[serde(default, rename = "fhirContext", skip_serializing_if = "Vec::is_empty")]
    pub fhir_context: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub need_patient_banner: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart_style_url: Option<String>,
    /// Further token-response parameters (practice or enterprise identifiers, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, Value>,
}

/// An authorisation request between `/authorize` and the code, across sign-in, picker and consent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingAuthorization {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    pub code_challenge: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
}

/// What a code, an access token and a refresh token stand for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    pub client_id: String,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Set on codes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_challenge: Option<String>,
    /// Unix ms of the access token's expiry (on access tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
}
