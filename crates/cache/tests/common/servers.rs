//! Private Redis deployments for tests, from the `redis-server` and `redis-cli` binaries on the
//! PATH, on free loopback ports in a temporary directory, shut down when dropped (however the
//! test ends): a Redis Cluster (with or without replicas) and a Sentinel-managed primary (with
//! or without a replica), and the failovers the drills put them through. Shared by the cache
//! crate's tests and the workspace's failover drill (`tests/redis_failover.rs`, which includes
//! this file by path), so it needs nothing but `std` and `uuid`.
//!
//! `start…` returns `None` (with a message) when the binaries are missing outside CI; in CI
//! that is a failure.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `redis-cli -p <port> <args…>`'s standard output; empty when it could not run.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The value of `field` in an `INFO` reply (`field:value` lines).
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix(&format!("{field}:")))
        .map(str::to_owned)
}

/// The role (`master` or `slave`) of the Redis on `port`; `None` when it does not answer.
pub fn role(port: u16) -> Option<String> {
    info_field(&redis_cli(port, &["info", "replication"]), "role")
}

/// Whether the Redis on `port` is a replica whose link to its primary is up.
fn replica_in_sync(port: u16) -> bool {
    let info = redis_cli(port, &["info", "replication"]);
    info_field(&info, "role").as_deref() == Some("slave")
        && info_field(&info, "master_link_status").as_deref() == Some("up")
}

/// How many clients the Redis on `port` serves, leaving out replicas, Sentinels and the
/// `redis-cli` asking.
pub fn application_clients(port: u16) -> usize {
    redis_cli(port, &["client", "list"])
        .lines()
        .filter(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(&format!("{name}=")))
                    .unwrap_or_default()
                    .to_owned()
            };
            !field("flags").contains(['S', 'M'])
                && !field("name").starts_with("sentinel-")
                && field("cmd") != "client|list"
        })
        .count()
}

/// Polls `ready` every 100 ms until it holds; panics with `what` after `within`.
fn wait_until(within: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} (after {within:?})");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A failure to start the binaries: a panic in CI, otherwise a skip.
fn cannot_start(what: &str) -> bool {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} could not be started in CI"
    );
    eprintln!("SKIP: {what} could not be started");
    false
}

