//! Outbox events recorded by the generated repository and published by the relay to the real
//! Kafka broker, on FerretDB (no transactions: the outbox-first protocol under version claims).
//! Events are read back with a plain rdkafka consumer.

use caas_storage_tests as common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use caas_storage::outbox::{envelope_from_message, EventEnvelope, OutboxRelay, RelayOptions};
use caas_storage::prelude::*;
use caas_storage::{FaultPoint, StorageConfig};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TOPIC: &str = "test.outbox.orders";
const DB: &str = "caas_outbox_it";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_outbox_it", collection = "orders", consistency = causal,
             outbox(topic = "test.outbox.orders", insert = "order.placed", update = "order.changed", delete = "order.cancelled"))]
struct Order {
    #[repository(id)]
    pub order_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub status: String,
    #[repository(secret)]
    #[serde(default)]
    pub card_token: String,
    #[repository(version)]
    pub version: u64,
}

fn order(t: &TenantId, id: &str) -> Order {
    Order {
        order_id: id.into(),
        tenant_id: t.to_string(),
        status: "new".into(),
        card_token: "tok_secret".into(),
        version: 0,
    }
}

fn relay(storage: &Storage) -> OutboxRelay {
    let mut options = RelayOptions::for_databases([DB]);
    options.reconcile_after = Duration::from_millis(500);
    options.poll_interval = Duration::from_millis(50);
    storage.outbox_relay(options).unwrap()
}

/// Every event of `tenant` on the topic, waiting until `want` arrived (then a second more, to
/// catch extras).
async fn events_of(tenant: &TenantId, want: usize) -> Vec<EventEnvelope> {
    events_from(&common::config().kafka.brokers, tenant, want).await
}

async fn events_from(brokers: &str, tenant: &TenantId, want: usize) -> Vec<EventEnvelope> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("outbox-it-{tenant}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let partitions = loop {
        let md = consumer
            .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
            .unwrap();
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == TOPIC)
            .map_or(0, |t| t.partitions().len());
        if n > 0 {
            break n;
        }
        assert!(Instant::now() < deadline, "topic never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(TOPIC, p as i32, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let hard = Instant::now() + Duration::from_secs(40);
    let mut soft: Option<Instant> = None;
    loop {
        let until = soft.unwrap_or(hard).min(hard);
        let now = Instant::now();
        if now >= until {
            break;
        }
        match tokio::time::timeout(until - now, consumer.recv()).await {
            Ok(Ok(m)) => {
                let e = envelope_from_message(&m).unwrap();
                if e.tenant == tenant.as_str() {
                    out.push(e);
                }
            }
            Ok(Err(e)) => panic!("consumer: {e}"),
            Err(_) => break,
        }
        if out.len() >= want && soft.is_none() {
            soft = Some(Instant::now() + Duration::from_secs(1));
        }
    }
    out
}

fn by_aggregate(events: &[EventEnvelope]) -> BTreeMap<String, Vec<(u64, String)>> {
    let mut m: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for e in events {
        m.entry(e.aggregate_id.clone())
            .or_default()
            .push((e.revision, e.event_type.clone()));
    }
    m
}

#[tokio::test]
async fn writes_publish_exactly_their_events_in_aggregate_order() {
    let storage = common::storage().await;
    storage.sync_indexes::<Order>().await.unwrap();
    let repo = OrderRepository::new(&storage);
    let t = common::tenant("outbox-order");
    let handle = relay(&storage).spawn();
    // 3 aggregates: insert, 3 updates, a replace, and a delete on one of them.
    for a in 0..3 {
        let id = format!("o{a}");
        repo.insert(&t, &order(&t, &id)).await.unwrap();
        for step in 0..3 {
            let patch = OrderPatch {
                status: Some(format!("step{step}")),
                ..Default::default()
            };
            repo.update(&t, &id, patch).await.unwrap().unwrap();
        }
        let mut current = repo.get(&t, &id).await.unwrap();
        current.status = "replaced".into();
        repo.replace(&t, &mut current).await.unwrap();
    }
    assert!(repo.delete(&t, &"o1".to_owned()).await.unwrap());
    let events = events_of(&t, 16).await;
    handle.shutdown().await;
    assert_eq!(events.len(), 16, "{:#?}", by_aggregate(&events));
    let per = by_aggregate(&events);
    for (id, evs) in &per {
        let revisions: Vec<u64> = evs.iter().map(|(r, _)| *r).collect();
        let mut sorted = revisions.clone();
        sorted.sort_unstable();
        assert_eq!(revisions, sorted, "{id}: events out of order");
        assert_eq!(evs[0].1, "order.placed");
        assert!(evs[1..5].iter().all(|(_, ty)| ty == "order.changed"));
    }
    assert_eq!(
        per["o1"].last().unwrap(),
        &(5, "order.cancelled".to_owned())
    );
    let placed = events
        .iter()
        .find(|e| e.event_type == "order.placed")
        .unwrap();
    assert_eq!(placed.aggregate_type, "Order");
    assert_eq!(placed.payload["status"], "new");
    assert!(
        placed.payload.get("card_token").is_none(),
        "secret fields never leave in events"
    );
    let changed = events
        .iter()
        .find(|e| e.event_type == "order.changed")
        .unwrap();
    assert!(
        changed.payload.get("status").is_some(),
        "update events carry what changed"
    );
}

