// An `updated_at` field must be a BSON `DateTime`, not chrono's `DateTime<Utc>` (a local stand-in
// here, to need no chrono dependency).

use caas_storage::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Utc;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DateTime<Tz>(Tz);

#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "users")]
pub struct User {
    #[repository(id)]
    pub user_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    #[repository(updated_at)]
    pub updated_at: DateTime<Utc>,
}

fn main() {}
