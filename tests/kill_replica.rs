//! A replica killed with SIGKILL, again and again, under load: three `zen serve` processes (the
//! real binary) share one PostgreSQL database and Redis; 32 senders post signed deliveries to
//! all three in turn, retrying a delivery that got no answer or a 5xx on the next replica with
//! exactly the same request (same id, signature and body), as webhook providers do; 4 agents
//! stream event batches to the replicas in turn and, when their stream breaks, reconnect to
//! the next one and resend the batch that was not acknowledged, as `zen agent` does. Every 3 s
//! the third replica is killed with `kill -9` and started again. Afterwards every delivery and
//! every agent event acknowledged is stored, exactly once, under the event id it was
//! acknowledged with, and the tenant's audit chain verifies. Meanwhile remediations are
//! proposed (low risk: approved at once) for a cluster whose agent prefers the replica being
//! killed: each is executed by the agent's hook exactly once and ends SUCCEEDED. Also: senders
//! that hang up mid-request lose nothing.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use support::balancer::{Balancer, Policy};
use support::drill::{
    assert_chain_verifies, create_cluster, enroll_agent, propose, remediating_agent,
    remediation_status, sign_in_root, stored_events, webhook_target, WebhookTarget,
};
use support::process::{Deployment, ZenProcess};
use support::ZenUnderTest;

const SENDERS: usize = 32;
const AGENTS: usize = 4;
const BATCH_EVENTS: usize = 10;
const LOAD: Duration = Duration::from_secs(20);
const KILL_EVERY: Duration = Duration::from_secs(3);

/// One delivery, signed once: every retry sends exactly these bytes.
struct Delivery {
    nonce: String,
    timestamp: String,
    signature: String,
    body: String,
}

