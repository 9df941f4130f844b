//! The PostgreSQL backend: a connection pool (sqlx), the same schema and search SQL as SQLite
//! ([`crate::sql`] with `$N` placeholders), and everything a node must share with the others in the
//! database — auth state, audit, and paging snapshots. Writes lock the current row (`FOR UPDATE`), so
//! `If-Match` holds across nodes.

mod auth;
mod reads;
mod write;

use crate::sql::{Dialect, SqlBuilder, SqlValue, compile_search, compile_search_numbered};
use crate::{
    HistoryPage, HistoryParams, HistoryScope, MAX_SNAPSHOTS_PER_OWNER, Precondition, Prepared, Reader, Result, SearchPage, Snapshot, Store, StoreError,
    StoredResource, Transaction, Written,
};
use async_trait::async_trait;
use fhir::query::{Include, SearchQuery};
use fhir::time::{SharedClock, unix_ms};
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgPoolOptions, PgRow};
use sqlx::{Arguments, PgPool, Postgres, Row};
use std::sync::Arc;

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
    (2, "unlogged_snapshots", include_str!("../../migrations/postgres/0002_unlogged_snapshots.sql")),
    (3, "covering_index_keys", include_str!("../../migrations/postgres/0003_covering_index_keys.sql")),
    (4, "partial_auth_indexes", include_str!("../../migrations/postgres/0004_partial_auth_indexes.sql")),
    (5, "patient_tokens", include_str!("../../migrations/postgres/0005_patient_tokens.sql")),
    (6, "patient_token_dates", include_str!("../../migrations/postgres/0006_patient_token_dates.sql")),
    (7, "lz4_content", include_str!("../../migrations/postgres/0007_lz4_content.sql")),
    (8, "reindex_pending", include_str!("../../migrations/postgres/0008_reindex_pending.sql")),
    (9, "snapshot_owner", include_str!("../../migrations/postgres/0009_snapshot_owner.sql")),
    (10, "condition_asserted_date", include_str!("../../migrations/postgres/0010_condition_asserted_date.sql")),
    (11, "patients_by_code", include_str!("../../migrations/postgres/0011_patients_by_code.sql")),
];

/// How long a paging snapshot lives.
const SNAPSHOT_TTL_MS: i64 = 30 * 60 * 1000;
/// Expired snapshots are deleted by the first save after this much time (per node), not by every save.
const SNAPSHOT_SWEEP_MS: i64 = 60 * 1000;

/// Where the PostgreSQL store is, and how to use it.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/database`
    pub url: String,
    /// This server's FHIR base URL; absolute references to it are indexed as local.
    pub base_url: Option<String>,
    /// Connections in the pool.
    pub max_connections: u32,
}

/// The FHIR data and the authorisation server's state in PostgreSQL, shared by several nodes.
pub struct PostgresStore {
    pool: PgPool,
    /// For short-lived auth records: `synchronous_commit = off` (see [`PostgresStore::relaxed_pool`]).
    relaxed: PgPool,
    reads: reads::ReadCoalescer,
    /// When this node last deleted expired snapshots (Unix ms).
    swept: std::sync::atomic::AtomicI64,
    base_url: Option<String>,
    clock: SharedClock,
    statistics: Arc<Statistics>,
}

/// Planner statistics that follow the data, with nobody running a command.
///
/// PostgreSQL's autovacuum analyses a table once a tenth of it has changed, but it may be off (it is on
/// the machines these tests run on) or a minute behind a bulk load. Every 1,000 resources a node writes,
/// it compares the highest resource key with the row count the planner last saw (`pg_class.reltuples`)
/// and, when the resources have more than doubled since (and grown by 1,000), runs `ANALYZE` in the
/// background: it takes no lock that writes wait for, and one node at a time does it (an advisory lock).
pub(crate) struct Statistics {
    written: std::sync::atomic::AtomicU64,
    running: std::sync::atomic::AtomicBool,
}

impl Statistics {
    const CHECK_EVERY: u64 = 1000;

    fn new() -> Arc<Statistics> {
        Arc::new(Statistics { written: 0.into(), running: false.into() })
    }

    /// Counts resources written (committed) by this node; checks the statistics every 1,000.
    fn wrote(self: &Arc<Self>, pool: &PgPool, n: u64) {
        let before = self.written.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if n > 0 && (before + n) / Self::CHECK_EVERY != before / Self::CHECK_EVERY {
            self.check(pool.clone());
        }
    }

