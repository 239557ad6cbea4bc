//! Who may use the proxy: the bearer guard on the `/v1` scope.

pub mod guard;
