//! Zen's cache: short-lived shared state (idempotency keys, webhook nonces,
//! sessions and refresh-token families, login state, rate-limit counters)
//! and pub/sub fan-out, behind one object-safe trait with two backends:
//!
//! - [`MemoryCache`]: the default, for a single process (`zen serve` with no
//!   configuration). Bounded; see [`MemoryOptions`].
//! - [`RedisCache`]: shared by every replica. Every operation is one atomic
//!   Redis command or Lua script, so there is no read-modify-write race
//!   between replicas.
//!
//! ```no_run
//! # async fn demo() -> zen_cache::Result<()> {
//! use std::time::Duration;
//! let cache = zen_cache::connect(Some("redis://127.0.0.1:6379"), "zen:").await?;
//! if cache.set_if_absent("nonce:github:abc", b"1", Duration::from_secs(300)).await? {
//!     // first delivery: process it
//! }
//! let hits = cache.increment("rl:login:203.0.113.7", Duration::from_secs(60)).await?;
//! # let _ = hits; Ok(()) }
//! ```
//!
//! Every key and channel is stored under the cache's `key_prefix`, so several
//! deployments (or test runs) can share one Redis. See `docs/CACHE.md` for
//! the key layout and the bounds.

mod error;
mod memory;
mod redis;
mod subscription;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use error::{CacheError, Result};
pub use memory::{MemoryCache, MemoryOptions};
pub use redis::{RedisCache, RedisOptions};
pub use subscription::Subscription;

/// The longest accepted time-to-live (10 years): longer TTLs are rejected
/// as [`CacheError::InvalidArgument`] on every backend.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// A cache shared by everything in the process (and, on Redis, by every
/// replica). Keys and channels are relative to the cache's key prefix.
///
/// Semantics common to both backends:
/// - TTLs are whole milliseconds (rounded up) between 1 ms and [`MAX_TTL`];
///   a zero TTL is an [`CacheError::InvalidArgument`].
/// - An expired key is absent for every operation.
/// - On Redis a failed call ([`CacheError::Unavailable`], e.g. a timeout)
///   has an unknown outcome: commands are never retried by the client, so
///   a lost reply cannot turn into a double increment or a second
///   compare-and-swap.
#[async_trait]
pub trait Cache: Send + Sync {
    /// `"memory"` or `"redis"`.
    fn backend(&self) -> &'static str;

    /// Round trip to the backend (readiness probes).
    async fn ping(&self) -> Result<()>;

    /// The value of `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Store `value` under `key` for `ttl`, replacing any previous value.
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()>;

    /// Set only if absent (`SET NX PX`); true when this call set it.
    async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool>;

    /// Atomically read and delete (`GETDEL`): one-time values such as OIDC
    /// login state. Of several concurrent callers at most one gets the value.
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Delete `key`; true when a (live) value was removed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Atomic compare-and-swap on the whole value: replace only if the
    /// current value equals `expected` (`None` = key absent); true on
    /// success. On success the key lives for `ttl` from now.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        ttl: Duration,
    ) -> Result<bool>;

    /// Fixed-window counter: increment `key` and return the new count; the
    /// first increment starts a `window`-long expiry, later ones keep it.
    /// The value is the decimal count (so `get` reads e.g. `b"3"`); a key
    /// holding anything else is [`CacheError::NotAnInteger`].
    async fn increment(&self, key: &str, window: Duration) -> Result<u64>;

    /// Adds `delta` (which may be negative) to the counter under `key` and
    /// returns the new value; a missing key counts from 0 and gets a
    /// `window`-long expiry that later adds keep (as [`Cache::increment`]).
    /// A key holding anything but a decimal integer is
    /// [`CacheError::NotAnInteger`].
    async fn add(&self, key: &str, delta: i64, window: Duration) -> Result<i64>;

    /// Capped list: put `item` in front of the list under `key`, keep only its
    /// `keep` newest items (`keep` ≥ 1) and let the list live for `ttl` from
    /// now (`LPUSH` + `LTRIM` + `PEXPIRE`, atomically). For bounded,
    /// best-effort logs such as a webhook source's recent deliveries. A key
    /// holds either a value or a list: do not mix the two kinds of call on
    /// one key.
    async fn push_capped(&self, key: &str, item: &[u8], keep: usize, ttl: Duration) -> Result<()>;

    /// Up to `limit` newest items of the capped list under `key`, newest
    /// first (`LRANGE 0 limit-1`); empty when the key is absent or expired.
    async fn newest(&self, key: &str, limit: usize) -> Result<Vec<Vec<u8>>>;

    /// Spend `cost` units of the GCRA budget under `key` (a token bucket that
    /// stores one timestamp): allowed while the burst is not used up, each
    /// unit coming back after `rate.interval`. Atomic across replicas on
    /// Redis (one Lua script, on the server's clock); a refused call spends
    /// nothing. `cost` 0 only reads the state.
    async fn rate_limit(&self, key: &str, rate: Rate, cost: u32) -> Result<RateDecision>;

    /// Deliver `message` to every current subscriber of `channel` (on Redis,
    /// in every replica). Fire-and-forget: nobody listening is not an error.
    async fn publish(&self, channel: &str, message: &[u8]) -> Result<()>;

    /// Subscribe to `channel`. The subscription is active when this returns;
    /// dropping it unsubscribes. See [`Subscription`] for the bound on
    /// undelivered messages.
    async fn subscribe(&self, channel: &str) -> Result<Subscription>;
}

