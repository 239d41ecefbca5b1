//! Authentication of people: access tokens, sessions and refresh-token families.
//!
//! - Access tokens are RS256 JWTs signed by the key ring (`zen_security::jwt`), carrying the
//!   session id (`sid`). [`Auth::authenticate`] is the one validation used by the gRPC
//!   authorization layer and by `AuthService.ValidateToken`.
//! - A session lives in the shared cache (`session:<sid>`) with the hash of its current
//!   refresh token. Refresh tokens (`zrt.<sid>.<secret>`) are opaque and rotate on every use;
//!   presenting one that was already rotated away means it was stolen, so the whole session is
//!   revoked. Logout deletes the session, which refuses its access tokens at once on every
//!   replica (they all read the same cache).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zen_cache::Cache;
use zen_security::jwt::{Claims, KeyRing, TokenError};
use zen_store::{Scope, Store, User};

/// How many rotated-away refresh tokens a session remembers for reuse detection.
const REMEMBERED_TOKENS: usize = 64;
const SESSION_PREFIX: &str = "session:";
const REFRESH_PREFIX: &str = "zrt";

/// Token settings.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// `iss` of access tokens (the public URL of Zen).
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    pub access_ttl: Duration,
    /// Absolute lifetime of a session.
    pub session_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token")]
    InvalidToken(#[from] TokenError),
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    #[error("refresh token reused; the session was revoked")]
    RefreshTokenReused,
    #[error("cache: {0}")]
    Cache(#[from] zen_cache::CacheError),
    #[error("store: {0}")]
    Store(#[from] zen_store::StoreError),
    #[error("signing: {0}")]
    Signing(String),
}

/// A verified person behind an access token.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: Uuid,
    pub session_id: String,
    pub claims: Claims,
}

/// Tokens handed to a client after login or refresh.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub access_token: String,
    pub access_expires_in: Duration,
    pub refresh_token: String,
    pub refresh_expires_in: Duration,
    pub session_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Session {
    user_id: Uuid,
    current: String,
    #[serde(default)]
    previous: Vec<String>,
    expires_at: i64,
}

pub struct Auth {
    settings: AuthSettings,
    keys: KeyRing,
    cache: Arc<dyn Cache>,
    store: Arc<Store>,
}

fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    hex::encode(bytes)
}

fn session_of_refresh_token(token: &str) -> Option<&str> {
    let mut parts = token.splitn(3, '.');
    (parts.next()? == REFRESH_PREFIX).then_some(())?;
    let sid = parts.next()?;
    let secret = parts.next()?;
    (Uuid::parse_str(sid).is_ok() && secret.len() == 64).then_some(sid)
}

