//! [`RedisConnection`]: one auto-reconnecting connection to a single Redis (one per logical
//! database) or to a Redis Cluster, behind one type, so the cache and the write-behind queue
//! run the same code on both.
//!
//! On a cluster there is only database 0: every purpose shares it, separated by key prefixes
//! (cache entries `{tenant:Entity:id}`, queues `caas:wb:...`). Multi-key scripts touch keys of
//! one hash tag only, and `SCAN` visits every primary.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline,
    RedisFuture, RedisResult, TlsCertificates, Value,
};
use tokio::sync::OnceCell;

use crate::config::StorageConfig;
use crate::error::{Error, Result};

/// A connection to Redis: a single server's logical database, or a cluster. Cheap to clone;
/// use it with the `redis` crate's commands (`redis::cmd("GET").arg(k).query_async(&mut c)`).
#[derive(Clone)]
pub struct RedisConnection(Inner);

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(Arc<Cluster>),
    /// In this process ([`Storage::in_memory`](crate::Storage::in_memory)).
    Memory(Arc<dyn LocalRedis>),
}

/// A Redis in this process (the memory backend's, `testing/redis.rs`): runs commands one
/// after the other with nothing in between.
pub(crate) trait LocalRedis: Send + Sync {
    /// Runs `cmds` in order, as one `MULTI` block would.
    fn run_all(&self, cmds: &mut dyn Iterator<Item = &Cmd>) -> Vec<RedisResult<Value>>;
}

struct Cluster {
    client: redis::cluster::ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Inner::Single(_) => f.write_str("RedisConnection(single)"),
            Inner::Cluster(_) => f.write_str("RedisConnection(cluster)"),
            Inner::Memory(_) => f.write_str("RedisConnection(memory)"),
        }
    }
}

impl RedisConnection {
    pub(crate) fn single(manager: ConnectionManager) -> Self {
        RedisConnection(Inner::Single(manager))
    }

    /// A cluster connection, established on first use (a cluster that is down at start
    /// does not stop the service from starting).
    pub(crate) fn cluster(client: redis::cluster::ClusterClient) -> Self {
        RedisConnection(Inner::Cluster(Arc::new(Cluster {
            client,
            conn: OnceCell::new(),
        })))
    }

