//! The SQLite backend: the FHIR data in one file in WAL mode with `synchronous=FULL` (a commit survives
//! power loss), one writer connection behind an async mutex and a pool of reader connections; the
//! authorisation server's records in a second file beside it, with a writer and readers of its own
//! (`auth.rs`).
//!
//! Queries are short (microseconds) and run inline on the calling task; SQLite work is never held across an
//! `.await` except the writer lock of an open transaction.

mod readers;
mod write;

use crate::sql::{Dialect, SqlValue, compile_search};
use crate::{
    HistoryPage, HistoryParams, HistoryScope, Precondition, Prepared, Reader, Result, Snapshot, SnapshotCache, Store, StoreError, StoredResource, Transaction,
    Written,
};
use async_trait::async_trait;
use fhir::query::{Include, SearchQuery};
use fhir::time::{SharedClock, unix_ms};
use rusqlite::types::{ToSqlOutput, Value as SqliteValue};
use rusqlite::{Connection, OpenFlags, OptionalExtension, ToSql, params};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

mod auth;
mod pairing;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "resources", include_str!("../../migrations/sqlite/0001_resources.sql")),
    (2, "auth", include_str!("../../migrations/sqlite/0002_auth.sql")),
    (3, "audit", include_str!("../../migrations/sqlite/0003_audit.sql")),
    (4, "audit_launch", include_str!("../../migrations/sqlite/0004_audit_launch.sql")),
    (5, "partial_auth_indexes", include_str!("../../migrations/sqlite/0005_partial_auth_indexes.sql")),
    (6, "patient_tokens", include_str!("../../migrations/sqlite/0006_patient_tokens.sql")),
    (7, "patient_token_dates", include_str!("../../migrations/sqlite/0007_patient_token_dates.sql")),
    (8, "reindex_pending", include_str!("../../migrations/sqlite/0008_reindex_pending.sql")),
    (9, "condition_asserted_date", include_str!("../../migrations/sqlite/0009_condition_asserted_date.sql")),
    (10, "patients_by_code", include_str!("../../migrations/sqlite/0010_patients_by_code.sql")),
    (11, "auth_file", include_str!("../../migrations/sqlite/0011_auth_file.sql")),
    (12, "pairing", include_str!("../../migrations/sqlite/0012_pairing.sql")),
];

/// The migration that moves the authorisation records to the auth file (`auth::move_records` copies
/// them first, in the same write transaction of the data file).
const AUTH_FILE_MIGRATION: i64 = 11;

/// How long a paging snapshot lives.
const SNAPSHOT_TTL_MS: i64 = 30 * 60 * 1000;

impl ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            SqlValue::Text(s) => ToSqlOutput::Borrowed(rusqlite::types::ValueRef::Text(s.as_bytes())),
            SqlValue::Int(i) => ToSqlOutput::Owned(SqliteValue::Integer(*i)),
            SqlValue::Real(f) => ToSqlOutput::Owned(SqliteValue::Real(*f)),
        })
    }
}

/// Where the SQLite store is, and how to open it.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file.
    pub path: PathBuf,
    /// This server's FHIR base URL; absolute references to it are indexed as local.
    pub base_url: Option<String>,
    /// Page cache of the writer connection. Bulk imports into a large database go markedly faster with a
    /// cache that holds the hot index pages (256 MiB for the Synthea set); a server needs little.
    pub writer_cache_mib: u32,
}

/// The FHIR data in one SQLite file and the authorisation server's state in a second one beside it (one
/// node).
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    base_url: Option<String>,
    clock: SharedClock,
    writer: Arc<AsyncMutex<Connection>>,
    /// Reader connections, of the statistics generation they were opened under.
    readers: readers::Readers,
    statistics: Arc<Statistics>,
    snapshots: SnapshotCache,
    /// The authorisation server's records, in a file of their own.
    auth: auth::AuthFile,
}

/// How often the checkpoint thread copies the WAL into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// The size of the log above which it is restarted from its beginning.
const RESTART_BYTES: i64 = 32 << 20;
/// Pages of the FHIR data: 8 KiB (set on creation only), about 10% faster bulk imports than 4 KiB, same
/// reads.
const DATA_PAGE: i64 = 8192;

