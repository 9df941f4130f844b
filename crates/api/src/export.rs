//! Bulk Data `$export` (FHIR Bulk Data Access 2.0): system, patient and Group level.
//!
//! A kick-off checks its parameters, records a job in the store (`auth_records`, kind `bulk_export`: on
//! PostgreSQL every node reads it, and it survives restarts) and answers; the export's searches then run in
//! the background under the token's access and freeze the keys of what matched in the job. Its files are
//! rendered as they are downloaded, streamed from the database in chunks of 1,000 resources (a large export
//! never sits in memory), each resource as it was at the job's `transactionTime` (a later version is
//! replaced by the one current then, from the history). A job, and with it its files, lives for
//! [`JOB_TTL_MS`] after the kick-off; the client that started it is the only one that sees it. A kick-off
//! may name failures to rehearse ([`ExportFaults`]).

use crate::AppState;
use crate::access::Access;
use crate::error::{ApiError, ApiResult};
use crate::search::parse_search;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhir::query::Filter;
use fhir::time::{format_http_date, format_instant, from_unix_ms};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The store record kind of export jobs.
const JOB_KIND: &str = "bulk_export";
/// How long a job and its files stay after the kick-off, unless the server is configured otherwise
/// (`AppState::export_ttl_ms`).
pub const JOB_TTL_MS: i64 = 60 * 60 * 1000;
/// Resources per output file; a type with more is split into several files.
pub const FILE_RESOURCES: usize = 100_000;
/// Resources fetched from the database per step while a file streams.
const CHUNK: usize = 1000;

/// Which resources an export is about.
#[derive(Debug, Clone)]
pub enum Level {
    /// `[base]/$export`: every resource the token may read.
    System,
    /// `[base]/Patient/$export`: the compartments of every patient (or of the `patient` parameter's).
    Patients,
    /// `[base]/Group/[id]/$export`: the compartments of the Group's patient members.
    Group(String),
}

/// An export: what it asks for and, once planned, what matched, by type, in files.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    /// Who may see it ([`Access::owner`]).
    owner: Option<String>,
    /// The kick-off request URL, for the manifest.
    request: String,
    /// Unix ms.
    transaction_time: i64,
    state: JobState,
    /// How long the job and its files are kept after `transaction_time` (the server's setting at kick-off).
    #[serde(default = "default_ttl_ms")]
    ttl_ms: i64,
    /// When a node last started planning it (Unix ms): a job still planning long after was left by a node
    /// that stopped, and the next status request plans it again.
    planning_since: i64,
    /// What to plan: the kick-off's parameters, and the patients of a patient- or Group-level export.
    params: KickOff,
    compartment_only: bool,
    patients: Option<Vec<String>>,
    files: Vec<File>,
    /// Resources deleted after `_since` that the export would have held (`Type/id`), by type.
    #[serde(default)]
    deleted: Vec<(String, Vec<String>)>,
    /// Why some requested types were left out (served as OperationOutcomes in the error file).
    errors: Vec<String>,
    /// Why the export failed (state `Failed`).
    failure: Option<String>,
}

fn default_ttl_ms() -> i64 {
    JOB_TTL_MS
}

