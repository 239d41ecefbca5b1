//! Verification of one webhook delivery against a source's scheme and secrets.
//!
//! One entry point, [`verify`]. Every secret given is tried (rotation overlap), and headers that
//! carry several signatures (Standard Webhooks, Stripe, Zen) are accepted when any signature
//! matches any secret. Signatures are compared in constant time (`Mac::verify_slice`, ed25519
//! verification, or `subtle` over SHA-256 digests for static credentials), so response timing
//! says nothing about how much of a guess was right.
//!
//! The signature is checked before the timestamp: a stale timestamp is only reported for an
//! authentic delivery, so the `stale_timestamp` metric counts genuine late or replayed
//! deliveries and tampered requests all count as `bad_signature`.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Longest nonce the `zen-hmac` scheme accepts.
pub const MAX_NONCE_LEN: usize = 128;

/// A verification scheme with its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Zen's own scheme. Headers `X-Timestamp` (Unix seconds), `X-Nonce` (1 to 128 characters of
    /// `[A-Za-z0-9_:+/=-]`), `X-Signature`: lower-case hex of
    /// `HMAC-SHA256(secret, "{timestamp}.{nonce}.{body}")` where secret is the secret's UTF-8
    /// bytes and body the exact request body bytes. Several space-separated signatures are
    /// allowed. The nonce is the delivery id. A nonce cannot contain `.`, so the canonical string
    /// splits back into exactly one (timestamp, nonce, body).
    ZenHmac,
    /// Standard Webhooks 1.0: `webhook-id`, `webhook-timestamp`, `webhook-signature` with
    /// space-separated `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` entries (key:
    /// base64 after `whsec_`) and `v1a,<base64 ed25519 signature of the same content>` entries
    /// (verified with `whpk_<base64 public key>` secrets). The delivery id is `webhook-id`.
    StandardWebhooks,
    /// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`; delivery id
    /// `X-GitHub-Delivery`; no timestamp.
    Github,
    /// Stripe: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>` (several
    /// `v1`; other schemes such as `v0` are ignored); delivery id is the payload's `id`.
    Stripe,
    /// Slack: `X-Slack-Request-Timestamp`, `X-Slack-Signature: v0=<hex
    /// HMAC-SHA256(secret, "v0:{timestamp}:{body}")>`; no delivery id.
    Slack,
    /// Shopify: `X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(secret, body)>`; delivery id
    /// `X-Shopify-Webhook-Id`; no timestamp.
    Shopify,
    /// A configurable HMAC scheme.
    GenericHmac(GenericHmac),
    /// `Authorization: Bearer <secret>`; no body signature, no timestamp.
    Bearer,
    /// `Authorization: Basic base64(<username>:<secret>)`; no body signature, no timestamp.
    Basic {
        /// The expected user name.
        username: String,
    },
}

impl Scheme {
    /// The scheme's name as used in metrics and documentation (`zen-hmac`, `github`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::ZenHmac => "zen-hmac",
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::Github => "github",
            Scheme::Stripe => "stripe",
            Scheme::Slack => "slack",
            Scheme::Shopify => "shopify",
            Scheme::GenericHmac(_) => "generic-hmac",
            Scheme::Bearer => "bearer",
            Scheme::Basic { .. } => "basic",
        }
    }

    /// Whether [`Verified::delivery_id`] is covered by the signature. When it is not (GitHub's
    /// and Shopify's id headers, a generic id header outside the template), anyone replaying a
    /// captured request can change it, so it must not be what replay protection keys on.
    pub fn signs_delivery_id(&self) -> bool {
        match self {
            Scheme::ZenHmac | Scheme::StandardWebhooks | Scheme::Stripe => true,
            Scheme::GenericHmac(g) => {
                g.delivery_id_header.is_some() && g.template_uses_delivery_id()
            }
            Scheme::Github
            | Scheme::Shopify
            | Scheme::Slack
            | Scheme::Bearer
            | Scheme::Basic { .. } => false,
        }
    }

    /// Whether deliveries carry a signed timestamp (so replays are bounded by the tolerance).
    pub fn signs_timestamp(&self) -> bool {
        match self {
            Scheme::ZenHmac | Scheme::StandardWebhooks | Scheme::Stripe | Scheme::Slack => true,
            Scheme::GenericHmac(g) => g.template_uses_timestamp(),
            Scheme::Github | Scheme::Shopify | Scheme::Bearer | Scheme::Basic { .. } => false,
        }
    }
}

