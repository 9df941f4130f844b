//! The audit trail: records are queued on a channel and written in batches by one background task, so
//! recording an access costs the request a channel send, not a database write.

use crate::Store;
use std::sync::Arc;
use tokio::sync::mpsc;

/// One event of the audit trail (AuditEvent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditRecord {
    /// Unix ms.
    pub recorded: i64,
    /// `rest` or `auth`.
    pub category: String,
    /// What happened (`login`, `token`, `read`...).
    pub action: String,
    /// `0` success, `4` minor failure (refused), `8` serious failure.
    pub outcome: String,
    /// The client involved.
    pub client_id: Option<String>,
    /// The user involved.
    pub username: Option<String>,
    /// The patient whose record it was about.
    pub patient: Option<String>,
    /// What was acted on (a path, a resource).
    pub entity: Option<String>,
    /// A sentence for the launch inspector (never token material).
    pub detail: Option<String>,
    /// The public id of the SMART launch this belongs to, when known (for the launch inspector).
    pub launch: Option<String>,
}

/// Which audit records to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only records at or after this (Unix ms).
    pub since: Option<i64>,
    /// Only about this patient.
    pub patient: Option<String>,
    /// Only of this client.
    pub client_id: Option<String>,
    /// Only of this user.
    pub username: Option<String>,
    /// Only this record.
    pub id: Option<i64>,
    /// Only of this launch.
    pub launch: Option<String>,
    /// Paging: only records older than this id (the last id of the page before).
    pub before: Option<i64>,
    /// At most this many records.
    pub limit: usize,
}

/// Where audit records go. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
}

const BATCH: usize = 512;
/// How long the writer waits for more records after the first of a batch.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

impl AuditSink {
    /// Starts the writer task on the current runtime.
    pub fn spawn(store: Arc<dyn Store>) -> AuditSink {
        let (tx, mut rx) = mpsc::channel::<AuditRecord>(65_536);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while let Some(first) = rx.recv().await {
                batch.push(first);
                // Records that follow within a moment share the write: one request at a time would
                // otherwise cost one INSERT each (on PostgreSQL about as much as the read it records).
                tokio::time::sleep(GATHER).await;
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                if let Err(e) = store.append_audit(&batch).await {
                    tracing::error!(error = %e, lost = batch.len(), "audit records could not be written");
                }
                batch.clear();
            }
        });
        AuditSink { tx }
    }

    /// Queues a record. When the queue is full the request is not held up; the loss is logged.
    pub fn record(&self, r: AuditRecord) {
        if self.tx.try_send(r).is_err() {
            tracing::error!("audit queue full; an audit record was dropped");
        }
    }
}
