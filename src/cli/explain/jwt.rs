//! `mqttgate explain --jwt FILE`: the JWT decision (SPEC §9) step by step. Like the
//! certificate report it decides nothing: the token's header and claims are shown as the
//! token states them (unverified), the answer is `Trust::decide`'s, with the same
//! credentials a live CONNECT carrying this token would give, and what the broker sees is
//! `upstream_connect`'s.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use rustls::pki_types::UnixTime;
use serde_json::{Map, Value};

use super::{upstream_view, Explanation};
use crate::auth::jwt::JwtMethod;
use crate::auth::{Credentials, Denied};
use crate::cli::CliError;
use crate::config::Config;
use crate::mqtt::code;
use crate::trust::cert::format_time;
use crate::trust::registry::AttributeValue;
use crate::trust::{unix_now, Trust};

/// Loads the configuration and everything it names, reads the token file (the compact
/// JWT; surrounding whitespace ignored) and explains the decision as of now.
pub fn explain_jwt(
    config_file: &Path,
    token_file: &Path,
    method: &str,
) -> Result<Explanation, CliError> {
    let config = Config::load(config_file)?;
    let trust = Trust::load(&config, 0)?;
    let bytes = std::fs::read(token_file).map_err(|e| format!("{}: {e}", token_file.display()))?;
    let token = bytes.trim_ascii();
    Ok(explain_jwt_loaded(
        &config,
        &trust,
        token,
        method,
        unix_now(),
    ))
}

/// Explains the decision for `token` sent with Authentication Method `method`, against
/// already-loaded state, at unix time `now`.
pub fn explain_jwt_loaded(
    config: &Config,
    trust: &Trust,
    token: &[u8],
    method: &str,
    now: i64,
) -> Explanation {
    let mut lines = Vec::new();
    let mut line = |s: String| lines.push(s);
    line(format!(
        "token: {} bytes; as it states itself (unverified): {}",
        token.len(),
        stated(token)
    ));
    match &trust.jwt {
        None => line("jwt: [auth.jwt] is not configured: no method is accepted".into()),
        Some(jwt) => {
            let p = &jwt.policy;
            let methods: Vec<&str> = p.methods.iter().map(|m| m.name()).collect();
            line(format!(
                "jwt: method {method:?}: {} (accepted: {})",
                match JwtMethod::from_name(method) {
                    Some(m) if p.methods.contains(&m) => "accepted",
                    _ => "NOT accepted",
                },
                methods.join(", ")
            ));
            let algs: Vec<String> = p.algorithms.iter().map(|a| format!("{a:?}")).collect();
            line(format!(
                "jwt: wants iss {:?}, aud one of {:?}, alg one of [{}], exp/nbf with {} s skew{}",
                p.issuer,
                p.audiences,
                algs.join(", "),
                p.skew_seconds,
                if p.require_registered {
                    ", sub an enabled registry client"
                } else {
                    ""
                }
            ));
            let keys: Vec<String> = jwt
                .keys
                .iter()
                .map(|k| format!("{:?} ({})", k.kid, k.file))
                .collect();
            line(format!("jwt: keys by kid: {}", keys.join(", ")));
        }
    }

    // The answer: the predicate a live connection gets.
    let at = UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64));
    let credentials = Credentials::Jwt { method, token };
    let decision = match trust.decide(&credentials, at) {
        Ok((_, decision)) => decision,
        Err(_) => unreachable!("a token involves no certificate admission"),
    };
    let allowed = decision.is_ok();
    match &decision {
        Ok(id) => {
            line(format!(
                "result: ALLOWED as {:?} (method jwt, client {:?}, {}, name from {}) until {}",
                id.authentication_name,
                id.client_name,
                id.scheme
                    .map_or("registry not consulted".to_string(), |s| s.to_string()),
                id.source.label(),
                format_time(id.valid_until)
            ));
            line(attributes_line(&id.attributes));
            line(upstream_view(config, id, None));
            line("upstream: the Authentication Method and Data properties are removed".into());
            line(format!(
                "connack: MQTT 5: 0x{:02X} success from the broker, with Authentication Method {method:?} added by mqttgate; the session ends after {}",
                code::V5_SUCCESS,
                format_time(id.valid_until)
            ));
        }
        Err(d) => {
            line(format!(
                "result: DENIED after CONNECT: {} (reason {})",
                d.reason,
                d.reason.label()
            ));
            let (code, text) = match d.reason {
                Denied::BadAuthenticationMethod => (
                    code::V5_BAD_AUTHENTICATION_METHOD,
                    "bad authentication method",
                ),
                _ => (code::V5_NOT_AUTHORIZED, "not authorized"),
            };
            line(format!("connack: MQTT 5: 0x{code:02X} {text}"));
        }
    }
    Explanation { lines, allowed }
}

/// The header's alg and kid and the registered claims, decoded for display only.
fn stated(token: &[u8]) -> String {
    let part = |i: usize| -> Option<Map<String, Value>> {
        let text = std::str::from_utf8(token).ok()?;
        let encoded = text.split('.').nth(i)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let (Some(header), Some(claims)) = (part(0), part(1)) else {
        return "not a readable JWT".into();
    };
    let show = |m: &Map<String, Value>, k: &str| match m.get(k) {
        None => format!("{k} (none)"),
        Some(v @ Value::Number(n)) if k == "exp" || k == "nbf" => match n.as_i64() {
            Some(t) => format!("{k} {}", format_time(t)),
            None => format!("{k} {v}"),
        },
        Some(v) => format!("{k} {v}"),
    };
    let fields: Vec<String> = [(&header, "alg"), (&header, "kid")]
        .into_iter()
        .chain(
            ["iss", "aud", "sub", "exp", "nbf", "jti"]
                .into_iter()
                .map(|k| (&claims, k)),
        )
        .map(|(m, k)| show(m, k))
        .collect();
    fields.join(", ")
}

/// The explain line listing a client's attributes ("none" when it has none); the JWT and
/// webhook explanations both print it.
pub(super) fn attributes_line(attributes: &[(String, AttributeValue)]) -> String {
    let attrs: Vec<String> = attributes
        .iter()
        .map(|(k, v)| format!("{k}={}", attribute(v)))
        .collect();
    match attrs.is_empty() {
        true => "attributes: none".to_string(),
        false => format!("attributes: {}", attrs.join(", ")),
    }
}

fn attribute(v: &AttributeValue) -> String {
    match v {
        AttributeValue::Int(i) => i.to_string(),
        AttributeValue::Bool(b) => b.to_string(),
        AttributeValue::String(s) => format!("{s:?}"),
        AttributeValue::Strings(list) => format!("{list:?}"),
    }
}

#[cfg(all(test, feature = "demo"))]
mod tests;
