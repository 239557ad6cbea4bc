//! The forwarding handler: maps the target, rebuilds the request for the upstream, and hands
//! the upstream's response body back to actix as a stream, chunk for chunk.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_http::encoding::Decoder;
use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode, Version};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use awc::error::{ConnectError, PayloadError, SendRequestError};
use futures_util::{StreamExt, future};

use super::encoding::{CompressionPolicy, decode_for_client, is_event_stream};
use super::headers::{copy_request_headers, copy_response_headers};
use super::strict_eof::{StrictEofConnector, is_upstream_eof};
use super::upstream_url::upstream_uri;
use crate::access::model_scope::{
    BodyShape, ModelRefusal, MultipartModelCheck, body_shape, json_model, read_json,
};
use crate::access::{ADMIN_PREFIX, AccessPolicy, Caller, SharedPolicy};
use crate::config::{Secret, UpstreamSettings};
use crate::error::ApiError;
use crate::limits::{ClientLimits, InFlight, Limiter, Refusal};
use crate::observe::UpstreamFacts;
use crate::observe::metrics::Metrics;
use crate::observe::usage::{
    Metered, SharedReading, StripUsageChunk, UsageMeter, with_stream_usage,
};
use crate::realtime::{SessionLimits, SessionTerms, bridge_upgrade, is_websocket_upgrade};
use std::time::Instant;
use tokio::sync::watch;

static OPENAI_ORGANIZATION: HeaderName = HeaderName::from_static("openai-organization");
static OPENAI_PROJECT: HeaderName = HeaderName::from_static("openai-project");
static X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// What every worker's forwarder shares: built once, `Send + Sync`.
pub struct UpstreamPlan {
    base: String,
    authorization: HeaderValue,
    admin_authorization: Option<HeaderValue>,
    organization: Option<HeaderValue>,
    project: Option<HeaderValue>,
    tls: Arc<rustls::ClientConfig>,
    ws_tls: Arc<rustls::ClientConfig>,
    settings: UpstreamSettings,
    inject_stream_usage: bool,
    compression: CompressionPolicy,
}

impl UpstreamPlan {
    pub fn new(
        settings: &UpstreamSettings,
        compression: CompressionPolicy,
    ) -> Result<Self, String> {
        let bearer = |key: &Secret, name: &str| {
            let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose()))
                .map_err(|_| format!("{name} is not a valid header value"))?;
            // Keeps the key out of HPACK tables and `Debug` output.
            value.set_sensitive(true);
            Ok::<_, String>(value)
        };
        let authorization = bearer(&settings.api_key, "OPENAI_API_KEY")?;
        let admin_authorization = settings
            .admin_key
            .as_ref()
            .map(|k| bearer(k, "OPENAI_ADMIN_KEY"))
            .transpose()?;
        let header = |v: &Option<String>| {
            v.as_deref()
                .map(HeaderValue::try_from)
                .transpose()
                .map_err(|_| "upstream.organization/project is not a valid header value".to_owned())
        };
        Ok(Self {
            base: settings.base_url.as_str().trim_end_matches('/').to_owned(),
            authorization,
            admin_authorization,
            organization: header(&settings.organization)?,
            project: header(&settings.project)?,
            tls: Arc::new(upstream_tls_config(
                &[b"h2", b"http/1.1"],
                &settings.extra_roots,
            )?),
            ws_tls: Arc::new(upstream_tls_config(&[b"http/1.1"], &settings.extra_roots)?),
            settings: settings.clone(),
            inject_stream_usage: settings.inject_stream_usage,
            compression,
        })
    }
}

fn upstream_tls_config(
    alpn: &[&[u8]],
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = actix_tls::connect::rustls_0_23::webpki_roots_cert_store();
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| format!("UPSTREAM_CA_PATH: a certificate is not a usable CA: {e}"))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// One per worker: `awc::Client` is `!Send`, and a pool per worker needs no locking.
pub struct Forwarder {
    plan: Arc<UpstreamPlan>,
    client: awc::Client,
    /// WebSockets need HTTP/1.1 (awc cannot tunnel over HTTP/2).
    ws_client: awc::Client,
    limits: SessionLimits,
    draining: Option<watch::Receiver<bool>>,
}

