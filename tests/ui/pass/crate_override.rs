//! `crate = "..."` names the caas-storage crate when it is not reachable as `::caas_storage`.
//! Every generated path goes through it, the `Queueable` impl of entities without an outbox too.

extern crate caas_storage as storage_rt;

use storage_rt::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, storage_rt::Repository)]
#[repository(crate = "storage_rt", database = "caas_audit", collection = "entries", consistency = eventual)]
#[index(keys(actor, at desc))]
pub struct AuditEntry {
    #[repository(id)]
    pub entry_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub actor: String,
    pub at: DateTime,
}

mod nested {
    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, storage_rt::Repository)]
    #[repository(crate = "::storage_rt", database = "caas_audit", collection = "marks")]
    pub struct Mark {
        #[id]
        pub mark_id: String,
        #[tenant]
        pub tenant_id: String,
    }
}

#[allow(dead_code)]
async fn usage(storage: &Storage, t: &TenantId) -> storage_rt::Result<()> {
    let entries = AuditEntryRepository::new(storage);
    let _: Page<AuditEntry> = entries
        .list_by_actor(t, "ada", PageRequest::first(50))
        .await?;
    let _ = nested::MarkRepository::new(storage);
    let id = String::from("e1");
    entries.queue_update(t, &id, AuditEntryPatch::default()).await?;
    entries.queue_delete(t, &id).await?;
    Ok(())
}

fn assert_queueable<E: storage_rt::Queueable>() {}

fn main() {
    let _ = usage;
    assert_queueable::<AuditEntry>();
    assert_queueable::<nested::Mark>();
    assert_eq!(
        <AuditEntry as Entity>::META.indexes[0].name,
        "tenant_id_1_actor_1_at_-1"
    );
    assert_eq!(<nested::Mark as Entity>::META.collection, "marks");
}
