//! `zen.remediation.v1.RemediationService`: proposals, approvals under the tenant's policy,
//! break-glass, rollbacks, verification runs, the approval policy and dead letters.
//!
//! The authorization layer already checked caller kinds and minimum roles from the contract;
//! the rules here depend on the content (the policy's approver role, self-approval, windows,
//! who may cancel). Every change goes through the state machine (`crate::remediation::state`),
//! checks the caller's `version` (stale: ABORTED), and commits with its audit record and, when
//! it queues an execution, the dispatch row (the outbox) in one transaction.

use std::sync::Arc;

use chrono::Utc;
use prost_reflect::DynamicMessage;
use serde_json::{json, Value};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;
use zen_cache::Cache;
use zen_store::{
    ApprovalPolicy, ApprovalWindow, DeadLetter, DeadLetterFilter, DispatchOperation,
    NewRemediation, Remediation, RemediationFilter, RemediationStatus, RiskLevel, Role, Store,
    StoreError, TenantStatus, Tx, VerificationRun,
};

use super::ingest::events_channel;
use super::support::{
    denied, duration_field, invalid, opt_timestamp, page_request, role_field, role_to_proto,
    store_status, timestamp, Call, Mutation, ERROR_DOMAIN,
};
use crate::authz::{rank, Caller};
use crate::grpc::validate::{id, optional_id, unchecked};
use crate::proto::zen::remediation::v1::{self as pb, remediation_service_server};
use crate::remediation::policy::{self, Refusal};
use crate::remediation::state::Event;
use crate::remediation::{new_execution, transition, Dispatcher};

// ----------------------------------------------------------------- proto3 JSON codec

/// A generated message as proto3 JSON (how actions and probes are stored and handed to the
/// agent's exec hook).
pub fn message_to_json<M: prost::Message>(full_name: &str, message: &M) -> Value {
    let Some(descriptor) = crate::proto::DESCRIPTOR_POOL.get_message_by_name(full_name) else {
        return Value::Null;
    };
    DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .ok()
        .and_then(|dynamic| serde_json::to_value(&dynamic).ok())
        .unwrap_or(Value::Null)
}

/// proto3 JSON back to a generated message.
pub fn message_from_json<M: prost::Message + Default>(
    full_name: &str,
    value: &Value,
) -> Result<M, String> {
    let descriptor = crate::proto::DESCRIPTOR_POOL
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("unknown message {full_name}"))?;
    let dynamic =
        DynamicMessage::deserialize(descriptor, value.clone()).map_err(|e| e.to_string())?;
    M::decode(prost::Message::encode_to_vec(&dynamic).as_slice()).map_err(|e| e.to_string())
}

const ACTION: &str = "zen.remediation.v1.RemediationAction";
const PROBE: &str = "zen.remediation.v1.VerificationProbe";

pub fn action_from_json(value: &Value) -> Option<pb::RemediationAction> {
    (!value.is_null())
        .then(|| message_from_json(ACTION, value).ok())
        .flatten()
}

pub fn probes_from_json(value: &Value) -> Vec<pb::VerificationProbe> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| message_from_json(PROBE, v).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn probes_to_json(probes: &[pb::VerificationProbe]) -> Value {
    Value::Array(probes.iter().map(|p| message_to_json(PROBE, p)).collect())
}

// ----------------------------------------------------------------- conversions

fn risk_field(field: &str, value: i32, required: bool) -> Result<Option<RiskLevel>, Status> {
    match pb::RiskLevel::try_from(value) {
        Ok(pb::RiskLevel::Low) => Ok(Some(RiskLevel::Low)),
        Ok(pb::RiskLevel::Medium) => Ok(Some(RiskLevel::Medium)),
        Ok(pb::RiskLevel::High) => Ok(Some(RiskLevel::High)),
        Ok(pb::RiskLevel::Critical) => Ok(Some(RiskLevel::Critical)),
        Ok(pb::RiskLevel::Unspecified) if !required => Ok(None),
        // The contract's rules refuse both (enum.defined_only; not_in 0 where required).
        Ok(pb::RiskLevel::Unspecified) | Err(_) => Err(unchecked(field)),
    }
}

fn risk_to_proto(risk: RiskLevel) -> pb::RiskLevel {
    match risk {
        RiskLevel::Low => pb::RiskLevel::Low,
        RiskLevel::Medium => pb::RiskLevel::Medium,
        RiskLevel::High => pb::RiskLevel::High,
        RiskLevel::Critical => pb::RiskLevel::Critical,
    }
}

pub fn status_to_proto(status: RemediationStatus) -> pb::RemediationStatus {
    use pb::RemediationStatus as P;
    use RemediationStatus as S;
    match status {
        S::Proposed => P::Proposed,
        S::PendingApproval => P::PendingApproval,
        S::Approved => P::Approved,
        S::Dispatched => P::Dispatched,
        S::Executing => P::Executing,
        S::Verifying => P::Verifying,
        S::Succeeded => P::Succeeded,
        S::Failed => P::Failed,
        S::RollingBack => P::RollingBack,
        S::RolledBack => P::RolledBack,
        S::Rejected => P::Rejected,
        S::Cancelled => P::Cancelled,
        S::Expired => P::Expired,
    }
}

