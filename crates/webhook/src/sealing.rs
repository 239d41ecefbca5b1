//! Webhook secrets encrypted at rest.
//!
//! A [`SecretSealer`] holds a key ring (key id → 32-byte key) from configuration and seals each
//! secret as `v1.<key_id>.<base64url(nonce || ciphertext || tag)>` with ChaCha20-Poly1305, a
//! random 96-bit nonce per seal, and associated data that binds the ciphertext to its row
//! (callers pass `"{tenant_id}/{source_id}/{secret_id}"`): a sealed value copied into another
//! row, tenant or source fails to open.
//!
//! ChaCha20-Poly1305 rather than AES-256-GCM: it is constant-time in pure software on every
//! CPU (AES-GCM is only safe and fast with AES-NI/CLMUL, which not every node has), and its
//! security margin is the same. Random 96-bit nonces are fine at this volume: a key would have
//! to seal billions of secrets before a collision became plausible.
//!
//! # Key rotation
//! 1. Generate a key ([`SecretSealer::generate_key`]) and add it to `ZEN_WEBHOOK_SECRET_KEYS`
//!    *first* (the first entry is current): `new:<key>,old:<key>`. Roll the replicas; new seals
//!    use `new`, values sealed under `old` keep opening.
//! 2. Values sealed under `old` keep opening; each secret moves to `new` when the source's
//!    secret is rotated (`RotateWebhookSecret`).
//! 3. When no stored value names `old` any more ([`SecretSealer::needs_reseal`] tells), remove
//!    it from the list and roll again.

use std::collections::HashMap;
use std::fmt;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};

use crate::secrets::random_bytes;

/// Format version of sealed values.
const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Errors of the key ring and of opening sealed values. None carries key or secret material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The key ring configuration is unusable.
    #[error("webhook secret keys: {0}")]
    Config(String),
    /// The value is not a sealed value of a known format.
    #[error("not a sealed secret (expected v1.<key_id>.<data>)")]
    Format,
    /// The value names a key that is not (any more) in the ring.
    #[error("sealed with key `{0}`, which is not configured")]
    UnknownKey(String),
    /// Authentication failed: wrong key, wrong associated data, or a damaged value.
    #[error("the sealed secret does not open (damaged, or sealed for another row)")]
    Open,
}

/// The key ring sealing webhook secrets. Its `Debug` shows key ids only.
#[derive(Clone)]
pub struct SecretSealer {
    keys: HashMap<String, ChaCha20Poly1305>,
    current: String,
    ids: Vec<String>,
}

impl fmt::Debug for SecretSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSealer")
            .field("current", &self.current)
            .field("key_ids", &self.ids)
            .finish_non_exhaustive()
    }
}

fn valid_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl SecretSealer {
    /// A ring of `keys` sealing with `current`. Key ids are 1 to 32 characters of
    /// `[A-Za-z0-9_-]` and unique.
    pub fn new(keys: Vec<(String, [u8; 32])>, current: &str) -> Result<Self, SealError> {
        let mut ring = HashMap::new();
        let mut ids = Vec::new();
        for (id, key) in keys {
            if !valid_key_id(&id) {
                return Err(SealError::Config(format!(
                    "key id `{id}` must be 1 to 32 characters of [A-Za-z0-9_-]"
                )));
            }
            let cipher = ChaCha20Poly1305::new_from_slice(&key)
                .map_err(|_| SealError::Config("keys are 32 bytes".into()))?;
            if ring.insert(id.clone(), cipher).is_some() {
                return Err(SealError::Config(format!("key id `{id}` appears twice")));
            }
            ids.push(id);
        }
        if !ring.contains_key(current) {
            return Err(SealError::Config(format!(
                "the current key `{current}` is not in the ring"
            )));
        }
        Ok(SecretSealer {
            keys: ring,
            current: current.to_owned(),
            ids,
        })
    }

    /// Parses the configuration value `ZEN_WEBHOOK_SECRET_KEYS`: comma-separated
    /// `<key_id>:<base64 32-byte key>` (standard or URL-safe alphabet, padding optional); the
    /// first entry is the current key. Errors name the entry, never the key.
    pub fn from_config(value: &str) -> Result<Self, SealError> {
        let mut keys = Vec::new();
        for (n, entry) in value.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let (id, b64) = entry.split_once(':').ok_or_else(|| {
                SealError::Config(format!("entry {} is not `<key_id>:<base64 key>`", n + 1))
            })?;
            let id = id.trim();
            let key: [u8; 32] = [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(b64.trim()).ok())
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| {
                    SealError::Config(format!("key `{id}` must be the base64 of exactly 32 bytes"))
                })?;
            keys.push((id.to_owned(), key));
        }
        let current = keys
            .first()
            .map(|(id, _)| id.clone())
            .ok_or_else(|| SealError::Config("no key given".into()))?;
        Self::new(keys, &current)
    }

    /// A fresh key as base64 (standard alphabet), for the configuration.
    pub fn generate_key() -> String {
        STANDARD.encode(random_bytes::<32>())
    }

    /// The id of the key new seals use.
    pub fn current_key_id(&self) -> &str {
        &self.current
    }

    /// Encrypts `plaintext` under the current key, bound to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> String {
        let cipher = &self.keys[&self.current];
        let nonce_bytes = random_bytes::<NONCE_LEN>();
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // Only inputs beyond 256 GiB make ChaCha20-Poly1305 refuse to encrypt.
            .expect("ChaCha20-Poly1305 encrypts any secret-sized input");
        let mut data = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        data.extend_from_slice(&nonce_bytes);
        data.extend_from_slice(&ciphertext);
        format!(
            "{VERSION}.{}.{}",
            self.current,
            URL_SAFE_NO_PAD.encode(data)
        )
    }

    /// Decrypts a value made by [`seal`](Self::seal) with the same `aad`, under whichever key of
    /// the ring it names.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let (key_id, data) = parse(sealed)?;
        let cipher = self
            .keys
            .get(key_id)
            .ok_or_else(|| SealError::UnknownKey(key_id.to_owned()))?;
        let nonce: [u8; NONCE_LEN] = data[..NONCE_LEN]
            .try_into()
            .map_err(|_| SealError::Format)?;
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &data[NONCE_LEN..],
                    aad,
                },
            )
            .map_err(|_| SealError::Open)
    }

    /// [`open`](Self::open) for secrets, which are UTF-8.
    pub fn open_string(&self, sealed: &str, aad: &[u8]) -> Result<String, SealError> {
        String::from_utf8(self.open(sealed, aad)?).map_err(|_| SealError::Open)
    }

    /// Whether `sealed` was made under a key other than the current one (re-seal it to let the
    /// old key be retired). Unreadable values also answer true.
    pub fn needs_reseal(&self, sealed: &str) -> bool {
        parse(sealed).map_or(true, |(id, _)| id != self.current)
    }
}

