//! RS256 access tokens: the signing key ring, issuing, validation and the JWKS.
//!
//! Keys live as PKCS#8 PEM files `<kid>.pem` in one directory (`<data-dir>/keys/jwt` in
//! development, a mounted Secret in production). The newest key signs. Rotation
//! ([`KeyRing::rotate`]) adds a key; an older key keeps verifying, and stays in the JWKS, until
//! every token it could have signed has expired ([`KeyRing::retire_after`] past its successor's
//! creation); then it leaves the JWKS and verification. Replicas re-read the directory when
//! they meet an unknown `kid`, so a rotation reaches them without a restart.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::PrivateKey;
use serde::{Deserialize, Serialize};

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const CLOCK_SKEW: Duration = Duration::from_secs(120);
const RSA_BITS: usize = 2048;
/// How often a miss on an unknown `kid` may trigger a re-read of the key directory.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the JWT key directory {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a PKCS#8 RSA private key: {reason}")]
    InvalidKey { path: PathBuf, reason: String },
    #[error("the JWT key directory {0} holds no keys; run `zen keys rotate-jwt`")]
    Empty(PathBuf),
    #[error("key generation failed: {0}")]
    Generation(String),
}

/// Why a token was refused. Callers answer UNAUTHENTICATED without saying which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
    #[error("wrong issuer or audience")]
    Audience,
    #[error("session revoked")]
    Revoked,
}

/// The claims of a Zen access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    /// The session (refresh-token family) the token belongs to.
    pub sid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub zen_admin: bool,
    /// Tenant id -> lower-case role when the token was issued; routing hints only.
    #[serde(default)]
    pub zen_tenants: BTreeMap<String, String>,
}

/// A JSON Web Key (public, RSA).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kid: String,
    pub kty: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub n: String,
    pub e: String,
}

struct KeyEntry {
    kid: String,
    created: u64,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: PublicJwk,
}

/// The signing keys of one directory.
pub struct KeyRing {
    dir: PathBuf,
    retire_after: Duration,
    state: RwLock<RingState>,
}

struct RingState {
    /// Oldest first.
    keys: Vec<KeyEntry>,
    loaded_at: SystemTime,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl KeyRing {
    /// Opens the key directory. With `create_if_empty` (development) an empty or missing
    /// directory gets a first key; otherwise it is an error.
    pub fn open(
        dir: &Path,
        retire_after: Duration,
        create_if_empty: bool,
    ) -> Result<Self, KeyError> {
        if create_if_empty && read_keys(dir).map(|k| k.is_empty()).unwrap_or(true) {
            generate_key_file(dir)?;
        }
        let keys = read_keys(dir)?;
        if keys.is_empty() {
            return Err(KeyError::Empty(dir.to_owned()));
        }
        Ok(Self {
            dir: dir.to_owned(),
            retire_after,
            state: RwLock::new(RingState {
                keys,
                loaded_at: SystemTime::now(),
            }),
        })
    }

    /// Adds a new signing key to `dir` and returns its `kid`. Running replicas pick it up
    /// when they next re-read the directory.
    pub fn rotate(dir: &Path) -> Result<String, KeyError> {
        generate_key_file(dir)
    }

    /// How long a replaced key keeps verifying (the access-token lifetime plus clock skew).
    pub fn retire_after(&self) -> Duration {
        self.retire_after
    }

    /// Re-reads the directory (new keys from a rotation elsewhere).
    pub fn reload(&self) -> Result<(), KeyError> {
        let keys = read_keys(&self.dir)?;
        if keys.is_empty() {
            return Err(KeyError::Empty(self.dir.clone()));
        }
        let mut state = self.state.write().expect("key ring lock");
        state.keys = keys;
        state.loaded_at = SystemTime::now();
        Ok(())
    }

    /// Signs claims with the newest key.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        let state = self.state.read().expect("key ring lock");
        let key = state.keys.last().expect("never empty");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .map_err(|e| KeyError::Generation(e.to_string()))
    }

