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

use std::sync::atomic::{AtomicBool, Ordering};
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
    Ok(upgrade
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| session(gw, route, message, md, needs_auth, socket))
        .into_response())
}

enum Out {
    Message(String),
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

async fn session(
    gw: Arc<Inner>,
    route: Route,
    message: DynamicMessage,
    mut md: MetadataMap,
    needs_auth: bool,
    socket: WebSocket,
) {
    let settings = gw.config.websocket.clone();
    let (mut sink, mut incoming) = socket.split();
    let write_timeout = settings.write_timeout;
    if needs_auth {
        let first = tokio::time::timeout(settings.auth_timeout, incoming.next()).await;
        let token = match first {
            Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("authorization")?.as_str().map(str::to_owned)),
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
                let _ = write(&mut sink, error_frame(&problem), write_timeout).await;
                let _ = write(&mut sink, problem_close(&problem), write_timeout).await;
                return;
            }
        }
    }

    let request_desc = route.method.input();
    let mut streaming = match open_stream(&gw, &route, message, md).await {
        Ok(s) => s,
        Err(status) => {
            let problem = Problem::from_status(&status, Some(&request_desc));
            let _ = write(&mut sink, error_frame(&problem), write_timeout).await;
            let _ = write(&mut sink, problem_close(&problem), write_timeout).await;
            return;
        }
    };

    let (tx, mut rx) = mpsc::channel::<Out>(settings.send_buffer.max(1));
    let overflow = Arc::new(Notify::new());
    let overflowed = Arc::new(AtomicBool::new(false));
    let grace = settings.slow_consumer_grace;
    let reader = {
        let overflow = overflow.clone();
        let overflowed = overflowed.clone();
        tokio::spawn(async move {
            loop {
                match streaming.message().await {
                    Ok(Some(msg)) => {
                        let text = transcode::to_json(&msg).to_string();
                        match tx.send_timeout(Out::Message(text), grace).await {
                            Ok(()) => {}
                            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                                overflowed.store(true, Ordering::SeqCst);
                                overflow.notify_one();
                                return; // drops the gRPC stream: the call is cancelled
                            }
                            Err(mpsc::error::SendTimeoutError::Closed(_)) => return,
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

    let mut ping = tokio::time::interval(settings.ping_interval);
    ping.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = overflow.notified() => {
                let _ = write(&mut sink, close_frame(CLOSE_SLOW_CONSUMER, "client too slow: send buffer full"), write_timeout).await;
                break;
            }
            out = rx.recv() => match out {
                Some(Out::Message(text)) => {
                    if overflowed.load(Ordering::SeqCst) {
                        continue;
                    }
                    if !write(&mut sink, Message::Text(text.into()), write_timeout).await {
                        break;
                    }
                }
                Some(Out::End(None)) => {
                    let _ = write(&mut sink, close_frame(1000, "stream ended"), write_timeout).await;
                    break;
                }
                Some(Out::End(Some(problem))) => {
                    let _ = write(&mut sink, error_frame(&problem), write_timeout).await;
                    let _ = write(&mut sink, problem_close(&problem), write_timeout).await;
                    break;
                }
                None => {
                    // The reader stopped because the buffer overflowed.
                    if overflowed.load(Ordering::SeqCst) {
                        let _ = write(&mut sink, close_frame(CLOSE_SLOW_CONSUMER, "client too slow: send buffer full"), write_timeout).await;
                    }
                    break;
                }
            },
            frame = incoming.next() => match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if !write(&mut sink, Message::Ping(Bytes::new()), write_timeout).await {
                    break;
                }
            }
        }
    }
    reader.abort();
    let _ = sink.close().await;
}

/// Sends one frame; false if it failed or took longer than `timeout` (the client is dropped).
async fn write(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    msg: Message,
    timeout: std::time::Duration,
) -> bool {
    matches!(
        tokio::time::timeout(timeout, sink.send(msg)).await,
        Ok(Ok(()))
    )
}

fn error_frame(problem: &Problem) -> Message {
    let json = serde_json::json!({ "error": problem });
    Message::Text(json.to_string().into())
}
