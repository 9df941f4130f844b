//! Enforcement of what a bearer token grants, for every FHIR interaction.
//!
//! The FHIR layer knows nothing of sessions or clients: an [`AccessResolver`] (the authorisation server)
//! turns a bearer token into a [`TokenAccess`] — the granted scopes and the patient and user in context.
//! The rules are [`crate::policy`]'s pure functions; this module wires them to requests (the middleware
//! that resolves the token, and [`Access`], which answers the open sandbox itself and asks the store the
//! compartment questions the policy leaves open).

use crate::AppState;
use crate::error::ApiError;
use crate::policy::{self, Compartment, Content, Denied, Verdict};
use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fhir::query::SearchQuery;
use smart::{Interaction, ScopeSet};
use std::sync::Arc;

/// What a request may do.
#[derive(Debug, Clone)]
pub enum Access {
    /// The explicit open-sandbox mode: no token needed.
    Open,
    /// What a bearer token grants.
    Token(Arc<TokenAccess>),
}

/// What a resolved bearer token grants, and on whose behalf.
#[derive(Debug, Clone)]
pub struct TokenAccess {
    /// The client the token was issued to.
    pub client_id: String,
    /// The granted scopes.
    pub scopes: ScopeSet,
    /// The patient in context (bare id).
    pub patient: Option<String>,
    /// `Type/id` of the signed-in user.
    pub fhir_user: Option<String>,
    /// The public id of the SMART launch the token came from (for the audit trail and launch inspector).
    pub launch: Option<String>,
    /// Failures the EHR simulator injects into this token's FHIR calls.
    pub faults: Option<Arc<FhirFaults>>,
    /// What the vendor profile the token was issued under changes in the FHIR API.
    pub vendor: Option<Arc<VendorFhir>>,
    /// The FHIR base the token was issued for (its `aud`): at any other base this server answers at (a
    /// vendor profile's own), it is refused as a real EHR would. `None`: any base.
    pub audience: Option<String>,
}

/// A vendor profile's rules for the FHIR API (read-only servers, vendor search parameters, a request
/// budget per app), as the authorisation server resolved them for one token.
#[derive(Debug)]
pub struct VendorFhir {
    /// The profile's name, for the messages.
    pub profile: String,
    /// Read and search only: writes, vread, history and operations answer 405.
    pub read_only: bool,
    /// Operations a read-only API still serves by `GET` (`$export`: its status and files too).
    pub operations: Vec<String>,
    /// Vendor search parameters taken as a standard one: (vendor name, standard name).
    pub param_aliases: Vec<(String, String)>,
    /// At most this many requests per minute per app.
    pub requests_per_minute: Option<u32>,
    /// The app's budget of requests in the current minute (shared by its tokens on this node).
    pub budget: Option<Arc<Budget>>,
    /// One Bulk Data kick-off per app and export address in this many seconds.
    pub export_interval_secs: Option<i64>,
}

/// The last kick-off of an app's export, per address, under a profile that spaces them (expires then).
const EXPORTED: &str = "vendor_export";

/// Whether the request kicks off a Bulk Data export (`…/$export`, not its status or files).
fn kicks_off_export(request: &Request) -> bool {
    request.uri().path().ends_with("/$export")
}

/// Requests counted per calendar minute, for a profile's request budget.
#[derive(Debug, Default)]
pub struct Budget {
    window: std::sync::Mutex<(i64, u32)>,
}

impl Budget {
    /// Counts a request at `now_ms` against `per_minute`: `Err(seconds)` until the next minute when the
    /// budget is spent.
    pub fn take(&self, now_ms: i64, per_minute: u32) -> Result<(), u64> {
        let minute = now_ms.div_euclid(60_000);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.0 != minute {
            *w = (minute, 0);
        }
        if w.1 >= per_minute {
            let left_ms = (minute + 1) * 60_000 - now_ms;
            return Err((left_ms as u64).div_ceil(1000).max(1));
        }
        w.1 += 1;
        Ok(())
    }
}

/// Injected FHIR failures of one grant: a delay, and an error status on a share of requests. The share is
/// deterministic (0.5 fails every second request, starting with the second) so that tests can rely on it.
#[derive(Debug)]
pub struct FhirFaults {
    /// The status a share of requests fails with (429 or 503).
    pub status: Option<u16>,
    /// The share of requests that fail (0 to 1).
    pub rate: f64,
    /// A delay before every request is answered.
    pub delay_ms: u64,
    requests: std::sync::atomic::AtomicU64,
}

impl FhirFaults {
    /// Faults failing `rate` of the requests with `status`, each request first delayed by `delay_ms`.
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
    /// What `bearer_token` grants.
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
    // The address as the client called it (a vendor profile's base is served through `/fhir`).
    let called = request.extensions().get::<axum::extract::OriginalUri>().map_or_else(|| path.clone(), |u| u.path().to_string());
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
            entity: Some(called),
            detail: Some(format!("{method} {status} in {elapsed_ms:.1} ms")),
        });
    }
    response
}

