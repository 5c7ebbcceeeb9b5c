use super::*;
use crate::trust::cert::Thumbprint;
use std::path::Path;

fn cert() -> CertInfo {
    CertInfo {
        subject_cn: Some("sensor-17".into()),
        subject_dn: "CN=sensor-17,O=Plant".into(),
        issuer_dn: "CN=Plant CA".into(),
        serial_hex: "01".into(),
        dns: vec!["a.example.com".into(), "sensor-17.plant.example.com".into()],
        uris: vec!["spiffe://plant/sensor-17".into()],
        emails: vec!["sensor-17@plant.example.com".into()],
        ips: vec!["10.0.0.7".parse().unwrap(), "2001:db8::7".parse().unwrap()],
        not_before: 0,
        not_after: i64::MAX,
        is_ca: false,
        version: 3,
        thumbprint: Thumbprint([7; 32]),
    }
}

fn registry(json: &str) -> Registry {
    Registry::from_json(json.as_bytes(), Path::new("clients.json")).unwrap()
}

fn client(name: &str, scheme: &str) -> String {
    format!(
        r#"{{"name":"{name}","properties":{{"clientCertificateAuthentication":{{"validationScheme":"{scheme}"}}}}}}"#
    )
}

fn policy(sources: &[NameSource]) -> Policy {
    Policy {
        name_sources: sources.to_vec(),
        subject_match: SubjectMatch::CommonName,
    }
}

fn decide_with(
    c: &CertInfo,
    chains: bool,
    user: Option<&str>,
    reg: &Registry,
    p: &Policy,
) -> Result<Identity, Denied> {
    decide(&Peer { cert: c, chains }, user, reg, p).map_err(|d| d.reason)
}

#[test]
fn username_wins_over_every_certificate_source() {
    let c = cert();
    let (name, src) =
        authentication_name(&c, Some("other"), &[NameSource::Subject, NameSource::Dns]).unwrap();
    assert_eq!((name.as_str(), src), ("other", IdentitySource::Username));
}

#[test]
fn empty_username_falls_back_to_sources_in_order() {
    let c = cert();
    let (name, src) =
        authentication_name(&c, Some(""), &[NameSource::Dns, NameSource::Subject]).unwrap();
    assert_eq!(name, "a.example.com");
    assert_eq!(src, IdentitySource::Cert(NameSource::Dns));
    let (name, _) = authentication_name(&c, None, &[NameSource::Subject, NameSource::Dns]).unwrap();
    assert_eq!(name, "sensor-17");
}

#[test]
fn absent_source_is_skipped() {
    let mut c = cert();
    c.uris.clear();
    let (name, src) = authentication_name(&c, None, &[NameSource::Uri, NameSource::Email]).unwrap();
    assert_eq!(name, "sensor-17@plant.example.com");
    assert_eq!(src, IdentitySource::Cert(NameSource::Email));
}

#[test]
fn ip_source_is_written_canonically() {
    let mut c = cert();
    c.ips = vec!["2001:0db8:0:0:0:0:0:7".parse().unwrap()];
    let (name, _) = authentication_name(&c, None, &[NameSource::Ip]).unwrap();
    assert_eq!(name, "2001:db8::7");
}

#[test]
fn no_username_and_no_sources_is_denied() {
    let reg = registry(&format!(
        "[{}]",
        client("sensor-17", "SubjectMatchesAuthenticationName")
    ));
    assert_eq!(
        decide_with(&cert(), true, None, &reg, &policy(&[])),
        Err(Denied::NoAuthenticationName)
    );
}

#[test]
fn each_chain_scheme_allows_its_field_and_denies_a_mismatch() {
    let c = cert();
    let cases = [
        ("SubjectMatchesAuthenticationName", "sensor-17", "sensor-18"),
        (
            "DnsMatchesAuthenticationName",
            "sensor-17.plant.example.com",
            "x.example.com",
        ),
        (
            "UriMatchesAuthenticationName",
            "spiffe://plant/sensor-17",
            "spiffe://plant/x",
        ),
        (
            "EmailMatchesAuthenticationName",
            "sensor-17@plant.example.com",
            "x@example.com",
        ),
        (
            "IpMatchesAuthenticationName",
            "2001:0db8:0:0:0:0:0:7",
            "10.0.0.8",
        ),
    ];
    for (scheme, good, bad) in cases {
        let reg = registry(&format!(
            "[{},{}]",
            client(good, scheme),
            client(bad, scheme)
        ));
        let id = decide_with(&c, true, Some(good), &reg, &policy(&[])).unwrap();
        assert_eq!(id.authentication_name, good, "{scheme}");
        assert_eq!(
            decide_with(&c, true, Some(bad), &reg, &policy(&[])),
            Err(Denied::NameMismatch),
            "{scheme}"
        );
    }
}

#[test]
fn chain_scheme_needs_a_chain() {
    let reg = registry(&format!(
        "[{}]",
        client("sensor-17", "SubjectMatchesAuthenticationName")
    ));
    assert_eq!(
        decide_with(&cert(), false, Some("sensor-17"), &reg, &policy(&[])),
        Err(Denied::NotChained)
    );
}

