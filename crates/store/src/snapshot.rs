use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A frozen search result for paging.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The searched type (`None` for a system-level page).
    pub resource_type: Option<String>,
    /// The original query string (for `_include`, `_elements` etc. on later pages).
    pub query: String,
    /// The keys of the whole result, in order.
    pub keys: Vec<i64>,
    /// Unix ms after which the snapshot is gone.
    pub expires: i64,
    /// Whose search it was (client, user and patient of the token; `None` on an open sandbox): only the
    /// owner pages through it, and one owner keeps at most [`MAX_SNAPSHOTS_PER_OWNER`] live snapshots.
    pub owner: Option<String>,
}

/// Live paging snapshots one owner keeps: a further paged search drops the owner's oldest (whose `next`
/// link then answers 410, "run the search again"), so a client that searches without end cannot crowd
/// out other clients' paging or grow the database.
pub const MAX_SNAPSHOTS_PER_OWNER: usize = 100;

/// An in-process snapshot cache with a size bound. Used by the SQLite backend, which by construction serves
/// a single node; a shared backend keeps snapshots in its database instead.
#[derive(Debug)]
pub struct SnapshotCache {
    entries: Mutex<HashMap<String, Arc<Snapshot>>>,
    capacity: usize,
}

impl SnapshotCache {
    /// A cache of at most `capacity` snapshots.
    pub fn new(capacity: usize) -> Self {
        SnapshotCache { entries: Mutex::new(HashMap::new()), capacity }
    }

    /// Keeps `snapshot` under `id`, dropping the owner's oldest beyond its share and, when full, expired ones (then the one closest to expiry).
    pub fn insert(&self, id: String, snapshot: Snapshot, now: i64) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(owner) = &snapshot.owner {
            let mut own: Vec<(i64, String)> =
                map.iter().filter(|(_, s)| s.owner.as_ref() == Some(owner) && s.expires > now).map(|(k, s)| (s.expires, k.clone())).collect();
            if own.len() >= MAX_SNAPSHOTS_PER_OWNER {
                own.sort_unstable();
                for (_, k) in &own[..=own.len() - MAX_SNAPSHOTS_PER_OWNER] {
                    map.remove(k);
                }
            }
        }
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

    /// The snapshot under `id`, while it lives at `now`.
    pub fn get(&self, id: &str, now: i64) -> Option<Arc<Snapshot>> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|s| s.expires > now).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(owner: Option<&str>, expires: i64) -> Snapshot {
        Snapshot { resource_type: None, query: String::new(), keys: vec![1], expires, owner: owner.map(str::to_string) }
    }

    #[test]
    fn an_owner_keeps_its_newest_snapshots_and_others_keep_theirs() {
        let cache = SnapshotCache::new(10_000);
        cache.insert("other".into(), snap(Some("b"), 1_000), 0);
        cache.insert("open".into(), snap(None, 1_000), 0);
        for i in 0..MAX_SNAPSHOTS_PER_OWNER as i64 + 5 {
            cache.insert(format!("a{i}"), snap(Some("a"), 1_000 + i), 0);
        }
        let live = |id: &str| cache.get(id, 0).is_some();
        assert!((0..5).all(|i| !live(&format!("a{i}"))), "the five oldest of a went");
        assert!((5..MAX_SNAPSHOTS_PER_OWNER + 5).all(|i| live(&format!("a{i}"))));
        assert!(live("other") && live("open"));
        // Expired snapshots do not count against the owner.
        let cache = SnapshotCache::new(10_000);
        for i in 0..MAX_SNAPSHOTS_PER_OWNER as i64 {
            cache.insert(format!("old{i}"), snap(Some("a"), 10), 0);
        }
        cache.insert("new".into(), snap(Some("a"), 1_000), 20);
        assert!(cache.get("new", 20).is_some());
    }
}