impl Job {
    /// When the job and its files go (Unix ms): the server's keeping time, or an injected earlier expiry.
    fn expires(&self) -> i64 {
        self.transaction_time + self.params.faults.expire_secs.map_or(self.ttl_ms, |s| (s * 1000).min(self.ttl_ms))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum JobState {
    Planning,
    Complete,
    Failed,
}

/// A job still planning this long after a node started on it, whose planner has not renewed its lease
/// (record kind [`LEASE_KIND`]) for as long, is planned again by the next status request.
const PLANNING_STALE_MS: i64 = 30_000;
const LEASE_KIND: &str = "bulk_export_lease";
/// Records of injected faults: a kick-off refused (`kickoff-429`), a file that answered 404 (`file-404-once`).
const REFUSED_KIND: &str = "bulk_export_refused";
const MISSED_KIND: &str = "bulk_export_missed";
/// A cancelled job's mark, for a planner that saves its result after the cancel.
const CANCELLED_KIND: &str = "bulk_export_cancelled";

/// The frozen keys of each output file, one record per file (`{job}/{n}`): a status poll reads the small
/// job record only, and a download the keys of its own file, not every file's (2 MB for the Synthea set).
const KEYS_KIND: &str = "bulk_export_keys";

#[derive(Debug, Serialize, Deserialize)]
struct File {
    #[serde(rename = "type")]
    resource_type: String,
    #[serde(default)]
    count: usize,
    /// While planning only: saved in a [`KEYS_KIND`] record of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<i64>,
}

/// The parameters of a kick-off, from the query string (GET) or a Parameters resource (POST).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct KickOff {
    /// `_type`: the resource types to export (all the token may read when absent).
    pub types: Option<Vec<String>>,
    /// `_since`: only resources changed after this instant.
    pub since: Option<String>,
    /// `_typeFilter`: searches that select what is exported of a type.
    pub type_filters: Vec<String>,
    /// `patient`: the patients of a Patient- or Group-level export (all when empty).
    pub patients: Vec<String>,
    /// `_elements`: `Type.element` or `element` (every type), top-level elements only.
    #[serde(default)]
    pub elements: Vec<String>,
    /// Failures to rehearse, from the kick-off's [`FAULT_HEADER`].
    #[serde(default)]
    pub faults: ExportFaults,
}

/// The kick-off header that names failures to inject into one export (comma-separated), so that a client
/// can rehearse them against the sandbox: `slow=N`, `kickoff-429`, `fail`, `file-404-once`, `expire=N`.
pub const FAULT_HEADER: &str = "kindling-export-fault";
/// The longest `slow=N` wait per resource type (the planner's lease lapses after [`PLANNING_STALE_MS`]).
pub const MAX_SLOW_MS: u64 = 10_000;
/// The most `slow=N` adds to one job's planning in all.
pub const MAX_SLOW_TOTAL_MS: u64 = 30_000;

/// Failures injected into one export; kept with the job, so that every node and a restart honour them.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportFaults {
    /// `slow=N`: planning waits N ms before each resource type, and `X-Progress` counts the types done.
    #[serde(default)]
    pub slow_ms: u64,
    /// `kickoff-429`: of the kick-offs that name it, every second one (starting with the first) is refused
    /// with 429 and `Retry-After: 1`, as a busy server would; a client that waits and retries gets through.
    #[serde(default)]
    pub kickoff_429: bool,
    /// `fail`: the job fails; its status URL answers 500 with an OperationOutcome.
    #[serde(default)]
    pub fail: bool,
    /// `file-404-once`: each output file answers 404 (with `Retry-After: 1`) to its first download.
    #[serde(default)]
    pub file_404_once: bool,
    /// `expire=N`: the job and its files expire N s after the kick-off instead of after an hour.
    #[serde(default)]
    pub expire_secs: Option<i64>,
}

impl ExportFaults {
    /// Reads the [`FAULT_HEADER`] value; an unknown fault or a bad number is an error to show the client.
    pub fn parse(value: &str) -> Result<ExportFaults, String> {
        let mut f = ExportFaults::default();
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, arg) = match item.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim())),
                None => (item, None),
            };
            let number = |what: &str| -> Result<u64, String> {
                arg.and_then(|a| a.parse::<u64>().ok()).ok_or_else(|| format!("the export fault '{name}' needs a whole number of {what}: {name}=N"))
            };
            match (name.to_ascii_lowercase().as_str(), arg) {
                ("slow", _) => {
                    f.slow_ms = number("milliseconds")?;
                    if f.slow_ms > MAX_SLOW_MS {
                        return Err(format!("slow={} is longer than {MAX_SLOW_MS} ms per resource type", f.slow_ms));
                    }
                }
                ("expire", _) => f.expire_secs = Some(number("seconds")?.min(86_400) as i64),
                ("kickoff-429", None) => f.kickoff_429 = true,
                ("fail", None) => f.fail = true,
                ("file-404-once", None) => f.file_404_once = true,
                _ => return Err(format!("'{item}' is not an export fault (known: slow=N, kickoff-429, fail, file-404-once, expire=N)")),
            }
        }
        Ok(f)
    }
}

/// A job's owner alone (read without the rest of the record).
#[derive(Deserialize)]
struct Owner {
    owner: Option<String>,
}

/// Live jobs one owner may hold at once; a kick-off beyond answers 429.
pub const JOBS_PER_OWNER: usize = 5;

