//! The FHIR RESTful interactions as axum handlers.

use crate::AppState;
use crate::access::Access;
use crate::bundle_out::{Body, Bundle, Entry, EntryResponse, Link, SearchInfo};
use crate::error::{ApiError, ApiResult};
use crate::ops::{self, Outcome, check_id, check_type, parse_if_match};
use crate::policy::Content;
use crate::response::{Negotiated, PreferReturn, json_response, raw_json_response, resource_body, resource_headers};
use crate::search::{self, encode_pairs, parse_pairs, parse_search};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhir::time::{format_instant, from_unix_ms, parse_date_range};
use serde_json::Value;
use smart::Interaction;
use store::{HistoryParams, HistoryScope, Precondition, StoredResource};

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A header that makes a write conditional (`If-Match`, `If-None-Exist`; `name` in lower case), as text.
/// One that is there but cannot be read is refused rather than taken as absent: the write would otherwise
/// go through unconditionally.
fn condition_header<'a>(headers: &'a HeaderMap, name: &str, shown: &str) -> ApiResult<Option<&'a str>> {
    headers.get(name).map(|v| v.to_str().map_err(|_| ApiError::bad_request(format!("the {shown} header is not readable text")))).transpose()
}

/// The version an `If-Match` header asks for.
fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    condition_header(headers, "if-match", "If-Match")?.map(parse_if_match).transpose()
}

/// Parses a JSON request body after checking its content type.
pub fn json_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<Value> {
    if let Some(ct) = header_str(headers, header::CONTENT_TYPE.as_str()) {
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !matches!(mime, "application/fhir+json" | "application/json" | "application/json+fhir" | "text/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-supported",
                format!("Content-Type '{mime}' is not supported; send application/fhir+json"),
            ));
        }
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty; send a FHIR resource as JSON"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// Turns a write outcome into a response honouring `Prefer: return=`.
fn write_response(state: &AppState, neg: Negotiated, outcome: Outcome) -> Response {
    let mut response = match (&outcome.resource, neg.prefer_return) {
        (Some(r), PreferReturn::Representation) if !r.deleted => raw_json_response(outcome.status, resource_body(r, neg.pretty), neg.content_type),
        (_, PreferReturn::Minimal) => outcome.status.into_response(),
        _ => json_response(outcome.status, &fhir::outcome(fhir::Severity::Information, "informational", &outcome.message), neg.pretty, neg.content_type),
    };
    if let Some(r) = outcome.resource.as_ref().filter(|r| !r.deleted) {
        resource_headers(response.headers_mut(), &state.base_url, r, outcome.location);
    }
    response
}

fn resource_response(state: &AppState, neg: Negotiated, r: &StoredResource) -> Response {
    let mut response = raw_json_response(StatusCode::OK, resource_body(r, neg.pretty), neg.content_type);
    resource_headers(response.headers_mut(), &state.base_url, r, false);
    response
}

pub(crate) fn bundle_response(neg: Negotiated, b: &Bundle) -> Response {
    json_response(StatusCode::OK, b, neg.pretty, neg.content_type)
}

// ---- whole system --------------------------------------------------------------------------------------

/// `GET [base]`: only the `_getpages` links of a paged search.
pub async fn system_get(State(state): State<AppState>, Extension(access): Extension<Access>, neg: Negotiated, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let pairs = parse_pairs(q.as_deref().unwrap_or(""));
    if pairs.iter().any(|(k, _)| k == "_getpages") {
        let b = search::snapshot_page(&state, &access, &pairs).await?;
        return Ok(bundle_response(neg, &b));
    }
    Err(ApiError::bad_request("searching across all resource types is not supported; search one type, e.g. GET [base]/Patient?name=smith"))
}

/// `GET [base]/_history`.
pub async fn system_history(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    neg: Negotiated,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    access.check_history(None)?;
    history(&state, &access, neg, HistoryScope::System, q.as_deref().unwrap_or(""), format!("{}/_history", state.base_url)).await
}

// ---- type level ----------------------------------------------------------------------------------------

