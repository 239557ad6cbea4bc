//! What the proxy reports about its traffic: Prometheus metrics and the audit log, both fed by
//! one middleware that sees every request from arrival to the end of its response body.

pub mod audit;
pub mod metrics;
pub mod usage;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{Error, HttpMessage};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use self::audit::{AuditLog, AuditRecord};
use self::metrics::{Metrics, Recorded, path_group};
use crate::access::Caller;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_PROXY_REQUEST_ID: HeaderName = HeaderName::from_static("x-proxy-request-id");

/// Facts the forwarder learns about a request, left in its extensions for the record.
#[derive(Debug, Clone, Default)]
pub struct UpstreamFacts {
    pub first_byte: Option<Duration>,
    /// What the usage meter read from the response, when it could read one.
    pub usage: Option<usage::SharedReading>,
}

/// The code of an error the proxy answered itself (not the upstream's).
#[derive(Debug, Clone, Copy)]
pub struct ProxyErrorCode(pub &'static str);

pub struct Observers {
    pub metrics: Arc<Metrics>,
    pub audit: Option<Arc<AuditLog>>,
    /// A per-process random prefix and a counter make request ids unique without a syscall
    /// per request.
    id_prefix: String,
    id_counter: AtomicU64,
}

impl Observers {
    pub fn new(metrics: Arc<Metrics>, audit: Option<Arc<AuditLog>>) -> Self {
        let mut seed = [0u8; 6];
        let _ = getrandom::fill(&mut seed);
        Self {
            metrics,
            audit,
            id_prefix: seed.iter().map(|b| format!("{b:02x}")).collect(),
            id_counter: AtomicU64::new(0),
        }
    }

    fn next_id(&self) -> String {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        format!("oap_{}{n:010x}", self.id_prefix)
    }
}

/// The middleware body: times the request, tags it with a request id (the client's
/// `X-Request-Id`, or a new one), returned as `x-proxy-request-id` (the response's own
/// `x-request-id` is the upstream's), and reports to the metrics and the audit log when the
/// response body is done.
pub fn record<S, B>(
    req: ServiceRequest,
    srv: &S,
    obs: Arc<Observers>,
) -> impl Future<Output = Result<ServiceResponse<Recorded>, Error>> + use<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody + 'static,
{
    let started = Instant::now();
    let group = path_group(req.path());
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| obs.next_id(), str::to_owned);
    let method = req.method().to_string();
    let path = req.path().to_owned();
    let bytes_in = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let peer = req.peer_addr().map(|a| a.ip());
    obs.metrics.request_started();
    let response = srv.call(req);
    async move {
        let res = match response.await {
            Ok(res) => res,
            Err(e) => {
                obs.metrics
                    .request_finished("-", group, "none", 500, started.elapsed());
                return Err(e);
            }
        };
        let mut res = res;
        if let Ok(id) = HeaderValue::try_from(request_id.as_str()) {
            res.headers_mut().insert(X_PROXY_REQUEST_ID.clone(), id);
        }
        let status = res.status().as_u16();
        let caller = res.request().extensions().get::<Caller>().cloned();
        let facts = res.request().extensions().get::<UpstreamFacts>().cloned();
        let error_code = res
            .response()
            .extensions()
            .get::<ProxyErrorCode>()
            .map(|c| c.0);
        let upstream_request_id = res
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let stream = status == 101 || crate::proxy::encoding::is_event_stream(res.headers());
        Ok(res.map_body(move |_, body| {
            Recorded::new(BoxBody::new(body), move |bytes_out| {
                let client = caller.as_ref().map_or("-", |c| c.client.name.as_str());
                let took = started.elapsed();
                let facts = facts.unwrap_or_default();
                let reading = facts.usage.map(|r| r.borrow().clone());
                // The model as the upstream named it in its answer (grouped into families);
                // `none` where no JSON or event-stream answer said.
                let family = reading
                    .as_ref()
                    .and_then(|r| r.model.as_deref())
                    .map_or("none", usage::model_family);
                obs.metrics
                    .request_finished(client, group, family, status, took);
                if let Some(u) = reading.as_ref().and_then(|r| r.usage) {
                    obs.metrics.tokens(client, family, u.prompt, u.completion);
                }
                let Some(audit) = &obs.audit else { return };
                let usage = reading.as_ref().and_then(|r| r.usage);
                audit.record(AuditRecord {
                    ts: OffsetDateTime::now_utc()
                        .format(&Rfc3339)
                        .unwrap_or_default(),
                    request_id,
                    client: client.to_owned(),
                    client_ip: caller
                        .as_ref()
                        .map(|c| c.ip)
                        .or(peer)
                        .map(|ip| ip.to_string()),
                    method,
                    path,
                    model: reading.as_ref().and_then(|r| r.model.clone()),
                    status,
                    upstream_request_id,
                    ttfb_ms: facts.first_byte.map(|d| d.as_secs_f64() * 1000.0),
                    duration_ms: took.as_secs_f64() * 1000.0,
                    bytes_in,
                    bytes_out,
                    prompt_tokens: usage.map(|u| u.prompt),
                    completion_tokens: usage.map(|u| u.completion),
                    total_tokens: usage.map(|u| u.total),
                    usage_partial: reading.as_ref().is_some_and(|r| !r.complete),
                    stream,
                    error_code: error_code.map(str::to_owned),
                });
            })
        }))
    }
}
