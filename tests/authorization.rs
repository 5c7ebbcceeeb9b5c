//! Topic-space authorization (SPEC §11, issue 13 point 4) with a real Mosquitto and real
//! clients: what a client may publish and subscribe to is decided by Azure-shaped client
//! groups, topic spaces and permission bindings; denials answer as Event Grid does; a
//! reload that changes a session's permissions ends it; audit mode only counts.
//!
//! The broker's own ACL (`pattern readwrite devices/%u/#`) lets every client use its own
//! `devices/<name>/...`, so everything denied below is denied by mqttgate, not Mosquitto.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use mqttgate::cli::pki::Issued;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
const WAIT: Duration = Duration::from_secs(5);

/// A registry entry with attributes.
fn client(name: &str, attributes: &str) -> String {
    chain_client(name, SUBJECT).replace(
        "\"state\":\"Enabled\"",
        &format!("\"state\":\"Enabled\",\"attributes\":{attributes}"),
    )
}

/// `az eventgrid namespace client-group list` output.
const GROUPS: &str = r#"[
  {"name": "$all", "description": "Built in"},
  {"name": "new-sensors", "query": "attributes.type = 'sensor' and attributes.year >= 2020 or authenticationName IN ['sensor-9']"},
  {"name": "viewers", "properties": {"query": "attributes.type <> 'sensor' and (attributes.year < 2000 or attributes.type = 'viewer')"}}
]"#;

/// ARM's shape.
const SPACES: &str = r#"{"value": [
  {"name": "own-telemetry", "properties": {"topicTemplates": ["devices/${client.authenticationName}/telemetry/#"]}},
  {"name": "fleet-status", "properties": {"topicTemplates": ["devices/${client.authenticationName}/fleet-${client.attributes.fleet}/status"]}},
  {"name": "commands", "properties": {"topicTemplates": ["devices/${client.authenticationName}/cmd/#"]}}
]}"#;

const BINDINGS: &str = r#"[
  {"name": "sensors-publish-telemetry", "clientGroupName": "new-sensors", "topicSpaceName": "own-telemetry", "permission": "Publisher"},
  {"name": "sensors-read-telemetry", "clientGroupName": "new-sensors", "topicSpaceName": "own-telemetry", "permission": "Subscriber"},
  {"name": "sensors-publish-status", "clientGroupName": "new-sensors", "topicSpaceName": "fleet-status", "permission": "Publisher"},
  {"name": "everyone-reads-commands", "clientGroupName": "$all", "topicSpaceName": "commands", "permission": "Subscriber"}
]"#;

/// sensor-1 is a new sensor of fleet north; sensor-2 is too old for the group; viewer-1
/// is a viewer.
async fn start(mode: &str) -> Env {
    let pki = Pki::new();
    let registry = format!(
        "[{},{},{}]",
        client(
            "sensor-1",
            r#"{"type":"sensor","year":2022,"fleet":"north"}"#
        ),
        client(
            "sensor-2",
            r#"{"type":"sensor","year":2018,"fleet":"south"}"#
        ),
        client("viewer-1", r#"{"type":"viewer","year":2021}"#),
    );
    let mut setup = Setup::new(&registry);
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    // The lists live beside the config, written before mqttgate starts.
    let lists = tempfile::tempdir().unwrap().keep();
    setup.extra = authorization_section(&lists, GROUPS, SPACES, BINDINGS, Some(mode));
    Env::start(pki, setup).await
}

fn lists_dir(env: &Env) -> PathBuf {
    let text = std::fs::read_to_string(&env.config_file).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("permission_bindings"))
        .unwrap();
    let path = line.split('"').nth(1).unwrap();
    Path::new(path).parent().unwrap().to_path_buf()
}

type Tls = TlsStream<TcpStream>;

/// A byte-level session of `version` (4 or 5) as `name`, after its CONNACK 0.
async fn session_as(env: &Env, name: &str, version: u8) -> (Tls, Issued) {
    let cert = env.pki.root.issue(&leaf(name)).unwrap();
    let mut tls = env.tls(&cert, &[]).await.unwrap();
    tls.write_all(&connect_packet(version, name, Some(name)))
        .await
        .unwrap();
    let connack = read_packet(&mut tls, WAIT).await.expect("connack");
    assert_eq!((connack[0], connack[3]), (0x20, 0x00), "{connack:02x?}");
    (tls, cert)
}

/// A v5 PUBLISH with an optional topic alias.
fn publish_v5(topic: &str, qos: u8, id: u16, alias: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&id.to_be_bytes());
    }
    match alias {
        Some(a) => body.extend_from_slice(&[0x03, 0x23, (a >> 8) as u8, a as u8]),
        None => body.push(0),
    }
    body.extend_from_slice(payload);
    packet(0x30 | qos << 1, &body)
}