impl Forwarder {
    pub fn new(
        plan: Arc<UpstreamPlan>,
        limits: SessionLimits,
        draining: Option<watch::Receiver<bool>>,
    ) -> Self {
        let s = &plan.settings;
        let connector = awc::Connector::new()
            .connector(StrictEofConnector::default())
            .rustls_0_23(Arc::clone(&plan.tls))
            .timeout(s.connect_timeout)
            .handshake_timeout(s.connect_timeout)
            .limit(s.max_in_flight_per_worker)
            .conn_keep_alive(s.pool_idle)
            .conn_lifetime(s.pool_max_lifetime);
        let client = awc::Client::builder()
            .connector(connector)
            // awc's 5 s default would kill slow completions; this covers until the head.
            .timeout(s.first_byte_timeout)
            .disable_redirects()
            .no_default_headers()
            .finish();
        let ws_client = awc::Client::builder()
            .connector(
                awc::Connector::new()
                    .connector(StrictEofConnector::default())
                    .rustls_0_23(Arc::clone(&plan.ws_tls))
                    // A session holds its connection for life: awc's default cap of 100 per
                    // worker would make the 101st session wait for one to end.
                    .limit(s.max_in_flight_per_worker)
                    .timeout(s.connect_timeout)
                    .handshake_timeout(s.connect_timeout),
            )
            .timeout(s.connect_timeout)
            .no_default_headers()
            .finish();
        Self {
            plan,
            client,
            ws_client,
            limits,
            draining,
        }
    }
}

/// How the client's body travels upstream.
enum RequestBody {
    /// The client declared a length: keep it (some endpoints want it) and still stream.
    Sized(u64),
    /// Chunked, or HTTP/2 without a declared length.
    Streamed,
    None,
}

impl RequestBody {
    fn of(req: &HttpRequest) -> Result<Self, ApiError> {
        let headers = req.headers();
        if let Some(len) = headers.get(header::CONTENT_LENGTH) {
            return len
                .to_str()
                .ok()
                .and_then(|l| l.parse().ok())
                .map(RequestBody::Sized)
                .ok_or(ApiError::BadRequest("Invalid Content-Length header."));
        }
        let chunked = headers.contains_key(header::TRANSFER_ENCODING);
        let h2_with_body = req.version() == Version::HTTP_2
            && !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        Ok(if chunked || h2_with_body {
            RequestBody::Streamed
        } else {
            RequestBody::None
        })
    }
}

/// How the body must be looked at before (or while) it goes upstream.
enum Inspection {
    None,
    /// Read the JSON body: to check the model (a scoped client) and/or to ask for stream usage.
    Json {
        scope: Option<Arc<crate::access::clients::Client>>,
        limit: usize,
        stream_usage: bool,
    },
    Multipart(Arc<crate::access::clients::Client>, String, ModelRefusal),
}

impl Inspection {
    /// Bodies are read only for clients with a model scope, and for chat completions when the
    /// proxy asks for stream usage; everything else takes the zero-copy path.
    fn of(
        req: &HttpRequest,
        caller: Option<&Caller>,
        body: &RequestBody,
        policy: &AccessPolicy,
        inject: bool,
    ) -> Self {
        let scope = caller
            .map(|c| Arc::clone(&c.client))
            .filter(|c| c.has_model_scope());
        let limit = policy.max_inspect_body_bytes;
        // Only a declared length within the limit: a larger chat request is forwarded as is.
        let stream_usage = inject
            && *req.method() == Method::POST
            && req.path() == "/v1/chat/completions"
            && matches!(body, RequestBody::Sized(len) if *len <= limit as u64);
        if matches!(body, RequestBody::None) {
            return Inspection::None;
        }
        match (body_shape(req.headers()), scope) {
            (BodyShape::Json, scope) if scope.is_some() || stream_usage => Inspection::Json {
                scope,
                limit,
                stream_usage,
            },
            (BodyShape::Multipart(boundary), Some(client)) => {
                Inspection::Multipart(client, boundary, ModelRefusal::default())
            }
            _ => Inspection::None,
        }
    }
}

