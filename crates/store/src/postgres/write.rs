//! Writes on PostgreSQL: new versions, history and search-index rows in the caller's transaction. The
//! current row is locked (`FOR UPDATE`) before it is replaced, so concurrent writers on several nodes are
//! serialised and `If-Match` cannot be lost.
//!
//! Index rows are collected in an [`IndexBatch`] and written with one multi-row `INSERT` per table when the
//! transaction next reads or commits: a round trip per table per transaction instead of several per
//! resource, which is what bulk imports spend their time on.

use super::read_current;
use crate::{Precondition, Prepared, Result, StoredResource, Written};
use fhir::extract::IndexRows;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};

/// Index rows waiting to be written, by resource key.
#[derive(Default)]
pub(crate) struct IndexBatch {
    rows: Vec<(i64, IndexRows)>,
}

impl IndexBatch {
    fn push(&mut self, key: i64, rows: &IndexRows) {
        self.rows.push((key, rows.clone()));
    }

    /// Forgets the pending rows of a resource whose index is being replaced.
    fn forget(&mut self, key: i64) {
        self.rows.retain(|(k, _)| *k != key);
    }
}

/// Rows per multi-row INSERT (PostgreSQL allows 65,535 bound parameters per statement).
const CHUNK: usize = 4000;
/// From this many pending rows on, a table's rows go in by `COPY … FROM STDIN` (one stream, nothing to
/// parse or plan per row) rather than by multi-row INSERTs. COPY costs one more round trip, which only
/// pays off for bulk writes (imports, large transaction Bundles).
const COPY_FROM: usize = 256;

/// One field of a row, for either way of writing it.
enum Field<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Real(f64),
    Text(Option<&'a str>),
    Owned(String),
}

/// Appends `fields` as one row of COPY's text format: tab-separated, `\N` for NULL, and backslash,
/// tab, newline and carriage return escaped.
fn copy_row(buf: &mut Vec<u8>, fields: &[Field]) {
    use std::io::Write;
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            buf.push(b'\t');
        }
        match f {
            Field::Int(v) | Field::OptInt(Some(v)) => {
                let _ = write!(buf, "{v}");
            }
            Field::OptInt(None) => buf.extend_from_slice(b"\\N"),
            Field::Real(v) => {
                let _ = write!(buf, "{v:?}");
            }
            Field::Text(None) => buf.extend_from_slice(b"\\N"),
            Field::Text(Some(s)) => copy_text(buf, s),
            Field::Owned(s) => copy_text(buf, s),
        }
    }
    buf.push(b'\n');
}

fn copy_text(buf: &mut Vec<u8>, s: &str) {
    for &c in s.as_bytes() {
        match c {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            c => buf.push(c),
        }
    }
}

/// Writes `rows` (each as its fields) into `table (columns)`: by COPY when there are many, else by
/// multi-row INSERTs. `suffix` (`ON CONFLICT DO NOTHING`) is only possible with INSERT: a table that
/// needs it never takes the COPY path.
async fn write_rows(conn: &mut PgConnection, table: &str, columns: &str, rows: &[Vec<Field<'_>>], suffix: Option<&str>) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    if rows.len() >= COPY_FROM && suffix.is_none() {
        let mut buf = Vec::with_capacity(rows.len() * 64);
        for r in rows {
            copy_row(&mut buf, r);
        }
        let mut copy = conn.copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN")).await?;
        copy.send(buf).await?;
        copy.finish().await?;
        return Ok(());
    }
    for chunk in rows.chunks(CHUNK) {
        let mut q = QueryBuilder::<Postgres>::new(format!("INSERT INTO {table} ({columns}) "));
        q.push_values(chunk, |mut b, fields| {
            for f in fields {
                match f {
                    Field::Int(v) => b.push_bind(*v),
                    Field::OptInt(v) => b.push_bind(*v),
                    Field::Real(v) => b.push_bind(*v),
                    Field::Text(v) => b.push_bind(v.map(str::to_string)),
                    Field::Owned(v) => b.push_bind(v.clone()),
                };
            }
        });
        if let Some(suffix) = suffix {
            q.push(" ").push(suffix);
        }
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Rebuilds the index rows of every live resource of `resource_type` from its stored content; returns how
/// many resources were indexed.
pub(crate) async fn reindex_type(conn: &mut PgConnection, resource_type: &str, base_url: Option<&str>) -> Result<usize> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT rid, content FROM resources WHERE res_type = $1 AND deleted = 0").bind(resource_type).fetch_all(&mut *conn).await?;
    let mut batch = IndexBatch::default();
    for (key, json) in &rows {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| crate::StoreError::Backend(format!("{resource_type} {key}: {e}")))?;
        let prepared = crate::prepare(value, base_url)?;
        clear_index(conn, &mut batch, *key).await?;
        batch.push(*key, &prepared.rows);
        if batch.rows.len() >= 1000 {
            flush(conn, &mut batch).await?;
        }
    }
    flush(conn, &mut batch).await?;
    Ok(rows.len())
}

