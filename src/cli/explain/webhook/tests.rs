use super::*;
use crate::cli::pki::{Ca, LeafSpec};

struct Fixture {
    _dir: tempfile::TempDir,
    config: Config,
    trust: Trust,
}

/// A deployment with `[auth.webhook]` (or without, for `false`).
fn fixture(webhook: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Explain Root").unwrap();
    let server = root.issue(&LeafSpec::server()).unwrap();
    let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    w("server.pem", &server.cert_pem);
    w("server.key", &server.key_pem);
    w("ca.pem", &root.cert.cert_pem);
    w("clients.json", "[]");
    let section = match webhook {
        true => "[auth.webhook]\nurl = \"https://hook.example/auth\"\nca_certificates = \"ca.pem\"\ncache = 5\n",
        false => "",
    };
    w(
        "mqttgate.toml",
        &format!("[tls]\ncertificate = \"server.pem\"\nprivate_key = \"server.key\"\nca_certificates = [\"ca.pem\"]\n[registry]\nclients = \"clients.json\"\n{section}"),
    );
    let config = Config::load(&dir.path().join("mqttgate.toml")).unwrap();
    let trust = Trust::load(&config, 0).unwrap();
    Fixture {
        _dir: dir,
        config,
        trust,
    }
}

fn explain(f: &Fixture, body: &str, now: i64) -> Explanation {
    explain_webhook_loaded(
        &f.config,
        &f.trust,
        &Answer::parse(body.as_bytes(), now),
        now,
    )
}

fn line<'a>(e: &'a Explanation, prefix: &str) -> &'a str {
    e.lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{}", e.lines.join("\n")))
}

#[test]
fn an_allow_shows_the_identity_its_attributes_and_the_broker_view() {
    let f = fixture(true);
    let e = explain(
        &f,
        r#"{"decision":"allow","clientAuthenticationName":"dev-1","attributes":{"floor":3},"expiration":2000000000}"#,
        1_700_000_000,
    );
    assert!(e.allowed);
    assert_eq!(
        line(&e, "webhook:"),
        "webhook: https://hook.example/auth decides no-certificate clients; timeout 5000 ms, at most 64 in flight, cache 5 entries"
    );
    assert!(line(&e, "result:").starts_with("result: ALLOWED as \"dev-1\" (method webhook"));
    assert_eq!(line(&e, "attributes:"), "attributes: floor=3");
    assert!(line(&e, "upstream:").contains("dev-1"));
}

#[test]
fn deny_malformed_and_expired_answers_are_denied_with_their_reason() {
    let f = fixture(true);
    for (body, reason) in [
        (
            r#"{"decision":"deny","errorReason":"nope"}"#,
            "webhook_deny",
        ),
        (r#"{"decision":"allow"}"#, "webhook_malformed"),
        (
            r#"{"decision":"allow","clientAuthenticationName":"a","expiration":10}"#,
            "webhook_expired",
        ),
    ] {
        let e = explain(&f, body, 1_700_000_000);
        assert!(!e.allowed, "{body}");
        assert!(
            line(&e, "result:").ends_with(&format!("(reason {reason})")),
            "{body}: {}",
            line(&e, "result:")
        );
        assert!(line(&e, "connack:").contains("0x87"));
    }
    let e = explain(&f, "{", 0);
    assert!(line(&e, "answer:").starts_with("answer: MALFORMED"));
}

#[test]
fn an_answer_without_a_configured_webhook_is_refused() {
    let f = fixture(false);
    let e = explain(
        &f,
        r#"{"decision":"allow","clientAuthenticationName":"dev-1"}"#,
        1_700_000_000,
    );
    assert!(!e.allowed);
    assert!(line(&e, "webhook:").contains("not configured"));
    assert!(line(&e, "result:").ends_with("(reason no_credentials)"));
}
