//! The remediation workflow's domain side: the state machine ([`state`]), approval policy
//! evaluation ([`policy`]) and the dispatcher ([`dispatch`]) that drives approved work down the
//! agents' streams and folds their reports back in. The gRPC adapter
//! (`grpc::services::remediation`) and the agent session (`grpc::services::ingest`) call into it.
//! See docs/REMEDIATION.md.

pub mod cli;
pub mod dispatch;
pub mod policy;
pub mod state;

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use zen_store::{
    precondition, ApprovalPolicy, Dispatch, DispatchOperation, DispatchState, Remediation,
    RemediationStatus, StoreError,
};

pub use dispatch::{Command, Dispatcher, Phase, ProbeOutcome, Report};

/// Tuning of dispatch and expiry, part of the configuration (`--remediation-*-ms` flags,
/// `ZEN_REMEDIATION_*_MS`, the TOML file; see docs/DEPLOYMENT.md); attempts per execution come
/// from the tenant's approval policy.
#[derive(Clone, Debug)]
pub struct RemediationSettings {
    /// How often the dispatcher looks for due work when nothing wakes it.
    pub poll_interval: Duration,
    /// Delay before the first retry of an unacknowledged command; doubles per attempt.
    pub backoff_base: Duration,
    /// Cap of the retry delay.
    pub backoff_max: Duration,
    /// How often expired proposals are swept and the backlog gauges refreshed.
    pub sweep_interval: Duration,
    /// Time an agent has to start executing a command it received.
    pub command_deadline: Duration,
}

impl Default for RemediationSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(10),
            command_deadline: Duration::from_secs(600),
        }
    }
}

impl RemediationSettings {
    /// Defaults overridden by `ZEN_REMEDIATION_POLL_MS`, `ZEN_REMEDIATION_BACKOFF_BASE_MS`,
    /// `ZEN_REMEDIATION_BACKOFF_MAX_MS`, `ZEN_REMEDIATION_SWEEP_MS` and
    /// `ZEN_REMEDIATION_COMMAND_DEADLINE_MS` (unparsable values are ignored with a warning).
    pub fn from_env() -> Self {
        let mut settings = Self::default();
        let read = |name: &str, into: &mut Duration| {
            if let Ok(text) = std::env::var(name) {
                match text.parse::<u64>() {
                    Ok(ms) if ms > 0 => *into = Duration::from_millis(ms),
                    _ => {
                        tracing::warn!(name, value = %text, "ignored: not a positive number of milliseconds")
                    }
                }
            }
        };
        read("ZEN_REMEDIATION_POLL_MS", &mut settings.poll_interval);
        read(
            "ZEN_REMEDIATION_BACKOFF_BASE_MS",
            &mut settings.backoff_base,
        );
        read("ZEN_REMEDIATION_BACKOFF_MAX_MS", &mut settings.backoff_max);
        read("ZEN_REMEDIATION_SWEEP_MS", &mut settings.sweep_interval);
        read(
            "ZEN_REMEDIATION_COMMAND_DEADLINE_MS",
            &mut settings.command_deadline,
        );
        settings
    }

    /// Exponential backoff with jitter before attempt `attempt + 1`: `base * 2^(attempt-1)`,
    /// capped, plus up to one `base` of random jitter (so agents reconnecting together do not
    /// retry in lockstep).
    pub fn backoff(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(0);
        let delay = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.backoff_max);
        let mut byte = [0u8; 2];
        let _ = getrandom::fill(&mut byte);
        let jitter = self
            .backoff_base
            .mul_f64(f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX));
        delay + jitter
    }
}

/// Applies `event` to `r` through the state machine: the status changes or the call fails
/// with FAILED_PRECONDITION `INVALID_STATE`. Terminal statuses stamp `completed_at`.
pub fn transition(
    r: &mut Remediation,
    event: state::Event,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let to = state::next(r.status, event).map_err(|reason| StoreError::Precondition {
        code: precondition::INVALID_STATE,
        reason: reason.into(),
    })?;
    r.status = to;
    if state::is_terminal(to) {
        r.completed_at = Some(now);
    } else {
        r.completed_at = None;
    }
    if !matches!(
        to,
        RemediationStatus::Proposed | RemediationStatus::PendingApproval
    ) {
        r.expires_at = None;
    }
    metrics::counter!("zen_remediations_total", "status" => to.as_str()).increment(1);
    if state::is_terminal(to) {
        // Proposal to the end, by how it ended (a handful of terminal statuses).
        let seconds = (now - r.created_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!("zen_remediation_duration_seconds", "outcome" => to.as_str())
            .record(seconds);
    }
    Ok(())
}

/// Queues a new execution of `r` (a fresh execution id, attempts reset) and points `r` at it.
pub fn new_execution(
    r: &mut Remediation,
    operation: DispatchOperation,
    policy: &ApprovalPolicy,
    now: DateTime<Utc>,
) -> Dispatch {
    let execution_id = Uuid::now_v7();
    r.execution_id = Some(execution_id);
    r.attempts = 0;
    Dispatch {
        execution_id,
        tenant_id: r.tenant_id,
        cluster_id: r.cluster_id,
        remediation_id: r.id,
        // The version this change will be saved at: what the agent is told it executes.
        remediation_version: r.version + 1,
        operation,
        state: DispatchState::Pending,
        attempts: 0,
        max_attempts: policy.max_dispatch_attempts.clamp(1, 20),
        next_attempt_at: now,
        last_error: String::new(),
        last_phase: String::new(),
        created_at: now,
        updated_at: now,
    }
}

/// Replays dead letter `id`: marked replayed by `by`, its remediation back to APPROVED (or
/// ROLLING_BACK for a rollback execution) with a fresh execution queued. Shared by the RPC and
/// `zen dlq replay`; the caller appends the audit record (with the returned details) and
/// commits.
pub async fn replay(
    tx: &mut dyn zen_store::Tx,
    id: Uuid,
    by: &str,
) -> Result<(zen_store::DeadLetter, Remediation, serde_json::Value), StoreError> {
    let now = Utc::now();
    let letter = tx.remediations().mark_replayed(id, by, now).await?;
    let mut r = tx.remediations().lock(letter.remediation_id).await?;
    if r.execution_id != Some(letter.execution_id) || r.status != RemediationStatus::Failed {
        return Err(StoreError::Precondition {
            code: precondition::INVALID_STATE,
            reason: "the remediation moved on since this dead letter".into(),
        });
    }
    let expected = r.version;
    let event = match letter.operation {
        DispatchOperation::Apply => state::Event::Replay,
        DispatchOperation::Rollback => state::Event::ReplayRollback,
    };
    transition(&mut r, event, now)?;
    r.last_error.clear();
    let policy = tx.remediations().policy().await?;
    let dispatch = new_execution(&mut r, letter.operation, &policy, now);
    tx.remediations().enqueue(&dispatch).await?;
    let saved = tx.remediations().save(&r, expected).await?;
    let details = serde_json::json!({
        "remediation_id": saved.id,
        "execution_id": dispatch.execution_id,
        "operation": letter.operation.as_str(),
        "status": saved.status.as_str(),
    });
    Ok((letter, saved, details))
}
