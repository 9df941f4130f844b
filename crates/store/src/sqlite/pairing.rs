//! The data file and its auth file belong together: the auth file's accounts name patients and
//! practitioners of the data file, and its tokens were issued for that data. Each records the same
//! pairing id (table `kindling_pair`, written once), so that a data file restored beside the auth file
//! of another deployment (or the other way round) is refused at start instead of serving one's data
//! with the other's registrations, accounts and tokens.
//!
//! A file without an id takes the other's: a first start after an upgrade, a new auth file beside an
//! existing data file (its registrations, accounts and tokens are then gone, which is logged), or a new
//! data file beside an existing auth file (a sandbox whose data was reset). Only two different ids are
//! refused; an existing file without an id beside a paired one is paired with a warning, as it cannot be
//! told from a file of another deployment made before pairing. The ids are written one file after the
//! other, and a start stopped between the two leaves one file without an id, which the next start
//! completes.

use super::auth::auth_path;
use crate::{Result, StoreError};
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;

fn has_table(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)", [name], |r| r.get(0))?)
}

/// The pairing id `conn`'s file records, if any.
fn recorded(conn: &Connection) -> Result<Option<String>> {
    if !has_table(conn, "kindling_pair")? {
        return Ok(None);
    }
    Ok(conn.query_row("SELECT id FROM kindling_pair LIMIT 1", [], |r| r.get(0)).optional()?)
}

/// The highest migration applied to the data file (0 for a new one).
fn data_version(data: &Connection) -> Result<i64> {
    if !has_table(data, "kindling_migrations")? {
        return Ok(0);
    }
    Ok(data.query_row("SELECT COALESCE(MAX(version), 0) FROM kindling_migrations", [], |r| r.get(0))?)
}

fn mismatch(data_path: &Path, d: &str, a: &str) -> StoreError {
    StoreError::Backend(format!(
        "{} does not belong with {}: they were made beside other files (pairing ids {d} and {a}). \
         Restore the two files of one data directory, from the same backup, together",
        auth_path(data_path).display(),
        data_path.display()
    ))
}

/// Checks, before either file is migrated, that the data file at `data_path` and its auth file (`auth_is_new`
/// when it was created just now) belong together; answers the id both must record (see [`record_both`]).
pub(crate) fn check(data_path: &Path, data: &Connection, auth: &Connection, auth_is_new: bool) -> Result<String> {
    let (d, a) = (recorded(data)?, recorded(auth)?);
    if let (Some(d), Some(a)) = (&d, &a)
        && d != a
    {
        return Err(mismatch(data_path, d, a));
    }
    let version = data_version(data)?;
    let auth_file = auth_path(data_path);
    if auth_is_new && version >= super::AUTH_FILE_MIGRATION {
        tracing::warn!(
            auth_file = %auth_file.display(),
            "the auth file was missing beside an existing data file and is made anew: app registrations, accounts and tokens \
             start empty (restore kindling.auth.db from the data file's backup to keep them)"
        );
    }
    match (&d, &a) {
        (None, Some(_)) if version > 0 => tracing::warn!(
            data_file = %data_path.display(),
            "the data file has no pairing id (an older release made it, or it comes from a backup made before pairing): \
             it is paired with the auth file beside it now; make sure the two come from one data directory"
        ),
        (Some(_), None) if !auth_is_new => tracing::warn!(
            auth_file = %auth_file.display(),
            "the auth file has no pairing id (an older release made it, or it comes from a backup made before pairing): \
             it is paired with the data file beside it now; make sure the two come from one data directory"
        ),
        _ => {}
    }
    Ok(d.or(a).unwrap_or_else(|| uuid::Uuid::new_v4().to_string()))
}

/// Records `id` in the (migrated) file of `conn` unless it has one; answers the id it holds.
fn record(conn: &Connection, id: &str) -> Result<String> {
    conn.execute("INSERT INTO kindling_pair (id) SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM kindling_pair)", [id])?;
    Ok(conn.query_row("SELECT id FROM kindling_pair LIMIT 1", [], |r| r.get(0))?)
}