/// Checkpoints the WAL from a thread of its own; no connection checkpoints on commit
/// (`wal_autocheckpoint = 0`).
///
/// SQLite's automatic checkpoint runs inside the commit that crosses the threshold, with an fsync. Under a
/// steady stream of reads the log is never restarted (a reader is always on it), so it stays above the
/// threshold and *every* commit checkpointed and fsynced, on a runtime thread, holding the writer: issuing
/// tokens, the server sat idle a quarter of the time (p99 110 ms at a median of 2 ms). Here a passive
/// checkpoint (which never blocks the writer) copies the log every 100 ms.
///
/// When the log holds more than 32 MiB, the writer's own connection runs a `RESTART` checkpoint between
/// two writes: it copies what is left, waits a moment for readers still on the log (new readers read the
/// database) and starts the log over (`journal_size_limit` trims the file to 64 MiB). This used to be a
/// `RESTART` from this thread's connection, which had two faults. Under a steady stream of writes it
/// rarely found the writer idle, so the log grew with what was written (past 500 MiB in the test below).
/// And a connection that finds the log restarted by another drops its whole page cache: the writer then
/// read its B-tree pages back from the file one `pread` at a time (1.5 a backend token at 10,000 tokens
/// a second).
fn spawn_checkpoints(path: &Path, page_size: i64, writer: std::sync::Weak<AsyncMutex<Connection>>) -> Result<()> {
    let conn = open_connection(path, page_size, 2048)?;
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            // The size of the log when it was last made ready to start over: the next write starts it
            // over, so until then (an idle server) there is nothing to restart again.
            let mut restarted_at = None;
            while writer.strong_count() > 0 {
                std::thread::sleep(CHECKPOINT_EVERY);
                let frames = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
                let result = match frames {
                    Ok(n) if n * page_size > RESTART_BYTES && restarted_at != Some(n) => match writer.upgrade() {
                        // Not inside a transaction: the writer is only ever locked around whole ones.
                        Some(w) => restart_log(&w.blocking_lock()).map(|done| restarted_at = done.then_some(n)),
                        None => Ok(()),
                    },
                    other => other.map(|_| ()),
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        })
        .map_err(|e| StoreError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(())
}

/// A `RESTART` checkpoint on the writer's connection: copies what is left of the log and waits a moment
/// for the readers still on it (new readers read the database), so that the next write starts the log
/// over. `true` when it did not have to give up.
fn restart_log(writer: &Connection) -> rusqlite::Result<bool> {
    // A reader that stays on the log holds writes back as long as this waits: give up quickly and try
    // again on the next round.
    writer.busy_timeout(std::time::Duration::from_millis(50))?;
    let busy = writer.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0));
    writer.busy_timeout(BUSY_TIMEOUT)?;
    Ok(busy? == 0)
}

/// Runs `f` in one write transaction, rolled back if anything fails or panics (the writer never stays
/// inside a transaction: every later write would fail).
fn transaction<T>(c: &Connection, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    struct Open<'a>(&'a Connection);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            if !self.0.is_autocommit() {
                let _ = self.0.execute_batch("ROLLBACK");
            }
        }
    }
    c.execute_batch("BEGIN IMMEDIATE")?;
    let _open = Open(c);
    f(c).and_then(|v| c.execute_batch("COMMIT").map(|_| v))
}

/// Runs one write without waiting for the disk: the auth file's short-lived records (codes, tokens, the
/// jti cache) and the data file's audit batches; in WAL mode `synchronous=NORMAL` keeps the database consistent and loses at most the
/// last moments of such writes on a power failure, which only invalidates freshly issued tokens. The
/// other writes of the auth file (revocations, deletions, compare-and-swap changes) keep
/// `synchronous=FULL`, as FHIR writes do in theirs.
fn relaxed<T>(conn: &Connection, write: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
    /// Sets `synchronous=FULL` again however the write ends, a panic included. A failure is logged: the
    /// write's own outcome stands (answering an error for a group that did commit would have it applied
    /// again one write at a time, and each jti it recorded would then read as a replay).
    struct Full<'a>(&'a Connection);
    impl Drop for Full<'_> {
        fn drop(&mut self) {
            if let Err(e) = self.0.execute_batch("PRAGMA synchronous = FULL") {
                tracing::error!(error = %e, "cannot set synchronous=FULL again");
            }
        }
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    let _full = Full(conn);
    Ok(write(conn)?)
}

