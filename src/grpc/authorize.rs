//! The authorization layer: applies [`crate::authz::decide`] to every call of every Zen
//! service, before the service runs, and audits each decision, allowed or denied.
//!
//! Health and reflection (`grpc.*`) are outside the domain and pass untouched; every
//! `/zen.*` path must have a policy in the contracts or it is refused.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};
use zen_store::{AuditOutcome, NewAuditRecord, Scope, Store};

use super::edge::RequestContext;
use crate::authz::{decide, Caller, MethodPolicy, PolicyTable};

/// What the layer established, for the service handlers.
#[derive(Clone, Debug)]
pub struct Authorized {
    pub caller: Caller,
    /// The caller's role in the addressed tenant, when one was read for the decision.
    pub role: Option<zen_store::Role>,
    pub policy: MethodPolicy,
    pub method: String,
}

#[derive(Clone)]
pub struct AuthzLayer {
    table: Arc<PolicyTable>,
    store: Arc<Store>,
}

impl AuthzLayer {
    pub fn new(table: PolicyTable, store: Arc<Store>) -> Self {
        Self {
            table: Arc::new(table),
            store,
        }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            table: self.table.clone(),
            store: self.store.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    table: Arc<PolicyTable>,
    store: Arc<Store>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Authorize<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = request.uri().path().to_owned();
        if !method.starts_with("/zen.") {
            return Box::pin(inner.call(request));
        }
        let context = request.extensions().get::<RequestContext>().cloned();
        let caller = context
            .as_ref()
            .map(Caller::from_context)
            .unwrap_or(Caller::Anonymous);
        let policy = self.table.get(&method).cloned();
        let store = self.store.clone();
        Box::pin(async move {
            let decision = decide(policy.as_ref(), &caller, None);
            if let Err(error) =
                audit_decision(&store, context.as_ref(), &caller, &method, &decision).await
            {
                // No decision goes unrecorded: without the audit log, nothing is served.
                tracing::error!(%error, method, "could not audit an authorization decision");
                return Ok(
                    tonic::Status::unavailable("the audit log is unavailable; retry later")
                        .into_http(),
                );
            }
            match (decision, policy) {
                (Ok(()), Some(policy)) => {
                    request.extensions_mut().insert(Authorized {
                        caller,
                        role: None,
                        policy,
                        method,
                    });
                    inner.call(request).await
                }
                (Err(denial), _) => {
                    let status = tonic::Status::with_error_details(
                        tonic::Code::PermissionDenied,
                        denial.to_string(),
                        ErrorDetails::with_error_info(
                            denial.reason(),
                            "zen",
                            std::collections::HashMap::new(),
                        ),
                    );
                    Ok(status.into_http())
                }
                (Ok(()), None) => unreachable!("decide refuses calls without a policy"),
            }
        })
    }
}

/// Appends the decision to the caller's tenant chain (agents) or the platform chain.
async fn audit_decision(
    store: &Store,
    context: Option<&RequestContext>,
    caller: &Caller,
    method: &str,
    decision: &Result<(), crate::authz::Denial>,
) -> Result<(), zen_store::StoreError> {
    let scope = match caller {
        Caller::Agent { tenant_id, .. } => Scope::tenant(*tenant_id, None),
        _ => Scope::anonymous(),
    };
    let (actor_type, actor_id) = caller.actor();
    let (outcome, details) = match decision {
        Ok(()) => (AuditOutcome::Success, serde_json::json!({})),
        Err(denial) => (
            AuditOutcome::Denied,
            serde_json::json!({ "reason": denial.reason(), "message": denial.to_string() }),
        ),
    };
    let mut record = NewAuditRecord::new(actor_type, "authz.decide", "method", outcome);
    record.actor_id = Some(actor_id).filter(|id| !id.is_empty());
    record.resource_id = Some(method.to_owned());
    record.details = details;
    if let Some(context) = context {
        record.request_id = Some(context.request_id.clone());
        record.client_address = context.client_address.map(|a| a.to_string());
        record.user_agent = context.user_agent.clone();
    }
    let mut tx = store.begin(&scope).await?;
    tx.audit().append(record).await?;
    tx.commit().await
}
