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
    // The subscription is in place before the message is published.
    env.mosquitto
        .await_subscriptions("devices/sensor-1/#", 1)
        .await;
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
    let topic = "devices/sensor-1/x";
    let sub = subscribe_packet(1, topic, 0);
    // PUBLISH QoS 0 to the same topic
    let publish = publish_packet(topic, 0, 0, b"hello");
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

/// Like `two_device_env`, with the certificate CN as the fallback authentication name and
/// the given upstream modes.
async fn env_with(
    client_id: Option<&'static str>,
    username: Option<&'static str>,
    upstream: Option<String>,
) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!(
        "[{},{}]",
        chain_client("sensor-1", SUBJECT),
        chain_client("sensor-2", SUBJECT)
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.sources = vec!["ClientCertificateSubject"];
    setup.client_id = client_id;
    setup.username = username;
    setup.upstream = upstream;
    Env::start(pki, setup).await
}

const WAIT: Duration = Duration::from_secs(10);

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A byte-level 3.1.1 session that keeps the messages it receives while it waits for
/// acknowledgements (the broker may deliver our own message before its PUBACK).
struct Client {
    s: Tls,
    inbox: std::collections::VecDeque<(String, Vec<u8>)>,
}

impl Client {
    async fn open(
        env: &Env,
        cert: &mqttgate::cli::pki::Issued,
        id: &str,
        user: Option<&str>,
    ) -> Self {
        Client::from(session(env, cert, id, user).await)
    }

    fn from(s: Tls) -> Self {
        Client {
            s,
            inbox: Default::default(),
        }
    }

    async fn subscribe(&mut self, packet_id: u16, filter: &str) {
        subscribe(&mut self.s, packet_id, filter, 1).await;
    }

    /// Reads one packet; a PUBLISH is acked and queued. `None` on timeout.
    async fn pump(&mut self, wait: Duration) -> Option<(u8, Vec<u8>)> {
        let packet = match try_read_packet(&mut self.s, wait).await {
            Ok(p) => p,
            Err(NoPacket::TimedOut) => return None,
            Err(e) => panic!("session ended: {e:?}"),
        };
        let (first, body) = split_packet(&packet);
        let body = body.to_vec();
        if first >> 4 == 3 {
            let (topic, id, payload) = parse_publish(first, &body);
            if let Some(id) = id {
                let mut ack = vec![0x40, 0x02];
                ack.extend_from_slice(&id.to_be_bytes());
                self.s.write_all(&ack).await.unwrap();
            }
            self.inbox.push_back((topic, payload));
        }
        Some((first, body))
    }

