//! The one error type of the crate.
//!
//! Every fallible call returns [`Result<T>`]. Errors carry the context a user needs to act on them
//! (the entity, the id, the config key, the server component) and say whether retrying can help:
//! [`Error::is_transient`].

use std::fmt;
use std::time::Duration;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The servers caas-storage talks to; names the component an error or a health check is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    /// The MongoDB-wire server (MongoDB, or FerretDB in our tests).
    Mongodb,
    /// Redis.
    Redis,
    /// The Kafka cluster.
    Kafka,
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Component::Mongodb => "mongodb",
            Component::Redis => "redis",
            Component::Kafka => "kafka",
        })
    }
}

/// Everything that can go wrong in caas-storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is missing or malformed. `key` is the TOML path or environment
    /// variable that holds it.
    #[error("invalid configuration for `{key}`: {reason}")]
    Config {
        /// The offending key, e.g. `mongodb.max_pool_size` or `CAAS_MONGODB_MAX_POOL_SIZE`.
        key: String,
        /// What is wrong and what is accepted.
        reason: String,
    },

    /// A tenant id that cannot be used (empty, too long, or with characters that would break
    /// cache keys).
    #[error("invalid tenant id {value:?}: {reason}")]
    InvalidTenant {
        /// The rejected value (its first 64 bytes and its length, when longer).
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// An entity's tenant field does not match the tenant the call is scoped to.
    #[error("{entity}: the entity belongs to tenant {found:?} but the call is scoped to tenant {expected:?}")]
    TenantMismatch {
        /// Entity type name.
        entity: &'static str,
        /// The tenant of the call.
        expected: String,
        /// The tenant stored in the entity.
        found: String,
    },

    /// A filter tried to choose the tenant itself; tenancy is set by the repository only.
    #[error("{entity}: filters may not name the tenant field `{field}`; the repository scopes every call to its tenant")]
    TenantFilter {
        /// Entity type name.
        entity: &'static str,
        /// The tenant field.
        field: &'static str,
    },

    /// A unique index rejected a write.
    #[error("{entity}: duplicate key{}: {message}", index.as_deref().map(|i| format!(" on index `{i}`")).unwrap_or_default())]
    DuplicateKey {
        /// Entity type name.
        entity: &'static str,
        /// The index, when the server names it (MongoDB does; FerretDB does not).
        index: Option<String>,
        /// The server's message.
        message: String,
    },

    /// The server refused one document of a batch for a reason other than a duplicate key.
    #[error(
        "{entity}: the server rejected document {position} of the batch: {message} (code {code})"
    )]
    Rejected {
        /// Entity type name.
        entity: &'static str,
        /// Position of the document in the batch.
        position: usize,
        /// The server's error code.
        code: i32,
        /// The server's message.
        message: String,
    },

    /// No document with this id in this tenant.
    #[error("{entity} {id} not found")]
    NotFound {
        /// Entity type name.
        entity: &'static str,
        /// The id, rendered as extended JSON.
        id: String,
    },

    /// Optimistic locking: the document's version is not the one the write expected.
    #[error("{entity} {id}: version conflict, expected version {expected}{}", actual.map(|a| format!(", found {a}")).unwrap_or_else(|| ", which another writer is changing".to_owned()))]
    VersionConflict {
        /// Entity type name.
        entity: &'static str,
        /// The id, rendered as extended JSON.
        id: String,
        /// The version the caller read.
        expected: u64,
        /// The version found; `None` when another writer holds the claim on this version.
        actual: Option<u64>,
    },

    /// An entity could not be turned into BSON, or a stored document back into the entity.
    #[error("{entity}: cannot {direction} a document: {message}")]
    Codec {
        /// Entity type name (or the value being converted).
        entity: &'static str,
        /// `encode` or `decode`.
        direction: &'static str,
        /// The serde error text.
        message: String,
    },

    /// The connected server lacks a feature and there is no fallback for this call.
    #[error("{feature} is not supported by the connected {server} server")]
    Unsupported {
        /// The feature, e.g. `TTL indexes`.
        feature: &'static str,
        /// The server's self-description, e.g. `FerretDB 1.24.2`.
        server: String,
    },

    /// A write-behind queue is at its bound (`write_behind.max_pending`): the writes were not
    /// queued. Usually MongoDB has been unreachable for long; retry later.
    #[error(
        "write-behind queue {queue} is full ({pending} pending, at most {max}); nothing was queued"
    )]
    QueueFull {
        /// `database.collection`.
        queue: String,
        /// Writes waiting in the queue.
        pending: u64,
        /// The bound.
        max: u64,
    },

    /// A write kept losing races to other writers and gave up after its bound of attempts
    /// (e.g. an audit append while other handles append to the same tenant without pause).
    /// Retrying later is safe: nothing was written by the attempts that lost.
    #[error("{what}: gave up after losing {attempts} races to other writers")]
    Contention {
        /// What was being written.
        what: String,
        /// Attempts made.
        attempts: u32,
    },

    /// An operation did not finish within its bound.
    #[error("{component}: {operation} timed out after {after:?}")]
    Timeout {
        /// The server the operation waited on.
        component: Component,
        /// What was being done.
        operation: &'static str,
        /// The bound that expired.
        after: Duration,
    },

    /// A stored document is at a schema version newer than the entity declares: a newer
    /// release wrote it. It is never decoded as the older shape.
    #[error(
        "{entity} {id}: stored at schema version {stored}, newer than version {supported} this \
         build declares: a newer release wrote it; read it with that release, or roll it back \
         with that release's down steps (docs/migrations.md)"
    )]
    FutureSchemaVersion {
        /// Entity type name.
        entity: &'static str,
        /// The id, rendered as extended JSON.
        id: String,
        /// The version the document is stored at.
        stored: u32,
        /// The entity's `schema_version`.
        supported: u32,
    },

    /// A schema step failed on a stored document.
    #[error("{entity} {id}: schema step {from} -> {to} (`{step}`) failed: {message}")]
    SchemaStep {
        /// Entity type name.
        entity: &'static str,
        /// The id, rendered as extended JSON.
        id: String,
        /// The version the step starts from.
        from: u32,
        /// The version it goes to.
        to: u32,
        /// The step's function, as named in the attribute.
        step: &'static str,
        /// What the step reported.
        message: String,
    },

    /// A migration step the ledger records as applied is declared with another checksum now:
    /// what it does changed after it ran.
    #[error(
        "migration step `{step}` was applied with checksum {recorded} (at {applied_at} by \
         {host}) but is declared with checksum {declared} now: an applied step must not \
         change; declare a new one instead"
    )]
    MigrationChecksum {
        /// The step's ledger name, e.g. `schema:app.profiles:Profile:1->2`.
        step: String,
        /// The checksum in the ledger.
        recorded: String,
        /// The checksum declared now.
        declared: String,
        /// When it was applied (RFC 3339).
        applied_at: String,
        /// The host that applied it.
        host: String,
    },

    /// The migration lock was lost (its lease expired or was taken over) or could not be had
    /// in time.
    #[error("migration lock in database {database}: {reason}")]
    MigrationLock {
        /// The database holding the ledger and the lock.
        database: String,
        /// What happened.
        reason: String,
    },

    /// A migration cannot run as asked: an invalid plan, a rollback without down steps, a data
    /// migration that failed.
    #[error("migration `{step}`: {reason}")]
    Migration {
        /// The step or plan element concerned.
        step: String,
        /// What is wrong.
        reason: String,
    },

    /// A backup archive cannot be used: not one this framework wrote, another format version,
    /// truncated, or corrupted (a checksum, a count or a record that does not match). Nothing
    /// was written when a restore refuses an archive.
    #[error("backup archive {archive}: {reason}")]
    Archive {
        /// The archive (its path, or `<stream>`).
        archive: String,
        /// What is wrong, e.g. `truncated: the stream ended inside record 1042`.
        reason: String,
    },

    /// A backup or restore cannot run as asked: an invalid plan, a target that is not empty, a
    /// restore journal in another state.
    #[error("{operation}: {reason}")]
    Backup {
        /// `backup`, `restore`, `restore rollback` or `erase`.
        operation: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },

    /// An error from the MongoDB driver.
    #[error("mongodb: {operation} failed: {source}")]
    Mongo {
        /// What was being done, e.g. `insert users`.
        operation: String,
        /// The driver's error.
        #[source]
        source: Box<mongodb::error::Error>,
    },

    /// An error from Redis.
    #[error("redis: {operation} failed: {source}")]
    Redis {
        /// What was being done.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },

    /// An error from Kafka.
    #[error("kafka: {operation} failed: {source}")]
    Kafka {
        /// What was being done.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

impl Error {
    /// Whether the same call may succeed if retried: network faults, timeouts, server
    /// selection, failover and transient transaction errors. Permanent errors (bad config,
    /// duplicate keys, version conflicts, codec errors) return `false`.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::QueueFull { .. } | Error::Contention { .. } => true,
            Error::Mongo { source, .. } => mongo_is_transient(source),
            Error::Redis { source, .. } => {
                source.is_io_error()
                    || source.is_timeout()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
            }
            Error::Kafka { source, .. } => kafka_is_transient(source),
            _ => false,
        }
    }

    /// A short, stable name of the error's kind (`version_conflict`, `timeout`, ...), for
    /// metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::InvalidTenant { .. } => "invalid_tenant",
            Error::TenantMismatch { .. } => "tenant_mismatch",
            Error::TenantFilter { .. } => "tenant_filter",
            Error::DuplicateKey { .. } => "duplicate_key",
            Error::Rejected { .. } => "rejected",
            Error::NotFound { .. } => "not_found",
            Error::VersionConflict { .. } => "version_conflict",
            Error::Codec { .. } => "codec",
            Error::Unsupported { .. } => "unsupported",
            Error::QueueFull { .. } => "queue_full",
            Error::Contention { .. } => "contention",
            Error::Timeout { .. } => "timeout",
            Error::Mongo { .. } => "mongodb",
            Error::Redis { .. } => "redis",
            Error::Kafka { .. } => "kafka",
            Error::FutureSchemaVersion { .. } => "future_schema_version",
            Error::SchemaStep { .. } => "schema_step",
            Error::MigrationChecksum { .. } => "migration_checksum",
            Error::MigrationLock { .. } => "migration_lock",
            Error::Migration { .. } => "migration",
            Error::Archive { .. } => "archive",
            Error::Backup { .. } => "backup",
        }
    }

    /// The component whose server produced this error, if any.
    pub fn component(&self) -> Option<Component> {
        match self {
            Error::Mongo { .. } | Error::DuplicateKey { .. } => Some(Component::Mongodb),
            Error::Redis { .. } => Some(Component::Redis),
            Error::Kafka { .. } => Some(Component::Kafka),
            Error::Timeout { component, .. } => Some(*component),
            _ => None,
        }
    }

    pub(crate) fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn mongo(operation: impl Into<String>, source: mongodb::error::Error) -> Self {
        Error::Mongo {
            operation: operation.into(),
            source: Box::new(source),
        }
    }
}

