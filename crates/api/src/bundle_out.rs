//! Serialisable Bundle shapes. Stored resources are embedded as raw JSON, so a search page is assembled
//! without parsing the resources it returns.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use store::StoredResource;

#[derive(Serialize)]
#[serde(untagged)]
pub enum Body {
    Raw(Box<RawValue>),
    Value(Value),
}

impl Body {
    pub fn stored(r: &StoredResource) -> Body {
        match RawValue::from_string(r.json.clone()) {
            Ok(raw) => Body::Raw(raw),
            Err(_) => Body::Value(Value::Null),
        }
    }
}

#[derive(Serialize)]
pub struct Link {
    pub relation: &'static str,
    pub url: String,
}

#[derive(Serialize)]
pub struct SearchInfo {
    pub mode: &'static str,
}

#[derive(Serialize)]
pub struct EntryRequest {
    pub method: &'static str,
    pub url: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryResponse {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Body>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<EntryRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<EntryResponse>,
}

#[derive(Serialize)]
pub struct Meta {
    #[serde(rename = "lastUpdated")]
    pub last_updated: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub resource_type: &'static str,
    pub id: String,
    pub meta: Meta,
    #[serde(rename = "type")]
    pub bundle_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<Link>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<Entry>,
}

impl Bundle {
    pub fn new(bundle_type: &'static str, now_ms: i64) -> Self {
        Bundle {
            resource_type: "Bundle",
            id: uuid::Uuid::new_v4().to_string(),
            meta: Meta { last_updated: fhir::time::format_instant(fhir::time::from_unix_ms(now_ms)) },
            bundle_type,
            total: None,
            link: Vec::new(),
            entry: Vec::new(),
        }
    }
}

pub fn full_url(base: &str, r: &StoredResource) -> String {
    format!("{base}/{}/{}", r.resource_type, r.id)
}
