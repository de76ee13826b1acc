//! Shared support of caas-storage's integration tests (`tests/tests/*.rs`): configuration for
//! the servers `scripts/services up` runs, unique tenants, and private server instances for
//! tests that stop and start servers.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use caas_storage::{Storage, StorageConfig, TenantId};

/// The configuration of the shared servers (environment, else the script's loopback defaults),
/// with `kafka.undeclared_topics = "warn"` unless `CAAS_KAFKA_UNDECLARED_TOPICS` says
/// otherwise: the suite publishes to topics named per test run (`unique(...)`), which no
/// configuration can declare up front. `tests/tests/kafka_topics.rs` tests the default,
/// `error`.
pub fn config() -> StorageConfig {
    suite_config(StorageConfig::from_env().expect("CAAS_* environment is valid"))
}

/// `config` with the suite's settings (see [`config`]) applied.
pub fn suite_config(mut config: StorageConfig) -> StorageConfig {
    if std::env::var_os("CAAS_KAFKA_UNDECLARED_TOPICS").is_none() {
        config.kafka.undeclared_topics = caas_storage::config::TopicPolicy::Warn;
    }
    config
}

/// A handle on the shared servers.
pub async fn storage() -> Storage {
    Storage::connect(config())
        .await
        .expect("the servers are up: run scripts/services up")
}

/// A tenant no other test (or earlier run) uses, so tests share collections safely.
pub fn tenant(label: &str) -> TenantId {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    TenantId::new(format!(
        "{label}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    ))
    .unwrap()
}

/// Where `scripts/services` keeps binaries, data and logs (`CAAS_SERVICES_DIR`, else
/// `.services/` at the workspace root).
pub fn services_dir() -> PathBuf {
    std::env::var_os("CAAS_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.services"))
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A server process this test started; killed on drop.
pub struct Private {
    /// Which server: `redis`, `ferretdb` or `kafka`.
    pub name: &'static str,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: Option<Child>,
    start: Box<dyn Fn() -> Child + Send + Sync>,
    ready: Box<dyn Fn() -> bool + Send + Sync>,
    _dir: Option<tempdir::Dir>,
}

impl Private {
    fn launch(
        name: &'static str,
        port: u16,
        dir: Option<tempdir::Dir>,
        start: Box<dyn Fn() -> Child + Send + Sync>,
        ready: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        let mut p = Private {
            name,
            port,
            child: None,
            start,
            ready,
            _dir: dir,
        };
        p.start();
        p
    }

    /// Starts (again) and waits until ready. A server that exits at once (its port or files
    /// not yet released by the process that just stopped) is started again, up to three
    /// times; what it printed is in the panic message if it never comes up.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let mut exits = Vec::new();
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500));
            }
            let mut child = (self.start)();
            let deadline = Instant::now() + Duration::from_secs(90);
            let exited = loop {
                if (self.ready)() {
                    break None;
                }
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                assert!(
                    Instant::now() < deadline,
                    "private {} not ready in 90s",
                    self.name
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            match exited {
                None => {
                    self.child = Some(child);
                    return;
                }
                Some(status) => {
                    let output = std::fs::read_to_string(log_path(self.port)).unwrap_or_default();
                    exits.push(format!("{status}: {}", output.trim()));
                }
            }
        }
        panic!("private {} exited early: {exits:#?}", self.name);
    }

    /// Kills the process and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while port_open(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        self.stop();
    }
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        /// A fresh directory under the system's temporary directory.
        pub fn new(label: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "caas-test-{label}-{}-{}",
                std::process::id(),
                super::free_port()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }

        /// Where it is.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Where a private server on `port` writes its stderr.
fn log_path(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("caas-test-private-{port}.log"))
}

