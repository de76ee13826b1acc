//! The embeddable CLI (`caas_storage::cli`, feature `cli`) against the real servers: every
//! command run in-process through `Cli::run_with` with `--json`, its one JSON document parsed,
//! and its exit code checked: 0 ok, 1 findings, 2 usage error.

use caas_storage_tests as common;

use std::time::Duration;

use caas_storage::audit::{AuditOptions, NewAuditEntry};
use caas_storage::bson::{doc, Document};
use caas_storage::cli::{Cli, Exit};
use caas_storage::entity::Entity;
use caas_storage::migrations::StepResult;
use caas_storage::outbox::EventState;
use caas_storage::prelude::*;
use serde_json::Value;

const DB: &str = "caas_cli_it";

/// Cached in Redis: `cache stats|invalidate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_cli_it", collection = "users", consistency = strong, cache(ttl = "10m"))]
struct CliUser {
    #[repository(id)]
    user_id: String,
    #[repository(tenant)]
    tenant_id: String,
    email: String,
    #[repository(version)]
    version: u64,
}

/// Only the index test touches its collection (it drops it first): `indexes plan|apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_cli_it", collection = "ix_docs", consistency = strong)]
#[index(keys(email), unique)]
struct IxDoc {
    #[repository(id)]
    doc_id: String,
    #[repository(tenant)]
    tenant_id: String,
    email: String,
    #[repository(unique)]
    #[serde(default)]
    tags: Vec<String>,
}

fn name_to_full_name(doc: &mut Document) -> StepResult {
    let name = doc.remove("name").ok_or("a version 1 profile has a name")?;
    doc.insert("full_name", name);
    Ok(())
}

/// Schema version 2: `migrate status|dry-run|run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_cli_it", collection = "profiles", consistency = strong,
             schema_version = 2)]
#[migrate(from = 1, up = name_to_full_name)]
struct CliProfile {
    #[repository(id)]
    profile_id: String,
    #[repository(tenant)]
    tenant_id: String,
    full_name: String,
}

/// Records events: `outbox status|parked|redrive`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_cli_outbox_it", collection = "convos", consistency = strong,
             outbox(topic = "test.cli.convos", insert = "convo.started"))]
struct Convo {
    #[repository(id)]
    convo_id: String,
    #[repository(tenant)]
    tenant_id: String,
    title: String,
    #[repository(version)]
    version: u64,
}

/// Queued writes: `queue status|dead-letters|replay`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_cli_it", collection = "items", consistency = eventual)]
struct Item {
    #[repository(id)]
    item_id: String,
    #[repository(tenant)]
    tenant_id: String,
    attrs: std::collections::BTreeMap<String, String>,
}

/// The CLI a service would embed, with every test entity declared.
fn cli() -> Cli {
    Cli::new("caas-test")
        .entity::<CliUser>()
        .entity::<IxDoc>()
        .entity::<CliProfile>()
        .entity::<Convo>()
        .entity::<Item>()
}

/// Runs `args` through `cli` on `storage`; the exit code and the JSON document printed.
async fn run(cli: &Cli, storage: &Storage, args: &[&str]) -> (Exit, Value) {
    let (exit, out, err) = run_raw(cli, storage, args).await;
    let json = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "`{}` printed no JSON document ({e}): {out}\nstderr: {err}",
            args.join(" ")
        )
    });
    (exit, json)
}

