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
