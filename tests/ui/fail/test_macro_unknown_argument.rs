// `#[caas_storage::test]` takes only `config = <fn() -> StorageConfig>`.

use caas_storage::Storage;

#[caas_storage::test(backend = "servers")]
async fn signs_up(storage: Storage) {
    let _ = storage;
}

fn main() {}