/// HMAC hash function of the generic scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HmacAlgorithm {
    /// HMAC-SHA256.
    #[default]
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// Text encoding of a generic signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SignatureEncoding {
    /// Hexadecimal, either case.
    #[default]
    Hex,
    /// Standard base64 (padding optional).
    Base64,
}

/// One piece of a signed-content template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Body,
    Timestamp,
    DeliveryId,
    Header(String),
}

/// Settings of the generic HMAC scheme. Build it with [`GenericHmac::new`], which checks them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenericHmac {
    signature_header: String,
    algorithm: HmacAlgorithm,
    encoding: SignatureEncoding,
    prefix: String,
    template: Vec<Part>,
    timestamp_header: Option<String>,
    delivery_id_header: Option<String>,
}

impl GenericHmac {
    /// Checks and compiles the settings. `signed_content` is a template with the placeholders
    /// `{body}`, `{timestamp}`, `{delivery_id}` and `{header:<name>}`; empty means `{body}`.
    /// `{timestamp}` needs `timestamp_header`, `{delivery_id}` needs `delivery_id_header`.
    /// Errors name the offending setting (`signature_header`, `signed_content`, ...).
    pub fn new(
        signature_header: &str,
        algorithm: HmacAlgorithm,
        encoding: SignatureEncoding,
        prefix: &str,
        signed_content: &str,
        timestamp_header: Option<&str>,
        delivery_id_header: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let header = |field: &'static str, name: &str| -> Result<String, ConfigError> {
            if is_header_name(name) {
                Ok(name.to_ascii_lowercase())
            } else {
                Err(ConfigError::new(
                    field,
                    format!("`{name}` is not an HTTP header name"),
                ))
            }
        };
        let signature_header = header("signature_header", signature_header)?;
        let timestamp_header = timestamp_header
            .filter(|h| !h.is_empty())
            .map(|h| header("timestamp_header", h))
            .transpose()?;
        let delivery_id_header = delivery_id_header
            .filter(|h| !h.is_empty())
            .map(|h| header("delivery_id_header", h))
            .transpose()?;
        if prefix.len() > 64 || prefix.chars().any(|c| c.is_control()) {
            return Err(ConfigError::new(
                "signature_prefix",
                "must be at most 64 printable characters",
            ));
        }
        let template = parse_template(if signed_content.is_empty() {
            "{body}"
        } else {
            signed_content
        })?;
        for part in &template {
            match part {
                Part::Timestamp if timestamp_header.is_none() => {
                    return Err(ConfigError::new(
                        "signed_content",
                        "`{timestamp}` needs timestamp_header",
                    ))
                }
                Part::DeliveryId if delivery_id_header.is_none() => {
                    return Err(ConfigError::new(
                        "signed_content",
                        "`{delivery_id}` needs delivery_id_header",
                    ))
                }
                _ => {}
            }
        }
        if timestamp_header.is_some() && !template.contains(&Part::Timestamp) {
            return Err(ConfigError::new(
                "signed_content",
                "must contain `{timestamp}` when timestamp_header is set: an unsigned timestamp proves nothing, so it could not be checked",
            ));
        }
        if !template.contains(&Part::Body) {
            return Err(ConfigError::new(
                "signed_content",
                "must contain `{body}`: a signature that does not cover the body proves nothing about it",
            ));
        }
        Ok(GenericHmac {
            signature_header,
            algorithm,
            encoding,
            prefix: prefix.to_owned(),
            template,
            timestamp_header,
            delivery_id_header,
        })
    }

    fn template_uses_timestamp(&self) -> bool {
        self.template.contains(&Part::Timestamp)
    }

    fn template_uses_delivery_id(&self) -> bool {
        self.template.contains(&Part::DeliveryId)
    }
}