#[test]
fn lookup_ignores_case_and_upstream_gets_registry_case() {
    let reg = registry(&format!(
        "[{}]",
        client("Sensor-17", "SubjectMatchesAuthenticationName")
    ));
    let id = decide_with(&cert(), true, Some("SENSOR-17"), &reg, &policy(&[])).unwrap();
    assert_eq!(id.authentication_name, "Sensor-17");
}

#[test]
fn same_name_folds_ascii_case_only() {
    assert!(same_name("KIOSK", "kiosk"));
    // U+212A KELVIN SIGN lowercases to 'k' in Unicode; SPEC §7 keeps it distinct.
    assert!(!same_name("\u{212A}iosk", "kiosk"));
    assert!(!same_name("ÄRGER", "ärger"));
    assert!(same_name("ärger", "ärger"));
}

#[test]
fn kelvin_sign_in_the_common_name_does_not_prove_client_kiosk() {
    let reg = registry(&format!(
        "[{}]",
        client("kiosk", "SubjectMatchesAuthenticationName")
    ));
    let mut c = cert();
    c.subject_cn = Some("\u{212A}iosk".into());
    assert_eq!(
        decide_with(&c, true, Some("kiosk"), &reg, &policy(&[])),
        Err(Denied::NameMismatch)
    );
    assert_eq!(
        decide_with(&c, true, None, &reg, &policy(&[NameSource::Subject])),
        Err(Denied::UnknownClient)
    );
}

#[test]
fn same_name_compares_ip_literals_as_addresses() {
    assert!(same_name("2001:0db8:0:0:0:0:0:7", "2001:db8::7"));
    assert!(same_name("2001:DB8::7", "2001:db8::7"));
    assert!(!same_name("2001:db8::7", "2001:db8::8"));
    assert!(!same_name("10.0.0.7", "::ffff:10.0.0.7"));
}

#[test]
fn ip_username_finds_a_client_registered_in_long_form() {
    let reg = registry(&format!(
        "[{}]",
        client("2001:0db8:0:0:0:0:0:7", "IpMatchesAuthenticationName")
    ));
    let id = decide_with(&cert(), true, Some("2001:db8::7"), &reg, &policy(&[])).unwrap();
    assert_eq!(id.authentication_name, "2001:0db8:0:0:0:0:0:7");
    let mut c = cert();
    c.ips.retain(IpAddr::is_ipv6);
    let id = decide_with(&c, true, None, &reg, &policy(&[NameSource::Ip]));
    assert_eq!(id.unwrap().client_name, "2001:0db8:0:0:0:0:0:7");
}

#[test]
fn unknown_and_disabled_clients_are_denied() {
    let reg = registry(r#"[{"name":"sensor-17","properties":{"state":"Disabled"}}]"#);
    assert_eq!(
        decide_with(&cert(), true, Some("sensor-17"), &reg, &policy(&[])),
        Err(Denied::Disabled)
    );
    assert_eq!(
        decide_with(&cert(), true, Some("nobody"), &reg, &policy(&[])),
        Err(Denied::UnknownClient)
    );
}

#[test]
fn thumbprint_scheme_ignores_chain_and_checks_both_slots() {
    let tp = Thumbprint([7; 32]).to_string();
    let other = Thumbprint([9; 32]).to_string();
    let reg = registry(&format!(
        r#"[{{"name":"gw","properties":{{"clientCertificateAuthentication":{{"validationScheme":"ThumbprintMatch","allowedThumbprints":["{other}","{tp}"]}}}}}},
           {{"name":"gw2","properties":{{"clientCertificateAuthentication":{{"validationScheme":"ThumbprintMatch","allowedThumbprints":["{other}"]}}}}}}]"#
    ));
    let id = decide_with(&cert(), false, Some("gw"), &reg, &policy(&[])).unwrap();
    assert_eq!(id.scheme, Some(Scheme::ThumbprintMatch));
    assert_eq!(
        decide_with(&cert(), true, Some("gw2"), &reg, &policy(&[])),
        Err(Denied::ThumbprintMismatch)
    );
}

#[test]
fn rfc4514_subject_match_compares_the_whole_dn() {
    let reg = registry(&format!(
        "[{}]",
        client("CN=sensor-17,O=Plant", "SubjectMatchesAuthenticationName")
    ));
    let p = Policy {
        name_sources: vec![],
        subject_match: SubjectMatch::Rfc4514,
    };
    assert!(decide_with(&cert(), true, Some("CN=sensor-17,O=Plant"), &reg, &p).is_ok());
    let cn_only = policy(&[]);
    assert_eq!(
        decide_with(&cert(), true, Some("CN=sensor-17,O=Plant"), &reg, &cn_only),
        Err(Denied::NameMismatch)
    );
}

fn v5_connect(props: &[u8]) -> Connect {
    Connect {
        version: Version::V5,
        clean_start: true,
        keep_alive: 60,
        properties: props.to_vec(),
        client_id: "c".into(),
        will: None,
        username: Some("u".into()),
        password: None,
    }
}

