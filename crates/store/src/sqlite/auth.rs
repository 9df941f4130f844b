//! [`AuthStore`] on SQLite.

use super::{SqliteStore, relaxed, transaction};
use crate::StoreError;
use crate::{AuthRecord, AuthStore, Result};
use async_trait::async_trait;
use fhir::time::unix_ms;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};

/// Pages of the auth file. Issuing a backend token inserts its assertion's `jti` at a random place in
/// the key index: one page written to the log per token, and again when the log is copied into the file.
/// In the FHIR data's 8 KiB pages a token cost 33 KiB of writes; with 4 KiB pages it costs 22 KiB.
/// 1 KiB pages wrote less (13 KiB) but cost more CPU: more log frames (one `pwrite` each), overflow
/// pages for a token's record (its grant, ~300-900 bytes), and a commit scanned the whole page cache
/// (SQLite renumbers pages through the page number of the lock byte at 1 GiB, so the cache then holds a
/// page beyond the end of a smaller file: the scan grows with the cache, kept small here).
const AUTH_PAGE: i64 = 4096;

/// The schema of the auth file (its `user_version` [`AUTH_VERSION`]). Records as in the FHIR file's
/// migrations 2 and 5; version 2 added the pairing id (`pairing.rs`).
const AUTH_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS auth_records (
    kind     TEXT    NOT NULL,
    key      TEXT    NOT NULL,
    value    TEXT    NOT NULL,
    grant_id TEXT,
    expires  INTEGER,
    used     INTEGER NOT NULL DEFAULT 0,
    revoked  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS auth_records_grant ON auth_records (grant_id) WHERE grant_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS auth_records_expires ON auth_records (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS kindling_pair (id TEXT NOT NULL);";

/// The authorisation server's records (clients, users, sessions, codes, tokens, the `jti` cache...) in a
/// SQLite file of their own beside the FHIR data (`kindling.db` → `kindling.auth.db`), with its own
/// writer, readers and checkpoints: small pages for small records, and a token is not held up behind a
/// FHIR write (an import, a transaction bundle) nor the other way round.
pub(crate) struct AuthFile {
    writer: Arc<AsyncMutex<Connection>>,
    readers: super::readers::Readers,
    /// The group-commit queue of writes; its thread is started on first use.
    queue: OnceLock<mpsc::UnboundedSender<Pending>>,
}

/// The auth file beside the FHIR data file `data`.
pub(crate) fn auth_path(data: &Path) -> PathBuf {
    data.with_extension("auth.db")
}

/// The auth file's schema version this release writes.
const AUTH_VERSION: i64 = 2;

/// Opens (creating if needed) the auth file beside the data file `data`: its writer connection, and
/// whether the file was new (no schema yet).
pub(crate) fn open_writer(data: &Path) -> Result<(Connection, bool)> {
    let path = auth_path(data);
    let writer = super::open_connection(&path, AUTH_PAGE, 4 * 1024)?;
    let version: i64 = writer.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > AUTH_VERSION {
        return Err(StoreError::Backend(format!(
            "{} was written by a newer release of Kindling (auth schema {version}, this release knows {AUTH_VERSION}); use that release or newer",
            path.display()
        )));
    }
    if version < AUTH_VERSION {
        writer.execute_batch(&format!("BEGIN IMMEDIATE; {AUTH_SCHEMA} PRAGMA user_version = {AUTH_VERSION}; COMMIT;"))?;
    }
    Ok((writer, version == 0))
}

impl AuthFile {
    /// The auth file beside `data`, served by `writer` (from [`open_writer`]).
    pub(crate) fn start(data: &Path, writer: Connection) -> Result<AuthFile> {
        let path = auth_path(data);
        let writer = Arc::new(AsyncMutex::new(writer));
        super::spawn_checkpoints(&path, AUTH_PAGE, Arc::downgrade(&writer))?;
        // No statistics are taken here: the readers' generation never moves on.
        let readers = super::readers::Readers::new(path, AUTH_PAGE, 1024, super::readers::Readers::generation());
        Ok(AuthFile { writer, readers, queue: OnceLock::new() })
    }

    fn reader(&self) -> Result<super::readers::PooledReader<'_>> {
        self.readers.get()
    }
}

/// Copies the records an older release kept in the data file into the auth file, committed there (with
/// `synchronous=FULL`) before the data file's migration drops them. `data` is that migration's write
/// transaction, so nothing writes the old records meanwhile; two files commit apart, and a copy whose
/// drop did not commit is made again (a record already copied is kept as it is).
pub(crate) fn move_records(data: &Connection, auth: &Connection) -> Result<()> {
    let mut rows = data.prepare("SELECT kind, key, value, grant_id, expires, used, revoked FROM auth_records")?;
    let mut rows = rows.query([])?;
    let copied = transaction(auth, |auth| {
        let mut insert = auth.prepare(
            "INSERT INTO auth_records (kind, key, value, grant_id, expires, used, revoked) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (kind, key) DO NOTHING",
        )?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let (kind, key, value): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let (grant_id, expires, used, revoked): (Option<String>, Option<i64>, i64, i64) = (r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?);
            n += insert.execute(params![kind, key, value, grant_id, expires, used, revoked])?;
        }
        Ok(n)
    })?;
    if copied > 0 {
        tracing::info!(records = copied, "moved the authorisation records to a file of their own");
    }
    Ok(())
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuthRecord> {
    Ok(AuthRecord { value: row.get(0)?, grant_id: row.get(1)?, expires: row.get(2)?, used: row.get::<_, i64>(3)? != 0, revoked: row.get::<_, i64>(4)? != 0 })
}

impl SqliteStore {
    fn now(&self) -> i64 {
        unix_ms(self.inner.clock.now())
    }

    /// Hands a write to the queue and waits until it is committed.
    async fn queued(&self, write: AuthWrite) -> Result<bool> {
        let auth = &self.inner.auth;
        let queue = auth.queue.get_or_init(|| spawn_queue(auth.writer.clone()));
        let (reply, answer) = oneshot::channel();
        if let Err(refused) = queue.send(Pending { write, reply }) {
            // The queue's thread could not be started: write directly.
            let conn = auth.writer.lock().await;
            return relaxed(&conn, |c| apply(c, &refused.0.write));
        }
        answer.await.map_err(|_| StoreError::Backend("the auth write queue stopped".into()))?
    }
}

/// The auth writes of the token hot path (tokens, the `jti` cache). They are committed in groups: while
/// one group is written, the next queues up, and it is committed with one transaction instead of one per
/// record. Each commit of a single record wrote its four B-tree pages (table and three indexes) to the
/// WAL; issuing a backend token took two such commits.
pub(crate) enum AuthWrite {
    Put {
        kind: String,
        key: String,
        value: String,
        grant_id: Option<String>,
        expires: Option<i64>,
    },
    /// Inserts unless a live record has the key; `true` when inserted.
    InsertNew {
        kind: String,
        key: String,
        value: String,
        expires: Option<i64>,
        now: i64,
    },
    /// `InsertNew` of the first, then (only if it inserted) `Put` of the second.
    InsertNewThenPut(Box<(AuthWrite, AuthWrite)>),
}

impl AuthWrite {
    fn put(r: &crate::NewAuthRecord<'_>) -> AuthWrite {
        AuthWrite::Put { kind: r.kind.into(), key: r.key.into(), value: r.value.into(), grant_id: r.grant_id.map(str::to_string), expires: r.expires }
    }
}

pub(crate) struct Pending {
    write: AuthWrite,
    reply: oneshot::Sender<Result<bool>>,
}

const MAX_GROUP: usize = 512;
/// Under concurrent writers, a group smaller than this waits `LINGER_MICROS` once for more to join it.
const LINGER_BELOW: usize = 8;
const LINGER_MICROS: u64 = 150;

fn apply(c: &Connection, w: &AuthWrite) -> rusqlite::Result<bool> {
    match w {
        AuthWrite::Put { kind, key, value, grant_id, expires } => {
            c.prepare_cached(
                "INSERT INTO auth_records (kind, key, value, grant_id, expires, used, revoked) VALUES (?1, ?2, ?3, ?4, ?5, 0, 0)
                 ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, grant_id = excluded.grant_id, expires = excluded.expires, used = 0, revoked = 0",
            )?
            .execute(params![kind, key, value, grant_id, expires])?;
            Ok(true)
        }
        AuthWrite::InsertNew { kind, key, value, expires, now } => {
            let n = c
                .prepare_cached(
                    "INSERT INTO auth_records (kind, key, value, expires) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, expires = excluded.expires, used = 0, revoked = 0
                     WHERE auth_records.expires IS NOT NULL AND auth_records.expires <= ?5",
                )?
                .execute(params![kind, key, value, expires, now])?;
            Ok(n == 1)
        }
        AuthWrite::InsertNewThenPut(pair) => {
            let both = |c: &Connection| apply(c, &pair.0).and_then(|inserted| if inserted { apply(c, &pair.1) } else { Ok(false) });
            // In a group the whole group is one transaction already.
            if c.is_autocommit() { transaction(c, both) } else { both(c) }
        }
    }
}

/// Commits `group` in one transaction; if that fails, each write on its own, so that one bad write
/// fails alone.
fn commit_group(conn: &Connection, group: &[Pending]) -> Vec<Result<bool>> {
    let together = relaxed(conn, |c| transaction(c, |c| group.iter().map(|p| apply(c, &p.write)).collect::<rusqlite::Result<Vec<bool>>>()));
    match together {
        Ok(results) => results.into_iter().map(Ok).collect(),
        Err(_) => group.iter().map(|p| relaxed(conn, |c| apply(c, &p.write))).collect(),
    }
}

/// The queue's writer: a thread of its own, so that a commit holds up no runtime worker and the queue
/// depends on no runtime (a task would stop with the runtime that happened to start it, and wait while
/// a single-threaded runtime is not polled).
fn spawn_queue(writer: Arc<AsyncMutex<Connection>>) -> mpsc::UnboundedSender<Pending> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
    let started = std::thread::Builder::new().name("sqlite-auth-writes".into()).spawn(move || {
        let mut last_group = 0;
        while let Some(first) = rx.blocking_recv() {
            // What arrived while the previous group was written (or while this thread woke up) joins
            // this group. Writes used to go straight to a free writer, each in a commit of its own: at
            // 32 clients a backend token cost 45 KiB of writes (WAL and checkpoint); queued, groups hold
            // about 16 writes and a token cost 32-37 KiB (22 KiB since the auth file has 4 KiB pages).
            let mut group = vec![first];
            let drain = |group: &mut Vec<Pending>, rx: &mut mpsc::UnboundedReceiver<Pending>| {
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(p) => group.push(p),
                        Err(_) => break,
                    }
                }
            };
            drain(&mut group, &mut rx);
            // Under concurrent writers (the last group held several), a small group waits a moment for the
            // writes on their way: a commit writes each page it touched whole, so a group of sixteen costs
            // little more than a group of two. A lone writer never waits. The wait holds no lock: writers
            // that go straight to the connection (spending a code) are not held up by it.
            if group.len() < LINGER_BELOW && last_group > 1 {
                std::thread::sleep(std::time::Duration::from_micros(LINGER_MICROS));
                drain(&mut group, &mut rx);
            }
            // What arrived while the writer was busy joins too.
            let conn = writer.blocking_lock();
            drain(&mut group, &mut rx);
            last_group = group.len();
            let results = commit_group(&conn, &group);
            drop(conn);
            for (p, r) in group.into_iter().zip(results) {
                let _ = p.reply.send(r);
            }
        }
    });
    if let Err(e) = started {
        // The receiver is gone with the closure: every write then goes straight to the writer.
        tracing::error!(error = %e, "cannot start the auth write thread; auth writes are not grouped");
    }
    tx
}

