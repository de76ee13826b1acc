// The version field cannot also be the id.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
pub struct User {
    #[repository(id, version)]
    pub user_id: u64,
    #[repository(tenant)]
    pub tenant_id: String,
}

fn main() {}
