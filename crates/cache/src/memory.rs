//! The in-memory backend: one process, no persistence.
//!
//! Keys live in [`SHARDS`] mutex-guarded hash maps (each operation holds one
//! shard lock, so every operation is atomic). Expiry is checked on every
//! access and a background sweep removes what nobody reads; a shard that
//! reaches its bound is swept before a write is refused, so the bound holds
//! even without the sweeper.

use std::collections::hash_map::{Entry as MapEntry, RandomState};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::subscription::Subscription;
use crate::{ttl_millis, Cache, CacheError, Rate, RateDecision, Result};

const SHARDS: usize = 16;
/// Bytes charged per entry on top of its key and value (map slot, `String`
/// and `Vec` headers, expiry).
const ENTRY_OVERHEAD: usize = 96;

/// Bounds of a [`MemoryCache`].
#[derive(Clone, Debug)]
pub struct MemoryOptions {
    /// Most keys held at once (enforced per shard as `max_entries / 16`,
    /// so a write may be refused slightly before the total is reached).
    /// Default 1 000 000.
    pub max_entries: usize,
    /// Most bytes of keys, values and per-entry overhead held at once (per
    /// shard, like `max_entries`). Default 256 MiB.
    pub max_bytes: usize,
    /// How often expired keys are swept. Default 10 s.
    pub sweep_interval: Duration,
    /// Messages buffered per pub/sub channel for its slowest subscriber.
    /// Default 1024.
    pub channel_capacity: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            max_entries: 1_000_000,
            max_bytes: 256 * 1024 * 1024,
            sweep_interval: Duration::from_secs(10),
            channel_capacity: 1024,
        }
    }
}

/// The single-process cache. Cheap to clone; clones and
/// [`with_prefix`](Self::with_prefix) views share one store.
#[derive(Clone)]
pub struct MemoryCache {
    prefix: String,
    store: Arc<Store>,
}

struct Store {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    shard_max_entries: usize,
    shard_max_bytes: usize,
    channels: Mutex<HashMap<String, broadcast::Sender<Vec<u8>>>>,
    channel_capacity: usize,
    /// The clock of the rate limiter's timestamps.
    epoch: Instant,
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Entry>,
    bytes: usize,
}

struct Entry {
    value: Vec<u8>,
    expires_at: Instant,
}

fn cost(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover rather than
    // propagate a poison if something ever does.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shard {
    /// The live entry under `key`; an expired one is removed.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        let expired = self.map.get(key)?.expires_at <= now;
        if expired {
            self.remove(key);
            return None;
        }
        self.map.get_mut(key)
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        self.bytes -= cost(key, &entry.value);
        Some(entry)
    }

    fn sweep(&mut self, now: Instant) {
        let mut freed = 0;
        self.map.retain(|key, entry| {
            let keep = entry.expires_at > now;
            if !keep {
                freed += cost(key, &entry.value);
            }
            keep
        });
        self.bytes -= freed;
    }

    /// Insert or replace, within the shard's bounds.
    fn put(
        &mut self,
        store: &Store,
        key: &str,
        value: Vec<u8>,
        expires_at: Instant,
        now: Instant,
    ) -> Result<()> {
        let new_cost = cost(key, &value);
        if !self.fits(store, key, new_cost) {
            self.sweep(now);
            if !self.fits(store, key, new_cost) {
                return Err(CacheError::Full(format!(
                    "{} entries, {} bytes in this shard (bounds {} / {})",
                    self.map.len(),
                    self.bytes,
                    store.shard_max_entries,
                    store.shard_max_bytes
                )));
            }
        }
        match self.map.entry(key.to_owned()) {
            MapEntry::Occupied(mut slot) => {
                let old = slot.insert(Entry { value, expires_at });
                self.bytes -= cost(key, &old.value);
            }
            MapEntry::Vacant(slot) => {
                slot.insert(Entry { value, expires_at });
            }
        }
        self.bytes += new_cost;
        Ok(())
    }

    fn fits(&self, store: &Store, key: &str, new_cost: usize) -> bool {
        let old_cost = self.map.get(key).map(|e| cost(key, &e.value));
        let entries = self.map.len() + usize::from(old_cost.is_none());
        let bytes = self.bytes - old_cost.unwrap_or(0) + new_cost;
        entries <= store.shard_max_entries && bytes <= store.shard_max_bytes
    }
}

