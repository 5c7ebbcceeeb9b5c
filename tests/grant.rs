//! Issue 17 (SPEC §13, "one enforcement point"): each defect a review found in
//! the combinations of method, mode and upstream, driven against a real Mosquitto (or, for
//! the bytes of a PROXY header, a recording stand-in), each written to fail before its fix.

mod common;

use std::time::Duration;

use common::*;
use mqttgate::mqtt::properties::{self, id};
use mqttgate::mqtt::{Connect, Version, Will};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
const WAIT: Duration = Duration::from_secs(5);

type Tls = TlsStream<TcpStream>;

/// A CONNECT of `version` as `name` with `client_id`, optionally a Will, and v5 properties.
fn connect_bytes(
    version: Version,
    client_id: &str,
    name: Option<&str>,
    will: Option<(&str, u8, bool)>,
    properties: Vec<u8>,
    clean: bool,
) -> Vec<u8> {
    Connect {
        version,
        clean_start: clean,
        keep_alive: 30,
        properties,
        client_id: client_id.into(),
        will: will.map(|(topic, qos, retain)| Will {
            properties: vec![],
            topic: topic.into(),
            payload: b"last words".to_vec(),
            qos,
            retain,
        }),
        username: name.map(str::to_string),
        password: None,
    }
    .encode()
    .unwrap()
}

/// Sends `connect` with `name`'s certificate; returns the stream and the first packet heard.
async fn open(env: &Env, name: &str, connect: &[u8]) -> (Tls, Option<Vec<u8>>) {
    let cert = env.pki.root.issue(&leaf(name)).unwrap();
    let mut tls = env.tls(&cert, &[]).await.unwrap();
    tls.write_all(connect).await.unwrap();
    let heard = read_packet(&mut tls, WAIT).await;
    (tls, heard)
}

async fn alive(tls: &mut Tls) -> bool {
    tls.write_all(&[0xc0, 0x00]).await.is_ok()
        && read_packet(tls, WAIT).await.as_deref() == Some(&[0xd0, 0x00][..])
}

const GROUPS: &str = r#"[{"name": "$all"}]"#;
const SPACES: &str = r#"[
  {"name": "own-telemetry", "topicTemplates": ["devices/${client.authenticationName}/telemetry/#"]}
]"#;
const BINDINGS: &str = r#"[
  {"name": "publish-telemetry", "clientGroupName": "$all", "topicSpaceName": "own-telemetry", "permission": "Publisher"}
]"#;

/// mqttgate with `[authorization]` letting every client publish to its own
/// `devices/<name>/telemetry/#` only; sensor-1 registered. Also the folder of the lists.
async fn authorized_gate() -> (Env, tempfile::TempDir) {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    let lists = tempfile::tempdir().unwrap();
    setup.extra = authorization_section(lists.path(), GROUPS, SPACES, BINDINGS, None);
    (Env::start(pki, setup).await, lists)
}

/// Waits until the broker has logged `line`.
async fn broker_logged(env: &Env, line: &str) -> bool {
    eventually(Duration::from_secs(10), || {
        env.mosquitto_log().contains(line)
    })
    .await
}