#[tokio::test]
async fn concurrent_writers_get_one_event_per_acknowledged_write() {
    let storage = common::storage().await;
    storage.sync_indexes::<Order>().await.unwrap();
    let repo = OrderRepository::new(&storage);
    let t = common::tenant("outbox-race");
    repo.insert(&t, &order(&t, "hot")).await.unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|w| {
            let (repo, t) = (repo.clone(), t.clone());
            tokio::spawn(async move {
                let mut acked = 0;
                for i in 0..4 {
                    let patch = OrderPatch {
                        status: Some(format!("w{w}-{i}")),
                        ..Default::default()
                    };
                    if repo.update(&t, &"hot".to_owned(), patch).await.is_ok() {
                        acked += 1;
                    }
                }
                acked
            })
        })
        .collect();
    let mut acked = 0;
    for task in tasks {
        acked += task.await.unwrap();
    }
    let handle = relay(&storage).spawn();
    let events = events_of(&t, 1 + acked).await;
    handle.shutdown().await;
    let updates: Vec<u64> = events
        .iter()
        .filter(|e| e.event_type == "order.changed")
        .map(|e| e.revision)
        .collect();
    assert_eq!(updates.len(), acked, "one event per acknowledged write");
    let want: Vec<u64> = (1..=acked as u64).collect();
    assert_eq!(updates, want, "distinct revisions, in order");
    assert_eq!(
        repo.get(&t, &"hot".to_owned()).await.unwrap().version,
        acked as u64
    );
}

/// The writer stops dead at each step of the protocol. Events whose write did not happen are
/// never published (no phantom event); events whose write happened are published (none lost).
#[tokio::test]
async fn a_writer_dying_at_any_step_leaves_no_phantom_and_no_lost_event() {
    let mut config: StorageConfig = common::config();
    config.mongodb.app_name = "outbox-crash".into();
    let storage = Storage::connect(config).await.unwrap();
    storage.sync_indexes::<Order>().await.unwrap();
    let repo = OrderRepository::new(&storage);
    let t = common::tenant("outbox-crash");
    repo.insert(&t, &order(&t, "c1")).await.unwrap();
    repo.insert(&t, &order(&t, "c4")).await.unwrap();

    // Dies after recording the events, before writing: the write never happens.
    storage.inject_fault(FaultPoint::OutboxAfterPrepare);
    let patch = OrderPatch {
        status: Some("never".into()),
        ..Default::default()
    };
    assert!(repo
        .update_checked(&t, &"c1".to_owned(), 0, patch)
        .await
        .is_err());
    assert_eq!(repo.get(&t, &"c1".to_owned()).await.unwrap().version, 0);
    if !storage.capabilities().atomic_conditional_updates {
        // Its claim on the transition outlives it (the write might still be running on the
        // server): until the claim's lease ends, another writer is refused.
        let patch = OrderPatch {
            status: Some("refused".into()),
            ..Default::default()
        };
        assert!(matches!(
            repo.update_checked(&t, &"c1".to_owned(), 0, patch).await,
            Err(Error::VersionConflict { .. })
        ));
    }

    // Dies after writing, before marking the events: the write happened.
    storage.inject_fault(FaultPoint::OutboxAfterWrite);
    let patch = OrderPatch {
        status: Some("written".into()),
        ..Default::default()
    };
    assert!(repo
        .update_checked(&t, &"c4".to_owned(), 0, patch)
        .await
        .is_err());
    let now = repo.get(&t, &"c4".to_owned()).await.unwrap();
    assert_eq!((now.version, now.status.as_str()), (1, "written"));

    // Same for an insert whose write happened but whose events were not marked.
    storage.inject_fault(FaultPoint::OutboxAfterWrite);
    assert!(repo.insert(&t, &order(&t, "c2")).await.is_err());
    // And an insert that died before writing.
    storage.inject_fault(FaultPoint::OutboxAfterPrepare);
    assert!(repo.insert(&t, &order(&t, "c3")).await.is_err());
    assert!(!repo.exists(&t, &"c3".to_owned()).await.unwrap());

    tokio::time::sleep(Duration::from_millis(600)).await; // past reconcile_after
    let handle = relay(&storage).spawn();
    let events = events_of(&t, 4).await;
    handle.shutdown().await;
    let seen: Vec<(String, u64, String)> = events
        .iter()
        .map(|e| (e.aggregate_id.clone(), e.revision, e.event_type.clone()))
        .collect();
    assert_eq!(
        seen.len(),
        4,
        "c1 and c4 placed, c4 changed (the write that happened), c2 placed: {seen:?}"
    );
    assert!(seen.contains(&("c4".into(), 1, "order.changed".into())));
    assert!(seen.contains(&("c2".into(), 0, "order.placed".into())));
    assert!(
        !seen.iter().any(|(id, _, _)| id == "c3"),
        "phantom event for a write that never happened"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "order.changed")
            .count(),
        1,
        "the write that never happened has no event"
    );
}

