use super::*;
use crate::cli::pki::{self, Ca, Eku, Issued, LeafSpec};
use crate::trust::cert::Thumbprint;

/// A temporary deployment: a root, the registered intermediate under it, a server
/// certificate, a registry and a config naming them.
struct Fixture {
    _dir: tempfile::TempDir,
    config: Config,
    trust: Trust,
    inter: Ca,
}

fn fixture(clients: &str, sources: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Explain Root").unwrap();
    let inter = root.intermediate("Explain Devices CA").unwrap();
    let server = root.issue(&LeafSpec::server()).unwrap();
    let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    w("server.pem", &server.cert_pem);
    w("server.key", &server.key_pem);
    w("devices-ca.pem", &inter.cert.cert_pem);
    w("clients.json", clients);
    let sources: Vec<String> = sources.iter().map(|s| format!("{s:?}")).collect();
    w(
        "mqttgate.toml",
        &format!(
            "alternativeAuthenticationNameSources = [{}]\n[tls]\ncertificate = \"server.pem\"\nprivate_key = \"server.key\"\nca_certificates = [\"devices-ca.pem\"]\n[registry]\nclients = \"clients.json\"\n",
            sources.join(", ")
        ),
    );
    let config = Config::load(&dir.path().join("mqttgate.toml")).unwrap();
    let trust = Trust::load(&config, 0).unwrap();
    Fixture {
        _dir: dir,
        config,
        trust,
        inter,
    }
}

fn run(f: &Fixture, chain: &[&Issued], username: Option<&str>) -> Explanation {
    let ders: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|i| CertificateDer::from(i.der.clone()))
        .collect();
    explain_loaded(&f.config, &f.trust, &ders, username, unix_now()).unwrap()
}

fn line<'a>(e: &'a Explanation, prefix: &str) -> &'a str {
    e.lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{}", e.text()))
}

const NOT_AUTHORIZED: &str =
    "connack: MQTT 3.1.1: 0x05 not authorized; MQTT 5: 0x87 not authorized";
const NO_CONNACK: &str =
    "connack: none: TLS handshake refused, no CONNACK (MQTT 3.1.1 and MQTT 5 alike)";

fn registry() -> String {
    r#"[
      {"name":"sensor-1","properties":{"authenticationName":"Sensor-1"}},
      {"name":"sensor-dns","properties":{"authenticationName":"s.example.com",
         "clientCertificateAuthentication":{"validationScheme":"DnsMatchesAuthenticationName"}}},
      {"name":"off","properties":{"state":"Disabled"}}
    ]"#
    .to_string()
}

#[test]
fn allowed_by_username_and_subject_reports_every_step() {
    let f = fixture(&registry(), &["ClientCertificateDns"]);
    let leaf = f.inter.issue(&LeafSpec::client("sensor-1")).unwrap();
    let e = run(&f, &[&leaf], Some("SENSOR-1"));
    let text = e.text();
    assert!(e.allowed, "{text}");
    assert!(
        line(&e, "certificate: subject").contains("\"CN=sensor-1\""),
        "{text}"
    );
    assert_eq!(line(&e, "certificate: SANs"), "certificate: SANs none");
    assert_eq!(
        line(&e, "certificate: thumbprint"),
        format!("certificate: thumbprint {}", Thumbprint::of(&leaf.der))
    );
    assert!(
        line(&e, "certificate: valid").contains("valid now ("),
        "{text}"
    );
    assert_eq!(
        line(&e, "tls: pin:"),
        "tls: pin: thumbprint is not in any client's allowedThumbprints"
    );
    assert_eq!(
        line(&e, "tls: chain:"),
        "tls: chain: ok, reaches a registered CA certificate (1 registered)"
    );
    assert!(
        line(&e, "tls: handshake:").contains("admitted (by chain)"),
        "{text}"
    );
    assert_eq!(
        line(&e, "name: username:"),
        "name: username: present \"SENSOR-1\", used"
    );
    assert_eq!(
        line(&e, "name: ClientCertificateDns:"),
        "name: ClientCertificateDns: absent, skipped"
    );
    assert_eq!(
        line(&e, "client:"),
        "client: \"sensor-1\" (authenticationName \"Sensor-1\"), state Enabled, scheme SubjectMatchesAuthenticationName"
    );
    assert_eq!(
        line(&e, "scheme:"),
        "scheme: SubjectMatchesAuthenticationName: chain to a registered CA: yes; subject CN [\"sensor-1\"] compared with authenticationName \"Sensor-1\" ignoring case: match"
    );
    assert!(
        line(&e, "result:").starts_with("result: ALLOWED as \"Sensor-1\""),
        "{text}"
    );
    assert!(
        line(&e, "connack:")
            .starts_with("connack: MQTT 3.1.1: 0x00 connection accepted; MQTT 5: 0x00 success"),
        "{text}"
    );
}

