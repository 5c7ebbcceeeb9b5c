//! CRL files for registered CAs: revoked leaves refused at the handshake, other CAs
//! unaffected, the stale-CRL policy, and revocation of a live session by a CRL reload.

mod common;

use std::time::Duration;

use common::*;
use mqttgate::cli::pki::Ca;
use tokio::io::AsyncWriteExt;

const SUBJECT: &str = "SubjectMatchesAuthenticationName";

async fn env_with_cas(second_ca: Option<&Ca>) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!(
        "[{},{},{}]",
        chain_client("good", SUBJECT),
        chain_client("bad", SUBJECT),
        chain_client("other", SUBJECT)
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    if let Some(ca) = second_ca {
        setup.ca_pems.push(ca.cert.cert_pem.clone());
    }
    Env::start(pki, setup).await
}

/// mqttgate re-reads its config only at start, so CRL tests start a second instance on the
/// edited config, in front of the same broker.
async fn restart(env: &Env) -> std::sync::Arc<mqttgate::server::Server> {
    let config = mqttgate::config::Config::load(&env.config_file).unwrap();
    mqttgate::server::Server::start(config).await.unwrap()
}

/// Asserts the instance counted exactly one TLS handshake failure with `reason`. The server
/// records it just after the client sees the alert, hence the wait.
async fn assert_one_handshake_failure(
    gate: &std::sync::Arc<mqttgate::server::Server>,
    reason: &str,
) {
    let series = format!("mqttgate_tls_handshakes_total{{result=\"failed\",reason=\"{reason}\"}}");
    let g = gate.clone();
    assert!(
        eventually(Duration::from_secs(2), || metric(
            &g.metrics.render(),
            &series
        ) == Some(1.0))
        .await,
        "{}",
        gate.metrics.render()
    );
}

/// Writes `crl` as root.crl, adds it (and `tls_extra` lines) to the config's [tls].
fn configure_crl(env: &Env, crl: &[u8], tls_extra: &str) {
    std::fs::write(env.path("root.crl"), crl).unwrap();
    let text = std::fs::read_to_string(&env.config_file).unwrap().replace(
        "ca_certificates = [",
        &format!("crls = [\"root.crl\"]\n{tls_extra}ca_certificates = ["),
    );
    std::fs::write(&env.config_file, text).unwrap();
}