/// Writes the pending index rows.
pub(crate) async fn flush(conn: &mut PgConnection, batch: &mut IndexBatch) -> Result<()> {
    if batch.rows.is_empty() {
        return Ok(());
    }
    use Field::{Int, OptInt, Owned, Real, Text};
    let pending = std::mem::take(&mut batch.rows);
    let mut strings = Vec::new();
    let mut tokens = Vec::new();
    let mut references = Vec::new();
    let mut dates = Vec::new();
    let mut quantities = Vec::new();
    let mut numbers = Vec::new();
    let mut patient_tokens = Vec::new();
    let mut compartments = Vec::new();
    for (k, rows) in &pending {
        let k = *k;
        for (seq, r) in rows.strings.iter().enumerate() {
            strings.push(vec![Int(k), Text(Some(r.key)), Int(seq as i64), Text(Some(&r.norm)), Text(Some(&r.exact))]);
        }
        for (seq, r) in rows.tokens.iter().enumerate() {
            tokens.push(vec![Int(k), Text(Some(r.key)), Int(seq as i64), Text(r.system.as_deref()), Text(r.code.as_deref()), Text(r.text.as_deref())]);
        }
        for (seq, r) in rows.references.iter().enumerate() {
            references.push(vec![
                Int(k),
                Text(Some(r.key)),
                Int(seq as i64),
                Text(r.target_type.as_deref()),
                Text(r.target_id.as_deref()),
                Text(r.url.as_deref()),
            ]);
        }
        for (seq, r) in rows.dates.iter().enumerate() {
            dates.push(vec![Int(k), Text(Some(r.key)), Int(seq as i64), Int(r.lo), Int(r.hi)]);
        }
        for (seq, r) in rows.quantities.iter().enumerate() {
            quantities.push(vec![
                Int(k),
                Text(Some(r.key)),
                Int(seq as i64),
                Real(r.value),
                Text(r.system.as_deref()),
                Text(r.code.as_deref()),
                Text(r.unit.as_deref()),
            ]);
        }
        for (seq, r) in rows.numbers.iter().enumerate() {
            numbers.push(vec![Int(k), Text(Some(r.key)), Int(seq as i64), Real(r.value)]);
        }
        for r in rows.patient_tokens() {
            let t = r.token;
            patient_tokens.push(vec![
                Text(Some(r.patient)),
                Text(Some(t.key)),
                Text(t.code.as_deref()),
                Int(k),
                Int(r.seq as i64),
                Text(t.system.as_deref()),
                Int(r.in_compartment as i64),
                Owned(r.via),
                OptInt(r.date.map(|d| d.0)),
                OptInt(r.date.map(|d| d.1)),
            ]);
        }
        for p in &rows.patient_compartments {
            compartments.push(vec![Int(k), Text(Some(p))]);
        }
    }
    write_rows(conn, "sp_string", "rid, p, seq, norm, exact", &strings, None).await?;
    write_rows(conn, "sp_token", "rid, p, seq, system, code, text", &tokens, None).await?;
    write_rows(conn, "sp_reference", "rid, p, seq, target_type, target_id, url", &references, None).await?;
    write_rows(conn, "sp_date", "rid, p, seq, lo, hi", &dates, None).await?;
    write_rows(conn, "sp_quantity", "rid, p, seq, value, system, code, unit", &quantities, None).await?;
    write_rows(conn, "sp_number", "rid, p, seq, value", &numbers, None).await?;
    write_rows(conn, "sp_token_patient", "patient_id, p, code, rid, seq, system, in_compartment, via, date_lo, date_hi", &patient_tokens, None).await?;
    // A resource's compartment ids are distinct (see fhir::extract), and its old rows are cleared before
    // new ones are written, so COPY could not collide either; ON CONFLICT stays as a guard.
    write_rows(conn, "compartment", "rid, patient_id", &compartments, Some("ON CONFLICT DO NOTHING")).await?;
    Ok(())
}

