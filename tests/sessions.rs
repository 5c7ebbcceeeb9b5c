//! SPEC §10 against a real Mosquitto: sessions per authentication name (0x97 past the limit,
//! takeover by the same session name, identities that never collide upstream) and the
//! per-session connect rate (0x9F, or a close for 3.1.1).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_rustls::client::TlsStream;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

async fn gate(sessions: &str) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!(
        "[{},{}]",
        chain_client("sensor-1", SUBJECT),
        chain_client("sensor-2", SUBJECT)
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.client_id = Some("per-identity");
    setup.sessions = sessions.to_string();
    Env::start(pki, setup).await
}

/// Connects as `name` (its own certificate) with `client_id`; returns the stream and the
/// first packet heard (None: closed without one).
async fn connect(
    env: &Env,
    name: &str,
    version: u8,
    client_id: &str,
) -> (TlsStream<tokio::net::TcpStream>, Option<Vec<u8>>) {
    let cert = env.pki.root.issue(&leaf(name)).unwrap();
    let mut tls = env.tls(&cert, &[]).await.unwrap();
    tls.write_all(&connect_packet(version, client_id, Some(name)))
        .await
        .unwrap();
    let heard = read_packet(&mut tls, Duration::from_secs(5)).await;
    (tls, heard)
}

/// The session is alive: a PINGREQ gets its PINGRESP through the broker.
async fn alive(tls: &mut TlsStream<tokio::net::TcpStream>) -> bool {
    if tls.write_all(&[0xc0, 0x00]).await.is_err() {
        return false;
    }
    read_packet(tls, Duration::from_secs(3)).await.as_deref() == Some(&[0xd0, 0x00][..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_is_refused_with_quota_exceeded_and_the_same_session_takes_over() {
    let env = gate("[sessions]\nconnects_per_second = 0\n").await;
    let (mut first, heard) = connect(&env, "sensor-1", 5, "alpha").await;
    assert_eq!(
        heard.unwrap()[..4],
        [0x20, 0x0e, 0x00, 0x00],
        "Mosquitto's v5 CONNACK"
    );

    // Another session name: over Azure's default of one session per authentication name.
    let (_, heard) = connect(&env, "sensor-1", 5, "beta").await;
    assert_eq!(heard.unwrap()[..4], [0x20, 0x03, 0x00, 0x97]);
    let (_, heard) = connect(&env, "sensor-1", 4, "beta").await;
    assert_eq!(heard.unwrap(), [0x20, 0x02, 0x00, 0x03]);
    assert!(
        alive(&mut first).await,
        "the refusals left the first session alone"
    );

    // The same session name takes its session over; the broker ends the old connection.
    let (mut second, heard) = connect(&env, "sensor-1", 5, "alpha").await;
    assert_eq!(heard.unwrap()[3], 0x00);
    let (_, closed) = read_until_close(&mut first, Duration::from_secs(5)).await;
    assert!(closed, "the taken-over connection is closed");
    assert!(alive(&mut second).await);
    env.await_metric(
        "mqttgate_connections_closed_total{outcome=\"refused\",reason=\"session_quota\",transport=\"tls\"}",
        2.0,
    )
    .await;

    // Real clients: mosquitto_pub with another session name hears Quota exceeded.
    let s1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let (cert, key) = env.client_files("pub-s1", &s1, &[]);
    let o = env.pub_(
        &cert,
        &key,
        &[
            "-V",
            "5",
            "-u",
            "sensor-1",
            "-i",
            "gamma",
            "-t",
            "devices/sensor-1/x",
            "-m",
            "m",
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).to_lowercase().contains("quota exceeded"),
        "{}",
        text(&o)
    );

    // When the session ends, its place is free again.
    drop(second);
    let mut place = false;
    for _ in 0..50 {
        let (_, heard) = connect(&env, "sensor-1", 5, "delta").await;
        if heard.as_ref().is_some_and(|h| h[3] == 0) {
            place = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        place,
        "a new session name is admitted once the old session ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_id_under_two_identities_is_two_sessions_upstream() {
    let env = gate("[sessions]\nconnects_per_second = 0\n").await;
    let (mut a, heard) = connect(&env, "sensor-1", 4, "same").await;
    assert_eq!(heard.unwrap(), [0x20, 0x02, 0x00, 0x00]);
    let (mut b, heard) = connect(&env, "sensor-2", 4, "same").await;
    assert_eq!(heard.unwrap(), [0x20, 0x02, 0x00, 0x00]);
    assert!(
        alive(&mut a).await,
        "sensor-2 did not take sensor-1's session over"
    );
    assert!(alive(&mut b).await);
    let log = env.mosquitto_log();
    assert!(log.contains("as sensor-1/same"), "{log}");
    assert!(log.contains("as sensor-2/same"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_connecting_too_often_is_refused_without_slowing_others() {
    // One connect per 5 s per session: the test's own steps take far less.
    let env =
        gate("[sessions]\nconnects_per_second = 0.2\nmax_per_authentication_name = 10\n").await;
    let (first, heard) = connect(&env, "sensor-1", 5, "alpha").await;
    assert_eq!(heard.unwrap()[3], 0x00);
    drop(first);

    let (_, heard) = connect(&env, "sensor-1", 5, "alpha").await;
    assert_eq!(
        heard.unwrap()[..4],
        [0x20, 0x03, 0x00, 0x9f],
        "Connection rate exceeded"
    );
    // 3.1.1 has no code for it: the connection is closed.
    let (mut v3, heard) = connect(&env, "sensor-1", 4, "alpha").await;
    assert_eq!(heard, None);
    let (_, closed) = read_until_close(&mut v3, Duration::from_secs(3)).await;
    assert!(closed);

    // Another session of the same identity, and the same session name of another identity.
    let (_, heard) = connect(&env, "sensor-1", 5, "beta").await;
    assert_eq!(heard.unwrap()[3], 0x00);
    let (_, heard) = connect(&env, "sensor-2", 5, "alpha").await;
    assert_eq!(heard.unwrap()[3], 0x00);
    env.await_metric(
        "mqttgate_connections_closed_total{outcome=\"refused\",reason=\"connect_rate\",transport=\"tls\"}",
        2.0,
    )
    .await;
}
