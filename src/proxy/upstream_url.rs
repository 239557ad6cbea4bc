//! Maps a client request target onto the configured upstream. Only the path below `/v1/` and
//! the raw query are taken from the client; scheme and authority always come from the
//! configuration, so absolute-form targets and `Host` headers cannot redirect the proxy.

use actix_web::http::Uri;

use crate::error::ApiError;

/// The client-facing prefix every forwarded path must start with.
pub const PREFIX: &str = "/v1/";

/// Builds the upstream URI for `path` (raw, still percent-encoded) and `query` (byte-for-byte).
/// `base` is the configured base URL without a trailing slash.
pub fn upstream_uri(base: &str, path: &str, query: Option<&str>) -> Result<Uri, ApiError> {
    let tail = path.strip_prefix(PREFIX).ok_or(ApiError::NotFound)?;
    if tail.is_empty() {
        return Err(ApiError::NotFound);
    }
    if !tail.split('/').all(is_safe_segment) {
        return Err(ApiError::BadPath);
    }
    let mut target =
        String::with_capacity(base.len() + 1 + tail.len() + query.map_or(0, |q| q.len() + 1));
    target.push_str(base);
    target.push('/');
    target.push_str(tail);
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    target.parse().map_err(|_| ApiError::BadPath)
}

/// A segment the upstream could read as a step up (`..`, `.`, `%2e%2e`), as a path separator
/// (`%2f`, `\`, `%5c`) or as a root (empty segment from `//`) is refused outright rather than
/// normalised: a legitimate OpenAI path never needs one.
fn is_safe_segment(segment: &str) -> bool {
    if segment.is_empty() || segment.contains('\\') {
        return false;
    }
    if !segment.contains('%') {
        return segment != "." && segment != "..";
    }
    let decoded = percent_decode(segment);
    !(decoded == b"." || decoded == b".." || decoded.contains(&b'/') || decoded.contains(&b'\\'))
}

fn percent_decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://api.openai.com/v1";

    fn map(path: &str, query: Option<&str>) -> Result<String, ApiError> {
        upstream_uri(BASE, path, query).map(|u| u.to_string())
    }

    #[test]
    fn maps_tail_and_keeps_query_bytes() {
        assert_eq!(
            map("/v1/chat/completions", None).unwrap(),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            map(
                "/v1/files",
                Some("purpose=fine-tune&after=a%2Fb&x=%20&empty=")
            )
            .unwrap(),
            "https://api.openai.com/v1/files?purpose=fine-tune&after=a%2Fb&x=%20&empty="
        );
        assert_eq!(
            map("/v1/fine_tuning/jobs/ftjob-1:cancel", None).unwrap(),
            "https://api.openai.com/v1/fine_tuning/jobs/ftjob-1:cancel"
        );
        assert_eq!(
            map("/v1/files/file%20x/content", None).unwrap(),
            "https://api.openai.com/v1/files/file%20x/content"
        );
    }

    #[test]
    fn works_with_a_base_without_path() {
        let uri = upstream_uri("http://127.0.0.1:9", "/v1/models", None).unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:9/models");
    }

    #[test]
    fn refuses_escapes() {
        for path in [
            "/v1/../admin",
            "/v1/models/..",
            "/v1/./models",
            "/v1/%2e%2e/admin",
            "/v1/%2E%2e/admin",
            "/v1/.%2e/admin",
            "/v1/models%2f..%2fx",
            "/v1/models%2F..",
            "/v1/a%5c..%5cb",
            "/v1/a\\b",
            "/v1//evil.example/x",
            "/v1/models//x",
            "/v1/models/",
        ] {
            assert_eq!(map(path, None), Err(ApiError::BadPath), "{path}");
        }
    }

    #[test]
    fn only_v1_tails_map() {
        assert_eq!(map("/v1/", None), Err(ApiError::NotFound));
        assert_eq!(map("/v1", None), Err(ApiError::NotFound));
        assert_eq!(map("/v2/models", None), Err(ApiError::NotFound));
    }

    #[test]
    fn authority_always_comes_from_base() {
        // Whatever the tail holds, it lands in the path: '@' or ':' cannot become authority.
        let uri = upstream_uri(BASE, "/v1/@evil.example:80/x", None).unwrap();
        assert_eq!(uri.host(), Some("api.openai.com"));
        assert!(uri.path().starts_with("/v1/"));
    }

    #[test]
    fn percent_decoding_handles_truncated_escapes() {
        assert_eq!(percent_decode("%2"), b"%2");
        assert_eq!(percent_decode("%zz."), b"%zz.");
        assert_eq!(percent_decode("a%2e"), b"a.");
    }
}
