// Write-behind puts a queued write into the cache so it is readable before the flush, and cache
// puts are fenced by version: without a version field the queued write would only invalidate.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_audit", collection = "entries", consistency = eventual,
             cache(ttl = "30m", strategy = write_behind))]
pub struct Entry {
    #[repository(id)]
    pub entry_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub action: String,
}

fn main() {}
