//! SPEC §2: the five `…MatchesAuthenticationName` schemes, trust anchors and the checks the
//! TLS handshake makes on a chained leaf, with real clients in front of a real Mosquitto.

mod common;

use common::*;
use mqttgate::cli::pki::{Eku, KeyKind, LeafSpec};

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
const DNS: &str = "DnsMatchesAuthenticationName";
const URI: &str = "UriMatchesAuthenticationName";
const IP: &str = "IpMatchesAuthenticationName";
const EMAIL: &str = "EmailMatchesAuthenticationName";

/// mqttgate with one client `name` of `scheme` and the given CA certificates registered.
async fn env_with(name: &str, scheme: &str, cas: &[&str]) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client(name, scheme)));
    setup.ca_pems = cas
        .iter()
        .map(|which| match *which {
            "root" => pki.root.cert.cert_pem.clone(),
            "inter" => pki.inter.cert.cert_pem.clone(),
            other => panic!("unknown CA {other}"),
        })
        .collect();
    Env::start(pki, setup).await
}

async fn root_env(name: &str, scheme: &str) -> Env {
    env_with(name, scheme, &["root"]).await
}

/// A root-issued leaf with CN "device" and the given SANs.
fn spec_with(f: impl FnOnce(&mut LeafSpec)) -> LeafSpec {
    let mut s = leaf("device");
    f(&mut s);
    s
}

/// mosquitto_pub (v3.1.1) as `name`, publishing one message on the client's own topic.
fn publish_as(
    env: &Env,
    file: &str,
    cert: &mqttgate::cli::pki::Issued,
    name: &str,
) -> std::process::Output {
    let (c, k) = env.client_files(file, cert, &[]);
    let topic = format!("devices/{name}/t");
    env.pub_(
        &c,
        &k,
        &["-u", name, "-t", &topic, "-m", "x", "-V", "mqttv311"],
    )
}

// --- Subject ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_scheme_allows_a_cn_equal_to_the_authentication_name() {
    let env = root_env("sensor-1", SUBJECT).await;
    let cert = env.pki.root.issue(&leaf("sensor-1")).unwrap();
    assert_pub_ok(&publish_as(&env, "c", &cert, "sensor-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_scheme_denies_a_cn_that_differs_from_the_authentication_name() {
    let env = root_env("sensor-1", SUBJECT).await;
    let cert = env.pki.root.issue(&leaf("sensor-2")).unwrap();
    assert_not_authorized(&env, &cert, &[], 4, Some("sensor-1")).await;
    assert_pub_not_authorised(&publish_as(&env, "c", &cert, "sensor-1"));
}

// --- DNS -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_scheme_allows_any_dns_san_equal_ignoring_case() {
    let name = "sensor-1.plant.example.com";
    let env = root_env(name, DNS).await;
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.dns = vec![
                "first.example.com".into(),
                "Sensor-1.PLANT.example.com".into(),
            ]
        }))
        .unwrap();
    assert_pub_ok(&publish_as(&env, "c", &cert, name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_scheme_denies_when_no_dns_san_equals_the_name() {
    let name = "sensor-1.plant.example.com";
    let env = root_env(name, DNS).await;
    // The CN holds the name, but the scheme only looks at DNS SANs.
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.cn = Some(name.into());
            s.dns = vec!["sensor-2.plant.example.com".into()]
        }))
        .unwrap();
    assert_not_authorized(&env, &cert, &[], 4, Some(name)).await;
    assert_pub_not_authorised(&publish_as(&env, "c", &cert, name));
}

// --- URI -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_scheme_allows_any_uri_san_equal_ignoring_case() {
    let name = "spiffe://plant/sensor-1";
    let env = root_env(name, URI).await;
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.uris = vec![
                "https://example.com/first".into(),
                "spiffe://plant/SENSOR-1".into(),
            ]
        }))
        .unwrap();
    assert_accepted(&env, &cert, &[], 4, Some(name)).await;
    // mosquitto_pub's topic can't hold the URI's "//" usefully, but the CONNECT is what
    // counts here.
    let (c, k) = env.client_files("c", &cert, &[]);
    assert_pub_ok(&env.pub_(&c, &k, &["-u", name, "-t", "t", "-m", "x"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_scheme_denies_when_no_uri_san_equals_the_name() {
    let name = "spiffe://plant/sensor-1";
    let env = root_env(name, URI).await;
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.uris = vec!["spiffe://plant/sensor-2".into()];
            s.dns = vec!["plant".into()];
        }))
        .unwrap();
    assert_not_authorized(&env, &cert, &[], 4, Some(name)).await;
    assert_not_authorized(&env, &cert, &[], 5, Some(name)).await;
}

