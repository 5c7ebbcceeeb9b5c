//! Webhook authentication (SPEC §9), the pure part: who decides a client ([`route`]), the
//! request mqttgate sends (Azure's JSON shape), the answer read strictly into an
//! [`Answer`], the decision an answer makes ([`decide`]), and the bounded cache of answers
//! keyed by the whole request. No I/O, no clock: the HTTPS call is `connection::webhook`,
//! the time is passed in.
//!
//! Where Azure is silent, the choices made here:
//! - fields the client did not send are left out of the request (not sent as null);
//!   `clientCertificateChain` is every certificate the client presented, leaf first;
//! - an answer must be a JSON object with only Azure's fields (`decision`,
//!   `clientAuthenticationName`, `attributes`, `expiration`, `errorReason`); `decision`
//!   is compared ignoring ASCII case; anything else is [`Answer::Malformed`], which denies;
//! - `clientAuthenticationName` must be 1 to [`MAX_NAME_CHARS`] characters without
//!   control characters (it goes upstream as the MQTT username);
//! - an allow without `expiration` holds for [`DEFAULT_VALIDITY_SECONDS`] from its
//!   receipt, and is not cached (nothing says how long it may be reused); an allow whose
//!   `expiration` has already passed denies (`webhook_expired`);
//! - deny answers are never cached: the next CONNECT asks again.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::{Denial, Denied, Identity, IdentitySource, Method, Policy};
use crate::config::Decides;
use crate::trust::cert::CertInfo;
use crate::trust::registry::{AttributeValue, Registry};

/// How long an allow without `expiration` holds.
pub const DEFAULT_VALIDITY_SECONDS: i64 = 3600;
/// Azure's limit on authentication names.
pub const MAX_NAME_CHARS: usize = 128;
/// A larger answer is malformed, read no further.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How much of a deny's `errorReason` goes to the audit log.
const MAX_REASON_CHARS: usize = 256;

/// What the webhook is told about one CONNECT (SPEC §9). Borrowed from the CONNECT and
/// the TLS session; serialised once, and hashed for the cache.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a> {
    pub client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "base64_opt")]
    pub password: Option<&'a [u8]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication_method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "base64_opt")]
    pub authentication_data: Option<&'a [u8]>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "leaf_pem")]
    pub client_certificate: Option<&'a [CertificateDer<'static>]>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "chain_pem")]
    pub client_certificate_chain: Option<&'a [CertificateDer<'static>]>,
}

impl Request<'_> {
    /// The JSON body. Field order is fixed by the struct, so equal requests have equal
    /// bodies (the cache relies on it).
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("strings and byte strings always serialise")
    }
}

fn base64_opt<S: serde::Serializer>(v: &Option<&[u8]>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(bytes) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes)),
        None => s.serialize_none(),
    }
}

