//! Per-client limits: requests per minute and concurrent requests, enforced in-process and
//! shared by all workers. (A Redis-backed store for several replicas, and token limits from
//! usage, are the next steps; see README.)

mod local;

use std::time::Duration;

pub use local::{InFlight, LocalLimiter};

/// A client's limits after defaults; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientLimits {
    pub requests_per_minute: Option<u32>,
    pub max_concurrent: Option<u32>,
}

impl ClientLimits {
    /// The client's own values where set, the global defaults elsewhere; 0 means unlimited.
    pub fn with_defaults(own: ClientLimits, defaults: ClientLimits) -> ClientLimits {
        let nonzero = |v: Option<u32>| v.filter(|n| *n > 0);
        ClientLimits {
            requests_per_minute: own
                .requests_per_minute
                .or(defaults.requests_per_minute)
                .and_then(|n| nonzero(Some(n))),
            max_concurrent: own
                .max_concurrent
                .or(defaults.max_concurrent)
                .and_then(|n| nonzero(Some(n))),
        }
    }
}

/// Why a request was refused, with what OpenAI's own 429s carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Requests {
        limit: u32,
        remaining: u32,
        /// Until the window is whole again.
        reset: Duration,
        retry_after: Duration,
    },
    Concurrency {
        limit: u32,
    },
}

/// OpenAI's duration format in `x-ratelimit-reset-*`: `350ms`, `17s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_format_matches_openai() {
        assert_eq!(format_reset(Duration::from_millis(350)), "350ms");
        assert_eq!(format_reset(Duration::from_millis(1200)), "2s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn defaults_fill_gaps_and_zero_is_unlimited() {
        let defaults = ClientLimits {
            requests_per_minute: Some(60),
            max_concurrent: Some(0),
        };
        let own = ClientLimits {
            requests_per_minute: None,
            max_concurrent: Some(3),
        };
        let merged = ClientLimits::with_defaults(own, defaults);
        assert_eq!(merged.requests_per_minute, Some(60));
        assert_eq!(merged.max_concurrent, Some(3));
        let merged = ClientLimits::with_defaults(ClientLimits::default(), defaults);
        assert_eq!(merged.max_concurrent, None);
    }
}