// --- IP --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_scheme_compares_addresses_as_binary_values() {
    let name = "2001:0db8:0:0:0:0:0:7";
    let env = root_env(name, IP).await;
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.ips = vec!["10.0.0.1".parse().unwrap(), "2001:db8::7".parse().unwrap()]
        }))
        .unwrap();
    assert_pub_ok(&publish_as(&env, "c", &cert, name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_scheme_denies_when_no_ip_san_equals_the_name() {
    let name = "2001:0db8:0:0:0:0:0:7";
    let env = root_env(name, IP).await;
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.cn = Some(name.into());
            s.ips = vec!["2001:db8::8".parse().unwrap()]
        }))
        .unwrap();
    assert_not_authorized(&env, &cert, &[], 4, Some(name)).await;
    assert_pub_not_authorised(&publish_as(&env, "c", &cert, name));
}

// --- Email -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_scheme_allows_any_email_san_equal_ignoring_case() {
    let name = "sensor-1@plant.example.com";
    let env = root_env(name, EMAIL).await;
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.emails = vec![
                "first@example.com".into(),
                "Sensor-1@Plant.Example.COM".into(),
            ]
        }))
        .unwrap();
    assert_pub_ok(&publish_as(&env, "c", &cert, name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_scheme_denies_when_no_email_san_equals_the_name() {
    let name = "sensor-1@plant.example.com";
    let env = root_env(name, EMAIL).await;
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.cn = Some(name.into());
            s.emails = vec!["sensor-2@plant.example.com".into()]
        }))
        .unwrap();
    assert_not_authorized(&env, &cert, &[], 4, Some(name)).await;
    assert_pub_not_authorised(&publish_as(&env, "c", &cert, name));
}