fn status_from_proto(value: i32) -> Result<Option<RemediationStatus>, Status> {
    use pb::RemediationStatus as P;
    use RemediationStatus as S;
    Ok(Some(match P::try_from(value) {
        Ok(P::Unspecified) => return Ok(None),
        Ok(P::Proposed) => S::Proposed,
        Ok(P::PendingApproval) => S::PendingApproval,
        Ok(P::Approved) => S::Approved,
        Ok(P::Dispatched) => S::Dispatched,
        Ok(P::Executing) => S::Executing,
        Ok(P::Verifying) => S::Verifying,
        Ok(P::Succeeded) => S::Succeeded,
        Ok(P::Failed) => S::Failed,
        Ok(P::RollingBack) => S::RollingBack,
        Ok(P::RolledBack) => S::RolledBack,
        Ok(P::Rejected) => S::Rejected,
        Ok(P::Cancelled) => S::Cancelled,
        Ok(P::Expired) => S::Expired,
        Err(_) => return Err(unchecked("status")),
    }))
}

pub fn remediation_to_proto(r: Remediation) -> pb::Remediation {
    pb::Remediation {
        remediation_id: r.id.to_string(),
        tenant_id: r.tenant_id.to_string(),
        cluster_id: r.cluster_id.to_string(),
        event_id: r.event_id.map(|e| e.to_string()).unwrap_or_default(),
        title: r.title,
        description: r.description,
        action: action_from_json(&r.action),
        rollback_action: r.rollback_action.as_ref().and_then(action_from_json),
        probes: probes_from_json(&r.probes),
        risk: risk_to_proto(r.risk) as i32,
        status: status_to_proto(r.status) as i32,
        status_reason: r.status_reason,
        version: r.version,
        approvals: r
            .approvals
            .into_iter()
            .map(|a| pb::Approval {
                approver_id: a.approver_id.to_string(),
                approver_role: role_to_proto(a.approver_role) as i32,
                comment: a.comment,
                approve_time: Some(timestamp(a.created_at)),
                remediation_version: a.remediation_version,
            })
            .collect(),
        required_approvals: r.required_approvals,
        break_glass: r.break_glass,
        break_glass_justification: r.break_glass_justification,
        proposed_by: r.proposed_by,
        revised_by: r.revised_by,
        create_time: Some(timestamp(r.created_at)),
        update_time: Some(timestamp(r.updated_at)),
        expire_time: opt_timestamp(r.expires_at),
        dispatch_time: opt_timestamp(r.dispatched_at),
        complete_time: opt_timestamp(r.completed_at),
        last_error: r.last_error,
        execution_id: r.execution_id.map(|e| e.to_string()).unwrap_or_default(),
        attempts: r.attempts,
    }
}