/// `GET [base]/[type]?…`: a search.
pub async fn type_search(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(ty): Path<String>,
    neg: Negotiated,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    check_type(&ty)?;
    let pairs = parse_pairs(q.as_deref().unwrap_or(""));
    run_search(&state, &access, neg, &ty, pairs, None).await
}

/// `POST [base]/[type]/_search`: a search with its parameters in the body.
pub async fn type_search_post(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(ty): Path<String>,
    neg: Negotiated,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    check_type(&ty)?;
    if let Some(ct) = header_str(&headers, header::CONTENT_TYPE.as_str())
        && !ct.starts_with("application/x-www-form-urlencoded")
    {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "not-supported", "POST _search takes application/x-www-form-urlencoded parameters"));
    }
    let mut pairs = parse_pairs(q.as_deref().unwrap_or(""));
    pairs.extend(url::form_urlencoded::parse(&body).into_owned());
    run_search(&state, &access, neg, &ty, pairs, None).await
}

/// Runs a search of `ty`; `compartment` restricts it to one patient's compartment.
async fn run_search(
    state: &AppState,
    access: &Access,
    neg: Negotiated,
    ty: &str,
    pairs: Vec<(String, String)>,
    compartment: Option<&str>,
) -> ApiResult<Response> {
    let mut q = parse_search(state, ty, &pairs, neg.lenient)?;
    access.restrict_search(state, &mut q)?;
    let path = match compartment {
        Some(p) => {
            if !fhir::params::in_patient_compartment(ty) {
                return Err(ApiError::bad_request(format!("{ty} is not part of the Patient compartment")));
            }
            q.filters.push(fhir::query::Filter::PatientCompartment(p.to_string()));
            format!("{}/Patient/{p}/{ty}", state.base_url)
        }
        None => format!("{}/{ty}", state.base_url),
    };
    // Later pages take their keys from the frozen snapshot (so the compartment filter stays applied) and
    // re-read only the result parameters (_include, _elements, ...) from this query string.
    let query_string = encode_pairs(&pairs);
    let self_url = if query_string.is_empty() { path } else { format!("{path}?{query_string}") };
    let b = search::search_bundle(state, access, &q, self_url, query_string).await?;
    Ok(bundle_response(neg, &b))
}

/// `GET|POST [base]/DocumentReference/$docref` (US Core "Fetch DocumentReference"): a patient's documents
/// whose care period overlaps `start`..`end`, of the given `type`s, newest first, as a searchset under the
/// token's search rules. Without `start` and `end`, the patient's most recent document of the `type`s
/// (by default a Summary of Episode Note, LOINC 34133-9, as US Core asks). Documents are never generated:
/// `on-demand` is accepted and has no effect.
pub async fn docref(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    neg: Negotiated,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let mut given = parse_pairs(q.as_deref().unwrap_or(""));
    if !body.is_empty() {
        let v: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("$docref takes a Parameters resource: {e}")))?;
        given.extend(ops::parameter_pairs(&v, "$docref")?);
    }
    let (mut patient, mut start, mut end, mut types) = (None, None, None, Vec::new());
    for (name, value) in given {
        match name.as_str() {
            "patient" => patient = Some(value.trim_start_matches("Patient/").to_string()),
            "start" => start = Some(value),
            "end" => end = Some(value),
            "type" => types.push(value),
            "on-demand" | "profile" | "_format" | "_pretty" => {}
            other => {
                return Err(ApiError::bad_request(format!("$docref does not take the parameter '{other}' (patient, start, end, type, on-demand, profile)")));
            }
        }
    }
    let patient = patient.ok_or_else(|| ApiError::bad_request("$docref needs the patient parameter"))?;
    check_id(&patient)?;
    let mut pairs = vec![("patient".to_string(), patient), ("_sort".to_string(), "-date".to_string())];
    if start.is_none() && end.is_none() {
        if types.is_empty() {
            types.push("http://loinc.org|34133-9".into());
        }
        pairs.push(("_count".into(), "1".into()));
    }
    if let Some(start) = start {
        pairs.push(("period".into(), format!("ge{start}")));
    }
    if let Some(end) = end {
        pairs.push(("period".into(), format!("le{end}")));
    }
    if !types.is_empty() {
        pairs.push(("type".into(), types.join(",")));
    }
    run_search(&state, &access, neg, "DocumentReference", pairs, None).await
}

