//! Interoperability with an unmodified Mosquitto 2.1 as the PROXY v2 upstream (SPEC §8):
//! mqttgate sends the client's address and its authentication name as the TLS CN; the broker
//! (`enable_proxy_protocol 2`, `require_certificate true`, `use_identity_as_username true`,
//! a `%u` ACL) takes the identity from the header, whatever the CONNECT says.
//!
//! Debian has only Mosquitto 2.0, so this target builds only with `--features interop` and
//! runs from `scripts/interop.sh`, which builds 2.1 from the vendored source and passes its
//! path in `MOSQUITTO_21`. Without it the test fails: it never skips.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

struct Broker21 {
    child: Child,
    /// The listener mqttgate talks to: a PROXY v2 header required.
    proxied: u16,
    /// A plain listener for the back-end subscriber.
    plain: u16,
    log: std::path::PathBuf,
}

impl Drop for Broker21 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn mosquitto_21(dir: &std::path::Path) -> Broker21 {
    let bin = std::env::var("MOSQUITTO_21").expect(
        "MOSQUITTO_21 is not set: run scripts/interop.sh (it builds Mosquitto 2.1 from the vendored source)",
    );
    let (proxied, plain) = (free_port(), free_port());
    let acl = write(
        dir,
        "acl",
        "topic read devices/#\n\npattern readwrite devices/%u/#\n",
    );
    let conf = write(
        dir,
        "mosquitto21.conf",
        &format!(
            "per_listener_settings true\n\
             listener {proxied} 127.0.0.1\nenable_proxy_protocol 2\nrequire_certificate true\n\
             use_identity_as_username true\nallow_anonymous true\nacl_file {}\n\
             listener {plain} 127.0.0.1\nallow_anonymous true\nacl_file {}\n\
             persistence false\nlog_dest stderr\nlog_type all\n",
            acl.display(),
            acl.display()
        ),
    );
    let log = dir.join("mosquitto21.log");
    let child = Command::new(&bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let up = eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", plain)).is_ok()
    })
    .await;
    assert!(
        up,
        "mosquitto 2.1 did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Broker21 {
        child,
        proxied,
        plain,
        log,
    }
}

/// mqttgate with `setup` and `[upstream] proxy_protocol = "v2"`.
async fn gate_sending_proxy_headers(
    dir: &std::path::Path,
    pki: &Pki,
    setup: &Setup,
) -> std::sync::Arc<mqttgate::server::Server> {
    let file = write_config(dir, pki, setup, 0);
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("[upstream]\n", "[upstream]\nproxy_protocol = \"v2\"\n");
    std::fs::write(&file, text).unwrap();
    mqttgate::server::Server::start(mqttgate::config::Config::load(&file).unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_21_takes_the_identity_and_the_client_address_from_the_proxy_header() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto_21(dir.path()).await;
    let pki = Pki::new();
    let mut setup = Setup::new(&format!(
        "[{},{}]",
        chain_client("sensor-1", SUBJECT),
        chain_client("sensor-2", SUBJECT)
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.sources = vec!["ClientCertificateSubject"];
    setup.upstream = Some(format!("127.0.0.1:{}", broker.proxied));
    // The CONNECT goes as the client sent it: the broker replaces the username itself.
    setup.username = Some("passthrough");
    let gate = gate_sending_proxy_headers(dir.path(), &pki, &setup).await;

    // A back-end subscriber on the plain listener, subscribed before anything is published.
    let mut backend = Command::new(tool("mosquitto_sub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.plain.to_string(),
            "-t",
            "devices/#",
            "-q",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log_path = broker.log.clone();
    let subscribed = eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains(" devices/#"))
    })
    .await;
    assert!(
        subscribed,
        "{}",
        std::fs::read_to_string(&broker.log).unwrap_or_default()
    );

    let cert = pki.root.issue(&leaf("sensor-1")).unwrap();
    let mut tls = tls_connect(gate.local_addr(), &pki.root.cert.cert_pem, &cert, &[])
        .await
        .unwrap();
    let client_addr = tls.get_ref().0.local_addr().unwrap();
    // No username: sensor-1 by its certificate's CN.
    tls.write_all(&connect_packet(4, "cid-1", None))
        .await
        .unwrap();
    assert_eq!(
        read_packet(&mut tls, Duration::from_secs(5)).await,
        Some(vec![0x20, 2, 0, 0]),
        "{}",
        std::fs::read_to_string(&broker.log).unwrap_or_default()
    );
    // Its own topic is allowed; another identity's is not (QoS 1 so both are answered).
    tls.write_all(&publish_qos1(
        "devices/sensor-2/t",
        1,
        b"spoof",
        false,
        false,
    ))
    .await
    .unwrap();
    let _ = read_packet(&mut tls, Duration::from_secs(5)).await;
    tls.write_all(&publish_qos1(
        "devices/sensor-1/t",
        2,
        b"mine",
        false,
        false,
    ))
    .await
    .unwrap();
    assert_eq!(
        read_packet(&mut tls, Duration::from_secs(5)).await,
        Some(vec![0x40, 2, 0, 2])
    );
    // The allowed message reaches the back end; then nothing else is in flight.
    let log_path = broker.log.clone();
    let delivered = eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("'devices/sensor-1/t'"))
    })
    .await;
    assert!(delivered);
    let _ = backend.kill();
    let out = backend.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(lines.contains("mine"), "{lines}");
    assert!(
        !lines.contains("spoof"),
        "the ACL let another identity's topic through: {lines}"
    );
    let log = std::fs::read_to_string(&broker.log).unwrap();
    // The identity is the header's CN, and the address the client's own.
    assert!(
        log.contains("u'sensor-1'") && !log.contains("u'SENSOR-1'"),
        "the broker did not take the identity from the header:\n{log}"
    );
    assert!(
        log.contains(&format!("from {client_addr}")),
        "the broker did not log the client's address {client_addr}:\n{log}"
    );
}

