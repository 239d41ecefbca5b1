//! Group commit of webhook deliveries: concurrent deliveries to one tenant share one
//! transaction (their events, the sources' last-delivery times and one audit record per
//! delivery), and each caller is answered only after that transaction commits.
//!
//! A tenant's ingest transactions run one at a time anyway (they take its event sequence lock,
//! see docs/STORAGE.md), so one transaction per delivery caps a busy tenant at one commit
//! round trip per delivery. Batching what arrives while the previous commit runs costs an idle
//! tenant nothing (a lone delivery commits at once) and turns a burst into a few commits.
//! A committed batch wakes the tenant's watchers once (one cache message per batch, not per
//! delivery), before its callers are answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use tracing::field::Empty;
use tracing::Instrument;
use uuid::Uuid;
use zen_cache::Cache;
use zen_store::{EventOutcome, NewAuditRecord, NewEvent, Scope, Store, StoreError};

/// Most deliveries one transaction carries.
const MAX_DELIVERIES_PER_COMMIT: usize = 256;
/// Most events one transaction carries (a delivery's events are never split).
const MAX_EVENTS_PER_COMMIT: usize = 2000;
/// Deliveries waiting for a tenant's committer before callers are told to retry.
const QUEUE_PER_TENANT: usize = 4096;
/// A committer with nothing to do for this long ends (it is restarted on demand).
const IDLE: Duration = Duration::from_secs(60);

/// One verified delivery, ready to store.
pub struct Delivery {
    pub source_id: Uuid,
    pub cluster_id: Option<Uuid>,
    pub events: Vec<NewEvent>,
    pub audit: NewAuditRecord,
    /// The delivery's `webhook.commit` span, which the batch that stores it links to.
    trace: Option<opentelemetry::trace::SpanContext>,
}

impl Delivery {
    pub fn new(
        source_id: Uuid,
        cluster_id: Option<Uuid>,
        events: Vec<NewEvent>,
        audit: NewAuditRecord,
    ) -> Self {
        Self {
            source_id,
            cluster_id,
            events,
            audit,
            trace: None,
        }
    }
}

/// Why a delivery was not stored (nothing of it was).
#[derive(Debug)]
pub enum CommitError {
    /// The tenant's queue is full: retry later.
    Busy,
    /// The store refused or failed.
    Store(StoreError),
}

type Reply = oneshot::Sender<Result<Vec<EventOutcome>, CommitError>>;

/// Per-tenant committers, started on first use.
pub struct CommitQueue {
    store: Arc<Store>,
    cache: Arc<dyn Cache>,
    fold_window: Duration,
    tenants: Mutex<HashMap<Uuid, mpsc::Sender<(Delivery, Reply)>>>,
}

