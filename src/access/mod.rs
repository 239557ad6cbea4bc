//! Who may use the proxy, from where, and for what: named clients, IP allow-lists, and the
//! bearer guard on the `/v1` scope. The whole policy is swapped atomically on reload.

pub mod clients;
pub mod guard;
pub mod ip;
pub mod model_scope;

use std::sync::Arc;

use arc_swap::ArcSwap;

use self::clients::ClientRegistry;
use self::ip::Cidr;

/// Path prefix of OpenAI's organization (admin) API.
pub const ADMIN_PREFIX: &str = "/v1/organization/";

#[derive(Debug)]
pub struct AccessPolicy {
    pub clients: ClientRegistry,
    /// Empty: any address.
    pub allowed_ips: Vec<Cidr>,
    pub trusted_proxies: Vec<Cidr>,
    /// Largest JSON body read to check a model scope (413 above it).
    pub max_inspect_body_bytes: usize,
    /// With an admin key configured, only admin clients may reach `/v1/organization/`.
    pub admin_paths_restricted: bool,
    /// Limits for clients that set none of their own.
    pub default_limits: crate::limits::ClientLimits,
}

/// The policy in force; requests load it without locking, reloads store a new one.
pub type SharedPolicy = Arc<ArcSwap<AccessPolicy>>;

/// Who made the request, as established by the guard; read by the forwarder and the logs.
#[derive(Clone)]
pub struct Caller {
    pub client: Arc<clients::Client>,
    pub ip: std::net::IpAddr,
}