fn model_refused(model: &str) -> ApiError {
    ApiError::Forbidden(
        "model_not_allowed",
        format!("This client may not use the model `{model}`."),
    )
}

pub async fn forward(
    req: HttpRequest,
    mut payload: web::Payload,
    forwarder: web::Data<Forwarder>,
    policy: web::Data<SharedPolicy>,
    limiter: web::Data<Limiter>,
    metrics: web::Data<Metrics>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let plan = &forwarder.plan;
    let path = req.path();
    let uri = upstream_uri(&plan.base, path, req.uri().query())?;
    // Held until the response (a stream, a session) has ended.
    // Who is calling, and under which policy and limits: read once for the whole request.
    let policy = policy.load_full();
    let caller = req.extensions().get::<Caller>().cloned();
    let limits = caller
        .as_ref()
        .map(|c| ClientLimits::with_defaults(c.client.limits, policy.default_limits));
    let slot = admit(caller.as_ref(), limits, &limiter, &metrics).await?;
    // The guard let only admin clients through to the admin API when an admin key is set.
    let authorization = match &plan.admin_authorization {
        Some(admin) if path.starts_with(ADMIN_PREFIX) => admin,
        _ => &plan.authorization,
    };
    if is_websocket_upgrade(req.headers()) {
        let url = uri.to_string();
        let ws_url = match url.strip_prefix("http") {
            Some(rest) => format!("ws{rest}"),
            None => url,
        };
        return bridge_upgrade(
            &req,
            payload,
            &forwarder.ws_client,
            ws_url,
            authorization,
            SessionTerms {
                limits: forwarder.limits,
                draining: forwarder.draining.clone(),
                slot,
                metrics: metrics.clone().into_inner(),
            },
        )
        .await;
    }

    let mut upstream = forwarder
        .client
        .request(req.method().clone(), uri)
        .no_decompress();
    let headers = upstream.headers_mut();
    copy_request_headers(req.headers(), headers);
    headers.insert(header::AUTHORIZATION, authorization.clone());
    if let Some(org) = &plan.organization {
        headers.insert(OPENAI_ORGANIZATION.clone(), org.clone());
    }
    if let Some(project) = &plan.project {
        headers.insert(OPENAI_PROJECT.clone(), project.clone());
    }

    let body = RequestBody::of(&req)?;
    let inspection = Inspection::of(
        &req,
        caller.as_ref(),
        &body,
        &policy,
        plan.inject_stream_usage,
    );
    let mut refusal = None;
    let mut usage_injected = false;
    let sent = match (inspection, body) {
        (
            Inspection::Json {
                scope,
                limit,
                stream_usage,
            },
            body,
        ) => {
            let declared = match body {
                RequestBody::Sized(len) => Some(len),
                _ => None,
            };
            let json = read_json(&mut payload, declared, limit).await?;
            if let Some(client) = scope
                && let Some(model) = json_model(&json).filter(|m| !client.model_allowed(m))
            {
                return Err(model_refused(&model));
            }
            match stream_usage.then(|| with_stream_usage(&json)).flatten() {
                Some(asked) => {
                    usage_injected = true;
                    upstream.send_body(asked)
                }
                None => upstream.send_body(json),
            }
        }
        (Inspection::Multipart(client, boundary, refused), body) => {
            refusal = Some(Rc::clone(&refused));
            let checked = MultipartModelCheck::new(payload, &boundary, client, refused);
            match body {
                RequestBody::Sized(len) => upstream.send_body(SizedStream::new(len, checked)),
                _ => upstream.send_body(BodyStream::new(checked)),
            }
        }
        (Inspection::None, RequestBody::Sized(len)) => {
            upstream.send_body(SizedStream::new(len, payload))
        }
        (Inspection::None, RequestBody::Streamed) => upstream.send_body(BodyStream::new(payload)),
        (Inspection::None, RequestBody::None) => upstream.send(),
    };
    // Dropping this future (the client hung up, and `h1_allow_half_closed(false)` noticed)
    // drops the upstream connection: an abandoned completion stops costing money.
    let response = sent.await.map_err(|e| {
        if let Some(model) = refusal.as_ref().and_then(|r| r.borrow_mut().take()) {
            return model_refused(&model);
        }
        let err = map_send_error(e, plan.settings.first_byte_timeout);
        metrics.upstream_error(match &err {
            ApiError::UpstreamTimeout(_) => "timeout",
            _ => "connect",
        });
        log::warn!("{} {}: {err}", req.method(), req.path());
        err
    })?;
    let first_byte = started.elapsed();
    metrics.first_byte(first_byte);
    let reading = SharedReading::default();
    let meter = UsageMeter::for_response(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        response
            .headers()
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok()),
        Rc::clone(&reading),
    );
    let charge = token_charge(
        caller.as_ref(),
        limits,
        &limiter,
        meter.is_some().then(|| Rc::clone(&reading)),
    );
    req.extensions_mut().insert(UpstreamFacts {
        first_byte: Some(first_byte),
        usage: meter.is_some().then_some(reading),
    });
    Ok(relay(
        &req,
        response,
        plan.compression,
        BodyWatch {
            slot,
            metrics: metrics.into_inner(),
            meter,
            charge,
            usage_injected,
        },
    ))
}