    /// The `kid` of the signing key.
    pub fn active_kid(&self) -> String {
        let state = self.state.read().expect("key ring lock");
        state.keys.last().expect("never empty").kid.clone()
    }

    /// Keys that may still verify at `now`: the newest, and each older one until
    /// `retire_after` has passed since its successor was created.
    fn live_indices(keys: &[KeyEntry], now: u64, retire_after: Duration) -> Vec<usize> {
        (0..keys.len())
            .filter(|&i| match keys.get(i + 1) {
                None => true,
                Some(successor) => now < successor.created + retire_after.as_secs(),
            })
            .collect()
    }

    /// The public keys that verify tokens now (published at `/.well-known/jwks.json`).
    pub fn jwks(&self) -> Vec<PublicJwk> {
        let state = self.state.read().expect("key ring lock");
        Self::live_indices(&state.keys, now_secs(), self.retire_after)
            .into_iter()
            .map(|i| state.keys[i].jwk.clone())
            .collect()
    }

    /// Validates signature, algorithm (RS256 only), `kid`, issuer, audience and times.
    pub fn verify(&self, token: &str, issuer: &str, audience: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        // RS256 only: refuses `none`, and HS256 tokens "signed" with the public key.
        if header.alg != Algorithm::RS256 {
            return Err(TokenError::Algorithm);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let decoding = match self.decoding_key(&kid) {
            Some(key) => key,
            None => {
                self.maybe_reload();
                self.decoding_key(&kid).ok_or(TokenError::UnknownKey)?
            }
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = CLOCK_SKEW.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &decoding, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => TokenError::Audience,
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
                _ => TokenError::Malformed,
            }
        })?;
        // `iat` in the future beyond the skew is as suspicious as `nbf`.
        if data.claims.iat > now_secs() + CLOCK_SKEW.as_secs() {
            return Err(TokenError::NotYetValid);
        }
        Ok(data.claims)
    }

    fn decoding_key(&self, kid: &str) -> Option<DecodingKey> {
        let state = self.state.read().expect("key ring lock");
        Self::live_indices(&state.keys, now_secs(), self.retire_after)
            .into_iter()
            .map(|i| &state.keys[i])
            .find(|k| k.kid == kid)
            .map(|k| k.decoding.clone())
    }

    fn maybe_reload(&self) {
        let due = {
            let state = self.state.read().expect("key ring lock");
            state.loaded_at.elapsed().unwrap_or_default() >= RELOAD_INTERVAL
        };
        if due {
            if let Err(error) = self.reload() {
                tracing::warn!(%error, "could not re-read the JWT keys");
            }
        }
    }
}

/// `kid`: creation time (seconds) and randomness, so names sort by age.
fn new_kid(created: u64) -> String {
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).expect("the operating system's random source");
    format!("{created:012}-{}", hex::encode(random))
}

fn created_of(kid: &str) -> Option<u64> {
    kid.split_once('-').and_then(|(secs, _)| secs.parse().ok())
}

fn generate_key_file(dir: &Path) -> Result<String, KeyError> {
    fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let mut rng = getrandom::SysRng;
    let key =
        PrivateKey::new(&mut rng, RSA_BITS).map_err(|e| KeyError::Generation(e.to_string()))?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Generation(e.to_string()))?;
    let kid = new_kid(now_secs());
    let path = dir.join(format!("{kid}.pem"));
    write_private(&path, pem.as_bytes())?;
    Ok(kid)
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    let error = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(error)?;
    file.write_all(contents).map_err(error)
}

