//! Zen's storage: domain types, repository traits, and their implementation
//! on PostgreSQL (production, CockroachDB-compatible SQL, row-level
//! security) and SQLite (the embedded default). Knows no protobuf.
//!
//! ```no_run
//! # async fn demo() -> Result<(), zen_store::StoreError> {
//! use zen_store::{AuditOutcome, NewAuditRecord, NewCluster, Scope, Store};
//! # let (tenant_id, user_id) = (uuid::Uuid::nil(), uuid::Uuid::nil());
//! let store = Store::connect("sqlite://zen-data/zen.db").await?;
//! store.migrate().await?;           // when auto-migrate is on
//! store.check_migrations().await?;  // always, at start
//!
//! let mut tx = store.begin(&Scope::tenant(tenant_id, Some(user_id))).await?;
//! let cluster = tx.clusters().create(NewCluster { name: "prod-eu".into(), ..Default::default() }).await?;
//! let mut audit = NewAuditRecord::new("user", "cluster.create", "cluster", AuditOutcome::Success);
//! audit.actor_id = Some(user_id.to_string());
//! audit.resource_id = Some(cluster.id.to_string());
//! tx.audit().append(audit).await?;
//! tx.commit().await?;               // both or neither
//! # Ok(()) }
//! ```
//!
//! See `docs/STORAGE.md` for the schema, the RLS model and the audit
//! encoding.

pub mod audit;
mod db;
mod error;
mod migrate;
mod model;
mod page;
pub mod remediation;
pub mod replica;
mod repo;
mod repos;
mod scope;
mod stats;
mod store;
mod validate;
mod webhook;

pub use audit::{canonical_encoding, record_hash, redact, GENESIS_HASH};
pub use error::{precondition, Result, StoreError};
pub use migrate::{MigrationInfo, MigrationStatus};
pub use model::*;
pub use page::{Page, PageRequest, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
pub use remediation::{
    ApprovalPolicy, ApprovalWindow, DeadLetter, DeadLetterFilter, Dispatch, NewRemediation,
    Remediation, RemediationDepths, RemediationFilter, RemediationRepo, VerificationRun,
};
pub use replica::{ReadConsistency, ReadFuture, ReadPool};
pub use repo::{
    AuditRepo, BootstrapTokenRepo, ClusterRepo, EventRepo, InviteRepo, JanitorRepo, MemberRepo,
    TenantRepo, Tx, UserRepo, WebhookSourceRepo,
};
pub use repos::events::{MAX_INGEST_BATCH, MAX_TAIL_LIMIT};
pub use scope::{Scope, PLATFORM_TENANT};
pub use stats::{slowest_recent, PoolStats, SlowStatement};
pub use store::{BackendKind, Store, StoreOptions, DEFAULT_APP_ROLE};
pub use webhook::*;

/// The stored form of a bootstrap or invite token: lowercase hex SHA-256.
/// Tokens are high-entropy random strings, so no salt is needed, and the
/// hash can be looked up directly.
pub fn hash_token(token: &str) -> String {
    audit::sha256_hex(token.as_bytes())
}