fn delivery(secret: &str, nonce: String) -> Delivery {
    use hmac::{KeyInit, Mac};
    let body = json!({ "alert": nonce }).to_string();
    let timestamp = chrono::Utc::now().timestamp();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{nonce}.").as_bytes());
    mac.update(body.as_bytes());
    Delivery {
        signature: hex::encode(mac.finalize().into_bytes()),
        timestamp: timestamp.to_string(),
        nonce,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_loses_no_acknowledged_delivery() {
    // Remediation dispatch on quick timings, so that a dispatch lost with a killed replica is
    // sent again within the run.
    for (name, value) in [
        ("ZEN_REMEDIATION_POLL_MS", "100"),
        ("ZEN_REMEDIATION_BACKOFF_BASE_MS", "300"),
        ("ZEN_REMEDIATION_BACKOFF_MAX_MS", "1000"),
        ("ZEN_REMEDIATION_SWEEP_MS", "200"),
    ] {
        std::env::set_var(name, value);
    }
    let Some(Deployment {
        replicas,
        replica_args: replica,
        database,
    }) = Deployment::start(3, &[]).await
    else {
        return;
    };
    let [first, second, victim]: [ZenProcess; 3] = replicas.try_into().ok().unwrap();
    let WebhookTarget {
        http,
        tenant_id,
        source_id,
        secret,
        ..
    } = webhook_target(&first, "kill9", json!({ "rateLimitPerSecond": 100000 })).await;

    let urls = Arc::new(RwLock::new(vec![
        first.http_url(&format!("/webhooks/{source_id}")),
        second.http_url(&format!("/webhooks/{source_id}")),
        victim.http_url(&format!("/webhooks/{source_id}")),
    ]));
    let grpc = Arc::new(RwLock::new(vec![
        first.grpc_addr,
        second.grpc_addr,
        victim.grpc_addr,
    ]));
    // Delivery nonce -> the event id it was acknowledged with.
    let acknowledged = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    let retries = Arc::new(Mutex::new(0usize));
    let started = Instant::now();
    let senders: Vec<_> = (0..SENDERS)
        .map(|worker| {
            let (urls, acknowledged, retries, secret) = (
                urls.clone(),
                acknowledged.clone(),
                retries.clone(),
                secret.clone(),
            );
            tokio::spawn(async move {
                let client = Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut n = 0usize;
                let mut turn = worker;
                while started.elapsed() < LOAD {
                    n += 1;
                    let d = delivery(&secret, format!("w{worker}-{n}"));
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        turn += 1;
                        let url = {
                            let urls = urls.read().unwrap();
                            urls[turn % urls.len()].clone()
                        };
                        let answer = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("x-timestamp", &d.timestamp)
                            .header("x-nonce", &d.nonce)
                            .header("x-signature", &d.signature)
                            .body(d.body.clone())
                            .send()
                            .await;
                        match answer {
                            Ok(response) if response.status().is_success() => {
                                let answer: Value = response.json().await.unwrap();
                                let id = answer["eventIds"][0].as_str().unwrap().to_owned();
                                acknowledged.lock().unwrap().insert(d.nonce.clone(), id);
                                break;
                            }
                            Ok(response)
                                if response.status().is_server_error()
                                    || response.status() == StatusCode::TOO_MANY_REQUESTS => {}
                            Ok(response) => panic!(
                                "delivery {}: {} {}",
                                d.nonce,
                                response.status(),
                                response.text().await.unwrap_or_default()
                            ),
                            // Connection refused or reset: the replica was killed.
                            Err(_) => {}
                        }
                        *retries.lock().unwrap() += 1;
                        assert!(
                            Instant::now() < deadline,
                            "delivery {} never acknowledged",
                            d.nonce
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();

    let agent_acks = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    let mut agents = Vec::new();
    for agent in 0..AGENTS {
        let cluster = create_cluster(&first, &tenant_id, agent).await;
        let identity = first.agent_identity(&tenant_id, &cluster);
        agents.push(tokio::spawn(run_agent(
            agent,
            identity,
            first.pki().join("ca.crt"),
            grpc.clone(),
            agent_acks.clone(),
            started,
        )));
    }

    // A remediating agent that prefers the replica being killed, and a proposal every 300 ms.
    let agent_grpc = Balancer::start(
        vec![victim.grpc_addr, first.grpc_addr, second.grpc_addr],
        Policy::FirstAvailable,
    )
    .await;
    let token = sign_in_root(&http, &second).await;
    let remediated = create_cluster(&first, &tenant_id, AGENTS).await;
    let agent_dir = enroll_agent(
        &http,
        &second.http_url(""),
        &format!("https://{}", agent_grpc.addr),
        &token,
        &tenant_id,
        &remediated,
    )
    .await;
    let hook_log = agent_dir.path().join("hook.log");
    let executor = tokio::spawn(remediating_agent(agent_dir.path().to_owned()));
    let proposer = {
        let (http, base, token, tenant_id, remediated) = (
            http.clone(),
            second.http_url(""),
            token.clone(),
            tenant_id.clone(),
            remediated.clone(),
        );
        tokio::spawn(async move {
            let mut proposed = vec![];
            while started.elapsed() < LOAD {
                let risk = "RISK_LEVEL_LOW";
                let r = propose(&http, &base, &token, &tenant_id, &remediated, risk).await;
                proposed.push(r["remediationId"].as_str().unwrap().to_owned());
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            proposed
        })
    };

    // The killer: kill -9 the third replica every few seconds and start it again.
    let mut victim = Some(victim);
    let mut kills = 0;
    while started.elapsed() < LOAD {
        tokio::time::sleep(KILL_EVERY).await;
        victim.take().unwrap().kill();
        kills += 1;
        let next = ZenProcess::spawn(&replica).await;
        urls.write().unwrap()[2] = next.http_url(&format!("/webhooks/{source_id}"));
        grpc.write().unwrap()[2] = next.grpc_addr;
        agent_grpc.set_backend(0, next.grpc_addr);
        victim = Some(next);
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let mut agent_retries = 0;
    for agent in agents {
        agent_retries += agent.await.unwrap();
    }
    let agent_acks = std::mem::take(&mut *agent_acks.lock().unwrap());
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    let retries = *retries.lock().unwrap();
    eprintln!(
        "{} deliveries acknowledged ({retries} retries), {} agent events acknowledged \
         ({agent_retries} broken streams), {kills} kills in {:?}",
        acknowledged.len(),
        agent_acks.len(),
        started.elapsed()
    );
    assert!(agent_acks.len() > 100, "the agents ran");
    assert!(agent_retries > 0, "no agent stream was broken by a kill");
    assert!(kills >= 3, "the victim was killed {kills} times");
    assert!(acknowledged.len() > 100, "the load ran");

    // Every remediation ends SUCCEEDED, executed once.
    let proposed = proposer.await.unwrap();
    let base = second.http_url("");
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &proposed {
        loop {
            let status = remediation_status(&http, &base, &token, &tenant_id, id).await;
            if status == "REMEDIATION_STATUS_SUCCEEDED" {
                break;
            }
            assert!(Instant::now() < deadline, "remediation {id} is {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    executor.abort();
    let executions = std::fs::read_to_string(&hook_log).unwrap_or_default();
    drop(agent_dir);
    for id in &proposed {
        assert_eq!(
            executions.matches(id.as_str()).count(),
            1,
            "remediation {id} executed other than once:\n{executions}"
        );
    }
    eprintln!(
        "{} remediations proposed during the kills, each executed once and SUCCEEDED",
        proposed.len()
    );

    // Every acknowledged delivery is stored once, under the id it was acknowledged with.
    let stored = stored_events(&http, &second, &token, &tenant_id, "").await;

    let ids: HashSet<&String> = acknowledged.values().collect();
    assert_eq!(
        ids.len(),
        acknowledged.len(),
        "two deliveries were acknowledged with one event id"
    );
    for (nonce, id) in &acknowledged {
        assert_eq!(
            stored.get(id),
            Some(&1),
            "delivery {nonce} (event {id}) is not stored exactly once"
        );
    }

    let agent_ids: HashSet<&String> = agent_acks.values().collect();
    assert_eq!(
        agent_ids.len(),
        agent_acks.len(),
        "two agent events, one id"
    );
    for (agent_event, id) in &agent_acks {
        assert_eq!(
            stored.get(id),
            Some(&1),
            "agent event {agent_event} (event {id}) is not stored exactly once"
        );
    }
    assert_eq!(
        stored.len(),
        ids.len() + agent_ids.len(),
        "events stored that nobody acknowledged twice over"
    );

    assert_chain_verifies(&http, &second, &token, &tenant_id).await;

    drop(victim);
    first.stop().await;
    second.stop().await;
    database.drop_database().await;
}

/// One agent: batches of events, one at a time, each resent on the next replica until it is
/// acknowledged. It also moves to the next replica every 1.5 s, so every agent keeps coming
/// back to the one that is killed. Returns how many of its streams broke.
async fn run_agent(
    agent: usize,
    (cert, key): (std::path::PathBuf, std::path::PathBuf),
    ca: std::path::PathBuf,
    replicas: Arc<RwLock<Vec<std::net::SocketAddr>>>,
    acks: Arc<Mutex<HashMap<String, String>>>,
    started: Instant,
) -> usize {
    use tokio_stream::StreamExt;
    use zen::proto::zen::ingest::v1 as pb;
    let mut reconnections = 0;
    let mut turn = agent;
    let mut n = 0usize;
    let mut pending: Option<pb::EventBatch> = None;
    'connect: while started.elapsed() < LOAD || pending.is_some() {
        assert!(
            started.elapsed() < LOAD + Duration::from_secs(60),
            "agent {agent} could not deliver its batch"
        );
        turn += 1;
        let addr = {
            let replicas = replicas.read().unwrap();
            replicas[turn % replicas.len()]
        };
        let Ok(channel) = support::connect(addr, &ca, Some((&cert, &key))).await else {
            reconnections += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let hello = pb::ConnectAgentRequest {
            payload: Some(pb::connect_agent_request::Payload::Hello(pb::AgentHello {
                agent_version: "drill".into(),
                ..Default::default()
            })),
        };
        tx.send(hello).await.unwrap();
        let Ok(replies) = pb::ingest_service_client::IngestServiceClient::new(channel)
            .connect_agent(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        else {
            reconnections += 1;
            continue;
        };
        let mut replies = replies.into_inner();
        let connected_at = Instant::now();
        loop {
            if pending.is_none() && connected_at.elapsed() > Duration::from_millis(1500) {
                continue 'connect;
            }
            let batch = match pending.clone() {
                Some(batch) => batch,
                None if started.elapsed() < LOAD => {
                    n += 1;
                    pb::EventBatch {
                        batch_id: format!("a{agent}-b{n}"),
                        events: (0..BATCH_EVENTS)
                            .map(|e| pb::AgentEvent {
                                agent_event_id: format!("a{agent}-b{n}-e{e}"),
                                source: pb::EventSource::Falco as i32,
                                severity: zen::proto::zen::common::v1::Severity::High as i32,
                                r#type: "runtime".into(),
                                title: "shell in container".into(),
                                fingerprint: format!("a{agent}-b{n}-e{e}"),
                                ..Default::default()
                            })
                            .collect(),
                    }
                }
                None => return reconnections,
            };
            pending = Some(batch.clone());
            let request = pb::ConnectAgentRequest {
                payload: Some(pb::connect_agent_request::Payload::EventBatch(batch)),
            };
            if tx.send(request).await.is_err() {
                reconnections += 1;
                continue 'connect;
            }
            let ack = loop {
                match tokio::time::timeout(Duration::from_secs(5), replies.next()).await {
                    Ok(Some(Ok(pb::ConnectAgentResponse {
                        payload: Some(pb::connect_agent_response::Payload::BatchAck(ack)),
                    }))) => break ack,
                    Ok(Some(Ok(_))) => continue,
                    // The stream broke (the replica died) or went quiet: reconnect, resend.
                    _ => {
                        reconnections += 1;
                        continue 'connect;
                    }
                }
            };
            if ack.retry_after.is_some() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let mut acks = acks.lock().unwrap();
            for event in ack.acks {
                assert!(
                    event.outcome == pb::EventOutcome::Accepted as i32
                        || event.outcome == pb::EventOutcome::Duplicate as i32,
                    "agent event {} refused: {}",
                    event.agent_event_id,
                    event.reason
                );
                acks.insert(event.agent_event_id, event.event_id);
            }
            pending = None;
        }
    }
    reconnections
}

/// Senders that hang up right after sending a delivery's body, before the answer (cut at
/// different moments): every such delivery, sent again as a provider would, is answered 2xx,
/// and each ends up stored exactly once — either the first attempt was stored and the resend
/// is its duplicate, or it was not stored and the resend stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sender_that_hangs_up_mid_request_loses_nothing() {
    use tokio::io::AsyncWriteExt;
    const DELIVERIES: usize = 200;
    let zen = ZenProcess::spawn(&["--local-login".into(), "true".into()]).await;
    let WebhookTarget {
        http,
        token,
        tenant_id,
        source_id,
        secret,
    } = webhook_target(&zen, "hangups", json!({ "rateLimitPerSecond": 100000 })).await;
    let path = format!("/webhooks/{source_id}");
    let deliveries: Vec<Delivery> = (0..DELIVERIES)
        .map(|n| delivery(&secret, format!("hangup-{n}")))
        .collect();
    for (n, d) in deliveries.iter().enumerate() {
        let mut socket = tokio::net::TcpStream::connect(zen.http_addr).await.unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             x-timestamp: {}\r\nx-nonce: {}\r\nx-signature: {}\r\ncontent-length: {}\r\n\r\n{}",
            zen.http_addr,
            d.timestamp,
            d.nonce,
            d.signature,
            d.body.len(),
            d.body
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        // Hang up at once, or after up to ~10 ms: before, during or after the commit.
        if n % 4 != 0 {
            tokio::time::sleep(Duration::from_micros((n as u64 % 10) * 1000)).await;
        }
        drop(socket);
    }
    // Each sent again, exactly the same.
    let mut acknowledged = HashMap::new();
    for d in &deliveries {
        let response = http
            .post(zen.http_url(&path))
            .header("content-type", "application/json")
            .header("x-timestamp", &d.timestamp)
            .header("x-nonce", &d.nonce)
            .header("x-signature", &d.signature)
            .body(d.body.clone())
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let answer: Value = response.json().await.unwrap();
        acknowledged.insert(
            d.nonce.clone(),
            answer["eventIds"][0].as_str().unwrap().to_owned(),
        );
    }
    let stored = stored_events(&http, &zen, &token, &tenant_id, "").await;
    assert_eq!(stored.len(), DELIVERIES, "one event per delivery");
    for (nonce, id) in &acknowledged {
        assert_eq!(stored.get(id), Some(&1), "delivery {nonce}");
    }
    zen.stop().await;
}
