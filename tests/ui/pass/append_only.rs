// An `append_only` entity is inserted and read like any other.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_audit", collection = "ledger", append_only)]
pub struct LedgerEntry {
    #[repository(id)]
    pub entry_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    #[repository(index)]
    pub account: String,
    pub amount: i64,
}

async fn record(ledger: &LedgerEntryRepository, t: &TenantId) -> caas_storage::Result<()> {
    let entry = LedgerEntry {
        entry_id: "e1".into(),
        tenant_id: t.as_str().into(),
        account: "a1".into(),
        amount: 5,
    };
    ledger.insert(t, &entry).await?;
    ledger.insert_many(t, std::slice::from_ref(&entry)).await?;
    let _ = ledger.find_by_id(t, &"e1".to_owned()).await?;
    let _ = ledger.list_by_account(t, "a1", PageRequest::first(10)).await?;
    Ok(())
}

fn main() {
    let _ = record;
}
