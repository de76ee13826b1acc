// A `#[caas_storage::test]` is a free function.

use caas_storage::Storage;

struct Suite;

impl Suite {
    #[caas_storage::test]
    async fn signs_up(&self) {}
}

fn main() {
    let _ = Suite;
    let _: Option<Storage> = None;
}
