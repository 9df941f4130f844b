//! Building FHIR JSON responses: content type, `_pretty`, and the resource headers.

use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use fhir::time::{format_http_date, from_unix_ms};
use serde::Serialize;
use store::StoredResource;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
pub const PLAIN_JSON: &str = "application/json; charset=utf-8";

/// What the client asked for in `Accept`, `_format`, `_pretty` and `Prefer`.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    pub pretty: bool,
    pub content_type: &'static str,
    pub prefer_return: PreferReturn,
    pub lenient: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreferReturn {
    Minimal,
    Representation,
    OperationOutcome,
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v)
}

fn json_format(f: &str) -> Option<&'static str> {
    let f = f.split(';').next().unwrap_or("").trim();
    match f {
        "json" | "application/fhir+json" | "application/json+fhir" => Some(FHIR_JSON),
        "application/json" => Some(PLAIN_JSON),
        "*/*" | "application/*" | "" => Some(FHIR_JSON),
        _ => None,
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Negotiated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        negotiate(parts.uri.query().unwrap_or(""), &parts.headers)
    }
}

/// Whether a read of a `Binary` asks for its own bytes rather than FHIR JSON: no `_format`, and an `Accept`
/// in which no item is JSON or a wildcard (`Accept: application/pdf`, `text/plain`, …).
pub fn wants_raw_binary(query: &str, headers: &HeaderMap) -> bool {
    if query_value(query, "_format").is_some() {
        return false;
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return false };
    // A FHIR format that is not JSON (application/fhir+xml) stays a 406.
    !accept.trim().is_empty() && accept.split(',').all(|item| json_format(item).is_none() && !item.contains("fhir"))
}

/// The answer to a read of a `Binary` that asked for its own bytes: the decoded `data` with its
/// `contentType`. The content is the uploader's, so it may not run as a page of this origin (sandboxed,
/// no sniffing).
pub fn binary_response(r: &StoredResource) -> Result<Response, ApiError> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_str(&r.json).map_err(|_| ApiError::internal())?;
    let content_type = v["contentType"].as_str().and_then(|c| HeaderValue::from_str(c).ok()).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let bytes = match v["data"].as_str() {
        Some(d) => base64::engine::general_purpose::STANDARD.decode(d).map_err(|_| ApiError::internal())?,
        None => Vec::new(),
    };
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox"));
    resource_headers(h, "", r, false);
    Ok(resp)
}

/// Reads `Accept`, `_format`, `_pretty` and `Prefer`; a 406 when no JSON form is acceptable.
pub fn negotiate(query: &str, headers: &HeaderMap) -> Result<Negotiated, ApiError> {
    let pretty = query_value(query, "_pretty").is_some_and(|v| v == "true");
    let content_type = if let Some(f) = query_value(query, "_format") {
        json_format(&f).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_ACCEPTABLE, "not-supported", format!("_format '{f}' is not supported; this server speaks JSON only"))
        })?
    } else if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        let mut chosen = None;
        for item in accept.split(',') {
            if let Some(ct) = json_format(item) {
                chosen = Some(ct);
                break;
            }
        }
        match chosen {
            Some(c) => c,
            None if accept.contains("html") || accept.contains("text/") => FHIR_JSON,
            None => {
                return Err(ApiError::new(
                    StatusCode::NOT_ACCEPTABLE,
                    "not-supported",
                    format!("cannot produce '{accept}'; this server speaks application/fhir+json and application/json"),
                ));
            }
        }
    } else {
        FHIR_JSON
    };
    let mut prefer_return = PreferReturn::Representation;
    let mut lenient = false;
    for v in headers.get_all("prefer") {
        let Ok(s) = v.to_str() else { continue };
        for item in s.split([',', ';']) {
            match item.trim().replace(' ', "").as_str() {
                "return=minimal" => prefer_return = PreferReturn::Minimal,
                "return=representation" => prefer_return = PreferReturn::Representation,
                "return=OperationOutcome" => prefer_return = PreferReturn::OperationOutcome,
                "handling=lenient" => lenient = true,
                "handling=strict" => lenient = false,
                _ => {}
            }
        }
    }
    Ok(Negotiated { pretty, content_type, prefer_return, lenient })
}

pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, body: &T, pretty: bool, content_type: &'static str) -> Response {
    let text = if pretty { serde_json::to_string_pretty(body) } else { serde_json::to_string(body) };
    match text {
        Ok(t) => raw_json_response(status, t, content_type),
        Err(e) => {
            tracing::error!(error = %e, "serialising a response failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal server error").into_response()
        }
    }
}

pub fn raw_json_response(status: StatusCode, body: String, content_type: &'static str) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Headers that describe one stored version: `ETag`, `Last-Modified`, and `Location` / `Content-Location`.
pub fn resource_headers(headers: &mut HeaderMap, base: &str, r: &StoredResource, location: bool) {
    if let Ok(v) = HeaderValue::from_str(&r.etag()) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format_http_date(from_unix_ms(r.last_updated))) {
        headers.insert(header::LAST_MODIFIED, v);
    }
    if location {
        let loc = format!("{base}/{}/{}/_history/{}", r.resource_type, r.id, r.version);
        if let Ok(v) = HeaderValue::from_str(&loc) {
            headers.insert(header::LOCATION, v.clone());
            headers.insert(header::CONTENT_LOCATION, v);
        }
    }
}

/// The body of a stored resource, re-indented when `_pretty=true`.
pub fn resource_body(r: &StoredResource, pretty: bool) -> String {
    if pretty
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.json)
        && let Ok(s) = serde_json::to_string_pretty(&v)
    {
        return s;
    }
    r.json.clone()
}
