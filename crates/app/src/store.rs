//! Server-side state in SQLite: sessions (each launch its own, bound to a browser secret held in an
//! HttpOnly cookie) and pending authorisations. Everything that holds a token or a PKCE verifier is
//! encrypted with AES-256-GCM under the app's session key, with the record's id as associated data.

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use client::{PendingAuthorization, PendingStore, StoredSession};
use client::{SharedClock, SystemClock};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the app's store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQLite database refused.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A sealed record did not open with the key (tampered with, or another key).
    #[error("a stored record could not be decrypted")]
    Decrypt,
    /// Anything else (PostgreSQL, a task that did not finish).
    #[error("{0}")]
    Other(String),
}

/// A session as kept: the SDK's stored session plus what the app shows while it cannot reach the EHR.
#[derive(Serialize, Deserialize)]
pub struct AppSession {
    /// The SDK's session (tokens included: sealed at rest).
    pub smart: StoredSession,
    /// The patient's name once read (for orientation on error pages).
    #[serde(default)]
    pub patient_name: Option<String>,
}

/// Where sessions are kept: an SQLite file (one node) or PostgreSQL (several nodes of the app).
#[derive(Clone)]
enum Backend {
    Sqlite(Arc<Mutex<Connection>>),
    Postgres(sqlx::PgPool),
}

/// Sessions and pending authorisations, sealed with AES-256-GCM, on SQLite or PostgreSQL.
#[derive(Clone)]
pub struct AppStore {
    backend: Backend,
    key: Arc<LessSafeKey>,
    /// "Now" for session and pending-authorisation expiry.
    clock: SharedClock,
}

/// Sessions live at most this long (a clinic day); the EHR's tokens usually end them sooner.
pub const SESSION_SECS: i64 = 12 * 3600;

const PG_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS app_sessions (id TEXT PRIMARY KEY, browser_hash TEXT NOT NULL, expires BIGINT NOT NULL, data BYTEA NOT NULL)",
    "CREATE TABLE IF NOT EXISTS app_pending (state_hash TEXT PRIMARY KEY, expires BIGINT NOT NULL, data BYTEA NOT NULL)",
];

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Other(format!("postgres: {e}"))
    }
}

