//! Prometheus metrics, kept in atomics and rendered in the text exposition format. Label
//! values are bounded: client names come from the configuration, paths are grouped by their
//! first segment under /v1 (unknown ones as `other`), statuses are HTTP codes.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use subtle::ConstantTimeEq;

use crate::access::clients::token_digest;
use crate::error::ApiError;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Endpoint families of the OpenAI API; anything else is `other`.
const PATH_GROUPS: &[&str] = &[
    "assistants",
    "audio",
    "batches",
    "chat",
    "completions",
    "containers",
    "conversations",
    "embeddings",
    "evals",
    "files",
    "fine_tuning",
    "images",
    "models",
    "moderations",
    "organization",
    "realtime",
    "responses",
    "threads",
    "uploads",
    "vector_stores",
];

pub fn path_group(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return if path == "/healthz" {
            "healthz"
        } else {
            "none"
        };
    };
    let first = rest.split('/').next().unwrap_or("");
    PATH_GROUPS
        .iter()
        .find(|g| **g == first)
        .copied()
        .unwrap_or("other")
}

#[derive(Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

type TokensByFamilyAndKind = BTreeMap<(&'static str, &'static str), u64>;
type SeriesByGroupAndStatus = BTreeMap<(&'static str, &'static str, u16), u64>;

#[derive(Default)]
pub struct Metrics {
    /// By client, then by (path group, status): the outer lookup borrows the name, so a
    /// request allocates nothing once its series exists.
    requests: Mutex<BTreeMap<String, SeriesByGroupAndStatus>>,
    duration: Mutex<BTreeMap<&'static str, Histogram>>,
    first_byte: Histogram,
    in_flight: AtomicI64,
    open_streams: AtomicI64,
    upstream_errors: Mutex<BTreeMap<&'static str, u64>>,
    rate_limited: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// client -> (model family, kind) -> tokens; keyed by client first so a request finds its
    /// series without allocating the client's name.
    tokens: Mutex<BTreeMap<String, TokensByFamilyAndKind>>,
    /// Audit lines dropped because the writer's queue was full.
    pub audit_dropped: std::sync::atomic::AtomicU64,
}

/// Label values are written between quotes: escape what the format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A response finished (its body too, for streams).
    pub fn request_finished(
        &self,
        client: &str,
        group: &'static str,
        model: &'static str,
        status: u16,
        took: Duration,
    ) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        {
            let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            let per_client = match requests.get_mut(client) {
                Some(series) => series,
                None => requests.entry(client.to_owned()).or_default(),
            };
            *per_client.entry((group, model, status)).or_default() += 1;
        }
        self.duration
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(group)
            .or_default()
            .observe(took);
    }

    pub fn first_byte(&self, after: Duration) {
        self.first_byte.observe(after);
    }

    pub fn stream_opened(&self) {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_closed(&self) {
        self.open_streams.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn upstream_error(&self, kind: &'static str) {
        *self
            .upstream_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    pub fn rate_limited(&self, client: &str, kind: &'static str) {
        *self
            .rate_limited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((client.to_owned(), kind))
            .or_default() += 1;
    }

    pub fn tokens(&self, client: &str, family: &'static str, prompt: u64, completion: u64) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let per_client = match tokens.get_mut(client) {
            Some(series) => series,
            None => tokens.entry(client.to_owned()).or_default(),
        };
        *per_client.entry((family, "prompt")).or_default() += prompt;
        *per_client.entry((family, "completion")).or_default() += completion;
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        out += "# HELP oap_requests_total Requests answered, by client, path group, model family and status.\n";
        out += "# TYPE oap_requests_total counter\n";
        for (client, series) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for ((group, model, status), n) in series {
                let _ = writeln!(
                    out,
                    "oap_requests_total{{client=\"{}\",path_group=\"{group}\",model=\"{model}\",status=\"{status}\"}} {n}",
                    escape(client)
                );
            }
        }
        out += "# HELP oap_request_duration_seconds Time from request to the end of the response body.\n";
        out += "# TYPE oap_request_duration_seconds histogram\n";
        for (group, h) in self
            .duration
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            h.render(
                &mut out,
                "oap_request_duration_seconds",
                &format!("path_group=\"{group}\""),
            );
        }
        out += "# HELP oap_upstream_first_byte_seconds Time from request to the upstream's response head.\n";
        out += "# TYPE oap_upstream_first_byte_seconds histogram\n";
        self.first_byte
            .render(&mut out, "oap_upstream_first_byte_seconds", "");
        out += "# HELP oap_in_flight_requests Requests being answered now.\n";
        out += "# TYPE oap_in_flight_requests gauge\n";
        let _ = writeln!(
            out,
            "oap_in_flight_requests {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        out += "# HELP oap_open_streams Event streams and WebSocket sessions open now.\n";
        out += "# TYPE oap_open_streams gauge\n";
        let _ = writeln!(
            out,
            "oap_open_streams {}",
            self.open_streams.load(Ordering::Relaxed)
        );
        out += "# HELP oap_upstream_errors_total Upstream failures by kind.\n";
        out += "# TYPE oap_upstream_errors_total counter\n";
        for (kind, n) in self
            .upstream_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "oap_upstream_errors_total{{kind=\"{kind}\"}} {n}");
        }
        out += "# HELP oap_rate_limited_total Requests refused by a client limit.\n";
        out += "# TYPE oap_rate_limited_total counter\n";
        for ((client, kind), n) in self
            .rate_limited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "oap_rate_limited_total{{client=\"{}\",limit=\"{kind}\"}} {n}",
                escape(client)
            );
        }
        out += "# HELP oap_tokens_total Tokens used, from the upstream's usage, by client, model family and kind.\n";
        out += "# TYPE oap_tokens_total counter\n";
        for (client, series) in self.tokens.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for ((family, kind), n) in series {
                let _ = writeln!(
                    out,
                    "oap_tokens_total{{client=\"{}\",model=\"{family}\",kind=\"{kind}\"}} {n}",
                    escape(client)
                );
            }
        }
        out += "# HELP oap_audit_dropped_total Audit lines dropped because the queue was full.\n";
        out += "# TYPE oap_audit_dropped_total counter\n";
        let _ = writeln!(
            out,
            "oap_audit_dropped_total {}",
            self.audit_dropped.load(Ordering::Relaxed)
        );
        out
    }
}