    /// The next message, or `None` if none arrives within `wait`.
    async fn next_message(&mut self, wait: Duration) -> Option<(String, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Some(m);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.pump(left).await?;
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK. Mosquitto acks a publish its ACL drops
    /// too, so a PUBACK says only that the broker has processed it.
    async fn publish(&mut self, packet_id: u16, topic: &str, payload: &[u8]) {
        self.s
            .write_all(&publish_packet(topic, 1, packet_id, payload))
            .await
            .unwrap();
        loop {
            let (first, body) = self.pump(WAIT).await.expect("PUBACK");
            if first == 0x40 {
                assert_eq!(body, packet_id.to_be_bytes());
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_payloads_cross_byte_exact_in_both_directions() {
    let env = env_with(Some("per-identity"), None, None).await;
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut sub = Client::open(&env, &s1, "sub", None).await;
    sub.subscribe(1, "devices/sensor-1/#").await;
    let mut publisher = Client::open(&env, &s1, "pub", None).await;

    for round in 0..2u16 {
        let payload = random_bytes(1024 * 1024);
        publisher
            .publish(10 + round, "devices/sensor-1/blob", &payload)
            .await;
        let (topic, got) = sub.next_message(WAIT).await.expect("delivery");
        assert_eq!(topic, "devices/sensor-1/blob");
        assert_eq!(got.len(), payload.len(), "round {round}");
        assert!(got == payload, "round {round}: payload differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_acl_binds_topics_to_the_certificate_identity() {
    // Several sensor-1 sessions at once need distinct upstream client ids.
    let env = env_with(Some("per-identity"), None, None).await;
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let s2 = env.pki.root.issue(&leaf("sensor-2")).unwrap();
    let mut watcher = Client::open(&env, &s2, "watcher", None).await;
    watcher.subscribe(1, "devices/sensor-2/#").await;

    // sensor-1, naming itself by certificate and by username, writes to sensor-2's topics
    // and listens on them. (Mosquitto 2.0 grants the subscription and filters at delivery.)
    let mut intruders = Vec::new();
    for (i, username) in [None, Some("sensor-1"), Some("")].into_iter().enumerate() {
        let mut intruder = Client::open(&env, &s1, &format!("intruder-{i}"), username).await;
        intruder.subscribe(1, "devices/sensor-2/#").await;
        intruder
            .publish(2, "devices/sensor-2/cmd", b"from sensor-1")
            .await;
        intruders.push(intruder);
    }
    // Claiming sensor-2's name with sensor-1's certificate is a denial.
    let mut tls = env.tls(&s1, &[]).await.unwrap();
    tls.write_all(&connect_packet(4, "x", Some("sensor-2")))
        .await
        .unwrap();
    let (got, _) = read_until_close(&mut tls, WAIT).await;
    assert_eq!(got, [0x20, 0x02, 0x00, 0x05]);

    // sensor-2's own message arrives, and it is the first one.
    let mut own = Client::open(&env, &s2, "own", None).await;
    own.publish(1, "devices/sensor-2/cmd", b"from sensor-2")
        .await;
    let (topic, payload) = watcher.next_message(WAIT).await.expect("own message");
    assert_eq!(topic, "devices/sensor-2/cmd");
    assert_eq!(payload, b"from sensor-2");
    assert_eq!(watcher.next_message(Duration::from_millis(500)).await, None);
    for mut intruder in intruders {
        assert_eq!(
            intruder.next_message(Duration::from_millis(200)).await,
            None
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_password_is_dropped_and_the_session_works() {
    let env = env_with(None, None, None).await;
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = env.tls(&s1, &[]).await.unwrap();
    tls.write_all(&client_connect("sensor-1", b"secret").encode().unwrap())
        .await
        .unwrap();
    assert_eq!(
        read_exact(&mut tls, 4, WAIT).await,
        [0x20, 0x02, 0x00, 0x00]
    );
    let mut tls = Client::from(tls);
    tls.subscribe(1, "devices/sensor-1/#").await;
    tls.publish(2, "devices/sensor-1/t", b"with password").await;
    let (_, payload) = tls.next_message(WAIT).await.expect("echo");
    assert_eq!(payload, b"with password");
}

/// The CONNECT a broker receives from mqttgate for `sent`, through a recording stand-in.
async fn connect_seen_upstream(
    client_id: Option<&'static str>,
    username: Option<&'static str>,
    sent: &mqttgate::mqtt::Connect,
) -> mqttgate::mqtt::Connect {
    let (addr, broker) = recording_broker().await;
    let env = env_with(client_id, username, Some(addr)).await;
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = env.tls(&s1, &[]).await.unwrap();
    tls.write_all(&sent.encode().unwrap()).await.unwrap();
    assert_eq!(
        read_exact(&mut tls, 4, WAIT).await,
        [0x20, 0x02, 0x00, 0x00]
    );
    let bytes = broker.await.unwrap();
    let (seen, len) = mqttgate::mqtt::parse_connect(&bytes, 1 << 20)
        .unwrap()
        .unwrap();
    assert_eq!(len, bytes.len(), "only the CONNECT was sent");
    seen
}

fn client_connect(username: &str, password: &[u8]) -> mqttgate::mqtt::Connect {
    mqttgate::mqtt::Connect {
        version: mqttgate::mqtt::Version::V311,
        clean_start: false,
        keep_alive: 42,
        properties: vec![],
        client_id: "device-chosen".into(),
        will: Some(mqttgate::mqtt::Will {
            properties: vec![],
            topic: "devices/sensor-1/status".into(),
            payload: b"offline".to_vec(),
            qos: 1,
            retain: true,
        }),
        username: Some(username.into()),
        password: Some(password.to_vec()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_mode_the_broker_sees_the_registry_name_and_no_password() {
    // The client spells its name in another case; the registry's case goes upstream.
    let sent = client_connect("SENSOR-1", b"secret");
    let seen = connect_seen_upstream(None, None, &sent).await;
    assert_eq!(seen.username.as_deref(), Some("sensor-1"));
    assert_eq!(seen.password, None);
    assert_eq!(seen.client_id, "sensor-1");
    // Everything else is kept.
    assert_eq!(seen.keep_alive, 42);
    assert!(!seen.clean_start);
    assert_eq!(seen.will, sent.will);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_username_mode_forwards_the_clients_own_username_and_password() {
    let sent = client_connect("SENSOR-1", b"secret");
    let seen = connect_seen_upstream(None, Some("passthrough"), &sent).await;
    assert_eq!(seen.username.as_deref(), Some("SENSOR-1"));
    assert_eq!(seen.password.as_deref(), Some(&b"secret"[..]));
    assert_eq!(
        seen.client_id, "sensor-1",
        "client id mode is still the default"
    );

    let seen = connect_seen_upstream(Some("passthrough"), Some("passthrough"), &sent).await;
    assert_eq!(
        seen, sent,
        "both passthrough: the client's CONNECT unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_username_mode_reaches_the_real_broker_acl() {
    // The broker's %u is the client's own spelling, not the registry's.
    let env = env_with(None, Some("passthrough"), None).await;
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = Client::open(&env, &s1, "c", Some("SENSOR-1")).await;
    tls.subscribe(1, "devices/SENSOR-1/#").await;
    tls.publish(2, "devices/SENSOR-1/t", b"own spelling").await;
    let (topic, payload) = tls.next_message(WAIT).await.expect("echo");
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("devices/SENSOR-1/t", &b"own spelling"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_cannot_take_over_another_identitys_session() {
    let env = env_with(None, None, None).await;
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let s2 = env.pki.root.issue(&leaf("sensor-2")).unwrap();
    let mut first = Client::open(&env, &s1, "shared", None).await;
    first.subscribe(1, "devices/sensor-1/#").await;
    // Upstream client ids are the authentication names: "sensor-2", not "shared".
    // A takeover would be done by now: the broker ends the session it takes over before
    // it answers the new CONNECT, and `open` waited for that answer.
    let _second = Client::open(&env, &s2, "shared", None).await;
    first.publish(2, "devices/sensor-1/t", b"still here").await;
    let (_, payload) = first
        .next_message(WAIT)
        .await
        .expect("sensor-1's session survives");
    assert_eq!(payload, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_client_ids_let_another_identity_take_over_a_session() {
    // The documented risk of `client_id = "passthrough"`.
    let env = env_with(Some("passthrough"), None, None).await;
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let s2 = env.pki.root.issue(&leaf("sensor-2")).unwrap();
    let mut first = Client::open(&env, &s1, "shared", None).await;
    let _second = Client::open(&env, &s2, "shared", None).await;
    let (got, closed) = read_until_close(&mut first.s, WAIT).await;
    assert!(closed, "the broker should have closed sensor-1's session");
    assert!(got.is_empty(), "{got:02x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_identity_mode_keeps_sessions_of_one_identity_and_of_two_identities_apart() {
    let env = env_with(Some("per-identity"), None, None).await;
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let s2 = env.pki.root.issue(&leaf("sensor-2")).unwrap();
    let mut a = Client::open(&env, &s1, "a", None).await;
    a.subscribe(1, "devices/sensor-1/#").await;
    let mut b = Client::open(&env, &s1, "b", None).await;
    b.subscribe(1, "devices/sensor-1/#").await;
    // Another identity with a's client id doesn't collide with it either.
    let mut other = Client::open(&env, &s2, "a", None).await;
    other.subscribe(1, "devices/sensor-2/#").await;

    b.publish(2, "devices/sensor-1/t", b"to both").await;
    for (name, s) in [("a", &mut a), ("b", &mut b)] {
        let (_, payload) = s
            .next_message(WAIT)
            .await
            .unwrap_or_else(|| panic!("session {name} got nothing"));
        assert_eq!(payload, b"to both", "session {name}");
    }
    other.publish(2, "devices/sensor-2/t", b"other").await;
    let (_, payload) = other.next_message(WAIT).await.expect("other");
    assert_eq!(payload, b"other");
    // And a is still alive after all that.
    a.publish(3, "devices/sensor-1/t", b"a again").await;
}
