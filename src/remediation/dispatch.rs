//! The dispatcher: delivers queued executions to the agents whose streams this replica holds,
//! retries them with backoff, dead-letters them when attempts run out, folds the agents'
//! reports into the remediations, and sweeps expired proposals.
//!
//! The queue is the `remediation_dispatches` table (an outbox written in the same transaction
//! as the approval that created the work), so nothing is lost between a commit and a send. Each
//! replica only claims work for the clusters whose stream it holds (tenant-scoped transactions,
//! RLS applies), so no cross-replica routing is needed: a commit publishes a wake-up on the
//! shared cache (`remediation:wake`), and every replica also polls as a backstop.
//! Delivery is at least once: a command is sent again (attempt + 1) when it is not acknowledged
//! before its backoff runs out, and every unfinished command is sent again when its agent
//! reconnects. Agents deduplicate by execution id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;
use zen_cache::Cache;
use zen_store::{
    AuditOutcome, DeadLetter, Dispatch, DispatchOperation, DispatchState, NewAuditRecord,
    Remediation, RemediationStatus, Scope, Store, StoreError, Tx, VerificationOutcome,
    VerificationRun,
};

use super::state::Event;
use super::{new_execution, transition, RemediationSettings};

/// The shared-cache channel on which a commit that queued work wakes every replica.
pub const WAKE_CHANNEL: &str = "remediation:wake";

/// A command for one agent (the session turns it into a `RemediationCommand`).
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    pub remediation_id: Uuid,
    pub execution_id: Uuid,
    pub version: i64,
    pub operation: DispatchOperation,
    /// proto3 JSON of `RemediationAction`.
    pub action: Value,
    /// proto3 JSON array of `VerificationProbe`.
    pub probes: Value,
    pub attempt: i32,
    pub deadline: DateTime<Utc>,
    /// W3C trace context of the dispatch, for the agent to continue (empty: not traced).
    pub trace_context: std::collections::HashMap<String, String>,
}

/// The phase an agent reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Received,
    Executing,
    Verifying,
    Succeeded,
    Failed,
}

/// One probe's outcome as reported.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeOutcome {
    pub name: String,
    pub success: bool,
    pub duration_ms: i64,
    pub message: String,
}

/// Probe results, and when the probes started and ended.
pub type Verification = (
    Vec<ProbeOutcome>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// An agent's report on one execution.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub remediation_id: Uuid,
    pub execution_id: Uuid,
    pub phase: Phase,
    pub error_message: String,
    /// Probe results with start and end, when probes ran.
    pub verification: Option<Verification>,
    /// proto3 JSON of the rollback action the agent captured before applying.
    pub rollback_action: Option<Value>,
    /// W3C trace context of the agent's execution (empty: not traced).
    pub trace_context: std::collections::HashMap<String, String>,
}

struct Registered {
    session: u64,
    commands: mpsc::Sender<Command>,
}

/// Delivers remediation commands to connected agents; one per process.
pub struct Dispatcher {
    store: Arc<Store>,
    cache: Arc<dyn Cache>,
    settings: RemediationSettings,
    sessions: Mutex<HashMap<(Uuid, Uuid), Registered>>,
    next_session: AtomicU64,
    wake: Notify,
}

/// Keeps an agent's stream registered; dropping it unregisters (unless a newer stream of the
/// same cluster replaced it).
pub struct SessionGuard {
    dispatcher: Arc<Dispatcher>,
    key: (Uuid, Uuid),
    session: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut sessions = self.dispatcher.sessions.lock().expect("sessions lock");
        if sessions.get(&self.key).map(|r| r.session) == Some(self.session) {
            sessions.remove(&self.key);
        }
    }
}

/// An audit record of a step the system or an agent took.
fn system_record(
    actor: (&str, String),
    action: &str,
    r: &Remediation,
    details: Value,
) -> NewAuditRecord {
    let mut record = NewAuditRecord::new(actor.0, action, "remediation", AuditOutcome::Success);
    record.actor_id = Some(actor.1).filter(|a| !a.is_empty());
    record.resource_id = Some(r.id.to_string());
    record.details = details;
    record
}

fn dispatcher_actor() -> (&'static str, String) {
    ("system", "remediation-dispatcher".into())
}

