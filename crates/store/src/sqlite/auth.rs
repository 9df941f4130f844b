//! [`AuthStore`] on SQLite.

use super::SqliteStore;
use crate::{AuthRecord, AuthStore, Result};
use async_trait::async_trait;
use fhir::time::unix_ms;
use rusqlite::{OptionalExtension, params};

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuthRecord> {
    Ok(AuthRecord {
        value: row.get(0)?,
        grant_id: row.get(1)?,
        expires: row.get(2)?,
        used: row.get::<_, i64>(3)? != 0,
        revoked: row.get::<_, i64>(4)? != 0,
    })
}

impl SqliteStore {
    fn now(&self) -> i64 {
        unix_ms(self.inner.clock.now())
    }
}

/// Runs one auth-state write without waiting for the disk. Auth records are short-lived (codes, tokens,
/// the jti cache); in WAL mode `synchronous=NORMAL` keeps the database consistent and loses at most the
/// last moments of such writes on a power failure, which only invalidates freshly issued tokens. FHIR
/// writes keep `synchronous=FULL`.
fn relaxed<T>(conn: &rusqlite::Connection, write: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>) -> Result<T> {
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    let result = write(conn);
    conn.execute_batch("PRAGMA synchronous = FULL")?;
    Ok(result?)
}

#[async_trait]
impl AuthStore for SqliteStore {
    async fn auth_put(&self, kind: &str, key: &str, value: &str, grant_id: Option<&str>, expires: Option<i64>) -> Result<()> {
        let conn = self.inner.writer.lock().await;
        relaxed(&conn, |c| {
            c.prepare_cached(
                "INSERT INTO auth_records (kind, key, value, grant_id, expires, used, revoked) VALUES (?1, ?2, ?3, ?4, ?5, 0, 0)
                 ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, grant_id = excluded.grant_id, expires = excluded.expires, used = 0, revoked = 0",
            )?
            .execute(params![kind, key, value, grant_id, expires])
        })?;
        Ok(())
    }

    async fn auth_get(&self, kind: &str, key: &str) -> Result<Option<AuthRecord>> {
        let conn = self.inner.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT value, grant_id, expires, used, revoked FROM auth_records WHERE kind = ?1 AND key = ?2 AND (expires IS NULL OR expires > ?3)",
        )?;
        Ok(stmt.query_row(params![kind, key, self.now()], row_to_record).optional()?)
    }

    async fn auth_consume(&self, kind: &str, key: &str) -> Result<Option<AuthRecord>> {
        let conn = self.inner.writer.lock().await;
        let record = conn
            .prepare_cached("SELECT value, grant_id, expires, used, revoked FROM auth_records WHERE kind = ?1 AND key = ?2 AND (expires IS NULL OR expires > ?3)")?
            .query_row(params![kind, key, self.now()], row_to_record)
            .optional()?;
        if record.is_some() {
            relaxed(&conn, |c| c.prepare_cached("UPDATE auth_records SET used = 1 WHERE kind = ?1 AND key = ?2")?.execute(params![kind, key]))?;
        }
        Ok(record)
    }

    async fn auth_insert_new(&self, kind: &str, key: &str, value: &str, expires: Option<i64>) -> Result<bool> {
        let conn = self.inner.writer.lock().await;
        let now = self.now();
        let n = relaxed(&conn, |c| {
            c.prepare_cached(
                "INSERT INTO auth_records (kind, key, value, expires) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, expires = excluded.expires, used = 0, revoked = 0
                 WHERE auth_records.expires IS NOT NULL AND auth_records.expires <= ?5",
            )?
            .execute(params![kind, key, value, expires, now])
        })?;
        Ok(n == 1)
    }

    async fn auth_revoke_grant(&self, grant_id: &str) -> Result<u64> {
        let conn = self.inner.writer.lock().await;
        let n = conn.prepare_cached("UPDATE auth_records SET revoked = 1 WHERE grant_id = ?1")?.execute([grant_id])?;
        Ok(n as u64)
    }

    async fn auth_delete(&self, kind: &str, key: &str) -> Result<()> {
        let conn = self.inner.writer.lock().await;
        conn.prepare_cached("DELETE FROM auth_records WHERE kind = ?1 AND key = ?2")?.execute(params![kind, key])?;
        Ok(())
    }

    async fn auth_list(&self, kind: &str) -> Result<Vec<(String, AuthRecord)>> {
        let conn = self.inner.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT key, value, grant_id, expires, used, revoked FROM auth_records WHERE kind = ?1 AND (expires IS NULL OR expires > ?2) ORDER BY key",
        )?;
        let rows = stmt.query_map(params![kind, self.now()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                AuthRecord {
                    value: r.get(1)?,
                    grant_id: r.get(2)?,
                    expires: r.get(3)?,
                    used: r.get::<_, i64>(4)? != 0,
                    revoked: r.get::<_, i64>(5)? != 0,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::sqlite::{SqliteConfig, SqliteStore};
    use crate::AuthStore;
    use fhir::time::ManualClock;
    use std::sync::Arc;

    #[tokio::test]
    async fn records_expire_are_consumed_once_and_revoke_by_grant() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000)));
        let store = SqliteStore::open(SqliteConfig { path: dir.path().join("a.db"), base_url: None, writer_cache_mib: 8 }, clock.clone()).unwrap();
        let now = fhir::time::unix_ms(fhir::time::Clock::now(&*clock));
        store.auth_put("code", "h1", "{}", Some("g1"), Some(now + 60_000)).await.unwrap();
        store.auth_put("token", "h2", "{}", Some("g1"), None).await.unwrap();
        let first = store.auth_consume("code", "h1").await.unwrap().unwrap();
        assert!(!first.used);
        let second = store.auth_consume("code", "h1").await.unwrap().unwrap();
        assert!(second.used, "a replay sees the record as used");
        assert_eq!(store.auth_revoke_grant("g1").await.unwrap(), 2);
        assert!(store.auth_get("token", "h2").await.unwrap().unwrap().revoked);
        clock.advance(time::Duration::seconds(61));
        assert!(store.auth_get("code", "h1").await.unwrap().is_none(), "expired");
        assert_eq!(store.auth_list("token").await.unwrap().len(), 1);
        let exp = now + 120_000;
        assert!(store.auth_insert_new("jti", "c|1", "{}", Some(exp)).await.unwrap());
        assert!(!store.auth_insert_new("jti", "c|1", "{}", Some(exp)).await.unwrap(), "a replay within the lifetime");
        clock.advance(time::Duration::seconds(200));
        assert!(store.auth_insert_new("jti", "c|1", "{}", Some(exp + 300_000)).await.unwrap(), "after expiry the key is free again");
    }
}
