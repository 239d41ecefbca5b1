//! WebSocket delivery of server-streaming methods.
//!
//! Protocol (see docs/GATEWAY.md): the client upgrades a GET on the method's route; the query
//! string fills the request as usual. The bearer token comes from the subprotocol list
//! (`Sec-WebSocket-Protocol: bearer, <token>`; the server selects `bearer`), from an
//! `Authorization` header (non-browser clients), or from the first text message
//! `{"authorization": "Bearer <token>"}` within the auth timeout. Each stream message is sent as
//! one JSON text frame. The server pings every ping interval. A client that does not keep up
//! (the bounded send buffer stays full for the grace period) is closed with 1008. The end of the stream closes with
//! 1000; a gRPC error sends `{"error": <problem>}` and closes with 4000 + the HTTP status and
//! the problem JSON (cut to 123 bytes) as the reason.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::request::Parts;
use prost_reflect::DynamicMessage;
use tokio::sync::{mpsc, Notify};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Code;

use crate::handler::{metadata, open_stream};
use crate::problem::Problem;
use crate::routes::Route;
use crate::template::Captures;
use crate::transcode::{self, Input};
use crate::Inner;

/// Close code for a client that does not read fast enough (policy violation).
pub const CLOSE_SLOW_CONSUMER: u16 = 1008;

pub(crate) fn is_upgrade(parts: &Parts) -> bool {
    parts
        .headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The token offered as `Sec-WebSocket-Protocol: bearer, <token>`.
fn protocol_token(parts: &Parts) -> Option<String> {
    let offered: Vec<String> = parts
        .headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    let at = offered
        .iter()
        .position(|p| p.eq_ignore_ascii_case("bearer"))?;
    offered.get(at + 1).cloned().filter(|t| !t.is_empty())
}

pub(crate) async fn upgrade(
    gw: Arc<Inner>,
    route: Route,
    captures: Captures,
    mut parts: Parts,
    request_id: String,
) -> Result<Response, Problem> {
    let message = transcode::build_request(
        &route,
        Input {
            captures,
            query: parts.uri.query(),
            headers: &parts.headers,
            body: Bytes::new(),
        },
        &gw.behaviors,
    )?;
    let mut md = metadata(&parts, &request_id);
    let token = protocol_token(&parts);
    if let Some(token) = &token {
        if let Ok(v) = MetadataValue::try_from(format!("Bearer {token}").as_str()) {
            md.insert("authorization", v);
        }
    }
    let needs_auth = !route.info.public && !md.contains_key("authorization");
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|rejection| {
            Problem::new(
                Code::InvalidArgument,
                format!("bad WebSocket upgrade: {}", rejection.body_text()),
            )
            .with_type("bad-websocket-upgrade")
        })?;
    let upgrade = if token.is_some() {
        upgrade.protocols(["bearer"])
    } else {
        upgrade
    };
    // With the credentials in hand, the call is opened before the upgrade, so a refusal to
    // retry later (a watcher limit: 429, a dependency down: 503) is an ordinary HTTP answer
    // with `Retry-After` and costs no socket. Other refusals follow the upgrade as frames, which
    // is all a browser can read.
    let opened = if needs_auth {
        None
    } else {
        match open_stream(&gw, &route, message.clone(), md.clone()).await {
            Err(status) if matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) => {
                return Err(Problem::from_status(&status, Some(&route.method.input())));
            }
            opened => Some(opened),
        }
    };
    Ok(upgrade
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| session(gw, route, message, md, opened, socket))
        .into_response())
}

enum Out {
    /// A message and its share of the byte budget, returned once it is written.
    Message(String, tokio::sync::OwnedSemaphorePermit),
    End(Option<Box<Problem>>),
}

fn close_frame(code: u16, reason: &str) -> Message {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..cut].to_owned().into(),
    }))
}

/// The problem as a close frame: code 4000 + HTTP status; the reason is the problem JSON
/// abridged to its most useful members first (`code`, `status`, `reason`, `detail`) and cut
/// to the 123 bytes a close reason may hold. The full problem precedes it as a text frame.
fn problem_close(problem: &Problem) -> Message {
    let code = 4000 + problem.status;
    let mut reason = format!(
        "{{\"code\":{},\"status\":{}",
        serde_json::Value::from(problem.code.clone()),
        problem.status
    );
    if let Some(r) = &problem.reason {
        reason.push_str(&format!(
            ",\"reason\":{}",
            serde_json::Value::from(r.clone())
        ));
    }
    reason.push_str(&format!(
        ",\"detail\":{}}}",
        serde_json::Value::from(problem.detail.clone())
    ));
    close_frame(code, &reason)
}

/// Why a session ended, as counted in `zen_gateway_websocket_closed_total{reason}`.
fn count_close(reason: &'static str) {
    metrics::counter!("zen_gateway_websocket_closed_total", "reason" => reason).increment(1);
}

/// Counts the socket in `zen_gateway_websockets_open` while it lives.
struct OpenSocket;

