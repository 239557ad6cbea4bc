//! Realtime API: WebSockets under /v1 bridged to the upstream with the same authentication,
//! frames passed through byte-exact, close codes carried both ways, the official SDK working.

mod common;

use std::time::{Duration, Instant};

use awc::ws::{CloseCode, CloseReason, Frame, Message};
use common::mock::Mock;
use common::*;
use futures_util::{SinkExt, StreamExt};

type Conn = actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>;

async fn next_data(conn: &mut Conn) -> Frame {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), conn.next()).await {
            Ok(Some(Ok(Frame::Ping(_)))) | Ok(Some(Ok(Frame::Pong(_)))) => continue,
            Ok(Some(Ok(frame))) => return frame,
            other => panic!("no frame: {other:?}"),
        }
    }
}

fn ws_url(proxy: &Proxy) -> String {
    format!("ws://{}/v1/realtime?model=gpt-realtime", proxy.addr)
}

async fn round_trip(conn: &mut Conn) {
    match next_data(conn).await {
        Frame::Text(t) => assert!(String::from_utf8_lossy(&t).contains("session.created")),
        other => panic!("expected session.created, got {other:?}"),
    }
    conn.send(Message::Text("hello realtime".into()))
        .await
        .unwrap();
    assert_eq!(next_data(conn).await, Frame::Text("hello realtime".into()));
    let audio = pattern_chunk(7, 200_000);
    conn.send(Message::Binary(audio.clone())).await.unwrap();
    match next_data(conn).await {
        Frame::Binary(echoed) => assert!(echoed == audio, "binary frame changed in transit"),
        other => panic!(
            "expected the binary echo, got a {:?} frame",
            std::mem::discriminant(&other)
        ),
    }
}

#[actix_web::test]
async fn header_auth_round_trips_frames_with_the_upstream_key() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let (res, mut conn) = awc::Client::new()
        .ws(ws_url(&proxy))
        .max_frame_size(1 << 20)
        .bearer_auth(TOKEN)
        .header("OpenAI-Beta", "realtime=v1")
        .connect()
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    round_trip(&mut conn).await;
    let seen = mock.state.last_request();
    assert_eq!(seen.path, "/v1/realtime");
    assert_eq!(seen.query, "model=gpt-realtime");
    assert_eq!(seen.header("openai-beta"), Some("realtime=v1"));
    assert_key_sent_not_token(&seen);
}

#[actix_web::test]
async fn subprotocol_auth_strips_the_token_and_negotiates_a_valid_protocol() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let token_protocol = format!("openai-insecure-api-key.{TOKEN}");
    let (res, mut conn) = awc::Client::new()
        .ws(ws_url(&proxy))
        .max_frame_size(1 << 20)
        .protocols([
            "realtime",
            token_protocol.as_str(),
            "openai-beta.realtime-v1",
        ])
        .connect()
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    assert_eq!(
        res.headers().get("sec-websocket-protocol").unwrap(),
        "realtime"
    );
    round_trip(&mut conn).await;
    let seen = mock.state.last_request();
    let offered: Vec<&str> = seen
        .header("sec-websocket-protocol")
        .unwrap()
        .split(',')
        .map(str::trim)
        .collect();
    assert_eq!(offered, ["realtime", "openai-beta.realtime-v1"]);
    assert_key_sent_not_token(&seen);
}

#[actix_web::test]
async fn wrong_token_is_refused_before_the_upgrade() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    for attempt in [
        awc::Client::new()
            .ws(ws_url(&proxy))
            .bearer_auth("wrong-token-000000000"),
        awc::Client::new()
            .ws(ws_url(&proxy))
            .protocols(["realtime", "openai-insecure-api-key.wrong-token-00000"]),
        awc::Client::new().ws(ws_url(&proxy)),
    ] {
        match attempt.connect().await {
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
                assert_eq!(status, 401)
            }
            other => panic!("expected 401, got {:?}", other.map(|(r, _)| r.status())),
        }
    }
    assert!(mock.state.requests.lock().unwrap().is_empty());
}

