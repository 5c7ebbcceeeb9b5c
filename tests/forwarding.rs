//! SPEC §4: what the broker sees after an allow, with a real Mosquitto and real clients.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

async fn two_device_env(client_id: Option<&'static str>) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!(
        "[{},{}]",
        chain_client("sensor-1", SUBJECT),
        chain_client("sensor-2", SUBJECT)
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.client_id = client_id;
    Env::start(pki, setup).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_client_publishes_and_its_other_session_receives_through_the_broker() {
    // Two sessions of one identity need the per-identity client id mode.
    let env = two_device_env(Some("per-identity")).await;
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let (c1, k1) = env.client_files("sensor-1", &s1, &[]);
    // sensor-1 subscribes to its own topic; the broker's %u ACL allows it.
    let sub = env.spawn_sub(
        &c1,
        &k1,
        &[
            "-u",
            "sensor-1",
            "-i",
            "sub",
            "-t",
            "devices/sensor-1/#",
            "-C",
            "1",
            "-W",
            "10",
        ],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = env.pub_(
        &c1,
        &k1,
        &[
            "-u",
            "sensor-1",
            "-i",
            "pub",
            "-t",
            "devices/sensor-1/temp",
            "-m",
            "21.5",
            "-q",
            "1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let got = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "21.5",
        "{}",
        text(&got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_subscribe_and_publish_in_the_connect_write_are_forwarded_in_order() {
    let env = two_device_env(None).await;
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = env.tls(&s1, &[]).await.unwrap();
    let mut bytes = connect_packet(4, "ignored", Some("sensor-1"));
    // SUBSCRIBE id 1 to devices/sensor-1/x QoS 0
    let topic = b"devices/sensor-1/x";
    let mut sub = vec![
        0x82,
        (2 + 2 + topic.len() + 1) as u8,
        0x00,
        0x01,
        0x00,
        topic.len() as u8,
    ];
    sub.extend_from_slice(topic);
    sub.push(0x00);
    // PUBLISH QoS 0 to the same topic
    let mut publish = vec![0x30, (2 + topic.len() + 5) as u8, 0x00, topic.len() as u8];
    publish.extend_from_slice(topic);
    publish.extend_from_slice(b"hello");
    bytes.extend_from_slice(&sub);
    bytes.extend_from_slice(&publish);
    tls.write_all(&bytes).await.unwrap();
    // CONNACK, SUBACK, then our own PUBLISH echoed back by the broker.
    let connack = read_exact(&mut tls, 4, Duration::from_secs(5)).await;
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    let suback = read_exact(&mut tls, 5, Duration::from_secs(5)).await;
    assert_eq!(suback, [0x90, 0x03, 0x00, 0x01, 0x00]);
    let echoed = read_exact(&mut tls, publish.len(), Duration::from_secs(5)).await;
    assert_eq!(echoed, publish);
}
