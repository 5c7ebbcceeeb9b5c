//! SPEC §7 "Bounded": connections that have not completed their CONNECT have a cap of their
//! own (and one per source address), so they can never take the slots of sessions.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

async fn gate(limits: &str) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!(
        "[{},{}]",
        chain_client("sensor-1", SUBJECT),
        chain_client("sensor-2", SUBJECT)
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.extra = format!("[limits]\n{limits}");
    Env::start(pki, setup).await
}

/// A TCP connection from `source` (any 127.0.0.0/8 address) that sends nothing.
async fn idle_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

async fn accepted_count(env: &Env) -> f64 {
    metric(
        &env.gate.metrics.render(),
        "mqttgate_connections_accepted_total",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_do_not_take_the_slots_of_sessions() {
    // The defaults for pending connections (at least 16, at least 4 from one address).
    let env = gate("max_connections = 2\n").await;
    let one = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let two = env.pki.root.issue(&leaf("sensor-2")).unwrap();
    assert_accepted(&env, &one, &[], 4, Some("sensor-1")).await;
    // As many silent TCP connections as there are session slots.
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(idle_from("127.0.0.1", env.addr()).await);
    }
    let env_ref = &env;
    assert!(
        eventually(Duration::from_secs(3), || {
            metric(
                &env_ref.gate.metrics.render(),
                "mqttgate_connections_accepted_total",
            ) == Some(3.0)
        })
        .await
    );
    // A real client still gets a session, not "server busy".
    assert_accepted(&env, &two, &[], 5, Some("sensor-2")).await;
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_address_cannot_hold_more_than_its_pending_share() {
    let env = gate("max_pending = 8\nmax_pending_per_source = 2\n").await;
    let _a = idle_from("127.0.0.1", env.addr()).await;
    let _b = idle_from("127.0.0.1", env.addr()).await;
    let env_ref = &env;
    assert!(
        eventually(Duration::from_secs(3), || {
            metric(
                &env_ref.gate.metrics.render(),
                "mqttgate_connections_accepted_total",
            ) == Some(2.0)
        })
        .await
    );
    // The third from the same address is closed at once, before any TLS work.
    let mut third = idle_from("127.0.0.1", env.addr()).await;
    let (bytes, closed) = read_until_close(&mut third, Duration::from_secs(3)).await;
    assert!(closed && bytes.is_empty(), "{bytes:02x?}");
    let scrape = env.gate.metrics.render();
    assert_eq!(
        metric(
            &scrape,
            "mqttgate_connections_closed_total{outcome=\"refused\",reason=\"source_pending_limit\",transport=\"tls\"}"
        ),
        Some(1.0),
        "{scrape}"
    );
    // Another address is unaffected.
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = socket.connect(env.addr()).await.unwrap();
    let mut tls = tls_over(tcp, &env.pki.root.cert.cert_pem, &cert, &[])
        .await
        .unwrap();
    tls.write_all(&connect_packet(4, "c", Some("sensor-1")))
        .await
        .unwrap();
    let connack = read_packet(&mut tls, Duration::from_secs(5)).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    assert_eq!(accepted_count(&env).await, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_pending_cap_new_connections_wait_in_the_backlog_until_a_slot_frees() {
    let env = gate("max_pending = 1\nconnect_timeout_ms = 800\n").await;
    let silent = idle_from("127.0.0.1", env.addr()).await;
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    // This client is not served while the silent one holds the only pending slot; it is
    // once the connect deadline has closed the silent one.
    let started = std::time::Instant::now();
    assert_accepted(&env, &cert, &[], 4, Some("sensor-1")).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "served while the pending cap was full"
    );
    drop(silent);
}
