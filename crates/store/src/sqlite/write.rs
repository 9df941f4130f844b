//! Writes: new versions, history and search-index rows, all on the transaction's connection.

use super::read_current;
use crate::{Precondition, Prepared, Result, StoredResource, Written};
use fhir::extract::IndexRows;
use rusqlite::{Connection, params};

const INDEX_TABLES: &[&str] = &["sp_string", "sp_token", "sp_reference", "sp_date", "sp_quantity", "sp_number", "compartment"];

pub(crate) fn put(conn: &Connection, prepared: &Prepared, precondition: Precondition, now: i64) -> Result<Written> {
    if matches!(precondition, Precondition::Absent | Precondition::None | Precondition::IfChanged) {
        // Creates (fresh ids), and an import's first `PUT Type/id`, almost never meet an existing row: insert
        // straight away and let the unique key tell, instead of looking the id up first.
        let json = prepared.render(1, now);
        let inserted = conn
            .prepare_cached("INSERT INTO resources (res_type, id, version, last_updated, deleted, content) VALUES (?1, ?2, 1, ?3, 0, ?4) ON CONFLICT (res_type, id) DO NOTHING")?
            .execute(params![prepared.resource_type, prepared.id, now, json])?;
        if inserted == 1 {
            let key = conn.last_insert_rowid();
            write_index(conn, key, &prepared.rows)?;
            let resource = StoredResource {
                key,
                resource_type: prepared.resource_type.clone(),
                id: prepared.id.clone(),
                version: 1,
                last_updated: now,
                deleted: false,
                json,
            };
            return Ok(Written { resource, created: true, unchanged: false });
        }
    }
    let current = read_current(conn, &prepared.resource_type, &prepared.id)?;
    crate::check_precondition(precondition, current.as_ref())?;
    if precondition == Precondition::IfChanged && crate::same_as_current(prepared, current.as_ref()) {
        return Ok(Written { resource: current.expect("same as the current version"), created: false, unchanged: true });
    }
    let version = current.as_ref().map_or(1, |c| c.version + 1);
    // lastUpdated never goes backwards for one resource, even if the clock does.
    let last_updated = current.as_ref().map_or(now, |c| now.max(c.last_updated + 1));
    let json = prepared.render(version, last_updated);
    let key = match &current {
        Some(c) => {
            archive(conn, c)?;
            conn.prepare_cached("UPDATE resources SET version = ?1, last_updated = ?2, deleted = 0, content = ?3 WHERE rid = ?4")?.execute(params![
                version,
                last_updated,
                json,
                c.key
            ])?;
            clear_index(conn, c.key)?;
            c.key
        }
        None => {
            conn.prepare_cached("INSERT INTO resources (res_type, id, version, last_updated, deleted, content) VALUES (?1, ?2, ?3, ?4, 0, ?5)")?
                .execute(params![prepared.resource_type, prepared.id, version, last_updated, json])?;
            conn.last_insert_rowid()
        }
    };
    write_index(conn, key, &prepared.rows)?;
    let created = current.as_ref().is_none_or(|c| c.deleted);
    let (resource_type, id) = (prepared.resource_type.clone(), prepared.id.clone());
    Ok(Written { resource: StoredResource { key, resource_type, id, version, last_updated, deleted: false, json }, created, unchanged: false })
}

pub(crate) fn delete(conn: &Connection, resource_type: &str, id: &str, precondition: Precondition, now: i64) -> Result<Option<StoredResource>> {
    let current = read_current(conn, resource_type, id)?;
    crate::check_precondition(precondition, current.as_ref())?;
    let Some(c) = current.filter(|c| !c.deleted) else { return Ok(None) };
    archive(conn, &c)?;
    let version = c.version + 1;
    let last_updated = now.max(c.last_updated + 1);
    conn.prepare_cached("UPDATE resources SET version = ?1, last_updated = ?2, deleted = 1, content = '' WHERE rid = ?3")?.execute(params![
        version,
        last_updated,
        c.key
    ])?;
    clear_index(conn, c.key)?;
    Ok(Some(StoredResource { version, last_updated, deleted: true, json: String::new(), ..c }))
}