/// A rate of the generic cell rate algorithm (GCRA): one unit every
/// `interval`, and up to `burst` units at once after a quiet period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// The emission interval: the time one unit of the budget takes to come
    /// back (1 s / requests per second).
    pub interval: Duration,
    /// Units that may be spent at once (≥ 1).
    pub burst: u32,
}

impl Rate {
    /// `per_second` units per second with a burst of `burst` (both ≥ 1).
    pub fn per_second(per_second: u32, burst: u32) -> Rate {
        Rate {
            interval: Duration::from_nanos(1_000_000_000 / u64::from(per_second.max(1))),
            burst: burst.max(1),
        }
    }
}

/// The answer of [`Cache::rate_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// The units were spent.
    pub allowed: bool,
    /// Units that could still be spent now.
    pub remaining: u32,
    /// When refused: how long until the request would be allowed.
    pub retry_after: Duration,
    /// How long until the whole burst is available again.
    pub reset_after: Duration,
}

/// Open the configured cache: `None` (or `memory://`) is a [`MemoryCache`],
/// `redis://…` / `rediss://…` / `redis-cluster://…` / `redis-sentinel://…` a [`RedisCache`] with default
/// [`RedisOptions`]. `key_prefix` is put in front of every key and channel
/// (e.g. `"zen:"`).
///
/// Redis is reached before this returns: an unreachable server is
/// [`CacheError::Unavailable`]. Error messages never contain the URL (it may
/// hold a password).
pub async fn connect(url: Option<&str>, key_prefix: &str) -> Result<Arc<dyn Cache>> {
    connect_with(url, key_prefix, RedisOptions::default()).await
}

/// [`connect`] with explicit Redis settings (ignored for the memory cache).
pub async fn connect_with(
    url: Option<&str>,
    key_prefix: &str,
    options: RedisOptions,
) -> Result<Arc<dyn Cache>> {
    match url.map(str::trim) {
        None => Ok(Arc::new(MemoryCache::new(key_prefix))),
        Some(url) if url == "memory://" || url == "memory:" => {
            Ok(Arc::new(MemoryCache::new(key_prefix)))
        }
        Some(url) => {
            let cache = RedisCache::connect(url, key_prefix, options).await?;
            Ok(Arc::new(cache))
        }
    }
}

/// `ttl` in whole milliseconds (rounded up), validated.
pub(crate) fn ttl_millis(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() {
        return Err(CacheError::InvalidArgument(
            "ttl must be greater than zero".into(),
        ));
    }
    if ttl > MAX_TTL {
        return Err(CacheError::InvalidArgument(format!(
            "ttl must be at most {} s",
            MAX_TTL.as_secs()
        )));
    }
    let rounded = ttl.as_nanos().div_ceil(1_000_000);
    // MAX_TTL in milliseconds fits comfortably in a u64.
    Ok(u64::try_from(rounded).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_milliseconds() {
        assert_eq!(ttl_millis(Duration::from_nanos(1)).unwrap(), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1500)).unwrap(), 2);
        assert_eq!(ttl_millis(Duration::from_millis(250)).unwrap(), 250);
        assert_eq!(ttl_millis(Duration::from_secs(3)).unwrap(), 3000);
        assert!(matches!(
            ttl_millis(Duration::ZERO),
            Err(CacheError::InvalidArgument(_))
        ));
        assert!(matches!(
            ttl_millis(MAX_TTL + Duration::from_secs(1)),
            Err(CacheError::InvalidArgument(_))
        ));
        assert!(ttl_millis(MAX_TTL).is_ok());
    }

    #[test]
    fn cache_is_object_safe_and_subscriptions_move_between_tasks() {
        fn assert_dyn(_: Option<Arc<dyn Cache>>) {}
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_dyn(None);
        assert_send_sync::<Subscription>();
        assert_send_sync::<CacheError>();
        assert_send_sync::<MemoryCache>();
        assert_send_sync::<RedisCache>();
    }
}
