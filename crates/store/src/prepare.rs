//! Preparing a resource for writing without touching the database: its canonical JSON (minus the version
//! and timestamp, spliced in at write time) and its search-index rows. Pure, so it can run on any thread
//! ahead of the single writer, and shared by every backend.

use crate::{Result, StoreError};
use fhir::extract::{IndexRows, extract};
use fhir::time::{format_instant, from_unix_ms};
use serde_json::{Map, Value};

/// A resource ready to be written as some version.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The resource type.
    pub resource_type: String,
    /// The resource id.
    pub id: String,
    /// Members of `meta` other than `versionId`/`lastUpdated`, serialised, each preceded by a comma.
    meta_rest: String,
    /// Members of the resource after `meta`, serialised, each preceded by a comma.
    body_rest: String,
    /// Its search-index rows.
    pub rows: IndexRows,
}

/// Serialises an object's members without the braces, with a leading comma when there are any.
fn members(map: &Map<String, Value>) -> Result<String> {
    if map.is_empty() {
        return Ok(String::new());
    }
    let s = serde_json::to_string(map).map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(format!(",{}", &s[1..s.len() - 1]))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl Prepared {
    /// The canonical JSON of this resource as `version`, last updated at `last_updated` (Unix ms):
    /// `resourceType`, `id` and `meta` first.
    pub fn render(&self, version: i64, last_updated: i64) -> String {
        let mut out = String::with_capacity(self.body_rest.len() + self.meta_rest.len() + 128);
        out.push_str("{\"resourceType\":");
        out.push_str(&json_string(&self.resource_type));
        out.push_str(",\"id\":");
        out.push_str(&json_string(&self.id));
        out.push_str(",\"meta\":{\"versionId\":\"");
        out.push_str(&version.to_string());
        out.push_str("\",\"lastUpdated\":\"");
        out.push_str(&format_instant(from_unix_ms(last_updated)));
        out.push('"');
        out.push_str(&self.meta_rest);
        out.push('}');
        out.push_str(&self.body_rest);
        out.push('}');
        out
    }
}

/// Prepares `resource`, whose `resourceType` and `id` must be set. `base` is the server's FHIR base URL,
/// so that absolute references to it are indexed as local.
pub fn prepare(resource: Value, base: Option<&str>) -> Result<Prepared> {
    let Value::Object(mut obj) = resource else {
        return Err(StoreError::BadInput("a resource must be a JSON object".into()));
    };
    let resource_type = match obj.shift_remove("resourceType") {
        Some(Value::String(s)) => s,
        _ => return Err(StoreError::BadInput("resourceType is missing".into())),
    };
    let id = match obj.shift_remove("id") {
        Some(Value::String(s)) => s,
        _ => return Err(StoreError::BadInput("id is missing".into())),
    };
    let mut meta = match obj.shift_remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.shift_remove("versionId");
    meta.shift_remove("lastUpdated");
    // Index from the resource as it will be stored (meta plays no part in the parameters we index).
    obj.insert("resourceType".into(), Value::String(resource_type.clone()));
    obj.insert("id".into(), Value::String(id.clone()));
    let value = Value::Object(obj);
    let rows = extract(&resource_type, &value, base).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(StoreError::BadInput("a resource must be a JSON object".into()));
    };
    obj.shift_remove("resourceType");
    obj.shift_remove("id");
    Ok(Prepared { resource_type, id, meta_rest: members(&meta)?, body_rest: members(&obj)?, rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn render_puts_identity_and_meta_first() {
        let r = json!({"status": "final", "meta": {"profile": ["p"], "versionId": "9"}, "resourceType": "Observation", "id": "o\"1", "code": {"text": "x"}});
        let p = prepare(r, None).unwrap();
        let json = p.render(3, 0);
        assert_eq!(
            json,
            r#"{"resourceType":"Observation","id":"o\"1","meta":{"versionId":"3","lastUpdated":"1970-01-01T00:00:00.000Z","profile":["p"]},"status":"final","code":{"text":"x"}}"#
        );
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["meta"]["versionId"], "3");
        let bare = prepare(json!({"resourceType": "Patient", "id": "a"}), None).unwrap();
        assert_eq!(bare.render(1, 0), r#"{"resourceType":"Patient","id":"a","meta":{"versionId":"1","lastUpdated":"1970-01-01T00:00:00.000Z"}}"#);
    }
}
