//! Webhook deliveries to Zen's per-tenant webhook sources: everything that does not touch the
//! network or the store.
//!
//! - [`verify`]: the provider signature schemes (`zen-hmac`, Standard Webhooks, GitHub,
//!   Stripe, Slack, Shopify, a configurable HMAC, bearer and basic credentials), one entry
//!   point, constant-time comparisons, every secret of a rotation tried;
//! - [`secrets`]: generating secrets and checking the ones tenants bring;
//! - [`sealing`]: secrets encrypted at rest under a configurable key ring;
//! - [`schema`]: JSON Schema checks of payloads;
//! - [`mapping`]: payloads turned into normalized security events by JSON-pointer rules.
//!
//! The crate knows no generated protobuf code: the service converts contract messages into
//! these types.
//!
//! # The `zen-hmac` canonical string
//! A sender signs `"{timestamp}.{nonce}.{body}"`, the `X-Timestamp` header value (Unix seconds,
//! decimal), a `.`, the `X-Nonce` header value (1 to 128 characters of `[A-Za-z0-9_:+/=-]`), a
//! `.`, then the exact body bytes; `X-Signature` is the lower-case hex of HMAC-SHA256 over it
//! keyed by the secret's UTF-8 bytes. For example, with secret `0123456789abcdef`, timestamp
//! `1700000000`, nonce `n-1` and body `{}` the signed string is `1700000000.n-1.{}`.

pub mod mapping;
pub mod schema;
pub mod sealing;
pub mod secrets;
pub mod verify;

pub use mapping::{map, MapDefaults, MappedEvent, Mapping, MappingError};
pub use sealing::{SealError, SecretSealer};
pub use secrets::{generate_secret, validate_secret};
pub use verify::{
    slack_url_verification, verify, Delivery, Failure, GenericHmac, HmacAlgorithm, Scheme,
    SignatureEncoding, Verified,
};
