//! A session the client ends with MQTT DISCONNECT is a clean close, whatever its TLS
//! stack does next: Python's `ssl` (like many embedded stacks) closes TCP without a TLS
//! close_notify.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

/// Python's ssl module: CONNECT, read the CONNACK, DISCONNECT, close() without unwrap()
/// (no close_notify). Prints the CONNACK in hex.
const CLIENT: &str = r#"
import socket, ssl, sys
port, ca, cert, key, connect = sys.argv[1:]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port)), timeout=10),
                    server_hostname="localhost")
s.sendall(bytes.fromhex(connect))
connack = b""
while len(connack) < 4:
    chunk = s.recv(4 - len(connack))
    if not chunk:
        break
    connack += chunk
s.sendall(b"\xe0\x00")
s.close()
print(connack.hex())
"#;

fn python_disconnect_then_close(env: &Env, cert: &Path, key: &Path) -> String {
    let connect: String = connect_packet(4, "c", Some("sensor-1"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let out = Command::new("python3")
        .args(["-c", CLIENT, &env.port().to_string()])
        .arg(env.server_ca())
        .arg(cert)
        .arg(key)
        .arg(connect)
        .output()
        .expect("python3 is needed for this test");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_then_tcp_close_without_close_notify_is_a_client_close() {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    let env = Env::start(pki, setup).await;
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let (cert, key) = env.client_files("sensor-1", &s1, &[]);

    const SESSIONS: f64 = 3.0;
    for _ in 0..SESSIONS as usize {
        let connack =
            tokio::task::block_in_place(|| python_disconnect_then_close(&env, &cert, &key));
        assert_eq!(connack, "20020000");
    }
    let closed = |reason: &str| {
        metric(
            &env.gate.metrics.render(),
            &format!(
                "mqttgate_connections_closed_total{{outcome=\"session\",reason=\"{reason}\",transport=\"tls\"}}"
            ),
        )
    };
    let all_closed = || {
        ["client", "upstream", "error"]
            .iter()
            .filter_map(|r| closed(r))
            .sum::<f64>()
            == SESSIONS
    };
    assert!(
        eventually(Duration::from_secs(5), all_closed).await,
        "{}",
        env.gate.metrics.render()
    );
    assert_eq!(
        closed("client"),
        Some(SESSIONS),
        "{}",
        env.gate.metrics.render()
    );
}
