//! WebSockets under `/v1` (the Realtime API): authenticated like any request, then bridged to
//! the upstream WebSocket with the upstream key, frames passed through unchanged both ways.

use std::time::Duration;

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use awc::ws::Frame;
use bytestring::ByteString;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;

use crate::error::ApiError;
use crate::limits::InFlight;
use crate::observe::UpstreamFacts;
use crate::observe::usage::SharedReading;
use crate::proxy::headers::copy_request_headers;
use actix_web::HttpMessage;
use std::rc::Rc;

/// Browsers cannot set headers on a WebSocket, so OpenAI's SDKs put the key in a subprotocol.
pub const INSECURE_KEY_PROTOCOL: &str = "openai-insecure-api-key.";

/// How long a closing handshake may take before the connection is simply dropped.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// Per-session limits, from `[realtime]`.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub idle_timeout: Duration,
    pub max_session: Duration,
    pub max_frame_bytes: usize,
}

/// What a session runs under: its limits, the drain signal, and the client's concurrency slot
/// (held until the session ends).
pub struct SessionTerms {
    pub limits: SessionLimits,
    pub draining: Option<watch::Receiver<bool>>,
    pub slot: InFlight,
    pub metrics: std::sync::Arc<crate::observe::metrics::Metrics>,
}

/// True for an HTTP/1.1 upgrade request to a WebSocket.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// The client token carried as a subprotocol (`openai-insecure-api-key.<token>`), if any.
pub fn subprotocol_token(headers: &HeaderMap) -> Option<&str> {
    offered_protocols(headers).find_map(|p| p.strip_prefix(INSECURE_KEY_PROTOCOL))
}

/// The subprotocols offered upstream: the client's, less the one carrying its token.
fn upstream_protocols(headers: &HeaderMap) -> Vec<String> {
    offered_protocols(headers)
        .filter(|p| !p.starts_with(INSECURE_KEY_PROTOCOL))
        .map(str::to_owned)
        .collect()
}

/// Headers the WebSocket handshake owns: awc makes its own key and version, and frames are
/// relayed as they are, so no extension (compression) is negotiated on either side.
const HANDSHAKE_OWNED: &[&str] = &[
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
];

/// Connects upstream first, so that a refusal or an unreachable upstream is a plain HTTP
/// error for the client; only then accepts the client's upgrade and starts the bridge.
pub async fn bridge_upgrade(
    req: &HttpRequest,
    payload: web::Payload,
    client: &awc::Client,
    upstream_url: String,
    authorization: &HeaderValue,
    terms: SessionTerms,
) -> Result<HttpResponse, ApiError> {
    let SessionTerms {
        limits,
        draining,
        slot,
        metrics,
    } = terms;
    let mut copied = HeaderMap::new();
    copy_request_headers(req.headers(), &mut copied);
    let mut upstream = client
        .ws(upstream_url)
        .max_frame_size(limits.max_frame_bytes)
        .set_header(header::AUTHORIZATION, authorization.clone());
    let protocols = upstream_protocols(req.headers());
    if !protocols.is_empty() {
        upstream = upstream.protocols(&protocols);
    }
    for (name, value) in copied.iter() {
        if !HANDSHAKE_OWNED.contains(&name.as_str()) {
            upstream = upstream.header(name.clone(), value.clone());
        }
    }
    let (upstream_response, framed) = upstream.connect().await.map_err(|e| {
        log::warn!("realtime upgrade to the upstream failed: {e}");
        match e {
            awc::error::WsClientError::InvalidResponseStatus(status) => {
                ApiError::UpstreamRefused(status)
            }
            awc::error::WsClientError::SendRequest(awc::error::SendRequestError::Timeout) => {
                ApiError::UpstreamTimeout(
                    "The upstream did not accept the WebSocket in time.".into(),
                )
            }
            other => {
                ApiError::UpstreamUnreachable(format!("The upstream WebSocket failed: {other}."))
            }
        }
    })?;

    let (mut response, session, messages) = actix_ws::handle(req, payload)
        .map_err(|_| ApiError::BadRequest("Invalid WebSocket upgrade request."))?;
    if let Some(protocol) = upstream_response
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
    {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
    }
    let messages = messages.max_frame_size(limits.max_frame_bytes);
    let gauge = crate::proxy::forward::StreamGauge::open(Some(metrics));
    // Usage from the session's `response.done` events, for the audit line and metrics written
    // when the session ends.
    let reading = SharedReading::default();
    req.extensions_mut().insert(UpstreamFacts {
        first_byte: None,
        usage: Some(Rc::clone(&reading)),
    });
    actix_web::rt::spawn(async move {
        bridge(session, messages, framed, limits, draining, &reading).await;
        drop(gauge);
        // The session counted against the client's concurrency until now.
        drop(slot);
    });
    Ok(response)
}

