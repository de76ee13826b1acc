// An `append_only` entity is inserted and read, never changed: `update` (like `replace`,
// `upsert`, `delete`, `purge` and the `queue_*` writes) needs `Mutable`, which the derive does
// not implement for it.

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

async fn correct(ledger: &LedgerEntryRepository, t: &TenantId) -> caas_storage::Result<()> {
    let patch = LedgerEntryPatch { amount: Some(0) };
    ledger.update(t, &"e1".to_owned(), patch).await.map(drop)
}

fn main() {
    let _ = correct;
}
