//! Idempotent replay of mutating calls, keyed by `X-Request-Id`.
//!
//! The store is a trait so Zen plugs in its shared cache (Redis across replicas); an in-memory
//! implementation ships for tests and single-process use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A response kept for replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type` of the body.
    pub content_type: String,
    /// The body, byte for byte.
    pub body: Vec<u8>,
    /// The `x-request-id` answered.
    pub request_id: String,
    /// `Location` header, if the answer was a redirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// Outcome of claiming an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free and is now held by this call: run it, then `complete` or `release`.
    Fresh,
    /// Another call with this key (and fingerprint) is still running.
    InProgress,
    /// A call with this key and fingerprint already finished: answer its response.
    Replay(StoredResponse),
    /// The key was used with a different request.
    Mismatch,
}

/// Errors of an idempotency store (e.g. the shared cache is unreachable).
#[derive(Debug, thiserror::Error)]
#[error("idempotency store: {0}")]
pub struct StoreError(pub String);

/// Where idempotency keys live. Implementations must make `claim` atomic (set-if-absent), so
/// that of two concurrent calls with one key exactly one gets [`Claim::Fresh`].
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` for a request with `fingerprint`. A fresh claim is an in-flight marker that
    /// expires after `lease` (so a crashed gateway does not hold the key for long).
    async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError>;
    /// Stores the response of the call holding `key`, kept for `ttl`.
    async fn complete(
        &self,
        key: &str,
        response: StoredResponse,
        ttl: Duration,
    ) -> Result<(), StoreError>;
    /// Drops the key (the call failed in a retryable way), so a retry runs again.
    async fn release(&self, key: &str) -> Result<(), StoreError>;
}

enum State {
    InFlight,
    Done(StoredResponse),
}

struct Entry {
    fingerprint: String,
    state: State,
    expires: Instant,
}

/// A process-local [`IdempotencyStore`]; not shared across replicas.
#[derive(Default)]
pub struct MemoryIdempotencyStore {
    entries: Mutex<HashMap<String, Entry>>,
}

impl MemoryIdempotencyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of live keys (for tests).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.lock().values().filter(|e| e.expires > now).count()
    }

    /// True when no key is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() > 10_000 {
            entries.retain(|_, e| e.expires > now);
        }
        match entries.get(key) {
            Some(e) if e.expires > now => {
                if e.fingerprint != fingerprint {
                    return Ok(Claim::Mismatch);
                }
                Ok(match &e.state {
                    State::InFlight => Claim::InProgress,
                    State::Done(r) => Claim::Replay(r.clone()),
                })
            }
            _ => {
                entries.insert(
                    key.to_owned(),
                    Entry {
                        fingerprint: fingerprint.to_owned(),
                        state: State::InFlight,
                        expires: now + lease,
                    },
                );
                Ok(Claim::Fresh)
            }
        }
    }

    async fn complete(
        &self,
        key: &str,
        response: StoredResponse,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(key) {
            e.state = State::Done(response);
            e.expires = Instant::now() + ttl;
        }
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        self.lock().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lifecycle() {
        let store = MemoryIdempotencyStore::new();
        let lease = Duration::from_secs(5);
        assert_eq!(store.claim("k", "f", lease).await.unwrap(), Claim::Fresh);
        assert_eq!(
            store.claim("k", "f", lease).await.unwrap(),
            Claim::InProgress
        );
        assert_eq!(store.claim("k", "g", lease).await.unwrap(), Claim::Mismatch);
        let stored = StoredResponse {
            status: 200,
            content_type: "application/json".into(),
            body: b"{}".to_vec(),
            request_id: "r".into(),
            location: None,
        };
        store.complete("k", stored.clone(), lease).await.unwrap();
        assert_eq!(
            store.claim("k", "f", lease).await.unwrap(),
            Claim::Replay(stored)
        );
        store.release("k").await.unwrap();
        assert_eq!(
            store.claim("k", "f", Duration::ZERO).await.unwrap(),
            Claim::Fresh
        );
        // An expired claim is free again.
        assert_eq!(store.claim("k", "g", lease).await.unwrap(), Claim::Fresh);
    }
}
