//! Enforcement of what a bearer token grants, for every FHIR interaction.
//!
//! The FHIR layer knows nothing of sessions or clients: an [`AccessResolver`] (the authorisation server)
//! turns a bearer token into a [`TokenAccess`] — the granted scopes and the patient and user in context —
//! and this module decides. `patient/` scopes confine to the context patient's compartment (resources of
//! types outside any compartment, such as Medication, are readable when their type is granted);
//! `user/` and `system/` scopes act on every resource of the type; `?param=value` constraints (granular
//! scopes) filter searches and refuse non-matching reads. The `fhirUser` resource is always readable.

use crate::AppState;
use crate::error::ApiError;
use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fhir::params;
use fhir::query::{Filter, ParseOptions, SearchQuery};
use serde_json::Value;
use smart::{Interaction, Level, ScopeSet};
use std::sync::Arc;

/// What a request may do.
#[derive(Debug, Clone)]
pub enum Access {
    /// The explicit open-sandbox mode: no token needed.
    Open,
    Token(Arc<TokenAccess>),
}

#[derive(Debug, Clone)]
pub struct TokenAccess {
    pub client_id: String,
    pub scopes: ScopeSet,
    /// The patient in context (bare id).
    pub patient: Option<String>,
    /// `Type/id` of the signed-in user.
    pub fhir_user: Option<String>,
    /// The public id of the SMART launch the token came from (for the audit trail and launch inspector).
    pub launch: Option<String>,
    /// Failures the EHR simulator injects into this token's FHIR calls.
    pub faults: Option<Arc<FhirFaults>>,
}

/// Injected FHIR failures of one grant: a delay, and an error status on a share of requests. The share is
/// deterministic (0.5 fails every second request, starting with the second) so that tests can rely on it.
#[derive(Debug)]
pub struct FhirFaults {
    pub status: Option<u16>,
    pub rate: f64,
    pub delay_ms: u64,
    requests: std::sync::atomic::AtomicU64,
}

impl FhirFaults {
    pub fn new(status: Option<u16>, rate: f64, delay_ms: u64) -> FhirFaults {
        FhirFaults { status, rate: rate.clamp(0.0, 1.0), delay_ms, requests: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Counts a request; the status it must fail with, if any.
    pub fn next_failure(&self) -> Option<u16> {
        let status = self.status?;
        let n = self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64;
        ((((n + 1.0) * self.rate).floor() as u64) > ((n * self.rate).floor() as u64)).then_some(status)
    }
}

/// Turns a bearer token into what it grants; `Ok(None)` when the token is unknown, expired or revoked, an
/// error when that cannot be known now (the database is unreachable): never a bad credential.
#[async_trait]
pub trait AccessResolver: Send + Sync {
    async fn resolve(&self, bearer_token: &str) -> Result<Option<Arc<TokenAccess>>, store::StoreError>;
}

fn unauthorized(error: Option<&str>, message: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "login", message).into_response();
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"kindling\", error=\"{e}\""),
        None => "Bearer realm=\"kindling\"".to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Middleware for the FHIR routes that need a token: resolves it and stores the [`Access`] in the
/// request's extensions, or answers 401 (RFC 6750 §3).
pub async fn require_access(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = std::time::Instant::now();
    let (mut response, access) = resolve_and_run(&state, request, next).await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if matches!(access, Some(Access::Token(_))) {
        // Health records fetched with a token stay out of browser and proxy caches.
        response.headers_mut().entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    }
    if let Some(sink) = &state.audit {
        let status = response.status().as_u16();
        let token = match &access {
            Some(Access::Token(t)) => Some(t.clone()),
            _ => None,
        };
        sink.record(store::audit::AuditRecord {
            recorded: state.now_ms(),
            category: "rest".into(),
            action: crate::audit_event::interaction(&method, &path).into(),
            outcome: if status < 400 {
                "0"
            } else if status < 500 {
                "4"
            } else {
                "8"
            }
            .into(),
            client_id: token.as_ref().map(|t| t.client_id.clone()),
            username: token.as_ref().and_then(|t| t.fhir_user.clone()),
            patient: token.as_ref().and_then(|t| t.patient.clone()),
            launch: token.as_ref().and_then(|t| t.launch.clone()),
            entity: Some(path),
            detail: Some(format!("{method} {status} in {elapsed_ms:.1} ms")),
        });
    }
    response
}

async fn resolve_and_run(state: &AppState, mut request: Request, next: Next) -> (Response, Option<Access>) {
    let access = match &state.access {
        None => Access::Open,
        Some(resolver) => {
            let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            let Some(header) = header else {
                return (unauthorized(None, "this request needs an access token (Authorization: Bearer ...)"), None);
            };
            let token = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).map(str::trim);
            let Some(token) = token.filter(|t| !t.is_empty()) else {
                return (unauthorized(Some("invalid_request"), "the Authorization header must carry a Bearer token"), None);
            };
            match resolver.resolve(token).await {
                Err(e) => return (ApiError::from(e).into_response(), None),
                Ok(Some(t)) => {
                    if let Some(f) = &t.faults {
                        if f.delay_ms > 0 {
                            tokio::time::sleep(std::time::Duration::from_millis(f.delay_ms)).await;
                        }
                        if let Some(status) = f.next_failure() {
                            return (injected_failure(status), Some(Access::Token(t)));
                        }
                    }
                    Access::Token(t)
                }
                Ok(None) => return (unauthorized(Some("invalid_token"), "the access token is invalid, expired or revoked"), None),
            }
        }
    };
    request.extensions_mut().insert(access.clone());
    (next.run(request).await, Some(access))
}