fn temp_dir(kind: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zen-{kind}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A daemonized `redis-server` on `port` with `extra` arguments, without persistence.
fn start_server(port: u16, dir: &std::path::Path, extra: &[String]) -> bool {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
        // The servers of a deployment share the directory: a replica's full sync writes its
        // own file.
        .args(["--dbfilename", &format!("dump-{port}.rdb")])
        // Replicas sync at once, rather than after the 5 s a primary waits for more of them.
        .args(["--repl-diskless-sync-delay", "0"])
        .args(extra)
        .status()
        .is_ok_and(|s| s.success())
}

/// Shuts down every server on `ports` (one already gone is skipped) and removes `dir`.
fn shut_down(ports: &[u16], dir: &std::path::Path) {
    for port in ports {
        let _ = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "shutdown", "nosave"])
            .output();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A Redis Cluster of 3 primaries, each with `replicas` replicas.
pub struct RedisCluster {
    ports: Vec<u16>,
    dir: PathBuf,
}

impl RedisCluster {
    /// 3 primaries, no replicas, the default node timeout.
    pub fn start() -> Option<RedisCluster> {
        Self::start_with(0, Duration::from_secs(15))
    }

    /// 3 primaries with `replicas` replicas each; a node that does not answer for
    /// `node_timeout` is failed (and its replica promoted). Returns once the cluster is ok and
    /// every replica is in sync with its primary.
    pub fn start_with(replicas: usize, node_timeout: Duration) -> Option<RedisCluster> {
        let ports: Vec<u16> = (0..3 * (1 + replicas)).map(|_| free_port()).collect();
        let cluster = RedisCluster {
            ports,
            dir: temp_dir("redis-cluster"),
        };
        for port in &cluster.ports {
            let extra = [
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                cluster
                    .dir
                    .join(format!("nodes-{port}.conf"))
                    .display()
                    .to_string(),
                "--cluster-node-timeout".to_owned(),
                node_timeout.as_millis().to_string(),
            ];
            if !start_server(*port, &cluster.dir, &extra) {
                cannot_start("redis-server");
                return None;
            }
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        // The servers take a moment to listen; `--cluster create` needs them all.
        wait_until(
            Duration::from_secs(30),
            "the cluster could not be created",
            || {
                Command::new("redis-cli")
                    .args(["--cluster", "create"])
                    .args(&nodes)
                    .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            },
        );
        wait_until(
            Duration::from_secs(30),
            "the cluster never became ok",
            || cluster.ports.iter().all(|&port| cluster_ok(port)),
        );
        wait_until(
            Duration::from_secs(30),
            "the replicas never synchronised",
            || {
                cluster
                    .ports
                    .iter()
                    .filter(|&&port| role(port).as_deref() == Some("slave"))
                    .filter(|&&port| replica_in_sync(port))
                    .count()
                    == 3 * replicas
            },
        );
        Some(cluster)
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

    /// A primary and one of its replicas: `(primary, replica)` ports.
    pub fn primary_and_replica(&self) -> (u16, u16) {
        self.ports
            .iter()
            .find_map(|&port| {
                let info = redis_cli(port, &["info", "replication"]);
                let primary = info_field(&info, "master_port")?.parse().ok()?;
                (info_field(&info, "role").as_deref() == Some("slave")).then_some((primary, port))
            })
            .expect("a replica")
    }

    /// Whether `promoted` is a primary, every node still answering sees it as one, and every
    /// one of them reports `cluster_state:ok`: clients find every slot served again.
    pub fn failed_over_to(&self, promoted: u16) -> bool {
        if role(promoted).as_deref() != Some("master") {
            return false;
        }
        let me = format!("127.0.0.1:{promoted}@");
        self.ports.iter().all(|&port| {
            let nodes = redis_cli(port, &["cluster", "nodes"]);
            if nodes.is_empty() {
                return true; // killed
            }
            let sees_primary = nodes
                .lines()
                .filter(|line| line.contains(&me))
                .any(|line| line.split(' ').nth(2).is_some_and(|f| f.contains("master")));
            sees_primary && cluster_ok(port)
        })
    }
}

fn cluster_ok(port: u16) -> bool {
    redis_cli(port, &["cluster", "info"]).contains("cluster_state:ok")
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        shut_down(&self.ports, &self.dir);
    }
}

/// `CLUSTER FAILOVER` on `replica`: a coordinated failover (its primary stops taking writes
/// until the replica has caught up, then the replica takes its slots over).
pub fn cluster_failover(replica: u16) -> bool {
    redis_cli(replica, &["cluster", "failover"]).trim() == "OK"
}

/// SIGKILL of the `redis-server` on `port`: no shutdown, its connections reset, as a crashed
/// host would.
pub fn kill_server(port: u16) -> bool {
    let Some(pid) = info_field(&redis_cli(port, &["info", "server"]), "process_id") else {
        return false;
    };
    Command::new("kill")
        .args(["-9", &pid])
        .status()
        .is_ok_and(|s| s.success())
}

/// A Redis primary watched by one Sentinel, with `replicas` replicas (0 or more).
pub struct RedisSentinel {
    primary: u16,
    replicas: Vec<u16>,
    sentinel: u16,
    dir: PathBuf,
}

/// The Sentinel service name the tests use.
pub const SENTINEL_SERVICE: &str = "zen-test";

impl RedisSentinel {
    /// A primary alone.
    pub fn start() -> Option<RedisSentinel> {
        Self::start_with(0)
    }

    /// A primary with `replicas` replicas. Returns once the Sentinel names the primary and
    /// knows every replica, in sync: ready for `SENTINEL FAILOVER`.
    pub fn start_with(replicas: usize) -> Option<RedisSentinel> {
        let set = RedisSentinel {
            primary: free_port(),
            replicas: (0..replicas).map(|_| free_port()).collect(),
            sentinel: free_port(),
            dir: temp_dir("redis-sentinel"),
        };
        if !start_server(set.primary, &set.dir, &[]) {
            cannot_start("redis-server");
            return None;
        }
        for &replica in &set.replicas {
            let of = [
                "--replicaof".to_owned(),
                format!("127.0.0.1 {}", set.primary),
            ];
            if !start_server(replica, &set.dir, &of) {
                cannot_start("redis-server");
                return None;
            }
        }
        // Started after the replicas are in sync, so the Sentinel's first look at the primary
        // already lists them (it looks again only every 10 s).
        wait_until(
            Duration::from_secs(30),
            "the replicas never synchronised",
            || set.replicas.iter().all(|&r| replica_in_sync(r)),
        );
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
        let sentinel = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .status()
            .is_ok_and(|s| s.success());
        if !sentinel {
            cannot_start("redis-server in Sentinel mode");
            return None;
        }
        wait_until(
            Duration::from_secs(30),
            "the Sentinel never named its primary and replicas",
            || {
                set.primary_port() == Some(set.primary) && {
                    let known =
                        redis_cli(set.sentinel, &["sentinel", "replicas", SENTINEL_SERVICE]);
                    set.replicas.iter().all(|r| known.contains(&r.to_string()))
                }
            },
        );
        Some(set)
    }

    /// `redis-sentinel://` naming the Sentinel and the service.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={SENTINEL_SERVICE}",
            self.sentinel
        )
    }

    /// The primary's port the Sentinel names now.
    pub fn primary_port(&self) -> Option<u16> {
        let reply = redis_cli(
            self.sentinel,
            &["sentinel", "get-master-addr-by-name", SENTINEL_SERVICE],
        );
        reply.lines().nth(1)?.trim().parse().ok()
    }

    /// The primary it was started with, and its replicas.
    pub fn ports(&self) -> (u16, &[u16]) {
        (self.primary, &self.replicas)
    }

    /// `SENTINEL FAILOVER`: the Sentinel promotes a replica and turns the primary into its
    /// replica, without asking anyone else.
    pub fn failover(&self) -> bool {
        redis_cli(self.sentinel, &["sentinel", "failover", SENTINEL_SERVICE]).trim() == "OK"
    }

    /// Whether the Sentinel names `promoted` and `promoted` is a primary.
    pub fn failed_over_to(&self, promoted: u16) -> bool {
        self.primary_port() == Some(promoted) && role(promoted).as_deref() == Some("master")
    }

    /// Whether the failover to `promoted` is over for the clients too: no client is left on
    /// `former`, the primary before it. A Sentinel turns the former primary into a replica,
    /// and closes its clients' connections, only when it next looks at it (every 10 s); until
    /// then a client that did not follow writes there, and loses those writes.
    pub fn followed_to(&self, promoted: u16, former: u16) -> bool {
        self.failed_over_to(promoted) && application_clients(former) == 0
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let mut ports = vec![self.sentinel, self.primary];
        ports.extend(&self.replicas);
        shut_down(&ports, &self.dir);
    }
}
