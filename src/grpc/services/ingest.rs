//! `zen.ingest.v1.IngestService`, agent side: enrollment (bootstrap token + CSR -> client
//! certificate), certificate renewal, the `ConnectAgent` stream (batches acked only once
//! committed, bounded in flight), and reading events (list, get, watch).
//!
//! Webhook sources and the legacy HMAC endpoint live in `webhooks.rs`; this service delegates.

use std::pin::Pin;

use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use chrono::Utc;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::Stream;
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;
use zen_cache::Cache;
use zen_security::{CertificateAuthority, PeerIdentity};
use zen_store::{
    AgentReport, AuditOutcome, ConnectionState, Event, EventFilter, EventOutcome, NewEvent, Scope,
    Store,
};

use super::support::{
    invalid, json_to_struct, page_request, store_status, struct_to_json, tenant_of_secret,
    time_field, timestamp, Call,
};
use super::tenancy::BOOTSTRAP_TOKEN_PREFIX;
use super::webhooks::{WebhookSettings, Webhooks};
use crate::authz::Caller;
use crate::grpc::slow_consumer::{bounded, BoundedSender};
use crate::grpc::validate::{id, optional_id};
use crate::limits::{RateLimiter, Subject};
use crate::proto::zen::common::v1 as common;
use crate::proto::zen::ingest::v1::{self as pb, ingest_service_server::IngestService};

/// Tuning of the agent stream.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    /// Batches of one stream being stored at once; reading stops beyond it (backpressure).
    pub max_in_flight_batches: usize,
    pub max_batch_events: usize,
    pub heartbeat_interval: Duration,
    /// Events with the same fingerprint within this window fold into the first.
    pub fold_window: Duration,
    /// Validity of agent certificates.
    pub agent_certificate_validity: Duration,
    /// How often an open stream re-checks that its cluster still exists.
    pub revocation_check_interval: Duration,
    /// Benchmarks only: ack valid events without storing them.
    pub discard: bool,
    /// Limits of `WatchEvents` watchers.
    pub watch: super::watch::WatchLimits,
    /// Ends watches and agent sessions when the replica drains.
    pub drain: crate::drain::Drain,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            max_in_flight_batches: 4,
            max_batch_events: 1000,
            heartbeat_interval: Duration::from_secs(10),
            fold_window: Duration::from_secs(3600),
            agent_certificate_validity: Duration::from_secs(7 * 24 * 3600),
            revocation_check_interval: Duration::from_secs(2),
            discard: false,
            watch: super::watch::WatchLimits::default(),
            drain: crate::drain::Drain::never(),
        }
    }
}

/// Outbound messages queued per stream before the server stops reading (a client that does
/// not read its acks stalls here, not in memory).
const OUTBOUND_QUEUE: usize = 16;
/// Channel on which a committed batch wakes the tenant's watchers.
pub(crate) fn events_channel(tenant_id: Uuid) -> String {
    format!("events:{tenant_id}")
}

pub struct IngestApi {
    store: Arc<Store>,
    cache: Arc<dyn Cache>,
    ca: Option<Arc<CertificateAuthority>>,
    settings: IngestSettings,
    webhooks: Webhooks,
    /// Remediation commands down, reports up; `None`: remediation is off.
    remediation: Option<Arc<crate::remediation::Dispatcher>>,
    /// The `WatchEvents` watchers of this replica and their per-tenant tails.
    watchers: super::watch::WatchHub,
    limiter: Arc<RateLimiter>,
}

impl IngestApi {
    pub fn new(
        store: Arc<Store>,
        cache: Arc<dyn Cache>,
        ca: Option<Arc<CertificateAuthority>>,
        settings: IngestSettings,
        webhooks: WebhookSettings,
        limiter: Arc<RateLimiter>,
        invalidations: &crate::snapshot::Invalidations,
    ) -> Self {
        Self {
            webhooks: Webhooks::new(
                store.clone(),
                cache.clone(),
                webhooks,
                limiter.clone(),
                invalidations,
            ),
            limiter,
            watchers: super::watch::WatchHub::new(
                store.clone(),
                cache.clone(),
                settings.watch.clone(),
                settings.drain.clone(),
            ),
            store,
            cache,
            ca,
            settings,
            remediation: None,
        }
    }

    /// Carries remediation commands and reports on the agent streams through `dispatcher`.
    pub fn with_dispatcher(mut self, dispatcher: Arc<crate::remediation::Dispatcher>) -> Self {
        self.remediation = Some(dispatcher);
        self
    }

    fn ca(&self) -> Result<&CertificateAuthority, Status> {
        self.ca.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "agent enrollment is off: this server has no CA key (ZEN_TLS_CA_KEY)",
            )
        })
    }
}

fn agent_of(call: &Call) -> Result<(Uuid, Uuid), Status> {
    match call.caller {
        Caller::Agent {
            tenant_id,
            cluster_id,
        } => Ok((tenant_id, cluster_id)),
        _ => Err(Status::permission_denied("only cluster agents call this")),
    }
}

