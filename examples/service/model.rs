//! The service's entities: one per consistency model the reference design names.

use caas_storage::prelude::*;

/// Accounts: strong consistency, cached in Redis (version-fenced), email unique per tenant, the
/// password hash a secret field (never cached, never returned unless asked for).
#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "demo_users", consistency = strong,
             cache(ttl = "30m", jitter = "1m"))]
#[index(keys(email), unique)]
#[index(keys(status, created_at desc))]
pub struct User {
    /// Chosen by the service.
    #[repository(id)]
    pub user_id: String,
    /// The tenant.
    #[repository(tenant)]
    pub tenant_id: String,
    /// Unique within the tenant.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Salted SHA-256 of the password (a demo: use argon2 in a real service).
    #[repository(secret)]
    #[serde(default)]
    pub password_hash: String,
    /// `active` or `locked`.
    pub status: String,
    /// Optimistic-locking version.
    #[repository(version)]
    pub version: u64,
    /// When the account was made.
    pub created_at: DateTime,
}

/// Chat messages: causal, and every write publishes an event to Kafka (`chat.messages`)
/// through the outbox.
#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_messaging", collection = "demo_messages", consistency = causal,
             outbox(topic = "chat.messages", insert = "message.sent", update = "message.edited",
                    delete = "message.deleted"))]
#[index(keys(conversation_id, sent_at))]
pub struct Message {
    /// Made by the service.
    #[repository(id)]
    pub message_id: String,
    /// The tenant.
    #[repository(tenant)]
    pub tenant_id: String,
    /// The conversation it belongs to.
    pub conversation_id: String,
    /// Who wrote it.
    pub author: String,
    /// What it says.
    pub text: String,
    /// Optimistic-locking version.
    #[repository(version)]
    pub version: u64,
    /// When it was sent.
    pub sent_at: DateTime,
}

/// Preferences: read-your-writes, written through to Redis with an in-process tier in front.
#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "demo_prefs", consistency = read_your_writes,
             cache(ttl = "10m", strategy = write_through, local(ttl = "5s", capacity = 10_000)))]
pub struct Preference {
    /// The user they belong to.
    #[repository(id)]
    pub user_id: String,
    /// The tenant.
    #[repository(tenant)]
    pub tenant_id: String,
    /// `light` or `dark`.
    pub theme: String,
    /// Optimistic-locking version.
    #[repository(version)]
    pub version: u64,
}

/// Login records: eventual, so writes are queued in Redis and applied in batches.
#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_compliance", collection = "demo_logins", consistency = eventual)]
#[index(keys(user_id, at desc))]
pub struct Login {
    /// Made by the service.
    #[repository(id)]
    pub login_id: String,
    /// The tenant.
    #[repository(tenant)]
    pub tenant_id: String,
    /// Who logged in.
    pub user_id: String,
    /// When.
    pub at: DateTime,
}

/// Every entity's metadata, for index sync, backup and the embedded CLI.
pub fn metas() -> [&'static caas_storage::entity::EntityMeta; 4] {
    [User::META, Message::META, Preference::META, Login::META]
}