impl Dispatcher {
    pub fn new(
        store: Arc<Store>,
        cache: Arc<dyn Cache>,
        settings: RemediationSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            cache,
            settings,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            wake: Notify::new(),
        })
    }

    pub fn settings(&self) -> &RemediationSettings {
        &self.settings
    }

    /// Starts the dispatch loop and the wake-up listener. They hold only a weak reference, so
    /// they end when the dispatcher is dropped.
    pub fn start(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let poll = self.settings.poll_interval;
        let sweep_every = self.settings.sweep_interval;
        tokio::spawn(async move {
            let mut last_sweep = std::time::Instant::now() - sweep_every;
            loop {
                let Some(this) = weak.upgrade() else { return };
                if last_sweep.elapsed() >= sweep_every {
                    last_sweep = std::time::Instant::now();
                    this.sweep().await;
                }
                this.pump().await;
                // The strong reference lives one poll at most after the last owner lets go.
                let _ = tokio::time::timeout(poll, this.wake.notified()).await;
            }
        });
        let weak = Arc::downgrade(self);
        let cache = self.cache.clone();
        tokio::spawn(async move {
            let mut subscription = match cache.subscribe(WAKE_CHANNEL).await {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%error, "no remediation wake-ups from other replicas; polling only");
                    return;
                }
            };
            loop {
                // Wakes up now and then to notice a dispatcher that is gone.
                match tokio::time::timeout(Duration::from_secs(5), subscription.recv()).await {
                    Ok(None) => return,
                    Ok(Some(_)) => match weak.upgrade() {
                        Some(this) => this.wake.notify_one(),
                        None => return,
                    },
                    Err(_) if weak.strong_count() == 0 => return,
                    Err(_) => {}
                }
            }
        });
    }

    /// Wakes the dispatchers of every replica (after a commit that queued work).
    pub async fn notify(&self) {
        self.wake.notify_one();
        if let Err(error) = self.cache.publish(WAKE_CHANNEL, b"").await {
            tracing::warn!(%error, "could not publish a remediation wake-up");
        }
    }

    /// Registers an agent's stream: unfinished executions of its cluster are due again at once
    /// (a reconnect re-sends what the agent may not have finished), and the commands for it
    /// arrive on the returned receiver.
    pub async fn register(
        self: &Arc<Self>,
        tenant_id: Uuid,
        cluster_id: Uuid,
    ) -> (SessionGuard, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(32);
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        self.sessions.lock().expect("sessions lock").insert(
            (tenant_id, cluster_id),
            Registered {
                session,
                commands: tx,
            },
        );
        let requeue = async {
            let mut tx = self.store.begin(&Scope::tenant(tenant_id, None)).await?;
            tx.remediations()
                .requeue_in_flight(cluster_id, Utc::now())
                .await?;
            tx.commit().await
        };
        if let Err(error) = requeue.await {
            tracing::warn!(%error, cluster = %cluster_id, "could not requeue in-flight remediations");
        }
        self.wake.notify_one();
        (
            SessionGuard {
                dispatcher: self.clone(),
                key: (tenant_id, cluster_id),
                session,
            },
            rx,
        )
    }

    /// One pass over the clusters whose streams this replica holds.
    pub async fn pump(&self) {
        let clusters: Vec<((Uuid, Uuid), mpsc::Sender<Command>)> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .map(|(k, r)| (*k, r.commands.clone()))
            .collect();
        for ((tenant_id, cluster_id), commands) in clusters {
            match self.claim(tenant_id, cluster_id).await {
                Ok(batch) => {
                    for command in batch {
                        // A full or closed channel loses nothing: the row is due again when
                        // its backoff runs out.
                        if commands.try_send(command).is_err() {
                            tracing::debug!(cluster = %cluster_id, "agent stream busy or gone; retrying later");
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, cluster = %cluster_id, "remediation dispatch failed")
                }
            }
        }
    }

    /// Claims the cluster's due executions in one transaction: each is either dead-lettered
    /// (attempts exhausted) or marked sent with its next deadline; the commands go out after
    /// the commit.
    async fn claim(&self, tenant_id: Uuid, cluster_id: Uuid) -> Result<Vec<Command>, StoreError> {
        let now = Utc::now();
        let mut tx = self.store.begin(&Scope::tenant(tenant_id, None)).await?;
        let due = tx.remediations().claim_due(cluster_id, now, 20).await?;
        // Every remediation row is locked before the first save takes the tenant's change
        // sequence (the documented lock order: rows, sequence head, audit chain head).
        let mut locked = Vec::with_capacity(due.len());
        for d in due {
            let r = tx.remediations().lock(d.remediation_id).await?;
            locked.push((d, r));
        }
        let mut commands = Vec::new();
        let mut changed = false;
        for (mut d, mut r) in locked {
            if r.execution_id != Some(d.execution_id) {
                // Superseded (revised or cancelled before it went out).
                d.state = DispatchState::Done;
                d.last_error = "superseded".into();
                tx.remediations().save_dispatch(&d).await?;
                continue;
            }
            if d.state == DispatchState::Sent {
                d.last_error = format!("not acknowledged by the agent (attempt {})", d.attempts);
            }
            let expected = r.version;
            if d.attempts >= d.max_attempts {
                let record = self.dead_letter(tx.as_mut(), &mut r, &mut d, now).await?;
                tx.remediations().save(&r, expected).await?;
                tx.audit().append(record).await?;
                changed = true;
                continue;
            }
            d.attempts += 1;
            d.state = DispatchState::Sent;
            d.next_attempt_at = now
                + chrono::Duration::from_std(self.settings.backoff(d.attempts)).unwrap_or_default();
            tx.remediations().save_dispatch(&d).await?;
            r.attempts = d.attempts;
            r.dispatched_at = Some(now);
            let dispatched = r.status == RemediationStatus::Approved;
            if dispatched {
                transition(&mut r, Event::Dispatch, now)?;
            }
            let saved = tx.remediations().save(&r, expected).await?;
            changed = true;
            if dispatched {
                tx.audit()
                    .append(system_record(
                        dispatcher_actor(),
                        "remediation.dispatched",
                        &r,
                        json!({ "execution_id": d.execution_id, "cluster_id": cluster_id }),
                    ))
                    .await?;
            }
            let (action, probes) = match d.operation {
                DispatchOperation::Apply => (saved.action.clone(), saved.probes.clone()),
                DispatchOperation::Rollback => (
                    saved.rollback_action.clone().unwrap_or(Value::Null),
                    // After a rollback the action's probes no longer apply.
                    Value::Array(Vec::new()),
                ),
            };
            // The hand-over to the agent, as a span the agent's execution continues.
            let span = crate::telemetry::traced(|| {
                tracing::info_span!(
                    "remediation.dispatch",
                    otel.kind = "producer",
                    zen.tenant_id = %tenant_id,
                    zen.cluster_id = %cluster_id,
                    zen.remediation_id = %r.id,
                    zen.execution_id = %d.execution_id,
                    zen.attempt = i64::from(d.attempts),
                    zen.operation = ?d.operation,
                )
            });
            let trace_context = span.in_scope(crate::telemetry::current_context_headers);
            commands.push(Command {
                trace_context,
                remediation_id: r.id,
                execution_id: d.execution_id,
                version: d.remediation_version,
                operation: d.operation,
                action,
                probes,
                attempt: d.attempts,
                deadline: now
                    + chrono::Duration::from_std(self.settings.command_deadline)
                        .unwrap_or_default(),
            });
        }
        tx.commit().await?;
        if changed {
            self.publish_change(tenant_id).await;
        }
        Ok(commands)
    }

    /// Wakes the tenant's watchers (WatchEvents) after a committed remediation change.
    async fn publish_change(&self, tenant_id: Uuid) {
        let channel = crate::grpc::services::ingest::events_channel(tenant_id);
        if let Err(error) = self.cache.publish(&channel, b"").await {
            tracing::debug!(%error, "could not wake the tenant's watchers");
        }
    }

    async fn dead_letter(
        &self,
        tx: &mut dyn Tx,
        r: &mut Remediation,
        d: &mut Dispatch,
        now: DateTime<Utc>,
    ) -> Result<NewAuditRecord, StoreError> {
        d.state = DispatchState::Dead;
        if d.last_error.is_empty() {
            d.last_error = "attempts exhausted".into();
        }
        tx.remediations().save_dispatch(d).await?;
        let letter = DeadLetter {
            id: Uuid::now_v7(),
            tenant_id: d.tenant_id,
            remediation_id: d.remediation_id,
            cluster_id: d.cluster_id,
            execution_id: d.execution_id,
            operation: d.operation,
            attempts: d.attempts,
            last_error: d.last_error.clone(),
            created_at: now,
            replayed_at: None,
            replayed_by: None,
        };
        tx.remediations().add_dead_letter(&letter).await?;
        transition(r, Event::DeadLetter, now)?;
        r.last_error = format!(
            "dispatch failed after {} attempts: {}",
            d.attempts, d.last_error
        );
        // The caller appends it after saving the remediation (lock order).
        Ok(system_record(
            dispatcher_actor(),
            "remediation.dead_lettered",
            r,
            json!({
                "dead_letter_id": letter.id,
                "execution_id": d.execution_id,
                "attempts": d.attempts,
                "last_error": d.last_error,
            }),
        ))
    }

    /// Folds an agent's report into the execution and its remediation. Reports of unknown,
    /// finished or superseded executions, and phases the remediation is already past, change
    /// nothing (reports arrive at least once).
    pub async fn handle_report(
        &self,
        tenant_id: Uuid,
        cluster_id: Uuid,
        report: Report,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut tx = self.store.begin(&Scope::tenant(tenant_id, None)).await?;
        let mut d = match tx.remediations().dispatch(report.execution_id).await {
            Ok(d) if d.cluster_id == cluster_id && d.remediation_id == report.remediation_id => d,
            Ok(_) | Err(StoreError::NotFound { .. }) => {
                tracing::warn!(execution = %report.execution_id, "report for an unknown execution ignored");
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        if matches!(d.state, DispatchState::Done | DispatchState::Dead) {
            return Ok(());
        }
        let mut r = tx.remediations().lock(d.remediation_id).await?;
        let before = r.clone();
        // Appended after the remediation is saved: the documented lock order is the
        // remediation row, the tenant's change sequence, then the audit chain head.
        let mut audits = Vec::new();
        let agent = ("agent", cluster_id.to_string());
        d.state = DispatchState::Acked;
        d.last_phase = format!("{:?}", report.phase).to_lowercase();
        if report.rollback_action.is_some()
            && r.rollback_action.is_none()
            && d.operation == DispatchOperation::Apply
        {
            r.rollback_action = report.rollback_action.clone();
        }
        let mut queued = None;
        let event = match (d.operation, report.phase) {
            (_, Phase::Received) => None,
            (DispatchOperation::Apply, Phase::Executing) => Some(Event::Execute),
            (DispatchOperation::Apply, Phase::Verifying) => Some(Event::Verify),
            (DispatchOperation::Rollback, Phase::Executing | Phase::Verifying) => None,
            (operation, Phase::Succeeded | Phase::Failed) => {
                d.state = DispatchState::Done;
                let mut verification_failed = false;
                if let Some((probes, started, ended)) = &report.verification {
                    let success =
                        report.phase == Phase::Succeeded && probes.iter().all(|p| p.success);
                    verification_failed = !success && !probes.is_empty();
                    let run = VerificationRun {
                        id: Uuid::now_v7(),
                        remediation_id: r.id,
                        remediation_version: d.remediation_version,
                        execution_id: d.execution_id,
                        result: if success {
                            VerificationOutcome::Success
                        } else {
                            VerificationOutcome::Failure
                        },
                        probes: Value::Array(
                            probes
                                .iter()
                                .map(|p| {
                                    json!({
                                        "name": p.name,
                                        "success": p.success,
                                        "duration_ms": p.duration_ms,
                                        "message": p.message,
                                    })
                                })
                                .collect(),
                        ),
                        started_at: *started,
                        ended_at: *ended,
                        created_at: now,
                    };
                    tx.remediations().record_verification(&run).await?;
                }
                if report.phase == Phase::Failed {
                    r.last_error = if report.error_message.is_empty() {
                        "the agent reported a failure".into()
                    } else {
                        report.error_message.clone()
                    };
                }
                match (operation, report.phase) {
                    (DispatchOperation::Apply, Phase::Succeeded) => Some(Event::Succeed),
                    (DispatchOperation::Apply, _) => {
                        let policy = tx.remediations().policy().await?;
                        if verification_failed
                            && policy.auto_rollback_on_failure
                            && r.rollback_action.is_some()
                        {
                            queued = Some(new_execution(
                                &mut r,
                                DispatchOperation::Rollback,
                                &policy,
                                now,
                            ));
                            Some(Event::AutoRollback)
                        } else {
                            Some(Event::Fail)
                        }
                    }
                    (DispatchOperation::Rollback, Phase::Succeeded) => Some(Event::RollbackSucceed),
                    (DispatchOperation::Rollback, _) => Some(Event::RollbackFail),
                }
            }
        };
        // The action counts as applied once the agent got past executing it.
        let applied = matches!(
            report.phase,
            Phase::Executing | Phase::Verifying | Phase::Succeeded
        ) || (report.phase == Phase::Failed && report.verification.is_some());
        if applied && d.operation == DispatchOperation::Apply {
            r.executed = true;
        }
        if d.state == DispatchState::Acked {
            // Acknowledged: no more timed retries; a reconnect still re-sends it.
            d.next_attempt_at = now;
        }
        tx.remediations().save_dispatch(&d).await?;
        if let Some(event) = event {
            match transition(&mut r, event, now) {
                Ok(()) => {
                    audits.push(system_record(
                        agent.clone(),
                        &format!("remediation.{}", audit_verb(event)),
                        &r,
                        json!({
                            "execution_id": d.execution_id,
                            "operation": d.operation.as_str(),
                            "phase": d.last_phase,
                            "error": report.error_message,
                        }),
                    ));
                }
                Err(_) => {
                    // Already past this phase (a resent report): nothing to change.
                    queued = None;
                }
            }
        }
        if let Some(rollback) = &queued {
            tx.remediations().enqueue(rollback).await?;
        }
        if r != before {
            tx.remediations().save(&r, before.version).await?;
        }
        for record in audits {
            tx.audit().append(record).await?;
        }
        tx.commit().await?;
        if r != before {
            self.publish_change(tenant_id).await;
        }
        if queued.is_some() {
            self.notify().await;
        }
        Ok(())
    }

    /// Expires proposals past their expiry and refreshes the backlog gauges.
    pub async fn sweep(&self) {
        let now = Utc::now();
        let work = async {
            let mut tx = self.store.begin_read(&Scope::platform_admin(None)).await?;
            let expired = tx.remediations().expired_pending(now, 100).await?;
            let depths = tx.remediations().depths().await?;
            tx.commit().await?;
            metrics::gauge!("zen_remediation_queue_depth").set(depths.queue as f64);
            metrics::gauge!("zen_dlq_depth").set(depths.dead_letters as f64);
            for (tenant_id, id) in expired {
                let mut tx = self.store.begin(&Scope::tenant(tenant_id, None)).await?;
                let mut r = tx.remediations().lock(id).await?;
                let expected = r.version;
                if transition(&mut r, Event::Expire, now).is_err() {
                    continue;
                }
                r.status_reason = "not approved before its expiry".into();
                tx.remediations().save(&r, expected).await?;
                tx.audit()
                    .append(system_record(
                        ("system", "remediation-sweeper".into()),
                        "remediation.expired",
                        &r,
                        json!({}),
                    ))
                    .await?;
                tx.commit().await?;
                self.publish_change(tenant_id).await;
            }
            Ok::<(), StoreError>(())
        };
        if let Err(error) = work.await {
            tracing::warn!(%error, "remediation sweep failed");
        }
    }
}

/// The audit action suffix of an agent-driven event.
fn audit_verb(event: Event) -> &'static str {
    match event {
        Event::Execute => "executing",
        Event::Verify => "verifying",
        Event::Succeed => "succeeded",
        Event::Fail => "failed",
        Event::AutoRollback => "auto_rollback",
        Event::RollbackSucceed => "rolled_back",
        Event::RollbackFail => "rollback_failed",
        other => other.name(),
    }
}