/// Adds the usage of a `response.done` event to the session's running total.
fn add_response_usage(reading: &SharedReading, text: &str) {
    if !text.contains("\"response.done\"") {
        return;
    }
    let Ok(event) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    if event["type"] != "response.done" {
        return;
    }
    let usage = &event["response"]["usage"];
    let get = |k: &str| usage[k].as_u64().unwrap_or(0);
    let (input, output) = (get("input_tokens"), get("output_tokens"));
    let mut r = reading.borrow_mut();
    let mut total = r.usage.unwrap_or_default();
    total.prompt += input;
    total.completion += output;
    total.total += usage["total_tokens"].as_u64().unwrap_or(input + output);
    r.usage = Some(total);
    if r.model.is_none() {
        r.model = event["response"]["model"].as_str().map(str::to_owned);
    }
}

fn reason(code: CloseCode, text: &str) -> Option<CloseReason> {
    Some(CloseReason {
        code,
        description: Some(text.to_owned()),
    })
}

/// Relays frames both ways until either side closes, the session idles or runs too long, or
/// the server's drain ends. Each send is awaited before the next read from the other side,
/// so a slow peer slows its counterpart instead of growing a queue.
async fn bridge(
    mut session: Session,
    mut client: MessageStream,
    upstream: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
    limits: SessionLimits,
    mut draining: Option<watch::Receiver<bool>>,
    reading: &SharedReading,
) {
    let (mut up_tx, mut up_rx) = upstream.split();
    let idle = actix_web::rt::time::sleep(limits.idle_timeout);
    let max = actix_web::rt::time::sleep(limits.max_session);
    tokio::pin!(idle, max);
    let drained = async {
        match draining.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|d| *d).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(drained);
    // Who closes whom when the loop ends: (to the client, to the upstream).
    let (to_client, to_upstream) = loop {
        tokio::select! {
            msg = client.recv() => match msg {
                Some(Ok(Message::Close(r))) => break (None, Some(r)),
                Some(Ok(Message::Nop)) => {}
                Some(Ok(msg)) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
                    if up_tx.send(msg).await.is_err() {
                        break (Some(reason(CloseCode::Error, "upstream connection failed")), None);
                    }
                }
                Some(Err(e)) => break (
                    Some(reason(CloseCode::Protocol, &e.to_string())),
                    Some(reason(CloseCode::Away, "client connection failed")),
                ),
                None => break (None, Some(reason(CloseCode::Away, "client went away"))),
            },
            frame = up_rx.next() => match frame {
                Some(Ok(Frame::Close(r))) => break (Some(r), None),
                Some(Ok(frame)) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
                    let sent = match frame {
                        Frame::Text(bytes) => match ByteString::try_from(bytes) {
                            Ok(text) => {
                                add_response_usage(reading, &text);
                                session.text(text).await
                            }
                            Err(_) => break (
                                Some(reason(CloseCode::Invalid, "upstream sent invalid UTF-8")),
                                Some(reason(CloseCode::Invalid, "invalid UTF-8")),
                            ),
                        },
                        Frame::Binary(bytes) => session.binary(bytes).await,
                        Frame::Continuation(item) => session.continuation(item).await,
                        Frame::Ping(bytes) => session.ping(&bytes).await,
                        Frame::Pong(bytes) => session.pong(&bytes).await,
                        Frame::Close(_) => unreachable!("matched above"),
                    };
                    if sent.is_err() {
                        break (None, Some(reason(CloseCode::Away, "client went away")));
                    }
                }
                Some(Err(_)) | None => break (
                    Some(reason(CloseCode::Error, "upstream connection failed")),
                    None,
                ),
            },
            _ = &mut idle => {
                let r = reason(CloseCode::Normal, "idle timeout");
                break (Some(r.clone()), Some(r));
            }
            _ = &mut max => {
                let r = reason(CloseCode::Normal, "maximum session length reached");
                break (Some(r.clone()), Some(r));
            }
            _ = &mut drained => {
                let r = reason(CloseCode::Away, "server shutting down");
                break (Some(r.clone()), Some(r));
            }
        }
    };
    // Before the close frames go out: the audit line is written when the client's side ends.
    reading.borrow_mut().complete = true;
    // The closing handshake: let the upstream answer and hang up first. Shutting our side at
    // once can make a server drop the close frame still in its buffer.
    if let Some(r) = to_upstream
        && up_tx.send(Message::Close(r)).await.is_ok()
    {
        let _ = actix_web::rt::time::timeout(CLOSE_HANDSHAKE, async {
            while let Some(Ok(frame)) = up_rx.next().await {
                if matches!(frame, Frame::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    // `None` echoes a close the client sent, as the protocol asks.
    let _ = session.close(to_client.flatten()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderName;

    #[test]
    fn token_subprotocol_is_found_and_never_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static("sec-websocket-protocol"),
            HeaderValue::from_static(
                "realtime, openai-insecure-api-key.tok-123, openai-beta.realtime-v1",
            ),
        );
        assert_eq!(subprotocol_token(&h), Some("tok-123"));
        assert_eq!(
            upstream_protocols(&h),
            ["realtime", "openai-beta.realtime-v1"]
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_websocket_upgrade(&h));
    }
}