/// How long a connection waits for a lock before it answers busy.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a connection; `page_size` is that of a new file, `cache_kib` sizes the page cache (it fills only
/// as pages are used).
fn open_connection(path: &Path, page_size: i64, cache_kib: i64) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.execute_batch(&format!("PRAGMA page_size = {page_size};"))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA journal_size_limit = 67108864;",
    )?;
    conn.execute_batch(&format!("PRAGMA cache_size = -{cache_kib};"))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn migrate(conn: &mut Connection, now_ms: i64, auth: &Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS kindling_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")?;
    let applied: i64 = conn.query_row("SELECT COALESCE(MAX(version), 0) FROM kindling_migrations", [], |r| r.get(0))?;
    crate::check_schema_not_newer(applied, MIGRATIONS.last().map_or(0, |m| m.0))?;
    for (version, name, sql) in MIGRATIONS {
        if *version <= applied {
            continue;
        }
        // IMMEDIATE: the data file is locked for writing from the start, so that nothing else writes
        // between what a migration reads and what it changes.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if *version == AUTH_FILE_MIGRATION {
            auth::move_records(&tx, auth)?;
        }
        tx.execute_batch(sql)?;
        tx.execute("INSERT INTO kindling_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)", params![version, name, now_ms])?;
        tx.commit()?;
        tracing::info!(version, name, "applied SQLite migration");
    }
    Ok(())
}