fn archive(conn: &Connection, c: &StoredResource) -> Result<()> {
    conn.prepare_cached("INSERT INTO resource_history (rid, version, last_updated, deleted, content) VALUES (?1, ?2, ?3, ?4, ?5)")?.execute(params![
        c.key,
        c.version,
        c.last_updated,
        c.deleted as i64,
        c.json
    ])?;
    Ok(())
}

/// Rebuilds the index rows of every live resource of `resource_type` from its stored content; returns how
/// many resources were indexed.
pub(crate) fn reindex_type(conn: &Connection, resource_type: &str, base_url: Option<&str>) -> Result<usize> {
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT rid, content FROM resources WHERE res_type = ?1 AND deleted = 0")?
        .query_map([resource_type], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (key, json) in &rows {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| crate::StoreError::Backend(format!("{resource_type} {key}: {e}")))?;
        let prepared = crate::prepare(value, base_url)?;
        clear_index(conn, *key)?;
        write_index(conn, *key, &prepared.rows)?;
    }
    Ok(rows.len())
}

fn clear_index(conn: &Connection, key: i64) -> Result<()> {
    // First, while the compartment, reference and token rows that lead to them are there: the per-patient
    // rows are found by their whole key prefix (patient, parameter, code, rid).
    conn.prepare_cached(
        "DELETE FROM sp_token_patient WHERE (patient_id, p, code, rid) IN (SELECT l.patient_id, t.p, t.code, t.rid FROM
         (SELECT patient_id FROM compartment WHERE rid = ?1 UNION SELECT target_id FROM sp_reference WHERE rid = ?1 AND target_type = 'Patient' AND target_id IS NOT NULL) l
         CROSS JOIN sp_token t WHERE t.rid = ?1 AND t.code IS NOT NULL)",
    )?
    .execute([key])?;
    for table in INDEX_TABLES {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE rid = ?1"))?.execute([key])?;
    }
    Ok(())
}

fn write_index(conn: &Connection, key: i64, rows: &IndexRows) -> Result<()> {
    if !rows.strings.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO sp_string (rid, p, seq, norm, exact) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for (seq, r) in rows.strings.iter().enumerate() {
            stmt.execute(params![key, r.key, seq as i64, r.norm, r.exact])?;
        }
    }
    if !rows.tokens.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO sp_token (rid, p, seq, system, code, text) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
        for (seq, r) in rows.tokens.iter().enumerate() {
            stmt.execute(params![key, r.key, seq as i64, r.system, r.code, r.text])?;
        }
    }
    if !rows.references.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO sp_reference (rid, p, seq, target_type, target_id, url) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
        for (seq, r) in rows.references.iter().enumerate() {
            stmt.execute(params![key, r.key, seq as i64, r.target_type, r.target_id, r.url])?;
        }
    }
    if !rows.dates.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO sp_date (rid, p, seq, lo, hi) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for (seq, r) in rows.dates.iter().enumerate() {
            stmt.execute(params![key, r.key, seq as i64, r.lo, r.hi])?;
        }
    }
    if !rows.quantities.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO sp_quantity (rid, p, seq, value, system, code, unit) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
        for (seq, r) in rows.quantities.iter().enumerate() {
            stmt.execute(params![key, r.key, seq as i64, r.value, r.system, r.code, r.unit])?;
        }
    }
    if !rows.numbers.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO sp_number (rid, p, seq, value) VALUES (?1, ?2, ?3, ?4)")?;
        for (seq, r) in rows.numbers.iter().enumerate() {
            stmt.execute(params![key, r.key, seq as i64, r.value])?;
        }
    }
    let patient_tokens = rows.patient_tokens();
    if !patient_tokens.is_empty() {
        let mut stmt = conn.prepare_cached("INSERT INTO sp_token_patient (patient_id, p, code, rid, seq, system, in_compartment, via, date_lo, date_hi) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)")?;
        for r in patient_tokens {
            let (date_lo, date_hi) = (r.date.map(|d| d.0), r.date.map(|d| d.1));
            stmt.execute(params![r.patient, r.token.key, r.token.code, key, r.seq as i64, r.token.system, r.in_compartment as i64, r.via, date_lo, date_hi])?;
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
