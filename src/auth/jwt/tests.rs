//! Tokens minted here with jsonwebtoken's encoder; the integration tests (tests/jwt.rs)
//! mint theirs with PyJWT, independently of this crate.

use super::*;
use std::sync::OnceLock;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use crate::trust::jwt_keys::key_from_certificate;

const NOW: i64 = 1_800_000_000;

/// One RSA key pair and its self-signed certificate: (private key PEM, certificate DER,
/// certificate PEM).
fn rsa(i: usize) -> &'static (String, Vec<u8>, String) {
    static KEYS: OnceLock<Vec<(String, Vec<u8>, String)>> = OnceLock::new();
    &KEYS.get_or_init(|| {
        (0..2)
            .map(|_| {
                let kp = rcgen::KeyPair::generate_rsa_for(
                    &rcgen::PKCS_RSA_SHA256,
                    rcgen::RsaKeySize::_2048,
                )
                .unwrap();
                let cert = rcgen::CertificateParams::new(vec!["issuer".into()])
                    .unwrap()
                    .self_signed(&kp)
                    .unwrap();
                (kp.serialize_pem(), cert.der().to_vec(), cert.pem())
            })
            .collect()
    })[i]
}

fn key(kid: &str, i: usize) -> JwtKey {
    JwtKey {
        kid: kid.into(),
        key: key_from_certificate(&rsa(i).1).unwrap(),
        alg: None,
        file: format!("{kid}.pem"),
    }
}

fn policy() -> JwtPolicy {
    JwtPolicy {
        issuer: "https://issuer.example".into(),
        audiences: vec!["mqttgate".into(), "other".into()],
        algorithms: vec![Algorithm::RS256],
        skew_seconds: 60,
        methods: vec![JwtMethod::Custom],
        require_registered: false,
    }
}

fn claims() -> Value {
    json!({
        "iss": "https://issuer.example",
        "aud": "mqttgate",
        "sub": "sensor-17",
        "exp": NOW + 600,
        "nbf": NOW - 10,
        "iat": NOW - 10,
        "jti": "t-1",
    })
}

