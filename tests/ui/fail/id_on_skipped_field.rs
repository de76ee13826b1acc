// The id must be a field serde stores.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
pub struct User {
    #[repository(id)]
    #[serde(skip)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
}

fn main() {}
