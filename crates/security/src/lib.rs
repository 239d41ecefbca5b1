//! Zen's cryptographic identity.
//!
//! - [`pki`]: the platform certificate authority, issuing server and client identities and
//!   keeping the development PKI under the data directory.
//! - [`jwt`]: RS256 access tokens, the rotating signing key ring and the JWKS.
//! - [`password`]: Argon2id hashes for local logins.
//! - [`identity`]: who a peer is, read from its client certificate, as a typed value that flows
//!   through the request stack instead of a string.

pub mod identity;
pub mod jwt;
pub mod password;
pub mod pki;

pub use identity::PeerIdentity;
pub use pki::{CertificateAuthority, IssuedIdentity, PkiError, PkiFiles};