fn revoked() -> Status {
    Status::with_error_details(
        Code::PermissionDenied,
        "this agent's cluster was deleted; its identity is revoked",
        ErrorDetails::with_error_info(
            "CALLER_NOT_ALLOWED",
            "zen",
            std::collections::HashMap::new(),
        ),
    )
}

/// Refuses agents of deleted clusters (their certificates stay valid until expiry, so the
/// cluster's state is the revocation list).
async fn check_live(store: &Store, tenant_id: Uuid, cluster_id: Uuid) -> Result<(), Status> {
    let mut tx = store
        .begin_read(&Scope::tenant(tenant_id, None))
        .await
        .map_err(|e| store_status(e, ""))?;
    match tx.clusters().get(cluster_id).await {
        Ok(cluster) if cluster.deleted_at.is_none() => Ok(()),
        Ok(_) | Err(zen_store::StoreError::NotFound { .. }) => Err(revoked()),
        Err(error) => Err(store_status(error, "")),
    }
}

// ----------------------------------------------------------------- conversions

fn source_name(source: pb::EventSource) -> Option<&'static str> {
    Some(match source {
        pb::EventSource::Trivy => "trivy",
        pb::EventSource::Kyverno => "kyverno",
        pb::EventSource::Falco => "falco",
        pb::EventSource::KubeBench => "kube-bench",
        pb::EventSource::Audit => "audit",
        pb::EventSource::Custom => "custom",
        pb::EventSource::Webhook => "webhook",
        pb::EventSource::Unspecified => return None,
    })
}

fn source_from_name(name: &str) -> pb::EventSource {
    match name {
        "trivy" => pb::EventSource::Trivy,
        "kyverno" => pb::EventSource::Kyverno,
        "falco" => pb::EventSource::Falco,
        "kube-bench" => pb::EventSource::KubeBench,
        "audit" => pb::EventSource::Audit,
        "custom" => pb::EventSource::Custom,
        "webhook" => pb::EventSource::Webhook,
        _ => pb::EventSource::Unspecified,
    }
}

fn category_name(category: pb::EventCategory) -> Option<&'static str> {
    Some(match category {
        pb::EventCategory::Security => "security",
        pb::EventCategory::Compliance => "compliance",
        pb::EventCategory::Operations => "operations",
        pb::EventCategory::Performance => "performance",
        pb::EventCategory::Cost => "cost",
        pb::EventCategory::Unspecified => return None,
    })
}

fn category_from_name(name: &str) -> pb::EventCategory {
    match name {
        "security" => pb::EventCategory::Security,
        "compliance" => pb::EventCategory::Compliance,
        "operations" => pb::EventCategory::Operations,
        "performance" => pb::EventCategory::Performance,
        "cost" => pb::EventCategory::Cost,
        _ => pb::EventCategory::Unspecified,
    }
}

