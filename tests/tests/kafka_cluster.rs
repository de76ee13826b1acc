//! The outbox relay against a real 3-broker KRaft cluster (a private one: these tests kill
//! brokers, so no other test may use it) with a topic at replication factor 3,
//! `min.insync.replicas` 2 and the producer's `acks = all` with idempotence: a broker killed
//! (SIGKILL) during a stream of outbox writes, then the leader of a partition, lose no event
//! and delivery resumes; each killed broker is restarted and the cluster is whole again
//! (every replica back in sync). While a broker is down, a topic asking for 3 replicas cannot
//! be created on the 2 left: an error, not a quiet downgrade.
//!
//! The two scenarios run one after the other in one test (they share the cluster).

use caas_storage_tests as common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use caas_storage::config::{TopicPolicy, TopicSpec};
use caas_storage::outbox::{envelope_from_message, RelayOptions};
use caas_storage::prelude::*;
use caas_storage_tests::KafkaCluster;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TOPIC: &str = "test.cluster.orders";
const DB: &str = "caas_kafka_cluster_it";
/// Writes per scenario; the broker is killed after a third of them.
const WRITES: usize = 60;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(
    database = "caas_kafka_cluster_it",
    collection = "orders",
    outbox(topic = "test.cluster.orders", insert = "order.placed")
)]
struct ClusterOrder {
    #[repository(id)]
    order_id: String,
    #[repository(tenant)]
    tenant_id: String,
    #[repository(version)]
    version: u64,
}

/// What the cluster's metadata says: live brokers, and per partition of `topic` its leader,
/// replicas and in-sync replicas.
struct Layout {
    brokers: usize,
    partitions: Vec<(i32, usize, usize)>,
}

fn layout(brokers: &str, topic: &str) -> Option<Layout> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let t = md.topics().iter().find(|t| t.name() == topic)?;
    Some(Layout {
        brokers: md.brokers().len(),
        partitions: t
            .partitions()
            .iter()
            .map(|p| (p.leader(), p.replicas().len(), p.isr().len()))
            .collect(),
    })
}

async fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The cluster is whole: three live brokers, every partition with a leader and all three
/// replicas in sync.
async fn wait_whole(brokers: &str) {
    wait_until("cluster whole again", Duration::from_secs(90), || {
        layout(brokers, TOPIC).is_some_and(|l| {
            l.brokers == 3
                && l.partitions.len() == 3
                && l.partitions
                    .iter()
                    .all(|&(leader, r, isr)| leader > 0 && r == 3 && isr == 3)
        })
    })
    .await;
}

/// How many times each `order.placed` aggregate id is on the topic, read from the beginning
/// until every id of `want` was seen (bounded).
async fn delivered(brokers: &str, want: &HashSet<String>) -> BTreeMap<String, usize> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("kafka-cluster-it-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline || quiet_until.is_some_and(|q| now >= q) {
            break;
        }
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            *seen
                .entry(envelope_from_message(&m).unwrap().aggregate_id)
                .or_default() += 1;
        }
        if quiet_until.is_none() && want.iter().all(|w| seen.contains_key(w)) {
            // Everything is there; a little longer to count duplicates.
            quiet_until = Some(Instant::now() + Duration::from_secs(2));
        }
    }
    seen
}

