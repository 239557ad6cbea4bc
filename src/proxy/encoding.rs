//! Content-coding decisions for upstream responses. The proxy never decodes and re-encodes a
//! body the client can take as it is; it only steps in for a misbehaving upstream.

use actix_web::http::header::{self, ContentEncoding, HeaderMap};

/// Codings the proxy can decode in a stream.
fn decodable(coding: &str) -> Option<ContentEncoding> {
    match coding {
        "gzip" | "x-gzip" => Some(ContentEncoding::Gzip),
        "br" => Some(ContentEncoding::Brotli),
        "deflate" => Some(ContentEncoding::Deflate),
        "zstd" => Some(ContentEncoding::Zstd),
        _ => None,
    }
}

/// Whether the client's `Accept-Encoding` admits `coding` (q > 0, by name or `*`). A client
/// that sent no `Accept-Encoding` is taken to want identity: the proxy forwarded none, so an
/// encoded answer is the upstream's doing, not the client's wish.
pub fn client_accepts(request: &HeaderMap, coding: &str) -> bool {
    let mut wildcard = false;
    for value in request.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
            });
            if name.eq_ignore_ascii_case(coding) {
                return !refused;
            }
            if name == "*" && !refused {
                wildcard = true;
            }
        }
    }
    wildcard
}

/// The coding to undo before the body reaches the client: `Some` only when the upstream used a
/// single coding the client did not accept and the proxy can decode it.
pub fn decode_for_client(request: &HeaderMap, response: &HeaderMap) -> Option<ContentEncoding> {
    let coding = response
        .get(header::CONTENT_ENCODING)?
        .to_str()
        .ok()?
        .trim();
    let coding = coding.to_ascii_lowercase();
    if coding.is_empty() || coding == "identity" || client_accepts(request, &coding) {
        return None;
    }
    decodable(&coding)
}

/// When the proxy's `Compress` middleware may encode a body the upstream left unencoded.
#[derive(Debug, Clone, Copy)]
pub struct CompressionPolicy {
    /// Bodies with a known length below this are sent as they are.
    pub min_bytes: u64,
    /// Event streams too (each event is flushed as its own compressed block).
    pub event_streams: bool,
}

impl CompressionPolicy {
    /// False for media and archives (already compressed), for small sized bodies (a packet or
    /// two: nothing to gain, and brotli's per-response setup costs tens of microseconds), and
    /// for event streams unless enabled (a compressor per open stream holds a few hundred KiB;
    /// ten thousand streams would hold gigabytes).
    pub fn allows(&self, response: &HeaderMap, length: Option<u64>) -> bool {
        if length.is_some_and(|len| len < self.min_bytes) {
            return false;
        }
        if !self.event_streams && is_event_stream(response) {
            return false;
        }
        worth_compressing(response)
    }
}

pub fn is_event_stream(response: &HeaderMap) -> bool {
    response
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

/// Whether compressing a body of this type is worth the proxy's CPU. Media and archives are
/// already compressed; gzip over audio costs time and gains nothing.
fn worth_compressing(response: &HeaderMap) -> bool {
    let Some(content_type) = response
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    !(essence.starts_with("audio/")
        || essence.starts_with("video/")
        || (essence.starts_with("image/") && essence != "image/svg+xml")
        || matches!(
            essence.as_str(),
            "application/octet-stream"
                | "application/zip"
                | "application/gzip"
                | "application/x-gzip"
                | "application/pdf"
                | "application/zstd"
        ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn accept_encoding_parsing() {
        let req = map(&[("accept-encoding", "gzip;q=1.0, br; q=0, *;q=0.1")]);
        assert!(client_accepts(&req, "gzip"));
        assert!(!client_accepts(&req, "br"));
        assert!(client_accepts(&req, "zstd"));
        assert!(!client_accepts(&map(&[]), "gzip"));
        assert!(client_accepts(&map(&[("accept-encoding", "GZIP")]), "gzip"));
    }

    #[test]
    fn decodes_only_what_the_client_refused() {
        let gz = map(&[("content-encoding", "gzip")]);
        assert_eq!(
            decode_for_client(&map(&[]), &gz),
            Some(ContentEncoding::Gzip)
        );
        assert_eq!(
            decode_for_client(&map(&[("accept-encoding", "gzip, br")]), &gz),
            None
        );
        assert_eq!(
            decode_for_client(&map(&[("accept-encoding", "br")]), &gz),
            Some(ContentEncoding::Gzip)
        );
        assert_eq!(decode_for_client(&map(&[]), &map(&[])), None);
        let odd = map(&[("content-encoding", "compress")]);
        assert_eq!(decode_for_client(&map(&[]), &odd), None);
    }

    #[test]
    fn compression_policy() {
        let policy = CompressionPolicy {
            min_bytes: 1024,
            event_streams: false,
        };
        let json = map(&[("content-type", "application/json")]);
        assert!(policy.allows(&json, Some(4096)));
        assert!(policy.allows(&json, None));
        assert!(!policy.allows(&json, Some(512)));
        let sse = map(&[("content-type", "text/event-stream")]);
        assert!(!policy.allows(&sse, None));
        let with_sse = CompressionPolicy {
            event_streams: true,
            ..policy
        };
        assert!(with_sse.allows(&sse, None));
        assert!(!with_sse.allows(&map(&[("content-type", "audio/mpeg")]), None));
    }

    #[test]
    fn media_is_not_worth_compressing() {
        assert!(!worth_compressing(&map(&[("content-type", "audio/mpeg")])));
        assert!(!worth_compressing(&map(&[(
            "content-type",
            "application/octet-stream"
        )])));
        assert!(!worth_compressing(&map(&[("content-type", "image/png")])));
        assert!(worth_compressing(&map(&[(
            "content-type",
            "application/json"
        )])));
        assert!(worth_compressing(&map(&[(
            "content-type",
            "text/event-stream; charset=utf-8"
        )])));
    }
}
