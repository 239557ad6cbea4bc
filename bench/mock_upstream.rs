//! A fast stand-in for the OpenAI API, for benchmarks and for trying the proxy without a key.
//!
//!   cargo run --release --example mock-upstream            # listens on 127.0.0.1:9090
//!   MOCK_PORT=9191 MOCK_WORKERS=2 cargo run --release --example mock-upstream
//!   MOCK_TLS_CERT=certs/localhost.crt MOCK_TLS_KEY=certs/localhost.key ...   # HTTPS, h2 + h1
//!
//! Routes (under /v1): POST chat/completions (a fixed ~1 KB completion, or an SSE stream when
//! the body asks for "stream": true), GET models, GET sse?n=N&gap_ms=D (N events D ms apart),
//! POST upload (counts the bytes), GET download?bytes=N (N bytes, sized, in 64 KiB chunks),
//! GET realtime (a WebSocket echo).

use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use futures_util::{StreamExt, stream};

const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1733300000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"This is a fixed answer from the benchmark mock upstream. It is long enough to make the whole response body about one kilobyte, which is typical of a short chat completion returned by the OpenAI API when a service asks a small question and gets a short paragraph back. The proxy forwards it byte for byte.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":64,"total_tokens":88,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_bench00000"}"#;

fn query(req: &HttpRequest, name: &str, default: u64) -> u64 {
    req.query_string()
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(default)
}

fn events(n: u64, gap: Duration, event: impl Fn(u64) -> String + 'static) -> HttpResponse {
    let body = stream::unfold(0u64, move |i| {
        let e = (i < n).then(|| event(i));
        async move {
            let e = e?;
            if i > 0 && !gap.is_zero() {
                actix_web::rt::time::sleep(gap).await;
            }
            Some((Ok::<_, actix_web::Error>(Bytes::from(e)), i + 1))
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("x-request-id", "req_bench"))
        .streaming(body)
}

async fn chat(body: Bytes) -> HttpResponse {
    let wants_stream = body
        .windows(14)
        .any(|w| w == b"\"stream\":true" || w == b"\"stream\": true");
    if wants_stream {
        let words = ["Hello", " from", " the", " mock", " upstream", "!"];
        return events(
            words.len() as u64 + 1,
            Duration::from_millis(30),
            move |i| match words.get(i as usize) {
                Some(w) => format!(
                    "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{w}\"}},\"finish_reason\":null}}]}}\n\n"
                ),
                None => "data: [DONE]\n\n".to_owned(),
            },
        );
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("x-request-id", "req_bench"))
        .body(COMPLETION)
}

async fn sse(req: HttpRequest) -> HttpResponse {
    let n = query(&req, "n", 10);
    let gap = Duration::from_millis(query(&req, "gap_ms", 100));
    events(n, gap, |i| format!("data: {{\"index\":{i}}}\n\n"))
}

async fn upload(mut body: web::Payload) -> HttpResponse {
    let mut bytes = 0u64;
    while let Some(Ok(chunk)) = body.next().await {
        bytes += chunk.len() as u64;
    }
    HttpResponse::Ok().json(serde_json::json!({ "bytes": bytes }))
}

async fn download(req: HttpRequest) -> HttpResponse {
    const CHUNK: usize = 64 * 1024;
    let total = query(&req, "bytes", 1024);
    let block = Bytes::from(vec![0x5au8; CHUNK]);
    let chunks = stream::unfold(0u64, move |sent| {
        let block = block.clone();
        async move {
            (sent < total).then(|| {
                let len = CHUNK.min((total - sent) as usize);
                (
                    Ok::<_, actix_web::Error>(block.slice(..len)),
                    sent + len as u64,
                )
            })
        }
    });
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(actix_web::body::SizedStream::new(total, chunks))
}

/// A WebSocket that echoes what it gets (the Realtime API's shape, not its protocol).
async fn realtime(req: HttpRequest, body: web::Payload) -> Result<HttpResponse, actix_web::Error> {
    let (response, mut session, mut messages) =
        actix_ws::handle_with_protocols(&req, body, &["realtime"])?;
    actix_web::rt::spawn(async move {
        while let Some(Ok(msg)) = messages.recv().await {
            let sent = match msg {
                actix_ws::Message::Text(t) => session.text(t).await,
                actix_ws::Message::Binary(b) => session.binary(b).await,
                actix_ws::Message::Ping(p) => session.pong(&p).await,
                actix_ws::Message::Close(r) => {
                    let _ = session.close(r).await;
                    return;
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    Ok(response)
}

async fn models() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "object": "list",
        "data": [{"id": "gpt-4o-mini", "object": "model", "created": 1, "owned_by": "mock"}]
    }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("MOCK_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9090);
    let workers: usize = std::env::var("MOCK_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(1);
    let server = HttpServer::new(|| {
        App::new()
            .route("/v1/chat/completions", web::post().to(chat))
            .route("/v1/models", web::get().to(models))
            .route("/v1/sse", web::get().to(sse))
            .route("/v1/upload", web::post().to(upload))
            .route("/v1/download", web::get().to(download))
            .route("/v1/realtime", web::get().to(realtime))
    })
    .workers(workers)
    .backlog(4096)
    .max_connections(100_000)
    .keep_alive(Duration::from_secs(75));
    // Over HTTPS the mock speaks HTTP/2 as api.openai.com does (ALPN offers h2 first).
    let server = match (
        std::env::var("MOCK_TLS_CERT"),
        std::env::var("MOCK_TLS_KEY"),
    ) {
        (Ok(cert), Ok(key)) => {
            server.bind_rustls_0_23(("127.0.0.1", port), tls_config(&cert, &key))?
        }
        _ => server.bind(("127.0.0.1", port))?,
    };
    eprintln!("mock upstream on 127.0.0.1:{port} ({workers} workers)");
    server.run().await
}

fn tls_config(cert: &str, key: &str) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .expect("MOCK_TLS_CERT: a PEM certificate chain");
    let key = PrivateKeyDer::from_pem_file(key).expect("MOCK_TLS_KEY: a PEM private key");
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("MOCK_TLS_CERT and MOCK_TLS_KEY: a matching certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}
