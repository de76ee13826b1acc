//! Tenant erasure against the real servers (`docs/backup.md`): after `erase_tenant`, nothing of
//! the tenant is left in MongoDB (documents, soft-deleted ones included, and version claims),
//! in Redis (cache entries, their generations, queued and dead-lettered write-behind entries)
//! or in the outbox, as the raw clients see it; another tenant keeps everything.
//!
//! Its own database and entities: the write-behind flusher is off here so queued writes stay
//! queued, and no other test's flusher may apply them.

use caas_storage_tests as common;

use caas_storage::bson::{doc, Document};
use caas_storage::driver::redis;
use caas_storage::outbox::{OUTBOX_COLLECTION, PUBLISHED_COLLECTION};
use caas_storage::prelude::*;
use caas_storage::StorageConfig;

const DB: &str = "caas_erasure_it";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_erasure_it", collection = "customers", consistency = strong,
             soft_delete, cache(ttl = "5m"),
             outbox(topic = "test.erasure.customers", insert = "customer.created",
                    delete = "customer.deleted"))]
struct Customer {
    #[repository(id)]
    pub customer_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub name: String,
    #[repository(version)]
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_erasure_it", collection = "clicks", consistency = eventual)]
struct Click {
    #[repository(id)]
    pub click_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub url: String,
}

fn customer(t: &TenantId, i: usize) -> Customer {
    Customer {
        customer_id: format!("c{i}"),
        tenant_id: t.to_string(),
        name: format!("Customer {i}"),
        version: 0,
    }
}

fn click(t: &TenantId, i: usize) -> Click {
    Click {
        click_id: format!("k{i}"),
        tenant_id: t.to_string(),
        url: format!("https://example.com/{i}"),
    }
}

/// Customers (some soft-deleted, some cached) and applied clicks of `t` (the queue is
/// flushed: queue more with [`queue_clicks`] once every tenant is seeded).
async fn seed(storage: &Storage, t: &TenantId) {
    let customers = CustomerRepository::new(storage);
    let clicks = ClickRepository::new(storage);
    let list: Vec<Customer> = (0..40).map(|i| customer(t, i)).collect();
    customers.insert_many(t, &list).await.unwrap();
    for i in 0..5 {
        assert!(customers.delete(t, &format!("c{i}")).await.unwrap());
    }
    for i in 10..20 {
        assert!(customers
            .find_by_id(t, &format!("c{i}"))
            .await
            .unwrap()
            .is_some());
    }
    for i in 0..30 {
        clicks.insert(t, &click(t, i)).await.unwrap();
    }
    storage
        .write_behind()
        .flush::<Click>(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    // One published event, as the relay leaves them.
    storage
        .raw()
        .database(DB)
        .collection::<Document>(PUBLISHED_COLLECTION)
        .insert_one(
            doc! { "_id": format!("{t}-published"), "tenant": t.as_str(), "state": "published" },
        )
        .await
        .unwrap();
}

/// Clicks of `t` left in the write-behind queue (no flusher runs in this test).
async fn queue_clicks(storage: &Storage, t: &TenantId) {
    let clicks = ClickRepository::new(storage);
    for i in 30..45 {
        clicks.insert(t, &click(t, i)).await.unwrap();
    }
}

/// What the raw clients see of tenant `t`: documents per collection, outbox records, cache
/// keys, queued entries.
#[derive(Debug, PartialEq)]
struct Seen {
    customers: u64,
    clicks: u64,
    outbox: u64,
    published: u64,
    cache_keys: usize,
    queued: usize,
}

async fn seen(storage: &Storage, t: &TenantId) -> Seen {
    let db = storage.raw().database(DB);
    let count = |coll: &str, filter: Document| {
        let c = db.collection::<Document>(coll);
        async move { c.count_documents(filter).await.unwrap() }
    };
    let mut cache = storage.raw().redis_cache_for(DB);
    let prefix = &storage.config().redis.key_prefix;
    let cache_keys = cache
        .scan_match(&format!("{prefix}*{t}:*"), None)
        .await
        .unwrap()
        .len();
    let mut wb = storage
        .raw()
        .redis(storage.config().redis.databases.write_behind)
        .unwrap();
    let mut queued = 0;
    for stream in [
        format!("{prefix}caas:wb:{DB}.clicks"),
        format!("{prefix}caas:wb:{DB}.clicks:dead"),
    ] {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query_async(&mut wb)
            .await
            .unwrap();
        for e in entries.ids {
            let raw: Vec<u8> =
                redis::FromRedisValue::from_redis_value(e.map.get("e").unwrap().clone()).unwrap();
            let d = Document::from_reader(raw.as_slice()).unwrap();
            if d.get_str("tenant").unwrap() == t.as_str() {
                queued += 1;
            }
        }
    }
    Seen {
        customers: count("customers", doc! { "tenant_id": t.as_str() }).await,
        clicks: count("clicks", doc! { "tenant_id": t.as_str() }).await,
        outbox: count(OUTBOX_COLLECTION, doc! { "tenant": t.as_str() }).await,
        published: count(PUBLISHED_COLLECTION, doc! { "tenant": t.as_str() }).await,
        cache_keys,
        queued,
    }
}

#[tokio::test]
async fn erasure_leaves_nothing_of_the_tenant_and_spares_the_others() {
    let mut config: StorageConfig = common::config();
    config.write_behind.start_flusher = false;
    let storage = Storage::connect(config).await.unwrap();
    let (gone, kept) = (common::tenant("erase-me"), common::tenant("keep-me"));
    seed(&storage, &gone).await;
    seed(&storage, &kept).await;
    queue_clicks(&storage, &gone).await;
    queue_clicks(&storage, &kept).await;

    let before = seen(&storage, &gone).await;
    let expected = Seen {
        customers: 40,
        clicks: 30,
        outbox: 45,
        published: 1,
        cache_keys: before.cache_keys,
        queued: 15,
    };
    assert_eq!(before, expected);
    assert!(before.cache_keys >= 10, "{before:?}");
    let kept_before = seen(&storage, &kept).await;
    assert_eq!(kept_before.customers, 40);

    let report = storage
        .erase_tenant(&[Customer::META, Click::META], &gone)
        .await
        .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    let c = &report.entities[0];
    assert_eq!((c.documents, c.queued_writes), (40, 0));
    assert!(
        c.cache_entries >= 10 && c.cache_keys >= c.cache_entries,
        "{c:?}"
    );
    let k = &report.entities[1];
    assert_eq!((k.documents, k.queued_writes, k.cache_keys), (30, 15, 0));
    assert_eq!(report.outboxes.len(), 1);
    assert_eq!(
        (report.outboxes[0].pending, report.outboxes[0].published),
        (45, 1)
    );

    assert_eq!(
        seen(&storage, &gone).await,
        Seen {
            customers: 0,
            clicks: 0,
            outbox: 0,
            published: 0,
            cache_keys: 0,
            queued: 0,
        }
    );
    assert_eq!(seen(&storage, &kept).await, kept_before);
    // The repository agrees, and the kept tenant's cache still serves.
    let customers = CustomerRepository::new(&storage);
    assert_eq!(
        customers.find_by_id(&gone, &"c12".into()).await.unwrap(),
        None
    );
    assert!(customers
        .find_by_id(&kept, &"c12".into())
        .await
        .unwrap()
        .is_some());

    // Erasing again finds nothing.
    let again = storage
        .erase_tenant(&[Customer::META, Click::META], &gone)
        .await
        .unwrap();
    assert!(again
        .entities
        .iter()
        .all(|e| e.documents == 0 && e.queued_writes == 0));

    // Leave the kept tenant's queue empty for the next run.
    storage
        .erase_tenant(&[Customer::META, Click::META], &kept)
        .await
        .unwrap();
}
