use caas_storage_tests as common;
use caas_storage::bson::{doc, Document};
use futures::TryStreamExt;

#[tokio::test]
async fn probe() {
    let storage = common::storage().await;
    let coll = storage.raw().database("caas_migrations_it").collection::<Document>("notes_bulk");
    let n = coll.count_documents(doc! {}).await.unwrap();
    eprintln!("docs {n}");
    let docs: Vec<Document> = coll.find(doc! {}).limit(20).await.unwrap().try_collect().await.unwrap();
    let t = std::time::Instant::now();
    for d in &docs[..5] { coll.find_one(doc! { "_id": d.get("_id").unwrap() }).await.unwrap(); }
    eprintln!("find by _id: {:?}/op", t.elapsed() / 5);
    let t = std::time::Instant::now();
    for d in &docs[5..10] { coll.replace_one(doc! { "_id": d.get("_id").unwrap() }, d.clone()).await.unwrap(); }
    eprintln!("replace by _id: {:?}/op", t.elapsed() / 5);
    let t = std::time::Instant::now();
    for d in &docs[10..15] { coll.update_one(doc! { "_id": d.get("_id").unwrap() }, doc!{"$set": {"x": 1}}).await.unwrap(); }
    eprintln!("update by _id: {:?}/op", t.elapsed() / 5);
    let t = std::time::Instant::now();
    for d in &docs[15..20] { coll.find_one(doc! { "_id": d.get("_id").unwrap(), "x": {"$exists": false} }).await.unwrap(); }
    eprintln!("find by _id + field: {:?}/op", t.elapsed() / 5);
    let t = std::time::Instant::now();
    let v: Vec<Document> = coll.find(doc! { "$or": [ {"_schema_version": {"$lt": 3_i64}}, {"_schema_version": {"$exists": false}} ] }).limit(500).await.unwrap().try_collect().await.unwrap();
    eprintln!("batch find: {:?} ({} docs)", t.elapsed(), v.len());
    let docs: Vec<Document> = coll.find(doc! {}).limit(80).await.unwrap().try_collect().await.unwrap();
    for conc in [1usize, 2, 4, 8] {
        let t = std::time::Instant::now();
        use futures::StreamExt;
        let r: Vec<_> = futures::stream::iter(docs.iter()).map(|d| { let coll = coll.clone(); async move { coll.replace_one(doc! { "_id": d.get("_id").unwrap() }, d.clone()).await } }).buffer_unordered(conc).collect().await;
        eprintln!("replace x80 concurrency {conc}: {:?} ({} ok)", t.elapsed(), r.iter().filter(|r| r.is_ok()).count());
    }
    let c = storage.raw().database("caas_migrations_it").collection::<Document>("profiles");
    c.insert_one(doc!{"_id": "probe-x", "a": 1}).await.ok();
    let r = c.update_one(doc!{"_id": "probe-x", "_schema_version": {"$in": [1_i64, caas_storage::bson::Bson::Null]}}, doc!{"$set": {"b": 2}}).await.unwrap();
    eprintln!("$in with null matches missing: {}", r.matched_count);
}

#[tokio::test]
async fn probe_rewrites() {
    let storage = common::storage().await;
    let plain = storage.raw().database("caas_migrations_it").collection::<Document>("notes_bulk");
    let strong = storage.raw().database("caas_migrations_it").collection_with_options::<Document>("notes_bulk",
        caas_storage::driver::mongodb::options::CollectionOptions::builder()
            .write_concern(caas_storage::Consistency::Strong.write_concern())
            .read_concern(caas_storage::Consistency::Strong.read_concern())
            .selection_criteria(caas_storage::Consistency::Strong.read_preference())
            .build());
    for coll in [plain, strong] {
    let docs: Vec<Document> = coll.find(doc! {}).limit(200).await.unwrap().try_collect().await.unwrap();
    for conc in [8usize] {
        let t = std::time::Instant::now();
        use futures::StreamExt;
        let r: Vec<_> = futures::stream::iter(docs.iter()).map(|d| { let coll = coll.clone(); async move {
            let t = std::time::Instant::now();
            let now = coll.find_one(doc! { "_id": d.get("_id").unwrap() }).await.unwrap().unwrap();
            let mut new = now.clone();
            new.insert("history", vec!["a", "b"]);
            new.insert("_schema_version", 3_i64);
            let r = coll.replace_one(doc! { "_id": d.get("_id").unwrap() }, new).await;
            (t.elapsed(), r.is_ok())
        } }).buffer_unordered(conc).collect().await;
        let max = r.iter().map(|x| x.0).max().unwrap();
        eprintln!("rewrite x200 concurrency {conc}: {:?} max {:?} ({} ok)", t.elapsed(), max, r.iter().filter(|r| r.1).count());
    }
    }
}

#[tokio::test]
async fn probe_write_cost() {
    let storage = common::storage().await;
    let coll = storage.raw().database("caas_probe").collection::<Document>("w");
    coll.drop().await.unwrap();
    let docs: Vec<Document> = (0..300).map(|i| doc!{"_id": i, "a": "x"}).collect();
    coll.insert_many(docs).await.unwrap();
    for conc in [1usize, 8, 32] {
        let t = std::time::Instant::now();
        use futures::StreamExt;
        let base = conc as i32 * 1000;
        let _r: Vec<_> = futures::stream::iter(0..100).map(|i| { let coll = coll.clone(); async move {
            coll.replace_one(doc! { "_id": i }, doc!{"_id": i, "a": base + i}).await.unwrap()
        } }).buffer_unordered(conc).collect().await;
        eprintln!("100 changing replaces, concurrency {conc}: {:?}", t.elapsed());
    }
    let t = std::time::Instant::now();
    let upd: Vec<Document> = (0..100).map(|i| doc!{"q": {"_id": i}, "u": {"_id": i, "a": -i}}).collect();
    storage.raw().database("caas_probe").run_command(doc!{"update": "w", "updates": upd}).await.unwrap();
    eprintln!("one update command with 100 statements: {:?}", t.elapsed());
}
