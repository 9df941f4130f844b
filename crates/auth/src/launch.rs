//! The EHR's launch-context API: `POST /auth/launch` with the EHR user's credentials (HTTP Basic) and the
//! context as JSON; answers an opaque, single-use `launch` handle that expires (5 minutes by default).

use crate::crypto::{random_token, token_hash};
use crate::model::LaunchContext;
use crate::{ErrorCode, OAuthError, Shared, registry};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;

/// `(username, password)` from an HTTP Basic header.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    // RFC 6749 §2.3.1: client credentials in Basic are form-urlencoded first.
    let dec = |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    Some((dec(user)?, dec(pass)?))
}

/// Handle hash → launch id, kept a day: an authorisation request with an expired handle can still be
/// shown in that launch's inspector.
pub const LAUNCH_REF: &str = "launch_ref";

/// A created launch: the opaque handle for the app, and the public id for the inspector.
pub struct NewLaunch {
    /// The opaque, single-use handle the app receives (`launch`).
    pub handle: String,
    /// The launch's public id (launch inspector, audit trail).
    pub id: String,
}

/// Stores a launch context (giving it an id when it has none) and returns its handle. With the
/// `expired_launch` fault the handle is expired from the start.
pub async fn new_launch(server: &Shared, context: &LaunchContext) -> Result<NewLaunch, store::StoreError> {
    let handle = random_token();
    let mut context = context.clone();
    let id = context.id.get_or_insert_with(|| uuid::Uuid::now_v7().to_string()).clone();
    let value = serde_json::to_string(&context).map_err(|e| store::StoreError::Backend(e.to_string()))?;
    let now = server.now_ms();
    let expires = if context.faults.expired_launch { now - 1 } else { now + server.config.launch_secs * 1000 };
    let hash = token_hash(&handle);
    server.store.auth_put("launch", &hash, &value, None, Some(expires)).await?;
    server.store.auth_put(LAUNCH_REF, &hash, &id, None, Some(now + 86_400_000)).await?;
    let mut what = vec![format!("user: {}", context.username.as_deref().unwrap_or("-"))];
    what.push(format!("patient: {}", context.patient.as_deref().unwrap_or("none")));
    what.push(format!("encounter: {}", context.encounter.as_deref().unwrap_or("none")));
    if let Some(c) = &context.client_id {
        what.push(format!("app: {c}"));
    }
    what.push(format!("profile: {}", server.config.profiles.rules(&context.profile.clone().unwrap_or_default()).label));
    let faults = context.faults.describe();
    if !faults.is_empty() {
        what.push(format!("injected faults: {}", faults.join("; ")));
    }
    what.push(format!("handle expires in {} s", if context.faults.expired_launch { 0 } else { server.config.launch_secs }));
    server
        .audit("launch")
        .launch(id.as_str())
        .client(context.client_id.as_deref())
        .user(context.username.as_deref())
        .patient(context.patient.as_deref())
        .record(what.join("\n"));
    Ok(NewLaunch { handle, id })
}

/// Token-response fields an extra launch value may not set.
const RESERVED: &[&str] = &[
    "access_token",
    "token_type",
    "expires_in",
    "scope",
    "refresh_token",
    "id_token",
    "patient",
    "encounter",
    "fhirContext",
    "need_patient_banner",
    "smart_style_url",
    "intent",
    "appContext",
    "tenant",
    "state",
    "code",
    "iss",
    "aud",
    "sub",
    "client_id",
    "authorization_details",
    "fhirUser",
    "launch",
];

/// The longest `appContext` (CDS Hooks) a launch may carry to its app's token response.
pub const MAX_APP_CONTEXT: usize = 4096;

/// Whether a token-response field is one of SMART's or OAuth's own (no launch value or profile may set it).
pub fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name) || name.starts_with("error")
}

