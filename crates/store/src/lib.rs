//! Storage for Kindling: the [`Store`] trait and its SQLite backend.
//!
//! Contract: resources are canonical JSON with `id`, `meta.versionId` and `meta.lastUpdated` set by the
//! store; every write keeps the superseded version in history and rewrites the search-index rows of the
//! resource in the same database transaction; deletes are soft (a new version marked deleted). The trait
//! speaks only in FHIR terms and opaque `i64` keys, so a backend may be SQLite or PostgreSQL.
#![deny(missing_docs)]

pub mod audit;
/// What can go wrong in a store.
pub mod error;
pub mod postgres;
mod prepare;
mod snapshot;
pub mod sql;
pub mod sqlite;

use async_trait::async_trait;
use fhir::query::{Include, SearchQuery};
use serde_json::Value;

pub use error::StoreError;
pub use prepare::{Prepared, prepare};
pub use snapshot::{MAX_SNAPSHOTS_PER_OWNER, Snapshot, SnapshotCache};

/// The result of a store operation.
pub type Result<T> = std::result::Result<T, StoreError>;

/// One version of one resource as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    /// Opaque key of the resource (all versions share it).
    pub key: i64,
    /// The resource type.
    pub resource_type: String,
    /// The resource id.
    pub id: String,
    /// The version (`meta.versionId`), from 1.
    pub version: i64,
    /// Unix milliseconds.
    pub last_updated: i64,
    /// Whether this version is a deletion.
    pub deleted: bool,
    /// Canonical JSON; empty when `deleted`.
    pub json: String,
}

impl StoredResource {
    /// The version's ETag (`W/"<version>"`).
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }
}

/// A new search's first page, as [`Store::search_page`] gives it.
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    /// Every matching key, in the query's order.
    pub keys: Vec<i64>,
    /// The live resources of the first `count` keys, in order.
    pub first: Vec<StoredResource>,
    /// The paging snapshot saved because more than `count` keys matched.
    pub snapshot_id: Option<String>,
}

/// Whose history (FHIR's system, type and instance history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope {
    /// Every resource.
    System,
    /// Every resource of a type.
    Type(String),
    /// One resource (type, id).
    Instance(String, String),
}

/// Which versions of a history, and which page of them.
#[derive(Debug, Clone, Default)]
pub struct HistoryParams {
    /// Only versions updated at or after this (Unix ms).
    pub since: Option<i64>,
    /// Only versions updated at or before this (Unix ms); pins paging against concurrent writes.
    pub till: Option<i64>,
    /// Versions per page.
    pub count: usize,
    /// Where the page starts.
    pub offset: usize,
}

/// A page of history.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Versions in the whole history (for `Bundle.total`).
    pub total: usize,
    /// The page's versions, newest first.
    pub entries: Vec<StoredResource>,
}

/// What a write expects of the current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The write happens whatever the current version is.
    None,
    /// No precondition, and a write whose content equals the current version's is skipped (no new
    /// version, no lock held): an import of files already imported leaves the data as it was.
    IfChanged,
    /// `If-Match`: the current version must be this one.
    Version(i64),
    /// Create only: the resource must not exist (or be deleted).
    Absent,
}

/// The outcome of a write.
#[derive(Debug, Clone)]
pub struct Written {
    /// The version written (or the unchanged current one).
    pub resource: StoredResource,
    /// True when the write created the resource (no earlier live version).
    pub created: bool,
    /// True when nothing was written: [`Precondition::IfChanged`] met the same content.
    pub unchanged: bool,
}

/// A read view of the store; also implemented by transactions (reads see the transaction's own writes).
#[async_trait]
pub trait Reader: Send {
    /// The current version, also when it is a deletion; `None` when the resource never existed.
    async fn read(&mut self, resource_type: &str, id: &str) -> Result<Option<StoredResource>>;
    /// The keys of every live resource matching `query`, in the query's sort order.
    async fn search(&mut self, query: &SearchQuery) -> Result<Vec<i64>>;
    /// The current, live versions of `keys`, in the order given (deleted ones are left out).
    async fn fetch(&mut self, keys: &[i64]) -> Result<Vec<StoredResource>>;
}