/// Reads the kick-off parameters: `pairs` from the query string, `body` a Parameters resource (POST).
/// Parameters this server does not support are refused (400) unless `Prefer: handling=lenient`.
pub fn kick_off_parameters(headers: &HeaderMap, pairs: &[(String, String)], body: Option<&Value>, level: &Level) -> ApiResult<KickOff> {
    let prefer: Vec<String> =
        headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(|p| p.trim().to_ascii_lowercase()).collect();
    if !prefer.iter().any(|p| p == "respond-async") {
        return Err(ApiError::bad_request("a bulk export needs the header Prefer: respond-async"));
    }
    let lenient = prefer.iter().any(|p| p == "handling=lenient");
    if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
        && !accept.split(',').any(|a| matches!(a.split(';').next().unwrap_or("").trim(), "application/fhir+json" | "application/json" | "*/*"))
    {
        return Err(ApiError::new(StatusCode::NOT_ACCEPTABLE, "not-supported", "a bulk export kick-off answers application/fhir+json"));
    }
    let mut all: Vec<(String, String)> = pairs.iter().filter(|(k, _)| k != "_format").cloned().collect();
    if let Some(body) = body {
        all.extend(crate::ops::parameter_pairs(body, "a POST kick-off")?);
    }
    let mut k = KickOff::default();
    let faults: Vec<&str> = headers
        .get_all(FAULT_HEADER)
        .iter()
        .map(|v| v.to_str().map_err(|_| ApiError::bad_request(format!("{FAULT_HEADER} is not text"))))
        .collect::<ApiResult<_>>()?;
    k.faults = ExportFaults::parse(&faults.join(",")).map_err(ApiError::bad_request)?;
    for (name, value) in all {
        match name.as_str() {
            "_outputFormat" => {
                if !matches!(value.as_str(), "application/fhir+ndjson" | "application/ndjson" | "ndjson") {
                    return Err(ApiError::bad_request(format!("_outputFormat '{value}' is not supported; use application/fhir+ndjson")));
                }
            }
            "_type" => {
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !fhir::types::is_storable_type(t) {
                        if lenient {
                            continue;
                        }
                        return Err(ApiError::bad_request(format!("_type names '{t}', which is not a resource type served here")));
                    }
                    k.types.get_or_insert_with(Vec::new).push(t.to_string());
                }
            }
            "_since" => {
                if fhir::time::parse_date_range(&value).is_none() || !value.contains('T') {
                    return Err(ApiError::bad_request(format!("_since '{value}' is not an instant (e.g. 2024-01-01T00:00:00Z)")));
                }
                k.since = Some(value);
            }
            "_elements" => {
                for e in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    let (ty, name) = e.split_once('.').map_or((None, e), |(t, n)| (Some(t), n));
                    let is_name = name.as_bytes().first().is_some_and(u8::is_ascii_lowercase) && name.bytes().all(|b| b.is_ascii_alphanumeric());
                    if !is_name || ty.is_some_and(|t| !fhir::types::is_storable_type(t)) {
                        return Err(ApiError::bad_request(format!("_elements '{e}' is not Type.element or element (top-level elements only)")));
                    }
                    k.elements.push(e.to_string());
                }
            }
            "_typeFilter" => k.type_filters.extend(value.split(',').map(str::trim).filter(|f| !f.is_empty()).map(str::to_string)),
            "patient" if body.is_some() && !matches!(level, Level::System) => {
                let id = value.strip_prefix("Patient/").unwrap_or(&value);
                if !fhir::types::is_valid_id(id) {
                    return Err(ApiError::bad_request(format!("patient '{value}' is not a Patient reference")));
                }
                k.patients.push(id.to_string());
            }
            other if lenient => tracing::debug!(parameter = other, "bulk export parameter ignored under handling=lenient"),
            other => {
                return Err(ApiError::bad_request(format!(
                    "the bulk export parameter '{other}' is not supported here (supported: _outputFormat, _type, _since, _typeFilter, and patient in a POST at Patient or Group level); send Prefer: handling=lenient to have it ignored"
                )));
            }
        }
    }
    // Each type, filter and patient is a search: repeated ones count once, and the patients one kick-off
    // names are bounded (a Group's members are not: they are the Group).
    for list in [k.types.as_mut(), Some(&mut k.type_filters), Some(&mut k.patients), Some(&mut k.elements)].into_iter().flatten() {
        let mut seen = std::collections::HashSet::new();
        list.retain(|x| seen.insert(x.clone()));
    }
    if k.patients.len() > MAX_PATIENTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!("{} patients in one kick-off; at most {MAX_PATIENTS} (export a Group instead)", k.patients.len()),
        ));
    }
    Ok(k)
}

/// The most `patient` parameters one kick-off may name.
pub const MAX_PATIENTS: usize = 1000;

