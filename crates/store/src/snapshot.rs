use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A frozen search result for paging.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub resource_type: Option<String>,
    /// The original query string (for `_include`, `_elements` etc. on later pages).
    pub query: String,
    pub keys: Vec<i64>,
    /// Unix ms after which the snapshot is gone.
    pub expires: i64,
}

/// An in-process snapshot cache with a size bound. Used by the SQLite backend, which by construction serves
/// a single node; a shared backend keeps snapshots in its database instead.
#[derive(Debug)]
pub struct SnapshotCache {
    entries: Mutex<HashMap<String, Arc<Snapshot>>>,
    capacity: usize,
}

impl SnapshotCache {
    pub fn new(capacity: usize) -> Self {
        SnapshotCache { entries: Mutex::new(HashMap::new()), capacity }
    }

    pub fn insert(&self, id: String, snapshot: Snapshot, now: i64) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity {
            map.retain(|_, s| s.expires > now);
            if map.len() >= self.capacity {
                // Still full of live snapshots: drop the one closest to expiry.
                if let Some(victim) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone()) {
                    map.remove(&victim);
                }
            }
        }
        map.insert(id, Arc::new(snapshot));
    }

    pub fn get(&self, id: &str, now: i64) -> Option<Arc<Snapshot>> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|s| s.expires > now).cloned()
    }
}
