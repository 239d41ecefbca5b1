//! Domain types of the store. They know nothing of protobuf: the service
//! adapters in `src/` map them to and from the generated messages.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::StoreError;

/// The issuer of users created with a local (development) password.
pub const LOCAL_ISSUER: &str = "local";

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $field:literal { $($(#[$vm:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vm])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self, StoreError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(StoreError::invalid($field, format!("unknown value {other:?}"))),
                }
            }
        }
    };
}

string_enum!(
    /// Lifecycle of a tenant.
    TenantStatus, "status" {
        Active => "active",
        Suspended => "suspended",
        Deleted => "deleted",
    }
);

string_enum!(
    /// A member's role in a tenant, strongest first.
    Role, "role" {
        Owner => "owner",
        Admin => "admin",
        Approver => "approver",
        Viewer => "viewer",
    }
);

string_enum!(
    /// Lifecycle of a cluster.
    ClusterStatus, "status" {
        Ready => "ready",
        Provisioning => "provisioning",
        Error => "error",
        Deleting => "deleting",
    }
);

string_enum!(
    /// Whether the cluster's agent is connected right now.
    ConnectionState, "connection_state" {
        Unknown => "unknown",
        Connected => "connected",
        Disconnected => "disconnected",
    }
);

string_enum!(
    /// Outcome of an audited action.
    AuditOutcome, "outcome" {
        Success => "success",
        Denied => "denied",
        Failure => "failure",
    }
);

// ---------------------------------------------------------------- tenants

/// Per-tenant limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    pub max_clusters: i32,
    pub requests_per_second: i32,
    pub max_events_per_day: i64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_clusters: 10,
            requests_per_second: 100,
            max_events_per_day: 1_000_000,
        }
    }
}

/// A tenant's retention windows in days; 0 means the platform default (see docs/RETENTION.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Security events, by `received_at` (events a remediation names stay while it does).
    pub events_days: i32,
    /// Idempotency receipts, by `received_at`; at least [`Retention::MIN_RECEIPTS_DAYS`].
    pub receipts_days: i32,
    /// Finished remediations (and their approvals, dispatches, runs), by last change.
    pub remediations_days: i32,
    /// Dead letters, by creation.
    pub dead_letters_days: i32,
}

impl Retention {
    /// The longest window accepted (100 years).
    pub const MAX_DAYS: i32 = 36_500;
    /// Receipts must outlive every resend: a webhook sender retries for up to 3 days (Stripe;
    /// Standard Webhooks senders for about a day) and an agent resends what was not acked
    /// after a reconnect, so a week leaves margin. A resend later than this after the first
    /// delivery is stored again instead of being answered Duplicate.
    pub const MIN_RECEIPTS_DAYS: i32 = 7;

