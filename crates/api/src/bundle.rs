//! `batch` and `transaction` Bundles (FHIR R4 §3.1.0.11).
//!
//! A transaction is all or nothing: every entry runs in one store transaction, `urn:uuid:` full URLs and
//! conditional references (`Patient?identifier=…`) are resolved first, and entries are processed in the
//! mandated order — DELETE, POST, PUT/PATCH, then GET/HEAD — while responses keep the request order.
//! A batch runs each entry on its own and reports each outcome.

use crate::access::Access;
use crate::bundle_out::{Body, Bundle, Entry, EntryResponse};
use crate::error::{ApiError, ApiResult};
use crate::ops::{self, Outcome, parse_if_match};
use crate::policy::Content;
use crate::response::Negotiated;
use crate::{AppState, rest};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use fhir::time::{format_instant, from_unix_ms};
use fhir::types::is_known_type;
use serde_json::Value;
use smart::Interaction;
use std::collections::HashMap;
use store::Precondition;
use store::Transaction;

/// The most entries a transaction or batch Bundle posted to the API may carry (a 413 beyond).
pub const MAX_ENTRIES: usize = 10_000;

/// `POST [base]` with a transaction or batch Bundle.
pub async fn system_post(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    neg: Negotiated,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let value = rest::json_body(&headers, &body)?;
    let entries = value.get("entry").and_then(Value::as_array).map_or(0, Vec::len);
    if entries > MAX_ENTRIES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!("a transaction or batch Bundle may carry at most {} entries; this one has {entries} (kindling import takes larger files)", MAX_ENTRIES),
        ));
    }
    let b = process_with_access(&state, &access, value).await?;
    Ok(rest::bundle_response(neg, &b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    Delete,
    Post,
    Put,
    Patch,
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

/// Takes the entries out of `bundle` (resources are moved, not copied).
fn parse_entries(base_url: &str, bundle: &mut Value) -> ApiResult<Vec<Request>> {
    let entries = match bundle.get_mut("entry").map(Value::take) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::bad_request("Bundle.entry must be an array")),
    };
    let mut out = Vec::with_capacity(entries.len());
    for (i, mut e) in entries.into_iter().enumerate() {
        let resource = e.get_mut("resource").map(Value::take);
        let request = e.get("request").ok_or_else(|| ApiError::bad_request(format!("entry {i} has no request")))?;
        let method = match request.get("method").and_then(Value::as_str) {
            Some("GET") | Some("HEAD") => Method::Get,
            Some("POST") => Method::Post,
            Some("PUT") => Method::Put,
            Some("DELETE") => Method::Delete,
            Some("PATCH") => Method::Patch,
            other => return Err(ApiError::bad_request(format!("entry {i}: request.method {other:?} is not a FHIR HTTP verb"))),
        };
        let raw_url = request.get("url").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request(format!("entry {i} has no request.url")))?;
        let url = raw_url.strip_prefix(base_url).map(|u| u.trim_start_matches('/')).unwrap_or(raw_url).trim_start_matches('/').to_string();
        let if_match = match request.get("ifMatch").and_then(Value::as_str) {
            Some(v) => Some(parse_if_match(v)?),
            None => None,
        };
        if matches!(method, Method::Post | Method::Put | Method::Patch) && resource.is_none() {
            return Err(ApiError::bad_request(format!("entry {i} ({raw_url}) needs a resource")));
        }
        // A PATCH entry carries its JSON Patch as a Binary (FHIR R4 §3.1.0.11.6); kept as the patch itself.
        let resource = match (method, resource) {
            (Method::Patch, Some(binary)) => Some(json_patch_of(&binary).map_err(|e| ApiError { message: format!("entry {i}: {}", e.message), ..e })?),
            (_, resource) => resource,
        };
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

/// The JSON Patch inside a PATCH entry's Binary (`contentType` `application/json-patch+json`, `data` base64).
fn json_patch_of(binary: &Value) -> ApiResult<Value> {
    use base64::Engine as _;
    let unsupported = || {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-supported",
            "a PATCH entry takes a Binary with contentType application/json-patch+json and the patch in data (FHIRPath Patch is not supported)",
        )
    };
    if binary.get("resourceType").and_then(Value::as_str) != Some("Binary") {
        return Err(unsupported());
    }
    let media = binary.get("contentType").and_then(Value::as_str).unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media != "application/json-patch+json" {
        return Err(unsupported());
    }
    let data: Vec<u8> = binary.get("data").and_then(Value::as_str).unwrap_or("").bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(&data).map_err(|_| ApiError::bad_request("the PATCH entry's Binary data is not base64"))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("the PATCH entry's JSON Patch is not JSON: {e}")))
}

