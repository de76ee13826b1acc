// Neither the id nor the tenant field can be secret.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
pub struct User {
    #[repository(id, secret)]
    pub user_id: String,
    #[repository(tenant, secret)]
    pub tenant_id: String,
}

fn main() {}
