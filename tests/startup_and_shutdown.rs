//! Acceptance 8 and graceful shutdown: the proxy refuses to start without its secrets or with
//! an invalid setting (one clear line, non-zero exit), and on SIGTERM it lets in-flight
//! streams finish, refuses new connections, and exits 0.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::mock::Mock;
use common::*;

fn assert_refuses(env: &[(&str, &str)], setting: &str) {
    let out = run_to_exit(env);
    assert!(!out.status.success(), "started with {env:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(
        lines[0].contains(setting),
        "{setting} not named in: {}",
        lines[0]
    );
    assert!(
        !stderr.contains(TOKEN) && !stderr.contains(KEY),
        "a secret leaked into: {stderr}"
    );
}

#[test]
fn refuses_to_start_without_secrets_or_with_invalid_settings() {
    assert_refuses(&[("OPENAI_API_KEY", KEY)], "SERVICE_TOKEN");
    assert_refuses(&[("SERVICE_TOKEN", TOKEN)], "OPENAI_API_KEY");
    assert_refuses(
        &[("SERVICE_TOKEN", ""), ("OPENAI_API_KEY", KEY)],
        "SERVICE_TOKEN",
    );
    let ok = [("SERVICE_TOKEN", TOKEN), ("OPENAI_API_KEY", KEY)];
    for (extra, setting) in [
        (("OPENAI_BASE_URL", "not a url"), "OPENAI_BASE_URL"),
        (("BIND_PORT", "http"), "BIND_PORT"),
        (("TLS_CERT_PATH", "/tmp/cert.pem"), "TLS_KEY_PATH"),
        (
            ("PROXY__UPSTREAM__CONNECT_TIMEOUT_SECS", "soon"),
            "connect_timeout_secs",
        ),
    ] {
        let mut env = ok.to_vec();
        env.push(extra);
        assert_refuses(&env, setting);
    }
}

#[test]
fn dotenv_file_is_read_and_the_environment_wins() {
    let mock = Mock::start();
    let dir = fresh_dir();
    std::fs::write(
        dir.join(".env"),
        format!(
            "SERVICE_TOKEN={TOKEN}\nOPENAI_API_KEY=from-dotenv\nOPENAI_BASE_URL={}\n",
            mock.base()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_openai-auth-proxy"))
        .env_clear()
        .current_dir(&dir)
        .env("OPENAI_API_KEY", KEY)
        .env("BIND_ADDR", "127.0.0.1")
        .env("BIND_PORT", closed_port().to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut first = [0u8; 512];
    let n = stderr.read(&mut first).unwrap();
    let line = String::from_utf8_lossy(&first[..n]).to_string();
    let addr = line
        .split("listening on http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("did not start: {line}"))
        .to_owned();
    let res = raw_http(
        addr.parse().unwrap(),
        &format!(
            "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            bearer()
        ),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status_of(&res), 200, "{res}");
    assert_eq!(
        mock.state.last_request().header("authorization"),
        Some(format!("Bearer {KEY}").as_str()),
        "the process environment must win over .env"
    );
}

/// Opens a stream on a raw connection and returns it with the first bytes read (the head).
fn open_stream(proxy: &Proxy, path: &str) -> (TcpStream, Vec<u8>) {
    let mut conn = TcpStream::connect(proxy.addr).unwrap();
    std::io::Write::write_all(
        &mut conn,
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    (conn, buf[..n].to_vec())
}

#[test]
fn sigterm_drains_in_flight_streams_then_exits_zero() {
    let mock = Mock::start();
    let mut proxy = Proxy::start(&mock.base(), &[]);
    let (mut conn, head) = open_stream(&proxy, "/v1/sse?n=10&gap_ms=100");

    proxy.signal("TERM");
    let signalled = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        TcpStream::connect(proxy.addr).is_err(),
        "new connections must be refused while draining"
    );

    let mut rest = head;
    conn.read_to_end(&mut rest).unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("data: {\"index\":9}"),
        "stream cut short: {text}\n{}",
        proxy.logs()
    );
    assert!(
        text.ends_with("0\r\n\r\n"),
        "stream did not end cleanly: {text:?}"
    );

    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("proxy did not exit after draining");
    assert!(status.success(), "exit status {status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(10));
    assert!(
        proxy.logs().contains("SIGTERM received"),
        "{}",
        proxy.logs()
    );
}

#[test]
fn second_sigint_exits_at_once() {
    let mock = Mock::start();
    let mut proxy = Proxy::start(&mock.base(), &[]);
    let _stream = open_stream(&proxy, "/v1/endless-stream");
    proxy.signal("INT");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        proxy.wait_exit(Duration::from_millis(10)).is_none(),
        "first SIGINT must drain"
    );
    proxy.signal("INT");
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("second SIGINT did not stop the proxy");
    assert!(!status.success());
}

#[test]
fn idle_keep_alive_connections_do_not_hold_the_drain() {
    let mock = Mock::start();
    let mut proxy = Proxy::start(&mock.base(), &[]);
    let mut idle = TcpStream::connect(proxy.addr).unwrap();
    std::io::Write::write_all(&mut idle, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    // The connection stays open (keep-alive 75 s) while the proxy is told to stop.
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("an idle keep-alive connection held the shutdown");
    assert!(status.success());
}