/// Runs a kick-off: checks what can be checked at once (a bad filter or Group is a 400 or 404 now), records
/// the job, plans it in the background and answers 202 with the status URL in `Content-Location`.
pub async fn kick_off(state: &AppState, access: &Access, level: Level, params: KickOff, request: String) -> ApiResult<Response> {
    if !state.export_faults && params.faults != ExportFaults::default() {
        return Err(ApiError::bad_request(
            "this server does not inject export faults (kindling up does; kindling serve with --export-faults or KINDLING_EXPORT_FAULTS=true)",
        ));
    }
    let transaction_time = state.now_ms();
    for filter in &params.type_filters {
        let (ty, query) = filter.split_once('?').ok_or_else(|| ApiError::bad_request(format!("_typeFilter '{filter}' is not Type?search")))?;
        if !fhir::types::is_storable_type(ty) {
            return Err(ApiError::bad_request(format!("_typeFilter '{filter}' names no resource type served here")));
        }
        parse_search(state, ty, &crate::search::parse_pairs(query), false)
            .map_err(|e| ApiError::bad_request(format!("_typeFilter for {ty}: {}", e.message)))?;
    }
    let patients = match &level {
        Level::System => None,
        Level::Patients if params.patients.is_empty() => None,
        Level::Patients => Some(params.patients.clone()),
        Level::Group(id) => Some(group_members(state, access, id, &params.patients).await?),
    };
    let owner = access.owner();
    let now = state.now_ms();
    let live = state
        .store
        .auth_list(JOB_KIND)
        .await?
        .into_iter()
        .filter(|(_, r)| r.expires.is_none_or(|e| e > now))
        .filter(|(_, r)| serde_json::from_str::<Owner>(&r.value).is_ok_and(|j| j.owner == owner))
        .count();
    if live >= JOBS_PER_OWNER {
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            format!("{live} exports of this client are still kept (at most {JOBS_PER_OWNER}); cancel one (DELETE its status URL) or wait until one expires"),
        )
        .into_response();
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return Ok(r);
    }
    if params.faults.kickoff_429 {
        // Alternates through a record every node sees: refused when none is live (and one is left), let
        // through when one is (and it goes).
        let key = owner.clone().unwrap_or_default();
        if state.store.auth_insert_new(REFUSED_KIND, &key, "", Some(now + 10 * 60_000)).await? {
            let mut r =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "throttled", "injected fault (kickoff-429): the server is busy; retry after 1 s").into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(r);
        }
        state.store.auth_delete(REFUSED_KIND, &key).await?;
    }
    let job = Job {
        owner: access.owner(),
        request,
        transaction_time,
        ttl_ms: state.export_ttl_ms,
        state: JobState::Planning,
        planning_since: transaction_time,
        params,
        compartment_only: !matches!(level, Level::System),
        patients,
        files: Vec::new(),
        deleted: Vec::new(),
        errors: Vec::new(),
        failure: None,
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    save(state, &id, &job).await?;
    state.store.auth_put(LEASE_KIND, &id, "", None, Some(transaction_time + PLANNING_STALE_MS)).await?;
    audit(state, access, "export", &format!("kick-off: {}", job.request));
    start_planning(state, access, &id);
    let mut r = StatusCode::ACCEPTED.into_response();
    let status_url = format!("{}/$export-status/{id}", state.base_url);
    r.headers_mut().insert(header::CONTENT_LOCATION, HeaderValue::from_str(&status_url).map_err(|_| ApiError::internal())?);
    Ok(r)
}

/// Plans a job off the runtime's worker threads: its searches run for hundreds of milliseconds on a large
/// database, and SQLite queries run inline, so on a worker they would hold up the requests queued behind
/// them (the first status request waited 490–770 ms for the Synthea set).
fn start_planning(state: &AppState, access: &Access, id: &str) {
    let (state, access, id) = (state.clone(), access.clone(), id.to_string());
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || runtime.block_on(plan_and_save(state, access, id)));
}

async fn save(state: &AppState, id: &str, job: &Job) -> ApiResult<()> {
    let value = serde_json::to_string(job).map_err(|_| ApiError::internal())?;
    state.store.auth_put(JOB_KIND, id, &value, None, Some(job.expires())).await?;
    Ok(())
}

/// Plans a job (runs its searches under `access`, freezes the keys) and saves the result; a job cancelled
/// meanwhile stays cancelled.
async fn plan_and_save(state: AppState, access: Access, id: String) {
    let started = std::time::Instant::now();
    let Ok(Some(record)) = state.store.auth_get(JOB_KIND, &id).await else { return };
    let Ok(mut job) = serde_json::from_str::<Job>(&record.value) else { return };
    // The export reflects the data as its searches find it: its transaction time is when they start, so
    // that every version a file serves from history was the one the searches were run against.
    job.transaction_time = state.now_ms();
    let planned = plan(&state, &access, &id, &job).await;
    match state.store.auth_get(JOB_KIND, &id).await {
        Ok(Some(_)) => {}
        _ => return,
    }
    match planned {
        Ok(_) if job.params.faults.fail => {
            job.failure = Some("injected fault (fail): the export failed; start it again".into());
            job.state = JobState::Failed;
        }
        Ok(Planned { mut files, deleted, errors }) => {
            // Each file's keys before the job that names them, so that a complete job always has them.
            for (n, f) in files.iter_mut().enumerate() {
                let keys = serde_json::to_string(&std::mem::take(&mut f.keys)).unwrap_or_default();
                if let Err(e) = state.store.auth_put(KEYS_KIND, &format!("{id}/{n}"), &keys, None, Some(job.expires())).await {
                    tracing::error!(job = %id, error = %e, "could not save the keys of a bulk export file");
                    return;
                }
            }
            job.files = files;
            job.deleted = deleted;
            job.errors = errors;
            job.state = JobState::Complete;
        }
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(job = %id, error = %e.message, "a bulk export could not be planned");
            }
            job.failure = Some(if e.status.is_server_error() { "the server could not run its searches; start the export again".into() } else { e.message });
            job.state = JobState::Failed;
        }
    }
    let exported: usize = job.files.iter().map(|f| f.count).sum();
    if let Err(e) = save(&state, &id, &job).await {
        tracing::error!(job = %id, error = %e.message, "could not save a planned bulk export");
        return;
    }
    // A cancel between the check above and this save is undone by the save: the cancel's mark (left
    // before it deleted the job) says so, and the job goes again.
    if let Ok(Some(_)) = state.store.auth_get(CANCELLED_KIND, &id).await {
        let _ = remove(&state, &id, job.files.len()).await;
        return;
    }
    audit(&state, &access, "export-planned", &format!("job {id}: {exported} resources in {} files", job.files.len()));
    tracing::debug!(job = %id, resources = exported, ms = started.elapsed().as_secs_f64() * 1000.0, "bulk export planned");
}

