//! SPEC §2-3: which authentication name a client claims (username, then
//! `alternativeAuthenticationNameSources` in order), how it is looked up, and that every
//! denial sounds the same. The broker's `%u` ACL shows which identity went upstream.

mod common;

use common::*;
use mqttgate::cli::pki::{Issued, LeafSpec};

const SUBJECT: &str = "SubjectMatchesAuthenticationName";
const DNS: &str = "DnsMatchesAuthenticationName";
const IP: &str = "IpMatchesAuthenticationName";

const SRC_SUBJECT: &str = "ClientCertificateSubject";
const SRC_DNS: &str = "ClientCertificateDns";
const SRC_URI: &str = "ClientCertificateUri";
const SRC_IP: &str = "ClientCertificateIp";

/// mqttgate trusting the root, with the given registry entries and name sources.
async fn env_with(clients: &[String], sources: &[&'static str]) -> Env {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", clients.join(",")));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    setup.sources = sources.to_vec();
    Env::start(pki, setup).await
}

/// Two clients one certificate satisfies: `sensor-1` by its CN and `dns.example.com` by
/// its DNS SAN. Which one the broker sees shows which name was used.
async fn two_name_env(sources: &[&'static str]) -> (Env, Issued) {
    let env = env_with(
        &[
            chain_client("sensor-1", SUBJECT),
            chain_client("dns.example.com", DNS),
        ],
        sources,
    )
    .await;
    let mut spec = leaf("sensor-1");
    spec.dns = vec!["dns.example.com".into()];
    let cert = env.pki.root.issue(&spec).unwrap();
    (env, cert)
}

fn issue(env: &Env, f: impl FnOnce(&mut LeafSpec)) -> Issued {
    let mut spec = leaf("sensor-1");
    f(&mut spec);
    env.pki.root.issue(&spec).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_wins_over_certificate_fields() {
    let (env, cert) = two_name_env(&[SRC_DNS, SRC_SUBJECT]).await;
    assert_broker_sees(&env, &cert, &[], Some("sensor-1"), "sensor-1").await;
    let (c, k) = env.client_files("c", &cert, &[]);
    assert_pub_ok(&env.pub_(
        &c,
        &k,
        &["-u", "sensor-1", "-t", "devices/sensor-1/t", "-m", "x"],
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_username_falls_back_to_the_name_sources() {
    let (env, cert) = two_name_env(&[SRC_DNS]).await;
    // The CONNECT really carries a present-but-empty username (flag set, length 0).
    let connect = connect_packet(4, "byte-client", Some(""));
    assert_eq!(connect[9] & 0x80, 0x80, "username flag in {connect:02x?}");
    assert!(connect.ends_with(&[0x00, 0x00]), "{connect:02x?}");
    assert_broker_sees(&env, &cert, &[], Some(""), "dns.example.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_source_listed_first_is_used_when_the_certificate_has_both() {
    let (env, cert) = two_name_env(&[SRC_DNS, SRC_SUBJECT]).await;
    assert_broker_sees(&env, &cert, &[], None, "dns.example.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_source_listed_first_is_used_when_the_certificate_has_both() {
    let (env, cert) = two_name_env(&[SRC_SUBJECT, SRC_DNS]).await;
    assert_broker_sees(&env, &cert, &[], None, "sensor-1").await;
    // mosquitto_pub without -u sends no username at all.
    let (c, k) = env.client_files("c", &cert, &[]);
    assert_pub_ok(&env.pub_(&c, &k, &["-t", "devices/sensor-1/t", "-m", "x"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_source_is_skipped() {
    let env = env_with(
        &[chain_client("sensor-1", SUBJECT)],
        &[SRC_URI, SRC_SUBJECT],
    )
    .await;
    let cert = issue(&env, |_| {});
    assert_broker_sees(&env, &cert, &[], None, "sensor-1").await;
    let (c, k) = env.client_files("c", &cert, &[]);
    assert_pub_ok(&env.pub_(&c, &k, &["-t", "devices/sensor-1/t", "-m", "x"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn present_source_naming_no_client_is_denied_even_if_a_later_source_matches() {
    let env = env_with(
        &[chain_client("sensor-1", SUBJECT)],
        &[SRC_DNS, SRC_SUBJECT],
    )
    .await;
    let cert = issue(&env, |s| s.dns = vec!["nobody.example.com".into()]);
    assert_not_authorized(&env, &cert, &[], 4, None).await;
    assert_not_authorized(&env, &cert, &[], 5, None).await;
    let (c, k) = env.client_files("c", &cert, &[]);
    assert_pub_not_authorised(&env.pub_(&c, &k, &["-t", "devices/sensor-1/t", "-m", "x"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_username_and_no_sources_is_denied() {
    let env = env_with(&[chain_client("sensor-1", SUBJECT)], &[]).await;
    let cert = issue(&env, |_| {});
    assert_not_authorized(&env, &cert, &[], 4, None).await;
    assert_not_authorized(&env, &cert, &[], 5, None).await;
    assert_not_authorized(&env, &cert, &[], 4, Some("")).await;
    let (c, k) = env.client_files("c", &cert, &[]);
    assert_pub_not_authorised(&env.pub_(&c, &k, &["-t", "devices/sensor-1/t", "-m", "x"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_is_denied_with_the_common_not_authorized_code() {
    let env = env_with(&[chain_client("sensor-1", SUBJECT)], &[]).await;
    // The certificate's CN names the unknown client, so only "unknown" can be the cause.
    let cert = issue(&env, |s| s.cn = Some("sensor-9".into()));
    assert_not_authorized(&env, &cert, &[], 4, Some("sensor-9")).await;
    assert_not_authorized(&env, &cert, &[], 5, Some("sensor-9")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_client_is_denied_with_the_common_not_authorized_code() {
    let disabled = r#"{"name":"sensor-1","properties":{"clientCertificateAuthentication":{"validationScheme":"SubjectMatchesAuthenticationName"},"state":"Disabled"}}"#;
    let env = env_with(&[disabled.to_string()], &[]).await;
    let cert = issue(&env, |_| {});
    assert_not_authorized(&env, &cert, &[], 4, Some("sensor-1")).await;
    assert_not_authorized(&env, &cert, &[], 5, Some("sensor-1")).await;
    let (c, k) = env.client_files("c", &cert, &[]);
    assert_pub_not_authorised(&env.pub_(&c, &k, &["-u", "sensor-1", "-t", "t", "-m", "x"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_source_is_written_canonically() {
    let env = env_with(&[chain_client("2001:db8::7", IP)], &[SRC_IP]).await;
    let cert = issue(&env, |s| s.ips = vec!["2001:0db8::0:7".parse().unwrap()]);
    assert_broker_sees(&env, &cert, &[], None, "2001:db8::7").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_ignores_case_and_the_broker_sees_the_registry_spelling() {
    let pki = Pki::new();
    let mut setup = Setup::new(&format!("[{}]", chain_client("Sensor-A", SUBJECT)));
    setup.ca_pems = vec![pki.root.cert.cert_pem.clone()];
    // Two sessions of one identity (subscriber and publisher).
    setup.client_id = Some("per-identity");
    let env = Env::start(pki, setup).await;
    let cert = env.pki.root.issue(&leaf("Sensor-A")).unwrap();
    let (c, k) = env.client_files("sensor-a", &cert, &[]);
    let sub = env.spawn_sub(
        &c,
        &k,
        &[
            "-u",
            "sensor-a",
            "-i",
            "sub",
            "-t",
            "devices/Sensor-A/#",
            "-C",
            "1",
            "-W",
            "10",
        ],
    );
    // The subscription is in place before the message is published.
    env.mosquitto
        .await_subscriptions("devices/Sensor-A/#", 1)
        .await;
    let out = env.pub_(
        &c,
        &k,
        &[
            "-u",
            "sensor-a",
            "-i",
            "pub",
            "-t",
            "devices/Sensor-A/temp",
            "-m",
            "21.5",
            "-q",
            "1",
        ],
    );
    assert_pub_ok(&out);
    let got = tokio::task::spawn_blocking(move || sub.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "21.5",
        "{}",
        text(&got)
    );
    // The ACL is case-sensitive: the lower-case spelling the client typed is not the
    // identity the broker knows.
    assert!(broker_echoes(&env, &cert, &[], Some("sensor-a"), "devices/Sensor-A/x").await);
    assert!(!broker_echoes(&env, &cert, &[], Some("sensor-a"), "devices/sensor-a/x").await);
}
