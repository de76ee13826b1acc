//! The README's main job as a test: the example service (`service.rs`) runs end to end against
//! the servers `scripts/services` started, and exits zero only if every step did what it says.
//! Then its operations endpoints are scraped over HTTP as Prometheus and a probe would: every
//! metric `docs/operations.md` lists as always recorded, and every metric the alert rules in
//! `deploy/prometheus/caas-storage.rules.yml` use, is exported; `/health` is JSON saying up.
//!
//! It runs with every server port variable of `scripts/services` exported, as a user running
//! two checkouts side by side has them: those variables (`CAAS_SERVICES_*`) must leave the
//! library's configuration (`CAAS_MONGODB_*`, `CAAS_REDIS_*`, `CAAS_KAFKA_*`) alone.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (code, body)
}

/// `caas_` names in `text` (a metric name is followed by `{`, whitespace or `[`; histogram
/// series suffixes are folded into their family).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("caas_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| f.ends_with("_seconds")))
            .unwrap_or(name);
        names.insert(family.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_example_service_runs_end_to_end_and_exports_its_metrics() {
    let port = |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_service"))
        .arg("--serve")
        .env(
            "CAAS_SERVICES_MONGO_PORT",
            port("CAAS_SERVICES_MONGO_PORT", "27017"),
        )
        .env(
            "CAAS_SERVICES_REDIS_PORT",
            port("CAAS_SERVICES_REDIS_PORT", "6379"),
        )
        .env(
            "CAAS_SERVICES_REDIS_CLUSTER_PORT",
            port("CAAS_SERVICES_REDIS_CLUSTER_PORT", "7000"),
        )
        .env(
            "CAAS_SERVICES_KAFKA_PORT",
            port("CAAS_SERVICES_KAFKA_PORT", "9092"),
        )
        .env(
            "CAAS_SERVICES_KAFKA_CONTROLLER_PORT",
            port("CAAS_SERVICES_KAFKA_CONTROLLER_PORT", "9093"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the service binary runs");
    let mut stdout = String::new();
    let mut serving = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        stdout.push_str(&line);
        stdout.push('\n');
        if let Some(rest) = line.strip_prefix("serving on http://") {
            serving = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    let Some(addr) = serving else {
        let out = child.wait_with_output().unwrap();
        panic!(
            "the service failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for step in ["== ", "\"status\": \"up\"", "done in"] {
        assert!(stdout.contains(step), "no {step:?} in:\n{stdout}");
    }

    let (code, health) = get(&addr, "/health");
    assert_eq!(code, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "up", "{health:#}");

    let (code, scraped) = get(&addr, "/metrics");
    assert_eq!(code, 200);
    let exported = metric_names(&scraped);

    // Every metric the operations guide says is always recorded.
    let guide = repo_file("docs/operations.md");
    let always: BTreeSet<String> = guide
        .lines()
        .filter(|l| l.starts_with("| `caas_") && l.trim_end().ends_with("| always |"))
        .flat_map(metric_names)
        .collect();
    assert!(always.len() >= 10, "the guide's table lists {always:?}");
    let missing: Vec<_> = always.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "documented as always recorded but not exported: {missing:?}\n{scraped}"
    );

    // Every metric an alert rule uses.
    let rules = repo_file("deploy/prometheus/caas-storage.rules.yml");
    let used: BTreeSet<String> = rules
        .lines()
        .map(str::trim_start)
        .filter(|l| {
            !(l.starts_with('#') || l.starts_with("summary:") || l.starts_with("description:"))
        })
        .flat_map(metric_names)
        .collect();
    assert!(used.len() >= 4, "the rules use {used:?}");
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used by an alert rule but not exported: {missing:?}\n{scraped}"
    );

    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "the service exited with {status}");
}
