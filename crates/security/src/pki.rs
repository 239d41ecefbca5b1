//! The platform certificate authority.
//!
//! Every party on the gRPC front authenticates with a certificate chained to this CA: the server
//! itself, operators (admin identities), internal services such as the gateway, and cluster
//! agents. In development the CA lives under `<data-dir>/pki`; in production its files are
//! provided and nothing is ever generated.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::identity::{valid_name, PeerIdentity};

/// Validity of the generated development CA.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of server and operator identities issued by the development PKI.
pub const DEFAULT_IDENTITY_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates are back-dated by this much to tolerate clock skew between peers.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Errors of the PKI, phrased so an operator knows which file to fix.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid PEM {what}: {reason}")]
    InvalidPem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("`{0}` is not a valid identity name (use lowercase letters, digits, '-' or '_', at most 63)")]
    InvalidName(String),
    #[error("the certificate signing request is invalid: {0}")]
    InvalidCsr(String),
    #[error("certificate generation failed: {0}")]
    Generation(#[from] rcgen::Error),
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedIdentity {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

impl std::fmt::Debug for IssuedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never reaches a log line.
        f.debug_struct("IssuedIdentity")
            .field("certificate_pem", &self.certificate_pem)
            .field("private_key_pem", &"[REDACTED]")
            .finish()
    }
}

/// The CA: its certificate (PEM, as distributed to peers) and its signing key.
pub struct CertificateAuthority {
    certificate_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// Creates a new self-signed CA.
    pub fn generate(common_name: &str) -> Result<(Self, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        let certificate = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok((
            Self {
                certificate_pem: certificate.pem(),
                issuer: Issuer::new(params, key),
            },
            key_pem,
        ))
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(certificate_pem, key)?;
        Ok(Self {
            certificate_pem: certificate_pem.to_owned(),
            issuer,
        })
    }

    /// The CA certificate, PEM: the trust bundle peers verify against.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Issues the server's TLS identity for the given DNS names and IP addresses.
    pub fn issue_server(
        &self,
        hosts: &[String],
        validity: Duration,
    ) -> Result<IssuedIdentity, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name("zen-server");
        params.subject_alt_names = hosts
            .iter()
            .map(|host| match host.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(host.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params, key, validity)
    }

    /// Issues a client identity (admin or service) with a fresh key.
    pub fn issue_client(
        &self,
        identity: &PeerIdentity,
        validity: Duration,
    ) -> Result<IssuedIdentity, PkiError> {
        if let PeerIdentity::Admin { name } | PeerIdentity::Service { name } = identity {
            if !valid_name(name) {
                return Err(PkiError::InvalidName(name.clone()));
            }
        }
        let key = KeyPair::generate()?;
        self.sign(client_params(identity)?, key, validity)
    }

    /// Signs a PKCS#10 CSR for `identity`. Only the CSR's public key is used: subject, SANs and
    /// extensions are decided here, never by the requester.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &PeerIdentity,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
        let mut params = client_params(identity)?;
        set_validity(&mut params, validity);
        let certificate = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(certificate.pem())
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        key: KeyPair,
        validity: Duration,
    ) -> Result<IssuedIdentity, PkiError> {
        set_validity(&mut params, validity);
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedIdentity {
            certificate_pem: certificate.pem(),
            private_key_pem: key.serialize_pem(),
        })
    }
}

fn client_params(identity: &PeerIdentity) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&identity.to_string());
    params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Zen");
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
}

/// Where the PKI files live under a directory (`<data-dir>/pki` in development).
#[derive(Clone, Debug)]
pub struct PkiFiles {
    pub dir: PathBuf,
}

