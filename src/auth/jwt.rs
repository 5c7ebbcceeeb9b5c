//! SPEC §9, JWT authentication (Azure's `CUSTOM-JWT`): a compact JWT from the CONNECT's
//! Authentication Data, checked against the configured issuer, audiences, algorithms and
//! keys. Pure: no I/O and no clock (`now` is an argument); the keys arrive loaded by
//! `trust::jwt_keys`, and the caller turns the claims into an `Identity`.
//!
//! jsonwebtoken checks the signature only; every claim is checked here, against `now`, so
//! each failure has its own label and `explain` and the live re-decision see one answer.

use std::str::FromStr;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::trust::registry::AttributeValue;

/// SPEC §9: a longer token is refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The Authentication Method names JWT clients may send (SPEC §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwtMethod {
    /// `CUSTOM-JWT`: Azure's tokens from any OIDC issuer.
    Custom,
    /// `OAUTH2-JWT`: Azure's Entra ID tokens; accepted only when configured.
    OAuth2,
}

impl JwtMethod {
    pub fn name(self) -> &'static str {
        match self {
            JwtMethod::Custom => "CUSTOM-JWT",
            JwtMethod::OAuth2 => "OAUTH2-JWT",
        }
    }

    pub fn from_name(s: &str) -> Option<JwtMethod> {
        [JwtMethod::Custom, JwtMethod::OAuth2]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// What a token must satisfy, from `[auth.jwt]`.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtPolicy {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Never empty, never HMAC (refused at load, so a public key can never be used as an
    /// HMAC secret).
    pub algorithms: Vec<Algorithm>,
    /// Tolerance for the issuer's clock, applied to `exp` and `nbf`.
    pub skew_seconds: i64,
    pub methods: Vec<JwtMethod>,
    /// The `sub` must also be an enabled registry client, whose state then applies.
    pub require_registered: bool,
}

/// One issuer key, chosen by the token's `kid`.
pub struct JwtKey {
    pub kid: String,
    pub key: DecodingKey,
    /// The only algorithm this key may verify, when its JWKS entry names one.
    pub alg: Option<Algorithm>,
    /// The file it came from, for `check` and `explain`.
    pub file: String,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("file", &self.file)
            .finish()
    }
}

/// What a valid token says about its holder.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtClaims {
    /// The authentication name.
    pub sub: String,
    /// Logged instead of the token, which is never logged.
    pub jti: Option<String>,
    pub exp: i64,
    pub kid: String,
    /// Custom claims of type int32, string or string[], sorted by name.
    pub attributes: Vec<(String, AttributeValue)>,
}

/// Why a token was refused; a metric label each (SPEC §9). The client hears the same
/// CONNACK for all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum JwtFailure {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's signature does not verify with its key")]
    BadSignature,
    #[error("no configured key has the token's kid")]
    UnknownKid,
    #[error("the token's issuer is not the configured issuer")]
    BadIssuer,
    #[error("the token's audience has none of the configured audiences")]
    BadAudience,
    #[error("the token's algorithm is not one of the configured algorithms")]
    BadAlgorithm,
    #[error("the token is not a well-formed JWT with sub and exp")]
    Malformed,
}

impl JwtFailure {
    pub const ALL: [JwtFailure; 8] = [
        JwtFailure::Expired,
        JwtFailure::NotYetValid,
        JwtFailure::BadSignature,
        JwtFailure::UnknownKid,
        JwtFailure::BadIssuer,
        JwtFailure::BadAudience,
        JwtFailure::BadAlgorithm,
        JwtFailure::Malformed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            JwtFailure::Expired => "expired",
            JwtFailure::NotYetValid => "not_yet_valid",
            JwtFailure::BadSignature => "bad_signature",
            JwtFailure::UnknownKid => "unknown_kid",
            JwtFailure::BadIssuer => "bad_issuer",
            JwtFailure::BadAudience => "bad_audience",
            JwtFailure::BadAlgorithm => "bad_algorithm",
            JwtFailure::Malformed => "malformed",
        }
    }
}

