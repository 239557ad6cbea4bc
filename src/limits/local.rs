//! The in-process store: per client, a GCRA cell for requests per minute (one atomic, no
//! lock) and an in-flight counter. The map from client name to state is read without locks
//! (`ArcSwap`) and copied only when a client is seen for the first time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::{ClientLimits, Refusal};

const MINUTE_NS: u64 = 60_000_000_000;

#[derive(Default)]
struct ClientState {
    /// GCRA's theoretical arrival time, in ns since the limiter's epoch.
    tat: AtomicU64,
    in_flight: AtomicU32,
    /// The same for tokens, advanced by usage after each response.
    token_tat: AtomicU64,
}

pub struct LocalLimiter {
    epoch: Instant,
    states: ArcSwap<HashMap<String, Arc<ClientState>>>,
}

/// Holds one of a client's concurrent slots; dropping it frees the slot. Keep it alive for
/// the whole response, streamed bodies included.
pub struct InFlight(Option<Arc<ClientState>>);

impl InFlight {
    /// No slot held (no concurrency limit applies).
    pub fn none() -> Self {
        InFlight(None)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(state) = &self.0 {
            state.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            states: ArcSwap::from_pointee(HashMap::new()),
        }
    }
}

impl LocalLimiter {
    fn state(&self, client: &str) -> Arc<ClientState> {
        if let Some(state) = self.states.load().get(client) {
            return Arc::clone(state);
        }
        let mut created = None;
        self.states.rcu(|map| {
            let mut map = HashMap::clone(map);
            let state = map.entry(client.to_owned()).or_default();
            created = Some(Arc::clone(state));
            map
        });
        created.expect("rcu ran at least once")
    }

    /// Admits a request for `client` under `limits`, or says why not. A refused request
    /// consumes nothing.
    pub fn admit(&self, client: &str, limits: ClientLimits) -> Result<InFlight, Refusal> {
        if limits.requests_per_minute.is_none() && limits.max_concurrent.is_none() {
            return Ok(InFlight(None));
        }
        let state = self.state(client);
        let slot = match limits.max_concurrent {
            None => InFlight(None),
            Some(max) => {
                let before = state.in_flight.fetch_add(1, Ordering::AcqRel);
                let slot = InFlight(Some(Arc::clone(&state)));
                if before >= max {
                    return Err(Refusal::Concurrency { limit: max });
                }
                slot
            }
        };
        if let Some(rpm) = limits.requests_per_minute {
            let now = self.epoch.elapsed().as_nanos() as u64;
            gcra(&state.tat, now, rpm)?;
        }
        Ok(slot)
    }

    /// Refuses while the client's token window is used up.
    pub fn check_tokens(&self, client: &str, tpm: u32) -> Result<(), Refusal> {
        let state = self.state(client);
        let now = self.epoch.elapsed().as_nanos() as u64;
        let interval = MINUTE_NS / u64::from(tpm.max(1));
        let debt = state.token_tat.load(Ordering::Acquire).saturating_sub(now);
        let tolerance = MINUTE_NS - interval;
        if debt > tolerance {
            return Err(Refusal::Tokens {
                limit: tpm,
                reset: Duration::from_nanos(debt),
                retry_after: Duration::from_nanos(debt - tolerance),
            });
        }
        Ok(())
    }

    pub fn charge_tokens(&self, client: &str, tpm: u32, tokens: u64) {
        let state = self.state(client);
        let now = self.epoch.elapsed().as_nanos() as u64;
        let cost = tokens.saturating_mul(MINUTE_NS / u64::from(tpm.max(1)));
        let _ = state
            .token_tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.max(now).saturating_add(cost))
            });
    }
}

/// GCRA with a burst of the whole minute's quota: `rpm` requests may come at once, then one
/// more every 60 s / rpm.
fn gcra(tat: &AtomicU64, now: u64, rpm: u32) -> Result<(), Refusal> {
    let interval = MINUTE_NS / u64::from(rpm.max(1));
    let tolerance = MINUTE_NS - interval;
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let start = current.max(now);
        if start - now > tolerance {
            let retry = start - now - tolerance;
            return Err(Refusal::Requests {
                limit: rpm,
                remaining: 0,
                reset: Duration::from_nanos(start - now),
                retry_after: Duration::from_nanos(retry),
            });
        }
        match tat.compare_exchange_weak(
            current,
            start + interval,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Ok(()),
            Err(actual) => current = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let tat = AtomicU64::new(0);
        let t0 = 1_000_000_000;
        for _ in 0..3 {
            assert!(gcra(&tat, t0, 3).is_ok());
        }
        let Err(Refusal::Requests {
            retry_after, limit, ..
        }) = gcra(&tat, t0, 3)
        else {
            panic!("fourth request admitted");
        };
        assert_eq!(limit, 3);
        assert_eq!(retry_after, Duration::from_secs(20));
        assert!(gcra(&tat, t0 + 20_000_000_000, 3).is_ok());
        assert!(gcra(&tat, t0 + 20_000_000_001, 3).is_err());
    }

    #[test]
    fn tokens_are_refused_once_usage_exceeds_the_window() {
        let limiter = LocalLimiter::default();
        assert!(limiter.check_tokens("c", 10).is_ok());
        limiter.charge_tokens("c", 10, 9);
        assert!(limiter.check_tokens("c", 10).is_ok(), "9 of 10 used");
        limiter.charge_tokens("c", 10, 9);
        assert!(matches!(
            limiter.check_tokens("c", 10),
            Err(Refusal::Tokens { limit: 10, .. })
        ));
    }

    #[test]
    fn concurrency_slots_are_released_on_drop() {
        let limiter = LocalLimiter::default();
        let limits = ClientLimits {
            requests_per_minute: None,
            max_concurrent: Some(2),
            tokens_per_minute: None,
        };
        let a = limiter.admit("c", limits).unwrap();
        let _b = limiter.admit("c", limits).unwrap();
        assert_eq!(
            limiter.admit("c", limits).err(),
            Some(Refusal::Concurrency { limit: 2 })
        );
        drop(a);
        assert!(limiter.admit("c", limits).is_ok());
        // Other clients have their own slots.
        assert!(limiter.admit("d", limits).is_ok());
    }
}
