//! Group commit for the audit records of allowed read-only calls.
//!
//! Every authorization decision is recorded, reads included. Appended one transaction per call,
//! each read waited for its own commit under its tenant's chain head, which made one tenant's
//! reads as slow as its commits. Here the records of concurrent calls share transactions: one
//! task takes everything queued, groups it by audit chain (tenant), and appends each group in
//! one transaction (the chain head is locked once per group, one fsync per group). A caller is
//! answered only after its group committed, so a crash loses no recorded read: a call is either
//! refused or its decision is in the log. The queue is bounded: when it is full, callers wait
//! (backpressure), nothing is dropped. A group that fails to commit tells each caller so; the
//! caller appends its record on its own and so sees the real error.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;
use zen_store::{NewAuditRecord, Scope, Store};

/// Records waiting for a batch; callers wait when it is full.
const QUEUE: usize = 4096;
/// Most records one transaction appends.
const MAX_BATCH: usize = 512;

struct Pending {
    scope: Scope,
    record: NewAuditRecord,
    done: oneshot::Sender<bool>,
}

/// The handle callers append through (cheap to clone).
#[derive(Clone)]
pub struct AuditBatcher {
    queue: mpsc::Sender<Pending>,
}

impl AuditBatcher {
    /// Starts the batching task on the current runtime.
    pub fn start(store: Arc<Store>) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, pending));
        Self { queue }
    }

    /// Appends `record` to the chain of `scope` in a shared transaction; `true` once that
    /// transaction committed, `false` when it did not (the record was not written: append it
    /// on its own to learn why).
    pub async fn append(&self, scope: &Scope, record: NewAuditRecord) -> bool {
        let (done, committed) = oneshot::channel();
        let pending = Pending {
            scope: scope.clone(),
            record,
            done,
        };
        metrics::gauge!("zen_audit_pending_records").increment(1.0);
        if self.queue.send(pending).await.is_err() {
            metrics::gauge!("zen_audit_pending_records").decrement(1.0);
            return false;
        }
        committed.await.unwrap_or(false)
    }
}

async fn run(store: Arc<Store>, mut pending: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut chains: HashMap<Uuid, Vec<Pending>> = HashMap::new();
        for p in batch.drain(..) {
            chains.entry(p.scope.chain_tenant()).or_default().push(p);
        }
        let records = chains.values().map(Vec::len).sum::<usize>();
        metrics::histogram!("zen_audit_batch_records").record(records as f64);
        metrics::gauge!("zen_audit_pending_records").decrement(records as f64);
        // Chains of different tenants commit side by side.
        futures::future::join_all(chains.into_values().map(|group| commit(&store, group))).await;
    }
}

/// One transaction for one chain's records, in the order they were queued.
async fn commit(store: &Store, group: Vec<Pending>) {
    // Row-level security needs only the chain's tenant to append to its chain.
    let scope = Scope {
        tenant_id: group[0].scope.tenant_id,
        user_id: None,
        platform_admin: false,
    };
    let written = async {
        let mut tx = store.begin(&scope).await?;
        tx.audit()
            .append_all(group.iter().map(|p| p.record.clone()).collect())
            .await?;
        tx.commit().await
    }
    .await;
    match written {
        Ok(()) => {
            for p in group {
                let _ = p.done.send(true);
            }
        }
        Err(error) => {
            tracing::debug!(%error, records = group.len(), "an audit batch did not commit; its callers append on their own");
            for p in group {
                let _ = p.done.send(false);
            }
        }
    }
}
