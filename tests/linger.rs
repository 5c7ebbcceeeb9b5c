//! SPEC §7 "Bounded": once one side of a session has closed, the other side gets a short
//! linger and is then closed, so a client that never closes can't hold a slot forever.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_closes_after_the_broker_did_is_closed_after_the_linger() {
    // A broker that answers the CONNECT, then hangs up.
    let (upstream, broker) = recording_broker().await;
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.upstream = Some(upstream);
    setup.extra = "[limits]\nlinger_ms = 300\n".into();
    let env = Env::start(pki, setup).await;
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = env.tls(&cert, &[]).await.unwrap();
    tls.write_all(&connect_packet(4, "c", Some("sensor-1")))
        .await
        .unwrap();
    assert_eq!(
        read_packet(&mut tls, Duration::from_secs(5)).await,
        Some(vec![0x20, 2, 0, 0])
    );
    broker.await.unwrap();
    // The client keeps its connection open and never closes it: mqttgate still ends the
    // session, frees its slot and counts it.
    let gate = env.gate.clone();
    let ended = eventually(Duration::from_secs(3), || {
        let s = gate.metrics.render();
        metric(
            &s,
            "mqttgate_connections_closed_total{outcome=\"session\",reason=\"upstream\",transport=\"tls\"}",
        ) == Some(1.0)
            && metric(&s, "mqttgate_connections_active") == Some(0.0)
    })
    .await;
    assert!(ended, "{}", gate.metrics.render());
    assert_eq!(
        metric(
            &gate.metrics.render(),
            "mqttgate_linger_expired_total{side=\"client\"}"
        ),
        Some(1.0)
    );
    drop(tls);
}
