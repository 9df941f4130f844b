//! The write interactions, each over an open store transaction so that single requests and the entries of
//! a transaction Bundle share one implementation.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use axum::http::StatusCode;
use fhir::query::{ParseOptions, SearchQuery, parse};
use fhir::types::{is_storable_type, is_valid_id};
use fhir::validate::validate_resource;
use serde_json::Value;
use store::{Precondition, StoredResource, Transaction};

/// The result of one interaction, before it becomes an HTTP response or a Bundle entry response.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The HTTP status (200, 201, 204, 304, 412...).
    pub status: StatusCode,
    /// The resource as stored after the interaction, when there is one.
    pub resource: Option<StoredResource>,
    /// Set on creates and updates, for the `Location` header.
    pub location: bool,
    /// A human-readable note for `Prefer: return=OperationOutcome`.
    pub message: String,
    /// True when a new version of an existing resource was written (an update, not a create).
    pub updated: bool,
}

/// Refuses a resource type the server does not know (`404`).
pub fn check_type(resource_type: &str) -> ApiResult<()> {
    if is_storable_type(resource_type) { Ok(()) } else { Err(ApiError::not_found(format!("'{resource_type}' is not a resource type served here"))) }
}

/// Refuses an id outside FHIR's id grammar (`400`).
pub fn check_id(id: &str) -> ApiResult<()> {
    if is_valid_id(id) { Ok(()) } else { Err(ApiError::bad_request(format!("'{id}' is not a valid FHIR id"))) }
}

/// Parses an `If-Match` value (`W/"3"` or `"3"` or `3`) into a version.
pub fn parse_if_match(v: &str) -> ApiResult<i64> {
    let t = v.trim().trim_start_matches("W/").trim_matches('"');
    t.parse().map_err(|_| ApiError::bad_request(format!("If-Match '{v}' is not a version ETag like W/\"3\"")))
}

/// Server-assigned ids are time-ordered UUIDs (v7): as unique as random ones, but new rows land at the
/// end of the id indexes instead of at random places, which keeps bulk imports out of the disk cache's way.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Parses a conditional query (`identifier=x|y`, the part after `?`) for `resource_type`.
pub fn conditional_query(state: &AppState, resource_type: &str, query: &str) -> ApiResult<SearchQuery> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    if pairs.is_empty() {
        return Err(ApiError::bad_request("a conditional request needs search parameters"));
    }
    let opts = ParseOptions { lenient: false, base: Some(&state.local_base), now_ms: state.now_ms() };
    let q = parse(resource_type, &pairs, opts).map_err(|e| ApiError::bad_request(format!("conditional criteria: {e}")))?;
    // Conditional writes are held to a type-wide grant of their own type only: criteria that reach into
    // another type would answer (created, updated, 412) about resources the token may not search.
    if q.filters.iter().any(|f| matches!(f, fhir::query::Filter::Chain { .. } | fhir::query::Filter::Has { .. })) {
        return Err(ApiError::bad_request("conditional criteria cannot use chained parameters or _has; name the resource by its own parameters"));
    }
    Ok(q)
}

/// The name and value of each parameter of an operation's `Parameters` body, as query-string values would
/// be: primitives as they are, a `valueCoding` as `system|code`, a `valueReference` as its reference.
/// `what` names the operation in the errors (`a POST kick-off`, `$docref`).
pub fn parameter_pairs(body: &Value, what: &str) -> ApiResult<Vec<(String, String)>> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ApiError::bad_request(format!("{what} takes a Parameters resource")));
    }
    let mut out = Vec::new();
    for p in body.get("parameter").and_then(Value::as_array).into_iter().flatten() {
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let value = ["valueString", "valueId", "valueInstant", "valueDate", "valueDateTime", "valueCode", "valueUri", "valueUrl", "valueCanonical"]
            .iter()
            .find_map(|k| p.get(*k).and_then(Value::as_str).map(str::to_string))
            .or_else(|| p.get("valueBoolean").and_then(Value::as_bool).map(|b| b.to_string()))
            .or_else(|| {
                let c = p.get("valueCoding")?;
                Some(format!("{}|{}", c.get("system").and_then(Value::as_str).unwrap_or(""), c.get("code").and_then(Value::as_str)?))
            })
            .or_else(|| p.pointer("/valueReference/reference").and_then(Value::as_str).map(str::to_string));
        let value = value.ok_or_else(|| ApiError::bad_request(format!("the parameter '{name}' has no value this server reads")))?;
        out.push((name, value));
    }
    Ok(out)
}

