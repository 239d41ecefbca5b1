//! `zen.auth.v1.AuthService`: logins (OIDC and local development accounts), token refresh,
//! logout, validation, the JWKS and local user management.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use zen_cache::Cache;
use zen_oidc::{Oidc, OidcError};
use zen_security::password::{hash_password, verify_password};
use zen_store::{AuditOutcome, ExternalIdentity, NewLocalUser, Scope, Store, User, LOCAL_ISSUER};

use super::support::{
    append_audit, invalid, opt_timestamp, role_to_proto, store_status, timestamp, Call, Mutation,
};
use crate::auth::{Auth, AuthError, Tokens};
use crate::grpc::authorize::Authorized;
use crate::proto::zen::auth::v1::{self as pb, auth_service_server::AuthService};

/// Failed local logins allowed in [`ATTEMPT_WINDOW`]: per account from one client address
/// (reset by a success there), per client address over all accounts, and per account over all
/// addresses. Successes never count, so a person who knows their password is refused only
/// when their own address or account is under attack; locking someone else's account out
/// takes [`MAX_FAILURES_PER_ACCOUNT`] failures from at least
/// `MAX_FAILURES_PER_ACCOUNT / MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS` addresses.
/// docs/SECURITY.md states the same numbers.
pub const MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS: u64 = 5;
pub const MAX_FAILURES_PER_ADDRESS: u64 = 30;
pub const MAX_FAILURES_PER_ACCOUNT: u64 = 100;
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(15 * 60);

pub struct AuthApi {
    auth: Arc<Auth>,
    store: Arc<Store>,
    cache: Arc<dyn Cache>,
    oidc: Option<Oidc>,
    local_login: bool,
}

impl AuthApi {
    pub fn new(
        auth: Arc<Auth>,
        store: Arc<Store>,
        cache: Arc<dyn Cache>,
        oidc: Option<Oidc>,
        local_login: bool,
    ) -> Self {
        Self {
            auth,
            store,
            cache,
            oidc,
            local_login,
        }
    }

    fn token_set(tokens: Tokens) -> pb::TokenSet {
        pb::TokenSet {
            access_token: tokens.access_token,
            token_type: "Bearer".into(),
            expires_in: tokens.access_expires_in.as_secs() as i32,
            refresh_token: tokens.refresh_token,
            refresh_expires_in: tokens.refresh_expires_in.as_secs() as i32,
            session_id: tokens.session_id,
        }
    }

    /// Opens a session for a user who proved who they are, auditing the login.
    async fn login(&self, call: &Call, user: &User, how: &str) -> Result<pb::TokenSet, Status> {
        let tokens = self.auth.start_session(user).await.map_err(auth_status)?;
        let mut record = call.audit(
            "auth.login",
            "user",
            user.id,
            AuditOutcome::Success,
            json!({ "method": how, "session_id": tokens.session_id }),
        );
        record.actor_type = "user".into();
        record.actor_id = Some(user.id.to_string());
        self.append_platform_audit(record).await;
        Ok(Self::token_set(tokens))
    }

    async fn append_platform_audit(&self, record: zen_store::NewAuditRecord) {
        append_audit(&self.store, &Scope::anonymous(), record, "authentication").await;
    }

    /// The attempt counters of one login: (key, limit) per scope of [`ATTEMPT_WINDOW`].
    fn attempt_keys(username: &str, address: &str) -> [(String, u64); 3] {
        [
            (
                format!("login-attempts:user:{username}:addr:{address}"),
                MAX_FAILURES_PER_ACCOUNT_AND_ADDRESS,
            ),
            (
                format!("login-attempts:addr:{address}"),
                MAX_FAILURES_PER_ADDRESS,
            ),
            (
                format!("login-attempts:user:{username}"),
                MAX_FAILURES_PER_ACCOUNT,
            ),
        ]
    }

    /// Counts an attempt before the password is checked (atomically, so concurrent guesses
    /// cannot slip past a limit) and refuses once a scope has too many attempts that did not
    /// succeed. A success is counted separately ([`Self::count_success`]) and subtracted, so
    /// only failures use up a limit.
    async fn count_attempt(&self, username: &str, address: &str) -> Result<(), Status> {
        for (key, limit) in Self::attempt_keys(username, address) {
            let attempts = self
                .cache
                .increment(&key, ATTEMPT_WINDOW)
                .await
                .map_err(cache_status)?;
            let successes = self
                .cache
                .get(&format!("{key}:ok"))
                .await
                .map_err(cache_status)?
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|text| text.parse::<u64>().ok())
                .unwrap_or(0);
            if attempts.saturating_sub(successes) > limit {
                let mut details = ErrorDetails::with_retry_info(Some(ATTEMPT_WINDOW));
                details.set_error_info("RATE_LIMITED", "zen", std::collections::HashMap::new());
                return Err(Status::with_error_details(
                    Code::ResourceExhausted,
                    "too many failed login attempts; try again later",
                    details,
                ));
            }
        }
        Ok(())
    }

    /// A successful login: clears this account's count at this address and takes the attempt
    /// back from the address's and the account's counts.
    async fn count_success(&self, username: &str, address: &str) {
        let [own, by_address, by_account] = Self::attempt_keys(username, address);
        let _ = self.cache.delete(&own.0).await;
        let _ = self.cache.delete(&format!("{}:ok", own.0)).await;
        for (key, _) in [by_address, by_account] {
            let _ = self
                .cache
                .increment(&format!("{key}:ok"), ATTEMPT_WINDOW)
                .await;
        }
    }
}

