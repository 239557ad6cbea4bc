//! Acceptance 1 and 2: the auth matrix, /healthz, 404s, what the upstream sees, and path
//! escapes that must never leave the configured upstream.

mod common;

use common::mock::Mock;
use common::*;

fn get(proxy: &Proxy, path: &str, headers: &[&str]) -> String {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        proxy.addr
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    raw_http(proxy.addr, &req)
}

#[test]
fn auth_matrix_answers_every_failure_the_same_way() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let wrong = format!("Authorization: Bearer {TOKEN}x");
    let lower = format!("Authorization: bearer-ish {TOKEN}");
    let basic = "Authorization: Basic dXNlcjpwYXNz".to_owned();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("missing header", vec![], "/v1/models"),
        ("wrong scheme", vec![basic], "/v1/models"),
        ("garbage scheme", vec![lower], "/v1/models"),
        (
            "empty token",
            vec!["Authorization: Bearer ".into()],
            "/v1/models",
        ),
        ("wrong token", vec![wrong], "/v1/models"),
        (
            "token only in query",
            vec![],
            "/v1/models?api_key=svc-token-for-tests-0123456789abcdef",
        ),
        (
            "upstream key as token",
            vec![format!("Authorization: Bearer {KEY}")],
            "/v1/models",
        ),
    ];
    let mut bodies = Vec::new();
    for (name, headers, path) in &cases {
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        let res = get(&proxy, path, &refs);
        assert_eq!(status_of(&res), 401, "{name}: {res}");
        assert!(
            res.to_ascii_lowercase()
                .contains("\r\nwww-authenticate: bearer\r\n"),
            "{name}: {res}"
        );
        assert_openai_error(body_of(&res).as_bytes(), "invalid_api_key");
        bodies.push(body_of(&res).to_owned());
    }
    // No hint which part failed: the same body for every failure.
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert!(
        mock.state.requests.lock().unwrap().is_empty(),
        "a refused request reached upstream"
    );

    let ok = get(
        &proxy,
        "/v1/models",
        &[&format!("Authorization: {}", bearer())],
    );
    assert_eq!(status_of(&ok), 200, "{ok}");
    let logs = proxy.logs();
    assert!(
        !logs.contains(TOKEN) && !logs.contains(KEY),
        "secret in logs:\n{logs}"
    );
}

#[test]
fn healthz_and_unknown_paths() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let res = get(&proxy, "/healthz", &[]);
    assert_eq!(status_of(&res), 200);
    assert_eq!(body_of(&res), "ok");
    let res = raw_http(
        proxy.addr,
        &format!(
            "HEAD /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            proxy.addr
        ),
    );
    assert_eq!(status_of(&res), 200, "{res}");
    let auth = format!("Authorization: {}", bearer());
    for path in [
        "/",
        "/v1",
        "/v1/",
        "/v2/models",
        "/v1x/models",
        "/healthzz",
        "/metricsz",
    ] {
        for headers in [vec![], vec![auth.as_str()]] {
            let res = get(&proxy, path, &headers);
            assert_eq!(status_of(&res), 404, "{path}: {res}");
            assert_openai_error(body_of(&res).as_bytes(), "not_found");
        }
    }
    assert!(mock.state.requests.lock().unwrap().is_empty());
}