#[actix_web::test]
async fn close_codes_travel_both_ways() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let connect = || {
        awc::Client::new()
            .ws(ws_url(&proxy))
            .bearer_auth(TOKEN)
            .connect()
    };
    // Upstream closes: the client sees its code and reason.
    let (_, mut conn) = connect().await.unwrap();
    next_data(&mut conn).await;
    conn.send(Message::Text("close-me".into())).await.unwrap();
    match next_data(&mut conn).await {
        Frame::Close(Some(reason)) => {
            assert_eq!(u16::from(reason.code), 4000);
            assert_eq!(reason.description.as_deref(), Some("bye"));
        }
        other => panic!("expected close 4000, got {other:?}"),
    }

    // Client closes: the upstream sees its code.
    let (_, mut conn) = connect().await.unwrap();
    next_data(&mut conn).await;
    conn.send(Message::Close(Some(CloseReason::from(CloseCode::Normal))))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.state.ws_close.lock().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the upstream never saw the close: {}",
            proxy.logs()
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*mock.state.ws_close.lock().unwrap(), Some(1000));
}

#[actix_web::test]
async fn unreachable_upstream_is_a_clean_http_error() {
    let base = format!("http://127.0.0.1:{}/v1", closed_port());
    let proxy = Proxy::start(&base, &[]);
    let started = Instant::now();
    match awc::Client::new()
        .ws(ws_url(&proxy))
        .bearer_auth(TOKEN)
        .connect()
        .await
    {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => assert_eq!(status, 502),
        other => panic!("expected 502, got {:?}", other.map(|(r, _)| r.status())),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn official_python_sdk_realtime_client_connects_through_the_proxy() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    run_sdk_script("realtime.py", &proxy, TOKEN, "realtime checks passed");
    let seen = mock.state.last_request();
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
}

#[actix_web::test]
async fn more_sessions_than_awcs_default_pool_limit_are_held() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[("PROXY__SERVER__WORKERS", "1")]);
    let mut sessions = Vec::new();
    // awc's connector caps a client at 100 connections unless told otherwise.
    for _ in 0..130 {
        let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        conn.write_all(
            format!(
                "GET /v1/realtime?model=x HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                bearer()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        sessions.push(conn);
    }
    for (i, conn) in sessions.iter_mut().enumerate() {
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut head))
            .await
            .unwrap_or_else(|_| panic!("session {i} got no answer"))
            .unwrap();
        assert_eq!(&head, b"HTTP/1.1 101", "session {i}");
    }
}

#[actix_web::test]
async fn graceful_shutdown_closes_sessions_with_1001_at_the_end_of_the_grace_period() {
    let mock = Mock::start();
    let mut proxy = Proxy::start(&mock.base(), &[("PROXY__SERVER__SHUTDOWN_GRACE_SECS", "3")]);
    let (_, mut conn) = awc::Client::new()
        .ws(ws_url(&proxy))
        .bearer_auth(TOKEN)
        .connect()
        .await
        .unwrap();
    next_data(&mut conn).await;
    proxy.signal("TERM");
    let signalled = Instant::now();
    // The session keeps working during the grace period.
    conn.send(Message::Text("still here".into())).await.unwrap();
    assert_eq!(next_data(&mut conn).await, Frame::Text("still here".into()));
    let frame = tokio::time::timeout(Duration::from_secs(6), conn.next())
        .await
        .expect("no close frame before the grace period ended");
    match frame {
        Some(Ok(Frame::Close(Some(reason)))) => assert_eq!(reason.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "closed too early"
    );
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("proxy did not exit after the drain");
    assert!(status.success());
}

#[actix_web::test]
async fn session_usage_reaches_the_audit_log() {
    let mock = Mock::start();
    let dir = fresh_dir();
    let proxy = Proxy::start_in(dir.clone(), &mock.base(), &[("AUDIT_LOG", "audit.log")]);
    let (_, mut conn) = awc::Client::new()
        .ws(ws_url(&proxy))
        .bearer_auth(TOKEN)
        .connect()
        .await
        .unwrap();
    next_data(&mut conn).await;
    for _ in 0..2 {
        conn.send(Message::Text(r#"{"type":"response.create"}"#.into()))
            .await
            .unwrap();
        match next_data(&mut conn).await {
            Frame::Text(t) => assert!(String::from_utf8_lossy(&t).contains("response.done")),
            other => panic!("expected response.done, got {other:?}"),
        }
    }
    conn.send(Message::Close(Some(CloseCode::Normal.into())))
        .await
        .unwrap();
    let _ = conn.next().await;
    drop(conn);
    let log = dir.join("audit.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("/v1/realtime")) {
            break serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no audit line for the session: {text}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["status"], 101);
    assert_eq!(line["stream"], true);
    assert_eq!(
        line["total_tokens"], 14,
        "two response.done events of 7 tokens: {line}"
    );
    assert_eq!(line["prompt_tokens"], 6);
}
