//! The forwarding path: `/v1/<tail>` to the configured upstream, streaming both ways.

pub mod encoding;
pub mod forward;
pub mod headers;
pub mod nodelay;
pub mod strict_eof;
pub mod upstream_url;
