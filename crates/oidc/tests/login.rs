//! Real logins against the test OpenID Provider on loopback (`tests/oidc/provider.mjs`):
//! the happy path, state and code replays, tampered ID tokens, key rotation, outages.
//!
//! Needs `node` and `npm ci` at the repository root; without them each test prints a skip
//! reason, or fails when `CI` is set.

mod support;

use std::sync::Arc;

use support::{
    login, prerequisites_or_skip, ProviderOptions, TestProvider, CLIENT_ID, CLIENT_SECRET,
};
use zen_oidc::{Oidc, OidcError, ProviderConfig, VerifiedLogin};

fn config(name: &str, provider: &TestProvider) -> ProviderConfig {
    ProviderConfig {
        name: name.into(),
        issuer_url: provider.issuer.clone(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        scopes: vec![],
        redirect_url: provider.redirect_uri.clone(),
    }
}

async fn memory_cache() -> Arc<dyn zen_cache::Cache> {
    zen_cache::connect(None, "test:").await.unwrap()
}

async fn setup(test: &str, options: ProviderOptions) -> Option<(TestProvider, Oidc)> {
    if !prerequisites_or_skip(test) {
        return None;
    }
    let provider = TestProvider::start(options).await;
    let oidc = Oidc::new(vec![config("test", &provider)], memory_cache().await).unwrap();
    Some((provider, oidc))
}

/// begin → login at the provider as `user` → the callback's code and state.
async fn authorize(oidc: &Oidc, provider: &TestProvider, user: &str) -> support::Callback {
    let start = oidc.begin("test", None).await.unwrap();
    let callback = login(&start.authorization_url, &provider.redirect_uri, user).await;
    assert_eq!(callback.state, start.state);
    callback
}

async fn full_login(
    oidc: &Oidc,
    provider: &TestProvider,
    user: &str,
) -> Result<VerifiedLogin, OidcError> {
    let callback = authorize(oidc, provider, user).await;
    oidc.complete("test", &callback.code, &callback.state).await
}

fn assert_id_token_invalid(result: Result<VerifiedLogin, OidcError>, mode: &str, needle: &str) {
    match result {
        Err(OidcError::IdTokenInvalid(reason)) => {
            eprintln!("{mode}: IdTokenInvalid({reason})");
            assert!(
                reason.to_lowercase().contains(needle),
                "{mode}: expected the reason to mention {needle:?}, got {reason:?}"
            )
        }
        other => panic!("{mode}: expected IdTokenInvalid, got {other:?}"),
    }
}

#[tokio::test]
async fn login_with_pkce_returns_the_verified_identity() {
    let Some((provider, oidc)) = setup(
        "login_with_pkce_returns_the_verified_identity",
        Default::default(),
    )
    .await
    else {
        return;
    };
    let before = chrono::Utc::now();
    let start = oidc
        .begin("test", Some("/clusters/c1?tab=events".into()))
        .await
        .unwrap();

    let url = reqwest::Url::parse(&start.authorization_url).unwrap();
    assert!(start
        .authorization_url
        .starts_with(&format!("{}/auth?", provider.issuer)));
    let query: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(query["response_type"], "code");
    assert_eq!(query["client_id"], CLIENT_ID);
    assert_eq!(query["redirect_uri"], provider.redirect_uri);
    assert_eq!(query["scope"], "openid email profile");
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["code_challenge"].len(), 43);
    assert_eq!(query["state"], start.state);
    assert!(query["nonce"].len() >= 43);
    let ttl = start.expires_at - before;
    assert!(
        ttl > chrono::Duration::minutes(9)
            && ttl <= chrono::Duration::minutes(10) + chrono::Duration::seconds(5)
    );

    let callback = login(&start.authorization_url, &provider.redirect_uri, "alice").await;
    assert_eq!(callback.state, start.state);
    assert_eq!(callback.iss.as_deref(), Some(provider.issuer.as_str()));

    let verified = oidc
        .complete("test", &callback.code, &callback.state)
        .await
        .unwrap();
    assert_eq!(
        verified,
        VerifiedLogin {
            issuer: provider.issuer.clone(),
            subject: "alice".into(),
            email: Some("alice@example.test".into()),
            email_verified: true,
            name: Some("Test User alice".into()),
            return_to: Some("/clusters/c1?tab=events".into()),
        }
    );

    // The state was taken: the same callback again is refused.
    assert!(matches!(
        oidc.complete("test", &callback.code, &callback.state).await,
        Err(OidcError::StateInvalid)
    ));

    // Discovery and the JWKS were fetched once and reused by a second login.
    let second = full_login(&oidc, &provider, "bob").await.unwrap();
    assert_eq!(second.subject, "bob");
    assert_eq!(second.return_to, None);
    let stats = provider.stats().await;
    assert_eq!(stats["discovery"], 1, "{stats}");
    assert_eq!(stats["jwks"], 1, "{stats}");
}

