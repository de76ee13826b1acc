//! Consistency models as enforced contracts: the concerns each model puts on the wire
//! (captured with the driver's command monitoring), causal tokens across handles, and the
//! durability of `eventual` writes through the write-behind queue.

use caas_storage_tests as common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caas_storage::bson::{doc, Document};
use caas_storage::prelude::*;
use caas_storage::{CausalToken, Error, FaultPoint, StorageConfig};

macro_rules! entity {
    ($name:ident, $coll:literal, $model:ident) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
        #[repository(database = "caas_consistency_test", collection = $coll, consistency = $model)]
        struct $name {
            #[repository(id)]
            pub id: String,
            #[repository(tenant)]
            pub tenant_id: String,
            pub body: String,
            #[repository(version)]
            pub version: u64,
        }
    };
}

entity!(StrongDoc, "strong_docs", strong);
entity!(EventualDoc, "eventual_docs", eventual);
entity!(CausalDoc, "causal_docs", causal);
entity!(RywDoc, "ryw_docs", read_your_writes);
entity!(FencedDoc, "fenced_docs", eventual);

type Log = Arc<Mutex<Vec<(String, String, Document)>>>;

async fn logged_storage(config: StorageConfig) -> (Storage, Log) {
    let log: Log = Arc::default();
    let sink = log.clone();
    let storage = Storage::builder(config)
        .on_command(move |e| {
            sink.lock().unwrap().push((
                e.command_name.clone(),
                e.command
                    .get_str("insert")
                    .or(e.command.get_str("find"))
                    .or(e.command.get_str("findAndModify"))
                    .unwrap_or_default()
                    .to_owned(),
                e.command.clone(),
            ));
        })
        .connect()
        .await
        .unwrap();
    (storage, log)
}

fn last(log: &Log, name: &str, coll: &str) -> Document {
    log.lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(n, c, _)| n == name && c == coll)
        .map(|(_, _, d)| d.clone())
        .unwrap_or_else(|| panic!("no {name} on {coll} was sent"))
}

/// Inserts and reads one `E` and checks the concerns the two commands carried.
async fn write_and_read<E: caas_storage::Entity<Id = String>>(
    storage: &Storage,
    log: &Log,
    t: &TenantId,
    coll: &str,
    write_concern: Document,
) {
    let repo = caas_storage::Repository::<E>::new(storage);
    let e: E = caas_storage::bson::from_document(
        doc! { "id": "d1", "tenant_id": t.as_str(), "body": "x", "version": 0_i64 },
    )
    .unwrap();
    repo.insert(t, &e).await.unwrap();
    repo.find_by_id(t, &"d1".to_owned()).await.unwrap().unwrap();
    assert_eq!(
        last(log, "insert", coll)
            .get_document("writeConcern")
            .unwrap(),
        &write_concern,
        "{coll}"
    );
    assert_eq!(
        last(log, "find", coll).get_document("readConcern").unwrap(),
        &doc! { "level": "majority" },
        "{coll}"
    );
}

#[tokio::test]
async fn each_model_sends_its_concerns() {
    // Its own queue prefix: no other handle's flusher may apply this test's queued write.
    let mut config = common::config();
    config.redis.key_prefix = format!("concerns{}:", std::process::id());
    let (storage, log) = logged_storage(config).await;
    let t = common::tenant("concerns");
    let doc_of = |id: &str| (id.to_owned(), t.to_string());

    // The direct models: insert and find carry the model's concerns.
    write_and_read::<StrongDoc>(
        &storage,
        &log,
        &t,
        "strong_docs",
        doc! { "w": "majority", "j": true },
    )
    .await;
    write_and_read::<RywDoc>(&storage, &log, &t, "ryw_docs", doc! { "w": "majority" }).await;
    write_and_read::<CausalDoc>(&storage, &log, &t, "causal_docs", doc! { "w": "majority" }).await;

    // Eventual: the insert is queued, then applied by the flusher with w:1; reads use local
    // read concern and may go to secondaries.
    let (id, tenant_id) = doc_of("e1");
    let eventual = EventualDocRepository::new(&storage);
    eventual
        .insert(
            &t,
            &EventualDoc {
                id: id.clone(),
                tenant_id,
                body: "x".into(),
                version: 0,
            },
        )
        .await
        .unwrap();
    storage
        .write_behind()
        .flush::<EventualDoc>(Duration::from_secs(10))
        .await
        .unwrap();
    let applied = last(&log, "insert", "eventual_docs");
    assert_eq!(
        applied.get_document("writeConcern").unwrap(),
        &doc! { "w": 1 }
    );
    eventual.find_by_id(&t, &id).await.unwrap().unwrap();
    assert_eq!(
        last(&log, "find", "eventual_docs")
            .get_document("readConcern")
            .unwrap(),
        &doc! { "level": "local" }
    );
    assert_eq!(
        format!("{:?}", eventual.consistency().read_preference()),
        format!("{:?}", Consistency::Eventual.read_preference())
    );

    // A per-call override: a strong read of an eventual entity.
    eventual
        .with_consistency(Consistency::Strong)
        .find_by_id(&t, &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        last(&log, "find", "eventual_docs")
            .get_document("readConcern")
            .unwrap(),
        &doc! { "level": "majority" }
    );
}

