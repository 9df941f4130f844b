//! The data file and its auth file belong together: the auth file's accounts name patients and
//! practitioners of the data file, and its tokens were issued for that data. Each records the same
//! pairing id (table `kindling_pair`, written once), so that a data file restored beside the auth file
//! of another deployment (or the other way round) is refused at start instead of serving one's data
//! with the other's registrations, accounts and tokens.
//!
//! A file without an id takes the other's: a first start after an upgrade, a new auth file beside an
//! existing data file (its registrations, accounts and tokens are then gone, which is said), or a new
//! data file beside an existing auth file (a sandbox whose data was reset). Only two different ids are
//! refused; the ids are written one file after the other, and a start stopped between the two leaves
//! one file without an id, which the next start completes.

use super::auth::auth_path;
use crate::{Result, StoreError};
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;

/// The pairing id `conn`'s file records, if any.
fn recorded(conn: &Connection) -> Result<Option<String>> {
    let has_table: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kindling_pair')", [], |r| r.get(0))?;
    if !has_table {
        return Ok(None);
    }
    Ok(conn.query_row("SELECT id FROM kindling_pair LIMIT 1", [], |r| r.get(0)).optional()?)
}

/// Checks, before either file is migrated, that the data file at `data_path` and its auth file belong
/// together; answers the id both must record (see [`record`]).
pub(crate) fn check(data_path: &Path, data: &Connection, auth: &Connection) -> Result<String> {
    match (recorded(data)?, recorded(auth)?) {
        (Some(d), Some(a)) if d != a => Err(StoreError::Backend(format!(
            "{} does not belong with {}: they were made beside other files (pairing ids {d} and {a}). \
             Restore the two files of one data directory, from the same backup, together",
            auth_path(data_path).display(),
            data_path.display()
        ))),
        (Some(d), None) => {
            let auth_has_records: bool = auth.query_row("SELECT EXISTS (SELECT 1 FROM auth_records)", [], |r| r.get(0))?;
            if !auth_has_records {
                tracing::warn!(
                    auth_file = %auth_path(data_path).display(),
                    "the auth file is new beside an existing data file: app registrations, accounts and tokens start empty \
                     (restore kindling.auth.db from the data file's backup to keep them)"
                );
            }
            Ok(d)
        }
        (d, a) => Ok(d.or(a).unwrap_or_else(|| uuid::Uuid::new_v4().to_string())),
    }
}

/// Records `id` in the (migrated) file of `conn` unless it has one.
pub(crate) fn record(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("INSERT INTO kindling_pair (id) SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM kindling_pair)", [id])?;
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
        assert_ne!(pair_id(&b.path().join("kindling.db")), Some(id.clone()), "each deployment has its own id");

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
        // As an upgrade finds them: neither has an id.
        for f in ["kindling.db", "kindling.auth.db"] {
            rusqlite::Connection::open(dir.path().join(f)).unwrap().execute_batch("DELETE FROM kindling_pair").unwrap();
        }
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
}