/// Processes a `transaction` or `batch` Bundle with full access (seeding and import).
pub async fn process(state: &AppState, bundle: Value) -> ApiResult<Bundle> {
    process_with_access(state, &Access::Open, bundle).await
}

/// Processes a `transaction` or `batch` Bundle, checking every entry against `access`, and returns the
/// response Bundle.
pub async fn process_with_access(state: &AppState, access: &Access, mut bundle: Value) -> ApiResult<Bundle> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ApiError::bad_request("POST to the base URL takes a Bundle of type transaction or batch"));
    }
    match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => transaction(state, access, &mut bundle).await,
        Some("batch") => batch(state, access, &mut bundle).await,
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

async fn transaction(state: &AppState, access: &Access, bundle: &mut Value) -> ApiResult<Bundle> {
    let applied = commit_transaction(state, access, bundle).await?;
    Ok(finish_transaction(state, access, applied).await)
}

/// How often a transaction that lost a deadlock is run again before the client is told to retry.
const CONTENTION_RETRIES: usize = 3;

/// Writes and commits a transaction Bundle, and runs it again (from the Bundle as it came: applying it
/// rewrites it) when it lost a deadlock with a concurrent transaction and was rolled back. Only stores
/// with concurrent writers can lose one; with one writer (SQLite) the Bundle is not copied.
async fn commit_transaction(state: &AppState, access: &Access, bundle: &mut Value) -> ApiResult<Applied> {
    let original = (state.store.concurrent_writers() > 1).then(|| bundle.clone());
    let mut attempt = 0;
    loop {
        let run = async {
            let mut tx = state.store.begin().await?;
            let applied = apply_transaction(state, access, &mut *tx, bundle).await?;
            tx.commit().await?;
            ApiResult::Ok(applied)
        };
        match run.await {
            Err(e) if e.is_contention() && attempt < CONTENTION_RETRIES => {
                let Some(original) = &original else { return Err(e) };
                attempt += 1;
                tracing::debug!(attempt, "transaction lost a deadlock; running it again");
                *bundle = original.clone();
            }
            other => return other,
        }
    }
}

/// A transaction whose writes are done (not yet committed) and whose GET entries are still to run.
pub struct Applied {
    requests: Vec<Request>,
    outcomes: Vec<Option<Outcome>>,
    gets: Vec<usize>,
}

/// A transaction Bundle made only of unconditional creates and updates, fully prepared (ids assigned,
/// references rewritten, validated, canonicalised and indexed) without the database.
pub struct PreparedBundle {
    writes: Vec<(store::Prepared, store::Precondition)>,
}

