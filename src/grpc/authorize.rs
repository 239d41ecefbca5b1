//! The authorization layer: identifies the caller, applies [`crate::authz::decide`] to every
//! call of every Zen service before the service runs, and audits each decision, allowed or
//! denied.
//!
//! Identity: the client certificate names agents, services and operators; a person is named by
//! a bearer token that a trusted relay (the gateway's service identity, or an operator's tool)
//! forwards in `authorization`, validated by [`crate::auth::Auth::authenticate`]. For people,
//! the role in the addressed tenant is read from the store for every call (the token's claims
//! are only hints); the tenant is the request's `tenant_id` field, read from the message.
//!
//! Health and reflection (`grpc.*`) are outside the domain and pass untouched; every `/zen.*`
//! path must have a policy in the contracts or it is refused.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full, Limited};
use prost_reflect::{DynamicMessage, MethodDescriptor, ReflectMessage};
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};
use uuid::Uuid;
use zen_security::PeerIdentity;
use zen_store::{AuditOutcome, Role, Scope, Store};

use super::edge::RequestContext;
use super::services::support::{append_audit, audit_record};
use crate::audit_batch::AuditBatcher;
use crate::auth::Auth;
use crate::authz::{decide, Caller, CallerKind, Denial, PolicyTable};
use crate::limits::{LimitError, RateLimiter, Subject};
use crate::snapshot::{Invalidate, Invalidations, Snapshot};

/// Largest request message the layer reads to find the tenant (tonic's own default limit).
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
const TENANT_HEADER: &str = "x-tenant-id";

/// What the layer established, for the service handlers.
#[derive(Clone, Debug)]
pub struct Authorized {
    pub caller: Caller,
    /// The caller's role in the addressed tenant, when one was read for the decision.
    pub role: Option<Role>,
    /// The session of a person's bearer token.
    pub session_id: Option<String>,
}

#[derive(Clone)]
pub struct AuthzLayer {
    shared: Arc<Shared>,
}

struct Shared {
    table: PolicyTable,
    store: Arc<Store>,
    auth: Arc<Auth>,
    /// Group commit for the decisions of allowed read-only calls.
    reads: AuditBatcher,
    /// Recently read platform-admin flags of users (a missing user is not kept).
    users: Snapshot<Uuid, bool>,
    /// Recently read roles of users in tenants (`None`: not a member).
    roles: Snapshot<(Uuid, Uuid), Option<Role>>,
    /// Per-address, per-person and per-tenant request budgets.
    limiter: Arc<RateLimiter>,
    /// Where changes to what snapshots hold are announced.
    invalidations: Arc<Invalidations>,
}

impl Invalidate for Shared {
    fn invalidate(&self) {
        self.users.clear();
        self.roles.clear();
    }
}

