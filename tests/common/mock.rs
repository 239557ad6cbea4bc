//! An in-process mock of the OpenAI API, on its own actix system thread. It records what it
//! receives and when it sends, so tests can compare both sides of the proxy.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub version: actix_web::http::Version,
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
pub struct MockState {
    pub requests: Mutex<Vec<Recorded>>,
    /// When each SSE event left the mock.
    pub sse_sent: Mutex<Vec<Instant>>,
    /// Which long-running handlers or streams were dropped (the proxy went away), and when.
    pub dropped: Mutex<Vec<(&'static str, Instant)>>,
    /// When the first body bytes of an upload arrived.
    pub upload_started: Mutex<Option<Instant>>,
    /// The close code the WebSocket endpoint received.
    pub ws_close: Mutex<Option<u16>>,
}

impl MockState {
    pub fn last_request(&self) -> Recorded {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no request reached the mock")
    }

    pub fn dropped_at(&self, what: &str) -> Option<Instant> {
        self.dropped
            .lock()
            .unwrap()
            .iter()
            .find(|(w, _)| *w == what)
            .map(|(_, t)| *t)
    }
}

/// Notes in the state when it is dropped: actix drops a handler's future or a response body
/// when the peer (here, the proxy) closes the connection.
struct DropGuard(Arc<MockState>, &'static str);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0
            .dropped
            .lock()
            .unwrap()
            .push((self.1, Instant::now()));
    }
}

pub struct Mock {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    handle: ServerHandle,
    scheme: &'static str,
}

impl Mock {
    pub fn start() -> Mock {
        Self::start_with(None)
    }

    /// The same mock over HTTPS (HTTP/2 and HTTP/1.1 offered by ALPN).
    pub fn start_tls(config: rustls::ServerConfig) -> Mock {
        Self::start_with(Some(config))
    }

    fn start_with(tls: Option<rustls::ServerConfig>) -> Mock {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let state = Arc::new(MockState::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::from(Arc::clone(&shared)))
                        .route("/v1/sse", web::to(sse))
                        .route("/v1/endless-stream", web::to(endless_stream))
                        .route("/v1/hang", web::to(hang))
                        .route("/v1/slow", web::to(slow))
                        .route("/v1/upload", web::to(upload))
                        .route("/v1/download", web::to(download))
                        .route("/v1/gzip", web::to(gzip))
                        .route("/v1/gzip-chat", web::to(gzip_chat))
                        .route(
                            "/v1/redirect",
                            web::to(|| async {
                                HttpResponse::Found()
                                    .insert_header(("location", "/v1/models"))
                                    .finish()
                            }),
                        )
                        .route("/v1/broken-stream", web::to(broken_stream))
                        .route("/v1/audio", web::to(audio))
                        .route("/v1/chat/completions", web::post().to(chat_completions))
                        .route("/v1/realtime", web::get().to(realtime))
                        .default_service(web::to(echo))
                })
                .workers(1)
                .h1_allow_half_closed(false)
                .disable_signals();
                let server = match tls {
                    None => server.bind("127.0.0.1:0"),
                    Some(config) => server.bind_rustls_0_23("127.0.0.1:0", config),
                }
                .unwrap();
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((addr, server.handle())).unwrap();
                let _ = server.await;
            });
        });
        let (addr, handle) = rx.recv().unwrap();
        Mock {
            addr,
            state,
            handle,
            scheme,
        }
    }

    /// The base URL the proxy should forward to.
    pub fn base(&self) -> String {
        format!("{}://{}/v1", self.scheme, self.addr)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        // The command is sent at once; the future only waits for completion.
        drop(self.handle.stop(false));
    }
}

fn record(req: &HttpRequest, state: &MockState) {
    state.requests.lock().unwrap().push(Recorded {
        version: req.version(),
        method: req.method().to_string(),
        path: req.path().to_owned(),
        query: req.query_string().to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    v.to_str().unwrap_or("<binary>").to_owned(),
                )
            })
            .collect(),
    });
}

fn param(req: &HttpRequest, name: &str, default: u64) -> u64 {
    web::Query::<BTreeMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get(name).and_then(|v| v.parse().ok()))
        .unwrap_or(default)
}

