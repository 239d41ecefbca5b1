//! Test harness: a fresh key prefix `zen-test:<uuid>:` per test, on the
//! memory backend or on real Redis.
//!
//! Redis: `ZEN_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).
//! Unreachable: the test fails when `CI` is set, otherwise it prints why and
//! passes without running. Every key under the test's prefix is deleted when
//! the harness drops, even if the test panicked.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;
use zen_cache::{Cache, MemoryCache, RedisCache, RedisOptions};

mod servers;
// For the `conformance!` macro; `tests/redis.rs` includes this module without expanding it.
#[allow(unused_imports)]
pub use servers::{RedisCluster, RedisSentinel};

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

pub fn redis_url() -> String {
    std::env::var("ZEN_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Redis,
}

pub struct Harness {
    pub kind: Kind,
    /// `zen-test:<uuid>:`; every cache the harness opens lives under it.
    pub base: String,
    memory: Option<MemoryCache>,
    redis: Option<RedisCache>,
    /// The Redis the harness opens its caches on (a single server or a cluster).
    url: String,
}

impl Harness {
    pub async fn new(kind: Kind) -> Option<Harness> {
        match kind {
            Kind::Memory => {
                let base = format!("zen-test:{}:", Uuid::new_v4().simple());
                Some(Harness {
                    kind,
                    memory: Some(MemoryCache::new(&base)),
                    redis: None,
                    base,
                    url: String::new(),
                })
            }
            Kind::Redis => Self::on_redis(redis_url()).await,
        }
    }

    /// A harness on the Redis at `url` (`None` with a message when it is unreachable outside
    /// CI; in CI that is a failure).
    pub async fn on_redis(url: String) -> Option<Harness> {
        let base = format!("zen-test:{}:", Uuid::new_v4().simple());
        let redis = match RedisCache::connect(&url, &base, quick()).await {
            Ok(redis) => redis,
            Err(e) => {
                if std::env::var_os("CI").is_some() {
                    panic!("Redis at {url} is unreachable and CI is set: {e}");
                }
                eprintln!("SKIP: Redis at {url} is unreachable ({e}); set ZEN_TEST_REDIS_URL");
                return None;
            }
        };
        Some(Harness {
            kind: Kind::Redis,
            memory: None,
            redis: Some(redis),
            base,
            url,
        })
    }

    /// The cache under the test's prefix.
    pub async fn cache(&self) -> Arc<dyn Cache> {
        self.open("").await
    }

    /// A cache under `<base><sub>`. On Redis every call opens new
    /// connections (another "replica"); on memory it is another view of the
    /// harness's one store (one process).
    pub async fn open(&self, sub: &str) -> Arc<dyn Cache> {
        let prefix = format!("{}{sub}", self.base);
        match self.kind {
            Kind::Memory => Arc::new(self.memory.as_ref().unwrap().with_prefix(&prefix)),
            Kind::Redis => Arc::new(
                RedisCache::connect(&self.url, &prefix, quick())
                    .await
                    .expect("connect redis"),
            ),
        }
    }
}

fn quick() -> RedisOptions {
    RedisOptions {
        pool_size: 2,
        connect_timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.redis.take().is_none() {
            return;
        }
        // Purge from a thread with its own runtime: this runs inside
        // (possibly panicking) async tests.
        let (base, url) = (self.base.clone(), self.url.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let redis = RedisCache::connect(&url, &base, quick())
                    .await
                    .expect("connect redis for cleanup");
                redis.purge().await.expect("purge test keys");
            });
        })
        .join()
        .expect("purge thread");
    }
}

/// Instantiate each listed `async fn name(h: &Harness)` as a test on the
/// memory backend and on Redis: `memory::name` and `redis::name`; and all of them, one after
/// another, on a Redis Cluster started for it: `redis_cluster::every_test_passes_on_a_redis_cluster`,
/// and on a primary found through a Sentinel: `redis_sentinel::every_test_passes_through_a_redis_sentinel`.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let h = $crate::common::Harness::new($crate::common::Kind::Memory)
                        .await
                        .expect("memory harness");
                    super::$name(&h).await;
                }
            )+
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(h) = $crate::common::Harness::new($crate::common::Kind::Redis).await
                    else {
                        return;
                    };
                    super::$name(&h).await;
                }
            )+
        }
        mod redis_cluster {
            /// The whole suite on one 3-primary Redis Cluster started for it, test after test.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn every_test_passes_on_a_redis_cluster() {
                let Some(cluster) = $crate::common::RedisCluster::start() else {
                    return;
                };
                $(
                    let h = $crate::common::Harness::on_redis(cluster.url())
                        .await
                        .expect("the cluster answers");
                    super::$name(&h).await;
                    drop(h);
                )+
                drop(cluster);
            }
        }
        mod redis_sentinel {
            /// The whole suite on a primary found through a Sentinel started for it.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn every_test_passes_through_a_redis_sentinel() {
                let Some(sentinel) = $crate::common::RedisSentinel::start() else {
                    return;
                };
                $(
                    let h = $crate::common::Harness::on_redis(sentinel.url())
                        .await
                        .expect("the Sentinel's primary answers");
                    super::$name(&h).await;
                    drop(h);
                )+
                drop(sentinel);
            }
        }
    };
}
