//! Reads by id coalesced into one statement. Under load, every read costs PostgreSQL a statement
//! (protocol messages, a portal, a snapshot, a network round trip) for one index probe; reads that arrive
//! while others are in flight are gathered and answered by one `SELECT … JOIN unnest(…)`, so the
//! per-statement cost is shared. A read while nothing else is in flight goes out directly.
//!
//! Nothing is cached: each read is answered by a statement that started after the read was asked for,
//! so a read still sees every write committed before it (on any node).

use super::{RESOURCE_COLUMNS, read_current, row_to_resource};
use crate::{Result, StoreError, StoredResource};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Reads gathered into one statement at most.
const MAX_BATCH: usize = 128;
/// Statements in flight at once: one per core, at least two. Few on purpose: while they run, new reads
/// queue up and form the next batch. On the 2-core benchmark machine, four in flight gave 37k reads/s
/// and two 43k.
fn in_flight() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2)
}

struct Ask {
    resource_type: String,
    id: String,
    reply: oneshot::Sender<Result<Option<StoredResource>>>,
}

#[derive(Clone)]
pub(crate) struct ReadCoalescer {
    tx: mpsc::UnboundedSender<Ask>,
    pool: PgPool,
    slots: Arc<Semaphore>,
    in_flight: usize,
}

impl ReadCoalescer {
    /// Starts the dispatcher on the current runtime.
    pub(crate) fn spawn(pool: PgPool) -> ReadCoalescer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Ask>();
        let in_flight = in_flight();
        let slots = Arc::new(Semaphore::new(in_flight));
        let dispatch_pool = pool.clone();
        let dispatch_slots = slots.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Wait for a free slot first, so that what queues up meanwhile joins this batch.
                let Ok(permit) = dispatch_slots.clone().acquire_owned().await else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(ask) => batch.push(ask),
                        Err(_) => break,
                    }
                }
                let pool = dispatch_pool.clone();
                tokio::spawn(async move {
                    answer(&pool, batch).await;
                    drop(permit);
                });
            }
        });
        ReadCoalescer { tx, pool, slots, in_flight }
    }

    pub(crate) async fn read(&self, resource_type: &str, id: &str) -> Result<Option<StoredResource>> {
        // Nothing in flight: nobody to share a statement with, so skip the dispatcher's hop.
        if self.slots.available_permits() == self.in_flight
            && let Ok(_permit) = self.slots.clone().try_acquire_owned()
        {
            return read_current(&self.pool, resource_type, id, false).await;
        }
        let (reply, answer) = oneshot::channel();
        let ask = Ask { resource_type: resource_type.to_string(), id: id.to_string(), reply };
        if self.tx.send(ask).is_ok()
            && let Ok(result) = answer.await
        {
            return result;
        }
        // The dispatcher's runtime is gone (a store used from another runtime): read directly.
        read_current(&self.pool, resource_type, id, false).await
    }
}

async fn answer(pool: &PgPool, batch: Vec<Ask>) {
    if batch.len() == 1 {
        let ask = batch.into_iter().next().expect("one");
        let result = read_current(pool, &ask.resource_type, &ask.id, false).await;
        let _ = ask.reply.send(result);
        return;
    }
    let types: Vec<&str> = batch.iter().map(|a| a.resource_type.as_str()).collect();
    let ids: Vec<&str> = batch.iter().map(|a| a.id.as_str()).collect();
    let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources r JOIN unnest($1::text[], $2::text[]) AS k(t, i) ON r.res_type = k.t AND r.id = k.i");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&types).bind(&ids).fetch_all(pool).await;
    match rows {
        Ok(rows) => {
            let mut found: HashMap<(String, String), StoredResource> = HashMap::with_capacity(rows.len());
            let mut failure = None;
            for row in &rows {
                match row_to_resource(row) {
                    Ok(r) => {
                        found.insert((r.resource_type.clone(), r.id.clone()), r);
                    }
                    Err(e) => failure = Some(e.to_string()),
                }
            }
            for ask in batch {
                let result = match &failure {
                    Some(e) => Err(StoreError::Backend(e.clone())),
                    // The same resource asked for twice in one batch gets a copy each time.
                    None => Ok(found.get(&(ask.resource_type, ask.id)).cloned()),
                };
                let _ = ask.reply.send(result);
            }
        }
        Err(e) => {
            let message = e.to_string();
            let unavailable = crate::error::sqlx_unavailable(&e);
            if !unavailable {
                tracing::warn!(error = %message, reads = batch.len(), "a batch of reads failed");
            }
            for ask in batch {
                let err = if unavailable { StoreError::Unavailable(message.clone()) } else { StoreError::Backend(message.clone()) };
                let _ = ask.reply.send(Err(err));
            }
        }
    }
}
