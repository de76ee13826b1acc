//! Fields with raw identifiers (`r#type`) and fields named like the fixed finder parameters
//! (`tenant`, `page`) generate valid methods and parameters.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_docs", collection = "docs")]
#[index(keys(r#type, page))]
#[index(keys(tenant), unique)]
pub struct Doc {
    #[repository(id)]
    pub r#ref: String,
    #[repository(tenant)]
    pub owner_tenant: String,
    pub r#type: String,
    pub page: u32,
    pub tenant: String,
}

#[allow(dead_code)]
async fn usage(storage: &Storage, t: &TenantId) -> caas_storage::Result<()> {
    let docs = DocRepository::new(storage);
    let _: Page<Doc> = docs.list_by_type(t, "note", PageRequest::first(5)).await?;
    let _: Option<Doc> = docs.find_by_tenant(t, "other").await?;
    let _ = Doc::fields().r#type().eq("note");
    let _ = DocPatch {
        r#type: Some("memo".into()),
        ..Default::default()
    };
    Ok(())
}

fn main() {
    let _ = usage;
    let meta = <Doc as Entity>::META;
    assert_eq!(meta.id_field, "ref");
    assert_eq!(
        meta.fields,
        &["ref", "owner_tenant", "type", "page", "tenant"]
    );
    assert_eq!(meta.indexes[0].name, "owner_tenant_1_type_1_page_1");
}