    /// Checks (and refreshes) the statistics in the background, unless a check is already running.
    fn check(self: &Arc<Self>, pool: PgPool) {
        if self.running.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = refresh_statistics(&pool).await {
                tracing::warn!(error = %e, "could not refresh the planner statistics");
            }
            me.running.store(false, std::sync::atomic::Ordering::Release);
        });
    }
}

/// `ANALYZE` when the resources outgrew the statistics; whether it ran.
async fn refresh_statistics(pool: &PgPool) -> Result<bool> {
    let (size, seen): (i64, f32) =
        sqlx::query_as("SELECT COALESCE((SELECT MAX(rid) FROM resources), 0), COALESCE((SELECT reltuples FROM pg_class WHERE oid = 'resources'::regclass), 0)")
            .fetch_one(pool)
            .await?;
    if (size as f64) < 2.0 * f64::from(seen.max(0.0)) + 1000.0 {
        return Ok(false);
    }
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended('kindling:analyze', 0))").fetch_one(&mut *conn).await?;
    if !locked {
        return Ok(false);
    }
    let started = std::time::Instant::now();
    let analysed = sqlx::query("ANALYZE").execute(&mut *conn).await;
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended('kindling:analyze', 0))").execute(&mut *conn).await?;
    analysed?;
    tracing::debug!(resources = size, previous = seen, ms = started.elapsed().as_secs_f64() * 1000.0, "planner statistics taken again");
    Ok(true)
}

pub(crate) fn args(values: &[SqlValue]) -> PgArguments {
    let mut a = PgArguments::default();
    for v in values {
        let _ = match v {
            SqlValue::Text(s) => a.add(s.clone()),
            SqlValue::Int(i) => a.add(*i),
            SqlValue::Real(f) => a.add(*f),
        };
    }
    a
}

const RESOURCE_COLUMNS: &str = "rid, res_type, id, version, last_updated, deleted, content";
/// [`RESOURCE_COLUMNS`] but the key, of the table aliased `res`.
const PAGE_COLUMNS: &str = "res.res_type, res.id, res.version, res.last_updated, res.deleted, res.content";

pub(crate) fn row_to_resource(r: &PgRow) -> Result<StoredResource> {
    Ok(StoredResource {
        key: r.try_get(0)?,
        resource_type: r.try_get(1)?,
        id: r.try_get(2)?,
        version: r.try_get(3)?,
        last_updated: r.try_get(4)?,
        deleted: r.try_get::<i64, _>(5)? != 0,
        json: r.try_get(6)?,
    })
}

/// Applies pending migrations under an advisory lock, so that nodes starting together do not race.
pub async fn migrate(pool: &PgPool, now_ms: i64) -> Result<Vec<String>> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock(7206191)").execute(&mut *conn).await?;
    let result = async {
        sqlx::query("CREATE TABLE IF NOT EXISTS kindling_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)")
            .execute(&mut *conn)
            .await?;
        let applied: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM kindling_migrations").fetch_one(&mut *conn).await?;
        crate::check_schema_not_newer(applied, MIGRATIONS.last().map_or(0, |m| m.0))?;
        let mut done = Vec::new();
        for (version, name, sql) in MIGRATIONS {
            if *version <= applied {
                continue;
            }
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql)).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO kindling_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                .bind(version)
                .bind(*name)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version, name, "applied PostgreSQL migration");
            done.push(format!("{version} {name}"));
        }
        Ok::<_, StoreError>(done)
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(7206191)").execute(&mut *conn).await;
    result
}

/// Rebuilds the search-index rows of every type a migration listed in `reindex_pending`, one transaction
/// per type, under the migration lock (a node starting meanwhile waits; the next finds nothing to do).
pub async fn reindex_pending(pool: &PgPool, base_url: Option<&str>) -> Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock(7206191)").execute(&mut *conn).await?;
    let result = async {
        let types: Vec<String> = sqlx::query_scalar("SELECT res_type FROM reindex_pending ORDER BY res_type").fetch_all(&mut *conn).await?;
        for ty in types {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let n = write::reindex_type(&mut tx, &ty, base_url).await?;
            sqlx::query("DELETE FROM reindex_pending WHERE res_type = $1").bind(&ty).execute(&mut *tx).await?;
            tx.commit().await?;
            tracing::info!(resource_type = %ty, resources = n, "rebuilt the search index");
        }
        Ok::<_, StoreError>(())
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(7206191)").execute(&mut *conn).await;
    result
}