/// `POST [base]/[type]`: create (conditional with `If-None-Exist`).
pub async fn type_create(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(ty): Path<String>,
    neg: Negotiated,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    check_type(&ty)?;
    let value = json_body(&headers, &body)?;
    access.check_resource(&state, Interaction::Create, &ty, "", None, Content::Parsed(&value)).await?;
    // If-None-Exist is a search: it runs only within what the token may search (a patient token's
    // criteria see its own patient's records only), so that its answer says nothing about the rest.
    let condition = match condition_header(&headers, "if-none-exist", "If-None-Exist")? {
        Some(criteria) => {
            let criteria = criteria.trim_start_matches('?');
            let mut q = ops::conditional_query(&state, &ty, criteria)?;
            access
                .restrict_search(&state, &mut q)
                .map_err(|_| ApiError::new(StatusCode::FORBIDDEN, "forbidden", format!("a conditional create needs a scope that allows searching {ty}")))?;
            Some((q, ops::criteria_key(&ty, criteria)))
        }
        None => None,
    };
    let mut tx = state.store.begin().await?;
    let outcome = ops::create_if_none(&state, &mut *tx, &ty, value, condition.as_ref().map(|(q, k)| (q, k.as_str())), None).await?;
    tx.commit().await?;
    if let Some(existing) = outcome.resource.as_ref().filter(|_| outcome.status == StatusCode::OK) {
        // If-None-Exist matched: what comes back must be readable with this token.
        check_stored(&state, &access, Interaction::Read, existing).await?;
    }
    Ok(write_response(&state, neg, outcome))
}

/// `PUT [base]/[type]?…`: conditional update.
pub async fn type_conditional_update(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(ty): Path<String>,
    neg: Negotiated,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    check_type(&ty)?;
    let criteria = q.unwrap_or_default();
    let value = json_body(&headers, &body)?;
    access.check_type_wide(&ty, Interaction::Update)?;
    // The criteria are a search, whose answer (none, one, or a 412 saying how many) the response tells:
    // it takes the right to search the type, as a conditional entry of a Bundle does.
    access.check_type_wide(&ty, Interaction::Search)?;
    let mut tx = state.store.begin().await?;
    let outcome = ops::conditional_update(&state, &mut *tx, &ty, &criteria, value).await?;
    tx.commit().await?;
    Ok(write_response(&state, neg, outcome))
}

/// `DELETE [base]/[type]?…`: conditional delete.
pub async fn type_conditional_delete(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(ty): Path<String>,
    neg: Negotiated,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    check_type(&ty)?;
    access.check_type_wide(&ty, Interaction::Delete)?;
    access.check_type_wide(&ty, Interaction::Search)?;
    let criteria = q.unwrap_or_default();
    let mut tx = state.store.begin().await?;
    let outcome = ops::conditional_delete(&state, &mut *tx, &ty, &criteria).await?;
    tx.commit().await?;
    Ok(write_response(&state, Negotiated { prefer_return: PreferReturn::OperationOutcome, ..neg }, outcome))
}

/// `GET [base]/[type]/_history`.
pub async fn type_history(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path(ty): Path<String>,
    neg: Negotiated,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    check_type(&ty)?;
    access.check_history(Some(&ty))?;
    let url = format!("{}/{ty}/_history", state.base_url);
    history(&state, &access, neg, HistoryScope::Type(ty), q.as_deref().unwrap_or(""), url).await
}

// ---- instance level ------------------------------------------------------------------------------------

/// Reads the current version: 404 when it never existed, 410 when deleted.
pub async fn read_current(state: &AppState, ty: &str, id: &str) -> ApiResult<StoredResource> {
    check_type(ty)?;
    check_id(id)?;
    match state.store.read(ty, id).await? {
        None => Err(ApiError::not_found(format!("{ty}/{id} is not known"))),
        Some(r) if r.deleted => Err(ApiError::gone(format!("{ty}/{id} was deleted"))),
        Some(r) => Ok(r),
    }
}