#[test]
fn name_sources_are_tried_in_order_and_a_mismatch_is_denied() {
    let f = fixture(
        &registry(),
        &[
            "ClientCertificateUri",
            "ClientCertificateDns",
            "ClientCertificateSubject",
        ],
    );
    // Its DNS SAN names it, but the DNS scheme client's name differs in the SAN list.
    let leaf = f
        .inter
        .issue(&LeafSpec {
            dns: vec!["s.example.com".into()],
            ..LeafSpec::client("sensor-1")
        })
        .unwrap();
    let e = run(&f, &[&leaf], None);
    assert!(e.allowed, "{}", e.text());
    assert_eq!(line(&e, "name: username:"), "name: username: absent");
    assert_eq!(
        line(&e, "name: ClientCertificateUri:"),
        "name: ClientCertificateUri: absent, skipped"
    );
    assert_eq!(
        line(&e, "name: ClientCertificateDns:"),
        "name: ClientCertificateDns: present \"s.example.com\", used"
    );
    assert!(line(&e, "name: ClientCertificateSubject:").contains("not consulted"));
    assert!(line(&e, "scheme:").contains("DNS SANs [\"s.example.com\"]"));

    // The same certificate claiming the subject client: DNS scheme mismatch the other way.
    let e = run(&f, &[&leaf], Some("s.example.com"));
    assert!(e.allowed);
    let other = f.inter.issue(&LeafSpec::client("sensor-1")).unwrap();
    let e = run(&f, &[&other], Some("s.example.com"));
    assert!(!e.allowed);
    assert!(line(&e, "scheme:").ends_with("DNS SANs (none) compared with authenticationName \"s.example.com\" ignoring case: no match"), "{}", e.text());
    assert!(line(&e, "result:").contains("(reason name_mismatch)"));
    assert_eq!(line(&e, "connack:"), NOT_AUTHORIZED);
}

#[test]
fn unknown_disabled_and_nameless_clients_are_denied_with_their_reason() {
    let f = fixture(&registry(), &[]);
    let leaf = f.inter.issue(&LeafSpec::client("off")).unwrap();

    let e = run(&f, &[&leaf], Some("nobody"));
    assert!(!e.allowed);
    assert_eq!(
        line(&e, "client:"),
        "client: no client has authentication name \"nobody\" (compared ignoring case)"
    );
    assert!(line(&e, "result:").contains("(reason unknown_client)"));
    assert_eq!(line(&e, "connack:"), NOT_AUTHORIZED);

    let e = run(&f, &[&leaf], Some("off"));
    assert!(!e.allowed);
    assert!(line(&e, "client:").contains("state Disabled"));
    assert!(line(&e, "result:").contains("(reason disabled)"));

    let e = run(&f, &[&leaf], None);
    assert!(!e.allowed);
    assert_eq!(
        line(&e, "name: alternativeAuthenticationNameSources:"),
        "name: alternativeAuthenticationNameSources: none configured"
    );
    assert!(line(&e, "result:").contains("(reason no_authentication_name)"));
    assert!(!e.lines.iter().any(|l| l.starts_with("client:")));
}

