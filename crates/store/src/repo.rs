//! Repository traits and the transaction that exposes them.
//!
//! A unit of work is one [`Tx`], opened for one [`Scope`] with
//! [`crate::Store::begin`]. Every repository reached through it runs in that
//! transaction, so a mutation and its audit record commit together or not at
//! all. Dropping a `Tx` without `commit` rolls it back.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;
use crate::model::*;
use crate::page::{Page, PageRequest};
use crate::scope::Scope;
use crate::webhook::*;

/// One transaction, scoped to one caller.
#[async_trait]
pub trait Tx: Send {
    /// The scope the transaction runs in (after any re-scoping by
    /// [`TenantRepo::create`] or the user login methods).
    fn scope(&self) -> &Scope;
    fn tenants(&mut self) -> &mut dyn TenantRepo;
    fn users(&mut self) -> &mut dyn UserRepo;
    fn members(&mut self) -> &mut dyn MemberRepo;
    fn invites(&mut self) -> &mut dyn InviteRepo;
    fn clusters(&mut self) -> &mut dyn ClusterRepo;
    fn bootstrap_tokens(&mut self) -> &mut dyn BootstrapTokenRepo;
    fn audit(&mut self) -> &mut dyn AuditRepo;
    fn events(&mut self) -> &mut dyn EventRepo;
    fn remediations(&mut self) -> &mut dyn crate::remediation::RemediationRepo;
    fn webhook_sources(&mut self) -> &mut dyn WebhookSourceRepo;
    fn janitor(&mut self) -> &mut dyn JanitorRepo;
    async fn commit(self: Box<Self>) -> Result<()>;
    async fn rollback(self: Box<Self>) -> Result<()>;
}

#[async_trait]
pub trait TenantRepo: Send {
    /// Create a tenant; with `Some(owner)` make that user its first owner,
    /// with `None` (operators, who are certificate identities and no user)
    /// create it without members: invite the owner afterwards. The
    /// transaction is re-scoped to the new tenant (an audit append or an
    /// invite that follows lands in the new tenant). Refused when the scope
    /// already names a tenant.
    async fn create(&mut self, new: NewTenant, owner: Option<Uuid>) -> Result<Tenant>;
    /// A live or deleted tenant visible to the scope: its own tenant, one the
    /// scope's user is a member of, or any for platform admins.
    async fn get(&mut self, id: Uuid) -> Result<Tenant>;
    /// Platform admins: all tenants; others: the tenants the scope's user is
    /// a member of (or the scope's tenant). Newest first.
    async fn list(&mut self, filter: &TenantFilter, page: &PageRequest) -> Result<Page<Tenant>>;
    /// Update display name and quotas of the scope's tenant (`id` must be it,
    /// or the caller a platform admin). `expected_version: Some(v)` refuses
    /// the change with `VersionMismatch` unless the stored version is `v`;
    /// `None` does not check. Every change bumps the version.
    async fn update(
        &mut self,
        id: Uuid,
        expected_version: Option<i64>,
        update: TenantUpdate,
    ) -> Result<Tenant>;
    /// Suspend (with an optional `reason`, stored as `suspend_reason`) or
    /// reactivate (clears the reason). Use `soft_delete` to delete.
    /// `expected_version` as for `update`.
    async fn set_status(
        &mut self,
        id: Uuid,
        expected_version: Option<i64>,
        status: TenantStatus,
        reason: Option<String>,
    ) -> Result<Tenant>;
    /// Status `deleted`, `deleted_at` set; the name becomes reusable; the
    /// tenant's clusters are soft-deleted with it. `expected_version` as
    /// for `update`.
    async fn soft_delete(&mut self, id: Uuid, expected_version: Option<i64>) -> Result<Tenant>;
}