fn user_to_proto(user: &User) -> pb::User {
    let local = user.issuer == LOCAL_ISSUER;
    pb::User {
        user_id: user.id.to_string(),
        username: if local {
            user.subject.clone()
        } else {
            String::new()
        },
        email: user.email.clone().unwrap_or_default(),
        display_name: user.display_name.clone().unwrap_or_default(),
        provider: if local {
            "local".into()
        } else {
            user.issuer.clone()
        },
        platform_admin: user.is_platform_admin,
        create_time: Some(timestamp(user.created_at)),
        update_time: Some(timestamp(user.updated_at)),
        last_login_time: None,
    }
}

fn unauthenticated(reason: &str, message: &str) -> Status {
    Status::with_error_details(
        Code::Unauthenticated,
        message,
        ErrorDetails::with_error_info(reason, "zen", std::collections::HashMap::new()),
    )
}

fn auth_status(error: AuthError) -> Status {
    match error {
        AuthError::InvalidToken(_) | AuthError::InvalidRefreshToken => {
            unauthenticated("TOKEN_INVALID", "invalid or expired token")
        }
        AuthError::RefreshTokenReused => {
            unauthenticated("SESSION_REVOKED", "the session was revoked; sign in again")
        }
        AuthError::Cache(error) => cache_status(error),
        AuthError::Store(error) => store_status(error, ""),
        AuthError::Signing(error) => {
            tracing::error!(%error, "cannot sign tokens");
            Status::internal("internal error")
        }
    }
}

fn cache_status(error: zen_cache::CacheError) -> Status {
    tracing::error!(%error, "cache unavailable");
    Status::unavailable("the cache is unavailable; retry later")
}