#[tokio::test]
async fn custom_events_travel_with_the_write() {
    let storage = common::storage().await;
    storage.sync_indexes::<Order>().await.unwrap();
    let repo = OrderRepository::new(&storage);
    let t = common::tenant("outbox-custom");
    let extra = EventEnvelope::new(
        "order.fraud_check_requested",
        "Order",
        "x",
        "x",
        serde_json::json!({"score": 7}),
    )
    .with_correlation_id("req-42");
    repo.insert_with_events(&t, &order(&t, "k1"), &[extra])
        .await
        .unwrap();
    let handle = relay(&storage).spawn();
    let events = events_of(&t, 2).await;
    handle.shutdown().await;
    assert_eq!(events.len(), 2);
    let custom = events
        .iter()
        .find(|e| e.event_type == "order.fraud_check_requested")
        .unwrap();
    assert_eq!(
        custom.aggregate_id, "k1",
        "custom events belong to the written aggregate"
    );
    assert_eq!(custom.tenant, t.as_str());
    assert_eq!(custom.correlation_id.as_deref(), Some("req-42"));
    assert_eq!(custom.payload["score"], 7);
}

/// Lives in its own database so that only this test's relay (on a private broker) drains it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_outbox_it_down", collection = "parcels", consistency = causal,
             outbox(topic = "test.outbox.orders"))]
struct Parcel {
    #[repository(id)]
    pub parcel_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub status: String,
    #[repository(version)]
    pub version: u64,
}