/// `GET [base]/[type]/[id]`: read (and the raw bytes of a Binary when asked for).
pub async fn instance_read(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((ty, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    // A Binary may be read as its own bytes (`Accept: application/pdf`); everything else is FHIR JSON.
    let query = query.unwrap_or_default();
    let raw = if ty == "Binary" { crate::response::raw_binary_accept(&query, &headers) } else { None };
    let neg = if raw.is_some() { None } else { Some(crate::response::negotiate(&query, &headers)?) };
    access.check_patient_id(&ty, &id, Interaction::Read)?;
    let r = read_current(&state, &ty, &id).await?;
    check_stored(&state, &access, Interaction::Read, &r).await?;
    // One URL, two forms of a Binary: caches must key on Accept.
    let vary = |resp: &mut Response| {
        if ty == "Binary" {
            resp.headers_mut().insert(header::VARY, header::HeaderValue::from_static("Accept"));
        }
    };
    if header_str(&headers, "if-none-match").is_some_and(|v| v.trim() == r.etag() || v.trim() == format!("\"{}\"", r.version)) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resource_headers(resp.headers_mut(), &state.base_url, &r, false);
        vary(&mut resp);
        return Ok(resp);
    }
    if let Some(wanted) = raw
        && let Some(resp) = crate::response::binary_response(&r, &wanted)?
    {
        return Ok(resp);
    }
    let mut resp = resource_response(&state, neg.unwrap_or_else(Negotiated::fhir_json), &r);
    vary(&mut resp);
    Ok(resp)
}

/// `GET [base]/[type]/[id]/_history/[vid]`: vread.
pub async fn instance_vread(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((ty, id, vid)): Path<(String, String, String)>,
    neg: Negotiated,
) -> ApiResult<Response> {
    check_type(&ty)?;
    check_id(&id)?;
    let version: i64 = vid.parse().map_err(|_| ApiError::bad_request(format!("'{vid}' is not a version id")))?;
    access.check_patient_id(&ty, &id, Interaction::Read)?;
    match state.store.vread(&ty, &id, version).await? {
        None => Err(ApiError::not_found(format!("{ty}/{id} has no version {version}"))),
        Some(r) if r.deleted => Err(ApiError::gone(format!("version {version} of {ty}/{id} is a deletion"))),
        Some(r) => {
            check_version(&state, &access, &r).await?;
            Ok(resource_response(&state, neg, &r))
        }
    }
}

/// `PUT [base]/[type]/[id]`: update (or create with a client id).
pub async fn instance_update(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((ty, id)): Path<(String, String)>,
    neg: Negotiated,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    check_type(&ty)?;
    let value = json_body(&headers, &body)?;
    let if_match = if_match(&headers)?;
    if matches!(access, Access::Open) {
        let mut tx = state.store.begin().await?;
        let outcome = ops::update(&state, &mut *tx, &ty, &id, value, if_match).await?;
        tx.commit().await?;
        return Ok(write_response(&state, neg, outcome));
    }
    // Neither the new content nor the resource it replaces may lie outside what the token grants.
    access.check_resource(&state, Interaction::Update, &ty, &id, None, Content::Parsed(&value)).await?;
    for _ in 0..PINNED_TRIES {
        // The write is pinned to what was judged: a resource reassigned to another patient (or created)
        // between the check and the write is judged again, never overwritten unseen.
        let judged = judge_replaced(&state, &access, &ty, &id, state.store.read(&ty, &id).await?).await?;
        let precondition = pinned(if_match, judged)?;
        let mut tx = state.store.begin().await?;
        match ops::update_with(&state, &mut *tx, &ty, &id, value.clone(), precondition).await {
            Err(e) if if_match.is_none() && e.status == StatusCode::PRECONDITION_FAILED => continue,
            result => {
                let outcome = result?;
                tx.commit().await?;
                return Ok(write_response(&state, neg, outcome));
            }
        }
    }
    Err(ApiError::contention(format!("{ty}/{id} kept changing while it was updated")))
}

/// How many times a PUT or DELETE judges the resource again when it changed between the check and the
/// write.
const PINNED_TRIES: usize = 3;

/// Judges a PUT's replacement of `current` (the resource as read) under the token, and answers what the
/// judgement saw: its version, or its absence. Replacing a deleted resource continues its history, so its
/// last live version is judged.
pub(crate) async fn judge_replaced(state: &AppState, access: &Access, ty: &str, id: &str, current: Option<StoredResource>) -> ApiResult<Precondition> {
    match current {
        Some(current) if current.deleted => {
            match state.store.vread(ty, id, current.version - 1).await? {
                Some(last) => check_version_for(state, access, Interaction::Update, &last).await?,
                None => access.check_type_wide(ty, Interaction::Update)?,
            }
            Ok(Precondition::Absent)
        }
        Some(current) => {
            check_stored(state, access, Interaction::Update, &current).await?;
            Ok(Precondition::Version(current.version))
        }
        None => Ok(Precondition::Absent),
    }
}

/// Judges a DELETE of `current` (as read) under the token, and answers what the judgement saw.
pub(crate) async fn judge_deleted(state: &AppState, access: &Access, ty: &str, current: Option<StoredResource>) -> ApiResult<Precondition> {
    match current.filter(|r| !r.deleted) {
        Some(existing) => {
            check_stored(state, access, Interaction::Delete, &existing).await?;
            Ok(Precondition::Version(existing.version))
        }
        None => {
            access.check_type_wide(ty, Interaction::Delete).or_else(|_| access.check_any(ty, Interaction::Delete))?;
            Ok(Precondition::Absent)
        }
    }
}

/// The precondition of a write judged on `judged` (the version the token's rules were checked on, or the
/// resource's absence): the client's `If-Match` must name that same version.
pub(crate) fn pinned(if_match: Option<i64>, judged: Precondition) -> ApiResult<Precondition> {
    match (if_match, judged) {
        (Some(v), Precondition::Version(seen)) if v == seen => Ok(judged),
        (Some(v), _) => Err(store::StoreError::Conflict(format!("expected version {v}, but it is not the current version")).into()),
        (None, _) => Ok(judged),
    }
}

/// `PATCH [type]/[id]` with a JSON Patch (`application/json-patch+json`): applied to the current version
/// and written as an update would be (validation, `If-Match`, the token's rules on the resource before and
/// after). Without `If-Match` a concurrent write between the read and the write makes it start again (up
/// to three times), so no update is lost.
pub async fn instance_patch(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((ty, id)): Path<(String, String)>,
    neg: Negotiated,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    check_type(&ty)?;
    check_id(&id)?;
    let content_type = header_str(&headers, "content-type").unwrap_or("");
    if content_type.split(';').next().unwrap_or("").trim() != "application/json-patch+json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "PATCH takes a JSON Patch with Content-Type: application/json-patch+json (FHIRPath Patch is not supported)",
        ));
    }
    let patch: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the JSON Patch is not JSON: {e}")))?;
    if !matches!(access, Access::Open) {
        access.check_any(&ty, Interaction::Update)?;
        access.check_patient_id(&ty, &id, Interaction::Update)?;
    }
    let if_match = if_match(&headers)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tx = state.store.begin().await?;
        match patch_in(&state, &access, &mut *tx, &ty, &id, &patch, if_match).await {
            Ok(outcome) => {
                tx.commit().await?;
                return Ok(write_response(&state, neg, outcome));
            }
            // Written by someone else since it was read: patch the newer version.
            Err(e) if e.status == StatusCode::PRECONDITION_FAILED && if_match.is_none() && attempt < 3 => continue,
            Err(e) if e.status == StatusCode::PRECONDITION_FAILED && if_match.is_none() => {
                return Err(ApiError::contention(format!("{ty}/{id} kept changing while it was patched; try again")));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Applies a JSON Patch to the current version of `ty/id` (read in `tx`) and writes the result as an update
/// at that version (a `412` when another write came in between), judged under `access` as an update of the
/// resource before and after.
pub async fn patch_in(
    state: &AppState,
    access: &Access,
    tx: &mut dyn store::Transaction,
    ty: &str,
    id: &str,
    patch: &Value,
    if_match: Option<i64>,
) -> ApiResult<Outcome> {
    let current = match tx.read(ty, id).await? {
        None => return Err(ApiError::not_found(format!("{ty}/{id} is not known"))),
        Some(r) if r.deleted => return Err(ApiError::gone(format!("{ty}/{id} was deleted"))),
        Some(r) => r,
    };
    if !matches!(access, Access::Open) {
        check_stored(state, access, Interaction::Update, &current).await?;
    }
    if let Some(v) = if_match
        && v != current.version
    {
        return Err(ApiError::precondition_failed(format!("{ty}/{id} is at version {}, not {v}", current.version)));
    }
    let before: Value = serde_json::from_str(&current.json).map_err(|_| ApiError::internal())?;
    let after = fhir::patch::apply(&before, patch).map_err(|e| match e {
        fhir::patch::PatchError::Malformed(m) => ApiError::bad_request(format!("the JSON Patch is malformed: {m}")),
        fhir::patch::PatchError::Unprocessable(m) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "processing", format!("the JSON Patch cannot be applied: {m}"))
        }
    })?;
    if after.get("resourceType") != before.get("resourceType") || after.get("id") != before.get("id") {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "processing", "a patch may not change the resource's type or id"));
    }
    if !matches!(access, Access::Open) {
        access.check_resource(state, Interaction::Update, ty, id, None, Content::Parsed(&after)).await?;
    }
    ops::update(state, tx, ty, id, after, Some(current.version)).await
}