fn leaf_pem<S: serde::Serializer>(
    v: &Option<&[CertificateDer<'static>]>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.and_then(|c| c.first()).map(pem).unwrap_or_default())
}

fn chain_pem<S: serde::Serializer>(
    v: &Option<&[CertificateDer<'static>]>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.unwrap_or_default().iter().map(pem).collect::<String>())
}

/// RFC 7468 text: base64 in 64-character lines between the CERTIFICATE labels.
pub fn pem(cert: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The cache key: SHA-256 of the whole request body, so the cache holds no password.
pub fn cache_key(body: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The webhook's answer, as read. Never holds what the client sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Allow {
        name: String,
        /// Sorted by key.
        attributes: Vec<(String, AttributeValue)>,
        /// The answer's `expiration` (unix seconds), when it had one.
        expiration: Option<i64>,
        /// When mqttgate received it: an allow without `expiration` holds from here.
        received_at: i64,
    },
    Deny {
        /// `errorReason`, cut to a bounded length; for the audit log only.
        reason: Option<String>,
    },
    /// Not an answer SPEC §9 allows; why, for the log.
    Malformed(&'static str),
}

impl Answer {
    /// Reads an answer strictly; anything but Azure's shape is `Malformed`.
    pub fn parse(body: &[u8], received_at: i64) -> Answer {
        if body.len() > MAX_ANSWER_BYTES {
            return Answer::Malformed("answer too large");
        }
        let raw: RawAnswer = match serde_json::from_slice(body) {
            Ok(raw) => raw,
            Err(_) => return Answer::Malformed("not an answer object"),
        };
        match raw.decision.to_ascii_lowercase().as_str() {
            "deny" => Answer::Deny {
                reason: raw
                    .error_reason
                    .map(|r| r.chars().take(MAX_REASON_CHARS).collect()),
            },
            "allow" => match allow(raw, received_at) {
                Ok(answer) => answer,
                Err(why) => Answer::Malformed(why),
            },
            _ => Answer::Malformed("decision is not allow or deny"),
        }
    }

    /// The `result` label of `mqttgate_webhook_requests_total` for a fresh answer.
    pub fn label(&self) -> &'static str {
        match self {
            Answer::Allow { .. } => "allow",
            Answer::Deny { .. } => "deny",
            Answer::Malformed(_) => "malformed",
        }
    }

    /// Until when this answer may be reused for the same request; None: not cached.
    pub fn cache_until(&self) -> Option<i64> {
        match self {
            Answer::Allow { expiration, .. } => *expiration,
            Answer::Deny { .. } | Answer::Malformed(_) => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAnswer {
    decision: String,
    client_authentication_name: Option<String>,
    attributes: Option<serde_json::Map<String, serde_json::Value>>,
    expiration: Option<i64>,
    error_reason: Option<String>,
}

fn allow(raw: RawAnswer, received_at: i64) -> Result<Answer, &'static str> {
    let name = raw
        .client_authentication_name
        .ok_or("allow without clientAuthenticationName")?;
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err("clientAuthenticationName is empty, too long or has control characters");
    }
    if raw.expiration.is_some_and(|e| e <= 0) {
        return Err("expiration is not a unix time");
    }
    let mut attributes = Vec::new();
    for (key, value) in raw.attributes.unwrap_or_default() {
        attributes.push((key, attribute(value)?));
    }
    attributes.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Answer::Allow {
        name,
        attributes,
        expiration: raw.expiration,
        received_at,
    })
}

/// Azure's attribute types: int32, string, or an array of strings.
fn attribute(value: serde_json::Value) -> Result<AttributeValue, &'static str> {
    use serde_json::Value;
    const BAD: &str = "an attribute is not an int32, a string or an array of strings";
    Ok(match value {
        Value::Number(n) => {
            let n = n
                .as_i64()
                .filter(|n| i32::try_from(*n).is_ok())
                .ok_or(BAD)?;
            AttributeValue::Int(n)
        }
        Value::String(s) => AttributeValue::String(s),
        Value::Array(items) => AttributeValue::Strings(
            items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(BAD),
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(BAD),
    })
}

/// Why the webhook's answer refused a client; each one a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WebhookDenied {
    #[error("the webhook denied the client")]
    Deny,
    #[error("the webhook's answer is malformed")]
    Malformed,
    #[error("the webhook's allow has expired")]
    Expired,
}

impl WebhookDenied {
    pub const ALL: [WebhookDenied; 3] = [
        WebhookDenied::Deny,
        WebhookDenied::Malformed,
        WebhookDenied::Expired,
    ];

    pub fn label(self) -> &'static str {
        match self {
            WebhookDenied::Deny => "webhook_deny",
            WebhookDenied::Malformed => "webhook_malformed",
            WebhookDenied::Expired => "webhook_expired",
        }
    }
}

