// Write-through puts written documents into the cache, fenced by version, on every consistency
// model: without a version field every write would only invalidate the entry.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "profiles", consistency = causal,
             cache(ttl = "30m", strategy = write_through))]
pub struct Profile {
    #[repository(id)]
    pub profile_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub bio: String,
}

fn main() {}
