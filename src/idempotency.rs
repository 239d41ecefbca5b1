//! The gateway's idempotency keys in the shared cache (Redis when configured), so a replayed
//! `X-Request-Id` is recognized by every replica; and who a bearer token names, so a stored
//! answer is replayed only to its principal after the token is checked ([`TokenPrincipal`]).
//!
//! A key holds `{fingerprint, response?}`: claimed with set-if-absent (an in-flight marker with
//! a lease), completed by compare-and-swap from that marker to the stored response.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use zen_cache::Cache;
use zen_gateway::{
    Authenticator, Claim, IdempotencyStore, Principal, StoreError as IdempotencyStoreError,
    StoredResponse,
};

use crate::auth::Auth;

const PREFIX: &str = "idempotency:";

#[derive(Serialize, Deserialize)]
struct Record {
    fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response: Option<StoredResponse>,
}

pub struct CacheIdempotency {
    cache: Arc<dyn Cache>,
}

impl CacheIdempotency {
    pub fn new(cache: Arc<dyn Cache>) -> Self {
        Self { cache }
    }
}

fn failed(error: impl std::fmt::Display) -> IdempotencyStoreError {
    IdempotencyStoreError(error.to_string())
}

#[async_trait]
impl IdempotencyStore for CacheIdempotency {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Claim, IdempotencyStoreError> {
        let key = format!("{PREFIX}{key}");
        let marker = serde_json::to_vec(&Record {
            fingerprint: fingerprint.to_owned(),
            response: None,
        })
        .map_err(failed)?;
        // The record may expire between the failed claim and the read: try again then.
        for _ in 0..3 {
            if self
                .cache
                .set_if_absent(&key, &marker, lease)
                .await
                .map_err(failed)?
            {
                return Ok(Claim::Fresh);
            }
            let Some(raw) = self.cache.get(&key).await.map_err(failed)? else {
                continue;
            };
            let record: Record = serde_json::from_slice(&raw).map_err(failed)?;
            return Ok(match record {
                Record { fingerprint: f, .. } if f != fingerprint => Claim::Mismatch,
                Record {
                    response: Some(response),
                    ..
                } => Claim::Replay(response),
                Record { response: None, .. } => Claim::InProgress,
            });
        }
        Err(IdempotencyStoreError(
            "the idempotency key kept changing".into(),
        ))
    }

    async fn complete(
        &self,
        key: &str,
        response: StoredResponse,
        ttl: Duration,
    ) -> Result<(), IdempotencyStoreError> {
        let key = format!("{PREFIX}{key}");
        let Some(marker) = self.cache.get(&key).await.map_err(failed)? else {
            return Err(IdempotencyStoreError("the in-flight marker expired".into()));
        };
        let record: Record = serde_json::from_slice(&marker).map_err(failed)?;
        let done = serde_json::to_vec(&Record {
            fingerprint: record.fingerprint,
            response: Some(response),
        })
        .map_err(failed)?;
        if self
            .cache
            .compare_and_swap(&key, Some(&marker), &done, ttl)
            .await
            .map_err(failed)?
        {
            Ok(())
        } else {
            Err(IdempotencyStoreError(
                "the idempotency key changed while in flight".into(),
            ))
        }
    }

    async fn release(&self, key: &str) -> Result<(), IdempotencyStoreError> {
        self.cache
            .delete(&format!("{PREFIX}{key}"))
            .await
            .map(|_| ())
            .map_err(failed)
    }
}

/// The gateway's [`Authenticator`]: a person's access token, checked like the gRPC front checks
/// it (signature, expiry, live session), names the person. A refreshed token of the same
/// person is the same principal; a logged-out or forged one is [`Principal::Unverified`].
pub struct TokenPrincipal {
    auth: Arc<Auth>,
}

impl TokenPrincipal {
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

#[async_trait]
impl Authenticator for TokenPrincipal {
    async fn principal(&self, authorization: &str) -> Principal {
        let Some((scheme, token)) = authorization.split_once(' ') else {
            return Principal::Unverified;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Principal::Unverified;
        }
        match self.auth.authenticate(token.trim()).await {
            Ok(principal) => Principal::Known(format!("user:{}", principal.user_id)),
            Err(_) => Principal::Unverified,
        }
    }
}
