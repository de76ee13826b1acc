//! Leases in Redis: one holder at a time for a background job (a write-behind stream's flusher,
//! an audit queue's drainer, the retention and TTL runs). Written once here; each user picks the
//! key and the token.

use std::sync::LazyLock;
use std::time::Duration;

use super::{Connections, RedisConnection};

/// Takes `key` for `token`, or renews it if `token` holds it already. KEYS: the lease. ARGV:
/// token, ttl in ms.
pub(crate) static HOLD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
",
    )
});

/// Deletes `key` if `token` still holds it. KEYS: the lease. ARGV: token.
pub(crate) static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// Takes or renews the lease `key` for `token` for `ttl`; whether `token` holds it now.
pub(crate) async fn hold(
    conn: &mut RedisConnection,
    key: &str,
    token: &str,
    ttl: Duration,
) -> redis::RedisResult<bool> {
    let held: i64 = HOLD
        .key(key)
        .arg(token)
        .arg(ttl.as_millis() as u64)
        .invoke_async(conn)
        .await?;
    Ok(held == 1)
}

/// Gives the lease `key` up if `token` still holds it.
pub(crate) async fn release(
    conn: &mut RedisConnection,
    key: &str,
    token: &str,
) -> redis::RedisResult<()> {
    RELEASE
        .key(key)
        .arg(token)
        .invoke_async::<i64>(conn)
        .await
        .map(drop)
}

/// One holder per `interval` (retention, TTL sweeps): `SET NX PX` for nine tenths of it, never
/// renewed, so the next interval is open to any instance. `false` when another instance holds
/// it or Redis cannot be reached (the run is skipped, and tried again at the next interval).
pub(crate) async fn take_for_interval(
    conn: &Connections,
    key: &str,
    token: &str,
    interval: Duration,
) -> bool {
    let Ok(mut redis) = conn.redis(conn.config().redis.databases.write_behind) else {
        return false;
    };
    let ttl = (interval * 9 / 10).max(Duration::from_millis(1));
    redis::cmd("SET")
        .arg(key)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(ttl.as_millis() as u64)
        .query_async::<Option<String>>(&mut redis)
        .await
        .ok()
        .flatten()
        .is_some()
}
