//! A JWT session's re-authentication (SPEC §9): what mqttgate makes of a client's MQTT 5
//! AUTH packet. The token is decided by the predicate that decided the CONNECT
//! (`Trust::decide` with `Credentials::Jwt`), against the newest trust state, and must name
//! the session's own authentication name. Pure: the session loop hands the packet in,
//! then applies the new identity, answers, counts and logs ([`super::session`]).

use rustls::pki_types::UnixTime;

use crate::auth::{self, Denied, Identity};
use crate::mqtt::auth::{parse, REAUTHENTICATE};
use crate::mqtt::code;
use crate::trust::{Credentials, Trust};

/// Why a re-authentication failed. Each variant is one metric label and one DISCONNECT
/// reason code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The session did not connect with a token (a certificate client): MQTT 5 allows
    /// AUTH only after a CONNECT with an Authentication Method.
    NotJwt,
    /// Longer than the relay holds (`authorized_relay::MAX_AUTH`); not read.
    TooLarge,
    /// Not a well-formed AUTH packet.
    Malformed,
    /// A reason other than Re-authenticate (0x19): mqttgate never starts an exchange a
    /// client could continue (0x18), and Success is not the client's to send.
    BadReason,
    /// Not the method the session connected with (MQTT-4.12.1-1).
    OtherMethod,
    /// The token is refused, for the same reason a CONNECT with it would be.
    Token(Denied),
    /// A valid token for another authentication name: a session never changes whose it is.
    OtherName,
}

impl Failure {
    /// The `reason` label of `mqttgate_reauthentications_total`.
    pub fn label(self) -> &'static str {
        match self {
            Failure::NotJwt => "not_jwt",
            Failure::TooLarge => "too_large",
            Failure::Malformed => "malformed_packet",
            Failure::BadReason => "bad_reason",
            Failure::OtherMethod => "other_method",
            Failure::Token(d) => d.label(),
            Failure::OtherName => "other_name",
        }
    }

    /// The DISCONNECT reason code the client hears: 0x87 when the credentials are refused
    /// (SPEC §9), the MQTT 5 code for the protocol broken otherwise.
    pub fn disconnect_code(self) -> u8 {
        match self {
            Failure::Token(_) | Failure::OtherName => code::V5_NOT_AUTHORIZED,
            Failure::Malformed => code::V5_MALFORMED,
            Failure::TooLarge => code::V5_PACKET_TOO_LARGE,
            Failure::NotJwt | Failure::BadReason | Failure::OtherMethod => code::V5_PROTOCOL_ERROR,
        }
    }

    /// Whether this is a decision about credentials, which audit-only mode (SPEC §12)
    /// records without enforcing; a broken protocol ends the session in every mode, as
    /// the authorized relay's protocol errors do.
    pub fn is_denial(self) -> bool {
        matches!(self, Failure::Token(_) | Failure::OtherName)
    }
}

/// Decides the AUTH `packet` of a session that connected with `method` (None: not a JWT
/// session) as `name`: the new identity and the token to keep, when it is allowed.
pub fn decide(
    trust: &Trust,
    method: Option<&str>,
    name: &str,
    packet: Result<&[u8], usize>,
    now: UnixTime,
) -> Result<(Identity, Vec<u8>), Failure> {
    let method = method.ok_or(Failure::NotJwt)?;
    let packet = packet.map_err(|_| Failure::TooLarge)?;
    let auth = parse(packet).map_err(|_| Failure::Malformed)?;
    if auth.reason != REAUTHENTICATE {
        return Err(Failure::BadReason);
    }
    if auth.method != Some(method) {
        return Err(Failure::OtherMethod);
    }
    // No Authentication Data is an empty token, which the token check calls malformed.
    let token = auth.data.unwrap_or_default();
    let identity = match trust.decide(&Credentials::Jwt { method, token }, now) {
        Ok((_, Ok(identity))) => identity,
        Ok((_, Err(denial))) => return Err(Failure::Token(denial.reason)),
        // Only certificate credentials fail admission.
        Err(_) => return Err(Failure::NotJwt),
    };
    if !auth::same_name(&identity.authentication_name, name) {
        return Err(Failure::OtherName);
    }
    Ok((identity, token.to_vec()))
}

// The fixture's server certificate and issuer key come from the demo PKI.
#[cfg(all(test, feature = "demo"))]
mod tests {
    use super::*;
    use crate::auth::jwt::JwtFailure;
    use crate::cli::pki::{Ca, LeafSpec};
    use crate::config::Config;
    use crate::mqtt::properties::id;
    use crate::mqtt::put_varint;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;
    use std::time::Duration;

