//! The audit log: one JSON line per request with the documented fields and no secrets, the
//! request id returned to the client, and rename-style rotation with SIGHUP.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::mock::Mock;
use common::*;
use serde_json::Value;

fn lines(path: &Path, at_least: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let parsed: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if parsed.len() >= at_least {
            return parsed;
        }
        assert!(
            Instant::now() < deadline,
            "only {} audit lines: {text}",
            parsed.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_line_per_request_with_its_fields_and_no_secrets() {
    let mock = Mock::start();
    let dir = fresh_dir();
    let log = dir.join("audit.log");
    let proxy = Proxy::start_in(dir.clone(), &mock.base(), &[("AUDIT_LOG", "audit.log")]);

    let body = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    let res = raw_http(
        proxy.addr,
        &format!(
            "POST /v1/echo/chat?x=1 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nX-Request-Id: client-req-42\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            bearer(),
            body.len()
        ),
    );
    assert_eq!(status_of(&res), 200);
    assert!(
        res.to_ascii_lowercase()
            .contains("x-proxy-request-id: client-req-42"),
        "{res}"
    );
    let unauthorized = raw_http(
        proxy.addr,
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token-xyz\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&unauthorized), 401);
    let stream = raw_http(
        proxy.addr,
        &format!(
            "GET /v1/sse?n=3&gap_ms=10 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            bearer()
        ),
    );
    assert_eq!(status_of(&stream), 200);

    let records = lines(&log, 3);
    let ok = records
        .iter()
        .find(|r| r["request_id"] == "client-req-42")
        .expect("the 200 line");
    assert_eq!(ok["client"], "default");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["path"], "/v1/echo/chat");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["upstream_request_id"], "req_mock_123");
    assert_eq!(ok["bytes_in"], body.len());
    assert!(ok["bytes_out"].as_u64().unwrap() > 100);
    assert!(ok["ttfb_ms"].as_f64().unwrap() > 0.0);
    assert!(ok["duration_ms"].as_f64().unwrap() >= ok["ttfb_ms"].as_f64().unwrap());
    assert_eq!(ok["stream"], false);
    assert!(ok["error_code"].is_null());
    for field in [
        "ts",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    ] {
        assert!(ok.get(field).is_some(), "missing {field}");
    }
    let refused = records
        .iter()
        .find(|r| r["status"] == 401)
        .expect("the 401 line");
    assert_eq!(refused["client"], "-");
    assert_eq!(refused["error_code"], "invalid_api_key");
    assert!(refused["request_id"].as_str().unwrap().starts_with("oap_"));
    let sse = records
        .iter()
        .find(|r| r["path"] == "/v1/sse")
        .expect("the stream line");
    assert_eq!(sse["stream"], true);

    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [TOKEN, KEY, "wrong-token-xyz"] {
        assert!(!text.contains(secret), "a secret reached the audit log");
    }
}

#[test]
fn sighup_reopens_the_file_after_a_rename() {
    let mock = Mock::start();
    let dir = fresh_dir();
    let log = dir.join("audit.log");
    let proxy = Proxy::start_in(dir.clone(), &mock.base(), &[("AUDIT_LOG", "audit.log")]);
    let get = || {
        status_of(&raw_http(
            proxy.addr,
            &format!(
                "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
                bearer()
            ),
        ))
    };
    assert_eq!(get(), 200);
    lines(&log, 1);
    std::fs::rename(&log, dir.join("audit.log.1")).unwrap();
    proxy.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(), 200);
    assert_eq!(lines(&log, 1).len(), 1, "the new file holds the new line");
    assert_eq!(lines(&dir.join("audit.log.1"), 1).len(), 1);
}

#[test]
fn usage_from_json_gzip_and_streams_reaches_audit_and_metrics() {
    let mock = Mock::start();
    let dir = fresh_dir();
    let log = dir.join("audit.log");
    let proxy = Proxy::start_in(dir.clone(), &mock.base(), &[("AUDIT_LOG", "audit.log")]);
    let post = |body: &str, id: &str| {
        raw_http(
            proxy.addr,
            &format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nX-Request-Id: {id}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                bearer(),
                body.len()
            ),
        )
    };
    assert_eq!(
        status_of(&post(r#"{"model":"gpt-4o-mini","messages":[]}"#, "plain")),
        200
    );
    let streamed = post(
        r#"{"model":"gpt-4o-mini","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#,
        "streamed",
    );
    assert!(
        streamed.contains("\"usage\""),
        "the client asked for the usage chunk: {streamed}"
    );
    let gz = raw_http(
        proxy.addr,
        &format!(
            "GET /v1/gzip-chat HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nX-Request-Id: gz\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
            bearer()
        ),
    );
    assert!(
        gz.to_ascii_lowercase().contains("content-encoding: gzip"),
        "passed through encoded"
    );

    let records = lines(&log, 3);
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap()
            .clone()
    };
    let plain = by_id("plain");
    assert_eq!(
        (
            plain["prompt_tokens"].as_u64(),
            plain["completion_tokens"].as_u64(),
            plain["total_tokens"].as_u64()
        ),
        (Some(5), Some(4), Some(9))
    );
    assert_eq!(plain["model"], "gpt-4o-mini");
    assert_eq!(plain["usage_partial"], false);
    let streamed = by_id("streamed");
    assert_eq!(streamed["total_tokens"], 10);
    assert_eq!(streamed["stream"], true);
    let gz = by_id("gz");
    assert_eq!(gz["total_tokens"], 33);
    assert_eq!(gz["model"], "gpt-4o-2024-08-06");

    let metrics = raw_http(
        proxy.addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        metrics.contains(r#"oap_tokens_total{client="default",model="gpt-4o",kind="prompt"} 22"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"oap_requests_total{client="default",path_group="chat",model="gpt-4o",status="200"} 2"#
        ),
        "{metrics}"
    );
}

