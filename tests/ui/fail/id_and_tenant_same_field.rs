// One field cannot be both the id and the tenant.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
pub struct User {
    #[repository(id, tenant)]
    pub user_id: String,
    pub email: String,
}

fn main() {}
