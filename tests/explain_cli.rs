//! `mqttgate explain` as a user runs it: the real binary, a demo deployment written by
//! `mqttgate certs demo`, and the exit status (0 allowed, 1 denied, 2 error).

use std::path::Path;
use std::process::{Command, Output};

fn mqttgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mqttgate"))
        .args(args)
        .output()
        .expect("run mqttgate")
}

fn explain(dir: &Path, client: &str, username: Option<&str>) -> (i32, String) {
    let config = dir.join("mqttgate.toml");
    let cert = dir.join("clients").join(format!("{client}.pem"));
    let mut args = vec![
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
    ];
    if let Some(u) = username {
        args.extend(["--username", u]);
    }
    let out = mqttgate(&args);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().expect("exit status"), text)
}

#[test]
fn explain_reports_and_exits_by_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let demo = mqttgate(&["certs", "demo", dir.path().to_str().unwrap()]);
    assert!(demo.status.success(), "{demo:?}");

    // Allowed: no username, the DNS SAN names the client.
    let (code, text) = explain(dir.path(), "sensor-dns", None);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(
            "name: ClientCertificateDns: present \"sensor-dns.devices.example.com\", used"
        ),
        "{text}"
    );
    assert!(
        text.contains("result: ALLOWED as \"sensor-dns.devices.example.com\""),
        "{text}"
    );
    assert!(
        text.contains("connack: MQTT 3.1.1: 0x00 connection accepted; MQTT 5: 0x00 success"),
        "{text}"
    );

    // Allowed by thumbprint, no chain.
    let (code, text) = explain(dir.path(), "legacy-gw", Some("legacy-gw"));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("tls: handshake: certificate admitted (by pin)"),
        "{text}"
    );

    // Denied after CONNECT: disabled.
    let (code, text) = explain(dir.path(), "disabled-device", Some("disabled-device"));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("(reason disabled)"), "{text}");
    assert!(
        text.contains("connack: MQTT 3.1.1: 0x05 not authorized; MQTT 5: 0x87 not authorized"),
        "{text}"
    );

    // Denied at the handshake: the server certificate has serverAuth only.
    let server = dir.path().join("server.pem");
    let config = dir.path().join("mqttgate.toml");
    let out = mqttgate(&[
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--cert",
        server.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("reason bad_eku"), "{text}");
    assert!(text.contains("TLS handshake refused, no CONNACK"), "{text}");

    // Errors: exit 2.
    let (code, text) = explain(dir.path(), "no-such-client", None);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no-such-client.pem"), "{text}");
    let missing = dir.path().join("missing.toml");
    let cert = dir.path().join("clients/sensor-dns.pem");
    let out = mqttgate(&[
        "explain",
        "--config",
        missing.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
}
