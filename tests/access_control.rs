//! Access control: named clients with scopes and validity windows, rotation and hot reload,
//! IP allow-lists behind trusted proxies, model scopes on JSON and multipart bodies, admin
//! routing, and the token/config subcommands.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mock::Mock;
use common::*;
use futures_util::StreamExt;

const A: &str = "token-for-chat-client-aaaaaaaa";
const B: &str = "token-for-embed-client-bbbbbbb";
const EXPIRED: &str = "token-that-expired-ccccccccccc";
const EARLY: &str = "token-not-yet-valid-dddddddddd";
const OFF: &str = "token-of-disabled-eeeeeeeeeeee";

fn write_clients(dir: &Path, body: &str) {
    std::fs::write(dir.join("clients.toml"), body).unwrap();
}

fn clients_toml() -> String {
    format!(
        r#"
[[clients]]
name = "chat-svc"
token_sha256 = "{a}"
allowed_paths = ["/v1/chat/completions", "/v1/upload"]
allowed_models = ["gpt-4o*"]

[[clients]]
name = "embed-svc"
token_sha256 = ["{b}"]
allowed_paths = ["/v1/embeddings"]
allowed_models = ["text-embedding-3-small"]

[[clients]]
name = "expired"
token_sha256 = "{expired}"
expires_at = "2020-01-01T00:00:00Z"

[[clients]]
name = "early"
token_sha256 = "{early}"
not_before = "2999-01-01T00:00:00Z"

[[clients]]
name = "off"
token_sha256 = "{off}"
disabled = true
"#,
        a = sha256_hex(A),
        b = sha256_hex(B),
        expired = sha256_hex(EXPIRED),
        early = sha256_hex(EARLY),
        off = sha256_hex(OFF),
    )
}

