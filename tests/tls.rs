//! HTTPS: certificates made at test time, HTTP/1.1 and HTTP/2 with a streamed response, plain
//! HTTP refused cleanly on the TLS port, mTLS, reload without restart, startup refusals, and
//! the local-cert script's output served and trusted.

mod common;

use std::time::{Duration, Instant};

use actix_web::http::Version;
use common::mock::Mock;
use common::pki::*;
use common::*;
use futures_util::StreamExt;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn tls_env<'a>(cert: &'a str, key: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![("TLS_CERT_PATH", cert), ("TLS_KEY_PATH", key)]
}

fn leaf_der(path: &std::path::Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

fn get_healthz() -> String {
    "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_owned()
}

#[actix_web::test]
async fn https_serves_h1_and_h2_with_streaming_and_refuses_plain_http() {
    let mock = Mock::start();
    let dir = fresh_dir();
    let pki = Pki::new(&dir, "server");
    let (cert, key) = pki.issue("localhost", &["localhost", "127.0.0.1", "::1"], false);
    let proxy = Proxy::start(
        &mock.base(),
        &tls_env(cert.to_str().unwrap(), key.to_str().unwrap()),
    );
    assert!(
        proxy.logs().contains("listening on https://"),
        "{}",
        proxy.logs()
    );
    let base = format!("https://127.0.0.1:{}", proxy.addr.port());

    for (alpn, version) in [
        (&[b"h2".as_slice()][..], Version::HTTP_2),
        (&[b"http/1.1".as_slice()][..], Version::HTTP_11),
    ] {
        let client = https_client(client_config(pki.ca_der(), alpn, None));
        let res = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), version);

        let mut res = client
            .get(format!("{base}/v1/sse?n=5&gap_ms=50"))
            .insert_header(("authorization", bearer()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), version);
        let mut body = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = res.next().await {
            body.extend_from_slice(&chunk.unwrap());
            chunks += 1;
        }
        let expected: String = (0..5)
            .map(|i| format!("data: {{\"index\":{i}}}\n\n"))
            .collect();
        assert_eq!(String::from_utf8(body).unwrap(), expected);
        assert!(chunks >= 5, "events were coalesced over {version:?}");
    }

    let plain = raw_http(proxy.addr, &get_healthz());
    assert!(
        !plain.contains("200 OK"),
        "plain HTTP was served on the TLS port: {plain}"
    );
    let (_, again) = https_exchange(
        proxy.addr,
        client_config(pki.ca_der(), &[b"http/1.1"], None),
        &get_healthz(),
    );
    assert!(
        again.unwrap().starts_with("HTTP/1.1 200"),
        "TLS broke after a plain request"
    );
}

#[test]
fn mtls_requires_a_certificate_from_the_configured_ca_and_still_the_token() {
    let mock = Mock::start();
    let dir = fresh_dir();
    let server = Pki::new(&dir, "server");
    let clients = Pki::new(&dir, "clients");
    let rogue = Pki::new(&dir, "rogue");
    let (cert, key) = server.issue("localhost", &["localhost"], false);
    let (good_cert, good_key) = clients.issue("billing-svc", &["billing-svc"], true);
    let (rogue_cert, rogue_key) = rogue.issue("intruder", &["intruder"], true);
    let ca = clients.ca_path("clients");
    let mut env = tls_env(cert.to_str().unwrap(), key.to_str().unwrap());
    env.push(("TLS_CLIENT_CA_PATH", ca.to_str().unwrap()));
    let proxy = Proxy::start(&mock.base(), &env);

    let authed = format!(
        "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        bearer()
    );
    let h1 = [b"http/1.1".as_slice()];
    let (_, none) = https_exchange(
        proxy.addr,
        client_config(server.ca_der(), &h1, None),
        &authed,
    );
    assert!(
        none.is_err(),
        "no client certificate was accepted: {none:?}"
    );
    let (_, wrong) = https_exchange(
        proxy.addr,
        client_config(server.ca_der(), &h1, Some((&rogue_cert, &rogue_key))),
        &authed,
    );
    assert!(
        wrong.is_err(),
        "a certificate from another CA was accepted: {wrong:?}"
    );

    let good = client_config(server.ca_der(), &h1, Some((&good_cert, &good_key)));
    let (_, ok) = https_exchange(proxy.addr, good.clone(), &authed);
    let ok = ok.unwrap();
    assert_eq!(status_of(&ok), 200, "{ok}");
    let (_, no_token) = https_exchange(
        proxy.addr,
        good,
        "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        status_of(&no_token.unwrap()),
        401,
        "the token is still required"
    );
    assert_eq!(mock.state.requests.lock().unwrap().len(), 1);
}