async fn echo(req: HttpRequest, state: web::Data<MockState>, body: web::Bytes) -> HttpResponse {
    record(&req, &state);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, v) in req.headers() {
        headers
            .entry(n.as_str().to_owned())
            .or_default()
            .push(v.to_str().unwrap_or("<binary>").to_owned());
    }
    HttpResponse::Ok()
        .insert_header(("x-request-id", "req_mock_123"))
        .insert_header(("openai-processing-ms", "5"))
        .insert_header(("x-ratelimit-remaining-requests", "99"))
        .insert_header(("retry-after", "1"))
        .insert_header(("keep-alive", "timeout=5"))
        .insert_header(("proxy-connection", "keep-alive"))
        .insert_header(("x-upstream-multi", "a"))
        .append_header(("x-upstream-multi", "b"))
        .json(serde_json::json!({
            "method": req.method().as_str(),
            "path": req.path(),
            "query": req.query_string(),
            "headers": headers,
            "body_len": body.len(),
        }))
}

fn sse_response() -> actix_web::HttpResponseBuilder {
    let mut res = HttpResponse::Ok();
    res.content_type("text/event-stream");
    res
}

/// `n` events `gap_ms` apart; each send time is recorded just before the event is handed on.
async fn sse(req: HttpRequest, state: web::Data<MockState>) -> HttpResponse {
    record(&req, &state);
    let n = param(&req, "n", 10);
    let gap = Duration::from_millis(param(&req, "gap_ms", 100));
    let state = state.into_inner();
    let events = stream::unfold(0u64, move |i| {
        let state = Arc::clone(&state);
        async move {
            if i == n {
                return None;
            }
            if i > 0 {
                actix_web::rt::time::sleep(gap).await;
            }
            state.sse_sent.lock().unwrap().push(Instant::now());
            let event = Bytes::from(format!("data: {{\"index\":{i}}}\n\n"));
            Some((Ok::<_, actix_web::Error>(event), i + 1))
        }
    });
    sse_response().streaming(events)
}

async fn endless_stream(req: HttpRequest, state: web::Data<MockState>) -> HttpResponse {
    record(&req, &state);
    let guard = DropGuard(state.into_inner(), "endless-stream");
    let events = stream::unfold((0u64, guard), |(i, guard)| async move {
        if i > 0 {
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
        let event = Bytes::from(format!("data: {i}\n\n"));
        Some((Ok::<_, actix_web::Error>(event), (i + 1, guard)))
    });
    sse_response().streaming(events)
}

async fn hang(req: HttpRequest, state: web::Data<MockState>) -> HttpResponse {
    record(&req, &state);
    let _guard = DropGuard(state.into_inner(), "hang");
    actix_web::rt::time::sleep(Duration::from_secs(60)).await;
    HttpResponse::Ok().body("too late")
}

async fn slow(req: HttpRequest, state: web::Data<MockState>) -> HttpResponse {
    record(&req, &state);
    actix_web::rt::time::sleep(Duration::from_millis(param(&req, "ms", 1000))).await;
    HttpResponse::Ok().json(serde_json::json!({"slow": true}))
}

async fn upload(
    req: HttpRequest,
    state: web::Data<MockState>,
    mut body: web::Payload,
) -> HttpResponse {
    record(&req, &state);
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = body.next().await {
        // An upload the proxy cut short (e.g. a refused model) ends in an error here.
        let Ok(chunk) = chunk else {
            return HttpResponse::BadRequest().finish();
        };
        if bytes == 0 {
            state
                .upload_started
                .lock()
                .unwrap()
                .get_or_insert(Instant::now());
        }
        bytes += chunk.len() as u64;
        hasher.update(&chunk);
    }
    HttpResponse::Ok().json(serde_json::json!({
        "bytes": bytes,
        "sha256": hex(&hasher.finalize()),
    }))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const CHUNK: usize = 64 * 1024;

/// `bytes` of the shared test pattern, streamed in 64 KiB chunks with a Content-Length.
async fn download(req: HttpRequest, state: web::Data<MockState>) -> HttpResponse {
    record(&req, &state);
    let total = param(&req, "bytes", 1024);
    let chunks = stream::unfold(0u64, move |offset| async move {
        if offset >= total {
            return None;
        }
        let len = CHUNK.min((total - offset) as usize);
        Some((
            Ok::<_, actix_web::Error>(super::pattern_chunk(offset, len)),
            offset + len as u64,
        ))
    });
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(actix_web::body::SizedStream::new(total, chunks))
}

pub const GZIP_JSON: &str = r#"{"object":"list","data":[{"id":"gpt-4o","object":"model"}]}"#;

async fn gzip(req: HttpRequest, state: web::Data<MockState>) -> HttpResponse {
    record(&req, &state);
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(GZIP_JSON.as_bytes()).unwrap();
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("content-encoding", "gzip"))
        .body(encoder.finish().unwrap())
}

/// A non-streamed completion with usage, gzip-encoded as OpenAI sends it to clients that
/// accept gzip.
async fn gzip_chat(req: HttpRequest, state: web::Data<MockState>) -> HttpResponse {
    record(&req, &state);
    let body = r#"{"id":"chatcmpl-gz","object":"chat.completion","model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33}}"#;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body.as_bytes()).unwrap();
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("content-encoding", "gzip"))
        .body(encoder.finish().unwrap())
}

