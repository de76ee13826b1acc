// A rejected consistency model is not replaced by the `strong` default in the rules that depend
// on the model (write-behind needs `eventual`, a cached `strong` entity needs a version); the
// strategy's own need for a version field still is reported.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_audit", collection = "entries", consistency = "eventual",
             cache(ttl = "1m", strategy = write_behind))]
pub struct Entry {
    #[repository(id)]
    pub entry_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub action: String,
}

fn main() {}
