//! Real paho-mqtt clients (Python, paho-mqtt 2.x) through mqttgate and a real Mosquitto:
//! what an ordinary MQTT library sees when it is allowed and when it is refused.

mod common;

use common::*;
use serde_json::Value;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

async fn gate(upstream: Option<String>) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.upstream = upstream;
    Env::start(pki, setup).await
}

/// Runs tests/python/paho_client.py as sensor-1 (its certificate) claiming `username`,
/// and returns the JSON it printed.
async fn paho(env: &Env, username: &str, protocol: &str) -> Value {
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let files = env.client_files(&format!("paho-{protocol}"), &s1, &[]);
    run_paho_script(
        env,
        "paho_client.py",
        env.port(),
        files,
        &[username, protocol],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v311_and_v5_clients_publish_and_receive_their_own_message() {
    let env = gate(None).await;
    for protocol in ["v311", "v5"] {
        let r = paho(&env, "sensor-1", protocol).await;
        assert_eq!(r["error"], Value::Null, "{protocol}: {r}");
        assert_eq!(r["connected"], true, "{protocol}: {r}");
        assert_eq!(r["reason_code"], 0, "{protocol}: {r}");
        assert_eq!(r["published"], true, "{protocol}: {r}");
        assert_eq!(r["received"], r["expected"], "{protocol}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_paho_clients_see_not_authorized() {
    let env = gate(None).await;
    let r = paho(&env, "nobody", "v5").await;
    assert_eq!(r["connected"], false, "{r}");
    assert_eq!(r["reason_code"], 135, "{r}");
    assert_eq!(r["reason_name"], "Not authorized", "{r}");

    let r = paho(&env, "nobody", "v311").await;
    assert_eq!(r["connected"], false, "{r}");
    assert_eq!(r["connack_rc"], 5, "{r}");
    assert_eq!(r["reason_name"], "Not authorized", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_clients_see_server_unavailable_when_the_broker_is_down() {
    let env = gate(Some(format!("127.0.0.1:{}", free_port()))).await;
    let r = paho(&env, "sensor-1", "v5").await;
    assert_eq!(r["connected"], false, "{r}");
    assert_eq!(r["reason_code"], 136, "{r}");

    let r = paho(&env, "sensor-1", "v311").await;
    assert_eq!(r["connected"], false, "{r}");
    assert_eq!(r["connack_rc"], 3, "{r}");
}
