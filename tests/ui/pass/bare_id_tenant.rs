//! `#[id]` and `#[tenant]` are shorthands for `#[repository(id)]` and `#[repository(tenant)]`.
//! The id may have any serializable type.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_keys", collection = "api_keys", consistency = eventual, soft_delete)]
pub struct ApiKey {
    #[id]
    pub key_id: u64,
    #[tenant]
    pub org: String,
    #[repository(index)]
    pub owner: String,
}

#[allow(dead_code)]
async fn usage(storage: &Storage, t: &TenantId) -> caas_storage::Result<()> {
    let keys = ApiKeyRepository::new(storage);
    let _: Option<ApiKey> = keys.find_by_id(t, &7).await?;
    let _: Page<ApiKey> = keys.list_by_owner(t, "ada", PageRequest::first(10)).await?;
    Ok(())
}

fn main() {
    let _ = usage;
    let meta = <ApiKey as Entity>::META;
    assert_eq!(meta.id_field, "key_id");
    assert_eq!(meta.tenant_field, "org");
    assert_eq!(meta.indexes[0].name, "org_1_owner_1");
    assert!(meta.soft_delete);
    let k = ApiKey {
        key_id: 7,
        org: "acme".into(),
        owner: "ada".into(),
    };
    assert_eq!(*k.id(), 7);
    assert_eq!(k.tenant(), "acme");
}
