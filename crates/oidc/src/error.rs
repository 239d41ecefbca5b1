use std::error::Error as StdError;

/// Everything that can go wrong in an OIDC login. Messages never contain secrets, codes,
/// states or tokens, so they may be logged and (for the login's own user) shown.
///
/// Suggested mapping at the gRPC edge: `UnknownProvider` → NOT_FOUND, `StateInvalid`,
/// `CodeRejected` and `IdTokenInvalid` → UNAUTHENTICATED (restart the login),
/// `ProviderUnavailable` → UNAVAILABLE (retry later), `Config` → FAILED_PRECONDITION /
/// INTERNAL (an operator must fix the configuration).
#[derive(Clone, Debug, thiserror::Error)]
pub enum OidcError {
    /// No provider of that name is configured.
    #[error("unknown OIDC provider `{0}`")]
    UnknownProvider(String),
    /// The callback's `state` is unknown, expired, already used, malformed, or was issued for
    /// another provider.
    #[error("the login state is invalid, expired or already used")]
    StateInvalid,
    /// The token endpoint refused the authorization code (e.g. `invalid_grant`: a replayed or
    /// expired code, or a PKCE verifier that does not match).
    #[error("the provider rejected the authorization code: {0}")]
    CodeRejected(String),
    /// The ID token failed validation (signature, issuer, audience, authorized party, expiry,
    /// nonce, access-token hash) or is missing.
    #[error("the ID token is invalid: {0}")]
    IdTokenInvalid(String),
    /// The provider (discovery, JWKS or token endpoint) cannot be reached or answered with a
    /// server error; also a failure of the cache that holds the login state. Retryable.
    #[error("the OIDC provider is unavailable: {0}")]
    ProviderUnavailable(String),
    /// The configuration is invalid: rejected by [`crate::Oidc::new`], or found out at first
    /// use (the discovery document names another issuer; the provider supports neither
    /// `client_secret_basic` nor `client_secret_post`; it rejects the client credentials).
    #[error("OIDC configuration error: {0}")]
    Config(String),
}

/// `err` and its sources, joined with ": " (reqwest puts the interesting part, such as
/// "Connection refused", in the sources).
pub(crate) fn chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