/// Two events, then the connection dies mid-body.
async fn broken_stream(req: HttpRequest, state: web::Data<MockState>) -> HttpResponse {
    record(&req, &state);
    let items: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"data: 1\n\n")),
        Ok(Bytes::from_static(b"data: 2\n\n")),
        Err(std::io::Error::other("upstream died")),
    ];
    let slowly = stream::iter(items).then(|item| async move {
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        item
    });
    sse_response().streaming(slowly)
}

async fn audio(req: HttpRequest, state: web::Data<MockState>) -> HttpResponse {
    record(&req, &state);
    HttpResponse::Ok()
        .content_type("audio/mpeg")
        .body(vec![0u8; 4096])
}

pub const CHAT_WORDS: [&str; 4] = ["Hello", " from", " the", " mock!"];

/// Just enough of the Chat Completions API for the official SDKs, streamed or not.
async fn chat_completions(
    req: HttpRequest,
    state: web::Data<MockState>,
    body: web::Json<serde_json::Value>,
) -> HttpResponse {
    record(&req, &state);
    let model = body["model"].as_str().unwrap_or("gpt-4o-mini").to_owned();
    if body["stream"].as_bool() != Some(true) {
        return HttpResponse::Ok()
            .insert_header(("x-request-id", "req_mock_chat"))
            .json(serde_json::json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": CHAT_WORDS.concat()}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
            }));
    }
    let mut events: Vec<String> = Vec::new();
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        serde_json::json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        })
    };
    events.push(
        chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        )
        .to_string(),
    );
    for word in CHAT_WORDS {
        events.push(chunk(serde_json::json!({"content": word}), None).to_string());
    }
    events.push(chunk(serde_json::json!({}), Some("stop")).to_string());
    if body["stream_options"]["include_usage"].as_bool() == Some(true) {
        events.push(
            serde_json::json!({
                "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1,
                "model": model, "choices": [],
                "usage": {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}
            })
            .to_string(),
        );
    }
    events.push("[DONE]".to_owned());
    let body = stream::iter(events).then(|e| async move {
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, actix_web::Error>(Bytes::from(format!("data: {e}\n\n")))
    });
    sse_response()
        .insert_header(("x-request-id", "req_mock_chat"))
        .streaming(body)
}

/// A Realtime-API-like WebSocket: announces the session, answers `response.create` with
/// `response.done`, echoes every other frame, closes with 4000 on the text `close-me`, and
/// records the close code it receives.
async fn realtime(
    req: HttpRequest,
    state: web::Data<MockState>,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    record(&req, &state);
    let (response, mut session, messages) =
        actix_ws::handle_with_protocols(&req, body, &["realtime"])?;
    let mut messages = messages.max_frame_size(16 << 20);
    let state = state.into_inner();
    actix_web::rt::spawn(async move {
        let created = r#"{"type":"session.created","event_id":"evt_1","session":{"id":"sess_mock","object":"realtime.session","type":"realtime","model":"gpt-realtime"}}"#;
        let _ = session.text(created).await;
        while let Some(Ok(msg)) = messages.recv().await {
            match msg {
                actix_ws::Message::Text(text) if &*text == "close-me" => {
                    let _ = session
                        .close(Some(actix_ws::CloseReason {
                            code: actix_ws::CloseCode::Other(4000),
                            description: Some("bye".into()),
                        }))
                        .await;
                    return;
                }
                actix_ws::Message::Text(text) if text.contains("\"response.create\"") => {
                    let done = r#"{"type":"response.done","event_id":"evt_2","response":{"id":"resp_1","object":"realtime.response","status":"completed","output":[],"usage":{"total_tokens":7,"input_tokens":3,"output_tokens":4}}}"#;
                    let _ = session.text(done).await;
                }
                actix_ws::Message::Text(text) => {
                    let _ = session.text(text).await;
                }
                actix_ws::Message::Binary(bytes) => {
                    let _ = session.binary(bytes).await;
                }
                actix_ws::Message::Ping(bytes) => {
                    let _ = session.pong(&bytes).await;
                }
                actix_ws::Message::Close(reason) => {
                    *state.ws_close.lock().unwrap() = reason.map(|r| r.code.into());
                    let _ = session.close(None).await;
                    return;
                }
                _ => {}
            }
        }
    });
    Ok(response)
}