    /// Checks each window: 0 (the default) or 1..=MAX_DAYS; receipts 0 or at least
    /// MIN_RECEIPTS_DAYS.
    pub fn check(&self) -> crate::error::Result<()> {
        for (field, days, min) in [
            ("retention.events_days", self.events_days, 1),
            (
                "retention.receipts_days",
                self.receipts_days,
                Self::MIN_RECEIPTS_DAYS,
            ),
            ("retention.remediations_days", self.remediations_days, 1),
            ("retention.dead_letters_days", self.dead_letters_days, 1),
        ] {
            if days != 0 && !(min..=Self::MAX_DAYS).contains(&days) {
                return Err(crate::error::StoreError::invalid(
                    field,
                    format!(
                        "must be 0 (the platform default) or {min} to {} days",
                        Self::MAX_DAYS
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Each window, this tenant's own or else `defaults`'.
    pub fn or(self, defaults: Retention) -> Retention {
        let pick = |own: i32, default: i32| if own > 0 { own } else { default };
        Retention {
            events_days: pick(self.events_days, defaults.events_days),
            receipts_days: pick(self.receipts_days, defaults.receipts_days),
            remediations_days: pick(self.remediations_days, defaults.remediations_days),
            dead_letters_days: pick(self.dead_letters_days, defaults.dead_letters_days),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub status: TenantStatus,
    /// Why the tenant is suspended; `None` unless `status` is `suspended`
    /// (cleared on reactivation).
    pub suspend_reason: Option<String>,
    pub quotas: Quotas,
    /// Retention windows (0: the platform default).
    pub retention: Retention,
    /// Optimistic-concurrency version: 1 at creation, +1 on every change
    /// (update, status change, soft delete). Pass it back as
    /// `expected_version` to refuse an edit based on a stale read.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: Option<Uuid>,
    pub updated_by: Option<Uuid>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default)]
pub struct NewTenant {
    /// Lowercase DNS label (1-63 chars of `a-z0-9-`), unique among live tenants.
    pub name: String,
    /// Empty means "same as name".
    pub display_name: String,
    pub quotas: Quotas,
}

/// Fields left `None` are unchanged.
#[derive(Debug, Clone, Default)]
pub struct TenantUpdate {
    pub display_name: Option<String>,
    pub max_clusters: Option<i32>,
    pub requests_per_second: Option<i32>,
    pub max_events_per_day: Option<i64>,
    /// The whole retention setting (each window 0 = the platform default).
    pub retention: Option<Retention>,
}

#[derive(Debug, Clone, Default)]
pub struct TenantFilter {
    /// Only this status. `None`: every status except `deleted`, unless
    /// `include_deleted`.
    pub status: Option<TenantStatus>,
    /// Names starting with this text (taken literally: `%` and `_` are not
    /// wildcards). Names are lowercase, so a prefix with an uppercase
    /// letter matches nothing. `None` or empty: no filter.
    pub name_prefix: Option<String>,
    /// With `status: None`, list deleted tenants too.
    pub include_deleted: bool,
}

// ---------------------------------------------------------------- users

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// PHC string (argon2id) for local development login; `None` for OIDC users.
    #[serde(skip_serializing)]
    pub password_hash: Option<String>,
    pub is_platform_admin: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("email", &self.email)
            .field("display_name", &self.display_name)
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "[REDACTED]"),
            )
            .field("is_platform_admin", &self.is_platform_admin)
            .finish_non_exhaustive()
    }
}

/// An identity verified by an OIDC issuer.
#[derive(Debug, Clone, Default)]
pub struct ExternalIdentity {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
}

/// A local (development) user: issuer [`LOCAL_ISSUER`], subject = username.
#[derive(Clone, Default)]
pub struct NewLocalUser {
    pub username: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// An argon2id PHC string, never a password.
    pub password_hash: String,
}

impl fmt::Debug for NewLocalUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewLocalUser")
            .field("username", &self.username)
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------- members

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
    pub invited_by: Option<Uuid>,
    /// The user's email and display name (from `users`, read at the time
    /// of the query).
    pub email: Option<String>,
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct MemberFilter {
    /// Only members with this role.
    pub role: Option<Role>,
}

/// One tenant a user belongs to, with the role held there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    pub tenant: Tenant,
    pub role: Role,
}

// ---------------------------------------------------------------- invites

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invite {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub role: Role,
    pub expires_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub accepted_by: Option<Uuid>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewInvite {
    pub email: String,
    pub role: Role,
    pub expires_at: DateTime<Utc>,
    pub created_by: Option<Uuid>,
}

// ---------------------------------------------------------------- clusters

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub display_name: String,
    pub status: ClusterStatus,
    pub connection_state: ConnectionState,
    pub agent_version: Option<String>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub api_endpoint: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub metadata: Value,
    /// Optimistic-concurrency version: 1 at creation, +1 on every change
    /// made by people or the control plane (update, status change, soft
    /// delete). Agent reports (`record_agent`) leave it alone, so a
    /// heartbeat never invalidates a user's pending edit.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default)]
pub struct NewCluster {
    /// Lowercase DNS label, unique among the tenant's live clusters.
    pub name: String,
    /// Empty means "same as name".
    pub display_name: String,
    pub api_endpoint: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Free-form JSON object (`null` is stored as `{}`).
    pub metadata: Value,
}

/// Fields left `None` are unchanged; `api_endpoint: Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct ClusterUpdate {
    pub display_name: Option<String>,
    pub api_endpoint: Option<Option<String>>,
    pub labels: Option<BTreeMap<String, String>>,
}

/// A live cluster and when its agent was last heard from.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterHeartbeat {
    pub tenant_id: Uuid,
    pub cluster_id: Uuid,
    pub connection_state: ConnectionState,
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// What an agent reports about itself.
#[derive(Debug, Clone)]
pub struct AgentReport {
    pub connection_state: ConnectionState,
    pub agent_version: Option<String>,
    pub seen_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterFilter {
    pub status: Option<ClusterStatus>,
    /// Names starting with this text, taken literally (see
    /// [`TenantFilter::name_prefix`]).
    pub name_prefix: Option<String>,
}

// ---------------------------------------------------------------- bootstrap tokens

/// A one-time token an agent trades (with a CSR) for its client certificate.
/// Only the SHA-256 of the secret is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootstrapToken {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub cluster_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewBootstrapToken {
    pub cluster_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub created_by: Option<Uuid>,
}

// ---------------------------------------------------------------- audit

/// One stored audit record: what the caller supplied (`entry`, with
/// `details` redacted) and what the store added. `hash` covers every other
/// field (see [`crate::audit::canonical_encoding`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub seq: i64,
    #[serde(flatten)]
    pub entry: NewAuditRecord,
    pub created_at: DateTime<Utc>,
    pub prev_hash: String,
    pub hash: String,
}

/// What the caller supplies; the store adds id, tenant (from the scope), seq,
/// time, prev_hash and hash, and redacts secrets in `details`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAuditRecord {
    /// `user`, `agent`, `service`, `system`, `anonymous` …
    pub actor_type: String,
    pub actor_id: Option<String>,
    /// Dotted verb, e.g. `cluster.create`, `member.role.change`.
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub outcome: AuditOutcome,
    pub request_id: Option<String>,
    pub client_address: Option<String>,
    pub user_agent: Option<String>,
    pub details: Value,
}