pub(crate) async fn put(conn: &mut PgConnection, batch: &mut IndexBatch, prepared: &Prepared, precondition: Precondition, now: i64) -> Result<Written> {
    if precondition == Precondition::IfChanged {
        // Unchanged content is found without locking the row, so importing the same files again from
        // several processes neither waits nor deadlocks on shared resources.
        let current = read_current(&mut *conn, &prepared.resource_type, &prepared.id, false).await?;
        if crate::same_as_current(prepared, current.as_ref()) {
            return Ok(Written { resource: current.expect("same as the current version"), created: false, unchanged: true });
        }
    }
    if precondition == Precondition::Absent {
        let json = prepared.render(1, now);
        let key: Option<i64> = sqlx::query_scalar("INSERT INTO resources (res_type, id, version, last_updated, deleted, content) VALUES ($1, $2, 1, $3, 0, $4) ON CONFLICT (res_type, id) DO NOTHING RETURNING rid")
            .bind(&prepared.resource_type)
            .bind(&prepared.id)
            .bind(now)
            .bind(&json)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(key) = key {
            batch.push(key, &prepared.rows);
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
    // An import's create that races another transaction's create of the same id waits for it (ON
    // CONFLICT), then finds the row on a second look (a new snapshot: READ COMMITTED) and updates it or
    // leaves it unchanged, so two imports of one id never fail on the unique key.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let current = read_current(&mut *conn, &prepared.resource_type, &prepared.id, true).await?;
        crate::check_precondition(precondition, current.as_ref())?;
        if precondition == Precondition::IfChanged && crate::same_as_current(prepared, current.as_ref()) {
            return Ok(Written { resource: current.expect("same as the current version"), created: false, unchanged: true });
        }
        let version = current.as_ref().map_or(1, |c| c.version + 1);
        let last_updated = current.as_ref().map_or(now, |c| now.max(c.last_updated + 1));
        let json = prepared.render(version, last_updated);
        let key = match &current {
            Some(c) => {
                archive(conn, c).await?;
                sqlx::query("UPDATE resources SET version = $1, last_updated = $2, deleted = 0, content = $3 WHERE rid = $4")
                    .bind(version)
                    .bind(last_updated)
                    .bind(&json)
                    .bind(c.key)
                    .execute(&mut *conn)
                    .await?;
                clear_index(conn, batch, c.key).await?;
                c.key
            }
            None => {
                let inserted: Option<i64> = sqlx::query_scalar("INSERT INTO resources (res_type, id, version, last_updated, deleted, content) VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (res_type, id) DO NOTHING RETURNING rid")
                    .bind(&prepared.resource_type)
                    .bind(&prepared.id)
                    .bind(version)
                    .bind(last_updated)
                    .bind(&json)
                    .fetch_optional(&mut *conn)
                    .await?;
                match inserted {
                    Some(key) => key,
                    // Only an import (IfChanged, full access) may turn into an update of a record it did not
                    // see: a REST write was judged against the record as it stood (none), so it must not
                    // silently update what another client created meanwhile; it gets a 409 to retry.
                    None if attempts < 3 && precondition == Precondition::IfChanged => continue,
                    None => return Err(crate::StoreError::Conflict(format!("{}/{} was created by a concurrent write", prepared.resource_type, prepared.id))),
                }
            }
        };
        batch.push(key, &prepared.rows);
        let created = current.as_ref().is_none_or(|c| c.deleted);
        let (resource_type, id) = (prepared.resource_type.clone(), prepared.id.clone());
        return Ok(Written { resource: StoredResource { key, resource_type, id, version, last_updated, deleted: false, json }, created, unchanged: false });
    }
}

/// Writes in order; runs of creates of distinct resources go in one multi-row `INSERT … ON CONFLICT DO
/// NOTHING RETURNING`, and whatever it did not insert (the resource existed) takes the single-write path.
pub(crate) async fn put_many(conn: &mut PgConnection, batch: &mut IndexBatch, writes: &[(Prepared, Precondition)], now: i64) -> Result<Vec<Written>> {
    let mut out: Vec<Option<Written>> = vec![None; writes.len()];
    let mut i = 0;
    while i < writes.len() {
        // Creates, and updates without a precondition (an import's `PUT Type/id`), are inserted in runs; the
        // ones whose row exists already are written one by one.
        let batchable = |pre: Precondition| matches!(pre, Precondition::Absent | Precondition::None | Precondition::IfChanged);
        if !batchable(writes[i].1) {
            out[i] = Some(put(conn, batch, &writes[i].0, writes[i].1, now).await?);
            i += 1;
            continue;
        }
        // A run of them, each resource at most once.
        let mut seen = std::collections::HashSet::new();
        let mut j = i;
        while j < writes.len() && j - i < 1000 && batchable(writes[j].1) && seen.insert((writes[j].0.resource_type.as_str(), writes[j].0.id.as_str())) {
            j += 1;
        }
        let run = &writes[i..j];
        let rendered: Vec<String> = run.iter().map(|(p, _)| p.render(1, now)).collect();
        let mut q = QueryBuilder::<Postgres>::new("INSERT INTO resources (res_type, id, version, last_updated, deleted, content) ");
        q.push_values(run.iter().zip(&rendered), |mut b, ((p, _), json)| {
            b.push_bind(&p.resource_type).push_bind(&p.id).push_bind(1i64).push_bind(now).push_bind(0i64).push_bind(json);
        });
        q.push(" ON CONFLICT (res_type, id) DO NOTHING RETURNING rid, res_type, id");
        let rows = q.build().fetch_all(&mut *conn).await?;
        let mut keys: std::collections::HashMap<(String, String), i64> = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            keys.insert((r.try_get(1)?, r.try_get(2)?), r.try_get(0)?);
        }
        for (k, ((p, pre), json)) in run.iter().zip(rendered).enumerate() {
            out[i + k] = Some(match keys.get(&(p.resource_type.clone(), p.id.clone())) {
                Some(&key) => {
                    batch.push(key, &p.rows);
                    Written {
                        resource: StoredResource {
                            key,
                            resource_type: p.resource_type.clone(),
                            id: p.id.clone(),
                            version: 1,
                            last_updated: now,
                            deleted: false,
                            json,
                        },
                        created: true,
                        unchanged: false,
                    }
                }
                None => put(conn, batch, p, *pre, now).await?,
            });
        }
        i = j;
    }
    Ok(out.into_iter().map(|w| w.expect("every write done")).collect())
}

