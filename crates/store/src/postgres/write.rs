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

/// Writes the pending index rows.
pub(crate) async fn flush(conn: &mut PgConnection, batch: &mut IndexBatch) -> Result<()> {
    if batch.rows.is_empty() {
        return Ok(());
    }
    let pending = std::mem::take(&mut batch.rows);
    macro_rules! insert {
        ($table:literal, $cols:literal, $field:ident, |$b:ident, $key:ident, $seq:ident, $r:ident| $bind:block) => {{
            let all: Vec<(i64, usize, _)> = pending.iter().flat_map(|(k, rows)| rows.$field.iter().enumerate().map(move |(seq, r)| (*k, seq, r))).collect();
            for chunk in all.chunks(CHUNK) {
                let mut q = QueryBuilder::<Postgres>::new(concat!("INSERT INTO ", $table, " ", $cols, " "));
                q.push_values(chunk, |mut $b, ($key, $seq, $r)| $bind);
                q.build().execute(&mut *conn).await?;
            }
        }};
    }
    insert!("sp_string", "(rid, p, seq, norm, exact)", strings, |b, key, seq, r| {
        b.push_bind(*key).push_bind(r.key).push_bind(*seq as i64).push_bind(r.norm.clone()).push_bind(r.exact.clone());
    });
    insert!("sp_token", "(rid, p, seq, system, code, text)", tokens, |b, key, seq, r| {
        b.push_bind(*key).push_bind(r.key).push_bind(*seq as i64).push_bind(r.system.clone()).push_bind(r.code.clone()).push_bind(r.text.clone());
    });
    insert!("sp_reference", "(rid, p, seq, target_type, target_id, url)", references, |b, key, seq, r| {
        b.push_bind(*key).push_bind(r.key).push_bind(*seq as i64).push_bind(r.target_type.clone()).push_bind(r.target_id.clone()).push_bind(r.url.clone());
    });
    insert!("sp_date", "(rid, p, seq, lo, hi)", dates, |b, key, seq, r| {
        b.push_bind(*key).push_bind(r.key).push_bind(*seq as i64).push_bind(r.lo).push_bind(r.hi);
    });
    insert!("sp_quantity", "(rid, p, seq, value, system, code, unit)", quantities, |b, key, seq, r| {
        b.push_bind(*key).push_bind(r.key).push_bind(*seq as i64).push_bind(r.value).push_bind(r.system.clone()).push_bind(r.code.clone()).push_bind(r.unit.clone());
    });
    insert!("sp_number", "(rid, p, seq, value)", numbers, |b, key, seq, r| {
        b.push_bind(*key).push_bind(r.key).push_bind(*seq as i64).push_bind(r.value);
    });
    let patient_tokens: Vec<(i64, &str, usize, &fhir::extract::TokenRow)> = pending.iter().flat_map(|(k, rows)| rows.patient_tokens().map(move |(p, seq, t)| (*k, p, seq, t))).collect();
    for chunk in patient_tokens.chunks(CHUNK) {
        let mut q = QueryBuilder::<Postgres>::new("INSERT INTO sp_token_patient (patient_id, p, code, rid, seq, system) ");
        q.push_values(chunk, |mut b, (key, patient, seq, t)| {
            b.push_bind(*patient).push_bind(t.key).push_bind(t.code.as_deref()).push_bind(*key).push_bind(*seq as i64).push_bind(t.system.as_deref());
        });
        q.build().execute(&mut *conn).await?;
    }
    let compartments: Vec<(i64, &String)> = pending.iter().flat_map(|(k, rows)| rows.patient_compartments.iter().map(move |p| (*k, p))).collect();
    for chunk in compartments.chunks(CHUNK) {
        let mut q = QueryBuilder::<Postgres>::new("INSERT INTO compartment (rid, patient_id) ");
        q.push_values(chunk, |mut b, (key, p)| {
            b.push_bind(*key).push_bind((*p).clone());
        });
        q.push(" ON CONFLICT DO NOTHING");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

pub(crate) async fn put(conn: &mut PgConnection, batch: &mut IndexBatch, prepared: &Prepared, precondition: Precondition, now: i64) -> Result<Written> {
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
            let resource = StoredResource { key, resource_type: prepared.resource_type.clone(), id: prepared.id.clone(), version: 1, last_updated: now, deleted: false, json };
            return Ok(Written { resource, created: true });
        }
    }
    let current = read_current(&mut *conn, &prepared.resource_type, &prepared.id, true).await?;
    crate::check_precondition(precondition, current.as_ref())?;
    let version = current.as_ref().map_or(1, |c| c.version + 1);
    let last_updated = current.as_ref().map_or(now, |c| now.max(c.last_updated + 1));
    let json = prepared.render(version, last_updated);
    let key = match &current {
        Some(c) => {
            archive(conn, c).await?;
            sqlx::query("UPDATE resources SET version = $1, last_updated = $2, deleted = 0, content = $3 WHERE rid = $4").bind(version).bind(last_updated).bind(&json).bind(c.key).execute(&mut *conn).await?;
            clear_index(conn, batch, c.key).await?;
            c.key
        }
        None => {
            sqlx::query_scalar("INSERT INTO resources (res_type, id, version, last_updated, deleted, content) VALUES ($1, $2, $3, $4, 0, $5) RETURNING rid")
                .bind(&prepared.resource_type)
                .bind(&prepared.id)
                .bind(version)
                .bind(last_updated)
                .bind(&json)
                .fetch_one(&mut *conn)
                .await?
        }
    };
    batch.push(key, &prepared.rows);
    let created = current.as_ref().is_none_or(|c| c.deleted);
    let (resource_type, id) = (prepared.resource_type.clone(), prepared.id.clone());
    Ok(Written { resource: StoredResource { key, resource_type, id, version, last_updated, deleted: false, json }, created })
}

