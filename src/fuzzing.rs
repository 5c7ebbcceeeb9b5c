//! What the cargo-fuzz targets (`fuzz/`) need beyond the public API: a JWT signed with a
//! key of their own, so the claims checks behind the signature are reached with any
//! header and claims. Not part of the API; nothing in the product calls it.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::auth::jwt::{self, JwtClaims, JwtFailure, JwtKey, JwtMethod, JwtPolicy};

const SECRET: &[u8] = b"mqttgate fuzzing key";

fn key() -> JwtKey {
    JwtKey {
        kid: "fuzz".into(),
        key: DecodingKey::from_secret(SECRET).expect("an hmac key takes any bytes"),
        alg: None,
        file: "fuzz".into(),
    }
}

/// HS256, which `[auth.jwt]` never allows (refused at load): here it only stands in for a
/// signature the fuzzer can make, so what follows the signature check is fuzzed.
fn policy() -> JwtPolicy {
    JwtPolicy {
        issuer: "https://issuer.example".into(),
        audiences: vec!["mqttgate".into()],
        algorithms: vec![Algorithm::HS256],
        skew_seconds: 60,
        methods: vec![JwtMethod::Custom],
        require_registered: false,
    }
}

/// Verifies `token` as it came, at `now`.
pub fn jwt_raw(token: &[u8], now: i64) -> Result<JwtClaims, JwtFailure> {
    jwt::verify(token, &[key()], &policy(), now)
}

/// Verifies the token whose JSON parts are `header` and `claims`, signed, at `now`; also
/// returns the token.
pub fn jwt_signed(
    header: &[u8],
    claims: &[u8],
    now: i64,
) -> (Vec<u8>, Result<JwtClaims, JwtFailure>) {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut token = format!("{}.{}", b64.encode(header), b64.encode(claims));
    let mac = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
    let tag = aws_lc_rs::hmac::sign(&mac, token.as_bytes());
    token.push('.');
    token.push_str(&b64.encode(tag.as_ref()));
    let verified = jwt_raw(token.as_bytes(), now);
    (token.into_bytes(), verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_token_reaches_the_claims() {
        let header = br#"{"alg":"HS256","kid":"fuzz"}"#;
        let claims =
            br#"{"sub":"s","exp":2000,"iss":"https://issuer.example","aud":"mqttgate","room":7}"#;
        let (_, verified) = jwt_signed(header, claims, 1000);
        let claims = verified.unwrap();
        assert_eq!((claims.sub.as_str(), claims.exp), ("s", 2000));
        // Past exp (and the skew): the claims were checked, not only the signature.
        let (_, late) = jwt_signed(
            header,
            br#"{"sub":"s","exp":2000,"iss":"https://issuer.example","aud":"mqttgate"}"#,
            3000,
        );
        assert_eq!(late, Err(JwtFailure::Expired));
    }
}
