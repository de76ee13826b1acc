//! Secrets and credentials never reach text: `Debug` output, serialized configuration, error
//! strings and the logs of a run (at debug level, with the MongoDB command log on) are scanned
//! for planted passwords and secret field values.

use caas_storage_tests as common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use caas_storage::prelude::*;

const MONGO_PW: &str = "MONGO-PW-PLANTED";
const REDIS_PW: &str = "REDIS-PW-PLANTED";
const KAFKA_PW: &str = "KAFKA-PW-PLANTED";
const SECRET: &str = "SECRET-VALUE-PLANTED";
const PLANTED: [&str; 4] = [MONGO_PW, REDIS_PW, KAFKA_PW, SECRET];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, caas_storage::Repository)]
#[repository(database = "caas_secrets_it", collection = "members", consistency = strong,
             cache(ttl = "5m"))]
#[index(keys(email), unique)]
struct Member {
    #[repository(id)]
    member_id: String,
    #[repository(tenant)]
    tenant_id: String,
    email: String,
    #[repository(secret)]
    #[serde(default)]
    api_key: String,
    #[repository(version)]
    version: u64,
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn assert_clean(what: &str, text: &str) {
    for planted in PLANTED {
        assert!(!text.contains(planted), "{what} shows {planted}:\n{text}");
    }
}

#[tokio::test]
async fn no_secret_or_credential_reaches_debug_output_errors_or_logs() {
    let logs = Captured::default();
    let sink = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .init();

    // Configuration with credentials in every place they can be given. Kafka is reached
    // through its SASL listener with the planted (wrong) password and librdkafka's
    // configuration and security debug logs on, so that the refused login and the client's
    // own logs go through the runtime's Kafka context into the captured logs.
    let mut config = common::config();
    let redis = config
        .redis
        .url
        .replacen("redis://", &format!("redis://:{REDIS_PW}@"), 1);
    config.redis.url = redis;
    config.kafka.brokers = common::secure::kafka_sasl();
    for (k, v) in [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "SCRAM-SHA-256"),
        ("sasl.username", "relay"),
        ("sasl.password", KAFKA_PW),
        ("debug", "conf,security"),
    ] {
        config.kafka.properties.insert(k.into(), v.into());
    }
    let mut with_mongo_pw = config.clone();
    with_mongo_pw.mongodb.uri = format!("mongodb://admin:{MONGO_PW}@db-1:27017/?authSource=admin");
    assert_clean("Debug of StorageConfig", &format!("{with_mongo_pw:?}"));
    assert_clean(
        "serialized StorageConfig",
        &serde_json::to_string(&with_mongo_pw).unwrap(),
    );

    // Configuration errors.
    let errors = [
        StorageConfig::from_vars([("CAAS_MONGODB_URI", format!("http://admin:{MONGO_PW}@db-1/"))])
            .map(drop),
        StorageConfig::from_vars([("CAAS_REDIS_URL", format!("http://:{REDIS_PW}@cache/"))])
            .map(drop),
        Storage::connect({
            let mut c = common::config();
            c.mongodb.uri = format!("mongodb://admin:{MONGO_PW}@db-1:notaport/");
            c
        })
        .await
        .map(drop),
        Storage::connect({
            let mut c = common::config();
            c.redis.url = format!("redis://:{REDIS_PW}@cache:notaport/");
            c
        })
        .await
        .map(drop),
        StorageConfig::from_vars([
            ("CAAS_REDIS_URL", format!("redis://:{REDIS_PW}@cache/")),
            ("CAAS_REDIS_TLS_CA_FILE", "/ca.pem".into()),
        ])
        .map(drop),
        Storage::connect({
            let mut c = common::config();
            c.redis.url = format!("rediss://:{REDIS_PW}@cache:6380/");
            c.redis.tls_ca_file = Some(format!("/nonexistent/{REDIS_PW}/ca.pem").into());
            c
        })
        .await
        .map(drop),
        Storage::connect({
            let mut c = common::config();
            c.redis.url = format!("redis+unix:///run/{REDIS_PW}.sock");
            c.redis.cluster_nodes = vec!["127.0.0.1:7000".into()];
            c
        })
        .await
        .map(drop),
    ];
    for e in &errors {
        let e = e.as_ref().expect_err("a bad URI is an error");
        assert_clean("an error", &e.to_string());
        assert_clean("an error's Debug", &format!("{e:?}"));
    }

    // A handle with a Redis password and a Kafka SASL password (Redis and Kafka connect
    // lazily), and a run through the repository with a secret field.
    let storage = Storage::connect(config).await.unwrap();
    assert_clean("Debug of Storage", &format!("{storage:?}"));
    let repo = MemberRepository::new(&storage);
    let t = common::tenant("secrets");
    let member = Member {
        member_id: "m1".into(),
        tenant_id: t.to_string(),
        email: "m1@example.com".into(),
        api_key: SECRET.into(),
        version: 0,
    };
    storage.sync_indexes::<Member>().await.unwrap();
    repo.insert(&t, &member).await.unwrap();
    let mut read = repo.get(&t, &member.member_id).await.unwrap();
    read.email = "m1b@example.com".into();
    repo.replace(&t, &mut read).await.unwrap();
    repo.update(
        &t,
        &member.member_id,
        MemberPatch {
            api_key: Some(SECRET.into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let duplicate = Member {
        member_id: "m2".into(),
        email: "m1b@example.com".into(),
        ..member.clone()
    };
    let e = repo.insert(&t, &duplicate).await.unwrap_err();
    assert_clean("a duplicate-key error", &e.to_string());
    assert!(
        !e.to_string().contains("m1b@example.com"),
        "a duplicate-key error shows the key's value: {e}"
    );
    let _ = repo
        .find_by_id_with_secrets(&t, &member.member_id)
        .await
        .unwrap();
    let report = storage.health().await;
    assert_clean("the health report", &format!("{report:?}"));
    assert_clean(
        "the serialized health report",
        &serde_json::to_string(&report).unwrap(),
    );
    // A cluster handle with the password in its URL, and its health.
    let mut cluster = common::config();
    cluster.redis.url = format!("redis://:{REDIS_PW}@127.0.0.1/");
    cluster.redis.cluster_nodes = common::secure::redis_auth_cluster();
    let cluster = Storage::connect(cluster).await.unwrap();
    assert_clean("Debug of a cluster Storage", &format!("{cluster:?}"));
    assert_clean(
        "a cluster's health report",
        &format!("{:?}", cluster.health().await),
    );
    drop(cluster);
    drop(storage);

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("mongodb command"),
        "the command log ran:\n{logs}"
    );
    assert!(
        logs.contains("caas_storage::kafka"),
        "librdkafka's logs went through the runtime's Kafka context:\n{logs}"
    );
    assert_clean("the logs", &logs);
}