fn run_to_proto(run: VerificationRun) -> pb::VerificationRun {
    let probes = run
        .probes
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|p| {
                    let ms = p["duration_ms"].as_i64().unwrap_or(0).max(0);
                    pb::ProbeResult {
                        name: p["name"].as_str().unwrap_or_default().into(),
                        success: p["success"].as_bool().unwrap_or(false),
                        duration: Some(prost_types::Duration {
                            seconds: ms / 1000,
                            nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
                        }),
                        message: p["message"].as_str().unwrap_or_default().into(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    pb::VerificationRun {
        run_id: run.id.to_string(),
        remediation_id: run.remediation_id.to_string(),
        execution_id: run.execution_id.to_string(),
        remediation_version: run.remediation_version,
        result: match run.result {
            zen_store::VerificationOutcome::Success => pb::VerificationResult::Success,
            zen_store::VerificationOutcome::Failure => pb::VerificationResult::Failure,
        } as i32,
        probes,
        start_time: opt_timestamp(run.started_at),
        end_time: opt_timestamp(run.ended_at),
    }
}

fn dead_letter_to_proto(d: DeadLetter) -> pb::DeadLetter {
    pb::DeadLetter {
        dead_letter_id: d.id.to_string(),
        tenant_id: d.tenant_id.to_string(),
        remediation_id: d.remediation_id.to_string(),
        cluster_id: d.cluster_id.to_string(),
        execution_id: d.execution_id.to_string(),
        attempts: d.attempts,
        last_error: d.last_error,
        create_time: Some(timestamp(d.created_at)),
        replay_time: opt_timestamp(d.replayed_at),
        replayed_by: d.replayed_by.unwrap_or_default(),
    }
}

fn policy_to_proto(p: ApprovalPolicy) -> pb::ApprovalPolicy {
    pb::ApprovalPolicy {
        tenant_id: p.tenant_id.to_string(),
        required_approvals: Some(pb::ApprovalRequirements {
            low: p.required_low,
            medium: p.required_medium,
            high: p.required_high,
            critical: p.required_critical,
        }),
        min_approver_role: role_to_proto(p.min_approver_role) as i32,
        allow_self_approval: p.allow_self_approval,
        approval_windows: p
            .approval_windows
            .into_iter()
            .map(|w| pb::ApprovalWindow {
                days: w.days.into_iter().map(i32::from).collect(),
                start_hour: i32::from(w.start_hour),
                end_hour: i32::from(w.end_hour),
                time_zone: w.time_zone,
            })
            .collect(),
        pending_expiry: Some(prost_types::Duration {
            seconds: p.pending_expiry_seconds,
            nanos: 0,
        }),
        auto_rollback_on_failure: p.auto_rollback_on_failure,
        max_dispatch_attempts: p.max_dispatch_attempts,
        update_time: opt_timestamp(p.updated_at),
        updated_by: p.updated_by,
        version: p.version,
    }
}

// ----------------------------------------------------------------- validation

/// An action as the JSON the store keeps. Its form (a server_side_apply naming its target, a
/// patch that agrees with it) is the contract's rules.
fn action_json(field: &str, action: Option<&pb::RemediationAction>) -> Result<Value, Status> {
    let action = action.ok_or_else(|| unchecked(field))?;
    storable_json(field, message_to_json(ACTION, action))
}

/// The probes as the JSON the store keeps; none means the contract's default (the target is
/// ready). Names (required, unique) and checks are the contract's rules.
fn probes_json(probes: &[pb::VerificationProbe]) -> Result<Value, Status> {
    if probes.is_empty() {
        return Ok(json!([{ "name": "ready", "resourceReady": {} }]));
    }
    let json = probes_to_json(probes);
    if json
        .as_array()
        .is_some_and(|a| a.iter().any(Value::is_null))
    {
        return Err(invalid(&[(
            "probes",
            "cannot be represented as JSON (e.g. NaN)",
        )]));
    }
    storable_json("probes", json)
}

/// JSON the store keeps: representable (no NaN), and without `\u0000` (which jsonb refuses).
fn storable_json(field: &str, value: Value) -> Result<Value, Status> {
    if value.is_null() {
        return Err(invalid(&[(
            field,
            "cannot be represented as JSON (e.g. NaN)",
        )]));
    }
    if value.to_string().contains("\\u0000") {
        return Err(invalid(&[(field, "must not contain NUL characters")]));
    }
    Ok(value)
}

/// ABORTED VERSION_MISMATCH unless the caller states the current version (the contract
/// requires a positive one: what is approved is exactly what was read).
fn check_version(r: &Remediation, version: i64) -> Result<(), Status> {
    if version != r.version {
        return Err(store_status(
            StoreError::VersionMismatch {
                what: "remediation",
                current: r.version,
            },
            "",
        ));
    }
    Ok(())
}

fn reason_status(reason: &str, code: Code, message: String) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(
            reason,
            ERROR_DOMAIN,
            std::collections::HashMap::<String, String>::new(),
        ),
    )
}

fn refusal_status(refusal: Refusal) -> Status {
    match refusal {
        Refusal::RoleTooLow { required } => Status::with_error_details(
            Code::PermissionDenied,
            format!("approving needs at least the {required} role"),
            ErrorDetails::with_error_info(
                "ROLE_TOO_LOW",
                ERROR_DOMAIN,
                std::collections::HashMap::from([(
                    "required_role".to_owned(),
                    required.to_string(),
                )]),
            ),
        ),
        Refusal::SelfApproval => denied(
            "SELF_APPROVAL_FORBIDDEN",
            "the proposer of a remediation may not approve it",
        ),
        Refusal::OutsideWindow => reason_status(
            "OUTSIDE_APPROVAL_WINDOW",
            Code::FailedPrecondition,
            "approvals are only accepted inside the tenant's approval windows".into(),
        ),
        Refusal::AlreadyApproved => reason_status(
            "ALREADY_APPROVED",
            Code::AlreadyExists,
            "you already approved this version of the remediation".into(),
        ),
    }
}

/// Who acts, as an approver id and as the `proposed_by` text: people by user id; operators
/// (certificates, no user) by a stable id derived from their identity; services by name.
fn actor_identity(caller: &Caller) -> (Uuid, String) {
    match caller {
        Caller::User { user_id, .. } => (*user_id, user_id.to_string()),
        other => {
            let (_, uri) = other.actor();
            let digest = <sha2::Sha256 as sha2::Digest>::digest(uri.as_bytes());
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
            let label = match other {
                Caller::Service { name } => format!("service:{name}"),
                Caller::Operator { name } => format!("operator:{name}"),
                _ => id.to_string(),
            };
            (id, label)
        }
    }
}

/// The caller's tenant role: operators (platform admins) count as owners.
fn caller_role(call: &Call) -> Role {
    match (&call.caller, call.role) {
        (_, Some(role)) => role,
        (Caller::Operator { .. }, None) => Role::Owner,
        (
            Caller::User {
                platform_admin: true,
                ..
            },
            None,
        ) => Role::Owner,
        _ => Role::Viewer,
    }
}

// ----------------------------------------------------------------- the service

pub struct RemediationApi {
    store: Arc<Store>,
    dispatcher: Arc<Dispatcher>,
    /// Where committed changes wake the tenant's `WatchEvents` streams; without it they
    /// notice within their poll interval.
    cache: Option<Arc<dyn Cache>>,
}

impl RemediationApi {
    pub fn new(store: Arc<Store>, dispatcher: Arc<Dispatcher>) -> Self {
        Self {
            store,
            dispatcher,
            cache: None,
        }
    }

    /// Publishes every committed remediation change on the tenant's events channel, which
    /// `WatchEvents` streams listen on (the change itself is in the tenant's change sequence).
    pub fn with_cache(mut self, cache: Arc<dyn Cache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Wakes the tenant's watchers after a commit that changed a remediation. Best effort:
    /// a lost message only delays them to their next poll.
    async fn changed(&self, tenant_id: Uuid) {
        if let Some(cache) = &self.cache {
            if let Err(error) = cache.publish(&events_channel(tenant_id), b"").await {
                tracing::warn!(%error, "could not wake the tenant's event watchers");
            }
        }
    }

    /// Locks the remediation, checks the version, applies `change` (which may queue an
    /// execution) and saves, with the audit record, in one transaction; wakes the dispatchers
    /// when work was queued.
    #[allow(clippy::too_many_arguments)]
    async fn change<F>(
        &self,
        call: &Call,
        tenant_id: Uuid,
        remediation_id: &str,
        version: i64,
        action: &'static str,
        change: F,
    ) -> Result<pb::Remediation, Status>
    where
        F: for<'t> FnOnce(
                &'t mut dyn Tx,
                &'t mut Remediation,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<(Value, bool), Status>> + Send + 't>,
            > + Send
            + 'static,
    {
        let id = id("remediation_id", remediation_id)?;
        let scope = call.scope(Some(tenant_id));
        let (remediation, queued) = call
            .mutate(&self.store, &scope, action, "remediation", move |tx| {
                Box::pin(async move {
                    let mut r = tx
                        .remediations()
                        .lock(id)
                        .await
                        .map_err(|e| store_status(e, ""))?;
                    check_version(&r, version)?;
                    let expected = r.version;
                    let (mut details, queued) = change(tx, &mut r).await?;
                    let saved = tx
                        .remediations()
                        .save(&r, expected)
                        .await
                        .map_err(|e| store_status(e, ""))?;
                    if let Value::Object(map) = &mut details {
                        map.insert("status".into(), json!(saved.status.as_str()));
                        map.insert("version".into(), json!(saved.version));
                    }
                    Ok(Mutation::new((saved, queued), id, details))
                })
            })
            .await?;
        self.changed(tenant_id).await;
        if queued {
            self.dispatcher.notify().await;
        }
        Ok(remediation_to_proto(remediation))
    }
}

fn transition_status(r: &mut Remediation, event: Event) -> Result<(), Status> {
    transition(r, event, Utc::now()).map_err(|e| store_status(e, ""))
}

async fn enqueue(
    tx: &mut dyn Tx,
    r: &mut Remediation,
    operation: DispatchOperation,
    policy: &ApprovalPolicy,
) -> Result<(), Status> {
    let dispatch = new_execution(r, operation, policy, Utc::now());
    tx.remediations()
        .enqueue(&dispatch)
        .await
        .map_err(|e| store_status(e, ""))
}

#[tonic::async_trait]
impl remediation_service_server::RemediationService for RemediationApi {
    async fn propose_remediation(
        &self,
        request: Request<pb::ProposeRemediationRequest>,
    ) -> Result<Response<pb::ProposeRemediationResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let r = req.remediation.ok_or_else(|| unchecked("remediation"))?;
        let action = action_json("remediation.action", r.action.as_ref())?;
        let rollback_action = match &r.rollback_action {
            Some(a) => Some(action_json("remediation.rollback_action", Some(a))?),
            None => None,
        };
        let probes = probes_json(&r.probes)?;
        let risk = risk_field("remediation.risk", r.risk, true)?.expect("required");
        let event_id = optional_id("remediation.event_id", &r.event_id)?;
        let cluster_id = optional_id("remediation.cluster_id", &r.cluster_id)?;
        // One of the two is named: the contract's remediation.target rule.
        let (_, proposed_by) = actor_identity(&call.caller);
        let scope = call.scope(Some(tenant_id));
        let (title, description) = (r.title, r.description);
        let created = call
            .mutate(
                &self.store,
                &scope,
                "remediation.propose",
                "remediation",
                move |tx| {
                    Box::pin(async move {
                        let err = |e| store_status(e, "remediation");
                        let tenant = tx.tenants().get(tenant_id).await.map_err(err)?;
                        if tenant.status != TenantStatus::Active {
                            return Err(store_status(
                                StoreError::Precondition {
                                    code: zen_store::precondition::TENANT_SUSPENDED,
                                    reason: "the tenant is not active".into(),
                                },
                                "",
                            ));
                        }
                        let mut cluster_id = cluster_id;
                        if let Some(event_id) = event_id {
                            let event = tx.events().get(event_id).await.map_err(err)?;
                            match (cluster_id, event.cluster_id) {
                                (None, Some(c)) => cluster_id = Some(c),
                                (None, None) => {
                                    return Err(invalid(&[(
                                        "remediation.cluster_id",
                                        "is required: the event came from no cluster",
                                    )]))
                                }
                                _ => {}
                            }
                        }
                        let cluster_id = cluster_id.expect("set above");
                        let cluster = tx.clusters().get(cluster_id).await.map_err(err)?;
                        if cluster.deleted_at.is_some() {
                            return Err(store_status(
                                StoreError::Precondition {
                                    code: zen_store::precondition::INVALID_STATE,
                                    reason: "the cluster is being deleted".into(),
                                },
                                "",
                            ));
                        }
                        let policy = tx.remediations().policy().await.map_err(err)?;
                        let required = policy.required_for(risk);
                        let now = Utc::now();
                        let status = if required == 0 {
                            RemediationStatus::Approved
                        } else {
                            RemediationStatus::Proposed
                        };
                        let mut created = tx
                            .remediations()
                            .create(NewRemediation {
                                cluster_id,
                                event_id,
                                title,
                                description,
                                action,
                                rollback_action,
                                probes,
                                risk,
                                status,
                                required_approvals: required,
                                proposed_by,
                                expires_at: (required > 0).then(|| {
                                    now + chrono::Duration::seconds(policy.pending_expiry_seconds)
                                }),
                            })
                            .await
                            .map_err(err)?;
                        metrics::counter!("zen_remediations_total", "status" => status.as_str())
                            .increment(1);
                        let mut queued = false;
                        if status == RemediationStatus::Approved {
                            // No approval needed: queue it with the proposal.
                            let expected = created.version;
                            enqueue(tx, &mut created, DispatchOperation::Apply, &policy).await?;
                            created = tx
                                .remediations()
                                .save(&created, expected)
                                .await
                                .map_err(err)?;
                            queued = true;
                        }
                        let details = json!({
                            "cluster_id": created.cluster_id,
                            "event_id": created.event_id,
                            "risk": risk.as_str(),
                            "required_approvals": required,
                            "status": created.status.as_str(),
                        });
                        let id = created.id;
                        Ok(Mutation::new((created, queued), id, details))
                    })
                },
            )
            .await?;
        self.changed(tenant_id).await;
        if created.1 {
            self.dispatcher.notify().await;
        }
        Ok(Response::new(pb::ProposeRemediationResponse {
            remediation: Some(remediation_to_proto(created.0)),
        }))
    }

    async fn get_remediation(
        &self,
        request: Request<pb::GetRemediationRequest>,
    ) -> Result<Response<pb::GetRemediationResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let id = id("remediation_id", &req.remediation_id)?;
        let mut tx = call.read(&self.store, Some(tenant_id)).await?;
        let r = tx
            .remediations()
            .get(id)
            .await
            .map_err(|e| store_status(e, ""))?;
        Ok(Response::new(pb::GetRemediationResponse {
            remediation: Some(remediation_to_proto(r)),
        }))
    }

    async fn list_remediations(
        &self,
        request: Request<pb::ListRemediationsRequest>,
    ) -> Result<Response<pb::ListRemediationsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let filter = RemediationFilter {
            status: status_from_proto(req.status)?,
            cluster_id: optional_id("cluster_id", &req.cluster_id)?,
            event_id: optional_id("event_id", &req.event_id)?,
        };
        let page = page_request(req.page_size, &req.page_token);
        let page = call
            .list(&self.store, Some(tenant_id), move |tx| {
                let (filter, page) = (filter.clone(), page.clone());
                Box::pin(async move { tx.remediations().list(&filter, &page).await })
            })
            .await?;
        Ok(Response::new(pb::ListRemediationsResponse {
            remediations: page.items.into_iter().map(remediation_to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn revise_remediation(
        &self,
        request: Request<pb::ReviseRemediationRequest>,
    ) -> Result<Response<pb::ReviseRemediationResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let action = action_json("action", req.action.as_ref())?;
        let rollback_action = match &req.rollback_action {
            Some(a) => Some(action_json("rollback_action", Some(a))?),
            None => None,
        };
        let probes = probes_json(&req.probes)?;
        let risk = risk_field("risk", req.risk, false)?;
        let comment = req.comment;
        let (_, reviser) = actor_identity(&call.caller);
        let remediation = self
            .change(
                &call,
                tenant_id,
                &req.remediation_id,
                req.version,
                "remediation.revise",
                move |tx, r| {
                    Box::pin(async move {
                        let policy = tx
                            .remediations()
                            .policy()
                            .await
                            .map_err(|e| store_status(e, ""))?;
                        r.action = action;
                        r.rollback_action = rollback_action;
                        r.probes = probes;
                        if let Some(risk) = risk {
                            r.risk = risk;
                        }
                        // A new revision: earlier approvals no longer count, and its author
                        // may not approve it (see policy::check_approval).
                        r.revision += 1;
                        r.revised_by = reviser;
                        r.approvals.clear();
                        r.break_glass = false;
                        r.break_glass_justification.clear();
                        r.required_approvals = policy.required_for(r.risk);
                        let queued = r.required_approvals == 0;
                        if queued {
                            transition_status(r, Event::ReviseApproved)?;
                            enqueue(tx, r, DispatchOperation::Apply, &policy).await?;
                        } else {
                            transition_status(r, Event::Revise)?;
                            // Any queued execution of the old revision is superseded.
                            r.execution_id = None;
                            r.expires_at = Some(
                                Utc::now()
                                    + chrono::Duration::seconds(policy.pending_expiry_seconds),
                            );
                        }
                        r.status_reason = comment.clone();
                        Ok((
                            json!({ "comment": comment, "revision": r.revision, "risk": r.risk.as_str() }),
                            queued,
                        ))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::ReviseRemediationResponse {
            remediation: Some(remediation),
        }))
    }

    async fn approve_remediation(
        &self,
        request: Request<pb::ApproveRemediationRequest>,
    ) -> Result<Response<pb::ApproveRemediationResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let (approver_id, approver_key) = actor_identity(&call.caller);
        let role = caller_role(&call);
        let comment = req.comment;
        let remediation = self
            .change(
                &call,
                tenant_id,
                &req.remediation_id,
                req.version,
                "remediation.approve",
                move |tx, r| {
                    Box::pin(async move {
                        let policy = tx
                            .remediations()
                            .policy()
                            .await
                            .map_err(|e| store_status(e, ""))?;
                        // The state first: approving a finished remediation is INVALID_STATE
                        // whoever asks.
                        crate::remediation::state::next(r.status, Event::Approve).map_err(
                            |reason| {
                                store_status(
                                    StoreError::Precondition {
                                        code: zen_store::precondition::INVALID_STATE,
                                        reason: reason.into(),
                                    },
                                    "",
                                )
                            },
                        )?;
                        let now = Utc::now();
                        policy::check_approval(&policy, r, approver_id, &approver_key, role, now)
                            .map_err(refusal_status)?;
                        let approval = zen_store::remediation::Approval {
                            approver_id,
                            approver_role: role,
                            comment: comment.clone(),
                            remediation_version: r.version,
                            revision: r.revision,
                            created_at: now,
                        };
                        tx.remediations()
                            .add_approval(r.id, &approval)
                            .await
                            .map_err(|e| match e {
                                StoreError::AlreadyExists { .. } => {
                                    refusal_status(Refusal::AlreadyApproved)
                                }
                                other => store_status(other, ""),
                            })?;
                        r.approvals.push(approval);
                        let count = i32::try_from(r.approvals.len()).unwrap_or(i32::MAX);
                        let queued = count >= r.required_approvals;
                        if queued {
                            transition_status(r, Event::ApproveFinal)?;
                            enqueue(tx, r, DispatchOperation::Apply, &policy).await?;
                        } else {
                            transition_status(r, Event::Approve)?;
                        }
                        Ok((
                            json!({
                                "comment": comment,
                                "approver_role": role.as_str(),
                                "approvals": count,
                                "required_approvals": r.required_approvals,
                                "revision": r.revision,
                            }),
                            queued,
                        ))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::ApproveRemediationResponse {
            remediation: Some(remediation),
        }))
    }

    async fn reject_remediation(
        &self,
        request: Request<pb::RejectRemediationRequest>,
    ) -> Result<Response<pb::RejectRemediationResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let reason = req.reason;
        let remediation = self
            .change(
                &call,
                tenant_id,
                &req.remediation_id,
                req.version,
                "remediation.reject",
                move |_tx, r| {
                    Box::pin(async move {
                        transition_status(r, Event::Reject)?;
                        r.status_reason = reason.clone();
                        Ok((json!({ "reason": reason }), false))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::RejectRemediationResponse {
            remediation: Some(remediation),
        }))
    }

    async fn cancel_remediation(
        &self,
        request: Request<pb::CancelRemediationRequest>,
    ) -> Result<Response<pb::CancelRemediationResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let (_, me) = actor_identity(&call.caller);
        let role = caller_role(&call);
        let reason = req.reason;
        let remediation = self
            .change(
                &call,
                tenant_id,
                &req.remediation_id,
                req.version,
                "remediation.cancel",
                move |_tx, r| {
                    Box::pin(async move {
                        if r.proposed_by != me && rank(role) < rank(Role::Admin) {
                            return Err(denied(
                                "ROLE_TOO_LOW",
                                "only the proposer or an admin may cancel a remediation",
                            ));
                        }
                        transition_status(r, Event::Cancel)?;
                        // A queued execution is superseded and never goes out.
                        r.execution_id = None;
                        r.status_reason = reason.clone();
                        Ok((json!({ "reason": reason }), false))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::CancelRemediationResponse {
            remediation: Some(remediation),
        }))
    }

    async fn execute_break_glass(
        &self,
        request: Request<pb::ExecuteBreakGlassRequest>,
    ) -> Result<Response<pb::ExecuteBreakGlassResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        if caller_role(&call) != Role::Owner {
            return Err(denied("ROLE_TOO_LOW", "break-glass needs the owner role"));
        }
        let justification = req.justification;
        let remediation = self
            .change(
                &call,
                tenant_id,
                &req.remediation_id,
                req.version,
                "remediation.break_glass",
                move |tx, r| {
                    Box::pin(async move {
                        let policy = tx
                            .remediations()
                            .policy()
                            .await
                            .map_err(|e| store_status(e, ""))?;
                        transition_status(r, Event::BreakGlass)?;
                        r.break_glass = true;
                        r.break_glass_justification = justification.clone();
                        enqueue(tx, r, DispatchOperation::Apply, &policy).await?;
                        Ok((
                            json!({
                                "justification": justification,
                                // Approvals were bypassed: flagged for review after the fact.
                                "post_approval_review": true,
                            }),
                            true,
                        ))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::ExecuteBreakGlassResponse {
            remediation: Some(remediation),
        }))
    }

    async fn request_rollback(
        &self,
        request: Request<pb::RequestRollbackRequest>,
    ) -> Result<Response<pb::RequestRollbackResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let reason = req.reason;
        let remediation = self
            .change(
                &call,
                tenant_id,
                &req.remediation_id,
                req.version,
                "remediation.rollback",
                move |tx, r| {
                    Box::pin(async move {
                        let precondition = |reason: &str| {
                            store_status(
                                StoreError::Precondition {
                                    code: zen_store::precondition::INVALID_STATE,
                                    reason: reason.to_owned().into(),
                                },
                                "",
                            )
                        };
                        if !r.executed {
                            return Err(precondition(
                                "the remediation never ran: nothing to roll back",
                            ));
                        }
                        if r.rollback_action.is_none() {
                            return Err(precondition("no rollback action is known"));
                        }
                        let policy = tx
                            .remediations()
                            .policy()
                            .await
                            .map_err(|e| store_status(e, ""))?;
                        transition_status(r, Event::RequestRollback)?;
                        r.status_reason = reason.clone();
                        enqueue(tx, r, DispatchOperation::Rollback, &policy).await?;
                        Ok((json!({ "reason": reason }), true))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::RequestRollbackResponse {
            remediation: Some(remediation),
        }))
    }

    async fn list_verification_runs(
        &self,
        request: Request<pb::ListVerificationRunsRequest>,
    ) -> Result<Response<pb::ListVerificationRunsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let id = id("remediation_id", &req.remediation_id)?;
        let page = page_request(req.page_size, &req.page_token);
        // The primary, not the replica: the remediation is looked up first (NOT_FOUND for an
        // unknown one), and one just proposed must be found.
        let mut tx = call.read(&self.store, Some(tenant_id)).await?;
        // NOT_FOUND for an unknown remediation rather than an empty list.
        tx.remediations()
            .get(id)
            .await
            .map_err(|e| store_status(e, ""))?;
        let page = tx
            .remediations()
            .verification_runs(id, &page)
            .await
            .map_err(|e| store_status(e, ""))?;
        Ok(Response::new(pb::ListVerificationRunsResponse {
            verification_runs: page.items.into_iter().map(run_to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get_approval_policy(
        &self,
        request: Request<pb::GetApprovalPolicyRequest>,
    ) -> Result<Response<pb::GetApprovalPolicyResponse>, Status> {
        let call = Call::of(&request)?;
        let tenant_id = id("tenant_id", &request.get_ref().tenant_id)?;
        let mut tx = call.read(&self.store, Some(tenant_id)).await?;
        // Unknown tenant: NOT_FOUND, not somebody's defaults.
        tx.tenants()
            .get(tenant_id)
            .await
            .map_err(|e| store_status(e, ""))?;
        let policy = tx
            .remediations()
            .policy()
            .await
            .map_err(|e| store_status(e, ""))?;
        Ok(Response::new(pb::GetApprovalPolicyResponse {
            approval_policy: Some(policy_to_proto(policy)),
        }))
    }

    async fn update_approval_policy(
        &self,
        request: Request<pb::UpdateApprovalPolicyRequest>,
    ) -> Result<Response<pb::UpdateApprovalPolicyResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let new = req
            .approval_policy
            .ok_or_else(|| unchecked("approval_policy"))?;
        let requirements = new.required_approvals.unwrap_or_default();
        let paths: Vec<String> = match &req.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
            _ => {
                let mut p = Vec::new();
                let mut push = |path: &str, set: bool| {
                    if set {
                        p.push(path.to_owned());
                    }
                };
                push("required_approvals.low", requirements.low != 0);
                push("required_approvals.medium", requirements.medium != 0);
                push("required_approvals.high", requirements.high != 0);
                push("required_approvals.critical", requirements.critical != 0);
                push("min_approver_role", new.min_approver_role != 0);
                push("allow_self_approval", new.allow_self_approval);
                push("approval_windows", !new.approval_windows.is_empty());
                push("pending_expiry", new.pending_expiry.is_some());
                push("auto_rollback_on_failure", new.auto_rollback_on_failure);
                push("max_dispatch_attempts", new.max_dispatch_attempts != 0);
                p
            }
        };
        let mut windows = Vec::new();
        for (i, w) in new.approval_windows.iter().enumerate() {
            let window = ApprovalWindow {
                days: w
                    .days
                    .iter()
                    .map(|d| u8::try_from(*d).unwrap_or(0))
                    .collect(),
                start_hour: u8::try_from(w.start_hour).unwrap_or(255),
                end_hour: u8::try_from(w.end_hour).unwrap_or(255),
                time_zone: if w.time_zone.is_empty() {
                    "UTC".into()
                } else {
                    w.time_zone.clone()
                },
            };
            policy::validate_window(&window).map_err(|(field, reason)| {
                invalid(&[(
                    &format!("approval_policy.approval_windows[{i}].{field}"),
                    &reason,
                )])
            })?;
            windows.push(window);
        }
        let (_, updated_by) = actor_identity(&call.caller);
        let scope = call.scope(Some(tenant_id));
        let details_paths = paths.clone();
        let updated = call
            .mutate(
                &self.store,
                &scope,
                "approval_policy.update",
                "approval_policy",
                move |tx| {
                    Box::pin(async move {
                        tx.tenants()
                            .get(tenant_id)
                            .await
                            .map_err(|e| store_status(e, ""))?;
                        let mut p = tx
                            .remediations()
                            .policy()
                            .await
                            .map_err(|e| store_status(e, ""))?;
                        for path in &paths {
                            match path.as_str() {
                                "required_approvals" => {
                                    p.required_low = requirements.low;
                                    p.required_medium = requirements.medium;
                                    p.required_high = requirements.high;
                                    p.required_critical = requirements.critical;
                                }
                                "required_approvals.low" => p.required_low = requirements.low,
                                "required_approvals.medium" => {
                                    p.required_medium = requirements.medium
                                }
                                "required_approvals.high" => p.required_high = requirements.high,
                                "required_approvals.critical" => {
                                    p.required_critical = requirements.critical
                                }
                                "min_approver_role" => {
                                    // Named in the mask, the unset value is a missing one.
                                    if new.min_approver_role == 0 {
                                        return Err(invalid(&[(
                                            "approval_policy.min_approver_role",
                                            "is required when update_mask names it",
                                        )]));
                                    }
                                    let role = role_field(
                                        "approval_policy.min_approver_role",
                                        new.min_approver_role,
                                    )?;
                                    // VIEWER is refused by the contract (enum.not_in).
                                    p.min_approver_role = role;
                                }
                                "allow_self_approval" => {
                                    p.allow_self_approval = new.allow_self_approval
                                }
                                "approval_windows" => p.approval_windows = windows.clone(),
                                "pending_expiry" => {
                                    let expiry = duration_field(
                                        "approval_policy.pending_expiry",
                                        new.pending_expiry.as_ref(),
                                        chrono::Duration::hours(72),
                                        chrono::Duration::days(30),
                                    )?;
                                    p.pending_expiry_seconds = expiry.num_seconds().max(1);
                                }
                                "auto_rollback_on_failure" => {
                                    p.auto_rollback_on_failure = new.auto_rollback_on_failure
                                }
                                "max_dispatch_attempts" => {
                                    // 1 to 20 by the contract; named in the mask, the unset
                                    // value is a missing one.
                                    if new.max_dispatch_attempts == 0 {
                                        return Err(invalid(&[(
                                            "approval_policy.max_dispatch_attempts",
                                            "is required when update_mask names it",
                                        )]));
                                    }
                                    p.max_dispatch_attempts = new.max_dispatch_attempts;
                                }
                                other => {
                                    return Err(invalid(&[(
                                        "update_mask",
                                        &format!("{other:?} is not an updatable field"),
                                    )]))
                                }
                            }
                        }
                        p.updated_by = updated_by;
                        let saved = tx
                            .remediations()
                            // AIP-154: 0 means "whatever is current".
                            .save_policy(
                                &p,
                                if new.version > 0 {
                                    new.version
                                } else {
                                    p.version
                                },
                            )
                            .await
                            .map_err(|e| store_status(e, "approval_policy"))?;
                        let details = json!({ "fields": details_paths, "version": saved.version });
                        Ok(Mutation::new(saved, tenant_id, details))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::UpdateApprovalPolicyResponse {
            approval_policy: Some(policy_to_proto(updated)),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let filter = DeadLetterFilter {
            cluster_id: optional_id("cluster_id", &req.cluster_id)?,
            remediation_id: optional_id("remediation_id", &req.remediation_id)?,
            show_replayed: req.show_replayed,
        };
        let page = page_request(req.page_size, &req.page_token);
        let page = call
            .list(&self.store, Some(tenant_id), move |tx| {
                let (filter, page) = (filter.clone(), page.clone());
                Box::pin(async move { tx.remediations().list_dead_letters(&filter, &page).await })
            })
            .await?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: page.items.into_iter().map(dead_letter_to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn replay_dead_letter(
        &self,
        request: Request<pb::ReplayDeadLetterRequest>,
    ) -> Result<Response<pb::ReplayDeadLetterResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let id = id("dead_letter_id", &req.dead_letter_id)?;
        let (_, by) = actor_identity(&call.caller);
        let scope = call.scope(Some(tenant_id));
        let (letter, remediation) = call
            .mutate(
                &self.store,
                &scope,
                "dead_letter.replay",
                "dead_letter",
                move |tx| {
                    Box::pin(async move {
                        let (letter, remediation, details) =
                            crate::remediation::replay(tx, id, &by)
                                .await
                                .map_err(|e| store_status(e, ""))?;
                        Ok(Mutation::new((letter, remediation), id, details))
                    })
                },
            )
            .await?;
        self.changed(tenant_id).await;
        self.dispatcher.notify().await;
        Ok(Response::new(pb::ReplayDeadLetterResponse {
            dead_letter: Some(dead_letter_to_proto(letter)),
            remediation: Some(remediation_to_proto(remediation)),
        }))
    }
}

// ----------------------------------------------------------------- the agent stream's messages

/// A dispatcher command as the `RemediationCommand` sent down the agent's stream.
pub fn command_to_proto(
    command: crate::remediation::Command,
) -> crate::proto::zen::ingest::v1::RemediationCommand {
    use crate::proto::zen::ingest::v1 as ingest;
    ingest::RemediationCommand {
        remediation_id: command.remediation_id.to_string(),
        execution_id: command.execution_id.to_string(),
        version: command.version,
        operation: match command.operation {
            DispatchOperation::Apply => ingest::CommandOperation::Apply,
            DispatchOperation::Rollback => ingest::CommandOperation::Rollback,
        } as i32,
        action: action_from_json(&command.action),
        probes: probes_from_json(&command.probes),
        attempt: command.attempt,
        deadline: Some(timestamp(command.deadline)),
        trace_context: command.trace_context,
    }
}

/// An agent's `RemediationReport` for the dispatcher; `Err` says what is malformed.
pub fn report_from_proto(
    report: crate::proto::zen::ingest::v1::RemediationReport,
) -> Result<crate::remediation::Report, String> {
    use crate::proto::zen::ingest::v1 as ingest;
    use crate::remediation::{Phase, ProbeOutcome};
    // The report keeps its contract's rules (ids are UUIDs, a known phase), or is refused.
    if let Some(broken) =
        crate::grpc::validate::broken_rules("zen.ingest.v1.RemediationReport", &report)
    {
        return Err(broken);
    }
    let id = |field: &str, value: &str| {
        Uuid::parse_str(value).map_err(|_| format!("{field}: unchecked"))
    };
    let phase = match ingest::ExecutionPhase::try_from(report.phase) {
        Ok(ingest::ExecutionPhase::Received) => Phase::Received,
        Ok(ingest::ExecutionPhase::Executing) => Phase::Executing,
        Ok(ingest::ExecutionPhase::Verifying) => Phase::Verifying,
        Ok(ingest::ExecutionPhase::Succeeded) => Phase::Succeeded,
        Ok(ingest::ExecutionPhase::Failed) => Phase::Failed,
        _ => return Err("phase: unchecked".into()),
    };
    let time = |t: Option<prost_types::Timestamp>| {
        t.and_then(|t| {
            chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        })
    };
    let verification = report.verification.map(|v| {
        let probes = v
            .probes
            .into_iter()
            .map(|p| ProbeOutcome {
                name: p.name,
                success: p.success,
                duration_ms: p
                    .duration
                    .map(|d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
                    .unwrap_or(0),
                message: p.message,
            })
            .collect();
        (probes, time(v.start_time), time(v.end_time))
    });
    Ok(crate::remediation::Report {
        remediation_id: id("remediation_id", &report.remediation_id)?,
        execution_id: id("execution_id", &report.execution_id)?,
        phase,
        error_message: report.error_message.chars().take(2000).collect(),
        verification,
        rollback_action: report
            .rollback_action
            .as_ref()
            .map(|a| message_to_json(ACTION, a)),
        trace_context: report.trace_context,
    })
}
