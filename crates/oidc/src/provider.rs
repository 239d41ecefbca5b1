//! One configured provider at run time: lazy discovery, the JWKS refresh, the token exchange
//! and ID-token validation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openidconnect::core::{
    CoreClient, CoreErrorResponseType, CoreIdToken, CoreIdTokenClaims, CoreJsonWebKeySet,
    CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreTokenResponse,
};
use openidconnect::reqwest;
use openidconnect::{core::CoreClientAuthMethod, ClientSecret};
use openidconnect::{
    AccessTokenHash, AuthType, AuthorizationCode, ClaimsVerificationError, DiscoveryError,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpClientError, Nonce, OAuth2TokenResponse,
    PkceCodeVerifier, RequestTokenError, SignatureVerificationError,
};

use crate::config::ValidProvider;
use crate::error::chain;
use crate::OidcError;

/// A client whose authorization and token endpoints are known (the userinfo endpoint may be).
type DiscoveredClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointMaybeSet,
>;

/// ID-token signature algorithms Zen accepts, if the provider advertises them. Never the
/// HMAC ones (the "key" would be the client secret, which is no proof of the provider) and
/// never `none`.
const ASYMMETRIC_ALGS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// What discovery found, with the JWKS as last fetched.
pub(crate) struct Discovered {
    metadata: CoreProviderMetadata,
    pub client: DiscoveredClient,
    algs: Vec<CoreJwsSigningAlgorithm>,
}

pub(crate) struct Provider {
    pub cfg: ValidProvider,
    http: reqwest::Client,
    current: RwLock<Option<Arc<Discovered>>>,
    /// Serializes discovery and JWKS refreshes (the fast path only reads `current`); holds
    /// the error of the last failed discovery.
    fetching: tokio::sync::Mutex<Option<OidcError>>,
    /// Finished discovery attempts. A call that waited for the lock while an attempt failed
    /// gets that failure instead of trying again, so an unresponsive provider costs one
    /// timeout per wave of concurrent logins, not one per login.
    attempts: AtomicU64,
}

/// Why an ID token did not verify.
enum Rejection {
    /// No key in the JWKS we hold matches the token's `kid`/`alg`: worth one JWKS refresh.
    UnknownKey,
    Invalid(String),
}

impl Provider {
    pub fn new(cfg: ValidProvider, http: reqwest::Client) -> Self {
        Provider {
            cfg,
            http,
            current: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
        }
    }

