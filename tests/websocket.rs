//! MQTT over WebSockets (SPEC §8) with real clients: MQTT.js (npm `mqtt`, `wss://` with a
//! client certificate) and paho-mqtt (`transport="websockets"`), in front of a real
//! Mosquitto; plus a byte-level client for the framing cases real clients never produce
//! (a packet across many frames, several packets in one frame, pings, refused upgrades).

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::task::JoinHandle;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
const WS: &str = "[websocket]\nlisten = \"127.0.0.1:0\"\n";

async fn gate() -> Env {
    gate_with("").await
}

/// With `ws_extra` added to the `[websocket]` section.
async fn gate_with(ws_extra: &str) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!(
        "[{},{}]",
        chain_client("sensor-1", SUBJECT),
        chain_client("sensor-2", SUBJECT)
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.extra = format!("{WS}{ws_extra}");
    Env::start(pki, setup).await
}

fn ws_port(env: &Env) -> u16 {
    env.gate
        .websocket_addr()
        .expect("websocket listener")
        .port()
}

/// tests/js with MQTT.js installed (scripts/deps.sh installs it; installed here too when a
/// test runs alone). Fails, never skips, when it cannot be.
fn mqttjs() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if !dir.join("node_modules/mqtt").exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--cache"])
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/npm-cache"))
            .current_dir(&dir)
            .status()
            .expect("npm is needed for the MQTT.js tests (apt-get install npm)");
        assert!(status.success(), "npm ci in tests/js failed");
    }
    dir.join("mqttjs_client.js")
}

/// Starts MQTT.js as `name` (its certificate) with `username`; its events come as JSON lines.
fn spawn_mqttjs(
    env: &Env,
    name: &str,
    username: &str,
    version: u8,
    payload: usize,
    mode: &str,
) -> tokio::process::Child {
    spawn_mqttjs_from(env, name, username, version, payload, mode, None)
}

