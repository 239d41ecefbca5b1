//! Remediations: the stored shape of proposals, approvals, approval
//! policies, the dispatch queue, verification runs and dead letters, and the
//! repository over them. The workflow rules (which transition is allowed,
//! who may approve) live with the service in `src/remediation`; this module
//! persists what they decide, with optimistic versions and the database's
//! own tenant guards (composite foreign keys, RLS).
//!
//! Actions and probes are stored as the service hands them over (proto3
//! JSON): the store knows no protobuf.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::Result;
use crate::model::{
    DispatchOperation, DispatchState, RemediationStatus, RiskLevel, Role, VerificationOutcome,
};
use crate::page::{Page, PageRequest};

/// A remediation with the approvals of its current revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Remediation {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub cluster_id: Uuid,
    pub event_id: Option<Uuid>,
    pub title: String,
    pub description: String,
    pub action: Value,
    pub rollback_action: Option<Value>,
    pub probes: Value,
    pub risk: RiskLevel,
    pub status: RemediationStatus,
    pub status_reason: String,
    /// Optimistic-concurrency version: +1 on every change.
    pub version: i64,
    /// The action's revision: +1 per revision; approvals name it.
    pub revision: i64,
    pub required_approvals: i32,
    pub break_glass: bool,
    pub break_glass_justification: String,
    pub proposed_by: String,
    /// Who authored the current revision (same form as `proposed_by`); empty until the first
    /// revision. Approval policies count this author as a proposer.
    pub revised_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub last_error: String,
    pub execution_id: Option<Uuid>,
    pub attempts: i32,
    /// Whether the action was ever applied (something to roll back).
    pub executed: bool,
    /// Approvals of `revision`, oldest first.
    pub approvals: Vec<Approval>,
}

/// What [`RemediationRepo::create`] stores; the service has decided the
/// initial status and required approvals from the policy.
#[derive(Debug, Clone)]
pub struct NewRemediation {
    pub cluster_id: Uuid,
    pub event_id: Option<Uuid>,
    pub title: String,
    pub description: String,
    pub action: Value,
    pub rollback_action: Option<Value>,
    pub probes: Value,
    pub risk: RiskLevel,
    pub status: RemediationStatus,
    pub required_approvals: i32,
    pub proposed_by: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// One approval of one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    pub approver_id: Uuid,
    pub approver_role: Role,
    pub comment: String,
    /// The remediation version the approver saw.
    pub remediation_version: i64,
    pub revision: i64,
    pub created_at: DateTime<Utc>,
}

/// Filters of [`RemediationRepo::list`]; `None` does not filter.
#[derive(Debug, Clone, Default)]
pub struct RemediationFilter {
    pub status: Option<RemediationStatus>,
    pub cluster_id: Option<Uuid>,
    pub event_id: Option<Uuid>,
}

/// A recurring weekly period in which approvals are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalWindow {
    /// ISO weekday numbers, 1 = Monday … 7 = Sunday.
    pub days: Vec<u8>,
    /// 0..=23, inclusive.
    pub start_hour: u8,
    /// 1..=24, exclusive, greater than `start_hour`.
    pub end_hour: u8,
    /// IANA time zone name.
    pub time_zone: String,
}

/// A tenant's approval policy. The defaults (never stored) are version 1.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalPolicy {
    pub tenant_id: Uuid,
    pub required_low: i32,
    pub required_medium: i32,
    pub required_high: i32,
    pub required_critical: i32,
    pub min_approver_role: Role,
    pub allow_self_approval: bool,
    pub approval_windows: Vec<ApprovalWindow>,
    pub pending_expiry_seconds: i64,
    pub auto_rollback_on_failure: bool,
    pub max_dispatch_attempts: i32,
    pub version: i64,
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: String,
}

impl ApprovalPolicy {
    /// The policy of a tenant that never stored one (the contract's defaults).
    pub fn defaults(tenant_id: Uuid) -> Self {
        ApprovalPolicy {
            tenant_id,
            required_low: 0,
            required_medium: 1,
            required_high: 1,
            required_critical: 2,
            min_approver_role: Role::Approver,
            allow_self_approval: false,
            approval_windows: Vec::new(),
            pending_expiry_seconds: 72 * 3600,
            auto_rollback_on_failure: true,
            max_dispatch_attempts: 5,
            version: 1,
            updated_at: None,
            updated_by: String::new(),
        }
    }

    /// Approvals required for `risk`.
    pub fn required_for(&self, risk: RiskLevel) -> i32 {
        match risk {
            RiskLevel::Low => self.required_low,
            RiskLevel::Medium => self.required_medium,
            RiskLevel::High => self.required_high,
            RiskLevel::Critical => self.required_critical,
        }
    }
}

/// One execution in the dispatch queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub execution_id: Uuid,
    pub tenant_id: Uuid,
    pub cluster_id: Uuid,
    pub remediation_id: Uuid,
    pub remediation_version: i64,
    pub operation: DispatchOperation,
    pub state: DispatchState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: String,
    pub last_phase: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One run of a remediation's probes.