impl PostgresStore {
    /// Connects and applies pending migrations.
    pub async fn connect(config: PostgresConfig, clock: SharedClock) -> Result<PostgresStore> {
        // No ping before each use (sqlx's default): it is a network round trip per statement, which
        // halved read throughput. A connection that broke while idle fails its next statement instead,
        // which sqlx then closes; the request answers 500 and the next one gets a fresh connection.
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            // An unreachable database answers 503 within seconds instead of holding requests for sqlx's
            // default 30 s.
            .acquire_timeout(std::time::Duration::from_secs(5))
            .test_before_acquire(false)
            .connect(&config.url)
            .await?;
        migrate(&pool, unix_ms(clock.now())).await?;
        reindex_pending(&pool, config.base_url.as_deref()).await?;
        let relaxed_options = config.url.parse::<sqlx::postgres::PgConnectOptions>()?.options([("synchronous_commit", "off")]);
        let relaxed = PgPoolOptions::new()
            .max_connections((config.max_connections / 2).max(2))
            .acquire_timeout(std::time::Duration::from_secs(5))
            .test_before_acquire(false)
            .connect_with(relaxed_options)
            .await?;
        let reads = reads::ReadCoalescer::spawn(pool.clone());
        let statistics = Statistics::new();
        // Data written by an earlier run (through the API, say) may have outgrown the statistics.
        statistics.check(pool.clone());
        Ok(PostgresStore { pool, relaxed, reads, swept: std::sync::atomic::AtomicI64::new(0), base_url: config.base_url, clock, statistics })
    }

    /// The connection pool (for tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Connections with `synchronous_commit = off`, for the short-lived auth records (codes, tokens, the
    /// `jti` cache, sessions): a commit does not wait for the WAL flush, and a PostgreSQL crash may lose
    /// the last fraction of a second of them, which only invalidates freshly issued tokens or codes. The
    /// writes are visible to every node at once as usual. Revocations and FHIR data stay durable. The same
    /// trade as SQLite's `synchronous=NORMAL` for these records.
    pub(crate) fn relaxed_pool(&self) -> &PgPool {
        &self.relaxed
    }

    /// Deletes expired paging snapshots, at most once a minute per node.
    async fn sweep_snapshots(&self) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.now();
        let swept = self.swept.load(Relaxed);
        if now - swept >= SNAPSHOT_SWEEP_MS && self.swept.compare_exchange(swept, now, Relaxed, Relaxed).is_ok() {
            sqlx::query("DELETE FROM search_snapshots WHERE expires <= $1").bind(now).execute(&self.pool).await?;
        }
        Ok(())
    }

    fn now(&self) -> i64 {
        unix_ms(self.clock.now())
    }

    async fn keys(&self, b: &SqlBuilder) -> Result<Vec<i64>> {
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(b.sql.clone()), args(&b.values)).fetch_all(&self.pool).await?;
        rows.iter().map(|r| r.try_get::<i64, _>(0).map_err(StoreError::from)).collect()
    }
}

pub(crate) async fn read_current<'e, E: sqlx::Executor<'e, Database = Postgres>>(
    exec: E,
    resource_type: &str,
    id: &str,
    for_update: bool,
) -> Result<Option<StoredResource>> {
    let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE res_type = $1 AND id = $2{}", if for_update { " FOR UPDATE" } else { "" });
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(resource_type).bind(id).fetch_optional(exec).await?;
    row.as_ref().map(row_to_resource).transpose()
}

pub(crate) async fn fetch_keys<'e, E: sqlx::Executor<'e, Database = Postgres>>(exec: E, keys: &[i64]) -> Result<Vec<StoredResource>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE deleted = 0 AND rid = ANY($1)")))
        .bind(keys)
        .fetch_all(exec)
        .await?;
    let mut found: std::collections::HashMap<i64, StoredResource> = std::collections::HashMap::with_capacity(rows.len());
    for r in &rows {
        let r = row_to_resource(r)?;
        found.insert(r.key, r);
    }
    Ok(keys.iter().filter_map(|k| found.remove(k)).collect())
}

