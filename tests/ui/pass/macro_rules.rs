// Entities declared through a macro_rules! macro: `$x:literal` and `$x:expr` arrive wrapped in
// invisible groups, which the derive sees through.

use caas_storage::prelude::*;

macro_rules! entity {
    ($name:ident, $coll:literal, $ttl:expr) => {
        #[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
        #[repository(database = "caas_platform", collection = $coll, consistency = causal,
                     cache(ttl = $ttl))]
        pub struct $name {
            #[repository(id)]
            pub id: String,
            #[repository(tenant)]
            pub tenant_id: String,
        }
    };
}

entity!(Alpha, "alphas", "5m");
entity!(Beta, "betas", "1h");

fn main() {
    use caas_storage::Entity;
    assert_eq!(Alpha::META.collection, "alphas");
    assert_eq!(Beta::META.collection, "betas");
    assert_eq!(Beta::META.cache.unwrap().ttl, std::time::Duration::from_secs(3600));
}