/// What rides along with a response body until it is done: the client's concurrency slot,
/// the metrics, the usage meter and token charge, and whether the usage chunk must be hidden.
struct BodyWatch {
    slot: InFlight,
    metrics: Arc<Metrics>,
    meter: Option<UsageMeter>,
    charge: Option<TokenCharge>,
    usage_injected: bool,
}

/// Charges a response's real usage to the client's tokens-per-minute window when its body is
/// done (or dropped: whatever usage was seen by then counts).
pub struct TokenCharge {
    limiter: Arc<Limiter>,
    client: String,
    tpm: u32,
    reading: SharedReading,
}

impl Drop for TokenCharge {
    fn drop(&mut self) {
        let Some(usage) = self.reading.borrow().usage else {
            return;
        };
        let (limiter, client, tpm) = (Arc::clone(&self.limiter), self.client.clone(), self.tpm);
        actix_web::rt::spawn(async move {
            limiter.charge_tokens(&client, tpm, usage.total).await;
        });
    }
}

fn token_charge(
    caller: Option<&Caller>,
    limits: Option<ClientLimits>,
    limiter: &web::Data<Limiter>,
    reading: Option<SharedReading>,
) -> Option<TokenCharge> {
    // The cheap checks first: most requests have no token limit, and need no name copied.
    let tpm = limits?.tokens_per_minute?;
    let reading = reading?;
    Some(TokenCharge {
        limiter: Arc::clone(limiter),
        client: caller?.client.name.clone(),
        tpm,
        reading,
    })
}

async fn admit(
    caller: Option<&Caller>,
    limits: Option<ClientLimits>,
    limiter: &Limiter,
    metrics: &Metrics,
) -> Result<InFlight, ApiError> {
    let (Some(caller), Some(limits)) = (caller, limits) else {
        return Ok(InFlight::none());
    };
    limiter
        .admit(&caller.client.name, limits)
        .await
        .map_err(|refusal| {
            metrics.rate_limited(
                &caller.client.name,
                match refusal {
                    Refusal::Requests { .. } => "requests",
                    Refusal::Concurrency { .. } => "concurrency",
                    Refusal::Tokens { .. } => "tokens",
                    Refusal::StoreUnavailable => "store_unavailable",
                },
            );
            ApiError::RateLimited(refusal)
        })
}