#[test]
fn upstream_sees_the_key_never_the_token_nor_hop_by_hop_headers() {
    let mock = Mock::start();
    let proxy = Proxy::start(
        &mock.base(),
        &[("PROXY__UPSTREAM__ORGANIZATION", "org-pinned")],
    );
    let query = "b=2&a=1&a=%2F&x=%20y+z&empty=&flag&%C3%A9=%E2%82%AC";
    let res = raw_http(
        proxy.addr,
        &format!(
            "POST /v1/echo/sub/path?{query} HTTP/1.1\r\n\
             Host: proxy.example\r\n\
             Authorization: {}\r\n\
             Connection: keep-alive, X-Hop-Secret\r\n\
             X-Hop-Secret: 1\r\n\
             Keep-Alive: timeout=5\r\n\
             TE: gzip\r\n\
             Proxy-Connection: keep-alive\r\n\
             Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
             OpenAI-Organization: org-client-choice\r\n\
             OpenAI-Beta: assistants=v2\r\n\
             X-Multi: a\r\n\
             X-Multi: b\r\n\
             Content-Type: application/json\r\n\
             Content-Length: 2\r\n\r\n{{}}",
            bearer()
        ),
    );
    assert_eq!(status_of(&res), 200, "{res}");
    let seen = mock.state.last_request();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/v1/echo/sub/path");
    assert_eq!(seen.query, query, "query must pass byte-for-byte");
    assert_key_sent_not_token(&seen);
    assert_eq!(seen.header("host"), Some(mock.addr.to_string().as_str()));
    assert_eq!(seen.header("openai-organization"), Some("org-pinned"));
    assert_eq!(seen.header("openai-beta"), Some("assistants=v2"));
    assert_eq!(seen.header("content-length"), Some("2"));
    let multi: Vec<_> = seen
        .headers
        .iter()
        .filter(|(n, _)| n == "x-multi")
        .collect();
    assert_eq!(multi.len(), 2, "{multi:?}");
    for gone in [
        "x-hop-secret",
        "keep-alive",
        "te",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert!(seen.header(gone).is_none(), "{gone} reached the upstream");
    }

    // Response side: OpenAI's headers pass, hop-by-hop ones do not.
    let head = res.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
    for kept in [
        "x-request-id: req_mock_123",
        "openai-processing-ms: 5",
        "x-ratelimit-remaining-requests: 99",
        "retry-after: 1",
        "x-upstream-multi: a",
        "x-upstream-multi: b",
    ] {
        assert!(head.contains(kept), "{kept} missing in\n{head}");
    }
    assert!(
        !head.contains("keep-alive: timeout") && !head.contains("proxy-connection"),
        "{head}"
    );
    // The access line is written once the response has been sent.
    assert!(
        proxy.has_logged("upstream_request_id=req_mock_123"),
        "access line lacks the upstream request id:\n{}",
        proxy.logs()
    );
}

#[test]
fn path_escapes_never_leave_the_configured_upstream() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let auth = format!("Authorization: {}", bearer());
    for path in [
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/v1/.%2E/admin",
        "/v1/models/%2F..%2Fadmin",
        "/v1//evil.example/x",
        "/v1/a%5c..%5cb",
    ] {
        let res = get(&proxy, path, &[&auth]);
        assert_eq!(status_of(&res), 400, "{path}: {res}");
        assert_openai_error(body_of(&res).as_bytes(), "invalid_path");
    }
    assert!(mock.state.requests.lock().unwrap().is_empty());

    // Absolute-form targets and a foreign Host name the proxy, not a destination.
    let res = raw_http(
        proxy.addr,
        &format!(
            "GET http://evil.example:81/v1/echo/abs?q=1 HTTP/1.1\r\nHost: evil.example:81\r\n{auth}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status_of(&res), 200, "{res}");
    let seen = mock.state.last_request();
    assert_eq!(seen.path, "/v1/echo/abs");
    assert_eq!(seen.query, "q=1");
    assert_eq!(seen.header("host"), Some(mock.addr.to_string().as_str()));
}

#[test]
fn head_requests_keep_the_upstream_length_without_a_body() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let res = raw_http(
        proxy.addr,
        &format!(
            "HEAD /v1/download?bytes=12345 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            bearer()
        ),
    );
    assert_eq!(status_of(&res), 200, "{res}");
    assert!(
        res.to_ascii_lowercase()
            .contains("content-length: 12345\r\n"),
        "{res}"
    );
    assert_eq!(body_of(&res), "");
    assert_eq!(mock.state.last_request().method, "HEAD");
}

#[test]
fn upstream_redirects_reach_the_client_unfollowed() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let res = get(
        &proxy,
        "/v1/redirect",
        &[&format!("Authorization: {}", bearer())],
    );
    assert_eq!(status_of(&res), 302, "{res}");
    assert!(
        res.to_ascii_lowercase().contains("location: /v1/models"),
        "{res}"
    );
    let followed = mock
        .state
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.path == "/v1/models");
    assert!(!followed, "the proxy followed the redirect");
}
