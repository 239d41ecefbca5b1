//! Service adapters: they translate between the generated protobuf types and the domain, and
//! are the only code under `src/` that sees generated types besides the composition root.
//!
//! A service whose logic has not landed yet is registered with the generated default stubs, so
//! each of its RPCs answers UNIMPLEMENTED rather than pretending to work.

pub mod audit;
pub mod support;
pub mod tenancy;

use std::sync::Arc;

use tonic::server::NamedService;
use zen_store::Store;

pub use audit::AuditApi;
pub use tenancy::TenancyApi;
use tonic::transport::server::Router;

use crate::proto::zen;
use zen::audit::v1::audit_service_server::AuditServiceServer;
use zen::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use zen::ingest::v1::ingest_service_server::{IngestService, IngestServiceServer};
use zen::remediation::v1::remediation_service_server::{
    RemediationService, RemediationServiceServer,
};
use zen::tenancy::v1::tenancy_service_server::TenancyServiceServer;

/// `zen.auth.v1.AuthService`: not implemented yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuthApi;
impl AuthService for AuthApi {}

/// `zen.ingest.v1.IngestService`: not implemented yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct IngestApi;
impl IngestService for IngestApi {}

/// `zen.remediation.v1.RemediationService`: not implemented yet.
#[derive(Clone, Copy, Debug, Default)]
pub struct RemediationApi;
impl RemediationService for RemediationApi {}

/// Fully qualified names of every Zen service, as health and reflection report them.
pub const SERVICE_NAMES: [&str; 5] = [
    <AuthServiceServer<AuthApi> as NamedService>::NAME,
    <TenancyServiceServer<TenancyApi> as NamedService>::NAME,
    <IngestServiceServer<IngestApi> as NamedService>::NAME,
    <RemediationServiceServer<RemediationApi> as NamedService>::NAME,
    <AuditServiceServer<AuditApi> as NamedService>::NAME,
];

/// Adds every Zen service to the router.
pub fn register<L>(router: Router<L>, store: Arc<Store>) -> Router<L> {
    router
        .add_service(AuthServiceServer::new(AuthApi))
        .add_service(TenancyServiceServer::new(TenancyApi::new(store.clone())))
        .add_service(IngestServiceServer::new(IngestApi))
        .add_service(RemediationServiceServer::new(RemediationApi))
        .add_service(AuditServiceServer::new(AuditApi::new(store)))
}