/// Rebuilds the search-index rows of every type a migration listed in `reindex_pending`, one transaction
/// per type, and forgets the type.
fn reindex_pending(conn: &mut Connection, base_url: Option<&str>) -> Result<()> {
    let types: Vec<String> =
        conn.prepare("SELECT res_type FROM reindex_pending ORDER BY res_type")?.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    for ty in types {
        let tx = conn.transaction()?;
        let n = write::reindex_type(&tx, &ty, base_url)?;
        tx.execute("DELETE FROM reindex_pending WHERE res_type = ?1", [&ty])?;
        tx.commit()?;
        tracing::info!(resource_type = %ty, resources = n, "rebuilt the search index");
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `config.path` and applies pending migrations.
    pub fn open(config: SqliteConfig, clock: SharedClock) -> Result<Self> {
        if let Some(dir) = config.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut writer = open_connection(&config.path, DATA_PAGE, config.writer_cache_mib as i64 * 1024)?;
        let (auth_writer, auth_is_new) = auth::open_writer(&config.path)?;
        // Before anything moves between them (migration 11): do the two files belong together?
        let pair = pairing::check(&config.path, &writer, &auth_writer, auth_is_new)?;
        migrate(&mut writer, unix_ms(clock.now()), &auth_writer)?;
        pairing::record_both(&config.path, &writer, &auth_writer, &pair)?;
        reindex_pending(&mut writer, config.base_url.as_deref())?;
        let statistics = Arc::new(Statistics::load(&writer)?);
        // Data written by an earlier run (through the API, say) may have outgrown the statistics.
        statistics.follow(&writer)?;
        let auth = auth::AuthFile::start(&config.path, auth_writer)?;
        let writer = Arc::new(AsyncMutex::new(writer));
        spawn_checkpoints(&config.path, DATA_PAGE, Arc::downgrade(&writer))?;
        let readers = readers::Readers::new(config.path.clone(), DATA_PAGE, 8 * 1024, statistics.generation.clone());
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: config.path,
                base_url: config.base_url,
                clock,
                writer,
                readers,
                statistics,
                snapshots: SnapshotCache::new(2048),
                auth,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// `_include` / `_revinclude` hops, in chunks that stay within SQLite's bound-parameter limit.
    fn reference_hop(&self, keys: &[i64], include: &Include, reverse: bool) -> Result<Vec<i64>> {
        let conn = self.inner.reader()?;
        let mut out = Vec::new();
        for chunk in keys.chunks(500) {
            let b = crate::sql::compile_reference_hop(chunk, include, reverse, Dialect::Sqlite);
            out.extend(query_keys(&conn, &b.sql, &b.values)?);
        }
        Ok(out)
    }
}

/// Planner statistics that follow the data, with nobody running a command.
///
/// SQLite plans with the statistics `ANALYZE` last stored. Taken when the sandbox held a handful of
/// resources and never again, they made searches after a load through the API 20–100 times slower (the
/// planner scanned the wrong index: `kindling bench --only api-load`, BENCHMARKS.md). They are taken
/// again, on the writer after a commit, whenever the resources have more than doubled since the last time
/// (and grown by at least 1,000): sampled (`analysis_limit`), a few milliseconds on the Synthea set, and a
/// logarithmic number of times as a database grows. The size is the highest resource key, which every
/// write raises; no rows are counted.
struct Statistics {
    /// The highest resource key when the statistics were last taken.
    taken_at: std::sync::atomic::AtomicI64,
    /// Bumped each time they are taken: a connection keeps the statistics it read when it opened, so
    /// readers opened before are closed rather than pooled again.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Statistics {
    /// What the stored statistics say the resources table held when they were taken (0 if never).
    fn load(conn: &Connection) -> Result<Statistics> {
        let has_stats: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1')", [], |r| r.get(0))?;
        let mut taken_at = 0;
        if has_stats {
            let mut stmt = conn.prepare("SELECT stat FROM sqlite_stat1 WHERE tbl = 'resources'")?;
            for stat in stmt.query_map([], |r| r.get::<_, String>(0))? {
                taken_at = taken_at.max(stat?.split(' ').next().and_then(|n| n.parse::<i64>().ok()).unwrap_or(0));
            }
        }
        Ok(Statistics { taken_at: taken_at.into(), generation: readers::Readers::generation() })
    }

    /// Takes the statistics again if the resources outgrew them; called on the writer, outside a transaction.
    fn follow(&self, conn: &Connection) -> Result<()> {
        let size: i64 = conn.prepare_cached("SELECT COALESCE(MAX(rid), 0) FROM resources")?.query_row([], |r| r.get(0))?;
        let taken_at = self.taken_at.load(std::sync::atomic::Ordering::Relaxed);
        if size >= 2 * taken_at + 1000 {
            let started = std::time::Instant::now();
            self.take(conn)?;
            tracing::debug!(resources = size, previous = taken_at, ms = started.elapsed().as_secs_f64() * 1000.0, "planner statistics taken again");
        }
        Ok(())
    }

    /// Takes the statistics (sampled: enough for the planner, milliseconds rather than seconds).
    fn take(&self, conn: &Connection) -> Result<()> {
        conn.execute_batch("PRAGMA analysis_limit = 1000; ANALYZE;")?;
        let size: i64 = conn.prepare_cached("SELECT COALESCE(MAX(rid), 0) FROM resources")?.query_row([], |r| r.get(0))?;
        self.taken_at.store(size, std::sync::atomic::Ordering::Relaxed);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }
}

impl Inner {
    fn reader(&self) -> Result<readers::PooledReader<'_>> {
        self.readers.get()
    }
}

const RESOURCE_COLUMNS: &str = "rid, res_type, id, version, last_updated, deleted, content";

fn row_to_resource(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredResource> {
    Ok(StoredResource {
        key: row.get(0)?,
        resource_type: row.get(1)?,
        id: row.get(2)?,
        version: row.get(3)?,
        last_updated: row.get(4)?,
        deleted: row.get::<_, i64>(5)? != 0,
        json: row.get(6)?,
    })
}

pub(crate) fn read_current(conn: &Connection, resource_type: &str, id: &str) -> Result<Option<StoredResource>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE res_type = ?1 AND id = ?2"))?;
    Ok(stmt.query_row(params![resource_type, id], row_to_resource).optional()?)
}

pub(crate) fn search_keys(conn: &Connection, query: &SearchQuery) -> Result<Vec<i64>> {
    let b = compile_search(query, Dialect::Sqlite);
    let mut stmt = conn.prepare_cached(&b.sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(b.values.iter()), |r| r.get::<_, i64>(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn fetch_keys(conn: &Connection, keys: &[i64]) -> Result<Vec<StoredResource>> {
    let mut found: std::collections::HashMap<i64, StoredResource> = std::collections::HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(500) {
        let placeholders = vec!["?"; chunk.len()].join(",");
        let mut stmt = conn.prepare_cached(&format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE deleted = 0 AND rid IN ({placeholders})"))?;
        let rows = stmt.query_map(rusqlite::params_from_iter(chunk.iter()), row_to_resource)?;
        for r in rows {
            let r = r?;
            found.insert(r.key, r);
        }
    }
    Ok(keys.iter().filter_map(|k| found.remove(k)).collect())
}

fn query_keys(conn: &Connection, sql: &str, values: &[SqlValue]) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values.iter()), |r| r.get::<_, i64>(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

#[async_trait]
impl Store for SqliteStore {
    async fn read(&self, resource_type: &str, id: &str) -> Result<Option<StoredResource>> {
        let conn = self.inner.reader()?;
        read_current(&conn, resource_type, id)
    }

    async fn vread(&self, resource_type: &str, id: &str, version: i64) -> Result<Option<StoredResource>> {
        let conn = self.inner.reader()?;
        let Some(current) = read_current(&conn, resource_type, id)? else { return Ok(None) };
        if current.version == version {
            return Ok(Some(current));
        }
        let mut stmt = conn.prepare_cached("SELECT last_updated, deleted, content FROM resource_history WHERE rid = ?1 AND version = ?2")?;
        let old = stmt.query_row(params![current.key, version], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))).optional()?;
        Ok(old.map(|(last_updated, deleted, json)| StoredResource {
            key: current.key,
            resource_type: current.resource_type.clone(),
            id: current.id.clone(),
            version,
            last_updated,
            deleted: deleted != 0,
            json,
        }))
    }

    async fn history(&self, scope: &HistoryScope, p: &HistoryParams) -> Result<HistoryPage> {
        let conn = self.inner.reader()?;
        let mut values: Vec<SqlValue> = Vec::new();
        let mut cond = String::from("1 = 1");
        match scope {
            HistoryScope::System => {}
            HistoryScope::Type(t) => {
                values.push(SqlValue::Text(t.clone()));
                cond.push_str(&format!(" AND r.res_type = ?{}", values.len()));
            }
            HistoryScope::Instance(t, id) => {
                values.push(SqlValue::Text(t.clone()));
                cond.push_str(&format!(" AND r.res_type = ?{}", values.len()));
                values.push(SqlValue::Text(id.clone()));
                cond.push_str(&format!(" AND r.id = ?{}", values.len()));
            }
        }
        let mut time_cond = String::new();
        if let Some(since) = p.since {
            values.push(SqlValue::Int(since));
            time_cond.push_str(&format!(" AND v.last_updated >= ?{}", values.len()));
        }
        if let Some(till) = p.till {
            values.push(SqlValue::Int(till));
            time_cond.push_str(&format!(" AND v.last_updated <= ?{}", values.len()));
        }
        let union = format!(
            "SELECT r.rid AS rid, r.res_type AS res_type, r.id AS id, v.version AS version, v.last_updated AS last_updated, v.deleted AS deleted, v.content AS content
               FROM resources r JOIN (SELECT rid, version, last_updated, deleted, content FROM resources
                                      UNION ALL SELECT rid, version, last_updated, deleted, content FROM resource_history) v ON v.rid = r.rid
              WHERE {cond}{time_cond}"
        );
        let total: i64 = {
            let mut stmt = conn.prepare_cached(&format!("SELECT COUNT(*) FROM ({union}) AS h"))?;
            stmt.query_row(rusqlite::params_from_iter(values.iter()), |r| r.get(0))?
        };
        values.push(SqlValue::Int(p.count as i64));
        let limit_idx = values.len();
        values.push(SqlValue::Int(p.offset as i64));
        let offset_idx = values.len();
        let sql =
            format!("SELECT {RESOURCE_COLUMNS} FROM ({union}) AS h ORDER BY last_updated DESC, version DESC, rid DESC LIMIT ?{limit_idx} OFFSET ?{offset_idx}");
        let mut stmt = conn.prepare_cached(&sql)?;
        let entries = stmt.query_map(rusqlite::params_from_iter(values.iter()), row_to_resource)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(HistoryPage { total: total as usize, entries })
    }

    async fn search(&self, query: &SearchQuery) -> Result<Vec<i64>> {
        let conn = self.inner.reader()?;
        search_keys(&conn, query)
    }

    async fn fetch(&self, keys: &[i64]) -> Result<Vec<StoredResource>> {
        let conn = self.inner.reader()?;
        fetch_keys(&conn, keys)
    }

    async fn include(&self, keys: &[i64], include: &Include) -> Result<Vec<i64>> {
        self.reference_hop(keys, include, false)
    }

    async fn revinclude(&self, keys: &[i64], include: &Include) -> Result<Vec<i64>> {
        self.reference_hop(keys, include, true)
    }

    async fn everything(&self, patient_id: &str, types: Option<&[String]>, since: Option<i64>) -> Result<Vec<i64>> {
        let conn = self.inner.reader()?;
        let b = crate::sql::compile_everything(patient_id, types, since, Dialect::Sqlite);
        query_keys(&conn, &b.sql, &b.values)
    }

    async fn in_patient_compartment(&self, key: i64, patient_id: &str) -> Result<bool> {
        let conn = self.inner.reader()?;
        let mut stmt = conn.prepare_cached("SELECT 1 FROM compartment WHERE rid = ?1 AND patient_id = ?2")?;
        Ok(stmt.exists(params![key, patient_id])?)
    }

    async fn in_patient_compartment_many(&self, keys: &[i64], patient_id: &str) -> Result<std::collections::HashSet<i64>> {
        let conn = self.inner.reader()?;
        let mut found = std::collections::HashSet::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(",");
            let mut stmt = conn.prepare_cached(&format!("SELECT rid FROM compartment WHERE patient_id = ? AND rid IN ({placeholders})"))?;
            let values = std::iter::once(rusqlite::types::Value::Text(patient_id.to_string())).chain(chunk.iter().map(|k| rusqlite::types::Value::Integer(*k)));
            let rows = stmt.query_map(rusqlite::params_from_iter(values), |r| r.get::<_, i64>(0))?;
            for r in rows {
                found.insert(r?);
            }
        }
        Ok(found)
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let guard = self.inner.writer.clone().lock_owned().await;
        guard.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Box::new(SqliteTransaction {
            conn: Some(guard),
            clock: self.inner.clock.clone(),
            base_url: self.inner.base_url.clone(),
            statistics: self.inner.statistics.clone(),
        }))
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let now = unix_ms(self.inner.clock.now());
        let snapshot = Snapshot { expires: now + SNAPSHOT_TTL_MS, ..snapshot };
        self.inner.snapshots.insert(id.clone(), snapshot, now);
        Ok(id)
    }

    async fn load_snapshot(&self, id: &str) -> Result<Option<Arc<Snapshot>>> {
        Ok(self.inner.snapshots.get(id, unix_ms(self.inner.clock.now())))
    }

    async fn counts(&self) -> Result<Vec<(String, i64)>> {
        let conn = self.inner.reader()?;
        let mut stmt = conn.prepare_cached("SELECT res_type, COUNT(*) FROM resources WHERE deleted = 0 GROUP BY res_type ORDER BY res_type")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    async fn append_audit(&self, records: &[crate::audit::AuditRecord]) -> Result<()> {
        let conn = self.inner.writer.lock().await;
        // Audit batches need no fsync of their own (see `relaxed`), which restores FULL however the batch
        // ends, so FHIR writes never run relaxed.
        relaxed(&conn, |c| {
            transaction(c, |c| {
                let mut stmt = c.prepare_cached(
                    "INSERT INTO audit_events (recorded, category, action, outcome, client_id, username, patient, entity, detail, launch_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for r in records {
                    stmt.execute(params![r.recorded, r.category, r.action, r.outcome, r.client_id, r.username, r.patient, r.entity, r.detail, r.launch])?;
                }
                Ok(())
            })
        })
    }

    async fn audit_events(&self, f: &crate::audit::AuditFilter) -> Result<Vec<(i64, crate::audit::AuditRecord)>> {
        let conn = self.inner.reader()?;
        let b = crate::sql::compile_audit_query(f, Dialect::Sqlite);
        let mut stmt = conn.prepare_cached(&b.sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(b.values.iter()), |r| {
            Ok((
                r.get(0)?,
                crate::audit::AuditRecord {
                    recorded: r.get(1)?,
                    category: r.get(2)?,
                    action: r.get(3)?,
                    outcome: r.get(4)?,
                    client_id: r.get(5)?,
                    username: r.get(6)?,
                    patient: r.get(7)?,
                    entity: r.get(8)?,
                    detail: r.get(9)?,
                    launch: r.get(10)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    async fn audit_count(&self, f: &crate::audit::AuditFilter) -> Result<u64> {
        let conn = self.inner.reader()?;
        let b = crate::sql::compile_audit_count(f, Dialect::Sqlite);
        let n: i64 = conn.prepare_cached(&b.sql)?.query_row(rusqlite::params_from_iter(b.values.iter()), |r| r.get(0))?;
        Ok(n as u64)
    }

    async fn optimize(&self) -> Result<()> {
        let conn = self.inner.writer.lock().await;
        self.inner.statistics.take(&conn)?;
        // Empty the WAL, so that the next start need not scan it; the checkpoint thread may hold the
        // checkpoint lock for a moment (the pragma then answers busy).
        for _ in 0..100 {
            let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            if busy == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(())
    }
}

/// A write transaction on SQLite (the writer connection, held until commit).
pub struct SqliteTransaction {
    conn: Option<OwnedMutexGuard<Connection>>,
    clock: SharedClock,
    base_url: Option<String>,
    statistics: Arc<Statistics>,
}

impl SqliteTransaction {
    fn conn(&self) -> &Connection {
        self.conn.as_ref().expect("transaction is open")
    }
}

impl Drop for SqliteTransaction {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && let Err(e) = conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "rollback failed");
        }
    }
}

#[async_trait]
impl Reader for SqliteTransaction {
    async fn read(&mut self, resource_type: &str, id: &str) -> Result<Option<StoredResource>> {
        read_current(self.conn(), resource_type, id)
    }
    async fn search(&mut self, query: &SearchQuery) -> Result<Vec<i64>> {
        search_keys(self.conn(), query)
    }
    async fn fetch(&mut self, keys: &[i64]) -> Result<Vec<StoredResource>> {
        fetch_keys(self.conn(), keys)
    }
}

#[async_trait]
impl Transaction for SqliteTransaction {
    async fn put(&mut self, resource: Value, precondition: Precondition) -> Result<Written> {
        let prepared = crate::prepare(resource, self.base_url.as_deref())?;
        self.put_prepared(&prepared, precondition).await
    }

    async fn put_prepared(&mut self, prepared: &Prepared, precondition: Precondition) -> Result<Written> {
        let now = unix_ms(self.clock.now());
        write::put(self.conn(), prepared, precondition, now)
    }

    async fn delete(&mut self, resource_type: &str, id: &str, precondition: Precondition) -> Result<Option<StoredResource>> {
        let now = unix_ms(self.clock.now());
        write::delete(self.conn(), resource_type, id, precondition, now)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let Some(conn) = self.conn.take() else { return Ok(()) };
        if let Err(e) = conn.execute_batch("COMMIT") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        // Committed: statistics that fail to follow cost speed, not data.
        if let Err(e) = self.statistics.follow(&conn) {
            tracing::warn!(error = %e, "could not refresh the planner statistics");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{SqliteConfig, SqliteStore};
    use crate::{Precondition, Store};
    use fhir::time::SystemClock;
    use serde_json::json;
    use std::sync::Arc;

    /// Under a steady stream of writes the writer starts the log over once it holds more than
    /// `RESTART_BYTES`. A `RESTART` from the checkpoint thread's own connection never found the writer
    /// idle: in the data file, with 8 KiB records, the log grew to 525 MiB for 156 MiB of records. Both
    /// files are checked, as their writes (tokens; FHIR and audit records) go through writers and
    /// checkpoint threads of their own: the data file's restarts lost their test when the records moved.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_started_over_by_the_writer_while_writes_go_on() {
        use crate::AuthStore;
        let auth = largest_log_under_writes("a.auth.db-wal", |store, key, value| async move {
            store.auth_put("test", &key, &value, None, None).await.unwrap();
        })
        .await;
        assert!(auth < 128 << 20, "the auth file's log grew to {} MiB for 156 MiB of records", auth >> 20);
        let data = largest_log_under_writes("a.db-wal", |store, key, value| async move {
            let record = crate::audit::AuditRecord { action: key, detail: Some(value.to_string()), ..Default::default() };
            store.append_audit(&[record]).await.unwrap();
        })
        .await;
        // Each audit commit writes its row's pages and those of the table's indexes (8 KiB pages): about
        // 800 MiB go through this log (all of it stays when the log is never started over), and up to
        // ~100 MiB of it between two rounds of the checkpoint thread; on a machine busy with other tests the
        // thread runs later (305 MiB seen in CI), so the bound is well above that and well below 800.
        assert!(data < 480 << 20, "the data file's log grew to {} MiB of the ~800 MiB written through it", data >> 20);
    }

    /// Eight writers without a pause, 2,500 records of 6,000 bytes each through `write` (a cell and
    /// overflow pages): never a moment for the log to be copied whole between two writes. Answers the
    /// largest size the log `wal` reached.
    async fn largest_log_under_writes<F, W>(wal: &str, write: W) -> u64
    where
        W: Fn(Arc<SqliteStore>, String, Arc<String>) -> F + Clone + Send + 'static,
        F: std::future::Future<Output = ()> + Send,
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let store = Arc::new(SqliteStore::open(SqliteConfig { path, base_url: None, writer_cache_mib: 8 }, Arc::new(SystemClock)).unwrap());
        let value = Arc::new("x".repeat(6000));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..8 {
            let (store, value, done, write) = (store.clone(), value.clone(), done.clone(), write.clone());
            writers.spawn(async move {
                for n in 0..2_500 {
                    write(store.clone(), format!("{w}-{n}"), value.clone()).await;
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let mut largest = 0;
        while done.load(std::sync::atomic::Ordering::SeqCst) < 8 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            largest = largest.max(std::fs::metadata(dir.path().join(wal)).map_or(0, |m| m.len()));
        }
        writers.join_all().await;
        assert!(largest > 0, "the writes went through {wal}");
        largest
    }

    /// Migration 7 fills the date range of existing per-patient rows with what writes put there.
    #[tokio::test]
    async fn migration_7_fills_the_per_patient_dates_as_writes_do() {
        let dir = tempfile::tempdir().unwrap();
        let config = || SqliteConfig { path: dir.path().join("a.db"), base_url: None, writer_cache_mib: 8 };
        let rows = |conn: &rusqlite::Connection| -> Vec<(String, i64, Option<i64>, Option<i64>)> {
            let mut stmt = conn.prepare("SELECT p, rid, date_lo, date_hi FROM sp_token_patient ORDER BY rid, p, seq").unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().collect::<rusqlite::Result<_>>().unwrap()
        };
        {
            let store = SqliteStore::open(config(), Arc::new(SystemClock)).unwrap();
            let mut tx = store.begin().await.unwrap();
            let obs = |effective: serde_json::Value| {
                let mut o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                   "category": [{"coding": [{"code": "vital-signs"}, {"code": "survey"}]}], "subject": {"reference": "Patient/p1"}});
                if let Some(e) = effective.as_object() {
                    o.as_object_mut().unwrap().extend(e.clone());
                }
                o
            };
            for (id, mut o) in [
                ("o1", obs(json!({"effectiveDateTime": "2023-01-05"}))),
                ("o2", obs(json!({"effectivePeriod": {"start": "2023-01-01", "end": "2023-01-10T12:00:00Z"}}))),
                ("o3", obs(json!(null))),
                // No `date` parameter on Condition.
                (
                    "c1",
                    json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"}, "onsetDateTime": "2020-01-01",
                              "category": [{"coding": [{"code": "problem-list-item"}]}]}),
                ),
            ] {
                o["id"] = json!(id);
                tx.put(o, Precondition::None).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
        let conn = rusqlite::Connection::open(dir.path().join("a.db")).unwrap();
        let written = rows(&conn);
        assert_eq!(written.len(), 7);
        assert_eq!(written.iter().filter(|r| r.2.is_some() && r.3.is_some()).count(), 4, "{written:?}");
        // Back to the schema before migration 7, then its SQL again.
        conn.execute_batch("ALTER TABLE sp_token_patient DROP COLUMN date_lo; ALTER TABLE sp_token_patient DROP COLUMN date_hi;").unwrap();
        conn.execute_batch(include_str!("../../migrations/sqlite/0007_patient_token_dates.sql")).unwrap();
        assert_eq!(rows(&conn), written);
    }

    /// Planner statistics follow data written through transactions: taken again once the resources
    /// have more than doubled (and grown by 1,000), with nobody calling `optimize`.
    #[tokio::test]
    async fn statistics_follow_the_data_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(SqliteConfig { path: dir.path().join("a.db"), base_url: None, writer_cache_mib: 8 }, Arc::new(SystemClock)).unwrap();
        let write = |from: usize, to: usize| {
            let store = &store;
            async move {
                let mut tx = store.begin().await.unwrap();
                for i in from..to {
                    let o = json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final", "code": {"text": "x"},
                                   "subject": {"reference": format!("Patient/p{}", i % 50)}});
                    tx.put(o, Precondition::None).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
        };
        let stat = || -> i64 {
            let conn = rusqlite::Connection::open(dir.path().join("a.db")).unwrap();
            conn.query_row("SELECT COALESCE(MAX(CAST(stat AS INTEGER)), 0) FROM sqlite_stat1 WHERE tbl = 'resources'", [], |r| r.get(0)).unwrap_or(0)
        };
        write(0, 20).await;
        store.optimize().await.unwrap();
        assert_eq!(stat(), 20);
        write(20, 900).await;
        assert_eq!(stat(), 20, "not yet grown by 1,000");
        for from in (900..3000).step_by(300) {
            write(from, from + 300).await;
        }
        assert!(stat() >= 1020, "taken again while the data grew: {}", stat());
        let before = stat();
        // Reopened: up to date, nothing to do; the readers plan with what is stored.
        drop(store);
        let store = SqliteStore::open(SqliteConfig { path: dir.path().join("a.db"), base_url: None, writer_cache_mib: 8 }, Arc::new(SystemClock)).unwrap();
        assert_eq!(stat(), before);
        assert_eq!(store.counts().await.unwrap(), vec![("Observation".to_string(), 3000)]);
    }

    #[test]
    fn a_database_migrated_by_a_newer_release_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = || SqliteConfig { path: dir.path().join("a.db"), base_url: None, writer_cache_mib: 8 };
        drop(SqliteStore::open(config(), Arc::new(SystemClock)).unwrap());
        let conn = rusqlite::Connection::open(dir.path().join("a.db")).unwrap();
        conn.execute("INSERT INTO kindling_migrations (version, name, applied_at) VALUES (9999, 'from the future', 0)", []).unwrap();
        drop(conn);
        let err = SqliteStore::open(config(), Arc::new(SystemClock)).err().expect("refused");
        assert!(err.to_string().contains("schema version 9999"), "{err}");
    }
}
