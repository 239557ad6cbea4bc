//! The bearer guard on `/v1`: address allow-lists, token lookup, validity window, path and
//! admin scopes. Model scopes need the body and are checked by the forwarder.

use actix_web::dev::ServiceRequest;
use actix_web::{Error, HttpMessage, web};
use actix_web_httpauth::extractors::bearer::BearerAuth;
use time::OffsetDateTime;

use super::ip::{any_contains, client_ip};
use super::{ADMIN_PREFIX, Caller, SharedPolicy};
use crate::error::ApiError;
use crate::realtime::{is_websocket_upgrade, subprotocol_token};

/// Validator for `HttpAuthentication::with_fn`. Taking `Option<BearerAuth>` means a missing or
/// malformed header reaches us too, so every authentication failure gets the same JSON 401:
/// unknown, expired, not-yet-valid and disabled tokens are indistinguishable.
pub async fn validate(
    req: ServiceRequest,
    credentials: Option<BearerAuth>,
) -> Result<ServiceRequest, (Error, ServiceRequest)> {
    match check(&req, credentials) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            Ok(req)
        }
        Err(e) => Err((e.into(), req)),
    }
}

fn check(req: &ServiceRequest, credentials: Option<BearerAuth>) -> Result<Caller, ApiError> {
    // No policy registered would be a wiring bug: fail closed.
    let shared = req
        .app_data::<web::Data<SharedPolicy>>()
        .ok_or(ApiError::Unauthorized)?;
    let policy = shared.load();
    let peer = req
        .peer_addr()
        .map(|a| a.ip())
        .ok_or(ApiError::Unauthorized)?;
    let ip = client_ip(peer, req.headers(), &policy.trusted_proxies);
    if !policy.allowed_ips.is_empty() && !any_contains(&policy.allowed_ips, ip) {
        return Err(ApiError::Forbidden(
            "ip_not_allowed",
            format!("Requests from {ip} are not allowed."),
        ));
    }
    // A WebSocket from a browser carries the token as a subprotocol instead of a header.
    let subprotocol = is_websocket_upgrade(req.headers())
        .then(|| subprotocol_token(req.headers()))
        .flatten();
    let token = credentials.as_ref().map(|c| c.token()).or(subprotocol);
    let client = token
        .and_then(|t| policy.clients.lookup(t).cloned())
        .filter(|c| c.usable_at(OffsetDateTime::now_utc()))
        .ok_or(ApiError::Unauthorized)?;
    if !client.ip_allowed(ip) {
        return Err(ApiError::Forbidden(
            "ip_not_allowed",
            format!("Client {} may not call from {ip}.", client.name),
        ));
    }
    let path = req.path();
    if !client.path_allowed(path) {
        return Err(ApiError::Forbidden(
            "path_not_allowed",
            format!("Client {} may not use {path}.", client.name),
        ));
    }
    if policy.admin_paths_restricted && path.starts_with(ADMIN_PREFIX) && !client.admin {
        return Err(ApiError::Forbidden(
            "admin_not_allowed",
            format!(
                "Client {} may not use the organization admin API.",
                client.name
            ),
        ));
    }
    Ok(Caller { client, ip })
}