/// Publishes `payload` to `topic` straight on the broker as `user` (its ACL allows
/// `devices/<user>/#`), so a subscriber that has it has seen everything the broker
/// published before it.
fn broker_pub(env: &Env, user: &str, topic: &str, payload: &str) {
    let out = std::process::Command::new(tool("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &env.mosquitto.port.to_string()])
        .args(["-u", user, "-t", topic, "-m", payload, "-q", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

/// 1. A Will on a topic the client may not publish to is refused at CONNECT (0x87 / 0x05),
///    and nothing of it reaches the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_on_a_topic_the_client_may_not_publish_to_is_refused_at_connect() {
    let (env, _lists) = authorized_gate().await;
    let backend = backend_sub(&env.mosquitto, "devices/#").await;
    for (version, refused) in [
        (Version::V5, vec![0x20, 0x03, 0x00, 0x87, 0x00]),
        (Version::V311, vec![0x20, 0x02, 0x00, 0x05]),
    ] {
        let c = connect_bytes(
            version,
            "sensor-1",
            Some("sensor-1"),
            Some(("devices/sensor-1/commands/all", 1, true)),
            vec![],
            true,
        );
        let (tls, heard) = open(&env, "sensor-1", &c).await;
        assert_eq!(heard, Some(refused), "{version:?}");
        drop(tls);
    }
    // An allowed Will is taken, and published when the client drops its connection.
    let c = connect_bytes(
        Version::V311,
        "sensor-1",
        Some("sensor-1"),
        Some(("devices/sensor-1/telemetry/will", 1, false)),
        vec![],
        true,
    );
    let (tls, heard) = open(&env, "sensor-1", &c).await;
    assert_eq!(heard, Some(vec![0x20, 0x02, 0x00, 0x00]));
    drop(tls);
    assert!(
        eventually(Duration::from_secs(10), || backend
            .lines()
            .contains(&"last words".to_string()))
        .await,
        "a client that drops its own connection gets its Will as MQTT says"
    );
    broker_pub(&env, "sensor-1", "devices/sensor-1/sentinel", "sentinel");
    assert!(
        eventually(Duration::from_secs(10), || backend
            .lines()
            .contains(&"sentinel".to_string()))
        .await
    );
    let lines = backend.finish();
    assert_eq!(
        lines.iter().filter(|l| *l == "last words").count(),
        1,
        "only the allowed Will was published: {lines:?}"
    );
}

/// 1. A session mqttgate ends because its grant no longer holds (here: the binding that
///    allowed its Will's topic is removed) ends at the broker with a DISCONNECT, so its
///    Will is discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_by_a_permission_change_does_not_publish_its_will() {
    let (env, lists) = authorized_gate().await;
    let backend = backend_sub(&env.mosquitto, "devices/#").await;
    let c = connect_bytes(
        Version::V5,
        "sensor-1",
        Some("sensor-1"),
        Some(("devices/sensor-1/telemetry/will", 1, false)),
        vec![],
        true,
    );
    let (mut tls, heard) = open(&env, "sensor-1", &c).await;
    assert_eq!(heard.unwrap()[3], 0x00);
    assert!(broker_logged(&env, "as sensor-1").await);
    write(lists.path(), "permission-bindings.json", "[]");
    let (bytes, closed) = read_until_close(&mut tls, Duration::from_secs(10)).await;
    assert!(closed, "the session ends");
    assert_eq!(bytes, mqttgate::mqtt::disconnect_v5(0x87), "{bytes:02x?}");
    // The broker heard a DISCONNECT (Mosquitto logs "disconnected"), not a dropped socket.
    assert!(
        broker_logged(&env, "Client sensor-1 disconnected.").await,
        "{}",
        env.mosquitto_log()
    );
    broker_pub(&env, "sensor-1", "devices/sensor-1/sentinel", "sentinel");
    assert!(
        eventually(Duration::from_secs(10), || backend
            .lines()
            .contains(&"sentinel".to_string()))
        .await
    );
    let lines = backend.finish();
    assert!(
        !lines.contains(&"last words".to_string()),
        "the Will went out after its grant ended: {lines:?}"
    );
}

fn sessions_gate(sessions: &str) -> Setup {
    let mut setup = Setup::new(&format!(
        "[{},{}]",
        chain_client("sensor-1", SUBJECT),
        chain_client("sensor-2", SUBJECT)
    ));
    setup.client_id = Some("per-identity");
    setup.sessions = sessions.to_string();
    setup
}

async fn start(mut setup: Setup) -> Env {
    let pki = Pki::new();
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    Env::start(pki, setup).await
}

/// 2. A takeover the broker refuses never frees the earlier holder's claim: one identity
///    can not hold more sessions than its quota by repeating refused takeovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_the_broker_refuses_keeps_the_holders_claim() {
    let env = start(sessions_gate("[sessions]\nconnects_per_second = 0\n")).await;
    let plain = |cid: &str| connect_bytes(Version::V5, cid, Some("sensor-1"), None, vec![], true);
    let (mut first, heard) = open(&env, "sensor-1", &plain("alpha")).await;
    assert_eq!(heard.unwrap()[3], 0x00);
    // Receive Maximum 0 is a protocol error the broker refuses before any takeover.
    let bad = connect_bytes(
        Version::V5,
        "alpha",
        Some("sensor-1"),
        None,
        vec![0x21, 0, 0],
        true,
    );
    for _ in 0..3 {
        let (mut tls, heard) = open(&env, "sensor-1", &bad).await;
        if let Some(p) = heard {
            assert_ne!(p[3], 0x00, "the broker refuses the takeover: {p:02x?}");
        }
        let _ = read_until_close(&mut tls, WAIT).await;
    }
    assert!(alive(&mut first).await, "the holder's session is untouched");
    let (_, heard) = open(&env, "sensor-1", &plain("beta")).await;
    assert_eq!(
        heard.unwrap(),
        [0x20, 0x03, 0x00, 0x97, 0x00],
        "one session per name: alpha still holds it"
    );
}

/// 6. A refusal for the quota does not start the session's rate interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_refusal_does_not_consume_a_rate_interval() {
    // One connect per 10 s: anything the refusal started would still hold below.
    let env = start(sessions_gate(
        "[sessions]\nconnects_per_second = 0.1\nmax_per_authentication_name = 1\n",
    ))
    .await;
    let plain = |cid: &str| connect_bytes(Version::V5, cid, Some("sensor-1"), None, vec![], true);
    let (first, heard) = open(&env, "sensor-1", &plain("alpha")).await;
    assert_eq!(heard.unwrap()[3], 0x00);
    let (_, heard) = open(&env, "sensor-1", &plain("beta")).await;
    assert_eq!(heard.unwrap(), [0x20, 0x03, 0x00, 0x97, 0x00]);
    drop(first);
    env.await_metric("mqttgate_connections_active", 0.0).await;
    let (mut tls, heard) = open(&env, "sensor-1", &plain("beta")).await;
    let heard = heard.unwrap();
    assert_eq!(
        (heard[0], heard[3]),
        (0x20, 0x00),
        "beta's first admitted attempt is not rate limited by its refused one: {heard:02x?}"
    );
    assert!(alive(&mut tls).await);
}

/// 13. The claim ends when the session ends at the broker, not when the client finally
///     closes: after the broker dropped the session, the same identity may open another
///     session at once, though the old client has not closed its socket (it lingers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_broker_ended_frees_its_claim_before_the_linger_ends() {
    let mut setup = sessions_gate("[sessions]\nconnects_per_second = 0\n");
    setup.extra = "[limits]\nlinger_ms = 60000\n".into();
    let env = start(setup).await;
    let plain = |cid: &str| connect_bytes(Version::V5, cid, Some("sensor-1"), None, vec![], true);
    let (_held, heard) = open(&env, "sensor-1", &plain("alpha")).await;
    assert_eq!(heard.unwrap()[3], 0x00);
    assert!(broker_logged(&env, "as sensor-1/alpha").await);
    // The broker ends that session: another client takes its ClientId over on the broker.
    let mut kick = std::process::Command::new(tool("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &env.mosquitto.port.to_string()])
        .args(["-i", "sensor-1/alpha", "-t", "devices/x", "-W", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(broker_logged(&env, "Client sensor-1/alpha already connected").await);
    let _ = kick.wait();
    // The gate reads the broker's close within moments; the old client never closes, so
    // before the fix beta is refused for the whole minute of the linger.
    let mut heard = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let (tls, h) = open(&env, "sensor-1", &plain("beta")).await;
        heard = h;
        if heard.as_ref().is_some_and(|p| p[3] == 0x00) {
            drop(tls);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let heard = heard.unwrap();
    assert_eq!(
        (heard[0], heard[3]),
        (0x20, 0x00),
        "the broker's end of alpha released its claim: {heard:02x?}"
    );
}

/// 5. Empty ClientIds: each gets a session of its own (v5: its Assigned Client
///    Identifier), so two of one identity never take each other over; v3.1.1 with
///    CleanSession=0 is refused with 0x02 as MQTT-3.1.3-8 says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_ids_are_sessions_of_their_own() {
    let env = start(sessions_gate(
        "[sessions]\nconnects_per_second = 0\nmax_per_authentication_name = 0\n",
    ))
    .await;
    let anon = connect_bytes(Version::V5, "", Some("sensor-1"), None, vec![], true);
    let (mut a, heard) = open(&env, "sensor-1", &anon).await;
    let ca = heard.unwrap();
    assert_eq!(ca[3], 0x00);
    let (mut b, heard) = open(&env, "sensor-1", &anon).await;
    let cb = heard.unwrap();
    assert_eq!(cb[3], 0x00);
    let assigned = |connack: &[u8]| {
        let (_, body) = split_packet(connack);
        let list = &body[3..];
        match properties::find(list, 0x12).unwrap() {
            Some(properties::Value::Str(s)) => s.to_string(),
            other => panic!("no assigned client identifier: {other:?} in {connack:02x?}"),
        }
    };
    assert_ne!(assigned(&ca), assigned(&cb));
    assert!(
        alive(&mut a).await && alive(&mut b).await,
        "neither took the other over"
    );

    let v3 = connect_bytes(Version::V311, "", Some("sensor-1"), None, vec![], false);
    let (_, heard) = open(&env, "sensor-1", &v3).await;
    assert_eq!(heard.unwrap(), [0x20, 0x02, 0x00, 0x02]);
}

/// 12. Azure's maximumSessionExpiryInHours: a longer Session Expiry Interval reaches the
///     broker capped (1 h by default), and the client hears the one used in its CONNACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expiry_past_the_maximum_is_capped_and_told() {
    let (upstream, recorded) = session_recording_broker().await;
    let mut setup = sessions_gate("");
    setup.upstream = Some(upstream);
    let env = start(setup).await;
    let c = connect_bytes(
        Version::V5,
        "alpha",
        Some("sensor-1"),
        None,
        vec![id::SESSION_EXPIRY_INTERVAL, 0xff, 0xff, 0xff, 0xff],
        false,
    );
    let (tls, heard) = open(&env, "sensor-1", &c).await;
    drop(tls);
    let connack = heard.unwrap();
    assert_eq!(connack[3], 0x00);
    let (_, body) = split_packet(&connack);
    let told = properties::find(&body[3..], id::SESSION_EXPIRY_INTERVAL).unwrap();
    assert_eq!(
        told,
        Some(properties::Value::FourBytes(3600)),
        "{connack:02x?}"
    );
    let sent = recorded.await.unwrap();
    let (up, _) = mqttgate::mqtt::parse_connect(&sent, 1 << 20)
        .unwrap()
        .unwrap();
    assert_eq!(
        properties::find(&up.properties, id::SESSION_EXPIRY_INTERVAL).unwrap(),
        Some(properties::Value::FourBytes(3600))
    );
}

/// 8. AUTH never reaches the broker: a certificate client's AUTH (it sent no
///    Authentication Method) ends its session with a protocol error, the broker never
///    reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_clients_auth_packet_never_reaches_the_broker() {
    let (upstream, recorded) = session_recording_broker().await;
    let mut setup = sessions_gate("");
    setup.upstream = Some(upstream);
    let env = start(setup).await;
    let c = connect_bytes(Version::V5, "alpha", Some("sensor-1"), None, vec![], true);
    let (mut tls, heard) = open(&env, "sensor-1", &c).await;
    assert_eq!(heard.unwrap()[3], 0x00);
    let mut auth = vec![0xf0, 0x0a, 0x19, 0x08, id::AUTHENTICATION_DATA, 0x00, 0x05];
    auth.extend_from_slice(b"token");
    tls.write_all(&auth).await.unwrap();
    let (bytes, closed) = read_until_close(&mut tls, Duration::from_secs(10)).await;
    assert!(closed);
    assert_eq!(bytes, mqttgate::mqtt::disconnect_v5(0x82));
    let sent = recorded.await.unwrap();
    assert!(
        !packet_types(&sent).iter().any(|t| t >> 4 == 15),
        "the broker read an AUTH: {sent:02x?}"
    );
}

/// 3. Audit mode with PROXY v2 upstream: a would-be-denied client reaches the broker
///    with no PROXY identity (no SSL TLV naming what it typed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_never_sends_an_unverified_name_in_the_proxy_header() {
    let (upstream, recorded) = proxy_recording_broker().await;
    let pki = Pki::new();
    let mut setup = sessions_gate("");
    setup.upstream = Some(upstream);
    setup.top = "mode = \"audit\"\n".into();
    setup.username = Some("passthrough");
    setup.client_id = Some("passthrough");
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &pki, &setup, 1);
    let body = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[upstream]\n", "[upstream]\nproxy_protocol = \"v2\"\n");
    let config = write(dir.path(), "mqttgate.toml", &body);
    let gate = mqttgate::server::Server::start(mqttgate::config::Config::load(&config).unwrap())
        .await
        .unwrap();
    // A certificate no client has: it types the name of one.
    let stranger = pki.root.issue(&leaf("stranger")).unwrap();
    let mut tls = tls_connect(gate.local_addr(), &pki.root.cert.cert_pem, &stranger, &[])
        .await
        .unwrap();
    tls.write_all(&connect_packet(4, "x", Some("sensor-1")))
        .await
        .unwrap();
    let heard = read_packet(&mut tls, WAIT).await;
    assert_eq!(heard, Some(vec![0x20, 0x02, 0x00, 0x00]), "let through");
    let header = recorded.await.unwrap();
    let header = &header[..];
    assert!(
        !header.windows(8).any(|w| w == b"sensor-1"),
        "the PROXY header names what the client typed: {header:02x?}"
    );
    assert!(
        !header[16 + 12..].contains(&0x20),
        "no SSL TLV: {header:02x?}"
    );
}