impl CommitQueue {
    pub fn new(store: Arc<Store>, cache: Arc<dyn Cache>, fold_window: Duration) -> Self {
        Self {
            store,
            cache,
            fold_window,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `delivery` for `tenant_id`; returns its events' outcomes once committed.
    pub async fn store(
        &self,
        tenant_id: Uuid,
        delivery: Delivery,
    ) -> Result<Vec<EventOutcome>, CommitError> {
        // The wait for (and the share of) the batch that stores this delivery, in the
        // delivery's own trace; the batch's span links back to it.
        let span = crate::telemetry::traced(|| {
            tracing::info_span!(
                "webhook.commit",
                zen.tenant_id = %tenant_id,
                zen.events = delivery.events.len() as i64,
                otel.status_code = Empty,
            )
        });
        let outcome = self
            .enqueue(tenant_id, delivery)
            .instrument(span.clone())
            .await;
        if outcome.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        outcome
    }

    async fn enqueue(
        &self,
        tenant_id: Uuid,
        mut delivery: Delivery,
    ) -> Result<Vec<EventOutcome>, CommitError> {
        delivery.trace = crate::telemetry::current_span_context();
        let (reply, answer) = oneshot::channel();
        let mut item = (delivery, reply);
        // At most twice: a committer that just ended for idleness is replaced.
        for _ in 0..2 {
            let sender = self.sender(tenant_id);
            match sender.try_send(item) {
                Ok(()) => {
                    metrics::gauge!("zen_webhook_commit_queue_depth").increment(1.0);
                    return answer.await.unwrap_or(Err(CommitError::Busy));
                }
                Err(mpsc::error::TrySendError::Full(_)) => return Err(CommitError::Busy),
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    item = back;
                    let mut tenants = self.tenants.lock().expect("commit queues");
                    if tenants.get(&tenant_id).is_some_and(|s| s.is_closed()) {
                        tenants.remove(&tenant_id);
                    }
                }
            }
        }
        Err(CommitError::Busy)
    }

    fn sender(&self, tenant_id: Uuid) -> mpsc::Sender<(Delivery, Reply)> {
        let mut tenants = self.tenants.lock().expect("commit queues");
        if let Some(sender) = tenants.get(&tenant_id).filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::channel(QUEUE_PER_TENANT);
        tokio::spawn(commit_loop(
            self.store.clone(),
            self.cache.clone(),
            self.fold_window,
            tenant_id,
            receiver,
        ));
        tenants.insert(tenant_id, sender.clone());
        sender
    }
}

async fn commit_loop(
    store: Arc<Store>,
    cache: Arc<dyn Cache>,
    fold_window: Duration,
    tenant_id: Uuid,
    mut receiver: mpsc::Receiver<(Delivery, Reply)>,
) {
    let scope = Scope::tenant(tenant_id, None);
    let channel = super::ingest::events_channel(tenant_id);
    loop {
        let first = match tokio::time::timeout(IDLE, receiver.recv()).await {
            Ok(Some(item)) => item,
            // Idle or every sender gone: stop; the queue starts a new committer when needed.
            _ => return,
        };
        let mut events = first.0.events.len();
        let mut batch = vec![first];
        while batch.len() < MAX_DELIVERIES_PER_COMMIT && events < MAX_EVENTS_PER_COMMIT {
            match receiver.try_recv() {
                Ok(item) => {
                    events += item.0.events.len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        metrics::gauge!("zen_webhook_commit_queue_depth").decrement(batch.len() as f64);
        let deliveries: Vec<&Delivery> = batch.iter().map(|(d, _)| d).collect();
        // One transaction serving many deliveries: a span of its own, linked to each.
        let span = crate::telemetry::traced(|| {
            tracing::info_span!(
                "webhook.commit_batch",
                otel.status_code = Empty,
                db.system = db_system(&store),
                db.operation.name = "COMMIT",
                zen.tenant_id = %tenant_id,
                zen.deliveries = deliveries.len() as i64,
                zen.events = events as i64,
            )
        });
        crate::telemetry::link(&span, deliveries.iter().filter_map(|d| d.trace.clone()));
        let started = std::time::Instant::now();
        let attempt = || commit(&store, &scope, fold_window, &deliveries).instrument(span.clone());
        let mut result = attempt().await;
        for _ in 0..2 {
            match &result {
                Err(error) if error.is_retryable() => {
                    result = attempt().await;
                }
                _ => break,
            }
        }
        metrics::histogram!("zen_webhook_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("zen_webhook_commit_batch_deliveries").record(deliveries.len() as f64);
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        // Watchers read what changed from the store; the message only wakes them.
        let wake = || cache.publish(&channel, b"");
        match result {
            Ok(mut outcomes) => {
                let _ = wake().await;
                for ((_, reply), outcome) in batch.into_iter().zip(outcomes.drain(..)) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(error)
                if batch.len() > 1
                    && !error.is_retryable()
                    && !error.is_unavailable()
                    && error.write_refusal().is_none() =>
            {
                // One bad delivery must not sink the others: store them one by one. (Not when
                // the database is unreachable: each would wait out the pool's timeout in turn,
                // and the batch's senders all get the 503 at once instead.)
                for (delivery, reply) in batch {
                    let one = commit(&store, &scope, fold_window, &[&delivery])
                        .await
                        .map(|mut o| o.pop().unwrap_or_default())
                        .map_err(CommitError::Store);
                    if one.is_ok() {
                        let _ = wake().await;
                    }
                    let _ = reply.send(one);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "storing webhook deliveries failed");
                for (_, reply) in batch {
                    let _ = reply.send(Err(CommitError::Store(clone_error(&error))));
                }
                if error.is_unavailable() || error.write_refusal().is_some() {
                    // What queued meanwhile would wait out the pool's timeout once more, batch
                    // after batch, for a database found unreachable a moment ago: its senders
                    // get the 503 now (they retry), so an outage is answered within one timeout.
                    let mut refused = 0;
                    while let Ok((_, reply)) = receiver.try_recv() {
                        refused += 1;
                        let _ = reply.send(Err(CommitError::Store(clone_error(&error))));
                    }
                    metrics::gauge!("zen_webhook_commit_queue_depth").decrement(refused as f64);
                }
            }
        }
    }
}

/// One transaction for `deliveries`: their events (one ingest call per cluster), each
/// source's last delivery time, one audit record per delivery. Outcomes per delivery, in order.
async fn commit(
    store: &Store,
    scope: &Scope,
    fold_window: Duration,
    deliveries: &[&Delivery],
) -> Result<Vec<Vec<EventOutcome>>, StoreError> {
    let mut tx = store.begin(scope).await?;
    let now = Utc::now();
    let mut outcomes: Vec<Vec<EventOutcome>> = vec![Vec::new(); deliveries.len()];
    let mut clusters: Vec<Option<Uuid>> = deliveries.iter().map(|d| d.cluster_id).collect();
    clusters.sort();
    clusters.dedup();
    for cluster in clusters {
        let members: Vec<usize> = (0..deliveries.len())
            .filter(|&i| deliveries[i].cluster_id == cluster)
            .collect();
        let events: Vec<NewEvent> = members
            .iter()
            .flat_map(|&i| deliveries[i].events.iter().cloned())
            .collect();
        if events.is_empty() {
            continue;
        }
        let mut stored = tx
            .events()
            .ingest(cluster, &events, fold_window, now)
            .await?
            .into_iter();
        for &i in &members {
            outcomes[i] = stored.by_ref().take(deliveries[i].events.len()).collect();
        }
    }
    let mut sources: Vec<Uuid> = deliveries.iter().map(|d| d.source_id).collect();
    sources.sort();
    sources.dedup();
    for source in sources {
        tx.webhook_sources().record_delivery(source, now).await?;
    }
    tx.audit()
        .append_all(deliveries.iter().map(|d| d.audit.clone()).collect())
        .await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// OpenTelemetry's `db.system` value for the store's backend.
fn db_system(store: &Store) -> &'static str {
    match store.kind() {
        zen_store::BackendKind::Postgres => "postgresql",
        zen_store::BackendKind::Sqlite => "sqlite",
    }
}

/// Store errors are not `Clone`; every waiter of a failed batch gets an equivalent one.
fn clone_error(error: &StoreError) -> StoreError {
    match error {
        // Still "unavailable" for the waiters (never a conflict they would retry at once).
        e if e.is_unavailable() => StoreError::Database(sqlx::Error::PoolTimedOut),
        StoreError::NotFound { what } => StoreError::NotFound { what },
        StoreError::WritesRefused { reason, detail } => StoreError::WritesRefused {
            reason,
            detail: detail.clone(),
        },
        StoreError::QuotaExceeded { what, limit } => StoreError::QuotaExceeded {
            what,
            limit: *limit,
        },
        StoreError::Invalid { field, reason } => StoreError::Invalid {
            field,
            reason: reason.clone(),
        },
        StoreError::Precondition { code, reason } => StoreError::Precondition {
            code,
            reason: reason.clone(),
        },
        other => StoreError::Conflict {
            reason: other.to_string().into(),
        },
    }
}
