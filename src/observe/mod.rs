//! What the proxy reports about its traffic: Prometheus metrics (and, next, usage and audit).

pub mod metrics;