/// The default fingerprint of the contracts: SHA-256 over source, type, title and resource.
fn default_fingerprint(source: &str, event: &pb::AgentEvent) -> String {
    let r = event.resource.clone().unwrap_or_default();
    let text = [
        source,
        &event.r#type,
        &event.title,
        &r.api_version,
        &r.kind,
        &r.namespace,
        &r.name,
    ]
    .join("|");
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Checks and normalizes one agent event; `Err` is the rejection reason sent in its ack. Its
/// fields keep the contract's rules (`AgentEvent` in `proto/zen/ingest/v1/event.proto`),
/// checked one event at a time so one bad event does not sink its batch-mates; what is left
/// here needs more than one field's value.
fn normalize(event: pb::AgentEvent) -> Result<NewEvent, String> {
    if let Some(broken) = crate::grpc::validate::broken_rules("zen.ingest.v1.AgentEvent", &event) {
        return Err(broken);
    }
    let source = pb::EventSource::try_from(event.source)
        .ok()
        .and_then(source_name)
        .ok_or("source: refused by the contract")?;
    let category = pb::EventCategory::try_from(event.category)
        .ok()
        .and_then(category_name)
        .unwrap_or("security");
    let severity = event.severity as i16;
    let fingerprint = if event.fingerprint.is_empty() {
        default_fingerprint(source, &event)
    } else {
        event.fingerprint.clone()
    };
    let detected_at = match &event.detect_time {
        None => Utc::now(),
        Some(t) => chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
            .ok_or("detect_time: not a valid time")?,
    };
    let resource = event.resource.clone().unwrap_or_default();
    let details = struct_to_json(event.details);
    if serde_json::to_vec(&details).map(|v| v.len()).unwrap_or(0) > 256 * 1024 {
        return Err("details: at most 256 KiB".into());
    }
    Ok(NewEvent {
        source_event_id: event.agent_event_id,
        source: source.to_owned(),
        source_name: Some(event.source_name).filter(|s| !s.is_empty()),
        category: category.to_owned(),
        severity,
        event_type: event.r#type,
        title: event.title,
        resource: json!({
            "api_version": resource.api_version,
            "kind": resource.kind,
            "namespace": resource.namespace,
            "name": resource.name,
            "uid": resource.uid,
        }),
        details,
        fingerprint,
        detected_at,
    })
}

pub fn event_to_proto(event: Event) -> pb::SecurityEvent {
    let resource = &event.resource;
    let text = |key: &str| resource[key].as_str().unwrap_or_default().to_owned();
    let webhook = event.source == "webhook";
    pb::SecurityEvent {
        event_id: event.id.to_string(),
        tenant_id: event.tenant_id.to_string(),
        cluster_id: event.cluster_id.map(|c| c.to_string()).unwrap_or_default(),
        source_event_id: event.source_event_id,
        source: source_from_name(&event.source) as i32,
        webhook_source_id: if webhook {
            event.source_name.clone().unwrap_or_default()
        } else {
            String::new()
        },
        source_name: event.source_name.unwrap_or_default(),
        category: category_from_name(&event.category) as i32,
        severity: i32::from(event.severity),
        r#type: event.event_type,
        title: event.title,
        resource: Some(common::KubernetesResource {
            api_version: text("api_version"),
            kind: text("kind"),
            namespace: text("namespace"),
            name: text("name"),
            uid: text("uid"),
        }),
        details: json_to_struct(event.details),
        fingerprint: event.fingerprint,
        count: event.count,
        detect_time: Some(timestamp(event.detected_at)),
        receive_time: Some(timestamp(event.received_at)),
        last_seen_time: Some(timestamp(event.last_seen_at)),
    }
}

// ----------------------------------------------------------------- the agent stream

type Outbound = BoundedSender<pb::ConnectAgentResponse>;

/// One agent's open stream.
#[derive(Clone)]
struct AgentSession {
    store: Arc<Store>,
    cache: Arc<dyn Cache>,
    settings: IngestSettings,
    tenant_id: Uuid,
    cluster_id: Uuid,
    remediation: Option<Arc<crate::remediation::Dispatcher>>,
    limiter: Arc<RateLimiter>,
}

impl AgentSession {
    async fn send(out: &Outbound, payload: pb::connect_agent_response::Payload) -> bool {
        out.send(pb::ConnectAgentResponse {
            payload: Some(payload),
        })
        .await
    }

    async fn goodbye(out: &Outbound, reason: pb::GoodbyeReason, message: &str) {
        Self::send(
            out,
            pb::connect_agent_response::Payload::Goodbye(pb::Goodbye {
                reason: reason as i32,
                message: message.into(),
                retry_after: None,
            }),
        )
        .await;
    }

    async fn report(&self, state: ConnectionState, agent_version: Option<String>) {
        let result = async {
            let mut tx = self
                .store
                .begin(&Scope::tenant(self.tenant_id, None))
                .await?;
            tx.clusters()
                .record_agent(
                    self.cluster_id,
                    AgentReport {
                        connection_state: state,
                        agent_version,
                        seen_at: Utc::now(),
                    },
                )
                .await?;
            tx.commit().await
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, cluster = %self.cluster_id, "could not record the agent's state");
        }
    }

    /// Stores one batch and builds its ack: one entry per event, in order.
    /// Spends one unit of this cluster's and of its tenant's budgets for a batch of `events`
    /// and counts them against the tenant's daily event quota; the refusal when any is used
    /// up. The quotas cannot be read: not limited (storing the batch fails on its own when
    /// the store is down).
    async fn spend_budget(&self, events: usize) -> Option<crate::limits::Limited> {
        let cluster = Subject::Cluster {
            tenant_id: self.tenant_id,
            cluster_id: self.cluster_id,
        };
        if let Err(limited) = self
            .limiter
            .check(&cluster, self.limiter.settings().cluster, 1)
            .await
        {
            return Some(limited);
        }
        let quotas = self
            .limiter
            .quotas(&self.store, self.tenant_id)
            .await
            .ok()?;
        if let Err(limited) = self.limiter.tenant_with(self.tenant_id, &quotas).await {
            return Some(limited);
        }
        self.limiter
            .reserve_events(&self.store, self.tenant_id, &quotas, events)
            .await
            .err()
    }

    async fn store_batch(&self, batch: pb::EventBatch) -> pb::BatchAck {
        let started = Instant::now();
        let mut acks: Vec<pb::EventAck> = Vec::with_capacity(batch.events.len());
        let mut accepted = Vec::new();
        let mut slots = Vec::new();
        if batch.events.len() > self.settings.max_batch_events {
            let reason = format!(
                "batch larger than {} events; split it",
                self.settings.max_batch_events
            );
            return pb::BatchAck {
                batch_id: batch.batch_id,
                acks: batch
                    .events
                    .into_iter()
                    .map(|e| rejected(e.agent_event_id, &reason))
                    .collect(),
                retry_after: None,
            };
        }
        for event in batch.events {
            let id = event.agent_event_id.clone();
            match normalize(event) {
                Ok(new) => {
                    slots.push(acks.len());
                    accepted.push(new);
                    acks.push(pb::EventAck {
                        agent_event_id: id,
                        ..Default::default()
                    });
                }
                Err(reason) => acks.push(rejected(id, &reason)),
            }
        }
        if !accepted.is_empty() {
            if let Some(limited) = self.spend_budget(accepted.len()).await {
                let reason = format!("not stored: {}", limited.status().message());
                return throttled(batch.batch_id, acks, &slots, &reason, limited.retry_after());
            }
        }
        if self.settings.discard {
            for slot in slots {
                acks[slot].outcome = pb::EventOutcome::Accepted as i32;
                acks[slot].event_id = Uuid::new_v4().to_string();
            }
        } else if !accepted.is_empty() {
            let attempt = || async {
                let mut tx = self
                    .store
                    .begin(&Scope::tenant(self.tenant_id, None))
                    .await?;
                let outcomes = tx
                    .events()
                    .ingest(
                        Some(self.cluster_id),
                        &accepted,
                        self.settings.fold_window,
                        Utc::now(),
                    )
                    .await?;
                tx.commit().await?;
                Ok::<_, zen_store::StoreError>(outcomes)
            };
            // Serialization conflicts (CockroachDB, busy SQLite) are retried before the agent
            // is told to resend.
            let mut outcome = attempt().await;
            for _ in 0..2 {
                match &outcome {
                    Err(error) if error.is_retryable() => outcome = attempt().await,
                    _ => break,
                }
            }
            match outcome {
                Ok(outcomes) => {
                    for (slot, outcome) in slots.iter().zip(outcomes) {
                        let ack = &mut acks[*slot];
                        let (kind, id, reason) = match outcome {
                            EventOutcome::Accepted { event_id } => {
                                (pb::EventOutcome::Accepted, event_id, "")
                            }
                            EventOutcome::Folded { event_id } => (
                                pb::EventOutcome::Accepted,
                                event_id,
                                "folded into an earlier event with the same fingerprint",
                            ),
                            EventOutcome::Duplicate { event_id } => {
                                (pb::EventOutcome::Duplicate, event_id, "")
                            }
                        };
                        ack.outcome = kind as i32;
                        ack.event_id = id.to_string();
                        ack.reason = reason.into();
                        metrics::counter!("zen_ingest_events_total", "outcome" => format!("{kind:?}").to_lowercase()).increment(1);
                    }
                    // Labelled by registered ids only (the certificate's, never the
                    // network's): bounded by the clusters Zen knows.
                    metrics::counter!(
                        "zen_cluster_events_total",
                        "tenant" => self.tenant_id.to_string(),
                        "cluster" => self.cluster_id.to_string(),
                    )
                    .increment(slots.len() as u64);
                    // Wake watchers; they read the committed rows themselves.
                    let _ = self
                        .cache
                        .publish(&events_channel(self.tenant_id), b"")
                        .await;
                }
                Err(error) => {
                    // Nothing was committed: the agent resends these after `retry_after`.
                    tracing::warn!(%error, "storing a batch failed");
                    self.limiter
                        .release_events(self.tenant_id, accepted.len())
                        .await;
                    metrics::histogram!("zen_ingest_batch_seconds")
                        .record(started.elapsed().as_secs_f64());
                    return throttled(
                        batch.batch_id,
                        acks,
                        &slots,
                        "not stored: the database is unavailable; resend",
                        Duration::from_secs(1),
                    );
                }
            }
        }
        metrics::histogram!("zen_ingest_batch_seconds").record(started.elapsed().as_secs_f64());
        pb::BatchAck {
            batch_id: batch.batch_id,
            acks,
            retry_after: None,
        }
    }

    /// Reads the agent's messages until it hangs up, the cluster is deleted or the protocol is
    /// broken. At most `max_in_flight_batches` batches are stored at once; while they are, the
    /// stream is not read, so HTTP/2 flow control pushes back on the agent.
    async fn run(self, mut inbound: Streaming<pb::ConnectAgentRequest>, out: Outbound) {
        use pb::connect_agent_request::Payload;
        let first = match tokio::time::timeout(self.settings.heartbeat_interval * 3, inbound.next())
            .await
        {
            Ok(Some(Ok(pb::ConnectAgentRequest {
                payload: Some(Payload::Hello(hello)),
            }))) => hello,
            _ => {
                Self::goodbye(
                    &out,
                    pb::GoodbyeReason::ProtocolError,
                    "the first message must be a hello",
                )
                .await;
                return;
            }
        };
        if let Some(broken) =
            crate::grpc::validate::broken_rules("zen.ingest.v1.AgentHello", &first)
        {
            Self::goodbye(
                &out,
                pb::GoodbyeReason::ProtocolError,
                &format!("hello: {broken}"),
            )
            .await;
            return;
        }
        self.report(
            ConnectionState::Connected,
            Some(first.agent_version.clone()),
        )
        .await;
        // Streams open on this replica; the guard lowers it however the stream ends.
        let _connected = ConnectedAgent::new();
        let hello = pb::ServerHello {
            session_id: Uuid::new_v4().to_string(),
            tenant_id: self.tenant_id.to_string(),
            cluster_id: self.cluster_id.to_string(),
            max_in_flight_batches: self.settings.max_in_flight_batches as i32,
            max_batch_events: self.settings.max_batch_events as i32,
            heartbeat_interval: Some(prost_types::Duration {
                seconds: self.settings.heartbeat_interval.as_secs() as i64,
                nanos: 0,
            }),
            server_time: Some(timestamp(Utc::now())),
        };
        if !Self::send(&out, pb::connect_agent_response::Payload::Hello(hello)).await {
            return;
        }
        let mut in_flight: FuturesUnordered<tokio::task::JoinHandle<pb::BatchAck>> =
            FuturesUnordered::new();
        // Registered only after the hello went out: remediation commands follow it.
        let (_registration, mut commands) = match &self.remediation {
            Some(dispatcher) => {
                let (guard, rx) = dispatcher.register(self.tenant_id, self.cluster_id).await;
                (Some(guard), Some(rx))
            }
            None => (None, None),
        };
        // Reports are recorded by one task per stream, in the order the agent sent them: each
        // phase is its own transition and audit record, so a later phase must not overtake an
        // earlier one (a `verifying` handled after `succeeded` would be dropped). The loop
        // itself never waits on a transaction, only on this queue when it is full.
        let reports = self.remediation.clone().map(|dispatcher| {
            let (tx, mut rx) =
                tokio::sync::mpsc::channel::<(crate::remediation::Report, tracing::Span)>(256);
            let (tenant, cluster) = (self.tenant_id, self.cluster_id);
            tokio::spawn(async move {
                while let Some((report, span)) = rx.recv().await {
                    let handled = dispatcher.handle_report(tenant, cluster, report);
                    if let Err(error) = handled.instrument(span).await {
                        tracing::warn!(%error, "could not record a remediation report");
                    }
                }
            });
            tx
        });
        let mut revocation = tokio::time::interval(self.settings.revocation_check_interval);
        let mut draining = false;
        loop {
            // Full window: finish a batch before reading on.
            if in_flight.len() >= self.settings.max_in_flight_batches {
                if let Some(Ok(ack)) = in_flight.next().await {
                    if !Self::send(&out, pb::connect_agent_response::Payload::BatchAck(ack)).await {
                        break;
                    }
                }
                continue;
            }
            tokio::select! {
                Some(Ok(ack)) = in_flight.next(), if !in_flight.is_empty() => {
                    if !Self::send(&out, pb::connect_agent_response::Payload::BatchAck(ack)).await {
                        break;
                    }
                }
                Some(command) = async { commands.as_mut()?.recv().await }, if commands.is_some() => {
                    let command = super::remediation::command_to_proto(command);
                    if !Self::send(&out, pb::connect_agent_response::Payload::RemediationCommand(command)).await {
                        break;
                    }
                }
                // The replica drains: read no more batches; those in flight still commit and
                // are acknowledged below, then a goodbye sends the agent elsewhere.
                () = self.settings.drain.started() => {
                    draining = true;
                    break;
                }
                _ = revocation.tick() => {
                    if check_live(&self.store, self.tenant_id, self.cluster_id).await.is_err() {
                        Self::goodbye(&out, pb::GoodbyeReason::Revoked, "this cluster was deleted").await;
                        break;
                    }
                }
                message = inbound.next() => match message {
                    Some(Ok(pb::ConnectAgentRequest { payload: Some(Payload::EventBatch(batch)) })) => {
                        // Each batch commits in its own task, so a transaction never waits on
                        // this loop (which may be blocked on an agent that does not read).
                        let session = self.clone();
                        in_flight.push(tokio::spawn(async move { session.store_batch(batch).await }));
                    }
                    Some(Ok(pb::ConnectAgentRequest { payload: Some(Payload::Heartbeat(_)) })) => {
                        metrics::counter!("zen_agent_heartbeats_total").increment(1);
                        // Not awaited here: batches in flight may hold the (SQLite) write lock
                        // and are only driven by this loop.
                        let session = self.clone();
                        tokio::spawn(async move {
                            session.report(ConnectionState::Connected, None).await;
                        });
                    }
                    Some(Ok(pb::ConnectAgentRequest { payload: Some(Payload::RemediationReport(report)) })) => {
                        match (&reports, super::remediation::report_from_proto(report)) {
                            (Some(reports), Ok(report)) => {
                                let tenant = self.tenant_id;
                                // Recorded as part of the agent's execution trace.
                                let span = crate::telemetry::traced(|| tracing::info_span!(
                                    "remediation.report",
                                    otel.kind = "consumer",
                                    zen.tenant_id = %tenant,
                                    zen.remediation_id = %report.remediation_id,
                                    zen.execution_id = %report.execution_id,
                                    zen.phase = ?report.phase,
                                    trace_id = tracing::field::Empty,
                                    span_id = tracing::field::Empty,
                                ));
                                crate::telemetry::continue_from_map(&span, &report.trace_context);
                                if reports.send((report, span)).await.is_err() {
                                    tracing::warn!("remediation report dropped: its recorder stopped");
                                }
                            }
                            (None, _) => tracing::warn!("remediation report ignored: remediation is off"),
                            (_, Err(reason)) => tracing::warn!(%reason, "malformed remediation report ignored"),
                        }
                    }
                    Some(Ok(_)) => {
                        Self::goodbye(&out, pb::GoodbyeReason::ProtocolError, "unexpected message").await;
                        break;
                    }
                    Some(Err(_)) | None => break,
                },
            }
        }
        // Batches already being stored still get their acks if the agent listens.
        while let Some(ack) = in_flight.next().await {
            if let Ok(ack) = ack {
                let _ = Self::send(&out, pb::connect_agent_response::Payload::BatchAck(ack)).await;
            }
        }
        if draining {
            Self::goodbye(
                &out,
                pb::GoodbyeReason::ServerShutdown,
                "this replica is shutting down; reconnect and resend what was not acknowledged",
            )
            .await;
        }
        self.report(ConnectionState::Disconnected, None).await;
    }
}