/// What a job's searches found.
struct Planned {
    files: Vec<File>,
    deleted: Vec<(String, Vec<String>)>,
    errors: Vec<String>,
}

/// The files, the deletions and the error messages of a job: its searches, run under `access`.
async fn plan(state: &AppState, access: &Access, id: &str, job: &Job) -> ApiResult<Planned> {
    let params = &job.params;
    let compartment_only = job.compartment_only;
    let patients = &job.patients;
    let types: Vec<String> = match &params.types {
        Some(t) => t.clone(),
        None => {
            let mut t: Vec<String> = state.store.counts().await?.into_iter().filter(|(_, n)| *n > 0).map(|(t, _)| t).collect();
            if compartment_only {
                t.retain(|t| t == "Patient" || fhir::params::in_patient_compartment(t));
            }
            t.sort();
            t
        }
    };
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let mut deleted = Vec::new();
    let mut slept = 0;
    for (done, ty) in types.iter().enumerate() {
        // A job cancelled or expired meanwhile is not planned further (its planner would otherwise hold a
        // thread for nothing).
        match state.store.auth_get(JOB_KIND, id).await? {
            Some(r) if r.expires.is_none_or(|e| e > state.now_ms()) => {}
            _ => return Err(ApiError::not_found("the export was cancelled or expired while it was planned")),
        }
        let progress = format!("{done} of {} resource types searched", types.len());
        state.store.auth_put(LEASE_KIND, id, &progress, None, Some(state.now_ms() + PLANNING_STALE_MS)).await?;
        if compartment_only && ty != "Patient" && !fhir::params::in_patient_compartment(ty) {
            errors.push(format!("{ty} is outside the patient compartment, so a patient-level export does not hold it"));
            continue;
        }
        // Export hands out content: a type the token may search but not read is not exported.
        if let Err(e) = access.check_any(ty, smart::Interaction::Read) {
            if params.types.is_some() {
                errors.push(format!("{ty} was not exported: {}", e.message));
            }
            continue;
        }
        // Injected slowness, for types actually exported, at most MAX_SLOW_TOTAL_MS for the whole job.
        let wait = job.params.faults.slow_ms.min(MAX_SLOW_TOTAL_MS - slept);
        if wait > 0 {
            slept += wait;
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
        // `_typeFilter`s of this type are alternatives (their results are joined); none means all of it.
        let filters: Vec<&str> = params.type_filters.iter().filter_map(|f| f.strip_prefix(ty.as_str()).and_then(|r| r.strip_prefix('?'))).collect();
        let criteria: Vec<Vec<(String, String)>> =
            if filters.is_empty() { vec![Vec::new()] } else { filters.iter().map(|f| crate::search::parse_pairs(f)).collect() };
        let mut keys: Vec<i64> = Vec::new();
        let mut refused = None;
        for mut pairs in criteria {
            if let Some(since) = &params.since {
                pairs.push(("_lastUpdated".into(), format!("gt{since}")));
            }
            let mut q = parse_search(state, ty, &pairs, false).map_err(|e| ApiError::bad_request(format!("_typeFilter for {ty}: {}", e.message)))?;
            if let Err(e) = access.restrict_search(state, &mut q) {
                refused = Some(e.message);
                break;
            }
            match &patients {
                // Every patient's compartment: every resource of a compartment type.
                None => keys.extend(state.store.search(&q).await?),
                Some(ids) => {
                    for id in ids {
                        let mut per = q.clone();
                        if ty == "Patient" {
                            per.filters.extend(parse_search(state, ty, &[("_id".into(), id.clone())], false)?.filters);
                        } else {
                            per.filters.push(Filter::PatientCompartment(id.clone()));
                        }
                        keys.extend(state.store.search(&per).await?);
                    }
                }
            }
        }
        if let Some(message) = refused {
            // Types the client asked for by name are reported; the rest are simply not exported.
            if params.types.is_some() {
                errors.push(format!("{ty} was not exported: {message}"));
            }
            continue;
        }
        keys.sort_unstable();
        keys.dedup();
        // As a search page would be: where the read rules are not the search's (a Patient compartment
        // holds the records linked to the patient, which a patient-level read refuses; read grants narrower
        // than search grants), every resource is checked for reading, a chunk at a time.
        if !access.search_implies_read(ty) {
            let mut readable = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(CHUNK) {
                let resources = state.store.fetch(chunk).await?;
                readable.extend(access.readable(state, resources).await?.into_iter().map(|r| r.key));
            }
            keys = readable;
        }
        for part in keys.chunks(FILE_RESOURCES) {
            files.push(File { resource_type: ty.clone(), count: part.len(), keys: part.to_vec() });
        }
        // A system-level `_since` export also lists what was deleted since (the criteria of a `_typeFilter`
        // cannot be judged on a deleted resource, nor a compartment, so those exports list none).
        if let Some(since) = &params.since
            && !compartment_only
            && filters.is_empty()
        {
            let ids = deleted_since(state, access, ty, since, job.transaction_time).await?;
            if !ids.is_empty() {
                deleted.push((ty.clone(), ids));
            }
        }
    }
    Ok(Planned { files, deleted, errors })
}

/// The most versions a `_since` export looks through for deletions, per type.
const MAX_DELETION_SCAN: usize = 1_000_000;

/// Ids of the resources of `ty` whose latest version between `since` and `transaction_time` is a deletion,
/// and whose version before it the token may read.
async fn deleted_since(state: &AppState, access: &Access, ty: &str, since: &str, transaction_time: i64) -> ApiResult<Vec<String>> {
    let Some(since) = fhir::time::parse_date_range(since) else { return Ok(Vec::new()) };
    let scope = store::HistoryScope::Type(ty.to_string());
    let mut params = store::HistoryParams { since: Some(since.lo + 1), till: Some(transaction_time), count: CHUNK, offset: 0 };
    // Newest first: the first version seen of each resource is its latest in the window.
    let mut seen = std::collections::HashSet::new();
    let mut ids = Vec::new();
    loop {
        let page = state.store.history(&scope, &params).await?;
        let n = page.entries.len();
        for v in page.entries {
            if !seen.insert(v.id.clone()) || !v.deleted {
                continue;
            }
            let Some(before) = state.store.vread(ty, &v.id, v.version - 1).await? else { continue };
            let readable = access.check_resource(state, smart::Interaction::Read, ty, &v.id, None, crate::policy::Content::Stored(&before.json)).await.is_ok();
            if readable {
                ids.push(v.id);
            }
        }
        params.offset += n;
        if n < CHUNK || params.offset >= MAX_DELETION_SCAN {
            break;
        }
    }
    Ok(ids)
}

/// The patient members of a Group the token may read (inactive members left out), or only `wanted` of them.
async fn group_members(state: &AppState, access: &Access, id: &str, wanted: &[String]) -> ApiResult<Vec<String>> {
    crate::ops::check_id(id)?;
    let group = crate::rest::read_current(state, "Group", id).await?;
    crate::rest::check_stored(state, access, smart::Interaction::Read, &group).await?;
    let v: Value = serde_json::from_str(&group.json).map_err(|_| ApiError::internal())?;
    let mut members: Vec<String> = v
        .get("member")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m.get("inactive").and_then(Value::as_bool) != Some(true))
        .filter_map(|m| m.pointer("/entity/reference").and_then(Value::as_str))
        .filter_map(|r| r.strip_prefix("Patient/").map(str::to_string))
        .collect();
    if !wanted.is_empty() {
        let wanted: std::collections::HashSet<&String> = wanted.iter().collect();
        members.retain(|m| wanted.contains(m));
    }
    Ok(members)
}

