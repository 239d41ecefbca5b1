//! `WatchEvents` behind one reader per tenant: watchers of a tenant share a single tail of its
//! change sequence (one database read per wake-up and replica, not one per watcher), each
//! watcher is bounded (a consumer that does not keep up for the grace period is ended with
//! `RESOURCE_EXHAUSTED` and everything it held is released), and how many watchers one caller
//! and one tenant may hold at once is capped.
//!
//! A watcher subscribes to its tenant's tail first, then reads from its resume point in its own
//! scope until it has caught up, then follows the tail, skipping what it already sent. A change
//! committed before the subscription is in the catch-up read; one committed after it comes
//! through the tail; the seq (one per tenant, assigned in commit order) removes the overlap.
//! A watcher that falls behind the tail's buffer goes back to reading on its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;
use zen_cache::Cache;
use zen_store::{Change, Scope, Store};

use super::support::{store_status, timestamp, ERROR_DOMAIN};
use crate::authz::Caller;
use crate::drain::Drain;
use crate::grpc::slow_consumer::{bounded, BoundedSender, BoundedStream};
use crate::proto::zen::ingest::v1 as pb;

/// Changes read per query.
const PAGE: i64 = 500;
/// How often a tail reads without a wake-up (the pub/sub message may be lost).
const POLL: Duration = Duration::from_secs(1);
/// An idle watch gets a heartbeat this often.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Batches a tail keeps for its slowest watcher before that one reads on its own.
const TAIL_BUFFER: usize = 256;
/// Messages queued for one watcher's stream.
const WATCHER_BUFFER: usize = 64;

/// Limits of the watchers one replica holds.
#[derive(Clone, Debug)]
pub struct WatchLimits {
    /// Watches one caller (a person, a service) may hold at once.
    pub per_caller: usize,
    /// Watches of one tenant, all callers together.
    pub per_tenant: usize,
    /// How long a watcher's queue may stay full before it is ended as too slow.
    pub slow_consumer_grace: Duration,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self {
            per_caller: 64,
            per_tenant: 1024,
            slow_consumer_grace: Duration::from_secs(2),
        }
    }
}

/// One change as every watcher of the tenant sees it: converted once, filtered per watcher.
struct Item {
    seq: i64,
    cluster_id: Option<Uuid>,
    /// Events only; remediations pass any severity filter.
    severity: Option<i16>,
    change: pb::watch_events_response::Change,
}

fn item(change: Change) -> Item {
    let seq = change.seq();
    match change {
        Change::Event(event) => Item {
            seq,
            cluster_id: event.cluster_id,
            severity: Some(event.severity),
            change: pb::watch_events_response::Change::Event(super::ingest::event_to_proto(event)),
        },
        Change::Remediation { remediation, .. } => Item {
            seq,
            cluster_id: Some(remediation.cluster_id),
            severity: None,
            change: pb::watch_events_response::Change::Remediation(
                super::remediation::remediation_to_proto(remediation),
            ),
        },
    }
}

type Batch = Arc<Vec<Item>>;

/// The one reader of a tenant's change sequence on this replica.
struct Tail {
    tx: broadcast::Sender<Batch>,
}

#[derive(Default)]
struct Counts {
    callers: HashMap<String, usize>,
    tenants: HashMap<Uuid, usize>,
}

/// The watchers of this replica.
pub struct WatchHub {
    store: Arc<Store>,
    cache: Arc<dyn Cache>,
    limits: WatchLimits,
    drain: Drain,
    tails: Mutex<HashMap<Uuid, Weak<Tail>>>,
    counts: Arc<Mutex<Counts>>,
}

/// Holds one watcher's place in the counts; released when the watcher ends.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    caller: String,
    tenant: Uuid,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.callers.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                counts.callers.remove(&self.caller);
            }
        }
        if let Some(n) = counts.tenants.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                counts.tenants.remove(&self.tenant);
            }
        }
        metrics::gauge!("zen_watchers").decrement(1.0);
    }
}

/// What a watcher asked for.
pub struct WatchRequest {
    pub tenant_id: Uuid,
    pub scope: Scope,
    pub after: i64,
    pub cluster: Option<Uuid>,
    pub min_severity: i16,
}

fn caller_key(caller: &Caller) -> String {
    match caller {
        Caller::User { user_id, .. } => format!("user:{user_id}"),
        Caller::Operator { name } => format!("operator:{name}"),
        Caller::Service { name } => format!("service:{name}"),
        Caller::Agent { cluster_id, .. } => format!("agent:{cluster_id}"),
        Caller::Anonymous => "anonymous".into(),
    }
}