    fn cached(&self) -> Option<Arc<Discovered>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn store(&self, discovered: Arc<Discovered>) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(discovered);
    }

    /// The discovered metadata: fetched on first use and kept; a failure is not kept, so the
    /// next call tries again.
    pub async fn discovered(&self) -> Result<Arc<Discovered>, OidcError> {
        if let Some(d) = self.cached() {
            return Ok(d);
        }
        let attempts_seen = self.attempts.load(Ordering::Acquire);
        let mut last_error = self.fetching.lock().await;
        if let Some(d) = self.cached() {
            return Ok(d);
        }
        if self.attempts.load(Ordering::Acquire) != attempts_seen {
            if let Some(e) = last_error.as_ref() {
                return Err(e.clone());
            }
        }
        let result = self.discover().await;
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(discovered) => {
                *last_error = None;
                self.store(discovered.clone());
                Ok(discovered)
            }
            Err(e) => {
                tracing::warn!(provider = %self.cfg.name, error = %e, "OIDC discovery failed");
                *last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn discover(&self) -> Result<Arc<Discovered>, OidcError> {
        let metadata = CoreProviderMetadata::discover_async(self.cfg.issuer.clone(), &self.http)
            .await
            .map_err(|e| discovery_error("discovery", e))?;
        let discovered = Arc::new(self.build(metadata)?);
        tracing::info!(
            provider = %self.cfg.name,
            issuer = %self.cfg.issuer.as_str(),
            keys = discovered.metadata.jwks().keys().len(),
            "OIDC provider discovered"
        );
        Ok(discovered)
    }

    /// Fetch the JWKS again (the token names a key we do not know: the provider rotated its
    /// keys). If another call refreshed since `stale` was read, that result is used instead.
    async fn refresh_jwks(&self, stale: &Arc<Discovered>) -> Result<Arc<Discovered>, OidcError> {
        let _guard = self.fetching.lock().await;
        if let Some(current) = self.cached() {
            if !Arc::ptr_eq(&current, stale) {
                return Ok(current);
            }
        }
        let jwks = CoreJsonWebKeySet::fetch_async(stale.metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| discovery_error("JWKS refresh", e))?;
        tracing::info!(provider = %self.cfg.name, keys = jwks.keys().len(), "OIDC JWKS refreshed");
        let refreshed = Arc::new(self.build(stale.metadata.clone().set_jwks(jwks))?);
        self.store(refreshed.clone());
        Ok(refreshed)
    }

    fn build(&self, metadata: CoreProviderMetadata) -> Result<Discovered, OidcError> {
        let name = &self.cfg.name;
        let token_url = metadata.token_endpoint().cloned().ok_or_else(|| {
            OidcError::Config(format!(
                "provider `{name}`: the discovery document has no token_endpoint"
            ))
        })?;
        // RFC 8414 / OIDC Discovery: absent means client_secret_basic.
        let auth_type = match metadata.token_endpoint_auth_methods_supported() {
            None => AuthType::BasicAuth,
            Some(methods) if methods.contains(&CoreClientAuthMethod::ClientSecretBasic) => {
                AuthType::BasicAuth
            }
            Some(methods) if methods.contains(&CoreClientAuthMethod::ClientSecretPost) => {
                AuthType::RequestBody
            }
            Some(_) => {
                return Err(OidcError::Config(format!(
                    "provider `{name}` supports neither client_secret_basic nor client_secret_post"
                )))
            }
        };
        let algs: Vec<CoreJwsSigningAlgorithm> = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter(|alg| ASYMMETRIC_ALGS.contains(alg))
            .cloned()
            .collect();
        if algs.is_empty() {
            return Err(OidcError::Config(format!(
                "provider `{name}` advertises no asymmetric ID-token signature algorithm"
            )));
        }
        let client = CoreClient::from_provider_metadata(
            metadata.clone(),
            self.cfg.client_id.clone(),
            Some(ClientSecret::new(self.cfg.client_secret.secret().clone())),
        )
        .set_redirect_uri(self.cfg.redirect_url.clone())
        .set_auth_type(auth_type)
        .set_token_uri(token_url);
        Ok(Discovered {
            metadata,
            client,
            algs,
        })
    }

    /// Exchange `code` (with the PKCE verifier) at the token endpoint.
    pub async fn exchange(
        &self,
        d: &Discovered,
        code: &str,
        pkce_verifier: String,
    ) -> Result<CoreTokenResponse, OidcError> {
        d.client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| token_error(&self.cfg.name, e))
    }

    /// Validate the ID token of `response` against the held JWKS, refreshing the JWKS once
    /// when no key matches.
    pub async fn verify(
        &self,
        d: Arc<Discovered>,
        response: &CoreTokenResponse,
        nonce: &Nonce,
    ) -> Result<CoreIdTokenClaims, OidcError> {
        let id_token = openidconnect::TokenResponse::id_token(response).ok_or_else(|| {
            OidcError::IdTokenInvalid("the token response has no id_token".into())
        })?;
        match verify_with(&d, id_token, response, nonce) {
            Ok(claims) => Ok(claims),
            Err(Rejection::Invalid(reason)) => Err(OidcError::IdTokenInvalid(reason)),
            Err(Rejection::UnknownKey) => {
                let refreshed = self.refresh_jwks(&d).await?;
                match verify_with(&refreshed, id_token, response, nonce) {
                    Ok(claims) => Ok(claims),
                    Err(Rejection::Invalid(reason)) => Err(OidcError::IdTokenInvalid(reason)),
                    Err(Rejection::UnknownKey) => Err(OidcError::IdTokenInvalid(
                        "no key in the provider's JWKS matches the ID token's key id and algorithm"
                            .into(),
                    )),
                }
            }
        }
    }
}