/// Loads a job the client may see: an unknown, expired or someone else's job is 404 alike.
async fn load_job(state: &AppState, access: &Access, id: &str) -> ApiResult<Job> {
    let gone = || ApiError::not_found("there is no such export job: it expired, was cancelled, or never existed");
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(gone());
    }
    let record = state.store.auth_get(JOB_KIND, id).await?.ok_or_else(gone)?;
    if record.expires.is_some_and(|e| e <= state.now_ms()) {
        return Err(gone());
    }
    let job: Job = serde_json::from_str(&record.value).map_err(|_| ApiError::internal())?;
    if job.owner != access.owner() {
        return Err(gone());
    }
    Ok(job)
}

/// A job not yet planned: 202 with progress, after taking over a planning left by a node that stopped.
async fn in_progress(state: &AppState, access: &Access, id: &str, job: Job) -> ApiResult<Response> {
    let now = state.now_ms();
    // The planner renews its lease as it goes; one that lapsed belongs to a node that stopped. Of the
    // status requests that find it lapsed (on any node), the one that takes the lease plans again.
    if now - job.planning_since > PLANNING_STALE_MS && state.store.auth_insert_new(LEASE_KIND, id, "", Some(now + PLANNING_STALE_MS)).await? {
        tracing::info!(job = %id, "a bulk export left planning by a stopped node is planned again");
        start_planning(state, access, id);
    }
    // The planner's lease holds its progress.
    let progress = state.store.auth_get(LEASE_KIND, id).await?.map(|l| l.value).filter(|v| !v.is_empty());
    let progress = progress.unwrap_or_else(|| "finding the resources to export".into());
    let mut r = StatusCode::ACCEPTED.into_response();
    r.headers_mut().insert("x-progress", HeaderValue::from_str(&progress).map_err(|_| ApiError::internal())?);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    Ok(r)
}