/// A write transaction: all or nothing. Dropping it without [`Transaction::commit`] rolls back.
#[async_trait]
pub trait Transaction: Reader {
    /// Writes a new version of `resource` (whose `resourceType` and `id` must be set).
    async fn put(&mut self, resource: Value, precondition: Precondition) -> Result<Written>;
    /// Writes a resource prepared (canonicalised and indexed) ahead of the transaction by [`prepare`].
    async fn put_prepared(&mut self, prepared: &Prepared, precondition: Precondition) -> Result<Written>;
    /// Writes several prepared resources in order, stopping at the first error; backends may batch them
    /// (PostgreSQL inserts runs of creates with one statement).
    async fn put_prepared_many(&mut self, writes: &[(Prepared, Precondition)]) -> Result<Vec<Written>> {
        let mut out = Vec::with_capacity(writes.len());
        for (p, pre) in writes {
            out.push(self.put_prepared(p, *pre).await?);
        }
        Ok(out)
    }
    /// Deletes the resource; `None` when there was no live version.
    async fn delete(&mut self, resource_type: &str, id: &str, precondition: Precondition) -> Result<Option<StoredResource>>;
    /// Serialises this transaction with every other one that names the same `key` until it ends (the
    /// search-then-write of a conditional create or update: two requests with the same criteria must not
    /// both find nothing and both create). SQLite has one writer at a time, so nothing more is needed there;
    /// PostgreSQL takes a transaction-scoped advisory lock, which holds across nodes sharing the database.
    async fn serialize_on(&mut self, key: &str) -> Result<()> {
        let _ = key;
        Ok(())
    }
    /// Commits every write of the transaction, or none.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// One record of authorisation-server state (see [`AuthStore`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthRecord {
    /// JSON.
    pub value: String,
    /// The grant the record belongs to (revoked with it).
    pub grant_id: Option<String>,
    /// Unix ms.
    pub expires: Option<i64>,
    /// Whether it was consumed (single-use records: codes, launches).
    pub used: bool,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A record to write, for [`AuthStore::auth_insert_new_then_put`].
#[derive(Debug, Clone, Copy)]
pub struct NewAuthRecord<'a> {
    /// The record's kind (`code`, `access`, `jti`...).
    pub kind: &'a str,
    /// Its key within the kind.
    pub key: &'a str,
    /// JSON.
    pub value: &'a str,
    /// The grant it belongs to.
    pub grant_id: Option<&'a str>,
    /// Unix ms after which it is gone.
    pub expires: Option<i64>,
}

/// Authorisation-server state, shared by every node: records keyed by `(kind, key)`. Expired records are
/// never returned.
#[async_trait]
pub trait AuthStore: Send + Sync {
    /// Inserts or replaces a record (clearing `used` and `revoked`).
    async fn auth_put(&self, kind: &str, key: &str, value: &str, grant_id: Option<&str>, expires: Option<i64>) -> Result<()>;
    /// The record, when it exists and has not expired.
    async fn auth_get(&self, kind: &str, key: &str) -> Result<Option<AuthRecord>>;
    /// Marks a record used and returns it as it was before, atomically: of two concurrent consumers exactly
    /// one sees `used == false`.
    async fn auth_consume(&self, kind: &str, key: &str) -> Result<Option<AuthRecord>>;
    /// Inserts a record only when no live one exists under the key (an expired one is replaced); returns
    /// whether it was inserted. The replay cache for assertion `jti`s.
    async fn auth_insert_new(&self, kind: &str, key: &str, value: &str, expires: Option<i64>) -> Result<bool>;
    /// [`AuthStore::auth_insert_new`] of `new` and, only when that inserts, [`AuthStore::auth_put`] of
    /// `then`, in one transaction; returns whether `new` was inserted. A backend-services token and the
    /// `jti` of the assertion it was issued for: one commit instead of two.
    async fn auth_insert_new_then_put(&self, new: NewAuthRecord<'_>, then: NewAuthRecord<'_>) -> Result<bool>;
    /// Replaces a live record's value only when it still holds `expected` (compare-and-swap); returns
    /// whether it did. Of two concurrent read-change-write cycles on one record, one replaces and the
    /// other sees `false` and reads again: no change is lost.
    /// `expires` (Unix ms) moves the record's expiry with the change; `None` keeps it.
    async fn auth_replace(&self, kind: &str, key: &str, expected: &str, value: &str, expires: Option<i64>) -> Result<bool>;
    /// Revokes every record of a grant; returns how many.
    async fn auth_revoke_grant(&self, grant_id: &str) -> Result<u64>;
    /// Deletes a record.
    async fn auth_delete(&self, kind: &str, key: &str) -> Result<()>;
    /// Every live record of a kind, by key.
    async fn auth_list(&self, kind: &str) -> Result<Vec<(String, AuthRecord)>>;
    /// Deletes at most `limit` records that expired before `before` (Unix ms); returns how many.
    async fn auth_purge_expired(&self, before: i64, limit: usize) -> Result<u64>;
}

