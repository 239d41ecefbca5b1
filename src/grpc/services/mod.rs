//! Service adapters: they translate between the generated protobuf types and the domain, and
//! are the only code under `src/` that sees generated types besides the composition root.
//!
//! A service whose logic has not landed yet is registered with the generated default stubs, so
//! each of its RPCs answers UNIMPLEMENTED rather than pretending to work.

pub mod audit;
pub mod auth;
pub mod ingest;
pub mod remediation;
pub mod support;
pub mod tenancy;
pub mod watch;
mod webhook_commit;
mod webhook_deliveries;
pub mod webhooks;

use std::sync::Arc;

use tonic::server::NamedService;
use tonic::transport::server::Router;
use zen_cache::Cache;
use zen_oidc::Oidc;
use zen_store::Store;

pub use audit::AuditApi;
pub use auth::AuthApi;
pub use ingest::{IngestApi, IngestSettings};
pub use remediation::RemediationApi;
pub use tenancy::TenancyApi;
pub use webhooks::WebhookSettings;

use crate::auth::Auth;

/// What the service adapters are built from.
pub struct Dependencies {
    pub store: Arc<Store>,
    pub cache: Arc<dyn Cache>,
    pub auth: Arc<Auth>,
    pub oidc: Option<Oidc>,
    pub local_login: bool,
    /// The rate limiter of every entry point.
    pub limiter: Arc<crate::limits::RateLimiter>,
    /// The quotas of a tenant created without its own.
    pub default_quotas: zen_store::Quotas,
    /// Signs agent certificates; `None` turns enrollment off.
    pub ca: Option<Arc<zen_security::CertificateAuthority>>,
    pub ingest: IngestSettings,
    pub webhooks: WebhookSettings,
    pub remediation: crate::remediation::RemediationSettings,
    /// Where changes to what this replica's snapshots hold are announced and heard.
    pub invalidations: Arc<crate::snapshot::Invalidations>,
}

use crate::proto::zen;
use zen::audit::v1::audit_service_server::AuditServiceServer;
use zen::auth::v1::auth_service_server::AuthServiceServer;
use zen::ingest::v1::ingest_service_server::IngestServiceServer;
use zen::remediation::v1::remediation_service_server::RemediationServiceServer;
use zen::tenancy::v1::tenancy_service_server::TenancyServiceServer;

/// Fully qualified names of every Zen service, as health and reflection report them.
pub const SERVICE_NAMES: [&str; 5] = [
    <AuthServiceServer<AuthApi> as NamedService>::NAME,
    <TenancyServiceServer<TenancyApi> as NamedService>::NAME,
    <IngestServiceServer<IngestApi> as NamedService>::NAME,
    <RemediationServiceServer<RemediationApi> as NamedService>::NAME,
    <AuditServiceServer<AuditApi> as NamedService>::NAME,
];

/// Adds every Zen service to the router.
pub fn register<L>(router: Router<L>, deps: Dependencies) -> Router<L> {
    let store = deps.store;
    // One dispatcher per process: it drives queued remediations down the agent streams this
    // replica holds (see docs/REMEDIATION.md).
    let dispatcher =
        crate::remediation::Dispatcher::new(store.clone(), deps.cache.clone(), deps.remediation);
    dispatcher.start();
    router
        .add_service(AuthServiceServer::new(AuthApi::new(
            deps.auth,
            store.clone(),
            deps.cache.clone(),
            deps.oidc,
            deps.local_login,
        )))
        .add_service(TenancyServiceServer::new(TenancyApi::new(
            store.clone(),
            deps.default_quotas,
        )))
        .add_service(IngestServiceServer::new(
            IngestApi::new(
                store.clone(),
                deps.cache.clone(),
                deps.ca,
                deps.ingest,
                deps.webhooks,
                deps.limiter,
                &deps.invalidations,
            )
            .with_dispatcher(dispatcher.clone()),
        ))
        .add_service(RemediationServiceServer::new(
            RemediationApi::new(store.clone(), dispatcher).with_cache(deps.cache),
        ))
        .add_service(AuditServiceServer::new(AuditApi::new(store)))
}