impl NewAuditRecord {
    /// A record with the required fields; the rest empty.
    pub fn new(
        actor_type: impl Into<String>,
        action: impl Into<String>,
        resource_type: impl Into<String>,
        outcome: AuditOutcome,
    ) -> Self {
        NewAuditRecord {
            actor_type: actor_type.into(),
            actor_id: None,
            action: action.into(),
            resource_type: resource_type.into(),
            resource_id: None,
            outcome,
            request_id: None,
            client_address: None,
            user_agent: None,
            details: Value::Object(Default::default()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor_type: Option<String>,
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// The `X-Request-Id` of the call that wrote the record.
    pub request_id: Option<String>,
    pub outcome: Option<AuditOutcome>,
    /// Inclusive lower bound on `created_at`.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `created_at`.
    pub until: Option<DateTime<Utc>>,
}

/// A cut of one audit chain: records up to `through_seq` were exported as a signed segment
/// (`segment_sha256`, signed with key `key_id`) and may be deleted; the first kept record's
/// `prev_hash` is `head_hash`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    pub tenant_id: Uuid,
    pub through_seq: i64,
    pub head_hash: String,
    /// The export took the records created before this time.
    pub cut_before: DateTime<Utc>,
    pub segment_sha256: String,
    pub key_id: String,
    pub created_at: DateTime<Utc>,
}

/// The state of one chain head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainHead {
    pub tenant_id: Uuid,
    pub last_seq: i64,
    pub last_hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainProblemKind {
    /// The stored hash is not the hash of the record's fields.
    HashMismatch,
    /// The record's prev_hash is not its predecessor's hash.
    PrevHashMismatch,
    /// A record with this seq should exist and does not (gap, or truncated
    /// tail according to the chain head).
    Missing,
    /// The chain head disagrees with the last record (hash, or seq beyond).
    HeadMismatch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainProblem {
    pub seq: i64,
    pub kind: ChainProblemKind,
    pub reason: String,
}

/// Result of walking one chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainVerification {
    pub tenant_id: Uuid,
    /// Records read and checked before stopping.
    pub records_checked: u64,
    /// The head's last_seq (0 when the chain is empty).
    pub head_seq: i64,
    /// The first problem found, walking by seq; `None` when the chain is intact.
    pub problem: Option<ChainProblem>,
}

impl ChainVerification {
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

// ---------------------------------------------------------------- events

/// The values of [`NewEvent::source`] (and `EventFilter::source`).
pub const EVENT_SOURCES: &[&str] = &[
    "trivy",
    "kyverno",
    "falco",
    "kube-bench",
    "audit",
    "custom",
    "webhook",
];

/// The values of [`NewEvent::category`] (and `EventFilter::category`).
pub const EVENT_CATEGORIES: &[&str] = &[
    "security",
    "compliance",
    "operations",
    "performance",
    "cost",
];

/// A security event as an agent or a webhook delivers it. Limits (checked
/// by [`crate::EventRepo::ingest`], `Invalid { field }` otherwise):
/// `source_event_id` 1-256 characters, `source_name` 1-256, `event_type`
/// 1-1024, `title` 0-1024, `fingerprint` 1-256, none with control
/// characters; `source` one of [`EVENT_SOURCES`], `category` one of
/// [`EVENT_CATEGORIES`], `severity` 1..=5; `resource` and `details` JSON
/// objects (`null` is stored as `{}`) without NUL characters, serialized at
/// most 16 KiB and 256 KiB; `detected_at` in years 1970-9999.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// The agent-assigned id, or the webhook delivery id; unique per
    /// (tenant, origin): a resend with the same id is a duplicate.
    pub source_event_id: String,
    /// `trivy`, `kyverno`, `falco`, `kube-bench`, `audit`, `custom` or `webhook`.
    pub source: String,
    /// The webhook source id (webhooks, where it names the origin), or the
    /// tool instance / custom tool name (agents).
    pub source_name: Option<String>,
    /// `security`, `compliance`, `operations`, `performance` or `cost`.
    pub category: String,
    /// 1 info, 2 low, 3 medium, 4 high, 5 critical.
    pub severity: i16,
    pub event_type: String,
    pub title: String,
    /// `{api_version, kind, namespace, name, uid}`.
    pub resource: Value,
    pub details: Value,
    /// Folding key: occurrences with the same fingerprint from the same
    /// origin inside the fold window are counted into one stored event.
    pub fingerprint: String,
    pub detected_at: DateTime<Utc>,
}

/// A stored event: the first occurrence's fields (but `details`, which is
/// the latest occurrence's), how many occurrences were folded into it, and
/// its place in the tenant's change sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The agent's cluster; `None` for webhook events.
    pub cluster_id: Option<Uuid>,
    /// The tenant's change sequence: set when the event is stored and
    /// moved forward each time an occurrence is folded into it, so
    /// `tail(after_seq)` hands watchers new events and updated counts alike.
    pub seq: i64,
    pub source_event_id: String,
    pub source: String,
    pub source_name: Option<String>,
    pub category: String,
    pub severity: i16,
    pub event_type: String,
    pub title: String,
    pub resource: Value,
    /// The details of the latest occurrence folded into the event.
    pub details: Value,
    pub fingerprint: String,
    /// When the first occurrence was detected.
    pub detected_at: DateTime<Utc>,
    /// Occurrences folded into this event (at least 1).
    pub count: i64,
    /// When the first occurrence was received.
    pub received_at: DateTime<Utc>,
    /// When the latest occurrence was received.
    pub last_seen_at: DateTime<Utc>,
}

/// One entry of a tenant's change sequence, as [`crate::EventRepo::changes`]
/// returns it: the current state of what changed at `seq()`.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// An event stored or folded into; its place is `event.seq`.
    Event(Event),
    /// A remediation created or changed (with its current approvals).
    Remediation {
        seq: i64,
        remediation: crate::remediation::Remediation,
    },
}