/// One open agent stream in `zen_agents_connected`, for as long as it lives.
struct ConnectedAgent;

impl ConnectedAgent {
    fn new() -> Self {
        metrics::gauge!("zen_agents_connected").increment(1.0);
        Self
    }
}

impl Drop for ConnectedAgent {
    fn drop(&mut self) {
        metrics::gauge!("zen_agents_connected").decrement(1.0);
    }
}

/// The ack of a batch none of whose accepted events (`slots`) was stored: each `THROTTLED`
/// with `reason`, to be resent after `retry`.
fn throttled(
    batch_id: String,
    mut acks: Vec<pb::EventAck>,
    slots: &[usize],
    reason: &str,
    retry: Duration,
) -> pb::BatchAck {
    for &slot in slots {
        acks[slot].outcome = pb::EventOutcome::Throttled as i32;
        acks[slot].reason = reason.to_owned();
    }
    pb::BatchAck {
        batch_id,
        acks,
        retry_after: prost_types::Duration::try_from(retry).ok(),
    }
}

fn rejected(agent_event_id: String, reason: &str) -> pb::EventAck {
    pb::EventAck {
        agent_event_id,
        outcome: pb::EventOutcome::Rejected as i32,
        reason: reason.into(),
        event_id: String::new(),
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for IngestApi {
    async fn bootstrap_agent(
        &self,
        request: Request<pb::BootstrapAgentRequest>,
    ) -> Result<Response<pb::BootstrapAgentResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let ca = self.ca()?;
        // UNAUTHENTICATED, as the contract says: the token is the caller's only credential.
        let invalid_token = || {
            Status::with_error_details(
                Code::Unauthenticated,
                "the bootstrap token is invalid, used or expired",
                ErrorDetails::with_error_info(
                    "BOOTSTRAP_TOKEN_INVALID",
                    "zen",
                    std::collections::HashMap::new(),
                ),
            )
        };
        let tenant_id = tenant_of_secret(BOOTSTRAP_TOKEN_PREFIX, &req.bootstrap_token)
            .ok_or_else(invalid_token)?;
        if req.csr_pem.is_empty() {
            return Err(invalid(&[("csr_pem", "is required")]));
        }
        let scope = Scope::tenant(tenant_id, None);
        let mut tx = self
            .store
            .begin(&scope)
            .await
            .map_err(|e| store_status(e, ""))?;
        let token = match tx
            .bootstrap_tokens()
            .consume(&req.bootstrap_token, Utc::now())
            .await
        {
            Ok(token) => token,
            Err(
                zen_store::StoreError::NotFound { .. } | zen_store::StoreError::Precondition { .. },
            ) => return Err(invalid_token()),
            Err(error) => return Err(store_status(error, "")),
        };
        let identity = PeerIdentity::Agent {
            tenant_id,
            cluster_id: token.cluster_id,
        };
        // A bad CSR leaves the token unused: the transaction is not committed.
        let certificate = ca
            .sign_csr(
                &req.csr_pem,
                &identity,
                self.settings.agent_certificate_validity,
            )
            .map_err(|e| invalid(&[("csr_pem", &e.to_string())]))?;
        let mut record = call.audit(
            "agent.bootstrap",
            "cluster",
            token.cluster_id,
            AuditOutcome::Success,
            json!({ "token_id": token.id, "agent_version": req.agent_version }),
        );
        record.actor_type = "agent".into();
        record.actor_id = Some(token.cluster_id.to_string());
        tx.audit()
            .append(record)
            .await
            .map_err(|e| store_status(e, ""))?;
        tx.commit().await.map_err(|e| store_status(e, ""))?;
        Ok(Response::new(pb::BootstrapAgentResponse {
            certificate_chain_pem: certificate,
            ca_bundle_pem: ca.certificate_pem().to_owned(),
            tenant_id: tenant_id.to_string(),
            cluster_id: token.cluster_id.to_string(),
            expire_time: Some(timestamp(
                Utc::now()
                    + chrono::Duration::from_std(self.settings.agent_certificate_validity)
                        .unwrap_or_default(),
            )),
        }))
    }

    async fn renew_certificate(
        &self,
        request: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let call = Call::of(&request)?;
        let (tenant_id, cluster_id) = agent_of(&call)?;
        check_live(&self.store, tenant_id, cluster_id).await?;
        let ca = self.ca()?;
        let identity = PeerIdentity::Agent {
            tenant_id,
            cluster_id,
        };
        let certificate = ca
            .sign_csr(
                &request.get_ref().csr_pem,
                &identity,
                self.settings.agent_certificate_validity,
            )
            .map_err(|e| invalid(&[("csr_pem", &e.to_string())]))?;
        Ok(Response::new(pb::RenewCertificateResponse {
            certificate_chain_pem: certificate,
            ca_bundle_pem: ca.certificate_pem().to_owned(),
            expire_time: Some(timestamp(
                Utc::now()
                    + chrono::Duration::from_std(self.settings.agent_certificate_validity)
                        .unwrap_or_default(),
            )),
        }))
    }

    async fn connect_agent(
        &self,
        request: Request<Streaming<pb::ConnectAgentRequest>>,
    ) -> Result<Response<ResponseStream<pb::ConnectAgentResponse>>, Status> {
        let call = Call::of(&request)?;
        let (tenant_id, cluster_id) = agent_of(&call)?;
        check_live(&self.store, tenant_id, cluster_id).await?;
        let (out, stream) = bounded(
            OUTBOUND_QUEUE,
            self.settings.watch.slow_consumer_grace,
            "agent",
            "reconnect and resend the unacknowledged batches",
        );
        let session = AgentSession {
            store: self.store.clone(),
            cache: self.cache.clone(),
            settings: self.settings.clone(),
            tenant_id,
            cluster_id,
            remediation: self.remediation.clone(),
            limiter: self.limiter.clone(),
        };
        tokio::spawn(session.run(request.into_inner(), out));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let page = page_request(req.page_size, &req.page_token);
        let filter = EventFilter {
            cluster_id: optional_id("cluster_id", &req.cluster_id)?,
            source: pb::EventSource::try_from(req.source)
                .ok()
                .and_then(source_name)
                .map(str::to_owned),
            category: pb::EventCategory::try_from(req.category)
                .ok()
                .and_then(category_name)
                .map(str::to_owned),
            min_severity: Some(req.min_severity as i16).filter(|s| *s > 0),
            since: time_field("start_time", req.start_time)?,
            until: time_field("end_time", req.end_time)?,
            event_type: Some(req.r#type).filter(|t| !t.is_empty()),
            source_name: Some(req.webhook_source_id).filter(|s| !s.is_empty()),
        };
        let page = call
            .list(&self.store, Some(tenant_id), move |tx| {
                let (filter, page) = (filter.clone(), page.clone());
                Box::pin(async move { tx.events().list(&filter, &page).await })
            })
            .await?;
        Ok(Response::new(pb::ListEventsResponse {
            events: page.items.into_iter().map(event_to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get_event(
        &self,
        request: Request<pb::GetEventRequest>,
    ) -> Result<Response<pb::GetEventResponse>, Status> {
        let call = Call::of(&request)?;
        let tenant_id = id("tenant_id", &request.get_ref().tenant_id)?;
        let event_id = id("event_id", &request.get_ref().event_id)?;
        let mut tx = call.read(&self.store, Some(tenant_id)).await?;
        let event = tx
            .events()
            .get(event_id)
            .await
            .map_err(|e| store_status(e, ""))?;
        Ok(Response::new(pb::GetEventResponse {
            event: Some(event_to_proto(event)),
        }))
    }

    /// Follows the tenant's change sequence from a resume point (the `resume_token` is the
    /// seq): events and remediation changes, which take their seqs from the same per-tenant
    /// sequence, so one token orders both and a resume misses neither. Woken by the pub/sub
    /// message each committed ingest batch or remediation change publishes, polling as a
    /// fallback, with heartbeats on idle streams. `cluster_id` filters both kinds;
    /// `min_severity` only events (the contract's rule).
    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<ResponseStream<pb::WatchEventsResponse>>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let cluster = optional_id("cluster_id", &req.cluster_id)?;
        let min_severity = req.min_severity as i16;
        let scope = call.scope(Some(tenant_id));
        let mut tx = self
            .store
            .begin_read(&scope)
            .await
            .map_err(|e| store_status(e, ""))?;
        let after = match (
            req.resume_token.as_str(),
            req.resume_after_event_id.as_str(),
        ) {
            ("", "") => tx
                .events()
                .last_seq()
                .await
                .map_err(|e| store_status(e, ""))?,
            (token, "") => token
                .parse::<i64>()
                .ok()
                .filter(|s| *s >= 0)
                .ok_or_else(|| invalid(&[("resume_token", "is not a token this server issued")]))?,
            ("", event_id) => {
                let id = id("resume_after_event_id", event_id)?;
                tx.events()
                    .get(id)
                    .await
                    .map_err(|e| store_status(e, ""))?
                    .seq
            }
            // Both: refused by the contract's one_resume_point rule.
            _ => return Err(crate::grpc::validate::unchecked("resume_token")),
        };
        drop(tx);
        let stream = self
            .watchers
            .watch(
                &call.caller,
                super::watch::WatchRequest {
                    tenant_id,
                    scope,
                    after,
                    cluster,
                    min_severity,
                },
            )
            .await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_webhook_source(
        &self,
        request: Request<pb::CreateWebhookSourceRequest>,
    ) -> Result<Response<pb::CreateWebhookSourceResponse>, Status> {
        self.webhooks.create(request).await
    }

    async fn get_webhook_source(
        &self,
        request: Request<pb::GetWebhookSourceRequest>,
    ) -> Result<Response<pb::GetWebhookSourceResponse>, Status> {
        self.webhooks.get(request).await
    }

    async fn list_webhook_sources(
        &self,
        request: Request<pb::ListWebhookSourcesRequest>,
    ) -> Result<Response<pb::ListWebhookSourcesResponse>, Status> {
        self.webhooks.list(request).await
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        self.webhooks.list_deliveries(request).await
    }

    async fn update_webhook_source(
        &self,
        request: Request<pb::UpdateWebhookSourceRequest>,
    ) -> Result<Response<pb::UpdateWebhookSourceResponse>, Status> {
        self.webhooks.update(request).await
    }

    async fn delete_webhook_source(
        &self,
        request: Request<pb::DeleteWebhookSourceRequest>,
    ) -> Result<Response<pb::DeleteWebhookSourceResponse>, Status> {
        self.webhooks.delete(request).await
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        self.webhooks.rotate(request).await
    }

    async fn receive_webhook(
        &self,
        request: Request<pb::ReceiveWebhookRequest>,
    ) -> Result<Response<pb::ReceiveWebhookResponse>, Status> {
        self.webhooks.receive(request).await
    }

    /// Legacy agents' batches go through the same path as a streamed batch.
    async fn ingest_legacy_events(
        &self,
        request: Request<pb::IngestLegacyEventsRequest>,
    ) -> Result<Response<pb::IngestLegacyEventsResponse>, Status> {
        self.webhooks
            .ingest_legacy(request, async |tenant_id, cluster_id, batch| {
                check_live(&self.store, tenant_id, cluster_id)
                    .await
                    .map_err(|status| match status.code() {
                        Code::PermissionDenied => {
                            Status::not_found("no such cluster in this tenant (or it was deleted)")
                        }
                        _ => status,
                    })?;
                let session = AgentSession {
                    store: self.store.clone(),
                    cache: self.cache.clone(),
                    settings: self.settings.clone(),
                    tenant_id,
                    cluster_id,
                    remediation: None,
                    limiter: self.limiter.clone(),
                };
                Ok(session.store_batch(batch).await)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> pb::AgentEvent {
        pb::AgentEvent {
            agent_event_id: id.into(),
            source: pb::EventSource::Trivy as i32,
            severity: common::Severity::High as i32,
            r#type: "vulnerability".into(),
            title: "CVE-2026-0001 in openssl".into(),
            ..Default::default()
        }
    }

    #[test]
    fn events_are_normalized_or_rejected_with_a_reason() {
        let ok = normalize(event("e1")).unwrap();
        assert_eq!(ok.source, "trivy");
        assert_eq!(ok.category, "security");
        assert_eq!(ok.fingerprint.len(), 64);
        assert_eq!(normalize(event("e2")).unwrap().fingerprint, ok.fingerprint);

        let mut no_severity = event("e3");
        no_severity.severity = 0;
        assert!(normalize(no_severity).unwrap_err().starts_with("severity"));
        let mut webhook = event("e4");
        webhook.source = pb::EventSource::Webhook as i32;
        assert!(normalize(webhook).unwrap_err().starts_with("source"));
        assert!(normalize(event(""))
            .unwrap_err()
            .starts_with("agent_event_id"));
    }
}
