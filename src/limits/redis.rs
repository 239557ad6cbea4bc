//! The shared store: request-rate limits kept in Redis, so replicas enforce one limit
//! together. One Lua script per check (atomic, on Redis' own clock, so replicas need not agree
//! on time). An unreachable Redis is reported to the caller, which falls back as configured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::Refusal;

/// GCRA on Redis' clock (microseconds). Returns {admitted, retry_after_us, reset_us}.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then
  return {0, tat - now - tolerance, tat - now}
end
local new = tat + interval
redis.call('SET', KEYS[1], new, 'PX', math.ceil((new - now) / 1000) + 1000)
return {1, 0, new - now}
";

/// The token window on Redis' clock: charges ARGV[3] tokens (0 = only check). Returns
/// {within_window, retry_after_us, debt_us}.
const TOKENS: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if cost > 0 then
  tat = tat + cost * interval
  redis.call('SET', KEYS[1], tat, 'PX', math.ceil((tat - now) / 1000) + 1000)
end
if tat - now > tolerance then
  return {0, tat - now - tolerance, tat - now}
end
return {1, 0, tat - now}
";

/// After a failure, Redis is not tried again for this long (requests use the fallback), so an
/// outage does not add a timeout to every request.
const BACKOFF: Duration = Duration::from_secs(1);

pub struct RedisStore {
    client: redis::Client,
    timeout: Duration,
    conn: OnceCell<ConnectionManager>,
    script: redis::Script,
    tokens_script: redis::Script,
    epoch: Instant,
    /// ms since `epoch` before which Redis is skipped; 0 = try.
    skip_until_ms: AtomicU64,
}

impl RedisStore {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("invalid setting REDIS_URL: {e}"))?;
        Ok(Self {
            client,
            timeout,
            conn: OnceCell::new(),
            script: redis::Script::new(GCRA),
            tokens_script: redis::Script::new(TOKENS),
            epoch: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        self.conn
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config))
            .await
            .cloned()
    }

    /// Runs one GCRA script for `key` with a per-unit interval for `per_minute` units and the
    /// given cost, bounded by the timeout. Returns (admitted, retry_after, reset).
    async fn gcra(
        &self,
        script: &redis::Script,
        key: String,
        per_minute: u32,
        cost: Option<u64>,
    ) -> Result<(bool, Duration, Duration), String> {
        if self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
            return Err("backing off after a recent failure".into());
        }
        let minute_us: u64 = 60_000_000;
        let interval = minute_us / u64::from(per_minute.max(1));
        let attempt = async {
            let mut conn = self.connection().await?;
            let mut invocation = script.key(key);
            invocation.arg(interval).arg(minute_us - interval);
            if let Some(cost) = cost {
                invocation.arg(cost);
            }
            invocation.invoke_async::<(u8, u64, u64)>(&mut conn).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok((admitted, retry_us, reset_us))) => Ok((
                admitted == 1,
                Duration::from_micros(retry_us),
                Duration::from_micros(reset_us),
            )),
            Ok(Err(e)) => Err(self.failed(e.to_string())),
            Err(_) => Err(self.failed(format!("no answer within {} ms", self.timeout.as_millis()))),
        }
    }

    /// The request-rate check for `client`, or an error when Redis cannot answer in time.
    pub async fn check_rate(&self, client: &str, rpm: u32) -> Result<Result<(), Refusal>, String> {
        let (admitted, retry_after, reset) = self
            .gcra(&self.script, format!("oap:rpm:{client}"), rpm, None)
            .await?;
        Ok(if admitted {
            Ok(())
        } else {
            Err(Refusal::Requests {
                limit: rpm,
                remaining: 0,
                reset,
                retry_after,
            })
        })
    }

    /// Charges `cost` tokens (0: only checks) and says whether the window still has room.
    pub async fn tokens(
        &self,
        client: &str,
        tpm: u32,
        cost: u64,
    ) -> Result<Result<(), Refusal>, String> {
        let (admitted, retry_after, reset) = self
            .gcra(
                &self.tokens_script,
                format!("oap:tpm:{client}"),
                tpm,
                Some(cost),
            )
            .await?;
        Ok(if admitted {
            Ok(())
        } else {
            Err(Refusal::Tokens {
                limit: tpm,
                reset,
                retry_after,
            })
        })
    }

    fn failed(&self, why: String) -> String {
        self.skip_until_ms.store(
            self.now_ms() + BACKOFF.as_millis() as u64,
            Ordering::Relaxed,
        );
        why
    }
}