/// A response body that reports to the metrics when it is done (sent whole, failed, or
/// dropped because the client left), so a stream's duration is its whole life.
pub struct Recorded {
    body: actix_web::body::BoxBody,
    bytes: u64,
    on_done: Option<Box<dyn FnOnce(u64)>>,
}

impl Recorded {
    /// `on_done` receives the number of body bytes sent.
    pub fn new(body: actix_web::body::BoxBody, on_done: impl FnOnce(u64) + 'static) -> Self {
        Self {
            body,
            bytes: 0,
            on_done: Some(Box::new(on_done)),
        }
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if let Some(done) = self.on_done.take() {
            done(self.bytes);
        }
    }
}

impl actix_web::body::MessageBody for Recorded {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<actix_web::web::Bytes, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(chunk))) = &polled {
            self.bytes += chunk.len() as u64;
        }
        polled
    }
}

/// Who may read /metrics: anyone who reaches it, or holders of `METRICS_TOKEN`.
pub struct MetricsAccess(pub Option<[u8; 32]>);

pub async fn endpoint(
    req: HttpRequest,
    metrics: web::Data<Metrics>,
    access: web::Data<MetricsAccess>,
) -> Result<HttpResponse, ApiError> {
    if let Some(expected) = &access.0 {
        let presented = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(token_digest);
        if !presented.is_some_and(|p| bool::from(p.ct_eq(expected))) {
            return Err(ApiError::Unauthorized);
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_groups_are_bounded() {
        assert_eq!(path_group("/v1/chat/completions"), "chat");
        assert_eq!(path_group("/v1/fine_tuning/jobs/x"), "fine_tuning");
        assert_eq!(path_group("/v1/whatever-new"), "other");
        assert_eq!(path_group("/healthz"), "healthz");
        assert_eq!(path_group("/nope"), "none");
    }

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.request_started();
        m.request_finished("a\"b", "chat", "gpt-4o", 200, Duration::from_millis(30));
        m.first_byte(Duration::from_millis(20));
        let text = m.render();
        assert!(
            text.contains(r#"oap_requests_total{client="a\"b",path_group="chat",model="gpt-4o",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"oap_request_duration_seconds_bucket{path_group="chat",le="0.05"} 1"#)
        );
        assert!(
            text.contains(r#"oap_request_duration_seconds_bucket{path_group="chat",le="0.025"} 0"#)
        );
        assert!(text.contains("oap_upstream_first_byte_seconds_count 1"));
        assert!(text.contains("oap_in_flight_requests 0"));
    }
}
