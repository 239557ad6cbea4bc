//! Limits shared through a real Redis server: three proxies enforce one request rate together,
//! and a Redis outage falls back as configured without any request hanging.
//!
//! Needs `redis-server` on PATH (.ci/run installs it); a missing binary fails the test.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mock::Mock;
use common::*;

const LIMITED: &str = "token-for-the-shared-limit-client";

struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = closed_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is needed for this test (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proxy(mock: &Mock, redis_url: &str, fail_mode: &str) -> Proxy {
    proxy_with(mock, redis_url, fail_mode, "requests_per_minute = 6")
}

fn proxy_with(mock: &Mock, redis_url: &str, fail_mode: &str, limits: &str) -> Proxy {
    let dir = fresh_dir();
    std::fs::write(
        dir.join("clients.toml"),
        format!(
            "[[clients]]\nname = \"shared\"\ntoken_sha256 = \"{}\"\n{limits}\n",
            sha256_hex(LIMITED)
        ),
    )
    .unwrap();
    Proxy::start_in(
        dir,
        &mock.base(),
        &[
            ("CLIENTS_FILE", "clients.toml"),
            ("REDIS_URL", redis_url),
            ("PROXY__LIMITS__REDIS_FAIL_MODE", fail_mode),
        ],
    )
}

fn get(proxy: &Proxy) -> u16 {
    status_of(&raw_http(
        proxy.addr,
        &format!(
            "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {LIMITED}\r\nConnection: close\r\n\r\n"
        ),
    ))
}

#[test]
fn three_replicas_enforce_one_limit_and_survive_an_outage() {
    let mut redis = RedisServer::start();
    let mock = Mock::start();
    let replicas: Vec<Proxy> = (0..3)
        .map(|_| proxy(&mock, &redis.url(), "fail_open"))
        .collect();
    let closed = proxy(&mock, &redis.url(), "fail_closed");

    let mut accepted = 0;
    for i in 0..15 {
        match get(&replicas[i % 3]) {
            200 => accepted += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        accepted, 6,
        "three replicas must share one limit of 6 per minute"
    );

    // Redis goes away: no request hangs; fail_open limits locally, fail_closed refuses.
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let started = Instant::now();
    let statuses: Vec<u16> = (0..4).map(|_| get(&replicas[0])).collect();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "requests waited on a dead Redis"
    );
    assert_eq!(
        statuses[0], 200,
        "fail_open must fall back to the local limiter: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let res = raw_http(
        closed.addr,
        &format!(
            "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {LIMITED}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status_of(&res), 503, "{res}");
    assert_openai_error(body_of(&res).as_bytes(), "limits_unavailable");
    assert!(
        replicas[0].has_logged("Redis limits store unavailable"),
        "{}",
        replicas[0].logs()
    );
}

#[test]
fn an_invalid_redis_url_stops_startup() {
    let out = run_to_exit(&[
        ("SERVICE_TOKEN", TOKEN),
        ("OPENAI_API_KEY", KEY),
        ("REDIS_URL", "not-a-redis-url"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("REDIS_URL"));
}

#[test]
fn token_windows_are_shared_through_redis() {
    let redis = RedisServer::start();
    let mock = Mock::start();
    let a = proxy_with(&mock, &redis.url(), "fail_open", "tokens_per_minute = 10");
    let b = proxy_with(&mock, &redis.url(), "fail_open", "tokens_per_minute = 10");
    let chat = |p: &Proxy| {
        let body = r#"{"model":"gpt-4o-mini","messages":[]}"#;
        let status = status_of(&raw_http(
            p.addr,
            &format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {LIMITED}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        ));
        std::thread::sleep(Duration::from_millis(100));
        status
    };
    // 9 tokens per answer: A then B fill the shared window; A is then refused.
    assert_eq!(chat(&a), 200);
    assert_eq!(chat(&b), 200);
    assert_eq!(chat(&a), 429, "the window is shared, not per replica");
    assert_eq!(chat(&b), 429);
}