#[async_trait]
pub trait UserRepo: Send {
    /// Login through OIDC: insert or refresh the user of (issuer, subject).
    /// Binds the transaction to that user (`scope.user_id`), as the login is
    /// the user acting; refused if the scope is already another user's
    /// (platform admins keep their scope).
    async fn upsert_external(&mut self, identity: ExternalIdentity) -> Result<User>;
    /// Create a local (development) user; binds the transaction to it.
    async fn create_local(&mut self, new: NewLocalUser) -> Result<User>;
    async fn get(&mut self, id: Uuid) -> Result<User>;
    async fn get_by_issuer_subject(&mut self, issuer: &str, subject: &str) -> Result<User>;
    /// Local user by username.
    async fn get_by_username(&mut self, username: &str) -> Result<User>;
    /// Case-insensitive; the oldest user with that email when several issuers share it.
    async fn get_by_email(&mut self, email: &str) -> Result<User>;
    /// Platform admins only.
    async fn set_platform_admin(&mut self, id: Uuid, admin: bool) -> Result<User>;
}

#[async_trait]
pub trait MemberRepo: Send {
    /// Members of the scope's tenant with their email and display name,
    /// oldest first (by `joined_at`, then `user_id`), paged.
    async fn list(&mut self, filter: &MemberFilter, page: &PageRequest) -> Result<Page<Member>>;
    /// The tenants the scope's user belongs to (no tenant scope needed).
    async fn memberships(&mut self, user_id: Uuid) -> Result<Vec<Membership>>;
    /// The user's role in the scope's tenant, `None` if not a member or if the tenant is
    /// deleted.
    async fn role_of(&mut self, user_id: Uuid) -> Result<Option<Role>>;
    async fn add(&mut self, user_id: Uuid, role: Role, invited_by: Option<Uuid>) -> Result<Member>;
    /// Refuses to demote the last owner (`Precondition` `LAST_OWNER`).
    async fn change_role(&mut self, user_id: Uuid, role: Role) -> Result<Member>;
    /// Refuses to remove the last owner (`Precondition` `LAST_OWNER`).
    async fn remove(&mut self, user_id: Uuid) -> Result<()>;
    async fn count_owners(&mut self) -> Result<i64>;
}