/// Everything Kindling keeps: FHIR resources with their history and search indexes, paging snapshots, the authorisation server's state ([`AuthStore`]) and the audit trail.
#[async_trait]
pub trait Store: AuthStore + Send + Sync + 'static {
    /// The current version, also when it is a deletion; `None` when the resource never existed.
    async fn read(&self, resource_type: &str, id: &str) -> Result<Option<StoredResource>>;
    /// One version of a resource.
    async fn vread(&self, resource_type: &str, id: &str, version: i64) -> Result<Option<StoredResource>>;
    /// A page of history.
    async fn history(&self, scope: &HistoryScope, params: &HistoryParams) -> Result<HistoryPage>;
    /// The keys of every live resource the query selects, in the query's order.
    async fn search(&self, query: &SearchQuery) -> Result<Vec<i64>>;
    /// The resources of `keys`, in that order.
    async fn fetch(&self, keys: &[i64]) -> Result<Vec<StoredResource>>;
    /// Runs a new search and fetches the resources of its first `count` keys; when more than `count`
    /// match and `snapshot` is given, saves it (with the keys filled in) for paging. A backend may do it
    /// all in one statement.
    async fn search_page(&self, query: &SearchQuery, count: usize, snapshot: Option<Snapshot>) -> Result<SearchPage> {
        let keys = self.search(query).await?;
        let snapshot_id = match snapshot {
            Some(mut s) if keys.len() > count => {
                s.keys = keys.clone();
                Some(self.save_snapshot(s).await?)
            }
            _ => None,
        };
        let first = self.fetch(&keys[..count.min(keys.len())]).await?;
        Ok(SearchPage { keys, first, snapshot_id })
    }
    /// Keys of live resources that resources in `keys` reference through `include`.
    async fn include(&self, keys: &[i64], include: &Include) -> Result<Vec<i64>>;
    /// Keys of live resources (of `include.source_type`) that reference resources in `keys` through `include`.
    async fn revinclude(&self, keys: &[i64], include: &Include) -> Result<Vec<i64>>;
    /// Keys for `Patient/$everything`: the patient, every live resource in their compartment and the
    /// resources those reference, optionally only of `types` and updated since `since` (Unix ms).
    async fn everything(&self, patient_id: &str, types: Option<&[String]>, since: Option<i64>) -> Result<Vec<i64>>;
    /// Whether the resource with this key lies in the compartment of `patient_id`.
    async fn in_patient_compartment(&self, key: i64, patient_id: &str) -> Result<bool>;
    /// Which of `keys` lie in the compartment of `patient_id`, in one statement (per 500 keys on SQLite).
    async fn in_patient_compartment_many(&self, keys: &[i64], patient_id: &str) -> Result<std::collections::HashSet<i64>>;
    /// Opens a write transaction.
    async fn begin(&self) -> Result<Box<dyn Transaction>>;
    /// Paging snapshots: a search result frozen so that `next` links are stable under concurrent writes.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<String>;
    /// A paging snapshot, while it lives.
    async fn load_snapshot(&self, id: &str) -> Result<Option<std::sync::Arc<Snapshot>>>;
    /// Counts of live resources per type.
    async fn counts(&self) -> Result<Vec<(String, i64)>>;
    /// Refreshes planner statistics after bulk loads.
    async fn optimize(&self) -> Result<()>;
    /// How many write transactions make progress at once (SQLite has one writer).
    fn concurrent_writers(&self) -> usize {
        1
    }
    /// Appends audit records (see [`audit::AuditSink`], which batches them).
    async fn append_audit(&self, records: &[audit::AuditRecord]) -> Result<()>;
    /// Audit records, newest first, with their ids.
    async fn audit_events(&self, filter: &audit::AuditFilter) -> Result<Vec<(i64, audit::AuditRecord)>>;
    /// How many audit records match `filter` (its `before` and `limit` ignored).
    async fn audit_count(&self, filter: &audit::AuditFilter) -> Result<u64>;
}

/// Whether `prepared` would store exactly the current version's content again (same body and meta;
/// `versionId` and `lastUpdated` aside). The index rows are not compared: a resource left unchanged keeps
/// the rows it was written with.
pub(crate) fn same_as_current(prepared: &Prepared, current: Option<&StoredResource>) -> bool {
    current
        .is_some_and(|c| !c.deleted && c.resource_type == prepared.resource_type && c.id == prepared.id && prepared.render(c.version, c.last_updated) == c.json)
}

/// Whether `precondition` holds for the current version (shared by the backends).
pub(crate) fn check_precondition(precondition: Precondition, current: Option<&StoredResource>) -> Result<()> {
    match (precondition, current) {
        (Precondition::None | Precondition::IfChanged, _) => Ok(()),
        (Precondition::Version(v), Some(c)) if !c.deleted && c.version == v => Ok(()),
        (Precondition::Version(v), Some(c)) if !c.deleted => {
            Err(StoreError::Conflict(format!("expected version {v}, but the current version is {}", c.version)))
        }
        (Precondition::Version(v), _) => Err(StoreError::Conflict(format!("expected version {v}, but the resource does not exist"))),
        (Precondition::Absent, Some(c)) if !c.deleted => Err(StoreError::Conflict(format!("{}/{} already exists", c.resource_type, c.id))),
        (Precondition::Absent, _) => Ok(()),
    }
}

/// Refuses a database that a newer Kindling has migrated past what this binary knows (`known`, its last
/// migration): this binary would not maintain the newer tables, and searches answered from them would go
/// wrong (e.g. a per-patient index missing the rows of resources this binary writes).
pub(crate) fn check_schema_not_newer(applied: i64, known: i64) -> Result<()> {
    if applied > known {
        return Err(StoreError::Backend(format!(
            "the database is at schema version {applied}, newer than this Kindling knows ({known}): it was migrated by a newer release; run that release (or a newer one) instead"
        )));
    }
    Ok(())
}