fn mongo_is_transient(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, RETRYABLE_WRITE_ERROR, TRANSIENT_TRANSACTION_ERROR};
    if e.contains_label(TRANSIENT_TRANSACTION_ERROR) || e.contains_label(RETRYABLE_WRITE_ERROR) {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => true,
        ErrorKind::ServerSelection { .. } => true,
        ErrorKind::Command(c) => matches!(
            c.code,
            // HostUnreachable, HostNotFound, NetworkTimeout, ShutdownInProgress,
            // PrimarySteppedDown, ExceededTimeLimit, SocketException, NotWritablePrimary,
            // InterruptedAtShutdown, InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk,
            // NotPrimaryOrSecondary, WriteConcernFailed (64) is not retryable by itself.
            6 | 7 | 89 | 91 | 189 | 262 | 9001 | 10107 | 11600 | 11602 | 13435 | 13436
        ),
        _ => false,
    }
}

fn kafka_is_transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
    match e.rdkafka_error_code() {
        Some(code) => matches!(
            code,
            C::QueueFull
                | C::MessageTimedOut
                | C::RequestTimedOut
                | C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::NetworkException
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::OperationTimedOut
        ),
        None => matches!(e, KafkaError::Canceled),
    }
}

/// Runs one driver call under `after`: a late answer is [`Error::Timeout`], a driver error is
/// [`Error::Mongo`] naming `operation` on `database.collection`.
pub(crate) async fn bounded_mongo<T>(
    after: Duration,
    operation: &'static str,
    (database, collection): (&str, &str),
    call: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(after, call.into_future()).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::mongo(
            format!("{operation} ({database}.{collection})"),
            e,
        )),
        Err(_) => Err(Error::Timeout {
            component: Component::Mongodb,
            operation,
            after,
        }),
    }
}

