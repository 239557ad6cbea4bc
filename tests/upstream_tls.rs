//! The production path: the upstream over HTTPS, negotiated to HTTP/2 as api.openai.com does,
//! trusted through `UPSTREAM_CA_PATH` (a private CA, as behind an egress TLS proxy).

mod common;

use std::time::{Duration, Instant};

use actix_web::http::Version;
use common::mock::Mock;
use common::pki::{Pki, server_config};
use common::*;
use futures_util::StreamExt;

/// A mock over HTTPS with a certificate for 127.0.0.1 from a fresh CA; the CA's PEM path.
fn tls_mock() -> (Mock, String) {
    let dir = fresh_dir();
    let pki = Pki::new(&dir, "upstream");
    let (cert, key) = pki.issue("upstream", &["127.0.0.1"], false);
    let mock = Mock::start_tls(server_config(&cert, &key));
    (mock, pki.ca_path("upstream").display().to_string())
}

#[actix_web::test]
async fn requests_reach_an_https_upstream_over_http2_with_the_key_in_place_of_the_token() {
    let (mock, ca) = tls_mock();
    let proxy = Proxy::start(&mock.base(), &[("UPSTREAM_CA_PATH", ca.as_str())]);
    let mut res = client()
        .post(proxy.url("/v1/embeddings?x=1"))
        .insert_header(("authorization", bearer()))
        .send_body(r#"{"model":"text-embedding-3-small","input":"hi"}"#)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["path"], "/v1/embeddings");
    assert_eq!(body["query"], "x=1");
    let seen = mock.state.last_request();
    assert_eq!(seen.version, Version::HTTP_2, "ALPN should pick h2");
    assert_key_sent_not_token(&seen);
}

#[actix_web::test]
async fn events_stream_one_by_one_and_uploads_arrive_whole_over_http2() {
    let (mock, ca) = tls_mock();
    let proxy = Proxy::start(&mock.base(), &[("UPSTREAM_CA_PATH", ca.as_str())]);

    let mut res = authorized_get(&proxy, "/v1/sse?n=5&gap_ms=150")
        .no_decompress()
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = res.next().await {
        let chunk = chunk.unwrap();
        arrivals.push(Instant::now());
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let expected: String = (0..5)
        .map(|i| format!("data: {{\"index\":{i}}}\n\n"))
        .collect();
    assert_eq!(text, expected);
    assert_eq!(arrivals.len(), 5, "events were coalesced or split");
    let sent = mock.state.sse_sent.lock().unwrap().clone();
    for (got, sent) in arrivals.iter().zip(&sent) {
        assert!(
            got.duration_since(*sent) < Duration::from_millis(100),
            "an event waited {:?} in the proxy",
            got.duration_since(*sent)
        );
    }

    // 8 MiB with a declared length, streamed through the HTTP/2 upstream connection.
    let size = 8 * 1024 * 1024;
    let body = pattern_chunk(0, size);
    let expected_sha = common::mock::hex(&<sha2::Sha256 as sha2::Digest>::digest(&body));
    let mut res = client()
        .post(proxy.url("/v1/upload"))
        .insert_header(("authorization", bearer()))
        .insert_header(("content-type", "application/octet-stream"))
        .send_body(body)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let got: serde_json::Value = res.json().await.unwrap();
    assert_eq!(got["bytes"], size as u64);
    assert_eq!(got["sha256"], expected_sha);
    assert_eq!(mock.state.last_request().version, Version::HTTP_2);
}

#[actix_web::test]
async fn an_upstream_certificate_from_an_untrusted_ca_is_a_502_not_a_silent_accept() {
    let (mock, _ca) = tls_mock();
    let proxy = Proxy::start(&mock.base(), &[]);
    let mut res = authorized_get(&proxy, "/v1/models").send().await.unwrap();
    assert_eq!(res.status(), 502);
    assert_openai_error(&res.body().await.unwrap(), "upstream_unreachable");
    assert!(mock.state.requests.lock().unwrap().is_empty());
    // The proxy keeps serving.
    let res = client().get(proxy.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[test]
fn an_unusable_ca_bundle_stops_startup_naming_the_setting_and_a_usable_one_is_reported() {
    let dir = fresh_dir();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    for path in ["/nonexistent/ca.pem", empty.to_str().unwrap()] {
        let out = run_to_exit(&[
            ("SERVICE_TOKEN", TOKEN),
            ("OPENAI_API_KEY", KEY),
            ("UPSTREAM_CA_PATH", path),
        ]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("UPSTREAM_CA_PATH"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    // A usable bundle is reported by check-config.
    let (_mock, ca) = tls_mock();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_openai-auth-proxy"))
        .arg("check-config")
        .env_clear()
        .env("SERVICE_TOKEN", TOKEN)
        .env("OPENAI_API_KEY", KEY)
        .env("UPSTREAM_CA_PATH", &ca)
        .current_dir(fresh_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("extra CAs 1"));
}
