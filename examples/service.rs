//! A small multi-tenant service on caas-storage, end to end against the real servers: typed
//! repositories, tenancy, caching, consistency models, the write-behind queue, the outbox
//! relay to Kafka (read back by a consumer that drops duplicates), and the health report.
//!
//! ```sh
//! scripts/demo            # starts the servers, then runs this
//! ```

use std::time::{Duration, Instant};

use caas_storage::audit::{AuditOptions, NewAuditEntry};
use caas_storage::outbox::{envelope_from_message, RelayOptions};
use caas_storage::prelude::*;
use caas_storage::HealthStatus;
use rdkafka::consumer::{Consumer, StreamConsumer};

/// Accounts: strong consistency, cached in Redis (version-fenced), the password hash never
/// leaves the database unless asked for.
#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "demo_users", consistency = strong,
             cache(ttl = "30m", jitter = "1m"))]
#[index(keys(email), unique)]
#[index(keys(status, created_at desc))]
struct User {
    #[repository(id)]
    user_id: String,
    #[repository(tenant)]
    tenant_id: String,
    email: String,
    #[repository(secret)]
    #[serde(default)]
    password_hash: String,
    status: String,
    #[repository(version)]
    version: u64,
    created_at: DateTime,
}

/// Preferences: read-your-writes, with an in-process tier in front of Redis.
#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_auth", collection = "demo_prefs", consistency = read_your_writes,
             cache(ttl = "10m", strategy = write_through, local(ttl = "5s", capacity = 10_000)))]
struct Preference {
    #[repository(id)]
    user_id: String,
    #[repository(tenant)]
    tenant_id: String,
    theme: String,
    #[repository(version)]
    version: u64,
}

/// Audit entries: eventual, so writes are queued and applied in batches.
#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_compliance", collection = "demo_audit", consistency = eventual)]
#[index(keys(actor, at desc))]
struct AuditEntry {
    #[repository(id)]
    entry_id: String,
    #[repository(tenant)]
    tenant_id: String,
    actor: String,
    action: String,
    at: DateTime,
}

/// Conversations: causal, and every write publishes an event to Kafka through the outbox.
#[derive(Debug, Clone, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_messaging", collection = "demo_conversations", consistency = causal,
             outbox(topic = "demo.conversation.events", insert = "conversation.started",
                    update = "conversation.renamed", delete = "conversation.closed"),
             soft_delete)]
struct Conversation {
    #[repository(id)]
    conversation_id: String,
    #[repository(tenant)]
    tenant_id: String,
    title: String,
    #[repository(version)]
    version: u64,
}