/// What does not hold together in a launch context ([`check_context`]). `Display` is the sentence for
/// the developer of an integration (the launch API's `error_description`); the EHR's launch button shows
/// its own page for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextProblem {
    /// The patient is not a valid id.
    PatientInvalid,
    /// The patient does not exist.
    PatientMissing,
    /// An encounter without its patient.
    EncounterWithoutPatient,
    /// The encounter is not a valid id.
    EncounterInvalid,
    /// The encounter does not exist.
    EncounterMissing,
    /// The encounter is another patient's.
    EncounterOfAnotherPatient,
    /// An extra value named like a SMART or OAuth field of the token response.
    ReservedExtra(String),
    /// A `fhirContext` item that is not a reference to a record here, or of another patient.
    FhirContext(String),
    /// The `appContext` is longer than [`MAX_APP_CONTEXT`].
    AppContextTooLong,
    /// No vendor profile has this name.
    UnknownProfile(String),
}

impl std::fmt::Display for ContextProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContextProblem::PatientInvalid => f.write_str("the patient of the launch is not a valid id"),
            ContextProblem::PatientMissing => f.write_str("the patient of the launch does not exist"),
            ContextProblem::EncounterWithoutPatient => f.write_str("an encounter needs the patient it belongs to in the launch"),
            ContextProblem::EncounterInvalid => f.write_str("the encounter of the launch is not a valid id"),
            ContextProblem::EncounterMissing => f.write_str("the encounter of the launch does not exist"),
            ContextProblem::EncounterOfAnotherPatient => f.write_str("the encounter of the launch belongs to another patient"),
            ContextProblem::ReservedExtra(k) => write!(f, "'{k}' is a SMART or OAuth field of the token response; it cannot be an extra launch value"),
            ContextProblem::FhirContext(why) => f.write_str(why),
            ContextProblem::UnknownProfile(p) => write!(f, "there is no vendor profile '{p}'"),
            ContextProblem::AppContextTooLong => write!(f, "appContext is longer than {MAX_APP_CONTEXT} characters"),
        }
    }
}

/// Whether a launch context holds together: its patient exists, its encounter is that patient's, and every
/// `fhirContext` reference exists and, when it is a record about a patient, is about the launch's patient.
/// A context can never hand an app a record of another patient than the one it names. The one check of
/// every launch, from the EHR's button and from the launch API alike.
pub async fn check_context(server: &Shared, context: &LaunchContext) -> Result<Result<(), ContextProblem>, store::StoreError> {
    let store = server.store.as_ref();
    if let Some(p) = &context.patient {
        if !fhir::types::is_valid_id(p) {
            return Ok(Err(ContextProblem::PatientInvalid));
        }
        if store.read("Patient", p).await?.is_none_or(|r| r.deleted) {
            return Ok(Err(ContextProblem::PatientMissing));
        }
    }
    if let Some(e) = &context.encounter {
        let Some(p) = &context.patient else { return Ok(Err(ContextProblem::EncounterWithoutPatient)) };
        if !fhir::types::is_valid_id(e) {
            return Ok(Err(ContextProblem::EncounterInvalid));
        }
        match store.read("Encounter", e).await? {
            Some(r) if !r.deleted => {
                if !store.in_patient_compartment(r.key, p).await? {
                    return Ok(Err(ContextProblem::EncounterOfAnotherPatient));
                }
            }
            _ => return Ok(Err(ContextProblem::EncounterMissing)),
        }
    }
    // Extra fields join the token response: they may add vendor values (practice ids), never stand in
    // for the context this function checks or for the token response's own fields.
    if let Some(k) = context.extra.keys().find(|k| is_reserved(k)) {
        return Ok(Err(ContextProblem::ReservedExtra(k.clone())));
    }
    if context.app_context.as_ref().is_some_and(|c| c.len() > MAX_APP_CONTEXT) {
        return Ok(Err(ContextProblem::AppContextTooLong));
    }
    if let Some(p) = &context.profile
        && server.config.profiles.get(p.as_str()).is_none()
    {
        return Ok(Err(ContextProblem::UnknownProfile(p.to_string())));
    }
    // References may be absolute: on this server's FHIR base, or on the launch's profile's own.
    let bases = [format!("{}/", server.config.fhir_base), format!("{}/", server.config.fhir_base_for(&context.profile.clone().unwrap_or_default()))];
    let problem = |why: String| Ok(Err(ContextProblem::FhirContext(why)));
    for item in &context.fhir_context {
        let Some(reference) = item.get("reference") else { continue };
        let Some(reference) = reference.as_str() else { return problem("a fhirContext reference must be a string".into()) };
        let relative = bases.iter().find_map(|b| reference.strip_prefix(b.as_str())).unwrap_or(reference);
        let Some((ty, id)) = relative.split_once('/').filter(|(t, i)| fhir::types::is_storable_type(t) && fhir::types::is_valid_id(i)) else {
            return problem(format!("the fhirContext reference '{reference}' is not a reference to a resource on this server (Type/id)"));
        };
        let Some(r) = store.read(ty, id).await?.filter(|r| !r.deleted) else {
            return problem(format!("the fhirContext reference '{reference}' does not exist"));
        };
        let about_a_patient = ty == "Patient" || fhir::params::in_patient_compartment(ty);
        if about_a_patient {
            let Some(p) = &context.patient else {
                return problem(format!("the fhirContext reference '{reference}' is a patient's record: the launch must name that patient"));
            };
            let theirs = if ty == "Patient" { id == p } else { store.in_patient_compartment(r.key, p).await? };
            if !theirs {
                return problem(format!("the fhirContext reference '{reference}' belongs to another patient than the launch's"));
            }
        }
    }
    Ok(Ok(()))
}

