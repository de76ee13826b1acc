//! The example service embeds the operator CLI (`service caas <command>`, docs/cli.md): run as
//! an operator or a probe runs it, as a process, its exit code and `--json` output are checked.

use std::process::Command;

fn caas(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_service"))
        .arg("caas")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_service_binary_runs_the_operator_cli_over_its_entities() {
    let (code, out, err) = caas(&["health", "--json"]);
    assert_eq!(code, Some(0), "health exits 0 when up: {out}\n{err}");
    let health: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(health["status"], "up", "{health:#}");
    let names: Vec<&str> = health["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"audit/caas_audit.audit_log"),
        "the declared audit log is checked: {names:?}"
    );

    let (code, out, err) = caas(&["indexes", "plan", "--json"]);
    assert!(matches!(code, Some(0 | 1)), "{out}\n{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    let namespaces: Vec<&str> = plan["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(
        namespaces,
        [
            "caas_auth.demo_users",
            "caas_messaging.demo_messages",
            "caas_auth.demo_prefs",
            "caas_compliance.demo_logins"
        ],
        "exactly the service's entities"
    );
    assert_eq!(code == Some(0), plan["in_sync"] == true);

    let (code, _, err) = caas(&["indexes"]);
    assert_eq!(code, Some(2), "usage error: {err}");
    assert!(err.contains("service caas"), "{err}");
}

#[test]
fn no_connection_exits_3_with_the_error_as_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_service"))
        .args(["caas", "health", "--json"])
        .env("CAAS_MONGODB_URI", "mongodb://127.0.0.1:1/")
        .env("CAAS_MONGODB_SERVER_SELECTION_TIMEOUT", "300ms")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["error"]["kind"], "connect", "{json:#}");
    assert_eq!(json["error"]["exit"], 3);
}
