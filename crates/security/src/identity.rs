//! Peer identities carried in client certificates as SPIFFE-style URI SANs.
//!
//! | identity           | URI SAN                                          |
//! |--------------------|--------------------------------------------------|
//! | platform admin     | `spiffe://zen/admin/<name>`                      |
//! | internal service   | `spiffe://zen/service/<name>` (gateway, server)  |
//! | cluster agent      | `spiffe://zen/tenant/<tenant-id>/cluster/<id>`   |
//!
//! The certificate chain is verified by TLS before any of this runs; this module only reads
//! *who* an already-authenticated peer is.

use std::fmt;

use uuid::Uuid;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The trust domain every Zen identity URI lives in.
pub const TRUST_DOMAIN: &str = "zen";

/// Who is on the other end of an mTLS connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// An operator identity with platform-wide administrative rights.
    Admin { name: String },
    /// An internal service, such as the gateway.
    Service { name: String },
    /// The agent of one cluster of one tenant.
    Agent { tenant_id: Uuid, cluster_id: Uuid },
}

/// Why a certificate does not name a Zen identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the certificate could not be parsed")]
    Unparseable,
    #[error("the certificate carries no spiffe://{TRUST_DOMAIN}/ URI SAN")]
    Missing,
    #[error("the certificate carries more than one spiffe://{TRUST_DOMAIN}/ URI SAN")]
    Ambiguous,
    #[error("`{0}` is not a Zen identity URI")]
    Malformed(String),
}

impl PeerIdentity {
    /// The URI SAN that encodes this identity.
    pub fn uri(&self) -> String {
        match self {
            PeerIdentity::Admin { name } => format!("spiffe://{TRUST_DOMAIN}/admin/{name}"),
            PeerIdentity::Service { name } => format!("spiffe://{TRUST_DOMAIN}/service/{name}"),
            PeerIdentity::Agent {
                tenant_id,
                cluster_id,
            } => format!("spiffe://{TRUST_DOMAIN}/tenant/{tenant_id}/cluster/{cluster_id}"),
        }
    }

    /// Parses an identity URI; the inverse of [`PeerIdentity::uri`].
    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_owned());
        let path = uri
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.strip_prefix(TRUST_DOMAIN))
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(malformed)?;
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            ["admin", name] if valid_name(name) => Ok(PeerIdentity::Admin {
                name: (*name).to_owned(),
            }),
            ["service", name] if valid_name(name) => Ok(PeerIdentity::Service {
                name: (*name).to_owned(),
            }),
            ["tenant", tenant, "cluster", cluster] => Ok(PeerIdentity::Agent {
                tenant_id: Uuid::parse_str(tenant).map_err(|_| malformed())?,
                cluster_id: Uuid::parse_str(cluster).map_err(|_| malformed())?,
            }),
            _ => Err(malformed()),
        }
    }

    /// Reads the identity from a DER-encoded leaf certificate: exactly one URI SAN in the Zen
    /// trust domain must be present.
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparseable)?;
        let prefix = format!("spiffe://{TRUST_DOMAIN}/");
        let mut found = None;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    if uri.starts_with(&prefix) {
                        if found.is_some() {
                            return Err(IdentityError::Ambiguous);
                        }
                        found = Some(Self::from_uri(uri)?);
                    }
                }
            }
        }
        found.ok_or(IdentityError::Missing)
    }

    /// A short label for logs and audit records, e.g. `admin:ops` or `agent:<cluster-id>`.
    pub fn actor_label(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::Admin { name } => write!(f, "admin:{name}"),
            PeerIdentity::Service { name } => write!(f, "service:{name}"),
            PeerIdentity::Agent { cluster_id, .. } => write!(f, "agent:{cluster_id}"),
        }
    }
}

/// Names of admins and services: a DNS-label-like token, so it is safe in a URI and a file name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        let cases = [
            PeerIdentity::Admin { name: "ops".into() },
            PeerIdentity::Service {
                name: "gateway".into(),
            },
            PeerIdentity::Agent {
                tenant_id: Uuid::new_v4(),
                cluster_id: Uuid::new_v4(),
            },
        ];
        for identity in cases {
            assert_eq!(PeerIdentity::from_uri(&identity.uri()).unwrap(), identity);
        }
    }

    #[test]
    fn foreign_or_malformed_uris_are_refused() {
        for uri in [
            "spiffe://other/admin/ops",
            "spiffe://zen/admin/",
            "spiffe://zen/admin/Bad Name",
            "spiffe://zen/tenant/not-a-uuid/cluster/x",
            "spiffe://zen/root",
            "https://zen/admin/ops",
        ] {
            assert!(PeerIdentity::from_uri(uri).is_err(), "{uri} was accepted");
        }
    }
}
