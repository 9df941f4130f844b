//! What the authorisation server keeps, as stored (JSON in the auth store).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a client authenticates at the token endpoint.
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
    /// The client id.
    pub client_id: String,
    /// The name people see.
    pub name: String,
    /// How it authenticates.
    pub kind: ClientKind,
    /// Hash of the secret (symmetric clients only): `sha256$…` of a secret Kindling generated, argon2 of one an apps file supplied (see `crypto::verify_client_secret`); the secret itself is shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    /// Its registered redirect URIs (exact match).
    pub redirect_uris: Vec<String>,
    /// Where the EHR opens it for a launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_url: Option<String>,
    /// The most this client may be granted.
    pub allowed_scope: String,
    /// Its public keys (`private_key_jwt`), inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    /// Or where it publishes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// A logo URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// Disabled apps can neither launch nor get tokens.
    #[serde(default)]
    pub disabled: bool,
    /// The EHR behaviour this app meets by default (a launch may choose another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// Registered by the app itself (RFC 7591), not by an administrator: its JWKS URL may only reach
    /// public addresses over https. Always stored; a registration stored before the field existed counts
    /// as self-registered (the safe side) until an administrator saves it again (apps file, `kindling apps`,
    /// the EHR's Apps page).
    #[serde(default = "stored_without_origin")]
    pub self_registered: bool,
}

fn stored_without_origin() -> bool {
    true
}

pub use crate::profile::Profile;

/// Failures injected into one launch, each behaving as a real server's would.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// The launch handle is already expired when the app gets it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired_launch: bool,
    /// Resource types (or whole scopes) the user will deny at consent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// No encounter in the context, even when one was chosen.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_encounter: bool,
    /// Access tokens expire after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secs: Option<i64>,
    /// Refresh requests fail with `invalid_grant`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh_fails: bool,
    /// The grant (access and refresh tokens) is revoked this many seconds after the first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_after_secs: Option<i64>,
    /// The FHIR API answers this status (429 or 503) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_error_status: Option<u16>,
    /// ... on this share of requests (0–1; 0.5 fails every second request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_error_rate: Option<f64>,
    /// The FHIR API waits this long before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_delay_ms: Option<u64>,
}

impl Faults {
    /// Whether no fault is injected.
    pub fn is_empty(&self) -> bool {
        *self == Faults::default()
    }

    /// Plain-language list of what is injected (for the EHR's pages).
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.expired_launch {
            out.push("launch handle already expired".to_string());
        }
        if !self.deny.is_empty() {
            out.push(format!("user denies {}", self.deny.join(", ")));
        }
        if self.no_encounter {
            out.push("no encounter context".into());
        }
        if let Some(s) = self.token_secs {
            out.push(format!("access tokens expire after {s} s"));
        }
        if self.refresh_fails {
            out.push("refresh fails".into());
        }
        if let Some(s) = self.revoke_after_secs {
            out.push(format!("tokens revoked after {s} s"));
        }
        if let (Some(status), Some(rate)) = (self.fhir_error_status, self.fhir_error_rate) {
            out.push(format!("FHIR API answers {status} on {:.0}% of requests", rate * 100.0));
        }
        if let Some(ms) = self.fhir_delay_ms {
            out.push(format!("FHIR responses delayed {ms} ms"));
        }
        out
    }

    /// Refuses values a real server could not produce.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(st) = self.fhir_error_status
            && st != 429
            && st != 503
        {
            return Err("fhir_error_status must be 429 or 503".into());
        }
        if let Some(r) = self.fhir_error_rate
            && !(0.0..=1.0).contains(&r)
        {
            return Err("fhir_error_rate must be between 0 and 1".into());
        }
        if self.fhir_error_rate.is_some() != self.fhir_error_status.is_some() {
            return Err("fhir_error_status and fhir_error_rate go together".into());
        }
        if self.token_secs.is_some_and(|s| !(1..=86_400).contains(&s)) || self.revoke_after_secs.is_some_and(|s| !(0..=86_400).contains(&s)) {
            return Err("token_secs must be 1–86400 and revoke_after_secs 0–86400".into());
        }
        if self.fhir_delay_ms.is_some_and(|ms| ms > 30_000) {
            return Err("fhir_delay_ms must be at most 30000".into());
        }
        Ok(())
    }
}

/// Who a user is in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    /// A clinician (EHR), linked to a Practitioner.
    Clinician,
    /// A patient (portal), linked to a Patient.
    Patient,
}

