//! Acceptance 3, 5 and 7, and broken streams: events arrive on time and one by one through the
//! compression middleware, encoded upstream bodies are not re-encoded, a client that leaves
//! cancels the upstream request, and an upstream that dies never looks like a clean end.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::mock::{self, Mock};
use common::*;
use futures_util::StreamExt;

/// Reads an SSE response, noting when each event arrived and how many events each chunk held.
async fn sse_arrivals(
    proxy: &Proxy,
    accept_encoding: Option<&str>,
) -> (Option<String>, Vec<Instant>, Vec<usize>) {
    let mut req = authorized_get(proxy, "/v1/sse?n=10&gap_ms=100");
    match accept_encoding {
        Some(enc) => req = req.insert_header(("accept-encoding", enc)),
        // awc would otherwise announce the codings it can decode.
        None => req = req.no_decompress(),
    }
    let mut res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("x-accel-buffering").unwrap(), "no");
    assert_eq!(res.headers().get("cache-control").unwrap(), "no-cache");
    let encoding = res
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut arrivals = Vec::new();
    let mut per_chunk = Vec::new();
    let mut text = String::new();
    // awc decodes gzip/br chunk by chunk, so arrival times are those of the decoded events.
    while let Some(chunk) = res.next().await {
        let chunk = chunk.unwrap();
        let now = Instant::now();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        let events = chunk.windows(2).filter(|w| w == b"\n\n").count();
        if events > 0 {
            per_chunk.push(events);
            arrivals.extend(std::iter::repeat_n(now, events));
        }
    }
    let expected: String = (0..10)
        .map(|i| format!("data: {{\"index\":{i}}}\n\n"))
        .collect();
    assert_eq!(text, expected);
    (encoding, arrivals, per_chunk)
}

#[actix_web::test]
async fn sse_events_arrive_at_once_and_separately_with_and_without_compression() {
    // Default: event streams are not compressed by the proxy, whatever the client accepts.
    // With server.compress_event_streams, they are, and every event is flushed on its own.
    for (accept, compress_streams, expected_encoding) in [
        (None, "false", None),
        (Some("gzip, br"), "false", None),
        (Some("gzip"), "true", Some("gzip")),
        (Some("br"), "true", Some("br")),
    ] {
        let mock = Mock::start();
        let proxy = Proxy::start(
            &mock.base(),
            &[("PROXY__SERVER__COMPRESS_EVENT_STREAMS", compress_streams)],
        );
        let (encoding, arrivals, per_chunk) = sse_arrivals(&proxy, accept).await;
        assert_eq!(encoding.as_deref(), expected_encoding, "accept {accept:?}");
        let sent = mock.state.sse_sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 10);
        assert_eq!(arrivals.len(), 10);
        assert!(
            per_chunk.iter().all(|&n| n == 1),
            "events were coalesced: {per_chunk:?} ({accept:?})"
        );
        for (i, (sent, arrived)) in sent.iter().zip(&arrivals).enumerate() {
            let delay = arrived.duration_since(*sent);
            assert!(
                delay < Duration::from_millis(100),
                "event {i} took {delay:?} through the proxy ({accept:?})"
            );
        }
    }
}

#[actix_web::test]
async fn small_and_large_json_bodies_follow_the_compression_threshold() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    for bytes in [200, 64 * 1024] {
        let mut res = authorized_get(&proxy, &format!("/v1/download?bytes={bytes}"))
            .insert_header(("accept-encoding", "gzip"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        // octet-stream is never compressed, so this checks the marker never leaks either.
        assert!(res.headers().get("content-encoding").is_none());
        assert_eq!(res.body().limit(1 << 20).await.unwrap().len(), bytes);
    }
    for (size, compressed) in [(100usize, false), (8000, true)] {
        let mut res = client()
            .post(proxy.url("/v1/echo/json"))
            .insert_header(("authorization", bearer()))
            .insert_header(("accept-encoding", "gzip"))
            .insert_header(("x-pad", "p".repeat(size)))
            .send_body("{}")
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let encoding = res
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            encoding.is_some(),
            compressed,
            "{size}-byte header echoed: {encoding:?}"
        );
        let json: serde_json::Value = res.json().limit(1 << 20).await.unwrap();
        assert_eq!(json["path"], "/v1/echo/json");
    }
}

#[actix_web::test]
async fn gzip_from_upstream_is_passed_through_not_double_encoded() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);

    // Client accepts gzip: the upstream's bytes arrive as they are, labelled once.
    let mut res = client()
        .get(proxy.url("/v1/gzip"))
        .no_decompress()
        .insert_header(("authorization", bearer()))
        .insert_header(("accept-encoding", "gzip, br"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("content-encoding").unwrap(), "gzip");
    assert_eq!(res.headers().get_all("content-encoding").count(), 1);
    let body = res.body().await.unwrap();
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, mock::GZIP_JSON);
    assert_eq!(
        mock.state.last_request().header("accept-encoding"),
        Some("gzip, br")
    );

    // Client accepts no gzip but the upstream sent it anyway: the proxy decodes for it.
    let mut res = client()
        .get(proxy.url("/v1/gzip"))
        .no_decompress()
        .insert_header(("authorization", bearer()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("content-encoding").is_none());
    assert_eq!(res.body().await.unwrap(), mock::GZIP_JSON.as_bytes());
}

