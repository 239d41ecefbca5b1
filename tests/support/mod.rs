//! Shared helpers of the end-to-end tests: an in-process Zen on real sockets with a fresh data
//! dir, and mTLS gRPC clients built from PEM files the way an operator would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use zen::config::{Config, GlobalArgs, ServeArgs};
use zen::server::{self, Running};

pub struct TestZen {
    pub running: Running,
    pub data_dir: tempfile::TempDir,
}

impl TestZen {
    /// Starts Zen on ephemeral loopback ports with the embedded defaults (SQLite, dev PKI).
    pub async fn start() -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let global = GlobalArgs {
            data_dir: Some(data_dir.path().to_owned()),
            ..Default::default()
        };
        let serve = ServeArgs {
            grpc_addr: Some("127.0.0.1:0".parse().unwrap()),
            http_addr: Some("127.0.0.1:0".parse().unwrap()),
            shutdown_grace_seconds: Some(5),
            ..Default::default()
        };
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
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
}