/// `DELETE [base]/[type]/[id]`.
pub async fn instance_delete(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((ty, id)): Path<(String, String)>,
    neg: Negotiated,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_type(&ty)?;
    access.check_patient_id(&ty, &id, Interaction::Delete)?;
    let if_match = if_match(&headers)?;
    let neg = if neg.prefer_return == PreferReturn::Representation { Negotiated { prefer_return: PreferReturn::OperationOutcome, ..neg } } else { neg };
    if matches!(access, Access::Open) {
        let mut tx = state.store.begin().await?;
        let outcome = ops::delete(&mut *tx, &ty, &id, if_match).await?;
        tx.commit().await?;
        return Ok(write_response(&state, neg, outcome));
    }
    for _ in 0..PINNED_TRIES {
        // Pinned to what was judged, as a PUT is.
        let judged = judge_deleted(&state, &access, &ty, state.store.read(&ty, &id).await?).await?;
        let precondition = pinned(if_match, judged)?;
        let mut tx = state.store.begin().await?;
        match ops::delete_with(&mut *tx, &ty, &id, precondition).await {
            Err(e) if if_match.is_none() && e.status == StatusCode::PRECONDITION_FAILED => continue,
            result => {
                let outcome = result?;
                tx.commit().await?;
                return Ok(write_response(&state, neg, outcome));
            }
        }
    }
    Err(ApiError::contention(format!("{ty}/{id} kept changing while it was deleted")))
}

