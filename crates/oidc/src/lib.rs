//! Zen's OpenID Connect login: the authorization-code flow with PKCE (S256) against any
//! number of configured providers (Google, Okta, Azure AD, Keycloak ... are all issuers).
//!
//! ```text
//! browser ──GET /auth/login/<p>──▶ Zen: Oidc::begin(p, return_to)
//!         ◀──303 authorization_url─     stores {p, pkce_verifier, nonce, return_to}
//!                                       under `oidc-login:<state>` for 10 minutes
//! browser ──────── login + consent at the provider ────────▶
//! browser ──GET <redirect_url>?code&state──▶ Zen: Oidc::complete(p, code, state)
//!                                       takes the state (one time), exchanges the code
//!                                       with the verifier, validates the ID token
//! ```
//!
//! - Discovery (`<issuer>/.well-known/openid-configuration` and the JWKS) happens on first
//!   use of a provider and is kept; a failed discovery is retried on the next call. The JWKS
//!   is fetched again, once, when an ID token names a key that is not in it (key rotation).
//! - The login state lives in the shared [`zen_cache::Cache`], so the callback may land on
//!   any replica, and is *taken* atomically: a replayed callback fails.
//! - Nothing here logs secrets, codes, states or tokens.
//!
//! See `docs/OIDC.md` for provider examples and what exactly is validated.

mod config;
mod error;
mod provider;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use openidconnect::core::CoreAuthenticationFlow;
use openidconnect::reqwest;
use openidconnect::{CsrfToken, Nonce, PkceCodeChallenge};
use serde::{Deserialize, Serialize};

pub use config::{ProviderConfig, DEFAULT_SCOPES};
pub use error::OidcError;

use provider::Provider;

/// How long a started login may take (the state's lifetime in the cache).
pub const LOGIN_TTL: Duration = Duration::from_secs(10 * 60);

/// Cache key prefix of pending logins (relative to the cache's own prefix).
pub const STATE_KEY_PREFIX: &str = "oidc-login:";

/// Timeout of each request to a provider (discovery, JWKS, token endpoint).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest accepted `return_to` and authorization code.
const MAX_RETURN_TO_LEN: usize = 2048;
const MAX_CODE_LEN: usize = 4096;

/// A started login: send the browser to `authorization_url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginStart {
    /// The provider's authorization endpoint with client_id, redirect_uri, scope, state,
    /// nonce and the PKCE challenge.
    pub authorization_url: String,
    /// The CSRF token the provider echoes to the callback (also inside `authorization_url`).
    pub state: String,
    /// When the pending login is forgotten.
    pub expires_at: DateTime<Utc>,
}

/// The identity proven by a completed login, from the validated ID token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedLogin {
    /// The issuer (`iss`), as configured.
    pub issuer: String,
    /// The subject (`sub`): stable and unique per issuer. Identify users by (issuer, subject),
    /// not by email.
    pub subject: String,
    pub email: Option<String>,
    /// `email_verified`; false when the provider does not send it (Azure AD does not).
    pub email_verified: bool,
    /// `name`, when the provider sends it.
    pub name: Option<String>,
    /// The sanitized `return_to` given to [`Oidc::begin`].
    pub return_to: Option<String>,
}

/// What `begin` leaves in the cache for `complete`. Holds secrets: no `Debug`.
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    provider: String,
    pkce_verifier: String,
    nonce: String,
    return_to: Option<String>,
}

/// The OIDC login service over all configured providers. Cheap to clone.
#[derive(Clone)]
pub struct Oidc {
    inner: Arc<Inner>,
}

struct Inner {
    /// In configuration order.
    providers: Vec<Provider>,
    cache: Arc<dyn zen_cache::Cache>,
}

impl fmt::Debug for Oidc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oidc")
            .field("providers", &self.provider_names())
            .field("cache", &self.inner.cache.backend())
            .finish()
    }
}