// --- Trust anchors ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_intermediate_alone_admits_a_leaf_sent_without_chain() {
    let env = env_with("sensor-1", SUBJECT, &["inter"]).await;
    let cert = env.pki.inter.issue(&leaf("sensor-1")).unwrap();
    assert_accepted(&env, &cert, &[], 4, Some("sensor-1")).await;
    assert_pub_ok(&publish_as(&env, "c", &cert, "sensor-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_root_admits_a_leaf_sent_with_its_intermediate() {
    let env = root_env("sensor-1", SUBJECT).await;
    let cert = env.pki.inter.issue(&leaf("sensor-1")).unwrap();
    let inter = env.pki.inter.cert.clone();
    assert_accepted(&env, &cert, &[&inter], 4, Some("sensor-1")).await;
    let (c, k) = env.client_files("c", &cert, &[&inter]);
    assert_pub_ok(&env.pub_(
        &c,
        &k,
        &["-u", "sensor-1", "-t", "devices/sensor-1/t", "-m", "x"],
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_root_refuses_at_tls_a_leaf_sent_without_its_intermediate() {
    let env = root_env("sensor-1", SUBJECT).await;
    let cert = env.pki.inter.issue(&leaf("sensor-1")).unwrap();
    assert_tls_refused(&env, &cert, &[], "UnknownCA").await;
    assert_pub_tls_refused(&publish_as(&env, "c", &cert, "sensor-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_an_unregistered_ca_is_refused_at_tls() {
    let env = root_env("sensor-1", SUBJECT).await;
    let other = mqttgate::cli::pki::Ca::root("Other Root CA").unwrap();
    let cert = other.issue(&leaf("sensor-1")).unwrap();
    assert_tls_refused(&env, &cert, &[], "UnknownCA").await;
    assert_pub_tls_refused(&publish_as(&env, "c", &cert, "sensor-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_certificate_with_the_right_cn_is_refused_at_tls_for_a_chain_client() {
    let env = root_env("sensor-1", SUBJECT).await;
    let cert = self_signed(&leaf("sensor-1"), false);
    assert_tls_refused(&env, &cert, &[], "UnknownCA").await;
    assert_pub_tls_refused(&publish_as(&env, "c", &cert, "sensor-1"));
}

// --- Validity period and EKU -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leaf_is_refused_at_tls() {
    let env = root_env("sensor-1", SUBJECT).await;
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.cn = Some("sensor-1".into());
            s.not_before = -10 * 86_400;
            s.not_after = -86_400;
        }))
        .unwrap();
    assert_tls_refused(&env, &cert, &[], "CertificateExpired").await;
    assert_pub_tls_refused(&publish_as(&env, "c", &cert, "sensor-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yet_valid_leaf_is_refused_at_tls() {
    // rustls sends certificate_expired for both ends of the validity period.
    let env = root_env("sensor-1", SUBJECT).await;
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.cn = Some("sensor-1".into());
            s.not_before = 86_400;
            s.not_after = 10 * 86_400;
        }))
        .unwrap();
    assert_tls_refused(&env, &cert, &[], "CertificateExpired").await;
    assert_pub_tls_refused(&publish_as(&env, "c", &cert, "sensor-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_with_only_server_auth_eku_is_refused_at_tls() {
    let env = root_env("sensor-1", SUBJECT).await;
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.cn = Some("sensor-1".into());
            s.eku = Eku::ServerAuth;
        }))
        .unwrap();
    assert_tls_refused(&env, &cert, &[], "UnsupportedCertificate").await;
    assert_pub_tls_refused(&publish_as(&env, "c", &cert, "sensor-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_without_an_eku_extension_is_allowed() {
    let env = root_env("sensor-1", SUBJECT).await;
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.cn = Some("sensor-1".into());
            s.eku = Eku::None;
        }))
        .unwrap();
    assert_accepted(&env, &cert, &[], 4, Some("sensor-1")).await;
    assert_pub_ok(&publish_as(&env, "c", &cert, "sensor-1"));
}

// --- Key types -------------------------------------------------------------------------

async fn key_type_is_allowed_with_mosquitto_pub(key: KeyKind) {
    let env = root_env("sensor-1", SUBJECT).await;
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.cn = Some("sensor-1".into());
            s.key = key;
        }))
        .unwrap();
    let (c, k) = env.client_files("c", &cert, &[]);
    // rcgen's Ed25519 key file is PKCS#8 v2, which mosquitto_pub's OpenSSL can't read.
    std::fs::write(&k, openssl_loadable_key(&cert.key_pem)).unwrap();
    for tls in ["tlsv1.2", "tlsv1.3"] {
        let out = env.pub_(
            &c,
            &k,
            &[
                "-u",
                "sensor-1",
                "-t",
                "devices/sensor-1/t",
                "-m",
                "x",
                "--tls-version",
                tls,
            ],
        );
        assert!(out.status.success(), "{key:?} over {tls}: {}", text(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_2048_client_key_is_allowed() {
    key_type_is_allowed_with_mosquitto_pub(KeyKind::Rsa2048).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p256_client_key_is_allowed() {
    key_type_is_allowed_with_mosquitto_pub(KeyKind::P256).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p384_client_key_is_allowed() {
    key_type_is_allowed_with_mosquitto_pub(KeyKind::P384).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_client_key_is_allowed() {
    key_type_is_allowed_with_mosquitto_pub(KeyKind::Ed25519).await;
    let env = root_env("sensor-1", SUBJECT).await;
    let cert = env
        .pki
        .root
        .issue(&spec_with(|s| {
            s.cn = Some("sensor-1".into());
            s.key = KeyKind::Ed25519;
        }))
        .unwrap();
    assert_accepted(&env, &cert, &[], 4, Some("sensor-1")).await;
}

// --- A chained leaf used with ThumbprintMatch ------------------------------------------

async fn chained_leaf_with_other_thumbprint() -> (Env, mqttgate::cli::pki::Issued) {
    let pki = Pki::new();
    let cert = pki.root.issue(&leaf("gw-1")).unwrap();
    let other = pki.root.issue(&leaf("gw-1")).unwrap();
    let mut setup = Setup::new(&format!(
        "[{}]",
        thumbprint_client("gw-1", &[thumbprint_of(&other)])
    ));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    (Env::start(pki, setup).await, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_leaf_of_a_thumbprint_client_with_another_thumbprint_is_not_authorized_v311() {
    let (env, cert) = chained_leaf_with_other_thumbprint().await;
    assert_not_authorized(&env, &cert, &[], 4, Some("gw-1")).await;
    assert_pub_not_authorised(&publish_as(&env, "c", &cert, "gw-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_leaf_of_a_thumbprint_client_with_another_thumbprint_is_not_authorized_v5() {
    let (env, cert) = chained_leaf_with_other_thumbprint().await;
    assert_not_authorized(&env, &cert, &[], 5, Some("gw-1")).await;
    let (c, k) = env.client_files("c", &cert, &[]);
    let out = env.pub_(
        &c,
        &k,
        &[
            "-u",
            "gw-1",
            "-t",
            "devices/gw-1/t",
            "-m",
            "x",
            "-V",
            "mqttv5",
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Not authorized"),
        "{}",
        text(&out)
    );
}
