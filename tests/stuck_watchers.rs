//! Watchers that never read, under webhook load, against the real `zen` binary (real sockets,
//! real mTLS between its gateway and its gRPC front): every one of them is closed within a few
//! seconds of its buffers filling, the server's resident memory comes back to within 32 MiB of
//! where it was before they connected, a watcher that reads receives every accepted event, and
//! the per-caller watcher cap refuses the next watch before the upgrade with a 429 problem
//! naming the limit. Agents that never read their acks hold bounded memory and are closed too.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use support::drill::{create_cluster, deliver, webhook_target, WebhookTarget};
use support::process::ZenProcess;
use support::ZenUnderTest;
use tokio::net::{TcpSocket, TcpStream};
use tokio_stream::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Socket = WebSocketStream<TcpStream>;

const CAP: usize = 200;
/// Deliveries of ~16 KiB each that fill every stuck watcher's buffers several times over.
const MIN_ACCEPTED: usize = 150;

fn watch_request(
    zen: &ZenProcess,
    tenant_id: &str,
    token: &str,
) -> tokio_tungstenite::tungstenite::http::Request<()> {
    let url = format!("ws://{}/v1/tenants/{tenant_id}/events:watch", zen.http_addr);
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {token}").parse().unwrap(),
    );
    request
}

/// A watch whose TCP receive buffer is 4 KiB, so that not reading fills the server's side.
async fn stuck_watch(zen: &ZenProcess, tenant_id: &str, token: &str) -> Socket {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(zen.http_addr).await.unwrap();
    let (socket, _) = tokio_tungstenite::client_async(watch_request(zen, tenant_id, token), stream)
        .await
        .expect("the watch upgrades");
    socket
}

/// Reads what is left; true when the server ended the connection (a close frame, EOF or a
/// reset) rather than leaving it open and quiet for `quiet`.
async fn was_closed(mut socket: Socket, quiet: Duration) -> bool {
    loop {
        match tokio::time::timeout(quiet, socket.next()).await {
            Err(_) => return false,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watchers_that_never_read_are_closed_and_the_cap_refuses_the_next_one() {
    let zen = ZenProcess::spawn(&[
        "--local-login".into(),
        "true".into(),
        "--watch-max-per-caller".into(),
        CAP.to_string(),
        "--http-send-buffer-bytes".into(),
        (64 * 1024).to_string(),
    ])
    .await;
    let WebhookTarget {
        token,
        tenant_id,
        source_id,
        secret,
        ..
    } = webhook_target(&zen, "stuck", json!({})).await;
    // The same load once without watchers first, so that the baseline holds what the load
    // itself keeps (connection pools, caches, the allocator's working set).
    load(&zen, &source_id, &secret, Duration::from_secs(8)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = zen.resident_bytes();

    // One watcher that reads, and CAP - 1 that never do: the caller's whole allowance.
    let (reader, _) = tokio_tungstenite::connect_async(watch_request(&zen, &tenant_id, &token))
        .await
        .unwrap();
    let mut stuck = Vec::new();
    for _ in 0..CAP - 1 {
        stuck.push(stuck_watch(&zen, &tenant_id, &token).await);
    }
    // The next one is refused before the upgrade: 429, Retry-After, the limit named.
    match tokio_tungstenite::connect_async(watch_request(&zen, &tenant_id, &token)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(response.headers().contains_key("retry-after"));
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("WATCHER_LIMIT"), "{body}");
            assert!(body.contains(&format!("at most {CAP}")), "{body}");
        }
        Ok(_) => panic!("watch {} was accepted past the cap of {CAP}", CAP + 1),
        Err(other) => panic!("expected a 429 answer, got {other}"),
    }

    let reader_seen = tokio::spawn(async move {
        let mut reader = reader;
        let mut seen = 0usize;
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_secs(10), reader.next()).await
        {
            if let Message::Text(text) = frame {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message.get("event").is_some() {
                    seen += 1;
                }
            }
        }
        seen
    });

    // Webhooks at full speed for 8 s, each event ~16 KiB so the stuck sockets fill quickly.
    let accepted = load(&zen, &source_id, &secret, Duration::from_secs(8)).await;
    let peak = zen.resident_bytes();
    assert!(
        accepted >= MIN_ACCEPTED,
        "the load ran: {accepted} deliveries"
    );

    // The load is over; closing takes the grace period (2 s) and the close frame's own
    // timeout (2 s) after a socket's buffers fill, which they did early in the load. Every
    // stuck watcher must end rather than sit open and quiet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let closed = futures::future::join_all(
        stuck
            .into_iter()
            .map(|s| was_closed(s, Duration::from_secs(3))),
    )
    .await;
    let still_open = closed.iter().filter(|c| !**c).count();
    assert_eq!(
        still_open,
        0,
        "{still_open} of {} stuck watchers still open",
        CAP - 1
    );

    let seen = reader_seen.await.unwrap();
    assert_eq!(
        seen, accepted,
        "the reading watcher got every accepted event"
    );

    // What the watchers held is released once they are gone (the reading one too, so that the
    // tenant's shared tail and its buffer go with them): resident memory comes back to near
    // where it started. The allocator hands freed pages back to the system lazily, within
    // seconds.
    let closed_at = Instant::now();
    let bound = baseline + 32 * 1024 * 1024;
    let mut after = zen.resident_bytes();
    while after > bound && closed_at.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = zen.resident_bytes();
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "resident memory: {:.1} MiB before the watchers, {:.1} MiB at the end of the load, \
         {:.1} MiB {:.1} s after they were all closed",
        mib(baseline),
        mib(peak),
        mib(after),
        closed_at.elapsed().as_secs_f64()
    );
    assert!(
        after <= bound,
        "resident memory {:.1} MiB, more than 32 MiB above the {:.1} MiB before the watchers",
        mib(after),
        mib(baseline)
    );

    // Their places are free again: a new watch is accepted.
    let (socket, _) = tokio_tungstenite::connect_async(watch_request(&zen, &tenant_id, &token))
        .await
        .expect("a watch after the stuck ones left");
    drop(socket);
    zen.stop().await;
}

