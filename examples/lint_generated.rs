//! Generated code under the strictest lints a service might use: CI runs
//! `cargo clippy --all-targets -- -D warnings` over this file, so any warning the derive's
//! output raises (rustc or clippy pedantic) fails the build. Running it prints the entities'
//! namespaces.

#![deny(
    warnings,
    missing_docs,
    missing_debug_implementations,
    unused_qualifications
)]
#![deny(clippy::pedantic)]

use caas_storage::prelude::*;

/// Every struct-level attribute on one entity.
#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_lint", collection = "accounts", consistency = read_your_writes,
             cache(ttl = "10m", jitter = "30s", strategy = write_through, local(ttl = "1s", capacity = 100)),
             schema_version = 3,
             outbox(topic = "lint.events", insert = "account.opened", update = "account.changed", delete = "account.closed"),
             soft_delete)]
#[index(keys(handle), unique)]
#[index(keys(owner, opened_at desc), name = "by_owner")]
#[index(keys(expires_at), ttl = "30d")]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// Id.
    #[repository(id)]
    pub account_id: String,
    /// Tenant.
    #[repository(tenant)]
    pub tenant_id: String,
    /// Public handle.
    pub handle: String,
    /// Owner.
    #[repository(index)]
    pub owner_email: String,
    /// Owner id.
    pub owner: String,
    /// Opened.
    pub opened_at: DateTime,
    /// Expires.
    pub expires_at: DateTime,
    /// Secret.
    #[repository(secret)]
    #[serde(default)]
    pub pin: Option<String>,
    /// Version.
    #[repository(version)]
    pub version: i64,
}

/// The smallest entity, eventual.
#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_lint", collection = "events", consistency = eventual)]
pub struct Event {
    /// Id.
    #[id]
    pub event_id: u64,
    /// Tenant.
    #[tenant]
    pub tenant_id: String,
}

fn main() {
    for meta in [Account::META, Event::META] {
        println!(
            "{}.{} ({} indexes)",
            meta.database,
            meta.collection,
            meta.indexes.len()
        );
    }
}