/// `GET [base]/$export-status/[id]`: 202 with `X-Progress` while planning, the manifest once complete.
pub async fn status(state: &AppState, access: &Access, id: &str) -> ApiResult<Response> {
    let job = load_job(state, access, id).await?;
    match job.state {
        JobState::Planning => return in_progress(state, access, id, job).await,
        JobState::Failed => {
            let message = job.failure.unwrap_or_default();
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "exception", format!("the export failed: {message}")));
        }
        JobState::Complete => {}
    }
    let file_url = |name: String| format!("{}/$export-file/{id}/{name}", state.base_url);
    let output: Vec<Value> =
        job.files.iter().enumerate().map(|(n, f)| json!({"type": f.resource_type, "url": file_url(format!("{n}.ndjson")), "count": f.count})).collect();
    let error: Vec<Value> = if job.errors.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "OperationOutcome", "url": file_url("errors.ndjson".into()), "count": job.errors.len()})]
    };
    let deleted: Vec<Value> = job
        .deleted
        .iter()
        .enumerate()
        .map(|(n, (_, ids))| json!({"type": "Bundle", "url": file_url(format!("deleted-{n}.ndjson")), "count": ids.len().div_ceil(CHUNK)}))
        .collect();
    let mut manifest = json!({
        "transactionTime": format_instant(from_unix_ms(job.transaction_time)),
        "request": job.request,
        "requiresAccessToken": !matches!(access, Access::Open),
        "output": output,
        "error": error,
    });
    if job.params.since.is_some() {
        manifest["deleted"] = Value::Array(deleted);
    }
    let mut r = (StatusCode::OK, axum::Json(manifest)).into_response();
    let expires = from_unix_ms(job.expires());
    if let Ok(v) = HeaderValue::from_str(&format_http_date(expires)) {
        r.headers_mut().insert(header::EXPIRES, v);
    }
    Ok(r)
}

