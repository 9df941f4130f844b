//! Pooled reader connections of one SQLite file (the data file's and the auth file's).

use crate::Result;
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// At most this many idle readers are kept open.
const KEPT: usize = 8;

/// Reader connections of one file, opened as needed and kept for the next read. Each remembers the
/// generation it was opened under: a connection keeps what it read when it opened (the planner
/// statistics), so when the generation moves on, readers of an older one are closed rather than pooled
/// again.
pub(crate) struct Readers {
    path: PathBuf,
    page_size: i64,
    cache_kib: i64,
    generation: Arc<AtomicU64>,
    idle: Mutex<Vec<(u64, Connection)>>,
}

impl Readers {
    /// Readers of `path` with a page cache of `cache_kib` each (`page_size` is that of a new file), of the
    /// generation `generation` holds (see [`Readers::generation`]).
    pub(crate) fn new(path: PathBuf, page_size: i64, cache_kib: i64, generation: Arc<AtomicU64>) -> Readers {
        Readers { path, page_size, cache_kib, generation, idle: Mutex::new(Vec::new()) }
    }

    /// A counter to bump when the readers open before must not be reused.
    pub(crate) fn generation() -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(0))
    }

    fn current(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// An idle reader of the current generation, or a new one.
    pub(crate) fn get(&self) -> Result<PooledReader<'_>> {
        let current = self.current();
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|(g, _)| *g == current);
            idle.pop()
        };
        let conn = match idle {
            Some((_, c)) => c,
            None => super::open_connection(&self.path, self.page_size, self.cache_kib)?,
        };
        Ok(PooledReader { conn: Some(conn), generation: current, readers: self })
    }
}

/// A reader connection, back to its pool on drop (closed if its generation has passed or the pool is full).
pub(crate) struct PooledReader<'a> {
    conn: Option<Connection>,
    generation: u64,
    readers: &'a Readers,
}

impl std::ops::Deref for PooledReader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl Drop for PooledReader<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            if self.generation != self.readers.current() {
                return;
            }
            let mut idle = self.readers.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < KEPT {
                idle.push((self.generation, c));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Readers;
    use std::sync::atomic::Ordering;

    /// Readers are reused within a generation, closed once it has passed, and at most eight stay idle.
    #[test]
    fn readers_are_reused_within_their_generation() {
        let dir = tempfile::tempdir().unwrap();
        let generation = Readers::generation();
        let readers = Readers::new(dir.path().join("r.db"), 4096, 64, generation.clone());
        // A connection's own mark tells one connection from another.
        let mark = |r: &super::PooledReader<'_>| r.execute_batch("CREATE TEMP TABLE IF NOT EXISTS mark (x)").unwrap();
        let marked = |r: &super::PooledReader<'_>| -> bool {
            r.query_row("SELECT count(*) FROM temp.sqlite_master WHERE name = 'mark'", [], |row| row.get::<_, i64>(0)).unwrap() == 1
        };
        let first = readers.get().unwrap();
        mark(&first);
        drop(first);
        assert!(marked(&readers.get().unwrap()), "the idle reader is taken again");
        generation.fetch_add(1, Ordering::AcqRel);
        assert!(!marked(&readers.get().unwrap()), "a reader of a past generation is not");
        // One taken before the generation moved on is closed when dropped.
        let old = readers.get().unwrap();
        mark(&old);
        generation.fetch_add(1, Ordering::AcqRel);
        drop(old);
        assert!(!marked(&readers.get().unwrap()));
        let many: Vec<_> = (0..10).map(|_| readers.get().unwrap()).collect();
        drop(many);
        assert_eq!(readers.idle.lock().unwrap().len(), super::KEPT);
    }
}