/// The key that serialises conditional writes with the same criteria (see
/// [`store::Transaction::serialize_on`]): the type and the criteria's pairs, sorted, so that the same
/// criteria in another order or spelling of the query string meet on the same lock.
pub fn criteria_key(resource_type: &str, criteria: &str) -> String {
    // Result controls (`_format=json`) change nothing of what matches: criteria with and without them meet.
    let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(criteria.trim_start_matches('?').as_bytes())
        .into_owned()
        .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
        .collect();
    pairs.sort();
    let joined: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("conditional:{resource_type}?{}", joined.join("&"))
}

/// Validates `body` as a resource of `resource_type`.
pub fn validated(body: &Value, resource_type: &str) -> ApiResult<()> {
    validate_resource(body, Some(resource_type)).map_err(|e| ApiError::unprocessable(e.0))
}

/// `POST [type]` with optional `If-None-Exist`.
pub async fn create(
    state: &AppState,
    tx: &mut dyn Transaction,
    resource_type: &str,
    body: Value,
    if_none_exist: Option<&str>,
    assigned_id: Option<String>,
) -> ApiResult<Outcome> {
    let condition = match if_none_exist {
        Some(criteria) => Some((conditional_query(state, resource_type, criteria)?, criteria_key(resource_type, criteria))),
        None => None,
    };
    create_if_none(state, tx, resource_type, body, condition.as_ref().map(|(q, k)| (q, k.as_str())), assigned_id).await
}

/// [`create`] with the `If-None-Exist` criteria already parsed (and narrowed to what the caller may see),
/// and the key of its criteria ([`criteria_key`]).
pub async fn create_if_none(
    state: &AppState,
    tx: &mut dyn Transaction,
    resource_type: &str,
    mut body: Value,
    condition: Option<(&SearchQuery, &str)>,
    assigned_id: Option<String>,
) -> ApiResult<Outcome> {
    let _ = state;
    check_type(resource_type)?;
    validated(&body, resource_type)?;
    if let Some((q, key)) = condition {
        tx.serialize_on(key).await?;
        let keys = tx.search(q).await?;
        match keys.len() {
            0 => {}
            1 => {
                let existing = tx.fetch(&keys).await?.into_iter().next();
                return Ok(Outcome {
                    status: StatusCode::OK,
                    resource: existing,
                    location: true,
                    message: "a matching resource already exists; nothing was created".into(),
                    updated: false,
                });
            }
            n => return Err(ApiError::precondition_failed(format!("If-None-Exist matched {n} resources"))),
        }
    }
    let id = assigned_id.unwrap_or_else(new_id);
    body["id"] = Value::String(id);
    let written = tx.put(body, Precondition::Absent).await?;
    Ok(Outcome { status: StatusCode::CREATED, resource: Some(written.resource), location: true, message: "created".into(), updated: false })
}

/// `PUT [type]/[id]` (create-on-update allowed) with optional `If-Match`.
pub async fn update(state: &AppState, tx: &mut dyn Transaction, resource_type: &str, id: &str, body: Value, if_match: Option<i64>) -> ApiResult<Outcome> {
    update_with(state, tx, resource_type, id, body, if_match.map_or(Precondition::None, Precondition::Version)).await
}

/// [`update`] on a precondition: `Version` (`If-Match`, or the version the caller's access was judged
/// on), `Absent` (judged on its absence) or `None`. A failed precondition is a 412.
pub async fn update_with(
    state: &AppState,
    tx: &mut dyn Transaction,
    resource_type: &str,
    id: &str,
    body: Value,
    precondition: Precondition,
) -> ApiResult<Outcome> {
    let _ = state;
    check_type(resource_type)?;
    check_id(id)?;
    validated(&body, resource_type)?;
    match body.get("id").and_then(Value::as_str) {
        Some(body_id) if body_id == id => {}
        Some(body_id) => return Err(ApiError::bad_request(format!("the id in the body ({body_id}) does not match the id in the URL ({id})"))),
        None => return Err(ApiError::bad_request("the resource in a PUT must carry the id from the URL")),
    }
    let written = match tx.put(body, precondition).await {
        Ok(w) => w,
        // Without If-Match nothing was promised: a clash with a concurrent create of the same id (PostgreSQL's
        // unique key) is a 409 the client can retry, never "precondition failed"; a transaction Bundle is run
        // again by the server (it then finds the resource and updates it).
        Err(store::StoreError::Conflict(_)) if precondition == Precondition::None => {
            return Err(ApiError::contention(format!("{resource_type}/{id} was created by a concurrent request")));
        }
        Err(e) => return Err(e.into()),
    };
    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(Outcome {
        status,
        resource: Some(written.resource),
        location: true,
        message: if written.created { "created".into() } else { "updated".into() },
        updated: !written.created,
    })
}