#[tokio::test]
async fn client_secret_post_is_used_when_it_is_the_only_method() {
    let options = ProviderOptions {
        auth_method: "client_secret_post",
        ..Default::default()
    };
    let Some((provider, oidc)) = setup(
        "client_secret_post_is_used_when_it_is_the_only_method",
        options,
    )
    .await
    else {
        return;
    };
    let verified = full_login(&oidc, &provider, "carol").await.unwrap();
    assert_eq!(verified.email.as_deref(), Some("carol@example.test"));
}

#[tokio::test]
async fn open_redirects_in_return_to_are_dropped() {
    let Some((provider, oidc)) = setup(
        "open_redirects_in_return_to_are_dropped",
        Default::default(),
    )
    .await
    else {
        return;
    };
    let start = oidc
        .begin("test", Some("//evil.example/phish".into()))
        .await
        .unwrap();
    let callback = login(&start.authorization_url, &provider.redirect_uri, "dave").await;
    let verified = oidc
        .complete("test", &callback.code, &callback.state)
        .await
        .unwrap();
    assert_eq!(verified.return_to, None);
}

#[tokio::test]
async fn wrong_or_foreign_state_is_refused() {
    let Some((provider, _)) = setup("wrong_or_foreign_state_is_refused", Default::default()).await
    else {
        return;
    };
    // Two providers (same issuer, different names) sharing one cache.
    let oidc = Oidc::new(
        vec![config("test", &provider), config("other-name", &provider)],
        memory_cache().await,
    )
    .unwrap();
    let callback = authorize(&oidc, &provider, "erin").await;

    // A state nobody issued.
    let forged = "A".repeat(43);
    assert!(matches!(
        oidc.complete("test", &callback.code, &forged).await,
        Err(OidcError::StateInvalid)
    ));
    // Malformed states never reach the cache.
    for bad in ["", "x", "../../etc", &"a".repeat(500)] {
        assert!(matches!(
            oidc.complete("test", &callback.code, bad).await,
            Err(OidcError::StateInvalid)
        ));
    }
    // The real state, but at the callback of another provider: refused, and consumed.
    assert!(matches!(
        oidc.complete("other-name", &callback.code, &callback.state)
            .await,
        Err(OidcError::StateInvalid)
    ));
    assert!(matches!(
        oidc.complete("test", &callback.code, &callback.state).await,
        Err(OidcError::StateInvalid)
    ));
}

/// The state is bound to the cache, not to this process: a second `Oidc` (another replica)
/// sharing the cache completes the login, and the first cannot complete it again.
#[tokio::test]
async fn any_replica_sharing_the_cache_completes_the_login_once() {
    if !prerequisites_or_skip("any_replica_sharing_the_cache_completes_the_login_once") {
        return;
    }
    let provider = TestProvider::start(Default::default()).await;
    let cache = memory_cache().await;
    let replica_a = Oidc::new(vec![config("test", &provider)], cache.clone()).unwrap();
    let replica_b = Oidc::new(vec![config("test", &provider)], cache).unwrap();
    let callback = authorize(&replica_a, &provider, "frank").await;
    let verified = replica_b
        .complete("test", &callback.code, &callback.state)
        .await
        .unwrap();
    assert_eq!(verified.subject, "frank");
    assert!(matches!(
        replica_a
            .complete("test", &callback.code, &callback.state)
            .await,
        Err(OidcError::StateInvalid)
    ));
}

/// A code is good for one exchange. Replaying it under a fresh, valid state (a second
/// `begin`) is refused by the provider's token endpoint with `invalid_grant` → CodeRejected:
/// the code was already redeemed, and the fresh login's PKCE verifier does not match the
/// challenge the code was issued for anyway. No ID token is issued, so ID-token validation
/// (whose nonce check would also catch it: the fresh login has another nonce) never runs.
#[tokio::test]
async fn replayed_code_under_a_fresh_state_is_rejected() {
    let Some((provider, oidc)) = setup(
        "replayed_code_under_a_fresh_state_is_rejected",
        Default::default(),
    )
    .await
    else {
        return;
    };
    let first = authorize(&oidc, &provider, "grace").await;
    oidc.complete("test", &first.code, &first.state)
        .await
        .unwrap();

    let fresh = oidc.begin("test", None).await.unwrap();
    match oidc.complete("test", &first.code, &fresh.state).await {
        Err(OidcError::CodeRejected(reason)) => {
            assert!(reason.starts_with("invalid_grant"), "{reason}")
        }
        other => panic!("expected CodeRejected, got {other:?}"),
    }
}

