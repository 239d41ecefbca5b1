//! The real `zen` binary as a child process: `zen serve` on a fresh data dir and free loopback
//! ports, for the drills that must measure what an operator would (resident memory, answers
//! while a dependency is down) rather than an in-process server sharing the test's runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;

use super::drill::free_port;
use super::{connect, ZenUnderTest};

pub struct ZenProcess {
    child: Child,
    /// Shared by the runs of one deployment's data dir ([`ZenProcess::spawn_on`]).
    pub data_dir: Arc<tempfile::TempDir>,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    log: PathBuf,
}

impl ZenProcess {
    /// Runs `zen serve` with `args` after the data dir and listener addresses, and waits until
    /// `/health` answers 200 (at most 60 s; a debug build creates its PKI and keys first).
    pub async fn spawn(args: &[String]) -> Self {
        Self::spawn_on(Arc::new(tempfile::tempdir().expect("temp dir")), args).await
    }

    /// [`ZenProcess::spawn`] on an existing data dir (a restart keeps its PKI and keys).
    pub async fn spawn_on(data_dir: Arc<tempfile::TempDir>, args: &[String]) -> Self {
        let mut zen = Self::launch(data_dir, args);
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = super::http_client();
        loop {
            if let Ok(response) = client.get(zen.http_url("/health")).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            if let Some(status) = zen.child.try_wait().unwrap() {
                panic!("zen serve exited with {status}:\n{}", zen.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "zen serve never became healthy:\n{}",
                zen.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        zen
    }

    /// Runs `zen serve` on `data_dir` expecting it to refuse to start: waits at most 60 s for
    /// it to exit with a failure; returns its log.
    pub async fn start_fails(data_dir: Arc<tempfile::TempDir>, args: &[String]) -> String {
        let mut zen = Self::launch(data_dir, args);
        let status = zen
            .exited(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("zen serve kept running:\n{}", zen.log_tail()));
        assert!(!status.success(), "zen serve exited 0");
        std::fs::read_to_string(&zen.log).unwrap_or_default()
    }

    /// Starts `zen serve` without waiting for it.
    fn launch(data_dir: Arc<tempfile::TempDir>, args: &[String]) -> Self {
        let (http_addr, grpc_addr, admin_addr) = (
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            SocketAddr::from(([127, 0, 0, 1], free_port())),
        );
        // One log per run: a restart on the same data dir keeps the earlier run's.
        let log = data_dir
            .path()
            .join(format!("zen-{}.log", http_addr.port()));
        let child = Command::new(env!("CARGO_BIN_EXE_zen"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--http-addr", &http_addr.to_string()])
            .args(["--grpc-addr", &grpc_addr.to_string()])
            .args(["--admin-addr", &admin_addr.to_string()])
            .args(args)
            .env_remove("ZEN_DATABASE_URL")
            .env_remove("ZEN_REDIS_URL")
            .env_remove("ZEN_ENV")
            .env("ZEN_LOG_FORMAT", "json")
            // Rate limits out of the way of the drills' load (tests/limits.rs checks them).
            .env("ZEN_RATE_LIMIT_ANONYMOUS_RPS", "1000000")
            .env("ZEN_RATE_LIMIT_UNVERIFIED_WEBHOOKS_RPS", "1000000")
            .env("ZEN_RATE_LIMIT_USER_RPS", "1000000")
            .env("ZEN_RATE_LIMIT_CLUSTER_RPS", "1000000")
            .env("ZEN_DEFAULT_TENANT_REQUESTS_PER_SECOND", "0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("zen serve starts");
        ZenProcess {
            child,
            data_dir,
            http_addr,
            grpc_addr,
            admin_addr,
            log,
        }
    }

    /// The flags that make another `zen serve` a replica of this one's deployment: the same
    /// CA (and CA key, to issue agent certificates), server and gateway identities, JWT
    /// signing keys and webhook secret keys. The database and cache URLs are the caller's.
    pub fn replica_args(&self) -> Vec<String> {
        let pki = self.pki();
        let keys = self.data_dir.path().join("keys");
        let path = |p: PathBuf| p.display().to_string();
        let mut args = vec![];
        for (flag, file) in [
            ("--tls-ca-cert", pki.join("ca.crt")),
            ("--tls-ca-key", pki.join("ca.key")),
            ("--tls-server-cert", pki.join("server.crt")),
            ("--tls-server-key", pki.join("server.key")),
            ("--gateway-cert", pki.join("gateway.crt")),
            ("--gateway-key", pki.join("gateway.key")),
            ("--jwt-keys-dir", keys.join("jwt")),
        ] {
            args.extend([flag.to_owned(), path(file)]);
        }
        if let Ok(sealing) = std::fs::read_to_string(keys.join("webhook-secret-keys")) {
            args.extend([
                "--webhook-secret-keys".to_owned(),
                sealing.trim().to_owned(),
            ]);
        }
        args
    }

    /// An agent certificate for the cluster, signed by this deployment's CA: (certificate,
    /// key) files.
    pub fn agent_identity(&self, tenant_id: &str, cluster_id: &str) -> (PathBuf, PathBuf) {
        let files = zen_security::PkiFiles::new(self.pki());
        let issued = files
            .load_ca()
            .unwrap()
            .issue_client(
                &zen_security::PeerIdentity::Agent {
                    tenant_id: tenant_id.parse().unwrap(),
                    cluster_id: cluster_id.parse().unwrap(),
                },
                Duration::from_secs(600),
            )
            .unwrap();
        let name = format!("agent-{cluster_id}");
        files.write_identity(&name, &issued).unwrap();
        (files.cert(&name), files.key(&name))
    }

    /// SIGKILL: no drain, no flush, as a crashed node or an OOM kill.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    pub fn pki(&self) -> PathBuf {
        self.data_dir.path().join("pki")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory (`VmRSS`), in bytes.
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the process's status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGTERM: the replica drains (docs/DEPLOYMENT.md); see [`ZenProcess::exited`].
    pub fn terminate(&self) {
        let term = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(term.success());
    }

    /// Waits at most `within` for the process to exit; its status, or `None` if it still runs.
    pub async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, and waits for a clean exit (0) within 30 s.
    pub async fn stop(mut self) {
        self.terminate();
        let Some(status) = self.exited(Duration::from_secs(30)).await else {
            panic!("zen serve did not stop on SIGTERM");
        };
        assert!(
            status.success(),
            "zen serve exited with {status}:\n{}",
            self.log_tail()
        );
    }
}

impl Drop for ZenProcess {
    fn drop(&mut self) {
        // A failed test must not leave a server behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ZenUnderTest for ZenProcess {
    fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    async fn admin(&self) -> Channel {
        let pki = self.pki();
        connect(
            self.grpc_addr,
            &pki.join("ca.crt"),
            Some((&pki.join("admin.crt"), &pki.join("admin.key"))),
        )
        .await
        .expect("admin connects")
    }
}

/// Replicas of one deployment on a PostgreSQL database of their own and the tests' Redis, with
/// local login and one public URL (so a token from one replica is good on the others).
pub struct Deployment {
    pub replicas: Vec<ZenProcess>,
    /// What starts another replica of this deployment (say, after one was killed).
    pub replica_args: Vec<String>,
    pub database: super::TestDatabase,
}

impl Deployment {
    /// `n` replicas, each also given `extra`; the first creates the PKI and keys, the others
    /// share them. `None` when PostgreSQL or Redis is unreachable outside CI.
    pub async fn start(n: usize, extra: &[String]) -> Option<Deployment> {
        let database = super::TestDatabase::create().await?;
        let redis = super::test_redis_url().await?;
        let mut common = vec![
            "--database-url".to_owned(),
            database.url.clone(),
            "--redis-url".to_owned(),
            redis,
            "--local-login".to_owned(),
            "true".to_owned(),
            "--public-url".to_owned(),
            "http://zen.test".to_owned(),
        ];
        common.extend_from_slice(extra);
        let first = ZenProcess::spawn(&common).await;
        let mut replica_args = common;
        replica_args.extend(first.replica_args());
        let mut replicas = vec![first];
        for _ in 1..n {
            replicas.push(ZenProcess::spawn(&replica_args).await);
        }
        Some(Deployment {
            replicas,
            replica_args,
            database,
        })
    }
}