fn limit_reached(what: &str, limit: usize) -> Status {
    let mut details = ErrorDetails::with_error_info(
        "WATCHER_LIMIT",
        ERROR_DOMAIN,
        HashMap::from([
            ("limit".to_owned(), limit.to_string()),
            ("scope".to_owned(), what.to_owned()),
        ]),
    );
    details.add_quota_failure_violation(
        format!("watchers per {what}"),
        format!("at most {limit} open watches per {what}; close one first"),
    );
    details.set_retry_info(Some(Duration::from_secs(5)));
    Status::with_error_details(
        Code::ResourceExhausted,
        format!("too many open watches: at most {limit} per {what}"),
        details,
    )
}

impl WatchHub {
    pub fn new(
        store: Arc<Store>,
        cache: Arc<dyn Cache>,
        limits: WatchLimits,
        drain: Drain,
    ) -> Self {
        Self {
            store,
            cache,
            limits,
            drain,
            tails: Mutex::new(HashMap::new()),
            counts: Arc::new(Mutex::new(Counts::default())),
        }
    }

    /// Takes a place for `caller` in `tenant`, or says which limit is reached.
    fn admit(&self, caller: &Caller, tenant: Uuid) -> Result<Slot, Status> {
        let key = caller_key(caller);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.callers.get(&key).copied().unwrap_or(0) >= self.limits.per_caller {
            metrics::counter!("zen_watchers_refused_total", "limit" => "caller").increment(1);
            return Err(limit_reached("caller", self.limits.per_caller));
        }
        if counts.tenants.get(&tenant).copied().unwrap_or(0) >= self.limits.per_tenant {
            metrics::counter!("zen_watchers_refused_total", "limit" => "tenant").increment(1);
            return Err(limit_reached("tenant", self.limits.per_tenant));
        }
        *counts.callers.entry(key.clone()).or_default() += 1;
        *counts.tenants.entry(tenant).or_default() += 1;
        metrics::gauge!("zen_watchers").increment(1.0);
        Ok(Slot {
            counts: self.counts.clone(),
            caller: key,
            tenant,
        })
    }

    /// The tenant's tail, started if nobody on this replica follows the tenant yet.
    async fn tail(&self, tenant: Uuid) -> Result<Arc<Tail>, Status> {
        if let Some(tail) = self.existing_tail(tenant) {
            return Ok(tail);
        }
        // Woken by each commit's pub/sub message; subscribed before the first read so no
        // wake-up is missed.
        let wakeups = self
            .cache
            .subscribe(&super::ingest::events_channel(tenant))
            .await
            .map_err(|_| {
                Status::with_error_details(
                    Code::Unavailable,
                    "the cache is unavailable; retry later",
                    ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
                )
            })?;
        let scope = Scope::tenant(tenant, None);
        let start = {
            let mut tx = self
                .store
                .begin_read(&scope)
                .await
                .map_err(|e| store_status(e, ""))?;
            tx.events()
                .last_seq()
                .await
                .map_err(|e| store_status(e, ""))?
        };
        let mut tails = self.tails.lock().unwrap_or_else(PoisonError::into_inner);
        // Another watcher may have started one meanwhile.
        if let Some(tail) = tails.get(&tenant).and_then(Weak::upgrade) {
            return Ok(tail);
        }
        let (tx, _) = broadcast::channel(TAIL_BUFFER);
        let tail = Arc::new(Tail { tx: tx.clone() });
        tails.insert(tenant, Arc::downgrade(&tail));
        tokio::spawn(follow(
            self.store.clone(),
            scope,
            start,
            tx,
            Arc::downgrade(&tail),
            wakeups,
        ));
        metrics::gauge!("zen_watch_tails").increment(1.0);
        Ok(tail)
    }

    fn existing_tail(&self, tenant: Uuid) -> Option<Arc<Tail>> {
        let mut tails = self.tails.lock().unwrap_or_else(PoisonError::into_inner);
        tails.retain(|_, tail| tail.strong_count() > 0);
        tails.get(&tenant).and_then(Weak::upgrade)
    }

    /// Starts a watcher; the stream ends with `RESOURCE_EXHAUSTED` if its reader does not
    /// keep up.
    pub async fn watch(
        &self,
        caller: &Caller,
        request: WatchRequest,
    ) -> Result<WatchStream, Status> {
        let slot = self.admit(caller, request.tenant_id)?;
        let tail = self.tail(request.tenant_id).await?;
        let (out, stream) = bounded(
            WATCHER_BUFFER,
            self.limits.slow_consumer_grace,
            "watcher",
            "resume from the last resume_token",
        );
        tokio::spawn(watcher(
            self.store.clone(),
            tail,
            request,
            out,
            slot,
            self.drain.clone(),
        ));
        Ok(stream)
    }
}