/// `POST /auth/launch`: an EHR integration creates a launch for its user (HTTP Basic) and context.
pub async fn create_launch(State(server): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, OAuthError> {
    let (username, password) =
        basic_credentials(&headers).ok_or_else(|| OAuthError::invalid_client("sign in with the EHR user's name and password (HTTP Basic)"))?;
    let user = match crate::accounts::sign_in(&server, &username, &password).await? {
        crate::accounts::SignIn::Accepted(u) => u,
        crate::accounts::SignIn::Throttled { retry_after_secs } => {
            return Err(OAuthError::throttled(retry_after_secs, "too many failed sign-ins for this user; retry after the time given in Retry-After"));
        }
        crate::accounts::SignIn::Refused => return Err(OAuthError::invalid_client("unknown user or wrong password")),
        crate::accounts::SignIn::Busy => {
            return Err(OAuthError::throttled(1, "too many sign-ins are being checked just now; retry after the time given in Retry-After"));
        }
    };
    // Parsed here, not by an extractor, so that a malformed context is an RFC 6749 error like the others.
    let mut context: LaunchContext = serde_json::from_slice(&body).map_err(|e| OAuthError::invalid_request(format!("the launch context is not valid: {e}")))?;
    // Patients launch apps on their own record only (portal launches); clinicians on any.
    if let Some(own) = user.own_patient() {
        if context.patient.as_deref().is_some_and(|p| p != own) {
            return Err(OAuthError::new(StatusCode::FORBIDDEN, ErrorCode::AccessDenied, "a patient can launch apps only on their own record"));
        }
        context.patient = Some(own.to_string());
    }
    // The profile the launch follows is fixed now (the one asked for, else its app's while the server knows
    // it, else strict): its FHIR base is the `iss` announced here and the `aud` the app must ask for.
    if context.profile.is_none() {
        let app = match &context.client_id {
            Some(c) => registry::get_client(server.store.as_ref(), c).await?.and_then(|c| c.profile),
            None => None,
        };
        context.profile = Some(app.filter(|p| server.config.profiles.get(p.as_str()).is_some()).unwrap_or_default());
    }
    check_context(&server, &context).await?.map_err(|p| OAuthError::invalid_request(p.to_string()))?;
    context.faults.validate().map_err(OAuthError::invalid_request)?;
    context.username = Some(user.username);
    context.id = None;
    let iss = server.config.fhir_base_for(&context.profile.clone().unwrap_or_default());
    let NewLaunch { handle, id } = new_launch(&server, &context).await?;
    let mut r = (StatusCode::CREATED, Json(json!({"launch": handle, "launch_id": id, "expires_in": server.config.launch_secs, "iss": iss}))).into_response();
    crate::no_store(&mut r);
    Ok(r)
}