fn jwt_props(method: &str, token: &[u8]) -> Vec<u8> {
    let mut p = vec![
        crate::mqtt::properties::id::AUTHENTICATION_METHOD,
        0,
        method.len() as u8,
    ];
    p.extend_from_slice(method.as_bytes());
    p.extend_from_slice(&[
        crate::mqtt::properties::id::AUTHENTICATION_DATA,
        0,
        token.len() as u8,
    ]);
    p.extend_from_slice(token);
    p
}

#[test]
fn an_authentication_method_selects_jwt_only_when_jwt_is_configured() {
    let chain = [CertificateDer::from(vec![1, 2, 3])];
    let with_method = v5_connect(&jwt_props("CUSTOM-JWT", b"a.b.c"));
    match credentials(Some(&chain), &with_method, true) {
        Ok(Credentials::Jwt { method, token }) => {
            assert_eq!((method, token), ("CUSTOM-JWT", &b"a.b.c"[..]))
        }
        other => panic!("{other:?}"),
    }
    // Without [auth.jwt], the certificate decides as it always has.
    assert!(matches!(
        credentials(Some(&chain), &with_method, false),
        Ok(Credentials::Certificate { .. })
    ));
    let plain = v5_connect(&[]);
    assert_eq!(
        credentials(Some(&chain), &plain, true).unwrap().method(),
        Method::Certificate
    );
    assert_eq!(
        credentials(None, &plain, true).unwrap_err().reason,
        Denied::NoCredentials
    );
    let mut v3 = plain.clone();
    v3.version = Version::V311;
    assert_eq!(
        credentials(None, &v3, true).unwrap_err().reason,
        Denied::NoCredentials
    );
    // A method with no data is a JWT client with an empty (malformed) token.
    let mut only_method = jwt_props("CUSTOM-JWT", b"");
    only_method.truncate(only_method.len() - 3);
    match credentials(None, &v5_connect(&only_method), true) {
        Ok(Credentials::Jwt { token, .. }) => assert!(token.is_empty()),
        other => panic!("{other:?}"),
    }
}

fn claims(sub: &str) -> JwtClaims {
    JwtClaims {
        sub: sub.into(),
        jti: Some("t-9".into()),
        exp: 2_000_000_000,
        kid: "k1".into(),
        attributes: vec![("floor".into(), AttributeValue::Int(3))],
    }
}

fn jwt_policy(require_registered: bool) -> JwtPolicy {
    JwtPolicy {
        issuer: "i".into(),
        audiences: vec!["a".into()],
        algorithms: vec![jsonwebtoken::Algorithm::RS256],
        skew_seconds: 30,
        methods: vec![jwt::JwtMethod::Custom],
        require_registered,
    }
}

#[test]
fn a_token_s_sub_is_the_authentication_name_and_its_claims_the_attributes() {
    let reg = registry("[]");
    let id = decide_jwt(claims("sensor-17"), &reg, &jwt_policy(false)).unwrap();
    assert_eq!(id.authentication_name, "sensor-17");
    assert_eq!(id.method, Method::Jwt);
    assert_eq!(id.scheme, None);
    assert_eq!(id.source, IdentitySource::TokenSubject);
    assert_eq!(id.valid_until, 2_000_000_000 + 30 - 1);
    assert_eq!(id.jti.as_deref(), Some("t-9"));
    assert_eq!(id.attributes, claims("x").attributes);
}

#[test]
fn require_registered_applies_the_registry_client_s_state_and_spelling() {
    let reg =
        registry(r#"[{"name":"Sensor-17"},{"name":"off","properties":{"state":"Disabled"}}]"#);
    let p = jwt_policy(true);
    let id = decide_jwt(claims("sensor-17"), &reg, &p).unwrap();
    assert_eq!(id.authentication_name, "Sensor-17");
    assert_eq!(
        decide_jwt(claims("off"), &reg, &p).unwrap_err().reason,
        Denied::Disabled
    );
    assert_eq!(
        decide_jwt(claims("nobody"), &reg, &p).unwrap_err().reason,
        Denied::UnknownClient
    );
}

#[test]
fn registry_clients_carry_their_attributes_sorted() {
    let reg =
        registry(r#"[{"name":"sensor-17","properties":{"attributes":{"zone":"n","floor":3}}}]"#);
    let id = decide_with(&cert(), true, Some("sensor-17"), &reg, &policy(&[])).unwrap();
    let keys: Vec<&str> = id.attributes.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["floor", "zone"]);
}

#[test]
fn every_denial_has_a_distinct_label() {
    let labels: std::collections::HashSet<_> = Denied::ALL.iter().map(|d| d.label()).collect();
    assert_eq!(labels.len(), Denied::ALL.len());
}

#[test]
fn present_source_is_used_even_without_a_matching_client() {
    let reg = registry(&format!(
        "[{}]",
        client("sensor-17", "SubjectMatchesAuthenticationName")
    ));
    // DNS is present, so Subject (which would match) is never consulted.
    assert_eq!(
        decide_with(
            &cert(),
            true,
            None,
            &reg,
            &policy(&[NameSource::Dns, NameSource::Subject])
        ),
        Err(Denied::UnknownClient)
    );
}