fn parse_template(template: &str) -> Result<Vec<Part>, ConfigError> {
    if template.len() > 1024 {
        return Err(ConfigError::new(
            "signed_content",
            "must be at most 1024 characters",
        ));
    }
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| ConfigError::new("signed_content", "a `{` has no matching `}`"))?;
        let name = &after[..close];
        parts.push(match name {
            "body" => Part::Body,
            "timestamp" => Part::Timestamp,
            "delivery_id" => Part::DeliveryId,
            _ => match name.strip_prefix("header:") {
                Some(h) if is_header_name(h) => Part::Header(h.to_ascii_lowercase()),
                _ => {
                    return Err(ConfigError::new(
                        "signed_content",
                        format!(
                            "unknown placeholder `{{{name}}}` (known: {{body}}, {{timestamp}}, {{delivery_id}}, {{header:<name>}})"
                        ),
                    ))
                }
            },
        });
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(ConfigError::new(
            "signed_content",
            "a `}` has no matching `{`",
        ));
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_owned()));
    }
    Ok(parts)
}

/// An RFC 9110 token, the syntax of header names.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Settings that cannot work, with the name of the setting at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The setting, e.g. `signed_content`.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            field,
            message: message.into(),
        }
    }
}

/// One delivery as received: header names lower-cased, the exact body bytes.
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    /// Request headers, names in lower case.
    pub headers: &'a HashMap<String, String>,
    /// The body exactly as received.
    pub body: &'a [u8],
}

impl Delivery<'_> {
    /// A header's value; `name` must be lower case.
    fn header(&self, name: &'static str) -> Result<&str, Failure> {
        self.headers
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(|v| v as &str)
            .ok_or(Failure::MissingHeader(name))
    }

    fn optional_header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

/// What a successful verification learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The delivery id or nonce to remember against replays, when the scheme has one.
    pub delivery_id: Option<String>,
    /// The signed timestamp (Unix seconds), when the scheme has one.
    pub timestamp: Option<i64>,
    /// Index into the secrets given of the one that verified.
    pub secret_index: usize,
}

/// Why a delivery was refused. Callers answer every failure with the same generic 401; the
/// [`label`](Failure::label) goes to metrics and the [`Display`](fmt::Display) text to logs
/// (it names a header at most, never a value or a secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A required header is absent or empty.
    MissingHeader(&'static str),
    /// A header is present but unreadable.
    Malformed(&'static str),
    /// No signature matches any secret.
    BadSignature,
    /// The signature is right but the timestamp is outside the tolerance.
    StaleTimestamp,
    /// None of the secrets can check the kind of signature offered (e.g. only `v1a` signatures
    /// and no `whpk_` secret), or there is no secret at all.
    UnknownKey,
}

impl Failure {
    /// The metric label: `missing_header`, `malformed`, `bad_signature`, `stale_timestamp` or
    /// `unknown_key`.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::MissingHeader(_) => "missing_header",
            Failure::Malformed(_) => "malformed",
            Failure::BadSignature => "bad_signature",
            Failure::StaleTimestamp => "stale_timestamp",
            Failure::UnknownKey => "unknown_key",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::MissingHeader(h) => write!(f, "header {h} is missing"),
            Failure::Malformed(what) => write!(f, "malformed {what}"),
            Failure::BadSignature => f.write_str("no signature matches any secret"),
            Failure::StaleTimestamp => f.write_str("timestamp outside the tolerance"),
            Failure::UnknownKey => f.write_str("no secret can check the signatures offered"),
        }
    }
}

