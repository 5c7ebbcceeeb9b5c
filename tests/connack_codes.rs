//! SPEC §3 and §6: what a client hears when it is refused, byte for byte, for MQTT 3.1
//! (`MQIsdp` level 3), 3.1.1 and 5, with a real Mosquitto behind mqttgate.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mqttgate::mqtt::{Connect, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
/// Long enough for any refusal on a loaded 2-core machine, short enough to fail fast.
const WAIT: Duration = Duration::from_secs(5);

const V3_NOT_AUTHORIZED: [u8; 4] = [0x20, 0x02, 0x00, 0x05];
const V3_SERVER_UNAVAILABLE: [u8; 4] = [0x20, 0x02, 0x00, 0x03];
const V3_UNACCEPTABLE_PROTOCOL: [u8; 4] = [0x20, 0x02, 0x00, 0x01];
const V3_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
const V5_NOT_AUTHORIZED: [u8; 5] = [0x20, 0x03, 0x00, 0x87, 0x00];
const V5_SERVER_UNAVAILABLE: [u8; 5] = [0x20, 0x03, 0x00, 0x88, 0x00];
const V5_SERVER_BUSY: [u8; 5] = [0x20, 0x03, 0x00, 0x89, 0x00];
const V5_PACKET_TOO_LARGE: [u8; 5] = [0x20, 0x03, 0x00, 0x95, 0x00];
const V5_MALFORMED: [u8; 5] = [0x20, 0x03, 0x00, 0x81, 0x00];

fn disabled_client(name: &str) -> String {
    format!(
        r#"{{"name":"{name}","properties":{{"clientCertificateAuthentication":{{"validationScheme":"{SUBJECT}"}},"state":"Disabled"}}}}"#
    )
}

/// mqttgate with `sensor-1` (enabled) and `disabled-1` (disabled), both subject-matched
/// under the test root, and the certificate CN as the fallback authentication name.
async fn gate(extra: &str, upstream: Option<String>) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!(
        "[{},{}]",
        chain_client("sensor-1", SUBJECT),
        disabled_client("disabled-1")
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.sources = vec!["ClientCertificateSubject"];
    setup.extra = extra.to_string();
    setup.upstream = upstream;
    Env::start(pki, setup).await
}

/// A closed port on loopback: bound once, then released.
fn closed_port_address() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn version(level: u8) -> Version {
    match level {
        3 => Version::V31,
        4 => Version::V311,
        _ => Version::V5,
    }
}

/// Opens a TLS connection as `cn`, writes `bytes`, and returns what came back before the
/// close. Fails the test if mqttgate doesn't close within [`WAIT`].
async fn exchange(env: &Env, cn: &str, bytes: &[u8]) -> Vec<u8> {
    let cert = env.pki.root.issue(&leaf(cn)).unwrap();
    let mut tls = env.tls(&cert, &[]).await.expect("tls handshake");
    tls.write_all(bytes).await.unwrap();
    let (got, closed) = read_until_close(&mut tls, WAIT).await;
    assert!(
        closed,
        "mqttgate kept the connection open; got {got:02x?} so far"
    );
    got
}

/// An allowed sensor-1 connection that stays open, past its CONNACK.
async fn allowed_session(env: &Env) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = env.tls(&cert, &[]).await.expect("tls handshake");
    tls.write_all(&connect_packet(4, "c", None)).await.unwrap();
    assert_eq!(read_exact(&mut tls, 4, WAIT).await, V3_ACCEPTED);
    tls
}

// ---------------------------------------------------------------- denials

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_denial_is_not_authorized_in_the_clients_protocol_version() {
    let env = gate("", None).await;
    // (certificate CN, username): unknown name, disabled client, a certificate that
    // doesn't carry the claimed name.
    let causes = [
        ("nobody", None),
        ("disabled-1", None),
        ("sensor-1", Some("nobody")),
        ("nobody", Some("sensor-1")),
    ];
    for (cn, username) in causes {
        for level in [3, 4] {
            let got = exchange(&env, cn, &connect_packet(level, "c", username)).await;
            assert_eq!(
                got, V3_NOT_AUTHORIZED,
                "level {level}, {cn} as {username:?}"
            );
        }
        let got = exchange(&env, cn, &connect_packet(5, "c", username)).await;
        assert_eq!(got, V5_NOT_AUTHORIZED, "v5, {cn} as {username:?}");
    }
}

