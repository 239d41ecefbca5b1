//! People end to end: local login, bearer tokens relayed by the gateway identity, RBAC from the
//! store, refresh rotation and reuse detection, logout, key rotation, forged tokens.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use auth::auth_service_client::AuthServiceClient;
use support::TestZen;
use tenancy::tenancy_service_client::TenancyServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;
use zen::config::{GlobalArgs, ServeArgs};
use zen::proto::zen::auth::v1 as auth;
use zen::proto::zen::common::v1::Role;
use zen::proto::zen::tenancy::v1 as tenancy;
use zen_security::jwt::{Claims, KeyRing};

const PASSWORD: &str = "correct horse battery staple";

async fn start() -> TestZen {
    TestZen::start_with(
        GlobalArgs::default(),
        ServeArgs {
            local_login: Some(true),
            ..Default::default()
        },
    )
    .await
}

/// A request as the gateway relays it: the person's token, and a request id.
fn as_person<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    let id = uuid::Uuid::new_v4().to_string();
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

fn with_id<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let id = uuid::Uuid::new_v4().to_string();
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

async fn create_user(zen: &TestZen, username: &str) -> String {
    AuthServiceClient::new(zen.admin().await)
        .create_local_user(with_id(auth::CreateLocalUserRequest {
            username: username.into(),
            email: format!("{username}@example.test"),
            password: PASSWORD.into(),
            ..Default::default()
        }))
        .await
        .expect("create user")
        .into_inner()
        .user
        .unwrap()
        .user_id
}

async fn login(
    gateway: &Channel,
    username: &str,
    password: &str,
) -> Result<auth::TokenSet, tonic::Status> {
    AuthServiceClient::new(gateway.clone())
        .local_login(with_id(auth::LocalLoginRequest {
            username: username.into(),
            password: password.into(),
        }))
        .await
        .map(|r| r.into_inner().token.unwrap())
}

/// An operator invites `username` (at the address [`create_user`] gave them) with `role`; the
/// person accepts.
async fn join(
    zen: &TestZen,
    gateway: &Channel,
    tenant_id: &str,
    username: &str,
    token: &str,
    role: Role,
) {
    let invite = TenancyServiceClient::new(zen.admin().await)
        .create_invite(with_id(tenancy::CreateInviteRequest {
            tenant_id: tenant_id.into(),
            email: format!("{username}@example.test"),
            role: role as i32,
            ttl: None,
        }))
        .await
        .unwrap()
        .into_inner();
    TenancyServiceClient::new(gateway.clone())
        .accept_invite(as_person(
            token,
            tenancy::AcceptInviteRequest {
                invite_id: invite.invite.unwrap().invite_id,
                token: invite.token,
            },
        ))
        .await
        .expect("accept invite");
}

