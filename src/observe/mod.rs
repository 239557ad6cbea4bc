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

    /// `oap_` + the prefix + the counter in 10 hex digits, written without the formatter.
    fn next_id(&self) -> HeaderValue {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        // 4 + 12 + at most 16 bytes; the prefix is 6 random bytes in hex.
        let mut id = [0u8; 40];
        let mut len = 0;
        for part in [b"oap_".as_slice(), self.id_prefix.as_bytes()] {
            id[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        }
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(10);
        for i in (0..digits).rev() {
            id[len] = b"0123456789abcdef"[((n >> (i * 4)) & 0xf) as usize];
            len += 1;
        }
        HeaderValue::from_bytes(&id[..len]).expect("ascii hex is a valid header value")
    }
}

/// What only the audit line needs, gathered only when there is an audit log.
struct AuditFacts {
    method: String,
    path: String,
    bytes_in: u64,
    peer: Option<std::net::IpAddr>,
}

impl AuditFacts {
    fn of(req: &ServiceRequest) -> Self {
        Self {
            method: req.method().to_string(),
            path: req.path().to_owned(),
            bytes_in: req
                .headers()
                .get(actix_web::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            peer: req.peer_addr().map(|a| a.ip()),
        }
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
        .filter(|v| {
            let v = v.as_bytes();
            !v.is_empty() && v.len() <= 128 && v.iter().all(u8::is_ascii_graphic)
        })
        .cloned()
        .unwrap_or_else(|| obs.next_id());
    let audit_facts = obs.audit.is_some().then(|| AuditFacts::of(&req));
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
        res.headers_mut()
            .insert(X_PROXY_REQUEST_ID.clone(), request_id.clone());
        let status = res.status().as_u16();
        let caller = res.request().extensions().get::<Caller>().cloned();
        let facts = res.request().extensions().get::<UpstreamFacts>().cloned();
        // Read from the response now, while it is at hand; used only by the audit line.
        let audit_facts = audit_facts.map(|f| {
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
            (f, error_code, upstream_request_id, stream)
        });
        Ok(res.map_body(move |_, body| {
            Recorded::new(BoxBody::new(body), move |bytes_out| {
                let client = caller.as_ref().map_or("-", |c| c.client.name.as_str());
                let took = started.elapsed();
                let facts = facts.unwrap_or_default();
                let reading = facts.usage.as_ref().map(|r| r.borrow());
                // The model as the upstream named it in its answer (grouped into families);
                // `none` where no JSON or event-stream answer said.
                let family = reading
                    .as_ref()
                    .and_then(|r| r.model.as_deref())
                    .map_or("none", usage::model_family);
                obs.metrics
                    .request_finished(client, group, family, status, took);
                let usage = reading.as_ref().and_then(|r| r.usage);
                if let Some(u) = usage {
                    obs.metrics.tokens(client, family, u.prompt, u.completion);
                }
                let (Some(audit), Some((f, error_code, upstream_request_id, stream))) =
                    (&obs.audit, audit_facts)
                else {
                    return;
                };
                audit.record(AuditRecord {
                    ts: OffsetDateTime::now_utc()
                        .format(&Rfc3339)
                        .unwrap_or_default(),
                    request_id: request_id.to_str().unwrap_or_default().to_owned(),
                    client: client.to_owned(),
                    client_ip: caller
                        .as_ref()
                        .map(|c| c.ip)
                        .or(f.peer)
                        .map(|ip| ip.to_string()),
                    method: f.method,
                    path: f.path,
                    model: reading.as_ref().and_then(|r| r.model.clone()),
                    status,
                    upstream_request_id,
                    ttfb_ms: facts.first_byte.map(|d| d.as_secs_f64() * 1000.0),
                    duration_ms: took.as_secs_f64() * 1000.0,
                    bytes_in: f.bytes_in,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_prefixed_hex_and_distinct() {
        let obs = Observers::new(Arc::new(Metrics::default()), None);
        let first = obs.next_id();
        let first = first.to_str().unwrap();
        assert_eq!(first.len(), 4 + 12 + 10, "{first}");
        assert!(first.starts_with("oap_"));
        assert!(first[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(first.ends_with("0000000000"));
        assert!(obs.next_id().to_str().unwrap().ends_with("0000000001"));
        obs.id_counter.store(u64::MAX, Ordering::Relaxed);
        let last = obs.next_id();
        assert!(last.to_str().unwrap().ends_with("ffffffffffffffff"));
    }
}