pub(crate) async fn search_keys<'e, E: sqlx::Executor<'e, Database = Postgres>>(exec: E, query: &SearchQuery) -> Result<Vec<i64>> {
    let b = compile_search(query, Dialect::Postgres);
    // A cached prepared statement: after five runs PostgreSQL may switch it to a generic plan (planned
    // without the values). The search SQL fixes the driving index itself (a MATERIALIZED CTE), so the
    // generic plan cannot start from an unselective index; planning each search with its values cost
    // more than the search itself.
    let rows = sqlx::query_with(sqlx::AssertSqlSafe(b.sql.clone()), args(&b.values)).fetch_all(exec).await?;
    rows.iter().map(|r| r.try_get::<i64, _>(0).map_err(StoreError::from)).collect()
}

#[async_trait]
impl Store for PostgresStore {
    async fn read(&self, resource_type: &str, id: &str) -> Result<Option<StoredResource>> {
        self.reads.read(resource_type, id).await
    }

    async fn vread(&self, resource_type: &str, id: &str, version: i64) -> Result<Option<StoredResource>> {
        let Some(current) = read_current(&self.pool, resource_type, id, false).await? else { return Ok(None) };
        if current.version == version {
            return Ok(Some(current));
        }
        let row = sqlx::query("SELECT last_updated, deleted, content FROM resource_history WHERE rid = $1 AND version = $2")
            .bind(current.key)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(StoredResource {
                key: current.key,
                resource_type: current.resource_type.clone(),
                id: current.id.clone(),
                version,
                last_updated: r.try_get(0)?,
                deleted: r.try_get::<i64, _>(1)? != 0,
                json: r.try_get(2)?,
            })),
        }
    }

    async fn history(&self, scope: &HistoryScope, p: &HistoryParams) -> Result<HistoryPage> {
        let mut b = SqlBuilder::new(Dialect::Postgres);
        let mut cond = String::from("1 = 1");
        let mut values = Vec::new();
        let bind = |v: SqlValue, values: &mut Vec<SqlValue>| {
            values.push(v);
            format!("${}", values.len())
        };
        match scope {
            HistoryScope::System => {}
            HistoryScope::Type(t) => cond.push_str(&format!(" AND r.res_type = {}", bind(SqlValue::Text(t.clone()), &mut values))),
            HistoryScope::Instance(t, id) => {
                cond.push_str(&format!(" AND r.res_type = {}", bind(SqlValue::Text(t.clone()), &mut values)));
                cond.push_str(&format!(" AND r.id = {}", bind(SqlValue::Text(id.clone()), &mut values)));
            }
        }
        if let Some(since) = p.since {
            cond.push_str(&format!(" AND v.last_updated >= {}", bind(SqlValue::Int(since), &mut values)));
        }
        if let Some(till) = p.till {
            cond.push_str(&format!(" AND v.last_updated <= {}", bind(SqlValue::Int(till), &mut values)));
        }
        let union = format!(
            "SELECT r.rid AS rid, r.res_type AS res_type, r.id AS id, v.version AS version, v.last_updated AS last_updated, v.deleted AS deleted, v.content AS content
               FROM resources r JOIN (SELECT rid, version, last_updated, deleted, content FROM resources
                                      UNION ALL SELECT rid, version, last_updated, deleted, content FROM resource_history) v ON v.rid = r.rid
              WHERE {cond}"
        );
        let total: i64 =
            sqlx::query_scalar_with(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM ({union}) AS h")), args(&values)).fetch_one(&self.pool).await?;
        // usize values beyond i64 (absurd paging offsets) would wrap negative, which PostgreSQL refuses.
        let limit = bind(SqlValue::Int(p.count.min(i64::MAX as usize) as i64), &mut values);
        let offset = bind(SqlValue::Int(p.offset.min(i64::MAX as usize) as i64), &mut values);
        b.push(&format!("SELECT {RESOURCE_COLUMNS} FROM ({union}) AS h ORDER BY last_updated DESC, version DESC, rid DESC LIMIT {limit} OFFSET {offset}"));
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(b.sql.clone()), args(&values)).fetch_all(&self.pool).await?;
        let entries = rows.iter().map(row_to_resource).collect::<Result<Vec<_>>>()?;
        Ok(HistoryPage { total: total as usize, entries })
    }

    async fn search(&self, query: &SearchQuery) -> Result<Vec<i64>> {
        search_keys(&self.pool, query).await
    }

    async fn fetch(&self, keys: &[i64]) -> Result<Vec<StoredResource>> {
        fetch_keys(&self.pool, keys).await
    }

    async fn include(&self, keys: &[i64], include: &Include) -> Result<Vec<i64>> {
        let mut out = Vec::new();
        for chunk in keys.chunks(2000) {
            out.extend(self.keys(&crate::sql::compile_reference_hop(chunk, include, false, Dialect::Postgres)).await?);
        }
        Ok(out)
    }

    async fn revinclude(&self, keys: &[i64], include: &Include) -> Result<Vec<i64>> {
        let mut out = Vec::new();
        for chunk in keys.chunks(2000) {
            out.extend(self.keys(&crate::sql::compile_reference_hop(chunk, include, true, Dialect::Postgres)).await?);
        }
        Ok(out)
    }

    async fn everything(&self, patient_id: &str, types: Option<&[String]>, since: Option<i64>) -> Result<Vec<i64>> {
        let b = crate::sql::compile_everything(patient_id, types, since, Dialect::Postgres);
        self.keys(&b).await
    }

    async fn in_patient_compartment(&self, key: i64, patient_id: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM compartment WHERE rid = $1 AND patient_id = $2").bind(key).bind(patient_id).fetch_optional(&self.pool).await?;
        Ok(row.is_some())
    }

    async fn in_patient_compartment_many(&self, keys: &[i64], patient_id: &str) -> Result<std::collections::HashSet<i64>> {
        if keys.is_empty() {
            return Ok(Default::default());
        }
        let rows: Vec<(i64,)> =
            sqlx::query_as("SELECT rid FROM compartment WHERE patient_id = $1 AND rid = ANY($2)").bind(patient_id).bind(keys).fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(k,)| k).collect())
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        let tx = self.pool.begin().await?;
        Ok(Box::new(PostgresTransaction {
            tx,
            clock: self.clock.clone(),
            base_url: self.base_url.clone(),
            batch: write::IndexBatch::default(),
            written: 0,
            statistics: self.statistics.clone(),
            pool: self.pool.clone(),
        }))
    }

    async fn search_page(&self, query: &SearchQuery, count: usize, snapshot: Option<Snapshot>) -> Result<SearchPage> {
        // One statement instead of three (keys, snapshot, page): the numbered keys are materialised once;
        // the snapshot is inserted by a data-modifying CTE when more than `count` match; the first `count`
        // rows come back with their resources, the others as bare keys.
        let mut b = compile_search_numbered(query, Dialect::Postgres);
        b.sql = format!("WITH k AS MATERIALIZED ({})", b.sql);
        let snapshot_id = match &snapshot {
            Some(s) => {
                self.sweep_snapshots().await?;
                let id = uuid::Uuid::new_v4().simple().to_string();
                b.push(", snap AS (INSERT INTO search_snapshots (id, resource_type, query, keys, expires, owner) SELECT ").text(&id).push(", ");
                b.text(s.resource_type.as_deref().unwrap_or(&query.resource_type)).push(", ").text(&s.query).push(", array_agg(rid ORDER BY n), ");
                b.int(self.now() + SNAPSHOT_TTL_MS).push(", ");
                match &s.owner {
                    Some(o) => b.text(o),
                    None => b.push("NULL"),
                };
                b.push(" FROM k HAVING count(*) > ").int(count as i64).push(")");
                if let Some(owner) = &s.owner {
                    // The owner's oldest live snapshots beyond the limit go when this one is saved.
                    b.push(", evict AS (DELETE FROM search_snapshots WHERE id IN (SELECT id FROM search_snapshots WHERE owner = ").text(owner);
                    b.push(" AND expires > ").int(self.now()).push(" ORDER BY expires DESC OFFSET ").int(MAX_SNAPSHOTS_PER_OWNER as i64 - 1);
                    b.push(") AND EXISTS (SELECT 1 FROM k WHERE n > ").int(count as i64).push("))");
                }
                Some(id)
            }
            None => None,
        };
        // The page's resources by key, one probe each (`OFFSET 0` keeps the lateral subquery a per-row
        // probe, whatever the generic plan estimates for `k`).
        // Columns as `RESOURCE_COLUMNS` (for `row_to_resource`), then the place `n`.
        b.push(&format!(" SELECT k.rid, x.*, k.n FROM k CROSS JOIN LATERAL (SELECT {PAGE_COLUMNS} FROM resources res WHERE res.rid = k.rid AND res.deleted = 0 OFFSET 0) x WHERE k.n <= "));
        b.int(count as i64);
        b.push(" UNION ALL SELECT k.rid, NULL, NULL, NULL, NULL, NULL, NULL, k.n FROM k WHERE k.n > ").int(count as i64).push(" ORDER BY n");
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(b.sql.clone()), args(&b.values)).fetch_all(&self.pool).await?;
        let mut page = SearchPage { keys: Vec::with_capacity(rows.len()), first: Vec::with_capacity(count.min(rows.len())), snapshot_id: None };
        for r in &rows {
            page.keys.push(r.try_get(0)?);
            // Rows past the first page carry only their key.
            if r.try_get::<Option<String>, _>(1)?.is_some() {
                page.first.push(row_to_resource(r)?);
            }
        }
        if page.keys.len() > count {
            page.snapshot_id = snapshot_id;
        }
        Ok(page)
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let now = self.now();
        self.sweep_snapshots().await?;
        if let Some(owner) = &snapshot.owner {
            sqlx::query(
                "DELETE FROM search_snapshots WHERE id IN (SELECT id FROM search_snapshots WHERE owner = $1 AND expires > $2 ORDER BY expires DESC OFFSET $3)",
            )
            .bind(owner)
            .bind(now)
            .bind(MAX_SNAPSHOTS_PER_OWNER as i64 - 1)
            .execute(&self.pool)
            .await?;
        }
        sqlx::query("INSERT INTO search_snapshots (id, resource_type, query, keys, expires, owner) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&id)
            .bind(&snapshot.resource_type)
            .bind(&snapshot.query)
            .bind(&snapshot.keys)
            .bind(now + SNAPSHOT_TTL_MS)
            .bind(&snapshot.owner)
            .execute(&self.pool)
            .await?;
        Ok(id)
    }

    async fn load_snapshot(&self, id: &str) -> Result<Option<Arc<Snapshot>>> {
        let row = sqlx::query("SELECT resource_type, query, keys, expires, owner FROM search_snapshots WHERE id = $1 AND expires > $2")
            .bind(id)
            .bind(self.now())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(Arc::new(Snapshot {
                resource_type: r.try_get(0)?,
                query: r.try_get(1)?,
                keys: r.try_get(2)?,
                expires: r.try_get(3)?,
                owner: r.try_get(4)?,
            }))),
        }
    }

    async fn counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT res_type, COUNT(*) FROM resources WHERE deleted = 0 GROUP BY res_type ORDER BY res_type").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    fn concurrent_writers(&self) -> usize {
        2
    }

    async fn optimize(&self) -> Result<()> {
        // VACUUM also sets the visibility map after bulk loads, so index-only scans skip the heap.
        sqlx::query("VACUUM (ANALYZE)").execute(&self.pool).await?;
        Ok(())
    }

    async fn append_audit(&self, records: &[crate::audit::AuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        // One statement text whatever the batch size (so it is prepared once), through the relaxed pool
        // as on SQLite: a batch is not worth an fsync of its own.
        let column = |f: fn(&crate::audit::AuditRecord) -> Option<String>| records.iter().map(f).collect::<Vec<_>>();
        sqlx::query(
            "INSERT INTO audit_events (recorded, category, action, outcome, client_id, username, patient, entity, detail, launch_id)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])",
        )
        .bind(records.iter().map(|r| r.recorded).collect::<Vec<_>>())
        .bind(column(|r| Some(r.category.clone())))
        .bind(column(|r| Some(r.action.clone())))
        .bind(column(|r| Some(r.outcome.clone())))
        .bind(column(|r| r.client_id.clone()))
        .bind(column(|r| r.username.clone()))
        .bind(column(|r| r.patient.clone()))
        .bind(column(|r| r.entity.clone()))
        .bind(column(|r| r.detail.clone()))
        .bind(column(|r| r.launch.clone()))
        .execute(&self.relaxed)
        .await?;
        Ok(())
    }

    async fn audit_events(&self, f: &crate::audit::AuditFilter) -> Result<Vec<(i64, crate::audit::AuditRecord)>> {
        let b = crate::sql::compile_audit_query(f, Dialect::Postgres);
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(b.sql.clone()), args(&b.values)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    crate::audit::AuditRecord {
                        recorded: r.try_get(1)?,
                        category: r.try_get(2)?,
                        action: r.try_get(3)?,
                        outcome: r.try_get(4)?,
                        client_id: r.try_get(5)?,
                        username: r.try_get(6)?,
                        patient: r.try_get(7)?,
                        entity: r.try_get(8)?,
                        detail: r.try_get(9)?,
                        launch: r.try_get(10)?,
                    },
                ))
            })
            .collect()
    }

    async fn audit_count(&self, f: &crate::audit::AuditFilter) -> Result<u64> {
        let b = crate::sql::compile_audit_count(f, Dialect::Postgres);
        let n: i64 = sqlx::query_scalar_with(sqlx::AssertSqlSafe(b.sql.clone()), args(&b.values)).fetch_one(&self.pool).await?;
        Ok(n as u64)
    }
}