#[actix_web::test]
async fn stream_usage_is_requested_for_the_client_and_hidden_from_it() {
    let mock = Mock::start();
    let dir = fresh_dir();
    let log = dir.join("audit.log");
    let proxy = Proxy::start_in(dir.clone(), &mock.base(), &[("AUDIT_LOG", "audit.log")]);
    let with_usage = r#"{"model":"gpt-4o-mini","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#;
    let without = r#"{"model":"gpt-4o-mini","messages":[],"stream":true}"#;
    let fetch = |url: String, body: &'static str, id: &'static str| async move {
        let mut res = client()
            .post(url)
            .insert_header(("authorization", bearer()))
            .insert_header(("content-type", "application/json"))
            .insert_header(("x-request-id", id))
            .send_body(body)
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        String::from_utf8(res.body().await.unwrap().to_vec()).unwrap()
    };
    // What the upstream sends when usage is asked for, fetched from the mock directly.
    let upstream = fetch(
        format!("{}/chat/completions", mock.base()),
        with_usage,
        "direct",
    )
    .await;
    let usage_event = upstream
        .split_inclusive("\n\n")
        .find(|e| e.contains("\"usage\""))
        .expect("the mock sends a usage chunk")
        .to_owned();

    let asked = fetch(proxy.url("/v1/chat/completions"), with_usage, "asked").await;
    assert_eq!(
        asked, upstream,
        "a client that asked gets the stream byte for byte"
    );
    let not_asked = fetch(proxy.url("/v1/chat/completions"), without, "not-asked").await;
    assert_eq!(
        not_asked,
        upstream.replace(&usage_event, ""),
        "a client that did not ask gets the same stream without the usage chunk"
    );

    let records = lines(&log, 2);
    for id in ["asked", "not-asked"] {
        let r = records.iter().find(|r| r["request_id"] == id).unwrap();
        assert_eq!(r["total_tokens"], 10, "{id}: {r}");
        assert_eq!(r["stream"], true);
    }
}

#[actix_web::test]
async fn hiding_the_usage_chunk_delays_no_event() {
    use futures_util::StreamExt;
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let mut res = client()
        .post(proxy.url("/v1/chat/completions"))
        .insert_header(("authorization", bearer()))
        .insert_header(("content-type", "application/json"))
        .send_body(r#"{"model":"gpt-4o-mini","messages":[],"stream":true}"#)
        .await
        .unwrap();
    let mut arrivals = Vec::new();
    while let Some(chunk) = res.next().await {
        let chunk = chunk.unwrap();
        let events = chunk.windows(2).filter(|w| w == b"\n\n").count();
        if events > 0 {
            arrivals.push((Instant::now(), events));
        }
    }
    // role, four words, stop, [DONE]: each on its own, ~20 ms apart as the mock sends them.
    assert_eq!(arrivals.len(), 7, "{arrivals:?}");
    assert!(
        arrivals.iter().all(|(_, n)| *n == 1),
        "events were merged: {arrivals:?}"
    );
    for pair in arrivals.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= Duration::from_millis(10),
            "events were held back"
        );
    }
}

#[test]
fn lines_of_the_last_requests_are_written_before_the_process_exits() {
    let mock = Mock::start();
    let dir = fresh_dir();
    let log = dir.join("audit.log");
    let mut proxy = Proxy::start_in(dir.clone(), &mock.base(), &[("AUDIT_LOG", "audit.log")]);
    // The writer batches lines after a short rest: a burst, then SIGTERM at once, must still
    // leave every line in the file when the process has exited.
    for i in 0..20 {
        let res = raw_http(
            proxy.addr,
            &format!(
                "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nX-Request-Id: last-{i}\r\nConnection: close\r\n\r\n",
                bearer()
            ),
        );
        assert_eq!(status_of(&res), 200);
    }
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    for i in 0..20 {
        assert!(
            text.contains(&format!("\"request_id\":\"last-{i}\"")),
            "line {i} missing: {text}"
        );
    }
}
