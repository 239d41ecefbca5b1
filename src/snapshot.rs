//! In-process snapshots of what hot paths read on every call (a caller's roles, a webhook
//! source with its opened secrets and its tenant's status), and their invalidation across
//! replicas.
//!
//! A snapshot answers from memory for at most its TTL. Every change that can affect one (a
//! tenancy or auth mutation, a webhook source's update, deletion or secret rotation) is
//! announced through [`Invalidations::changed`], which clears this replica's snapshots before
//! the change is answered and publishes on the shared cache's channel `snapshots` (without
//! making the answer wait for it), where every other replica's listener clears its own. Pub/sub is at most once (a message published while
//! a replica's Redis connection is down is lost), so the TTL is the backstop: a replica that
//! missed a message serves what it had read for at most that long.
//!
//! A read that started before a clear must not put its (possibly stale) answer back after it:
//! [`Snapshot::put`] takes the generation read before the store was asked and drops the value
//! when a clear happened meanwhile.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use zen_cache::Cache;

/// The shared cache channel invalidations travel on.
const CHANNEL: &str = "snapshots";
/// Entries a snapshot keeps before it starts over (bounds its memory).
const MAX_ENTRIES: usize = 100_000;

/// Values read from the store, reused for at most `ttl`.
pub struct Snapshot<K, V> {
    ttl: Duration,
    generation: AtomicU64,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Hash + Eq, V: Clone> Snapshot<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            generation: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value read for `key`, if it was read less than the TTL ago.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(key)
            .filter(|(read_at, _)| read_at.elapsed() < self.ttl)
            .map(|(_, value)| value.clone())
    }

    /// Take this before reading from the store, and give it to [`Snapshot::put`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps `value`, unless the snapshot was cleared since `generation` was taken.
    pub fn put(&self, generation: u64, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked under the lock `clear` takes too, so a clear is never undone.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (read_at, _)| read_at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now(), value));
    }

    /// Forgets `key` (a value found wrong by its user, e.g. secrets that did not verify).
    pub fn forget(&self, key: &K) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Forgets everything, including what reads still running would put.
    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

/// Something holding snapshots, cleared on every announced change.
pub trait Invalidate: Send + Sync {
    fn invalidate(&self);
}

/// Announces changes to this replica's snapshots and, through the shared cache, to the others'.
pub struct Invalidations {
    cache: Arc<dyn Cache>,
    holders: Mutex<Vec<Arc<dyn Invalidate>>>,
}

impl Invalidations {
    /// Starts listening for the other replicas' announcements on the current runtime.
    pub fn start(cache: Arc<dyn Cache>) -> Arc<Self> {
        let invalidations = Arc::new(Self {
            cache,
            holders: Mutex::new(Vec::new()),
        });
        tokio::spawn(listen(Arc::downgrade(&invalidations)));
        invalidations
    }

    /// `holder` is cleared on every change from now on.
    pub fn register(&self, holder: Arc<dyn Invalidate>) {
        self.holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(holder);
    }

    fn clear_local(&self) {
        let holders = self
            .holders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for holder in holders {
            holder.invalidate();
        }
        metrics::counter!("zen_snapshot_invalidations_total").increment(1);
    }

    /// Something snapshots may hold changed (and is committed): clears this replica's
    /// snapshots now and tells the other replicas from a task of its own, so that the answer to
    /// the change never waits for the cache (a Redis outage would otherwise hold every
    /// tenancy change for the command timeout). A failed publish is logged; the others then
    /// catch up within their snapshots' TTL.
    pub fn changed(&self) {
        self.clear_local();
        let cache = self.cache.clone();
        tokio::spawn(async move {
            if let Err(error) = cache.publish(CHANNEL, b"changed").await {
                tracing::warn!(%error, "announcing a change to the other replicas failed; their snapshots expire within their TTL");
            }
        });
    }
}

/// Clears this replica's snapshots on every announcement (its own included: harmless). Retries
/// the subscription while the cache is unreachable; ends with the `Invalidations`.
async fn listen(invalidations: std::sync::Weak<Invalidations>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(cache) = invalidations.upgrade().map(|i| i.cache.clone()) else {
            return;
        };
        match cache.subscribe(CHANNEL).await {
            Ok(mut subscription) => {
                while subscription.recv().await.is_some() {
                    let Some(invalidations) = invalidations.upgrade() else {
                        return;
                    };
                    invalidations.clear_local();
                }
                // The stream ends only with the cache itself.
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "subscribing to snapshot invalidations failed; retrying");
                drop(cache);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_expires_and_a_clear_wins_over_a_read_in_flight() {
        let snapshot = Snapshot::new(Duration::from_millis(50));
        let generation = snapshot.generation();
        snapshot.put(generation, 1, "one");
        assert_eq!(snapshot.get(&1), Some("one"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(snapshot.get(&1), None, "expired");

        // A read started before a clear puts nothing back after it.
        let before = snapshot.generation();
        snapshot.clear();
        snapshot.put(before, 2, "stale");
        assert_eq!(snapshot.get(&2), None);
        snapshot.put(snapshot.generation(), 2, "fresh");
        assert_eq!(snapshot.get(&2), Some("fresh"));
        snapshot.forget(&2);
        assert_eq!(snapshot.get(&2), None);
    }

    #[tokio::test]
    async fn a_change_clears_every_replica_sharing_the_cache() {
        struct Counter(Snapshot<u8, u8>);
        impl Invalidate for Counter {
            fn invalidate(&self) {
                self.0.clear();
            }
        }
        let cache = zen_cache::connect(None, "t:").await.unwrap();
        let (a, b) = (
            Invalidations::start(cache.clone()),
            Invalidations::start(cache),
        );
        let (on_a, on_b) = (
            Arc::new(Counter(Snapshot::new(Duration::from_secs(60)))),
            Arc::new(Counter(Snapshot::new(Duration::from_secs(60)))),
        );
        a.register(on_a.clone());
        b.register(on_b.clone());
        // Let both listeners subscribe.
        tokio::time::sleep(Duration::from_millis(50)).await;
        on_a.0.put(on_a.0.generation(), 1, 1);
        on_b.0.put(on_b.0.generation(), 1, 1);
        a.changed();
        assert_eq!(on_a.0.get(&1), None, "cleared before `changed` returns");
        let deadline = Instant::now() + Duration::from_secs(1);
        while on_b.0.get(&1).is_some() {
            assert!(Instant::now() < deadline, "replica b was never told");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