/// A write transaction on PostgreSQL.
pub struct PostgresTransaction {
    tx: sqlx::Transaction<'static, Postgres>,
    clock: SharedClock,
    base_url: Option<String>,
    /// Index rows not yet written (see [`write::flush`]); written before any read and at commit.
    batch: write::IndexBatch,
    /// Resources written, counted at commit for [`Statistics`].
    written: u64,
    statistics: Arc<Statistics>,
    pool: PgPool,
}

#[async_trait]
impl Reader for PostgresTransaction {
    async fn read(&mut self, resource_type: &str, id: &str) -> Result<Option<StoredResource>> {
        read_current(&mut *self.tx, resource_type, id, false).await
    }

    async fn search(&mut self, query: &SearchQuery) -> Result<Vec<i64>> {
        write::flush(&mut self.tx, &mut self.batch).await?;
        search_keys(&mut *self.tx, query).await
    }

    async fn fetch(&mut self, keys: &[i64]) -> Result<Vec<StoredResource>> {
        fetch_keys(&mut *self.tx, keys).await
    }
}

#[async_trait]
impl Transaction for PostgresTransaction {
    async fn serialize_on(&mut self, key: &str) -> Result<()> {
        // Held until commit or rollback; a second transaction with the same key waits here, and its search
        // (a new snapshot under READ COMMITTED) then sees what the first one wrote.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").bind(key).execute(&mut *self.tx).await?;
        Ok(())
    }