/// How much of a rejected input an error shows.
const ECHO_LIMIT: usize = 64;

/// `input` as an error may show it: whole when short, else its first [`ECHO_LIMIT`] bytes (on
/// a character boundary) and its length, so that hostile input cannot flood logs.
pub(crate) fn echo(input: &str) -> String {
    if input.len() <= ECHO_LIMIT {
        return input.to_owned();
    }
    let mut end = ECHO_LIMIT;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &input[..end], input.len())
}

/// MongoDB's duplicate-key error code.
pub(crate) const DUPLICATE_KEY: i32 = 11000;

/// Turns a driver error on a write into [`Error::DuplicateKey`] when it is one (code 11000 from a
/// command, a write error or an `insertMany` batch), naming the index when the server does.
pub(crate) fn classify_write(
    entity: &'static str,
    operation: impl Into<String>,
    e: mongodb::error::Error,
) -> Error {
    match duplicate_key_message(&e) {
        Some(message) => Error::DuplicateKey {
            entity,
            index: index_from_message(&message),
            message: crate::redact::duplicate_key_message(&message),
        },
        None => Error::mongo(operation, e),
    }
}

pub(crate) fn duplicate_key_message(e: &mongodb::error::Error) -> Option<String> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Command(c) if c.code == DUPLICATE_KEY || sqlite_unique(&c.message) => {
            Some(c.message.clone())
        }
        ErrorKind::Write(WriteFailure::WriteError(w))
            if w.code == DUPLICATE_KEY || sqlite_unique(&w.message) =>
        {
            Some(w.message.clone())
        }
        ErrorKind::InsertMany(m) => m
            .write_errors
            .iter()
            .flatten()
            .find(|w| w.code == DUPLICATE_KEY)
            .map(|w| w.message.clone()),
        _ => None,
    }
}