/// A stolen, not yet redeemed code used with another login's state: the PKCE verifier of that
/// login does not match → invalid_grant → CodeRejected.
#[tokio::test]
async fn code_with_another_logins_pkce_verifier_is_rejected() {
    let Some((provider, oidc)) = setup(
        "code_with_another_logins_pkce_verifier_is_rejected",
        Default::default(),
    )
    .await
    else {
        return;
    };
    let victim = authorize(&oidc, &provider, "heidi").await;
    let attacker = oidc.begin("test", None).await.unwrap();
    match oidc.complete("test", &victim.code, &attacker.state).await {
        Err(OidcError::CodeRejected(reason)) => {
            assert!(reason.starts_with("invalid_grant"), "{reason}")
        }
        other => panic!("expected CodeRejected, got {other:?}"),
    }
}

#[tokio::test]
async fn tampered_id_token_signature_is_rejected() {
    let Some((provider, oidc)) = setup(
        "tampered_id_token_signature_is_rejected",
        Default::default(),
    )
    .await
    else {
        return;
    };
    provider.set_tamper("bad-signature").await;
    assert_id_token_invalid(
        full_login(&oidc, &provider, "ivan").await,
        "bad-signature",
        "signature",
    );
}

/// A genuinely valid token (signed with the provider's published key, right issuer, this
/// login's nonce, not expired) that was issued for the client `other`.
#[tokio::test]
async fn id_token_for_another_audience_is_rejected() {
    let Some((provider, oidc)) = setup(
        "id_token_for_another_audience_is_rejected",
        Default::default(),
    )
    .await
    else {
        return;
    };
    provider.set_tamper("wrong-audience").await;
    assert_id_token_invalid(
        full_login(&oidc, &provider, "judy").await,
        "wrong-audience",
        "audience",
    );
}

#[tokio::test]
async fn other_id_token_forgeries_are_rejected() {
    let Some((provider, oidc)) =
        setup("other_id_token_forgeries_are_rejected", Default::default()).await
    else {
        return;
    };
    for (mode, needle) in [
        ("extra-audience", "not a trusted audience"),
        ("wrong-azp", "authorized party"),
        ("wrong-issuer", "issuer"),
        ("wrong-nonce", "nonce"),
        ("expired", "expired"),
        // HS256 is advertised by the provider but never accepted: the MAC key would be the
        // client secret.
        ("hs256", "algorithm"),
        ("alg-none", "signature"),
    ] {
        provider.set_tamper(mode).await;
        assert_id_token_invalid(full_login(&oidc, &provider, "mallory").await, mode, needle);
    }
    // Still fine once the provider behaves.
    provider.set_tamper("none").await;
    full_login(&oidc, &provider, "mallory").await.unwrap();
}

/// A token signed with a key the provider never publishes: the JWKS is fetched again exactly
/// once, then the token is rejected.
#[tokio::test]
async fn unknown_signing_key_refreshes_the_jwks_once_then_fails() {
    let Some((provider, oidc)) = setup(
        "unknown_signing_key_refreshes_the_jwks_once_then_fails",
        Default::default(),
    )
    .await
    else {
        return;
    };
    full_login(&oidc, &provider, "niaj").await.unwrap();
    assert_eq!(provider.stats().await["jwks"], 1);

    provider.set_tamper("unknown-kid").await;
    assert_id_token_invalid(
        full_login(&oidc, &provider, "niaj").await,
        "unknown-kid",
        "no key",
    );
    assert_eq!(provider.stats().await["jwks"], 2, "exactly one refresh");
}

/// Key rotation: the provider starts signing with a new key that it now publishes; the cached
/// JWKS lacks it, so the first such login refreshes the JWKS and succeeds, later ones reuse it.
#[tokio::test]
async fn rotated_signing_key_is_picked_up_by_refreshing_the_jwks() {
    let Some((provider, oidc)) = setup(
        "rotated_signing_key_is_picked_up_by_refreshing_the_jwks",
        Default::default(),
    )
    .await
    else {
        return;
    };
    full_login(&oidc, &provider, "olivia").await.unwrap();
    provider.set_tamper("rotate").await;
    let verified = full_login(&oidc, &provider, "olivia").await.unwrap();
    assert_eq!(verified.subject, "olivia");
    full_login(&oidc, &provider, "peggy").await.unwrap();
    assert_eq!(
        provider.stats().await["jwks"],
        2,
        "one refresh for the rotation"
    );
}

#[tokio::test]
async fn unknown_provider_is_reported() {
    let Some((provider, oidc)) = setup("unknown_provider_is_reported", Default::default()).await
    else {
        return;
    };
    assert!(
        matches!(oidc.begin("google", None).await, Err(OidcError::UnknownProvider(p)) if p == "google")
    );
    let callback = authorize(&oidc, &provider, "rupert").await;
    assert!(matches!(
        oidc.complete("google", &callback.code, &callback.state)
            .await,
        Err(OidcError::UnknownProvider(_))
    ));
    // The state survived the wrong path and still completes at the right provider.
    oidc.complete("test", &callback.code, &callback.state)
        .await
        .unwrap();
}

