// Entries of an `append_only` entity are never removed: neither `delete` nor a query's bulk
// `delete` exists for it.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_audit", collection = "ledger", append_only)]
pub struct LedgerEntry {
    #[repository(id)]
    pub entry_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub amount: i64,
}

async fn erase(ledger: &LedgerEntryRepository, t: &TenantId) -> caas_storage::Result<()> {
    ledger.delete(t, &"e1".to_owned()).await?;
    ledger.query(t).delete().await?;
    Ok(())
}

fn main() {
    let _ = erase;
}