/// `PUT [type]?criteria`: update the one match, create when none, 412 when several.
pub async fn conditional_update(state: &AppState, tx: &mut dyn Transaction, resource_type: &str, criteria: &str, body: Value) -> ApiResult<Outcome> {
    check_type(resource_type)?;
    validated(&body, resource_type)?;
    let q = conditional_query(state, resource_type, criteria)?;
    tx.serialize_on(&criteria_key(resource_type, criteria)).await?;
    // The lock serialises conditional writers only: a plain DELETE or PUT of the match may commit between
    // the search and the write (PostgreSQL, READ COMMITTED). The write is pinned to the version found, and
    // a match gone or changed meanwhile is searched for again: a deleted resource is never written back.
    for _ in 0..CONDITIONAL_TRIES {
        let keys = tx.search(&q).await?;
        match keys.len() {
            0 => {
                let id = body.get("id").and_then(Value::as_str).map(str::to_string).unwrap_or_else(new_id);
                let mut body = body;
                body["id"] = Value::String(id.clone());
                return update(state, tx, resource_type, &id, body, None).await;
            }
            1 => {
                let Some(existing) = tx.fetch(&keys).await?.into_iter().next().filter(|r| !r.deleted) else { continue };
                if let Some(body_id) = body.get("id").and_then(Value::as_str)
                    && body_id != existing.id
                {
                    return Err(ApiError::bad_request(format!("the body's id {body_id} differs from the matching resource {}", existing.id)));
                }
                let mut body = body.clone();
                body["id"] = Value::String(existing.id.clone());
                match update(state, tx, resource_type, &existing.id, body, Some(existing.version)).await {
                    // Only the pin's own refusal (no SQL error: the transaction is still usable) is retried.
                    Err(e) if e.status == StatusCode::PRECONDITION_FAILED => continue,
                    result => return result,
                }
            }
            n => return Err(ApiError::precondition_failed(format!("the conditional update matched {n} resources"))),
        }
    }
    Err(ApiError::contention(format!("the resource matching {resource_type}?{criteria} kept changing while it was updated; try again")))
}

/// How many times a conditional update or delete searches again when its match changed under it.
const CONDITIONAL_TRIES: usize = 3;

/// `DELETE [type]/[id]`, idempotent: deleting a missing or deleted resource succeeds.
pub async fn delete(tx: &mut dyn Transaction, resource_type: &str, id: &str, if_match: Option<i64>) -> ApiResult<Outcome> {
    delete_with(tx, resource_type, id, if_match.map_or(Precondition::None, Precondition::Version)).await
}

/// [`delete`] on a precondition (see [`update_with`]); `Absent` deletes nothing, and fails if the resource
/// exists now.
pub async fn delete_with(tx: &mut dyn Transaction, resource_type: &str, id: &str, precondition: Precondition) -> ApiResult<Outcome> {
    check_type(resource_type)?;
    check_id(id)?;
    let deleted = tx.delete(resource_type, id, precondition).await?;
    let message =
        if deleted.is_some() { format!("deleted {resource_type}/{id}") } else { format!("{resource_type}/{id} did not exist or was already deleted") };
    Ok(Outcome { status: StatusCode::OK, resource: deleted, location: false, message, updated: false })
}

/// `DELETE [type]?criteria`: deletes the single match (412 when several).
pub async fn conditional_delete(state: &AppState, tx: &mut dyn Transaction, resource_type: &str, criteria: &str) -> ApiResult<Outcome> {
    check_type(resource_type)?;
    let q = conditional_query(state, resource_type, criteria)?;
    // A match deleted by another request between the search and the fetch: searched again (see
    // `conditional_update`).
    for _ in 0..CONDITIONAL_TRIES {
        let keys = tx.search(&q).await?;
        match keys.len() {
            0 => {
                return Ok(Outcome {
                    status: StatusCode::OK,
                    resource: None,
                    location: false,
                    message: "no resource matched; nothing was deleted".into(),
                    updated: false,
                });
            }
            1 => {
                let Some(existing) = tx.fetch(&keys).await?.into_iter().next().filter(|r| !r.deleted) else { continue };
                return delete(tx, resource_type, &existing.id, None).await;
            }
            n => return Err(ApiError::precondition_failed(format!("the conditional delete matched {n} resources"))),
        }
    }
    Err(ApiError::contention(format!("the resource matching {resource_type}?{criteria} kept changing while it was deleted; try again")))
}