async fn resolve_and_run(state: &AppState, mut request: Request, next: Next) -> (Response, Option<Access>) {
    // A kick-off a vendor profile spaces: (key, interval), recorded once it was accepted.
    let mut spaced: Option<(String, i64)> = None;
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
                    if let Some(aud) = t.audience.as_deref().filter(|a| *a != state.base_url) {
                        let why = format!("this access token was issued for the FHIR server at {aud}, not for this one");
                        return (unauthorized(Some("invalid_token"), &why), None);
                    }
                    if let Some(v) = &t.vendor {
                        if let Some(r) = vendor_rules(state, v, &mut request) {
                            return (r, Some(Access::Token(t)));
                        }
                        if let Some(interval) = v.export_interval_secs
                            && kicks_off_export(&request)
                        {
                            let key = format!("{}|{}", t.client_id, request.uri().path());
                            match export_spacing(state, v, &key, interval).await {
                                Ok(None) => spaced = Some((key, interval)),
                                Ok(Some(refusal)) => return (refusal, Some(Access::Token(t))),
                                Err(e) => return (ApiError::from(e).into_response(), Some(Access::Token(t))),
                            }
                        }
                    }
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
    let response = next.run(request).await;
    if let Some((key, interval)) = spaced
        && response.status() == StatusCode::ACCEPTED
        && let Err(e) = state.store.auth_put(EXPORTED, &key, "", None, Some(state.now_ms() + interval * 1000)).await
    {
        tracing::warn!(error = %e, "an export's kick-off could not be recorded for the profile's spacing");
    }
    (response, Some(access))
}

/// A profile that spaces Bulk Data kick-offs: the refusal while the last one of this app and export is
/// recent, with the seconds left.
async fn export_spacing(state: &AppState, v: &VendorFhir, key: &str, interval: i64) -> Result<Option<Response>, store::StoreError> {
    let now = state.now_ms();
    let Some(last) = state.store.auth_get(EXPORTED, key).await? else { return Ok(None) };
    let until = last.expires.unwrap_or(now);
    if until <= now {
        return Ok(None);
    }
    let wait = ((until - now) as u64).div_ceil(1000).max(1);
    let days = interval as f64 / 86_400.0;
    let message = format!(
        "this server allows one bulk export per app and export every {days:.0} day(s) ({} profile); retry after the time given in Retry-After",
        v.profile
    );
    let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "throttled", message).into_response();
    if let Ok(h) = HeaderValue::from_str(&wait.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, h);
    }
    Ok(Some(r))
}

/// A vendor profile's FHIR rules: the app's request budget, a read-only API, vendor search parameters
/// (rewritten to the standard ones before the request is read). `Some` is the refusal.
fn vendor_rules(state: &AppState, v: &VendorFhir, request: &mut Request) -> Option<Response> {
    if let (Some(per_minute), Some(budget)) = (v.requests_per_minute, &v.budget)
        && let Err(wait) = budget.take(state.now_ms(), per_minute)
    {
        let message = format!("this server allows {per_minute} requests per minute per app ({} profile); retry after the time given in Retry-After", v.profile);
        let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "throttled", message).into_response();
        if let Ok(h) = HeaderValue::from_str(&wait.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, h);
        }
        return Some(r);
    }
    let path = request.uri().path();
    let reads = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD)
        || (request.method() == axum::http::Method::POST && path.ends_with("/_search"));
    let operation = path.split('/').find(|s| s.starts_with('$'));
    let served = operation.is_none_or(|op| v.operations.iter().any(|allowed| op == allowed || op.starts_with(&format!("{allowed}-"))));
    if v.read_only && (!reads || path.contains("/_history") || !served) {
        let message =
            format!("this server's FHIR API offers read and search only ({} profile): no create, update, delete, history, vread or operations", v.profile);
        return Some(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "not-supported", message).into_response());
    }
    if !v.param_aliases.is_empty()
        && let Some(query) = request.uri().query()
    {
        let given: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).map(|(k, val)| (k.into_owned(), val.into_owned())).collect();
        let mut changed = false;
        let mut pairs = Vec::with_capacity(given.len());
        for (k, val) in &given {
            match v.param_aliases.iter().find(|(from, _)| from == k) {
                // The standard parameter, when given as well, wins; the vendor one is dropped.
                Some((_, to)) if given.iter().any(|(g, _)| g == to) => changed = true,
                Some((_, to)) => {
                    changed = true;
                    pairs.push((to.clone(), val.clone()));
                }
                None => pairs.push((k.clone(), val.clone())),
            }
        }
        if changed {
            let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
            let uri = format!("{}?{query}", request.uri().path());
            match uri.parse() {
                Ok(uri) => *request.uri_mut() = uri,
                Err(_) => return Some(ApiError::bad_request("the query cannot be read").into_response()),
            }
        }
    }
    None
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