/// Turns the upstream response into ours: status and filtered headers as they are, the body
/// passed on as a stream (sized when the upstream gave a length).
fn relay(
    req: &HttpRequest,
    mut upstream: awc::ClientResponse<Decoder<actix_http::Payload>>,
    compression: CompressionPolicy,
    watch: BodyWatch,
) -> HttpResponse {
    let BodyWatch {
        slot,
        metrics,
        meter,
        charge,
        usage_injected,
    } = watch;
    let status = upstream.status();
    let upstream_headers = upstream.headers();
    let decode = decode_for_client(req.headers(), upstream_headers);
    let length = upstream_headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let no_body = *req.method() == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;

    // awc reads a body to EOF only for HTTP/1.0 responses without a length.
    let eof_delimited = length.is_none() && upstream.version() == Version::HTTP_10;

    let stream = StreamGauge::open(is_event_stream(upstream_headers).then(|| Arc::clone(&metrics)));
    let mut builder = HttpResponse::build(status);
    // The meter sees the usage chunk the proxy asked for; the client, which did not ask, does
    // not.
    let strip_usage = usage_injected && is_event_stream(upstream_headers);
    let metered = Metered::new(upstream.take_payload(), meter);
    let payload = if strip_usage {
        futures_util::future::Either::Left(StripUsageChunk::new(metered))
    } else {
        futures_util::future::Either::Right(metered)
    };
    let payload = payload.take_while(move |item| {
        // Owning the client's concurrency slot and the stream gauge here keeps both taken
        // until the body is done.
        let (_slot, _stream, _charge) = (&slot, &stream, &charge);
        if item.is_err() {
            metrics.upstream_error("reset");
        }
        // EOF ends only a body framed by EOF; anywhere else it stays an error (strict_eof.rs).
        let clean_end = eof_delimited
            && matches!(item, Err(PayloadError::Io(e) | PayloadError::Incomplete(Some(e))) if is_upstream_eof(e));
        future::ready(!clean_end)
    });
    let mut response = match (no_body, decode, length) {
        // actix writes a HEAD response's length from the body size and never its bytes.
        (true, _, Some(len)) => builder.body(SizedStream::new(len, payload)),
        (true, _, None) => builder.finish(),
        (false, Some(coding), _) => builder.body(BodyStream::new(Decoder::new(payload, coding))),
        (false, None, Some(len)) => builder.body(SizedStream::new(len, payload)),
        (false, None, None) => builder.body(BodyStream::new(payload)),
    };

    let headers = response.headers_mut();
    copy_response_headers(upstream.headers(), headers);
    if decode.is_some() {
        headers.remove(header::CONTENT_ENCODING);
    }
    if is_event_stream(headers) {
        // An nginx in front would otherwise buffer the stream until it closes.
        headers.insert(X_ACCEL_BUFFERING.clone(), HeaderValue::from_static("no"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    let sized = if decode.is_some() { None } else { length };
    if !headers.contains_key(header::CONTENT_ENCODING) && !compression.allows(headers, sized) {
        // `Compress` leaves bodies that declare a coding alone; the server strips this marker
        // again before the response leaves (server.rs).
        headers.insert(header::CONTENT_ENCODING, IDENTITY.clone());
    }
    response
}

pub static IDENTITY: HeaderValue = HeaderValue::from_static("identity");

/// Counts an open event stream in the metrics for as long as it lives.
pub struct StreamGauge(Option<Arc<Metrics>>);

impl StreamGauge {
    pub fn open(metrics: Option<Arc<Metrics>>) -> Self {
        if let Some(m) = &metrics {
            m.stream_opened();
        }
        StreamGauge(metrics)
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.stream_closed();
        }
    }
}

fn map_send_error(err: SendRequestError, first_byte_timeout: Duration) -> ApiError {
    match err {
        SendRequestError::Timeout => ApiError::UpstreamTimeout(format!(
            "The upstream did not start answering within {} s.",
            first_byte_timeout.as_secs()
        )),
        SendRequestError::Connect(ConnectError::Timeout) => {
            ApiError::UpstreamTimeout("Connecting to the upstream timed out.".to_owned())
        }
        SendRequestError::Connect(e) => {
            ApiError::UpstreamUnreachable(format!("Cannot connect to the upstream: {e}."))
        }
        other => ApiError::UpstreamUnreachable(format!("The upstream request failed: {other}.")),
    }
}