/// A person who signs in.
#[derive(Clone, Serialize, Deserialize)]
pub struct User {
    /// The sign-in name.
    pub username: String,
    /// The name shown.
    pub display_name: String,
    /// Clinician or patient.
    pub role: UserRole,
    /// The argon2 hash of the password.
    pub password_hash: String,
    /// `Practitioner/x` or `Patient/y`.
    pub fhir_user: String,
    /// A disabled user cannot sign in, and their sessions and tokens stop working.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// The most this user may let an app do, as resource scopes (`user/Patient.rs user/Appointment.rs`),
    /// applied at the user and the patient level alike: a front-desk persona lets no app read clinical
    /// resources, whatever the app asks (the bound is on apps, not on the EHR's own pages). `None`:
    /// everything the role allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rights: Option<String>,
    /// An administrator (a clinician) manages the EHR's apps and user accounts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("role", &self.role)
            .field("fhir_user", &self.fhir_user)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
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
    /// Public id of the launch (never the handle): names it in the launch inspector and the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The EHR behaviour to reproduce for this launch (overrides the app's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// Failures to inject, for rehearsing an app's recovery.
    #[serde(default, skip_serializing_if = "Faults::is_empty")]
    pub faults: Faults,
    /// The app the EHR launched; when set, only that app can redeem the handle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The signed-in EHR user who launched the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The patient in context (bare id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// The encounter in context (bare id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// SMART 2.2 `fhirContext` objects.
    #[serde(default, rename = "fhirContext", skip_serializing_if = "Vec::is_empty")]
    pub fhir_context: Vec<Value>,
    /// SMART `intent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// CDS Hooks `appContext`: what a decision-support card's SMART link hands the app it opens (a string,
    /// often JSON), in the token response as `appContext`.
    #[serde(default, rename = "appContext", skip_serializing_if = "Option::is_none")]
    pub app_context: Option<String>,
    /// A tenant id (Oracle-style).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Whether the app should show its own patient banner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub need_patient_banner: Option<bool>,
    /// The EHR's style for embedded apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart_style_url: Option<String>,
    /// Further token-response parameters (practice or enterprise identifiers, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, Value>,
}

/// An authorisation request between `/authorize` and the code, across sign-in, picker and consent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingAuthorization {
    /// The vendor profile the flow follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// The app.
    pub client_id: String,
    /// Where the code goes.
    pub redirect_uri: String,
    /// The scopes asked for.
    pub scope: String,
    /// The app's `state`, returned with the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// The OpenID Connect `nonce`, put in the id_token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The EHR launch this request belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchContext>,
    /// The user this request is for, once known (an EHR launch names them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The patient chosen or given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Hash of the browser-binding cookie of the browser that started the request: only that browser may
    /// post its sign-in, picker and consent forms (a request id copied out of a page is worth nothing).
    #[serde(default)]
    pub browser: String,
    /// The form the request waits for; a form posted out of turn (consent before the patient is chosen,
    /// a second pick) is refused.
    #[serde(default)]
    pub awaiting: Awaiting,
}

impl PendingAuthorization {
    /// The public id of the EHR launch this request continues, if any.
    pub fn launch_id(&self) -> Option<&str> {
        self.launch.as_ref().and_then(|l| l.id.as_deref())
    }
}

/// The step a pending authorisation request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Awaiting {
    /// The sign-in form.
    #[default]
    SignIn,
    /// The patient picker.
    Patient,
    /// The consent page.
    Consent,
}

/// What a code, an access token and a refresh token stand for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Grant {
    /// Ties together everything one authorisation produced (revoked as one).
    pub grant_id: String,
    /// The app.
    pub client_id: String,
    /// The granted scopes.
    pub scope: String,
    /// The user who authorised it (none for backend services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The user's FHIR resource (`fhirUser`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The patient in context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// The encounter in context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// The launch context it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchContext>,
    /// The OpenID Connect `nonce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Set on codes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    /// The authorisation request's `state`, on codes only (Epic-style servers echo it in the token response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The PKCE challenge the code exchange must answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_challenge: Option<String>,
    /// Unix ms of the access token's expiry (on access tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// Unix ms at which the whole grant stops working (an injected revocation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_at: Option<i64>,
    /// The vendor profile the grant was made under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// The sign-in session (its stored key) an `online_access` grant lives with: its refresh token stops
    /// working when that session ends. None with `offline_access`, and for grants not made at a sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl Grant {
    /// The faults injected into this grant's launch.
    pub fn faults(&self) -> Faults {
        self.launch.as_ref().map(|l| l.faults.clone()).unwrap_or_default()
    }

    /// The public id of the launch it came from.
    pub fn launch_id(&self) -> Option<&str> {
        self.launch.as_ref().and_then(|l| l.id.as_deref())
    }

    /// The vendor profile it follows.
    pub fn profile(&self) -> Profile {
        self.profile.clone().unwrap_or_default()
    }
}
