// Two indexes with the same name.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
#[index(keys(email), name = "lookup")]
#[index(keys(status), name = "lookup")]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub email: String,
    pub status: String,
}

fn main() {}