impl AppStore {
    /// Opens (creating) the store: `postgres://…` URLs go to PostgreSQL, anything else is an SQLite path
    /// (optionally `sqlite://path`).
    pub async fn connect(database: &str, key: [u8; 32]) -> Result<AppStore, StoreError> {
        let key = Arc::new(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).map_err(|_| StoreError::Other("bad key".into()))?));
        if database.starts_with("postgres://") || database.starts_with("postgresql://") {
            let pool = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(database).await?;
            for stmt in PG_SCHEMA {
                sqlx::query(*stmt).execute(&pool).await?;
            }
            return Ok(AppStore { backend: Backend::Postgres(pool), key, clock: Arc::new(SystemClock) });
        }
        let path = database.strip_prefix("sqlite://").unwrap_or(database);
        let conn = Connection::open(Path::new(path))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS app_sessions (id TEXT PRIMARY KEY, browser_hash TEXT NOT NULL, expires INTEGER NOT NULL, data BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS app_pending (state_hash TEXT PRIMARY KEY, expires INTEGER NOT NULL, data BLOB NOT NULL);",
        )?;
        Ok(AppStore { backend: Backend::Sqlite(Arc::new(Mutex::new(conn))), key, clock: Arc::new(SystemClock) })
    }

    /// Reads "now" from `clock` instead of the system's clock.
    pub fn with_clock(mut self, clock: SharedClock) -> AppStore {
        self.clock = clock;
        self
    }

    /// Now, in Unix seconds.
    fn now(&self) -> i64 {
        self.clock.now_secs()
    }

    fn seal(&self, aad: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        aws_lc_rs::rand::fill(&mut nonce).expect("randomness");
        let mut buf = plain.to_vec();
        self.key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut buf).expect("seal");
        let mut out = nonce.to_vec();
        out.extend(buf);
        out
    }

    fn open_sealed(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        if sealed.len() < 12 + 16 {
            return Err(StoreError::Decrypt);
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[..12]).map_err(|_| StoreError::Decrypt)?;
        let mut buf = sealed[12..].to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf).map_err(|_| StoreError::Decrypt)?;
        Ok(plain.to_vec())
    }

    async fn sqlite<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&c)
        })
        .await
        .map_err(|e| StoreError::Other(e.to_string()))?
    }

    /// Saves a session under `id`, bound to the browser secret's hash (the binding never changes).
    pub async fn save_session(&self, id: &str, browser_hash: &str, s: &AppSession) -> Result<(), StoreError> {
        let plain = serde_json::to_vec(s).map_err(|e| StoreError::Other(e.to_string()))?;
        let sealed = self.seal(id, &plain);
        let (id, browser_hash, expires) = (id.to_string(), browser_hash.to_string(), self.now() + SESSION_SECS);
        const SQL: &str =
            "INSERT INTO app_sessions (id, browser_hash, expires, data) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO UPDATE SET data = excluded.data";
        match &self.backend {
            Backend::Sqlite(c) => Self::sqlite(c, move |c| Ok(c.execute(SQL, params![id, browser_hash, expires, sealed]).map(|_| ())?)).await,
            Backend::Postgres(pool) => Ok(sqlx::query(SQL).bind(id).bind(browser_hash).bind(expires).bind(sealed).execute(pool).await.map(|_| ())?),
        }
    }

    /// The session `id` when `browser_hash` matches and it has not expired.
    pub async fn load_session(&self, id: &str, browser_hash: &str) -> Result<Option<AppSession>, StoreError> {
        let (idc, bh, t) = (id.to_string(), browser_hash.to_string(), self.now());
        const SQL: &str = "SELECT data FROM app_sessions WHERE id = $1 AND browser_hash = $2 AND expires > $3";
        let row: Option<Vec<u8>> = match &self.backend {
            Backend::Sqlite(c) => Self::sqlite(c, move |c| Ok(c.query_row(SQL, params![idc, bh, t], |r| r.get(0)).optional()?)).await?,
            Backend::Postgres(pool) => sqlx::query_scalar(SQL).bind(idc).bind(bh).bind(t).fetch_optional(pool).await?,
        };
        match row {
            None => Ok(None),
            Some(sealed) => {
                let plain = self.open_sealed(id, &sealed)?;
                serde_json::from_slice(&plain).map(Some).map_err(|e| StoreError::Other(e.to_string()))
            }
        }
    }

    /// Deletes a session (and every expired one).
    pub async fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        let (id, t) = (id.to_string(), self.now());
        const DEL: &str = "DELETE FROM app_sessions WHERE id = $1 OR expires <= $2";
        match &self.backend {
            Backend::Sqlite(c) => Self::sqlite(c, move |c| Ok(c.execute(DEL, params![id, t]).map(|_| ())?)).await,
            Backend::Postgres(pool) => Ok(sqlx::query(DEL).bind(id).bind(t).execute(pool).await.map(|_| ())?),
        }
    }

    /// The raw sealed bytes of a session (for tests that prove tokens are not stored in the clear).
    pub async fn raw_session(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_string();
        const SQL: &str = "SELECT data FROM app_sessions WHERE id = $1";
        match &self.backend {
            Backend::Sqlite(c) => Self::sqlite(c, move |c| Ok(c.query_row(SQL, params![id], |r| r.get(0)).optional()?)).await,
            Backend::Postgres(pool) => Ok(sqlx::query_scalar(SQL).bind(id).fetch_optional(pool).await?),
        }
    }

    async fn pending_put(&self, key: String, expires: i64, sealed: Vec<u8>) -> Result<(), StoreError> {
        let t = self.now();
        const CLEAN: &str = "DELETE FROM app_pending WHERE expires <= $1";
        const PUT: &str = "INSERT INTO app_pending (state_hash, expires, data) VALUES ($1, $2, $3) ON CONFLICT (state_hash) DO UPDATE SET expires = excluded.expires, data = excluded.data";
        match &self.backend {
            Backend::Sqlite(c) => {
                Self::sqlite(c, move |c| {
                    c.execute(CLEAN, params![t])?;
                    c.execute(PUT, params![key, expires, sealed])?;
                    Ok(())
                })
                .await
            }
            Backend::Postgres(pool) => {
                sqlx::query(CLEAN).bind(t).execute(pool).await?;
                sqlx::query(PUT).bind(key).bind(expires).bind(sealed).execute(pool).await?;
                Ok(())
            }
        }
    }

    /// Removes and returns a pending authorisation: one statement, so two nodes cannot both take it.
    async fn pending_take(&self, key: String) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.now();
        const TAKE: &str = "DELETE FROM app_pending WHERE state_hash = $1 AND expires > $2 RETURNING data";
        match &self.backend {
            Backend::Sqlite(c) => Self::sqlite(c, move |c| Ok(c.query_row(TAKE, params![key, t], |r| r.get(0)).optional()?)).await,
            Backend::Postgres(pool) => Ok(sqlx::query_scalar(TAKE).bind(key).bind(t).fetch_optional(pool).await?),
        }
    }
}

/// A SHA-256 digest, base64url: how states, session ids and browser secrets are keyed.
pub fn hash(s: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// Pending authorisations in the same database, so any node of the app can take the callback.
#[async_trait]
impl PendingStore for AppStore {
    async fn put(&self, state: &str, pending: PendingAuthorization, ttl: Duration) -> client::Result<()> {
        let key = hash(state);
        let plain = serde_json::to_vec(&pending).map_err(|e| client::Error::Config(e.to_string()))?;
        let sealed = self.seal(&key, &plain);
        self.pending_put(key, self.now() + ttl.as_secs() as i64, sealed).await.map_err(|e| client::Error::Config(e.to_string()))
    }

    async fn take(&self, state: &str) -> client::Result<Option<PendingAuthorization>> {
        let key = hash(state);
        match self.pending_take(key.clone()).await.map_err(|e| client::Error::Config(e.to_string()))? {
            None => Ok(None),
            Some(sealed) => {
                let plain = self.open_sealed(&key, &sealed).map_err(|e| client::Error::Config(e.to_string()))?;
                serde_json::from_slice(&plain).map(Some).map_err(|e| client::Error::Config(e.to_string()))
            }
        }
    }
}
