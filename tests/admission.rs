//! SPEC §7: trust that cannot be outrun. A decision is made against the trust state that is
//! current when the CONNECT is complete, on every handshake (resumed or not), with CA
//! certificates that stop admitting at their notAfter; and every accepted connection ends in
//! exactly one recorded outcome.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mqttgate::cli::pki::{Ca, Issued};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

fn disabled_client(name: &str) -> String {
    chain_client(name, SUBJECT).replace("\"Enabled\"", "\"Disabled\"")
}

/// A client configuration that keeps TLS sessions, so a second connection made with it
/// resumes the first one's session.
fn resuming_client(env: &Env, leaf: &Issued, chain: &[&Issued]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(env.pki.root.cert.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut certs = vec![CertificateDer::from(leaf.der.clone())];
    certs.extend(chain.iter().map(|c| CertificateDer::from(c.der.clone())));
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(mqttgate::trust::verifier::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    Arc::new(config)
}

/// Connects with `config`, sends a v3.1.1 CONNECT for `name` and returns what came back
/// before the server closed or 3 s passed (empty when the handshake failed), and whether the
/// TLS session was resumed.
async fn connect_with(
    env: &Env,
    config: &Arc<rustls::ClientConfig>,
    name: &str,
) -> (Vec<u8>, bool) {
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let tcp = TcpStream::connect(env.addr()).await.unwrap();
    let Ok(mut tls) = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    else {
        return (Vec::new(), false);
    };
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    if tls
        .write_all(&connect_packet(4, name, Some(name)))
        .await
        .is_err()
    {
        return (Vec::new(), resumed);
    }
    let mut heard = Vec::new();
    if let Some(connack) = read_packet(&mut tls, Duration::from_secs(3)).await {
        heard = connack;
    }
    // An accepted client says goodbye properly, so the session ends as a clean close.
    if heard.get(3) == Some(&0) {
        let _ = tls.write_all(&[0xe0, 0x00]).await;
        let _ = tls.shutdown().await;
    }
    (heard, resumed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_disabled_after_its_handshake_is_refused_at_connect_and_nothing_reaches_the_broker(
) {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    let env = Env::start(pki, setup).await;
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let dials_before = metric(
        &env.gate.metrics.render(),
        "mqttgate_upstream_dials_total{result=\"ok\"}",
    )
    .unwrap_or(0.0);

    // The handshake completes under a state in which sensor-1 is enabled...
    let mut tls = env.tls(&cert, &[]).await.unwrap();
    // ...then sensor-1 is disabled before its CONNECT arrives.
    std::fs::write(
        &env.registry_file,
        format!("[{}]", disabled_client("sensor-1")),
    )
    .unwrap();
    env.gate.reload().unwrap();
    let mut first = connect_packet(4, "sensor-1", Some("sensor-1"));
    first.extend(publish_packet("devices/sensor-1/t", 0, 0, b"pipelined"));
    tls.write_all(&first).await.unwrap();

    let (heard, closed) = read_until_close(&mut tls, Duration::from_secs(3)).await;
    assert_eq!(heard, NOT_AUTHORIZED_V311, "the newest state decides");
    assert!(closed);
    let dials_after = metric(
        &env.gate.metrics.render(),
        "mqttgate_upstream_dials_total{result=\"ok\"}",
    )
    .unwrap_or(0.0);
    assert_eq!(dials_after, dials_before, "the broker was never dialled");
}

/// A CA certificate valid for only a few more seconds registers the clients' issuer.
struct ShortLivedCa {
    env: Env,
    ca: Ca,
    /// Unix seconds at which the CA expires.
    not_after: i64,
}

async fn short_lived_ca(seconds: i64, extra_clients: &[String]) -> ShortLivedCa {
    let pki = Pki::new();
    let ca = Ca::root_with_validity("Short-lived CA", -3600, seconds).unwrap();
    // The certificate's own date, not a clock read taken later (they can differ by a second).
    let not_after = mqttgate::trust::cert::CertInfo::parse(&ca.cert.der)
        .unwrap()
        .not_after;
    let mut entries = vec![chain_client("sensor-1", SUBJECT)];
    entries.extend_from_slice(extra_clients);
    let mut setup = Setup::new(&format!("[{}]", entries.join(",")));
    setup.ca_pems = vec![ca.cert.cert_pem.clone(), pki.root.cert.cert_pem.clone()];
    let env = Env::start(pki, setup).await;
    ShortLivedCa { env, ca, not_after }
}

async fn until_unix(t: i64) {
    let wait = Duration::from_secs((t - mqttgate::trust::unix_now()).max(0) as u64 + 5);
    // Certificate times have one-second resolution and "after notAfter" is strict.
    assert!(
        eventually(wait, || mqttgate::trust::unix_now() > t).await,
        "the clock did not pass {t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_ca_stops_admitting_at_its_not_after_and_its_sessions_close() {
    let s = short_lived_ca(4, &[]).await;
    // The leaf outlives its CA: only the CA's date can stop it.
    let mut spec = leaf("sensor-1");
    spec.not_after = 86_400;
    let cert = s.ca.issue(&spec).unwrap();
    let mut live = s.env.tls(&cert, &[]).await.unwrap();
    live.write_all(&connect_packet(5, "sensor-1", Some("sensor-1")))
        .await
        .unwrap();
    let connack = read_packet(&mut live, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(connack[3], 0x00);

    // The session is closed once the CA has expired, with a v5 DISCONNECT.
    let (heard, closed) = read_until_close(&mut live, Duration::from_secs(10)).await;
    assert!(
        mqttgate::trust::unix_now() >= s.not_after,
        "closed before the CA expired"
    );
    assert!(closed, "the session outlived its CA");
    assert_eq!(heard, [0xe0, 0x02, 0x98, 0x00]);

    // And a new connection is refused at the handshake.
    assert_tls_refused(&s.env, &cert, &[], "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_tls_session_is_checked_like_a_full_handshake() {
    let s = short_lived_ca(4, &[]).await;
    let mut spec = leaf("sensor-1");
    spec.not_after = 86_400;
    let cert = s.ca.issue(&spec).unwrap();
    let config = resuming_client(&s.env, &cert, &[]);
    let (heard, resumed) = connect_with(&s.env, &config, "sensor-1").await;
    assert_eq!(heard, [0x20, 0x02, 0x00, 0x00]);
    assert!(!resumed);

    until_unix(s.not_after).await;
    let (heard, resumed) = connect_with(&s.env, &config, "sensor-1").await;
    assert!(
        resumed,
        "the second connection resumes the first one's TLS session"
    );
    assert!(
        heard.is_empty(),
        "a resumed session whose CA has expired is refused without a CONNACK: {heard:02x?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_ca_in_a_reload_is_skipped_and_disabling_a_client_still_works() {
    let s = short_lived_ca(3, &[chain_client("sensor-2", SUBJECT)]).await;
    let other = s.env.pki.root.issue(&leaf("sensor-2")).unwrap();
    assert_accepted(&s.env, &other, &[], 4, Some("sensor-2")).await;
    until_unix(s.not_after).await;

    std::fs::write(
        &s.env.registry_file,
        format!(
            "[{},{}]",
            chain_client("sensor-1", SUBJECT),
            disabled_client("sensor-2")
        ),
    )
    .unwrap();
    let reloaded = s.env.gate.reload();
    assert!(reloaded.is_ok(), "{reloaded:?}");
    assert_not_authorized(&s.env, &other, &[], 4, Some("sensor-2")).await;
    let scrape = s.env.gate.metrics.render();
    assert_eq!(
        metric(
            &scrape,
            "mqttgate_ca_certificates_skipped{reason=\"expired\"}"
        ),
        Some(1.0),
        "{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_connection_ends_in_exactly_one_recorded_outcome() {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("sensor-1", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.extra = "[limits]\nconnect_timeout_ms = 500\n".into();
    let env = Env::start(pki, setup).await;
    let good = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    let stranger = Ca::root("Stranger CA")
        .unwrap()
        .issue(&leaf("sensor-1"))
        .unwrap();

    // A TLS failure, a handshake that never starts, a denial and a closed session.
    assert_tls_refused(&env, &stranger, &[], "UnknownCA").await;
    let silent = TcpStream::connect(env.addr()).await.unwrap();
    assert_not_authorized(&env, &good, &[], 5, Some("nobody")).await;
    let config = resuming_client(&env, &good, &[]);
    let (heard, _) = connect_with(&env, &config, "sensor-1").await;
    assert_eq!(heard, [0x20, 0x02, 0x00, 0x00]);

    let gate = env.gate.clone();
    let settled = eventually(Duration::from_secs(5), || {
        metric(&gate.metrics.render(), "mqttgate_connections_active") == Some(0.0)
    })
    .await;
    drop(silent);
    assert!(settled, "{}", gate.metrics.render());
    let scrape = gate.metrics.render();
    let accepted = metric(&scrape, "mqttgate_connections_accepted_total").unwrap();
    let outcomes: f64 = scrape
        .lines()
        .filter(|l| l.starts_with("mqttgate_connections_closed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(accepted, 4.0, "{scrape}");
    assert_eq!(outcomes, accepted, "one outcome per connection:\n{scrape}");
    for series in [
        "mqttgate_connections_closed_total{outcome=\"tls_failure\",reason=\"unknown_issuer\",transport=\"tls\"}",
        "mqttgate_connections_closed_total{outcome=\"tls_failure\",reason=\"timeout\",transport=\"tls\"}",
        "mqttgate_connections_closed_total{outcome=\"refused\",reason=\"denied\",transport=\"tls\"}",
        "mqttgate_connections_closed_total{outcome=\"session\",reason=\"client\",transport=\"tls\"}",
    ] {
        assert_eq!(metric(&scrape, series), Some(1.0), "{series}\n{scrape}");
    }
}
