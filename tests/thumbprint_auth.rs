//! SPEC §1-2: `ThumbprintMatch` clients, whose certificate is admitted by its SHA-256 pin
//! (self-signed, CA:TRUE, X.509 v1 or CA-signed alike), with real clients in front of a
//! real Mosquitto.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use mqttgate::cli::pki::Issued;
use rustls::pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// mqttgate with the given registry and no CA certificate: only pins admit a client.
async fn pinned_env(clients: &[String]) -> Env {
    let pki = Pki::new();
    Env::start(pki, Setup::new(&format!("[{}]", clients.join(",")))).await
}

fn publish_as(env: &Env, cert: &Issued, name: &str, extra: &[&str]) -> std::process::Output {
    let (c, k) = env.client_files("client", cert, &[]);
    let topic = format!("devices/{name}/t");
    let mut args = vec!["-u", name, "-t", &topic, "-m", "x"];
    args.extend_from_slice(extra);
    env.pub_(&c, &k, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_thumbprint_is_accepted() {
    let cert = self_signed(&leaf("gw-1"), false);
    let other = self_signed(&leaf("gw-1"), false);
    let env = pinned_env(&[thumbprint_client(
        "gw-1",
        &[thumbprint_of(&cert), thumbprint_of(&other)],
    )])
    .await;
    assert_accepted(&env, &cert, &[], 4, Some("gw-1")).await;
    assert_pub_ok(&publish_as(&env, &cert, "gw-1", &[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_thumbprint_is_accepted() {
    let old = self_signed(&leaf("gw-1"), false);
    let cert = self_signed(&leaf("gw-1"), false);
    let env = pinned_env(&[thumbprint_client(
        "gw-1",
        &[thumbprint_of(&old), thumbprint_of(&cert)],
    )])
    .await;
    assert_accepted(&env, &cert, &[], 5, Some("gw-1")).await;
    assert_pub_ok(&publish_as(&env, &cert, "gw-1", &[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_pinned_only_for_client_b_is_not_authorized_as_client_a() {
    let a_cert = self_signed(&leaf("gw-a"), false);
    let b_cert = self_signed(&leaf("gw-b"), false);
    let env = pinned_env(&[
        thumbprint_client("gw-a", &[thumbprint_of(&a_cert)]),
        thumbprint_client("gw-b", &[thumbprint_of(&b_cert)]),
    ])
    .await;
    // The handshake admits B's certificate (it is pinned), but it is not A's.
    assert_not_authorized(&env, &b_cert, &[], 4, Some("gw-a")).await;
    assert_not_authorized(&env, &b_cert, &[], 5, Some("gw-a")).await;
    assert_pub_not_authorised(&publish_as(&env, &b_cert, "gw-a", &[]));
    // ...while B itself is accepted with it.
    assert_accepted(&env, &b_cert, &[], 4, Some("gw-b")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_self_signed_ca_true_certificate_is_accepted() {
    // What `openssl req -x509` makes by default; webpki alone refuses CA:TRUE leaves.
    let cert = self_signed(&leaf("gw-1"), true);
    let env = pinned_env(&[thumbprint_client("gw-1", &[thumbprint_of(&cert)])]).await;
    assert_accepted(&env, &cert, &[], 4, Some("gw-1")).await;
    assert_pub_ok(&publish_as(&env, &cert, "gw-1", &[]));
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("/usr/bin/openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An X.509 v1 certificate as `openssl x509 -req -signkey` makes it (no extensions at all).
fn openssl_v1_certificate(dir: &Path, cn: &str, rsa: bool) -> Issued {
    if rsa {
        openssl(dir, &["genrsa", "-out", "v1.key", "2048"]);
    } else {
        openssl(
            dir,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "v1.key",
            ],
        );
    }
    let subj = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req", "-new", "-key", "v1.key", "-subj", &subj, "-out", "v1.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509", "-req", "-in", "v1.csr", "-signkey", "v1.key", "-days", "30", "-out", "v1.pem",
        ],
    );
    let described = openssl(dir, &["x509", "-in", "v1.pem", "-noout", "-text"]);
    assert!(described.contains("Version: 1 (0x0)"), "{described}");
    let cert_pem = std::fs::read_to_string(dir.join("v1.pem")).unwrap();
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .unwrap()
        .to_vec();
    Issued {
        cert_pem,
        key_pem: std::fs::read_to_string(dir.join("v1.key")).unwrap(),
        der,
    }
}

async fn v1_certificate_is_accepted(rsa: bool, tls_version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cert = openssl_v1_certificate(dir.path(), "legacy-gw", rsa);
    let env = pinned_env(&[thumbprint_client("legacy-gw", &[thumbprint_of(&cert)])]).await;
    let out = publish_as(&env, &cert, "legacy-gw", &["--tls-version", tls_version]);
    assert_pub_ok(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_x509_v1_p256_certificate_is_accepted_over_tls_1_2() {
    v1_certificate_is_accepted(false, "tlsv1.2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_x509_v1_p256_certificate_is_accepted_over_tls_1_3() {
    v1_certificate_is_accepted(false, "tlsv1.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_x509_v1_rsa_certificate_is_accepted_over_tls_1_2() {
    v1_certificate_is_accepted(true, "tlsv1.2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_x509_v1_rsa_certificate_is_accepted_over_tls_1_3() {
    v1_certificate_is_accepted(true, "tlsv1.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_ca_signed_certificate_that_chains_is_accepted() {
    let pki = Pki::new();
    let cert = pki.root.issue(&leaf("gw-1")).unwrap();
    let mut setup = Setup::new(&format!(
        "[{}]",
        thumbprint_client("gw-1", &[thumbprint_of(&cert)])
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    let env = Env::start(pki, setup).await;
    assert_accepted(&env, &cert, &[], 4, Some("gw-1")).await;
    assert_pub_ok(&publish_as(&env, &cert, "gw-1", &[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_expired_self_signed_certificate_is_refused_at_tls() {
    let mut spec = leaf("gw-1");
    spec.not_before = -10 * 86_400;
    spec.not_after = -86_400;
    let cert = self_signed(&spec, false);
    let env = pinned_env(&[thumbprint_client("gw-1", &[thumbprint_of(&cert)])]).await;
    assert_tls_refused(&env, &cert, &[], "CertificateExpired").await;
    assert_pub_tls_refused(&publish_as(&env, &cert, "gw-1", &[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbprint_written_uppercase_with_colons_still_matches() {
    let cert = self_signed(&leaf("gw-1"), false);
    let plain = thumbprint_of(&cert);
    let pairs: Vec<String> = plain
        .as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8_lossy(p).to_uppercase())
        .collect();
    let written = pairs.join(":");
    assert_eq!(written.len(), 64 + 31, "{written}");
    let env = pinned_env(&[thumbprint_client("gw-1", &[written])]).await;
    assert_accepted(&env, &cert, &[], 4, Some("gw-1")).await;
    assert_pub_ok(&publish_as(&env, &cert, "gw-1", &[]));
}
