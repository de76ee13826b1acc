//! Retention: what the framework writes for itself stays bounded without anyone running a
//! clean-up. The background task of a handle removes published and abandoned outbox events,
//! orphaned version claims and consumed-event records older than their retention, keeps the
//! newer ones, and the health report shows what is kept.

use caas_storage_tests as common;

use std::time::Duration;

use caas_storage::bson::{doc, DateTime, Document};
use caas_storage::prelude::*;

const DB: &str = "caas_retention_it";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_retention_it", collection = "tickets", consistency = strong,
             outbox(topic = "test.retention.tickets", insert = "ticket.opened"))]
struct Ticket {
    #[repository(id)]
    ticket_id: String,
    #[repository(tenant)]
    tenant_id: String,
    #[repository(version)]
    version: u64,
}

fn ago(d: Duration) -> DateTime {
    DateTime::from_millis(DateTime::now().timestamp_millis() - d.as_millis() as i64)
}

#[tokio::test]
async fn the_framework_removes_what_outlived_its_retention_on_its_own() {
    let hour = Duration::from_secs(3600);
    let mut config = common::config();
    config.redis.key_prefix = format!("retention{}:", std::process::id());
    config.retention.interval = Duration::from_millis(300);
    config.retention.published_events = hour;
    config.retention.abandoned_events = hour;
    config.retention.consumed_events = hour;
    let storage = Storage::connect(config).await.unwrap();
    let db = storage.raw().database(DB);
    db.drop().await.unwrap();
    let _tickets = TicketRepository::new(&storage);
    let _dedup = storage.deduplicator(DB);
    let coll = |name: &str| db.collection::<Document>(name);
    let (old, fresh) = (ago(2 * hour), DateTime::now());
    coll("caas_outbox_published")
        .insert_many([
            doc! { "_id": "p-old", "published_at": old },
            doc! { "_id": "p-new", "published_at": fresh },
        ])
        .await
        .unwrap();
    coll("caas_outbox")
        .insert_many([
            doc! { "_id": "a-old", "state": "abandoned", "created_at": old },
            doc! { "_id": "a-new", "state": "abandoned", "created_at": fresh },
            doc! { "_id": "r-old", "state": "ready", "created_at": old },
        ])
        .await
        .unwrap();
    coll("tickets__version_claims")
        .insert_many([
            doc! { "_id": "c-old", "at": ago(Duration::from_secs(120)) },
            doc! { "_id": "c-new", "at": fresh },
        ])
        .await
        .unwrap();
    coll("caas_consumed_events")
        .insert_many([
            doc! { "_id": "g:e-old", "at": old },
            doc! { "_id": "g:e-new", "at": fresh },
        ])
        .await
        .unwrap();

    let ids = |name: &'static str| {
        let c = coll(name);
        async move {
            use futures::TryStreamExt;
            let mut v: Vec<String> = c
                .find(doc! {})
                .await
                .unwrap()
                .try_collect::<Vec<Document>>()
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.get_str("_id").unwrap().to_owned())
                .collect();
            v.sort();
            v
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ids("caas_consumed_events").await.len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "no retention run within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ids("caas_outbox_published").await, ["p-new"]);
    assert_eq!(
        ids("caas_outbox").await,
        ["a-new", "r-old"],
        "pending events are kept"
    );
    assert_eq!(ids("tickets__version_claims").await, ["c-new"]);
    assert_eq!(ids("caas_consumed_events").await, ["g:e-new"]);

    let health = storage.health().await;
    let kept = health
        .component("retention")
        .expect("a retention component");
    assert_eq!(kept.details["published_events"], 1, "{kept:?}");
    assert_eq!(kept.details["abandoned_events"], 1, "{kept:?}");
    assert_eq!(kept.details["version_claims"], 1, "{kept:?}");
    assert_eq!(kept.details["consumed_events"], 1, "{kept:?}");
}