fn post_json(addr: SocketAddr, path: &str, token: &str, body: &str) -> String {
    raw_http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn code_of(res: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body_of(res))
        .map(|j| j["error"]["code"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

#[test]
fn each_token_works_only_within_its_scopes_and_window() {
    let mock = Mock::start();
    let dir = fresh_dir();
    write_clients(&dir, &clients_toml());
    let proxy = Proxy::start_in(dir, &mock.base(), &[("CLIENTS_FILE", "clients.toml")]);
    let chat = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    let embed = r#"{"model":"text-embedding-3-small","input":"x"}"#;

    assert_eq!(
        status_of(&post_json(proxy.addr, "/v1/chat/completions", A, chat)),
        200
    );
    let res = post_json(proxy.addr, "/v1/embeddings", A, embed);
    assert_eq!(
        (status_of(&res), code_of(&res).as_str()),
        (403, "path_not_allowed")
    );
    let res = post_json(
        proxy.addr,
        "/v1/chat/completions",
        A,
        r#"{"model":"o3","messages":[]}"#,
    );
    assert_eq!(
        (status_of(&res), code_of(&res).as_str()),
        (403, "model_not_allowed")
    );

    assert_eq!(
        status_of(&post_json(proxy.addr, "/v1/embeddings", B, embed)),
        200
    );
    let res = post_json(proxy.addr, "/v1/chat/completions", B, chat);
    assert_eq!(
        (status_of(&res), code_of(&res).as_str()),
        (403, "path_not_allowed")
    );
    let big = r#"{"model":"text-embedding-3-large","input":"x"}"#;
    let res = post_json(proxy.addr, "/v1/embeddings", B, big);
    assert_eq!(
        (status_of(&res), code_of(&res).as_str()),
        (403, "model_not_allowed")
    );

    let unauthorized = post_json(proxy.addr, "/v1/embeddings", "nobody-has-this-token", embed);
    for token in [EXPIRED, EARLY, OFF] {
        let res = post_json(proxy.addr, "/v1/embeddings", token, embed);
        assert_eq!(status_of(&res), 401, "{token}: {res}");
        assert_eq!(
            body_of(&res),
            body_of(&unauthorized),
            "401 bodies must not differ"
        );
    }
    // SERVICE_TOKEN keeps working as the unscoped client `default`.
    assert_eq!(
        status_of(&post_json(proxy.addr, "/v1/embeddings", TOKEN, big)),
        200
    );

    assert!(
        proxy.has_logged("client=chat-svc") && proxy.has_logged("client=embed-svc"),
        "{}",
        proxy.logs()
    );
    let logs = proxy.logs();
    for secret in [A, B, EXPIRED, TOKEN, KEY] {
        assert!(!logs.contains(secret), "a token reached the log");
    }
}

#[actix_web::test]
async fn rotation_and_reload_keep_streams_and_refuse_bad_files() {
    const OLD: &str = "rotating-token-old-111111111111";
    const NEW: &str = "rotating-token-new-222222222222";
    let mock = Mock::start();
    let dir = fresh_dir();
    let entry = |hashes: &[&str]| {
        let list: Vec<String> = hashes
            .iter()
            .map(|t| format!("\"{}\"", sha256_hex(t)))
            .collect();
        format!(
            "[[clients]]\nname = \"rotator\"\ntoken_sha256 = [{}]\n",
            list.join(", ")
        )
    };
    write_clients(&dir, &entry(&[OLD, NEW]));
    let proxy = Proxy::start_in(
        dir.clone(),
        &mock.base(),
        &[
            ("CLIENTS_FILE", "clients.toml"),
            ("PROXY__ACCESS__RELOAD_POLL_SECS", "0"),
        ],
    );
    let get = |token: &str| {
        status_of(&raw_http(
            proxy.addr,
            &format!(
                "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            ),
        ))
    };
    assert_eq!((get(OLD), get(NEW)), (200, 200));

    let mut stream = client()
        .get(proxy.url("/v1/sse?n=15&gap_ms=100"))
        .insert_header(("authorization", format!("Bearer {OLD}")))
        .send()
        .await
        .unwrap();

    write_clients(&dir, &entry(&[NEW]));
    proxy.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((get(OLD), get(NEW)), (401, 200), "{}", proxy.logs());
    assert!(proxy.has_logged("changed=rotator"), "{}", proxy.logs());

    // An invalid file is refused; the policy in force stays.
    write_clients(
        &dir,
        "[[clients]]\nname = \"rotator\"\ntoken_sha256 = \"not-hex\"\n",
    );
    proxy.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((get(OLD), get(NEW)), (401, 200));
    assert!(
        proxy.has_logged("configuration not reloaded"),
        "{}",
        proxy.logs()
    );

    let mut events = 0;
    while let Some(chunk) = stream.next().await {
        events += chunk.unwrap().windows(2).filter(|w| w == b"\n\n").count();
    }
    assert_eq!(events, 15, "a stream open across the reload was cut");
}

#[test]
fn watched_clients_file_reloads_without_a_signal() {
    const T: &str = "token-added-by-file-change-xyz";
    let mock = Mock::start();
    let dir = fresh_dir();
    write_clients(&dir, "");
    let proxy = Proxy::start_in(
        dir.clone(),
        &mock.base(),
        &[
            ("CLIENTS_FILE", "clients.toml"),
            ("PROXY__ACCESS__RELOAD_POLL_SECS", "1"),
        ],
    );
    let get = || {
        status_of(&raw_http(
            proxy.addr,
            &format!(
                "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {T}\r\nConnection: close\r\n\r\n"
            ),
        ))
    };
    assert_eq!(get(), 401);
    write_clients(
        &dir,
        &format!(
            "[[clients]]\nname = \"late\"\ntoken_sha256 = \"{}\"\n",
            sha256_hex(T)
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(6);
    while get() != 200 {
        assert!(
            Instant::now() < deadline,
            "file change not picked up: {}",
            proxy.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(proxy.has_logged("added=late"), "{}", proxy.logs());
}

/// A raw GET from a chosen loopback source address.
async fn get_from(source: &str, proxy: SocketAddr, token: &str, extra: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let source: std::net::IpAddr = source.parse().unwrap();
    let target = match (source, proxy.ip()) {
        (std::net::IpAddr::V6(_), _) => SocketAddr::new("::1".parse().unwrap(), proxy.port()),
        _ => SocketAddr::new("127.0.0.1".parse().unwrap(), proxy.port()),
    };
    let socket = if source.is_ipv6() {
        tokio::net::TcpSocket::new_v6()
    } else {
        tokio::net::TcpSocket::new_v4()
    }
    .unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(target).await.unwrap();
    stream
        .write_all(
            format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{extra}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    status_of(&String::from_utf8_lossy(&out))
}

#[actix_web::test]
async fn ip_rules_v4_v6_and_trusted_proxies() {
    const LOCAL: &str = "token-for-local-only-client-111";
    const BEHIND: &str = "token-for-client-behind-lb-2222";
    const V6: &str = "token-for-ipv6-only-client-3333";
    let mock = Mock::start();
    let dir = fresh_dir();
    write_clients(
        &dir,
        &format!(
            "[[clients]]\nname = \"local\"\ntoken_sha256 = \"{}\"\nallowed_ips = [\"127.0.0.2/32\"]\n\
             [[clients]]\nname = \"behind\"\ntoken_sha256 = \"{}\"\nallowed_ips = [\"203.0.113.0/24\"]\n\
             [[clients]]\nname = \"v6\"\ntoken_sha256 = \"{}\"\nallowed_ips = [\"::1/128\"]\n",
            sha256_hex(LOCAL),
            sha256_hex(BEHIND),
            sha256_hex(V6)
        ),
    );
    let proxy = Proxy::start_in(
        dir,
        &mock.base(),
        &[
            ("CLIENTS_FILE", "clients.toml"),
            ("BIND_ADDR", "::"),
            ("PROXY__ACCESS__TRUSTED_PROXIES", "127.0.0.3"),
            (
                "PROXY__ACCESS__ALLOWED_IPS",
                "127.0.0.0/8,::1/128,203.0.113.0/24",
            ),
        ],
    );
    let addr = proxy.addr;
    assert_eq!(get_from("127.0.0.2", addr, LOCAL, "").await, 200);
    assert_eq!(get_from("127.0.0.1", addr, LOCAL, "").await, 403);

    let xff = "X-Forwarded-For: 203.0.113.7\r\n";
    assert_eq!(
        get_from("127.0.0.3", addr, BEHIND, xff).await,
        200,
        "trusted proxy"
    );
    assert_eq!(
        get_from("127.0.0.4", addr, BEHIND, xff).await,
        403,
        "untrusted peer's header believed"
    );
    let fwd = "Forwarded: for=203.0.113.9;proto=https\r\n";
    assert_eq!(get_from("127.0.0.3", addr, BEHIND, fwd).await, 200);

    assert_eq!(get_from("::1", addr, V6, "").await, 200);
    assert_eq!(get_from("127.0.0.1", addr, V6, "").await, 403);

    // The global list: a forwarded address outside it is refused before any token check.
    assert_eq!(
        get_from(
            "127.0.0.3",
            addr,
            TOKEN,
            "X-Forwarded-For: 198.51.100.1\r\n"
        )
        .await,
        403
    );
    assert_eq!(get_from("127.0.0.1", addr, TOKEN, "").await, 200);
}

fn multipart(model: &str, file_len: usize) -> (String, Vec<u8>) {
    let boundary = "----oap-test-boundary";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n").as_bytes(),
    );
    body.extend(pattern_chunk(0, file_len).iter());
    body.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--{boundary}--\r\n").as_bytes(),
    );
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[actix_web::test]
async fn model_scope_on_multipart_and_json_limits() {
    let mock = Mock::start();
    let dir = fresh_dir();
    write_clients(
        &dir,
        &format!(
            "[[clients]]\nname = \"scoped\"\ntoken_sha256 = \"{}\"\nallowed_models = [\"gpt-4o*\"]\n",
            sha256_hex(A)
        ),
    );
    let proxy = Proxy::start_in(
        dir,
        &mock.base(),
        &[
            ("CLIENTS_FILE", "clients.toml"),
            ("PROXY__ACCESS__MAX_INSPECT_BODY_BYTES", "2048"),
        ],
    );
    let send = |model: &'static str| {
        let (ct, body) = multipart(model, 3 * 1024 * 1024);
        client()
            .post(proxy.url("/v1/upload"))
            .insert_header(("authorization", format!("Bearer {A}")))
            .insert_header(("content-type", ct))
            .send_body(body)
    };
    let mut ok = send("gpt-4o-transcribe").await.unwrap();
    assert_eq!(ok.status(), 200);
    let json: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(
        json["bytes"].as_u64().unwrap() as usize,
        multipart("gpt-4o-transcribe", 3 * 1024 * 1024).1.len()
    );

    let mut refused = send("whisper-1").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_openai_error(&refused.body().await.unwrap(), "model_not_allowed");

    let big = format!(r#"{{"model":"gpt-4o","input":"{}"}}"#, "x".repeat(4096));
    let res = post_json(proxy.addr, "/v1/embeddings", A, &big);
    assert_eq!(
        (status_of(&res), code_of(&res).as_str()),
        (413, "request_too_large")
    );
    let small = r#"{"model":"gpt-4o","input":"x"}"#;
    assert_eq!(
        status_of(&post_json(proxy.addr, "/v1/embeddings", A, small)),
        200
    );
    assert_eq!(
        mock.state.last_request().header("content-length"),
        Some(small.len().to_string().as_str())
    );
}

#[test]
fn unscoped_bodies_stream_without_being_buffered() {
    use std::io::{Read, Write};
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let mut conn = std::net::TcpStream::connect(proxy.addr).unwrap();
    write!(
        conn,
        "POST /v1/upload HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 20000\r\nConnection: close\r\n\r\n",
        bearer()
    )
    .unwrap();
    conn.write_all(&[b'a'; 10000]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.state.upload_started.lock().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the upstream saw nothing before the client finished: the body was buffered"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    conn.write_all(&[b'b'; 10000]).unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    assert_eq!(status_of(&out), 200, "{out}");
    assert!(out.contains("\"bytes\":20000"), "{out}");
}

#[test]
fn admin_api_uses_the_admin_key_for_admin_clients_only() {
    const ADMIN: &str = "token-of-the-admin-client-00001";
    const ADMIN_KEY: &str = "sk-admin-key-for-tests-QWERTY";
    let mock = Mock::start();
    let dir = fresh_dir();
    write_clients(
        &dir,
        &format!(
            "[[clients]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nadmin = true\n",
            sha256_hex(ADMIN)
        ),
    );
    let proxy = Proxy::start_in(
        dir,
        &mock.base(),
        &[
            ("CLIENTS_FILE", "clients.toml"),
            ("OPENAI_ADMIN_KEY", ADMIN_KEY),
        ],
    );
    let get = |path: &str, token: &str| {
        raw_http(
            proxy.addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    let res = get("/v1/organization/usage/completions?start_time=1", ADMIN);
    assert_eq!(status_of(&res), 200, "{res}");
    assert_eq!(
        mock.state.last_request().header("authorization"),
        Some(format!("Bearer {ADMIN_KEY}").as_str())
    );
    let res = get("/v1/models", ADMIN);
    assert_eq!(status_of(&res), 200);
    assert_eq!(
        mock.state.last_request().header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );

    let before = mock.state.requests.lock().unwrap().len();
    let res = get("/v1/organization/usage/completions", TOKEN);
    assert_eq!(
        (status_of(&res), code_of(&res).as_str()),
        (403, "admin_not_allowed")
    );
    assert_eq!(mock.state.requests.lock().unwrap().len(), before);
    assert!(!proxy.logs().contains(ADMIN_KEY));
}

fn cli(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_openai-auth-proxy"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(fresh_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn token_and_config_subcommands() {
    let out = cli(&["hash-token"], "my-secret-token\n", &[]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        sha256_hex("my-secret-token")
    );
    assert!(!cli(&["hash-token"], "", &[]).status.success());

    let out = cli(&["gen-token"], "", &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap();
    let hash = text
        .lines()
        .find_map(|l| l.strip_prefix("sha256: "))
        .unwrap();
    assert_eq!(token.len(), 43, "256 bits in unpadded base64url");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(hash, sha256_hex(token));
    let other = cli(&["gen-token"], "", &[]);
    assert_ne!(String::from_utf8_lossy(&other.stdout), text);

    let env = [
        ("SERVICE_TOKEN", TOKEN),
        ("OPENAI_API_KEY", KEY),
        ("OPENAI_ADMIN_KEY", "sk-admin-zzz"),
    ];
    let out = cli(&["check-config"], "", &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("clients (1)") && summary.contains("default:"),
        "{summary}"
    );
    assert!(summary.contains("admin key set"), "{summary}");
    for secret in [TOKEN, KEY, "sk-admin-zzz", &sha256_hex(TOKEN)] {
        assert!(!summary.contains(secret), "check-config printed a secret");
    }
    let out = cli(&["check-config"], "", &[("OPENAI_API_KEY", KEY)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SERVICE_TOKEN"));
    assert_eq!(cli(&["no-such-command"], "", &[]).status.code(), Some(2));
}