/// Registered claim names (RFC 7519 §4.1): never attributes.
const REGISTERED: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// SPEC §9: the token's header (algorithm, then key), signature, then claims, at `now`
/// (unix seconds).
pub fn verify(
    token: &[u8],
    keys: &[JwtKey],
    policy: &JwtPolicy,
    now: i64,
) -> Result<JwtClaims, JwtFailure> {
    use JwtFailure::*;
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Malformed);
    }
    let text = std::str::from_utf8(token).map_err(|_| Malformed)?;
    let mut parts = text.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed);
    };
    let header = json_object(header)?;
    // RFC 7515 §4.1.11: an extension we do not understand must not be ignored.
    if header.contains_key("crit") {
        return Err(Malformed);
    }
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a,
        _ => return Err(Malformed),
    };
    // `none` and every algorithm not configured (HMAC never is) stop here, before a key
    // is chosen: that is what makes key confusion impossible.
    let alg = Algorithm::from_str(alg).map_err(|_| BadAlgorithm)?;
    if !policy.algorithms.contains(&alg) {
        return Err(BadAlgorithm);
    }
    let key = match header.get("kid") {
        Some(Value::String(kid)) => keys.iter().find(|k| &k.kid == kid),
        // Without a kid, only an issuer with a single key is unambiguous.
        None if keys.len() == 1 => keys.first(),
        _ => None,
    }
    .ok_or(UnknownKid)?;
    if key.alg.is_some_and(|a| a != alg) || key.key.family() != alg.family() {
        return Err(BadAlgorithm);
    }
    let mut signature_only = Validation::new(alg);
    signature_only.required_spec_claims.clear();
    signature_only.validate_exp = false;
    signature_only.validate_nbf = false;
    signature_only.validate_aud = false;
    let claims = jsonwebtoken::decode::<Map<String, Value>>(text, &key.key, &signature_only)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => BadSignature,
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => BadAlgorithm,
            _ => Malformed,
        })?
        .claims;

    let sub = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(Malformed),
    };
    let exp = claims.get("exp").ok_or(Malformed).and_then(numeric_date)?;
    let nbf = claims.get("nbf").map(numeric_date).transpose()?;
    if claims.get("iss").and_then(Value::as_str) != Some(policy.issuer.as_str()) {
        return Err(BadIssuer);
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => policy.audiences.contains(a),
        Some(Value::Array(list)) => list.iter().any(|a| {
            a.as_str()
                .is_some_and(|a| policy.audiences.iter().any(|w| w == a))
        }),
        _ => false,
    };
    if !audience_ok {
        return Err(BadAudience);
    }
    // RFC 7519 §4.1.4: not accepted on or after exp.
    if now >= exp.saturating_add(policy.skew_seconds) {
        return Err(Expired);
    }
    if nbf.is_some_and(|nbf| now.saturating_add(policy.skew_seconds) < nbf) {
        return Err(NotYetValid);
    }
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut attributes: Vec<(String, AttributeValue)> = claims
        .into_iter()
        .filter(|(k, _)| !REGISTERED.contains(&k.as_str()))
        .filter_map(|(k, v)| attribute(v).map(|v| (k, v)))
        .collect();
    attributes.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(JwtClaims {
        sub,
        jti,
        exp,
        kid: key.kid.clone(),
        attributes,
    })
}

/// The last second the token is accepted by [`verify`] (its `exp` plus the skew, minus
/// one): the session's validity end, so the timer and a re-decision agree.
pub fn valid_until(claims: &JwtClaims, policy: &JwtPolicy) -> i64 {
    claims
        .exp
        .saturating_add(policy.skew_seconds)
        .saturating_sub(1)
}

/// One base64url JSON object (a JWT header).
fn json_object(part: &str) -> Result<Map<String, Value>, JwtFailure> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtFailure::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtFailure::Malformed)
}

/// A NumericDate (RFC 7519 §2): seconds, possibly fractional; the fraction is dropped.
fn numeric_date(v: &Value) -> Result<i64, JwtFailure> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .ok_or(JwtFailure::Malformed),
        _ => Err(JwtFailure::Malformed),
    }
}

/// SPEC §9: a custom claim of type int32, string or string[] is an attribute; any other
/// (object, boolean, float, a wider integer, a mixed array) is left out.
fn attribute(v: Value) -> Option<AttributeValue> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .filter(|i| i32::try_from(*i).is_ok())
            .map(AttributeValue::Int),
        Value::String(s) => Some(AttributeValue::String(s)),
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(AttributeValue::Strings),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
