//! The one error type the proxy itself answers with, rendered as OpenAI's error JSON so the
//! official SDKs map it to their exception classes (401 -> AuthenticationError, ...).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// Missing, malformed or wrong bearer token: one answer for all, no hint which.
    Unauthorized,
    NotFound,
    /// A request path that could leave the configured upstream base path.
    BadPath,
    BadRequest(&'static str),
    /// Authenticated, but outside the client's scopes: (code, message).
    Forbidden(&'static str, String),
    PayloadTooLarge(String),
    UpstreamUnreachable(String),
    /// Over one of the client's limits.
    RateLimited(crate::limits::Refusal),
    /// The upstream answered a WebSocket upgrade with this status instead of 101.
    UpstreamRefused(StatusCode),
    UpstreamTimeout(String),
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

impl ApiError {
    fn parts(&self) -> (&str, &'static str, &'static str) {
        match self {
            ApiError::Unauthorized => (
                "Incorrect or missing API key for this proxy. Send `Authorization: Bearer <service token>`.",
                "invalid_request_error",
                "invalid_api_key",
            ),
            ApiError::NotFound => (
                "Unknown path. This proxy forwards /v1/<endpoint> to the OpenAI API.",
                "invalid_request_error",
                "not_found",
            ),
            ApiError::BadPath => (
                "The request path contains empty, dot or encoded-slash segments, which this proxy refuses.",
                "invalid_request_error",
                "invalid_path",
            ),
            ApiError::BadRequest(m) => (m, "invalid_request_error", "bad_request"),
            ApiError::Forbidden(code, m) => (m, "invalid_request_error", code),
            ApiError::PayloadTooLarge(m) => (m, "invalid_request_error", "request_too_large"),
            ApiError::UpstreamUnreachable(m) => (m, "server_error", "upstream_unreachable"),
            ApiError::RateLimited(crate::limits::Refusal::Requests { .. }) => (
                "Rate limit reached for requests per minute for this client. Retry after the time in Retry-After.",
                "rate_limit_exceeded",
                "rate_limit_exceeded",
            ),
            ApiError::RateLimited(crate::limits::Refusal::Concurrency { .. }) => (
                "Too many concurrent requests for this client. Retry when one has finished.",
                "rate_limit_exceeded",
                "rate_limit_exceeded",
            ),
            ApiError::RateLimited(crate::limits::Refusal::Tokens { .. }) => (
                "Rate limit reached for tokens per minute for this client. Retry after the time in Retry-After.",
                "rate_limit_exceeded",
                "rate_limit_exceeded",
            ),
            ApiError::RateLimited(crate::limits::Refusal::StoreUnavailable) => (
                "The rate-limit store is unavailable; try again shortly.",
                "server_error",
                "limits_unavailable",
            ),
            ApiError::UpstreamRefused(_) => (
                "The upstream refused the WebSocket upgrade with this status.",
                "server_error",
                "upstream_refused",
            ),
            ApiError::UpstreamTimeout(m) => (m, "server_error", "upstream_timeout"),
            ApiError::Internal(m) => (m, "server_error", "internal_error"),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (message, _, code) = self.parts();
        write!(f, "{code}: {message}")
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::BadPath | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(..) => StatusCode::FORBIDDEN,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamRefused(status) => *status,
            ApiError::RateLimited(crate::limits::Refusal::StoreUnavailable) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (message, kind, code) = self.parts();
        let mut res = HttpResponse::build(self.status_code());
        res.extensions_mut()
            .insert(crate::observe::ProxyErrorCode(code));
        match self {
            ApiError::Unauthorized => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::RateLimited(refusal) => rate_limit_headers(&mut res, refusal),
            _ => {}
        }
        res.json(Body {
            error: Detail {
                message,
                kind,
                param: None,
                code,
            },
        })
    }
}

fn rate_limit_headers(res: &mut actix_web::HttpResponseBuilder, refusal: &crate::limits::Refusal) {
    use crate::limits::{Refusal, format_reset};
    match refusal {
        Refusal::Requests {
            limit,
            remaining,
            reset,
            retry_after,
        } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            res.insert_header((header::RETRY_AFTER, secs.max(1).to_string()))
                .insert_header(("x-ratelimit-limit-requests", limit.to_string()))
                .insert_header(("x-ratelimit-remaining-requests", remaining.to_string()))
                .insert_header(("x-ratelimit-reset-requests", format_reset(*reset)));
        }
        Refusal::Tokens {
            limit,
            reset,
            retry_after,
        } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            res.insert_header((header::RETRY_AFTER, secs.max(1).to_string()))
                .insert_header(("x-ratelimit-limit-tokens", limit.to_string()))
                .insert_header(("x-ratelimit-remaining-tokens", "0"))
                .insert_header(("x-ratelimit-reset-tokens", format_reset(*reset)));
        }
        Refusal::Concurrency { .. } | Refusal::StoreUnavailable => {
            res.insert_header((header::RETRY_AFTER, "1"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    async fn render(e: ApiError) -> (StatusCode, serde_json::Value) {
        let res = e.error_response();
        let status = res.status();
        let body = to_bytes(res.into_body()).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[actix_web::test]
    async fn renders_openai_shape() {
        let (status, json) = render(ApiError::UpstreamTimeout("slow".into())).await;
        assert_eq!(status, 504);
        assert_eq!(json["error"]["message"], "slow");
        assert_eq!(json["error"]["type"], "server_error");
        assert_eq!(json["error"]["code"], "upstream_timeout");
        assert!(json["error"]["param"].is_null());
    }

    #[actix_web::test]
    async fn unauthorized_carries_challenge() {
        let res = ApiError::Unauthorized.error_response();
        assert_eq!(res.status(), 401);
        assert_eq!(
            res.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            "Bearer"
        );
        let (_, json) = render(ApiError::Unauthorized).await;
        assert_eq!(json["error"]["code"], "invalid_api_key");
    }
}
