//! [`AuthStore`] on PostgreSQL: the state every node shares. Single-use records are consumed with one
//! `UPDATE … RETURNING` of the previous state, so of two nodes racing on one code exactly one wins.

use super::PostgresStore;
use crate::{AuthRecord, AuthStore, Result, StoreError};
use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgRow;

fn record(r: &PgRow, offset: usize) -> Result<AuthRecord> {
    Ok(AuthRecord {
        value: r.try_get(offset)?,
        grant_id: r.try_get(offset + 1)?,
        expires: r.try_get(offset + 2)?,
        used: r.try_get::<i64, _>(offset + 3)? != 0,
        revoked: r.try_get::<i64, _>(offset + 4)? != 0,
    })
}

#[async_trait]
impl AuthStore for PostgresStore {
    async fn auth_put(&self, kind: &str, key: &str, value: &str, grant_id: Option<&str>, expires: Option<i64>) -> Result<()> {
        sqlx::query(
            "INSERT INTO auth_records (kind, key, value, grant_id, expires, used, revoked) VALUES ($1, $2, $3, $4, $5, 0, 0)
             ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, grant_id = excluded.grant_id, expires = excluded.expires, used = 0, revoked = 0",
        )
        .bind(kind)
        .bind(key)
        .bind(value)
        .bind(grant_id)
        .bind(expires)
        .execute(self.relaxed_pool())
        .await?;
        Ok(())
    }

    async fn auth_get(&self, kind: &str, key: &str) -> Result<Option<AuthRecord>> {
        let row =
            sqlx::query("SELECT value, grant_id, expires, used, revoked FROM auth_records WHERE kind = $1 AND key = $2 AND (expires IS NULL OR expires > $3)")
                .bind(kind)
                .bind(key)
                .bind(self.now())
                .fetch_optional(self.pool())
                .await?;
        row.as_ref().map(|r| record(r, 0)).transpose()
    }

    async fn auth_consume(&self, kind: &str, key: &str) -> Result<Option<AuthRecord>> {
        // The old row's state comes back through a self-join on the locked row.
        let row = sqlx::query(
            "UPDATE auth_records a SET used = 1 FROM (SELECT kind, key, used FROM auth_records WHERE kind = $1 AND key = $2 AND (expires IS NULL OR expires > $3) FOR UPDATE) old
              WHERE a.kind = old.kind AND a.key = old.key
              RETURNING a.value, a.grant_id, a.expires, old.used, a.revoked",
        )
        .bind(kind)
        .bind(key)
        .bind(self.now())
        .fetch_optional(self.relaxed_pool())
        .await?;
        row.as_ref().map(|r| record(r, 0)).transpose()
    }

    async fn auth_insert_new(&self, kind: &str, key: &str, value: &str, expires: Option<i64>) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO auth_records (kind, key, value, expires) VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, expires = excluded.expires, used = 0, revoked = 0
             WHERE auth_records.expires IS NOT NULL AND auth_records.expires <= $5",
        )
        .bind(kind)
        .bind(key)
        .bind(value)
        .bind(expires)
        .bind(self.now())
        .execute(self.relaxed_pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn auth_insert_new_then_put(&self, new: crate::NewAuthRecord<'_>, then: crate::NewAuthRecord<'_>) -> Result<bool> {
        // One statement: the second insert runs only when the first one wrote its row.
        let row = sqlx::query(
            "WITH j AS (
                 INSERT INTO auth_records (kind, key, value, expires) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, expires = excluded.expires, used = 0, revoked = 0
                 WHERE auth_records.expires IS NOT NULL AND auth_records.expires <= $5
                 RETURNING 1
             ), t AS (
                 INSERT INTO auth_records (kind, key, value, grant_id, expires, used, revoked) SELECT $6, $7, $8, $9, $10, 0, 0 WHERE EXISTS (SELECT 1 FROM j)
                 ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, grant_id = excluded.grant_id, expires = excluded.expires, used = 0, revoked = 0
                 RETURNING 1
             )
             SELECT EXISTS (SELECT 1 FROM j)",
        )
        .bind(new.kind)
        .bind(new.key)
        .bind(new.value)
        .bind(new.expires)
        .bind(self.now())
        .bind(then.kind)
        .bind(then.key)
        .bind(then.value)
        .bind(then.grant_id)
        .bind(then.expires)
        .fetch_one(self.relaxed_pool())
        .await?;
        Ok(row.try_get(0)?)
    }

    async fn auth_revoke_grant(&self, grant_id: &str) -> Result<u64> {
        Ok(sqlx::query("UPDATE auth_records SET revoked = 1 WHERE grant_id = $1").bind(grant_id).execute(self.pool()).await?.rows_affected())
    }

    async fn auth_replace(&self, kind: &str, key: &str, expected: &str, value: &str, expires: Option<i64>) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE auth_records SET value = $4, expires = COALESCE($6, expires) WHERE kind = $1 AND key = $2 AND value = $3 AND (expires IS NULL OR expires > $5)",
        )
        .bind(kind)
        .bind(key)
        .bind(expected)
        .bind(value)
        .bind(self.now())
        .bind(expires)
            // Durable: account changes (a disabled account) must survive a crash.
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn auth_delete(&self, kind: &str, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM auth_records WHERE kind = $1 AND key = $2").bind(kind).bind(key).execute(self.relaxed_pool()).await?;
        Ok(())
    }

    async fn auth_purge_expired(&self, before: i64, limit: usize) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM auth_records WHERE ctid IN (SELECT ctid FROM auth_records WHERE expires < $1 LIMIT $2)")
            .bind(before)
            .bind(limit as i64)
            .execute(self.relaxed_pool())
            .await?
            .rows_affected())
    }

    async fn auth_list(&self, kind: &str) -> Result<Vec<(String, AuthRecord)>> {
        let rows = sqlx::query(
            "SELECT key, value, grant_id, expires, used, revoked FROM auth_records WHERE kind = $1 AND (expires IS NULL OR expires > $2) ORDER BY key",
        )
        .bind(kind)
        .bind(self.now())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| Ok::<_, StoreError>((r.try_get::<String, _>(0)?, record(r, 1)?))).collect()
    }
}