/// As [`spawn_mqttjs`], sending `origin` in the upgrade's `Origin` header as a browser
/// page would.
fn spawn_mqttjs_from(
    env: &Env,
    name: &str,
    username: &str,
    version: u8,
    payload: usize,
    mode: &str,
    origin: Option<&str>,
) -> tokio::process::Child {
    let script = mqttjs();
    let leaf_cert = env.pki.root.issue(&leaf(name)).unwrap();
    let (cert, key) = env.client_files(&format!("js-{name}-{version}"), &leaf_cert, &[]);
    tokio::process::Command::new("node")
        .arg(script)
        .arg(format!("wss://localhost:{}/mqtt", ws_port(env)))
        .arg(env.server_ca())
        .arg(cert)
        .arg(key)
        .arg(username)
        .arg(version.to_string())
        .arg(payload.to_string())
        .arg(mode)
        .env_remove("MQTTJS_ORIGIN")
        .envs(origin.map(|o| ("MQTTJS_ORIGIN", o)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs")
}

/// Reads the client's JSON events until `until` matches one (returned) or it exits.
async fn events_until(
    lines: &mut Lines,
    seen: &mut Vec<Value>,
    until: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).expect("one JSON object per line");
            seen.push(v.clone());
            if until(&v) {
                return Some(v);
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(40), read)
        .await
        .expect("MQTT.js answered in time")
}

async fn run_mqttjs(env: &Env, username: &str, version: u8, payload: usize) -> Vec<Value> {
    let mut child = spawn_mqttjs(env, "sensor-1", username, version, payload, "roundtrip");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    events_until(&mut lines, &mut seen, |v| v["event"] == "close").await;
    let _ = child.wait().await;
    seen
}

fn event<'a>(seen: &'a [Value], name: &str) -> Option<&'a Value> {
    seen.iter().find(|v| v["event"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_v311_and_v5_move_1_mib_byte_exact_both_ways() {
    let env = gate().await;
    for version in [4u8, 5] {
        let seen = run_mqttjs(&env, "sensor-1", version, 1 << 20).await;
        assert_eq!(
            event(&seen, "connack").map(|v| v["code"].clone()),
            Some(0.into()),
            "v{version}: {seen:?}"
        );
        let rt = event(&seen, "roundtrip").unwrap_or_else(|| panic!("v{version}: {seen:?}"));
        assert_eq!(rt["ok"], true, "v{version}: {seen:?}");
        assert_eq!(rt["bytes"], 1 << 20);
    }
    let scrape = env.gate.metrics.render();
    let sessions = metric(
        &scrape,
        "mqttgate_connections_closed_total{outcome=\"session\",reason=\"client\",transport=\"websocket\"}",
    );
    assert_eq!(sessions, Some(2.0), "{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_denied_clients_hear_not_authorized_in_their_version() {
    let env = gate().await;
    for (version, code) in [(5u8, 135), (4, 5)] {
        // sensor-1's certificate claiming another identity.
        let seen = run_mqttjs(&env, "sensor-2", version, 10).await;
        let refused = seen
            .iter()
            .find(|v| v["event"] == "error" || v["event"] == "connack")
            .unwrap_or_else(|| panic!("v{version}: {seen:?}"));
        assert_eq!(refused["code"], code, "v{version}: {seen:?}");
        assert!(event(&seen, "roundtrip").is_none());
    }
}

/// Runs tests/python/paho_client.py over WebSockets.
async fn paho_ws(env: &Env, username: &str, protocol: &str) -> Value {
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let files = env.client_files(&format!("paho-ws-{protocol}"), &s1, &[]);
    let rest = [username, protocol, "10", "/mqtt"];
    run_paho_script(env, "paho_client.py", ws_port(env), files, &rest).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_websocket_clients_round_trip_and_are_refused_like_tls_clients() {
    let env = gate().await;
    for protocol in ["v311", "v5"] {
        let r = paho_ws(&env, "sensor-1", protocol).await;
        assert_eq!(r["error"], Value::Null, "{protocol}: {r}");
        assert_eq!(r["connected"], true, "{protocol}: {r}");
        assert_eq!(r["received"], r["expected"], "{protocol}: {r}");
    }
    let r = paho_ws(&env, "sensor-2", "v5").await;
    assert_eq!(r["connected"], false, "{r}");
    assert_eq!(r["reason_code"], 135, "{r}");
}

/// A WebSocket client written out byte by byte: TLS, the upgrade, then a pump between a
/// duplex pipe (what the test reads and writes MQTT on) and the frames. Each write to the
/// pipe goes out as frames of at most `frame_size` bytes; the server's control frames are
/// returned (opcode, payload) when the connection ends.
struct WsClient {
    mqtt: DuplexStream,
    pump: JoinHandle<Vec<(u8, Vec<u8>)>>,
    ping: tokio::sync::mpsc::Sender<Vec<u8>>,
}

const MASK: [u8; 4] = [0xa1, 0x5e, 0x00, 0x7f];

fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            f.push(0x80 | 126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    f.extend(MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

/// TLS to the WebSocket listener as `name`, sends `request`, returns the HTTP answer head.
async fn http_exchange(
    env: &Env,
    name: &str,
    request: &str,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    String,
) {
    let cert = env.pki.root.issue(&leaf(name)).unwrap();
    let addr = env.gate.websocket_addr().unwrap();
    let mut tls = tls_connect(addr, &env.pki.root.cert.cert_pem, &cert, &[])
        .await
        .unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            other => panic!(
                "no complete HTTP answer ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    (tls, String::from_utf8(head).unwrap())
}

async fn ws_client(env: &Env, name: &str, frame_size: usize) -> WsClient {
    let (mut tls, head) = http_exchange(env, name, UPGRADE).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(head.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{head}");
    let (mqtt, mut inner) = tokio::io::duplex(1 << 21);
    let (ping, mut pings) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let pump = tokio::spawn(async move {
        let mut controls = Vec::new();
        let mut from_test = vec![0u8; 1 << 20];
        let mut raw: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let mut closing = false;
        loop {
            tokio::select! {
                n = inner.read(&mut from_test), if !closing => {
                    let n = n.unwrap_or(0);
                    if n == 0 {
                        // Our close frame; then read on until the server's and its EOF.
                        let _ = tls.write_all(&client_frame(0x8, true, &1000u16.to_be_bytes())).await;
                        closing = true;
                        continue;
                    }
                    let mut out = Vec::new();
                    let pieces: Vec<&[u8]> = from_test[..n].chunks(frame_size).collect();
                    for (i, p) in pieces.iter().enumerate() {
                        // One message across all the frames of this write.
                        let opcode = if i == 0 { 0x2 } else { 0x0 };
                        out.extend(client_frame(opcode, i + 1 == pieces.len(), p));
                    }
                    if tls.write_all(&out).await.is_err() { break; }
                }
                Some(p) = pings.recv() => {
                    if tls.write_all(&client_frame(0x9, true, &p)).await.is_err() { break; }
                }
                n = tls.read(&mut chunk) => {
                    let n = n.unwrap_or(0);
                    if n == 0 { break; }
                    raw.extend_from_slice(&chunk[..n]);
                    // Server frames: unmasked, FIN set (ours are never fragmented).
                    loop {
                        if raw.len() < 2 { break; }
                        assert_eq!(raw[1] & 0x80, 0, "server frames are unmasked");
                        let (len, h) = match raw[1] & 0x7f {
                            126 if raw.len() >= 4 => (u16::from_be_bytes([raw[2], raw[3]]) as usize, 4),
                            127 if raw.len() >= 10 => (u64::from_be_bytes(raw[2..10].try_into().unwrap()) as usize, 10),
                            126 | 127 => break,
                            n => (n as usize, 2),
                        };
                        if raw.len() < h + len { break; }
                        let opcode = raw[0] & 0x0f;
                        let payload = raw[h..h + len].to_vec();
                        raw.drain(..h + len);
                        if opcode == 0x2 || opcode == 0x0 {
                            if inner.write_all(&payload).await.is_err() { break; }
                        } else {
                            controls.push((opcode, payload));
                        }
                    }
                }
            }
        }
        controls
    });
    WsClient { mqtt, pump, ping }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_across_one_byte_frames_and_packets_sharing_a_frame_reach_the_broker() {
    let env = gate().await;
    // Every byte of the CONNECT in a frame of its own.
    let mut c = ws_client(&env, "sensor-1", 1).await;
    c.mqtt
        .write_all(&connect_packet(4, "split", Some("sensor-1")))
        .await
        .unwrap();
    let connack = read_packet(&mut c.mqtt, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    drop(c);

    // SUBSCRIBE and PUBLISH in one frame; the message comes back through Mosquitto.
    let mut c = ws_client(&env, "sensor-1", 1 << 20).await;
    c.mqtt
        .write_all(&connect_packet(4, "coalesced", Some("sensor-1")))
        .await
        .unwrap();
    let connack = read_packet(&mut c.mqtt, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(connack[3], 0);
    let mut both = subscribe_packet(1, "devices/sensor-1/ws", 0);
    both.extend(publish_packet(
        "devices/sensor-1/ws",
        0,
        0,
        b"one frame, two packets",
    ));
    // The broker may see the PUBLISH before it has applied the SUBSCRIBE only if it
    // reorders packets on one connection, which MQTT forbids: one write is one frame here.
    c.mqtt.write_all(&both).await.unwrap();
    let suback = read_packet(&mut c.mqtt, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(suback[0], 0x90, "{suback:02x?}");
    let publish = read_packet(&mut c.mqtt, Duration::from_secs(5))
        .await
        .unwrap();
    let (first, body) = split_packet(&publish);
    let (topic, _, payload) = parse_publish(first, body);
    assert_eq!(topic, "devices/sensor-1/ws");
    assert_eq!(payload, b"one frame, two packets");

    // A ping is answered with its payload; the session goes on.
    c.ping.send(b"are you there".to_vec()).await.unwrap();
    c.mqtt.write_all(&[0xc0, 0x00]).await.unwrap();
    let pingresp = read_packet(&mut c.mqtt, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(pingresp, [0xd0, 0x00]);
    // The client ends with DISCONNECT and a close frame; the server answers the close.
    c.mqtt.write_all(&[0xe0, 0x00]).await.unwrap();
    c.mqtt.shutdown().await.unwrap();
    drop(c.mqtt);
    let controls = tokio::time::timeout(Duration::from_secs(5), c.pump)
        .await
        .expect("the server closes")
        .unwrap();
    assert_eq!(
        controls[0],
        (0xA, b"are you there".to_vec()),
        "{controls:?}"
    );
    assert_eq!(
        controls.last().unwrap().0,
        0x8,
        "a close frame last: {controls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_get_an_http_status_and_are_counted() {
    let env = gate().await;
    let cases = [
        (
            UPGRADE.replace("/mqtt", "/other"),
            "404",
            "upgrade_not_found",
        ),
        (
            UPGRADE.replace("Upgrade: websocket\r\n", ""),
            "426",
            "upgrade_required",
        ),
        (
            UPGRADE.replace("Sec-WebSocket-Protocol: mqtt\r\n", ""),
            "400",
            "upgrade_no_subprotocol",
        ),
        (
            UPGRADE.replace("Host: localhost", &format!("X-Big: {}", "a".repeat(9000))),
            "431",
            "upgrade_too_large",
        ),
    ];
    for (request, status, label) in cases {
        let (mut tls, head) = http_exchange(&env, "sensor-1", &request).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{label}: {head}"
        );
        let (rest, closed) = read_until_close(&mut tls, Duration::from_secs(5)).await;
        assert!(
            closed && rest.is_empty(),
            "{label}: closed after the answer"
        );
        env.await_metric(
            &format!(
                "mqttgate_connections_closed_total{{outcome=\"refused\",reason=\"{label}\",transport=\"websocket\"}}"
            ),
            1.0,
        )
        .await;
    }
    // The TLS listener is not a WebSocket endpoint: an upgrade there is just a bad CONNECT.
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = tls_connect(env.addr(), &env.pki.root.cert.cert_pem, &cert, &[])
        .await
        .unwrap();
    tls.write_all(UPGRADE.as_bytes()).await.unwrap();
    let (heard, closed) = read_until_close(&mut tls, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(!heard.starts_with(b"HTTP"), "{heard:02x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_origin_is_accepted_only_when_allowed_and_clients_without_one_as_before() {
    // paho-mqtt sends the gate's own origin, accepted without listing it: the paho test
    // above runs with the default (empty) list.
    let env = gate_with("allowed_origins = [\"https://App.Example.com\"]\n").await;
    let run = |origin: Option<&'static str>| {
        let mut child = spawn_mqttjs_from(&env, "sensor-1", "sensor-1", 5, 16, "roundtrip", origin);
        async move {
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut seen = Vec::new();
            events_until(&mut lines, &mut seen, |v| v["event"] == "close").await;
            let _ = child.wait().await;
            seen
        }
    };
    // Allowed (compared case-insensitively), and absent (not a browser): served.
    for origin in [Some("https://app.example.com"), None] {
        let seen = run(origin).await;
        assert_eq!(
            event(&seen, "connack").map(|v| &v["code"]),
            Some(&0.into()),
            "{origin:?}: {seen:?}"
        );
        assert_eq!(
            event(&seen, "roundtrip").map(|v| &v["ok"]),
            Some(&true.into()),
            "{origin:?}: {seen:?}"
        );
    }
    // Another origin: refused before any MQTT byte (MQTT.js only reports the close)...
    let seen = run(Some("https://evil.example.com")).await;
    assert!(event(&seen, "connack").is_none(), "{seen:?}");
    assert!(event(&seen, "close").is_some(), "{seen:?}");
    // ...with a 403, as a byte-level client sees.
    let request = UPGRADE.replace(
        "Host: localhost\r\n",
        "Host: localhost\r\nOrigin: https://evil.example.com\r\n",
    );
    let (mut tls, head) = http_exchange(&env, "sensor-1", &request).await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let (rest, closed) = read_until_close(&mut tls, Duration::from_secs(5)).await;
    assert!(closed && rest.is_empty());
    env.await_metric(
        "mqttgate_connections_closed_total{outcome=\"refused\",reason=\"upgrade_forbidden_origin\",transport=\"websocket\"}",
        2.0,
    )
    .await;
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// MQTT.js v5 as sensor-1, connected and holding its session (CONNACK 0 checked); the
/// child lives as long as the returned handle.
async fn held_session(env: &Env) -> (tokio::process::Child, Lines, Vec<Value>) {
    let mut child = spawn_mqttjs(env, "sensor-1", "sensor-1", 5, 0, "hold");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let connack = events_until(&mut lines, &mut seen, |v| v["event"] == "connack").await;
    assert_eq!(
        connack.map(|v| v["code"].clone()),
        Some(0.into()),
        "{seen:?}"
    );
    (child, lines, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_disables_the_client_ends_its_websocket_session_with_0x98() {
    let env = gate().await;
    let (_child, mut lines, mut seen) = held_session(&env).await;

    std::fs::write(
        &env.registry_file,
        format!(
            "[{},{}]",
            r#"{"name":"sensor-1","properties":{"state":"Disabled","clientCertificateAuthentication":{"validationScheme":"SubjectMatchesAuthenticationName"}}}"#,
            chain_client("sensor-2", SUBJECT)
        ),
    )
    .unwrap();
    env.gate.reload().unwrap();
    events_until(&mut lines, &mut seen, |v| v["event"] == "close").await;
    assert_eq!(
        event(&seen, "disconnect").map(|v| v["code"].clone()),
        Some(0x98.into()),
        "{seen:?}"
    );
    env.await_metric(
        "mqttgate_connections_closed_total{outcome=\"session\",reason=\"revoked\",transport=\"websocket\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_tells_websocket_sessions_to_go_with_0x8b() {
    let env = gate().await;
    let (_child, mut lines, mut seen) = held_session(&env).await;
    let gate = env.gate.clone();
    let shutdown = tokio::spawn(async move { gate.shutdown().await });
    events_until(&mut lines, &mut seen, |v| v["event"] == "close").await;
    assert_eq!(
        event(&seen, "disconnect").map(|v| v["code"].clone()),
        Some(0x8b.into()),
        "{seen:?}"
    );
    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("shutdown finishes once the session is gone")
        .unwrap();
}