/// SPEC §9: what an answer decides at `now` (unix seconds). An allow is the identity
/// the webhook named, valid until its `expiration` (or the default validity).
pub fn decide(answer: &Answer, now: i64) -> Result<Identity, Denial> {
    let deny = |reason, name: Option<&str>| Denial {
        reason: Denied::Webhook(reason),
        name: name.map(str::to_string),
        source: Some(IdentitySource::Webhook),
        scheme: None,
    };
    match answer {
        Answer::Deny { .. } => Err(deny(WebhookDenied::Deny, None)),
        Answer::Malformed(_) => Err(deny(WebhookDenied::Malformed, None)),
        Answer::Allow {
            name,
            attributes,
            expiration,
            received_at,
        } => {
            let valid_until =
                expiration.unwrap_or(received_at.saturating_add(DEFAULT_VALIDITY_SECONDS));
            if valid_until <= now {
                return Err(deny(WebhookDenied::Expired, Some(name)));
            }
            Ok(Identity {
                authentication_name: name.clone(),
                client_name: name.clone(),
                scheme: None,
                source: IdentitySource::Webhook,
                valid_until,
                method: Method::Webhook,
                attributes: attributes.clone(),
                jti: None,
            })
        }
    }
}

/// Who decides a client (SPEC §9, last paragraph).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// JWT (a v5 Authentication Method with `[auth.jwt]`) or the registry, as SPEC §1–§2
    /// say; the webhook is never asked.
    Elsewhere,
    Webhook,
}

/// Who the client is, as far as choosing its method goes.
#[derive(Clone, Copy, Debug)]
pub struct Presented {
    pub certificate: bool,
    /// A v5 CONNECT with an Authentication Method (or a property list that does not
    /// parse), with `[auth.jwt]` configured: JWT's, whatever `decides` says.
    pub jwt: bool,
}

/// Which method decides a client, before anything is asked. `registered` is only called
/// in `unregistered` mode for a certificate client: a registry client (enabled or not)
/// never waits on the webhook.
pub fn route(
    decides: Option<Decides>,
    presented: Presented,
    registered: impl FnOnce() -> bool,
) -> Route {
    if presented.jwt {
        return Route::Elsewhere;
    }
    match (decides, presented.certificate) {
        (None, _) | (Some(Decides::NoCertificate), true) => Route::Elsewhere,
        (Some(_), false) | (Some(Decides::All), true) => Route::Webhook,
        (Some(Decides::Unregistered), true) => match registered() {
            true => Route::Elsewhere,
            false => Route::Webhook,
        },
    }
}

/// Does the registry know the client this certificate and username name? The name is
/// found as SPEC §2 finds it; no signature is checked (the decision that follows does).
pub fn registered(
    leaf: &[u8],
    username: Option<&str>,
    registry: &Registry,
    policy: &Policy,
) -> bool {
    CertInfo::parse(leaf).is_ok_and(|cert| {
        super::authentication_name(&cert, username, &policy.name_sources)
            .is_some_and(|(name, _)| registry.get(&name).is_some())
    })
}

/// Answers kept for reuse, keyed by the request's hash, each until its `expiration`.
/// Bounded: when full, expired entries go first, then the one that expires soonest.
pub struct Cache {
    max: usize,
    entries: HashMap<[u8; 32], (i64, Arc<Answer>)>,
}

impl Cache {
    pub fn new(max: usize) -> Cache {
        Cache {
            max,
            entries: HashMap::new(),
        }
    }

    /// The answer stored for this request, if it has not expired at `now`.
    pub fn get(&mut self, key: &[u8; 32], now: i64) -> Option<Arc<Answer>> {
        match self.entries.get(key) {
            Some((until, answer)) if *until > now => Some(answer.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps an answer that may be reused (see [`Answer::cache_until`]).
    pub fn insert(&mut self, key: [u8; 32], answer: Arc<Answer>, now: i64) {
        let Some(until) = answer.cache_until().filter(|u| *u > now) else {
            return;
        };
        if self.max == 0 {
            return;
        }
        if self.entries.len() >= self.max && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (u, _)| *u > now);
            if self.entries.len() >= self.max {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (u, _))| *u)
                    .map(|(k, _)| *k);
                if let Some(k) = soonest {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, (until, answer));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests;
