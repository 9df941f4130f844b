//! Writes on PostgreSQL: new versions, history and search-index rows in the caller's transaction. The
//! current row is locked (`FOR UPDATE`) before it is replaced, so concurrent writers on several nodes are
//! serialised and `If-Match` cannot be lost.

use super::read_current;
use crate::{Precondition, Prepared, Result, StoredResource, Written};
use fhir::extract::IndexRows;
use sqlx::{PgConnection, Postgres, QueryBuilder};

const INDEX_TABLES: &[&str] = &["sp_string", "sp_token", "sp_reference", "sp_date", "sp_quantity", "sp_number", "compartment"];

pub(crate) async fn put(conn: &mut PgConnection, prepared: &Prepared, precondition: Precondition, now: i64) -> Result<Written> {
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
            write_index(conn, key, &prepared.rows).await?;
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
            clear_index(conn, c.key).await?;
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
    write_index(conn, key, &prepared.rows).await?;
    let created = current.as_ref().is_none_or(|c| c.deleted);
    let (resource_type, id) = (prepared.resource_type.clone(), prepared.id.clone());
    Ok(Written { resource: StoredResource { key, resource_type, id, version, last_updated, deleted: false, json }, created })
}

pub(crate) async fn delete(conn: &mut PgConnection, resource_type: &str, id: &str, precondition: Precondition, now: i64) -> Result<Option<StoredResource>> {
    let current = read_current(&mut *conn, resource_type, id, true).await?;
    crate::check_precondition(precondition, current.as_ref())?;
    let Some(c) = current.filter(|c| !c.deleted) else { return Ok(None) };
    archive(conn, &c).await?;
    let version = c.version + 1;
    let last_updated = now.max(c.last_updated + 1);
    sqlx::query("UPDATE resources SET version = $1, last_updated = $2, deleted = 1, content = '' WHERE rid = $3").bind(version).bind(last_updated).bind(c.key).execute(&mut *conn).await?;
    clear_index(conn, c.key).await?;
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

async fn clear_index(conn: &mut PgConnection, key: i64) -> Result<()> {
    for table in INDEX_TABLES {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE rid = $1"))).bind(key).execute(&mut *conn).await?;
    }
    Ok(())
}

async fn write_index(conn: &mut PgConnection, key: i64, rows: &IndexRows) -> Result<()> {
    if !rows.strings.is_empty() {
        let mut q = QueryBuilder::<Postgres>::new("INSERT INTO sp_string (rid, p, seq, norm, exact) ");
        q.push_values(rows.strings.iter().enumerate(), |mut b, (seq, r)| {
            b.push_bind(key).push_bind(r.key.to_string()).push_bind(seq as i64).push_bind(r.norm.clone()).push_bind(r.exact.clone());
        });
        q.build().execute(&mut *conn).await?;
    }
    if !rows.tokens.is_empty() {
        let mut q = QueryBuilder::<Postgres>::new("INSERT INTO sp_token (rid, p, seq, system, code, text) ");
        q.push_values(rows.tokens.iter().enumerate(), |mut b, (seq, r)| {
            b.push_bind(key).push_bind(r.key.to_string()).push_bind(seq as i64).push_bind(r.system.clone()).push_bind(r.code.clone()).push_bind(r.text.clone());
        });
        q.build().execute(&mut *conn).await?;
    }
    if !rows.references.is_empty() {
        let mut q = QueryBuilder::<Postgres>::new("INSERT INTO sp_reference (rid, p, seq, target_type, target_id, url) ");
        q.push_values(rows.references.iter().enumerate(), |mut b, (seq, r)| {
            b.push_bind(key).push_bind(r.key.to_string()).push_bind(seq as i64).push_bind(r.target_type.clone()).push_bind(r.target_id.clone()).push_bind(r.url.clone());
        });
        q.build().execute(&mut *conn).await?;
    }
    if !rows.dates.is_empty() {
        let mut q = QueryBuilder::<Postgres>::new("INSERT INTO sp_date (rid, p, seq, lo, hi) ");
        q.push_values(rows.dates.iter().enumerate(), |mut b, (seq, r)| {
            b.push_bind(key).push_bind(r.key.to_string()).push_bind(seq as i64).push_bind(r.lo).push_bind(r.hi);
        });
        q.build().execute(&mut *conn).await?;
    }
    if !rows.quantities.is_empty() {
        let mut q = QueryBuilder::<Postgres>::new("INSERT INTO sp_quantity (rid, p, seq, value, system, code, unit) ");
        q.push_values(rows.quantities.iter().enumerate(), |mut b, (seq, r)| {
            b.push_bind(key).push_bind(r.key.to_string()).push_bind(seq as i64).push_bind(r.value).push_bind(r.system.clone()).push_bind(r.code.clone()).push_bind(r.unit.clone());
        });
        q.build().execute(&mut *conn).await?;
    }
    if !rows.numbers.is_empty() {
        let mut q = QueryBuilder::<Postgres>::new("INSERT INTO sp_number (rid, p, seq, value) ");
        q.push_values(rows.numbers.iter().enumerate(), |mut b, (seq, r)| {
            b.push_bind(key).push_bind(r.key.to_string()).push_bind(seq as i64).push_bind(r.value);
        });
        q.build().execute(&mut *conn).await?;
    }
    if !rows.patient_compartments.is_empty() {
        let mut q = QueryBuilder::<Postgres>::new("INSERT INTO compartment (rid, patient_id) ");
        q.push_values(rows.patient_compartments.iter(), |mut b, p| {
            b.push_bind(key).push_bind(p.clone());
        });
        q.push(" ON CONFLICT DO NOTHING");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}