fn oidc_status(error: OidcError) -> Status {
    match error {
        OidcError::UnknownProvider(_) => Status::with_error_details(
            Code::NotFound,
            "unknown login provider",
            ErrorDetails::with_error_info(
                "UNKNOWN_PROVIDER",
                "zen",
                std::collections::HashMap::new(),
            ),
        ),
        OidcError::StateInvalid => unauthenticated(
            "LOGIN_STATE_INVALID",
            "the login expired or was already used; start again",
        ),
        OidcError::CodeRejected(detail) | OidcError::IdTokenInvalid(detail) => {
            tracing::warn!(%detail, "OIDC login refused");
            unauthenticated(
                "LOGIN_STATE_INVALID",
                "the login could not be verified; start again",
            )
        }
        OidcError::ProviderUnavailable(detail) => {
            tracing::warn!(%detail, "OIDC provider unavailable");
            Status::unavailable("the login provider is unavailable; retry later")
        }
        OidcError::Config(detail) => {
            tracing::error!(%detail, "OIDC configuration");
            Status::internal("internal error")
        }
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn begin_login(
        &self,
        request: Request<pb::BeginLoginRequest>,
    ) -> Result<Response<pb::BeginLoginResponse>, Status> {
        let req = request.into_inner();
        let oidc = self
            .oidc
            .as_ref()
            .ok_or_else(|| oidc_status(OidcError::UnknownProvider(req.provider.clone())))?;
        let return_to = Some(req.return_to).filter(|r| !r.is_empty());
        let start = oidc
            .begin(&req.provider, return_to)
            .await
            .map_err(oidc_status)?;
        Ok(Response::new(pb::BeginLoginResponse {
            authorization_url: start.authorization_url,
            state: start.state,
            expire_time: Some(timestamp(start.expires_at)),
        }))
    }

    async fn complete_login(
        &self,
        request: Request<pb::CompleteLoginRequest>,
    ) -> Result<Response<pb::CompleteLoginResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let oidc = self
            .oidc
            .as_ref()
            .ok_or_else(|| oidc_status(OidcError::UnknownProvider(req.provider.clone())))?;
        if !req.error.is_empty() {
            tracing::info!(error = %req.error, "the provider refused the login");
            return Err(unauthenticated(
                "LOGIN_STATE_INVALID",
                "the provider refused the login",
            ));
        }
        if req.code.is_empty() {
            return Err(invalid(&[("code", "is required")]));
        }
        let login = oidc
            .complete(&req.provider, &req.code, &req.state)
            .await
            .map_err(oidc_status)?;
        let identity = ExternalIdentity {
            issuer: login.issuer.clone(),
            subject: login.subject.clone(),
            email: login.email.clone().filter(|_| login.email_verified),
            display_name: login.name.clone(),
        };
        let mut tx = self
            .store
            .begin(&Scope::anonymous())
            .await
            .map_err(|e| store_status(e, ""))?;
        let user = tx
            .users()
            .upsert_external(identity)
            .await
            .map_err(|e| store_status(e, ""))?;
        tx.commit().await.map_err(|e| store_status(e, ""))?;
        let token = self.login(&call, &user, "oidc").await?;
        Ok(Response::new(pb::CompleteLoginResponse {
            token: Some(token),
            user: Some(user_to_proto(&user)),
            return_to: login.return_to.unwrap_or_default(),
        }))
    }

    async fn local_login(
        &self,
        request: Request<pb::LocalLoginRequest>,
    ) -> Result<Response<pb::LocalLoginResponse>, Status> {
        let call = Call::of(&request)?;
        if !self.local_login {
            return Err(Status::with_error_details(
                Code::FailedPrecondition,
                "local login is disabled (ZEN_LOCAL_LOGIN)",
                ErrorDetails::with_error_info(
                    "LOCAL_LOGIN_DISABLED",
                    "zen",
                    std::collections::HashMap::new(),
                ),
            ));
        }
        let req = request.into_inner();
        let address = call
            .context
            .client_address
            .map(|a| a.to_string())
            .unwrap_or_default();
        if let Err(refused) = self.count_attempt(&req.username, &address).await {
            let mut record = call.audit(
                "auth.login",
                "user",
                "",
                AuditOutcome::Denied,
                json!({ "method": "local", "username": req.username, "reason": "RATE_LIMITED" }),
            );
            record.actor_type = "user".into();
            self.append_platform_audit(record).await;
            return Err(refused);
        }
        let user = {
            let mut tx = self
                .store
                .begin_read(&Scope::anonymous())
                .await
                .map_err(|e| store_status(e, ""))?;
            tx.users().get_by_username(&req.username).await.ok()
        };
        // The same work and the same answer whether or not the account exists.
        let password = req.password;
        let hash = user.as_ref().and_then(|u| u.password_hash.clone());
        let verified =
            tokio::task::spawn_blocking(move || verify_password(&password, hash.as_deref()))
                .await
                .unwrap_or(false);
        let Some(user) = user.filter(|_| verified) else {
            let mut record = call.audit(
                "auth.login",
                "user",
                "",
                AuditOutcome::Failure,
                json!({ "method": "local", "username": req.username }),
            );
            record.actor_type = "user".into();
            self.append_platform_audit(record).await;
            return Err(unauthenticated(
                "INVALID_CREDENTIALS",
                "invalid username or password",
            ));
        };
        self.count_success(&req.username, &address).await;
        let token = self.login(&call, &user, "local").await?;
        Ok(Response::new(pb::LocalLoginResponse {
            token: Some(token),
            user: Some(user_to_proto(&user)),
        }))
    }

    async fn refresh_token(
        &self,
        request: Request<pb::RefreshTokenRequest>,
    ) -> Result<Response<pb::RefreshTokenResponse>, Status> {
        let call = Call::of(&request)?;
        let refresh_token = request.into_inner().refresh_token;
        match self.auth.refresh(&refresh_token).await {
            Ok(tokens) => Ok(Response::new(pb::RefreshTokenResponse {
                token: Some(Self::token_set(tokens)),
            })),
            Err(error) => {
                if matches!(error, AuthError::RefreshTokenReused) {
                    let record = call.audit(
                        "auth.session.revoke",
                        "session",
                        "",
                        AuditOutcome::Denied,
                        json!({ "reason": "refresh token reused" }),
                    );
                    self.append_platform_audit(record).await;
                }
                Err(auth_status(error))
            }
        }
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let call = Call::of(&request)?;
        let bearer_session = request
            .extensions()
            .get::<Authorized>()
            .and_then(|a| a.session_id.clone());
        let refresh_token = request.into_inner().refresh_token;
        let session = match bearer_session {
            Some(session) => Some(session),
            None if !refresh_token.is_empty() => self
                .auth
                .session_of(&refresh_token)
                .await
                .map_err(auth_status)?,
            None => None,
        };
        let Some(session) = session else {
            return Err(unauthenticated(
                "AUTHENTICATION_REQUIRED",
                "send the access token or the refresh token of the session to end",
            ));
        };
        self.auth.revoke(&session).await.map_err(auth_status)?;
        let record = call.audit(
            "auth.logout",
            "session",
            &session,
            AuditOutcome::Success,
            json!({}),
        );
        self.append_platform_audit(record).await;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn validate_token(
        &self,
        request: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::ValidateTokenResponse>, Status> {
        let token = request.into_inner().token;
        let principal = match self.auth.authenticate(&token).await {
            Ok(principal) => principal,
            Err(AuthError::Cache(error)) => return Err(cache_status(error)),
            Err(_) => {
                return Ok(Response::new(pb::ValidateTokenResponse {
                    valid: false,
                    invalid_reason: "invalid or expired token".into(),
                    claims: None,
                }))
            }
        };
        let claims = principal.claims;
        let at = |secs: u64| chrono::DateTime::from_timestamp(secs as i64, 0);
        Ok(Response::new(pb::ValidateTokenResponse {
            valid: true,
            invalid_reason: String::new(),
            claims: Some(pb::Claims {
                issuer: claims.iss,
                subject: claims.sub,
                audience: vec![claims.aud],
                issue_time: opt_timestamp(at(claims.iat)),
                not_before_time: opt_timestamp(at(claims.nbf)),
                expire_time: opt_timestamp(at(claims.exp)),
                token_id: claims.jti,
                session_id: claims.sid,
                email: claims.email.unwrap_or_default(),
                name: claims.name.unwrap_or_default(),
                platform_admin: claims.zen_admin,
                tenant_roles: claims
                    .zen_tenants
                    .into_iter()
                    .map(|(tenant_id, role)| pb::TenantRole {
                        tenant_id,
                        role: role
                            .parse::<zen_store::Role>()
                            .map(|r| role_to_proto(r) as i32)
                            .unwrap_or_default(),
                    })
                    .collect(),
            }),
        }))
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        let keys = self
            .auth
            .keys()
            .jwks()
            .into_iter()
            .map(|k| pb::JsonWebKey {
                kid: k.kid,
                kty: k.kty,
                alg: k.alg,
                r#use: k.use_,
                n: k.n,
                e: k.e,
            })
            .collect();
        Ok(Response::new(pb::GetJwksResponse { keys }))
    }

    async fn get_current_user(
        &self,
        request: Request<pb::GetCurrentUserRequest>,
    ) -> Result<Response<pb::GetCurrentUserResponse>, Status> {
        let call = Call::of(&request)?;
        let user_id = call
            .caller
            .user_id()
            .ok_or_else(|| unauthenticated("AUTHENTICATION_REQUIRED", "sign in first"))?;
        let mut tx = self
            .store
            .begin_read(&Scope::user(user_id))
            .await
            .map_err(|e| store_status(e, ""))?;
        let user = tx
            .users()
            .get(user_id)
            .await
            .map_err(|e| store_status(e, ""))?;
        let memberships = tx
            .members()
            .memberships(user_id)
            .await
            .map_err(|e| store_status(e, ""))?;
        Ok(Response::new(pb::GetCurrentUserResponse {
            user: Some(user_to_proto(&user)),
            memberships: memberships
                .into_iter()
                .map(|m| pb::Membership {
                    tenant_id: m.tenant.id.to_string(),
                    tenant_name: m.tenant.name,
                    tenant_display_name: m.tenant.display_name,
                    role: role_to_proto(m.role) as i32,
                    join_time: None,
                })
                .collect(),
        }))
    }

    async fn create_local_user(
        &self,
        request: Request<pb::CreateLocalUserRequest>,
    ) -> Result<Response<pb::CreateLocalUserResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let password = req.password.clone();
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|_| Status::internal("internal error"))?
            .map_err(|e| invalid(&[("password", &e.to_string())]))?;
        let new = NewLocalUser {
            username: req.username,
            email: Some(req.email).filter(|e| !e.is_empty()),
            display_name: Some(req.display_name).filter(|d| !d.is_empty()),
            password_hash: hash,
        };
        let platform_admin = req.platform_admin;
        let scope = call.scope(None);
        let user = call
            .mutate(&self.store, &scope, "user.create", "user", move |tx| {
                Box::pin(async move {
                    let mut user = tx
                        .users()
                        .create_local(new)
                        .await
                        .map_err(|e| store_status(e, ""))?;
                    if platform_admin {
                        user = tx
                            .users()
                            .set_platform_admin(user.id, true)
                            .await
                            .map_err(|e| store_status(e, ""))?;
                    }
                    let details =
                        json!({ "username": user.subject, "platform_admin": platform_admin });
                    Ok(Mutation::new(user_to_proto(&user), user.id, details))
                })
            })
            .await?;
        Ok(Response::new(pb::CreateLocalUserResponse {
            user: Some(user),
        }))
    }
}