    const NOW: u64 = 1_800_000_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        trust: Trust,
        key_pem: String,
    }

    /// A deployment with `[auth.jwt]` and one issuer key, kid "k1".
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = Ca::root("Reauth Root").unwrap();
        let server = root.issue(&LeafSpec::server()).unwrap();
        let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        w("server.pem", &server.cert_pem);
        w("server.key", &server.key_pem);
        w("ca.pem", &root.cert.cert_pem);
        w("clients.json", "[]");
        let kp =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        let cert = rcgen::CertificateParams::new(vec!["issuer".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        w("k1.pem", &cert.pem());
        w(
            "mqttgate.toml",
            "[tls]\ncertificate = \"server.pem\"\nprivate_key = \"server.key\"\nca_certificates = [\"ca.pem\"]\n[registry]\nclients = \"clients.json\"\n[auth.jwt]\nissuer = \"https://issuer.example\"\naudiences = [\"mqttgate\"]\nkeys = [\"k1.pem\"]\nskew_seconds = 0\n",
        );
        let config = Config::load(&dir.path().join("mqttgate.toml")).unwrap();
        Fixture {
            trust: Trust::load(&config, 0).unwrap(),
            _dir: dir,
            key_pem: kp.serialize_pem(),
        }
    }

    fn token(f: &Fixture, sub: &str, exp: u64) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("k1".into());
        let claims = json!({"iss": "https://issuer.example", "aud": "mqttgate", "sub": sub,
            "exp": exp, "jti": "t-2", "floor": 4});
        let key = EncodingKey::from_rsa_pem(f.key_pem.as_bytes()).unwrap();
        encode(&h, &claims, &key).unwrap()
    }

    /// A client's AUTH, built byte by byte.
    fn auth(reason: u8, method: Option<&str>, data: Option<&[u8]>) -> Vec<u8> {
        let mut props = Vec::new();
        let fields = [
            (id::AUTHENTICATION_METHOD, method.map(str::as_bytes)),
            (id::AUTHENTICATION_DATA, data),
        ];
        for (id, value) in fields {
            if let Some(v) = value {
                props.push(id);
                props.extend_from_slice(&(v.len() as u16).to_be_bytes());
                props.extend_from_slice(v);
            }
        }
        let mut body = vec![reason];
        put_varint(&mut body, props.len());
        body.extend_from_slice(&props);
        let mut out = vec![0xF0];
        put_varint(&mut out, body.len());
        out.extend_from_slice(&body);
        out
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    #[test]
    fn a_new_token_for_the_same_name_gives_its_identity_and_is_kept() {
        let f = fixture();
        let t = token(&f, "sensor-9", NOW + 600);
        let p = auth(REAUTHENTICATE, Some("CUSTOM-JWT"), Some(t.as_bytes()));
        // The name compares as the registry compares names.
        let (id, kept) = decide(&f.trust, Some("CUSTOM-JWT"), "SENSOR-9", Ok(&p), at(NOW)).unwrap();
        assert_eq!(id.authentication_name, "sensor-9");
        assert_eq!(id.valid_until, (NOW + 600 - 1) as i64);
        assert_eq!(id.jti.as_deref(), Some("t-2"));
        assert_eq!(id.attributes.len(), 1, "{:?}", id.attributes);
        assert_eq!(kept, t.as_bytes());
    }

    #[test]
    fn each_failure_has_its_label_and_disconnect_code() {
        let f = fixture();
        let good = token(&f, "sensor-9", NOW + 600);
        let good = good.as_bytes();
        let expired = token(&f, "sensor-9", NOW);
        let other = token(&f, "sensor-8", NOW + 600);
        let m = Some("CUSTOM-JWT");
        // (session method, packet, failure, its label, its DISCONNECT code)
        type Case<'a> = (
            Option<&'a str>,
            Result<Vec<u8>, usize>,
            Failure,
            &'a str,
            u8,
        );
        let cases: Vec<Case> = vec![
            (
                None,
                Ok(auth(REAUTHENTICATE, m, Some(good))),
                Failure::NotJwt,
                "not_jwt",
                0x82,
            ),
            (m, Err(70_000), Failure::TooLarge, "too_large", 0x95),
            (
                m,
                Ok(vec![0xF0, 0x05, 0x19]),
                Failure::Malformed,
                "malformed_packet",
                0x81,
            ),
            (
                m,
                Ok(auth(0x18, m, Some(good))),
                Failure::BadReason,
                "bad_reason",
                0x82,
            ),
            (
                m,
                Ok(auth(0x00, m, Some(good))),
                Failure::BadReason,
                "bad_reason",
                0x82,
            ),
            (
                m,
                Ok(auth(REAUTHENTICATE, Some("OAUTH2-JWT"), Some(good))),
                Failure::OtherMethod,
                "other_method",
                0x82,
            ),
            (
                m,
                Ok(auth(REAUTHENTICATE, None, Some(good))),
                Failure::OtherMethod,
                "other_method",
                0x82,
            ),
            (
                m,
                Ok(auth(REAUTHENTICATE, m, Some(expired.as_bytes()))),
                Failure::Token(Denied::Jwt(JwtFailure::Expired)),
                "expired",
                0x87,
            ),
            (
                m,
                Ok(auth(REAUTHENTICATE, m, None)),
                Failure::Token(Denied::Jwt(JwtFailure::Malformed)),
                "malformed",
                0x87,
            ),
            (
                m,
                Ok(auth(REAUTHENTICATE, m, Some(other.as_bytes()))),
                Failure::OtherName,
                "other_name",
                0x87,
            ),
        ];
        for (method, packet, want, label, code) in cases {
            let got = decide(
                &f.trust,
                method,
                "sensor-9",
                packet.as_deref().map_err(|n| *n),
                at(NOW),
            );
            assert_eq!(got.map(|_| ()), Err(want), "{label}");
            assert_eq!((want.label(), want.disconnect_code()), (label, code));
            assert_eq!(want.is_denial(), code == 0x87, "{label}");
        }
    }
}