/// One scenario: `WRITES` outbox writes with the relay running; `kill` (index of a node)
/// is killed after a third of them. Returns the ids written.
async fn stream_with_a_kill(
    storage: &Storage,
    cluster: &mut KafkaCluster,
    label: &str,
    kill: usize,
) -> HashSet<String> {
    let repo = ClusterOrderRepository::try_new(storage).unwrap();
    let t = common::tenant(label);
    let ids: Vec<String> = (0..WRITES).map(|i| format!("{label}-{i}")).collect();
    let writer = {
        let (repo, t, ids) = (repo.clone(), t.clone(), ids.clone());
        tokio::spawn(async move {
            for id in ids {
                let order = ClusterOrder {
                    order_id: id,
                    tenant_id: t.to_string(),
                    version: 0,
                };
                repo.insert(&t, &order).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // A third of the way in, the broker dies (SIGKILL).
    tokio::time::sleep(Duration::from_millis(50 * WRITES as u64 / 3)).await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| cluster.nodes[kill].stop());
    eprintln!(
        "{label}: killed node {} (port {})",
        kill + 1,
        cluster.nodes[kill].port
    );
    writer.await.unwrap();

    // Delivery resumes with the broker still down: the outbox drains.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lag = storage.outbox(DB).lag().await.unwrap();
        assert_eq!(lag.parked, 0, "{label}: no event given up on: {lag:?}");
        if lag.pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{label}: outbox not drained with a broker down: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "{label}: outbox drained {:?} after the kill",
        killed_at.elapsed()
    );
    ids.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn outbox_events_survive_killed_brokers_and_the_cluster_heals() {
    let started = Instant::now();
    let mut cluster = tokio::task::spawn_blocking(common::private_kafka_cluster)
        .await
        .unwrap();
    let brokers = cluster.brokers();
    eprintln!("cluster {brokers} up in {:?}", started.elapsed());

    let mut config = common::config();
    config.kafka.brokers = brokers.clone();
    config.kafka.topics = vec![TopicSpec::named(TOPIC)]; // 3 partitions, RF 3, min ISR 2
    config.kafka.undeclared_topics = TopicPolicy::Error;
    config.kafka.breaker_cooldown = Duration::from_secs(1);
    assert_eq!(config.kafka.acks, "all");
    assert!(config.kafka.enable_idempotence);
    let storage = Storage::builder(config.clone())
        .entities(&[ClusterOrder::META])
        .connect()
        .await
        .unwrap();
    storage.raw().database(DB).drop().await.unwrap();

    // All three brokers registered, then the declared topic made as declared.
    wait_until("three brokers", Duration::from_secs(60), || {
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        c.fetch_metadata(None, Duration::from_secs(5))
            .is_ok_and(|m| m.brokers().len() == 3)
    })
    .await;
    let report = storage.ensure_topics().await.unwrap();
    assert_eq!(report.brokers, 3);
    assert_eq!(report.created, vec![TOPIC.to_owned()]);
    assert!(report.fallbacks.is_empty(), "{report:?}");
    wait_whole(&brokers).await;

    let relay = storage
        .outbox_relay(RelayOptions {
            poll_interval: Duration::from_millis(50),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
            max_attempts: 10_000,
            ..RelayOptions::for_databases([DB])
        })
        .unwrap();
    let handle = relay.spawn();

    // 1. Any broker: the third node.
    let mut written = stream_with_a_kill(&storage, &mut cluster, "any", 2).await;
    // With two brokers left, a new topic asking for three replicas is refused, not made with
    // two (or one).
    wait_until("the dead broker fenced", Duration::from_secs(60), || {
        layout(&brokers, TOPIC).is_some_and(|l| l.brokers == 2)
    })
    .await;
    let mut rf3 = config.clone();
    let extra = format!("test.cluster.rf3-{}", uuid::Uuid::now_v7().simple());
    rf3.kafka.topics = vec![TopicSpec::named(&extra)];
    let e = Storage::connect(rf3)
        .await
        .unwrap()
        .ensure_topics()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&extra) && e.contains("replication factor 3 needs 3 brokers; the cluster has 2"),
        "{e}"
    );
    tokio::task::block_in_place(|| cluster.nodes[2].start());
    wait_whole(&brokers).await;
    eprintln!("any: node 3 back, cluster whole");

    // 2. The leader of partition 0.
    let leader = layout(&brokers, TOPIC).unwrap().partitions[0].0;
    let index = cluster.node_index(leader);
    written.extend(stream_with_a_kill(&storage, &mut cluster, "leader", index).await);
    let moved = layout(&brokers, TOPIC).unwrap().partitions[0].0;
    assert_ne!(moved, leader, "partition 0 has another leader");
    tokio::task::block_in_place(|| cluster.nodes[index].start());
    wait_whole(&brokers).await;
    eprintln!("leader: node {leader} back, cluster whole");

    // No event lost: every write's event is on the topic. Delivery is at least once
    // (docs/outbox.md): duplicates are counted, not failed on.
    let seen = delivered(&brokers, &written).await;
    let missing: Vec<&String> = written.iter().filter(|w| !seen.contains_key(*w)).collect();
    assert!(missing.is_empty(), "lost events: {missing:?}");
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "{} events written, all delivered, {duplicates} duplicate(s); {:?} in all",
        written.len(),
        started.elapsed()
    );
    let health = storage.health().await;
    let kafka = health.component("kafka").unwrap();
    assert_eq!(kafka.details["breaker"], "closed", "{kafka:?}");
    handle.shutdown().await;
}
