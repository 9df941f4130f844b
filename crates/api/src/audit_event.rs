//! The audit trail served as FHIR AuditEvent resources (read-only): `GET /fhir/AuditEvent` with `date`
//! (`ge`/`gt`), `patient`, `agent` (client id or user) and `_count`, newest first, paged by `next` links
//! (a cursor, `_before`, so that records written meanwhile do not shift the pages), with the `total` of
//! the matches; and `GET /fhir/AuditEvent/{id}`.

use crate::AppState;
use crate::access::Access;
use crate::bundle_out::{Body, Bundle, Entry, Link, SearchInfo};
use crate::error::{ApiError, ApiResult};
use crate::response::{Negotiated, json_response};
use crate::search::{encode_pairs, parse_pairs};
use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use fhir::time::{format_instant, from_unix_ms, parse_date_range};
use serde_json::{Value, json};
use smart::{Interaction, Level};
use store::audit::{AuditFilter, AuditRecord};

/// The FHIR interaction a request performs, from its method and path.
pub fn interaction(method: &Method, path: &str) -> &'static str {
    let segments: Vec<&str> = path.trim_start_matches("/fhir").split('/').filter(|s| !s.is_empty()).collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", [_, _, "_history", _]) => "vread",
        ("GET", [_, _, "_history"]) => "history-instance",
        ("GET", [_, "_history"]) => "history-type",
        ("GET", ["_history"]) => "history-system",
        ("GET", [_, _, op]) if op.starts_with('$') => "operation",
        ("GET", [_, _, _]) => "search-compartment",
        ("GET", [_, _]) => "read",
        ("GET", [_]) | ("POST", [_, "_search"]) => "search-type",
        ("GET", []) => "search-system",
        ("POST", []) => "batch-or-transaction",
        ("POST", [_]) => "create",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        _ => "other",
    }
}

/// An audit record as an R4 AuditEvent.
pub fn to_audit_event(id: i64, r: &AuditRecord) -> Value {
    let recorded = format_instant(from_unix_ms(r.recorded));
    let (type_code, type_display) = if r.category == "rest" { ("rest", "RESTful Operation") } else { ("110114", "User Authentication") };
    let type_system =
        if r.category == "rest" { "http://terminology.hl7.org/CodeSystem/audit-event-type" } else { "http://dicom.nema.org/resources/ontology/DCM" };
    let action = match r.action.as_str() {
        "create" => "C",
        "read" | "vread" | "search-type" | "search-system" | "search-compartment" | "history-instance" | "history-type" | "history-system" => "R",
        "update" => "U",
        "delete" => "D",
        _ => "E",
    };
    let mut agents = Vec::new();
    if let Some(u) = &r.username {
        agents.push(json!({"who": {"display": u}, "requestor": true}));
    }
    if let Some(c) = &r.client_id {
        agents.push(json!({"who": {"identifier": {"system": "urn:kindling:client", "value": c}}, "requestor": r.username.is_none()}));
    }
    if agents.is_empty() {
        agents.push(json!({"who": {"display": "unauthenticated caller"}, "requestor": true}));
    }
    let mut entities = Vec::new();
    if let Some(p) = &r.patient {
        entities.push(json!({"what": {"reference": format!("Patient/{p}")}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}}));
    }
    if let Some(e) = &r.entity {
        entities.push(json!({"what": {"display": e}}));
    }
    let mut ev = json!({
        "resourceType": "AuditEvent",
        "id": id.to_string(),
        "meta": {"versionId": "1", "lastUpdated": recorded},
        "type": {"system": type_system, "code": type_code, "display": type_display},
        "subtype": [{"system": "urn:kindling:audit-action", "code": r.action}],
        "action": action,
        "recorded": recorded,
        "outcome": r.outcome,
        "agent": agents,
        "source": {"observer": {"display": "Kindling"}},
        "entity": entities,
    });
    if let Some(d) = &r.detail {
        ev["outcomeDesc"] = json!(d);
    }
    if entities_empty(&ev) {
        ev.as_object_mut().map(|o| o.remove("entity"));
    }
    ev
}

fn entities_empty(ev: &Value) -> bool {
    ev["entity"].as_array().is_some_and(Vec::is_empty)
}

/// How much of the audit trail a request may see.
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    /// Every record, in full.
    All,
    /// The records filed under the token's patient, without the requests' paths and details: who did what
    /// and when. A record is filed under the patient of the token that made the request, and a clinician
    /// in this patient's chart may have read another patient's record with it: that patient's id, in the
    /// path, is not this patient's to see.
    Patient,
}

/// What a patient-level view keeps of an AuditEvent (see [`View::Patient`]): the patient reference, not
/// the request's path nor the outcome's detail.
fn redact(ev: &mut Value) {
    if let Some(o) = ev.as_object_mut() {
        o.remove("outcomeDesc");
    }
    if let Some(entities) = ev["entity"].as_array_mut() {
        entities.retain(|e| e["what"]["reference"].is_string());
    }
    if entities_empty(ev) {
        ev.as_object_mut().map(|o| o.remove("entity"));
    }
}

