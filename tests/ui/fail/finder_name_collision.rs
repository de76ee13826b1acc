// Two indexes whose finders would have the same name: the second is reported, with a hint that the
// compound index already serves it.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
#[index(keys(status, created_at desc))]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    #[repository(index)]
    pub status: String,
    pub created_at: i64,
}

fn main() {}