/// Writes in order; runs of creates of distinct resources go in one multi-row `INSERT … ON CONFLICT DO
/// NOTHING RETURNING`, and whatever it did not insert (the resource existed) takes the single-write path.
pub(crate) async fn put_many(conn: &mut PgConnection, batch: &mut IndexBatch, writes: &[(Prepared, Precondition)], now: i64) -> Result<Vec<Written>> {
    let mut out: Vec<Option<Written>> = vec![None; writes.len()];
    let mut i = 0;
    while i < writes.len() {
        if writes[i].1 != Precondition::Absent {
            out[i] = Some(put(conn, batch, &writes[i].0, writes[i].1, now).await?);
            i += 1;
            continue;
        }
        // A run of creates, each resource at most once.
        let mut seen = std::collections::HashSet::new();
        let mut j = i;
        while j < writes.len() && j - i < 1000 && writes[j].1 == Precondition::Absent && seen.insert((writes[j].0.resource_type.as_str(), writes[j].0.id.as_str())) {
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
                    Written { resource: StoredResource { key, resource_type: p.resource_type.clone(), id: p.id.clone(), version: 1, last_updated: now, deleted: false, json }, created: true }
                }
                None => put(conn, batch, p, *pre, now).await?,
            });
        }
        i = j;
    }
    Ok(out.into_iter().map(|w| w.expect("every write done")).collect())
}

pub(crate) async fn delete(conn: &mut PgConnection, batch: &mut IndexBatch, resource_type: &str, id: &str, precondition: Precondition, now: i64) -> Result<Option<StoredResource>> {
    let current = read_current(&mut *conn, resource_type, id, true).await?;
    crate::check_precondition(precondition, current.as_ref())?;
    let Some(c) = current.filter(|c| !c.deleted) else { return Ok(None) };
    archive(conn, &c).await?;
    let version = c.version + 1;
    let last_updated = now.max(c.last_updated + 1);
    sqlx::query("UPDATE resources SET version = $1, last_updated = $2, deleted = 1, content = '' WHERE rid = $3").bind(version).bind(last_updated).bind(c.key).execute(&mut *conn).await?;
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
/// are found through the patients they were written for (the statement's sub-statements all see the rows
/// as they were before it).
async fn clear_index(conn: &mut PgConnection, batch: &mut IndexBatch, key: i64) -> Result<()> {
    batch.forget(key);
    sqlx::query(
        "WITH a AS (DELETE FROM sp_string WHERE rid = $1), b AS (DELETE FROM sp_token WHERE rid = $1), c AS (DELETE FROM sp_reference WHERE rid = $1),
              d AS (DELETE FROM sp_date WHERE rid = $1), e AS (DELETE FROM sp_quantity WHERE rid = $1), f AS (DELETE FROM sp_number WHERE rid = $1),
              g AS (DELETE FROM sp_token_patient WHERE rid = $1 AND patient_id IN (SELECT patient_id FROM compartment WHERE rid = $1
                    UNION SELECT target_id FROM sp_reference WHERE rid = $1 AND target_type = 'Patient' AND url IS NOT NULL AND target_id IS NOT NULL))
         DELETE FROM compartment WHERE rid = $1",
    )
    .bind(key)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