/// Nothing listens at the issuer → ProviderUnavailable; the failed discovery is not cached,
/// so once the provider is up the next call succeeds.
#[tokio::test]
async fn provider_down_is_unavailable_and_discovery_is_retried() {
    if !prerequisites_or_skip("provider_down_is_unavailable_and_discovery_is_retried") {
        return;
    }
    let port = support::free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let redirect_uri = ProviderOptions::default().redirect_uri;
    let oidc = Oidc::new(
        vec![ProviderConfig {
            name: "test".into(),
            issuer_url: issuer.clone(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            scopes: vec![],
            redirect_url: redirect_uri.clone(),
        }],
        memory_cache().await,
    )
    .unwrap();
    match oidc.begin("test", None).await {
        Err(OidcError::ProviderUnavailable(reason)) => {
            assert!(reason.starts_with("discovery"), "{reason}")
        }
        other => panic!("expected ProviderUnavailable, got {other:?}"),
    }

    let mut provider = TestProvider::start(ProviderOptions {
        port,
        redirect_uri,
        ..Default::default()
    })
    .await;
    assert_eq!(provider.issuer, issuer);
    let callback = authorize(&oidc, &provider, "sybil").await;

    // Down between the login and the callback: the token endpoint is unreachable.
    provider.stop().await;
    match oidc.complete("test", &callback.code, &callback.state).await {
        Err(OidcError::ProviderUnavailable(reason)) => {
            assert!(reason.starts_with("token endpoint"), "{reason}")
        }
        other => panic!("expected ProviderUnavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn token_endpoint_server_error_is_unavailable() {
    let Some((provider, oidc)) = setup(
        "token_endpoint_server_error_is_unavailable",
        Default::default(),
    )
    .await
    else {
        return;
    };
    provider.set_tamper("token-error").await;
    match full_login(&oidc, &provider, "trent").await {
        Err(OidcError::ProviderUnavailable(reason)) => {
            assert!(reason.contains("server_error"), "{reason}")
        }
        other => panic!("expected ProviderUnavailable, got {other:?}"),
    }
}

/// A wrong client secret is an operator's mistake, not the user's: Config.
#[tokio::test]
async fn wrong_client_secret_is_a_configuration_error() {
    if !prerequisites_or_skip("wrong_client_secret_is_a_configuration_error") {
        return;
    }
    let provider = TestProvider::start(Default::default()).await;
    let mut cfg = config("test", &provider);
    cfg.client_secret = "not-the-secret".into();
    let oidc = Oidc::new(vec![cfg], memory_cache().await).unwrap();
    match full_login(&oidc, &provider, "victor").await {
        Err(OidcError::Config(reason)) => {
            assert!(reason.contains("invalid_client"), "{reason}");
            assert!(!reason.contains("not-the-secret"), "{reason}");
        }
        other => panic!("expected Config, got {other:?}"),
    }
}

/// The configured issuer must be exactly the one in the discovery document.
#[tokio::test]
async fn issuer_mismatch_in_discovery_is_a_configuration_error() {
    let Some((provider, _)) = setup(
        "issuer_mismatch_in_discovery_is_a_configuration_error",
        Default::default(),
    )
    .await
    else {
        return;
    };
    let mut cfg = config("test", &provider);
    cfg.issuer_url = format!("http://localhost:{}", provider.port);
    let oidc = Oidc::new(vec![cfg], memory_cache().await).unwrap();
    match oidc.begin("test", None).await {
        Err(OidcError::Config(reason)) => assert!(reason.contains("issuer"), "{reason}"),
        other => panic!("expected Config, got {other:?}"),
    }
}

/// A provider that accepts connections and never answers: every login waiting on the same
/// discovery shares its one timeout (10 s) instead of queueing for one timeout each.
#[tokio::test]
async fn concurrent_logins_share_one_discovery_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let blackhole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let oidc = Oidc::new(
        vec![ProviderConfig {
            name: "test".into(),
            issuer_url: format!("http://127.0.0.1:{port}"),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            scopes: vec![],
            redirect_url: "http://127.0.0.1:9/auth/callback/test".into(),
        }],
        memory_cache().await,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(
        oidc.begin("test", None),
        oidc.begin("test", None),
        oidc.begin("test", None)
    );
    let elapsed = started.elapsed();
    for result in [a, b, c] {
        assert!(
            matches!(result, Err(OidcError::ProviderUnavailable(_))),
            "{result:?}"
        );
    }
    assert!(
        elapsed < std::time::Duration::from_secs(18),
        "three concurrent logins took {elapsed:?}"
    );
    blackhole.abort();
}