#[tokio::test]
async fn a_causal_token_makes_another_handle_read_at_least_that_version() {
    let a = common::storage().await;
    let b = common::storage().await;
    let (repo_a, repo_b) = (CausalDocRepository::new(&a), CausalDocRepository::new(&b));
    let t = common::tenant("causal");
    let id = "conv-1".to_owned();
    repo_a
        .insert(
            &t,
            &CausalDoc {
                id: id.clone(),
                tenant_id: t.to_string(),
                body: "v0".into(),
                version: 0,
            },
        )
        .await
        .unwrap();
    let written = repo_a
        .update(
            &t,
            &id,
            CausalDocPatch {
                body: Some("v1".into()),
            },
        )
        .await
        .unwrap()
        .unwrap();
    let token = repo_a.causal_token(&t, &written).encode();

    // Handle B sits behind a stale copy (what a lagging secondary or a stale cache would
    // give): simulate it with an older document in its view of the collection.
    let stale_view = b
        .raw()
        .database("caas_consistency_test")
        .collection::<Document>("causal_docs");
    stale_view
        .update_one(
            doc! { "tenant_id": t.as_str(), "id": &id },
            doc! { "$set": { "version": 0_i64, "body": "v0" } },
        )
        .await
        .unwrap();
    let plain = repo_b.find_by_id(&t, &id).await.unwrap().unwrap();
    assert_eq!(plain.version, 0, "without the token B reads what it has");
    // The primary catches up shortly after (replication), while B waits with the token.
    let catch_up = {
        let coll = stale_view.clone();
        let (t, id) = (t.clone(), id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            coll.update_one(
                doc! { "tenant_id": t.as_str(), "id": &id },
                doc! { "$set": { "version": 1_i64, "body": "v1" } },
            )
            .await
            .unwrap();
        })
    };
    let token = CausalToken::decode(&token).unwrap();
    let seen = repo_b
        .find_by_id_after(&t, &id, &token)
        .await
        .unwrap()
        .unwrap();
    assert!(seen.version >= 1 && seen.body == "v1", "{seen:?}");
    catch_up.await.unwrap();

    // A token no replica will ever satisfy fails within causal_wait instead of hanging.
    let mut impossible = CausalToken::new();
    repo_b.observe(
        &mut impossible,
        &t,
        &CausalDoc {
            version: 99,
            ..seen.clone()
        },
    );
    let started = std::time::Instant::now();
    match repo_b.find_by_id_after(&t, &id, &impossible).await {
        Err(Error::Timeout { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(CausalToken::decode("zz").is_err());
}

/// A token from a hostile or confused client costs a bounded number of reads: one far in the
/// future fails after a few primary reads (not one every 20 ms until `causal_wait` runs out),
/// and a document deleted since the token was made reads as `None`, not as a timeout.
#[tokio::test]
async fn causal_reads_are_bounded_and_see_deletes() {
    let (storage, log) = logged_storage(common::config()).await;
    let repo = CausalDocRepository::new(&storage);
    let t = common::tenant("causal-bound");
    let doc = CausalDoc {
        id: "c1".into(),
        tenant_id: t.to_string(),
        body: "v0".into(),
        version: 0,
    };
    repo.insert(&t, &doc).await.unwrap();
    let mut future = CausalToken::new();
    repo.observe(
        &mut future,
        &t,
        &CausalDoc {
            version: 1_000_000_000,
            ..doc.clone()
        },
    );
    log.lock().unwrap().clear();
    match repo.find_by_id_after(&t, &doc.id, &future).await {
        Err(Error::Timeout { .. }) => {}
        other => panic!("{other:?}"),
    }
    let reads = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(name, coll, _)| name == "find" && coll == "causal_docs")
        .count();
    assert!(reads <= 10, "{reads} reads for one causal read");

    let written = repo
        .update(
            &t,
            &doc.id,
            CausalDocPatch {
                body: Some("v1".into()),
            },
        )
        .await
        .unwrap()
        .unwrap();
    let token = repo.causal_token(&t, &written);
    assert!(repo.delete(&t, &doc.id).await.unwrap());
    let started = std::time::Instant::now();
    assert!(repo
        .find_by_id_after(&t, &doc.id, &token)
        .await
        .unwrap()
        .is_none());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// An acknowledged eventual write survives the death of the process that queued it: a handle
/// that never flushes queues writes and is dropped; a new handle drains them once a repository
/// of the entity is made on it.
#[tokio::test]
async fn eventual_writes_survive_a_crash_between_ack_and_apply() {
    let mut config = common::config();
    config.redis.key_prefix = format!("crash{}:", std::process::id());
    let mut dead = config.clone();
    dead.write_behind.start_flusher = false;
    let crashed = Storage::connect(dead).await.unwrap();
    let repo = EventualDocRepository::new(&crashed);
    let t = common::tenant("crash");
    let batch: Vec<EventualDoc> = (0..200)
        .map(|i| EventualDoc {
            id: format!("e{i}"),
            tenant_id: t.to_string(),
            body: format!("#{i}"),
            version: 0,
        })
        .collect();
    for chunk in batch.chunks(50) {
        repo.insert_many(&t, chunk).await.unwrap();
    }
    repo.queue_update(
        &t,
        &"e0".to_owned(),
        EventualDocPatch {
            body: Some("patched".into()),
        },
    )
    .await
    .unwrap();
    repo.queue_delete(&t, &"e1".to_owned()).await.unwrap();
    let lag = crashed.write_behind().lag().await.unwrap();
    let mine = lag
        .iter()
        .find(|l| l.namespace == "caas_consistency_test.eventual_docs")
        .unwrap();
    assert_eq!(
        mine.pending, 202,
        "200 inserts, one update, one delete: {lag:?}"
    );
    drop(repo);
    drop(crashed);
    let direct = common::storage().await;
    let coll = direct
        .raw()
        .database("caas_consistency_test")
        .collection::<Document>("eventual_docs");
    assert_eq!(
        coll.count_documents(doc! { "tenant_id": t.as_str() })
            .await
            .unwrap(),
        0,
        "nothing applied yet"
    );

    // The next process applies the queue as soon as it makes a repository of the entity.
    let recovered = Storage::connect(config).await.unwrap();
    let _repo = EventualDocRepository::new(&recovered);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while coll
        .count_documents(doc! { "tenant_id": t.as_str() })
        .await
        .unwrap()
        != 199
    {
        assert!(std::time::Instant::now() < deadline, "queue not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e0 = coll
        .find_one(doc! { "tenant_id": t.as_str(), "id": "e0" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        e0.get_str("body").unwrap(),
        "patched",
        "applied in order after its insert"
    );
    let lag = recovered.write_behind().lag().await.unwrap();
    assert!(lag.iter().all(|l| l.pending == 0), "{lag:?}");
}

/// FerretDB restarted under eventual load: the flusher retries and nothing is lost.
#[tokio::test]
async fn eventual_writes_survive_a_database_restart() {
    let mut ferret = tokio::task::spawn_blocking(common::private_ferretdb)
        .await
        .unwrap();
    let mut config = common::config();
    config.mongodb.uri = format!("mongodb://127.0.0.1:{}/", ferret.port);
    config.mongodb.server_selection_timeout = Duration::from_millis(500);
    config.mongodb.socket_timeout = Duration::from_secs(2);
    config.redis.key_prefix = format!("restart{}:", std::process::id());
    config.write_behind.retry_backoff = Duration::from_millis(100);
    let storage = Storage::connect(config).await.unwrap();
    let repo = EventualDocRepository::new(&storage);
    let t = common::tenant("restart");
    // Create the database before the outage: FerretDB 1.24.2 killed while it creates a
    // database's SQLite file leaves the file without its metadata table and then refuses to
    // start ("no such table: _ferretdb_collections"; see docs/ferretdb.md).
    repo.with_consistency(Consistency::Strong)
        .insert(
            &t,
            &EventualDoc {
                id: "first".into(),
                tenant_id: t.to_string(),
                body: String::new(),
                version: 0,
            },
        )
        .await
        .unwrap();
    let mut acked = 1;
    for i in 0..150 {
        if i == 50 {
            ferret.stop();
        }
        if i == 100 {
            ferret.start();
        }
        let d = EventualDoc {
            id: format!("d{i}"),
            tenant_id: t.to_string(),
            body: String::new(),
            version: 0,
        };
        repo.insert(&t, &d).await.unwrap(); // queued: acknowledged while the database is down
        acked += 1;
    }
    storage
        .write_behind()
        .flush::<EventualDoc>(Duration::from_secs(30))
        .await
        .unwrap();
    let n = repo.count(&t, Filter::all()).await.unwrap();
    assert_eq!(n, acked, "every acknowledged write is in the database");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_consistency_test", collection = "eventual_attrs", consistency = eventual)]
struct Tagged {
    #[repository(id)]
    pub id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub attrs: std::collections::BTreeMap<String, String>,
}

/// A queued write the database refuses for good is retried `max_attempts` times, then set
/// aside in the dead-letter stream with its error; the writes behind it still apply.
#[tokio::test]
async fn a_write_the_database_refuses_is_dead_lettered_and_the_rest_applies() {
    let mut config = common::config();
    config.redis.key_prefix = format!("dead{}:", std::process::id());
    config.write_behind.start_flusher = false;
    config.write_behind.max_attempts = 3;
    let storage = Storage::connect(config).await.unwrap();
    let repo = TaggedRepository::new(&storage);
    let t = common::tenant("dead");
    let ok = |id: &str| Tagged {
        id: id.into(),
        tenant_id: t.to_string(),
        attrs: [("k".to_owned(), "v".to_owned())].into(),
    };
    // FerretDB (like MongoDB before 5.0) refuses field names with a dot.
    let poison = Tagged {
        id: "poison".into(),
        tenant_id: t.to_string(),
        attrs: [("a.b".to_owned(), "v".to_owned())].into(),
    };
    repo.insert(&t, &ok("before")).await.unwrap();
    repo.insert(&t, &poison).await.unwrap();
    repo.insert(&t, &ok("after")).await.unwrap();
    storage
        .write_behind()
        .flush::<Tagged>(Duration::from_secs(20))
        .await
        .unwrap();
    let direct = repo.with_consistency(Consistency::Strong);
    assert!(direct.exists(&t, &"before".to_owned()).await.unwrap());
    assert!(direct.exists(&t, &"after".to_owned()).await.unwrap());
    assert!(!direct.exists(&t, &"poison".to_owned()).await.unwrap());
    let lag = storage.write_behind().lag().await.unwrap();
    let mine = lag
        .iter()
        .find(|l| l.namespace == "caas_consistency_test.eventual_attrs")
        .unwrap();
    assert_eq!((mine.pending, mine.dead_letters), (0, 1), "{lag:?}");
}

/// A queued insert refused by a unique index other than the id's (here: the same email as
/// another document) is the write's failure, dead-lettered, never counted as applied; and an
/// insert replayed after it was applied (its own document there, same queue position) is
/// still applied, not a failure.
#[tokio::test]
async fn a_queued_insert_refused_by_a_unique_index_is_dead_lettered_not_dropped() {
    let mut config = common::config();
    config.redis.key_prefix = format!(
        "uniq{}-{}:",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    config.write_behind.start_flusher = false;
    config.write_behind.max_attempts = 1;
    let storage = Storage::connect(config).await.unwrap();
    storage.sync_indexes::<Member>().await.unwrap();
    let repo = MemberRepository::new(&storage);
    let t = common::tenant("uniq");
    let member = |id: &str, email: &str| Member {
        member_id: id.into(),
        tenant_id: t.to_string(),
        email: email.into(),
    };
    repo.insert(&t, &member("m1", "same@example.com"))
        .await
        .unwrap();
    repo.insert(&t, &member("m2", "same@example.com"))
        .await
        .unwrap();
    repo.insert(&t, &member("m3", "other@example.com"))
        .await
        .unwrap();
    let queue = storage.write_behind();
    queue
        .flush::<Member>(Duration::from_secs(20))
        .await
        .unwrap();
    let strong = repo.with_consistency(Consistency::Strong);
    assert!(strong
        .find_by_id(&t, &"m1".to_owned())
        .await
        .unwrap()
        .is_some());
    assert!(strong
        .find_by_id(&t, &"m3".to_owned())
        .await
        .unwrap()
        .is_some());
    assert!(strong
        .find_by_id(&t, &"m2".to_owned())
        .await
        .unwrap()
        .is_none());
    let letters = queue.dead_letters::<Member>(10).await.unwrap();
    let ids: Vec<_> = letters
        .iter()
        .filter_map(|l| l.document_id.clone())
        .collect();
    assert_eq!(
        ids,
        ["m2"],
        "the refused insert is set aside, not dropped: {letters:?}"
    );
    assert!(
        letters[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("duplicate")),
        "{letters:?}"
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_consistency_test", collection = "eventual_members", consistency = eventual)]
#[index(keys(email), unique)]
struct Member {
    #[repository(id)]
    member_id: String,
    #[repository(tenant)]
    tenant_id: String,
    email: String,
}

/// The dead letters of a queue are listed with what they write and why they were refused, and
/// `replay` puts the chosen ones back at the end of the queue (and only those; unknown ids are
/// skipped), where the flusher applies them again.
#[tokio::test]
async fn dead_letters_are_listed_and_replay_puts_them_back_in_the_queue() {
    let mut config = common::config();
    config.redis.key_prefix = format!(
        "replay{}-{}:",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    config.write_behind.start_flusher = false;
    config.write_behind.max_attempts = 2;
    let storage = Storage::connect(config).await.unwrap();
    let repo = TaggedRepository::new(&storage);
    let t = common::tenant("replay");
    let poison = |id: &str| Tagged {
        id: id.into(),
        tenant_id: t.to_string(),
        attrs: [("a.b".to_owned(), "v".to_owned())].into(),
    };
    repo.insert(&t, &poison("p1")).await.unwrap();
    repo.insert(&t, &poison("p2")).await.unwrap();
    let queue = storage.write_behind();
    queue
        .flush::<Tagged>(Duration::from_secs(20))
        .await
        .unwrap();
    let letters = queue.dead_letters::<Tagged>(10).await.unwrap();
    let ids: Vec<_> = letters
        .iter()
        .map(|l| l.document_id.clone().unwrap())
        .collect();
    assert_eq!(ids, ["p1", "p2"], "oldest first: {letters:?}");
    for l in &letters {
        assert_eq!(l.entity.as_deref(), Some("Tagged"));
        assert_eq!(l.tenant.as_deref(), Some(t.as_str()));
        assert_eq!(l.op.as_deref(), Some("insert"));
        assert!(l.error.as_deref().is_some_and(|e| !e.is_empty()), "{l:?}");
        assert!(l.source_id.is_some() && l.dead_at_ms > 0, "{l:?}");
    }
    assert_eq!(
        queue.dead_letters::<Tagged>(1).await.unwrap().len(),
        1,
        "limit"
    );

    let chosen = [letters[1].id.clone(), "1-1".to_owned()];
    assert_eq!(queue.replay::<Tagged>(Some(&chosen)).await.unwrap(), 1);
    let lag = queue.lag().await.unwrap();
    let mine = lag
        .iter()
        .find(|l| l.namespace == "caas_consistency_test.eventual_attrs")
        .unwrap();
    assert_eq!((mine.pending, mine.dead_letters), (1, 1), "{lag:?}");
    let left = queue.dead_letters::<Tagged>(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].document_id.as_deref(), Some("p1"));

    // Applied again, refused again: set aside anew; `None` replays them all.
    queue
        .flush::<Tagged>(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(queue.dead_letters::<Tagged>(10).await.unwrap().len(), 2);
    assert_eq!(queue.replay::<Tagged>(None).await.unwrap(), 2);
    assert!(queue.dead_letters::<Tagged>(10).await.unwrap().is_empty());
}

/// Shutdown applies what is queued.
#[tokio::test]
async fn shutdown_flushes_the_queues() {
    let mut config = common::config();
    config.redis.key_prefix = format!("shutdown{}:", std::process::id());
    config.write_behind.start_flusher = false;
    let storage = Storage::connect(config).await.unwrap();
    let repo = EventualDocRepository::new(&storage);
    let t = common::tenant("shutdown");
    let batch: Vec<EventualDoc> = (0..30)
        .map(|i| EventualDoc {
            id: format!("s{i}"),
            tenant_id: t.to_string(),
            body: String::new(),
            version: 0,
        })
        .collect();
    repo.insert_many(&t, &batch).await.unwrap();
    let direct = repo.with_consistency(Consistency::Strong);
    assert_eq!(
        direct.count(&t, Filter::all()).await.unwrap(),
        0,
        "queued, not applied"
    );
    storage.shutdown(Duration::from_secs(20)).await.unwrap();
    assert_eq!(direct.count(&t, Filter::all()).await.unwrap(), 30);
}

entity!(HandoverDoc, "handover_docs", eventual);

/// An instance that flushed its queue, shut down, or was dropped leaves the queue to the
/// others at once: it gives the queue's lease up instead of holding it until it expires. With
/// a lease of 60 s each step below would wait it out (a flush timing out, a write not applied
/// in 15 s).
#[tokio::test]
async fn a_flushed_shut_down_or_dropped_instance_leaves_the_queue_to_the_others() {
    let mut config = common::config();
    config.redis.key_prefix = format!("handover{}:", std::process::id());
    config.write_behind.lease_ttl = Duration::from_secs(60);
    config.write_behind.start_flusher = false;
    let t = common::tenant("handover");
    let doc = |id: &str| HandoverDoc {
        id: id.into(),
        tenant_id: t.to_string(),
        body: String::new(),
        version: 0,
    };
    let flush = async |storage: &Storage| {
        storage
            .write_behind()
            .flush::<HandoverDoc>(Duration::from_secs(15))
            .await
    };

    // A new instance with `config` that queues the document `id`.
    let queueing = async |config: &StorageConfig, id: &str| {
        let storage = Storage::connect(config.clone()).await.unwrap();
        HandoverDocRepository::new(&storage)
            .insert(&t, &doc(id))
            .await
            .unwrap();
        storage
    };
    // Waits until the document `id` is applied; fails with `what` after 15 s.
    let wait_for = async |storage: &Storage, id: &str, what: &str| {
        let strong = HandoverDocRepository::new(storage).with_consistency(Consistency::Strong);
        let deadline = Instant::now() + Duration::from_secs(15);
        while strong
            .find_by_id(&t, &id.to_owned())
            .await
            .unwrap()
            .is_none()
        {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // Explicit flushes on two instances, one after the other.
    let a = queueing(&config, "a").await;
    flush(&a).await.unwrap();
    let b = queueing(&config, "b").await;
    flush(&b)
        .await
        .expect("b's flush takes the queue a flushed");

    // An instance with a background flusher shuts down and goes; the next one's flusher
    // applies what it queues at its first rounds.
    config.write_behind.start_flusher = true;
    let c = queueing(&config, "c").await;
    c.shutdown(Duration::from_secs(15)).await.unwrap();
    drop(c);
    let d = queueing(&config, "d").await;
    wait_for(&d, "d", "d's flusher never took the queue c shut down").await;

    // Instances whose flushers hold the queue are dropped without a shutdown (d, then e);
    // the next one's flusher takes the queue over each time.
    drop(d);
    let e = queueing(&config, "e").await;
    wait_for(&e, "e", "e's flusher never took the queue of the dropped d").await;
    drop(e);
    let f = queueing(&config, "f").await;
    wait_for(&f, "f", "f's flusher never took the queue of the dropped e").await;

    let all = HandoverDocRepository::new(&f)
        .with_consistency(Consistency::Strong)
        .count(&t, Filter::all())
        .await
        .unwrap();
    assert_eq!(all, 6, "every instance's write applied");
}

/// A queue at its bound refuses more writes, whole batches at once, instead of growing.
#[tokio::test]
async fn a_full_queue_refuses_writes_instead_of_growing() {
    let mut config = common::config();
    config.redis.key_prefix = format!("full{}:", std::process::id());
    config.write_behind.start_flusher = false;
    config.write_behind.max_pending = 5;
    let storage = Storage::connect(config).await.unwrap();
    let repo = EventualDocRepository::new(&storage);
    let t = common::tenant("full");
    let doc = |i: usize| EventualDoc {
        id: format!("f{i}"),
        tenant_id: t.to_string(),
        body: String::new(),
        version: 0,
    };
    repo.insert_many(&t, &(0..4).map(doc).collect::<Vec<_>>())
        .await
        .unwrap();
    match repo
        .insert_many(&t, &(4..6).map(doc).collect::<Vec<_>>())
        .await
    {
        Err(
            e @ Error::QueueFull {
                pending: 4, max: 5, ..
            },
        ) => assert!(e.is_transient()),
        other => panic!("{other:?}"),
    }
    repo.insert(&t, &doc(4)).await.unwrap();
    assert!(matches!(
        repo.insert(&t, &doc(5)).await,
        Err(Error::QueueFull { .. })
    ));
    storage.shutdown(Duration::from_secs(20)).await.unwrap();
    let direct = repo.with_consistency(Consistency::Strong);
    assert_eq!(
        direct.count(&t, Filter::all()).await.unwrap(),
        5,
        "exactly the accepted writes"
    );
}

/// Two flushers never apply the same queued writes: `flush()` runs next to the background
/// flusher of its own handle and next to another handle's, all on a 100 ms lease, while a few
/// hundred updates alternate between the handles. The result is what applying the queue once,
/// in order, gives: version 300 after 300 updates; then a delete and an upsert leave the
/// upserted document (a delete applied again would remove it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_flushers_never_apply_the_same_writes() {
    let mut config = common::config();
    config.redis.key_prefix = format!("fence{}:", std::process::id());
    config.write_behind.lease_ttl = Duration::from_millis(100);
    config.write_behind.batch_size = 20;
    let a = Storage::connect(config.clone()).await.unwrap();
    let b = Storage::connect(config).await.unwrap();
    // A collection of its own, so that FerretDB's scans stay short.
    a.raw()
        .database("caas_consistency_test")
        .collection::<Document>("fenced_docs")
        .drop()
        .await
        .unwrap();
    let (repo_a, repo_b) = (FencedDocRepository::new(&a), FencedDocRepository::new(&b));
    let t = common::tenant("fence");
    let id = "f".to_owned();
    let doc = |body: &str| FencedDoc {
        id: id.clone(),
        tenant_id: t.to_string(),
        body: body.into(),
        version: 0,
    };
    repo_a.insert(&t, &doc("v0")).await.unwrap();
    let flushing = {
        let a = a.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                let _ = a
                    .write_behind()
                    .flush::<FencedDoc>(Duration::from_millis(200))
                    .await;
            }
        })
    };
    for i in 1..=300 {
        let repo = if i % 2 == 0 { &repo_a } else { &repo_b };
        repo.queue_update(
            &t,
            &id,
            FencedDocPatch {
                body: Some(format!("v{i}")),
            },
        )
        .await
        .unwrap();
    }
    a.write_behind()
        .flush::<FencedDoc>(Duration::from_secs(60))
        .await
        .unwrap();
    let strong = repo_a.with_consistency(Consistency::Strong);
    let after_updates = strong.get(&t, &id).await.unwrap();
    assert_eq!(
        (after_updates.body.as_str(), after_updates.version),
        ("v300", 300),
        "each update applied once, in order"
    );
    repo_b.queue_delete(&t, &id).await.unwrap();
    repo_a.queue_upsert(&t, &doc("final")).await.unwrap();
    flushing.abort();
    b.write_behind()
        .flush::<FencedDoc>(Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // any late duplicate lands
    let last = strong.get(&t, &id).await.unwrap();
    assert_eq!(
        last.body, "final",
        "the delete was applied once, before the upsert"
    );
}

entity!(ReplayedDoc, "replayed_docs", eventual);

/// A flusher that dies after applying a batch and before acknowledging it leaves the batch in
/// the queue, and the next flusher applies it again: every write carries its queue position,
/// and the database write itself skips what a document already reflects, so a replay changes
/// nothing (no version bumped twice, no delete re-applied to a document created after it).
#[tokio::test]
async fn a_batch_applied_again_after_a_crash_changes_nothing() {
    let mut config = common::config();
    config.redis.key_prefix = format!("replay{}:", std::process::id());
    config.write_behind.start_flusher = false;
    common::each_capability_set_with(config, async |storage, label| {
        let repo = ReplayedDocRepository::new(&storage);
        let t = common::tenant("replay");
        let doc = |id: &str, body: &str| ReplayedDoc {
            id: id.into(),
            tenant_id: t.to_string(),
            body: body.into(),
            version: 0,
        };
        let flush = async || {
            storage
                .write_behind()
                .flush::<ReplayedDoc>(Duration::from_secs(20))
                .await
        };
        repo.insert(&t, &doc("u", "v0")).await.unwrap();
        repo.insert(&t, &doc("d", "v0")).await.unwrap();
        flush().await.unwrap();
        for i in 1..=5 {
            let patch = ReplayedDocPatch {
                body: Some(format!("v{i}")),
            };
            repo.queue_update(&t, &"u".to_owned(), patch).await.unwrap();
        }
        // Deleted, then created again: a replayed delete must not remove the new document.
        repo.queue_delete(&t, &"d".to_owned()).await.unwrap();
        repo.queue_upsert(&t, &doc("d", "again")).await.unwrap();

        // The first round dies before acknowledging; the next applies the same entries again.
        storage.inject_fault(FaultPoint::QueueAfterApply);
        flush().await.unwrap();

        let strong = repo.with_consistency(Consistency::Strong);
        let u = strong.get(&t, &"u".to_owned()).await.unwrap();
        assert_eq!(
            (u.body.as_str(), u.version),
            ("v5", 5),
            "{label}: each update applied once"
        );
        let d = strong.get(&t, &"d".to_owned()).await.unwrap();
        assert_eq!(d.body, "again", "{label}: the delete was not applied again");
    })
    .await;
}

/// The flusher trusts nothing it reads from Redis: entries that another writer of the shared
/// Redis put in a queue (naming another namespace, or an update or delete without an id) are
/// set aside as dead letters and never applied; the framework's own entries behind them apply.
#[tokio::test]
async fn the_flusher_applies_nothing_it_did_not_queue_for_a_registered_entity() {
    let mut config = common::config();
    config.redis.key_prefix = format!("hostile{}:", std::process::id());
    config.write_behind.start_flusher = false;
    let storage = Storage::connect(config.clone()).await.unwrap();
    let queued = EventualDocRepository::new(&storage);
    let strong = StrongDocRepository::new(&storage);
    let t = common::tenant("hostile");
    let victim = |id: &str| StrongDoc {
        id: id.into(),
        tenant_id: t.to_string(),
        body: "keep me".into(),
        version: 0,
    };
    strong.insert(&t, &victim("victim")).await.unwrap();
    queued
        .with_consistency(Consistency::Strong)
        .insert(
            &t,
            &EventualDoc {
                id: "first".into(),
                tenant_id: t.to_string(),
                body: "keep me".into(),
                version: 0,
            },
        )
        .await
        .unwrap();
    let stream = format!(
        "{}caas:wb:caas_consistency_test.eventual_docs",
        config.redis.key_prefix
    );
    let mut redis = storage
        .raw()
        .redis(config.redis.databases.write_behind)
        .unwrap();
    for hostile in [
        // Another namespace, through this entity's queue.
        doc! { "entity": "EventualDoc", "db": "caas_consistency_test", "coll": "strong_docs",
        "tenant": t.as_str(), "op": "delete", "id": "victim" },
        // A delete without an id (once: "the tenant's first document").
        doc! { "entity": "EventualDoc", "db": "caas_consistency_test", "coll": "eventual_docs",
        "tenant": t.as_str(), "op": "delete" },
        // Not BSON at all.
        doc! {},
    ] {
        let mut bytes = Vec::new();
        if !hostile.is_empty() {
            hostile.to_writer(&mut bytes).unwrap();
        } else {
            bytes.extend_from_slice(b"not an entry");
        }
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("e")
            .arg(bytes)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    queued
        .insert(
            &t,
            &EventualDoc {
                id: "legit".into(),
                tenant_id: t.to_string(),
                body: "queued".into(),
                version: 0,
            },
        )
        .await
        .unwrap();
    storage
        .write_behind()
        .flush::<EventualDoc>(Duration::from_secs(20))
        .await
        .unwrap();
    let direct = queued.with_consistency(Consistency::Strong);
    assert!(
        strong.exists(&t, &"victim".to_owned()).await.unwrap(),
        "another namespace was written"
    );
    assert!(
        direct.exists(&t, &"first".to_owned()).await.unwrap(),
        "an id-less delete was applied"
    );
    assert!(
        direct.exists(&t, &"legit".to_owned()).await.unwrap(),
        "the real entry applied"
    );
    let lag = storage.write_behind().lag().await.unwrap();
    let mine = lag
        .iter()
        .find(|l| l.namespace == "caas_consistency_test.eventual_docs")
        .unwrap();
    assert_eq!((mine.pending, mine.dead_letters), (0, 3), "{lag:?}");
}

/// The unique (tenant, id) index that makes re-applying a queued insert harmless is built
/// before the queue's first insert, and a failure to build it (the database is down) is tried
/// again, not remembered as done.
#[tokio::test]
async fn the_queues_unique_index_is_built_once_the_database_is_back() {
    let mut ferret = tokio::task::spawn_blocking(common::private_ferretdb)
        .await
        .unwrap();
    let mut config = common::config();
    config.mongodb.uri = format!("mongodb://127.0.0.1:{}/", ferret.port);
    config.mongodb.server_selection_timeout = Duration::from_millis(500);
    config.mongodb.socket_timeout = Duration::from_secs(2);
    config.redis.key_prefix = format!("indexmemo{}:", std::process::id());
    config.write_behind.start_flusher = false;
    let storage = Storage::connect(config).await.unwrap();
    let repo = EventualDocRepository::new(&storage);
    let t = common::tenant("index-memo");
    ferret.stop();
    repo.insert(
        &t,
        &EventualDoc {
            id: "i1".into(),
            tenant_id: t.to_string(),
            body: String::new(),
            version: 0,
        },
    )
    .await
    .unwrap(); // queued while the database is down
    assert!(storage
        .write_behind()
        .flush::<EventualDoc>(Duration::from_secs(2))
        .await
        .is_err());
    ferret.start();
    storage
        .write_behind()
        .flush::<EventualDoc>(Duration::from_secs(30))
        .await
        .unwrap();
    let names: Vec<String> = storage
        .raw()
        .database("caas_consistency_test")
        .collection::<Document>("eventual_docs")
        .list_index_names()
        .await
        .unwrap();
    assert!(
        names.contains(&"tenant_id_1_id_1".to_owned()),
        "no unique (tenant, id) index: {names:?}"
    );
}
