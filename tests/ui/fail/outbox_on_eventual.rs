// Queued (eventual) writes cannot record outbox events atomically.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_audit", collection = "entries", consistency = eventual,
             outbox(topic = "platform.audit"))]
pub struct Entry {
    #[repository(id)]
    pub entry_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    #[repository(version)]
    pub version: u64,
}

fn main() {}
