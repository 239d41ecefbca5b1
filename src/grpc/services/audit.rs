//! `zen.audit.v1.AuditService`: reading and verifying a tenant's hash-chained audit log.
//! The platform-level chain (actions outside any tenant) is the nil tenant id, readable by
//! platform admins.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use zen_store::{AuditFilter, AuditOutcome, AuditRecord, Store};

use super::support::{json_to_struct, page_request, store_status, time_field, timestamp, Call};
use crate::grpc::validate::{id, unchecked};
use crate::proto::zen::audit::v1::{self as pb, audit_service_server::AuditService};

pub struct AuditApi {
    store: Arc<Store>,
}

impl AuditApi {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

fn outcome_to_proto(outcome: AuditOutcome) -> pb::AuditOutcome {
    match outcome {
        AuditOutcome::Success => pb::AuditOutcome::Success,
        AuditOutcome::Denied => pb::AuditOutcome::Denied,
        AuditOutcome::Failure => pb::AuditOutcome::Failure,
    }
}

fn actor_type_to_proto(actor_type: &str) -> pb::ActorType {
    match actor_type {
        "user" => pb::ActorType::User,
        "agent" => pb::ActorType::Agent,
        "service" => pb::ActorType::Service,
        "system" => pb::ActorType::System,
        "webhook_source" => pb::ActorType::WebhookSource,
        _ => pb::ActorType::Unspecified,
    }
}

fn record_to_proto(record: AuditRecord) -> pb::AuditRecord {
    let entry = record.entry;
    pb::AuditRecord {
        sequence: record.seq,
        record_id: record.id.to_string(),
        tenant_id: record.tenant_id.to_string(),
        actor: Some(pb::Actor {
            r#type: actor_type_to_proto(&entry.actor_type) as i32,
            id: entry.actor_id.unwrap_or_default(),
        }),
        action: entry.action,
        resource_type: entry.resource_type,
        resource_id: entry.resource_id.unwrap_or_default(),
        outcome: outcome_to_proto(entry.outcome) as i32,
        request_id: entry.request_id.unwrap_or_default(),
        client_address: entry.client_address.unwrap_or_default(),
        user_agent: entry.user_agent.unwrap_or_default(),
        create_time: Some(timestamp(record.created_at)),
        details: json_to_struct(entry.details),
        hash: record.hash,
        previous_hash: record.prev_hash,
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_logs(
        &self,
        request: Request<pb::ListAuditLogsRequest>,
    ) -> Result<Response<pb::ListAuditLogsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let page = page_request(req.page_size, &req.page_token);
        let actor_type = match pb::ActorType::try_from(req.actor_type) {
            Ok(pb::ActorType::Unspecified) => None,
            Ok(pb::ActorType::User) => Some("user"),
            Ok(pb::ActorType::Agent) => Some("agent"),
            Ok(pb::ActorType::Service) => Some("service"),
            Ok(pb::ActorType::System) => Some("system"),
            Ok(pb::ActorType::WebhookSource) => Some("webhook_source"),
            Err(_) => return Err(unchecked("actor_type")),
        };
        let outcome = match pb::AuditOutcome::try_from(req.outcome) {
            Ok(pb::AuditOutcome::Unspecified) => None,
            Ok(pb::AuditOutcome::Success) => Some(AuditOutcome::Success),
            Ok(pb::AuditOutcome::Denied) => Some(AuditOutcome::Denied),
            Ok(pb::AuditOutcome::Failure) => Some(AuditOutcome::Failure),
            Err(_) => return Err(unchecked("outcome")),
        };
        let since = time_field("start_time", req.start_time)?;
        let until = time_field("end_time", req.end_time)?;
        // An empty or inverted interval matches nothing (as the query itself would).
        let nonempty = |s: String| Some(s).filter(|s| !s.is_empty());
        let filter = AuditFilter {
            actor_type: actor_type.map(str::to_owned),
            actor_id: nonempty(req.actor_id),
            action: nonempty(req.action),
            resource_type: nonempty(req.resource_type),
            resource_id: nonempty(req.resource_id),
            request_id: nonempty(req.request_id),
            outcome,
            since,
            until,
        };
        let page = call
            .list(&self.store, Some(tenant_id), move |tx| {
                let (filter, page) = (filter.clone(), page.clone());
                Box::pin(async move { tx.audit().list(&filter, &page).await })
            })
            .await?;
        Ok(Response::new(pb::ListAuditLogsResponse {
            audit_records: page.items.into_iter().map(record_to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    /// Walks the whole chain from its first record (a range narrower than the chain would let
    /// an edit before it go unnoticed), and reports the first broken or missing record.
    async fn verify_chain(
        &self,
        request: Request<pb::VerifyChainRequest>,
    ) -> Result<Response<pb::VerifyChainResponse>, Status> {
        let call = Call::of(&request)?;
        let tenant_id = id("tenant_id", &request.get_ref().tenant_id)?;
        let mut tx = call.read(&self.store, Some(tenant_id)).await?;
        let verification = tx
            .audit()
            .verify_chain(tenant_id)
            .await
            .map_err(|e| store_status(e, ""))?;
        let heads = tx.audit().heads().await.map_err(|e| store_status(e, ""))?;
        let head = heads.into_iter().find(|h| h.tenant_id == tenant_id);
        let (first_broken_sequence, reason) = match &verification.problem {
            Some(problem) => (problem.seq, problem.reason.clone()),
            None => (0, String::new()),
        };
        Ok(Response::new(pb::VerifyChainResponse {
            ok: verification.is_ok(),
            records_checked: i64::try_from(verification.records_checked).unwrap_or(i64::MAX),
            first_broken_sequence,
            reason,
            last_sequence: verification.head_seq,
            last_hash: head.map(|h| h.last_hash).unwrap_or_default(),
        }))
    }
}