fn mint_with(header: &Header, claims: &Value, i: usize) -> String {
    encode(
        header,
        claims,
        &EncodingKey::from_rsa_pem(rsa(i).0.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn mint(kid: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    mint_with(&h, claims, 0)
}

fn check(token: &str) -> Result<JwtClaims, JwtFailure> {
    verify(token.as_bytes(), &[key("k1", 0)], &policy(), NOW)
}

fn with(f: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let mut c = claims();
    f(c.as_object_mut().unwrap());
    c
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn a_valid_token_gives_its_subject_jti_and_expiry() {
    let c = check(&mint("k1", &claims())).unwrap();
    assert_eq!(c.sub, "sensor-17");
    assert_eq!(c.jti.as_deref(), Some("t-1"));
    assert_eq!(c.exp, NOW + 600);
    assert_eq!(c.kid, "k1");
    assert!(c.attributes.is_empty());
    assert_eq!(valid_until(&c, &policy()), NOW + 600 + 60 - 1);
}

#[test]
fn custom_claims_of_int32_string_and_string_array_become_sorted_attributes() {
    let token = mint(
        "k1",
        &with(|c| {
            c.insert("zone".into(), json!("north"));
            c.insert("floor".into(), json!(3));
            c.insert("groups".into(), json!(["a", "b"]));
            c.insert("big".into(), json!(1_i64 << 40));
            c.insert("ratio".into(), json!(0.5));
            c.insert("flag".into(), json!(true));
            c.insert("mixed".into(), json!(["a", 1]));
            c.insert("obj".into(), json!({"a": 1}));
        }),
    );
    let c = check(&token).unwrap();
    assert_eq!(
        c.attributes,
        vec![
            ("floor".into(), AttributeValue::Int(3)),
            (
                "groups".into(),
                AttributeValue::Strings(vec!["a".into(), "b".into()])
            ),
            ("zone".into(), AttributeValue::String("north".into())),
        ]
    );
}

#[test]
fn each_failure_has_its_label() {
    let cases: Vec<(Value, JwtFailure)> = vec![
        (with(|c| c["exp"] = json!(NOW - 61)), JwtFailure::Expired),
        (
            with(|c| c["nbf"] = json!(NOW + 61)),
            JwtFailure::NotYetValid,
        ),
        (
            with(|c| c["iss"] = json!("https://evil.example")),
            JwtFailure::BadIssuer,
        ),
        (with(|c| drop(c.remove("iss"))), JwtFailure::BadIssuer),
        (
            with(|c| c["aud"] = json!("someone-else")),
            JwtFailure::BadAudience,
        ),
        (
            with(|c| c["aud"] = json!(["x", "y"])),
            JwtFailure::BadAudience,
        ),
        (with(|c| drop(c.remove("aud"))), JwtFailure::BadAudience),
        (with(|c| drop(c.remove("sub"))), JwtFailure::Malformed),
        (with(|c| c["sub"] = json!("")), JwtFailure::Malformed),
        (with(|c| drop(c.remove("exp"))), JwtFailure::Malformed),
        (
            with(|c| c["exp"] = json!("tomorrow")),
            JwtFailure::Malformed,
        ),
    ];
    for (claims, want) in cases {
        assert_eq!(check(&mint("k1", &claims)), Err(want), "{claims}");
        assert!(!want.label().is_empty());
    }
    assert_eq!(check(&mint("k9", &claims())), Err(JwtFailure::UnknownKid));
    assert_eq!(JwtFailure::ALL.len(), 8);
}

#[test]
fn skew_is_applied_on_both_sides_and_exp_itself_is_not_accepted() {
    let mut p = policy();
    p.skew_seconds = 0;
    let at = |exp: i64, nbf: i64| {
        let t = mint(
            "k1",
            &with(|c| {
                c["exp"] = json!(exp);
                c["nbf"] = json!(nbf);
            }),
        );
        verify(t.as_bytes(), &[key("k1", 0)], &p, NOW)
    };
    assert_eq!(at(NOW, NOW - 1), Err(JwtFailure::Expired));
    assert!(at(NOW + 1, NOW).is_ok());
    assert_eq!(at(NOW + 10, NOW + 1), Err(JwtFailure::NotYetValid));
    p.skew_seconds = 5;
    let t = mint("k1", &with(|c| c["exp"] = json!(NOW - 4)));
    assert!(verify(t.as_bytes(), &[key("k1", 0)], &p, NOW).is_ok());
}

#[test]
fn audience_may_be_an_array_holding_one_configured_audience() {
    let t = mint("k1", &with(|c| c["aud"] = json!(["x", "other"])));
    assert!(check(&t).is_ok());
}

#[test]
fn a_token_signed_by_another_key_has_a_bad_signature() {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("k1".into());
    let forged = mint_with(&h, &claims(), 1);
    assert_eq!(check(&forged), Err(JwtFailure::BadSignature));
    // An edited payload under the original signature.
    let good = mint("k1", &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let edited = format!(
        "{}.{}.{}",
        parts[0],
        b64(&with(|c| c["sub"] = json!("admin"))),
        parts[2]
    );
    assert_eq!(check(&edited), Err(JwtFailure::BadSignature));
}

#[test]
fn the_key_is_chosen_by_kid_among_two() {
    let keys = [key("old", 0), key("new", 1)];
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("new".into());
    let t = mint_with(&h, &claims(), 1);
    assert_eq!(
        verify(t.as_bytes(), &keys, &policy(), NOW).unwrap().kid,
        "new"
    );
    h.kid = Some("old".into());
    let t = mint_with(&h, &claims(), 1);
    assert_eq!(
        verify(t.as_bytes(), &keys, &policy(), NOW),
        Err(JwtFailure::BadSignature)
    );
    // No kid: only a single configured key is unambiguous.
    let t = mint_with(&Header::new(Algorithm::RS256), &claims(), 0);
    assert!(check(&t).is_ok());
    assert_eq!(
        verify(t.as_bytes(), &keys, &policy(), NOW),
        Err(JwtFailure::UnknownKid)
    );
}

#[test]
fn alg_none_is_a_bad_algorithm() {
    let header = json!({"alg": "none", "kid": "k1", "typ": "JWT"});
    let t = format!("{}.{}.", b64(&header), b64(&claims()));
    assert_eq!(check(&t), Err(JwtFailure::BadAlgorithm));
    let header = json!({"alg": "None", "kid": "k1"});
    let t = format!("{}.{}.", b64(&header), b64(&claims()));
    assert_eq!(check(&t), Err(JwtFailure::BadAlgorithm));
}

#[test]
fn hs256_signed_with_the_public_key_as_secret_is_a_bad_algorithm() {
    // Key confusion: an HMAC "signature" made with bytes the attacker knows, the
    // issuer's public key in the encodings a verifier might hand to HMAC.
    for secret in [rsa(0).1.clone(), rsa(0).2.clone().into_bytes()] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let t = encode(&h, &claims(), &EncodingKey::from_secret(&secret).unwrap()).unwrap();
        assert_eq!(check(&t), Err(JwtFailure::BadAlgorithm));
    }
    // Even with HS256 somehow listed, an RSA key never verifies an HMAC token.
    let mut p = policy();
    p.algorithms.push(Algorithm::HS256);
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let t = encode(&h, &claims(), &EncodingKey::from_secret(&rsa(0).1).unwrap()).unwrap();
    assert_eq!(
        verify(t.as_bytes(), &[key("k1", 0)], &p, NOW),
        Err(JwtFailure::BadAlgorithm)
    );
}

#[test]
fn an_algorithm_not_configured_is_refused_and_a_key_pinned_to_another_too() {
    let mut h = Header::new(Algorithm::RS512);
    h.kid = Some("k1".into());
    let t = mint_with(&h, &claims(), 0);
    assert_eq!(check(&t), Err(JwtFailure::BadAlgorithm));
    let mut p = policy();
    p.algorithms.push(Algorithm::RS512);
    assert!(verify(t.as_bytes(), &[key("k1", 0)], &p, NOW).is_ok());
    let mut pinned = key("k1", 0);
    pinned.alg = Some(Algorithm::RS256);
    assert_eq!(
        verify(t.as_bytes(), &[pinned], &p, NOW),
        Err(JwtFailure::BadAlgorithm)
    );
}

#[test]
fn oversized_and_malformed_tokens_are_malformed() {
    let long = format!("{}{}", mint("k1", &claims()), "A".repeat(MAX_TOKEN_BYTES));
    assert_eq!(check(&long), Err(JwtFailure::Malformed));
    for bad in [
        "",
        "a.b",
        "a.b.c.d",
        "!!!.e30.",
        "e30.e30.",
        "bm90IGpzb24.e30.",
    ] {
        assert_eq!(check(bad), Err(JwtFailure::Malformed), "{bad}");
    }
    assert_eq!(
        verify(&[0xff, b'.', b'.'], &[key("k1", 0)], &policy(), NOW),
        Err(JwtFailure::Malformed)
    );
    let crit = json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]});
    let t = format!("{}.{}.sig", b64(&crit), b64(&claims()));
    assert_eq!(check(&t), Err(JwtFailure::Malformed));
}

#[test]
fn methods_have_their_azure_names() {
    assert_eq!(JwtMethod::from_name("CUSTOM-JWT"), Some(JwtMethod::Custom));
    assert_eq!(JwtMethod::from_name("OAUTH2-JWT"), Some(JwtMethod::OAuth2));
    assert_eq!(JwtMethod::from_name("custom-jwt"), None);
}