fn read_keys(dir: &Path) -> Result<Vec<KeyEntry>, KeyError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(KeyError::Read {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    for entry in entries {
        let path = entry
            .map_err(|source| KeyError::Read {
                path: dir.to_owned(),
                source,
            })?
            .path();
        let Some(kid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pem"))
            .map(str::to_owned)
        else {
            continue;
        };
        let invalid = |reason: String| KeyError::InvalidKey {
            path: path.clone(),
            reason,
        };
        let created =
            created_of(&kid).ok_or_else(|| invalid("the file name is not <kid>.pem".into()))?;
        let pem = fs::read_to_string(&path).map_err(|source| KeyError::Read {
            path: path.clone(),
            source,
        })?;
        let private = PrivateKey::from_pkcs8_pem(&pem).map_err(|e| invalid(e.to_string()))?;
        let n = URL_SAFE_NO_PAD.encode(private.n().to_be_bytes_trimmed_vartime());
        let e = URL_SAFE_NO_PAD.encode(private.e().to_be_bytes_trimmed_vartime());
        let encoding =
            EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| invalid(e.to_string()))?;
        let decoding =
            DecodingKey::from_rsa_components(&n, &e).map_err(|e| invalid(e.to_string()))?;
        if seen.insert(kid.clone()) {
            keys.push(KeyEntry {
                jwk: PublicJwk {
                    kid: kid.clone(),
                    kty: "RSA".into(),
                    alg: "RS256".into(),
                    use_: "sig".into(),
                    n,
                    e,
                },
                kid,
                created,
                encoding,
                decoding,
            });
        }
    }
    keys.sort_by(|a, b| (a.created, &a.kid).cmp(&(b.created, &b.kid)));
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://zen.test";
    const AUD: &str = "zen";

    fn claims(exp_in: i64) -> Claims {
        let now = now_secs() as i64;
        Claims {
            iss: ISS.into(),
            sub: "user-1".into(),
            aud: AUD.into(),
            exp: (now + exp_in) as u64,
            iat: now as u64,
            nbf: now as u64,
            jti: "j1".into(),
            sid: "s1".into(),
            email: None,
            name: None,
            zen_admin: false,
            zen_tenants: BTreeMap::new(),
        }
    }

    #[test]
    fn tokens_verify_and_forgeries_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), Duration::from_secs(1020), true).unwrap();
        let token = ring.sign(&claims(900)).unwrap();
        assert_eq!(ring.verify(&token, ISS, AUD).unwrap().sub, "user-1");

        assert_eq!(
            ring.verify(&token, "https://other", AUD),
            Err(TokenError::Audience)
        );
        assert_eq!(ring.verify(&token, ISS, "other"), Err(TokenError::Audience));
        let expired = ring.sign(&claims(-3600)).unwrap();
        assert_eq!(ring.verify(&expired, ISS, AUD), Err(TokenError::Expired));

        // Tampered payload.
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut forged = claims(900);
        forged.zen_admin = true;
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            ring.verify(&parts.join("."), ISS, AUD),
            Err(TokenError::Signature)
        );

        // alg: none.
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let none = format!("{none_header}.{}.", parts[1]);
        assert!(ring.verify(&none, ISS, AUD).is_err());

        // HS256 signed with the public key (the classic key-confusion attack).
        let jwk = &ring.jwks()[0];
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(jwk.kid.clone());
        let hs = jsonwebtoken::encode(
            &header,
            &claims(900),
            &EncodingKey::from_secret(jwk.n.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(ring.verify(&hs, ISS, AUD), Err(TokenError::Algorithm));
    }

    #[test]
    fn rotation_keeps_old_tokens_until_retirement() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), Duration::from_secs(1020), true).unwrap();
        let old_token = ring.sign(&claims(900)).unwrap();
        let old_kid = ring.active_kid();
        // A key created a second later, as `zen keys rotate-jwt` does.
        std::thread::sleep(Duration::from_millis(1100));
        let new_kid = KeyRing::rotate(dir.path()).unwrap();
        ring.reload().unwrap();
        assert_eq!(ring.active_kid(), new_kid);
        assert!(ring.verify(&old_token, ISS, AUD).is_ok());
        let kids: Vec<String> = ring.jwks().into_iter().map(|k| k.kid).collect();
        assert_eq!(kids, [old_kid.clone(), new_kid.clone()]);

        // With a zero retirement delay the old key is gone at once.
        let strict = KeyRing::open(dir.path(), Duration::ZERO, false).unwrap();
        assert_eq!(
            strict.verify(&old_token, ISS, AUD),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(strict.jwks().len(), 1);
    }
}