#[async_trait]
impl AuthStore for SqliteStore {
    async fn auth_put(&self, kind: &str, key: &str, value: &str, grant_id: Option<&str>, expires: Option<i64>) -> Result<()> {
        self.queued(AuthWrite::Put { kind: kind.into(), key: key.into(), value: value.into(), grant_id: grant_id.map(str::to_string), expires }).await?;
        Ok(())
    }

    async fn auth_get(&self, kind: &str, key: &str) -> Result<Option<AuthRecord>> {
        let conn = self.inner.auth.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT value, grant_id, expires, used, revoked FROM auth_records WHERE kind = ?1 AND key = ?2 AND (expires IS NULL OR expires > ?3)",
        )?;
        Ok(stmt.query_row(params![kind, key, self.now()], row_to_record).optional()?)
    }

    async fn auth_consume(&self, kind: &str, key: &str) -> Result<Option<AuthRecord>> {
        let conn = self.inner.auth.writer.lock().await;
        let record = conn
            .prepare_cached(
                "SELECT value, grant_id, expires, used, revoked FROM auth_records WHERE kind = ?1 AND key = ?2 AND (expires IS NULL OR expires > ?3)",
            )?
            .query_row(params![kind, key, self.now()], row_to_record)
            .optional()?;
        if record.is_some() {
            relaxed(&conn, |c| c.prepare_cached("UPDATE auth_records SET used = 1 WHERE kind = ?1 AND key = ?2")?.execute(params![kind, key]))?;
        }
        Ok(record)
    }

    async fn auth_insert_new(&self, kind: &str, key: &str, value: &str, expires: Option<i64>) -> Result<bool> {
        self.queued(AuthWrite::InsertNew { kind: kind.into(), key: key.into(), value: value.into(), expires, now: self.now() }).await
    }

    async fn auth_insert_new_then_put(&self, new: crate::NewAuthRecord<'_>, then: crate::NewAuthRecord<'_>) -> Result<bool> {
        let new = AuthWrite::InsertNew { kind: new.kind.into(), key: new.key.into(), value: new.value.into(), expires: new.expires, now: self.now() };
        self.queued(AuthWrite::InsertNewThenPut(Box::new((new, AuthWrite::put(&then))))).await
    }

    async fn auth_revoke_grant(&self, grant_id: &str) -> Result<u64> {
        let conn = self.inner.auth.writer.lock().await;
        let n = conn.prepare_cached("UPDATE auth_records SET revoked = 1 WHERE grant_id = ?1")?.execute([grant_id])?;
        Ok(n as u64)
    }

    async fn auth_replace(&self, kind: &str, key: &str, expected: &str, value: &str, expires: Option<i64>) -> Result<bool> {
        let conn = self.inner.auth.writer.lock().await;
        let n = conn
            .prepare_cached(
                "UPDATE auth_records SET value = ?4, expires = COALESCE(?6, expires) WHERE kind = ?1 AND key = ?2 AND value = ?3 AND (expires IS NULL OR expires > ?5)",
            )?
            .execute(params![kind, key, expected, value, self.now(), expires])?;
        Ok(n == 1)
    }

    async fn auth_delete(&self, kind: &str, key: &str) -> Result<()> {
        let conn = self.inner.auth.writer.lock().await;
        conn.prepare_cached("DELETE FROM auth_records WHERE kind = ?1 AND key = ?2")?.execute(params![kind, key])?;
        Ok(())
    }

    async fn auth_purge_expired(&self, before: i64, limit: usize) -> Result<u64> {
        let conn = self.inner.auth.writer.lock().await;
        let n = relaxed(&conn, |c| {
            c.prepare_cached("DELETE FROM auth_records WHERE (kind, key) IN (SELECT kind, key FROM auth_records WHERE expires < ?1 LIMIT ?2)")?
                .execute(params![before, limit as i64])
        })?;
        Ok(n as u64)
    }

    async fn auth_list(&self, kind: &str) -> Result<Vec<(String, AuthRecord)>> {
        let conn = self.inner.auth.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT key, value, grant_id, expires, used, revoked FROM auth_records WHERE kind = ?1 AND (expires IS NULL OR expires > ?2) ORDER BY key",
        )?;
        let rows = stmt.query_map(params![kind, self.now()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                AuthRecord { value: r.get(1)?, grant_id: r.get(2)?, expires: r.get(3)?, used: r.get::<_, i64>(4)? != 0, revoked: r.get::<_, i64>(5)? != 0 },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::AuthStore;
    use crate::sqlite::{SqliteConfig, SqliteStore};
    use fhir::time::{ManualClock, SystemClock};
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
        // Purging: only what expired before the cut, at most `limit` at a time; records without expiry stay.
        let now = fhir::time::unix_ms(fhir::time::Clock::now(&*clock));
        for i in 0..5 {
            store.auth_put("access", &format!("old{i}"), "{}", None, Some(now - 1_000)).await.unwrap();
        }
        store.auth_put("access", "fresh", "{}", None, Some(now + 60_000)).await.unwrap();
        store.auth_put("client", "app", "{}", None, None).await.unwrap();
        assert_eq!(store.auth_purge_expired(now, 3).await.unwrap(), 3);
        assert_eq!(store.auth_purge_expired(now, 100).await.unwrap(), 3, "the two old tokens left and the expired code");
        assert_eq!(store.auth_purge_expired(now, 100).await.unwrap(), 0);
        assert!(store.auth_get("access", "fresh").await.unwrap().is_some());
        assert!(store.auth_get("client", "app").await.unwrap().is_some());
    }

    /// A write that fails or panics inside a transaction leaves the connection outside it, so that the
    /// writes after it still go through.
    #[test]
    fn a_transaction_that_fails_or_panics_is_rolled_back() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (x INTEGER PRIMARY KEY)").unwrap();
        let failed = super::transaction(&c, |c| c.execute("INSERT INTO t VALUES (1)", []).and_then(|_| c.execute("INSERT INTO t VALUES (1)", [])));
        assert!(failed.is_err());
        assert!(c.is_autocommit(), "rolled back after an error");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            super::transaction::<()>(&c, |c| {
                c.execute("INSERT INTO t VALUES (2)", [])?;
                panic!("a bug in a write")
            })
        }));
        assert!(panicked.is_err());
        assert!(c.is_autocommit(), "rolled back after a panic");
        assert_eq!(super::transaction(&c, |c| c.execute("INSERT INTO t VALUES (3)", [])).unwrap(), 1);
        let rows: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 1, "only the write after them stands");
    }

    /// An older release kept the records in the data file: migration 11 moves them to the auth file, once,
    /// with every column; a copy whose drop did not commit is made again without undoing what it copied.
    #[tokio::test]
    async fn records_of_the_data_file_move_to_the_auth_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = || SqliteConfig { path: dir.path().join("a.db"), base_url: None, writer_cache_mib: 8 };
        let file = |name: &str| dir.path().join(name);
        // The data file as release 10 left it (the records in it), with or without an auth file.
        let as_release_10 = |auth_file: bool| {
            std::thread::sleep(std::time::Duration::from_millis(300)); // the checkpoint threads stop
            let old = rusqlite::Connection::open(file("a.db")).unwrap();
            old.execute_batch(include_str!("../../migrations/sqlite/0002_auth.sql")).unwrap();
            old.execute_batch(
                "DROP TABLE kindling_pair;
                 DELETE FROM kindling_migrations WHERE version >= 11;
                 INSERT INTO auth_records (kind, key, value, grant_id, expires, used, revoked) VALUES
                 ('client', 'app', '{\"n\":1}', NULL, NULL, 0, 0), ('access', 't', '{}', 'g', 4102444800000, 1, 1)",
            )
            .unwrap();
            if !auth_file {
                for f in ["a.auth.db", "a.auth.db-wal", "a.auth.db-shm"] {
                    let _ = std::fs::remove_file(file(f));
                }
            }
        };
        let left_in_data_file = || {
            let data = rusqlite::Connection::open(file("a.db")).unwrap();
            let tables: i64 = data.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'auth_records'", [], |r| r.get(0)).unwrap();
            let version: i64 = data.query_row("SELECT max(version) FROM kindling_migrations", [], |r| r.get(0)).unwrap();
            (tables, version)
        };
        drop(SqliteStore::open(config(), Arc::new(SystemClock)).unwrap());
        assert_eq!(left_in_data_file(), (0, 12));

        // An upgrade: no auth file yet.
        as_release_10(false);
        let store = SqliteStore::open(config(), Arc::new(SystemClock)).unwrap();
        assert_eq!(store.auth_get("client", "app").await.unwrap().unwrap().value, "{\"n\":1}");
        let token = store.auth_get("access", "t").await.unwrap().unwrap();
        assert_eq!((token.grant_id.as_deref(), token.expires, token.used, token.revoked), (Some("g"), Some(4102444800000), true, true), "every column moves");
        assert_eq!(store.auth_revoke_grant("g").await.unwrap(), 1, "the grant index is there");
        assert_eq!(left_in_data_file(), (0, 12), "the data file no longer has them");
        // What the server changes later is the auth file's.
        store.auth_put("client", "app", "{\"n\":2}", None, None).await.unwrap();
        drop(store);

        // A move whose copy committed but whose drop did not: the copy is made again, keeping what is there.
        as_release_10(true);
        let store = SqliteStore::open(config(), Arc::new(SystemClock)).unwrap();
        assert_eq!(store.auth_get("client", "app").await.unwrap().unwrap().value, "{\"n\":2}");
        assert_eq!(store.auth_list("client").await.unwrap().len(), 1);
        assert_eq!(left_in_data_file(), (0, 12));
    }

    /// The auth file has a writer of its own: a token is not held up behind a FHIR write transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auth_writes_go_on_while_a_fhir_transaction_is_open() {
        use crate::Store;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteConfig { path: dir.path().join("a.db"), base_url: None, writer_cache_mib: 8 }, Arc::new(SystemClock)).unwrap();
        let tx = store.begin().await.unwrap();
        let wait = std::time::Duration::from_secs(5);
        tokio::time::timeout(wait, store.auth_put("access", "t1", "{}", Some("g"), None)).await.expect("not held up").unwrap();
        assert!(tokio::time::timeout(wait, store.auth_insert_new("jti", "c|1", "{}", Some(i64::MAX))).await.expect("not held up").unwrap());
        tokio::time::timeout(wait, store.auth_consume("access", "t1")).await.expect("not held up").unwrap();
        drop(tx);
        assert!(store.auth_get("access", "t1").await.unwrap().unwrap().used);
    }

    /// Writes that queue up behind a busy writer are committed together, each with its own answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_grouped_and_each_answered() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000)));
        let store = Arc::new(SqliteStore::open(SqliteConfig { path: dir.path().join("g.db"), base_url: None, writer_cache_mib: 8 }, clock.clone()).unwrap());
        let now = fhir::time::unix_ms(fhir::time::Clock::now(&*clock));
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.auth_put("access", &format!("t{i}"), &format!("{{\"n\":{i}}}"), Some("g"), Some(now + 60_000)).await.unwrap();
                // Forty tasks race for each of five jti keys: one of each wins.
                store.auth_insert_new("jti", &format!("c|{}", i % 5), "{}", Some(now + 60_000)).await.unwrap()
            }));
        }
        let mut won = 0;
        for t in tasks {
            won += usize::from(t.await.unwrap());
        }
        assert_eq!(won, 5, "each jti is accepted exactly once");
        for i in 0..200 {
            let r = store.auth_get("access", &format!("t{i}")).await.unwrap().expect("every write committed");
            assert_eq!(r.value, format!("{{\"n\":{i}}}"));
        }
    }
}