/// What a rate-limited (429) or overloaded (503) FHIR server answers: an OperationOutcome and `Retry-After`.
fn injected_failure(status: u16) -> Response {
    let (code, message) = if status == 429 {
        ("throttled", "too many requests; retry after the time given in Retry-After")
    } else {
        ("transient", "the service is temporarily unavailable; retry after the time given in Retry-After")
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut r = ApiError::new(status, code, message).into_response();
    r.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
    r
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

fn verb(i: Interaction) -> &'static str {
    match i {
        Interaction::Create => "create",
        Interaction::Read => "read",
        Interaction::Update => "update",
        Interaction::Delete => "delete",
        Interaction::Search => "search",
    }
}

/// A resource to check: already parsed (about to be written) or as stored (parsed only when a constraint
/// or a compartment must be read from it, so unconstrained grants cost no JSON parsing).
#[derive(Clone, Copy)]
pub enum Content<'a> {
    Parsed(&'a Value),
    Stored(&'a str),
}

impl Content<'_> {
    fn value(&self) -> Option<std::borrow::Cow<'_, Value>> {
        match self {
            Content::Parsed(v) => Some(std::borrow::Cow::Borrowed(*v)),
            Content::Stored(s) => serde_json::from_str(s).ok().map(std::borrow::Cow::Owned),
        }
    }
}

/// Types outside every patient compartment that patient-level tokens may read: the practitioners,
/// organisations, locations and medications that records point to, and terminology-like resources.
/// Any other type outside a compartment is refused to patient-level tokens.
pub fn is_shared_type(resource_type: &str) -> bool {
    matches!(
        resource_type,
        "Practitioner"
            | "PractitionerRole"
            | "Organization"
            | "Location"
            | "Medication"
            | "HealthcareService"
            | "Endpoint"
            | "Substance"
            | "Questionnaire"
            | "ValueSet"
            | "CodeSystem"
            | "StructureDefinition"
    )
}

