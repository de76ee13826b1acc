//! The session store: tenant-scoped login sessions in Redis (logical database
//! `redis.databases.sessions`, 4 by default; on a cluster, keys under their own prefix), with a
//! sliding idle timeout, a hard lifetime, and revoke-one / revoke-all-for-user.
//!
//! ```no_run
//! # async fn f(storage: caas_storage::Storage, t: caas_storage::TenantId) -> caas_storage::Result<()> {
//! use caas_storage::sessions::SessionOptions;
//! let sessions = storage.sessions(SessionOptions::default())?;
//! let (token, _session) = sessions.create(&t, "u-1", serde_json::json!({ "role": "admin" })).await?;
//! // hand `token.secret()` to the client (a cookie); on each request:
//! let session = sessions.touch::<serde_json::Value>(&t, token.secret()).await?; // None: log in again
//! sessions.revoke_all_for_user(&t, "u-1").await?; // e.g. after a password change
//! # Ok(()) }
//! ```
//!
//! - **Tokens** are 256 random bits from the operating system's generator, as 64 hex
//!   characters. The store never puts a token in a key (keys show in `SCAN`, `MONITOR` and
//!   the slow log): a session's key ends with the token's SHA-256, so reading Redis gives no
//!   session away.
//! - **Tenancy**: the tenant is part of every key, so a token presented under another tenant
//!   finds nothing.
//! - **Expiry**: a session ends after `idle_ttl` without a [`touch`](SessionStore::touch)
//!   (each touch renews it, sliding) and, touched or not, `max_lifetime` after it was created.
//!   Redis expires the key; the renewal is one script run (the renewal never outlives the
//!   lifetime, and a session past its lifetime is deleted on sight). Times are the Redis
//!   server's clock (`TIME`), so instances with skewed clocks agree.
//! - **Revoke all** for a user: each user has an index set of their sessions' key hashes (same
//!   lifetime as the longest session); revoking deletes every listed session, then the set.
//!   A session created while the revocation runs may survive it (it began after the request
//!   to revoke). On a cluster the session and the index are different keys in different slots,
//!   written one after the other: a crash between them leaves a session that revoke-all does
//!   not list, which still ends at its idle timeout.

use std::time::Duration;

use redis::AsyncCommands;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::StorageConfig;
use crate::connection::RedisConnection;
use crate::error::{Component, Error, Result};
use crate::tenant::TenantId;

/// How sessions of one store live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// A session without a touch for this long ends (sliding; default 30 minutes).
    pub idle_ttl: Duration,
    /// A session ends this long after it was created, however often touched (default 24 h).
    pub max_lifetime: Duration,
    /// Separates stores in one Redis database (default `default`): `web`, `api`, ...
    pub namespace: String,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            idle_ttl: Duration::from_secs(30 * 60),
            max_lifetime: Duration::from_secs(24 * 3600),
            namespace: "default".into(),
        }
    }
}

/// The secret a client presents to resume a session. `Debug` shows only its first characters.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    /// The token text to give the client (64 hex characters).
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionToken({}…)", &self.0[..6])
    }
}

/// A live session and the data the service stored with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session<T> {
    /// The tenant it belongs to.
    pub tenant: String,
    /// The user it authenticates.
    pub user_id: String,
    /// Creation time, Redis server clock, milliseconds since the epoch.
    pub created_at_ms: i64,
    /// When it ends at the latest (creation + `max_lifetime`), milliseconds since the epoch.
    pub ends_at_ms: i64,
    /// What the service keeps with it.
    pub data: T,
}

/// Tenant-scoped sessions in Redis; cheap to clone. Made by
/// [`Storage::sessions`](crate::Storage::sessions).
#[derive(Debug, Clone)]
pub struct SessionStore {
    redis: RedisConnection,
    prefix: String,
    options: SessionOptions,
    timeout: Duration,
}

/// Stores the session hash and gives it its idle expiry, then indexes it under its user.
/// KEYS[1] session, ARGV[1] body JSON, ARGV[2] user, ARGV[3] idle ms, ARGV[4] lifetime ms.
/// Returns [created_ms, ends_ms].
pub(crate) const CREATE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ends = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'body', ARGV[1], 'user', ARGV[2],
           'created', string.format('%.0f', now), 'ends', string.format('%.0f', ends))
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[3]), tonumber(ARGV[4])))
return {now, ends}
";

/// Reads a session and slides its expiry, never past its end; deletes it past its end.
/// KEYS[1] session, ARGV[1] idle ms. Returns [body, user, created, ends] or nil.
pub(crate) const TOUCH: &str = r"
local v = redis.call('HMGET', KEYS[1], 'body', 'user', 'created', 'ends')
if not v[1] then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = tonumber(v[4]) - now
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return false
end
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[1]), left))
return v
";

impl SessionStore {
    pub(crate) fn new(
        redis: RedisConnection,
        config: &StorageConfig,
        options: SessionOptions,
    ) -> Result<Self> {
        if options.idle_ttl.is_zero() || options.max_lifetime.is_zero() {
            return Err(Error::config(
                "SessionOptions",
                "idle_ttl and max_lifetime must be longer than zero",
            ));
        }
        if options.namespace.is_empty() || options.namespace.contains(':') {
            return Err(Error::config(
                "SessionOptions.namespace",
                format!("{:?} must be non-empty and without ':'", options.namespace),
            ));
        }
        Ok(SessionStore {
            redis,
            prefix: format!(
                "{}caas:sess:{}:",
                config.redis.key_prefix, options.namespace
            ),
            options,
            timeout: config.redis.response_timeout,
        })
    }