    /// A connection to the in-process Redis of the memory backend.
    pub(crate) fn memory(redis: Arc<dyn LocalRedis>) -> Self {
        RedisConnection(Inner::Memory(redis))
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Inner::Cluster(_))
    }

    async fn cluster_conn(c: &Cluster) -> RedisResult<ClusterConnection> {
        c.conn
            .get_or_try_init(|| c.client.get_async_connection())
            .await
            .cloned()
    }

    /// Every key matching `pattern` (a `SCAN MATCH` glob), visiting every primary of a cluster.
    /// `TYPE` narrows to one key type when given.
    pub async fn scan_match(
        &mut self,
        pattern: &str,
        key_type: Option<&str>,
    ) -> RedisResult<Vec<String>> {
        let mut out = Vec::new();
        self.scan_each(pattern, key_type, |page| {
            out.extend(page);
            async { Ok(()) }
        })
        .await?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Hands every page of keys matching `pattern` to `each` as `SCAN` returns it (on a
    /// cluster, primary by primary), so that memory stays flat however many keys match. A key
    /// may come twice (SCAN's guarantee); `each` must be idempotent.
    pub(crate) async fn scan_each<F, Fut>(
        &mut self,
        pattern: &str,
        key_type: Option<&str>,
        mut each: F,
    ) -> RedisResult<()>
    where
        F: FnMut(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = RedisResult<()>>,
    {
        fn scan_cmd(cursor: u64, pattern: &str, key_type: Option<&str>) -> Cmd {
            let mut c = redis::cmd("SCAN");
            c.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500);
            if let Some(t) = key_type {
                c.arg("TYPE").arg(t);
            }
            c
        }
        match &self.0 {
            Inner::Single(_) | Inner::Memory(_) => {
                let mut m = self.clone();
                let mut cursor = 0_u64;
                loop {
                    let (next, keys): (u64, Vec<String>) = scan_cmd(cursor, pattern, key_type)
                        .query_async(&mut m)
                        .await?;
                    if !keys.is_empty() {
                        each(keys).await?;
                    }
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
            }
            Inner::Cluster(cluster) => {
                let mut c = Self::cluster_conn(cluster).await?;
                for (host, port) in primaries(&mut c).await? {
                    let mut cursor = 0_u64;
                    loop {
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        let v = c
                            .route_command(scan_cmd(cursor, pattern, key_type), routing)
                            .await?;
                        let (next, keys): (u64, Vec<String>) =
                            redis::FromRedisValue::from_redis_value(v)?;
                        if !keys.is_empty() {
                            each(keys).await?;
                        }
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl RedisConnection {
    /// `INFO <section>` of the server, or of every primary of a cluster: `(node, reply)`
    /// pairs, the node as `host:port` (`single` names the server of a non-cluster
    /// connection).
    pub(crate) async fn info_each(
        &mut self,
        section: &str,
        single: &str,
    ) -> RedisResult<Vec<(String, String)>> {
        match &self.0 {
            Inner::Single(_) | Inner::Memory(_) => {
                let mut m = self.clone();
                let info: String = redis::cmd("INFO").arg(section).query_async(&mut m).await?;
                Ok(vec![(single.to_owned(), info)])
            }
            Inner::Cluster(cluster) => {
                let mut c = Self::cluster_conn(cluster).await?;
                let mut out = Vec::new();
                for (host, port) in primaries(&mut c).await? {
                    let node = format!("{host}:{port}");
                    let routing =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    let mut cmd = redis::cmd("INFO");
                    cmd.arg(section);
                    let v = c.route_command(cmd, routing).await?;
                    out.push((node, redis::FromRedisValue::from_redis_value(v)?));
                }
                Ok(out)
            }
        }
    }
}

/// The primaries of a cluster, from `CLUSTER NODES`.
async fn primaries(c: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(c).await?;
    let mut out = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 || !fields[2].split(',').any(|f| f == "master") {
            continue;
        }
        let addr = fields[1].split('@').next().unwrap_or_default();
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        out.push((host.to_owned(), port));
    }
    Ok(out)
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Inner::Single(m) => m.req_packed_command(cmd),
            Inner::Memory(r) => {
                let r = r.run_all(&mut std::iter::once(cmd)).remove(0);
                Box::pin(async move { r })
            }
            Inner::Cluster(cluster) => Box::pin(async move {
                let mut c = Self::cluster_conn(cluster).await?;
                c.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Inner::Single(m) => m.req_packed_commands(pipeline, offset, count),
            Inner::Memory(r) => {
                // All under one lock: nothing runs between them, as in a `MULTI` block.
                let mut values = r.run_all(&mut pipeline.cmd_iter());
                if pipeline.is_transaction() {
                    let results: RedisResult<Vec<Value>> = values.drain(..).collect();
                    let r = results.map(|v| vec![Value::Array(v)]);
                    return Box::pin(async move { r });
                }
                let r: RedisResult<Vec<Value>> =
                    values.into_iter().skip(offset).take(count).collect();
                Box::pin(async move { r })
            }
            Inner::Cluster(cluster) => Box::pin(async move {
                let mut c = Self::cluster_conn(cluster).await?;
                c.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Single(m) => m.get_db(),
            Inner::Cluster(_) | Inner::Memory(_) => 0,
        }
    }
}

/// One connection per allocated logical database (on a cluster, one shared connection), each
/// pinged once when `redis.ready_check` is set: a Redis that is down is logged, not fatal.
pub(crate) async fn connect(config: &StorageConfig) -> Result<BTreeMap<u8, RedisConnection>> {
    let mut redis = BTreeMap::new();
    if config.redis.cluster_nodes.is_empty() {
        for db in config.redis.databases.purposes().into_keys() {
            redis.insert(db, RedisConnection::single(manager(config, db)?));
        }
    } else {
        let cluster = RedisConnection::cluster(cluster_client(config)?);
        for db in config.redis.databases.purposes().into_keys() {
            redis.insert(db, cluster.clone());
        }
    }
    if config.redis.ready_check {
        for (db, conn) in &redis {
            let mut conn = conn.clone();
            let ping = redis::cmd("PING");
            match tokio::time::timeout(
                config.redis.connection_timeout,
                ping.query_async::<String>(&mut conn),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(db, error = %e, "Redis not ready at connect; caching degrades to the database until it is"),
                Err(_) => tracing::warn!(db, "Redis did not answer at connect; caching degrades to the database until it does"),
            }
        }
    }
    Ok(redis)
}

fn cluster_client(config: &StorageConfig) -> Result<redis::cluster::ClusterClient> {
    let r = &config.redis;
    let base = base_info(config)?;
    let nodes = r
        .cluster_nodes
        .iter()
        .map(|n| node_info(&base, n))
        .collect::<Result<Vec<_>>>()?;
    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
        .connection_timeout(r.connection_timeout)
        .response_timeout(r.response_timeout)
        .retries(r.max_retries as u32);
    if let Some(certs) = tls_certificates(config)? {
        builder = builder.certs(certs);
    }
    builder.build().map_err(|e| {
        Error::config(
            "redis.cluster_nodes",
            crate::redact::scrub(&e.to_string(), config.credentials()),
        )
    })
}

/// The client the cache's invalidation listener subscribes with: on a cluster, the first seed
/// node (PUBLISH reaches every node of a cluster), with the URL's credentials and TLS.
pub(crate) fn pubsub_client(config: &StorageConfig) -> Result<redis::Client> {
    match config.redis.cluster_nodes.first() {
        Some(node) => open(config, node_info(&base_info(config)?, node)?),
        None => client(config, config.redis.databases.platform_cache),
    }
}

fn client(config: &StorageConfig, db: u8) -> Result<redis::Client> {
    let info = base_info(config)?;
    let settings = info.redis_settings().clone().set_db(i64::from(db));
    open(config, info.set_redis_settings(settings))
}

/// `redis.url` parsed: address, TLS, username, password, protocol.
fn base_info(config: &StorageConfig) -> Result<ConnectionInfo> {
    let info = config
        .redis
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| bad_url(config, e))?;
    if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        ensure_crypto_provider();
    }
    Ok(info)
}

fn bad_url(config: &StorageConfig, e: redis::RedisError) -> Error {
    Error::config(
        "redis.url",
        crate::redact::scrub(&e.to_string(), config.credentials()),
    )
}

/// A client for `info`, with the configured TLS files if any.
fn open(config: &StorageConfig, info: ConnectionInfo) -> Result<redis::Client> {
    match tls_certificates(config)? {
        Some(certs) => redis::Client::build_with_tls(info, certs),
        None => redis::Client::open(info),
    }
    .map_err(|e| bad_url(config, e))
}

/// Cluster node `node` (`host:port`) reached the way `base` (the configured URL) says: over TLS
/// for `rediss://`, with its username, password and protocol, database 0 (a cluster has no
/// other).
fn node_info(base: &ConnectionInfo, node: &str) -> Result<ConnectionInfo> {
    let bad = || Error::config("redis.cluster_nodes", format!("{node:?} is not host:port"));
    let (host, port) = node.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addr = match base.addr() {
        ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: None,
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    let settings = base.redis_settings().clone().set_db(0);
    Ok(base.clone().set_addr(addr).set_redis_settings(settings))
}

/// The CA and client certificate of `redis.tls_*`, read and checked now (an unreadable file,
/// or one without a PEM certificate or key, is an error naming its key); `None` when none is
/// configured (the system's roots, no client certificate).
fn tls_certificates(config: &StorageConfig) -> Result<Option<TlsCertificates>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let r = &config.redis;
    let fail = |key: &'static str, reason: String| {
        Error::config(key, crate::redact::scrub(&reason, config.credentials()))
    };
    let read = |key: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| fail(key, format!("cannot read {}: {e}", path.display())))
    };
    let certificates = |key: &'static str, path: &Path| {
        let pem = read(key, path)?;
        let n = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| fail(key, format!("{}: {e}", path.display())))?
            .len();
        if n == 0 {
            return Err(fail(
                key,
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        Ok(pem)
    };
    let root_cert = match &r.tls_ca_file {
        Some(p) => Some(certificates("redis.tls_ca_file", p)?),
        None => None,
    };
    let client_tls = match (&r.tls_cert_file, &r.tls_key_file) {
        (Some(cert), Some(key_path)) => {
            let client_key = read("redis.tls_key_file", key_path)?;
            if PrivateKeyDer::from_pem_slice(&client_key).is_err() {
                return Err(fail(
                    "redis.tls_key_file",
                    format!("{} holds no PEM private key", key_path.display()),
                ));
            }
            Some(ClientTlsConfig {
                client_cert: certificates("redis.tls_cert_file", cert)?,
                client_key,
            })
        }
        _ => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// rustls needs a process-wide crypto provider when more than one is compiled in (another
/// crate of the program may enable aws-lc-rs next to the ring this crate and the MongoDB
/// driver use): install ring unless the program installed one.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn manager(config: &StorageConfig, db: u8) -> Result<ConnectionManager> {
    let r = &config.redis;
    let manager_config = ConnectionManagerConfig::new()
        .set_number_of_retries(r.max_retries)
        .set_connection_timeout(Some(r.connection_timeout))
        .set_response_timeout(Some(r.response_timeout))
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client(config, db)?, manager_config).map_err(|e| {
        Error::Redis {
            operation: "create connection manager",
            source: e,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_config(url: &str) -> StorageConfig {
        let mut c = StorageConfig::default();
        c.redis.url = url.into();
        c.redis.cluster_nodes = vec!["10.0.0.1:7000".into(), "10.0.0.2:7001".into()];
        c
    }

    #[test]
    fn cluster_nodes_keep_the_scheme_credentials_and_protocol_of_the_url() {
        let base = "rediss://app:p%40ss@seed:6380/4?protocol=resp3"
            .into_connection_info()
            .unwrap();
        let node = node_info(&base, "10.0.0.2:7001").unwrap();
        match node.addr() {
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => assert_eq!((host.as_str(), *port, *insecure), ("10.0.0.2", 7001, false)),
            other => panic!("not TLS: {other:?}"),
        }
        let s = node.redis_settings();
        assert_eq!(s.username(), Some("app"));
        assert_eq!(s.password(), Some("p@ss"));
        assert_eq!(s.protocol(), redis::ProtocolVersion::RESP3);
        assert_eq!(s.db(), 0, "a cluster has database 0 only");

        let plain = "redis://:pw@seed/".into_connection_info().unwrap();
        let node = node_info(&plain, "[::1]:7000").unwrap();
        assert!(matches!(node.addr(), ConnectionAddr::Tcp(h, 7000) if h == "::1"));
        assert_eq!(node.redis_settings().password(), Some("pw"));
        assert!(node_info(&plain, "nope").is_err());

        // The cluster client builds from them (same credentials and TLS on every node).
        let c = cluster_config("rediss://app:s3cret@seed:6379/");
        cluster_client(&c).unwrap();
    }

    #[test]
    fn the_pubsub_connection_of_a_cluster_keeps_the_credentials_of_the_url() {
        let client = pubsub_client(&cluster_config("redis://app:s3cret@seed:6379/")).unwrap();
        let info = client.get_connection_info();
        assert_eq!(info.addr().to_string(), "10.0.0.1:7000");
        assert_eq!(info.redis_settings().username(), Some("app"));
        assert_eq!(info.redis_settings().password(), Some("s3cret"));

        let client = pubsub_client(&cluster_config("rediss://:s3cret@seed:6379/")).unwrap();
        let info = client.get_connection_info();
        assert!(matches!(info.addr(), ConnectionAddr::TcpTls { .. }));
        assert_eq!(info.redis_settings().password(), Some("s3cret"));
    }

    #[test]
    fn unreadable_tls_files_are_errors_naming_their_key() {
        let mut c = StorageConfig::default();
        c.redis.url = "rediss://:pw@cache:6380/".into();
        c.redis.tls_ca_file = Some("/nonexistent/ca.pem".into());
        match client(&c, 0) {
            Err(Error::Config { key, reason }) => {
                assert_eq!(key, "redis.tls_ca_file");
                assert!(reason.contains("/nonexistent/ca.pem"), "{reason}");
            }
            other => panic!("{other:?}"),
        }

        // A file that is not PEM: named by its key too.
        let not_pem = std::env::temp_dir().join(format!("caas-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let mut c = StorageConfig::default();
        c.redis.url = "rediss://:pw@cache:6380/".into();
        c.redis.tls_ca_file = Some(not_pem.clone());
        let bad_ca = client(&c, 0).map(drop);
        c.redis.tls_ca_file = None;
        c.redis.tls_cert_file = Some(not_pem.clone());
        c.redis.tls_key_file = Some(not_pem.clone());
        let bad_key = client(&c, 0).map(drop);
        for (result, want) in [
            (bad_ca, "redis.tls_ca_file"),
            (bad_key, "redis.tls_key_file"),
        ] {
            match result {
                Err(Error::Config { key, reason }) => {
                    assert_eq!(key, want, "{reason}");
                    assert!(reason.contains("no PEM"), "{reason}");
                }
                other => panic!("{want}: {other:?}"),
            }
        }
        let _ = std::fs::remove_file(not_pem);
    }
}
