//! Shared helpers of the end-to-end tests: an in-process Zen on real sockets with a fresh data
//! dir, and mTLS gRPC clients built from PEM files the way an operator would.

#![allow(dead_code)]

pub mod balancer;
pub mod drill;
pub mod postgres;
pub mod process;

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use zen::config::{Config, GlobalArgs, ServeArgs};
use zen::server::{self, Running};

/// What the drills need of a Zen, in-process ([`TestZen`]) or the real binary
/// ([`process::ZenProcess`]).
#[allow(async_fn_in_trait)]
pub trait ZenUnderTest {
    /// A URL on the public HTTP listener.
    fn http_url(&self, path: &str) -> String;
    /// A gRPC channel authenticated as the operator (`admin` identity of the dev PKI).
    async fn admin(&self) -> Channel;
}

impl ZenUnderTest for TestZen {
    fn http_url(&self, path: &str) -> String {
        TestZen::http_url(self, path)
    }

    async fn admin(&self) -> Channel {
        TestZen::admin(self).await
    }
}

pub struct TestZen {
    pub running: Running,
    pub data_dir: tempfile::TempDir,
}

impl TestZen {
    /// Starts Zen on ephemeral loopback ports with the embedded defaults (SQLite, dev PKI).
    pub async fn start() -> Self {
        Self::start_with_database(None).await
    }

    /// Starts Zen on the given database URL (`None`: SQLite in the data dir).
    pub async fn start_with_database(database_url: Option<String>) -> Self {
        Self::start_with(
            GlobalArgs {
                database_url,
                ..Default::default()
            },
            ServeArgs::default(),
        )
        .await
    }

    /// Starts Zen with these settings on a fresh data dir and ephemeral loopback ports.
    pub async fn start_with(mut global: GlobalArgs, mut serve: ServeArgs) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        global.data_dir = Some(data_dir.path().to_owned());
        serve.grpc_addr = Some("127.0.0.1:0".parse().unwrap());
        serve.http_addr = Some("127.0.0.1:0".parse().unwrap());
        serve.admin_addr = Some("127.0.0.1:0".parse().unwrap());
        serve.shutdown_grace_seconds = Some(5);
        // Rate limits stay out of the way of tests about something else (tests/limits.rs
        // states its own); tests share one client address and bursts of calls.
        for limit in [
            &mut serve.rate_limit_anonymous_rps,
            &mut serve.rate_limit_unverified_webhooks_rps,
            &mut serve.rate_limit_user_rps,
            &mut serve.rate_limit_cluster_rps,
        ] {
            limit.get_or_insert(1_000_000);
        }
        serve.default_tenant_requests_per_second.get_or_insert(0);
        let config = Config::resolve(&global, &serve).expect("valid config");
        let running = server::start(config).await.expect("zen starts");
        Self { running, data_dir }
    }

    pub fn pki(&self) -> PathBuf {
        self.data_dir.path().join("pki")
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr)
    }

    /// A URL on the admin listener (metrics, deep health).
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr)
    }

    /// A channel authenticated as the given identity files under the PKI dir (e.g. "admin").
    pub async fn channel_as(&self, name: &str) -> Result<Channel, tonic::transport::Error> {
        let pki = self.pki();
        connect(
            self.running.grpc_addr,
            &pki.join("ca.crt"),
            Some((
                &pki.join(format!("{name}.crt")),
                &pki.join(format!("{name}.key")),
            )),
        )
        .await
    }

    pub async fn admin(&self) -> Channel {
        self.channel_as("admin").await.expect("admin connects")
    }

    /// Issues a service identity (e.g. the gateway) under the PKI dir and connects with it.
    pub async fn service(&self, name: &str) -> Channel {
        let files = zen_security::PkiFiles::new(self.pki());
        if !files.cert(name).exists() {
            let ca = files.load_ca().unwrap();
            let identity = zen_security::PeerIdentity::Service { name: name.into() };
            let issued = ca
                .issue_client(&identity, std::time::Duration::from_secs(3600))
                .unwrap();
            files.write_identity(name, &issued).unwrap();
        }
        self.channel_as(name).await.expect("service connects")
    }

    pub async fn stop(self) {
        self.running.shutdown().await.expect("clean shutdown");
    }
}

/// Connects over TLS trusting `ca`, presenting `identity` (certificate, key) when given.
pub async fn connect(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel, tonic::transport::Error> {
    connect_with(addr, ca, identity, |endpoint| endpoint).await
}

/// [`connect`] with the endpoint adjusted (HTTP/2 windows, timeouts …).
pub async fn connect_with(
    addr: std::net::SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    adjust: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let endpoint = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10));
    adjust(endpoint).connect().await
}

