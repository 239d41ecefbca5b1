//! A replica drained with SIGTERM under load, behind one address: three `zen serve` processes
//! (the real binary) share one PostgreSQL database and Redis behind a TCP balancer. While
//! signed webhooks arrive round-robin, an agent streams events and a WebSocket watcher follows
//! the tenant, both connected to the third replica, that replica gets SIGTERM:
//!
//! - a delivery it was still receiving (headers read, body not yet sent) is answered 202 and
//!   stored: in-flight requests finish;
//! - its streams end at once rather than at the end of the 20 s grace period: the watcher is
//!   closed and resumes on another replica from its last resume token, the agent gets its
//!   last acks and a goodbye and resends the rest elsewhere; the replica exits 0 well before
//!   the grace period;
//! - afterwards every acknowledged delivery and agent event is stored exactly once, the
//!   watcher saw every stored event exactly once in commit order, and the audit chain
//!   verifies.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Client;
use serde_json::{json, Value};
use support::balancer::{Balancer, Policy};
use support::drill::{
    assert_chain_verifies, enroll_agent, ok, stored_events, webhook_target, zen_hmac, WebhookTarget,
};
use support::process::{Deployment, ZenProcess};
use support::request_id;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SENDERS: usize = 8;
const AGENT_EVENTS: usize = 200;
const LOAD: Duration = Duration::from_secs(6);
const DRAIN_AT: Duration = Duration::from_secs(2);
const GRACE_SECONDS: u64 = 20;

/// What the watcher heard across its connections.
#[derive(Default)]
struct Watched {
    /// (resume token, event id) of every event change, in the order received.
    events: Vec<(i64, String)>,
    /// How each connection ended: the close code, or 0 for a connection that just broke.
    closes: Vec<u16>,
}

/// Follows the tenant's watch through `addr` until `stop`, reconnecting from the last resume
/// token whenever the connection ends, as the console does.
async fn follow_watch(
    addr: std::net::SocketAddr,
    tenant_id: String,
    token: String,
    watched: Arc<Mutex<Watched>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last = 0i64;
    while !*stop.borrow() {
        let url = format!("ws://{addr}/v1/tenants/{tenant_id}/events:watch?resumeToken={last}");
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            format!("bearer, {token}").parse().unwrap(),
        );
        let Ok((mut socket, _)) = tokio_tungstenite::connect_async(request).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stop = stop.clone();
        let close = loop {
            let frame = tokio::select! {
                frame = socket.next() => Some(frame),
                _ = stop.changed() => None,
            };
            let Some(frame) = frame else {
                let _ = socket.close(None).await;
                return;
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    if let Some(event) = message.get("event") {
                        let seq: i64 = message["resumeToken"].as_str().unwrap().parse().unwrap();
                        last = seq;
                        watched
                            .lock()
                            .unwrap()
                            .events
                            .push((seq, event["eventId"].as_str().unwrap().to_owned()));
                    } else if let Some(token) = message["resumeToken"].as_str() {
                        last = token.parse().unwrap_or(last);
                    }
                }
                Some(Ok(Message::Close(frame))) => break frame.map_or(0, |f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break 0,
            }
        };
        watched.lock().unwrap().closes.push(close);
    }
}

/// One delivery signed once: every retry sends exactly these bytes.
struct Delivery {
    nonce: String,
    timestamp: String,
    signature: String,
    body: String,
}