/// The broker stops while writes go on, then comes back: every event is delivered, none lost.
#[tokio::test]
async fn events_written_while_kafka_is_down_are_delivered_when_it_returns() {
    let mut kafka = tokio::task::spawn_blocking(common::private_kafka)
        .await
        .unwrap();
    let mut config = common::config();
    config.kafka.brokers = format!("127.0.0.1:{}", kafka.port);
    config.kafka.message_timeout = Duration::from_secs(3);
    let storage = Storage::connect(config).await.unwrap();
    storage.sync_indexes::<Parcel>().await.unwrap();
    let repo = ParcelRepository::new(&storage);
    let t = common::tenant("outbox-broker-down");
    let mut options = RelayOptions::for_databases(["caas_outbox_it_down"]);
    options.poll_interval = Duration::from_millis(50);
    options.backoff_base = Duration::from_millis(200);
    options.backoff_max = Duration::from_secs(1);
    options.max_attempts = 1000; // retry through the outage, never park
    let handle = storage.outbox_relay(options).unwrap().spawn();
    let brokers = storage.config().kafka.brokers.clone();

    for i in 0..5 {
        let p = Parcel {
            parcel_id: format!("k{i}"),
            tenant_id: t.to_string(),
            status: "new".into(),
            version: 0,
        };
        repo.insert(&t, &p).await.unwrap();
    }
    assert_eq!(events_from(&brokers, &t, 5).await.len(), 5);

    kafka.stop();
    for i in 0..5 {
        let patch = ParcelPatch {
            status: Some("while-down".into()),
        };
        repo.update(&t, &format!("k{i}"), patch)
            .await
            .unwrap()
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(4)).await; // the relay keeps failing meanwhile
    let kafka = tokio::task::spawn_blocking(move || {
        kafka.start();
        kafka
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut distinct = 0;
    let mut changed = 0;
    while Instant::now() < deadline {
        let events = events_from(&brokers, &t, 10).await;
        let ids: std::collections::BTreeSet<&str> =
            events.iter().map(|e| e.event_id.as_str()).collect();
        distinct = ids.len();
        changed = events
            .iter()
            .filter(|e| e.event_type == "parcel.updated")
            .count();
        if distinct >= 10 {
            break;
        }
    }
    handle.shutdown().await;
    drop(kafka);
    assert_eq!(
        distinct, 10,
        "every event of every acknowledged write arrives"
    );
    assert!(
        changed >= 5,
        "the five updates made while the broker was down"
    );
}

// ---- delete and re-create: an aggregate's identity survives ------------------------------

const RECREATE_DB: &str = "caas_outbox_recreate_it";

/// An aggregate that is deleted and created again under the same id, in a database of its own
/// (the tests below empty its archive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_outbox_recreate_it", collection = "tickets", consistency = strong,
             outbox(topic = "test.outbox.orders", insert = "ticket.opened", update = "ticket.changed", delete = "ticket.closed"))]
struct Ticket {
    #[repository(id)]
    pub ticket_id: String,
    #[repository(tenant)]
    pub tenant_id: String,
    pub title: String,
    #[repository(version)]
    pub version: u64,
}

fn ticket(t: &TenantId, id: &str, title: &str) -> Ticket {
    Ticket {
        ticket_id: id.into(),
        tenant_id: t.to_string(),
        title: title.into(),
        version: 0,
    }
}

/// A handle of its own, so that injected faults hit only this test's writes.
async fn recreate_storage(label: &str) -> Storage {
    let mut config: StorageConfig = common::config();
    config.mongodb.app_name = label.into();
    let storage = Storage::connect(config).await.unwrap();
    storage.sync_indexes::<Ticket>().await.unwrap();
    storage
}

/// `(event type, revision, state)` of the records of one aggregate, oldest first.
async fn ticket_records(storage: &Storage, t: &TenantId, id: &str) -> Vec<(String, i64, String)> {
    use futures::TryStreamExt;
    let outbox = storage.outbox(RECREATE_DB);
    let filter = caas_storage::bson::doc! { "tenant": t.as_str(), "aggregate_id": id };
    let mut out = Vec::new();
    for coll in [outbox.collection(), outbox.published_collection()] {
        let docs: Vec<caas_storage::bson::Document> = coll
            .find(filter.clone())
            .sort(caas_storage::bson::doc! { "created_at": 1 })
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for d in docs {
            out.push((
                d.get_str("event_type").unwrap().to_owned(),
                d.get_i64("revision").unwrap(),
                d.get_str("state").unwrap().to_owned(),
            ));
        }
    }
    out
}

/// Reconciles every prepared record of the recreate database as if an hour had passed.
async fn reconcile_now(storage: &Storage) {
    let later = caas_storage::bson::DateTime::from_millis(
        caas_storage::bson::DateTime::now().timestamp_millis() + 3_600_000,
    );
    storage.outbox(RECREATE_DB).reconcile(later).await.unwrap();
}