/// SPEC §12-13: audit mode lets a would-be-denied client through, but never under a name
/// it was not verified for: its PROXY header carries its address and no SSL TLV, so a
/// Mosquitto 2.1 that requires the header's certificate identity refuses it itself,
/// while an allowed client is still asserted under its verified name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_asserts_only_verified_names_in_the_proxy_header() {
    let dir = tempfile::tempdir().unwrap();
    let broker = mosquitto_21(dir.path()).await;
    let pki = Pki::new();
    let mut setup = Setup::new(&format!(
        "[{},{}]",
        chain_client("sensor-1", SUBJECT),
        chain_client("sensor-2", SUBJECT)
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.upstream = Some(format!("127.0.0.1:{}", broker.proxied));
    setup.top = "mode = \"audit\"\n".into();
    let gate = gate_sending_proxy_headers(dir.path(), &pki, &setup).await;
    let cert = pki.root.issue(&leaf("sensor-1")).unwrap();

    // sensor-1's certificate, typing sensor-2's name: enforcing mode would deny it.
    let mut spoof = tls_connect(gate.local_addr(), &pki.root.cert.cert_pem, &cert, &[])
        .await
        .unwrap();
    spoof
        .write_all(&connect_packet(4, "spoofer", Some("sensor-2")))
        .await
        .unwrap();
    let heard = read_packet(&mut spoof, Duration::from_secs(5)).await;
    assert_ne!(
        heard,
        Some(vec![0x20, 2, 0, 0]),
        "the broker took a client mqttgate did not verify"
    );
    // The allowed client is still the header's identity.
    let mut tls = tls_connect(gate.local_addr(), &pki.root.cert.cert_pem, &cert, &[])
        .await
        .unwrap();
    tls.write_all(&connect_packet(4, "honest", Some("sensor-1")))
        .await
        .unwrap();
    assert_eq!(
        read_packet(&mut tls, Duration::from_secs(5)).await,
        Some(vec![0x20, 2, 0, 0]),
        "{}",
        std::fs::read_to_string(&broker.log).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&broker.log).unwrap();
    assert!(
        log.contains("as honest") && log.contains("u'sensor-1'"),
        "{log}"
    );
    assert!(!log.contains("u'sensor-2'"), "{log}");
}