async fn try_connect(
    addr: std::net::SocketAddr,
    env: &Env,
    cert: &mqttgate::cli::pki::Issued,
    name: &str,
) -> Vec<u8> {
    let Ok(mut tls) = tls_connect(addr, &env.pki.root.cert.cert_pem, cert, &[]).await else {
        return Vec::new();
    };
    if tls
        .write_all(&connect_packet(4, name, Some(name)))
        .await
        .is_err()
    {
        return Vec::new();
    }
    read_until_close(&mut tls, Duration::from_millis(800))
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_leaf_is_refused_at_the_handshake_and_counted_as_revoked() {
    let env = env_with_cas(None).await;
    let good = env.pki.root.issue(&leaf("good")).unwrap();
    let bad = env.pki.root.issue(&leaf("bad")).unwrap();
    let crl = env.pki.root.crl(&[&bad], 86_400).unwrap();
    configure_crl(&env, crl.as_bytes(), "");
    let gate = restart(&env).await;

    let ok = try_connect(gate.local_addr(), &env, &good, "good").await;
    assert_eq!(&ok[..4], &[0x20, 0x02, 0x00, 0x00]);
    let refused = try_connect(gate.local_addr(), &env, &bad, "bad").await;
    assert!(
        refused.is_empty(),
        "no CONNACK for a revoked certificate: {refused:02x?}"
    );
    assert_one_handshake_failure(&gate, "revoked").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_without_a_crl_is_not_broken_by_another_cas_crl() {
    let other_ca = Ca::root("Other CA").unwrap();
    let env = env_with_cas(Some(&other_ca)).await;
    let bad = env.pki.root.issue(&leaf("bad")).unwrap();
    configure_crl(
        &env,
        env.pki.root.crl(&[&bad], 86_400).unwrap().as_bytes(),
        "",
    );
    let gate = restart(&env).await;
    let other = other_ca.issue(&leaf("other")).unwrap();
    let ok = try_connect(gate.local_addr(), &env, &other, "other").await;
    assert_eq!(&ok[..4], &[0x20, 0x02, 0x00, 0x00]);
}

async fn stale_crl_env(policy: &str) -> (Env, std::sync::Arc<mqttgate::server::Server>) {
    let env = env_with_cas(None).await;
    let bad = env.pki.root.issue(&leaf("bad")).unwrap();
    // nextUpdate a minute ago.
    let crl = env.pki.root.crl(&[&bad], -60).unwrap();
    configure_crl(&env, crl.as_bytes(), &format!("stale_crl = \"{policy}\"\n"));
    let gate = restart(&env).await;
    (env, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_crl_refuses_that_cas_clients_by_default() {
    let (env, gate) = stale_crl_env("refuse").await;
    let good = env.pki.root.issue(&leaf("good")).unwrap();
    let refused = try_connect(gate.local_addr(), &env, &good, "good").await;
    assert!(refused.is_empty(), "{refused:02x?}");
    assert_one_handshake_failure(&gate, "stale_crl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_crl_is_still_applied_under_the_ignore_policy() {
    let (env, gate) = stale_crl_env("ignore").await;
    let good = env.pki.root.issue(&leaf("good")).unwrap();
    let ok = try_connect(gate.local_addr(), &env, &good, "good").await;
    assert_eq!(&ok[..4], &[0x20, 0x02, 0x00, 0x00]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_reload_disconnects_a_live_session_whose_certificate_it_revokes() {
    let env = env_with_cas(None).await;
    let bad = env.pki.root.issue(&leaf("bad")).unwrap();
    // Start with an empty CRL, then publish one that revokes the connected client.
    configure_crl(&env, env.pki.root.crl(&[], 86_400).unwrap().as_bytes(), "");
    let gate = restart(&env).await;
    let mut tls = tls_connect(gate.local_addr(), &env.pki.root.cert.cert_pem, &bad, &[])
        .await
        .unwrap();
    tls.write_all(&connect_packet(5, "bad", Some("bad")))
        .await
        .unwrap();
    let connack = read_packet(&mut tls, Duration::from_secs(5)).await.unwrap();
    assert_eq!(connack[3], 0x00);
    std::fs::write(
        env.path("root.crl"),
        env.pki.root.crl(&[&bad], 86_400).unwrap(),
    )
    .unwrap();
    let got = read_packet(&mut tls, Duration::from_secs(3)).await;
    assert_eq!(got.as_deref(), Some(&[0xe0, 0x02, 0x98, 0x00][..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_crl_is_refused_at_start_naming_the_file() {
    let env = env_with_cas(None).await;
    configure_crl(
        &env,
        b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        "",
    );
    let config = mqttgate::config::Config::load(&env.config_file).unwrap();
    let err = match mqttgate::server::Server::start(config).await {
        Ok(_) => panic!("a bad CRL must stop the start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("root.crl"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_der_crl_file_works_like_a_pem_one() {
    use rustls_pki_types::pem::PemObject;
    let env = env_with_cas(None).await;
    let bad = env.pki.root.issue(&leaf("bad")).unwrap();
    let pem = env.pki.root.crl(&[&bad], 86_400).unwrap();
    let der =
        rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
    configure_crl(&env, der.as_ref(), "");
    let gate = restart(&env).await;
    let refused = try_connect(gate.local_addr(), &env, &bad, "bad").await;
    assert!(refused.is_empty(), "{refused:02x?}");
    let good = env.pki.root.issue(&leaf("good")).unwrap();
    let ok = try_connect(gate.local_addr(), &env, &good, "good").await;
    assert_eq!(&ok[..4], &[0x20, 0x02, 0x00, 0x00]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermediate_revoked_by_its_issuers_crl_refuses_its_leaves() {
    let env = env_with_cas(None).await;
    // The root's CRL revokes the intermediate, not the leaf: revocation covers the whole
    // presented chain (SPEC §7).
    let crl = env.pki.root.crl(&[&env.pki.inter.cert], 86_400).unwrap();
    configure_crl(&env, crl.as_bytes(), "");
    let gate = restart(&env).await;
    let leaf_cert = env.pki.inter.issue(&leaf("good")).unwrap();
    let refused = match tls_connect(
        gate.local_addr(),
        &env.pki.root.cert.cert_pem,
        &leaf_cert,
        &[&env.pki.inter.cert],
    )
    .await
    {
        Ok(mut tls) => {
            let _ = tls
                .write_all(&connect_packet(4, "good", Some("good")))
                .await;
            read_until_close(&mut tls, Duration::from_millis(800))
                .await
                .0
        }
        Err(_) => Vec::new(),
    };
    assert!(
        refused.is_empty(),
        "no CONNACK for a leaf under a revoked intermediate: {refused:02x?}"
    );
    assert_one_handshake_failure(&gate, "revoked").await;
}