#[derive(Debug, Clone, PartialEq)]
pub struct VerificationRun {
    pub id: Uuid,
    pub remediation_id: Uuid,
    pub remediation_version: i64,
    pub execution_id: Uuid,
    pub result: VerificationOutcome,
    /// JSON array of `{name, success, duration_ms, message}`.
    pub probes: Value,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// An execution whose dispatch attempts ran out.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub remediation_id: Uuid,
    pub cluster_id: Uuid,
    pub execution_id: Uuid,
    pub operation: DispatchOperation,
    pub attempts: i32,
    pub last_error: String,
    pub created_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replayed_by: Option<String>,
}

/// Filters of [`RemediationRepo::list_dead_letters`].
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub cluster_id: Option<Uuid>,
    pub remediation_id: Option<Uuid>,
    pub show_replayed: bool,
}

/// Backlog sizes for the metrics, over every tenant visible to the scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemediationDepths {
    /// Executions queued or in flight (pending, sent, acked).
    pub queue: i64,
    /// Dead letters not replayed.
    pub dead_letters: i64,
}

/// Remediations of the scope's tenant (platform-wide methods say so).
#[async_trait]
pub trait RemediationRepo: Send {
    /// Stores a new remediation at version 1, revision 1. An event or
    /// cluster of another tenant (or none) is `NotFound` — refused by the
    /// composite foreign keys, whatever the caller's privileges.
    async fn create(&mut self, new: NewRemediation) -> Result<Remediation>;
    async fn get(&mut self, id: Uuid) -> Result<Remediation>;
    /// [`RemediationRepo::get`] with the row locked until the transaction
    /// ends (PostgreSQL `FOR UPDATE`; SQLite's writer lock).
    async fn lock(&mut self, id: Uuid) -> Result<Remediation>;
    /// Newest first (`created_at`, `id`).
    async fn list(
        &mut self,
        filter: &RemediationFilter,
        page: &PageRequest,
    ) -> Result<Page<Remediation>>;
    /// Writes every mutable field of `r` if the stored version is
    /// `expected_version` (else `VersionMismatch`), and bumps the version.
    async fn save(&mut self, r: &Remediation, expected_version: i64) -> Result<Remediation>;
    /// Records an approval of `approval.revision`; a second approval by the
    /// same approver of the same revision is `AlreadyExists`.
    async fn add_approval(&mut self, remediation_id: Uuid, approval: &Approval) -> Result<()>;

    /// The tenant's policy, or [`ApprovalPolicy::defaults`].
    async fn policy(&mut self) -> Result<ApprovalPolicy>;
    /// Stores the policy if the current version is `expected_version` (1 for
    /// a tenant still on the defaults), else `VersionMismatch`; returns it at
    /// the next version.
    async fn save_policy(
        &mut self,
        policy: &ApprovalPolicy,
        expected_version: i64,
    ) -> Result<ApprovalPolicy>;

    /// Queues an execution.
    async fn enqueue(&mut self, dispatch: &Dispatch) -> Result<()>;
    /// The cluster's executions due at `now` (pending or sent, `next_attempt_at
    /// <= now`), oldest due first, locked: on PostgreSQL `FOR UPDATE SKIP
    /// LOCKED`, so concurrent claimers never take the same row; on SQLite the
    /// single writer makes the plain read safe.
    async fn claim_due(
        &mut self,
        cluster_id: Uuid,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Dispatch>>;
    async fn save_dispatch(&mut self, dispatch: &Dispatch) -> Result<()>;
    async fn dispatch(&mut self, execution_id: Uuid) -> Result<Dispatch>;
    /// A reconnect: every unfinished (sent or acked) execution of the cluster
    /// is due again at `now`, so it is re-sent on the new stream. Returns how
    /// many.
    async fn requeue_in_flight(&mut self, cluster_id: Uuid, now: DateTime<Utc>) -> Result<u64>;

    /// Stores a run; a second run of the same execution is ignored (`false`).
    async fn record_verification(&mut self, run: &VerificationRun) -> Result<bool>;
    /// Newest first.
    async fn verification_runs(
        &mut self,
        remediation_id: Uuid,
        page: &PageRequest,
    ) -> Result<Page<VerificationRun>>;

    async fn add_dead_letter(&mut self, letter: &DeadLetter) -> Result<()>;
    async fn dead_letter(&mut self, id: Uuid) -> Result<DeadLetter>;
    /// Newest first.
    async fn list_dead_letters(
        &mut self,
        filter: &DeadLetterFilter,
        page: &PageRequest,
    ) -> Result<Page<DeadLetter>>;
    /// Marks a dead letter replayed; one already replayed is `Precondition`
    /// `INVALID_STATE`.
    async fn mark_replayed(&mut self, id: Uuid, by: &str, at: DateTime<Utc>) -> Result<DeadLetter>;

    /// Platform-wide (a platform-admin scope): `(tenant_id, remediation_id)`
    /// of remediations awaiting approval whose expiry passed at `now`.
    async fn expired_pending(
        &mut self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, Uuid)>>;
    /// Platform-wide backlog sizes, for the metrics.
    async fn depths(&mut self) -> Result<RemediationDepths>;
}