fn create_cluster(tenant_id: &str, name: &str) -> tenancy::CreateClusterRequest {
    tenancy::CreateClusterRequest {
        tenant_id: tenant_id.into(),
        cluster: Some(tenancy::Cluster {
            name: name.into(),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn people_log_in_and_roles_come_from_the_store() {
    let zen = start().await;
    let gateway = zen.service("gateway").await;
    let alice_id = create_user(&zen, "alice").await;
    create_user(&zen, "bob").await;
    create_user(&zen, "mallory").await;
    let tenant_id = TenancyServiceClient::new(zen.admin().await)
        .create_tenant(with_id(tenancy::CreateTenantRequest {
            tenant: Some(tenancy::Tenant {
                name: "acme".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap()
        .tenant_id;

    let alice = login(&gateway, "alice", PASSWORD).await.unwrap();
    assert_eq!(alice.token_type, "Bearer");
    join(
        &zen,
        &gateway,
        &tenant_id,
        "alice",
        &alice.access_token,
        Role::Owner,
    )
    .await;
    let bob = login(&gateway, "bob", PASSWORD).await.unwrap();
    join(
        &zen,
        &gateway,
        &tenant_id,
        "bob",
        &bob.access_token,
        Role::Viewer,
    )
    .await;
    let mallory = login(&gateway, "mallory", PASSWORD).await.unwrap();

    let mut tenancy = TenancyServiceClient::new(gateway.clone());
    // The owner may create clusters; the viewer may read but not create; a stranger may not read.
    tenancy
        .create_cluster(as_person(
            &alice.access_token,
            create_cluster(&tenant_id, "prod"),
        ))
        .await
        .expect("owner creates a cluster");
    let list = tenancy::ListClustersRequest {
        tenant_id: tenant_id.clone(),
        ..Default::default()
    };
    let seen = tenancy
        .list_clusters(as_person(&bob.access_token, list.clone()))
        .await
        .expect("viewer lists clusters")
        .into_inner()
        .clusters;
    assert_eq!(seen.len(), 1);
    let refused = tenancy
        .create_cluster(as_person(
            &bob.access_token,
            create_cluster(&tenant_id, "x"),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.get_details_error_info().unwrap().reason,
        "ROLE_TOO_LOW"
    );
    let stranger = tenancy
        .list_clusters(as_person(&mallory.access_token, list.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        stranger.get_details_error_info().unwrap().reason,
        "NOT_A_MEMBER"
    );

    // X-Tenant-Id must match the tenant addressed.
    let mut mismatched = as_person(&alice.access_token, list.clone());
    let other = uuid::Uuid::new_v4().to_string();
    mismatched
        .metadata_mut()
        .insert("x-tenant-id", other.parse().unwrap());
    let mismatch = tenancy.list_clusters(mismatched).await.unwrap_err();
    assert_eq!(
        mismatch.get_details_error_info().unwrap().reason,
        "TENANT_MISMATCH"
    );

    // Roles are read from the store per call: promoting bob works at once.
    tenancy
        .update_member_role(as_person(
            &alice.access_token,
            tenancy::UpdateMemberRoleRequest {
                tenant_id: tenant_id.clone(),
                user_id: bob_id(&zen, &gateway, &bob.access_token).await,
                role: Role::Admin as i32,
            },
        ))
        .await
        .unwrap();
    tenancy
        .create_cluster(as_person(
            &bob.access_token,
            create_cluster(&tenant_id, "staging"),
        ))
        .await
        .expect("bob is an admin now, with the same token");
    // An admin cannot hand out OWNER.
    let escalate = tenancy
        .update_member_role(as_person(
            &bob.access_token,
            tenancy::UpdateMemberRoleRequest {
                tenant_id: tenant_id.clone(),
                user_id: bob_id(&zen, &gateway, &bob.access_token).await,
                role: Role::Owner as i32,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(escalate.code(), Code::PermissionDenied);
    // The last owner can neither leave nor be demoted.
    let last_owner = tenancy
        .update_member_role(as_person(
            &alice.access_token,
            tenancy::UpdateMemberRoleRequest {
                tenant_id: tenant_id.clone(),
                user_id: alice_id.clone(),
                role: Role::Admin as i32,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(last_owner.code(), Code::FailedPrecondition);
    assert_eq!(
        last_owner.get_details_error_info().unwrap().reason,
        "LAST_OWNER"
    );
    let leave = tenancy
        .remove_member(as_person(
            &alice.access_token,
            tenancy::RemoveMemberRequest {
                tenant_id: tenant_id.clone(),
                user_id: alice_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(leave.code(), Code::FailedPrecondition);

    // Without a token the gateway's own identity may not act for a person.
    let anonymous = tenancy.list_clusters(with_id(list)).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    zen.stop().await;
}

async fn bob_id(zen: &TestZen, gateway: &Channel, token: &str) -> String {
    let _ = zen;
    AuthServiceClient::new(gateway.clone())
        .get_current_user(as_person(token, auth::GetCurrentUserRequest {}))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .user_id
}

#[tokio::test]
async fn refresh_rotates_reuse_revokes_and_logout_ends_the_session() {
    let zen = start().await;
    let gateway = zen.service("gateway").await;
    create_user(&zen, "carol").await;
    let mut client = AuthServiceClient::new(gateway.clone());
    let first = login(&gateway, "carol", PASSWORD).await.unwrap();
    let me = |token: String| auth::GetCurrentUserRequest {}.into_request_with(token);

    let second = client
        .refresh_token(with_id(auth::RefreshTokenRequest {
            refresh_token: first.refresh_token.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.session_id, first.session_id);
    client
        .get_current_user(me(second.access_token.clone()))
        .await
        .unwrap();

    // Replaying the rotated-away refresh token: stolen; the whole session is revoked.
    let reused = client
        .refresh_token(with_id(auth::RefreshTokenRequest {
            refresh_token: first.refresh_token.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::Unauthenticated);
    assert_eq!(
        reused.get_details_error_info().unwrap().reason,
        "SESSION_REVOKED"
    );
    let after = client
        .get_current_user(me(second.access_token.clone()))
        .await
        .unwrap_err();
    assert_eq!(
        after.code(),
        Code::Unauthenticated,
        "access tokens of the family die too"
    );
    let refreshed = client
        .refresh_token(with_id(auth::RefreshTokenRequest {
            refresh_token: second.refresh_token.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refreshed.code(), Code::Unauthenticated);

    // Logout: refused afterwards, immediately.
    let third = login(&gateway, "carol", PASSWORD).await.unwrap();
    client
        .get_current_user(me(third.access_token.clone()))
        .await
        .unwrap();
    client
        .logout(as_person(
            &third.access_token,
            auth::LogoutRequest::default(),
        ))
        .await
        .unwrap();
    let gone = client
        .get_current_user(me(third.access_token.clone()))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::Unauthenticated);
    // Services validate tokens as themselves (the gateway relays, it is never a principal).
    let validated = AuthServiceClient::new(zen.service("validator").await)
        .validate_token(auth::ValidateTokenRequest {
            token: third.access_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!validated.valid);
    zen.stop().await;
}

trait IntoRequestWith: Sized {
    fn into_request_with(self, token: String) -> Request<Self>;
}
impl<T> IntoRequestWith for T {
    fn into_request_with(self, token: String) -> Request<Self> {
        as_person(&token, self)
    }
}

#[tokio::test]
async fn failed_logins_look_alike_and_are_rate_limited() {
    let zen = start().await;
    let gateway = zen.service("gateway").await;
    create_user(&zen, "dave").await;
    let wrong = login(&gateway, "dave", "not the password at all")
        .await
        .unwrap_err();
    let unknown = login(&gateway, "nobody", "not the password at all")
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), unknown.message());
    assert_eq!(
        wrong.get_details_error_info().unwrap().reason,
        unknown.get_details_error_info().unwrap().reason
    );
    for _ in 0..4 {
        let _ = login(&gateway, "dave", "still wrong, still wrong").await;
    }
    let limited = login(&gateway, "dave", PASSWORD).await.unwrap_err();
    assert_eq!(
        limited.code(),
        Code::ResourceExhausted,
        "even the right password waits"
    );
    assert!(limited.get_details_retry_info().is_some());
    zen.stop().await;
}

#[tokio::test]
async fn local_login_is_off_unless_enabled() {
    let zen = TestZen::start().await;
    let gateway = zen.service("gateway").await;
    let refused = login(&gateway, "anyone", PASSWORD).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        refused.get_details_error_info().unwrap().reason,
        "LOCAL_LOGIN_DISABLED"
    );
    zen.stop().await;
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_and_forgeries_are_refused() {
    let zen = start().await;
    let gateway = zen.service("gateway").await;
    create_user(&zen, "erin").await;
    let mut client = AuthServiceClient::new(gateway.clone());
    let before = login(&gateway, "erin", PASSWORD).await.unwrap();
    let keys_dir = zen.data_dir.path().join("keys").join("jwt");
    let ring = KeyRing::open(&keys_dir, Duration::from_secs(1020), false).unwrap();
    let old_kid = ring.active_kid();

    // `zen keys rotate-jwt` on the shared key directory, while the server runs.
    std::thread::sleep(Duration::from_millis(1100));
    let new_kid = KeyRing::rotate(&keys_dir).unwrap();
    ring.reload().unwrap();
    let validator = AuthServiceClient::new(zen.service("validator").await);
    let claims = claims_of(&validator, &before.access_token).await;
    let new_token = ring.sign(&claims).unwrap();
    client
        .get_current_user(as_person(&new_token, auth::GetCurrentUserRequest {}))
        .await
        .expect("a token of the new key is accepted without a restart");
    client
        .get_current_user(as_person(
            &before.access_token,
            auth::GetCurrentUserRequest {},
        ))
        .await
        .expect("tokens of the previous key keep working until they expire");
    let jwks: Vec<String> = client
        .get_jwks(auth::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(jwks, [old_kid, new_kid.clone()]);
    let after = login(&gateway, "erin", PASSWORD).await.unwrap();
    let header = jsonwebtoken_header_kid(&after.access_token);
    assert_eq!(header, new_kid, "new logins are signed by the new key");

    // Forgeries, each refused with the same UNAUTHENTICATED.
    let mut forged: Vec<(&str, String)> = Vec::new();
    let mut expired = claims.clone();
    expired.exp = expired.iat - 3600;
    expired.iat -= 7200;
    expired.nbf = expired.iat;
    forged.push(("expired", ring.sign(&expired).unwrap()));
    let mut early = claims.clone();
    early.nbf += 3600;
    early.iat += 3600;
    early.exp += 3600;
    forged.push(("not yet valid", ring.sign(&early).unwrap()));
    let mut audience = claims.clone();
    audience.aud = "someone-else".into();
    forged.push(("wrong audience", ring.sign(&audience).unwrap()));
    let mut issuer = claims.clone();
    issuer.iss = "https://evil.example".into();
    forged.push(("wrong issuer", ring.sign(&issuer).unwrap()));
    let other_dir = tempfile::tempdir().unwrap();
    let stranger = KeyRing::open(other_dir.path(), Duration::from_secs(60), true).unwrap();
    forged.push(("unknown key", stranger.sign(&claims).unwrap()));
    let parts: Vec<&str> = before.access_token.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none_header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    forged.push(("alg none", format!("{none_header}.{}.", parts[1])));
    let mut admin = claims.clone();
    admin.zen_admin = true;
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(serde_json::to_vec(&admin).unwrap()),
        parts[2]
    );
    forged.push(("tampered payload", tampered));
    for (what, token) in forged {
        let refused = client
            .get_current_user(as_person(&token, auth::GetCurrentUserRequest {}))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{what}");
        assert_eq!(refused.message(), "invalid or expired token", "{what}");
    }
    zen.stop().await;
}

fn jsonwebtoken_header_kid(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    value["kid"].as_str().unwrap().to_owned()
}

/// The claims of a live token, as ValidateToken reports them, rebuilt for re-signing.
async fn claims_of(client: &AuthServiceClient<Channel>, token: &str) -> Claims {
    let claims = client
        .clone()
        .validate_token(auth::ValidateTokenRequest {
            token: token.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .claims
        .expect("a valid token");
    let secs = |t: Option<prost_types::Timestamp>| t.unwrap().seconds as u64;
    Claims {
        iss: claims.issuer,
        sub: claims.subject,
        aud: claims.audience[0].clone(),
        exp: secs(claims.expire_time),
        iat: secs(claims.issue_time),
        nbf: secs(claims.not_before_time),
        jti: uuid::Uuid::new_v4().to_string(),
        sid: claims.session_id,
        email: Some(claims.email),
        name: None,
        zen_admin: claims.platform_admin,
        zen_tenants: BTreeMap::new(),
    }
}