fn parse(sealed: &str) -> Result<(&str, Vec<u8>), SealError> {
    let mut parts = sealed.splitn(3, '.');
    let (Some(VERSION), Some(key_id), Some(data)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SealError::Format);
    };
    let data = URL_SAFE_NO_PAD
        .decode(data)
        .map_err(|_| SealError::Format)?;
    if data.len() < NONCE_LEN + TAG_LEN {
        return Err(SealError::Format);
    }
    Ok((key_id, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(spec: &[(&str, u8)], current: &str) -> SecretSealer {
        SecretSealer::new(
            spec.iter()
                .map(|(id, b)| (id.to_string(), [*b; 32]))
                .collect(),
            current,
        )
        .unwrap()
    }

    #[test]
    fn seal_then_open_round_trips_and_nonces_differ() {
        let sealer = ring(&[("k1", 1)], "k1");
        let a = sealer.seal(b"s3cret-value-0123", b"t/s/1");
        let b = sealer.seal(b"s3cret-value-0123", b"t/s/1");
        assert_ne!(a, b, "a fresh nonce per seal");
        assert!(a.starts_with("v1.k1."));
        assert!(!a.contains("s3cret"));
        assert_eq!(
            sealer.open_string(&a, b"t/s/1").unwrap(),
            "s3cret-value-0123"
        );
    }

    #[test]
    fn the_associated_data_binds_the_value_to_its_row() {
        let sealer = ring(&[("k1", 1)], "k1");
        let sealed = sealer.seal(b"secret", b"tenant-a/source/1");
        assert_eq!(
            sealer.open(&sealed, b"tenant-b/source/1"),
            Err(SealError::Open)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let sealer = ring(&[("k1", 1)], "k1");
        let sealed = sealer.seal(b"secret", b"aad");
        let mut data = URL_SAFE_NO_PAD
            .decode(sealed.rsplit('.').next().unwrap())
            .unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        let forged = format!("v1.k1.{}", URL_SAFE_NO_PAD.encode(&data));
        assert_eq!(sealer.open(&forged, b"aad"), Err(SealError::Open));
        assert_eq!(sealer.open("v2.k1.AAAA", b"aad"), Err(SealError::Format));
        assert_eq!(sealer.open("v1.k1.AAAA", b"aad"), Err(SealError::Format));
    }

    #[test]
    fn rotation_keeps_old_values_opening_and_new_seals_use_the_new_key() {
        let old = ring(&[("old", 1)], "old");
        let sealed_old = old.seal(b"secret", b"aad");
        let rotated = ring(&[("new", 2), ("old", 1)], "new");
        assert_eq!(rotated.open(&sealed_old, b"aad").unwrap(), b"secret");
        assert!(rotated.needs_reseal(&sealed_old));
        let resealed = rotated.seal(b"secret", b"aad");
        assert!(!rotated.needs_reseal(&resealed));
        let retired = ring(&[("new", 2)], "new");
        assert_eq!(
            retired.open(&sealed_old, b"aad"),
            Err(SealError::UnknownKey("old".into()))
        );
        assert_eq!(retired.open(&resealed, b"aad").unwrap(), b"secret");
    }

    #[test]
    fn a_same_named_key_with_other_bytes_does_not_open() {
        let a = ring(&[("k", 1)], "k");
        let b = ring(&[("k", 2)], "k");
        assert_eq!(b.open(&a.seal(b"x", b""), b""), Err(SealError::Open));
    }

    #[test]
    fn config_parsing() {
        let k1 = SecretSealer::generate_key();
        let k2 = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let sealer = SecretSealer::from_config(&format!("2026-11:{k1}, 2026-01:{k2}")).unwrap();
        assert_eq!(sealer.current_key_id(), "2026-11");
        let debug = format!("{sealer:?}");
        assert!(debug.contains("2026-01") && !debug.contains(&k1) && !debug.contains(&k2));

        for (bad, why) in [
            ("", "no key"),
            ("k1", "entry 1"),
            (
                &format!("k1:{}", STANDARD.encode([1u8; 16])) as &str,
                "32 bytes",
            ),
            (&format!("k1:{k1},k1:{k2}"), "twice"),
            (&format!("bad.id:{k1}"), "key id"),
        ] {
            let err = SecretSealer::from_config(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(!err.contains(&k1), "errors never print keys");
        }
    }
}