impl PreparedBundle {
    /// How many writes the Bundle holds.
    pub fn len(&self) -> usize {
        self.writes.len()
    }
    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// What [`prepare_transaction`] made of a Bundle.
pub enum Preparation {
    /// Every entry prepared: write them in one transaction.
    Ready(PreparedBundle),
    /// The Bundle needs the database to resolve (conditional entries or references, deletes, reads, or not
    /// a transaction): process it with [`process`].
    NeedsDatabase(Value),
    /// The Bundle is refused (its OperationOutcome).
    Invalid(ApiError),
}

/// Prepares a transaction Bundle for import on any thread. Pure: no store access.
pub fn prepare_transaction(base_url: &str, mut bundle: Value) -> Preparation {
    if bundle.get("type").and_then(Value::as_str) != Some("transaction") || bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Preparation::NeedsDatabase(bundle);
    }
    let simple = bundle.get("entry").and_then(Value::as_array).is_some_and(|entries| {
        entries.iter().all(|e| {
            let r = &e["request"];
            let url = r["url"].as_str().unwrap_or("?");
            let unconditional = match r["method"].as_str() {
                Some("POST") => r.get("ifNoneExist").is_none() && !url.contains('?'),
                Some("PUT") => !url.contains('?') && r.get("ifMatch").is_none(),
                _ => false,
            };
            unconditional && !has_conditional_reference(&e["resource"])
        })
    });
    if !simple {
        return Preparation::NeedsDatabase(bundle);
    }
    let mut requests = match parse_entries(base_url, &mut bundle) {
        Ok(r) => r,
        Err(e) => return Preparation::Invalid(e),
    };
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut targets = Vec::with_capacity(requests.len());
    for r in &requests {
        let (ty, id, _) = r.target();
        let (id, precondition) = match (r.method, id) {
            (Method::Post, _) => (ops::new_id(), store::Precondition::Absent),
            // An import: the same content again is no new version.
            (Method::Put, Some(id)) => (id.to_string(), store::Precondition::IfChanged),
            _ => return Preparation::NeedsDatabase(bundle),
        };
        if let Some(full) = &r.full_url {
            ids.insert(full.clone(), format!("{ty}/{id}"));
        }
        targets.push((ty.to_string(), id, precondition));
    }
    let mut writes = Vec::with_capacity(requests.len());
    for (i, (r, (ty, id, precondition))) in requests.iter_mut().zip(targets).enumerate() {
        let mut body = r.resource.take().unwrap_or(Value::Null);
        // No conditional references here (checked above), so nothing is left to resolve.
        collect_rewrites(&mut body, &ids, &mut Vec::new());
        let checked = ops::check_type(&ty).and_then(|_| ops::check_id(&id)).and_then(|_| ops::validated(&body, &ty));
        if let Err(e) = checked {
            return Preparation::Invalid(entry_error(i, e));
        }
        if precondition == store::Precondition::IfChanged && body.get("id").and_then(Value::as_str) != Some(id.as_str()) {
            return Preparation::Invalid(entry_error(i, ApiError::bad_request("the resource in a PUT must carry the id from the URL")));
        }
        body["id"] = Value::String(id);
        match store::prepare(body, Some(base_url)) {
            Ok(p) => writes.push((p, precondition)),
            Err(e) => return Preparation::Invalid(entry_error(i, e.into())),
        }
    }
    Preparation::Ready(PreparedBundle { writes })
}

/// What an import wrote: resources created, resources updated (a new version of one that existed), and
/// resources that were already stored with the same content (left as they were).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Resources that did not exist before.
    pub created: usize,
    /// Resources that got a new version.
    pub updated: usize,
    /// Resources already stored with the same content.
    pub unchanged: usize,
}

impl Written {
    /// All resources the import touched.
    pub fn total(&self) -> usize {
        self.created + self.updated + self.unchanged
    }
    fn count(writes: &[store::Written]) -> Self {
        let created = writes.iter().filter(|w| w.created).count();
        let unchanged = writes.iter().filter(|w| w.unchanged).count();
        Written { created, updated: writes.len() - created - unchanged, unchanged }
    }
    fn add(&mut self, outcome: &Outcome) {
        if outcome.status == StatusCode::CREATED {
            self.created += 1;
        } else if outcome.updated {
            self.updated += 1;
        }
    }
}

