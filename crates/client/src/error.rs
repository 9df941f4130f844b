//! Errors with two faces: [`Error::user_message`] is a short, clinician-facing sentence with the action to
//! take; `Display` is the technical detail for logs. Neither ever contains a token.

/// Everything that can go wrong in a SMART integration, by what the app should do about it. The variants'
/// fields carry the technical detail for logs (never a token).
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum Error {
    /// The launch came from an EHR that is not configured (`iss` not on the allow-list).
    #[error("unknown issuer {iss}: not on the allow-list of configured EHRs")]
    UnknownIssuer { iss: String },
    /// The EHR's SMART configuration could not be fetched or read.
    #[error("discovery failed for {iss}: {detail}")]
    Discovery { iss: String, detail: String },
    /// The callback's `state` is unknown, expired or already used (a replay, a stale tab, another browser).
    #[error("unknown or expired state in the callback")]
    UnknownState,
    /// The callback's RFC 9207 `iss` is not the issuer the authorisation was sent to (mix-up attack).
    #[error("the callback's iss {got} differs from the authorisation server {expected}")]
    IssuerMismatch { expected: String, got: String },
    /// The user did not allow access.
    #[error("authorisation denied: {description}")]
    AccessDenied { description: String },
    /// The launch expired or was already used.
    #[error("launch expired or reused: {description}")]
    LaunchExpired { description: String },
    /// Any other OAuth error from the authorisation or token endpoint.
    #[error("OAuth error {code}: {description}")]
    OAuth { code: String, description: String },
    /// The refresh token no longer works: the app must ask the user to relaunch.
    #[error("refresh failed: {detail}")]
    RefreshFailed { detail: String },
    /// The access token is no longer accepted and could not be renewed.
    #[error("the session has ended: {detail}")]
    SessionEnded { detail: String },
    /// The id_token did not verify.
    #[error("id_token rejected: {0}")]
    IdToken(String),
    /// A CDS Hooks request whose signed JWT does not hold (the service answers 401).
    #[error("CDS Hooks request rejected: {0}")]
    CdsJwt(String),
    /// What was granted does not allow the call.
    #[error("not granted: {0}")]
    NotGranted(String),
    /// The FHIR server refused or failed the request.
    #[error("FHIR {status}: {detail}")]
    Fhir { status: u16, detail: String },
    /// The server stayed busy (429/503) through every retry.
    #[error("FHIR server busy ({status}) after {attempts} attempts")]
    Busy { status: u16, attempts: u32 },
    /// A URL outside the FHIR base would have received the token.
    #[error("refusing to send the access token to {url}, outside the FHIR base")]
    OutsideBase { url: String },
    /// Network, timeout or an unreadable response.
    #[error("transport: {0}")]
    Transport(String),
    /// A configuration mistake in the app (bad key, bad URL).
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// A short sentence for a clinician: what happened and what to do.
    pub fn user_message(&self) -> &'static str {
        match self {
            Error::UnknownIssuer { .. } => "This app was opened by a system it does not know, so it did not connect. Open it from your EHR.",
            Error::Discovery { .. } | Error::Transport(_) => {
                "The record system could not be reached. Try again in a moment; if it keeps happening, tell your administrator."
            }
            Error::UnknownState => "This sign-in link is no longer valid. Relaunch the app from the patient's chart.",
            Error::IssuerMismatch { .. } => {
                "The sign-in answer did not come from the expected record system, so it was ignored. Relaunch the app from the patient's chart."
            }
            Error::AccessDenied { .. } => {
                "Access to the record was not allowed, so this app cannot show it. Relaunch the app from the patient's chart to choose again."
            }
            Error::LaunchExpired { .. } => "This launch has expired. Relaunch the app from the patient's chart.",
            Error::OAuth { .. } => {
                "The record system did not let this app in. Relaunch the app from the patient's chart; if it keeps happening, tell your administrator."
            }
            Error::RefreshFailed { .. } | Error::SessionEnded { .. } => {
                "Your session with the record system has ended. Relaunch the app from the patient's chart."
            }
            Error::IdToken(_) => {
                "The record system's sign-in could not be verified, so the app stopped. Relaunch the app; if it keeps happening, tell your administrator."
            }
            Error::NotGranted(_) => "This app was not given access to this part of the record.",
            Error::Fhir { status: 403, .. } => "This app was not given access to this part of the record.",
            Error::Fhir { status: 404 | 410, .. } => "This record was not found.",
            Error::Fhir { .. } => "The record system could not answer this request.",
            Error::Busy { .. } => "The record system is busy; this part could not be loaded. Try again shortly.",
            Error::OutsideBase { .. } | Error::Config(_) => "The app is not set up correctly. Tell your administrator.",
            Error::CdsJwt(_) => "The decision-support request could not be verified, so it was not answered.",
        }
    }

    /// Whether the only way forward is a new launch from the EHR.
    pub fn needs_relaunch(&self) -> bool {
        matches!(
            self,
            Error::UnknownState
                | Error::LaunchExpired { .. }
                | Error::RefreshFailed { .. }
                | Error::SessionEnded { .. }
                | Error::AccessDenied { .. }
                | Error::IssuerMismatch { .. }
        )
    }

    pub(crate) fn transport(e: reqwest::Error) -> Error {
        // reqwest errors carry the URL, never headers or bodies; strip query strings all the same.
        Error::Transport(e.without_url().to_string())
    }

    /// An RFC 6749 error (`error`, `error_description`) as the matching variant.
    pub fn from_oauth(code: &str, description: &str) -> Error {
        let description = description.to_string();
        match code {
            "access_denied" => Error::AccessDenied { description },
            "invalid_request" if description.contains("expired") || description.contains("already used") || description.contains("unknown") => {
                Error::LaunchExpired { description }
            }
            _ => Error::OAuth { code: code.to_string(), description },
        }
    }
}

/// The SDK's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// A secret (token, client secret) whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("eyJhbGciOi.super-secret");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
    }

    #[test]
    fn oauth_errors_map_to_what_the_app_must_do() {
        assert!(matches!(Error::from_oauth("access_denied", "no"), Error::AccessDenied { .. }));
        let e = Error::from_oauth("invalid_request", "this launch has expired or is unknown; launch the app again from the EHR");
        assert!(matches!(e, Error::LaunchExpired { .. }));
        assert!(e.needs_relaunch());
        assert_eq!(e.user_message(), "This launch has expired. Relaunch the app from the patient's chart.");
        assert!(matches!(Error::from_oauth("invalid_scope", "x"), Error::OAuth { .. }));
    }
}
