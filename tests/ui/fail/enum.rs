// Enums cannot be entities.

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
pub enum User {
    Active { user_id: String },
}

fn main() {}