/// `GET [base]/[type]/[id]/_history`.
pub async fn instance_history(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((ty, id)): Path<(String, String)>,
    neg: Negotiated,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    check_type(&ty)?;
    check_id(&id)?;
    access.check_patient_id(&ty, &id, Interaction::Read)?;
    let Some(current) = state.store.read(&ty, &id).await? else {
        return Err(ApiError::not_found(format!("{ty}/{id} is not known")));
    };
    if !matches!(access, Access::Open) {
        // A deleted resource's compartment is judged by its last live version.
        if current.deleted {
            match state.store.vread(&ty, &id, current.version - 1).await? {
                Some(last) => check_version(&state, &access, &last).await?,
                None => access.check_history(Some(&ty))?,
            }
        } else {
            check_stored(&state, &access, Interaction::Read, &current).await?;
        }
    }
    let url = format!("{}/{ty}/{id}/_history", state.base_url);
    history(&state, &access, neg, HistoryScope::Instance(ty, id), q.as_deref().unwrap_or(""), url).await
}

/// `GET Patient/{id}/$everything` and compartment searches `GET Patient/{id}/{Type}`.
pub async fn instance_sub(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((ty, id, sub)): Path<(String, String, String)>,
    neg: Negotiated,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    check_type(&ty)?;
    check_id(&id)?;
    let pairs = parse_pairs(q.as_deref().unwrap_or(""));
    if ty != "Patient" {
        return Err(ApiError::not_found(format!("{ty}/{id}/{sub} is not an operation or compartment served here")));
    }
    // A patient-level token asking about another patient is refused before the patient is looked up.
    let searched = if sub == "$everything" { "Patient" } else { sub.as_str() };
    if let Some(own) = access.patient_only(searched)
        && own != Some(id.as_str())
    {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "patient-level scopes reach only the patient in context"));
    }
    let patient = read_current(&state, &ty, &id).await?;
    if sub == "$everything" {
        check_stored(&state, &access, Interaction::Read, &patient).await?;
        let b = crate::everything::everything(&state, &access, &id, &pairs).await?;
        return Ok(bundle_response(neg, &b));
    }
    check_type(&sub)?;
    run_search(&state, &access, neg, &sub, pairs, Some(&id)).await
}

