//! The rate limiter: per tenant and key (a user, an IP address, an email being logged in
//! with), in Redis (logical database `redis.databases.rate_limiting`, 5 by default; on a
//! cluster, keys under their own prefix), one Lua script run per decision.
//!
//! ```no_run
//! # async fn f(storage: caas_storage::Storage, t: caas_storage::TenantId) -> caas_storage::Result<()> {
//! use std::time::Duration;
//! use caas_storage::rate_limit::{RateLimit, Decision};
//! let logins = storage.rate_limiter("login", RateLimit::per(5, Duration::from_secs(60)))?;
//! match logins.check(&t, "alice@example.com").await? {
//!     Decision::Allowed { .. } => { /* try the password */ }
//!     Decision::Limited { retry_after } => { /* 429, Retry-After: retry_after */ }
//! }
//! # Ok(()) }
//! ```
//!
//! The algorithm is GCRA (the generic cell rate algorithm): the key holds one number, the
//! theoretical arrival time (TAT) of the next request. `limit` requests per `period` means one
//! every `period / limit` (the emission interval); a burst of up to `burst` requests (default
//! `limit`) may come at once. A request is admitted when `TAT - burst * interval <= now`, and
//! then moves the TAT on by one interval; a refused one learns exactly when it would be
//! admitted (`retry_after`) and changes nothing. The read-decide-write is one script, so
//! concurrent callers (on any number of instances) are serialised by Redis: over any window the
//! limiter admits at most `burst + window / interval` requests, and exactly that many when
//! callers keep asking. Time is the Redis server's clock (`TIME`, microseconds), so instances
//! with skewed clocks agree. Each decision touches one key, so it works unchanged on a Redis
//! Cluster. The key expires when the TAT is in the past, so idle keys cost nothing.
//!
//! Keys hold the tenant, the limiter's name and the SHA-256 of the caller's key (emails and IP
//! addresses are personal data; they never appear in Redis).

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::StorageConfig;
use crate::connection::RedisConnection;
use crate::error::{Component, Error, Result};
use crate::tenant::TenantId;

/// A rate: `limit` requests per `period`, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests admitted per `period` in the long run.
    pub limit: u32,
    /// The period `limit` is counted over.
    pub period: Duration,
    /// Requests that may come at once (default: `limit`).
    pub burst: u32,
}

impl RateLimit {
    /// `limit` per `period`, bursts of up to `limit`.
    pub fn per(limit: u32, period: Duration) -> Self {
        RateLimit {
            limit,
            period,
            burst: limit,
        }
    }

    /// The same rate with bursts of up to `burst`.
    pub fn with_burst(self, burst: u32) -> Self {
        RateLimit { burst, ..self }
    }

    fn interval_us(&self) -> u64 {
        (self.period.as_micros() / u128::from(self.limit.max(1))).max(1) as u64
    }
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead; `remaining` more requests would be admitted right now.
    Allowed {
        /// Requests that would still be admitted at once after this one.
        remaining: u32,
    },
    /// Refused; the same request is admitted after `retry_after`.
    Limited {
        /// How long until this request would be admitted (the `Retry-After`).
        retry_after: Duration,
    },
}

impl Decision {
    /// Whether the request may go ahead.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// GCRA. KEYS[1] the TAT key; ARGV[1] interval µs, ARGV[2] burst, ARGV[3] cost.
/// Returns {1, remaining} when admitted, {0, retry_after_us} when refused.
pub(crate) const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * tonumber(ARGV[3])
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((tolerance - (new_tat - now)) / interval)}
";

/// One named rate limit over every tenant and key; cheap to clone. Made by
/// [`Storage::rate_limiter`](crate::Storage::rate_limiter).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    redis: RedisConnection,
    prefix: String,
    rate: RateLimit,
    timeout: Duration,
}

impl RateLimiter {
    pub(crate) fn new(
        redis: RedisConnection,
        config: &StorageConfig,
        name: &str,
        rate: RateLimit,
    ) -> Result<Self> {
        if rate.limit == 0 || rate.burst == 0 || rate.period.is_zero() {
            return Err(Error::config(
                format!("rate limit {name:?}"),
                format!("limit, burst and period must be above zero: {rate:?}"),
            ));
        }
        if name.is_empty() || name.contains(':') {
            return Err(Error::config(
                format!("rate limit {name:?}"),
                "the name must be non-empty and without ':'",
            ));
        }
        Ok(RateLimiter {
            redis,
            prefix: format!("{}caas:rl:{name}:", config.redis.key_prefix),
            rate,
            timeout: config.redis.response_timeout,
        })
    }

    /// The rate this limiter enforces.
    pub fn rate(&self) -> RateLimit {
        self.rate
    }

    /// Decides one request by `key` in `tenant`.
    pub async fn check(&self, tenant: &TenantId, key: &str) -> Result<Decision> {
        self.check_n(tenant, key, 1).await
    }

    /// Decides a request that costs `cost` units (e.g. a batch of `cost` messages); refused
    /// whole or admitted whole.
    pub async fn check_n(&self, tenant: &TenantId, key: &str, cost: u32) -> Result<Decision> {
        if cost > self.rate.burst {
            return Err(Error::config(
                "cost",
                format!(
                    "a request costing {cost} can never pass a limit with bursts of {}",
                    self.rate.burst
                ),
            ));
        }
        let hashed = crate::hex::encode(&Sha256::digest(key.as_bytes()));
        let redis_key = format!("{}{tenant}:{hashed}", self.prefix);
        let mut conn = self.redis.clone();
        let operation = "rate limit check";
        let (allowed, value): (i64, i64) = tokio::time::timeout(
            self.timeout,
            redis::Script::new(GCRA)
                .key(&redis_key)
                .arg(self.rate.interval_us())
                .arg(self.rate.burst)
                .arg(cost)
                .invoke_async(&mut conn),
        )
        .await
        .map_err(|_| Error::Timeout {
            component: Component::Redis,
            operation,
            after: self.timeout,
        })?
        .map_err(|source| Error::Redis { operation, source })?;
        Ok(if allowed == 1 {
            Decision::Allowed {
                remaining: value.max(0) as u32,
            }
        } else {
            Decision::Limited {
                retry_after: Duration::from_micros(value.max(1) as u64),
            }
        })
    }
}
