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

/// `Content-Type` of FHIR JSON.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
/// `Content-Type` when the client asked for `application/json`.
pub const PLAIN_JSON: &str = "application/json; charset=utf-8";

/// What the client asked for in `Accept`, `_format`, `_pretty` and `Prefer`.
#[derive(Debug, Clone, Copy)]
pub struct Negotiated {
    /// `_pretty=true`: indented JSON.
    pub pretty: bool,
    /// The content type to answer with.
    pub content_type: &'static str,
    /// What `Prefer: return=` asked for.
    pub prefer_return: PreferReturn,
    /// `Prefer: handling=lenient`: unknown search parameters are ignored instead of refused.
    pub lenient: bool,
}

impl Negotiated {
    /// FHIR JSON, compact, the defaults.
    pub fn fhir_json() -> Self {
        Negotiated { pretty: false, content_type: FHIR_JSON, prefer_return: PreferReturn::Representation, lenient: false }
    }
}

/// `Prefer: return=` (FHIR R4 §3.1.0.8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreferReturn {
    /// No body.
    Minimal,
    /// The resource (the default).
    Representation,
    /// An OperationOutcome.
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

/// The media types a read of a `Binary` asks for when it wants the document's own bytes rather than FHIR
/// JSON: no `_format`, and an `Accept` in which no item is JSON, a wildcard or another FHIR format
/// (`Accept: application/pdf`, `text/plain`, …). Lower-cased, without parameters, `q=0` items left out.
/// `None`: FHIR JSON (or its 406).
pub fn raw_binary_accept(query: &str, headers: &HeaderMap) -> Option<Vec<String>> {
    if query_value(query, "_format").is_some() {
        return None;
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())?.to_ascii_lowercase();
    let mut wanted = Vec::new();
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        if media.is_empty() {
            continue;
        }
        if json_format(media).is_some() || media.contains("fhir") {
            return None;
        }
        let refused = parts.any(|p| p.replace(' ', "").strip_prefix("q=").and_then(|q| q.parse::<f64>().ok()).is_some_and(|q| q <= 0.0));
        if !refused {
            wanted.push(media.to_string());
        }
    }
    (!wanted.is_empty()).then_some(wanted)
}

/// Whether a Binary of this content type could run as a page or a script if a browser rendered it.
fn active_content(media: &str) -> bool {
    media.contains("html") || media.contains("xml") || media.contains("javascript") || media.contains("svg")
}

/// The answer to a read of a `Binary` that asked for its own bytes (`wanted`, from [`raw_binary_accept`]):
/// the decoded `data` with its `contentType`, when that is what was asked for (or its `type/*`); a 406
/// otherwise. `Ok(None)` when the stored data cannot be decoded: the caller answers FHIR JSON instead. The
/// content is the uploader's, so it may not run as a page of this origin (sandboxed, no sniffing, and
/// active types only as a download).
pub fn binary_response(r: &StoredResource, wanted: &[String]) -> Result<Option<Response>, ApiError> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_str(&r.json).map_err(|_| ApiError::internal())?;
    let stored = v["contentType"].as_str().unwrap_or("application/octet-stream");
    let media = stored.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let family = media.split('/').next().unwrap_or("");
    if !wanted.iter().any(|w| *w == media || w.strip_suffix("/*") == Some(family)) {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not-supported",
            format!("this Binary is {media}; ask for {media} or for application/fhir+json"),
        ));
    }
    let Ok(content_type) = HeaderValue::from_str(stored) else { return Ok(None) };
    // base64Binary may carry whitespace and leave out padding.
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let bytes = match v["data"].as_str() {
        Some(d) => match lenient.decode(d.bytes().filter(|b| !b.is_ascii_whitespace()).collect::<Vec<u8>>()) {
            Ok(b) => b,
            Err(_) => return Ok(None),
        },
        None => Vec::new(),
    };
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox"));
    if active_content(&media) {
        h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    }
    resource_headers(h, "", r, false);
    Ok(Some(resp))
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

/// A JSON response of `body` with this status and content type.
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

/// A JSON response of an already serialised body.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    fn binary(content_type: &str, data: &str) -> StoredResource {
        let json = serde_json::json!({"resourceType": "Binary", "id": "b", "contentType": content_type, "data": data}).to_string();
        StoredResource { key: 1, resource_type: "Binary".into(), id: "b".into(), version: 1, last_updated: 0, deleted: false, json }
    }

    #[test]
    fn which_reads_of_a_binary_want_its_bytes() {
        assert_eq!(raw_binary_accept("", &accept("application/pdf")), Some(vec!["application/pdf".to_string()]));
        assert_eq!(raw_binary_accept("", &accept("Application/PDF; q=0.9, text/*")), Some(vec!["application/pdf".to_string(), "text/*".to_string()]));
        assert_eq!(raw_binary_accept("", &accept("application/pdf;q=0")), None, "q=0 refuses");
        for json_too in ["application/pdf, */*", "application/fhir+json", "Application/FHIR+JSON", "application/json", "application/fhir+xml"] {
            assert_eq!(raw_binary_accept("", &accept(json_too)), None, "{json_too}");
        }
        assert_eq!(raw_binary_accept("_format=json", &accept("application/pdf")), None);
        assert_eq!(raw_binary_accept("", &HeaderMap::new()), None);
    }

    #[test]
    fn the_bytes_only_in_the_type_asked_for_and_decoded_leniently() {
        let pdf = binary("application/pdf", "JVBE\nRi0x LjQ");
        let r = binary_response(&pdf, &["application/pdf".into()]).unwrap().expect("decoded despite whitespace and missing padding");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/pdf");
        assert_eq!(r.headers()[header::VARY], "Accept");
        assert!(r.headers().get(header::CONTENT_DISPOSITION).is_none());
        assert!(binary_response(&pdf, &["application/*".into()]).unwrap().is_some());
        assert_eq!(binary_response(&pdf, &["image/png".into()]).unwrap_err().status, StatusCode::NOT_ACCEPTABLE);
        let html = binary("text/html", "PHNjcmlwdD4=");
        let r = binary_response(&html, &["text/html".into()]).unwrap().unwrap();
        assert_eq!(r.headers()[header::CONTENT_DISPOSITION], "attachment", "active content only as a download");
        assert!(r.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("sandbox"));
        assert!(binary_response(&binary("text/plain", "not base64 at all!"), &["text/plain".into()]).unwrap().is_none(), "undecodable: FHIR JSON instead");
    }
}