/// A fresh stderr file for a private server on `port`.
fn log_file(port: u16) -> Stdio {
    std::fs::File::create(log_path(port))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// A private redis-server on a free port.
pub fn private_redis() -> Private {
    let port = free_port();
    Private::launch(
        "redis",
        port,
        None,
        Box::new(move || {
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--databases", "32"])
                .stdout(Stdio::null())
                .stderr(log_file(port))
                .spawn()
                .expect("redis-server is installed (scripts/services install)")
        }),
        Box::new(move || port_open(port)),
    )
}

/// A private FerretDB on a free port with its own SQLite directory.
pub fn private_ferretdb() -> Private {
    let port = free_port();
    let dir = tempdir::Dir::new("ferretdb");
    let data = dir.path().join("data");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let bin = services_dir().join("bin/ferretdb");
    Private::launch(
        "ferretdb",
        port,
        Some(dir),
        Box::new(move || {
            Command::new(&bin)
                .arg("--handler=sqlite")
                .arg(format!("--sqlite-url=file:{}/", data.display()))
                .arg(format!("--listen-addr=127.0.0.1:{port}"))
                .arg(format!("--state-dir={}", state.display()))
                .args(["--debug-addr=-", "--telemetry=disable", "--log-level=error"])
                .stdout(Stdio::null())
                .stderr(log_file(port))
                .spawn()
                .expect("FerretDB is built (scripts/services install)")
        }),
        Box::new(move || port_open(port)),
    )
}

/// A log4j configuration that prints errors only, for private Kafka processes.
fn write_kafka_log4j(path: &std::path::Path) {
    std::fs::write(
        path,
        "status = error\nappender.console.type = Console\nappender.console.name = STDOUT\n\
         appender.console.layout.type = PatternLayout\nappender.console.layout.pattern = %m%n\n\
         rootLogger.level = error\nrootLogger.appenderRef.stdout.ref = STDOUT\n",
    )
    .unwrap();
}

/// Formats the KRaft storage `conf` names, as cluster `cluster_id` (`what` names it in the
/// panic if that fails).
fn format_kafka_storage(
    cp: &str,
    log4j: &std::path::Path,
    conf: &std::path::Path,
    cluster_id: &str,
    what: &str,
) {
    let status = Command::new("java")
        .arg("-Xmx256m")
        .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
        .args(["-cp", cp, "kafka.tools.StorageTool", "format"])
        .args(["-t", cluster_id, "-c"])
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("java is installed");
    assert!(status.success(), "formatting {what} storage failed");
}

/// A private single-node Kafka (KRaft) on free ports with its own log directory.
pub fn private_kafka() -> Private {
    let port = free_port();
    let controller = free_port();
    let dir = tempdir::Dir::new("kafka");
    let libs = services_dir().join("kafka/libs");
    let conf = dir.path().join("server.properties");
    let log4j = dir.path().join("log4j2.properties");
    let logs = dir.path().join("logs");
    std::fs::write(
        &conf,
        format!(
            "process.roles=broker,controller\nnode.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{controller}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             inter.broker.listener.name=PLAINTEXT\ncontroller.listener.names=CONTROLLER\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
             log.dirs={}\nnum.partitions=1\ndefault.replication.factor=1\nmin.insync.replicas=1\n\
             offsets.topic.replication.factor=1\noffsets.topic.num.partitions=1\n\
             transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n\
             transaction.state.log.num.partitions=1\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\ngroup.initial.rebalance.delay.ms=0\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    write_kafka_log4j(&log4j);
    let cp = format!("{}/*", libs.display());
    format_kafka_storage(
        &cp,
        &log4j,
        &conf,
        "caasStoragePrivate0001",
        "private Kafka",
    );
    Private::launch(
        "kafka",
        port,
        Some(dir),
        Box::new(move || {
            Command::new("java")
                .args(["-Xms128m", "-Xmx384m", "-XX:+UseG1GC"])
                .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
                .arg(format!("-Dkafka.logs.dir={}", logs.display()))
                .args(["-cp", &cp, "kafka.Kafka"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log_file(port))
                .spawn()
                .expect("java is installed")
        }),
        Box::new(move || port_open(port)),
    )
}

/// The capability sets the executor branches on that the connected server can run, each as
/// its own handle: the transaction-free outbox path always (it is correct anywhere), the
/// transactional one where the server has transactions; the claim path for version
/// transitions always, and the version-filter path (`atomic_conditional_updates`) too. Forcing
/// the version-filter path on a server whose conditional updates are not atomic (FerretDB) is
/// only safe with one writer at a time: use these handles in single-writer tests only.
pub async fn capability_sets() -> Vec<(String, Storage)> {
    capability_sets_with(config()).await
}

/// [`capability_sets`] with handles made from `config`.
pub async fn capability_sets_with(config: StorageConfig) -> Vec<(String, Storage)> {
    let detected = storage().await.capabilities().clone();
    let mut sets = Vec::new();
    let transactions = if detected.transactions {
        vec![false, true]
    } else {
        vec![false]
    };
    for tx in transactions {
        for atomic in [false, true] {
            let storage = Storage::builder(config.clone())
                .capabilities(move |c| {
                    c.transactions = tx;
                    c.atomic_conditional_updates = atomic;
                })
                .connect()
                .await
                .expect("the servers are up: run scripts/services up");
            sets.push((
                format!("transactions={tx} atomic_conditional_updates={atomic}"),
                storage,
            ));
        }
    }
    sets.push((
        "memory backend".to_owned(),
        Storage::in_memory_with(config)
            .await
            .expect("the suite's configuration is valid"),
    ));
    sets
}

/// Runs `body` once per [`capability_sets`] handle, naming the set on stderr first (so a
/// failure says which branch failed).
pub async fn each_capability_set(body: impl AsyncFn(Storage, String)) {
    each_capability_set_with(config(), body).await
}

/// [`each_capability_set`] with handles made from `config`.
pub async fn each_capability_set_with(config: StorageConfig, body: impl AsyncFn(Storage, String)) {
    for (label, storage) in capability_sets_with(config).await {
        eprintln!("-- capability set: {label}");
        let started = Instant::now();
        body(storage, label.clone()).await;
        record_set_time(&label, started.elapsed());
    }
}

/// Appends `label`'s time to the file `CAAS_SUITE_TIMES` names, if it is set, one
/// `label<TAB>microseconds<TAB>test` line per body run: `scripts/suite-time` sums them into the time
/// of the shared suite on each backend. Nothing happens without the variable.
fn record_set_time(label: &str, took: Duration) {
    use std::io::Write;
    let Some(path) = std::env::var_os("CAAS_SUITE_TIMES") else {
        return;
    };
    let test = std::thread::current().name().unwrap_or("-").to_owned();
    let line = format!("{label}\t{}\t{test}\n", took.as_micros());
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("CAAS_SUITE_TIMES names a writable file");
    // One write of one short line: O_APPEND keeps concurrent tests' lines whole.
    file.write_all(line.as_bytes())
        .expect("CAAS_SUITE_TIMES names a writable file");
}

/// The servers and credentials of the TLS and credential tests (`tests/tests/credentials.rs`):
/// `scripts/services env` exports them; the defaults are the script's.
pub mod secure {
    use std::path::PathBuf;

    fn var(name: &str, default: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| default.to_owned())
    }

    /// Where the test CA (`ca.crt`), the server and the client certificates are.
    pub fn tls_dir() -> PathBuf {
        std::env::var_os("CAAS_TEST_TLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| super::services_dir().join("tls"))
    }

    /// A file of [`tls_dir`], as text (for configuration values).
    pub fn tls_file(name: &str) -> String {
        tls_dir().join(name).display().to_string()
    }

    /// FerretDB's TLS listener (`host:port`).
    pub fn mongo_tls() -> String {
        var("CAAS_TEST_MONGO_TLS", "127.0.0.1:27018")
    }

    /// The Redis with `requirepass`, plain TCP (`host:port`).
    pub fn redis_auth() -> String {
        var("CAAS_TEST_REDIS_AUTH", "127.0.0.1:6380")
    }

    /// The same Redis over TLS (`host:port`; server certificate only).
    pub fn redis_tls() -> String {
        var("CAAS_TEST_REDIS_TLS", "127.0.0.1:6381")
    }

    /// The password-protected cluster's plain TCP ports (`host:port` each).
    pub fn redis_auth_cluster() -> Vec<String> {
        list(&var(
            "CAAS_TEST_REDIS_AUTH_CLUSTER",
            "127.0.0.1:7013,127.0.0.1:7014,127.0.0.1:7015",
        ))
    }

    /// The same cluster's TLS ports (client certificates required).
    pub fn redis_tls_cluster() -> Vec<String> {
        list(&var(
            "CAAS_TEST_REDIS_TLS_CLUSTER",
            "127.0.0.1:7010,127.0.0.1:7011,127.0.0.1:7012",
        ))
    }

    /// The password of both Redis servers.
    pub fn redis_password() -> String {
        var("CAAS_TEST_REDIS_PASSWORD", "caas-redis-test-secret")
    }

    /// Kafka's SASL_PLAINTEXT listener (`host:port`).
    pub fn kafka_sasl() -> String {
        var("CAAS_TEST_KAFKA_SASL", "127.0.0.1:9094")
    }

    /// Kafka's SASL_SSL listener (`host:port`).
    pub fn kafka_sasl_ssl() -> String {
        var("CAAS_TEST_KAFKA_SASL_SSL", "127.0.0.1:9095")
    }

    /// The Kafka SASL user (PLAIN and SCRAM-SHA-256/512).
    pub fn kafka_user() -> String {
        var("CAAS_TEST_KAFKA_SASL_USER", "caas")
    }

    /// Its password.
    pub fn kafka_password() -> String {
        var("CAAS_TEST_KAFKA_SASL_PASSWORD", "caas-kafka-test-secret")
    }

    fn list(s: &str) -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A private 3-broker KRaft Kafka cluster (three combined broker+controller nodes, a 3-voter
/// quorum) on free ports with its own directories, for tests that kill brokers: node `i` is
/// `nodes[i]`, KRaft node id `i + 1`. Default replication factor 3, `min.insync.replicas` 2,
/// no unclean leader election, no topic auto-creation. Killed (and removed) on drop.
pub struct KafkaCluster {
    /// The nodes, in node-id order (`nodes[0]` is node 1); [`Private::stop`] kills one
    /// (SIGKILL), [`Private::start`] brings it back with its data.
    pub nodes: Vec<Private>,
    _dir: tempdir::Dir,
}

impl KafkaCluster {
    /// `kafka.brokers` for the cluster: every node's `127.0.0.1:port`.
    pub fn brokers(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node with KRaft node id `id` (a partition's leader in metadata).
    pub fn node_index(&self, id: i32) -> usize {
        usize::try_from(id - 1).expect("node ids start at 1")
    }
}

/// Starts a [`KafkaCluster`] and waits until every node listens. Blocking: call it from
/// `spawn_blocking` or before the runtime's work starts.
pub fn private_kafka_cluster() -> KafkaCluster {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let controllers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let dir = tempdir::Dir::new("kafka-cluster");
    let libs = services_dir().join("kafka/libs");
    let cp = format!("{}/*", libs.display());
    let log4j = dir.path().join("log4j2.properties");
    write_kafka_log4j(&log4j);
    let voters = controllers
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}@127.0.0.1:{c}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let (port, controller) = (ports[i], controllers[i]);
        let conf = dir.path().join(format!("node-{i}.properties"));
        std::fs::write(
            &conf,
            format!(
                "process.roles=broker,controller\nnode.id={}\ncontroller.quorum.voters={voters}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 inter.broker.listener.name=PLAINTEXT\ncontroller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
                 log.dirs={}\nauto.create.topics.enable=false\nnum.partitions=3\n\
                 default.replication.factor=3\nmin.insync.replicas=2\n\
                 unclean.leader.election.enable=false\n\
                 offsets.topic.replication.factor=3\noffsets.topic.num.partitions=3\n\
                 transaction.state.log.replication.factor=3\ntransaction.state.log.min.isr=2\n\
                 transaction.state.log.num.partitions=3\n\
                 share.coordinator.state.topic.replication.factor=3\n\
                 share.coordinator.state.topic.min.isr=2\ngroup.initial.rebalance.delay.ms=0\n",
                i + 1,
                dir.path().join(format!("data-{i}")).display()
            ),
        )
        .unwrap();
        let node = format!("private Kafka node {i}");
        format_kafka_storage(&cp, &log4j, &conf, "caasStorageClusterT001", &node);
        let (cp, log4j, logs) = (cp.clone(), log4j.clone(), dir.path().join("logs"));
        nodes.push(Private {
            name: "kafka-cluster node",
            port,
            child: None,
            start: Box::new(move || {
                Command::new("java")
                    .args(["-Xms128m", "-Xmx320m", "-XX:+UseG1GC"])
                    .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
                    .arg(format!("-Dkafka.logs.dir={}", logs.display()))
                    .args(["-cp", &cp, "kafka.Kafka"])
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(log_file(port))
                    .spawn()
                    .expect("java is installed")
            }),
            ready: Box::new(move || port_open(port)),
            _dir: None,
        });
    }
    // A node's broker listens only once the quorum (two of three) is up: start all, then wait.
    for n in &mut nodes {
        n.child = Some((n.start)());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for n in &mut nodes {
        while !(n.ready)() {
            if let Some(status) = n.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                let output = std::fs::read_to_string(log_path(n.port)).unwrap_or_default();
                panic!(
                    "private Kafka node on {} exited: {status}: {output}",
                    n.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "private Kafka cluster not ready in 120s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    KafkaCluster { nodes, _dir: dir }
}

/// A consumer of `topic` on the suite's Kafka (group `group`, nothing committed), assigned
/// every partition from the beginning once the topic exists; panics if it does not appear
/// before `deadline`.
pub async fn reader_from_beginning(
    topic: &str,
    group: &str,
    deadline: Instant,
) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", config().kafka.brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let partitions = loop {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("metadata");
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        if n > 0 {
            break n;
        }
        assert!(Instant::now() < deadline, "topic {topic} never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}