/// Whether content written (or deleted) with a patient-level token belongs to `patient`: its `patient`
/// search parameter (the subject/patient element) points to them, and no element of it points to any
/// other patient (a performer, author or participant `Patient/B` would put it in B's compartment).
fn written_for_patient(resource_type: &str, v: &Value, patient: &str, base: &str) -> bool {
    let Ok(rows) = fhir::extract::extract(resource_type, v, Some(base)) else { return false };
    if !names_no_other_patient(&rows, patient) {
        return false;
    }
    match params::find(resource_type, "patient") {
        Some(p) => {
            let targets: Vec<&fhir::extract::ReferenceRow> =
                rows.references.iter().filter(|r| r.key == p.index_key && r.target_type.as_deref() == Some("Patient")).collect();
            !targets.is_empty() && targets.iter().all(|r| r.target_id.as_deref() == Some(patient) && r.url.is_none())
        }
        None => !rows.patient_compartments.is_empty() && rows.patient_compartments.iter().all(|p| p == patient),
    }
}

/// Whether every patient the content points to (in any reference) is `patient`.
fn names_no_other_patient(rows: &fhir::extract::IndexRows, patient: &str) -> bool {
    rows.referenced_patients.iter().all(|p| p == patient)
}

/// Whether this content (one version of a resource) is in `patient`'s compartment.
fn content_in_compartment(resource_type: &str, v: &Value, patient: &str, base: &str) -> bool {
    fhir::extract::extract(resource_type, v, Some(base)).is_ok_and(|rows| rows.patient_compartments.iter().any(|p| p == patient))
}

/// Whether `resource` satisfies one of the constraint sets (each a list of `param=value` that must all hold).
fn matches_constraints(resource_type: &str, resource: &Value, sets: &[Vec<(String, String)>], base: &str) -> bool {
    let Ok(rows) = fhir::extract::extract(resource_type, resource, Some(base)) else { return false };
    sets.iter().any(|set| {
        set.iter().all(|(name, value)| {
            let Some(p) = params::find(resource_type, name) else { return false };
            let (system, code) = match value.split_once('|') {
                Some((s, c)) => (Some(s), c),
                None => (None, value.as_str()),
            };
            rows.tokens.iter().any(|t| {
                t.key == p.index_key
                    && t.code.as_deref() == Some(code)
                    && system.is_none_or(|s| (s.is_empty() && t.system.is_none()) || t.system.as_deref() == Some(s))
            })
        })
    })
}

/// How the compartment question is answered when a stored resource is judged.
#[derive(Clone, Copy)]
enum Compartment {
    /// From the content itself (a past version, or a resource about to be written).
    Content,
    /// From the current version's index rows (looked up by the caller, which knows the key).
    Ask,
    /// Already looked up.
    Known(bool),
}

/// What judging a resource needs, short of refusing it.
enum Verdict {
    Allowed,
    /// The answer depends on whether the resource is in the context patient's compartment.
    Probe,
}

impl Access {
    /// Whose request this is, for what a client keeps on the server (export jobs, paging snapshots): the
    /// client and, for tokens issued to a person, that person and the patient in context, so that two
    /// users of one app never see each other's. `None` on an open sandbox.
    pub fn owner(&self) -> Option<String> {
        match self {
            Access::Open => None,
            Access::Token(t) => Some(format!("{}|{}|{}", t.client_id, t.fhir_user.as_deref().unwrap_or(""), t.patient.as_deref().unwrap_or(""))),
        }
    }

    /// May `interaction` happen on this resource (as stored, or as about to be written)? `key` is the
    /// stored resource's key when `content` is its current version (its index rows then answer the
    /// compartment question); `None` judges the content itself (a past version, or a new resource).
    pub async fn check_resource(
        &self,
        state: &AppState,
        interaction: Interaction,
        resource_type: &str,
        id: &str,
        key: Option<i64>,
        content: Content<'_>,
    ) -> Result<(), ApiError> {
        let asked = if key.is_some() { Compartment::Ask } else { Compartment::Content };
        match self.decide(state, interaction, resource_type, id, asked, content)? {
            Verdict::Allowed => Ok(()),
            Verdict::Probe => {
                let (Access::Token(t), Some(k)) = (self, key) else { return Err(forbidden("the compartment cannot be checked")) };
                let patient = t.patient.as_deref().unwrap_or_default();
                let inside = state.store.in_patient_compartment(k, patient).await?;
                self.decide(state, interaction, resource_type, id, Compartment::Known(inside), content).map(|_| ())
            }
        }
    }