/// FerretDB on SQLite refuses an update or replace that would duplicate a unique key with
/// `InternalError` (code 1) and SQLite's own words, where MongoDB (and FerretDB, for inserts)
/// say 11000. It is the same refusal: the write did not happen. (Found by the memory backend's
/// differential test, `tests/tests/differential.rs`.)
fn sqlite_unique(message: &str) -> bool {
    message.contains("UNIQUE constraint failed")
}

/// MongoDB says `E11000 duplicate key error collection: db.c index: name dup key: {...}`;
/// FerretDB stops after the collection.
fn index_from_message(message: &str) -> Option<String> {
    let rest = message.split(" index: ").nth(1)?;
    let name = rest.split_whitespace().next()?;
    Some(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_name_is_taken_from_mongodb_messages_only() {
        assert_eq!(
            index_from_message(
                "E11000 duplicate key error collection: caas_auth.users index: tenant_id_1_email_1 dup key: { tenant_id: \"t\", email: \"a\" }"
            )
            .as_deref(),
            Some("tenant_id_1_email_1")
        );
        assert_eq!(
            index_from_message("E11000 duplicate key error collection: caas_auth.users"),
            None
        );
    }

    #[test]
    fn messages_name_their_context() {
        let e = Error::VersionConflict {
            entity: "User",
            id: "\"u1\"".into(),
            expected: 3,
            actual: Some(4),
        };
        assert_eq!(
            e.to_string(),
            "User \"u1\": version conflict, expected version 3, found 4"
        );
        let e = Error::DuplicateKey {
            entity: "User",
            index: None,
            message: "E11000".into(),
        };
        assert_eq!(e.to_string(), "User: duplicate key: E11000");
        assert!(!e.is_transient());
        let t = Error::Timeout {
            component: Component::Redis,
            operation: "GET",
            after: Duration::from_millis(5),
        };
        assert!(t.is_transient());
        assert_eq!(t.component(), Some(Component::Redis));
    }
}