/// Reads the tenant's changes after `after` and hands them to every watcher, until the last
/// watcher is gone.
async fn follow(
    store: Arc<Store>,
    scope: Scope,
    mut after: i64,
    tx: broadcast::Sender<Batch>,
    tail: Weak<Tail>,
    mut wakeups: zen_cache::Subscription,
) {
    loop {
        if tail.strong_count() == 0 {
            break;
        }
        let read = async {
            let mut t = store.begin_read(&scope).await?;
            t.events().changes(after, PAGE).await
        }
        .await;
        let full = match read {
            Ok(changes) => {
                let full = changes.len() as i64 == PAGE;
                if let Some(last) = changes.last() {
                    after = last.seq();
                    let batch: Batch = Arc::new(changes.into_iter().map(item).collect());
                    if tx.send(batch).is_err() {
                        break; // nobody listens
                    }
                }
                full
            }
            Err(error) => {
                // The database is down: the watchers wait (they are not told to leave), and
                // the outage is reported where it is tracked.
                crate::outage::DATABASE.failed(&error);
                false
            }
        };
        if full {
            continue;
        }
        tokio::select! {
            _ = wakeups.next() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    metrics::gauge!("zen_watch_tails").decrement(1.0);
}

/// How a watch ends when its replica drains: `UNAVAILABLE`, to be resumed at once elsewhere.
fn draining() -> Status {
    Status::with_error_details(
        Code::Unavailable,
        "this replica is shutting down; resume from the last resume_token (another replica \
         will answer)",
        ErrorDetails::with_retry_info(Some(Duration::ZERO)),
    )
}

fn wanted(item: &Item, request: &WatchRequest) -> bool {
    if request.cluster.is_some() && item.cluster_id != request.cluster {
        return false;
    }
    item.severity.is_none_or(|s| s >= request.min_severity)
}

async fn watcher(
    store: Arc<Store>,
    tail: Arc<Tail>,
    request: WatchRequest,
    out: BoundedSender<pb::WatchEventsResponse>,
    _slot: Slot,
    drain: Drain,
) {
    let mut after = request.after;
    let mut last_sent = Instant::now();
    'resubscribe: loop {
        let mut batches = tail.tx.subscribe();
        // Catch up on our own until a read comes back short.
        loop {
            let read = async {
                let mut tx = store.begin_read(&request.scope).await?;
                tx.events().changes(after, PAGE).await
            }
            .await;
            let changes = match read {
                Ok(changes) => changes,
                Err(error) => {
                    out.end(store_status(error, ""));
                    return;
                }
            };
            let caught_up = (changes.len() as i64) < PAGE;
            for change in changes {
                let item = item(change);
                after = item.seq;
                if !wanted(&item, &request) {
                    continue;
                }
                let message = pb::WatchEventsResponse {
                    resume_token: item.seq.to_string(),
                    change: Some(item.change),
                };
                if !out.send(message).await {
                    break 'resubscribe;
                }
                last_sent = Instant::now();
            }
            if caught_up {
                break;
            }
        }
        // Follow the tail.
        loop {
            let heartbeat_at = last_sent + HEARTBEAT;
            let batch = tokio::select! {
                batch = batches.recv() => batch,
                _ = tokio::time::sleep_until(heartbeat_at) => {
                    let heartbeat = pb::WatchEventsResponse {
                        resume_token: after.to_string(),
                        change: Some(pb::watch_events_response::Change::Heartbeat(
                            pb::WatchHeartbeat {
                                server_time: Some(timestamp(Utc::now())),
                            },
                        )),
                    };
                    if !out.send(heartbeat).await {
                        break 'resubscribe;
                    }
                    last_sent = Instant::now();
                    continue;
                }
                _ = out.closed() => break 'resubscribe,
                // Ended, not cut off: the watcher resumes from its last token elsewhere.
                () = drain.started() => {
                    out.end(draining());
                    break 'resubscribe;
                }
            };
            match batch {
                Ok(batch) => {
                    for item in batch.iter() {
                        if item.seq <= after {
                            continue;
                        }
                        after = item.seq;
                        if !wanted(item, &request) {
                            continue;
                        }
                        let message = pb::WatchEventsResponse {
                            resume_token: item.seq.to_string(),
                            change: Some(item.change.clone()),
                        };
                        if !out.send(message).await {
                            break 'resubscribe;
                        }
                        last_sent = Instant::now();
                    }
                }
                // Fell behind the tail's buffer: read on our own again from `after`.
                Err(broadcast::error::RecvError::Lagged(_)) => continue 'resubscribe,
                Err(broadcast::error::RecvError::Closed) => break 'resubscribe,
            }
        }
    }
}

/// A watcher's messages; ends with the error the watcher left with (too slow, store down)
/// ahead of anything still queued.
pub type WatchStream = BoundedStream<pb::WatchEventsResponse>;