impl Oidc {
    /// Validate the configuration (unique names, URLs, scopes, credentials present) and set
    /// up the HTTP client. Makes no network call: discovery happens on first use.
    pub fn new(
        providers: Vec<ProviderConfig>,
        cache: Arc<dyn zen_cache::Cache>,
    ) -> Result<Self, OidcError> {
        let valid = config::validate_all(providers)?;
        let http = reqwest::Client::builder()
            // Never follow redirects: they would turn a provider URL into an SSRF vector.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_CONNECT_TIMEOUT)
            .user_agent(concat!("zen-oidc/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OidcError::Config(format!("HTTP client: {}", error::chain(&e))))?;
        let providers = valid
            .into_iter()
            .map(|cfg| Provider::new(cfg, http.clone()))
            .collect();
        Ok(Oidc {
            inner: Arc::new(Inner { providers, cache }),
        })
    }

    /// The configured provider names, in configuration order.
    pub fn provider_names(&self) -> Vec<String> {
        self.inner
            .providers
            .iter()
            .map(|p| p.cfg.name.clone())
            .collect()
    }

    fn provider(&self, name: &str) -> Result<&Provider, OidcError> {
        self.inner
            .providers
            .iter()
            .find(|p| p.cfg.name == name)
            .ok_or_else(|| OidcError::UnknownProvider(name.chars().take(64).collect()))
    }

    /// Start a login at `provider`: a PKCE S256 challenge, a random `state` and `nonce`, the
    /// pending login stored in the cache for [`LOGIN_TTL`]. `return_to` is kept only if it is
    /// a relative path (`/...`, not `//...`, no backslash, whitespace or control character);
    /// anything else is dropped (open-redirect protection).
    ///
    /// Discovery happens lazily (first use) and is cached; a failed discovery is retried on
    /// the next call.
    pub async fn begin(
        &self,
        provider: &str,
        return_to: Option<String>,
    ) -> Result<LoginStart, OidcError> {
        let p = self.provider(provider)?;
        let discovered = p.discovered().await?;

        let return_to = sanitize_return_to(return_to);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256_len(32);
        let state = CsrfToken::new_random_len(32);
        let nonce = Nonce::new_random_len(32);
        let (url, state, nonce) = discovered
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || state,
                move || nonce,
            )
            .add_scopes(p.cfg.scopes.iter().cloned())
            .set_pkce_challenge(challenge)
            .url();

        let pending = PendingLogin {
            provider: p.cfg.name.clone(),
            pkce_verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
            return_to,
        };
        let value = serde_json::to_vec(&pending)
            .map_err(|e| OidcError::ProviderUnavailable(format!("login state: {e}")))?;
        let expires_at = Utc::now()
            + chrono::Duration::from_std(LOGIN_TTL).unwrap_or(chrono::Duration::minutes(10));
        let key = state_key(state.secret());
        let stored = self
            .inner
            .cache
            .set_if_absent(&key, &value, LOGIN_TTL)
            .await
            .map_err(cache_error)?;
        if !stored {
            // 256 random bits collided: not going to happen, but never overwrite a login.
            return Err(OidcError::ProviderUnavailable(
                "login state collision, try again".into(),
            ));
        }
        tracing::debug!(provider = %p.cfg.name, "OIDC login started");
        Ok(LoginStart {
            authorization_url: url.to_string(),
            state: state.secret().clone(),
            expires_at,
        })
    }

    /// Finish a login from the provider's callback (`code` and `state` query parameters; the
    /// callback path names `provider`).
    ///
    /// The state must exist and belong to `provider` (else [`OidcError::StateInvalid`]); it is
    /// consumed even if a later step fails. The code is exchanged with the PKCE verifier
    /// (refused → [`OidcError::CodeRejected`]); the ID token is validated (signature from the
    /// JWKS, issuer, audience and authorized party, expiry, nonce, at_hash → else
    /// [`OidcError::IdTokenInvalid`]).
    pub async fn complete(
        &self,
        provider: &str,
        code: &str,
        state: &str,
    ) -> Result<VerifiedLogin, OidcError> {
        let p = self.provider(provider)?;
        if !is_plausible_state(state) {
            return Err(OidcError::StateInvalid);
        }
        if code.is_empty() || code.len() > MAX_CODE_LEN || code.chars().any(char::is_control) {
            return Err(OidcError::CodeRejected(
                "the authorization code is malformed".into(),
            ));
        }
        // Discover before consuming the state, so a provider outage does not burn the login.
        let discovered = p.discovered().await?;

        let raw = self
            .inner
            .cache
            .take(&state_key(state))
            .await
            .map_err(cache_error)?
            .ok_or(OidcError::StateInvalid)?;
        let pending: PendingLogin =
            serde_json::from_slice(&raw).map_err(|_| OidcError::StateInvalid)?;
        if pending.provider != p.cfg.name {
            tracing::warn!(
                provider = %p.cfg.name,
                "OIDC callback carries the state of a login at another provider"
            );
            return Err(OidcError::StateInvalid);
        }

        let result = async {
            let response = p.exchange(&discovered, code, pending.pkce_verifier).await?;
            p.verify(discovered, &response, &Nonce::new(pending.nonce))
                .await
        }
        .await;
        let claims = match result {
            Ok(claims) => claims,
            Err(e) => {
                tracing::debug!(provider = %p.cfg.name, error = %e, "OIDC login failed");
                return Err(e);
            }
        };

        let login = VerifiedLogin {
            issuer: claims.issuer().as_str().to_owned(),
            subject: claims.subject().as_str().to_owned(),
            email: claims.email().map(|e| e.as_str().to_owned()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_owned()),
            return_to: pending.return_to,
        };
        tracing::info!(provider = %p.cfg.name, subject = %login.subject, "OIDC login completed");
        Ok(login)
    }
}

fn state_key(state: &str) -> String {
    format!("{STATE_KEY_PREFIX}{state}")
}

fn cache_error(e: zen_cache::CacheError) -> OidcError {
    OidcError::ProviderUnavailable(format!("login state store: {e}"))
}

/// States are ours (43 base64url characters); anything else is refused before the cache.
fn is_plausible_state(state: &str) -> bool {
    (16..=128).contains(&state.len())
        && state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Keep `return_to` only if it is a path on this site.
fn sanitize_return_to(return_to: Option<String>) -> Option<String> {
    let r = return_to?;
    let ok = r.len() <= MAX_RETURN_TO_LEN
        && r.starts_with('/')
        && !r.starts_with("//")
        // Browsers read `/\evil.example` as `//evil.example`, and drop tabs and newlines.
        && !r.contains('\\')
        && !r.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok {
        Some(r)
    } else {
        tracing::debug!("OIDC return_to dropped: not a relative path");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_keeps_relative_paths_only() {
        for good in [
            "/",
            "/dashboard",
            "/a/b?x=1&y=%2F%2F#frag",
            "/search?q=http://x",
        ] {
            assert_eq!(
                sanitize_return_to(Some(good.into())).as_deref(),
                Some(good),
                "{good}"
            );
        }
        for bad in [
            "",
            "dashboard",
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example/",
            "javascript:alert(1)",
            "/\t/evil.example",
            "/a b",
            "/\n",
        ] {
            assert_eq!(sanitize_return_to(Some(bad.into())), None, "{bad:?}");
        }
        assert_eq!(sanitize_return_to(None), None);
        assert_eq!(
            sanitize_return_to(Some(format!("/{}", "a".repeat(3000)))),
            None
        );
    }

    #[test]
    fn state_shape_is_checked() {
        let state = CsrfToken::new_random_len(32);
        assert!(is_plausible_state(state.secret()));
        assert_eq!(state.secret().len(), 43);
        for bad in [
            "",
            "short",
            "has space in it and is long",
            "ünïcödé-ünïcödé-ü",
            "a:b:c:d:e:f:g:h:i",
        ] {
            assert!(!is_plausible_state(bad), "{bad}");
        }
        assert!(!is_plausible_state(&"a".repeat(129)));
    }

    #[tokio::test]
    async fn new_validates_and_lists_providers_in_order() {
        let cache = zen_cache::connect(None, "test:").await.unwrap();
        let cfg = |name: &str| ProviderConfig {
            name: name.into(),
            issuer_url: "https://issuer.example".into(),
            client_id: "c".into(),
            client_secret: "s".into(),
            scopes: vec![],
            redirect_url: format!("https://zen.example/auth/callback/{name}"),
        };
        let oidc = Oidc::new(vec![cfg("okta"), cfg("google")], cache.clone()).unwrap();
        assert_eq!(oidc.provider_names(), ["okta", "google"]);
        assert!(format!("{oidc:?}").contains("okta"));
        assert!(matches!(
            Oidc::new(vec![cfg("a"), cfg("a")], cache.clone()),
            Err(OidcError::Config(_))
        ));
        assert!(Oidc::new(vec![], cache)
            .unwrap()
            .provider_names()
            .is_empty());
    }

    #[tokio::test]
    async fn unknown_provider_and_malformed_input_fail_without_network() {
        let cache = zen_cache::connect(None, "test:").await.unwrap();
        let oidc = Oidc::new(
            vec![ProviderConfig {
                name: "p".into(),
                // Nothing listens here; none of the calls below may reach it.
                issuer_url: "http://127.0.0.1:9".into(),
                client_id: "c".into(),
                client_secret: "s".into(),
                scopes: vec![],
                redirect_url: "http://127.0.0.1/cb".into(),
            }],
            cache,
        )
        .unwrap();
        assert!(matches!(
            oidc.begin("nope", None).await,
            Err(OidcError::UnknownProvider(n)) if n == "nope"
        ));
        assert!(matches!(
            oidc.complete("nope", "code", &"s".repeat(43)).await,
            Err(OidcError::UnknownProvider(_))
        ));
        assert!(matches!(
            oidc.complete("p", "code", "x").await,
            Err(OidcError::StateInvalid)
        ));
        assert!(matches!(
            oidc.complete("p", "", &"s".repeat(43)).await,
            Err(OidcError::CodeRejected(_))
        ));
    }
}