fn forbidden(denied: Denied) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", denied.0)
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
        let Access::Token(t) = self else { return Ok(()) };
        let asked = if key.is_some() { Compartment::Ask } else { Compartment::Content };
        match policy::decide(t, &state.local_base, interaction, resource_type, id, asked, content).map_err(forbidden)? {
            Verdict::Allowed => Ok(()),
            Verdict::Probe => {
                let Some(k) = key else { return Err(forbidden(Denied("the compartment cannot be checked".into()))) };
                let inside = state.store.in_patient_compartment(k, t.patient.as_deref().unwrap_or_default()).await?;
                policy::decide(t, &state.local_base, interaction, resource_type, id, Compartment::Known(inside), content).map(|_| ()).map_err(forbidden)
            }
        }
    }

    /// The stored resources (current versions) this token may read, in their order: the rules of
    /// [`Access::check_resource`], with the compartment rows of all of them looked up in one statement.
    pub async fn readable(&self, state: &AppState, resources: Vec<store::StoredResource>) -> Result<Vec<store::StoredResource>, ApiError> {
        let Access::Token(t) = self else { return Ok(resources) };
        let judge = |r: &store::StoredResource, c: Compartment| {
            policy::decide(t, &state.local_base, Interaction::Read, &r.resource_type, &r.id, c, Content::Stored(&r.json))
        };
        let verdicts: Vec<Option<Verdict>> = resources.iter().map(|r| judge(r, Compartment::Ask).ok()).collect();
        let probes: Vec<i64> = resources.iter().zip(&verdicts).filter(|(_, v)| **v == Some(Verdict::Probe)).map(|(r, _)| r.key).collect();
        let inside = match (&t.patient, probes.is_empty()) {
            (Some(patient), false) => state.store.in_patient_compartment_many(&probes, patient).await?,
            _ => Default::default(),
        };
        Ok(resources
            .into_iter()
            .zip(verdicts)
            .filter(|(r, v)| match v {
                Some(Verdict::Allowed) => true,
                Some(Verdict::Probe) => judge(r, Compartment::Known(inside.contains(&r.key))) == Ok(Verdict::Allowed),
                None => false,
            })
            .map(|(r, _)| r)
            .collect())
    }

    /// Whether this token reads every stored resource whatever its type and content (an unconstrained
    /// `user/` or `system/` read of every type, as `user/*.rs`): what it is shown needs no judging.
    pub fn reads_everything(&self) -> bool {
        let Access::Token(t) = self else { return true };
        fhir::types::R4_RESOURCE_TYPES
            .iter()
            .filter(|ty| fhir::types::is_storable_type(ty))
            .all(|ty| [smart::Level::System, smart::Level::User].iter().any(|l| t.scopes.access(*l, ty, Interaction::Read).is_some_and(|c| c.is_empty())))
    }

    /// See [`policy::search_implies_read`].
    pub fn search_implies_read(&self, resource_type: &str) -> bool {
        let Access::Token(t) = self else { return true };
        policy::search_implies_read(t, resource_type)
    }

    /// Narrows a search of `q.resource_type` to what the token may see, or refuses it.
    pub fn restrict_search(&self, state: &AppState, q: &mut SearchQuery) -> Result<(), ApiError> {
        let Access::Token(t) = self else { return Ok(()) };
        policy::restrict_search(t, &state.local_base, state.now_ms(), q).map_err(forbidden)
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
        policy::patient_only(t, resource_type, interaction)
    }

    /// See [`policy::check_patient_id`].
    pub fn check_patient_id(&self, resource_type: &str, id: &str, interaction: Interaction) -> Result<(), ApiError> {
        let Access::Token(t) = self else { return Ok(()) };
        policy::check_patient_id(t, resource_type, id, interaction).map_err(forbidden)
    }

    /// See [`policy::check_type_wide`].
    pub fn check_type_wide(&self, resource_type: &str, interaction: Interaction) -> Result<(), ApiError> {
        let Access::Token(t) = self else { return Ok(()) };
        policy::check_type_wide(t, resource_type, interaction).map_err(forbidden)
    }

    /// See [`policy::check_any`].
    pub fn check_any(&self, resource_type: &str, interaction: Interaction) -> Result<(), ApiError> {
        let Access::Token(t) = self else { return Ok(()) };
        policy::check_any(t, resource_type, interaction).map_err(forbidden)
    }

    /// See [`policy::check_history`].
    pub fn check_history(&self, resource_type: Option<&str>) -> Result<(), ApiError> {
        let Access::Token(t) = self else { return Ok(()) };
        policy::check_history(t, resource_type).map_err(forbidden)
    }
}