/// What the request may see of the audit trail: everything, or one patient's.
fn scope_filter(access: &Access, filter: &mut AuditFilter) -> ApiResult<View> {
    let Access::Token(t) = access else { return Ok(View::All) };
    for level in [Level::System, Level::User] {
        if t.scopes.access(level, "AuditEvent", Interaction::Search).is_some_and(|c| c.is_empty()) {
            return Ok(View::All);
        }
    }
    if t.scopes.access(Level::Patient, "AuditEvent", Interaction::Search).is_some()
        && let Some(p) = &t.patient
    {
        filter.patient = Some(p.clone());
        return Ok(View::Patient);
    }
    Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "no granted scope allows reading the audit trail"))
}

pub async fn search(State(state): State<AppState>, Extension(access): Extension<Access>, neg: Negotiated, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let mut filter = AuditFilter { limit: fhir::query::DEFAULT_COUNT, ..Default::default() };
    // The query as the client wrote it, minus the paging cursor: the base of the page links.
    let mut kept: Vec<(String, String)> = Vec::new();
    for (k, v) in parse_pairs(q.as_deref().unwrap_or("")) {
        if k != "_before" {
            kept.push((k.clone(), v.clone()));
        }
        match k.as_str() {
            "date" => {
                let value = v.strip_prefix("ge").or_else(|| v.strip_prefix("gt")).ok_or_else(|| ApiError::bad_request("AuditEvent date takes ge or gt"))?;
                filter.since = Some(parse_date_range(value).ok_or_else(|| ApiError::bad_request(format!("'{v}' is not a date")))?.lo);
            }
            "patient" => filter.patient = Some(v.trim_start_matches("Patient/").to_string()),
            "agent" => {
                if v.contains('/') {
                    filter.username = Some(v);
                } else {
                    filter.client_id = Some(v);
                }
            }
            "_count" => filter.limit = v.parse::<usize>().map_err(|_| ApiError::bad_request("_count must be a number"))?.min(fhir::query::MAX_COUNT),
            // The cursor of a `next` link: records older than this one.
            "_before" => filter.before = Some(v.parse::<i64>().map_err(|_| ApiError::bad_request("_before must be an AuditEvent id from a next link"))?),
            "_format" | "_pretty" => {}
            other => return Err(ApiError::bad_request(format!("AuditEvent searches take date, patient, agent and _count, not '{other}'"))),
        }
    }
    let asked_patient = filter.patient.clone();
    let view = scope_filter(&access, &mut filter)?;
    if asked_patient.is_some() && asked_patient != filter.patient {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "the audit trail of another patient is not granted"));
    }
    // One more than a page tells whether there is a next one.
    let page = filter.limit;
    filter.limit = page + 1;
    let mut rows = state.store.audit_events(&filter).await?;
    let more = rows.len() > page;
    rows.truncate(page);
    let total = state.store.audit_count(&filter).await?;
    let mut b = Bundle::new("searchset", state.now_ms());
    b.total = Some(total as usize);
    let link = |before: Option<i64>| {
        let mut pairs = kept.clone();
        if let Some(id) = before {
            pairs.push(("_before".into(), id.to_string()));
        }
        let query = encode_pairs(&pairs);
        if query.is_empty() { format!("{}/AuditEvent", state.base_url) } else { format!("{}/AuditEvent?{query}", state.base_url) }
    };
    b.link.push(Link { relation: "self", url: link(filter.before) });
    if more && let Some((last, _)) = rows.last() {
        b.link.push(Link { relation: "next", url: link(Some(*last)) });
    }
    for (id, r) in rows {
        let mut ev = to_audit_event(id, &r);
        if view == View::Patient {
            redact(&mut ev);
        }
        b.entry.push(Entry {
            full_url: Some(format!("{}/AuditEvent/{id}", state.base_url)),
            resource: Some(Body::Value(ev)),
            search: Some(SearchInfo { mode: "match" }),
            ..Default::default()
        });
    }
    Ok(json_response(StatusCode::OK, &b, neg.pretty, neg.content_type))
}

pub async fn read(State(state): State<AppState>, Extension(access): Extension<Access>, Path(id): Path<String>, neg: Negotiated) -> ApiResult<Response> {
    let id: i64 = id.parse().map_err(|_| ApiError::not_found(format!("AuditEvent/{id} is not known")))?;
    let mut filter = AuditFilter { id: Some(id), limit: 1, ..Default::default() };
    let view = scope_filter(&access, &mut filter)?;
    let (id, r) = state.store.audit_events(&filter).await?.into_iter().next().ok_or_else(|| ApiError::not_found(format!("AuditEvent/{id} is not known")))?;
    let mut ev = to_audit_event(id, &r);
    if view == View::Patient {
        redact(&mut ev);
    }
    Ok(json_response(StatusCode::OK, &ev, neg.pretty, neg.content_type))
}

pub async fn read_only() -> ApiError {
    ApiError::method_not_allowed("the audit trail is read-only")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactions_from_paths() {
        assert_eq!(interaction(&Method::GET, "/fhir/Patient/1"), "read");
        assert_eq!(interaction(&Method::GET, "/fhir/Patient"), "search-type");
        assert_eq!(interaction(&Method::GET, "/fhir/Patient/1/$everything"), "operation");
        assert_eq!(interaction(&Method::GET, "/fhir/Patient/1/_history/2"), "vread");
        assert_eq!(interaction(&Method::POST, "/fhir"), "batch-or-transaction");
        assert_eq!(interaction(&Method::POST, "/fhir/Observation/_search"), "search-type");
        assert_eq!(interaction(&Method::PUT, "/fhir/Patient/1"), "update");
    }
}