impl AuthzLayer {
    pub fn new(
        table: PolicyTable,
        store: Arc<Store>,
        auth: Arc<Auth>,
        limiter: Arc<RateLimiter>,
        invalidations: Arc<Invalidations>,
    ) -> Self {
        let shared = Arc::new(Shared {
            limiter,
            reads: AuditBatcher::start(store.clone()),
            users: Snapshot::new(SNAPSHOT_TTL),
            roles: Snapshot::new(SNAPSHOT_TTL),
            table,
            store,
            auth,
            invalidations: invalidations.clone(),
        });
        invalidations.register(shared.clone());
        Self { shared }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for Authorize<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !request.uri().path().starts_with("/zen.") {
            return Box::pin(inner.call(request));
        }
        let shared = self.shared.clone();
        Box::pin(async move {
            // A change to people, memberships, tenants or webhook sources ends the snapshots
            // of every replica once it is done, before it is answered.
            let changes_snapshots = changes_snapshots(request.uri().path())
                && shared
                    .table
                    .get(request.uri().path())
                    .is_some_and(|p| p.mutating);
            match shared.authorize(request).await {
                Ok(request) => {
                    let response = inner.call(request).await;
                    if changes_snapshots {
                        shared.invalidations.changed();
                    }
                    response
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// A call refused before the policy was applied (a bad token, a tenant header that does not
/// match): who it was refused to, for the audit record, and the answer.
struct Refused {
    caller: Caller,
    reason: &'static str,
    status: Status,
}

impl Refused {
    fn new(caller: &Caller, reason: &'static str, status: Status) -> Self {
        Self {
            caller: caller.clone(),
            reason,
            status,
        }
    }
}

/// What identification and tenant resolution established.
struct Resolved {
    request: http::Request<Body>,
    caller: Caller,
    session_id: Option<String>,
    role: Option<Role>,
    tenant: Option<Uuid>,
}

impl Shared {
    /// The whole decision for one call: identity, tenant role, policy, audit. Every refusal is
    /// audited, whatever step refused it; an allowed call is served only once its decision is
    /// recorded.
    async fn authorize(&self, request: http::Request<Body>) -> Result<http::Request<Body>, Status> {
        let method = request.uri().path().to_owned();
        let context = request.extensions().get::<RequestContext>().cloned();
        let policy = self.table.get(&method).cloned();
        let (request, message) = match self.table.method(&method) {
            Some(descriptor) if !descriptor.is_client_streaming() => {
                read_request(request, descriptor).await?
            }
            _ => (request, None),
        };
        let Resolved {
            mut request,
            caller,
            session_id,
            role,
            tenant,
        } = match self
            .resolve(
                request,
                message.as_ref(),
                &method,
                context.as_ref(),
                policy.as_ref(),
            )
            .await
        {
            Ok(resolved) => resolved,
            Err(Ok(refused)) => {
                let details = serde_json::json!({
                    "reason": refused.reason,
                    "message": refused.status.message(),
                });
                let record = audit_record(
                    &refused.caller,
                    context.as_ref(),
                    "authz.decide",
                    "method",
                    &method,
                    AuditOutcome::Denied,
                    details,
                );
                let scope = Scope {
                    tenant_id: None,
                    user_id: refused.caller.user_id(),
                    platform_admin: refused.caller.is_platform_admin(),
                };
                append_audit(&self.store, &scope, record, "authz_refusal").await;
                return Err(refused.status);
            }
            // A dependency failed: nothing was decided.
            Err(Err(status)) => return Err(status),
        };

        // Budgets are spent before anything is decided or written: a flood costs a cache call
        // per request, not an audit record.
        self.spend_budgets(&caller, tenant, role, context.as_ref(), policy.as_ref())
            .await?;

        let decision = decide(policy.as_ref(), &caller, role);
        let audit_tenant = match &caller {
            Caller::Agent { tenant_id, .. } => Some(*tenant_id),
            _ => tenant,
        };
        if let Some(tenant_id) = audit_tenant {
            // The call's span (made by the edge) names the tenant it acts for.
            tracing::Span::current().record("zen.tenant_id", tenant_id.to_string());
        }
        // A public method that authenticates and audits each request itself (webhook
        // signatures, recorded in the owning tenant's chain with the events they store) has
        // nothing to add here: allowing an anonymous caller through is not yet a decision.
        let self_audited = decision.is_ok()
            && matches!(caller, Caller::Anonymous)
            && policy.as_ref().is_some_and(|p| p.audits_own_authentication);
        if !self_audited {
            if let Err(error) = self
                .audit_decision(
                    context.as_ref(),
                    &caller,
                    audit_tenant,
                    &method,
                    &decision,
                    policy.as_ref().is_some_and(|p| !p.mutating),
                )
                .await
            {
                if error.is_unavailable() {
                    crate::outage::DATABASE.failed(&error);
                } else {
                    tracing::error!(%error, method, "could not audit an authorization decision");
                }
                if decision.is_ok() {
                    // No allowed call goes unrecorded: without the audit log, nothing is served.
                    return Err(Status::with_error_details(
                        Code::Unavailable,
                        "the audit log is unavailable; retry later",
                        ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1))),
                    ));
                }
                // A refusal stays a refusal, counted as lost evidence.
                metrics::counter!("zen_audit_records_lost_total", "kind" => "authz_decision")
                    .increment(1);
            }
        }
        match decision {
            Ok(()) => {
                request.extensions_mut().insert(Authorized {
                    caller,
                    role,
                    session_id,
                });
                Ok(request)
            }
            // A call with no person's token (an anonymous HTTP client through the gateway) on a
            // method for people: unauthenticated, not forbidden.
            Err(Denial::CallerNotAllowed(CallerKind::Public))
                if policy
                    .as_ref()
                    .is_some_and(|p| p.callers.contains(&CallerKind::User)) =>
            {
                Err(error(
                    Code::Unauthenticated,
                    "AUTHENTICATION_REQUIRED",
                    "this method needs a signed-in person: send `authorization: Bearer <token>`",
                ))
            }
            Err(denial) => Err(error(
                Code::PermissionDenied,
                denial.reason(),
                denial.to_string(),
            )),
        }
    }

    /// The request budgets of the call: an anonymous caller's address (on public methods that
    /// do not authenticate each request themselves: webhooks meter their own unverified
    /// requests), a person's own budget and, for a member (or a platform admin), the addressed
    /// tenant's `requests_per_second`: someone outside a tenant cannot spend its budget by
    /// naming it in refused calls. Agents are metered per batch on their stream; services and
    /// operators are not metered.
    async fn spend_budgets(
        &self,
        caller: &Caller,
        tenant: Option<Uuid>,
        role: Option<Role>,
        context: Option<&RequestContext>,
        policy: Option<&crate::authz::MethodPolicy>,
    ) -> Result<(), Status> {
        let settings = self.limiter.settings();
        match caller {
            Caller::Anonymous => {
                if policy.is_some_and(|p| p.audits_own_authentication) {
                    return Ok(());
                }
                let Some(address) = context.and_then(|c| c.client_address) else {
                    return Ok(());
                };
                self.limiter
                    .check(&Subject::Address(address), settings.anonymous, 1)
                    .await
                    .map_err(|limited| limited.status())
            }
            Caller::User {
                user_id,
                platform_admin,
            } => {
                self.limiter
                    .check(&Subject::User(*user_id), settings.user, 1)
                    .await
                    .map_err(|limited| limited.status())?;
                let Some(tenant_id) = tenant.filter(|_| role.is_some() || *platform_admin) else {
                    return Ok(());
                };
                match self.limiter.tenant(&self.store, tenant_id).await {
                    Ok(()) => Ok(()),
                    Err(LimitError::Limited(limited)) => Err(limited.status()),
                    // No such tenant (the decision refuses it) or no store: the call goes on
                    // to meet the same condition where it is answered properly.
                    Err(LimitError::Store(_)) => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Identifies the caller and, for a person, the addressed tenant and their role in it.
    /// `Err(Ok(_))` is a refusal (audited by the caller); `Err(Err(_))` ends the call undecided
    /// (a dependency failed, or the request breaks its contract's rules).
    async fn resolve(
        &self,
        request: http::Request<Body>,
        message: Option<&DynamicMessage>,
        method: &str,
        context: Option<&RequestContext>,
        policy: Option<&crate::authz::MethodPolicy>,
    ) -> Result<Resolved, Result<Refused, Status>> {
        let public = policy.is_some_and(|p| p.callers.contains(&CallerKind::Public));
        let (caller, session_id) = self.identify(context, request.headers(), public).await?;
        // Who is calling is known; before any policy, store or handler sees the request, it
        // must keep its contract's rules (a broken one decides nothing, so it is not audited).
        if let Some(message) = message {
            super::validate::check(message).map_err(Err)?;
        }
        let mut role = None;
        let mut tenant = None;
        if let (
            Caller::User {
                user_id,
                platform_admin,
            },
            Some(policy),
        ) = (&caller, policy)
        {
            let refuse = |reason, status| Err(Ok(Refused::new(&caller, reason, status)));
            let stated = match stated_tenant(request.headers()) {
                Ok(stated) => stated,
                Err(status) => return refuse("TENANT_HEADER_INVALID", status),
            };
            if let Some(descriptor) = self.table.method(method) {
                if descriptor.is_client_streaming() {
                    // Client-streaming methods carry no single tenant.
                    return refuse(
                        "CALLER_NOT_ALLOWED",
                        error(
                            Code::PermissionDenied,
                            "CALLER_NOT_ALLOWED",
                            "streaming methods are not open to people",
                        ),
                    );
                }
                let from_message = match tenant_of_message(message) {
                    Ok(found) => found,
                    Err(status) => return refuse("TENANT_ID_INVALID", status),
                };
                if let (Some(stated), Some(addressed)) = (stated, from_message) {
                    if stated != addressed {
                        return refuse(
                            "TENANT_MISMATCH",
                            error(
                                Code::PermissionDenied,
                                "TENANT_MISMATCH",
                                "X-Tenant-Id does not match the tenant the request addresses",
                            ),
                        );
                    }
                }
                tenant = from_message.or(stated);
            }
            if let Some(tenant_id) = tenant {
                role = match self.roles.get(&(tenant_id, *user_id)) {
                    Some(role) => role,
                    None => {
                        let generation = self.roles.generation();
                        let scope = Scope::tenant(tenant_id, Some(*user_id));
                        let read = async {
                            let mut tx = self.store.begin_read(&scope).await?;
                            tx.members().role_of(*user_id).await
                        };
                        let role = read.await.map_err(|e| Err(unavailable(e)))?;
                        self.roles.put(generation, (tenant_id, *user_id), role);
                        role
                    }
                };
                // A header naming a tenant the person does not belong to is refused even on
                // methods that need no role there.
                if stated.is_some() && role.is_none() && !platform_admin {
                    return refuse(
                        "TENANT_MISMATCH",
                        error(
                            Code::PermissionDenied,
                            "TENANT_MISMATCH",
                            "X-Tenant-Id names a tenant the caller is not a member of",
                        ),
                    );
                }
            } else if policy.min_role.is_some() {
                return refuse(
                    "TENANT_ID_MISSING",
                    super::services::support::invalid(&[("tenant_id", "is required")]),
                );
            }
        }
        Ok(Resolved {
            request,
            caller,
            session_id,
            role,
            tenant,
        })
    }

    /// The certificate's identity, or the person behind a bearer token relayed by a trusted
    /// peer. A bad token is refused (UNAUTHENTICATED, no detail), except on public methods,
    /// which then run as the relay.
    async fn identify(
        &self,
        context: Option<&RequestContext>,
        headers: &http::HeaderMap,
        public: bool,
    ) -> Result<(Caller, Option<String>), Result<Refused, Status>> {
        let peer_caller = context
            .map(Caller::from_context)
            .unwrap_or(Caller::Anonymous);
        let Some(token) = bearer_token(headers) else {
            return Ok((peer_caller, None));
        };
        let token_invalid = |message: &str| {
            Err(Ok(Refused::new(
                &peer_caller,
                "TOKEN_INVALID",
                error(Code::Unauthenticated, "TOKEN_INVALID", message),
            )))
        };
        let relay_trusted = matches!(
            context.and_then(|c| c.peer.as_ref()),
            Some(PeerIdentity::Service { .. } | PeerIdentity::Admin { .. })
        );
        if !relay_trusted {
            return token_invalid("bearer tokens are accepted only through the gateway");
        }
        let principal = match self.auth.authenticate(token).await {
            Ok(principal) => principal,
            Err(crate::auth::AuthError::Cache(e)) => {
                tracing::error!(error = %e, "cache unavailable during authentication");
                return Err(Err(Status::unavailable(
                    "the session store is unavailable; retry later",
                )));
            }
            Err(_) if public => return Ok((peer_caller, None)),
            Err(_) => return token_invalid("invalid or expired token"),
        };
        let platform_admin = match self.users.get(&principal.user_id) {
            Some(platform_admin) => platform_admin,
            None => {
                let generation = self.users.generation();
                let mut tx = self
                    .store
                    .begin_read(&Scope::user(principal.user_id))
                    .await
                    .map_err(|e| Err(unavailable(e)))?;
                let user = match tx.users().get(principal.user_id).await {
                    Ok(user) => user,
                    Err(zen_store::StoreError::NotFound { .. }) => {
                        return token_invalid("invalid or expired token")
                    }
                    Err(e) => return Err(Err(unavailable(e))),
                };
                self.users.put(generation, user.id, user.is_platform_admin);
                user.is_platform_admin
            }
        };
        Ok((
            Caller::User {
                user_id: principal.user_id,
                platform_admin,
            },
            Some(principal.session_id),
        ))
    }

    /// Appends the decision to the addressed tenant's chain, or the platform chain. An allowed
    /// read-only call's record goes through the group commit; refusals and mutations are
    /// appended in a transaction of their own.
    async fn audit_decision(
        &self,
        context: Option<&RequestContext>,
        caller: &Caller,
        tenant: Option<Uuid>,
        method: &str,
        decision: &Result<(), Denial>,
        read_only: bool,
    ) -> Result<(), zen_store::StoreError> {
        let scope = Scope {
            tenant_id: tenant,
            user_id: caller.user_id(),
            platform_admin: caller.is_platform_admin(),
        };
        let (outcome, details) = match decision {
            Ok(()) => (AuditOutcome::Success, serde_json::json!({})),
            Err(denial) => (
                AuditOutcome::Denied,
                serde_json::json!({ "reason": denial.reason(), "message": denial.to_string() }),
            ),
        };
        let record = audit_record(
            caller,
            context,
            "authz.decide",
            "method",
            method,
            outcome,
            details,
        );
        if read_only && decision.is_ok() && self.reads.append(&scope, record.clone()).await {
            return Ok(());
        }
        let mut tx = self.store.begin(&scope).await?;
        tx.audit().append(record).await?;
        tx.commit().await
    }
}

fn error(code: Code, reason: &str, message: impl Into<String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, "zen", HashMap::new()),
    )
}

fn unavailable(error: zen_store::StoreError) -> Status {
    crate::grpc::services::support::database_down(&error)
}

fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn stated_tenant(headers: &http::HeaderMap) -> Result<Option<Uuid>, Status> {
    match headers.get(TENANT_HEADER) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| Uuid::parse_str(v).ok())
            .map(Some)
            .ok_or_else(|| super::services::support::invalid(&[(TENANT_HEADER, "must be a UUID")])),
    }
}

/// Reads a unary request's message once and hands back an equivalent request with the decoded
/// message (checked against its contract once the caller is known). A frame that does not
/// decode is left to the service's own decoding (which refuses it); client-streaming requests
/// are not read here (their messages are checked where the stream is consumed).
async fn read_request(
    request: http::Request<Body>,
    method: &MethodDescriptor,
) -> Result<(http::Request<Body>, Option<DynamicMessage>), Status> {
    let (parts, body) = request.into_parts();
    let bytes = Limited::new(body, MAX_MESSAGE_BYTES + 5)
        .collect()
        .await
        .map_err(|_| Status::resource_exhausted("request message too large"))?
        .to_bytes();
    let message =
        read_frame(&bytes).and_then(|frame| DynamicMessage::decode(method.input(), frame).ok());
    Ok((
        http::Request::from_parts(parts, Body::new(Full::new(bytes))),
        message,
    ))
}

/// The request's `tenant_id` field, when its method has one.
fn tenant_of_message(message: Option<&DynamicMessage>) -> Result<Option<Uuid>, Status> {
    let Some(message) = message else {
        return Ok(None);
    };
    let Some(field) = message.descriptor().get_field_by_name("tenant_id") else {
        return Ok(None);
    };
    // The contract's string.uuid rule has been checked by now.
    super::validate::optional_id(
        "tenant_id",
        message.get_field(&field).as_str().unwrap_or(""),
    )
}

/// The message of one uncompressed gRPC frame: flag (0), 4-byte big-endian length, bytes.
fn read_frame(bytes: &Bytes) -> Option<Bytes> {
    let mut buf = bytes.clone();
    if buf.remaining() < 5 || buf.get_u8() != 0 {
        return None;
    }
    let length = buf.get_u32() as usize;
    (buf.remaining() >= length).then(|| buf.copy_to_bytes(length))
}

/// Whether a method belongs to the services that change users, memberships and tenants.
/// Whether a mutating call of `method` can change what a snapshot holds: people, memberships,
/// tenants (status, quotas) or a webhook source and its secrets.
fn changes_snapshots(method: &str) -> bool {
    method.starts_with("/zen.tenancy.v1.")
        || method.starts_with("/zen.auth.v1.")
        || (method.starts_with("/zen.ingest.v1.IngestService/")
            && (method.ends_with("WebhookSource") || method.ends_with("WebhookSecret")))
}

/// How long a user's platform-admin flag and roles read for one call are reused for the next
/// calls on this replica: a role change or a removal takes effect at once on the replica that
/// made it and within this bound on the others — under a second, with room for the call that
/// read it (sign-out is immediate everywhere: the session is checked in the shared cache on
/// every call). Changes are announced to the other replicas ([`crate::snapshot`]), so this
/// bound is only what a replica that missed the announcement serves.
const SNAPSHOT_TTL: std::time::Duration = std::time::Duration::from_millis(750);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_bearer_tokens_parse() {
        let mut framed = vec![0u8, 0, 0, 0, 3];
        framed.extend_from_slice(b"abc");
        assert_eq!(
            read_frame(&Bytes::from(framed)).unwrap(),
            Bytes::from_static(b"abc")
        );
        assert!(
            read_frame(&Bytes::from_static(&[1, 0, 0, 0, 0])).is_none(),
            "compressed"
        );
        assert!(
            read_frame(&Bytes::from_static(&[0, 0, 0, 0, 9, 1])).is_none(),
            "short"
        );

        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc.def"));
        headers.insert("authorization", "Basic Zm9v".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
    }

    #[test]
    fn methods_without_policy_are_refused() {
        let decision = decide(None, &Caller::Anonymous, None);
        assert_eq!(decision, Err(Denial::NoPolicy));
    }
}