    /// The rules of [`Access::check_resource`], without looking anything up: [`Verdict::Probe`] when the
    /// answer needs the stored compartment rows (only with [`Compartment::Ask`]).
    fn decide(
        &self,
        state: &AppState,
        interaction: Interaction,
        resource_type: &str,
        id: &str,
        compartment: Compartment,
        content: Content<'_>,
    ) -> Result<Verdict, ApiError> {
        let Access::Token(t) = self else { return Ok(Verdict::Allowed) };
        if interaction == Interaction::Read && t.fhir_user.as_deref() == Some(&format!("{resource_type}/{id}")) {
            return Ok(Verdict::Allowed);
        }
        for level in [Level::System, Level::User] {
            if let Some(sets) = t.scopes.access(level, resource_type, interaction)
                && (sets.is_empty() || content.value().is_some_and(|v| matches_constraints(resource_type, &v, &sets, &state.base_url)))
            {
                return Ok(Verdict::Allowed);
            }
        }
        if let Some(sets) = t.scopes.access(Level::Patient, resource_type, interaction) {
            let Some(patient) = t.patient.as_deref() else {
                return Err(forbidden("patient-level scopes need a patient in context"));
            };
            let writing = matches!(interaction, Interaction::Create | Interaction::Update | Interaction::Delete);
            let in_compartment = if resource_type == "Patient" {
                // A patient's own record may not be written to point at another patient either (a
                // `link.other` would put it in that patient's compartment).
                id == patient
                    && (!writing
                        || content.value().is_some_and(|v| {
                            fhir::extract::extract(resource_type, &v, Some(&state.base_url)).is_ok_and(|rows| names_no_other_patient(&rows, patient))
                        }))
            } else if is_shared_type(resource_type) {
                // Reference data every record points to: readable, never written with patient scopes.
                !writing
            } else if !params::in_patient_compartment(resource_type) {
                false
            } else if writing {
                // Content written or deleted must be about the context patient (its subject/patient
                // element), not merely mention them as performer or author, and mention no other patient.
                content.value().is_some_and(|v| written_for_patient(resource_type, &v, patient, &state.base_url))
            } else {
                match compartment {
                    Compartment::Known(inside) => inside,
                    Compartment::Ask => return Ok(Verdict::Probe),
                    Compartment::Content => content.value().is_some_and(|v| content_in_compartment(resource_type, &v, patient, &state.base_url)),
                }
            };
            if in_compartment && (sets.is_empty() || content.value().is_some_and(|v| matches_constraints(resource_type, &v, &sets, &state.base_url))) {
                return Ok(Verdict::Allowed);
            }
            return Err(forbidden(format!("the granted scopes do not allow {} of this {resource_type}", verb(interaction))));
        }
        Err(forbidden(format!("no granted scope allows {} of {resource_type}", verb(interaction))))
    }

    /// The stored resources (current versions) this token may read, in their order: the rules of
    /// [`Access::check_resource`], with the compartment rows of all of them looked up in one statement.
    pub async fn readable(&self, state: &AppState, resources: Vec<store::StoredResource>) -> Result<Vec<store::StoredResource>, ApiError> {
        let Access::Token(t) = self else { return Ok(resources) };
        let mut verdicts = Vec::with_capacity(resources.len());
        let mut probes = Vec::new();
        for r in &resources {
            let v = self.decide(state, Interaction::Read, &r.resource_type, &r.id, Compartment::Ask, Content::Stored(&r.json)).ok();
            if matches!(v, Some(Verdict::Probe)) {
                probes.push(r.key);
            }
            verdicts.push(v);
        }
        let inside = match (&t.patient, probes.is_empty()) {
            (Some(patient), false) => state.store.in_patient_compartment_many(&probes, patient).await?,
            _ => Default::default(),
        };
        Ok(resources
            .into_iter()
            .zip(verdicts)
            .filter(|(r, v)| match v {
                Some(Verdict::Allowed) => true,
                Some(Verdict::Probe) => {
                    let known = Compartment::Known(inside.contains(&r.key));
                    matches!(self.decide(state, Interaction::Read, &r.resource_type, &r.id, known, Content::Stored(&r.json)), Ok(Verdict::Allowed))
                }
                None => false,
            })
            .map(|(r, _)| r)
            .collect())
    }