fn verify_with(
    d: &Discovered,
    id_token: &CoreIdToken,
    response: &CoreTokenResponse,
    nonce: &Nonce,
) -> Result<CoreIdTokenClaims, Rejection> {
    // Signature (JWKS key by kid, allowed algorithms), iss, aud (our client id, and no other
    // untrusted audience), exp, nonce.
    let verifier = d
        .client
        .id_token_verifier()
        .set_allowed_algs(d.algs.clone());
    let claims = match id_token.claims(&verifier, nonce) {
        Ok(claims) => claims,
        Err(ClaimsVerificationError::SignatureVerification(
            SignatureVerificationError::NoMatchingKey,
        )) => return Err(Rejection::UnknownKey),
        Err(ClaimsVerificationError::SignatureVerification(e)) => {
            return Err(Rejection::Invalid(format!("signature: {e}")))
        }
        Err(e) => return Err(Rejection::Invalid(e.to_string())),
    };
    let client_id = d.client.client_id();
    // OIDC Core §3.1.3.7 steps 4 and 5, which the library leaves to the caller.
    match claims.authorized_party() {
        Some(azp) if azp != client_id => {
            return Err(Rejection::Invalid(format!(
                "authorized party (azp) `{}` is not this client",
                azp.as_str()
            )))
        }
        None if claims.audiences().len() > 1 => {
            return Err(Rejection::Invalid(
                "several audiences but no authorized party (azp)".into(),
            ))
        }
        _ => {}
    }
    // The access token belongs to this ID token (at_hash, when present).
    if let Some(expected) = claims.access_token_hash() {
        let alg = id_token
            .signing_alg()
            .map_err(|e| Rejection::Invalid(format!("signature: {e}")))?;
        let key = id_token
            .signing_key(&verifier)
            .map_err(|e| Rejection::Invalid(format!("signature: {e}")))?;
        let actual = AccessTokenHash::from_token(response.access_token(), alg, key)
            .map_err(|e| Rejection::Invalid(format!("at_hash: {e}")))?;
        if actual != *expected {
            return Err(Rejection::Invalid(
                "at_hash does not match the access token".into(),
            ));
        }
    }
    Ok(claims.clone())
}

fn discovery_error(what: &str, e: DiscoveryError<HttpClientError<reqwest::Error>>) -> OidcError {
    match e {
        DiscoveryError::Request(e) => {
            OidcError::ProviderUnavailable(format!("{what}: {}", chain(&e)))
        }
        DiscoveryError::Response(status, _body, message) => OidcError::ProviderUnavailable(
            format!("{what}: unexpected response ({status}): {message}"),
        ),
        DiscoveryError::Parse(e) => OidcError::ProviderUnavailable(format!(
            "{what}: malformed document (at `{}`)",
            e.path()
        )),
        // The issuer in the document is not the configured one: a configuration error.
        DiscoveryError::Validation(message) => OidcError::Config(format!("{what}: {message}")),
        DiscoveryError::UrlParse(e) => OidcError::Config(format!("{what}: {e}")),
        other => OidcError::ProviderUnavailable(format!("{what}: {other}")),
    }
}

type TokenError = RequestTokenError<
    HttpClientError<reqwest::Error>,
    openidconnect::StandardErrorResponse<CoreErrorResponseType>,
>;

fn token_error(provider: &str, e: TokenError) -> OidcError {
    match e {
        RequestTokenError::ServerResponse(response) => {
            let code = response.error().as_ref().to_owned();
            let mut text = code.clone();
            if let Some(description) = response.error_description() {
                let description: String = description
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect();
                text = format!("{code}: {description}");
            }
            match response.error() {
                CoreErrorResponseType::InvalidClient
                | CoreErrorResponseType::UnauthorizedClient => {
                    tracing::error!(provider, error = %code, "OIDC provider rejected Zen's client credentials");
                    OidcError::Config(format!(
                        "provider `{provider}` rejected the client credentials ({text})"
                    ))
                }
                CoreErrorResponseType::Extension(ext)
                    if ext == "server_error" || ext == "temporarily_unavailable" =>
                {
                    OidcError::ProviderUnavailable(format!("token endpoint: {text}"))
                }
                _ => OidcError::CodeRejected(text),
            }
        }
        RequestTokenError::Request(e) => {
            OidcError::ProviderUnavailable(format!("token endpoint: {}", chain(&e)))
        }
        // Never show the body or serde's message: a response that parsed partly carries tokens.
        RequestTokenError::Parse(e, _body) => {
            let path = e.path().to_string();
            if path.starts_with("id_token") {
                OidcError::IdTokenInvalid("the id_token is not a well-formed JWT".into())
            } else {
                OidcError::ProviderUnavailable(format!(
                    "token endpoint: malformed response (at `{path}`)"
                ))
            }
        }
        RequestTokenError::Other(message) => {
            OidcError::ProviderUnavailable(format!("token endpoint: {message}"))
        }
    }
}
