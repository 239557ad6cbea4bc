//! Which headers cross the proxy. Pure functions over header maps, shared by both directions.

use actix_web::http::header::{self, HeaderMap, HeaderName};

/// Connection-scoped headers (RFC 9110 7.6.1) plus the old non-standard ones. Forwarded over
/// HTTP/2, any of these makes the upstream refuse the request as malformed.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Names the client must never choose for the upstream request: the proxy sets the upstream
/// `Host` and `Authorization` itself, derives `Content-Length` from the body, and has already
/// answered `Expect: 100-continue` on its own side.
const REQUEST_OWNED: &[HeaderName] = &[
    header::HOST,
    header::AUTHORIZATION,
    header::CONTENT_LENGTH,
    header::EXPECT,
];

/// True when `name` is hop-by-hop: a fixed one, or one the sender listed in `Connection`.
fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    if HOP_BY_HOP.contains(&name.as_str()) {
        return true;
    }
    headers.get_all(header::CONNECTION).any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
        })
    })
}

/// Copies the client's headers that may reach the upstream, every value of multi-valued ones.
pub fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from.iter() {
        if !REQUEST_OWNED.contains(name) && !is_hop_by_hop(name, from) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Copies the upstream's response headers that may reach the client. `Content-Length` is left
/// to the body, which carries the length when the upstream gave one.
pub fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from.iter() {
        if name != header::CONTENT_LENGTH && !is_hop_by_hop(name, from) {
            to.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn request_drops_hop_by_hop_owned_and_connection_listed() {
        let from = map(&[
            ("host", "proxy.internal"),
            ("authorization", "Bearer client-token"),
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "gzip"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic abc"),
            ("transfer-encoding", "chunked"),
            ("content-length", "12"),
            ("expect", "100-continue"),
            ("upgrade", "h2c"),
            ("content-type", "application/json"),
            ("openai-beta", "assistants=v2"),
            ("x-multi", "a"),
            ("x-multi", "b"),
        ]);
        let mut to = HeaderMap::new();
        copy_request_headers(&from, &mut to);
        let mut names: Vec<_> = to.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["content-type", "openai-beta", "x-multi"]);
        let multi: Vec<_> = to.get_all("x-multi").map(|v| v.to_str().unwrap()).collect();
        assert_eq!(multi, ["a", "b"]);
    }

    #[test]
    fn response_keeps_openai_headers_and_encoding() {
        let from = map(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("content-length", "10"),
            ("content-encoding", "gzip"),
            ("x-request-id", "req_1"),
            ("openai-processing-ms", "12"),
            ("x-ratelimit-remaining-requests", "99"),
            ("retry-after", "1"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        let mut to = HeaderMap::new();
        copy_response_headers(&from, &mut to);
        assert!(to.get("connection").is_none());
        assert!(to.get("transfer-encoding").is_none());
        assert!(to.get("content-length").is_none());
        assert_eq!(to.get("content-encoding").unwrap(), "gzip");
        assert_eq!(to.get("x-request-id").unwrap(), "req_1");
        assert_eq!(to.get("retry-after").unwrap(), "1");
        assert_eq!(to.get_all("set-cookie").count(), 2);
        assert_eq!(to.len(), 7);
    }
}