#[async_trait]
pub trait InviteRepo: Send {
    /// Store an invite to the scope's tenant; only `sha256(token)` is kept.
    /// The tenant must be active (`Precondition` `TENANT_SUSPENDED`;
    /// `NotFound` when deleted).
    async fn create(&mut self, new: NewInvite, token: &str) -> Result<Invite>;
    /// An invite of the scope's tenant, whatever its state.
    async fn get(&mut self, id: Uuid) -> Result<Invite>;
    /// Pending (not accepted) invites of the scope's tenant, newest first.
    async fn list_pending(&mut self) -> Result<Vec<Invite>>;
    /// Accept invite `invite_id` of the scope's tenant with its `token`:
    /// one use, not expired at `now`; adds `user_id` as a member with the
    /// invite's role. An unknown id and a token that is not that invite's
    /// are the same `NotFound { what: "invite" }`; accepted or expired is
    /// `Precondition` `INVITE_NOT_PENDING`; a deleted tenant is
    /// `NotFound { what: "tenant" }`. Whether the user's email must match
    /// is the service's rule.
    async fn accept(
        &mut self,
        invite_id: Uuid,
        token: &str,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Member>;
}

#[async_trait]
pub trait ClusterRepo: Send {
    /// Create in the scope's tenant, enforcing `max_clusters` (live clusters)
    /// under a lock on the tenant row. Status starts `provisioning`. The
    /// tenant must be active (`Precondition` `TENANT_SUSPENDED`; `NotFound`
    /// when deleted).
    async fn create(&mut self, new: NewCluster) -> Result<Cluster>;
    /// A cluster of the scope's tenant (soft-deleted ones too).
    async fn get(&mut self, id: Uuid) -> Result<Cluster>;
    /// Live clusters, newest first.
    async fn list(&mut self, filter: &ClusterFilter, page: &PageRequest) -> Result<Page<Cluster>>;
    /// Change a live cluster of an active tenant (as for `create`).
    /// `expected_version: Some(v)` refuses the change with
    /// `VersionMismatch` unless the stored version is `v`; `None` does not
    /// check. Bumps the version.
    async fn update(
        &mut self,
        id: Uuid,
        expected_version: Option<i64>,
        update: ClusterUpdate,
    ) -> Result<Cluster>;
    /// Control-plane status change (not `deleting`: use `soft_delete`).
    /// Bumps the version.
    async fn set_status(&mut self, id: Uuid, status: ClusterStatus) -> Result<Cluster>;
    /// Heartbeat / connect / disconnect from the agent stream. Does not
    /// bump the version.
    async fn record_agent(&mut self, id: Uuid, report: AgentReport) -> Result<Cluster>;
    /// Sets `deleted_at` and status `deleting`; the name becomes reusable.
    /// Allowed in a suspended tenant. `expected_version` as for `update`.
    async fn soft_delete(&mut self, id: Uuid, expected_version: Option<i64>) -> Result<Cluster>;
    /// Live clusters in the scope's tenant.
    async fn count_live(&mut self) -> Result<i64>;
    /// Every tenant's live clusters with their agents' last heartbeat, most recently seen
    /// first, at most `limit` (for metrics). Platform scope only (`PermissionDenied`
    /// otherwise).
    async fn heartbeats(&mut self, limit: i64) -> Result<Vec<ClusterHeartbeat>>;
}

#[async_trait]
pub trait BootstrapTokenRepo: Send {
    /// Store `sha256(token)` for a live cluster of the scope's tenant. The
    /// tenant must be active (`Precondition` `TENANT_SUSPENDED`; `NotFound`
    /// when deleted).
    async fn create(&mut self, new: NewBootstrapToken, token: &str) -> Result<BootstrapToken>;
    /// Atomically mark the token used. The token is looked up in the
    /// scope's tenant only: unknown, or presented under another tenant's
    /// scope, is `NotFound`. Already used, expired at `now`, or its cluster
    /// (or tenant) deleted is `Precondition` `BOOTSTRAP_TOKEN_INVALID`; a
    /// valid token of a suspended tenant is `Precondition`
    /// `TENANT_SUSPENDED` and stays unused.
    async fn consume(&mut self, token: &str, now: DateTime<Utc>) -> Result<BootstrapToken>;
    async fn list_for_cluster(&mut self, cluster_id: Uuid) -> Result<Vec<BootstrapToken>>;
}

#[async_trait]
pub trait AuditRepo: Send {
    /// Append to the scope's chain ([`Scope::chain_tenant`]). `details` is
    /// redacted ([`crate::audit::redact`]) before hashing and storing.
    async fn append(&mut self, record: NewAuditRecord) -> Result<AuditRecord>;
    /// Append `records` to the scope's chain in their order, as [`AuditRepo::append`] would
    /// one by one, but with one chain-head lock, the hashes computed in memory, one multi-row
    /// insert and one head update: what a batch of records (a group commit of deliveries, a
    /// batch of read decisions) costs is three statements, not three per record.
    async fn append_all(&mut self, records: Vec<NewAuditRecord>) -> Result<Vec<AuditRecord>>;
    /// The scope's chain, newest (highest seq) first.
    async fn list(&mut self, filter: &AuditFilter, page: &PageRequest)
        -> Result<Page<AuditRecord>>;
    /// Walk `tenant_id`'s chain by seq and report the first problem. The
    /// tenant must be the scope's chain unless the caller is platform admin.
    async fn verify_chain(&mut self, tenant_id: Uuid) -> Result<ChainVerification>;
    /// Chain heads visible to the scope (all of them for platform admins).
    async fn heads(&mut self) -> Result<Vec<ChainHead>>;
    /// Up to `limit` records of `tenant_id`'s chain with `after_seq < seq <= through_seq`,
    /// oldest first (for export). Same access rule as `verify_chain`.
    async fn records(
        &mut self,
        tenant_id: Uuid,
        after_seq: i64,
        through_seq: i64,
        limit: i64,
    ) -> Result<Vec<AuditRecord>>;
    /// The newest checkpoint of `tenant_id`'s chain: where the kept chain starts.
    async fn checkpoint(&mut self, tenant_id: Uuid) -> Result<Option<AuditCheckpoint>>;
    /// Records a cut after its segment was exported. Refused (`Invalid`) unless it moves past
    /// the previous checkpoint and `head_hash` is the stored hash of record `through_seq`.
    async fn add_checkpoint(&mut self, checkpoint: &AuditCheckpoint) -> Result<()>;
    /// Deletes up to `limit` records of `tenant_id`'s chain at or below its newest checkpoint,
    /// oldest first; returns how many. Records above the checkpoint are never deleted (the
    /// database refuses it too).
    async fn prune(&mut self, tenant_id: Uuid, limit: i64) -> Result<u64>;
}

/// Retention (docs/RETENTION.md): bounded deletes of the scope's tenant's old rows, oldest
/// first, each returning how many rows it removed, and the lease that keeps one janitor
/// running at a time.
#[async_trait]
pub trait JanitorRepo: Send {
    /// Events received before `before`, except those a remediation names, with their current
    /// change rows.
    async fn prune_events(&mut self, before: DateTime<Utc>, limit: i64) -> Result<u64>;
    /// Change rows with `after_seq < seq <= through_seq` that no longer carry their event
    /// (superseded by a later change, or the event is gone).
    async fn prune_changes(&mut self, after_seq: i64, through_seq: i64) -> Result<u64>;
    /// The highest change seq of the tenant (0 when none).
    async fn last_change_seq(&mut self) -> Result<i64>;
    /// Idempotency receipts received before `before`.
    async fn prune_receipts(&mut self, before: DateTime<Utc>, limit: i64) -> Result<u64>;
    /// Finished remediations last changed before `before`, with their approvals, dispatches,
    /// verification runs and dead letters; returns the remediations removed.
    async fn prune_remediations(&mut self, before: DateTime<Utc>, limit: i64) -> Result<u64>;
    /// Dead letters created before `before`.
    async fn prune_dead_letters(&mut self, before: DateTime<Utc>, limit: i64) -> Result<u64>;
    /// Takes the lease `name` for `holder` until `until` when it is free (expired, or already
    /// this holder's) and its last run finished before `last_run_before`; true when taken.
    async fn take_lease(
        &mut self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        last_run_before: DateTime<Utc>,
    ) -> Result<bool>;
    /// Records a finished run and frees the lease.
    async fn finish_lease(&mut self, name: &str, holder: &str, now: DateTime<Utc>) -> Result<()>;
    /// When the job `name` last finished a run, on any replica.
    async fn last_run(&mut self, name: &str) -> Result<Option<DateTime<Utc>>>;
}

#[async_trait]
pub trait EventRepo: Send {
    /// Stores a batch for the scope's tenant from one origin (`cluster_id`
    /// Some for an agent, None for a webhook source: then `source_name`
    /// identifies the origin; an event with source `webhook` always names
    /// its origin by `source_name`). Returns one outcome per input, in
    /// order. Idempotent: resending any subset of an earlier batch yields
    /// `Duplicate` for those (never a second row, never a second fold
    /// count). Events with the same (origin, fingerprint) whose latest
    /// row's `last_seen_at` is within `fold_window` of `now` fold into that
    /// row: `count` += 1 per occurrence, `last_seen_at` = max, `details` =
    /// the latest occurrence's, `seq` moves forward; otherwise a new row.
    /// Duplicates and folds within one batch are handled too.
    ///
    /// Takes the tenant's event sequence lock until the transaction ends:
    /// the tenant's ingest transactions run one at a time from here on (see
    /// docs/STORAGE.md); append audit records after it. An unknown
    /// `cluster_id` (or another tenant's) is `NotFound { what: "cluster" }`.
    async fn ingest(
        &mut self,
        cluster_id: Option<Uuid>,
        events: &[NewEvent],
        fold_window: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<EventOutcome>>;
    /// An event of the scope's tenant.
    async fn get(&mut self, id: Uuid) -> Result<Event>;
    /// Newest first (`received_at` desc, `id` desc), keyset page tokens like
    /// the other lists.
    async fn list(&mut self, filter: &EventFilter, page: &PageRequest) -> Result<Page<Event>>;
    /// Events of the scope's tenant with `seq > after_seq`, oldest first, at
    /// most `limit` (1..=[`crate::MAX_TAIL_LIMIT`]; larger is clamped): the
    /// tail that live watchers follow (the events table is their outbox;
    /// pub/sub only wakes them). A folded event comes again with its new
    /// `seq` and `count`. Seqs become visible in increasing order, so a
    /// watcher that resumes after the last seq it saw misses nothing.
    async fn tail(&mut self, after_seq: i64, limit: i64) -> Result<Vec<Event>>;
    /// [`EventRepo::tail`] with the tenant's remediation changes merged in:
    /// every change with `seq > after_seq`, events and remediations in one
    /// seq order, oldest first, at most `limit` (clamped like `tail`). Each
    /// comes as its current state at its latest seq (a remediation changed
    /// twice comes once, at its second seq). What `WatchEvents` follows.
    async fn changes(&mut self, after_seq: i64, limit: i64) -> Result<Vec<Change>>;
    /// Events of the scope's tenant stored (as new rows) since `since`: what reconciles the
    /// daily event quota's counter when the cache has lost it.
    async fn count_received_since(&mut self, since: DateTime<Utc>) -> Result<i64>;
    /// The highest seq of the scope's tenant (0 when none).
    async fn last_seq(&mut self) -> Result<i64>;
}

#[async_trait]
pub trait WebhookSourceRepo: Send {
    /// Create in the scope's active tenant with its first secret, and
    /// publish its route. `cluster_id` must be a cluster of the tenant
    /// (`NotFound { what: "cluster" }`); a live source with the same name is
    /// `AlreadyExists`.
    async fn create(
        &mut self,
        new: NewWebhookSource,
        secret: NewWebhookSecret,
    ) -> Result<WebhookSource>;
    /// A live source of the scope's tenant.
    async fn get(&mut self, id: Uuid) -> Result<WebhookSource>;
    /// Live sources, by name.
    async fn list(
        &mut self,
        filter: &WebhookSourceFilter,
        page: &PageRequest,
    ) -> Result<Page<WebhookSource>>;
    /// `expected_version` as for `ClusterRepo::update`. Bumps the version.
    async fn update(
        &mut self,
        id: Uuid,
        expected_version: Option<i64>,
        update: WebhookSourceUpdate,
    ) -> Result<WebhookSource>;
    /// Soft delete; its secrets stop verifying at once.
    async fn soft_delete(
        &mut self,
        id: Uuid,
        expected_version: Option<i64>,
    ) -> Result<WebhookSource>;
    /// Add `secret` as the current one; every earlier secret verifies until
    /// `old_expires_at` at the latest. Bumps the version.
    async fn rotate_secret(
        &mut self,
        id: Uuid,
        expected_version: Option<i64>,
        secret: NewWebhookSecret,
        old_expires_at: DateTime<Utc>,
    ) -> Result<WebhookSource>;
    /// The secrets verifying at `at`, newest first, sealed.
    async fn secrets(&mut self, id: Uuid, at: DateTime<Utc>) -> Result<Vec<SealedWebhookSecret>>;
    /// Note an accepted delivery (written at most once per second per source).
    async fn record_delivery(&mut self, id: Uuid, at: DateTime<Utc>) -> Result<()>;
    /// The tenant owning `source_id` (live or deleted), needing no tenant
    /// scope: how the public webhook endpoint learns whose source it is.
    async fn route(&mut self, source_id: Uuid) -> Result<Option<Uuid>>;
}