/// Imports a `transaction` or `batch` Bundle that needs the database (conditional entries or references),
/// with full access. Returns what was written and, for a batch, the entries that failed (a failing
/// transaction is the error).
pub async fn import_bundle(state: &AppState, mut bundle: Value) -> ApiResult<(Written, Vec<ApiError>)> {
    let mut written = Written::default();
    match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => {
            let applied = commit_transaction(state, &Access::Open, &mut bundle).await?;
            applied.outcomes.iter().flatten().for_each(|o| written.add(o));
            Ok((written, Vec::new()))
        }
        Some("batch") => {
            let mut failed = Vec::new();
            for (i, r) in parse_entries(&state.local_base, &mut bundle)?.into_iter().enumerate() {
                match batch_write(state, &Access::Open, r).await {
                    Ok(BatchDone::Wrote(o)) => written.add(&o),
                    Ok(BatchDone::Read(_)) => {}
                    Err(e) => failed.push(ApiError { message: format!("batch entry {i}: {}", e.message), ..e }),
                }
            }
            Ok((written, failed))
        }
        other => Err(ApiError::bad_request(format!("Bundle.type {other:?} cannot be imported; use transaction, batch or collection"))),
    }
}

/// Writes prepared Bundles, all in one store transaction when none fails (the common case, and far
/// cheaper than a savepoint per Bundle); if one fails, the group is rolled back and every Bundle is
/// written in a transaction of its own, so each stays all or nothing. Returns, per Bundle, what was
/// written or the error.
pub async fn import_prepared(state: &AppState, bundles: Vec<PreparedBundle>) -> ApiResult<Vec<ApiResult<Written>>> {
    let mut tx = state.store.begin().await?;
    let mut written = Vec::with_capacity(bundles.len());
    for bundle in &bundles {
        match tx.put_prepared_many(&bundle.writes).await {
            Ok(w) => written.push(Ok(Written::count(&w))),
            Err(_) => break,
        }
    }
    if written.len() == bundles.len() {
        tx.commit().await?;
        return Ok(written);
    }
    drop(tx);
    let mut results = Vec::with_capacity(bundles.len());
    for bundle in &bundles {
        let mut attempt = 0;
        let result = loop {
            match write_prepared(state, bundle).await {
                Err(e) if e.is_contention() && attempt < CONTENTION_RETRIES => attempt += 1,
                Err(e) if e.status.is_server_error() => return Err(e),
                other => break other,
            }
        };
        results.push(result);
    }
    Ok(results)
}

/// One prepared Bundle in a transaction of its own.
async fn write_prepared(state: &AppState, bundle: &PreparedBundle) -> ApiResult<Written> {
    let mut tx = state.store.begin().await?;
    let mut done = Vec::with_capacity(bundle.writes.len());
    for (i, (prepared, precondition)) in bundle.writes.iter().enumerate() {
        match tx.put_prepared(prepared, *precondition).await {
            Ok(w) => done.push(w),
            Err(e) => return Err(entry_error(i, e.into())),
        }
    }
    tx.commit().await?;
    Ok(Written::count(&done))
}

