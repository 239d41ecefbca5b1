//! Agent ingestion end to end over real mTLS: enrollment through the HTTP side, the
//! `ConnectAgent` stream with durable acks, idempotent resends, fingerprint folding, identity
//! from the certificate only, revocation, and backpressure under a client that never reads.

mod support;

use std::time::Duration;

use support::{connect, TestZen};
// `connect_with` is reached as `support::connect_with`.
use pb::ingest_service_client::IngestServiceClient;
use tenancy::tenancy_service_client::TenancyServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;
use zen::proto::zen::common::v1 as common;
use zen::proto::zen::ingest::v1 as pb;
use zen::proto::zen::tenancy::v1 as tenancy;
use zen_security::{PeerIdentity, PkiFiles};

fn with_id<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let id = uuid::Uuid::new_v4().to_string();
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

/// A tenant with one cluster, created by the operator.
async fn tenant_and_cluster(zen: &TestZen, name: &str) -> (String, String) {
    let mut client = TenancyServiceClient::new(zen.admin().await);
    let tenant = client
        .create_tenant(with_id(tenancy::CreateTenantRequest {
            tenant: Some(tenancy::Tenant {
                name: name.into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    let cluster = client
        .create_cluster(with_id(tenancy::CreateClusterRequest {
            tenant_id: tenant.tenant_id.clone(),
            cluster: Some(tenancy::Cluster {
                name: "prod".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap();
    (tenant.tenant_id, cluster.cluster_id)
}

async fn bootstrap_token(zen: &TestZen, tenant_id: &str, cluster_id: &str) -> String {
    TenancyServiceClient::new(zen.admin().await)
        .create_bootstrap_token(with_id(tenancy::CreateBootstrapTokenRequest {
            tenant_id: tenant_id.into(),
            cluster_id: cluster_id.into(),
            ttl: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .token
}

/// An agent identity signed directly by the CA (for tests of the stream itself).
async fn agent_channel(zen: &TestZen, tenant_id: &str, cluster_id: &str) -> Channel {
    agent_channel_with(zen, tenant_id, cluster_id, |endpoint| endpoint).await
}

async fn agent_channel_with(
    zen: &TestZen,
    tenant_id: &str,
    cluster_id: &str,
    adjust: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
) -> Channel {
    let files = PkiFiles::new(zen.pki());
    let ca = files.load_ca().unwrap();
    let name = format!("agent-{cluster_id}");
    let identity = PeerIdentity::Agent {
        tenant_id: tenant_id.parse().unwrap(),
        cluster_id: cluster_id.parse().unwrap(),
    };
    let issued = ca
        .issue_client(&identity, Duration::from_secs(600))
        .unwrap();
    files.write_identity(&name, &issued).unwrap();
    let pki = zen.pki();
    support::connect_with(
        zen.running.grpc_addr,
        &pki.join("ca.crt"),
        Some((&files.cert(&name), &files.key(&name))),
        adjust,
    )
    .await
    .unwrap()
}

fn event(id: &str, fingerprint: &str) -> pb::AgentEvent {
    pb::AgentEvent {
        agent_event_id: id.into(),
        source: pb::EventSource::Falco as i32,
        severity: common::Severity::High as i32,
        r#type: "runtime".into(),
        title: format!("shell in container ({id})"),
        fingerprint: fingerprint.into(),
        ..Default::default()
    }
}

fn batch(id: &str, events: Vec<pb::AgentEvent>) -> pb::ConnectAgentRequest {
    pb::ConnectAgentRequest {
        payload: Some(pb::connect_agent_request::Payload::EventBatch(
            pb::EventBatch {
                batch_id: id.into(),
                events,
            },
        )),
    }
}

fn hello() -> pb::ConnectAgentRequest {
    pb::ConnectAgentRequest {
        payload: Some(pb::connect_agent_request::Payload::Hello(pb::AgentHello {
            agent_version: "test".into(),
            ..Default::default()
        })),
    }
}

/// Opens a stream; returns the sender of requests and the response stream after the hello.
async fn open(
    channel: Channel,
) -> (
    mpsc::Sender<pb::ConnectAgentRequest>,
    tonic::Streaming<pb::ConnectAgentResponse>,
) {
    let (tx, rx) = mpsc::channel(1);
    tx.send(hello()).await.unwrap();
    let mut replies = IngestServiceClient::new(channel)
        .connect_agent(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    match replies.next().await {
        Some(Ok(pb::ConnectAgentResponse {
            payload: Some(pb::connect_agent_response::Payload::Hello(_)),
        })) => {}
        other => panic!("expected the server hello, got {other:?}"),
    }
    (tx, replies)
}

async fn next_ack(replies: &mut tonic::Streaming<pb::ConnectAgentResponse>) -> pb::BatchAck {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), replies.next()).await {
            Ok(Some(Ok(pb::ConnectAgentResponse {
                payload: Some(pb::connect_agent_response::Payload::BatchAck(ack)),
            }))) => return ack,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected an ack, got {other:?}"),
        }
    }
}

/// Every stored event of the tenant, through all pages.
async fn events_of(zen: &TestZen, tenant_id: &str) -> Vec<pb::SecurityEvent> {
    let mut client = IngestServiceClient::new(zen.admin().await);
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_events(pb::ListEventsRequest {
                tenant_id: tenant_id.into(),
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn an_agent_enrolls_over_http_and_streams_events() {
    let zen = TestZen::start().await;
    let (tenant_id, cluster_id) = tenant_and_cluster(&zen, "acme").await;
    let token = bootstrap_token(&zen, &tenant_id, &cluster_id).await;
    let http = zen.http_url("");
    let grpc = format!("https://{}", zen.running.grpc_addr);
    let dir = tempfile::tempdir().unwrap();

    let enrolled = zen::agent::bootstrap(&http, &grpc, "localhost", &token, dir.path())
        .await
        .expect("enrollment");
    assert_eq!(enrolled.cluster_id, cluster_id);
    // The certificate names exactly the enrolled cluster.
    let pem = std::fs::read_to_string(dir.path().join("agent.crt")).unwrap();
    let der =
        zen_security::pki::certificate_der_from_pem(&dir.path().join("agent.crt"), &pem).unwrap();
    assert_eq!(
        PeerIdentity::from_certificate_der(&der).unwrap(),
        PeerIdentity::Agent {
            tenant_id: tenant_id.parse().unwrap(),
            cluster_id: cluster_id.parse().unwrap(),
        }
    );
    // One use only; a made-up token is refused the same way.
    let again = tempfile::tempdir().unwrap();
    let reused = zen::agent::bootstrap(&http, &grpc, "localhost", &token, again.path()).await;
    assert!(reused.unwrap_err().to_string().contains("401"));
    let forged = format!("zbt.{tenant_id}.{}", "0".repeat(64));
    assert!(
        zen::agent::bootstrap(&http, &grpc, "localhost", &forged, again.path())
            .await
            .is_err()
    );

    // `zen agent run` with JSON lines: all acked, stored under the certificate's cluster.
    let input = dir.path().join("events.jsonl");
    let lines: Vec<String> = (0..25)
        .map(|i| {
            serde_json::json!({
                "id": format!("evt-{i}"),
                "source": "trivy",
                "severity": "critical",
                "type": "vulnerability",
                "title": format!("CVE-2026-{i:04}"),
                "resource": {"kind": "Deployment", "namespace": "shop", "name": "api"},
            })
            .to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let files = zen::agent::AgentFiles::new(dir.path());
    let options = zen::agent::RunOptions {
        batch_size: 10,
        batch_delay: Duration::from_millis(50),
        follow: false,
    };
    let first = zen::agent::run(
        &files,
        tokio::fs::File::open(&input).await.unwrap(),
        options.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        (first.accepted, first.duplicate, first.rejected),
        (25, 0, 0)
    );
    // Sending the same events again stores nothing new.
    let second = zen::agent::run(
        &files,
        tokio::fs::File::open(&input).await.unwrap(),
        options,
    )
    .await
    .unwrap();
    assert_eq!((second.accepted, second.duplicate), (0, 25));
    let stored = events_of(&zen, &tenant_id).await;
    assert_eq!(stored.len(), 25);
    assert!(stored
        .iter()
        .all(|e| e.cluster_id == cluster_id && e.count == 1));

    // Heartbeats and the hello marked the cluster connected once; it shows its agent version.
    let cluster = TenancyServiceClient::new(zen.admin().await)
        .get_cluster(tenancy::GetClusterRequest {
            tenant_id: tenant_id.clone(),
            cluster_id: cluster_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap();
    assert_eq!(cluster.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(cluster.last_seen_time.is_some());
    zen.stop().await;
}

#[tokio::test]
async fn acks_are_durable_resends_are_idempotent_and_fingerprints_fold() {
    let zen = TestZen::start().await;
    let (tenant_id, cluster_id) = tenant_and_cluster(&zen, "acme").await;
    let channel = agent_channel(&zen, &tenant_id, &cluster_id).await;

    // A batch sent, then the connection dropped before its ack was read.
    let (tx, replies) = open(channel.clone()).await;
    let events: Vec<_> = (0..20)
        .map(|i| event(&format!("e{i}"), &format!("fp{i}")))
        .collect();
    tx.send(batch("b1", events.clone())).await.unwrap();
    drop(tx);
    drop(replies);

    // The agent reconnects and resends everything it has no ack for.
    let (tx, mut replies) = open(channel.clone()).await;
    tx.send(batch("b1", events)).await.unwrap();
    let ack = next_ack(&mut replies).await;
    assert_eq!(ack.acks.len(), 20);
    for ack in &ack.acks {
        let outcome = pb::EventOutcome::try_from(ack.outcome).unwrap();
        assert!(matches!(
            outcome,
            pb::EventOutcome::Accepted | pb::EventOutcome::Duplicate
        ));
        assert!(!ack.event_id.is_empty());
    }

    // Same fingerprint, new ids: folded into the first row with a count.
    tx.send(batch(
        "b2",
        vec![
            event("f1", "same"),
            event("f2", "same"),
            event("f3", "same"),
        ],
    ))
    .await
    .unwrap();
    let folded = next_ack(&mut replies).await;
    let ids: Vec<&str> = folded.acks.iter().map(|a| a.event_id.as_str()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");

    // A bad event is rejected with a reason, the rest of its batch is stored, the stream lives.
    let mut bad = event("bad", "x");
    bad.severity = 0;
    tx.send(batch("b3", vec![bad, event("good", "y")]))
        .await
        .unwrap();
    let mixed = next_ack(&mut replies).await;
    assert_eq!(mixed.acks[0].outcome, pb::EventOutcome::Rejected as i32);
    assert!(mixed.acks[0].reason.contains("severity"));
    assert_eq!(mixed.acks[1].outcome, pb::EventOutcome::Accepted as i32);

    // The event's rules are its contract's (AgentEvent in event.proto), every one named.
    let mut hostile = event("hostile", "z");
    hostile.source = pb::EventSource::Webhook as i32;
    hostile.title = "line\nbreak".into();
    hostile.fingerprint = "f".repeat(257);
    tx.send(batch("b4", vec![hostile, event("fine", "w")]))
        .await
        .unwrap();
    let named = next_ack(&mut replies).await;
    assert_eq!(named.acks[0].outcome, pb::EventOutcome::Rejected as i32);
    for field in ["source", "title", "fingerprint"] {
        assert!(
            named.acks[0].reason.contains(&format!("{field}: ")),
            "{field} in {}",
            named.acks[0].reason
        );
    }
    assert_eq!(named.acks[1].outcome, pb::EventOutcome::Accepted as i32);

    let stored = events_of(&zen, &tenant_id).await;
    assert_eq!(
        stored.len(),
        20 + 1 + 1 + 1,
        "each event exactly once, the folded ones as one row"
    );
    let same = stored.iter().find(|e| e.fingerprint == "same").unwrap();
    assert_eq!(same.count, 3);
    zen.stop().await;
}

#[tokio::test]
async fn identity_comes_from_the_certificate_and_deletion_revokes() {
    let zen = TestZen::start().await;
    let (tenant_a, cluster_a) = tenant_and_cluster(&zen, "acme").await;
    let (tenant_b, _) = tenant_and_cluster(&zen, "globex").await;
    let channel = agent_channel(&zen, &tenant_a, &cluster_a).await;

    // Whatever it sends, an agent writes to its own cluster of its own tenant, and cannot use
    // the people's APIs.
    let (tx, mut replies) = open(channel.clone()).await;
    tx.send(batch("b1", vec![event("x1", "fx")])).await.unwrap();
    next_ack(&mut replies).await;
    assert!(events_of(&zen, &tenant_b).await.is_empty());
    assert_eq!(events_of(&zen, &tenant_a).await[0].cluster_id, cluster_a);
    let denied = TenancyServiceClient::new(channel.clone())
        .list_clusters(tenancy::ListClustersRequest {
            tenant_id: tenant_b.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Deleting the cluster closes its open stream and refuses new ones.
    TenancyServiceClient::new(zen.admin().await)
        .delete_cluster(with_id(tenancy::DeleteClusterRequest {
            tenant_id: tenant_a.clone(),
            cluster_id: cluster_a.clone(),
            version: 0,
        }))
        .await
        .unwrap();
    let goodbye = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(reply)) = replies.next().await {
            if let Some(pb::connect_agent_response::Payload::Goodbye(goodbye)) = reply.payload {
                return Some(goodbye);
            }
        }
        None
    })
    .await
    .expect("the stream is closed within the revocation interval")
    .expect("with a goodbye");
    assert_eq!(goodbye.reason, pb::GoodbyeReason::Revoked as i32);
    let (tx, rx) = mpsc::channel(1);
    tx.send(hello()).await.unwrap();
    let refused = IngestServiceClient::new(channel)
        .connect_agent(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    zen.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_acks_is_held_back_then_closed_as_too_slow() {
    let zen = TestZen::start_with(
        zen::config::GlobalArgs::default(),
        zen::config::ServeArgs {
            slow_consumer_grace_ms: Some(1000),
            ..Default::default()
        },
    )
    .await;
    let (tenant_id, cluster_id) = tenant_and_cluster(&zen, "acme").await;
    // Small HTTP/2 windows, so what the transport itself may buffer is small too.
    let channel = agent_channel_with(&zen, &tenant_id, &cluster_id, |endpoint| {
        endpoint
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(64 * 1024)
    })
    .await;
    let (tx, mut replies) = open(channel).await;
    const BATCHES: usize = 3000;
    const EVENTS: usize = 20;
    let sender = tokio::spawn(async move {
        let mut sent = 0usize;
        for b in 0..BATCHES {
            let events = (0..EVENTS)
                .map(|e| {
                    let mut ev = event(&format!("b{b}-e{e}"), &format!("fp-{b}-{e}"));
                    ev.title = "x".repeat(200);
                    ev
                })
                .collect();
            if tx.send(batch(&format!("b{b}"), events)).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    // The response stream stays open but is not read. Zen stores until the acks it cannot
    // deliver fill the outbound queue and the transport window, then stops reading: the count
    // stops growing, held back rather than buffered.
    let mut stored = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = events_of(&zen, &tenant_id).await.len();
        if now == stored && now > 0 {
            break;
        }
        stored = now;
    }
    // Each unread ack is ~20 x 60 bytes: 64 KiB of window, 16 queued, 4 in flight.
    assert!(
        stored <= 100 * EVENTS,
        "{stored} events stored by a stream nobody reads"
    );
    // Past the grace period the session gives up on the agent: when the agent reads again it
    // finds what the transport held, then the stream's end, RESOURCE_EXHAUSTED / SLOW_CONSUMER,
    // not the backlog of the session's queue.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), replies.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the stream ended without saying why"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the slow agent's stream was never ended"),
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");
    assert!(ended.message().contains("resend"), "{ended:?}");
    assert_eq!(
        ended.get_error_details().error_info().unwrap().reason,
        "SLOW_CONSUMER"
    );
    // Nothing was acknowledged that is not stored, and the session let go of the sender.
    let sent = tokio::time::timeout(Duration::from_secs(10), sender)
        .await
        .expect("the sender was released when the session ended")
        .unwrap();
    assert!(sent < BATCHES, "the sender was held back");
    assert_eq!(events_of(&zen, &tenant_id).await.len(), stored);
    zen.stop().await;
}

#[tokio::test]
async fn an_agent_without_a_certificate_cannot_open_a_stream() {
    let zen = TestZen::start().await;
    let pki = zen.pki();
    let refused = match connect(zen.running.grpc_addr, &pki.join("ca.crt"), None).await {
        Err(_) => true,
        Ok(channel) => IngestServiceClient::new(channel)
            .connect_agent(ReceiverStream::new(mpsc::channel(1).1))
            .await
            .is_err(),
    };
    assert!(refused);
    zen.stop().await;
}

/// A cluster over its batch budget: the batch is not stored, every event is acked THROTTLED
/// with a retry delay, and the same batch resent after the delay is stored.
#[tokio::test]
async fn batches_over_the_clusters_budget_are_throttled_with_a_retry_delay() {
    let zen = TestZen::start_with(
        zen::config::GlobalArgs::default(),
        zen::config::ServeArgs {
            // One batch per second, bursts of two.
            rate_limit_cluster_rps: Some(1),
            ..Default::default()
        },
    )
    .await;
    let (tenant_id, cluster_id) = tenant_and_cluster(&zen, "metered").await;
    let channel = agent_channel(&zen, &tenant_id, &cluster_id).await;
    let (tx, mut replies) = open(channel).await;
    let mut acks = Vec::new();
    for b in 0..3 {
        let events = vec![event(&format!("b{b}-e0"), &format!("fp-b{b}"))];
        tx.send(batch(&format!("b{b}"), events)).await.unwrap();
        acks.push(next_ack(&mut replies).await);
    }
    let outcome = |ack: &pb::BatchAck| pb::EventOutcome::try_from(ack.acks[0].outcome).unwrap();
    assert_eq!(outcome(&acks[0]), pb::EventOutcome::Accepted);
    assert_eq!(outcome(&acks[1]), pb::EventOutcome::Accepted);
    assert_eq!(
        outcome(&acks[2]),
        pb::EventOutcome::Throttled,
        "{:?}",
        acks[2]
    );
    assert!(
        acks[2].acks[0].reason.contains("rate limit"),
        "{:?}",
        acks[2]
    );
    let retry = acks[2].retry_after.expect("a retry delay");
    let retry = Duration::new(retry.seconds as u64, retry.nanos as u32);
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(1),
        "{retry:?}"
    );
    assert_eq!(
        events_of(&zen, &tenant_id).await.len(),
        2,
        "the throttled batch was not stored"
    );
    // Resent after the delay: stored.
    tokio::time::sleep(retry + Duration::from_millis(50)).await;
    tx.send(batch("b2", vec![event("b2-e0", "fp-b2")]))
        .await
        .unwrap();
    assert_eq!(
        outcome(&next_ack(&mut replies).await),
        pb::EventOutcome::Accepted
    );
    assert_eq!(events_of(&zen, &tenant_id).await.len(), 3);
    zen.stop().await;
}