/// Runs `args`; the exit code, stdout and stderr.
async fn run_raw(cli: &Cli, storage: &Storage, args: &[&str]) -> (Exit, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let argv = std::iter::once("caas-test").chain(args.iter().copied());
    let exit = cli.run_with(argv, storage, &mut out, &mut err).await;
    (
        exit,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[tokio::test]
async fn health_exits_0_with_every_server_up_and_reports_each_component() {
    let storage = common::storage().await;
    let (exit, json) = run(&cli(), &storage, &["health", "--json"]).await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["status"], "up", "{json:#}");
    let names: Vec<&str> = json["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for want in ["mongodb", "kafka", "outbox"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("redis")), "{names:?}");
    // The declared entity with an outbox is part of the outbox check.
    let outbox = json["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "outbox")
        .unwrap();
    assert!(
        outbox["details"]["databases"]
            .as_array()
            .unwrap()
            .contains(&Value::from("caas_cli_outbox_it")),
        "{outbox:#}"
    );
    // And in text, the status first.
    let (exit, text, _) = run_raw(&cli(), &storage, &["health"]).await;
    assert_eq!(exit, Exit::Ok);
    assert!(text.starts_with("UP"), "{text}");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let storage = common::storage().await;
    let (exit, _, err) = run_raw(&cli(), &storage, &["indexes"]).await;
    assert_eq!(exit, Exit::Usage, "{err}");
    assert_eq!(Exit::Usage.code(), 2);
    let (exit, _, err) = run_raw(&cli(), &storage, &["cache", "invalidate", "--json"]).await;
    assert_eq!(exit, Exit::Usage);
    assert!(err.contains("--tenant"), "{err}");
    let (exit, _, _) = run_raw(&cli(), &storage, &["no-such-command"]).await;
    assert_eq!(exit, Exit::Usage);
    // An entity the service does not declare: still one JSON document, naming the error.
    let (exit, json) = run(
        &cli(),
        &storage,
        &["indexes", "plan", "--entity", "Nope", "--json"],
    )
    .await;
    assert_eq!(exit, Exit::Usage);
    assert_eq!(json["error"]["kind"], "usage", "{json:#}");
    assert!(
        json["error"]["message"].as_str().unwrap().contains("Nope"),
        "{json:#}"
    );
    // No audit log declared.
    let (exit, _) = run(
        &cli(),
        &storage,
        &["audit", "verify", "--tenant", "t", "--json"],
    )
    .await;
    assert_eq!(exit, Exit::Usage);
    // --help is not an error.
    let (exit, out, _) = run_raw(&cli(), &storage, &["--help"]).await;
    assert_eq!(exit, Exit::Ok);
    assert!(
        out.contains("migrate") && out.contains("caas-test"),
        "{out}"
    );
}

#[tokio::test]
async fn indexes_plan_lists_the_missing_index_and_apply_creates_it() {
    let storage = common::storage().await;
    storage
        .raw()
        .database(DB)
        .collection::<Document>("ix_docs")
        .drop()
        .await
        .unwrap();
    let cli = cli();
    let plan = ["indexes", "plan", "--entity", "IxDoc", "--json"];
    let (exit, json) = run(&cli, &storage, &plan).await;
    assert_eq!(exit, Exit::Findings, "{json:#}");
    assert_eq!(json["in_sync"], false);
    let plans = json["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 1, "only the entity asked for: {json:#}");
    assert_eq!(plans[0]["namespace"], "caas_cli_it.ix_docs");
    let missing: Vec<&Value> = plans[0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "create")
        .collect();
    assert!(
        missing
            .iter()
            .any(|c| c["keys"].as_str().unwrap().contains("email")
                && c["unique"] == true
                && c["applied"] == false),
        "{json:#}"
    );
    // Planning changed nothing.
    let (exit, _) = run(&cli, &storage, &plan).await;
    assert_eq!(exit, Exit::Findings);

    let (exit, json) = run(
        &cli,
        &storage,
        &["indexes", "apply", "--entity", "IxDoc", "--json"],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    let created: Vec<&Value> = json["plans"][0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "create" && c["applied"] == true)
        .collect();
    assert_eq!(created.len(), missing.len(), "{json:#}");

    let (exit, json) = run(&cli, &storage, &plan).await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["in_sync"], true);
    // The server agrees.
    let names = storage
        .raw()
        .database(DB)
        .collection::<Document>("ix_docs")
        .list_index_names()
        .await
        .unwrap();
    assert!(names.iter().any(|n| n.contains("email")), "{names:?}");

    // The unique index on the list: built, and called weakened where the server holds the
    // whole list rather than each element (FerretDB).
    let (exit, out, _) = run_raw(&cli, &storage, &["indexes", "plan", "--entity", "IxDoc"]).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    assert!(out.contains("ok        tenant_id_1_tags_1"), "{out}");
    let weakened = out.lines().find(|l| l.trim_start().starts_with("weakened"));
    if storage.capabilities().unique_list_elements {
        assert_eq!(weakened, None, "{out}");
    } else {
        let line = weakened.unwrap_or_else(|| panic!("no weakened line: {out}"));
        assert!(
            line.contains("tenant_id_1_tags_1") && line.contains("not on each element"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn migrate_status_shows_pending_documents_and_run_migrates_them() {
    let mut config = common::config();
    config.migrations.database = format!("caas_cli_mig_{}", std::process::id());
    let storage = Storage::connect(config).await.unwrap();
    let ledger_db = storage.config().migrations.database.clone();
    storage.raw().database(&ledger_db).drop().await.unwrap();
    let profiles = storage
        .raw()
        .database(DB)
        .collection::<Document>("profiles");
    profiles.drop().await.unwrap();
    let t = common::tenant("cli-mig");
    let v1: Vec<Document> = (0..3)
        .map(|i| {
            doc! {
                "_id": format!("{t}:p{i}"), "profile_id": format!("p{i}"),
                "tenant_id": t.as_str(), "name": format!("Name {i}"),
            }
        })
        .collect();
    profiles.insert_many(v1).await.unwrap();
    let cli = cli();

    let (exit, json) = run(
        &cli,
        &storage,
        &["migrate", "status", "--entity", "CliProfile", "--json"],
    )
    .await;
    assert_eq!(exit, Exit::Findings, "{json:#}");
    assert_eq!(json["documents_to_migrate"], 3, "{json:#}");
    let pending: Vec<&str> = json["pending_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        pending
            .iter()
            .any(|s| s.contains("CliProfile") && s.contains("1->2")),
        "{pending:?}"
    );
    assert_eq!(
        json["report"]["entities"][0]["by_version"]["1"], 3,
        "{json:#}"
    );
    assert_eq!(json["report"]["dry_run"], true);

    let (exit, json) = run(
        &cli,
        &storage,
        &["migrate", "dry-run", "--entity", "CliProfile", "--json"],
    )
    .await;
    assert_eq!(
        exit,
        Exit::Ok,
        "a dry run reports, it does not judge: {json:#}"
    );
    assert_eq!(json["documents_to_migrate"], 3);
    assert_eq!(
        profiles
            .count_documents(doc! { "name": { "$exists": true } })
            .await
            .unwrap(),
        3,
        "neither status nor dry-run wrote"
    );

    let (exit, json) = run(
        &cli,
        &storage,
        &["migrate", "run", "--entity", "CliProfile", "--json"],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["rewritten"], 3, "{json:#}");
    assert!(
        json["pending_steps"].as_array().unwrap().is_empty(),
        "{json:#}"
    );
    let stored = profiles
        .find_one(doc! { "_id": format!("{t}:p1") })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_str("full_name").unwrap(), "Name 1", "{stored}");
    assert!(stored.get("name").is_none(), "{stored}");

    let (exit, json) = run(
        &cli,
        &storage,
        &["migrate", "status", "--entity", "CliProfile", "--json"],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "nothing pending after the run: {json:#}");
    assert_eq!(json["documents_to_migrate"], 0);
    storage.raw().database(&ledger_db).drop().await.unwrap();
}

#[tokio::test]
async fn outbox_parked_lists_a_parked_event_and_redrive_makes_it_ready() {
    let storage = common::storage().await;
    let t = common::tenant("cli-outbox");
    ConvoRepository::new(&storage)
        .insert(
            &t,
            &Convo {
                convo_id: "c1".into(),
                tenant_id: t.to_string(),
                title: "hello".into(),
                version: 0,
            },
        )
        .await
        .unwrap();
    let store = storage.outbox(Convo::META.database);
    let record = store
        .collection()
        .find_one(doc! { "write.tenant": t.as_str() })
        .await
        .unwrap()
        .expect("the insert recorded an event");
    let event_id = record.get_str("_id").unwrap().to_owned();
    // Parked as the relay parks an event whose delivery attempts are exhausted (the relay's
    // own parking is tested in outbox_relay.rs).
    store
        .collection()
        .update_one(
            doc! { "_id": &event_id },
            doc! { "$set": { "state": "parked", "attempts": 5_i64, "last_error": "broker down" } },
        )
        .await
        .unwrap();
    let cli = cli();

    let (exit, json) = run(&cli, &storage, &["outbox", "status", "--json"]).await;
    assert_eq!(
        exit,
        Exit::Findings,
        "parked events are a finding: {json:#}"
    );
    let mine = json["outboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["database"] == "caas_cli_outbox_it")
        .unwrap_or_else(|| panic!("{json:#}"));
    assert!(mine["parked"].as_u64().unwrap() >= 1, "{json:#}");

    let parked_ids = |json: &Value| -> Vec<String> {
        json["parked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["envelope"]["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (exit, json) = run(
        &cli,
        &storage,
        &["outbox", "parked", "--limit", "1000", "--json"],
    )
    .await;
    assert_eq!(exit, Exit::Ok);
    assert!(parked_ids(&json).contains(&event_id), "{json:#}");
    let listed = json["parked"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["envelope"]["event_id"] == event_id.as_str())
        .unwrap();
    assert_eq!(listed["database"], "caas_cli_outbox_it");
    assert_eq!(listed["state"], "parked");
    assert_eq!(listed["last_error"], "broker down");
    assert_eq!(listed["topic"], "test.cli.convos");

    let (exit, json) = run(&cli, &storage, &["outbox", "redrive", &event_id, "--json"]).await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["redriven"], serde_json::json!([event_id]));
    let r = store.get(&event_id).await.unwrap().unwrap();
    assert_eq!((r.state, r.attempts), (EventState::Ready, 0));
    let (_, json) = run(
        &cli,
        &storage,
        &["outbox", "parked", "--limit", "1000", "--json"],
    )
    .await;
    assert!(!parked_ids(&json).contains(&event_id), "{json:#}");
    // Not parked any more: redriving it again is a finding.
    let (exit, json) = run(&cli, &storage, &["outbox", "redrive", &event_id, "--json"]).await;
    assert_eq!(exit, Exit::Findings);
    assert_eq!(json["not_parked"], serde_json::json!([event_id]));
}

/// The queue of one storage handle of this test, by namespace.
async fn queue_of(cli: &Cli, storage: &Storage) -> (Exit, Value) {
    let (exit, json) = run(
        cli,
        storage,
        &["queue", "status", "--entity", "Item", "--json"],
    )
    .await;
    assert_eq!(json["queues"].as_array().unwrap().len(), 1, "{json:#}");
    (exit, json["queues"][0].clone())
}

#[tokio::test]
async fn queue_dead_letters_lists_a_refused_write_and_replay_puts_it_back() {
    let mut config = common::config();
    config.redis.key_prefix = format!(
        "cli{}-{}:",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    config.write_behind.start_flusher = false;
    config.write_behind.max_attempts = 2;
    let storage = Storage::connect(config).await.unwrap();
    let items = ItemRepository::new(&storage);
    let t = common::tenant("cli-queue");
    let item = |id: &str, key: &str| Item {
        item_id: id.into(),
        tenant_id: t.to_string(),
        attrs: [(key.to_owned(), "v".to_owned())].into(),
    };
    // FerretDB refuses field names with a dot: the queued insert of `poison` is refused for
    // good and set aside; the writes around it apply.
    items.insert(&t, &item("ok", "k")).await.unwrap();
    items.insert(&t, &item("poison", "a.b")).await.unwrap();
    storage
        .write_behind()
        .flush::<Item>(Duration::from_secs(20))
        .await
        .unwrap();
    let cli = cli();

    let (exit, json) = run(&cli, &storage, &["queue", "status", "--json"]).await;
    assert_eq!(exit, Exit::Findings, "dead letters are a finding: {json:#}");
    let queues = json["queues"].as_array().unwrap();
    let q = queues
        .iter()
        .find(|q| q["namespace"] == "caas_cli_it.items")
        .unwrap_or_else(|| panic!("{json:#}"));
    assert_eq!(
        (q["pending"].as_u64(), q["dead_letters"].as_u64()),
        (Some(0), Some(1)),
        "{json:#}"
    );
    assert_eq!(q["entities"], serde_json::json!(["Item"]));
    assert!(
        queues
            .iter()
            .all(|q| q["namespace"] != "caas_cli_outbox_it.convos"),
        "entities with an outbox have no queue: {json:#}"
    );

    let (exit, json) = run(
        &cli,
        &storage,
        &["queue", "dead-letters", "--entity", "Item", "--json"],
    )
    .await;
    assert_eq!(exit, Exit::Ok);
    let letters = json["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{json:#}");
    let letter = &letters[0];
    assert_eq!(
        (
            letter["entity"].as_str(),
            letter["tenant"].as_str(),
            letter["op"].as_str(),
            letter["document_id"].as_str()
        ),
        (
            Some("Item"),
            Some(t.as_str()),
            Some("insert"),
            Some("poison")
        ),
        "{json:#}"
    );
    assert!(!letter["error"].as_str().unwrap().is_empty(), "{json:#}");
    let dead_id = letter["id"].as_str().unwrap().to_owned();

    // Put back, not applied: the queue holds it again, the dead letters do not.
    let (exit, json) = run(
        &cli,
        &storage,
        &["queue", "replay", &dead_id, "--no-flush", "--json"],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["replayed"]["caas_cli_it.items"], 1, "{json:#}");
    assert_eq!(json["flushed"], false);
    let (exit, q) = queue_of(&cli, &storage).await;
    assert_eq!(exit, Exit::Ok);
    assert_eq!(
        (q["pending"].as_u64(), q["dead_letters"].as_u64()),
        (Some(1), Some(0)),
        "{q:#}"
    );
    // An id that is no dead letter any more.
    let (exit, json) = run(&cli, &storage, &["queue", "replay", &dead_id, "--json"]).await;
    assert_eq!(exit, Exit::Findings);
    assert_eq!(json["not_found"], serde_json::json!([dead_id]));

    // Applied by the flusher, refused again, set aside again; `replay --all` applies it
    // itself and reports that it is still refused (exit 1).
    storage
        .write_behind()
        .flush::<Item>(Duration::from_secs(20))
        .await
        .unwrap();
    let (_, q) = queue_of(&cli, &storage).await;
    assert_eq!(
        (q["pending"].as_u64(), q["dead_letters"].as_u64()),
        (Some(0), Some(1)),
        "{q:#}"
    );
    let (exit, json) = run(
        &cli,
        &storage,
        &["queue", "replay", "--all", "--entity", "Item", "--json"],
    )
    .await;
    assert_eq!(exit, Exit::Findings, "{json:#}");
    assert_eq!(json["replayed"]["caas_cli_it.items"], 1, "{json:#}");
    assert_eq!(json["flushed"], true);
    assert_eq!(
        json["queues"][0]["pending"], 0,
        "applied before returning: {json:#}"
    );
    assert_eq!(json["queues"][0]["dead_letters"], 1, "{json:#}");
    let (_, json) = run(
        &cli,
        &storage,
        &["queue", "dead-letters", "--entity", "Item", "--json"],
    )
    .await;
    let again = &json["dead_letters"][0];
    assert_eq!(again["document_id"], "poison");
    assert_ne!(
        again["id"].as_str().unwrap(),
        dead_id,
        "set aside anew: {json:#}"
    );
    let direct = items.with_consistency(Consistency::Strong);
    assert!(direct.exists(&t, &"ok".to_owned()).await.unwrap());
    assert!(!direct.exists(&t, &"poison".to_owned()).await.unwrap());
}

#[tokio::test]
async fn cache_invalidate_drops_that_tenants_entries_only() {
    let storage = common::storage().await;
    let users = CliUserRepository::new(&storage);
    let (t1, t2) = (common::tenant("cli-cache-a"), common::tenant("cli-cache-b"));
    for t in [&t1, &t2] {
        for i in 0..2 {
            let u = CliUser {
                user_id: format!("u{i}"),
                tenant_id: t.to_string(),
                email: format!("u{i}@example.com"),
                version: 0,
            };
            users.insert(t, &u).await.unwrap();
            users.get(t, &u.user_id).await.unwrap(); // a miss fills the cache
        }
    }
    let cli = cli();
    let entries = |json: &Value| json["entities"][0]["redis_entries"].as_u64().unwrap();
    let stats = |t: &TenantId| {
        vec![
            "cache".to_owned(),
            "stats".into(),
            "--entity".into(),
            "CliUser".into(),
            "--tenant".into(),
            t.to_string(),
            "--json".into(),
        ]
    };
    let stats_of = |t: &TenantId| {
        let args = stats(t);
        let cli = &cli;
        let storage = &storage;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(cli, storage, &args).await
        }
    };
    let (exit, json) = stats_of(&t1).await;
    assert_eq!(exit, Exit::Ok);
    assert_eq!(entries(&json), 2, "{json:#}");
    assert_eq!(json["entities"][0]["strategy"], "cache_aside");
    assert_eq!(entries(&stats_of(&t2).await.1), 2);

    let (exit, json) = run(
        &cli,
        &storage,
        &["cache", "invalidate", "--tenant", t1.as_str(), "--json"],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["invalidated"], 2, "{json:#}");
    assert_eq!(json["tenant"], t1.as_str());

    assert_eq!(
        entries(&stats_of(&t1).await.1),
        0,
        "tenant 1's entries are gone"
    );
    assert_eq!(entries(&stats_of(&t2).await.1), 2, "tenant 2's are kept");
}

#[tokio::test]
async fn audit_verify_passes_an_intact_chain_and_exits_1_on_a_tampered_one() {
    let storage = common::storage().await;
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let mut options = AuditOptions::for_database("caas_cli_audit_it");
    options.collection = format!("log_{suffix}");
    options.checkpoint_collection = format!("checkpoints_{suffix}");
    let log = storage.audit_log(options.clone()).unwrap();
    let t = common::tenant("cli-audit");
    let entries = (0..5)
        .map(|i| NewAuditEntry::new("doc.viewed", "u1", format!("doc:{i}")))
        .collect();
    log.append_many(&t, entries).await.unwrap();
    let cli = cli().audit(options.clone());
    let args = ["audit", "verify", "--tenant", t.as_str(), "--json"];

    let (exit, json) = run(&cli, &storage, &args).await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["intact"], true);
    assert_eq!(json["logs"][0]["verification"]["checked"], 5, "{json:#}");

    storage
        .raw()
        .database("caas_cli_audit_it")
        .collection::<Document>(&options.collection)
        .update_one(
            doc! { "_id": format!("{t}:{:020}", 3) },
            doc! { "$set": { "actor": "someone-else" } },
        )
        .await
        .unwrap();
    let (exit, json) = run(&cli, &storage, &args).await;
    assert_eq!(exit, Exit::Findings, "{json:#}");
    assert_eq!(json["intact"], false);
    let broken = &json["logs"][0]["verification"]["broken"];
    assert_eq!(broken["sequence"], 3, "{json:#}");
    assert_eq!(broken["kind"], "Altered", "{json:#}");
    // Text names the break too.
    let (exit, text, _) = run_raw(&cli, &storage, &args[..4]).await;
    assert_eq!(exit, Exit::Findings);
    assert!(text.contains("BROKEN at sequence 3"), "{text}");
    storage
        .raw()
        .database("caas_cli_audit_it")
        .collection::<Document>(&options.collection)
        .drop()
        .await
        .unwrap();
}

/// `backup` of one tenant, `restore --verify-only`, `restore --into-tenant` as a clone the
/// repository reads, `restore --verify-only` refusing a damaged file (exit 3, nothing written),
/// and `erase --tenant --yes` leaving nothing of the clone (without `--yes`: exit 2, nothing
/// deleted).
#[tokio::test]
async fn backup_restore_into_a_clone_and_erase_it() {
    let storage = common::storage().await;
    let users = CliUserRepository::new(&storage);
    let (t, clone) = (common::tenant("cli-bak"), common::tenant("cli-bak-clone"));
    for i in 0..5 {
        let u = CliUser {
            user_id: format!("u{i}"),
            tenant_id: t.to_string(),
            email: format!("u{i}@example.com"),
            version: 0,
        };
        users.insert(&t, &u).await.unwrap();
    }
    let dir = std::env::temp_dir().join(format!("caas-cli-bak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("t.caasbak");
    let path = archive.to_str().unwrap();
    let cli = Cli::new("caas-test").entity::<CliUser>();

    let (exit, json) = run(
        &cli,
        &storage,
        &[
            "backup",
            "--out",
            path,
            "--tenant",
            t.as_str(),
            "--without-ledger",
            "--json",
        ],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["documents"], 5, "{json:#}");

    let (exit, json) = run(
        &cli,
        &storage,
        &["restore", "--archive", path, "--verify-only", "--json"],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["documents"], 5, "{json:#}");

    let into = format!("{t}={clone}");
    let (exit, json) = run(
        &cli,
        &storage,
        &[
            "restore",
            "--archive",
            path,
            "--into-tenant",
            &into,
            "--without-ledger",
            "--json",
        ],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["state"], "restored", "{json:#}");
    let copy = users.get(&clone, &"u3".to_owned()).await.unwrap();
    assert_eq!(
        (copy.tenant_id.as_str(), copy.email.as_str()),
        (clone.as_str(), "u3@example.com")
    );

    // A damaged archive: refused, exit 3, with the error as JSON.
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let bad = dir.join("bad.caasbak");
    std::fs::write(&bad, bytes).unwrap();
    let (exit, json) = run(
        &cli,
        &storage,
        &[
            "restore",
            "--archive",
            bad.to_str().unwrap(),
            "--verify-only",
            "--json",
        ],
    )
    .await;
    assert_eq!(exit, Exit::Failed, "{json:#}");
    assert!(json["error"]["message"].as_str().is_some(), "{json:#}");

    let (exit, _, err) = run_raw(&cli, &storage, &["erase", "--tenant", clone.as_str()]).await;
    assert_eq!(exit, Exit::Usage, "{err}");
    assert!(users
        .find_by_id(&clone, &"u3".to_owned())
        .await
        .unwrap()
        .is_some());
    let (exit, json) = run(
        &cli,
        &storage,
        &["erase", "--tenant", clone.as_str(), "--yes", "--json"],
    )
    .await;
    assert_eq!(exit, Exit::Ok, "{json:#}");
    assert_eq!(json["entities"][0]["documents"], 5, "{json:#}");
    assert_eq!(users.query(&clone).count().await.unwrap(), 0);
    assert_eq!(
        users.query(&t).count().await.unwrap(),
        5,
        "the source tenant is untouched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