/// Runs the writes of a transaction Bundle inside `tx`.
async fn apply_transaction(state: &AppState, access: &Access, tx: &mut dyn Transaction, bundle: &mut Value) -> ApiResult<Applied> {
    let mut requests = parse_entries(&state.local_base, bundle)?;
    check_conditionals(access, &requests)?;
    // Conditional entries serialise with every other request naming the same criteria; all their locks are
    // taken up front, in one order, so that two Bundles naming the same criteria cannot deadlock.
    let mut lock_keys: Vec<String> = requests
        .iter()
        .filter_map(|r| {
            let (ty, _, query) = r.target();
            match (r.method, r.if_none_exist.as_deref(), query) {
                (Method::Post, Some(criteria), _) => Some(ops::criteria_key(ty, criteria)),
                (Method::Put | Method::Delete, _, Some(criteria)) => Some(ops::criteria_key(ty, criteria)),
                _ => None,
            }
        })
        .collect();
    lock_keys.sort();
    lock_keys.dedup();
    for key in &lock_keys {
        tx.serialize_on(key).await?;
    }
    // 1. Decide the identity of every entry that creates or updates, so references can be rewritten.
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut preresolved: HashMap<usize, Outcome> = HashMap::new();
    let mut assigned: HashMap<usize, String> = HashMap::new();
    // The version a conditional update's match had when it was found: its write is pinned to it.
    let mut pinned: HashMap<usize, i64> = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        let (ty, id, query) = r.target();
        // A conditional DELETE's match is found now too, so that no other entry writes it (see below).
        if let (Method::Delete, None, Some(criteria)) = (r.method, id, query) {
            let q = ops::conditional_query(state, ty, criteria).map_err(|e| entry_error(i, e))?;
            let keys = tx.search(&q).await?;
            if let [one] = keys.as_slice()
                && let Some(found) = tx.fetch(&[*one]).await?.into_iter().next().filter(|e| !e.deleted)
            {
                assigned.insert(i, found.id);
            }
            continue;
        }
        if !matches!(r.method, Method::Post | Method::Put) {
            continue;
        }
        if !is_known_type(ty) {
            return Err(entry_error(i, ApiError::bad_request(format!("'{ty}' is not a resource type"))));
        }
        let new_ref = match (r.method, id, query) {
            (Method::Post, _, _) => if let Some(criteria) = &r.if_none_exist {
                let q = ops::conditional_query(state, ty, criteria).map_err(|e| entry_error(i, e))?;
                let keys = tx.search(&q).await?;
                match keys.len() {
                    0 => None,
                    1 => {
                        let existing = tx.fetch(&keys).await?.into_iter().next().filter(|e| !e.deleted).ok_or_else(changed_meanwhile)?;
                        let reference = format!("{ty}/{}", existing.id);
                        preresolved
                            .insert(i, Outcome { status: StatusCode::OK, resource: Some(existing), location: true, message: "exists".into(), updated: false });
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
            }),
            (Method::Put, Some(id), None) => Some(format!("{ty}/{id}")),
            (Method::Put, None, Some(criteria)) => {
                let q = ops::conditional_query(state, ty, criteria).map_err(|e| entry_error(i, e))?;
                let keys = tx.search(&q).await?;
                let id = match keys.len() {
                    0 => r.resource.as_ref().and_then(|b| b.get("id")).and_then(Value::as_str).map(str::to_string).unwrap_or_else(ops::new_id),
                    1 => {
                        // Deleted by another request since the search: the Bundle is run again.
                        let found = tx.fetch(&keys).await?.into_iter().next().filter(|e| !e.deleted).ok_or_else(changed_meanwhile)?;
                        pinned.insert(i, found.version);
                        found.id
                    }
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
    for (i, r) in requests.iter_mut().enumerate() {
        if let Some(res) = r.resource.as_mut() {
            rewrite_references(state, tx, res, &ids).await.map_err(|e| entry_error(i, e))?;
        }
    }
    // 3. Process in the mandated order (deletes, creates, updates, reads) and, within each, updates and
    // deletes by resource identity: two Bundles that write the same resources then lock them in the
    // same order and cannot deadlock on PostgreSQL (Synthea's Bundles each update the same practitioners
    // and organisations, in their own orders).
    let mut order: Vec<usize> = (0..requests.len()).collect();
    let identity = |i: usize| -> Option<(String, String)> {
        let (ty, id, _) = requests[i].target();
        match requests[i].method {
            Method::Put | Method::Delete | Method::Patch => id.map(str::to_string).or_else(|| assigned.get(&i).cloned()).map(|id| (ty.to_string(), id)),
            _ => None,
        }
    };
    let keys: Vec<Option<(String, String)>> = (0..requests.len()).map(identity).collect();
    // FHIR: a transaction whose entries (conditional ones resolved) name one resource twice fails.
    let mut named = std::collections::HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        if let Some((ty, id)) = k
            && !named.insert(k)
        {
            return Err(entry_error(i, ApiError::bad_request(format!("{ty}/{id} is written by more than one entry of this transaction"))));
        }
    }
    order.sort_by(|&a, &b| (requests[a].method, &keys[a]).cmp(&(requests[b].method, &keys[b])));
    let mut outcomes: Vec<Option<Outcome>> = (0..requests.len()).map(|_| None).collect();
    let mut gets = Vec::new();
    for i in order {
        if let Some(done) = preresolved.remove(&i) {
            if let Some(existing) = &done.resource {
                rest::check_stored(state, access, Interaction::Read, existing).await.map_err(|e| entry_error(i, e))?;
            }
            outcomes[i] = Some(done);
            continue;
        }
        let judged = check_entry(state, access, &mut *tx, &requests[i]).await.map_err(|e| entry_error(i, e))?;
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
            Method::Patch => match (id, query) {
                // Applied to the version read: a change since (no If-Match of the client's) runs the Bundle again.
                (Some(id), None) => pin_failed_is_contention(
                    rest::patch_in(state, access, &mut *tx, &ty, &id, r.resource.as_ref().unwrap_or(&Value::Null), r.if_match).await,
                    true,
                    r.if_match,
                ),
                _ => Err(ApiError::bad_request(format!("'{}' is not a valid PATCH URL (Type/id)", r.url))),
            },
            Method::Delete => match (id, query) {
                (Some(id), None) => match pinned_write(r.if_match, judged) {
                    Ok(p) => pin_failed_is_contention(ops::delete_with(&mut *tx, &ty, &id, p).await, judged.is_some(), r.if_match),
                    Err(e) => Err(e),
                },
                (None, Some(q)) => ops::conditional_delete(state, &mut *tx, &ty, &q).await,
                _ => Err(ApiError::bad_request(format!("'{}' is not a valid DELETE URL", r.url))),
            },
            Method::Post => {
                let body = r.resource.take().unwrap_or(Value::Null);
                ops::create(state, &mut *tx, &ty, body, None, assigned.remove(&i)).await
            }
            Method::Put => {
                let mut body = r.resource.take().unwrap_or(Value::Null);
                if !body.is_object() {
                    return Err(entry_error(i, ApiError::unprocessable("the body must be a JSON object holding a FHIR resource")));
                }
                let id = match (id, assigned.remove(&i)) {
                    (Some(id), _) => id,
                    (None, Some(id)) => {
                        body["id"] = Value::String(id.clone());
                        id
                    }
                    (None, None) => return Err(entry_error(i, ApiError::bad_request("PUT needs Type/id or Type?criteria"))),
                };
                // Pinned to the version a conditional update's search found, or to what the token's
                // judgement saw: a change meanwhile (no If-Match of the client's) runs the Bundle again.
                let judged = pinned.remove(&i).map(Precondition::Version).or(judged);
                match pinned_write(r.if_match, judged) {
                    Ok(p) => pin_failed_is_contention(ops::update_with(state, &mut *tx, &ty, &id, body, p).await, judged.is_some(), r.if_match),
                    Err(e) => Err(e),
                }
            }
        };
        outcomes[i] = Some(outcome.map_err(|e| entry_error(i, e))?);
    }
    Ok(Applied { requests, outcomes, gets })
}

/// Runs the GET entries (after the commit, so they see the writes) and assembles the response.
async fn finish_transaction(state: &AppState, access: &Access, applied: Applied) -> Bundle {
    let Applied { requests, outcomes, gets } = applied;
    let mut response = Bundle::new("transaction-response", state.now_ms());
    let mut get_results: HashMap<usize, Entry> = HashMap::new();
    for i in gets {
        let e = match rest::read_entry(state, access, &requests[i].url).await {
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
    response
}

/// Conditional entries and references search the store before any write is checked; with a token they
/// need an unconstrained user/ or system/ search scope on the searched type, so that match counts and
/// matches never tell about resources the token cannot see.
fn check_conditionals(access: &Access, requests: &[Request]) -> ApiResult<()> {
    if matches!(access, Access::Open) {
        return Ok(());
    }
    for (i, r) in requests.iter().enumerate() {
        let (ty, _, query) = r.target();
        if r.if_none_exist.is_some() || (query.is_some() && r.method != Method::Get) {
            access.check_type_wide(ty, Interaction::Search).map_err(|e| entry_error(i, e))?;
        }
        if let Some(res) = &r.resource {
            for target in conditional_reference_types(res) {
                access.check_type_wide(&target, Interaction::Search).map_err(|e| entry_error(i, e))?;
            }
        }
    }
    Ok(())
}

/// The types searched by the conditional references (`Type?criteria`) inside a resource.
fn conditional_reference_types(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                for (k, x) in o {
                    match (k.as_str(), x) {
                        ("reference", Value::String(s)) if s.contains('?') && !s.contains("://") => {
                            out.push(s.split('?').next().unwrap_or_default().to_string());
                        }
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// Checks a write entry against the request's access (reads are checked when they run).
/// Judges an entry under the token. For a `PUT` or `DELETE` of `Type/id`, returns what the judgement saw
/// (the version, or the resource's absence): the write is pinned to it (see [`pinned_write`]), so a
/// resource reassigned between the check and the write (PostgreSQL reads committed data) is never written
/// unjudged.
async fn check_entry(state: &AppState, access: &Access, tx: &mut dyn Transaction, r: &Request) -> ApiResult<Option<Precondition>> {
    if matches!(access, Access::Open) {
        return Ok(None);
    }
    let (ty, id, query) = r.target();
    let empty = Value::Null;
    let body = r.resource.as_ref().unwrap_or(&empty);
    match (r.method, id, query) {
        (Method::Get, _, _) => Ok(None),
        (Method::Post, _, _) => access.check_resource(state, Interaction::Create, ty, "", None, Content::Parsed(body)).await.map(|_| None),
        (Method::Put | Method::Delete, _, Some(_)) => {
            access.check_type_wide(ty, if r.method == Method::Put { Interaction::Update } else { Interaction::Delete }).map(|_| None)
        }
        (Method::Put, Some(id), None) => {
            access.check_resource(state, Interaction::Update, ty, id, None, Content::Parsed(body)).await?;
            rest::judge_replaced(state, access, ty, id, tx.read(ty, id).await?).await.map(Some)
        }
        // The resource before and after is judged where the patch is applied (`rest::patch_in`).
        (Method::Patch, Some(id), None) => {
            access.check_any(ty, Interaction::Update)?;
            access.check_patient_id(ty, id, Interaction::Update).map(|_| None)
        }
        (Method::Delete, Some(id), None) => {
            access.check_patient_id(ty, id, Interaction::Delete)?;
            rest::judge_deleted(state, access, ty, tx.read(ty, id).await?).await.map(Some)
        }
        _ => Ok(None),
    }
}

/// The precondition of an entry's write: the client's `If-Match`, pinned to what its judgement saw. A
/// pin that fails without an `If-Match` of the client's means the resource changed meanwhile: contention
/// (a transaction runs again; a batch entry answers 409, to be sent again).
fn pinned_write(if_match: Option<i64>, judged: Option<Precondition>) -> ApiResult<Precondition> {
    match judged {
        Some(j) => rest::pinned(if_match, j),
        None => Ok(if_match.map_or(Precondition::None, Precondition::Version)),
    }
}

/// A write's result, with a failed pin of the server's own (`pinned`: the server pinned the write; not the
/// client's `If-Match`) as contention.
fn pin_failed_is_contention(result: ApiResult<Outcome>, pinned: bool, if_match: Option<i64>) -> ApiResult<Outcome> {
    match result {
        Err(e) if pinned && if_match.is_none() && e.status == StatusCode::PRECONDITION_FAILED => Err(changed_meanwhile()),
        other => other,
    }
}

fn entry_error(i: usize, e: ApiError) -> ApiError {
    ApiError { message: format!("transaction failed at entry {i}: {}", e.message), ..e }
}

/// A conditional entry's match changed under it (another request deleted or updated it): the Bundle is
/// run again from the start, as on any other contention.
fn changed_meanwhile() -> ApiError {
    ApiError::contention("a resource a conditional entry matched changed while the Bundle ran")
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
        let found = tx.fetch(&keys).await?.into_iter().next().filter(|e| !e.deleted).ok_or_else(changed_meanwhile)?;
        resolved.insert(c.clone(), format!("{ty}/{}", found.id));
    }
    let mut none = Vec::new();
    collect_rewrites(v, &resolved, &mut none);
    Ok(())
}

/// Whether any `reference` below `v` is conditional (`Type?criteria`).
fn has_conditional_reference(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.iter().any(|(k, x)| match (k.as_str(), x) {
            ("reference", Value::String(s)) => s.contains('?') && !s.contains("://"),
            _ => has_conditional_reference(x),
        }),
        Value::Array(a) => a.iter().any(has_conditional_reference),
        _ => false,
    }
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

async fn batch(state: &AppState, access: &Access, bundle: &mut Value) -> ApiResult<Bundle> {
    let requests = parse_entries(&state.local_base, bundle)?;
    let mut response = Bundle::new("batch-response", state.now_ms());
    for r in requests {
        let result = batch_entry(state, access, r).await;
        response.entry.push(match result {
            Ok(e) => e,
            Err(err) => error_entry(&err),
        });
    }
    Ok(response)
}

async fn batch_entry(state: &AppState, access: &Access, r: Request) -> ApiResult<Entry> {
    match batch_write(state, access, r).await? {
        BatchDone::Wrote(outcome) => Ok(entry_for(state, &outcome)),
        BatchDone::Read(url) => rest::read_entry(state, access, &url).await,
    }
}

/// What one batch entry did: a write, or a read still to run.
enum BatchDone {
    Wrote(Outcome),
    Read(String),
}

async fn batch_write(state: &AppState, access: &Access, r: Request) -> ApiResult<BatchDone> {
    let (ty, id, query) = {
        let (t, id, q) = r.target();
        (t.to_string(), id.map(str::to_string), q.map(str::to_string))
    };
    check_conditionals(access, std::slice::from_ref(&r))?;
    let mut tx = state.store.begin().await?;
    let judged = check_entry(state, access, &mut *tx, &r).await?;
    let post = matches!(r.method, Method::Post);
    let outcome = match r.method {
        Method::Delete => match (id, query) {
            (Some(id), None) => {
                pin_failed_is_contention(ops::delete_with(&mut *tx, &ty, &id, pinned_write(r.if_match, judged)?).await, judged.is_some(), r.if_match)?
            }
            (None, Some(q)) => ops::conditional_delete(state, &mut *tx, &ty, &q).await?,
            _ => return Err(ApiError::bad_request(format!("'{}' is not a valid DELETE URL", r.url))),
        },
        Method::Post => ops::create(state, &mut *tx, &ty, r.resource.unwrap_or(Value::Null), r.if_none_exist.as_deref(), None).await?,
        Method::Put => match (id, query) {
            (Some(id), None) => pin_failed_is_contention(
                ops::update_with(state, &mut *tx, &ty, &id, r.resource.unwrap_or(Value::Null), pinned_write(r.if_match, judged)?).await,
                judged.is_some(),
                r.if_match,
            )?,
            (None, Some(q)) => ops::conditional_update(state, &mut *tx, &ty, &q, r.resource.unwrap_or(Value::Null)).await?,
            _ => return Err(ApiError::bad_request(format!("'{}' is not a valid PUT URL", r.url))),
        },
        Method::Patch => match (id, query) {
            (Some(id), None) => pin_failed_is_contention(
                rest::patch_in(state, access, &mut *tx, &ty, &id, r.resource.as_ref().unwrap_or(&Value::Null), r.if_match).await,
                true,
                r.if_match,
            )?,
            _ => return Err(ApiError::bad_request(format!("'{}' is not a valid PATCH URL (Type/id)", r.url))),
        },
        Method::Get => {
            drop(tx);
            return Ok(BatchDone::Read(r.url));
        }
    };
    if post
        && outcome.status == StatusCode::OK
        && let Some(existing) = &outcome.resource
    {
        // `ifNoneExist` matched: what comes back must be readable with this token (as in the REST create).
        rest::check_stored(state, access, Interaction::Read, existing).await?;
    }
    tx.commit().await?;
    Ok(BatchDone::Wrote(outcome))
}
