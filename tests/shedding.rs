//! Issue 18: the caps that keep mqttgate bounded under load must not lock real clients out.
//! A flood of idle connections (silent, a partial TLS record, a byte drip) from one address
//! or from many, or on the admin port, gives way to a client that makes progress: the
//! oldest idle connection is shed to admit the newcomer.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

async fn gate(limits: &str) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.extra = format!("[limits]\n{limits}");
    Env::start(pki, setup).await
}

/// A TCP connection from `source` (any 127.0.0.0/8 address: Linux routes the whole block
/// to loopback).
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

fn series(reason: &str) -> String {
    format!("mqttgate_connections_closed_total{{outcome=\"refused\",reason=\"{reason}\",transport=\"tls\"}}")
}

/// Waits until the gate has accepted `n` connections in all.
async fn await_accepted(env: &Env, n: f64) {
    let done = eventually(Duration::from_secs(20), || {
        metric(
            &env.gate.metrics.render(),
            "mqttgate_connections_accepted_total",
        )
        .unwrap_or(0.0)
            >= n
    })
    .await;
    assert!(done, "{}", env.gate.metrics.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_from_one_address_does_not_lock_out_a_real_client_from_it() {
    // Defaults: 200 pending slots, a per-source share of 50.
    let env = gate("max_connections = 800\nconnect_timeout_ms = 20000\n").await;
    const FLOOD: usize = 300;
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let mut tcp = connect_from("127.0.0.1", env.addr()).await;
        match i % 3 {
            // Silent.
            0 => {}
            // Part of a TLS record header.
            1 => tcp.write_all(&[0x16, 0x03]).await.unwrap(),
            // A handshake record that announces 512 bytes and brings 40.
            _ => {
                let mut partial = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
                partial.resize(45, 0);
                // The peer may already have been closed: a refusal is what the old code did.
                let _ = tcp.write_all(&partial).await;
            }
        }
        flood.push(tcp);
    }
    await_accepted(&env, FLOOD as f64).await;
    // Some of them drip a byte now and then while the real client connects.
    let drip: Vec<TcpStream> = flood.drain(FLOOD - 30..).collect();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let dripping = tokio::spawn(async move {
        let mut drip = drip;
        // Until the real client is done (or 30 s, a bound on the drip).
        for _ in 0..120 {
            for s in drip.iter_mut() {
                let _ = s.write_all(&[0]).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = &mut stopped => break,
            }
        }
        drip
    });

    // mosquitto_pub connects from 127.0.0.1 like the flood.
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let (cert_file, key_file) = env.client_files("sensor-1", &cert, &[]);
    let port = env.port();
    let ca = env.server_ca();
    let out = tokio::task::spawn_blocking(move || {
        run_client(
            "mosquitto_pub",
            port,
            &ca,
            &cert_file,
            &key_file,
            &["-u", "sensor-1", "-t", "t", "-m", "hello", "-q", "1"],
        )
    })
    .await
    .unwrap();
    let _ = stop.send(());
    assert_pub_ok(&out);
    let scrape = env.gate.metrics.render();
    assert!(
        metric(&scrape, &series("shed_idle")).unwrap_or(0.0) >= 1.0,
        "{scrape}"
    );
    assert_eq!(metric(&scrape, &series("source_pending_limit")), None);
    drop(flood);
    drop(dripping.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spread_idle_flood_does_not_keep_a_fresh_address_waiting_in_the_backlog() {
    // 50 pending slots (max_connections / 4), filled by idle connections from 50 addresses.
    let env = gate("max_connections = 200\nconnect_timeout_ms = 30000\n").await;
    let mut flood = Vec::new();
    for i in 0..200 {
        let source = format!("127.0.1.{}", 1 + i % 50);
        flood.push(connect_from(&source, env.addr()).await);
    }
    // The pending cap is full: every slot is held by a silent connection.
    await_accepted(&env, 50.0).await;

    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let started = Instant::now();
    let tcp = connect_from("127.0.2.1", env.addr()).await;
    // The issue's bound: an answer within 2 s (it takes milliseconds; the old code left the
    // client in the backlog until idle ones reached their 30 s deadline).
    let tls = tokio::time::timeout(
        Duration::from_secs(2),
        tls_over(tcp, &env.pki.root.cert.cert_pem, &cert, &[]),
    )
    .await;
    let mut tls = tls
        .unwrap_or_else(|_| panic!("no TLS answer in 2 s: {}", env.gate.metrics.render()))
        .expect("the handshake succeeds");
    let handshake = started.elapsed();
    tls.write_all(&connect_packet(4, "fresh", Some("sensor-1")))
        .await
        .unwrap();
    let connack = read_packet(&mut tls, Duration::from_secs(5)).await;
    assert_eq!(connack.as_deref(), Some(&[0x20, 0x02, 0x00, 0x00][..]));
    eprintln!("tls answer after {handshake:?}");
    let scrape = env.gate.metrics.render();
    assert!(
        metric(&scrape, &series("shed_idle")).unwrap_or(0.0) >= 1.0,
        "{scrape}"
    );
    drop(flood);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_is_answered_past_a_thousand_idle_admin_connections() {
    // The default admin cap (64), and 1,000 connections that never send a request.
    let env = gate("").await;
    let admin = env.gate.admin_addr();
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(admin).await.unwrap());
    }
    // No wait for the listener to take them: the scrape queues behind them in the
    // kernel's accept queue, as a Prometheus scrape behind a flood would.
    for _ in 0..3 {
        let started = Instant::now();
        let (status, body) = admin_get(admin, "/metrics").await;
        assert_eq!(status, 200, "the scrape was closed unanswered");
        assert!(body.contains("mqttgate_connections_accepted_total"));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "answered after {:?}",
            started.elapsed()
        );
    }
    // The oldest idle connection was closed (shed, or past its header deadline).
    let mut b = [0u8; 1];
    let first = tokio::time::timeout(Duration::from_secs(2), idle[0].read(&mut b)).await;
    assert!(matches!(first, Ok(Ok(0) | Err(_))), "{first:?}");
}
