//! Per-client limits: requests per minute (in-process, or in Redis shared by every replica)
//! and concurrent requests (per process). Token limits from usage are the next step.

mod local;
mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use local::{InFlight, LocalLimiter};
pub use redis::RedisStore;

/// What to do while Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Enforce the limit in this process alone until Redis is back.
    Open,
    /// Refuse requests whose limit cannot be checked (503).
    Closed,
}

/// The limiter the forwarder asks: concurrency in-process, the request rate in Redis when one
/// is configured, else in-process.
pub struct Limiter {
    local: LocalLimiter,
    shared: Option<(RedisStore, FailMode)>,
    last_warning_ms: AtomicU64,
    epoch: Instant,
}

impl Limiter {
    pub fn new(shared: Option<(RedisStore, FailMode)>) -> Self {
        Self {
            local: LocalLimiter::default(),
            shared,
            last_warning_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub async fn admit(&self, client: &str, limits: ClientLimits) -> Result<InFlight, Refusal> {
        let slot = self.admit_requests(client, limits).await?;
        if let Some(tpm) = limits.tokens_per_minute {
            self.check_tokens(client, tpm).await?;
        }
        Ok(slot)
    }

    async fn check_tokens(&self, client: &str, tpm: u32) -> Result<(), Refusal> {
        let Some((store, mode)) = &self.shared else {
            return self.local.check_tokens(client, tpm);
        };
        match store.tokens(client, tpm, 0).await {
            Ok(verdict) => verdict,
            Err(why) => {
                self.warn(&why);
                match mode {
                    FailMode::Open => self.local.check_tokens(client, tpm),
                    FailMode::Closed => Err(Refusal::StoreUnavailable),
                }
            }
        }
    }

    /// Charges `tokens` of real usage to the client's window, after the response.
    pub async fn charge_tokens(&self, client: &str, tpm: u32, tokens: u64) {
        if let Some((store, _)) = &self.shared
            && store.tokens(client, tpm, tokens).await.is_ok()
        {
            return;
        }
        self.local.charge_tokens(client, tpm, tokens);
    }

    async fn admit_requests(
        &self,
        client: &str,
        limits: ClientLimits,
    ) -> Result<InFlight, Refusal> {
        let limits = ClientLimits {
            tokens_per_minute: None,
            ..limits
        };
        let Some((store, mode)) = &self.shared else {
            return self.local.admit(client, limits);
        };
        let slot = self.local.admit(
            client,
            ClientLimits {
                requests_per_minute: None,
                ..limits
            },
        )?;
        let Some(rpm) = limits.requests_per_minute else {
            return Ok(slot);
        };
        match store.check_rate(client, rpm).await {
            Ok(verdict) => verdict.map(|()| slot),
            Err(why) => {
                self.warn(&why);
                match mode {
                    FailMode::Open => self
                        .local
                        .admit(
                            client,
                            ClientLimits {
                                requests_per_minute: Some(rpm),
                                max_concurrent: None,
                                tokens_per_minute: None,
                            },
                        )
                        .map(|_| slot),
                    FailMode::Closed => Err(Refusal::StoreUnavailable),
                }
            }
        }
    }

    /// At most one warning every 10 s: an outage must not flood the log.
    fn warn(&self, why: &str) {
        let now = self.epoch.elapsed().as_millis() as u64 + 10_000;
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now >= last + 10_000
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let fallback = match self.shared.as_ref().map(|(_, m)| *m) {
                Some(FailMode::Closed) => "refusing rate-limited requests (fail_closed)",
                _ => "limiting in this process only (fail_open)",
            };
            log::warn!("Redis limits store unavailable ({why}); {fallback}");
        }
    }
}

/// A client's limits after defaults; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientLimits {
    pub requests_per_minute: Option<u32>,
    pub max_concurrent: Option<u32>,
    /// Charged from the usage of responses after they end; checked before each request.
    pub tokens_per_minute: Option<u32>,
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
            tokens_per_minute: own
                .tokens_per_minute
                .or(defaults.tokens_per_minute)
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
    /// The client's tokens-per-minute window is used up.
    Tokens {
        limit: u32,
        reset: Duration,
        retry_after: Duration,
    },
    /// The shared store is down and the fail mode is closed.
    StoreUnavailable,
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
            tokens_per_minute: None,
        };
        let own = ClientLimits {
            requests_per_minute: None,
            max_concurrent: Some(3),
            tokens_per_minute: Some(1000),
        };
        let merged = ClientLimits::with_defaults(own, defaults);
        assert_eq!(merged.requests_per_minute, Some(60));
        assert_eq!(merged.max_concurrent, Some(3));
        let merged = ClientLimits::with_defaults(ClientLimits::default(), defaults);
        assert_eq!(merged.max_concurrent, None);
    }
}