impl OpenSocket {
    fn new() -> Self {
        metrics::gauge!("zen_gateway_websockets_open").increment(1.0);
        OpenSocket
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        metrics::gauge!("zen_gateway_websockets_open").decrement(1.0);
    }
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;

/// The session's last frame: written within `timeout` or not at all. Never waits longer, so a
/// client that does not read cannot hold the socket (the caller drops it right after).
async fn last_frames(sink: &mut Sink, frames: Vec<Message>, timeout: std::time::Duration) {
    let _ = tokio::time::timeout(timeout, async {
        for frame in frames {
            sink.send(frame).await?;
        }
        sink.flush().await
    })
    .await;
}

async fn session(
    gw: Arc<Inner>,
    route: Route,
    message: DynamicMessage,
    mut md: MetadataMap,
    opened: Option<Result<tonic::Streaming<DynamicMessage>, tonic::Status>>,
    socket: WebSocket,
) {
    let _open = OpenSocket::new();
    let settings = gw.config.websocket.clone();
    let (mut sink, mut incoming) = socket.split();
    let write_timeout = settings.write_timeout;
    let close_timeout = settings.close_timeout;
    let opened = match opened {
        Some(opened) => opened,
        None => {
            let first = tokio::time::timeout(settings.auth_timeout, incoming.next()).await;
            let token = match first {
                Ok(Some(Ok(Message::Text(text)))) => {
                    serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v.get("authorization")?.as_str().map(str::to_owned))
                }
                _ => None,
            };
            match token.and_then(|t| MetadataValue::try_from(t.as_str()).ok()) {
                Some(v) => {
                    md.insert("authorization", v);
                }
                None => {
                    let problem = Problem::new(
                        Code::Unauthenticated,
                        "send {\"authorization\": \"Bearer <token>\"} first",
                    )
                    .with_reason("AUTHENTICATION_REQUIRED");
                    last_frames(
                        &mut sink,
                        vec![error_frame(&problem), problem_close(&problem)],
                        close_timeout,
                    )
                    .await;
                    count_close("unauthenticated");
                    return;
                }
            }
            open_stream(&gw, &route, message, md).await
        }
    };

    let request_desc = route.method.input();
    let mut streaming = match opened {
        Ok(s) => s,
        Err(status) => {
            let problem = Problem::from_status(&status, Some(&request_desc));
            last_frames(
                &mut sink,
                vec![error_frame(&problem), problem_close(&problem)],
                close_timeout,
            )
            .await;
            count_close("refused");
            return;
        }
    };

    let (tx, mut rx) = mpsc::channel::<Out>(settings.send_buffer.max(1));
    // Fired by the reader when the buffer stayed full for the grace period.
    let overflow = Arc::new(Notify::new());
    let grace = settings.slow_consumer_grace;
    let budget_bytes = settings.send_buffer_bytes.clamp(
        1,
        tokio::sync::Semaphore::MAX_PERMITS.min(u32::MAX as usize),
    );
    let budget = Arc::new(tokio::sync::Semaphore::new(budget_bytes));
    let reader = {
        let overflow = overflow.clone();
        tokio::spawn(async move {
            loop {
                match streaming.message().await {
                    Ok(Some(msg)) => {
                        let text = transcode::to_json(&msg).to_string();
                        // Room in the buffer by count and by bytes (a message larger than
                        // the whole budget takes all of it), within the grace period.
                        let cost =
                            u32::try_from(text.len().clamp(1, budget_bytes)).unwrap_or(u32::MAX);
                        let queued = tokio::time::timeout(grace, async {
                            let permit = budget.clone().acquire_many_owned(cost).await.ok()?;
                            tx.send(Out::Message(text, permit)).await.ok()
                        })
                        .await;
                        match queued {
                            Ok(Some(())) => {}
                            Ok(None) => return,
                            Err(_) => {
                                overflow.notify_one();
                                return; // drops the gRPC stream: the call is cancelled
                            }
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Out::End(None)).await;
                        return;
                    }
                    Err(status) => {
                        let problem = Problem::from_status(&status, Some(&request_desc));
                        let _ = tx.send(Out::End(Some(Box::new(problem)))).await;
                        return;
                    }
                }
            }
        })
    };

    let slow = || close_frame(CLOSE_SLOW_CONSUMER, "client too slow: send buffer full");
    let mut ping = tokio::time::interval(settings.ping_interval);
    ping.tick().await;
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    // What ends the session: the frames still worth a try (within `close_timeout`), and why.
    let (last, why): (Vec<Message>, &'static str) = loop {
        let frame = tokio::select! {
            biased;
            _ = overflow.notified() => break (vec![slow()], "slow_consumer"),
            out = rx.recv() => match out {
                Some(Out::Message(text, permit)) => {
                    // The bytes count against the budget until written.
                    held = Some(permit);
                    Message::Text(text.into())
                }
                Some(Out::End(None)) => break (vec![close_frame(1000, "stream ended")], "stream_ended"),
                Some(Out::End(Some(problem))) => {
                    break (vec![error_frame(&problem), problem_close(&problem)], "stream_error")
                }
                None => break (vec![slow()], "slow_consumer"),
            },
            frame = incoming.next() => match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break (Vec::new(), "client_closed"),
                Some(Ok(_)) => continue,
            },
            _ = ping.tick() => Message::Ping(Bytes::new()),
        };
        // A frame that cannot be written within the write timeout drops the client; one that
        // is still blocked when the buffer behind it overflows closes it as too slow.
        tokio::select! {
            biased;
            _ = overflow.notified() => break (vec![slow()], "slow_consumer"),
            written = tokio::time::timeout(write_timeout, sink.send(frame)) => match written {
                Ok(Ok(())) => drop(held.take()),
                Ok(Err(_)) => break (Vec::new(), "write_failed"),
                Err(_) => break (Vec::new(), "write_timeout"),
            },
        }
    };
    // The gRPC stream and everything buffered for this client are released now, not when the
    // last frame is out.
    reader.abort();
    drop(rx);
    if !last.is_empty() {
        last_frames(&mut sink, last, close_timeout).await;
    }
    count_close(why);
    // Dropping both halves closes the TCP connection, whatever the client still has unread.
}

fn error_frame(problem: &Problem) -> Message {
    let json = serde_json::json!({ "error": problem });
    Message::Text(json.to_string().into())
}
