//! `batch` and `transaction` Bundles (FHIR R4 §3.1.0.11).
//!
//! A transaction is all or nothing: every entry runs in one store transaction, `urn:uuid:` full URLs and
//! conditional references (`Patient?identifier=…`) are resolved first, and entries are processed in the
//! mandated order — DELETE, POST, PUT/PATCH, then GET/HEAD — while responses keep the request order.
//! A batch runs each entry on its own and reports each outcome.

use crate::bundle_out::{Body, Bundle, Entry, EntryResponse};
use crate::error::{ApiError, ApiResult};
use crate::ops::{self, Outcome, parse_if_match};
use crate::{AppState, rest};
use axum::http::StatusCode;
use fhir::time::{format_instant, from_unix_ms};
use fhir::types::is_known_type;
use serde_json::Value;
use std::collections::HashMap;
use store::Transaction;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    Delete,
    Post,
    Put,
    Get,
}

#[derive(Debug)]
struct Request {
    method: Method,
    /// The request URL relative to the base: `Type`, `Type/id`, `Type?criteria`, ...
    url: String,
    full_url: Option<String>,
    resource: Option<Value>,
    if_none_exist: Option<String>,
    if_match: Option<i64>,
}

impl Request {
    fn target(&self) -> (&str, Option<&str>, Option<&str>) {
        let (path, query) = match self.url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.url.as_str(), None),
        };
        let mut parts = path.splitn(2, '/');
        let ty = parts.next().unwrap_or("");
        (ty, parts.next(), query)
    }
}

fn parse_entries(state: &AppState, bundle: &Value) -> ApiResult<Vec<Request>> {
    let entries = match bundle.get("entry") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::bad_request("Bundle.entry must be an array")),
    };
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let request = e.get("request").ok_or_else(|| ApiError::bad_request(format!("entry {i} has no request")))?;
        let method = match request.get("method").and_then(Value::as_str) {
            Some("GET") | Some("HEAD") => Method::Get,
            Some("POST") => Method::Post,
            Some("PUT") => Method::Put,
            Some("DELETE") => Method::Delete,
            Some("PATCH") => return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "not-supported", format!("entry {i}: PATCH is not supported"))),
            other => return Err(ApiError::bad_request(format!("entry {i}: request.method {other:?} is not a FHIR HTTP verb"))),
        };
        let raw_url = request.get("url").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request(format!("entry {i} has no request.url")))?;
        let url = raw_url.strip_prefix(state.base_url.as_str()).map(|u| u.trim_start_matches('/')).unwrap_or(raw_url).trim_start_matches('/').to_string();
        let if_match = match request.get("ifMatch").and_then(Value::as_str) {
            Some(v) => Some(parse_if_match(v)?),
            None => None,
        };
        let resource = e.get("resource").cloned();
        if matches!(method, Method::Post | Method::Put) && resource.is_none() {
            return Err(ApiError::bad_request(format!("entry {i} ({raw_url}) needs a resource")));
        }
        out.push(Request {
            method,
            url,
            full_url: e.get("fullUrl").and_then(Value::as_str).map(str::to_string),
            resource,
            if_none_exist: request.get("ifNoneExist").and_then(Value::as_str).map(str::to_string),
            if_match,
        });
    }
    Ok(out)
}

/// Processes a `transaction` or `batch` Bundle and returns the response Bundle.
pub async fn process(state: &AppState, bundle: Value) -> ApiResult<Bundle> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ApiError::bad_request("POST to the base URL takes a Bundle of type transaction or batch"));
    }
    match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => transaction(state, &bundle).await,
        Some("batch") => batch(state, &bundle).await,
        other => Err(ApiError::bad_request(format!("Bundle.type {other:?} cannot be processed; use transaction or batch"))),
    }
}

fn entry_for(state: &AppState, outcome: &Outcome) -> Entry {
    let r = outcome.resource.as_ref().filter(|r| !r.deleted);
    Entry {
        full_url: r.map(|r| crate::bundle_out::full_url(&state.base_url, r)),
        resource: r.map(Body::stored),
        response: Some(EntryResponse {
            status: format!("{} {}", outcome.status.as_u16(), outcome.status.canonical_reason().unwrap_or("")).trim().to_string(),
            location: r.filter(|_| outcome.location).map(|r| format!("{}/{}/_history/{}", r.resource_type, r.id, r.version)),
            etag: r.map(|r| r.etag()),
            last_modified: r.map(|r| format_instant(from_unix_ms(r.last_updated))),
            outcome: None,
        }),
        ..Default::default()
    }
}

