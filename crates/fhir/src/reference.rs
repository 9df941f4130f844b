//! FHIR references: `Type/id`, `Type/id/_history/v`, absolute URLs, `urn:uuid:` and contained (`#x`) forms.

use crate::types::{is_known_type, is_valid_id};

/// A reference string, read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedReference {
    /// The referenced type.
    pub resource_type: Option<String>,
    /// The referenced id.
    pub id: Option<String>,
    /// The version, for `Type/id/_history/v`.
    pub version: Option<String>,
    /// The whole reference when it is absolute (`http…`, `urn:…`).
    pub url: Option<String>,
}

impl ParsedReference {
    /// `Type/id` when both are known.
    pub fn local(&self) -> Option<(&str, &str)> {
        Some((self.resource_type.as_deref()?, self.id.as_deref()?))
    }
}

/// Parses a reference string. When `base` is given and the reference starts with it, the reference is
/// treated as local to this server.
pub fn parse_reference(reference: &str, base: Option<&str>) -> ParsedReference {
    let reference = reference.trim();
    if reference.is_empty() || reference.starts_with('#') {
        return ParsedReference::default();
    }
    let mut out = ParsedReference::default();
    let mut rel = reference;
    if let Some(base) = base {
        let base = base.trim_end_matches('/');
        if let Some(rest) = reference.strip_prefix(base)
            && let Some(rest) = rest.strip_prefix('/')
        {
            rel = rest;
        }
    }
    if rel == reference && (reference.contains("://") || reference.starts_with("urn:")) {
        out.url = Some(reference.to_string());
        if reference.starts_with("urn:") {
            return out;
        }
    }
    let segments: Vec<&str> = rel.split('/').collect();
    let n = segments.len();
    let (ty, id, version) = if n >= 4 && segments[n - 2] == "_history" {
        (segments[n - 4], segments[n - 3], Some(segments[n - 1]))
    } else if n >= 2 {
        (segments[n - 2], segments[n - 1], None)
    } else {
        return out;
    };
    if is_known_type(ty) && is_valid_id(id) {
        out.resource_type = Some(ty.to_string());
        out.id = Some(id.to_string());
        out.version = version.map(str::to_string);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let r = parse_reference("Patient/123", None);
        assert_eq!(r.local(), Some(("Patient", "123")));
        assert!(r.url.is_none());
        let r = parse_reference("Observation/1/_history/2", None);
        assert_eq!(r.local(), Some(("Observation", "1")));
        assert_eq!(r.version.as_deref(), Some("2"));
        let r = parse_reference("http://x.test/fhir/Patient/9", Some("http://x.test/fhir"));
        assert_eq!(r.local(), Some(("Patient", "9")));
        assert!(r.url.is_none());
        let r = parse_reference("http://other.test/fhir/Patient/9", Some("http://x.test/fhir"));
        assert_eq!(r.local(), Some(("Patient", "9")));
        assert_eq!(r.url.as_deref(), Some("http://other.test/fhir/Patient/9"));
        let r = parse_reference("urn:uuid:0b5d4b1e-0000-0000-0000-000000000000", None);
        assert!(r.local().is_none());
        assert!(r.url.is_some());
        assert_eq!(parse_reference("#med1", None), ParsedReference::default());
        assert!(parse_reference("Nonsense/1", None).local().is_none());
    }
}