impl std::error::Error for Failure {}

/// Verifies `delivery` under `scheme` against every secret in `secrets` (in order; the index of
/// the one that matched is returned). `now_unix` is the current time in Unix seconds and
/// `tolerance` the allowed clock difference for schemes that sign a timestamp.
///
/// Replay protection is the caller's: remember [`Verified::delivery_id`] (for schemes with a
/// signed timestamp, for at least the tolerance window) and refuse it when seen again.
pub fn verify<S: AsRef<str>>(
    scheme: &Scheme,
    delivery: &Delivery<'_>,
    secrets: &[S],
    now_unix: i64,
    tolerance: Duration,
) -> Result<Verified, Failure> {
    if secrets.is_empty() {
        return Err(Failure::UnknownKey);
    }
    let secrets: Vec<&str> = secrets.iter().map(AsRef::as_ref).collect();
    let (verified, timestamp) = match scheme {
        Scheme::ZenHmac => zen_hmac(delivery, &secrets)?,
        Scheme::StandardWebhooks => standard_webhooks(delivery, &secrets)?,
        Scheme::Github => github(delivery, &secrets)?,
        Scheme::Stripe => stripe(delivery, &secrets)?,
        Scheme::Slack => slack(delivery, &secrets)?,
        Scheme::Shopify => shopify(delivery, &secrets)?,
        Scheme::GenericHmac(config) => generic(config, delivery, &secrets)?,
        Scheme::Bearer => bearer(delivery, &secrets)?,
        Scheme::Basic { username } => basic(username, delivery, &secrets)?,
    };
    if let Some(ts) = timestamp {
        let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
        if now_unix.abs_diff(ts) > tolerance.unsigned_abs() {
            return Err(Failure::StaleTimestamp);
        }
    }
    Ok(Verified {
        timestamp,
        ..verified
    })
}

type Outcome = Result<(Verified, Option<i64>), Failure>;

fn found(secret_index: usize, delivery_id: Option<String>, timestamp: Option<i64>) -> Outcome {
    Ok((
        Verified {
            delivery_id,
            timestamp,
            secret_index,
        },
        timestamp,
    ))
}

/// Unix seconds as a decimal integer (an optional leading `+`/`-` is refused, as are spaces).
fn parse_timestamp(value: &str, what: &'static str) -> Result<i64, Failure> {
    if value.is_empty() || value.len() > 18 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Failure::Malformed(what));
    }
    value.parse().map_err(|_| Failure::Malformed(what))
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// The index of the first secret whose HMAC-SHA256 over `parts` equals one of `signatures`.
fn match_sha256(keys: &[&[u8]], parts: &[&[u8]], signatures: &[Vec<u8>]) -> Option<usize> {
    keys.iter().position(|key| {
        let mac = hmac_sha256(key, parts);
        // Every signature is compared (no early exit on a match position that could be timed).
        signatures.iter().fold(false, |hit, sig| {
            mac.clone().verify_slice(sig).is_ok() | hit
        })
    })
}

fn utf8_keys<'s>(secrets: &[&'s str]) -> Vec<&'s [u8]> {
    secrets.iter().map(|s| s.as_bytes()).collect()
}

fn zen_hmac(d: &Delivery<'_>, secrets: &[&str]) -> Outcome {
    let ts_text = d.header("x-timestamp")?;
    let nonce = d.header("x-nonce")?;
    let signature = d.header("x-signature")?;
    let ts = parse_timestamp(ts_text, "X-Timestamp")?;
    if !valid_nonce(nonce) {
        return Err(Failure::Malformed("X-Nonce"));
    }
    let signatures = signature
        .split_ascii_whitespace()
        .map(|s| hex::decode(s).map_err(|_| Failure::Malformed("X-Signature")))
        .collect::<Result<Vec<_>, _>>()?;
    let parts: [&[u8]; 5] = [ts_text.as_bytes(), b".", nonce.as_bytes(), b".", d.body];
    match match_sha256(&utf8_keys(secrets), &parts, &signatures) {
        Some(i) => found(i, Some(nonce.to_owned()), Some(ts)),
        None => Err(Failure::BadSignature),
    }
}