    /// Whether every result of a search of `resource_type` narrowed by [`Access::restrict_search`] may be
    /// read without another look: the token's read grants for the type are its search grants, so the
    /// compartment and constraint filters the query carried are the read rules. Not for `Patient`, where a
    /// patient-level read reaches only the context patient's own record while their compartment also holds
    /// records that link to it.
    pub fn search_implies_read(&self, resource_type: &str) -> bool {
        let Access::Token(t) = self else { return true };
        resource_type != "Patient"
            && [Level::System, Level::User, Level::Patient]
                .iter()
                .all(|l| t.scopes.access(*l, resource_type, Interaction::Search) == t.scopes.access(*l, resource_type, Interaction::Read))
    }

    /// Narrows a search of `q.resource_type` to what the token may see, or refuses it.
    pub fn restrict_search(&self, state: &AppState, q: &mut SearchQuery) -> Result<(), ApiError> {
        let Access::Token(t) = self else { return Ok(()) };
        // A chain or `_has` searches another type: it is held to what the token may search there, so that
        // it never tells about resources the token could not find directly.
        for f in q.filters.iter_mut() {
            if let Some((inner_type, filters)) = f.inner_mut() {
                let mut inner = SearchQuery::new(inner_type);
                inner.filters = std::mem::take(filters);
                self.restrict_search(state, &mut inner).map_err(|e| forbidden(format!("a chained or _has search of {inner_type}: {}", e.message)))?;
                *filters = inner.filters;
            }
        }
        let ty = q.resource_type.clone();
        for level in [Level::System, Level::User] {
            if let Some(sets) = t.scopes.access(level, &ty, Interaction::Search) {
                return add_constraint_filter(state, q, &sets);
            }
        }
        if let Some(sets) = t.scopes.access(Level::Patient, &ty, Interaction::Search) {
            let Some(patient) = t.patient.clone() else {
                return Err(forbidden("patient-level scopes need a patient in context"));
            };
            if ty == "Patient" {
                // The Patient compartment also holds the records that link to the patient, which a
                // patient-level read refuses: the search is held to what the token may read (its patient,
                // and its user's own record), so that neither a page, its total, nor a chain through
                // Patient tells about the others.
                let mut ids = vec![patient];
                if let Some(own) = t.fhir_user.as_deref().and_then(|u| u.strip_prefix("Patient/"))
                    && !ids.iter().any(|i| i == own)
                {
                    ids.push(own.to_string());
                }
                q.filters.push(Filter::Ids { resource_type: "Patient".into(), ids });
            } else if params::in_patient_compartment(&ty) {
                q.filters.push(Filter::PatientCompartment(patient));
            } else if !is_shared_type(&ty) {
                return Err(forbidden(format!("{ty} is outside the patient's record; patient-level scopes cannot search it")));
            }
            return add_constraint_filter(state, q, &sets);
        }
        Err(forbidden(format!("no granted scope allows searching {ty}")))
    }

    /// The context patient when `resource_type` is searchable only through patient-level scopes (no
    /// `user/` or `system/` search grant): a compartment search of another patient is then refused before
    /// anything is looked up, so that its answer does not tell whether that patient exists.
    pub fn patient_only(&self, resource_type: &str) -> Option<Option<&str>> {
        self.patient_only_for(resource_type, Interaction::Search)
    }

    /// [`Access::patient_only`] for any interaction.
    pub fn patient_only_for(&self, resource_type: &str, interaction: Interaction) -> Option<Option<&str>> {
        let Access::Token(t) = self else { return None };
        if [Level::System, Level::User].iter().any(|l| t.scopes.access(*l, resource_type, interaction).is_some()) {
            return None;
        }
        Some(t.patient.as_deref())
    }

