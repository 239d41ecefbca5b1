//! WebSocket delivery of server-streaming methods, through a real tungstenite client.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{config, start, Harness};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(h: &Harness, query: &str, protocol: Option<&str>) -> (Socket, Option<String>) {
    let url = format!("ws://{}/v1/tenants/t1/things:watch?{query}", h.addr);
    let mut request = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    let selected = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    (socket, selected)
}

/// Reads until the close frame: the JSON text frames and the close (code, reason).
async fn drain(socket: &mut Socket) -> (Vec<Value>, Option<(u16, String)>) {
    let mut texts = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, socket.next()).await {
        match frame {
            Ok(Message::Text(t)) => texts.push(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(frame)) => {
                return (
                    texts,
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                )
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    (texts, None)
}

#[tokio::test]
async fn bearer_subprotocol_delivers_each_message_as_a_text_frame() {
    let h = start(config()).await;
    let (mut socket, selected) =
        connect(&h, "count=3&intervalMs=10", Some("bearer, tok.123")).await;
    assert_eq!(selected.as_deref(), Some("bearer"));
    let (texts, close) = drain(&mut socket).await;
    assert_eq!(
        texts,
        vec![
            json!({"seq": "1", "tenantId": "t1"}),
            json!({"seq": "2", "tenantId": "t1"}),
            json!({"seq": "3", "tenantId": "t1"}),
        ]
    );
    assert_eq!(close.unwrap().0, 1000);
    let call = h.state.last("WatchThings").unwrap();
    assert_eq!(call.metadata["authorization"], "Bearer tok.123");
    assert_eq!(
        call.request,
        json!({"tenantId": "t1", "count": 3, "intervalMs": 10})
    );
}

#[tokio::test]
async fn token_in_first_message_and_auth_timeout() {
    let mut cfg = config();
    cfg.websocket.auth_timeout = Duration::from_millis(300);
    let h = start(cfg).await;
    let (mut socket, selected) = connect(&h, "count=2", None).await;
    assert_eq!(selected, None);
    socket
        .send(Message::Text(
            json!({"authorization": "Bearer first-msg"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let (texts, close) = drain(&mut socket).await;
    assert_eq!(texts.len(), 2);
    assert_eq!(close.unwrap().0, 1000);
    assert_eq!(
        h.state.last("WatchThings").unwrap().metadata["authorization"],
        "Bearer first-msg"
    );

    let before = h.state.count("WatchThings");
    let (mut socket, _) = connect(&h, "count=2", None).await;
    let (texts, close) = drain(&mut socket).await;
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0]["error"]["reason"], "AUTHENTICATION_REQUIRED");
    let (code, reason) = close.unwrap();
    assert_eq!(code, 4401);
    assert!(reason.len() <= 123);
    assert!(reason.contains("UNAUTHENTICATED"));
    assert_eq!(
        h.state.count("WatchThings"),
        before,
        "no call without credentials"
    );
}

#[tokio::test]
async fn grpc_errors_close_with_the_problem() {
    let h = start(config()).await;
    let (mut socket, _) = connect(&h, "count=1&failCode=9", Some("bearer, t")).await;
    let (texts, close) = drain(&mut socket).await;
    assert_eq!(texts.len(), 2);
    assert_eq!(texts[0]["seq"], "1");
    assert_eq!(texts[1]["error"]["code"], "FAILED_PRECONDITION");
    let (code, reason) = close.unwrap();
    assert_eq!(code, 4400, "4000 + the HTTP status");
    assert!(reason.starts_with("{\"code\":\"FAILED_PRECONDITION\",\"status\":400"));
    assert!(reason.len() <= 123);

    // Errors before the upgrade are plain problems.
    let url = format!("ws://{}/v1/tenants/t1/things:watch?bogus=1", h.addr);
    let err = tokio_tungstenite::connect_async(url).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("expected an HTTP error, got {other}"),
    }
}

#[tokio::test]
async fn pings_keep_the_connection_alive() {
    let mut cfg = config();
    cfg.websocket.ping_interval = Duration::from_millis(100);
    let h = start(cfg).await;
    let (mut socket, _) = connect(&h, "count=0&holdOpen=true", Some("bearer, t")).await;
    let frame = tokio::time::timeout(Duration::from_secs(2), socket.next())
        .await
        .expect("a frame in time")
        .unwrap()
        .unwrap();
    assert!(matches!(frame, Message::Ping(_)), "got {frame:?}");
    socket.close(None).await.unwrap();
    // The client leaving cancels the gRPC stream.
    for _ in 0..50 {
        if h.state.stream_cancelled.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.state.stream_cancelled.load(Ordering::SeqCst));
}

#[tokio::test]
async fn slow_clients_are_closed_instead_of_buffered() {
    let mut cfg = config();
    cfg.websocket.send_buffer = 8;
    cfg.websocket.slow_consumer_grace = Duration::from_millis(200);
    // The close frame waits for the client to read again (below, after 2 s).
    cfg.websocket.close_timeout = Duration::from_secs(10);
    let h = start(cfg).await;
    let total = 20_000;
    let (mut socket, _) = connect(
        &h,
        &format!("count={total}&padBytes=4096"),
        Some("bearer, t"),
    )
    .await;
    // Do not read for a while: socket buffers fill, then the gateway's bounded buffer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (texts, close) = drain(&mut socket).await;
    assert!(texts.len() < total, "the stream was cut short");
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, u16::from(CloseCode::Policy));
    assert!(reason.contains("too slow"));
    for _ in 0..50 {
        if h.state.stream_cancelled.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        h.state.stream_cancelled.load(Ordering::SeqCst),
        "the gRPC stream is cancelled"
    );
}
