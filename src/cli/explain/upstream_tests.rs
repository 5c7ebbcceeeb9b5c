use super::*;
use crate::cli::pki::{Ca, LeafSpec};
use crate::config::{ClientIdMode, UsernameMode};

/// `explain` reports what `upstream_connect` builds, so the username and client id it
/// prints follow the `[upstream]` modes instead of assuming `rewrite`.
#[test]
fn explain_shows_what_the_broker_sees_under_each_upstream_mode() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Root").unwrap();
    let server = root.issue(&LeafSpec::server()).unwrap();
    let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    w("server.pem", &server.cert_pem);
    w("server.key", &server.key_pem);
    w("ca.pem", &root.cert.cert_pem);
    w(
        "clients.json",
        r#"[{"name":"sensor-1","properties":{"authenticationName":"Sensor-1"}}]"#,
    );
    w(
        "mqttgate.toml",
        "[tls]\ncertificate = \"server.pem\"\nprivate_key = \"server.key\"\nca_certificates = [\"ca.pem\"]\n[registry]\nclients = \"clients.json\"\n",
    );
    let mut config = Config::load(&dir.path().join("mqttgate.toml")).unwrap();
    config.client_id_mode = ClientIdMode::AuthenticationName;
    let trust = Trust::load(&config, 0).unwrap();
    let leaf = root.issue(&LeafSpec::client("sensor-1")).unwrap();
    let chain = [CertificateDer::from(leaf.der.clone())];
    let upstream_line = |config: &Config| {
        let e = explain_loaded(config, &trust, &chain, Some("SENSOR-1"), unix_now()).unwrap();
        assert!(e.allowed, "{}", e.text());
        e.lines
            .iter()
            .find(|l| l.starts_with("upstream:"))
            .cloned()
            .unwrap_or_else(|| e.text())
    };
    assert!(
        upstream_line(&config).contains(r#"sees username "Sensor-1" and client id "Sensor-1""#),
        "{}",
        upstream_line(&config)
    );
    config.username_mode = UsernameMode::Passthrough;
    config.client_id_mode = ClientIdMode::PerIdentity;
    assert!(
        upstream_line(&config)
            .contains(r#"sees username "SENSOR-1" and client id "Sensor-1/<client id>""#),
        "{}",
        upstream_line(&config)
    );
    // SPEC §12-13: audit mode hands the broker what the client typed, and never a
    // PROXY identity it did not verify; explain says what the live path sends.
    let audit = dir.path().join("audit.toml");
    std::fs::write(
        &audit,
        "mode = \"audit\"\n[tls]\ncertificate = \"server.pem\"\nprivate_key = \"server.key\"\nca_certificates = [\"ca.pem\"]\n[registry]\nclients = \"clients.json\"\n[upstream]\nclient_id = \"per-identity\"\n",
    )
    .unwrap();
    let audit = Config::load(&audit).unwrap();
    assert!(
        upstream_line(&audit).contains(r#"sees username "SENSOR-1" and client id "<client id>""#),
        "{}",
        upstream_line(&audit)
    );
}
