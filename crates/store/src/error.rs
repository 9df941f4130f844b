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
    #[error("storage backend error: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // A concurrent writer created the same resource, or another node won an If-Match race.
            sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") || d.code().as_deref() == Some("40001") => {
                StoreError::Conflict("a concurrent write changed this resource".into())
            }
            _ => StoreError::Backend(format!("postgres: {e}")),
        }
    }
}