/// Records the pairing id in both (migrated) files: `id` in the auth file unless it has one, then the auth
/// file's in the data file. Two processes that start at once on unpaired files thus settle on the id the
/// auth file got first; a data file that still ends up with another is refused.
pub(crate) fn record_both(data_path: &Path, data: &Connection, auth: &Connection, id: &str) -> Result<()> {
    let a = record(auth, id)?;
    let d = record(data, &a)?;
    if d != a {
        return Err(mismatch(data_path, &d, &a));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::AuthStore;
    use crate::sqlite::{SqliteConfig, SqliteStore};
    use fhir::time::SystemClock;
    use std::path::Path;
    use std::sync::Arc;

    fn open(dir: &Path) -> crate::Result<SqliteStore> {
        SqliteStore::open(SqliteConfig { path: dir.join("kindling.db"), base_url: None, writer_cache_mib: 8 }, Arc::new(SystemClock))
    }

    fn pair_id(file: &Path) -> Option<String> {
        let conn = rusqlite::Connection::open(file).unwrap();
        conn.query_row("SELECT id FROM kindling_pair", [], |r| r.get(0)).ok()
    }

    /// Moves the files of a closed store (after its checkpoint threads stopped).
    fn copy(from: &Path, to: &Path, name: &str) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(to.join(format!("{name}{suffix}")));
            if from.join(format!("{name}{suffix}")).exists() {
                std::fs::copy(from.join(format!("{name}{suffix}")), to.join(format!("{name}{suffix}"))).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_data_file_and_an_auth_file_of_other_deployments_are_refused() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = open(a.path()).unwrap();
        store.auth_put("client", "app-of-a", "{}", None, None).await.unwrap();
        drop(store);
        drop(open(b.path()).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(300)); // the checkpoint threads stop
        let id = pair_id(&a.path().join("kindling.db")).expect("a new data file is paired");
        assert_eq!(pair_id(&a.path().join("kindling.auth.db")), Some(id.clone()), "with its auth file");
        let other = pair_id(&b.path().join("kindling.db")).expect("paired");
        assert_ne!(other, id, "each deployment has its own id");

        // Reopened as it is: fine.
        drop(open(a.path()).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(300));

        // B's auth file beside A's data file.
        let mixed = tempfile::tempdir().unwrap();
        copy(a.path(), mixed.path(), "kindling.db");
        copy(b.path(), mixed.path(), "kindling.auth.db");
        let refused = open(mixed.path()).err().expect("refused").to_string();
        assert!(refused.contains("kindling.auth.db does not belong with") && refused.contains("same backup"), "{refused}");

        // A's auth file lost: a new one is paired with the data file, empty.
        let lost = tempfile::tempdir().unwrap();
        copy(a.path(), lost.path(), "kindling.db");
        let store = open(lost.path()).unwrap();
        assert!(store.auth_get("client", "app-of-a").await.unwrap().is_none());
        drop(store);
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(pair_id(&lost.path().join("kindling.auth.db")), Some(id.clone()));
    }

    /// Files made before pairing (or a start stopped between the two writes) are paired at the next start.
    #[tokio::test]
    async fn files_without_a_pairing_id_are_paired() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).unwrap();
        store.auth_put("client", "app", "{}", None, None).await.unwrap();
        drop(store);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let id = pair_id(&dir.path().join("kindling.db")).unwrap();
        // As an upgrade finds them: neither has the table (the data file before migration 12, the auth
        // file at schema 1).
        let data = rusqlite::Connection::open(dir.path().join("kindling.db")).unwrap();
        data.execute_batch("DROP TABLE kindling_pair; DELETE FROM kindling_migrations WHERE version >= 12").unwrap();
        let auth = rusqlite::Connection::open(dir.path().join("kindling.auth.db")).unwrap();
        auth.execute_batch("DROP TABLE kindling_pair; PRAGMA user_version = 1").unwrap();
        drop((data, auth));
        let store = open(dir.path()).unwrap();
        assert!(store.auth_get("client", "app").await.unwrap().is_some());
        drop(store);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let new_id = pair_id(&dir.path().join("kindling.db")).expect("paired");
        assert_ne!(new_id, id);
        assert_eq!(pair_id(&dir.path().join("kindling.auth.db")), Some(new_id.clone()));
        // Only the auth file has one (stopped between the two writes): the data file takes it.
        rusqlite::Connection::open(dir.path().join("kindling.db")).unwrap().execute_batch("DELETE FROM kindling_pair").unwrap();
        drop(open(dir.path()).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(pair_id(&dir.path().join("kindling.db")), Some(new_id));
    }

    /// Two starts at once on unpaired files: the data file takes the id the auth file got first; a data
    /// file that holds another is refused.
    #[test]
    fn both_files_take_the_id_the_auth_file_got_first() {
        let (data, auth) = (rusqlite::Connection::open_in_memory().unwrap(), rusqlite::Connection::open_in_memory().unwrap());
        for c in [&data, &auth] {
            c.execute_batch("CREATE TABLE kindling_pair (id TEXT NOT NULL)").unwrap();
        }
        auth.execute("INSERT INTO kindling_pair (id) VALUES ('first')", []).unwrap();
        super::record_both(Path::new("kindling.db"), &data, &auth, "second").unwrap();
        assert_eq!(super::recorded(&data).unwrap().as_deref(), Some("first"));
        data.execute_batch("UPDATE kindling_pair SET id = 'other'").unwrap();
        let refused = super::record_both(Path::new("kindling.db"), &data, &auth, "first").unwrap_err().to_string();
        assert!(refused.contains("does not belong with"), "{refused}");
    }
}
