//! The server's TLS material: loaded from the configured files, or, in development with the
//! default paths, created on first start as a development PKI under `<data-dir>/pki`.

use std::path::Path;

use anyhow::{bail, Context};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use zen_security::pki::{certificate_der_from_pem, read_file};
use zen_security::PkiFiles;

use crate::config::{Config, Environment};

/// Host names and addresses the development server certificate is valid for.
pub fn dev_server_hosts() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1", "zen", "zen.local"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// Creates the development PKI when the defaults are in use and none exists yet.
pub fn ensure_dev_pki(config: &Config) -> anyhow::Result<()> {
    let files = PkiFiles::new(config.pki_dir());
    if !config.tls.defaults || files.exists() {
        return Ok(());
    }
    if config.environment == Environment::Production {
        bail!("ZEN_ENV=production never generates certificates");
    }
    let written = files
        .create_dev(&dev_server_hosts())
        .context("creating the development PKI")?;
    let listing: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    tracing::info!(files = ?listing, "created a development PKI");
    eprintln!(
        "Created a development PKI in {}:\n  {}\nCall the gRPC front with the admin identity \
         (admin.crt / admin.key) and trust ca.crt.",
        files.dir.display(),
        listing.join("\n  ")
    );
    Ok(())
}

/// Builds the server's TLS configuration: its identity, and the CA that every client
/// certificate must chain to (client authentication is mandatory).
pub fn server_tls_config(config: &Config) -> anyhow::Result<ServerTlsConfig> {
    let ca = load_certificate(&config.tls.ca_cert, "CA bundle")?;
    let cert = load_certificate(&config.tls.server_cert, "server certificate")?;
    let key = read_file(&config.tls.server_key)?;
    if !key.contains("PRIVATE KEY-----") {
        bail!(
            "{} does not contain a PEM private key",
            config.tls.server_key.display()
        );
    }
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false))
}

fn load_certificate(path: &Path, what: &str) -> anyhow::Result<String> {
    let pem = read_file(path).with_context(|| format!("reading the {what}"))?;
    certificate_der_from_pem(path, &pem).with_context(|| format!("checking the {what}"))?;
    Ok(pem)
}

/// The CA that signs agent certificates at enrollment, when its key is configured.
pub fn agent_ca(config: &Config) -> anyhow::Result<Option<zen_security::CertificateAuthority>> {
    let Some(key_path) = &config.tls.ca_key else {
        return Ok(None);
    };
    let cert = read_file(&config.tls.ca_cert)?;
    let key = read_file(key_path)?;
    let ca = zen_security::CertificateAuthority::from_pem(&cert, &key)
        .with_context(|| format!("loading the CA key {}", key_path.display()))?;
    Ok(Some(ca))
}

/// The gateway's channel to the gRPC front: mutual TLS with its own service identity, issued
/// from the development CA on first start when the defaults are in use. The channel connects
/// lazily, so it can be built before the front accepts.
pub fn gateway_channel(
    config: &Config,
    grpc_addr: std::net::SocketAddr,
) -> anyhow::Result<tonic::transport::Channel> {
    let settings = &config.gateway;
    if settings.defaults
        && !settings.cert.exists()
        && config.environment == Environment::Development
    {
        let files = PkiFiles::new(config.pki_dir());
        let ca = files.load_ca().context("loading the development CA")?;
        let identity = zen_security::PeerIdentity::Service {
            name: "gateway".into(),
        };
        let issued = ca.issue_client(&identity, zen_security::pki::DEFAULT_IDENTITY_VALIDITY)?;
        files.write_identity("gateway", &issued)?;
    }
    let ca = load_certificate(&config.tls.ca_cert, "CA bundle")?;
    let cert = load_certificate(&settings.cert, "gateway certificate")?;
    let key = read_file(&settings.key)?;
    let host = if grpc_addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), grpc_addr.port())
    } else {
        grpc_addr
    };
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(settings.server_name.clone());
    Ok(
        tonic::transport::Channel::from_shared(format!("https://{host}"))?
            .tls_config(tls)?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect_lazy(),
    )
}