/// A JWT gate with the given `[upstream] username` mode.
async fn jwt_gate(username: &'static str) -> Jwt {
    gate_with("", |setup| setup.username = Some(username)).await
}

fn jwt_connect_as(username: Option<&str>, token: &str) -> Vec<u8> {
    let mut properties = vec![];
    properties.push(id::AUTHENTICATION_METHOD);
    put_str(&mut properties, b"CUSTOM-JWT");
    properties.push(id::AUTHENTICATION_DATA);
    put_str(&mut properties, token.as_bytes());
    connect_bytes(Version::V5, "dev", username, None, properties, true)
}

/// 4. Under `username = "passthrough"` a JWT client's username must be its verified
///    name (the token's `sub`): any other is refused, so no token holder picks its broker
///    username.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_never_hands_the_broker_a_username_the_token_did_not_verify() {
    let g = jwt_gate("passthrough").await;
    let token = mint(&g.k1, &claims("dev-a"), "RS256", &kid("k1"));
    let (connack, _) = connack_for(&g.env, &jwt_connect_as(Some("dev-b"), &token)).await;
    assert_eq!(connack[..4], [0x20, 0x03, 0x00, 0x87], "{connack:02x?}");
    let (connack, _) = connack_for(&g.env, &jwt_connect_as(Some("dev-a"), &token)).await;
    assert_eq!(connack[3], 0x00, "{connack:02x?}");
    assert!(broker_logged(&g.env, "u'dev-a')").await);
    assert!(!g.env.mosquitto_log().contains("u'dev-b'"));
}