fn error_entry(e: &ApiError) -> Entry {
    Entry {
        response: Some(EntryResponse {
            status: format!("{} {}", e.status.as_u16(), e.status.canonical_reason().unwrap_or("")).trim().to_string(),
            location: None,
            etag: None,
            last_modified: None,
            outcome: Some(e.to_outcome()),
        }),
        ..Default::default()
    }
}

async fn transaction(state: &AppState, bundle: &Value) -> ApiResult<Bundle> {
    let mut requests = parse_entries(state, bundle)?;
    let mut tx = state.store.begin().await?;
    // 1. Decide the identity of every entry that creates or updates, so references can be rewritten.
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut preresolved: HashMap<usize, Outcome> = HashMap::new();
    let mut assigned: HashMap<usize, String> = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        let (ty, id, query) = r.target();
        if !matches!(r.method, Method::Post | Method::Put) {
            continue;
        }
        if !is_known_type(ty) {
            return Err(entry_error(i, ApiError::bad_request(format!("'{ty}' is not a resource type"))));
        }
        let new_ref = match (r.method, id, query) {
            (Method::Post, _, _) => {
                if let Some(criteria) = &r.if_none_exist {
                    let q = ops::conditional_query(state, ty, criteria).map_err(|e| entry_error(i, e))?;
                    let keys = tx.search(&q).await?;
                    match keys.len() {
                        0 => None,
                        1 => {
                            let existing = tx.fetch(&keys).await?.into_iter().next().ok_or_else(ApiError::internal)?;
                            let reference = format!("{ty}/{}", existing.id);
                            preresolved.insert(i, Outcome { status: StatusCode::OK, resource: Some(existing), location: true, message: "exists".into() });
                            Some(reference)
                        }
                        n => return Err(entry_error(i, ApiError::precondition_failed(format!("ifNoneExist matched {n} resources")))),
                    }
                } else {
                    None
                }
                .or_else(|| {
                    let id = ops::new_id();
                    assigned.insert(i, id.clone());
                    Some(format!("{ty}/{id}"))
                })
            }
            (Method::Put, Some(id), None) => Some(format!("{ty}/{id}")),
            (Method::Put, None, Some(criteria)) => {
                let q = ops::conditional_query(state, ty, criteria).map_err(|e| entry_error(i, e))?;
                let keys = tx.search(&q).await?;
                let id = match keys.len() {
                    0 => r.resource.as_ref().and_then(|b| b.get("id")).and_then(Value::as_str).map(str::to_string).unwrap_or_else(ops::new_id),
                    1 => tx.fetch(&keys).await?.into_iter().next().map(|e| e.id).ok_or_else(ApiError::internal)?,
                    n => return Err(entry_error(i, ApiError::precondition_failed(format!("conditional update matched {n} resources")))),
                };
                assigned.insert(i, id.clone());
                Some(format!("{ty}/{id}"))
            }
            _ => return Err(entry_error(i, ApiError::bad_request(format!("'{}' is not a valid {:?} URL", r.url, r.method)))),
        };
        if let (Some(full), Some(new_ref)) = (&r.full_url, new_ref) {
            ids.insert(full.clone(), new_ref);
        }
    }
    // 2. Rewrite references to other entries and resolve conditional references.
    for i in 0..requests.len() {
        if let Some(res) = requests[i].resource.as_mut() {
            rewrite_references(state, &mut *tx, res, &ids).await.map_err(|e| entry_error(i, e))?;
        }
    }
    // 3. Process in the mandated order.
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| requests[i].method);
    let mut outcomes: Vec<Option<Outcome>> = (0..requests.len()).map(|_| None).collect();
    let mut gets = Vec::new();
    for i in order {
        if let Some(done) = preresolved.remove(&i) {
            outcomes[i] = Some(done);
            continue;
        }
        let r = &mut requests[i];
        let (ty, id, query) = {
            let (t, id, q) = r.target();
            (t.to_string(), id.map(str::to_string), q.map(str::to_string))
        };
        let outcome = match r.method {
            Method::Get => {
                gets.push(i);
                continue;
            }
            Method::Delete => match (id, query) {
                (Some(id), None) => ops::delete(&mut *tx, &ty, &id, r.if_match).await,
                (None, Some(q)) => ops::conditional_delete(state, &mut *tx, &ty, &q).await,
                _ => Err(ApiError::bad_request(format!("'{}' is not a valid DELETE URL", r.url))),
            },
            Method::Post => {
                let body = r.resource.take().unwrap_or(Value::Null);
                ops::create(state, &mut *tx, &ty, body, None, assigned.remove(&i)).await
            }
            Method::Put => {
                let mut body = r.resource.take().unwrap_or(Value::Null);
                let id = match (id, assigned.remove(&i)) {
                    (Some(id), _) => id,
                    (None, Some(id)) => {
                        body["id"] = Value::String(id.clone());
                        id
                    }
                    (None, None) => return Err(entry_error(i, ApiError::bad_request("PUT needs Type/id or Type?criteria"))),
                };
                ops::update(state, &mut *tx, &ty, &id, body, r.if_match).await
            }
        };
        outcomes[i] = Some(outcome.map_err(|e| entry_error(i, e))?);
    }
    tx.commit().await?;
    let mut response = Bundle::new("transaction-response", state.now_ms());
    let mut get_results: HashMap<usize, Entry> = HashMap::new();
    for i in gets {
        let e = match rest::read_entry(state, &requests[i].url).await {
            Ok(e) => e,
            Err(err) => error_entry(&err),
        };
        get_results.insert(i, e);
    }
    for (i, o) in outcomes.into_iter().enumerate() {
        match o {
            Some(o) => response.entry.push(entry_for(state, &o)),
            None => response.entry.push(get_results.remove(&i).unwrap_or_default()),
        }
    }
    Ok(response)
}

