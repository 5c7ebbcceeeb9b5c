//! Graceful drain on SIGTERM, with the real binary: /readyz turns 503, the listener stops,
//! MQTT 5 sessions get DISCONNECT 0x8B, a QoS 1 publisher that reconnects to another
//! instance loses no message, and the process exits 0.

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mqttgate::mqtt::{Connect, Version};
use tokio::io::AsyncWriteExt;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
const MESSAGES: u16 = 40;

fn v5_persistent_connect(name: &str) -> Vec<u8> {
    Connect {
        version: Version::V5,
        clean_start: false,
        keep_alive: 30,
        // Session Expiry Interval 300 s, so the broker keeps the session across the move.
        properties: vec![0x11, 0x00, 0x00, 0x01, 0x2c],
        client_id: name.into(),
        will: None,
        username: Some(name.into()),
        password: None,
    }
    .encode()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_mqtt5_sessions_without_losing_qos1_messages() {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!(
        "[{},{}]",
        chain_client("pub-1", SUBJECT),
        chain_client("idle-311", SUBJECT)
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.extra = "[limits]\ndrain_timeout_ms = 1500\n".into();
    // `env.gate` is the instance clients move to; the binary below is the one we stop.
    let env = Env::start(pki, setup).await;
    let binary = env.spawn_binary("drain", &[], |c| c);
    let (gate_addr, admin_addr) = (binary.addr, binary.admin);
    assert_eq!(admin_get(admin_addr, "/readyz").await.0, 200);

    let backend = backend_sub(&env.mosquitto, "devices/pub-1/#").await;
    let root_pem = env.pki.root.cert.cert_pem.clone();
    let publisher_cert = env.pki.root.issue(&leaf("pub-1")).unwrap();
    let idle_cert = env.pki.root.issue(&leaf("idle-311")).unwrap();

    // An MQTT 3.1.1 session: no DISCONNECT can be sent to it; it flows until the drain ends.
    let mut idle = tls_connect(gate_addr, &root_pem, &idle_cert, &[])
        .await
        .unwrap();
    idle.write_all(&connect_packet(4, "idle-311", Some("idle-311")))
        .await
        .unwrap();
    assert_eq!(
        read_packet(&mut idle, Duration::from_secs(5))
            .await
            .unwrap()[3],
        0
    );

    // A stop-and-wait QoS 1 publisher: on DISCONNECT it moves to the other instance and
    // resends what was not acknowledged, as any MQTT client with a persistent session does.
    let fallback = env.addr();
    let acked = Arc::new(AtomicU16::new(0));
    let progress = acked.clone();
    let publisher = tokio::spawn(async move {
        let mut addr = gate_addr;
        let mut moved_by = None;
        let mut tls = tls_connect(addr, &root_pem, &publisher_cert, &[])
            .await
            .unwrap();
        tls.write_all(&v5_persistent_connect("pub-1"))
            .await
            .unwrap();
        assert_eq!(
            read_packet(&mut tls, Duration::from_secs(5)).await.unwrap()[3],
            0
        );
        let mut i = 1u16;
        let mut dup = false;
        while i <= MESSAGES {
            let sent = tls
                .write_all(&publish_qos1(
                    "devices/pub-1/t",
                    i,
                    format!("m{i}").as_bytes(),
                    true,
                    dup,
                ))
                .await;
            let reply = if sent.is_ok() {
                read_packet(&mut tls, Duration::from_secs(5)).await
            } else {
                None
            };
            match reply {
                Some(p) if p[0] == 0x40 && p[2..4] == i.to_be_bytes() => {
                    progress.store(i, Ordering::Relaxed);
                    i += 1;
                    dup = false;
                    // Pacing, not waiting: the stream is still flowing when SIGTERM comes.
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                other => {
                    // DISCONNECT (0x8B) or a closed stream: move over once.
                    if let Some(p) = &other {
                        assert_eq!(p[..3], [0xe0, 0x02, 0x8b], "{p:02x?}");
                        moved_by.get_or_insert(0x8bu8);
                    }
                    assert_ne!(addr, fallback, "only one move expected");
                    addr = fallback;
                    tls = tls_connect(addr, &root_pem, &publisher_cert, &[])
                        .await
                        .unwrap();
                    tls.write_all(&v5_persistent_connect("pub-1"))
                        .await
                        .unwrap();
                    let connack = read_packet(&mut tls, Duration::from_secs(5)).await.unwrap();
                    assert_eq!(connack[3], 0, "reconnect accepted");
                    dup = true;
                }
            }
        }
        moved_by
    });

    // SIGTERM mid-stream: a quarter of the messages are through.
    assert!(
        eventually(Duration::from_secs(10), || acked.load(Ordering::Relaxed)
            >= MESSAGES / 4)
        .await,
        "the publisher made no progress"
    );
    let term = Instant::now();
    binary.signal("TERM");
    // Not ready first, while sessions are still draining.
    let mut ready = 200;
    for _ in 0..20 {
        ready = admin_get(admin_addr, "/readyz").await.0;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, 503, "/readyz answers 503 while draining");
    // The listener is closed to new clients.
    assert!(
        eventually(Duration::from_secs(2), || std::net::TcpStream::connect(
            gate_addr
        )
        .is_err())
        .await
    );

    let moved_by = publisher.await.unwrap();
    assert_eq!(
        moved_by,
        Some(0x8b),
        "the MQTT 5 publisher was told 0x8B Server shutting down"
    );
    // Still draining (the 3.1.1 session holds it open): the metrics say why sessions ended.
    let scrape = admin_get(admin_addr, "/metrics").await.1;
    assert_eq!(
        metric(
            &scrape,
            "mqttgate_connections_closed_total{outcome=\"session\",reason=\"shutdown\",transport=\"tls\"}"
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(metric(&scrape, "mqttgate_ready"), Some(0.0));
    assert_eq!(metric(&scrape, "mqttgate_connections_active"), Some(1.0));
    // The 3.1.1 session kept working during the drain and was closed when it ended.
    let (_, closed) = read_until_close(&mut idle, Duration::from_secs(5)).await;
    assert!(closed);
    let status = binary.wait().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(
        term.elapsed() < Duration::from_secs(10),
        "{:?}",
        term.elapsed()
    );

    // The back end has every message (a resent one may arrive twice).
    eventually(Duration::from_secs(5), || {
        let mut seen = backend.lines();
        seen.sort();
        seen.dedup();
        seen.len() >= usize::from(MESSAGES)
    })
    .await;
    let mut lines = backend.finish();
    lines.sort();
    lines.dedup();
    let mut want: Vec<String> = (1..=MESSAGES).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(lines, want, "every QoS 1 message reached the broker");
}