/// 1 to 128 characters of `[A-Za-z0-9_:+/=-]`: UUIDs, hex and base64 fit; `.` is excluded so the
/// canonical string `{timestamp}.{nonce}.{body}` has one reading only.
pub fn valid_nonce(nonce: &str) -> bool {
    (1..=MAX_NONCE_LEN).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_:+/=-".contains(&b))
}

/// The key bytes of a Standard Webhooks symmetric secret (`whsec_<base64>`; the prefix is
/// optional, as in the reference libraries).
fn whsec_key(secret: &str) -> Option<Vec<u8>> {
    if secret.starts_with("whpk_") {
        return None;
    }
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    decode_base64(b64).filter(|k| !k.is_empty())
}

fn whpk_key(secret: &str) -> Option<ed25519_dalek::VerifyingKey> {
    let bytes: [u8; 32] = decode_base64(secret.strip_prefix("whpk_")?)?
        .try_into()
        .ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()
}

/// Standard base64, padded or not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(text)
        .or_else(|_| STANDARD_NO_PAD.decode(text))
        .ok()
}

fn standard_webhooks(d: &Delivery<'_>, secrets: &[&str]) -> Outcome {
    let id = d.header("webhook-id")?;
    let ts_text = d.header("webhook-timestamp")?;
    let header = d.header("webhook-signature")?;
    let ts = parse_timestamp(ts_text, "webhook-timestamp")?;
    // Dots are allowed, as in the reference libraries: a signed string re-read with a longer
    // id needs a body starting with a fresh timestamp and a `.`, which JSON bodies never do.
    if id.len() > 256 {
        return Err(Failure::Malformed("webhook-id"));
    }
    let mut v1 = Vec::new();
    let mut v1a = Vec::new();
    for entry in header.split_ascii_whitespace() {
        let Some((version, sig)) = entry.split_once(',') else {
            return Err(Failure::Malformed("webhook-signature"));
        };
        match version {
            "v1" => v1.push(decode_base64(sig).ok_or(Failure::Malformed("webhook-signature"))?),
            "v1a" => v1a.push(decode_base64(sig).ok_or(Failure::Malformed("webhook-signature"))?),
            // Versions from the future are skipped, as the specification asks.
            _ => {}
        }
    }
    if v1.is_empty() && v1a.is_empty() {
        return Err(Failure::Malformed("webhook-signature"));
    }
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts_text.as_bytes(), b".", d.body];
    let mut usable = false;
    for (i, secret) in secrets.iter().enumerate() {
        if !v1.is_empty() {
            if let Some(key) = whsec_key(secret) {
                usable = true;
                if match_sha256(&[&key], &parts, &v1).is_some() {
                    return found(i, Some(id.to_owned()), Some(ts));
                }
            }
        }
        if !v1a.is_empty() {
            if let Some(key) = whpk_key(secret) {
                usable = true;
                let message = parts.concat();
                let hit = v1a.iter().any(|sig| {
                    <[u8; 64]>::try_from(sig.as_slice()).is_ok_and(|bytes| {
                        key.verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&bytes))
                            .is_ok()
                    })
                });
                if hit {
                    return found(i, Some(id.to_owned()), Some(ts));
                }
            }
        }
    }
    Err(if usable {
        Failure::BadSignature
    } else {
        Failure::UnknownKey
    })
}

fn github(d: &Delivery<'_>, secrets: &[&str]) -> Outcome {
    let header = d.header("x-hub-signature-256")?;
    let sig = header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(Failure::Malformed("X-Hub-Signature-256"))?;
    match match_sha256(&utf8_keys(secrets), &[d.body], &[sig]) {
        Some(i) => found(i, d.optional_header("x-github-delivery"), None),
        None => Err(Failure::BadSignature),
    }
}