    /// The options this store was made with.
    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    fn session_key(&self, tenant: &TenantId, token: &str) -> String {
        let hash = crate::hex::encode(&Sha256::digest(token.as_bytes()));
        format!("{}s:{tenant}:{hash}", self.prefix)
    }

    fn user_key(&self, tenant: &TenantId, user_id: &str) -> String {
        format!("{}u:{tenant}:{user_id}", self.prefix)
    }

    async fn bounded<T>(
        &self,
        operation: &'static str,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| Error::Timeout {
                component: Component::Redis,
                operation,
                after: self.timeout,
            })?
            .map_err(|source| Error::Redis { operation, source })
    }

    /// Starts a session for `user_id` in `tenant` holding `data`; returns the token to give
    /// the client and the session.
    pub async fn create<T: Serialize>(
        &self,
        tenant: &TenantId,
        user_id: &str,
        data: T,
    ) -> Result<(SessionToken, Session<T>)> {
        let token = SessionToken(format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ));
        let body = serde_json::to_string(&data).map_err(|e| Error::Codec {
            entity: "session",
            direction: "encode",
            message: e.to_string(),
        })?;
        let key = self.session_key(tenant, token.secret());
        let idle = self.options.idle_ttl.as_millis() as u64;
        let life = self.options.max_lifetime.as_millis() as u64;
        let mut conn = self.redis.clone();
        let (created, ends): (i64, i64) = self
            .bounded(
                "create a session",
                redis::Script::new(CREATE)
                    .key(&key)
                    .arg(&body)
                    .arg(user_id)
                    .arg(idle)
                    .arg(life)
                    .invoke_async(&mut conn),
            )
            .await?;
        let index = self.user_key(tenant, user_id);
        let hash = key.rsplit(':').next().unwrap_or_default().to_owned();
        self.bounded("index a session under its user", async {
            redis::pipe()
                .sadd(&index, &hash)
                .ignore()
                .pexpire(&index, life as i64)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await?;
        Ok((
            token,
            Session {
                tenant: tenant.to_string(),
                user_id: user_id.to_owned(),
                created_at_ms: created,
                ends_at_ms: ends,
                data,
            },
        ))
    }

    /// The session `token` opens in `tenant`, its idle expiry renewed; `None` if there is none
    /// (never created, expired, revoked, or another tenant's).
    pub async fn touch<T: DeserializeOwned>(
        &self,
        tenant: &TenantId,
        token: &str,
    ) -> Result<Option<Session<T>>> {
        let key = self.session_key(tenant, token);
        let idle = self.options.idle_ttl.as_millis() as u64;
        let mut conn = self.redis.clone();
        let found: Option<(String, String, i64, i64)> = self
            .bounded(
                "touch a session",
                redis::Script::new(TOUCH)
                    .key(&key)
                    .arg(idle)
                    .invoke_async(&mut conn),
            )
            .await?;
        let Some((body, user_id, created_at_ms, ends_at_ms)) = found else {
            return Ok(None);
        };
        let data = serde_json::from_str(&body).map_err(|e| Error::Codec {
            entity: "session",
            direction: "decode",
            message: e.to_string(),
        })?;
        Ok(Some(Session {
            tenant: tenant.to_string(),
            user_id,
            created_at_ms,
            ends_at_ms,
            data,
        }))
    }

    /// Ends the session `token` opens in `tenant`; whether there was one.
    pub async fn revoke(&self, tenant: &TenantId, token: &str) -> Result<bool> {
        let key = self.session_key(tenant, token);
        let mut conn = self.redis.clone();
        let user: Option<String> = self
            .bounded("read a session", conn.hget(&key, "user"))
            .await?;
        let removed: u64 = self.bounded("revoke a session", conn.del(&key)).await?;
        if let Some(user) = user {
            let hash = key.rsplit(':').next().unwrap_or_default().to_owned();
            let index = self.user_key(tenant, &user);
            self.bounded("unindex a session", conn.srem::<_, _, u64>(&index, hash))
                .await?;
        }
        Ok(removed > 0)
    }

    /// Ends every session of `user_id` in `tenant`; how many were live.
    pub async fn revoke_all_for_user(&self, tenant: &TenantId, user_id: &str) -> Result<u64> {
        let index = self.user_key(tenant, user_id);
        let mut conn = self.redis.clone();
        let hashes: Vec<String> = self
            .bounded("list a user's sessions", conn.smembers(&index))
            .await?;
        let mut removed = 0;
        for hash in &hashes {
            let key = format!("{}s:{tenant}:{hash}", self.prefix);
            removed += self
                .bounded("revoke a session", conn.del::<_, u64>(&key))
                .await?;
        }
        self.bounded("drop a user's session index", conn.del::<_, u64>(&index))
            .await?;
        Ok(removed)
    }

    /// How many live sessions `user_id` has in `tenant`.
    pub async fn count_for_user(&self, tenant: &TenantId, user_id: &str) -> Result<u64> {
        let index = self.user_key(tenant, user_id);
        let mut conn = self.redis.clone();
        let hashes: Vec<String> = self
            .bounded("list a user's sessions", conn.smembers(&index))
            .await?;
        let mut live = 0;
        for hash in &hashes {
            let key = format!("{}s:{tenant}:{hash}", self.prefix);
            if self
                .bounded("check a session", conn.exists::<_, bool>(&key))
                .await?
            {
                live += 1;
            } else {
                self.bounded(
                    "unindex an ended session",
                    conn.srem::<_, _, u64>(&index, hash),
                )
                .await?;
            }
        }
        Ok(live)
    }
}
