//! SPEC §7 "Bounded": connections that have not completed their CONNECT have a cap of their
//! own, so they can never take the slots of sessions. Past it, the oldest idle one is shed
//! (a source holding its share first); with nothing idle, new ones wait in the backlog.

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
async fn a_source_holding_its_share_has_its_own_idle_connection_shed_first() {
    let env = gate("max_pending = 4\nmax_pending_per_source = 2\n").await;
    // The oldest idle connection is from another address.
    let mut elsewhere = idle_from("127.0.0.2", env.addr()).await;
    let mut flood = Vec::new();
    for _ in 0..3 {
        flood.push(idle_from("127.0.0.1", env.addr()).await);
    }
    let env_ref = &env;
    assert!(
        eventually(Duration::from_secs(5), || {
            metric(
                &env_ref.gate.metrics.render(),
                "mqttgate_connections_accepted_total",
            ) == Some(4.0)
        })
        .await
    );
    // A real client from the flooding address: past its share (it holds 3 of 4), so its
    // own oldest idle connection goes, not the older one from elsewhere.
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let tcp = idle_from("127.0.0.1", env.addr()).await;
    let mut tls = tls_over(tcp, &env.pki.root.cert.cert_pem, &cert, &[])
        .await
        .unwrap();
    tls.write_all(&connect_packet(4, "c", Some("sensor-1")))
        .await
        .unwrap();
    let connack = read_packet(&mut tls, Duration::from_secs(5)).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    let (bytes, closed) = read_until_close(&mut flood[0], Duration::from_secs(5)).await;
    assert!(closed && bytes.is_empty(), "{bytes:02x?}");
    let mut b = [0u8; 1];
    assert!(
        matches!(elsewhere.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the idle connection from elsewhere stays"
    );
    let scrape = env.gate.metrics.render();
    assert_eq!(
        metric(
            &scrape,
            "mqttgate_connections_closed_total{outcome=\"refused\",reason=\"shed_idle\",transport=\"tls\"}"
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(accepted_count(&env).await, 5.0);
    let _ = elsewhere.flush().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_a_pending_cap_of_progressing_connections_new_ones_wait_in_the_backlog() {
    let env = gate("max_pending = 1\nconnect_timeout_ms = 800\n").await;
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    // A client that finished its handshake and sent the first byte of its CONNECT: it is
    // progressing, so it is never shed, and holds the only pending slot until its deadline.
    let mut slow = env.tls(&cert, &[]).await.unwrap();
    slow.write_all(&[0x10]).await.unwrap();
    slow.flush().await.unwrap();
    // The server saw the CONNECT begin: its handshake is over (first scrape) and it is
    // progressing since (a later one), so past the idle moment after the handshake.
    let env_ref = &env;
    assert!(
        eventually(Duration::from_secs(5), || {
            let handshaken = metric(
                &env_ref.gate.metrics.render(),
                "mqttgate_tls_handshakes_total{result=\"ok\",reason=\"\"}",
            ) == Some(1.0);
            handshaken
                && metric(
                    &env_ref.gate.metrics.render(),
                    "mqttgate_connections_pending{state=\"progressing\"}",
                ) == Some(1.0)
        })
        .await,
        "the server saw the CONNECT begin"
    );
    // This client is not served while the slow one holds the only pending slot; it is
    // once the connect deadline has closed the slow one.
    let started = std::time::Instant::now();
    assert_accepted(&env, &cert, &[], 4, Some("sensor-1")).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "served while the pending cap was full of progressing connections"
    );
    let scrape = env.gate.metrics.render();
    assert_eq!(
        metric(
            &scrape,
            "mqttgate_connections_closed_total{outcome=\"refused\",reason=\"shed_idle\",transport=\"tls\"}"
        ),
        None,
        "{scrape}"
    );
    drop(slow);
}
