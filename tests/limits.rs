//! Per-client limits: requests per minute and concurrent requests refused with OpenAI's 429
//! shape and headers, streams and sessions holding their slot until they end, and the
//! official SDK raising RateLimitError.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::mock::Mock;
use common::*;

const LIMITED: &str = "token-for-the-limited-client-77";

fn start(mock: &Mock, client_limits: &str) -> Proxy {
    let dir = fresh_dir();
    std::fs::write(
        dir.join("clients.toml"),
        format!(
            "[[clients]]\nname = \"limited\"\ntoken_sha256 = \"{}\"\n{client_limits}\n",
            sha256_hex(LIMITED)
        ),
    )
    .unwrap();
    Proxy::start_in(dir, &mock.base(), &[("CLIENTS_FILE", "clients.toml")])
}

fn get(proxy: &Proxy, token: &str) -> String {
    raw_http(
        proxy.addr,
        &format!(
            "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    )
}

fn header<'a>(res: &'a str, name: &str) -> Option<&'a str> {
    res.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn requests_per_minute_refuse_exactly_past_the_limit() {
    let mock = Mock::start();
    let proxy = start(&mock, "requests_per_minute = 3");
    for i in 0..3 {
        assert_eq!(status_of(&get(&proxy, LIMITED)), 200, "request {i}");
    }
    let refused = get(&proxy, LIMITED);
    assert_eq!(status_of(&refused), 429, "{refused}");
    let json = assert_openai_error(body_of(&refused).as_bytes(), "rate_limit_exceeded");
    assert_eq!(json["error"]["type"], "rate_limit_exceeded");
    assert_eq!(header(&refused, "retry-after"), Some("20"));
    assert_eq!(header(&refused, "x-ratelimit-limit-requests"), Some("3"));
    assert_eq!(
        header(&refused, "x-ratelimit-remaining-requests"),
        Some("0")
    );
    assert!(header(&refused, "x-ratelimit-reset-requests").is_some_and(|v| v.ends_with('s')));
    assert_eq!(
        mock.state.requests.lock().unwrap().len(),
        3,
        "a refused request went upstream"
    );
    // Other clients are not affected.
    assert_eq!(status_of(&get(&proxy, TOKEN)), 200);
}

#[test]
fn concurrency_counts_a_stream_until_it_ends() {
    use std::io::{Read, Write};
    let mock = Mock::start();
    let proxy = start(&mock, "max_concurrent = 1");
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    write!(
        stream,
        "GET /v1/sse?n=5&gap_ms=100 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {LIMITED}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 64];
    stream.read_exact(&mut first).unwrap();
    let refused = get(&proxy, LIMITED);
    assert_eq!(status_of(&refused), 429, "{refused}");
    assert_eq!(header(&refused, "retry-after"), Some("1"));
    assert_openai_error(body_of(&refused).as_bytes(), "rate_limit_exceeded");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    // The slot is free once the stream has ended.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(status_of(&get(&proxy, LIMITED)), 200);
}

#[test]
fn official_python_sdk_raises_rate_limit_error() {
    let mock = Mock::start();
    let proxy = start(&mock, "requests_per_minute = 1");
    run_sdk_script("rate_limit.py", &proxy, LIMITED, "rate limit checks passed");
}

#[actix_web::test]
async fn a_realtime_session_holds_a_concurrency_slot() {
    let mock = Mock::start();
    let proxy = start(&mock, "max_concurrent = 1");
    let url = format!("ws://{}/v1/realtime?model=gpt-realtime", proxy.addr);
    let (_, session) = awc::Client::new()
        .ws(url.as_str())
        .bearer_auth(LIMITED)
        .connect()
        .await
        .unwrap();
    match awc::Client::new()
        .ws(url.as_str())
        .bearer_auth(LIMITED)
        .connect()
        .await
    {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => assert_eq!(status, 429),
        other => panic!("expected 429, got {:?}", other.map(|(r, _)| r.status())),
    }
    drop(session);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match awc::Client::new()
            .ws(url.as_str())
            .bearer_auth(LIMITED)
            .connect()
            .await
        {
            Ok(_) => break,
            Err(_) if std::time::Instant::now() < deadline => {
                actix_web::rt::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the slot was never released: {e}"),
        }
    }
}

#[test]
fn tokens_per_minute_are_charged_from_usage_json_and_streams() {
    let mock = Mock::start();
    let proxy = start(&mock, "tokens_per_minute = 10");
    let chat = |stream: bool| {
        let body = if stream {
            r#"{"model":"gpt-4o-mini","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#
        } else {
            r#"{"model":"gpt-4o-mini","messages":[]}"#
        };
        let res = raw_http(
            proxy.addr,
            &format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {LIMITED}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        // The charge lands just after the body ends.
        std::thread::sleep(Duration::from_millis(100));
        res
    };
    // 9 tokens (JSON usage): the window still has room.
    assert_eq!(status_of(&chat(false)), 200);
    // 10 more (the stream's usage chunk): now past the window.
    assert_eq!(status_of(&chat(true)), 200);
    let refused = chat(false);
    assert_eq!(status_of(&refused), 429, "{refused}");
    assert_openai_error(body_of(&refused).as_bytes(), "rate_limit_exceeded");
    assert_eq!(header(&refused, "x-ratelimit-limit-tokens"), Some("10"));
    assert_eq!(header(&refused, "x-ratelimit-remaining-tokens"), Some("0"));
    assert!(header(&refused, "retry-after").is_some());
}
