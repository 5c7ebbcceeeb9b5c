use super::*;
use crate::cli::pki::{Ca, LeafSpec};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

struct Fixture {
    _dir: tempfile::TempDir,
    config: Config,
    trust: Trust,
    key_pem: String,
}

/// A deployment with `[auth.jwt]` (`jwt` = extra lines, or None for no section) and one
/// issuer key, kid "k1".
fn fixture(jwt: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::root("Explain Root").unwrap();
    let server = root.issue(&LeafSpec::server()).unwrap();
    let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    w("server.pem", &server.cert_pem);
    w("server.key", &server.key_pem);
    w("ca.pem", &root.cert.cert_pem);
    w(
        "clients.json",
        r#"[{"name":"off","properties":{"state":"Disabled"}}]"#,
    );
    let kp = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let cert = rcgen::CertificateParams::new(vec!["issuer".into()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    std::fs::create_dir(dir.path().join("jwt")).unwrap();
    w("jwt/k1.pem", &cert.pem());
    let section = jwt.map_or(String::new(), |extra| {
        format!("[auth.jwt]\nissuer = \"https://issuer.example\"\naudiences = [\"mqttgate\"]\nkeys = [\"jwt\"]\n{extra}")
    });
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
        key_pem: kp.serialize_pem(),
    }
}

fn token(f: &Fixture, sub: &str, exp: i64) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k1".into());
    let claims = json!({"iss": "https://issuer.example", "aud": "mqttgate", "sub": sub,
        "exp": exp, "jti": "t-1", "floor": 3});
    encode(
        &h,
        &claims,
        &EncodingKey::from_rsa_pem(f.key_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn line<'a>(e: &'a Explanation, prefix: &str) -> &'a str {
    e.lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{}", e.text()))
}

const NOW: i64 = 1_800_000_000;

#[test]
fn an_allowed_token_shows_its_claims_the_identity_and_what_the_broker_sees() {
    let f = fixture(Some(""));
    let t = token(&f, "sensor-9", NOW + 600);
    let e = explain_jwt_loaded(&f.config, &f.trust, t.as_bytes(), "CUSTOM-JWT", NOW);
    assert!(e.allowed, "{}", e.text());
    assert!(line(&e, "token:").contains("kid \"k1\""), "{}", e.text());
    line(&e, "token:").contains("sub \"sensor-9\"");
    line(&e, "jwt: method \"CUSTOM-JWT\": accepted");
    line(&e, "jwt: keys by kid:").contains("\"k1\"");
    line(&e, "result: ALLOWED as \"sensor-9\" (method jwt");
    assert_eq!(line(&e, "attributes:"), "attributes: floor=3");
    line(&e, "upstream: the broker sees username \"sensor-9\"");
    line(&e, "connack: MQTT 5: 0x00");
}

#[test]
fn refusals_name_their_reason_and_connack() {
    let f = fixture(Some("require_registered = true\n"));
    let cases = [
        (token(&f, "x", NOW - 3600), "CUSTOM-JWT", "expired", 0x87),
        (
            token(&f, "nobody", NOW + 600),
            "CUSTOM-JWT",
            "unknown_client",
            0x87,
        ),
        (token(&f, "off", NOW + 600), "CUSTOM-JWT", "disabled", 0x87),
        (
            token(&f, "x", NOW + 600),
            "OAUTH2-JWT",
            "bad_authentication_method",
            0x8C,
        ),
        ("garbage".to_string(), "CUSTOM-JWT", "malformed", 0x87),
    ];
    for (t, method, reason, code) in cases {
        let e = explain_jwt_loaded(&f.config, &f.trust, t.as_bytes(), method, NOW);
        assert!(!e.allowed);
        assert!(
            line(&e, "result: DENIED").ends_with(&format!("(reason {reason})")),
            "{}",
            e.text()
        );
        assert!(line(&e, &format!("connack: MQTT 5: 0x{code:02X}")).len() > 10);
    }
}

#[test]
fn without_the_jwt_section_every_method_is_refused_as_not_configured() {
    let f = fixture(None);
    let t = token(&f, "x", NOW + 600);
    let e = explain_jwt_loaded(&f.config, &f.trust, t.as_bytes(), "CUSTOM-JWT", NOW);
    assert!(!e.allowed);
    line(&e, "jwt: [auth.jwt] is not configured");
    line(&e, "connack: MQTT 5: 0x8C");
}
