//! Writes: new versions, history and search-index rows, all on the transaction's connection.

use super::read_current;
use crate::{Precondition, Result, StoreError, StoredResource, Written};
use fhir::extract::{IndexRows, extract};
use fhir::time::{format_instant, from_unix_ms};
use rusqlite::{Connection, params};
use serde_json::{Map, Value};

const INDEX_TABLES: &[&str] = &["sp_string", "sp_token", "sp_reference", "sp_date", "sp_quantity", "sp_number", "compartment"];

/// Sets `id` and `meta.versionId`/`meta.lastUpdated`, with `resourceType`, `id` and `meta` first.
fn canonical(resource: Value, id: &str, version: i64, last_updated: i64) -> Result<(String, Value)> {
    let Value::Object(mut obj) = resource else {
        return Err(StoreError::BadInput("a resource must be a JSON object".into()));
    };
    let resource_type = obj.shift_remove("resourceType").unwrap_or(Value::Null);
    obj.shift_remove("id");
    let mut meta = match obj.shift_remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.shift_remove("versionId");
    meta.shift_remove("lastUpdated");
    let mut new_meta = Map::new();
    new_meta.insert("versionId".into(), Value::String(version.to_string()));
    new_meta.insert("lastUpdated".into(), Value::String(format_instant(from_unix_ms(last_updated))));
    new_meta.extend(meta);
    let mut out = Map::with_capacity(obj.len() + 3);
    out.insert("resourceType".into(), resource_type);
    out.insert("id".into(), Value::String(id.to_string()));
    out.insert("meta".into(), Value::Object(new_meta));
    out.extend(obj);
    let value = Value::Object(out);
    let json = serde_json::to_string(&value).map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok((json, value))
}

fn check(precondition: Precondition, current: Option<&StoredResource>) -> Result<()> {
    match (precondition, current) {
        (Precondition::None, _) => Ok(()),
        (Precondition::Version(v), Some(c)) if !c.deleted && c.version == v => Ok(()),
        (Precondition::Version(v), Some(c)) if !c.deleted => {
            Err(StoreError::Conflict(format!("expected version {v}, but the current version is {}", c.version)))
        }
        (Precondition::Version(v), _) => Err(StoreError::Conflict(format!("expected version {v}, but the resource does not exist"))),
        (Precondition::Absent, Some(c)) if !c.deleted => Err(StoreError::Conflict(format!("{}/{} already exists", c.resource_type, c.id))),
        (Precondition::Absent, _) => Ok(()),
    }
}

pub(crate) fn put(conn: &Connection, resource: Value, precondition: Precondition, now: i64, base: Option<&str>) -> Result<Written> {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| StoreError::BadInput("resourceType is missing".into()))?
        .to_string();
    let id = resource.get("id").and_then(Value::as_str).ok_or_else(|| StoreError::BadInput("id is missing".into()))?.to_string();
    let current = read_current(conn, &resource_type, &id)?;
    check(precondition, current.as_ref())?;
    let version = current.as_ref().map_or(1, |c| c.version + 1);
    // lastUpdated never goes backwards for one resource, even if the clock does.
    let last_updated = current.as_ref().map_or(now, |c| now.max(c.last_updated + 1));
    let (json, value) = canonical(resource, &id, version, last_updated)?;
    let rows = extract(&resource_type, &value, base).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let key = match &current {
        Some(c) => {
            archive(conn, c)?;
            conn.prepare_cached("UPDATE resources SET version = ?1, last_updated = ?2, deleted = 0, content = ?3 WHERE rid = ?4")?
                .execute(params![version, last_updated, json, c.key])?;
            clear_index(conn, c.key)?;
            c.key
        }
        None => {
            conn.prepare_cached("INSERT INTO resources (res_type, id, version, last_updated, deleted, content) VALUES (?1, ?2, ?3, ?4, 0, ?5)")?
                .execute(params![resource_type, id, version, last_updated, json])?;
            conn.last_insert_rowid()
        }
    };
    write_index(conn, key, &rows)?;
    let created = current.as_ref().is_none_or(|c| c.deleted);
    Ok(Written { resource: StoredResource { key, resource_type, id, version, last_updated, deleted: false, json }, created })
}

pub(crate) fn delete(conn: &Connection, resource_type: &str, id: &str, precondition: Precondition, now: i64) -> Result<Option<StoredResource>> {
    let current = read_current(conn, resource_type, id)?;
    check(precondition, current.as_ref())?;
    let Some(c) = current.filter(|c| !c.deleted) else { return Ok(None) };
    archive(conn, &c)?;
    let version = c.version + 1;
    let last_updated = now.max(c.last_updated + 1);
    conn.prepare_cached("UPDATE resources SET version = ?1, last_updated = ?2, deleted = 1, content = '' WHERE rid = ?3")?
        .execute(params![version, last_updated, c.key])?;
    clear_index(conn, c.key)?;
    Ok(Some(StoredResource { version, last_updated, deleted: true, json: String::new(), ..c }))
}

fn archive(conn: &Connection, c: &StoredResource) -> Result<()> {
    conn.prepare_cached("INSERT INTO resource_history (rid, version, last_updated, deleted, content) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![c.key, c.version, c.last_updated, c.deleted as i64, c.json])?;
    Ok(())
}

fn clear_index(conn: &Connection, key: i64) -> Result<()> {
    for table in INDEX_TABLES {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE rid = ?1"))?.execute([key])?;
    }
    Ok(())
}

fn write_index(conn: &Connection, key: i64, rows: &IndexRows) -> Result<()> {
    if !rows.strings.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO sp_string (rid, p, norm, exact) VALUES (?1, ?2, ?3, ?4)")?;
        for r in &rows.strings {
            stmt.execute(params![key, r.key, r.norm, r.exact])?;
        }
    }
    if !rows.tokens.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO sp_token (rid, p, system, code, text) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for r in &rows.tokens {
            stmt.execute(params![key, r.key, r.system, r.code, r.text])?;
        }
    }
    if !rows.references.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO sp_reference (rid, p, target_type, target_id, url) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for r in &rows.references {
            stmt.execute(params![key, r.key, r.target_type, r.target_id, r.url])?;
        }
    }
    if !rows.dates.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO sp_date (rid, p, lo, hi) VALUES (?1, ?2, ?3, ?4)")?;
        for r in &rows.dates {
            stmt.execute(params![key, r.key, r.lo, r.hi])?;
        }
    }
    if !rows.quantities.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO sp_quantity (rid, p, value, system, code, unit) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
        for r in &rows.quantities {
            stmt.execute(params![key, r.key, r.value, r.system, r.code, r.unit])?;
        }
    }
    if !rows.numbers.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO sp_number (rid, p, value) VALUES (?1, ?2, ?3)")?;
        for r in &rows.numbers {
            stmt.execute(params![key, r.key, r.value])?;
        }
    }
    if !rows.patient_compartments.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO compartment (rid, patient_id) VALUES (?1, ?2)")?;
        for p in &rows.patient_compartments {
            stmt.execute(params![key, p])?;
        }
    }
    Ok(())
}