#[test]
fn pinned_self_signed_certificate_is_admitted_by_pin_only() {
    let gw = pki::self_signed(&LeafSpec::client("gw"), false).unwrap();
    let tp = Thumbprint::of(&gw.der);
    let clients = format!(
        r#"[{{"name":"gw","properties":{{"clientCertificateAuthentication":{{"validationScheme":"ThumbprintMatch","allowedThumbprints":["{tp}"]}}}}}},
           {{"name":"sensor-1"}}]"#
    );
    let f = fixture(&clients, &[]);
    let e = run(&f, &[&gw], Some("gw"));
    assert!(e.allowed, "{}", e.text());
    assert_eq!(
        line(&e, "tls: pin:"),
        "tls: pin: thumbprint registered in allowedThumbprints of gw"
    );
    assert!(line(&e, "tls: chain: fails: unknown issuer").contains("reason unknown_issuer"));
    assert!(line(&e, "tls: handshake:").contains("admitted (by pin)"));
    assert_eq!(
        line(&e, "scheme:"),
        format!("scheme: ThumbprintMatch: leaf thumbprint {tp} compared with allowedThumbprints [primary {tp}]: match (the chain is not needed)")
    );

    // The pinned certificate claiming a chain-scheme client.
    let e = run(&f, &[&gw], Some("sensor-1"));
    assert!(!e.allowed);
    assert!(line(&e, "scheme:").contains("chain to a registered CA: NO"));
    assert!(line(&e, "result:").contains("(reason not_chained)"));
    assert_eq!(line(&e, "connack:"), NOT_AUTHORIZED);
}

#[test]
fn tls_refusals_name_the_exact_failure_and_send_no_connack() {
    let f = fixture(&registry(), &[]);
    // Another CA entirely.
    let stranger = Ca::root("Stranger").unwrap();
    let leaf = stranger.issue(&LeafSpec::client("sensor-1")).unwrap();
    let e = run(&f, &[&leaf], Some("sensor-1"));
    assert!(!e.allowed);
    assert!(line(&e, "tls: handshake: refused: unknown issuer").contains("reason unknown_issuer"));
    assert!(line(&e, "result:").starts_with("result: DENIED at the TLS handshake: unknown issuer"));
    assert_eq!(line(&e, "connack:"), NO_CONNACK);
    // The later steps are still shown, for diagnosis.
    assert!(line(&e, "note:").contains("nothing below is reached"));
    assert!(line(&e, "scheme:").contains("match"));

    // Expired.
    let old = f
        .inter
        .issue(&LeafSpec {
            not_before: -10 * 86_400,
            not_after: -2 * 86_400,
            ..LeafSpec::client("sensor-1")
        })
        .unwrap();
    let e = run(&f, &[&old], Some("sensor-1"));
    assert!(!e.allowed);
    assert!(
        line(&e, "certificate: valid").contains("NOT valid now (expired 2 days ago)"),
        "{}",
        e.text()
    );
    assert!(
        line(&e, "tls: handshake: refused:").contains("reason expired"),
        "{}",
        e.text()
    );
    assert_eq!(line(&e, "connack:"), NO_CONNACK);

    // serverAuth only: bad EKU.
    let server_only = f
        .inter
        .issue(&LeafSpec {
            eku: Eku::ServerAuth,
            ..LeafSpec::client("sensor-1")
        })
        .unwrap();
    let e = run(&f, &[&server_only], Some("sensor-1"));
    assert!(!e.allowed);
    assert!(
        line(&e, "tls: chain: fails: bad EKU").contains("reason bad_eku"),
        "{}",
        e.text()
    );
    assert_eq!(line(&e, "connack:"), NO_CONNACK);
}

#[test]
fn intermediates_in_the_file_are_sent_as_the_chain() {
    // Register only the root this time: the leaf needs its intermediate.
    let f = fixture(&registry(), &[]);
    let root = Ca::root("Other Root").unwrap();
    let mid = root.intermediate("Other Mid").unwrap();
    let leaf = mid.issue(&LeafSpec::client("sensor-1")).unwrap();
    std::fs::write(
        f.config.ca_files[0].clone(),
        format!("{}{}", f.inter.cert.cert_pem, root.cert.cert_pem),
    )
    .unwrap();
    let trust = Trust::load(&f.config, 1).unwrap();
    let g = Fixture { trust, ..f };
    let alone = run(&g, &[&leaf], Some("sensor-1"));
    assert!(!alone.allowed);
    let with = run(&g, &[&leaf, &mid.cert], Some("sensor-1"));
    assert!(with.allowed, "{}", with.text());
    assert!(line(&with, "certificate: the file holds").contains("1 intermediate"));
    assert_eq!(
        line(&with, "tls: chain:"),
        "tls: chain: ok, reaches a registered CA certificate (2 registered)"
    );
}