    async fn put(&mut self, resource: Value, precondition: Precondition) -> Result<Written> {
        let prepared = crate::prepare(resource, self.base_url.as_deref())?;
        let now = unix_ms(self.clock.now());
        write::put(&mut self.tx, &mut self.batch, &prepared, precondition, now).await
    }

    async fn put_prepared(&mut self, prepared: &Prepared, precondition: Precondition) -> Result<Written> {
        let now = unix_ms(self.clock.now());
        self.written += 1;
        write::put(&mut self.tx, &mut self.batch, prepared, precondition, now).await
    }

    async fn put_prepared_many(&mut self, writes: &[(Prepared, Precondition)]) -> Result<Vec<Written>> {
        let now = unix_ms(self.clock.now());
        self.written += writes.len() as u64;
        write::put_many(&mut self.tx, &mut self.batch, writes, now).await
    }

    async fn delete(&mut self, resource_type: &str, id: &str, precondition: Precondition) -> Result<Option<StoredResource>> {
        let now = unix_ms(self.clock.now());
        write::delete(&mut self.tx, &mut self.batch, resource_type, id, precondition, now).await
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        write::flush(&mut self.tx, &mut self.batch).await?;
        self.tx.commit().await?;
        self.statistics.wrote(&self.pool, self.written);
        Ok(())
    }
}

/// Empties a database completely (every table of its `public` schema), for benchmarks that start from
/// nothing. Destructive: only for databases made for the purpose.
pub async fn reset_database(url: &str) -> Result<()> {
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    sqlx::raw_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;").execute(&pool).await?;
    pool.close().await;
    Ok(())
}