#[actix_web::test]
async fn certificate_reloads_on_sighup_and_on_file_change_keeping_open_streams() {
    let mock = Mock::start();
    let dir = fresh_dir();
    let pki = Pki::new(&dir, "server");
    let (cert, key) = pki.issue("localhost", &["localhost", "127.0.0.1"], false);
    let mut env = tls_env(cert.to_str().unwrap(), key.to_str().unwrap());
    env.push(("PROXY__TLS__RELOAD_POLL_SECS", "1"));
    let proxy = Proxy::start(&mock.base(), &env);
    let h1 = [b"http/1.1".as_slice()];
    let served = || {
        let (leaf, res) = https_exchange(
            proxy.addr,
            client_config(pki.ca_der(), &h1, None),
            &get_healthz(),
        );
        assert!(res.unwrap().starts_with("HTTP/1.1 200"));
        leaf.unwrap()
    };
    let first = served();
    assert_eq!(first, leaf_der(&cert));

    // A stream open across the reloads must run to its end.
    let client = https_client(client_config(pki.ca_der(), &h1, None));
    let mut stream = client
        .get(format!(
            "https://127.0.0.1:{}/v1/sse?n=20&gap_ms=100",
            proxy.addr.port()
        ))
        .insert_header(("authorization", bearer()))
        .send()
        .await
        .unwrap();

    // SIGHUP: the next handshake gets the new certificate.
    pki.issue("localhost", &["localhost", "127.0.0.1"], false);
    let second_der = leaf_der(&cert);
    proxy.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        served(),
        second_der,
        "SIGHUP did not reload the certificate"
    );

    // A broken key is refused; the current certificate stays in service.
    std::fs::write(&key, "not a key").unwrap();
    proxy.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(served(), second_der);
    assert!(
        proxy.has_logged("TLS certificate not reloaded"),
        "{}",
        proxy.logs()
    );

    // Files replaced without a signal: picked up by polling.
    pki.issue("localhost", &["localhost", "127.0.0.1"], false);
    let third_der = leaf_der(&cert);
    let deadline = Instant::now() + Duration::from_secs(5);
    while served() != third_der {
        assert!(Instant::now() < deadline, "file change was not picked up");
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut events = 0;
    while let Some(chunk) = stream.next().await {
        events += chunk.unwrap().windows(2).filter(|w| w == b"\n\n").count();
    }
    assert_eq!(events, 20, "the open stream was cut by a reload");
}

#[test]
fn startup_refuses_missing_or_mismatched_certificates() {
    let dir = fresh_dir();
    let pki = Pki::new(&dir, "server");
    let (cert, key) = pki.issue("a", &["localhost"], false);
    let (_, other_key) = pki.issue("b", &["localhost"], false);
    let secrets = [("SERVICE_TOKEN", TOKEN), ("OPENAI_API_KEY", KEY)];
    let missing = dir.join("missing.crt");
    for (cert, key, setting) in [
        (missing.as_path(), key.as_path(), "TLS_CERT_PATH"),
        (
            cert.as_path(),
            dir.join("missing.key").leak() as &_,
            "TLS_KEY_PATH",
        ),
        (cert.as_path(), other_key.as_path(), "TLS_KEY_PATH"),
        (key.as_path(), key.as_path(), "TLS_CERT_PATH"),
    ] {
        let mut env = secrets.to_vec();
        env.extend(tls_env(cert.to_str().unwrap(), key.to_str().unwrap()));
        let out = run_to_exit(&env);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(setting), "{setting} not named: {stderr}");
    }
}

#[test]
fn local_cert_script_output_is_served_and_trusted() {
    let dir = fresh_dir();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/generate-local-cert.sh"
    );
    let run = |args: &[&str]| {
        std::process::Command::new("bash")
            .arg(script)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["--out", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (cert, key) = (dir.join("localhost.crt"), dir.join("localhost.key"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key must be readable by its owner only");

    let before = std::fs::read(&cert).unwrap();
    let again = run(&["--out", dir.to_str().unwrap()]);
    assert!(!again.status.success(), "overwrote without --force");
    assert_eq!(std::fs::read(&cert).unwrap(), before);
    assert!(
        run(&["--out", dir.to_str().unwrap(), "--force"])
            .status
            .success()
    );
    assert_ne!(std::fs::read(&cert).unwrap(), before);

    let mock = Mock::start();
    let proxy = Proxy::start(
        &mock.base(),
        &tls_env(cert.to_str().unwrap(), key.to_str().unwrap()),
    );
    let (_, res) = https_exchange(
        proxy.addr,
        client_config(leaf_der(&cert), &[b"http/1.1"], None),
        &get_healthz(),
    );
    assert!(res.unwrap().starts_with("HTTP/1.1 200"));

    // And as README shows it, with curl trusting the generated certificate.
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--cacert", cert.to_str().unwrap()])
        .arg(format!("https://localhost:{}/healthz", proxy.addr.port()))
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", proxy.addr.port()),
        ])
        .output()
        .expect("curl is needed for this test");
    assert!(
        curl.status.success(),
        "{}",
        String::from_utf8_lossy(&curl.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "ok");
}

#[test]
fn only_tls_12_and_13_are_offered() {
    let mock = Mock::start();
    let dir = fresh_dir();
    let pki = Pki::new(&dir, "server");
    let (cert, key) = pki.issue("localhost", &["localhost", "127.0.0.1"], false);
    let proxy = Proxy::start(
        &mock.base(),
        &tls_env(cert.to_str().unwrap(), key.to_str().unwrap()),
    );
    let handshake = |version: &str| {
        std::process::Command::new("openssl")
            .args(["s_client", "-connect", &proxy.addr.to_string(), version])
            // Let the client offer old versions at all (OpenSSL 3 refuses them by default).
            .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("the openssl CLI is needed for this test")
    };
    assert!(handshake("-tls1_3").status.success(), "TLS 1.3 refused");
    assert!(handshake("-tls1_2").status.success(), "TLS 1.2 refused");
    let old = handshake("-tls1_1");
    let text =
        String::from_utf8_lossy(&old.stdout).to_string() + &String::from_utf8_lossy(&old.stderr);
    assert!(!old.status.success(), "TLS 1.1 accepted");
    // The refusal must come from the server (an alert), not from the client's own policy.
    assert!(text.contains("alert"), "{text}");
}
