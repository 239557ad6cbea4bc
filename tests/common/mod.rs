//! Test harness: the real proxy binary on a free loopback port, and an in-process mock of the
//! OpenAI API built on actix-web.
#![allow(dead_code)]

pub mod mock;
pub mod pki;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "svc-token-for-tests-0123456789abcdef";
pub const KEY: &str = "sk-upstream-key-for-tests-ZYXWVUT";

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// An empty working directory, so a developer's own `.env` or `config/local.toml` never leaks
/// into a test.
pub fn fresh_dir() -> PathBuf {
    let n = DIRS.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("oap-it-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn command(env: &[(&str, &str)], dir: &PathBuf) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openai-auth-proxy"));
    cmd.env_clear()
        .current_dir(dir)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the binary to completion (for startup failures).
pub fn run_to_exit(env: &[(&str, &str)]) -> Output {
    let dir = fresh_dir();
    let mut child = command(env, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the proxy kept running with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Proxy {
    /// Starts the proxy against `upstream_base` with the test token and key, plus `extra`.
    pub fn start(upstream_base: &str, extra: &[(&str, &str)]) -> Proxy {
        Self::start_in(fresh_dir(), upstream_base, extra)
    }

    /// The same, in `dir` (which may hold `config/`, `.env` or a clients file).
    pub fn start_in(dir: PathBuf, upstream_base: &str, extra: &[(&str, &str)]) -> Proxy {
        let mut env = vec![
            ("SERVICE_TOKEN", TOKEN),
            ("OPENAI_API_KEY", KEY),
            ("OPENAI_BASE_URL", upstream_base),
            ("BIND_ADDR", "127.0.0.1"),
            ("BIND_PORT", "0"),
            ("PROXY__SERVER__WORKERS", "2"),
        ];
        env.extend_from_slice(extra);
        let mut child = command(&env, &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        // Keeps draining stderr for the proxy's whole life, so it can never block on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                {
                    let mut logs = sink.lock().unwrap();
                    logs.push_str(&line);
                    logs.push('\n');
                }
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest
                        .trim()
                        .trim_start_matches("http://")
                        .trim_start_matches("https://");
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("proxy did not start: {}", logs.lock().unwrap());
            }
        };
        Proxy { child, addr, logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits up to 5 s for a log line containing `needle` (lines reach the test through a pipe
    /// and a reader thread, a little after the proxy wrote them).
    pub fn has_logged(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.logs().contains(needle) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// An awc client for tests: no decompression unless asked, generous timeout.
pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(120))
        .disable_redirects()
        .finish()
}

/// Runs a script of `tests/sdk/` with the official OpenAI SDK pointed at the proxy, asserts it
/// exited 0 and printed `passed` (its own checks), and returns its stdout. The interpreter is
/// `$OPENAI_SDK_PYTHON` (scripts/test.sh: a virtualenv with tests/sdk/requirements.txt).
pub fn run_sdk_script(script: &str, proxy: &Proxy, api_key: &str, passed: &str) -> String {
    let python = std::env::var("OPENAI_SDK_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(&python)
        .arg(&path)
        .env("OPENAI_BASE_URL", proxy.url("/v1"))
        .env("OPENAI_API_KEY", api_key)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed ({python}; run scripts/test.sh, which installs tests/sdk/requirements.txt):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(passed), "{stdout}");
    stdout
}

/// What reached the upstream carried the proxy's key, and no header held the client's token.
pub fn assert_key_sent_not_token(seen: &mock::Recorded) {
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    for (name, value) in &seen.headers {
        assert!(
            !value.contains(TOKEN),
            "client token reached the upstream in {name}"
        );
    }
}

pub fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// A GET to the proxy with the test client's token.
pub fn authorized_get(proxy: &Proxy, path: &str) -> awc::ClientRequest {
    client()
        .get(proxy.url(path))
        .insert_header(("authorization", bearer()))
}

pub fn sha256_hex(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sends `request` as raw bytes and returns the response: up to its Content-Length when it
/// has one, else until the server closes. For targets and headers an HTTP client library
/// would tidy up.
pub fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(head_end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|len| out.len() >= head_end + 4 + len) {
                break;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn status_of(raw_response: &str) -> u16 {
    raw_response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn body_of(raw_response: &str) -> &str {
    raw_response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Deterministic test data: byte `i` of a stream of any length.
pub fn pattern_chunk(offset: u64, len: usize) -> bytes::Bytes {
    (0..len as u64)
        .map(|i| {
            let x = offset + i;
            (x ^ (x >> 7) ^ (x >> 17)) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

pub fn assert_openai_error(body: &[u8], code: &str) -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)));
    let error = &json["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{json}"
    );
    assert!(error["type"].as_str().is_some(), "{json}");
    assert!(error.get("param").is_some(), "{json}");
    assert_eq!(error["code"], code, "{json}");
    json
}