fn step(title: &str) {
    println!("\n== {title}");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    // Events go to declared topics only (kafka.topics; a deployment declares them in its TOML
    // file): the seed's seven by default, plus this demo's. The builder checks the entities'
    // outbox topics at connect.
    let mut config = StorageConfig::from_env()?;
    config
        .kafka
        .declare_topic(caas_storage::config::TopicSpec::named(
            "demo.conversation.events",
        ));
    let storage = Storage::builder(config)
        .entities(&[Conversation::META])
        .connect()
        .await?;
    println!("connected: {}", storage.capabilities().server_description());
    println!(
        "transactions: {}, ttl indexes: {}, atomic conditional updates: {} (fallbacks chosen from these)",
        storage.capabilities().transactions,
        storage.capabilities().ttl_indexes,
        storage.capabilities().atomic_conditional_updates
    );

    step("indexes (plan + apply, idempotent)");
    for meta in [
        User::META,
        Preference::META,
        AuditEntry::META,
        Conversation::META,
    ] {
        let plan = storage
            .sync_indexes_with(meta, caas_storage::index::SyncOptions::default())
            .await?;
        println!(
            "{}: created {:?}, in sync afterwards",
            plan.namespace,
            plan.created()
        );
    }

    // Each run is its own tenant, so runs never see each other's data.
    let run = uuid::Uuid::now_v7().simple().to_string();
    let acme = TenantId::new(format!("acme-{}", &run[20..]))?;
    let globex = TenantId::new(format!("globex-{}", &run[20..]))?;

    step("typed repositories, tenant-scoped");
    let users = UserRepository::new(&storage);
    let ada = User {
        user_id: "u-ada".into(),
        tenant_id: acme.to_string(),
        email: "ada@acme.test".into(),
        password_hash: "$argon2id$...".into(),
        status: "active".into(),
        version: 0,
        created_at: DateTime::now(),
    };
    users.insert(&acme, &ada).await?;
    let same_id_elsewhere = User {
        tenant_id: globex.to_string(),
        email: "ada@globex.test".into(),
        ..ada.clone()
    };
    users.insert(&globex, &same_id_elsewhere).await?;
    let found = users
        .find_by_email(&acme, "ada@acme.test")
        .await?
        .expect("inserted");
    println!(
        "find_by_email in acme -> {} (password hash fetched: {})",
        found.user_id,
        !found.password_hash.is_empty()
    );
    println!(
        "the same id in globex is another user: {}",
        users.get(&globex, &"u-ada".to_owned()).await?.email
    );
    match users
        .insert(
            &acme,
            &User {
                user_id: "u-other".into(),
                ..ada.clone()
            },
        )
        .await
    {
        Err(e @ Error::DuplicateKey { .. }) => println!("duplicate email -> {e}"),
        other => return Err(format!("expected a duplicate-key error, got {other:?}").into()),
    }
    let page = users
        .list_by_status(&acme, "active", PageRequest::first(10))
        .await?;
    println!("list_by_status(active) -> {} user(s)", page.items.len());

    step("optimistic locking");
    let mut copy = users.get(&acme, &"u-ada".to_owned()).await?;
    let stale = copy.clone();
    copy.status = "locked".into();
    users.replace(&acme, &mut copy).await?;
    let mut stale = stale;
    match users.replace(&acme, &mut stale).await {
        Err(e @ Error::VersionConflict { .. }) => println!("stale replace -> {e}"),
        other => return Err(format!("expected a version conflict, got {other:?}").into()),
    }

    step("cache: Redis tier with fenced puts");
    for _ in 0..3 {
        users.find_by_id(&acme, &"u-ada".to_owned()).await?;
    }
    let m = storage.cache().metrics_of::<User>();
    println!(
        "User cache: {} hit(s), {} miss(es), {} load(s) from MongoDB",
        m.redis_hits, m.redis_misses, m.db_loads
    );

    step("read-your-writes with an in-process tier");
    let prefs = PreferenceRepository::new(&storage);
    prefs
        .insert(
            &acme,
            &Preference {
                user_id: "u-ada".into(),
                tenant_id: acme.to_string(),
                theme: "dark".into(),
                version: 0,
            },
        )
        .await?;
    prefs.find_by_id(&acme, &"u-ada".to_owned()).await?;
    let after = prefs
        .update(
            &acme,
            &"u-ada".to_owned(),
            PreferencePatch {
                theme: Some("light".into()),
            },
        )
        .await?
        .expect("exists");
    let read = prefs
        .find_by_id(&acme, &"u-ada".to_owned())
        .await?
        .expect("exists");
    println!(
        "wrote theme={} (v{}), read back theme={} (v{})",
        after.theme, after.version, read.theme, read.version
    );

    step("eventual: queued writes, applied in batches");
    let audit = AuditEntryRepository::new(&storage);
    let entries: Vec<AuditEntry> = (0..100)
        .map(|i| AuditEntry {
            entry_id: format!("a{i}"),
            tenant_id: acme.to_string(),
            actor: "u-ada".into(),
            action: format!("login #{i}"),
            at: DateTime::now(),
        })
        .collect();
    let t0 = Instant::now();
    audit.insert_many(&acme, &entries).await?;
    println!(
        "100 audit entries acknowledged in {:?} (durable in the queue)",
        t0.elapsed()
    );
    storage
        .write_behind()
        .flush::<AuditEntry>(Duration::from_secs(30))
        .await?;
    let applied = audit
        .with_consistency(Consistency::Strong)
        .count(&acme, Filter::all())
        .await?;
    println!("applied to MongoDB: {applied}");

    step("outbox: events recorded with the writes, relayed to Kafka");
    let conversations = ConversationRepository::new(&storage);
    let relay = storage
        .outbox_relay(RelayOptions::for_databases(["caas_messaging"]))?
        .spawn();
    let c = Conversation {
        conversation_id: "c-1".into(),
        tenant_id: acme.to_string(),
        title: "launch".into(),
        version: 0,
    };
    conversations.insert(&acme, &c).await?;
    let renamed = conversations
        .update(
            &acme,
            &"c-1".to_owned(),
            ConversationPatch {
                title: Some("launch v2".into()),
            },
        )
        .await?
        .expect("exists");
    let token = conversations.causal_token(&acme, &renamed);
    assert!(conversations.delete(&acme, &"c-1".to_owned()).await?);
    // Connected as the relay's producer is: brokers and any security settings (SASL, TLS).
    let consumer: StreamConsumer = storage
        .config()
        .kafka
        .client_config()
        .set("group.id", format!("demo-{run}"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&["demo.conversation.events"])?;
    let dedupe = storage.deduplicator("caas_messaging");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 3 && Instant::now() < deadline {
        let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await
        else {
            continue;
        };
        let event = envelope_from_message(&msg)?;
        if event.tenant != acme.as_str() {
            continue;
        }
        let handled = dedupe
            .handle_once("demo", &event.event_id, || async {
                println!(
                    "consumed {} rev {} {}",
                    event.event_type, event.revision, event.payload
                );
                Ok::<_, caas_storage::Error>(())
            })
            .await?;
        if handled.is_some() {
            seen.push(event.event_type);
        }
    }
    relay.shutdown().await;
    if seen
        != [
            "conversation.started",
            "conversation.renamed",
            "conversation.closed",
        ]
    {
        return Err(format!("events out of order or missing: {seen:?}").into());
    }
    println!(
        "causal token for the rename, to hand to the next request: {}...",
        &token.encode()[..24]
    );

    step("audit log: hash-chained per tenant, verified");
    let trail = storage.audit_log(AuditOptions::for_database("caas_audit"))?;
    for action in ["user.login", "user.password_changed", "user.logout"] {
        let e = trail
            .append(
                &acme,
                NewAuditEntry::new(action, "u-1", "user:u-1")
                    .with_details(serde_json::json!({ "run": run })),
            )
            .await?;
        println!("#{} {action} {}...", e.sequence, &e.hash[..16]);
    }
    let verified = trail.verify(&acme, ..).await?;
    if !verified.is_intact() {
        return Err(format!("the audit chain is broken: {:?}", verified.broken).into());
    }
    println!("chain verified: {} entries", verified.checked);

    step("health");
    let report = storage.health().await;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!("\ndone in {:?}", started.elapsed());
    if report.status != HealthStatus::Up {
        return Err(format!("storage is {:?}", report.status).into());
    }
    Ok(())
}
