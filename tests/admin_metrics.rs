//! The admin listener and the metrics text, asserted line by line after real connections.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

async fn start(extra: &str) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!(
        "[{},{}]",
        chain_client("sensor-1", SUBJECT),
        r#"{"name":"off","properties":{"state":"Disabled"}}"#
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.extra = extra.to_string();
    Env::start(pki, setup).await
}

/// Sends `request` as written; returns the whole answer (status line on).
async fn raw_admin_text(admin: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered and closed in time");
    String::from_utf8_lossy(&out).to_string()
}

async fn raw_admin(admin: std::net::SocketAddr, request: &str) -> u16 {
    let text = raw_admin_text(admin, request).await;
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_nothing_else_is_served() {
    let mut env = start("").await;
    let admin = env.gate.admin_addr();
    assert_eq!(
        admin_get(admin, "/healthz").await,
        (200, "ok\n".to_string())
    );
    assert_eq!(
        admin_get(admin, "/readyz").await,
        (200, "ready\n".to_string())
    );
    assert_eq!(admin_get(admin, "/").await.0, 404);
    assert_eq!(admin_get(admin, "/debug/pprof").await.0, 404);
    // Only GET (and HEAD); a request head past 8 KiB is refused, not buffered.
    assert_eq!(
        raw_admin(
            admin,
            "POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
        )
        .await,
        405
    );
    let big = format!(
        "GET /metrics HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(raw_admin(admin, &big).await, 431);
    let head = raw_admin_text(admin, "HEAD /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {head:?}"
    );
    // The broker goes away: not ready within the check interval, still alive.
    env.mosquitto.stop();
    let mut status = 0;
    for _ in 0..40 {
        status = admin_get(admin, "/readyz").await.0;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 503);
    assert_eq!(admin_get(admin, "/healthz").await.0, 200);
    let scrape = admin_get(admin, "/metrics").await.1;
    assert_eq!(metric(&scrape, "mqttgate_upstream_up"), Some(0.0));
    assert_eq!(metric(&scrape, "mqttgate_ready"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_each_outcome_with_bounded_labels() {
    let env = start("").await;
    let good = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let stranger = mqttgate::cli::pki::Ca::root("Unregistered CA")
        .unwrap()
        .issue(&leaf("sensor-1"))
        .unwrap();

    // Allowed, MQTT 3.1.1, publishes once.
    let (c, k) = env.client_files("good", &good, &[]);
    let out = env.pub_(
        &c,
        &k,
        &["-u", "sensor-1", "-t", "devices/sensor-1/t", "-m", "hello"],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Denied (disabled), MQTT 5.
    let mut tls = env.tls(&good, &[]).await.unwrap();
    tls.write_all(&connect_packet(5, "x", Some("off")))
        .await
        .unwrap();
    assert_eq!(
        read_until_close(&mut tls, Duration::from_secs(3)).await.0,
        [0x20, 0x03, 0x00, 0x87, 0x00]
    );
    // TLS refusal: unknown issuer.
    if let Ok(mut t) = env.tls(&stranger, &[]).await {
        let _ = t.write_all(&connect_packet(4, "x", Some("sensor-1"))).await;
        let _ = read_until_close(&mut t, Duration::from_secs(2)).await;
    }

    let gate = env.gate.clone();
    assert!(
        eventually(Duration::from_secs(3), || {
            metric(
                &gate.metrics.render(),
                "mqttgate_connections_closed_total{outcome=\"session\",reason=\"client\",transport=\"tls\"}",
            ) == Some(1.0)
        })
        .await
    );
    let scrape = admin_get(env.gate.admin_addr(), "/metrics").await.1;
    for (series, value) in [
        ("mqttgate_connections_accepted_total", 3.0),
        ("mqttgate_connections_active", 0.0),
        ("mqttgate_tls_handshakes_total{result=\"ok\",reason=\"\"}", 2.0),
        ("mqttgate_tls_handshakes_total{result=\"failed\",reason=\"unknown_issuer\"}", 1.0),
        (
            "mqttgate_auth_decisions_total{result=\"allowed\",reason=\"\",scheme=\"subject\",source=\"username\",method=\"certificate\"}",
            1.0,
        ),
        (
            "mqttgate_auth_decisions_total{result=\"denied\",reason=\"disabled\",scheme=\"subject\",source=\"username\",method=\"certificate\"}",
            1.0,
        ),
        ("mqttgate_connacks_sent_total{sender=\"mqttgate\",protocol=\"5\",code=\"0x87\"}", 1.0),
        ("mqttgate_connacks_sent_total{sender=\"broker\",protocol=\"3.1.1\",code=\"0x00\"}", 1.0),
        ("mqttgate_upstream_dials_total{result=\"ok\"}", 1.0),
        ("mqttgate_connections_closed_total{outcome=\"refused\",reason=\"denied\",transport=\"tls\"}", 1.0),
        ("mqttgate_connections_closed_total{outcome=\"session\",reason=\"client\",transport=\"tls\"}", 1.0),
        ("mqttgate_accept_to_decision_seconds_count{outcome=\"connack_forwarded\"}", 1.0),
        ("mqttgate_accept_to_decision_seconds_count{outcome=\"refused\"}", 1.0),
        ("mqttgate_registry_clients{scheme=\"subject\",state=\"enabled\"}", 1.0),
        ("mqttgate_registry_clients{scheme=\"subject\",state=\"disabled\"}", 1.0),
        ("mqttgate_registry_clients{scheme=\"thumbprint\",state=\"enabled\"}", 0.0),
        ("mqttgate_client_certificate_days_to_expiry_count", 2.0),
        ("mqttgate_build_info{version=\"0.1.0\"}", 1.0),
        ("mqttgate_ca_certificate_expiry_timestamp_seconds{anchor=\"ca0.pem#1\"}", {
            let (_, c) = x509_parser::parse_x509_certificate(&env.pki.root.cert.der).unwrap();
            c.validity().not_after.timestamp() as f64
        }),
        ("mqttgate_server_certificate_expiry_timestamp_seconds", {
            let (_, c) = x509_parser::parse_x509_certificate(&env.pki.server.der).unwrap();
            c.validity().not_after.timestamp() as f64
        }),
    ] {
        assert_eq!(metric(&scrape, series), Some(value), "{series}\n{scrape}");
    }
    // The CONNECT and PUBLISH bytes went up; CONNACK came down.
    assert!(
        metric(
            &scrape,
            "mqttgate_relayed_bytes_total{direction=\"client_to_broker\"}"
        )
        .unwrap()
            > 20.0
    );
    assert!(
        metric(
            &scrape,
            "mqttgate_relayed_bytes_total{direction=\"broker_to_client\"}"
        )
        .unwrap()
            >= 4.0
    );
    // No client-supplied value ever becomes a label.
    assert!(
        !scrape.contains("sensor-1") && !scrape.contains("\"off\""),
        "{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_limit_tcp_is_closed_before_tls_and_counted() {
    let env = start("[limits]\nmax_connections = 1\nbusy_answers = 0\n").await;
    let good = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut held = env.tls(&good, &[]).await.unwrap();
    held.write_all(&connect_packet(4, "x", Some("sensor-1")))
        .await
        .unwrap();
    assert_eq!(
        read_packet(&mut held, Duration::from_secs(5))
            .await
            .unwrap(),
        [0x20, 0x02, 0x00, 0x00]
    );
    let refused = env.tls(&good, &[]).await;
    assert!(refused.is_err(), "no TLS past the limit");
    let scrape = env.gate.metrics.render();
    assert_eq!(
        metric(&scrape, "mqttgate_connections_refused_at_limit_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            "mqttgate_tls_handshakes_total{result=\"ok\",reason=\"\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_deadline_shows_in_metrics_when_it_fires() {
    let env = start("[limits]\nconnect_timeout_ms = 300\n").await;
    // A TCP client that never starts TLS, and a TLS client that never sends CONNECT.
    let _silent = tokio::net::TcpStream::connect(env.addr()).await.unwrap();
    let good = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut quiet = env.tls(&good, &[]).await.unwrap();
    let (bytes, closed) = read_until_close(&mut quiet, Duration::from_secs(3)).await;
    assert!(closed && bytes.is_empty());
    let gate = env.gate.clone();
    assert!(
        eventually(Duration::from_secs(3), || {
            let s = gate.metrics.render();
            metric(
                &s,
                "mqttgate_tls_handshakes_total{result=\"failed\",reason=\"timeout\"}",
            ) == Some(1.0)
                && metric(
                    &s,
                    "mqttgate_connections_closed_total{outcome=\"refused\",reason=\"connect_timeout\",transport=\"tls\"}",
                ) == Some(1.0)
        })
        .await,
        "{}",
        env.gate.metrics.render()
    );
}