/// A PostgreSQL database of its own for one test, dropped at the end. `None` (with the reason
/// printed) when PostgreSQL is unreachable outside CI; in CI that is a failure.
pub struct TestDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> Option<Self> {
        use sqlx::Connection;
        let admin_url = std::env::var("ZEN_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(conn) => conn,
            Err(error) if std::env::var_os("CI").is_none() => {
                eprintln!("skipping: PostgreSQL at {admin_url} is unreachable: {error}");
                return None;
            }
            Err(error) => panic!("PostgreSQL at {admin_url} is unreachable in CI: {error}"),
        };
        let name = format!("zen_e2e_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin_url);
        Some(Self {
            url: format!("{base}/{name}"),
            name,
            admin_url,
        })
    }

    pub async fn drop_database(self) {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await
        .expect("drop database");
    }
}

impl TestZen {
    /// Points another instance at this one's PKI (CA, server and gateway identities, CA key)
    /// and JWT signing keys, so the two serve as replicas of one deployment: each trusts the
    /// other's certificates and verifies the other's access tokens.
    pub fn share_identity(&self, global: &mut GlobalArgs, serve: &mut ServeArgs) {
        let pki = self.pki();
        serve.tls_ca_cert = Some(pki.join("ca.crt"));
        serve.tls_ca_key = Some(pki.join("ca.key"));
        serve.tls_server_cert = Some(pki.join("server.crt"));
        serve.tls_server_key = Some(pki.join("server.key"));
        serve.gateway_cert = Some(pki.join("gateway.crt"));
        serve.gateway_key = Some(pki.join("gateway.key"));
        global.jwt_keys_dir = Some(self.data_dir.path().join("keys").join("jwt"));
        // Webhook secrets sealed by one replica must open on the other.
        serve.webhook_secret_keys = std::fs::read_to_string(
            self.data_dir
                .path()
                .join("keys")
                .join("webhook-secret-keys"),
        )
        .ok()
        .map(|k| k.trim().to_owned());
    }
}

/// Two replicas of one deployment (shared PKI, JWT and webhook secret keys) on a PostgreSQL
/// database of their own and the tests' Redis, both served with `serve`. `None` when either is
/// unreachable outside CI (see [`TestDatabase::create`], [`test_redis_url`]).
pub async fn two_replicas(serve: ServeArgs) -> Option<(TestZen, TestZen, TestDatabase)> {
    let redis = test_redis_url().await?;
    let database = TestDatabase::create().await?;
    let global = GlobalArgs {
        database_url: Some(database.url.clone()),
        redis_url: Some(redis),
        ..Default::default()
    };
    let a = TestZen::start_with(global.clone(), serve.clone()).await;
    let (mut global_b, mut serve_b) = (global, serve);
    a.share_identity(&mut global_b, &mut serve_b);
    let b = TestZen::start_with(global_b, serve_b).await;
    Some((a, b, database))
}

/// The Redis of the tests (`ZEN_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`). `None`
/// (with the reason printed) when it is unreachable outside CI; in CI that is a failure. Zen
/// prefixes its keys with `zen:`; tests use unique ids and flush nothing.
pub async fn test_redis_url() -> Option<String> {
    let url =
        std::env::var("ZEN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let authority = url
        .split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    };
    let reachable = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::TcpStream::connect(&host_port),
    )
    .await;
    match reachable {
        Ok(Ok(_)) => Some(url),
        Ok(Err(error)) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: Redis at {url} is unreachable: {error}");
            None
        }
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: Redis at {url} did not answer");
            None
        }
        Ok(Err(error)) => panic!("Redis at {url} is unreachable in CI: {error}"),
        Err(_) => panic!("Redis at {url} did not answer in CI"),
    }
}

/// The password of the local users the HTTP tests create.
pub const PASSWORD: &str = "correct horse battery staple";

/// An HTTP client for Zen's plain-HTTP side (no proxy, bounded waits).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// A fresh `X-Request-Id`.
pub fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The one operator call of HTTP tests: a local user (password [`PASSWORD`]) created over the
/// admin's mTLS channel.
pub async fn create_local_user_as_operator(
    zen: &impl ZenUnderTest,
    username: &str,
    platform_admin: bool,
) {
    use zen::proto::zen::auth::v1 as auth;
    let mut request = tonic::Request::new(auth::CreateLocalUserRequest {
        username: username.into(),
        email: format!("{username}@example.test"),
        password: PASSWORD.into(),
        platform_admin,
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", request_id().parse().unwrap());
    auth::auth_service_client::AuthServiceClient::new(zen.admin().await)
        .create_local_user(request)
        .await
        .expect("the operator creates a local user");
}