/// Signed webhooks from 16 senders at full speed for `duration`, and on until at least
/// `MIN_ACCEPTED` were accepted (at most 30 s: a busy machine stores fewer per second), each
/// event ~16 KiB; returns how many were accepted (202).
async fn load(zen: &ZenProcess, source_id: &str, secret: &str, duration: Duration) -> usize {
    let accepted = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let senders: Vec<_> = (0..16)
        .map(|worker| {
            let (http, zen_url, secret, accepted) = (
                Client::new(),
                zen.http_url(&format!("/webhooks/{source_id}")),
                secret.to_owned(),
                accepted.clone(),
            );
            let tag = uuid::Uuid::new_v4().simple().to_string();
            tokio::spawn(async move {
                let pad = "x".repeat(16 * 1024);
                let mut n = 0;
                while started.elapsed() < duration
                    || (accepted.load(Ordering::Relaxed) < MIN_ACCEPTED
                        && started.elapsed() < Duration::from_secs(30))
                {
                    n += 1;
                    let nonce = format!("{tag}-w{worker}-{n}");
                    let body = json!({ "alert": nonce, "pad": pad }).to_string();
                    let response = deliver(&http, &zen_url, &secret, &nonce, body)
                        .await
                        .unwrap_or_else(|e| panic!("delivery {nonce}: {e:?}"));
                    match response.status() {
                        StatusCode::ACCEPTED => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        // The source's rate limit and backpressure (the tenant's commit
                        // queue full) are answers too; nothing of those was stored.
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                            assert!(response.headers().contains_key("retry-after"));
                        }
                        other => panic!(
                            "delivery {nonce}: {other} {}",
                            response.text().await.unwrap_or_default()
                        ),
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let accepted = accepted.load(Ordering::Relaxed);
    eprintln!("{accepted} deliveries accepted in {:?}", started.elapsed());
    accepted
}

/// Agents that never read what the server sends them (their acks): 10 agent streams on the real
/// binary send event batches as fast as the transport takes them and never read a reply. Each
/// session's 16 outbound messages fill, it stops reading (HTTP/2 flow control then holds the
/// agent back), and after the 2 s grace it is ended as too slow. Resident memory, sampled every
/// second, stays under a ceiling of the baseline + 64 MiB; every session is ended as too slow
/// (`zen_stream_consumers_too_slow_total{stream="agent"}`), none is left connected, and the
/// memory comes back to within 32 MiB of the baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_that_never_read_their_acks_hold_bounded_memory_and_are_closed() {
    use zen::proto::zen::ingest::v1 as pb;
    // The default quota of clusters per tenant.
    const AGENTS: usize = 10;
    let zen = ZenProcess::spawn(&["--local-login".into(), "true".into()]).await;
    let WebhookTarget { tenant_id, .. } = webhook_target(&zen, "agents", json!({})).await;
    let mut identities = vec![];
    for n in 0..AGENTS {
        let cluster = create_cluster(&zen, &tenant_id, n).await;
        identities.push(zen.agent_identity(&tenant_id, &cluster));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = zen.resident_bytes();
    let ceiling = baseline + 64 * 1024 * 1024;

    let ca = zen.pki().join("ca.crt");
    let mut agents = vec![];
    for (n, (cert, key)) in identities.into_iter().enumerate() {
        // A small receive window, as a congested link would have: the transport stops
        // taking the server's acks after a few of them, so the server's queue fills.
        let channel = support::connect_with(zen.grpc_addr, &ca, Some((&cert, &key)), |e| {
            e.initial_stream_window_size(Some(4096))
                .initial_connection_window_size(Some(4096))
        })
        .await
        .expect("the agent connects");
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::ConnectAgentRequest {
            payload: Some(pb::connect_agent_request::Payload::Hello(pb::AgentHello {
                agent_version: "never-reads".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let replies = pb::ingest_service_client::IngestServiceClient::new(channel)
            .connect_agent(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("the stream opens")
            .into_inner();
        // Batches as fast as the stream takes them; the replies are held and never read.
        let sender = tokio::spawn(async move {
            let mut b = 0;
            loop {
                b += 1;
                let batch = pb::EventBatch {
                    batch_id: format!("a{n}-b{b}"),
                    events: (0..100)
                        .map(|e| pb::AgentEvent {
                            agent_event_id: format!("a{n}-b{b}-e{e}"),
                            source: pb::EventSource::Falco as i32,
                            severity: zen::proto::zen::common::v1::Severity::High as i32,
                            r#type: "runtime".into(),
                            title: format!("shell in container {e}"),
                            fingerprint: format!("a{n}-b{b}-e{e}"),
                            ..Default::default()
                        })
                        .collect(),
                };
                let request = pb::ConnectAgentRequest {
                    payload: Some(pb::connect_agent_request::Payload::EventBatch(batch)),
                };
                if tx.send(request).await.is_err() {
                    return;
                }
            }
        });
        agents.push((replies, sender));
    }

    // Resident memory every second while they push.
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut samples = vec![];
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(zen.resident_bytes());
    }
    let peak = *samples.iter().max().unwrap();
    let metrics = reqwest::get(zen.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let too_slow = metric("zen_stream_consumers_too_slow_total{stream=\"agent\"}");
    let connected = metric("zen_agents_connected");
    for (replies, sender) in agents {
        sender.abort();
        drop(replies);
    }
    let closed_at = Instant::now();
    let bound = baseline + 32 * 1024 * 1024;
    let mut after = zen.resident_bytes();
    while after > bound && closed_at.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = zen.resident_bytes();
    }
    eprintln!(
        "{AGENTS} agents that never read: resident memory {:.1} MiB before, every second {:?} \
         MiB, peak {:.1} MiB (ceiling {:.1} MiB), {:.1} MiB after they left; {too_slow} \
         sessions ended as too slow, {connected} still connected",
        mib(baseline),
        samples
            .iter()
            .map(|b| (mib(*b) * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        mib(peak),
        mib(ceiling),
        mib(after)
    );
    assert!(
        peak <= ceiling,
        "resident memory peaked at {:.1} MiB",
        mib(peak)
    );
    assert_eq!(too_slow as usize, AGENTS, "sessions ended as too slow");
    assert_eq!(connected, 0.0, "agent sessions still open");
    assert!(
        after <= bound,
        "resident memory stayed at {:.1} MiB",
        mib(after)
    );
    zen.stop().await;
}