/// Splits a v5 CONNACK into its reason code and its Reason String property.
fn v5_connack_reason(bytes: &[u8]) -> (u8, Option<String>) {
    assert_eq!(bytes[0], 0x20, "not a CONNACK: {bytes:02x?}");
    let remaining = usize::from(bytes[1]);
    assert!(remaining < 128, "test CONNACKs are short");
    assert_eq!(bytes.len(), 2 + remaining, "trailing bytes: {bytes:02x?}");
    assert_eq!(bytes[2], 0x00, "session present");
    let code = bytes[3];
    let props_len = usize::from(bytes[4]);
    let props = &bytes[5..];
    assert_eq!(props.len(), props_len, "{bytes:02x?}");
    if props.is_empty() {
        return (code, None);
    }
    assert_eq!(
        props[0], 0x1F,
        "only a Reason String is expected: {bytes:02x?}"
    );
    let len = usize::from(u16::from_be_bytes([props[1], props[2]]));
    assert_eq!(props.len(), 3 + len, "{bytes:02x?}");
    (code, Some(String::from_utf8(props[3..].to_vec()).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_reason_string_is_sent_when_enabled_and_is_the_same_for_every_denial() {
    let env = gate("[mqtt]\nreason_strings = true\n", None).await;
    let mut reasons = Vec::new();
    for (cn, username) in [
        ("nobody", None),
        ("disabled-1", None),
        ("sensor-1", Some("disabled-1")),
        ("sensor-1", Some("nobody")),
        ("nobody", Some("sensor-1")),
    ] {
        let got = exchange(&env, cn, &connect_packet(5, "c", username)).await;
        let (code, reason) = v5_connack_reason(&got);
        assert_eq!(code, 0x87, "{cn} as {username:?}");
        let reason = reason.unwrap_or_else(|| panic!("no reason string: {got:02x?}"));
        assert!(!reason.is_empty());
        reasons.push((cn, username, reason));
    }
    // A client must not learn whether a name is registered or disabled from the text.
    for (cn, username, reason) in &reasons {
        assert_eq!(
            reason, &reasons[0].2,
            "{cn} as {username:?} hears a different reason string: {reasons:#?}"
        );
    }
    let text = reasons[0].2.to_lowercase();
    for leak in ["disabled", "no client", "thumbprint", "chain", "field"] {
        assert!(
            !text.contains(leak),
            "the reason string names a cause: {text}"
        );
    }
    // v3 has nowhere to put a reason string.
    let got = exchange(&env, "nobody", &connect_packet(4, "c", None)).await;
    assert_eq!(got, V3_NOT_AUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reason_string_by_default() {
    let env = gate("", None).await;
    let got = exchange(&env, "disabled-1", &connect_packet(5, "c", None)).await;
    assert_eq!(got, V5_NOT_AUTHORIZED);
}

// ---------------------------------------------------------------- upstream down

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_unreachable_is_server_unavailable() {
    let env = gate("", Some(closed_port_address())).await;
    for level in [3, 4] {
        let got = exchange(&env, "sensor-1", &connect_packet(level, "c", None)).await;
        assert_eq!(got, V3_SERVER_UNAVAILABLE, "level {level}");
    }
    let got = exchange(&env, "sensor-1", &connect_packet(5, "c", None)).await;
    assert_eq!(got, V5_SERVER_UNAVAILABLE);
    // A denial is still a denial: authorization comes before the dial.
    let got = exchange(&env, "nobody", &connect_packet(4, "c", None)).await;
    assert_eq!(got, V3_NOT_AUTHORIZED);
}

/// A broker that accepts TCP, reads what it is sent, and then either hangs up or says
/// nothing: it never accepts the MQTT session.
async fn broker_that_never_accepts(hang_up: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            if !hang_up {
                held.push(s);
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_hangs_up_before_its_connack_is_server_unavailable() {
    let env = gate("", Some(broker_that_never_accepts(true).await)).await;
    let got = exchange(&env, "sensor-1", &connect_packet(4, "c", None)).await;
    assert_eq!(got, V3_SERVER_UNAVAILABLE);
    let got = exchange(&env, "sensor-1", &connect_packet(5, "c", None)).await;
    assert_eq!(got, V5_SERVER_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_too_slow_to_accept_is_server_unavailable_after_the_dial_deadline() {
    let env = gate(
        "[limits]\ndial_timeout_ms = 400\n",
        Some(broker_that_never_accepts(false).await),
    )
    .await;
    let started = Instant::now();
    let got = exchange(&env, "sensor-1", &connect_packet(5, "c", None)).await;
    assert_eq!(got, V5_SERVER_UNAVAILABLE);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A v5 CONNACK with `code` whose User Property makes its remaining length take two bytes.
fn long_v5_connack(code: u8) -> Vec<u8> {
    let mut properties = vec![0x26, 0x00, 0x01, b'k'];
    properties.extend_from_slice(&200u16.to_be_bytes());
    properties.extend_from_slice(&[b'v'; 200]);
    let mut body = vec![0x00, code];
    put_varint(&mut body, properties.len());
    body.extend_from_slice(&properties);
    let packet = packet(0x20, &body);
    assert!(
        packet[1] & 0x80 != 0,
        "the remaining length takes two bytes"
    );
    packet
}

/// A broker that answers every CONNECT with `connack` and then holds the connection.
async fn broker_answering(connack: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let _ = s.write_all(&connack).await;
            held.push(s);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_v5_connack_from_the_broker_is_forwarded_and_counted_with_its_code() {
    let connack = long_v5_connack(0x87);
    let env = gate("", Some(broker_answering(connack.clone()).await)).await;
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = env.tls(&cert, &[]).await.expect("tls handshake");
    tls.write_all(&connect_packet(5, "c", None)).await.unwrap();
    assert_eq!(read_exact(&mut tls, connack.len(), WAIT).await, connack);
    let series = |code: &str| {
        format!("mqttgate_connacks_sent_total{{sender=\"broker\",protocol=\"5\",code=\"{code}\"}}")
    };
    let scrape = env.gate.metrics.render();
    assert_eq!(metric(&scrape, &series("0x87")), Some(1.0), "{scrape}");
    assert_eq!(metric(&scrape, &series("0x00")), None, "{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_reports_server_unavailable_when_the_upstream_is_down() {
    let env = gate("", Some(closed_port_address())).await;
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let (c1, k1) = env.client_files("sensor-1", &s1, &[]);
    for (protocol, expect) in [("mqttv311", "unavailable"), ("mqttv5", "unavailable")] {
        let out = env.pub_(
            &c1,
            &k1,
            &["-V", protocol, "-t", "devices/sensor-1/t", "-m", "x"],
        );
        assert!(!out.status.success(), "{protocol}: {}", text(&out));
        let said = text(&out).to_lowercase();
        assert!(said.contains(expect), "{protocol}: {said}");
    }
}

// ---------------------------------------------------------------- connection limit

const ACTIVE: &str = "mqttgate_connections_active";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_clients_get_tls_and_server_busy() {
    let env = gate("[limits]\nmax_connections = 1\nbusy_answers = 1\n", None).await;
    let held = allowed_session(&env).await;

    let got = exchange(&env, "sensor-1", &connect_packet(4, "c", None)).await;
    assert_eq!(got, V3_SERVER_UNAVAILABLE);
    // The busy slot is free again once that answer's task ends: the task gives its slot
    // back before it leaves `connections_active`, where only the held session remains.
    env.await_metric(ACTIVE, 1.0).await;
    let got = exchange(&env, "sensor-1", &connect_packet(5, "c", None)).await;
    assert_eq!(got, V5_SERVER_BUSY);
    // Busy comes before the decision: an unknown client hears busy, not a denial.
    env.await_metric(ACTIVE, 1.0).await;
    let got = exchange(&env, "nobody", &connect_packet(3, "c", None)).await;
    assert_eq!(got, V3_SERVER_UNAVAILABLE);

    // Once the held session ends, its slot serves the next client.
    drop(held);
    env.await_metric(ACTIVE, 0.0).await;
    let _again = allowed_session(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_busy_answers_the_connection_past_the_limit_is_closed_before_tls() {
    let env = gate("[limits]\nmax_connections = 1\nbusy_answers = 0\n", None).await;
    let _held = allowed_session(&env).await;
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let handshake = tokio::time::timeout(WAIT, env.tls(&cert, &[]))
        .await
        .expect("mqttgate neither closed nor finished the handshake");
    assert!(
        handshake.is_err(),
        "the TLS handshake succeeded past the limit"
    );

    // And at the TCP level: not one byte (no ServerHello) comes back.
    let mut tcp = TcpStream::connect(env.addr()).await.unwrap();
    // A ClientHello-looking start; the server must not answer it.
    let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05]).await;
    let (got, closed) = read_until_close(&mut tcp, WAIT).await;
    assert!(closed);
    assert!(got.is_empty(), "{got:02x?}");
}

// ---------------------------------------------------------------- CONNECT size

fn big_v5_connect_with_password(len: usize) -> Vec<u8> {
    Connect {
        version: Version::V5,
        clean_start: true,
        keep_alive: 30,
        properties: vec![],
        client_id: "c".into(),
        will: None,
        username: Some("sensor-1".into()),
        password: Some(vec![b'p'; len]),
    }
    .encode()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_over_the_limit_is_packet_too_large_in_v5_and_a_close_in_v3() {
    let env = gate("[limits]\nmax_connect_bytes = 1024\n", None).await;

    let got = exchange(&env, "sensor-1", &big_v5_connect_with_password(2000)).await;
    assert_eq!(got, V5_PACKET_TOO_LARGE, "2000-byte password");

    // A 2000-byte User Property (0x26, key "k", value of 2000 bytes).
    let mut props = vec![0x26, 0x00, 0x01, b'k'];
    props.extend_from_slice(&2000u16.to_be_bytes());
    props.extend_from_slice(&[b'v'; 2000]);
    let with_property = Connect {
        version: Version::V5,
        clean_start: true,
        keep_alive: 30,
        properties: props,
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
    }
    .encode()
    .unwrap();
    let got = exchange(&env, "sensor-1", &with_property).await;
    assert_eq!(got, V5_PACKET_TOO_LARGE, "2000-byte user property");

    for level in [3, 4] {
        let c = Connect {
            version: version(level),
            clean_start: true,
            keep_alive: 30,
            properties: vec![],
            client_id: "c".into(),
            will: None,
            username: Some("sensor-1".into()),
            password: Some(vec![b'p'; 2000]),
        };
        let got = exchange(&env, "sensor-1", &c.encode().unwrap()).await;
        assert!(got.is_empty(), "level {level}: {got:02x?}");
    }

    // Just under the limit is served.
    let fits = big_v5_connect_with_password(900);
    assert!(fits.len() <= 1024);
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = env.tls(&cert, &[]).await.unwrap();
    tls.write_all(&fits).await.unwrap();
    let connack = read_exact(&mut tls, 3, WAIT).await;
    assert_eq!(connack[0], 0x20);
    let rest = read_exact(&mut tls, usize::from(connack[1]) - 1, WAIT).await;
    assert_eq!(
        rest[0], 0x00,
        "the broker accepted: {connack:02x?} {rest:02x?}"
    );
}

// ---------------------------------------------------------------- protocol level

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_protocol_level_is_answered_in_3_1_1_with_0x01() {
    let env = gate("", None).await;
    // MQTT level 6: the level byte follows 10 len 00 04 'MQTT'.
    let mut mqtt6 = connect_packet(5, "c", None);
    assert_eq!(&mqtt6[2..8], b"\x00\x04MQTT");
    mqtt6[8] = 6;
    let got = exchange(&env, "sensor-1", &mqtt6).await;
    assert_eq!(got, V3_UNACCEPTABLE_PROTOCOL, "MQTT level 6");

    // MQIsdp at level 4 (3.1's name with 3.1.1's level).
    let mut mqisdp4 = connect_packet(3, "c", None);
    assert_eq!(&mqisdp4[2..10], b"\x00\x06MQIsdp");
    mqisdp4[10] = 4;
    let got = exchange(&env, "sensor-1", &mqisdp4).await;
    assert_eq!(got, V3_UNACCEPTABLE_PROTOCOL, "MQIsdp level 4");

    // MQTT at level 3 is not 3.1 either.
    let mut mqtt3 = connect_packet(4, "c", None);
    mqtt3[8] = 3;
    let got = exchange(&env, "sensor-1", &mqtt3).await;
    assert_eq!(got, V3_UNACCEPTABLE_PROTOCOL, "MQTT level 3");
}

// ---------------------------------------------------------------- malformed

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_packet_not_connect_is_closed_without_an_answer() {
    let env = gate("", None).await;
    let got = exchange(&env, "sensor-1", &[0xc0, 0x00]).await;
    assert!(got.is_empty(), "PINGREQ: {got:02x?}");
    // A PUBLISH first, even one that names the client's own topic.
    let mut publish = vec![0x30, 0x0b, 0x00, 0x09];
    publish.extend_from_slice(b"devices/x");
    let got = exchange(&env, "sensor-1", &publish).await;
    assert!(got.is_empty(), "PUBLISH: {got:02x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_connect_is_closed_in_v3_and_0x81_in_v5() {
    let env = gate("", None).await;
    // Connect flags sit right after the level byte; bit 0 is reserved.
    for level in [3, 4] {
        let mut bad = connect_packet(level, "c", None);
        let flags = if level == 3 { 11 } else { 9 };
        bad[flags] |= 0x01;
        let got = exchange(&env, "sensor-1", &bad).await;
        assert!(got.is_empty(), "level {level}: {got:02x?}");
    }
    let mut bad = connect_packet(5, "c", None);
    bad[9] |= 0x01;
    let got = exchange(&env, "sensor-1", &bad).await;
    assert_eq!(got, V5_MALFORMED);

    // Fixed-header flags must be zero too: `11` instead of `10`. The level isn't read.
    let mut bad = connect_packet(5, "c", None);
    bad[0] = 0x11;
    let got = exchange(&env, "sensor-1", &bad).await;
    assert!(got.is_empty(), "{got:02x?}");

    // An unknown protocol name: close, whatever the level.
    let mut bad = connect_packet(5, "c", None);
    bad[4] = b'X';
    let got = exchange(&env, "sensor-1", &bad).await;
    assert!(got.is_empty(), "{got:02x?}");
}

// ---------------------------------------------------------------- CONNECT deadline

const DEADLINE: &str = "[limits]\nconnect_timeout_ms = 500\n";

/// Opens TLS as sensor-1, writes `bytes`, and returns what came back, whether it closed,
/// and how long after the TCP connect it closed.
async fn stall(env: &Env, bytes: &[u8]) -> (Vec<u8>, bool, Duration) {
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let started = Instant::now();
    let mut tls = env.tls(&cert, &[]).await.expect("tls handshake");
    if !bytes.is_empty() {
        tls.write_all(bytes).await.unwrap();
        tls.flush().await.unwrap();
    }
    let (got, closed) = read_until_close(&mut tls, Duration::from_secs(3)).await;
    (got, closed, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_v3_connect_is_closed_at_the_deadline_without_an_answer() {
    let env = gate(DEADLINE, None).await;
    for level in [3, 4] {
        let whole = connect_packet(level, "client", Some("sensor-1"));
        let (got, closed, took) = stall(&env, &whole[..whole.len() / 2]).await;
        assert!(closed, "level {level}: still open after {took:?}");
        assert!(got.is_empty(), "level {level}: {got:02x?}");
        assert!(
            took < Duration::from_millis(1500),
            "level {level}: {took:?}"
        );
        assert!(
            took >= Duration::from_millis(400),
            "level {level}: {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_v5_connect_with_its_level_is_answered_0x81_at_the_deadline() {
    let env = gate(DEADLINE, None).await;
    let whole = connect_packet(5, "client", Some("sensor-1"));
    // 10 len 00 04 'MQTT' 05: the level is in.
    let (got, closed, took) = stall(&env, &whole[..9]).await;
    assert!(closed, "still open after {took:?}");
    assert_eq!(got, V5_MALFORMED);
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // Before the level arrives the version is unknown: just a close.
    let (got, closed, took) = stall(&env, &whole[..5]).await;
    assert!(closed, "still open after {took:?}");
    assert!(got.is_empty(), "{got:02x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_after_the_handshake_is_closed_at_the_deadline() {
    let env = gate(DEADLINE, None).await;
    let (got, closed, took) = stall(&env, &[]).await;
    assert!(closed, "still open after {took:?}");
    assert!(got.is_empty(), "{got:02x?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_that_never_starts_tls_is_closed_at_the_deadline() {
    let env = gate(DEADLINE, None).await;
    let started = Instant::now();
    let mut tcp = TcpStream::connect(env.addr()).await.unwrap();
    let (got, closed) = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(closed, "still open after {took:?}");
    assert!(got.is_empty(), "{got:02x?}");
    assert!(took >= Duration::from_millis(400), "closed early: {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // A trickle that starts TLS but never finishes the ClientHello: the same deadline.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(env.addr()).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let (_, closed) = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(closed, "still open after {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_does_not_cut_a_connect_that_completed_in_time() {
    let env = gate(DEADLINE, None).await;
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = env.tls(&cert, &[]).await.unwrap();
    tls.write_all(&connect_packet(4, "c", None)).await.unwrap();
    assert_eq!(read_exact(&mut tls, 4, WAIT).await, V3_ACCEPTED);
    // Well past the deadline the session is still relayed: PINGREQ, PINGRESP. The silence
    // is the behaviour under test, so it is a sleep.
    tokio::time::sleep(Duration::from_millis(900)).await;
    tls.write_all(&[0xc0, 0x00]).await.unwrap();
    assert_eq!(read_exact(&mut tls, 2, WAIT).await, [0xd0, 0x00]);
}

// ---------------------------------------------------------------- not TLS at all

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_tls_is_closed_and_mqttgate_keeps_serving() {
    let env = gate("", None).await;
    let plaintext_connect = connect_packet(4, "c", Some("sensor-1"));
    let mut random = random_bytes(4096);
    random[0] = 0xAA; // not a TLS record type
    let http = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec();
    for (what, bytes) in [
        ("plaintext CONNECT", plaintext_connect),
        ("random bytes", random),
        ("HTTP", http),
    ] {
        let mut tcp = TcpStream::connect(env.addr()).await.unwrap();
        // mqttgate may close while we are still writing: that's fine.
        let _ = tcp.write_all(&bytes).await;
        let (got, closed) = read_until_close(&mut tcp, WAIT).await;
        assert!(closed, "{what}: still open");
        // At most a TLS alert record comes back, never an MQTT packet.
        if let Some(&first) = got.first() {
            assert_eq!(first, 0x15, "{what}: {got:02x?}");
        }
    }
    // Still serving.
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = env.tls(&cert, &[]).await.unwrap();
    tls.write_all(&connect_packet(5, "c", None)).await.unwrap();
    let connack = read_exact(&mut tls, 3, WAIT).await;
    assert_eq!(connack[0], 0x20);
    let rest = read_exact(&mut tls, usize::from(connack[1]) - 1, WAIT).await;
    assert_eq!(rest[0], 0x00, "accepted: {rest:02x?}");
}