pub(crate) async fn delete(
    conn: &mut PgConnection,
    batch: &mut IndexBatch,
    resource_type: &str,
    id: &str,
    precondition: Precondition,
    now: i64,
) -> Result<Option<StoredResource>> {
    let current = read_current(&mut *conn, resource_type, id, true).await?;
    crate::check_precondition(precondition, current.as_ref())?;
    let Some(c) = current.filter(|c| !c.deleted) else { return Ok(None) };
    archive(conn, &c).await?;
    let version = c.version + 1;
    let last_updated = now.max(c.last_updated + 1);
    sqlx::query("UPDATE resources SET version = $1, last_updated = $2, deleted = 1, content = '' WHERE rid = $3")
        .bind(version)
        .bind(last_updated)
        .bind(c.key)
        .execute(&mut *conn)
        .await?;
    clear_index(conn, batch, c.key).await?;
    Ok(Some(StoredResource { version, last_updated, deleted: true, json: String::new(), ..c }))
}

async fn archive(conn: &mut PgConnection, c: &StoredResource) -> Result<()> {
    sqlx::query("INSERT INTO resource_history (rid, version, last_updated, deleted, content) VALUES ($1, $2, $3, $4, $5)")
        .bind(c.key)
        .bind(c.version)
        .bind(c.last_updated)
        .bind(c.deleted as i64)
        .bind(&c.json)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Drops the index rows of a resource (stored and pending) in one round trip. The per-patient token rows
/// are found by their whole key prefix, from the patients and tokens they were written for (the
/// statement's sub-statements all see the rows as they were before it).
async fn clear_index(conn: &mut PgConnection, batch: &mut IndexBatch, key: i64) -> Result<()> {
    batch.forget(key);
    sqlx::query(
        "WITH a AS (DELETE FROM sp_string WHERE rid = $1), b AS (DELETE FROM sp_token WHERE rid = $1), c AS (DELETE FROM sp_reference WHERE rid = $1),
              d AS (DELETE FROM sp_date WHERE rid = $1), e AS (DELETE FROM sp_quantity WHERE rid = $1), f AS (DELETE FROM sp_number WHERE rid = $1),
              g AS (DELETE FROM sp_token_patient WHERE (patient_id, p, code, rid) IN (SELECT l.patient_id, t.p, t.code, t.rid FROM
                    (SELECT patient_id FROM compartment WHERE rid = $1 UNION SELECT target_id FROM sp_reference WHERE rid = $1 AND target_type = 'Patient' AND target_id IS NOT NULL) l
                    CROSS JOIN sp_token t WHERE t.rid = $1 AND t.code IS NOT NULL))
         DELETE FROM compartment WHERE rid = $1",
    )
    .bind(key)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Field, copy_row};

    #[test]
    fn copy_rows_escape_what_the_text_format_reserves() {
        let mut buf = Vec::new();
        copy_row(
            &mut buf,
            &[Field::Int(-7), Field::Text(Some("a\tb\nc\rd\\e")), Field::Text(None), Field::Text(Some("\\N")), Field::Real(0.1), Field::Real(1e-300)],
        );
        copy_row(&mut buf, &[Field::Text(Some("")), Field::Text(Some("Ünï ✓")), Field::OptInt(None), Field::OptInt(Some(-1))]);
        assert_eq!(String::from_utf8(buf).unwrap(), "-7\ta\\tb\\nc\\rd\\\\e\t\\N\t\\\\N\t0.1\t1e-300\n\tÜnï ✓\t\\N\t-1\n");
    }
}