impl Store {
    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        // `% SHARDS` first, so the cast cannot truncate.
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        lock(&self.shards[index])
    }

    fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            lock(shard).sweep(now);
        }
    }

    /// Drop the channel's sender when its last subscriber is gone.
    fn release_channel(&self, channel: &str) {
        let mut channels = lock(&self.channels);
        if channels
            .get(channel)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            channels.remove(channel);
        }
    }
}

impl MemoryCache {
    /// A cache with default [`MemoryOptions`]. Inside a Tokio runtime a
    /// sweeper task is started (it stops when the last handle is dropped).
    pub fn new(key_prefix: &str) -> MemoryCache {
        MemoryCache::with_options(key_prefix, MemoryOptions::default())
    }

    /// A cache with explicit bounds.
    pub fn with_options(key_prefix: &str, options: MemoryOptions) -> MemoryCache {
        let store = Arc::new(Store {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            shard_max_entries: options.max_entries.div_ceil(SHARDS).max(1),
            shard_max_bytes: options.max_bytes.div_ceil(SHARDS).max(1),
            channels: Mutex::new(HashMap::new()),
            channel_capacity: options.channel_capacity.max(1),
            epoch: Instant::now(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let interval = options.sweep_interval.max(Duration::from_millis(10));
            runtime.spawn(sweeper(Arc::downgrade(&store), interval));
        }
        MemoryCache {
            prefix: key_prefix.to_owned(),
            store,
        }
    }

    /// Another view of the same store under a different key prefix.
    pub fn with_prefix(&self, key_prefix: &str) -> MemoryCache {
        MemoryCache {
            prefix: key_prefix.to_owned(),
            store: Arc::clone(&self.store),
        }
    }

    /// The key prefix of this view.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Live keys in the whole store (every prefix); expired keys not yet
    /// swept are counted too.
    pub fn len(&self) -> usize {
        self.store.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// True when the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remove expired keys now (the sweeper does this periodically).
    pub fn sweep(&self) {
        self.store.sweep();
    }

    fn full(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }
}

/// A capped list is stored as one value: its items newest first, each
/// framed by its length (u32, big-endian).
fn list_items(value: &[u8]) -> Vec<&[u8]> {
    let mut items = Vec::new();
    let mut rest = value;
    while rest.len() >= 4 {
        let (len, tail) = rest.split_at(4);
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if tail.len() < len {
            break;
        }
        let (item, tail) = tail.split_at(len);
        items.push(item);
        rest = tail;
    }
    items
}

fn frame(out: &mut Vec<u8>, item: &[u8]) -> Result<()> {
    let len = u32::try_from(item.len())
        .map_err(|_| CacheError::InvalidArgument("a list item is larger than 4 GiB".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(item);
    Ok(())
}

/// The GCRA step shared by the memory backend and its tests: from the stored
/// theoretical arrival time `tat` (µs on the cache's clock), the decision and
/// the new TAT to store when allowed. Mirrors `GCRA_LUA` in the Redis backend.
/// Microseconds, so rates up to a million per second keep their precision.
pub(crate) fn gcra(
    now: u64,
    tat: Option<u64>,
    rate: Rate,
    cost: u32,
) -> (RateDecision, Option<u64>) {
    // Signed arithmetic: the allowance can start before the clock's epoch.
    let now = i128::from(now);
    let interval = i128::try_from(rate.interval.as_micros())
        .unwrap_or(i128::MAX / 4)
        .max(1);
    let burst = i128::from(rate.burst.max(1));
    let tat = tat.map_or(now, i128::from).max(now);
    let new_tat = tat + i128::from(cost) * interval;
    let allow_at = new_tat - burst * interval;
    let units = |since: i128| u32::try_from((since / interval).clamp(0, burst)).unwrap_or(0);
    let micros = |us: i128| Duration::from_micros(u64::try_from(us.max(0)).unwrap_or(u64::MAX));
    if now < allow_at {
        let decision = RateDecision {
            allowed: false,
            remaining: units(now - (tat - burst * interval)),
            retry_after: micros(allow_at - now),
            reset_after: micros(tat - now),
        };
        return (decision, None);
    }
    let decision = RateDecision {
        allowed: true,
        remaining: units(now - allow_at),
        retry_after: Duration::ZERO,
        reset_after: micros(new_tat - now),
    };
    (decision, u64::try_from(new_tat).ok())
}

async fn sweeper(store: Weak<Store>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { break };
        store.sweep();
    }
}

fn deadline(now: Instant, ttl: Duration) -> Result<Instant> {
    let ms = ttl_millis(ttl)?;
    Ok(now + Duration::from_millis(ms))
}

#[async_trait]
impl Cache for MemoryCache {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = self.full(key);
        let mut shard = self.store.shard(&key);
        Ok(shard.live(&key, Instant::now()).map(|e| e.value.clone()))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let expires_at = deadline(now, ttl)?;
        let key = self.full(key);
        let mut shard = self.store.shard(&key);
        shard.put(&self.store, &key, value.to_vec(), expires_at, now)
    }

    async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let expires_at = deadline(now, ttl)?;
        let key = self.full(key);
        let mut shard = self.store.shard(&key);
        if shard.live(&key, now).is_some() {
            return Ok(false);
        }
        shard.put(&self.store, &key, value.to_vec(), expires_at, now)?;
        Ok(true)
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = self.full(key);
        let mut shard = self.store.shard(&key);
        let now = Instant::now();
        Ok(shard
            .remove(&key)
            .filter(|e| e.expires_at > now)
            .map(|e| e.value))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let key = self.full(key);
        let mut shard = self.store.shard(&key);
        let now = Instant::now();
        Ok(shard.remove(&key).is_some_and(|e| e.expires_at > now))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Duration,
    ) -> Result<bool> {
        let now = Instant::now();
        let expires_at = deadline(now, ttl)?;
        let key = self.full(key);
        let mut shard = self.store.shard(&key);
        let current = shard.live(&key, now).map(|e| e.value.as_slice());
        if current != expected {
            return Ok(false);
        }
        shard.put(&self.store, &key, new.to_vec(), expires_at, now)?;
        Ok(true)
    }

    async fn increment(&self, key: &str, window: Duration) -> Result<u64> {
        let now = Instant::now();
        let expires_at = deadline(now, window)?;
        let key = self.full(key);
        let mut shard = self.store.shard(&key);
        let (count, expires_at) = match shard.live(&key, now) {
            Some(entry) => {
                let count = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .and_then(|n| n.checked_add(1))
                    .ok_or(CacheError::NotAnInteger)?;
                (count, entry.expires_at)
            }
            None => (1, expires_at),
        };
        let value = count.to_string().into_bytes();
        shard.put(&self.store, &key, value, expires_at, now)?;
        Ok(count)
    }

    async fn add(&self, key: &str, delta: i64, window: Duration) -> Result<i64> {
        let now = Instant::now();
        let expires_at = deadline(now, window)?;
        let key = self.full(key);
        let mut shard = self.store.shard(&key);
        let (value, expires_at) = match shard.live(&key, now) {
            Some(entry) => {
                let value = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .and_then(|n| n.checked_add(delta))
                    .ok_or(CacheError::NotAnInteger)?;
                (value, entry.expires_at)
            }
            None => (delta, expires_at),
        };
        shard.put(
            &self.store,
            &key,
            value.to_string().into_bytes(),
            expires_at,
            now,
        )?;
        Ok(value)
    }

    async fn push_capped(&self, key: &str, item: &[u8], keep: usize, ttl: Duration) -> Result<()> {
        if keep == 0 {
            return Err(CacheError::InvalidArgument(
                "a capped list keeps at least one item".into(),
            ));
        }
        let now = Instant::now();
        let expires_at = deadline(now, ttl)?;
        let key = self.full(key);
        let mut shard = self.store.shard(&key);
        let mut list = Vec::new();
        frame(&mut list, item)?;
        if let Some(entry) = shard.live(&key, now) {
            for old in list_items(&entry.value).into_iter().take(keep - 1) {
                frame(&mut list, old)?;
            }
        }
        shard.put(&self.store, &key, list, expires_at, now)
    }

    async fn newest(&self, key: &str, limit: usize) -> Result<Vec<Vec<u8>>> {
        let key = self.full(key);
        let mut shard = self.store.shard(&key);
        Ok(shard
            .live(&key, Instant::now())
            .map(|entry| {
                list_items(&entry.value)
                    .into_iter()
                    .take(limit)
                    .map(<[u8]>::to_vec)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn rate_limit(&self, key: &str, rate: Rate, cost: u32) -> Result<RateDecision> {
        let now = Instant::now();
        let now_us =
            u64::try_from(now.duration_since(self.store.epoch).as_micros()).unwrap_or(u64::MAX);
        let key = self.full(key);
        let mut shard = self.store.shard(&key);
        let tat = shard
            .live(&key, now)
            .and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<u64>().ok());
        let (decision, new_tat) = gcra(now_us, tat, rate, cost);
        if let Some(new_tat) = new_tat.filter(|_| cost > 0) {
            let ttl = Duration::from_micros((new_tat - now_us).max(1000));
            shard.put(
                &self.store,
                &key,
                new_tat.to_string().into_bytes(),
                now + ttl,
                now,
            )?;
        }
        Ok(decision)
    }

    async fn publish(&self, channel: &str, message: &[u8]) -> Result<()> {
        let channel = self.full(channel);
        let channels = lock(&self.store.channels);
        if let Some(tx) = channels.get(&channel) {
            // An error only means every receiver is already gone.
            let _ = tx.send(message.to_vec());
        }
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription> {
        let full = self.full(channel);
        let receiver = {
            let mut channels = lock(&self.store.channels);
            channels
                .entry(full.clone())
                .or_insert_with(|| broadcast::channel(self.store.channel_capacity).0)
                .subscribe()
        };
        let store = Arc::downgrade(&self.store);
        let on_drop = Box::new(move || {
            if let Some(store) = store.upgrade() {
                store.release_channel(&full);
            }
        });
        Ok(Subscription::new(channel, receiver, Some(on_drop)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn entry_bound_is_enforced_and_expired_entries_make_room() {
        let cache = MemoryCache::with_options(
            "t:",
            MemoryOptions {
                max_entries: SHARDS, // one per shard
                ..MemoryOptions::default()
            },
        );
        let mut refused = 0;
        for i in 0..(4 * SHARDS) {
            match cache.set(&format!("k{i}"), b"v", TTL).await {
                Ok(()) => {}
                Err(CacheError::Full(_)) => refused += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(refused > 0, "the bound must refuse some writes");
        assert!(cache.len() <= SHARDS);

        // Replacing an existing key is always allowed.
        let present = (0..4 * SHARDS)
            .map(|i| format!("k{i}"))
            .find(|k| {
                let k = cache.full(k);
                cache.store.shard(&k).map.contains_key(&k)
            })
            .unwrap();
        cache.set(&present, b"w", TTL).await.unwrap();

        // Once everything expired, writes succeed again (swept on demand).
        let short = MemoryCache::with_options(
            "t:",
            MemoryOptions {
                max_entries: SHARDS,
                sweep_interval: Duration::from_secs(3600),
                ..MemoryOptions::default()
            },
        );
        for i in 0..(4 * SHARDS) {
            let _ = short
                .set(&format!("k{i}"), b"v", Duration::from_millis(20))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        for i in 0..(4 * SHARDS) {
            let _ = short.set(&format!("n{i}"), b"v", TTL).await;
        }
        assert!(short.get("k0").await.unwrap().is_none());
        assert!(short.len() <= SHARDS);
    }

    #[tokio::test]
    async fn byte_bound_is_enforced() {
        let cache = MemoryCache::with_options(
            "t:",
            MemoryOptions {
                max_bytes: SHARDS * 1024,
                ..MemoryOptions::default()
            },
        );
        let big = vec![0u8; 2048];
        assert!(matches!(
            cache.set("big", &big, TTL).await,
            Err(CacheError::Full(_))
        ));
        cache.set("small", &[0u8; 16], TTL).await.unwrap();
        let bytes: usize = cache.store.shards.iter().map(|s| lock(s).bytes).sum();
        assert_eq!(bytes, cost("t:small", &[0u8; 16]));
    }

    #[tokio::test]
    async fn byte_accounting_returns_to_zero() {
        let cache = MemoryCache::new("t:");
        cache.set("a", b"12345", TTL).await.unwrap();
        cache.set("a", b"1", TTL).await.unwrap();
        cache
            .set("b", b"xyz", Duration::from_millis(5))
            .await
            .unwrap();
        cache.increment("c", TTL).await.unwrap();
        cache.increment("c", TTL).await.unwrap();
        cache.compare_and_swap("d", None, b"0", TTL).await.unwrap();
        assert!(cache.take("a").await.unwrap().is_some());
        assert!(cache.delete("c").await.unwrap());
        assert!(cache.delete("d").await.unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
        cache.sweep();
        assert!(cache.is_empty());
        let bytes: usize = cache.store.shards.iter().map(|s| lock(s).bytes).sum();
        assert_eq!(bytes, 0);
    }

    #[tokio::test]
    async fn sweeper_removes_unread_expired_keys() {
        let cache = MemoryCache::with_options(
            "t:",
            MemoryOptions {
                sweep_interval: Duration::from_millis(20),
                ..MemoryOptions::default()
            },
        );
        for i in 0..100 {
            cache
                .set(&format!("k{i}"), b"v", Duration::from_millis(10))
                .await
                .unwrap();
        }
        assert_eq!(cache.len(), 100);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(cache.len(), 0, "the sweeper must remove expired keys");
    }

    #[tokio::test]
    async fn slow_subscriber_lags_instead_of_growing() {
        let cache = MemoryCache::with_options(
            "t:",
            MemoryOptions {
                channel_capacity: 4,
                ..MemoryOptions::default()
            },
        );
        let mut sub = cache.subscribe("ch").await.unwrap();
        for i in 0..10u8 {
            cache.publish("ch", &[i]).await.unwrap();
        }
        // Only the newest 4 are kept; the 6 oldest are counted as missed.
        assert_eq!(sub.recv().await.unwrap(), vec![6]);
        assert_eq!(sub.missed(), 6);
        for i in 7..10u8 {
            assert_eq!(sub.recv().await.unwrap(), vec![i]);
        }
    }

    #[tokio::test]
    async fn channel_is_released_with_its_last_subscriber() {
        let cache = MemoryCache::new("t:");
        let a = cache.subscribe("ch").await.unwrap();
        let b = cache.subscribe("ch").await.unwrap();
        assert_eq!(lock(&cache.store.channels).len(), 1);
        drop(a);
        assert_eq!(lock(&cache.store.channels).len(), 1);
        drop(b);
        assert!(lock(&cache.store.channels).is_empty());
    }

    #[tokio::test]
    async fn stream_ends_when_the_cache_is_dropped() {
        let cache = MemoryCache::new("t:");
        let mut sub = cache.subscribe("ch").await.unwrap();
        drop(cache);
        assert_eq!(sub.recv().await, None);
    }
}