fn entry_error(i: usize, e: ApiError) -> ApiError {
    ApiError { message: format!("transaction failed at entry {i}: {}", e.message), ..e }
}

/// Replaces references to bundle entries (by `fullUrl`) with their assigned `Type/id`, and conditional
/// references (`Type?criteria`) with the single resource they match.
async fn rewrite_references(state: &AppState, tx: &mut dyn Transaction, v: &mut Value, ids: &HashMap<String, String>) -> ApiResult<()> {
    let mut conditional: Vec<String> = Vec::new();
    collect_rewrites(v, ids, &mut conditional);
    if conditional.is_empty() {
        return Ok(());
    }
    let mut resolved = HashMap::new();
    for c in conditional {
        let Some((ty, criteria)) = c.split_once('?') else { continue };
        let q = ops::conditional_query(state, ty, criteria)?;
        let keys = tx.search(&q).await?;
        if keys.len() != 1 {
            return Err(ApiError::precondition_failed(format!("the conditional reference '{c}' matched {} resources; it must match exactly one", keys.len())));
        }
        let found = tx.fetch(&keys).await?.into_iter().next().ok_or_else(ApiError::internal)?;
        resolved.insert(c.clone(), format!("{ty}/{}", found.id));
    }
    let mut none = Vec::new();
    collect_rewrites(v, &resolved, &mut none);
    Ok(())
}

fn collect_rewrites(v: &mut Value, ids: &HashMap<String, String>, conditional: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "reference" {
                    if let Value::String(s) = x {
                        if let Some(new) = ids.get(s.as_str()) {
                            *s = new.clone();
                        } else if s.contains('?') && !s.contains("://") && !conditional.contains(s) {
                            conditional.push(s.clone());
                        }
                    }
                } else {
                    collect_rewrites(x, ids, conditional);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| collect_rewrites(x, ids, conditional)),
        _ => {}
    }
}

async fn batch(state: &AppState, bundle: &Value) -> ApiResult<Bundle> {
    let requests = parse_entries(state, bundle)?;
    let mut response = Bundle::new("batch-response", state.now_ms());
    for r in requests {
        let result = batch_entry(state, r).await;
        response.entry.push(match result {
            Ok(e) => e,
            Err(err) => error_entry(&err),
        });
    }
    Ok(response)
}

async fn batch_entry(state: &AppState, r: Request) -> ApiResult<Entry> {
    let (ty, id, query) = {
        let (t, id, q) = r.target();
        (t.to_string(), id.map(str::to_string), q.map(str::to_string))
    };
    let mut tx = state.store.begin().await?;
    let outcome = match r.method {
        Method::Delete => match (id, query) {
            (Some(id), None) => ops::delete(&mut *tx, &ty, &id, r.if_match).await?,
            (None, Some(q)) => ops::conditional_delete(state, &mut *tx, &ty, &q).await?,
            _ => return Err(ApiError::bad_request(format!("'{}' is not a valid DELETE URL", r.url))),
        },
        Method::Post => ops::create(state, &mut *tx, &ty, r.resource.unwrap_or(Value::Null), r.if_none_exist.as_deref(), None).await?,
        Method::Put => match (id, query) {
            (Some(id), None) => ops::update(state, &mut *tx, &ty, &id, r.resource.unwrap_or(Value::Null), r.if_match).await?,
            (None, Some(q)) => ops::conditional_update(state, &mut *tx, &ty, &q, r.resource.unwrap_or(Value::Null)).await?,
            _ => return Err(ApiError::bad_request(format!("'{}' is not a valid PUT URL", r.url))),
        },
        Method::Get => {
            drop(tx);
            return rest::read_entry(state, &r.url).await;
        }
    };
    tx.commit().await?;
    Ok(entry_for(state, &outcome))
}