/// A SUBSCRIBE of several filters (QoS 1 each), v5 with an empty property list.
fn subscribe_many(id: u16, filters: &[&str], v5: bool) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for f in filters {
        put_str(&mut body, f.as_bytes());
        body.push(1);
    }
    packet(0x82, &body)
}

/// The reason code of a v5 PUBACK or PUBREC (0 when the short form omits it).
fn ack_reason(p: &[u8]) -> u8 {
    p.get(4).copied().unwrap_or(0)
}

async fn metric_is(env: &Env, series: &str, want: f64) {
    env.await_metric(series, want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_denied_publishes_get_0x87_and_never_reach_the_broker() {
    let env = start("enforce").await;
    let backend = backend_sub(&env.mosquitto, "devices/#").await;
    let (mut tls, _) = session_as(&env, "sensor-1", 5).await;
    let cases = [
        // (topic, qos, reaches the broker)
        ("devices/sensor-1/telemetry/engine", 1, true),
        ("devices/sensor-1/secret", 1, false),
        ("devices/sensor-1/fleet-north/status", 1, true),
        ("devices/sensor-1/fleet-south/status", 1, false),
        ("devices/sensor-1/secret", 2, false),
    ];
    for (i, (topic, qos, allowed)) in cases.iter().enumerate() {
        let id = i as u16 + 1;
        tls.write_all(&publish_v5(
            topic,
            *qos,
            id,
            None,
            format!("m{id}").as_bytes(),
        ))
        .await
        .unwrap();
        let ack = read_packet(&mut tls, WAIT).await.expect("an ack");
        let kind = if *qos == 1 { 0x40 } else { 0x50 };
        assert_eq!(ack[0], kind, "{topic}: {ack:02x?}");
        assert_eq!(&ack[2..4], &id.to_be_bytes(), "{topic}: {ack:02x?}");
        let want = if *allowed { 0x00 } else { 0x87 };
        assert_eq!(ack_reason(&ack), want, "{topic}: {ack:02x?}");
    }
    // QoS 0 denied: dropped silently; the session goes on.
    tls.write_all(&publish_v5("devices/sensor-1/secret", 0, 0, None, b"q0"))
        .await
        .unwrap();
    tls.write_all(&publish_v5(
        "devices/sensor-1/telemetry/x",
        0,
        0,
        None,
        b"last",
    ))
    .await
    .unwrap();
    assert!(
        eventually(WAIT, || backend.lines().contains(&"last".to_string())).await,
        "{:?}",
        backend.lines()
    );
    assert_eq!(backend.finish(), ["m1", "m3", "last"]);
    metric_is(
        &env,
        "mqttgate_authorization_decisions_total{action=\"publish\",result=\"denied\"}",
        4.0,
    )
    .await;
    metric_is(
        &env,
        "mqttgate_authorization_decisions_total{action=\"publish\",result=\"allowed\"}",
        3.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v311_denied_publish_closes_the_connection() {
    let env = start("enforce").await;
    let (mut tls, _) = session_as(&env, "sensor-1", 4).await;
    tls.write_all(&publish_qos1(
        "devices/sensor-1/telemetry/a",
        1,
        b"ok",
        false,
        false,
    ))
    .await
    .unwrap();
    let ack = read_packet(&mut tls, WAIT).await.expect("puback");
    assert_eq!(ack, [0x40, 0x02, 0x00, 0x01]);
    tls.write_all(&publish_qos1(
        "devices/sensor-1/secret",
        2,
        b"no",
        false,
        false,
    ))
    .await
    .unwrap();
    let (rest, closed) = read_until_close(&mut tls, WAIT).await;
    assert!(closed && rest.is_empty(), "{rest:02x?}");
    metric_is(
        &env,
        "mqttgate_connections_closed_total{outcome=\"session\",reason=\"not_authorized\",transport=\"tls\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_queries_decide_who_may_publish() {
    let env = start("enforce").await;
    // sensor-2's year keeps it out of new-sensors: its own telemetry is not its to publish.
    let (mut tls, _) = session_as(&env, "sensor-2", 5).await;
    tls.write_all(&publish_v5(
        "devices/sensor-2/telemetry/a",
        1,
        1,
        None,
        b"x",
    ))
    .await
    .unwrap();
    let ack = read_packet(&mut tls, WAIT).await.unwrap();
    assert_eq!((ack[0], ack_reason(&ack)), (0x40, 0x87));
    // viewer-1 is in viewers (<>, parentheses, or) but has no publish binding.
    let (mut tls, _) = session_as(&env, "viewer-1", 5).await;
    tls.write_all(&publish_v5(
        "devices/viewer-1/telemetry/a",
        1,
        1,
        None,
        b"x",
    ))
    .await
    .unwrap();
    let ack = read_packet(&mut tls, WAIT).await.unwrap();
    assert_eq!((ack[0], ack_reason(&ack)), (0x40, 0x87));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_subscribe_gets_per_filter_codes_and_the_allowed_filters_deliver() {
    let env = start("enforce").await;
    for (version, denied) in [(5u8, 0x87u8), (4, 0x80)] {
        let (mut tls, _) = session_as(&env, "sensor-1", version).await;
        let filters = [
            "devices/sensor-1/telemetry/#",
            "devices/sensor-2/telemetry/#",
            "devices/sensor-1/cmd/#",
        ];
        tls.write_all(&subscribe_many(7, &filters, version == 5))
            .await
            .unwrap();
        let suback = read_packet(&mut tls, WAIT).await.expect("suback");
        let codes = &suback[suback.len() - 3..];
        assert_eq!(suback[0], 0x90);
        assert_eq!(&suback[2..4], &[0, 7]);
        assert_eq!(codes, [0x01, denied, 0x01], "v{version}: {suback:02x?}");
        // The allowed filter delivers what the client itself publishes there.
        let p = if version == 5 {
            publish_v5("devices/sensor-1/telemetry/loop", 0, 0, None, b"back")
        } else {
            publish_packet("devices/sensor-1/telemetry/loop", 0, 0, b"back")
        };
        tls.write_all(&p).await.unwrap();
        let got = read_packet(&mut tls, WAIT).await.expect("the message back");
        assert_eq!(got[0] >> 4, 3, "{got:02x?}");
        assert!(got.ends_with(b"back"), "{got:02x?}");
    }
    assert_eq!(
        env.mosquitto.subscriptions("devices/sensor-2/telemetry/#"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_denied_subscribe_is_answered_by_mqttgate_and_never_reaches_the_broker() {
    let env = start("enforce").await;
    let (mut tls, _) = session_as(&env, "viewer-1", 5).await;
    tls.write_all(&subscribe_many(
        3,
        &["devices/#", "devices/viewer-1/telemetry"],
        true,
    ))
    .await
    .unwrap();
    let suback = read_packet(&mut tls, WAIT).await.expect("suback");
    assert_eq!(suback, [0x90, 0x05, 0x00, 0x03, 0x00, 0x87, 0x87]);
    // The session goes on: the allowed filter is granted by the broker.
    tls.write_all(&subscribe_many(4, &["devices/viewer-1/cmd/+"], true))
        .await
        .unwrap();
    let suback = read_packet(&mut tls, WAIT).await.expect("suback");
    assert_eq!(suback.last(), Some(&0x01), "{suback:02x?}");
    assert_eq!(env.mosquitto.subscriptions("devices/#"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_cannot_bypass_a_denial() {
    let env = start("enforce").await;
    let backend = backend_sub(&env.mosquitto, "devices/#").await;
    let (mut tls, _) = session_as(&env, "sensor-1", 5).await;
    let steps: [(&str, Option<u16>, u8); 5] = [
        // Denied topic sets alias 1: denied, and so is the alias alone.
        ("devices/sensor-1/secret", Some(1), 0x87),
        ("", Some(1), 0x87),
        // An allowed topic on alias 2, then the alias alone: allowed.
        ("devices/sensor-1/telemetry/a", Some(2), 0x00),
        ("", Some(2), 0x00),
        // Alias 2 moved to a denied topic: the alias alone is denied from then on.
        ("devices/sensor-1/secret", Some(2), 0x87),
    ];
    for (i, (topic, alias, want)) in steps.iter().enumerate() {
        let id = i as u16 + 1;
        tls.write_all(&publish_v5(
            topic,
            1,
            id,
            *alias,
            format!("a{id}").as_bytes(),
        ))
        .await
        .unwrap();
        let ack = read_packet(&mut tls, WAIT).await.expect("puback");
        assert_eq!(ack_reason(&ack), *want, "step {id}: {ack:02x?}");
    }
    tls.write_all(&publish_v5("", 1, 9, Some(2), b"a9"))
        .await
        .unwrap();
    let ack = read_packet(&mut tls, WAIT).await.expect("puback");
    assert_eq!(ack_reason(&ack), 0x87, "{ack:02x?}");
    // An alias never set ends the session (it names no decided topic).
    tls.write_all(&publish_v5("", 1, 10, Some(5), b"a10"))
        .await
        .unwrap();
    let (rest, closed) = read_until_close(&mut tls, WAIT).await;
    assert!(closed, "{rest:02x?}");
    assert!(eventually(WAIT, || backend.lines().len() >= 2).await);
    assert_eq!(backend.finish(), ["a3", "a4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bindings_reload_disconnects_the_affected_session_only() {
    let env = start("enforce").await;
    let (mut sensor, _) = session_as(&env, "sensor-1", 5).await;
    let (mut viewer, _) = session_as(&env, "viewer-1", 5).await;
    // Take away the sensors' fleet-status binding: sensor-1's permissions change,
    // viewer-1's do not.
    let bindings = BINDINGS.replace(
        "\"sensors-publish-status\", \"clientGroupName\": \"new-sensors\"",
        "\"sensors-publish-status\", \"clientGroupName\": \"viewers\"",
    );
    assert_ne!(bindings, BINDINGS);
    std::fs::write(lists_dir(&env).join("permission-bindings.json"), bindings).unwrap();
    env.gate.reload().unwrap();
    let got = read_packet(&mut sensor, WAIT).await;
    assert_eq!(got.as_deref(), Some(&[0xe0, 0x02, 0x87, 0x00][..]));
    let (_, closed) = read_until_close(&mut sensor, WAIT).await;
    assert!(closed);
    viewer.write_all(&[0xc0, 0x00]).await.unwrap();
    assert_eq!(
        read_packet(&mut viewer, WAIT).await.as_deref(),
        Some(&[0xd0, 0x00][..])
    );
    metric_is(
        &env,
        "mqttgate_connections_closed_total{outcome=\"session\",reason=\"authorization_changed\",transport=\"tls\"}",
        1.0,
    )
    .await;
    // A bad list fails the reload as a whole and the old state stays.
    std::fs::write(lists_dir(&env).join("topic-spaces.json"), "[{").unwrap();
    let err = env.gate.reload().unwrap_err().to_string();
    assert!(err.contains("topic-spaces.json"), "{err}");
    viewer.write_all(&[0xc0, 0x00]).await.unwrap();
    assert_eq!(
        read_packet(&mut viewer, WAIT).await.as_deref(),
        Some(&[0xd0, 0x00][..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_lets_a_would_be_denied_publish_through_and_counts_it() {
    let env = start("audit").await;
    let backend = backend_sub(&env.mosquitto, "devices/#").await;
    let (mut tls, _) = session_as(&env, "sensor-1", 5).await;
    tls.write_all(&publish_v5(
        "devices/sensor-1/secret",
        1,
        1,
        None,
        b"audited",
    ))
    .await
    .unwrap();
    let ack = read_packet(&mut tls, WAIT).await.expect("puback");
    assert_eq!((ack[0], ack_reason(&ack)), (0x40, 0x00), "{ack:02x?}");
    assert!(eventually(WAIT, || backend.lines() == ["audited"]).await);
    metric_is(
        &env,
        "mqttgate_authorization_decisions_total{action=\"publish\",result=\"would_deny\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_lists_and_a_bad_one_refuses_check_and_start_naming_the_file() {
    let env = start("enforce").await;
    let dir = lists_dir(&env);
    let report = mqttgate::cli::check(&env.config_file).unwrap();
    assert!(
        report.contains("authorization (enforce): 3 client groups ($all included), 3 topic spaces, 4 permission bindings"),
        "{report}"
    );
    std::fs::write(
        dir.join("client-groups.json"),
        r#"[{"name":"broken","query":"attributes.type = "}]"#,
    )
    .unwrap();
    let err = mqttgate::cli::check(&env.config_file)
        .unwrap_err()
        .to_string();
    assert!(err.contains("client-groups.json"), "{err}");
    let config = mqttgate::config::Config::load(&env.config_file).unwrap();
    let err = mqttgate::server::Server::start(config)
        .await
        .err()
        .expect("refused");
    let err = err.to_string();
    assert!(
        err.contains("client-groups.json") && err.contains("broken"),
        "{err}"
    );
}

/// tests/python/paho_authz.py as `name`: a mixed SUBSCRIBE and an allowed and a denied
/// PUBLISH; returns what paho saw.
async fn paho(env: &Env, name: &str, protocol: &str) -> Value {
    let cert = env.pki.root.issue(&leaf(name)).unwrap();
    let files = env.client_files(&format!("paho-{name}-{protocol}"), &cert, &[]);
    run_paho_script(env, "paho_authz.py", env.port(), files, &[name, protocol]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_v5_and_v311_see_per_filter_codes_and_denied_publishes() {
    let env = start("enforce").await;
    let r = paho(&env, "sensor-1", "v5").await;
    assert_eq!(r["error"], Value::Null, "{r}");
    assert_eq!(r["suback"], serde_json::json!([1, 135, 1]), "{r}");
    assert_eq!(r["received"], "allowed", "{r}");
    assert_eq!(r["denied_puback"], 135, "{r}");
    let r = paho(&env, "sensor-1", "v311").await;
    assert_eq!(r["error"], Value::Null, "{r}");
    assert_eq!(r["suback"], serde_json::json!([1, 128, 1]), "{r}");
    assert_eq!(r["received"], "allowed", "{r}");
    assert_eq!(r["disconnected_after_denied"], true, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_groups_and_the_binding_that_allows_or_none() {
    use mqttgate::authz::Action;
    use mqttgate::cli::explain::explain_topic;
    let env = start("enforce").await;
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let (cert, _) = env.client_files("explain-sensor-1", &cert, &[]);
    let run = |action, topic| {
        explain_topic(
            &env.config_file,
            &cert,
            Some("sensor-1"),
            Some((action, topic)),
        )
        .unwrap()
    };
    let e = run(Action::Publish, "devices/sensor-1/fleet-north/status");
    let text = e.text();
    assert!(e.allowed, "{text}");
    assert!(
        text.contains("authorization: client groups: $all, new-sensors\n"),
        "{text}"
    );
    assert!(
        text.contains("ALLOWED by binding \"sensors-publish-status\""),
        "{text}"
    );
    let e = run(Action::Subscribe, "devices/sensor-2/telemetry/#");
    assert!(!e.allowed);
    assert!(
        e.text().contains("DENIED: no permission binding allows it"),
        "{}",
        e.text()
    );
    let e = run(Action::Subscribe, "devices/sensor-1/cmd/+");
    assert!(
        e.text()
            .contains("ALLOWED by binding \"everyone-reads-commands\""),
        "{}",
        e.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_reload_that_changes_a_clients_attributes_ends_its_session() {
    let env = start("enforce").await;
    let (mut sensor, _) = session_as(&env, "sensor-1", 5).await;
    let (mut other, _) = session_as(&env, "sensor-2", 4).await;
    // sensor-1 moves fleet: its fleet-status grant names another topic now.
    let registry = std::fs::read_to_string(&env.registry_file)
        .unwrap()
        .replace("\"fleet\":\"north\"", "\"fleet\":\"west\"");
    std::fs::write(&env.registry_file, registry).unwrap();
    env.gate.reload().unwrap();
    let got = read_packet(&mut sensor, WAIT).await;
    assert_eq!(got.as_deref(), Some(&[0xe0, 0x02, 0x87, 0x00][..]));
    other.write_all(&[0xc0, 0x00]).await.unwrap();
    assert_eq!(
        read_packet(&mut other, WAIT).await.as_deref(),
        Some(&[0xd0, 0x00][..])
    );
    // Reconnected, it is decided with its new attributes.
    let (mut sensor, _) = session_as(&env, "sensor-1", 5).await;
    sensor
        .write_all(&publish_v5(
            "devices/sensor-1/fleet-west/status",
            1,
            1,
            None,
            b"w",
        ))
        .await
        .unwrap();
    let ack = read_packet(&mut sensor, WAIT).await.unwrap();
    // Mosquitto says 0x10 (no matching subscribers): a success code all the same.
    assert!(ack_reason(&ack) < 0x80, "{ack:02x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mib_allowed_publish_streams_through_byte_for_byte() {
    let env = start("enforce").await;
    let (mut tls, _) = session_as(&env, "sensor-1", 4).await;
    subscribe(&mut tls, 1, "devices/sensor-1/telemetry/#", 1).await;
    let big = random_bytes(1 << 20);
    tls.write_all(&publish_qos1(
        "devices/sensor-1/telemetry/big",
        2,
        &big,
        false,
        false,
    ))
    .await
    .unwrap();
    let mut got_ack = false;
    let mut got_message = None;
    while !(got_ack && got_message.is_some()) {
        let p = read_packet(&mut tls, Duration::from_secs(10))
            .await
            .expect("a packet");
        let (first, body) = split_packet(&p);
        match first >> 4 {
            4 => got_ack = true,
            3 => got_message = Some(parse_publish(first, body)),
            _ => panic!("unexpected {first:02x}"),
        }
    }
    let (topic, _, payload) = got_message.unwrap();
    assert_eq!(topic, "devices/sensor-1/telemetry/big");
    assert!(payload == big, "the payload changed on its way");
}