fn stripe(d: &Delivery<'_>, secrets: &[&str]) -> Outcome {
    let header = d.header("stripe-signature")?;
    let mut ts_text = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            return Err(Failure::Malformed("Stripe-Signature"));
        };
        match key {
            // The first `t` counts, as in Stripe's own libraries.
            "t" if ts_text.is_none() => ts_text = Some(value),
            // A v1 value that is not hex can match nothing; it does not spoil the others.
            "v1" => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let ts_text = ts_text.ok_or(Failure::Malformed("Stripe-Signature"))?;
    let ts = parse_timestamp(ts_text, "Stripe-Signature")?;
    if signatures.is_empty() {
        return Err(Failure::Malformed("Stripe-Signature"));
    }
    let parts: [&[u8]; 3] = [ts_text.as_bytes(), b".", d.body];
    match match_sha256(&utf8_keys(secrets), &parts, &signatures) {
        Some(i) => found(i, stripe_event_id(d.body), Some(ts)),
        None => Err(Failure::BadSignature),
    }
}

/// The `id` of a Stripe event payload (`evt_...`), the natural delivery id.
fn stripe_event_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Event {
        id: Option<String>,
    }
    serde_json::from_slice::<Event>(body)
        .ok()?
        .id
        .filter(|id| !id.is_empty() && id.len() <= 256)
}

fn slack(d: &Delivery<'_>, secrets: &[&str]) -> Outcome {
    let ts_text = d.header("x-slack-request-timestamp")?;
    let header = d.header("x-slack-signature")?;
    let ts = parse_timestamp(ts_text, "X-Slack-Request-Timestamp")?;
    let sig = header
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(Failure::Malformed("X-Slack-Signature"))?;
    let parts: [&[u8]; 4] = [b"v0:", ts_text.as_bytes(), b":", d.body];
    match match_sha256(&utf8_keys(secrets), &parts, &[sig]) {
        Some(i) => found(i, None, Some(ts)),
        None => Err(Failure::BadSignature),
    }
}

/// The challenge of a Slack `url_verification` payload
/// (`{"type": "url_verification", "challenge": "..."}`), to be answered as the response body.
///
/// Call it only after [`verify`] succeeded under [`Scheme::Slack`]: answering challenges to
/// unsigned requests would let anyone confirm the URL is live and echo content through it.
pub fn slack_url_verification(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Challenge {
        #[serde(rename = "type")]
        kind: String,
        challenge: String,
    }
    let payload: Challenge = serde_json::from_slice(body).ok()?;
    (payload.kind == "url_verification" && payload.challenge.len() <= 1024)
        .then_some(payload.challenge)
}

fn shopify(d: &Delivery<'_>, secrets: &[&str]) -> Outcome {
    let header = d.header("x-shopify-hmac-sha256")?;
    let sig = decode_base64(header).ok_or(Failure::Malformed("X-Shopify-Hmac-Sha256"))?;
    match match_sha256(&utf8_keys(secrets), &[d.body], &[sig]) {
        Some(i) => found(i, d.optional_header("x-shopify-webhook-id"), None),
        None => Err(Failure::BadSignature),
    }
}

