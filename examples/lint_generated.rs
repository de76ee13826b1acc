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
#[migrate(from = 1, up = steps::account_v1_to_v2)]
#[migrate(from = 2, up = steps::account_v2_to_v3, down = steps::account_v3_to_v2)]
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

/// The schema steps of [`Account`].
mod steps {
    use caas_storage::bson::Document;
    use caas_storage::StepResult;

    /// 1 -> 2: the owner's e-mail gets its own field.
    pub fn account_v1_to_v2(doc: &mut Document) -> StepResult {
        let email = doc.get_str("owner")?.to_owned();
        doc.insert("ownerEmail", email);
        Ok(())
    }

    /// 2 -> 3: accounts expire a year after they were opened.
    pub fn account_v2_to_v3(doc: &mut Document) -> StepResult {
        let opened = doc.get_datetime("openedAt")?.timestamp_millis();
        let year = 365 * 24 * 3600 * 1000;
        doc.insert(
            "expiresAt",
            caas_storage::bson::DateTime::from_millis(opened + year),
        );
        Ok(())
    }

    /// 3 -> 2: the expiry goes (a version 3 document always has one).
    pub fn account_v3_to_v2(doc: &mut Document) -> StepResult {
        doc.remove("expiresAt")
            .map(drop)
            .ok_or_else(|| "a version 3 account without `expiresAt`".into())
    }
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
