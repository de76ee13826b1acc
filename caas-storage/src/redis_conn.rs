//! [`RedisConnection`]: one auto-reconnecting connection to a single Redis (one per logical
//! database) or to a Redis Cluster, behind one type, so the cache and the write-behind queue
//! run the same code on both.
//!
//! On a cluster there is only database 0: every purpose shares it, separated by key prefixes
//! (cache entries `{tenant:Entity:id}`, queues `caas:wb:...`). Multi-key scripts touch keys of
//! one hash tag only, and `SCAN` visits every primary.

use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

/// A connection to Redis: a single server's logical database, or a cluster. Cheap to clone;
/// use it with the `redis` crate's commands (`redis::cmd("GET").arg(k).query_async(&mut c)`).
#[derive(Clone)]
pub struct RedisConnection(Inner);

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(Arc<Cluster>),
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
        let mut out = Vec::new();
        match &self.0 {
            Inner::Single(m) => {
                let mut m = m.clone();
                let mut cursor = 0_u64;
                loop {
                    let (next, keys): (u64, Vec<String>) = scan_cmd(cursor, pattern, key_type)
                        .query_async(&mut m)
                        .await?;
                    out.extend(keys);
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
            }
            Inner::Cluster(cluster) => {
                let mut c = Self::cluster_conn(cluster).await?;
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut c)
                    .await?;
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
                    let mut cursor = 0_u64;
                    loop {
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.to_owned(),
                            port,
                        });
                        let v = c
                            .route_command(scan_cmd(cursor, pattern, key_type), routing)
                            .await?;
                        let (next, keys): (u64, Vec<String>) =
                            redis::FromRedisValue::from_redis_value(v)?;
                        out.extend(keys);
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Inner::Single(m) => m.req_packed_command(cmd),
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
            Inner::Cluster(cluster) => Box::pin(async move {
                let mut c = Self::cluster_conn(cluster).await?;
                c.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Inner::Single(m) => m.get_db(),
            Inner::Cluster(_) => 0,
        }
    }
}
