//! Webhook source secrets: generating them and checking the ones tenants bring.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

use crate::verify::Scheme;

/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest secret accepted.
pub const MAX_SECRET_LEN: usize = 1024;

/// Fills a buffer from the operating system's generator.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS generator failing means the machine cannot do cryptography at all; there is no
    // sensible fallback, and continuing with a predictable secret would be worse than stopping.
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    bytes
}

/// A new secret for `scheme`: for Standard Webhooks `whsec_` + base64 of 24 random bytes (the
/// format its libraries expect); for every other scheme 32 random bytes as unpadded base64url
/// (43 characters, safe in headers and URLs).
pub fn generate_secret(scheme: &Scheme) -> String {
    match scheme {
        Scheme::StandardWebhooks => format!("whsec_{}", STANDARD.encode(random_bytes::<24>())),
        _ => URL_SAFE_NO_PAD.encode(random_bytes::<32>()),
    }
}

/// Checks a secret a tenant supplies for `scheme`. The message is safe to show (it never
/// repeats the secret).
///
/// Every secret: 16 to 1024 characters, no control characters, no leading or trailing space
/// (it must survive being sent in a header). Standard Webhooks: `whsec_<base64 key>` (at least 16
/// key bytes) or `whpk_<base64 32-byte ed25519 public key>`.
pub fn validate_secret(scheme: &Scheme, secret: &str) -> Result<(), String> {
    let chars = secret.chars().count();
    if chars < MIN_SECRET_LEN {
        return Err(format!("must be at least {MIN_SECRET_LEN} characters"));
    }
    if secret.len() > MAX_SECRET_LEN {
        return Err(format!("must be at most {MAX_SECRET_LEN} bytes"));
    }
    if secret.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if secret.trim() != secret {
        return Err("must not start or end with white space".into());
    }
    if matches!(scheme, Scheme::StandardWebhooks) {
        if let Some(b64) = secret.strip_prefix("whsec_") {
            let key = decode(b64).ok_or("the part after `whsec_` must be base64")?;
            if key.len() < 16 {
                return Err("the key after `whsec_` must decode to at least 16 bytes".into());
            }
        } else if let Some(b64) = secret.strip_prefix("whpk_") {
            let key: [u8; 32] = decode(b64).and_then(|k| k.try_into().ok()).ok_or(
                "the part after `whpk_` must be the base64 of a 32-byte ed25519 public key",
            )?;
            ed25519_dalek::VerifyingKey::from_bytes(&key)
                .map_err(|_| "the key after `whpk_` is not a valid ed25519 public key")?;
        } else {
            return Err("Standard Webhooks secrets start with `whsec_` (HMAC) or `whpk_` (ed25519 public key)".into());
        }
    }
    Ok(())
}

fn decode(b64: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(b64)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_validate_and_differ() {
        for scheme in [Scheme::StandardWebhooks, Scheme::Github, Scheme::Bearer] {
            let a = generate_secret(&scheme);
            let b = generate_secret(&scheme);
            assert_ne!(a, b);
            validate_secret(&scheme, &a).unwrap();
        }
        let sw = generate_secret(&Scheme::StandardWebhooks);
        assert!(sw.starts_with("whsec_"));
        assert_eq!(STANDARD.decode(&sw[6..]).unwrap().len(), 24);
        assert_eq!(generate_secret(&Scheme::Stripe).len(), 43);
    }

    #[test]
    fn bad_secrets_are_refused_with_reasons() {
        assert!(validate_secret(&Scheme::Github, "short")
            .unwrap_err()
            .contains("16"));
        assert!(validate_secret(&Scheme::Github, "sixteen-chars-ok\n").is_err());
        assert!(validate_secret(&Scheme::Github, " sixteen-chars-ok").is_err());
        assert!(validate_secret(&Scheme::StandardWebhooks, "no-prefix-but-long-enough").is_err());
        assert!(validate_secret(&Scheme::StandardWebhooks, "whsec_!!!not-base64!!!").is_err());
        assert!(validate_secret(&Scheme::StandardWebhooks, "whsec_c2hvcnRrZXk=").is_err());
        assert!(
            validate_secret(&Scheme::StandardWebhooks, "whpk_c2hvcnRrZXlzaG9ydGtleQ==").is_err()
        );
        validate_secret(&Scheme::Stripe, "whsec_anything-goes-for-stripe").unwrap();
    }
}