impl PkiFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// Whether a CA has been created here.
    pub fn exists(&self) -> bool {
        self.ca_cert().exists()
    }

    /// Creates the development PKI: CA, server identity for `server_hosts`, and the admin
    /// identity. Returns the paths written. Refuses to overwrite an existing CA.
    pub fn create_dev(&self, server_hosts: &[String]) -> Result<Vec<PathBuf>, PkiError> {
        fs::create_dir_all(&self.dir).map_err(|source| PkiError::Write {
            path: self.dir.clone(),
            source,
        })?;
        let (ca, ca_key) = CertificateAuthority::generate("Zen development CA")?;
        write_file(&self.ca_cert(), ca.certificate_pem(), false)?;
        write_file(&self.ca_key(), &ca_key, true)?;
        let server = ca.issue_server(server_hosts, DEFAULT_IDENTITY_VALIDITY)?;
        self.write_identity("server", &server)?;
        let admin = ca.issue_client(
            &PeerIdentity::Admin {
                name: "admin".into(),
            },
            DEFAULT_IDENTITY_VALIDITY,
        )?;
        self.write_identity("admin", &admin)?;
        Ok(vec![
            self.ca_cert(),
            self.ca_key(),
            self.cert("server"),
            self.key("server"),
            self.cert("admin"),
            self.key("admin"),
        ])
    }

    /// Loads the CA (certificate and key) from this directory.
    pub fn load_ca(&self) -> Result<CertificateAuthority, PkiError> {
        let cert = read_file(&self.ca_cert())?;
        let key = read_file(&self.ca_key())?;
        CertificateAuthority::from_pem(&cert, &key).map_err(|e| PkiError::InvalidPem {
            path: self.ca_key(),
            what: "CA certificate and key",
            reason: e.to_string(),
        })
    }

    /// Writes `name.crt` and `name.key` (the key readable by the owner only).
    pub fn write_identity(&self, name: &str, identity: &IssuedIdentity) -> Result<(), PkiError> {
        write_file(&self.cert(name), &identity.certificate_pem, false)?;
        write_file(&self.key(name), &identity.private_key_pem, true)
    }
}

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let error = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)
}

/// Parses the first certificate of a PEM bundle to DER, checking that it is one.
pub fn certificate_der_from_pem(path: &Path, pem: &str) -> Result<Vec<u8>, PkiError> {
    let invalid = |reason: String| PkiError::InvalidPem {
        path: path.to_owned(),
        what: "certificate",
        reason,
    };
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    parsed
        .parse_x509()
        .map_err(|e| invalid(e.to_string()))
        .map(|_| parsed.contents.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_client_certificates_carry_exactly_the_identity() {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let identity = PeerIdentity::Service {
            name: "gateway".into(),
        };
        let issued = ca
            .issue_client(&identity, Duration::from_secs(3600))
            .unwrap();
        let der = certificate_der_from_pem(Path::new("issued"), &issued.certificate_pem).unwrap();
        assert_eq!(PeerIdentity::from_certificate_der(&der).unwrap(), identity);
    }

    #[test]
    fn csr_subject_and_sans_are_ignored() {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let agent_key = KeyPair::generate().unwrap();
        // The requester asks to be an admin; it gets the agent identity it was enrolled as.
        let mut requested = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        requested.subject_alt_names.push(SanType::URI(
            "spiffe://zen/admin/root".to_string().try_into().unwrap(),
        ));
        let csr = requested
            .serialize_request(&agent_key)
            .unwrap()
            .pem()
            .unwrap();
        let identity = PeerIdentity::Agent {
            tenant_id: uuid::Uuid::new_v4(),
            cluster_id: uuid::Uuid::new_v4(),
        };
        let pem = ca
            .sign_csr(&csr, &identity, Duration::from_secs(600))
            .unwrap();
        let der = certificate_der_from_pem(Path::new("signed"), &pem).unwrap();
        assert_eq!(PeerIdentity::from_certificate_der(&der).unwrap(), identity);
    }

    #[test]
    fn invalid_names_and_csrs_are_refused() {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let bad = PeerIdentity::Admin {
            name: "../etc".into(),
        };
        assert!(matches!(
            ca.issue_client(&bad, Duration::from_secs(60)),
            Err(PkiError::InvalidName(_))
        ));
        let agent = PeerIdentity::Agent {
            tenant_id: uuid::Uuid::new_v4(),
            cluster_id: uuid::Uuid::new_v4(),
        };
        assert!(matches!(
            ca.sign_csr("not a csr", &agent, Duration::from_secs(60)),
            Err(PkiError::InvalidCsr(_))
        ));
    }

    #[test]
    fn dev_pki_is_created_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let files = PkiFiles::new(dir.path().join("pki"));
        assert!(!files.exists());
        let written = files
            .create_dev(&["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        assert_eq!(written.len(), 6);
        assert!(files.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(files.ca_key()).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "CA key must not be readable by others");
        }
        let ca = files.load_ca().unwrap();
        assert_eq!(ca.certificate_pem(), read_file(&files.ca_cert()).unwrap());
    }
}
