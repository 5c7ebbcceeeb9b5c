//! JWT re-authentication (SPEC §9) end to end: a byte-level MQTT 5 client without a
//! certificate sends AUTH (reason 0x19, its method, a new token minted with PyJWT) and
//! mqttgate answers it itself: AUTH 0x00 and a session that outlives its first token, or
//! DISCONNECT and close. The broker never sees AUTH: a recording stand-in shows the bytes,
//! and a real Mosquitto (which ends a session that sends AUTH without having connected
//! with an Authentication Method) keeps relaying after it.

mod common;

use std::time::Duration;

use common::*;
use mqttgate::mqtt::properties::id;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const METHOD: &str = "CUSTOM-JWT";
const WAIT: Duration = Duration::from_secs(5);
/// mqttgate's answer: AUTH Success with the Authentication Method (MQTT-4.12.0-5).
const AUTH_SUCCESS: &[u8] = b"\xf0\x0f\x00\x0d\x15\x00\x0aCUSTOM-JWT";

type Tls = TlsStream<TcpStream>;

/// A client's AUTH: `reason`, the Authentication Method and the token as Authentication
/// Data.
fn auth_packet(reason: u8, method: &str, token: &[u8]) -> Vec<u8> {
    let mut props = vec![id::AUTHENTICATION_METHOD];
    put_str(&mut props, method.as_bytes());
    props.push(id::AUTHENTICATION_DATA);
    put_str(&mut props, token);
    let mut body = vec![reason];
    put_varint(&mut body, props.len());
    body.extend_from_slice(&props);
    packet(0xF0, &body)
}

fn subscribe_v5(packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.push(0);
    put_str(&mut body, filter.as_bytes());
    body.push(0);
    packet(0x82, &body)
}

fn publish_v5(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic.as_bytes());
    body.push(0);
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

/// A JWT session of `sub` with `token`, after its CONNACK 0.
async fn jwt_session(env: &Env, client_id: &str, token: &str) -> Tls {
    let connect = jwt_connect(client_id, Some(METHOD), token.as_bytes());
    let (connack, tls) = connack_for(env, &connect).await;
    assert_eq!(connack[3], 0x00, "{connack:02x?}");
    tls
}

/// Subscribes to `filter` and checks the SUBACK grants QoS 0.
async fn subscribed(tls: &mut Tls, filter: &str) {
    tls.write_all(&subscribe_v5(1, filter)).await.unwrap();
    let suback = read_packet(tls, WAIT).await.expect("a SUBACK");
    assert_eq!(suback, [0x90, 0x04, 0x00, 0x01, 0x00, 0x00], "{filter}");
}

/// Publishes to `topic` and checks it comes back through the broker.
async fn echoed(tls: &mut Tls, topic: &str, payload: &[u8]) {
    tls.write_all(&publish_v5(topic, payload)).await.unwrap();
    let back = read_packet(tls, WAIT).await.expect("the PUBLISH back");
    assert_eq!(back, publish_v5(topic, payload), "{topic}");
}

fn reauthentications(result: &str, reason: &str) -> String {
    format!("mqttgate_reauthentications_total{{result=\"{result}\",reason=\"{reason}\"}}")
}