#[actix_web::test]
async fn media_is_not_recompressed_by_the_proxy() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let mut res = client()
        .get(proxy.url("/v1/audio"))
        .no_decompress()
        .insert_header(("authorization", bearer()))
        .insert_header(("accept-encoding", "gzip"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("content-encoding").is_none(),
        "audio was recompressed"
    );
    assert_eq!(res.body().await.unwrap().len(), 4096);
}

#[actix_web::test]
async fn abandoned_stream_closes_the_upstream_connection() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let mut res = authorized_get(&proxy, "/v1/endless-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut seen = 0;
    while seen < 3 {
        let chunk = res.next().await.unwrap().unwrap();
        seen += chunk.windows(2).filter(|w| w == b"\n\n").count();
    }
    drop(res);
    let left = Instant::now();
    let closed = wait_for(
        || mock.state.dropped_at("endless-stream"),
        Duration::from_secs(5),
    )
    .expect("the upstream stream kept running after the client left");
    let after = closed.duration_since(left);
    assert!(
        after < Duration::from_secs(2),
        "upstream closed {after:?} after the client left"
    );
}

#[test]
fn client_hanging_up_while_waiting_cancels_the_upstream_request() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let mut conn = TcpStream::connect(proxy.addr).unwrap();
    std::io::Write::write_all(
        &mut conn,
        format!(
            "POST /v1/hang HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 2\r\n\r\n{{}}",
            bearer()
        )
        .as_bytes(),
    )
    .unwrap();
    wait_for(
        || (!mock.state.requests.lock().unwrap().is_empty()).then_some(()),
        Duration::from_secs(5),
    )
    .expect("request never reached the mock");
    drop(conn);
    let left = Instant::now();
    let cancelled = wait_for(|| mock.state.dropped_at("hang"), Duration::from_secs(5))
        .expect("the upstream request kept running after the client left");
    let after = cancelled.duration_since(left);
    assert!(
        after < Duration::from_secs(2),
        "upstream cancelled {after:?} after the client left"
    );
}

/// Whether a raw HTTP/1.1 response arrived whole by its own framing. (awc, like the proxy's
/// own upstream client, reports a connection closed mid-body as a clean end, so the client
/// side of these tests reads the bytes itself.)
fn complete_by_framing(raw: &str) -> bool {
    let (head, body) = raw.split_once("\r\n\r\n").expect("no response head");
    let head = head.to_ascii_lowercase();
    if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        return body.len() == len.trim().parse::<usize>().unwrap();
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with("0\r\n\r\n");
    }
    true
}

fn raw_get(proxy: &Proxy, path: &str) -> String {
    raw_http(
        proxy.addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            bearer()
        ),
    )
}

#[test]
fn upstream_breaking_mid_stream_is_not_a_clean_end() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let raw = raw_get(&proxy, "/v1/broken-stream");
    assert_eq!(status_of(&raw), 200);
    assert!(
        raw.contains("data: 1\n\n") && raw.contains("data: 2\n\n"),
        "{raw}"
    );
    assert!(
        !complete_by_framing(&raw),
        "the truncated stream ended like a complete one: {raw:?}"
    );
    // A whole stream does end properly, and the proxy keeps serving.
    let raw = raw_get(&proxy, "/v1/sse?n=2&gap_ms=10");
    assert!(complete_by_framing(&raw), "{raw:?}");
}

fn wait_for<T>(mut probe: impl FnMut() -> Option<T>, within: Duration) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A one-shot raw HTTP upstream that answers every connection with `response` and closes.
fn raw_upstream(response: &'static [u8]) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = std::io::Write::write_all(&mut conn, response);
        }
    });
    format!("http://{addr}/v1")
}

#[test]
fn sized_body_cut_short_is_an_error_but_eof_framed_body_is_complete() {
    let cut = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b");
    let proxy = Proxy::start(&cut, &[]);
    let raw = raw_get(&proxy, "/v1/anything");
    // The head and the ten bytes may still sit in the proxy's write buffer when the upstream
    // error arrives: then the client sees the connection close with no response at all.
    // Either way the body must not look complete.
    assert!(
        raw.is_empty() || (status_of(&raw) == 200 && !complete_by_framing(&raw)),
        "a short sized body looked complete: {raw:?}"
    );

    let eof_framed = raw_upstream(b"HTTP/1.0 200 OK\r\n\r\nthe whole body");
    let proxy = Proxy::start(&eof_framed, &[]);
    let raw = raw_get(&proxy, "/v1/anything");
    assert_eq!(status_of(&raw), 200);
    assert!(
        complete_by_framing(&raw),
        "an EOF-framed body is complete at EOF: {raw:?}"
    );
    assert!(raw.contains("the whole body"), "{raw:?}");
}