fn signed(secret: &str, nonce: String) -> Delivery {
    let body = json!({ "alert": nonce }).to_string();
    let timestamp = chrono::Utc::now().timestamp();
    Delivery {
        signature: zen_hmac(secret, timestamp, &nonce, body.as_bytes()),
        timestamp: timestamp.to_string(),
        nonce,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_drained_with_sigterm_finishes_in_flight_work_and_its_streams_move_on() {
    let grace = [
        "--shutdown-grace-seconds".to_owned(),
        GRACE_SECONDS.to_string(),
    ];
    let Some(Deployment {
        replicas, database, ..
    }) = Deployment::start(3, &grace).await
    else {
        return;
    };
    let [a, b, mut c]: [ZenProcess; 3] = replicas.try_into().ok().unwrap();
    let WebhookTarget {
        http,
        token,
        tenant_id,
        source_id,
        secret,
    } = webhook_target(&a, "drain", json!({ "rateLimitPerSecond": 100000 })).await;

    // Webhooks round-robin over the three; the agent and the watcher prefer the third replica
    // and fall back to the others once it stops listening.
    let webhooks = Balancer::start(
        vec![a.http_addr, b.http_addr, c.http_addr],
        Policy::RoundRobin,
    )
    .await;
    let http_c_first = Balancer::start(
        vec![c.http_addr, a.http_addr, b.http_addr],
        Policy::FirstAvailable,
    )
    .await;
    let grpc_c_first = Balancer::start(
        vec![c.grpc_addr, a.grpc_addr, b.grpc_addr],
        Policy::FirstAvailable,
    )
    .await;

    // The watcher, from the tenant's first change on.
    let watched = Arc::new(Mutex::new(Watched::default()));
    let (stop_watching, stop) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(follow_watch(
        http_c_first.addr,
        tenant_id.clone(),
        token.clone(),
        watched.clone(),
        stop,
    ));

    // The agent: enrolled through the balancer, fed one event every 25 ms.
    let cluster = ok(http
        .post(http_c_first.url(&format!("/v1/tenants/{tenant_id}/clusters")))
        .bearer_auth(&token)
        .header("X-Request-Id", request_id())
        .json(&json!({ "name": "drained" }))
        .send()
        .await
        .unwrap())
    .await;
    let cluster_id = cluster["cluster"]["clusterId"].as_str().unwrap().to_owned();
    let agent_dir = enroll_agent(
        &http,
        &http_c_first.url(""),
        &format!("https://{}", grpc_c_first.addr),
        &token,
        &tenant_id,
        &cluster_id,
    )
    .await;
    let (mut input, agent_input) = tokio::io::duplex(64 * 1024);
    let agent = tokio::spawn(async move {
        let files = zen::agent::AgentFiles::new(agent_dir.path());
        let options = zen::agent::RunOptions {
            batch_size: 10,
            batch_delay: Duration::from_millis(20),
            follow: false,
        };
        let summary = zen::agent::run(&files, agent_input, options).await;
        drop(agent_dir);
        summary
    });
    let started = Instant::now();
    let feeder = tokio::spawn(async move {
        for i in 0..AGENT_EVENTS {
            let line = json!({
                "id": format!("drain-{i}"),
                "source": "falco",
                "severity": "high",
                "type": "runtime",
                "title": format!("shell in container {i}"),
                "resource": { "kind": "Pod", "namespace": "shop", "name": format!("api-{i}") },
            });
            input
                .write_all(format!("{line}\n").as_bytes())
                .await
                .unwrap();
            tokio::time::sleep(LOAD / AGENT_EVENTS as u32).await;
        }
        // Dropping the input ends it: the agent returns once everything is acknowledged.
    });

    // Signed webhooks round-robin, one connection each, retried unchanged on no answer or 5xx.
    let acknowledged = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    let senders: Vec<_> = (0..SENDERS)
        .map(|worker| {
            let url = webhooks.url(&format!("/webhooks/{source_id}"));
            let (secret, acknowledged) = (secret.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let client = Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut n = 0;
                while started.elapsed() < LOAD {
                    n += 1;
                    let d = signed(&secret, format!("w{worker}-{n}"));
                    let deadline = Instant::now() + Duration::from_secs(20);
                    let event_id = loop {
                        assert!(Instant::now() < deadline, "{} never acknowledged", d.nonce);
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
                            Ok(r) if r.status().is_success() => {
                                let v: Value = r.json().await.unwrap();
                                break v["eventIds"][0].as_str().unwrap().to_owned();
                            }
                            Ok(r) if r.status().is_server_error() => {}
                            Ok(r) => panic!("{}: {}", d.nonce, r.status()),
                            Err(_) => {}
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    };
                    acknowledged.lock().unwrap().insert(d.nonce, event_id);
                }
            })
        })
        .collect();

    // A delivery in flight on the third replica when it is told to stop: headers sent, the
    // body only after the SIGTERM.
    tokio::time::sleep(DRAIN_AT).await;
    let in_flight = signed(&secret, "in-flight".into());
    let mut raw = tokio::net::TcpStream::connect(c.http_addr).await.unwrap();
    raw.write_all(
        format!(
            "POST /webhooks/{source_id} HTTP/1.1\r\nhost: zen\r\ncontent-type: application/json\r\n\
             x-timestamp: {}\r\nx-nonce: {}\r\nx-signature: {}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            in_flight.timestamp,
            in_flight.nonce,
            in_flight.signature,
            in_flight.body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Let the server read the headers and start the handler.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let agent_on_c = c_holds_agent(&c).await;
    c.terminate();
    let terminated = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    raw.write_all(in_flight.body.as_bytes()).await.unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 202"),
        "the delivery in flight at SIGTERM: {answer}"
    );
    let in_flight_event = answer
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|body| serde_json::from_str::<Value>(body).ok())
        .and_then(|v| v["eventIds"][0].as_str().map(str::to_owned))
        .expect("the in-flight delivery's event id");

    let status = c
        .exited(Duration::from_secs(GRACE_SECONDS + 5))
        .await
        .expect("the drained replica exits");
    let drained_in = terminated.elapsed();
    assert!(status.success(), "exit status {status}:\n{}", c.log_tail());
    assert!(
        drained_in < Duration::from_secs(5),
        "the replica took {drained_in:?} to drain: its streams held it until the grace period"
    );

    for sender in senders {
        sender.await.unwrap();
    }
    feeder.await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), agent)
        .await
        .expect("the agent finishes")
        .unwrap()
        .expect("the agent's run");
    assert_eq!(summary.rejected, 0);
    assert_eq!(
        (summary.accepted + summary.duplicate) as usize,
        AGENT_EVENTS,
        "{summary:?}"
    );

    // Stored exactly once: every agent event, every acknowledged delivery.
    let agent_events = stored_events(
        &http,
        &a,
        &token,
        &tenant_id,
        &format!("clusterId={cluster_id}"),
    )
    .await;
    assert_eq!(agent_events.len(), AGENT_EVENTS);
    assert!(agent_events.values().all(|&n| n == 1), "{agent_events:?}");
    let deliveries = stored_events(
        &http,
        &a,
        &token,
        &tenant_id,
        &format!("webhookSourceId={source_id}"),
    )
    .await;
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    for id in acknowledged.values().chain([&in_flight_event]) {
        assert_eq!(deliveries.get(id), Some(&1), "delivery event {id}");
    }
    assert_eq!(deliveries.len(), acknowledged.len() + 1);

    // The watcher saw every stored event once, in commit order, across its connections.
    let expected: HashSet<String> = agent_events
        .keys()
        .chain(deliveries.keys())
        .cloned()
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    while watched.lock().unwrap().events.len() < expected.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_watching.send(true);
    watcher.await.unwrap();
    let watched = std::mem::take(&mut *watched.lock().unwrap());
    let seen: Vec<&String> = watched.events.iter().map(|(_, id)| id).collect();
    let unique: HashSet<String> = seen.iter().map(|id| (*id).clone()).collect();
    assert_eq!(unique.len(), seen.len(), "an event was delivered twice");
    assert_eq!(unique, expected, "the watcher missed events");
    assert!(
        watched.events.windows(2).all(|w| w[0].0 < w[1].0),
        "resume tokens out of order"
    );
    assert!(
        !watched.closes.is_empty(),
        "the watch on the drained replica never ended"
    );

    eprintln!(
        "drained in {drained_in:?}; agent on the drained replica: {agent_on_c}, {} reconnects; \
         {} deliveries acknowledged; watcher: {} events over {} connections (closes {:?})",
        summary.reconnects,
        acknowledged.len(),
        watched.events.len(),
        watched.closes.len() + 1,
        watched.closes
    );
    assert!(
        agent_on_c,
        "the agent was not connected to the drained replica"
    );
    assert!(
        summary.reconnects >= 1,
        "the agent never moved: {summary:?}"
    );

    assert_chain_verifies(&http, &a, &token, &tenant_id).await;
    drop((webhooks, http_c_first, grpc_c_first));
    a.stop().await;
    b.stop().await;
    database.drop_database().await;
}

/// Whether the replica's `zen_agents_connected` gauge counts an open agent stream.
async fn c_holds_agent(zen: &ZenProcess) -> bool {
    let metrics = reqwest::get(zen.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with("zen_agents_connected"))
        .any(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(1.0))
}
