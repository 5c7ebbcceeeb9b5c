//! The command line: `check`, `thumbprint`, `certs demo`, and `run` refusing a bad config
//! before it opens a port.

use std::path::Path;
use std::process::{Command, Output};

fn mqttgate(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mqttgate"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn demo(dir: &Path) {
    let o = mqttgate(&["certs", "demo", "demo"], dir);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn check_describes_a_good_configuration_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let o = mqttgate(&["check", "--config", "demo/mqttgate.toml"], dir.path());
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("CA certificates: 1"), "{out}");
    assert!(
        out.contains("CN=mqttgate demo devices CA  expires "),
        "{out}"
    );
    assert!(out.contains("clients: 7"), "{out}");
    assert!(
        out.contains("SubjectMatchesAuthenticationName: 1 enabled, 1 disabled"),
        "{out}"
    );
    assert!(
        out.contains("ThumbprintMatch: 1 enabled, 0 disabled"),
        "{out}"
    );
    assert!(out.contains("problems: none"), "{out}");
    assert!(
        out.contains("sessions: 1 per authentication name, 1 connects per second per session"),
        "{out}"
    );
    assert!(!out.contains("mode: audit"), "{out}");

    // Audit-only mode, other session limits and a JWT issuer show too.
    let config = dir.path().join("demo/mqttgate.toml");
    let keys = dir.path().join("demo/jwt");
    std::fs::create_dir(&keys).unwrap();
    let issuer = mqttgate::cli::pki::Ca::root("issuer").unwrap();
    std::fs::write(keys.join("k1.pem"), &issuer.cert.cert_pem).unwrap();
    // Audit mode refuses `rewrite` (it would hand the broker typed names as verified).
    let body = std::fs::read_to_string(&config)
        .unwrap()
        .replace("username = \"rewrite\"", "username = \"passthrough\"");
    std::fs::write(
        &config,
        format!(
            "mode = \"audit\"\n{body}\n[sessions]\nmax_per_authentication_name = 0\nconnects_per_second = 0\n\n[auth.jwt]\nissuer = \"https://issuer.example\"\naudiences = [\"mqttgate\"]\nkeys = [\"jwt\"]\n"
        ),
    )
    .unwrap();
    let o = mqttgate(&["check", "--config", "demo/mqttgate.toml"], dir.path());
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("mode: audit"), "{out}");
    assert!(
        out.contains("sessions: no limit per authentication name, no connect rate"),
        "{out}"
    );
    assert!(out.contains("jwt: issuer https://issuer.example"), "{out}");
    assert!(out.contains("keys [\"k1\"]"), "{out}");
}

#[test]
fn check_names_the_file_and_entry_of_a_bad_registry_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    std::fs::write(
        dir.path().join("demo/clients.json"),
        r#"[{"name":"a","properties":{"clientCertificateAuthentication":{"validationScheme":"ThumbprintMatch","allowedThumbprints":["da39a3ee5e6b4b0d3255bfef95601890afd80709"]}}}]"#,
    )
    .unwrap();
    let o = mqttgate(&["check", "--config", "demo/mqttgate.toml"], dir.path());
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("clients.json"), "{out}");
    assert!(out.contains("SHA-1"), "{out}");
}

#[test]
fn check_warns_when_chain_clients_have_no_ca() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let config = dir.path().join("demo/mqttgate.toml");
    let text_ = std::fs::read_to_string(&config).unwrap().replace(
        "ca_certificates = [\"devices-ca.pem\"]",
        "ca_certificates = []",
    );
    std::fs::write(&config, text_).unwrap();
    let o = mqttgate(&["check", "--config", "demo/mqttgate.toml"], dir.path());
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("no CA certificate is registered"), "{out}");
}

#[test]
fn run_refuses_an_unknown_key_naming_file_and_field_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let config = dir.path().join("demo/mqttgate.toml");
    let body = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[limits]", "")
        .replace("[upstream]", "[upstream]\nadress = \"127.0.0.1:1\"");
    std::fs::write(&config, body).unwrap();
    let o = mqttgate(&["run", "--config", "demo/mqttgate.toml"], dir.path());
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("demo/mqttgate.toml"), "{out}");
    assert!(out.contains("adress"), "{out}");
}

#[test]
fn thumbprint_matches_openssls_sha256_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let cert = "demo/clients/legacy-gw.pem";
    let o = mqttgate(&["thumbprint", cert], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let ours = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let ssl = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", cert])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let theirs = String::from_utf8_lossy(&ssl.stdout)
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(ours.len(), 64);
    assert_eq!(ours, theirs);
    // And it is the value the demo registered for that client.
    let registry = std::fs::read_to_string(dir.path().join("demo/clients.json")).unwrap();
    assert!(registry.contains(&ours));
}

#[test]
fn demo_keys_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let mode = std::fs::metadata(dir.path().join("demo/server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
}
