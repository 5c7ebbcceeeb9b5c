//! The audit log of the real binary: one JSON event per decision with the certificate
//! facts, one "closed" event per accepted connection, and never the CONNECT password.

mod common;

use std::time::Duration;

use common::*;
use mqttgate::mqtt::{Connect, Version};
use tokio::io::AsyncWriteExt;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
const PASSWORD: &[u8] = b"hunter2-do-not-log";

fn connect_with_password(version: Version, user: &str) -> Vec<u8> {
    Connect {
        version,
        clean_start: true,
        keep_alive: 30,
        properties: vec![],
        client_id: "dev-42".into(),
        will: None,
        username: Some(user.into()),
        password: Some(PASSWORD.to_vec()),
    }
    .encode()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_audit_log_has_one_event_per_decision_and_no_password() {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    let env = Env::start(pki, setup).await;
    let binary = env.spawn_binary("audit", &["--log-format", "json"], |c| c);
    let addr = binary.addr;
    let root = env.pki.root.cert.cert_pem.clone();
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    // Allowed (v3.1.1 with a password), then denied (v5, unknown name, with a password).
    let mut ok = tls_connect(addr, &root, &cert, &[]).await.unwrap();
    ok.write_all(&connect_with_password(Version::V311, "sensor-1"))
        .await
        .unwrap();
    assert_eq!(
        read_packet(&mut ok, Duration::from_secs(5)).await.unwrap(),
        [0x20, 2, 0, 0]
    );
    drop(ok);
    let mut denied = tls_connect(addr, &root, &cert, &[]).await.unwrap();
    denied
        .write_all(&connect_with_password(Version::V5, "intruder"))
        .await
        .unwrap();
    let _ = read_until_close(&mut denied, Duration::from_secs(3)).await;
    // Both connections are recorded before SIGTERM, so the drain has none left to end.
    let closed_with = |outcome: &str| {
        let log = std::fs::read_to_string(&binary.log).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| {
                e["target"] == "mqttgate::audit"
                    && e["event"] == "closed"
                    && e["outcome"] == outcome
            })
    };
    assert!(
        eventually(Duration::from_secs(5), || closed_with("session")
            && closed_with("refused"))
        .await,
        "no closed events for the two connections"
    );
    binary.signal("TERM");
    let log_path = binary.log.clone();
    binary.wait().await;

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains("hunter2"),
        "the password leaked into the log:\n{log}"
    );
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["target"] == "mqttgate::audit")
        .collect();
    let decisions: Vec<_> = events.iter().filter(|e| e["event"] == "decision").collect();
    assert_eq!(decisions.len(), 2, "{log}");
    let allowed = decisions
        .iter()
        .find(|e| e["result"] == "allowed")
        .expect("allowed event");
    let thumbprint = thumbprint_of(&cert);
    for (field, want) in [
        ("authentication_name", "sensor-1"),
        ("client_id", "dev-42"),
        ("source", "username"),
        ("scheme", "subject"),
        ("subject", "CN=sensor-1"),
        ("issuer", "CN=Test Root CA"),
        ("thumbprint", thumbprint.as_str()),
        ("mqtt", "3.1.1"),
        ("tls_version", "TLSv1_3"),
    ] {
        assert_eq!(allowed[field], want, "{field} in {allowed}");
    }
    assert!(allowed["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(allowed["serial"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(allowed["cipher"]
        .as_str()
        .is_some_and(|s| s.starts_with("TLS13_")));
    let denied = decisions
        .iter()
        .find(|e| e["result"] == "denied")
        .expect("denied event");
    assert_eq!(denied["reason"], "unknown_client");
    assert_eq!(denied["authentication_name"], "intruder");
    assert_eq!(denied["mqtt"], "5");
    // One "closed" event per connection, whatever its outcome (the harness's readiness
    // probe is a connection too), each naming the connection's peer.
    let closed_for = |decision: &serde_json::Value| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["event"] == "closed" && e["peer"] == decision["peer"])
            .collect()
    };
    let denied_event = decisions.iter().find(|e| e["result"] == "denied").unwrap();
    let refused = closed_for(denied_event);
    assert_eq!(refused.len(), 1, "{log}");
    assert_eq!(refused[0]["outcome"], "refused");
    assert_eq!(refused[0]["reason"], "denied");
    let allowed_event = decisions.iter().find(|e| e["result"] == "allowed").unwrap();
    let closed = closed_for(allowed_event);
    assert_eq!(closed.len(), 1, "{log}");
    assert_eq!(closed[0]["outcome"], "session");
    assert_eq!(closed[0]["authentication_name"], "sensor-1");
    assert!(closed[0]["bytes_to_broker"].as_u64().unwrap() > 0);
    assert!(closed[0]["duration_ms"].is_u64());
}