// ---- history -------------------------------------------------------------------------------------------

async fn history(state: &AppState, access: &Access, neg: Negotiated, scope: HistoryScope, query: &str, url: String) -> ApiResult<Response> {
    let pairs = parse_pairs(query);
    let mut p = HistoryParams { count: fhir::query::DEFAULT_COUNT, ..Default::default() };
    for (k, v) in &pairs {
        match k.as_str() {
            "_count" => p.count = v.parse::<usize>().map_err(|_| ApiError::bad_request("_count must be a number"))?.min(fhir::query::MAX_COUNT),
            "_since" => p.since = Some(parse_date_range(v).ok_or_else(|| ApiError::bad_request(format!("_since '{v}' is not an instant")))?.lo),
            "_getpagesoffset" => p.offset = v.parse().map_err(|_| ApiError::bad_request("_getpagesoffset must be a number"))?,
            "_till" => p.till = Some(v.parse().map_err(|_| ApiError::bad_request("_till must be a number"))?),
            "_format" | "_pretty" => {}
            other if neg.lenient => tracing::debug!(param = other, "ignored history parameter"),
            other => return Err(ApiError::bad_request(format!("history does not take the parameter '{other}'"))),
        }
    }
    let page = state.store.history(&scope, &p).await?;
    // Later pages are pinned to what existed at the first request, so new versions do not shift them.
    let till = p.till.unwrap_or_else(|| page.entries.first().map_or(0, |e| e.last_updated).max(state.now_ms()));
    let mut b = Bundle::new("history", state.now_ms());
    b.total = Some(page.total);
    let mut hidden = false;
    let link = |offset: usize| {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        s.append_pair("_count", &p.count.to_string());
        if let Some(since) = p.since {
            s.append_pair("_since", &format_instant(from_unix_ms(since)));
        }
        s.append_pair("_till", &till.to_string());
        s.append_pair("_getpagesoffset", &offset.to_string());
        format!("{url}?{}", s.finish())
    };
    b.link.push(Link { relation: "self", url: link(p.offset) });
    if p.offset.saturating_add(p.count) < page.total {
        b.link.push(Link { relation: "next", url: link(p.offset.saturating_add(p.count)) });
    }
    if p.offset > 0 {
        b.link.push(Link { relation: "previous", url: link(p.offset.saturating_sub(p.count)) });
    }
    for r in &page.entries {
        // Every version is judged on its own content: one the token may not read is left out. A deletion
        // has none: it is judged by the version it deleted (a type's or the system's history would
        // otherwise list the deletions of resources the token never could see).
        let visible = if matches!(access, Access::Open) {
            true
        } else if r.deleted {
            match state.store.vread(&r.resource_type, &r.id, r.version - 1).await? {
                Some(last) => check_version(state, access, &last).await.is_ok(),
                None => false,
            }
        } else {
            check_version(state, access, r).await.is_ok()
        };
        if !visible {
            hidden = true;
            continue;
        }
        let method = if r.deleted {
            "DELETE"
        } else if r.version == 1 {
            "POST"
        } else {
            "PUT"
        };
        let request_url = if method == "POST" { r.resource_type.clone() } else { format!("{}/{}", r.resource_type, r.id) };
        b.entry.push(Entry {
            full_url: Some(crate::bundle_out::full_url(&state.base_url, r)),
            resource: (!r.deleted).then(|| Body::stored(r)),
            request: Some(crate::bundle_out::EntryRequest { method, url: request_url }),
            response: Some(EntryResponse {
                status: if r.deleted {
                    "204".into()
                } else if r.version == 1 {
                    "201".into()
                } else {
                    "200".into()
                },
                location: None,
                etag: Some(r.etag()),
                last_modified: Some(format_instant(from_unix_ms(r.last_updated))),
                outcome: None,
            }),
            ..Default::default()
        });
    }
    if hidden {
        // The page holds fewer versions than the history has: no total that counts the hidden ones.
        b.total = None;
    }
    Ok(bundle_response(neg, &b))
}