    /// A patient-level token reading another patient's Patient record is refused before the lookup, so that
    /// 403 and 404 do not tell whether that patient exists (its own fhirUser record excepted).
    pub fn check_patient_id(&self, resource_type: &str, id: &str) -> Result<(), ApiError> {
        let Access::Token(t) = self else { return Ok(()) };
        if resource_type != "Patient" || t.fhir_user.as_deref() == Some(&format!("Patient/{id}")) {
            return Ok(());
        }
        match self.patient_only_for("Patient", Interaction::Read) {
            Some(own) if own != Some(id) => Err(forbidden("patient-level scopes reach only the patient in context")),
            _ => Ok(()),
        }
    }

    /// Interactions on resources not known in advance (conditional update or delete) need an
    /// unconstrained user/ or system/ scope for the type.
    pub fn check_type_wide(&self, resource_type: &str, interaction: Interaction) -> Result<(), ApiError> {
        let Access::Token(t) = self else { return Ok(()) };
        for level in [Level::System, Level::User] {
            if t.scopes.access(level, resource_type, interaction).is_some_and(|sets| sets.is_empty()) {
                return Ok(());
            }
        }
        Err(forbidden(format!("{} of {resource_type} by criteria needs an unconstrained user/ or system/ scope", verb(interaction))))
    }

    /// Whether any scope at all allows `interaction` on the type (for deleting what is already gone).
    pub fn check_any(&self, resource_type: &str, interaction: Interaction) -> Result<(), ApiError> {
        let Access::Token(t) = self else { return Ok(()) };
        if [Level::System, Level::User, Level::Patient].iter().any(|l| t.scopes.access(*l, resource_type, interaction).is_some()) {
            Ok(())
        } else {
            Err(forbidden(format!("no granted scope allows {} of {resource_type}", verb(interaction))))
        }
    }

    /// History across many resources is only for user- and system-level search grants.
    pub fn check_history(&self, resource_type: Option<&str>) -> Result<(), ApiError> {
        let Access::Token(t) = self else { return Ok(()) };
        let ty = resource_type.unwrap_or("*");
        let allowed = [Level::System, Level::User].iter().any(|l| {
            t.scopes.resource_scopes().any(|s| {
                s.level == *l
                    && s.constraints.is_empty()
                    && s.permissions.allows(Interaction::Search)
                    && (s.resource_type.is_none() || s.resource_type.as_deref() == Some(ty))
            })
        });
        if allowed { Ok(()) } else { Err(forbidden("history across resources needs an unconstrained user/ or system/ search scope")) }
    }
}

/// Granular scopes become one token filter when they all constrain the same single parameter (the shape
/// SMART uses, e.g. several `?category=` grants); other shapes are refused rather than half-enforced.
fn add_constraint_filter(state: &AppState, q: &mut SearchQuery, sets: &[Vec<(String, String)>]) -> Result<(), ApiError> {
    if sets.is_empty() {
        return Ok(());
    }
    let name = &sets[0].first().map(|(n, _)| n.clone()).unwrap_or_default();
    if !sets.iter().all(|s| s.len() == 1 && &s[0].0 == name) {
        return Err(forbidden("these granular scopes combine several parameters; search each granted subset separately"));
    }
    // Only what a read can check too: a plain token parameter (no modifier, no result parameter).
    if params::find(&q.resource_type, name).is_none_or(|p| p.kind != params::ParamKind::Token) {
        return Err(forbidden(format!("the granted scope constraint '{name}' is not a token search parameter of {}; it cannot be enforced", q.resource_type)));
    }
    let values: Vec<String> = sets.iter().map(|s| s[0].1.replace(',', "\\,")).collect();
    let pairs = vec![(name.clone(), values.join(","))];
    let parsed = fhir::query::parse(&q.resource_type, &pairs, ParseOptions { lenient: false, base: Some(&state.base_url), now_ms: state.now_ms() })
        .map_err(|e| forbidden(format!("a granted scope constraint cannot be applied: {e}")))?;
    q.filters.extend(parsed.filters);
    Ok(())
}