/// 7. A verified name that cannot go upstream as it is (a control character, which
///    Mosquitto would cut short at a NUL) is a denial of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_subject_with_control_characters_is_refused() {
    let g = jwt_gate("rewrite").await;
    for sub in ["alice\u{0}x", "bob\nmallory"] {
        let token = mint(
            &g.k1,
            &json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600}),
            "RS256",
            &kid("k1"),
        );
        let (connack, _) = connack_for(&g.env, &jwt_connect_as(None, &token)).await;
        assert_eq!(
            connack[..4],
            [0x20, 0x03, 0x00, 0x87],
            "{sub:?}: {connack:02x?}"
        );
    }
    let scrape = g.env.gate.metrics.render();
    assert!(
        scrape.contains("reason=\"name_not_forwardable\""),
        "{scrape}"
    );
}

/// A stand-in broker behind `[upstream] proxy_protocol = "v2"`: reads the first
/// connection's PROXY v2 header and CONNECT, answers CONNACK 0, returns the header.
async fn proxy_recording_broker() -> (String, tokio::task::JoinHandle<Vec<u8>>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 16];
            if s.read_exact(&mut head).await.is_err() {
                continue; // a readiness probe
            }
            let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
            let mut header = head.to_vec();
            header.resize(16 + len, 0);
            s.read_exact(&mut header[16..]).await.unwrap();
            let mut buf = Vec::new();
            while !matches!(mqttgate::mqtt::parse_connect(&buf, 1 << 20), Ok(Some(_))) {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed before a whole CONNECT");
                buf.extend_from_slice(&chunk[..n]);
            }
            s.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
            return header;
        }
    });
    (addr, task)
}