fn generic(g: &GenericHmac, d: &Delivery<'_>, secrets: &[&str]) -> Outcome {
    let header = d
        .headers
        .get(&g.signature_header)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .ok_or(Failure::MissingHeader("signature header"))?;
    let encoded = header
        .strip_prefix(g.prefix.as_str())
        .ok_or(Failure::Malformed("signature header"))?;
    let sig = match g.encoding {
        SignatureEncoding::Hex => hex::decode(encoded).ok(),
        SignatureEncoding::Base64 => decode_base64(encoded),
    }
    .ok_or(Failure::Malformed("signature header"))?;
    let lookup = |name: &str| -> Result<&str, Failure> {
        d.headers
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .ok_or(Failure::MissingHeader("header named in the signed content"))
    };
    let ts_text = g
        .timestamp_header
        .as_deref()
        .map(|h| lookup(h).map_err(|_| Failure::MissingHeader("timestamp header")))
        .transpose()?;
    let ts = ts_text
        .map(|t| parse_timestamp(t, "timestamp header"))
        .transpose()?;
    let delivery_id = g
        .delivery_id_header
        .as_deref()
        .map(|h| lookup(h).map_err(|_| Failure::MissingHeader("delivery id header")))
        .transpose()?;
    let mut parts: Vec<&[u8]> = Vec::with_capacity(g.template.len());
    for part in &g.template {
        parts.push(match part {
            Part::Literal(text) => text.as_bytes(),
            Part::Body => d.body,
            // Present by construction: the template was checked against the headers configured.
            Part::Timestamp => ts_text.unwrap_or_default().as_bytes(),
            Part::DeliveryId => delivery_id.unwrap_or_default().as_bytes(),
            Part::Header(name) => lookup(name)?.as_bytes(),
        });
    }
    let hit = secrets.iter().position(|secret| match g.algorithm {
        HmacAlgorithm::Sha256 => hmac_sha256(secret.as_bytes(), &parts)
            .verify_slice(&sig)
            .is_ok(),
        HmacAlgorithm::Sha512 => {
            let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(secret.as_bytes())
                .expect("HMAC accepts any key length");
            for part in &parts {
                mac.update(part);
            }
            mac.verify_slice(&sig).is_ok()
        }
    });
    match hit {
        // The timestamp is signed: `new` refuses a timestamp header without `{timestamp}`.
        Some(i) => found(i, delivery_id.map(str::to_owned), ts),
        None => Err(Failure::BadSignature),
    }
}

/// Constant-time equality that also hides the lengths: both sides are hashed first.
fn ct_eq_hidden_len(a: &[u8], b: &[u8]) -> bool {
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}

/// The credentials of an `Authorization: <scheme> <credentials>` header (scheme case-insensitive).
fn authorization<'d>(d: &'d Delivery<'_>, scheme: &str) -> Result<&'d str, Failure> {
    let value = d.header("authorization")?;
    let (given, credentials) = value
        .split_once(' ')
        .ok_or(Failure::Malformed("Authorization"))?;
    if !given.eq_ignore_ascii_case(scheme) {
        return Err(Failure::Malformed("Authorization"));
    }
    Ok(credentials.trim())
}

fn bearer(d: &Delivery<'_>, secrets: &[&str]) -> Outcome {
    let token = authorization(d, "Bearer")?;
    let mut hit = None;
    for (i, secret) in secrets.iter().enumerate() {
        // Every secret is compared, whatever matched before, so timing does not reveal which.
        if ct_eq_hidden_len(token.as_bytes(), secret.as_bytes()) && hit.is_none() {
            hit = Some(i);
        }
    }
    match hit {
        Some(i) => found(i, None, None),
        None => Err(Failure::BadSignature),
    }
}

fn basic(username: &str, d: &Delivery<'_>, secrets: &[&str]) -> Outcome {
    let credentials = authorization(d, "Basic")?;
    let decoded = decode_base64(credentials).ok_or(Failure::Malformed("Authorization"))?;
    let split = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or(Failure::Malformed("Authorization"))?;
    let (user, password) = (&decoded[..split], &decoded[split + 1..]);
    let user_ok = ct_eq_hidden_len(user, username.as_bytes());
    let mut hit = None;
    for (i, secret) in secrets.iter().enumerate() {
        if ct_eq_hidden_len(password, secret.as_bytes()) && hit.is_none() {
            hit = Some(i);
        }
    }
    match hit {
        Some(i) if user_ok => found(i, None, None),
        _ => Err(Failure::BadSignature),
    }
}
