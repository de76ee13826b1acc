// A `#[caas_storage::test]` runs on a runtime of its own: the function must be `async`.

use caas_storage::Storage;

#[caas_storage::test]
fn signs_up(storage: Storage) {
    let _ = storage;
}

fn main() {}