fn closed(reason: &str) -> String {
    format!("mqttgate_connections_closed_total{{outcome=\"session\",reason=\"{reason}\",transport=\"tls\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_reauthenticates_before_exp_outlives_it_and_relays_both_ways() {
    let g = gate("").await;
    // Minted before the short one, so a slow mint cannot eat into its few seconds.
    let next = mint(&g.k1, &claims("sensor-9"), "RS256", &kid("k1"));
    let exp = now() + 5;
    let mut short = claims("sensor-9");
    short["exp"] = json!(exp);
    let first = mint(&g.k1, &short, "RS256", &kid("k1"));
    let mut tls = jwt_session(&g.env, "c", &first).await;
    subscribed(&mut tls, "devices/sensor-9/#").await;
    tls.write_all(&auth_packet(0x19, METHOD, next.as_bytes()))
        .await
        .unwrap();
    assert_eq!(read_packet(&mut tls, WAIT).await.unwrap(), AUTH_SUCCESS);
    // Past the first token's end: without the new token the session ends at exp.
    while now() < exp + 2 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ping(&mut tls).await, "PINGREQ answered after the first exp");
    echoed(&mut tls, "devices/sensor-9/t", b"after re-authentication").await;
    g.env.await_metric(&reauthentications("ok", ""), 1.0).await;
    let scrape = admin_get(g.env.gate.admin_addr(), "/metrics").await.1;
    assert_eq!(metric(&scrape, &closed("token_expired")), None, "{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_or_another_sub_gets_disconnect_0x87_and_a_broken_auth_0x82() {
    let g = gate("").await;
    let own = mint(&g.k1, &claims("sensor-9"), "RS256", &kid("k1"));
    let other_key = issuer_key(g.keys.path(), "other");
    let cases = [
        (
            "bad_signature",
            auth_packet(
                0x19,
                METHOD,
                mint(&other_key, &claims("sensor-9"), "RS256", &kid("k1")).as_bytes(),
            ),
            0x87,
        ),
        (
            "other_name",
            auth_packet(
                0x19,
                METHOD,
                mint(&g.k1, &claims("sensor-8"), "RS256", &kid("k1")).as_bytes(),
            ),
            0x87,
        ),
        // Success is not the client's to send.
        (
            "bad_reason",
            auth_packet(0x00, METHOD, own.as_bytes()),
            0x82,
        ),
        (
            "other_method",
            auth_packet(0x19, "OAUTH2-JWT", own.as_bytes()),
            0x82,
        ),
    ];
    for (i, (reason, auth, code)) in cases.iter().enumerate() {
        let mut tls = jwt_session(&g.env, "c", &own).await;
        assert!(ping(&mut tls).await);
        tls.write_all(auth).await.unwrap();
        let (rest, gone) = read_until_close(&mut tls, WAIT).await;
        assert_eq!(rest, [0xe0, 0x02, *code, 0x00], "{reason}");
        assert!(gone, "{reason}: closed");
        g.env
            .await_metric(&reauthentications("failed", reason), 1.0)
            .await;
        let n = (i + 1) as f64;
        g.env
            .await_metric(&closed("reauthentication_failed"), n)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_only_mode_answers_a_refused_token_as_allowed_and_counts_would_deny() {
    let g = gate_with_top("", "mode = \"audit\"\n").await;
    let own = mint(&g.k1, &claims("sensor-9"), "RS256", &kid("k1"));
    let stranger = mint(&g.k1, &claims("sensor-8"), "RS256", &kid("k1"));
    let mut tls = jwt_session(&g.env, "c", &own).await;
    tls.write_all(&auth_packet(0x19, METHOD, stranger.as_bytes()))
        .await
        .unwrap();
    assert_eq!(read_packet(&mut tls, WAIT).await.unwrap(), AUTH_SUCCESS);
    assert!(ping(&mut tls).await, "the session goes on");
    g.env
        .await_metric(&reauthentications("would_deny", "other_name"), 1.0)
        .await;
    // A broken protocol is not a decision: it ends the session in every mode.
    tls.write_all(&auth_packet(0x18, METHOD, own.as_bytes()))
        .await
        .unwrap();
    let (rest, gone) = read_until_close(&mut tls, WAIT).await;
    assert_eq!((rest, gone), (vec![0xe0, 0x02, 0x82, 0x00], true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_never_sees_an_auth_packet() {
    let keys = tempfile::tempdir().unwrap();
    let k1 = issuer_key(keys.path(), "k1");
    let (upstream, broker) = session_recording_broker().await;
    let pki = Pki::new();
    let mut setup = Setup::new("[]");
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.upstream = Some(upstream);
    setup.extra = format!(
        "[auth.jwt]\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\nkeys = [\"{}\"]\n",
        keys.path().join("k1.pem").display()
    );
    let env = Env::start(pki, setup).await;
    let first = mint(&k1, &claims("sensor-9"), "RS256", &kid("k1"));
    let next = mint(&k1, &claims("sensor-9"), "RS256", &kid("k1"));
    let mut tls = jwt_session(&env, "c", &first).await;
    // A PUBLISH before and after, the AUTH between them, all in one write.
    let stream = [
        publish_v5("t", b"before"),
        auth_packet(0x19, METHOD, next.as_bytes()),
        publish_v5("t", b"after"),
    ]
    .concat();
    tls.write_all(&stream).await.unwrap();
    assert_eq!(read_packet(&mut tls, WAIT).await.unwrap(), AUTH_SUCCESS);
    tls.write_all(&[0xe0, 0x00]).await.unwrap();
    // The stand-in returns at the end of the stream.
    tls.shutdown().await.unwrap();
    let seen = tokio::time::timeout(WAIT, broker).await.unwrap().unwrap();
    assert_eq!(packet_types(&seen), [0x10, 0x30, 0x30, 0xe0], "{seen:02x?}");
    for token in [&first, &next] {
        let signature = token.rsplit('.').next().unwrap();
        let leaked = seen
            .windows(signature.len())
            .any(|w| w == signature.as_bytes());
        assert!(!leaked, "a token reached the broker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_session_s_auth_ends_it_and_never_reaches_the_broker() {
    let (upstream, broker) = session_recording_broker().await;
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SENSOR)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.upstream = Some(upstream);
    let env = Env::start(pki, setup).await;
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = env.tls(&cert, &[]).await.unwrap();
    tls.write_all(&connect_packet(5, "c", Some("sensor-1")))
        .await
        .unwrap();
    let connack = read_packet(&mut tls, WAIT).await.unwrap();
    assert_eq!(connack[3], 0x00);
    // SPEC §13: an AUTH never reaches the broker, for any method. A client that sent no
    // method may not send one: a protocol error, and the plain relay stops before it.
    tls.write_all(&[0xc0, 0x00, 0xf0, 0x00, 0xe0, 0x00])
        .await
        .unwrap();
    let (heard, closed) = read_until_close(&mut tls, WAIT).await;
    assert!(closed);
    assert!(
        heard.ends_with(&mqttgate::mqtt::disconnect_v5(0x82)),
        "{heard:02x?}"
    );
    let seen = tokio::time::timeout(WAIT, broker).await.unwrap().unwrap();
    assert_eq!(packet_types(&seen), [0x10, 0xc0], "{seen:02x?}");
}

const GROUPS: &str = r#"[{"name": "floor-3", "query": "attributes.floor = 3"}]"#;
const SPACES: &str =
    r#"[{"name": "own", "topicTemplates": ["devices/${client.authenticationName}/#"]}]"#;
const BINDINGS: &str = r#"[
  {"name": "floor-3-publish", "clientGroupName": "floor-3", "topicSpaceName": "own", "permission": "Publisher"},
  {"name": "floor-3-subscribe", "clientGroupName": "floor-3", "topicSpaceName": "own", "permission": "Subscriber"}
]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_authorization_a_reauthenticated_session_keeps_its_grants_and_new_grants_end_it() {
    let lists = tempfile::tempdir().unwrap();
    let at = |name, text| write(lists.path(), name, text).display().to_string();
    let g = gate(&format!(
        "\n[authorization]\nclient_groups = \"{}\"\ntopic_spaces = \"{}\"\npermission_bindings = \"{}\"\n",
        at("client-groups.json", GROUPS),
        at("topic-spaces.json", SPACES),
        at("permission-bindings.json", BINDINGS),
    ))
    .await;
    // claims() carries floor 3.
    let first = mint(&g.k1, &claims("sensor-9"), "RS256", &kid("k1"));
    let next = mint(&g.k1, &claims("sensor-9"), "RS256", &kid("k1"));
    let mut moved = claims("sensor-9");
    moved["floor"] = json!(4);
    let moved = mint(&g.k1, &moved, "RS256", &kid("k1"));
    let mut tls = jwt_session(&g.env, "c", &first).await;
    subscribed(&mut tls, "devices/sensor-9/#").await;
    tls.write_all(&auth_packet(0x19, METHOD, next.as_bytes()))
        .await
        .unwrap();
    assert_eq!(read_packet(&mut tls, WAIT).await.unwrap(), AUTH_SUCCESS);
    echoed(&mut tls, "devices/sensor-9/t", b"still granted").await;
    g.env
        .await_metric(
            "mqttgate_authorization_decisions_total{action=\"publish\",result=\"allowed\"}",
            1.0,
        )
        .await;
    // A token that takes the client out of its group: the broker holds a subscription
    // decided under the old grants, so the session ends, as after such a reload.
    tls.write_all(&auth_packet(0x19, METHOD, moved.as_bytes()))
        .await
        .unwrap();
    let (rest, gone) = read_until_close(&mut tls, WAIT).await;
    assert_eq!(rest, [0xe0, 0x02, 0x87, 0x00]);
    assert!(gone);
    g.env.await_metric(&reauthentications("ok", ""), 2.0).await;
    g.env
        .await_metric(&closed("authorization_changed"), 1.0)
        .await;
}