/// `DELETE [base]/$export-status/[id]`: cancels the job and removes its files.
pub async fn cancel(state: &AppState, access: &Access, id: &str) -> ApiResult<Response> {
    let job = load_job(state, access, id).await?;
    // Marked first, so that a planner saving its result meanwhile sees the cancel and removes the job.
    state.store.auth_put(CANCELLED_KIND, id, "", None, Some(job.expires())).await?;
    remove(state, id, job.files.len()).await?;
    audit(state, access, "export-cancel", &format!("job {id} cancelled"));
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Deletes a job and the keys of its files.
async fn remove(state: &AppState, id: &str, files: usize) -> ApiResult<()> {
    state.store.auth_delete(JOB_KIND, id).await?;
    for n in 0..files {
        state.store.auth_delete(KEYS_KIND, &format!("{id}/{n}")).await?;
    }
    Ok(())
}

/// `GET [base]/$export-file/[id]/[n].ndjson` (or `errors.ndjson`): one file, streamed.
pub async fn file(state: &AppState, access: &Access, id: &str, name: &str) -> ApiResult<Response> {
    let mut job = load_job(state, access, id).await?;
    if job.state != JobState::Complete {
        return Err(ApiError::not_found("this export has no files yet: ask its status URL until it is complete"));
    }
    let ndjson = |body: Body| {
        let mut r = Response::new(body);
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+ndjson"));
        r
    };
    if name == "errors.ndjson" {
        let lines: String = job.errors.iter().map(|e| format!("{}\n", fhir::outcome::outcome(fhir::Severity::Error, "forbidden", e))).collect();
        return Ok(ndjson(Body::from(lines)));
    }
    if let Some(n) = name.strip_prefix("deleted-").and_then(|n| n.strip_suffix(".ndjson")).and_then(|n| n.parse::<usize>().ok()) {
        let (ty, ids) = job.deleted.get(n).ok_or_else(|| ApiError::not_found("this export has no such file"))?;
        access.check_any(ty, smart::Interaction::Read)?;
        audit(state, access, "export-download", &format!("job {id} deleted file {n}: {} {ty} deletions", ids.len()));
        // Transaction Bundles of DELETE requests, up to 1,000 entries each (Bulk Data 2.0 `deleted`).
        let lines: String = ids
            .chunks(CHUNK)
            .map(|chunk| {
                let entry: Vec<Value> = chunk.iter().map(|i| json!({"request": {"method": "DELETE", "url": format!("{ty}/{i}")}})).collect();
                format!("{}\n", json!({"resourceType": "Bundle", "type": "transaction", "entry": entry}))
            })
            .collect();
        return Ok(ndjson(Body::from(lines)));
    }
    let n: usize = name
        .strip_suffix(".ndjson")
        .and_then(|n| n.parse().ok())
        .filter(|n| *n < job.files.len())
        .ok_or_else(|| ApiError::not_found("this export has no such file"))?;
    if job.params.faults.file_404_once && state.store.auth_insert_new(MISSED_KIND, &format!("{id}/{n}"), "", Some(job.expires())).await? {
        let mut r = ApiError::not_found("injected fault (file-404-once): this file is not there yet; ask again").into_response();
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(r);
    }
    let mut file = job.files.swap_remove(n);
    // The keys were chosen under the kick-off's token; the one downloading must still read the type (a
    // client whose grants shrank since does not get through an old job what it no longer may read).
    access.check_any(&file.resource_type, smart::Interaction::Read)?;
    if file.keys.is_empty() && file.count > 0 {
        let gone = || ApiError::not_found("this export file is gone: the export expired or was cancelled");
        let record = state.store.auth_get(KEYS_KIND, &format!("{id}/{n}")).await?.ok_or_else(gone)?;
        file.keys = serde_json::from_str(&record.value).map_err(|_| ApiError::internal())?;
    }
    audit(state, access, "export-download", &format!("job {id} file {n}: {} {} resources", file.keys.len(), file.resource_type));
    // `_elements` that apply to this type: its own (`Type.element`) and those without a type.
    let elements: std::sync::Arc<Vec<String>> = std::sync::Arc::new(
        job.params
            .elements
            .iter()
            .filter_map(|e| match e.split_once('.') {
                Some((ty, name)) => (ty == file.resource_type).then(|| name.to_string()),
                None => Some(e.clone()),
            })
            .collect(),
    );
    // Fused: a compressing layer may poll once more after the end.
    let stream = futures_util::StreamExt::fuse(futures_util::stream::unfold(
        (state.clone(), access.clone(), file.keys, 0usize, job.transaction_time, elements),
        |(state, access, keys, at, tt, elements)| async move {
            if at >= keys.len() {
                return None;
            }
            let end = (at + CHUNK).min(keys.len());
            let chunk = render_chunk(&state, &access, &keys[at..end], tt, &elements).await;
            Some((chunk, (state, access, keys, end, tt, elements)))
        },
    ));
    Ok(ndjson(Body::from_stream(stream)))
}

/// NDJSON lines of these resources as they were at `transaction_time`, with only `elements` (and the
/// mandatory ones) when some are named; resources deleted since are left out.
async fn render_chunk(state: &AppState, access: &Access, keys: &[i64], transaction_time: i64, elements: &[String]) -> Result<String, std::io::Error> {
    let failed = |e: store::StoreError| {
        tracing::error!(error = %e, "bulk export file: the database failed while streaming");
        std::io::Error::other("the database failed while the file was streamed")
    };
    let resources = state.store.fetch(keys).await.map_err(failed)?;
    // The keys were chosen under the kick-off's token: what the one downloading may read now is judged
    // here, resource by resource (a narrower grant, a category scope, a patient moved out of reach).
    let (unchanged, changed): (Vec<_>, Vec<_>) = resources.into_iter().partition(|r| r.last_updated <= transaction_time);
    let unchanged = access.readable(state, unchanged).await.map_err(|e| {
        tracing::error!(status = %e.status, "bulk export file: the resources could not be judged while streaming");
        std::io::Error::other("the resources could not be judged while the file was streamed")
    })?;
    let mut out = String::with_capacity((unchanged.len() + changed.len()) * 1024);
    let push = |out: &mut String, json: &str| {
        let shaped = if elements.is_empty() { None } else { serde_json::from_str::<Value>(json).ok() };
        match shaped {
            Some(v) => out.push_str(&fhir::shape::apply_elements(&v, elements).to_string()),
            None => out.push_str(json),
        }
        out.push('\n');
    };
    for r in &unchanged {
        push(&mut out, &r.json);
    }
    for r in changed {
        // Changed after the export began: the version current at its transactionTime.
        let mut version = r.version - 1;
        while version >= 1 {
            match state.store.vread(&r.resource_type, &r.id, version).await.map_err(failed)? {
                Some(old) if old.last_updated <= transaction_time => {
                    // An older version is judged on its own content (it may have been another patient's,
                    // or outside a granted category, then).
                    let allowed = access
                        .check_resource(state, smart::Interaction::Read, &old.resource_type, &old.id, None, crate::policy::Content::Stored(&old.json))
                        .await
                        .is_ok();
                    if !old.deleted && allowed {
                        push(&mut out, &old.json);
                    }
                    break;
                }
                _ => version -= 1,
            }
        }
    }
    Ok(out)
}

fn audit(state: &AppState, access: &Access, action: &str, detail: &str) {
    let Some(sink) = &state.audit else { return };
    let token = match access {
        Access::Token(t) => Some(t),
        Access::Open => None,
    };
    sink.record(store::audit::AuditRecord {
        recorded: state.now_ms(),
        category: "export".into(),
        action: action.into(),
        outcome: "0".into(),
        client_id: token.map(|t| t.client_id.clone()),
        username: token.and_then(|t| t.fhir_user.clone()),
        patient: None,
        launch: None,
        entity: None,
        detail: Some(detail.to_string()),
    });
}
