// `soft_delete` contradicts `append_only`: append-only entries are never deleted.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_audit", collection = "ledger", append_only, soft_delete)]
pub struct LedgerEntry {
    #[repository(id)]
    pub entry_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub amount: i64,
}

fn main() {}
