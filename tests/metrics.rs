//! /metrics: Prometheus text that the reference parser accepts, counters that move with the
//! traffic, bounded labels, the optional token, and the separate listener.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::mock::Mock;
use common::*;
use serde_json::Value;

const LIMITED: &str = "token-for-the-metrics-limited-client";

fn parse(text: &str) -> Vec<(String, Value, f64)> {
    let python = std::env::var("OPENAI_SDK_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut child = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/sdk/parse_metrics.py"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the output: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, Value, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    samples
}

fn value(samples: &[(String, Value, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, v)| v)
        .sum()
}

fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    raw_http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
    )
}

#[test]
fn counters_move_with_the_traffic() {
    let mock = Mock::start();
    let dir = fresh_dir();
    std::fs::write(
        dir.join("clients.toml"),
        format!(
            "[[clients]]\nname = \"limited\"\ntoken_sha256 = \"{}\"\nrequests_per_minute = 1\n",
            sha256_hex(LIMITED)
        ),
    )
    .unwrap();
    let proxy = Proxy::start_in(dir, &mock.base(), &[("CLIENTS_FILE", "clients.toml")]);
    assert_eq!(status_of(&get(proxy.addr, "/v1/models", Some(TOKEN))), 200);
    assert_eq!(status_of(&get(proxy.addr, "/v1/models", Some(TOKEN))), 200);
    assert_eq!(status_of(&get(proxy.addr, "/v1/models", None)), 401);
    assert_eq!(
        status_of(&get(proxy.addr, "/v1/sse?n=3&gap_ms=10", Some(TOKEN))),
        200
    );
    assert_eq!(
        status_of(&get(proxy.addr, "/v1/models", Some(LIMITED))),
        200
    );
    assert_eq!(
        status_of(&get(proxy.addr, "/v1/models", Some(LIMITED))),
        429
    );
    assert_eq!(
        status_of(&get(proxy.addr, "/v1/no-such-family", Some(TOKEN))),
        200
    );

    let res = get(proxy.addr, "/metrics", None);
    assert_eq!(status_of(&res), 200, "{res}");
    let samples = parse(body_of(&res));
    let requests = |labels: &[(&str, &str)]| value(&samples, "oap_requests_total", labels);
    assert_eq!(
        requests(&[
            ("client", "default"),
            ("path_group", "models"),
            ("status", "200")
        ]),
        2.0
    );
    assert_eq!(
        requests(&[("client", "-"), ("path_group", "models"), ("status", "401")]),
        1.0
    );
    assert_eq!(requests(&[("client", "limited"), ("status", "429")]), 1.0);
    // /v1/sse and /v1/no-such-family are not OpenAI endpoint families.
    assert_eq!(requests(&[("path_group", "other"), ("status", "200")]), 2.0);
    assert_eq!(
        value(
            &samples,
            "oap_rate_limited_total",
            &[("client", "limited"), ("limit", "requests")]
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "oap_upstream_first_byte_seconds_count", &[]),
        5.0
    );
    assert_eq!(value(&samples, "oap_open_streams", &[]), 0.0);
    assert_eq!(
        value(
            &samples,
            "oap_request_duration_seconds_count",
            &[("path_group", "models")]
        ),
        5.0
    );
    // No secret and no token in any label.
    for (_, labels, _) in &samples {
        let text = labels.to_string();
        assert!(!text.contains(TOKEN) && !text.contains(LIMITED) && !text.contains(KEY));
    }
}

#[test]
fn metrics_token_and_separate_listener() {
    let mock = Mock::start();
    let port = closed_port();
    let bind = format!("127.0.0.1:{port}");
    let proxy = Proxy::start(
        &mock.base(),
        &[
            ("METRICS_TOKEN", "metrics-scraper-token-123"),
            ("PROXY__METRICS__BIND", &bind),
        ],
    );
    // Not on the main listener any more.
    assert_eq!(
        status_of(&get(
            proxy.addr,
            "/metrics",
            Some("metrics-scraper-token-123")
        )),
        404
    );
    let addr: std::net::SocketAddr = bind.parse().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "metrics listener did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(status_of(&get(addr, "/metrics", None)), 401);
    assert_eq!(status_of(&get(addr, "/metrics", Some("wrong"))), 401);
    let ok = get(addr, "/metrics", Some("metrics-scraper-token-123"));
    assert_eq!(status_of(&ok), 200);
    parse(body_of(&ok));
}
