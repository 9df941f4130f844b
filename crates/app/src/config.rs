//! The app's configuration, per environment (`config/app.dev.toml`): where it listens, which EHRs it
//! trusts and its registration at each. Secrets never live in the file: it names the environment
//! variables that hold them.

use serde::Deserialize;

/// The app's settings (`kindling app --config FILE`, TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Address to listen on when run alone (`kindling app`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The app's externally visible base URL (its launch URL is `{public_url}/app/launch`).
    pub public_url: String,
    /// Where sessions and pending authorisations are kept: an SQLite file path (one node), or a
    /// `postgres://` URL (several nodes of the app share it).
    #[serde(default = "default_database")]
    pub database: String,
    /// Environment variable holding the 32-byte session encryption key (base64); a random key is used (and
    /// sessions do not survive a restart) when it is not set.
    #[serde(default)]
    pub session_key_env: Option<String>,
    /// Origins allowed to embed the app in a frame (the EHRs' origins).
    #[serde(default)]
    pub frame_ancestors: Vec<String>,
    /// The EHRs this app may be launched from.
    #[serde(rename = "ehr", default)]
    pub ehrs: Vec<EhrEntry>,
}

/// One EHR the app may be launched from (`[[ehr]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EhrEntry {
    /// The EHR's FHIR base, as it sends it in `iss`.
    pub iss: String,
    /// The app's client id at that EHR.
    pub client_id: String,
    /// Environment variable holding the client secret (a confidential app); none for a public one.
    #[serde(default)]
    pub client_secret_env: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:3000".into()
}

fn default_database() -> String {
    "./kindling-app.db".into()
}

impl AppConfig {
    /// Reads and checks a TOML configuration.
    pub fn from_toml(text: &str) -> Result<AppConfig, String> {
        let c: AppConfig = toml::from_str(text).map_err(|e| format!("app config: {e}"))?;
        if c.ehrs.is_empty() {
            return Err("app config: at least one [[ehr]] is needed".into());
        }
        url::Url::parse(&c.public_url).map_err(|e| format!("app config: public_url: {e}"))?;
        Ok(c)
    }

    /// The redirect URI to register at the EHRs.
    pub fn redirect_uri(&self) -> String {
        format!("{}/app/callback", self.public_url.trim_end_matches('/'))
    }

    /// The launch URL to register at the EHRs.
    pub fn launch_url(&self) -> String {
        format!("{}/app/launch", self.public_url.trim_end_matches('/'))
    }
}

/// What the app asks for in an EHR launch: identity, offline access for refresh, and read access to the
/// summary's resources (v2 syntax).
pub const EHR_SCOPE: &str = "launch openid fhirUser offline_access patient/Patient.rs patient/Encounter.rs patient/Condition.rs patient/MedicationRequest.rs patient/AllergyIntolerance.rs patient/Observation.rs";
/// The most the app needs (its registration).
pub const ALLOWED_SCOPE: &str = "launch launch/patient openid fhirUser offline_access patient/Patient.rs patient/Encounter.rs patient/Condition.rs patient/MedicationRequest.rs patient/AllergyIntolerance.rs patient/Observation.rs";