impl Auth {
    pub fn new(
        settings: AuthSettings,
        keys: KeyRing,
        cache: Arc<dyn Cache>,
        store: Arc<Store>,
    ) -> Self {
        Self {
            settings,
            keys,
            cache,
            store,
        }
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Validates an access token: signature (RS256, known `kid`), issuer, audience, times, and
    /// that its session is still alive.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self
            .keys
            .verify(token, &self.settings.issuer, &self.settings.audience)?;
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| TokenError::Malformed)?;
        let session = self.cache.get(&session_key(&claims.sid)).await?;
        if session.is_none() {
            return Err(TokenError::Revoked.into());
        }
        Ok(Principal {
            user_id,
            session_id: claims.sid.clone(),
            claims,
        })
    }

    /// Opens a session for a user who just proved who they are.
    pub async fn start_session(&self, user: &User) -> Result<Tokens, AuthError> {
        let session_id = Uuid::new_v4().to_string();
        let refresh_token = format!("{REFRESH_PREFIX}.{session_id}.{}", random_hex());
        let session = Session {
            user_id: user.id,
            current: sha256_hex(&refresh_token),
            previous: Vec::new(),
            expires_at: Utc::now().timestamp() + self.settings.session_ttl.as_secs() as i64,
        };
        self.cache
            .set(
                &session_key(&session_id),
                &serde_json::to_vec(&session).expect("serializable"),
                self.settings.session_ttl,
            )
            .await?;
        self.tokens_for(
            user.id,
            session_id,
            refresh_token,
            self.settings.session_ttl,
        )
        .await
    }

    /// Rotates a refresh token. Presenting a rotated-away token revokes the session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, AuthError> {
        let session_id = session_of_refresh_token(refresh_token)
            .ok_or(AuthError::InvalidRefreshToken)?
            .to_owned();
        let key = session_key(&session_id);
        let presented = sha256_hex(refresh_token);
        // Compare-and-swap so two replicas refreshing the same token cannot both win.
        for _ in 0..5 {
            let Some(raw) = self.cache.get(&key).await? else {
                return Err(AuthError::InvalidRefreshToken);
            };
            let mut session: Session =
                serde_json::from_slice(&raw).map_err(|_| AuthError::InvalidRefreshToken)?;
            let remaining = session.expires_at - Utc::now().timestamp();
            if remaining <= 0 {
                return Err(AuthError::InvalidRefreshToken);
            }
            if session.previous.contains(&presented) {
                self.cache.delete(&key).await?;
                return Err(AuthError::RefreshTokenReused);
            }
            if session.current != presented {
                return Err(AuthError::InvalidRefreshToken);
            }
            let next = format!("{REFRESH_PREFIX}.{session_id}.{}", random_hex());
            session
                .previous
                .push(std::mem::replace(&mut session.current, sha256_hex(&next)));
            if session.previous.len() > REMEMBERED_TOKENS {
                session.previous.remove(0);
            }
            let ttl = Duration::from_secs(remaining as u64);
            let updated = serde_json::to_vec(&session).expect("serializable");
            if self
                .cache
                .compare_and_swap(&key, Some(&raw), &updated, ttl)
                .await?
            {
                return self
                    .tokens_for(session.user_id, session_id, next, ttl)
                    .await;
            }
        }
        Err(AuthError::InvalidRefreshToken)
    }

    /// The session a refresh token belongs to, if the token is its current one.
    pub async fn session_of(&self, refresh_token: &str) -> Result<Option<String>, AuthError> {
        let Some(session_id) = session_of_refresh_token(refresh_token) else {
            return Ok(None);
        };
        let Some(raw) = self.cache.get(&session_key(session_id)).await? else {
            return Ok(None);
        };
        let session: Session =
            serde_json::from_slice(&raw).map_err(|_| AuthError::InvalidRefreshToken)?;
        Ok((session.current == sha256_hex(refresh_token)).then(|| session_id.to_owned()))
    }

    /// Ends a session: its refresh token and every access token it issued stop working.
    pub async fn revoke(&self, session_id: &str) -> Result<bool, AuthError> {
        Ok(self.cache.delete(&session_key(session_id)).await?)
    }

    async fn tokens_for(
        &self,
        user_id: Uuid,
        session_id: String,
        refresh_token: String,
        refresh_expires_in: Duration,
    ) -> Result<Tokens, AuthError> {
        // Claims reflect the store now: memberships and the admin flag are re-read on every
        // refresh (they remain hints; authorization reads roles from the store per call).
        let mut tx = self.store.begin_read(&Scope::user(user_id)).await?;
        let user = tx.users().get(user_id).await?;
        let memberships = tx.members().memberships(user_id).await?;
        drop(tx);
        let now = Utc::now().timestamp() as u64;
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            sub: user_id.to_string(),
            aud: self.settings.audience.clone(),
            exp: now + self.settings.access_ttl.as_secs(),
            iat: now,
            nbf: now,
            jti: Uuid::new_v4().to_string(),
            sid: session_id.clone(),
            email: user.email.clone(),
            name: user.display_name.clone(),
            zen_admin: user.is_platform_admin,
            zen_tenants: memberships
                .into_iter()
                .map(|m| (m.tenant.id.to_string(), m.role.as_str().to_owned()))
                .collect(),
        };
        let access_token = self
            .keys
            .sign(&claims)
            .map_err(|e| AuthError::Signing(e.to_string()))?;
        Ok(Tokens {
            access_token,
            access_expires_in: self.settings.access_ttl,
            refresh_token,
            refresh_expires_in,
            session_id,
        })
    }
}

fn session_key(session_id: &str) -> String {
    format!("{SESSION_PREFIX}{session_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_name_their_session() {
        let sid = Uuid::new_v4().to_string();
        let token = format!("zrt.{sid}.{}", random_hex());
        assert_eq!(session_of_refresh_token(&token), Some(sid.as_str()));
        assert_eq!(session_of_refresh_token("zrt.nope.abc"), None);
        assert_eq!(session_of_refresh_token(&token.replace("zrt", "zbt")), None);
    }
}