/// An old incarnation's committed revision-0 event does not decide the new incarnation's
/// insert: the insert happened, so its event is published.
#[tokio::test]
async fn a_recreated_aggregates_insert_is_decided_by_its_own_incarnation() {
    let storage = recreate_storage("outbox-recreate-a").await;
    let repo = TicketRepository::new(&storage);
    let t = common::tenant("outbox-recreate-a");
    let id = "a1".to_owned();
    repo.insert(&t, &ticket(&t, "a1", "first")).await.unwrap();
    assert!(repo.delete(&t, &id).await.unwrap());
    // Created again; the writer dies after writing, before settling its event.
    storage.inject_fault(FaultPoint::OutboxAfterWrite);
    assert!(repo.insert(&t, &ticket(&t, "a1", "second")).await.is_err());
    assert_eq!(repo.get(&t, &id).await.unwrap().title, "second");
    reconcile_now(&storage).await;
    assert_eq!(
        ticket_records(&storage, &t, "a1").await,
        vec![
            ("ticket.opened".into(), 0, "ready".into()),
            ("ticket.closed".into(), 1, "ready".into()),
            ("ticket.opened".into(), 0, "ready".into()),
        ],
        "the second insert happened: its event is ready"
    );
}

/// A crashed insert of an id that already exists never happened, even once the archive of
/// the aggregate's published events is gone: no phantom event.
#[tokio::test]
async fn a_crashed_insert_of_an_existing_id_is_abandoned_after_the_archive_is_cleaned() {
    let storage = recreate_storage("outbox-recreate-b").await;
    let repo = TicketRepository::new(&storage);
    let t = common::tenant("outbox-recreate-b");
    let id = "b1".to_owned();
    repo.insert(&t, &ticket(&t, "b1", "first")).await.unwrap();
    let patch = TicketPatch {
        title: Some("changed".into()),
    };
    repo.update(&t, &id, patch).await.unwrap();
    // Published and archived, then the archive cleaned.
    let relay = {
        let mut options = RelayOptions::for_databases([RECREATE_DB]);
        options.reconcile_after = Duration::from_millis(500);
        storage.outbox_relay(options).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ticket_records(&storage, &t, "b1")
        .await
        .iter()
        .all(|(_, _, s)| s == "published")
    {
        assert!(Instant::now() < deadline, "never published");
        relay.drain_once().await.unwrap();
    }
    relay.release().await;
    storage
        .outbox(RECREATE_DB)
        .cleanup_published(Duration::ZERO)
        .await
        .unwrap();
    assert!(ticket_records(&storage, &t, "b1").await.is_empty());
    // An insert of the same id dies after recording its event, before writing.
    storage.inject_fault(FaultPoint::OutboxAfterPrepare);
    assert!(repo.insert(&t, &ticket(&t, "b1", "again")).await.is_err());
    reconcile_now(&storage).await;
    assert_eq!(
        ticket_records(&storage, &t, "b1").await,
        vec![("ticket.opened".into(), 0, "abandoned".into())],
        "the insert never happened: no phantom event"
    );
    assert_eq!(repo.get(&t, &id).await.unwrap().title, "changed");
}

/// Events of two incarnations of one aggregate reach Kafka in the order they happened, and
/// the old incarnation's unsettled delete is not taken for a rival of the new one's update.
#[tokio::test]
async fn events_of_a_recreated_aggregate_are_published_in_order() {
    let storage = recreate_storage("outbox-recreate-c").await;
    let repo = TicketRepository::new(&storage);
    let t = common::tenant("outbox-recreate-c");
    let id = "c1".to_owned();
    repo.insert(&t, &ticket(&t, "c1", "first")).await.unwrap();
    // The delete happens; its writer dies before settling the event.
    storage.inject_fault(FaultPoint::OutboxAfterWrite);
    assert!(repo.delete(&t, &id).await.is_err());
    assert!(!repo.exists(&t, &id).await.unwrap());
    repo.insert(&t, &ticket(&t, "c1", "second")).await.unwrap();
    let patch = TicketPatch {
        title: Some("second, changed".into()),
    };
    repo.update(&t, &id, patch).await.unwrap();

    tokio::time::sleep(Duration::from_millis(600)).await; // past reconcile_after
    let mut options = RelayOptions::for_databases([RECREATE_DB]);
    options.reconcile_after = Duration::from_millis(500);
    options.poll_interval = Duration::from_millis(50);
    let handle = storage.outbox_relay(options).unwrap().spawn();
    let events = events_of(&t, 4).await;
    handle.shutdown().await;
    let seen: Vec<(String, u64)> = events
        .iter()
        .map(|e| (e.event_type.clone(), e.revision))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("ticket.opened".to_owned(), 0),
            ("ticket.closed".to_owned(), 1),
            ("ticket.opened".to_owned(), 0),
            ("ticket.changed".to_owned(), 1),
        ]
    );
}
