//! OIDC login end to end through `AuthService`, against a real provider (npm `oidc-provider`)
//! on loopback: login redirect, provider login, callback, tokens, an authenticated call; and a
//! wrong state, a replayed code, a tampered ID token and one for another audience, refused.

mod support;
// The provider harness of the OIDC crate's own tests, shared rather than copied.
#[path = "../crates/oidc/tests/support/mod.rs"]
mod oidc_support;

use auth::auth_service_client::AuthServiceClient;
use oidc_support::{
    login, prerequisites_or_skip, ProviderOptions, TestProvider, CLIENT_ID, CLIENT_SECRET,
};
use support::TestZen;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;
use zen::config::{GlobalArgs, ServeArgs};
use zen::proto::zen::auth::v1 as auth;

const PUBLIC_URL: &str = "http://zen.test";
const REDIRECT_URI: &str = "http://zen.test/auth/callback/test";

async fn start(provider: &TestProvider) -> TestZen {
    let providers = serde_json::json!([{
        "name": "test",
        "issuer_url": provider.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }]);
    TestZen::start_with(
        GlobalArgs::default(),
        ServeArgs {
            public_url: Some(PUBLIC_URL.into()),
            oidc_providers: Some(providers.to_string()),
            ..Default::default()
        },
    )
    .await
}

fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let id = uuid::Uuid::new_v4().to_string();
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

/// BeginLogin, then a person logging in at the provider; returns (code, state).
async fn authorize(client: &mut AuthServiceClient<Channel>, who: &str) -> (String, String) {
    let begun = client
        .begin_login(request(auth::BeginLoginRequest {
            provider: "test".into(),
            return_to: "/clusters".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(begun
        .authorization_url
        .contains("code_challenge_method=S256"));
    let callback = login(&begun.authorization_url, REDIRECT_URI, who).await;
    assert_eq!(callback.state, begun.state);
    (callback.code, callback.state)
}

async fn complete(
    client: &mut AuthServiceClient<Channel>,
    code: &str,
    state: &str,
) -> Result<auth::CompleteLoginResponse, tonic::Status> {
    client
        .complete_login(request(auth::CompleteLoginRequest {
            provider: "test".into(),
            code: code.into(),
            state: state.into(),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_person_logs_in_through_a_real_provider() {
    if !prerequisites_or_skip("a_person_logs_in_through_a_real_provider") {
        return;
    }
    let provider = TestProvider::start(ProviderOptions {
        redirect_uri: REDIRECT_URI.into(),
        ..Default::default()
    })
    .await;
    let zen = start(&provider).await;
    let mut client = AuthServiceClient::new(zen.service("gateway").await);

    let (code, state) = authorize(&mut client, "grace").await;
    let done = complete(&mut client, &code, &state).await.unwrap();
    assert_eq!(done.return_to, "/clusters");
    let token = done.token.unwrap();
    let mut me = Request::new(auth::GetCurrentUserRequest {});
    me.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token.access_token).parse().unwrap(),
    );
    let user = client
        .get_current_user(me)
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.email, "grace@example.test");
    assert_eq!(user.provider, provider.issuer);

    // The same callback again: the state is one-time.
    let replay = complete(&mut client, &code, &state).await.unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    assert_eq!(
        replay.get_details_error_info().unwrap().reason,
        "LOGIN_STATE_INVALID"
    );

    // A state Zen never issued.
    let (code, _) = authorize(&mut client, "grace").await;
    let forged = complete(&mut client, &code, "not-a-state")
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated);

    // A code already redeemed, presented with a fresh state.
    let (_, fresh_state) = authorize(&mut client, "grace").await;
    let (used_code, used_state) = authorize(&mut client, "grace").await;
    complete(&mut client, &used_code, &used_state)
        .await
        .unwrap();
    let replayed = complete(&mut client, &used_code, &fresh_state)
        .await
        .unwrap_err();
    assert_eq!(replayed.code(), Code::Unauthenticated);

    // ID tokens the provider tampers with: a bad signature, another client's audience.
    for mode in ["bad-signature", "wrong-audience"] {
        provider.set_tamper(mode).await;
        let (code, state) = authorize(&mut client, "grace").await;
        let refused = complete(&mut client, &code, &state).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{mode}");
    }
    zen.stop().await;
}
