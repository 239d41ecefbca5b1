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

/// A 3-primary Redis Cluster of its own, from the `redis-server` and `redis-cli` binaries on
/// the PATH, on free loopback ports; shut down when dropped. `None` (with a message) when they
/// are missing outside CI; in CI that is a failure.
pub struct RedisCluster {
    ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    pub fn start() -> Option<RedisCluster> {
        use std::process::Command;
        let dir = std::env::temp_dir().join(format!("zen-redis-cluster-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster = RedisCluster { ports, dir };
        for port in &cluster.ports {
            let started = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(cluster.dir.join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(&cluster.dir)
                .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
                .status()
                .is_ok_and(|s| s.success());
            if !started {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "redis-server could not be started in CI"
                );
                eprintln!("SKIP: redis-server could not be started");
                return None;
            }
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // The servers take a moment to listen; `--cluster create` needs them all.
        loop {
            let created = Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&nodes)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .output()
                .is_ok_and(|o| o.status.success());
            if created {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster could not be created"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        loop {
            let ok = cluster.ports.iter().all(|port| {
                Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
            });
            if ok {
                return Some(cluster);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `redis-cluster://` with the first node and the others as `node` parameters.
    pub fn url(&self) -> String {
        let others: Vec<String> = self.ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            self.ports[0],
            others.join("&")
        )
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for port in &self.ports {
            let _ = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "shutdown", "nosave"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis primary watched by one Sentinel, both of their own from the `redis-server` binary on
/// free loopback ports; shut down when dropped. `None` (with a message) when the binary is
/// missing outside CI; in CI that is a failure.
pub struct RedisSentinel {
    primary: u16,
    sentinel: u16,
    dir: std::path::PathBuf,
}

/// The Sentinel service name the tests use.
const SENTINEL_SERVICE: &str = "zen-test";

impl RedisSentinel {
    pub fn start() -> Option<RedisSentinel> {
        use std::process::Command;
        let dir = std::env::temp_dir().join(format!("zen-redis-sentinel-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let set = RedisSentinel {
            primary: free_port(),
            sentinel: free_port(),
            dir,
        };
        let primary = Command::new("redis-server")
            .args(["--port", &set.primary.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&set.dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
            .status()
            .is_ok_and(|s| s.success());
        // A Sentinel rewrites its configuration file, so it gets one of its own.
        let config = set.dir.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {}\nbind 127.0.0.1\ndaemonize yes\ndir {}\n\
                 sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {} 1\n",
                set.sentinel,
                set.dir.display(),
                set.primary
            ),
        )
        .unwrap();
        let sentinel = primary
            && Command::new("redis-server")
                .arg(&config)
                .arg("--sentinel")
                .status()
                .is_ok_and(|s| s.success());
        if !sentinel {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server (and its Sentinel mode) could not be started in CI"
            );
            eprintln!("SKIP: redis-server could not be started as a primary and a Sentinel");
            return None;
        }
        // Ready once the Sentinel names the primary.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let named = Command::new("redis-cli")
                .args(["-p", &set.sentinel.to_string()])
                .args(["sentinel", "get-master-addr-by-name", SENTINEL_SERVICE])
                .output()
                .is_ok_and(|o| {
                    String::from_utf8_lossy(&o.stdout).contains(&set.primary.to_string())
                });
            if named {
                return Some(set);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the Sentinel never named its primary"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `redis-sentinel://` naming the Sentinel and the service.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={SENTINEL_SERVICE}",
            self.sentinel
        )
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for port in [self.sentinel, self.primary] {
            let _ = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "shutdown", "nosave"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
