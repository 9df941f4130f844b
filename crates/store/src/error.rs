/// Errors of the store. `Backend` details are for logs only; HTTP layers must not show them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition failed (`If-Match` version, or create over an existing resource).
    #[error("version conflict: {0}")]
    Conflict(String),
    /// The resource cannot be indexed (e.g. a malformed date).
    #[error("invalid resource: {0}")]
    Invalid(String),
    /// The resource is missing `resourceType` or `id`.
    #[error("{0}")]
    BadInput(String),
    /// The database failed in a way the client cannot fix (logged; a generic 500 for the client).
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The database cannot be reached or cannot answer now (connection refused or lost, pool exhausted,
    /// busy, disk failure): a temporary condition, never the caller's fault. HTTP layers answer 503 with
    /// `Retry-After`.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The transaction was chosen as the victim of a deadlock with a concurrent one and rolled back:
    /// nothing of it was saved, and running it again will succeed. HTTP layers retry whole transactions,
    /// then answer 409 with the issue code `transient`.
    #[error("contention: {0}")]
    Contention(String),
}

/// Whether a PostgreSQL error means the database cannot be reached or cannot serve now.
pub fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        // Class 08 (connection exception), 57P01-03 (shutdown, cannot connect now), 53300 (too many
        // connections), 3D000 (the database is gone), 55000 (e.g. the database does not allow connections).
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || matches!(c.as_ref(), "53300" | "3D000" | "55000")),
        _ => false,
    }
}

static LAST_OUTAGE_LOG: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);
static SUPPRESSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Logs a storage outage once, not once per request: at most one line every 30 seconds, with the
/// number of failures since the last line. Details stay in the log; callers answer 503.
/// (It reads the wall clock directly: it only spaces out log lines, and has no clock to be given.)
#[allow(clippy::disallowed_methods)]
pub fn report_unavailable(detail: &str) {
    use std::sync::atomic::Ordering;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let last = LAST_OUTAGE_LOG.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 30 && LAST_OUTAGE_LOG.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        let more = SUPPRESSED.swap(0, Ordering::Relaxed);
        tracing::error!(error = %detail, failures_since_last_report = more, "the database is unavailable; answering 503 until it is back");
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, C::DatabaseBusy | C::DatabaseLocked | C::CannotOpen | C::SystemIoFailure | C::DiskFull | C::OutOfMemory) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // A concurrent writer created the same resource, or another node won an If-Match race.
            sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") || d.code().as_deref() == Some("40001") => {
                StoreError::Conflict("a concurrent write changed this resource".into())
            }
            sqlx::Error::Database(d) if d.code().as_deref() == Some("40P01") => {
                StoreError::Contention("a concurrent transaction wrote the same resources in another order".into())
            }
            _ if sqlx_unavailable(&e) => StoreError::Unavailable(format!("postgres: {e}")),
            _ => StoreError::Backend(format!("postgres: {e}")),
        }
    }
}
