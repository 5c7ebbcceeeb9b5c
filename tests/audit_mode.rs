//! SPEC §12, audit-only mode against a real Mosquitto: every decision is made, logged and
//! counted, denials as `would_deny`, and every client reaches the broker as itself.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

async fn gate() -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.top = "mode = \"audit\"\n".to_string();
    Env::start(pki, setup).await
}

/// The count of `mqttgate_auth_decisions_total` series with these leading labels.
fn decisions(scrape: &str, prefix: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("mqttgate_auth_decisions_total{{{prefix}")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_would_be_denied_client_is_let_through_as_itself_and_counted() {
    let env = gate().await;
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();

    // Claiming a name no client has: enforcing mode says Not authorized.
    let mut tls = env.tls(&cert, &[]).await.unwrap();
    tls.write_all(&connect_packet(4, "audit-1", Some("nobody")))
        .await
        .unwrap();
    let connack = read_packet(&mut tls, Duration::from_secs(5)).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "let through");
    // The broker sees the client's own username and ClientId.
    assert!(
        eventually(Duration::from_secs(5), || env
            .mosquitto_log()
            .contains("as audit-1 (p2, c1, k30, u'nobody')"))
        .await,
        "{}",
        env.mosquitto_log()
    );
    let scrape = env.gate.metrics.render();
    assert_eq!(
        decisions(&scrape, "result=\"would_deny\",reason=\"unknown_client\""),
        1.0,
        "{scrape}"
    );

    // A certificate no registered CA issued: the handshake completes, the decision says why.
    let stranger = self_signed(&leaf("stranger"), false);
    let mut tls = env
        .tls(&stranger, &[])
        .await
        .expect("audit mode refuses no handshake");
    tls.write_all(&connect_packet(5, "audit-2", Some("stranger")))
        .await
        .unwrap();
    let connack = read_packet(&mut tls, Duration::from_secs(5)).await.unwrap();
    assert_eq!(connack[3], 0x00, "{connack:02x?}");
    let scrape = env.gate.metrics.render();
    assert_eq!(decisions(&scrape, "result=\"would_deny\""), 2.0, "{scrape}");
    assert_eq!(decisions(&scrape, "result=\"denied\""), 0.0, "{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_counted_and_the_session_goes_on() {
    let env = gate().await;
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = env.tls(&cert, &[]).await.unwrap();
    tls.write_all(&connect_packet(4, "audit-3", Some("sensor-1")))
        .await
        .unwrap();
    let connack = read_packet(&mut tls, Duration::from_secs(5)).await.unwrap();
    assert_eq!(connack[3], 0x00);
    let scrape = env.gate.metrics.render();
    assert_eq!(decisions(&scrape, "result=\"allowed\""), 1.0, "{scrape}");

    std::fs::write(
        &env.registry_file,
        r#"[{"name":"sensor-1","properties":{"state":"Disabled","clientCertificateAuthentication":{"validationScheme":"SubjectMatchesAuthenticationName"}}}]"#,
    )
    .unwrap();
    env.gate.reload().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || decisions(
            &env.gate.metrics.render(),
            "result=\"would_deny\",reason=\"revoked\""
        ) == 1.0)
        .await
    );
    tls.write_all(&[0xc0, 0x00]).await.unwrap();
    let pong = read_packet(&mut tls, Duration::from_secs(3)).await;
    assert_eq!(
        pong.as_deref(),
        Some(&[0xd0, 0x00][..]),
        "the session goes on"
    );
}
