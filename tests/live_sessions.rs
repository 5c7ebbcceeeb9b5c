//! SPEC §5 and the reload rules: live sessions are re-decided after every reload, closed
//! at certificate expiry, and a bad reload changes nothing.

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio_rustls::client::TlsStream;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

fn registry(entries: &[String]) -> String {
    format!("[{}]", entries.join(","))
}

async fn start(entries: &[String]) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&registry(entries));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    Env::start(pki, setup).await
}

/// Connects as `name` with a byte-level client and returns the stream after CONNACK 0.
async fn connected(
    env: &Env,
    cert: &mqttgate::cli::pki::Issued,
    name: &str,
    version: u8,
) -> TlsStream<tokio::net::TcpStream> {
    let mut tls = env.tls(cert, &[]).await.unwrap();
    tls.write_all(&connect_packet(version, name, Some(name)))
        .await
        .unwrap();
    let connack = read_packet(&mut tls, Duration::from_secs(5))
        .await
        .expect("connack");
    assert_eq!(connack[0], 0x20);
    assert_eq!(connack[3], 0x00, "connack {connack:02x?}");
    tls
}

/// Publishes `n` QoS 1 messages as a v3.1.1 client, one at a time, returning how many
/// were acknowledged; `progress` follows the count as it grows.
async fn publish_all(
    tls: &mut TlsStream<tokio::net::TcpStream>,
    topic: &str,
    n: u16,
    gap: Duration,
    progress: &AtomicU16,
) -> u16 {
    let mut acked = 0;
    for i in 1..=n {
        tls.write_all(&publish_qos1(
            topic,
            i,
            format!("m{i}").as_bytes(),
            false,
            false,
        ))
        .await
        .unwrap();
        match read_packet(tls, Duration::from_secs(5)).await {
            Some(p) if p == [0x40, 0x02, (i >> 8) as u8, i as u8] => acked += 1,
            other => panic!("expected PUBACK {i}, got {other:02x?}"),
        }
        progress.store(acked, Ordering::Relaxed);
        // Pacing, not waiting: keeps the stream flowing across what the test does meanwhile.
        tokio::time::sleep(gap).await;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_connected_client_disconnects_it_and_others_keep_every_message() {
    let env = start(&[
        chain_client("sensor-1", SUBJECT),
        chain_client("sensor-2", SUBJECT),
    ])
    .await;
    let c1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let c2 = env.pki.root.issue(&leaf("sensor-2")).unwrap();
    let backend = backend_sub(&env.mosquitto, "devices/sensor-2/#").await;
    let mut s1 = connected(&env, &c1, "sensor-1", 5).await;
    let mut s2 = connected(&env, &c2, "sensor-2", 4).await;

    let progress = Arc::new(AtomicU16::new(0));
    let published = progress.clone();
    let publisher = tokio::spawn(async move {
        let gap = Duration::from_millis(20);
        let acked = publish_all(&mut s2, "devices/sensor-2/t", 60, gap, &published).await;
        (acked, s2)
    });
    // The registry changes mid-stream: some of the 60 are through.
    assert!(
        eventually(Duration::from_secs(10), || progress.load(Ordering::Relaxed)
            >= 10)
        .await,
        "the publisher made no progress"
    );
    let disabled = format!(
        r#"{{"name":"sensor-1","properties":{{"state":"Disabled","clientCertificateAuthentication":{{"validationScheme":"{SUBJECT}"}}}}}}"#
    );
    let edited = Instant::now();
    std::fs::write(
        &env.registry_file,
        registry(&[disabled, chain_client("sensor-2", SUBJECT)]),
    )
    .unwrap();

    // MQTT 5: DISCONNECT 0x98 (administrative action), then the connection closes.
    let got = read_packet(&mut s1, Duration::from_secs(3)).await;
    assert_eq!(got.as_deref(), Some(&[0xe0, 0x02, 0x98, 0x00][..]));
    let (rest, closed) = read_until_close(&mut s1, Duration::from_secs(2)).await;
    assert!(
        closed && rest.is_empty(),
        "closed {closed}, rest {rest:02x?}"
    );
    assert!(
        edited.elapsed() < Duration::from_secs(2),
        "took {:?}",
        edited.elapsed()
    );

    let (acked, _s2) = publisher.await.unwrap();
    assert_eq!(acked, 60);
    // The back end has all 60 (the assertion below says which are missing, if any).
    eventually(Duration::from_secs(5), || backend.lines().len() >= 60).await;
    let lines = backend.finish();
    let want: Vec<String> = (1..=60).map(|i| format!("m{i}")).collect();
    assert_eq!(
        lines, want,
        "the unaffected client's messages all arrived, in order"
    );

    let scrape = env.gate.metrics.render();
    assert_eq!(
        metric(
            &scrape,
            "mqttgate_connections_closed_total{outcome=\"session\",reason=\"revoked\",transport=\"tls\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            "mqttgate_reloads_total{component=\"all\",result=\"success\"}"
        ),
        Some(1.0)
    );
    // A new connection as sensor-1 is refused now.
    let mut again = env.tls(&c1, &[]).await.unwrap();
    again
        .write_all(&connect_packet(4, "x", Some("sensor-1")))
        .await
        .unwrap();
    let (bytes, _) = read_until_close(&mut again, Duration::from_secs(3)).await;
    assert_eq!(bytes, [0x20, 0x02, 0x00, 0x05]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_thumbprint_disconnects_the_pinned_client() {
    let pki = Pki::new();
    let gw = self_signed(&leaf("gw"), false);
    let mut setup = Setup::new(&registry(&[thumbprint_client("gw", &[thumbprint_of(&gw)])]));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    let env = Env::start(pki, setup).await;
    let mut s = connected(&env, &gw, "gw", 5).await;
    let other = "00".repeat(32);
    std::fs::write(
        &env.registry_file,
        registry(&[thumbprint_client("gw", &[other])]),
    )
    .unwrap();
    let got = read_packet(&mut s, Duration::from_secs(3)).await;
    assert_eq!(got.as_deref(), Some(&[0xe0, 0x02, 0x98, 0x00][..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_closed_when_its_certificate_expires() {
    let env = start(&[chain_client("short-lived", SUBJECT)]).await;
    let mut spec = leaf("short-lived");
    spec.not_after = 3;
    let cert = env.pki.root.issue(&spec).unwrap();
    let mut s = connected(&env, &cert, "short-lived", 5).await;
    let started = Instant::now();
    let got = read_packet(&mut s, Duration::from_secs(8)).await;
    assert_eq!(got.as_deref(), Some(&[0xe0, 0x02, 0x98, 0x00][..]));
    assert!(
        started.elapsed() <= Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let scrape = env.gate.metrics.render();
    assert_eq!(
        metric(
            &scrape,
            "mqttgate_connections_closed_total{outcome=\"session\",reason=\"certificate_expired\",transport=\"tls\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_registry_file_leaves_service_unchanged() {
    let env = start(&[chain_client("sensor-1", SUBJECT)]).await;
    let c1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut live = connected(&env, &c1, "sensor-1", 4).await;
    std::fs::write(&env.registry_file, "[{\"name\": \"sensor-1\", ").unwrap();
    let gate = env.gate.clone();
    assert!(
        eventually(Duration::from_secs(3), || {
            metric(
                &gate.metrics.render(),
                "mqttgate_reloads_total{component=\"registry\",result=\"failure\"}",
            ) == Some(1.0)
        })
        .await,
        "the failed reload is counted"
    );
    // The live session still works...
    assert_eq!(
        publish_all(
            &mut live,
            "devices/sensor-1/t",
            3,
            Duration::ZERO,
            &AtomicU16::new(0)
        )
        .await,
        3
    );
    // ...and new connections are decided by the previous registry.
    let (cert, key) = env.client_files("s1", &c1, &[]);
    let out = env.pub_(
        &cert,
        &key,
        &["-u", "sensor-1", "-t", "devices/sensor-1/a", "-m", "x"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env.gate.trust().generation, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_style_symlink_swap_is_reloaded() {
    let env = start(&[chain_client("sensor-1", SUBJECT)]).await;
    let dir = env.dir.path();
    // Lay the registry out the way the kubelet mounts a ConfigMap.
    let v1 = dir.join("..2026_11_24_v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::copy(&env.registry_file, v1.join("clients.json")).unwrap();
    std::os::unix::fs::symlink("..2026_11_24_v1", dir.join("..data")).unwrap();
    // Replace the plain file by the symlink atomically, so the watcher never sees it missing.
    std::os::unix::fs::symlink("..data/clients.json", dir.join("clients.json.tmp")).unwrap();
    std::fs::rename(dir.join("clients.json.tmp"), &env.registry_file).unwrap();
    // Nothing to wait for: the swap must change nothing for longer than two 200 ms watch
    // intervals, so the time passing is what is tested.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.gate.trust().generation, 1, "same content: no reload");

    let v2 = dir.join("..2026_11_24_v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(
        v2.join("clients.json"),
        registry(&[
            chain_client("sensor-1", SUBJECT),
            chain_client("sensor-3", SUBJECT),
        ]),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_11_24_v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();

    let gate = env.gate.clone();
    assert!(
        eventually(Duration::from_secs(3), || gate
            .trust()
            .registry
            .get("sensor-3")
            .is_some())
        .await
    );
    let c3 = env.pki.root.issue(&leaf("sensor-3")).unwrap();
    let (cert, key) = env.client_files("s3", &c3, &[]);
    let out = env.pub_(
        &cert,
        &key,
        &["-u", "sensor-3", "-t", "devices/sensor-3/a", "-m", "x"],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_ca_disconnects_its_chain_clients() {
    let pki = Pki::new();
    let other = mqttgate::cli::pki::Ca::root("Other CA").unwrap();
    let mut setup = Setup::new(&registry(&[chain_client("sensor-1", SUBJECT)]));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    let env = Env::start(pki, setup).await;
    let c1 = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut s = connected(&env, &c1, "sensor-1", 5).await;
    // Replace the registered CA with an unrelated one.
    std::fs::write(env.path("ca0.pem"), &other.cert.cert_pem).unwrap();
    let got = read_packet(&mut s, Duration::from_secs(3)).await;
    assert_eq!(got.as_deref(), Some(&[0xe0, 0x02, 0x98, 0x00][..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_style_reload_reports_the_new_generation() {
    let env = start(&[chain_client("sensor-1", SUBJECT)]).await;
    assert_eq!(env.gate.reload().unwrap(), 2);
    std::fs::write(&env.registry_file, "not json").unwrap();
    let err = env.gate.reload().unwrap_err().to_string();
    assert!(err.contains("clients.json"), "{err}");
    assert_eq!(env.gate.trust().generation, 2);
}