/// Executes a GET entry of a batch or transaction (`Type/id`, `Type/id/_history/v`, `Type?query`).
pub async fn read_entry(state: &AppState, access: &Access, url: &str) -> ApiResult<Entry> {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, q),
        None => (url, ""),
    };
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let resource = match parts.as_slice() {
        [ty] => {
            check_type(ty)?;
            let pairs = parse_pairs(query);
            let mut q = parse_search(state, ty, &pairs, false)?;
            access.restrict_search(state, &mut q)?;
            let self_url = format!("{}/{ty}?{}", state.base_url, encode_pairs(&pairs));
            let b = search::search_bundle(state, access, &q, self_url, encode_pairs(&pairs)).await?;
            let v = serde_json::to_value(&b).map_err(|_| ApiError::internal())?;
            return Ok(Entry {
                resource: Some(Body::Value(v)),
                response: Some(EntryResponse { status: "200 OK".into(), location: None, etag: None, last_modified: None, outcome: None }),
                ..Default::default()
            });
        }
        [ty, id] => {
            access.check_patient_id(ty, id, Interaction::Read)?;
            read_current(state, ty, id).await?
        }
        [ty, id, "_history", v] => {
            check_type(ty)?;
            access.check_patient_id(ty, id, Interaction::Read)?;
            let version: i64 = v.parse().map_err(|_| ApiError::bad_request(format!("'{v}' is not a version id")))?;
            match state.store.vread(ty, id, version).await? {
                Some(r) if !r.deleted => r,
                Some(_) => return Err(ApiError::gone(format!("version {version} of {ty}/{id} is a deletion"))),
                None => return Err(ApiError::not_found(format!("{ty}/{id} has no version {version}"))),
            }
        }
        _ => return Err(ApiError::bad_request(format!("'{url}' is not a supported GET in a Bundle"))),
    };
    check_version(state, access, &resource).await?;
    Ok(Entry {
        full_url: Some(crate::bundle_out::full_url(&state.base_url, &resource)),
        resource: Some(Body::stored(&resource)),
        response: Some(EntryResponse {
            status: "200 OK".into(),
            location: None,
            etag: Some(resource.etag()),
            last_modified: Some(format_instant(from_unix_ms(resource.last_updated))),
            outcome: None,
        }),
        search: None::<SearchInfo>,
        ..Default::default()
    })
}

/// Checks a read of one version (current or past) on that version's own content: a record filed under
/// another patient and later corrected stays out of reach in its old versions.
pub async fn check_version(state: &AppState, access: &Access, r: &StoredResource) -> ApiResult<()> {
    check_version_for(state, access, Interaction::Read, r).await
}

/// [`check_version`] for any interaction.
pub async fn check_version_for(state: &AppState, access: &Access, interaction: Interaction, r: &StoredResource) -> ApiResult<()> {
    if matches!(access, Access::Open) {
        return Ok(());
    }
    access.check_resource(state, interaction, &r.resource_type, &r.id, None, Content::Stored(&r.json)).await
}

/// Checks an interaction on a stored resource against the request's access.
pub async fn check_stored(state: &AppState, access: &Access, interaction: Interaction, r: &StoredResource) -> ApiResult<()> {
    if matches!(access, Access::Open) {
        return Ok(());
    }
    access.check_resource(state, interaction, &r.resource_type, &r.id, Some(r.key), Content::Stored(&r.json)).await
}
