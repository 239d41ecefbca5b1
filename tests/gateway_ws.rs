//! The WebSocket watch (`GET /v1/tenants/{tenant_id}/events:watch`) end to end through Zen:
//! a real tungstenite client with the bearer token in `Sec-WebSocket-Protocol`, a cluster agent
//! ingesting over its mTLS `ConnectAgent` stream, and the gateway in front of `WatchEvents`.
//! Two replicas sharing PostgreSQL and Redis deliver an event ingested on one to sockets on
//! both; a client that stops reading is closed with 1008 and, resuming after the last event id
//! it saw, receives the rest (and what was ingested while it was away) once each, in order.

mod support;

use std::time::Duration;

use reqwest::Client;
use serde_json::{json, Value};
use support::{
    create_local_user_as_operator, http_client, request_id, test_redis_url, TestDatabase, TestZen,
    PASSWORD,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tonic::transport::Channel;
use zen::config::{GlobalArgs, ServeArgs};
use zen::proto::zen::common::v1 as common;
use zen::proto::zen::ingest::v1 as pb;
use zen_security::{PeerIdentity, PkiFiles};

type Socket = WebSocketStream<TcpStream>;

fn serve_args() -> ServeArgs {
    ServeArgs {
        local_login: Some(true),
        ..Default::default()
    }
}

async fn json_ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Signs in over REST; returns the access token.
async fn login(http: &Client, zen: &TestZen, username: &str) -> String {
    let body = json_ok(
        http.post(zen.http_url("/auth/local/login"))
            .json(&json!({ "username": username, "password": PASSWORD }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    body["token"]["accessToken"].as_str().unwrap().to_owned()
}

/// A tenant with one cluster, created over REST; returns their ids.
async fn tenant_and_cluster(http: &Client, zen: &TestZen, token: &str) -> (String, String) {
    let tenant = json_ok(
        http.post(zen.http_url("/v1/tenants"))
            .bearer_auth(token)
            .header("X-Request-Id", request_id())
            .json(&json!({ "name": "watched" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let tenant_id = tenant["tenant"]["tenantId"].as_str().unwrap().to_owned();
    let cluster = json_ok(
        http.post(zen.http_url(&format!("/v1/tenants/{tenant_id}/clusters")))
            .bearer_auth(token)
            .header("X-Request-Id", request_id())
            .json(&json!({ "name": "prod" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let cluster_id = cluster["cluster"]["clusterId"].as_str().unwrap().to_owned();
    (tenant_id, cluster_id)
}

/// An agent of the cluster with a certificate signed by the (shared) CA, its stream open.
struct Agent {
    tx: mpsc::Sender<pb::ConnectAgentRequest>,
    replies: tonic::Streaming<pb::ConnectAgentResponse>,
    batches: usize,
}

impl Agent {
    async fn connect(zen: &TestZen, tenant_id: &str, cluster_id: &str) -> Agent {
        let files = PkiFiles::new(zen.pki());
        let name = format!("agent-{cluster_id}");
        let identity = PeerIdentity::Agent {
            tenant_id: tenant_id.parse().unwrap(),
            cluster_id: cluster_id.parse().unwrap(),
        };
        let issued = files
            .load_ca()
            .unwrap()
            .issue_client(&identity, Duration::from_secs(600))
            .unwrap();
        files.write_identity(&name, &issued).unwrap();
        let channel: Channel = support::connect(
            zen.running.grpc_addr,
            &zen.pki().join("ca.crt"),
            Some((&files.cert(&name), &files.key(&name))),
        )
        .await
        .unwrap();
        let (tx, rx) = mpsc::channel(4);
        let hello = pb::connect_agent_request::Payload::Hello(pb::AgentHello {
            agent_version: "test".into(),
            ..Default::default()
        });
        tx.send(pb::ConnectAgentRequest {
            payload: Some(hello),
        })
        .await
        .unwrap();
        let mut replies = pb::ingest_service_client::IngestServiceClient::new(channel)
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
        Agent {
            tx,
            replies,
            batches: 0,
        }
    }

    /// Ingests events `first..last` (titled `ev-00042`; `pad` bytes of details each) in one
    /// batch and waits for its ack: every event accepted, i.e. committed.
    async fn ingest(&mut self, first: usize, last: usize, pad: usize) {
        let events = (first..last)
            .map(|i| pb::AgentEvent {
                agent_event_id: format!("agent-ev-{i}"),
                source: pb::EventSource::Falco as i32,
                severity: common::Severity::High as i32,
                r#type: "runtime".into(),
                title: title(i),
                fingerprint: format!("fp-{i}"),
                details: Some(prost_types::Struct {
                    fields: [(
                        "pad".to_owned(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue("x".repeat(pad))),
                        },
                    )]
                    .into(),
                }),
                ..Default::default()
            })
            .collect();
        self.batches += 1;
        let batch_id = format!("batch-{}", self.batches);
        self.tx
            .send(pb::ConnectAgentRequest {
                payload: Some(pb::connect_agent_request::Payload::EventBatch(
                    pb::EventBatch {
                        batch_id: batch_id.clone(),
                        events,
                    },
                )),
            })
            .await
            .unwrap();
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(30), self.replies.next()).await;
            match reply {
                Ok(Some(Ok(pb::ConnectAgentResponse {
                    payload: Some(pb::connect_agent_response::Payload::BatchAck(ack)),
                }))) => {
                    assert_eq!(ack.batch_id, batch_id);
                    assert_eq!(ack.acks.len(), last - first);
                    assert!(
                        ack.acks
                            .iter()
                            .all(|a| a.outcome == pb::EventOutcome::Accepted as i32),
                        "{ack:?}"
                    );
                    return;
                }
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected an ack, got {other:?}"),
            }
        }
    }
}

fn title(i: usize) -> String {
    format!("ev-{i:05}")
}

/// Opens the tenant's watch on `zen` as a browser does: the token in `Sec-WebSocket-Protocol`.
/// `recv_buffer` shrinks the client's TCP receive buffer, so that a client that stops reading
/// pushes back on the server after a few frames rather than after megabytes.
async fn watch(
    zen: &TestZen,
    tenant_id: &str,
    token: &str,
    query: &str,
    recv_buffer: Option<u32>,
) -> Socket {
    let url = format!(
        "ws://{}/v1/tenants/{tenant_id}/events:watch?{query}",
        zen.running.http_addr
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {token}").parse().unwrap(),
    );
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = socket.connect(zen.running.http_addr).await.unwrap();
    let (socket, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("the watch upgrades");
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "bearer",
        "the server selects the bearer subprotocol"
    );
    socket
}

/// What a watch socket said: the messages in order, then how it closed.
#[derive(Debug, Default)]
struct Heard {
    /// `WatchEventsResponse` JSON of each event change (heartbeats left out).
    events: Vec<Value>,
    /// `(code, reason)` of the close frame, if one came.
    close: Option<(u16, String)>,
}

impl Heard {
    fn titles(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|m| m["event"]["title"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Reads until `want` events have come, the socket closes, or nothing arrives for `quiet`.
async fn listen(socket: &mut Socket, want: usize, quiet: Duration) -> Heard {
    let mut heard = Heard::default();
    while heard.events.len() < want {
        let frame = match tokio::time::timeout(quiet, socket.next()).await {
            Ok(Some(Ok(frame))) => frame,
            _ => break,
        };
        match frame {
            Message::Text(text) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                assert!(message.get("error").is_none(), "{message}");
                assert!(message["resumeToken"].is_string(), "{message}");
                if message.get("event").is_some() {
                    heard.events.push(message);
                }
            }
            Message::Close(frame) => {
                heard.close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                break;
            }
            _ => {}
        }
    }
    heard
}

#[tokio::test]
async fn an_event_ingested_on_one_replica_reaches_websockets_on_both() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let Some(redis_url) = test_redis_url().await else {
        database.drop_database().await;
        return;
    };
    let global = GlobalArgs {
        database_url: Some(database.url.clone()),
        redis_url: Some(redis_url),
        ..Default::default()
    };
    // One public URL: the issuer of both replicas' tokens.
    let serve = ServeArgs {
        public_url: Some("http://zen.replicas.test".into()),
        ..serve_args()
    };
    let a = TestZen::start_with(global.clone(), serve.clone()).await;
    let (mut global_b, mut serve_b) = (global, serve);
    a.share_identity(&mut global_b, &mut serve_b);
    let b = TestZen::start_with(global_b, serve_b).await;

    create_local_user_as_operator(&a, "root", true).await;
    let http = http_client();
    let token = login(&http, &a, "root").await;
    let (tenant_id, cluster_id) = tenant_and_cluster(&http, &a, &token).await;

    // `resumeToken=0`: from the tenant's first change on, so an event committed before the
    // watch has read its starting position is not missed (the tenant has none yet).
    let mut on_b = watch(&b, &tenant_id, &token, "resumeToken=0", None).await;
    let mut on_a = watch(&a, &tenant_id, &token, "resumeToken=0", None).await;
    let mut agent = Agent::connect(&a, &tenant_id, &cluster_id).await;
    agent.ingest(0, 1, 16).await;

    for (replica, socket) in [("B", &mut on_b), ("A", &mut on_a)] {
        let heard = listen(socket, 1, Duration::from_secs(15)).await;
        assert_eq!(heard.titles(), [title(0)], "replica {replica}: {heard:?}");
        let event = &heard.events[0]["event"];
        assert_eq!(event["tenantId"], tenant_id.as_str());
        assert_eq!(event["clusterId"], cluster_id.as_str());
        assert_eq!(event["severity"], "SEVERITY_HIGH");
        assert_eq!(heard.close, None, "replica {replica}: the watch stays open");
    }
    // And the next one too, live, on the replica the agent is not connected to.
    agent.ingest(1, 2, 16).await;
    let heard = listen(&mut on_b, 1, Duration::from_secs(15)).await;
    assert_eq!(heard.titles(), [title(1)], "{heard:?}");

    drop((on_a, on_b, agent));
    b.stop().await;
    a.stop().await;
    database.drop_database().await;
}

/// Three replicas on one database and Redis: a watch on each sees every event exactly once and
/// in commit order (strictly increasing resume tokens), while batches are committed one after
/// another and the watches started before the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_on_three_replicas_see_every_event_once_in_order() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let Some(redis_url) = test_redis_url().await else {
        database.drop_database().await;
        return;
    };
    let global = GlobalArgs {
        database_url: Some(database.url.clone()),
        redis_url: Some(redis_url),
        ..Default::default()
    };
    let serve = ServeArgs {
        public_url: Some("http://zen.replicas.test".into()),
        ..serve_args()
    };
    let a = TestZen::start_with(global.clone(), serve.clone()).await;
    let mut replicas = vec![];
    for _ in 0..2 {
        let (mut global, mut serve) = (global.clone(), serve.clone());
        a.share_identity(&mut global, &mut serve);
        replicas.push(TestZen::start_with(global, serve).await);
    }
    let (b, c) = (replicas.remove(0), replicas.remove(0));

    create_local_user_as_operator(&a, "root", true).await;
    let http = http_client();
    let token = login(&http, &a, "root").await;
    let (tenant_id, cluster_id) = tenant_and_cluster(&http, &b, &token).await;
    let mut sockets = Vec::new();
    for zen in [&a, &b, &c] {
        sockets.push(watch(zen, &tenant_id, &token, "resumeToken=0", None).await);
    }
    const EVENTS: usize = 60;
    let mut agent = Agent::connect(&a, &tenant_id, &cluster_id).await;
    for first in (0..EVENTS).step_by(10) {
        agent.ingest(first, first + 10, 16).await;
    }
    let expected: Vec<String> = (0..EVENTS).map(title).collect();
    for (replica, socket) in ["A", "B", "C"].iter().zip(sockets.iter_mut()) {
        let heard = listen(socket, EVENTS, Duration::from_secs(15)).await;
        assert_eq!(heard.titles(), expected, "replica {replica}");
        let tokens: Vec<i64> = heard
            .events
            .iter()
            .map(|m| m["resumeToken"].as_str().unwrap().parse().unwrap())
            .collect();
        assert!(
            tokens.windows(2).all(|w| w[0] < w[1]),
            "replica {replica}: resume tokens out of order: {tokens:?}"
        );
        // Nothing more: no event twice.
        let more = listen(socket, 1, Duration::from_millis(1500)).await;
        assert!(more.events.is_empty(), "replica {replica}: {more:?}");
    }
    drop((sockets, agent));
    for zen in [c, b, a] {
        zen.stop().await;
    }
    database.drop_database().await;
}

#[tokio::test]
async fn a_slow_client_is_closed_and_resumes_after_its_last_event_exactly_once() {
    let zen = TestZen::start_with(GlobalArgs::default(), serve_args()).await;
    create_local_user_as_operator(&zen, "root", true).await;
    let http = http_client();
    let token = login(&http, &zen, "root").await;
    let (tenant_id, cluster_id) = tenant_and_cluster(&http, &zen, &token).await;
    let mut agent = Agent::connect(&zen, &tenant_id, &cluster_id).await;

    // Events of ~8 KiB: a few fill the socket buffers, then the gateway's send buffer (256
    // messages) fills and stays full past the grace period (2 s).
    const PAD: usize = 8 * 1024;
    const BURST: usize = 600;
    // From the tenant's first change on (`resumeToken=0`), so no event can slip in before the
    // watch has read its starting position.
    let mut socket = watch(&zen, &tenant_id, &token, "resumeToken=0", Some(4096)).await;
    // The first event, read: the watch is live before the burst.
    agent.ingest(0, 1, 16).await;
    let heard = listen(&mut socket, 1, Duration::from_secs(15)).await;
    assert_eq!(heard.titles(), [title(0)], "{heard:?}");
    let mut seen = heard.titles();
    let start = 1;

    // The client stops reading while the burst is ingested, and a little longer.
    for chunk in (start..start + BURST).step_by(100) {
        agent.ingest(chunk, chunk + 100, PAD).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let heard = listen(&mut socket, usize::MAX, Duration::from_secs(20)).await;
    let (code, reason) = heard
        .close
        .clone()
        .expect("a close frame, not a dropped connection");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("too slow"), "{reason}");
    let delivered = heard.events.len();
    assert!(
        delivered > 0 && delivered < BURST,
        "cut short after some events: {delivered}"
    );
    let expected: Vec<String> = (start..start + delivered).map(title).collect();
    assert_eq!(heard.titles(), expected, "a prefix of the burst, in order");
    seen.extend(heard.titles());
    let last_event_id = heard.events.last().unwrap()["event"]["eventId"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(socket);

    // Ingested while no socket was open.
    let end = start + BURST + 40;
    agent.ingest(start + BURST, end, 16).await;

    // Resume after the last event seen: the rest of the burst and the later ones, each once,
    // in order, and nothing more.
    let mut resumed = watch(
        &zen,
        &tenant_id,
        &token,
        &format!("resumeAfterEventId={last_event_id}"),
        None,
    )
    .await;
    let rest = listen(
        &mut resumed,
        end - (start + delivered),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(rest.close, None, "{rest:?}");
    let expected: Vec<String> = (start + delivered..end).map(title).collect();
    assert_eq!(rest.titles(), expected);
    let extra = listen(&mut resumed, 1, Duration::from_secs(2)).await;
    assert!(extra.events.is_empty(), "nothing twice: {extra:?}");
    seen.extend(rest.titles());
    let all: Vec<String> = (0..end).map(title).collect();
    assert_eq!(seen, all, "every event exactly once across the two sockets");

    drop(resumed);
    zen.stop().await;
}