impl Change {
    /// Its place in the tenant's change sequence (the watchers' resume point).
    pub fn seq(&self) -> i64 {
        match self {
            Change::Event(e) => e.seq,
            Change::Remediation { seq, .. } => *seq,
        }
    }
}

/// What [`crate::EventRepo::ingest`] did with one input event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum EventOutcome {
    /// Stored as a new event.
    Accepted { event_id: Uuid },
    /// Its `source_event_id` was seen before from the same origin (a
    /// resend, in this batch or an earlier one): nothing changed.
    /// `event_id` is the event the first delivery was stored as or
    /// folded into.
    Duplicate { event_id: Uuid },
    /// A new id with the fingerprint of a recent event of the same origin:
    /// counted into that event.
    Folded { event_id: Uuid },
}

impl EventOutcome {
    /// The stored event this input ended up in.
    pub fn event_id(&self) -> Uuid {
        match *self {
            EventOutcome::Accepted { event_id }
            | EventOutcome::Duplicate { event_id }
            | EventOutcome::Folded { event_id } => event_id,
        }
    }
}

/// Filters of [`crate::EventRepo::list`]; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub cluster_id: Option<Uuid>,
    /// One of [`EVENT_SOURCES`].
    pub source: Option<String>,
    /// One of [`EVENT_CATEGORIES`].
    pub category: Option<String>,
    /// `severity >= min_severity`.
    pub min_severity: Option<i16>,
    /// Inclusive lower bound on `received_at`.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `received_at`.
    pub until: Option<DateTime<Utc>>,
    /// Exact `event_type`.
    pub event_type: Option<String>,
    /// Exact `source_name` (for webhook events, the webhook source id).
    pub source_name: Option<String>,
}

// ---------------------------------------------------------------- remediations
// (the structs are in `crate::remediation`; the enums live here to share
// `string_enum!`)

string_enum!(
    /// Where a remediation is in its life (see docs/REMEDIATION.md).
    RemediationStatus, "status" {
        Proposed => "proposed",
        PendingApproval => "pending_approval",
        Approved => "approved",
        Dispatched => "dispatched",
        Executing => "executing",
        Verifying => "verifying",
        Succeeded => "succeeded",
        Failed => "failed",
        RollingBack => "rolling_back",
        RolledBack => "rolled_back",
        Rejected => "rejected",
        Cancelled => "cancelled",
        Expired => "expired",
    }
);

string_enum!(
    /// How risky a remediation is; selects the approvals required.
    RiskLevel, "risk" {
        Low => "low",
        Medium => "medium",
        High => "high",
        Critical => "critical",
    }
);

string_enum!(
    /// What an execution does on the cluster.
    DispatchOperation, "operation" {
        Apply => "apply",
        Rollback => "rollback",
    }
);

string_enum!(
    /// Delivery state of one execution in the dispatch queue.
    DispatchState, "state" {
        Pending => "pending",
        Sent => "sent",
        Acked => "acked",
        Done => "done",
        Dead => "dead",
    }
);

string_enum!(
    /// Overall result of a verification run.
    VerificationOutcome, "result" {
        Success => "success",
        Failure => "failure",
    }
);
