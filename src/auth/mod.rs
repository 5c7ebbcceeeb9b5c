//! The authentication decision of SPEC §2 and §9, after the TLS handshake: which method
//! applies ([`credentials`]), which authentication name the client claims, which registry
//! entry that is, and whether the certificate or the token proves it. Pure: no I/O, no
//! clock. For certificates the handshake already proved possession of the private key and
//! checked the leaf's dates, chain or pin; this module only applies the registry. Tokens
//! are checked by [`jwt::verify`], a webhook's answer by [`webhook::decide`].

pub mod grant;
pub mod jwt;
pub mod rewrite;
pub mod webhook;

use std::net::IpAddr;

use rustls::pki_types::CertificateDer;

use self::jwt::{JwtClaims, JwtFailure, JwtPolicy};
use crate::mqtt::{Connect, Version};
use crate::trust::cert::CertInfo;
use crate::trust::registry::{AttributeValue, Registry, Scheme, State};

/// A certificate field that can supply the authentication name when the CONNECT has no
/// username (Azure's `alternativeAuthenticationNameSources`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NameSource {
    Subject,
    Dns,
    Uri,
    Ip,
    Email,
}

impl NameSource {
    pub fn from_azure(s: &str) -> Option<NameSource> {
        Some(match s {
            "ClientCertificateSubject" => NameSource::Subject,
            "ClientCertificateDns" => NameSource::Dns,
            "ClientCertificateUri" => NameSource::Uri,
            "ClientCertificateIp" => NameSource::Ip,
            "ClientCertificateEmail" => NameSource::Email,
            _ => return None,
        })
    }

    pub fn azure_name(self) -> &'static str {
        match self {
            NameSource::Subject => "ClientCertificateSubject",
            NameSource::Dns => "ClientCertificateDns",
            NameSource::Uri => "ClientCertificateUri",
            NameSource::Ip => "ClientCertificateIp",
            NameSource::Email => "ClientCertificateEmail",
        }
    }
}

/// How `SubjectMatchesAuthenticationName` reads the subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectMatch {
    /// The subject's CN value (what Azure's samples rely on).
    CommonName,
    /// The whole subject DN in RFC 4514 form, e.g. `CN=sensor-17,O=Plant`.
    Rfc4514,
}

/// Where the authentication name came from; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentitySource {
    Username,
    Cert(NameSource),
    /// A verified token's `sub` claim.
    TokenSubject,
    /// The webhook's `clientAuthenticationName`.
    Webhook,
}

impl IdentitySource {
    pub fn label(self) -> &'static str {
        match self {
            IdentitySource::Username => "username",
            IdentitySource::Cert(NameSource::Subject) => "subject",
            IdentitySource::Cert(NameSource::Dns) => "dns",
            IdentitySource::Cert(NameSource::Uri) => "uri",
            IdentitySource::Cert(NameSource::Ip) => "ip",
            IdentitySource::Cert(NameSource::Email) => "email",
            IdentitySource::TokenSubject => "sub",
            IdentitySource::Webhook => "webhook",
        }
    }
}

/// How a client authenticates: one variant per method. Webhook authentication (SPEC §9)
/// is the next variant. A closed set, so every metric label and `explain` branch is
/// exhaustive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// A client certificate, admitted by `trust::admit`, and the registry (SPEC §1–§2).
    Certificate,
    /// A JWT in the v5 CONNECT's Authentication Data (SPEC §9).
    Jwt,
    /// An HTTPS service's answer about the CONNECT (SPEC §9).
    Webhook,
}

impl Method {
    pub fn label(self) -> &'static str {
        match self {
            Method::Certificate => "certificate",
            Method::Jwt => "jwt",
            Method::Webhook => "webhook",
        }
    }
}

/// What a client presented to prove who it is, one variant per [`Method`].
#[derive(Clone, Copy, Debug)]
pub enum Credentials<'a> {
    /// The chain from its TLS handshake (leaf first) and its CONNECT username.
    Certificate {
        chain: &'a [CertificateDer<'static>],
        username: Option<&'a str>,
    },
    /// The CONNECT's Authentication Method and Data (the compact token, empty when absent).
    Jwt { method: &'a str, token: &'a [u8] },
    /// The webhook's answer about the CONNECT, and the chain the client presented, if
    /// any (admitted again, as for a certificate client).
    Webhook {
        answer: &'a webhook::Answer,
        chain: Option<&'a [CertificateDer<'static>]>,
    },
}

impl Credentials<'_> {
    pub fn method(&self) -> Method {
        match self {
            Credentials::Certificate { .. } => Method::Certificate,
            Credentials::Jwt { .. } => Method::Jwt,
            Credentials::Webhook { .. } => Method::Webhook,
        }
    }
}

/// SPEC §9, which method applies: with JWT configured, a v5 CONNECT carrying an
/// Authentication Method is a JWT client (whatever certificate it also presented);
/// otherwise a certificate is decided by the registry; a client with neither is refused.
/// Without `[auth.jwt]` the Authentication Method is not mqttgate's and a certificate
/// decides, as before JWT existed (the properties then go to the broker untouched).
/// The clients the webhook decides are routed before this ([`webhook::route`]).
pub fn credentials<'a>(
    chain: Option<&'a [CertificateDer<'static>]>,
    connect: &'a Connect,
    jwt_enabled: bool,
) -> Result<Credentials<'a>, Denial> {
    let refuse = |reason| Denial {
        reason,
        name: None,
        source: None,
        scheme: None,
    };
    if jwt_enabled && connect.version == Version::V5 {
        // The CONNECT parsed, but its property list is only read here.
        let method = connect
            .authentication_method()
            .map_err(|_| refuse(Denied::Jwt(JwtFailure::Malformed)))?;
        if let Some(method) = method {
            let token = connect
                .authentication_data()
                .map_err(|_| refuse(Denied::Jwt(JwtFailure::Malformed)))?
                .unwrap_or_default();
            return Ok(Credentials::Jwt { method, token });
        }
    }
    match chain {
        Some(chain) if !chain.is_empty() => Ok(Credentials::Certificate {
            chain,
            username: connect.username.as_deref(),
        }),
        _ => Err(refuse(Denied::NoCredentials)),
    }
}

/// The namespace-wide settings the decision needs.
#[derive(Clone, Debug)]
pub struct Policy {
    pub name_sources: Vec<NameSource>,
    pub subject_match: SubjectMatch,
}

/// What the handshake established about the client's certificate.
pub struct Peer<'a> {
    pub cert: &'a CertInfo,
    /// The leaf chains to a registered CA certificate (as opposed to being admitted only
    /// because its thumbprint is registered).
    pub chains: bool,
}

/// An allowed client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The registry's spelling, which is what goes upstream.
    pub authentication_name: String,
    /// The registry entry's name; a token's `sub` when the registry is not consulted.
    pub client_name: String,
    /// The registry client's validation scheme; None for a token not checked against the
    /// registry, or a webhook's answer.
    pub scheme: Option<Scheme>,
    pub source: IdentitySource,
    /// Unix seconds after which the identity no longer holds: the certificate's notAfter,
    /// or its chain's when the scheme relies on the chain (set by `Trust::decide`); for a
    /// token, the last second [`jwt::verify`] accepts it (`exp` plus the skew, minus one).
    pub valid_until: i64,
    pub method: Method,
    /// Sorted by name: the registry client's attributes, or a token's custom claims
    /// (SPEC §9), so authorization sees one shape whatever the method.
    pub attributes: Vec<(String, AttributeValue)>,
    /// A token's `jti`, for logs (the token itself is never logged).
    pub jti: Option<String>,
}

impl Identity {
    /// Audit-only mode (SPEC §12): a client let through as itself, whatever the decision:
    /// its own username (if any), no attributes, no validity end.
    pub fn unverified(username: Option<&str>, method: Method) -> Identity {
        Identity {
            authentication_name: username.unwrap_or_default().to_string(),
            client_name: String::new(),
            scheme: None,
            source: IdentitySource::Username,
            valid_until: i64::MAX,
            method,
            attributes: Vec::new(),
            jti: None,
        }
    }
}

/// Why a client was refused. Every variant gets the same CONNACK; the variant only goes
/// to logs and metrics, so a client can't enumerate the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Denied {
    #[error("no username and no configured certificate field holds an authentication name")]
    NoAuthenticationName,
    #[error("no client has this authentication name")]
    UnknownClient,
    #[error("the client is disabled")]
    Disabled,
    #[error("certificate thumbprint is not one of the client's allowed thumbprints")]
    ThumbprintMismatch,
    #[error("client certificate does not chain to a registered CA")]
    NotChained,
    #[error(
        "no certificate field of the client's validation scheme equals its authentication name"
    )]
    NameMismatch,
    #[error("no client certificate and no authentication method")]
    NoCredentials,
    /// Answered with v5's 0x8C Bad authentication method rather than 0x87: the client
    /// can tell a method mqttgate does not take from a token it refused.
    #[error("authentication method not configured")]
    BadAuthenticationMethod,
    #[error("{0}")]
    Jwt(JwtFailure),
    #[error("{0}")]
    Webhook(webhook::WebhookDenied),
    /// SPEC §13: the verified name has a control character, or is too long for the PROXY
    /// v2 header the broker reads it from.
    #[error("the authentication name cannot be handed to the broker as it is")]
    NameNotForwardable,
    /// SPEC §13: under `username = "passthrough"` the CONNECT's username goes upstream, so
    /// it must be the verified name.
    #[error("the connect username is not the verified authentication name")]
    UsernameNotVerified,
    /// SPEC §13: the Will is a publish, decided when the CONNECT arrives.
    #[error("the will topic is not one the client may publish to")]
    WillNotAuthorized,
}

impl Denied {
    pub const ALL: [Denied; 22] = [
        Denied::NoAuthenticationName,
        Denied::UnknownClient,
        Denied::Disabled,
        Denied::ThumbprintMismatch,
        Denied::NotChained,
        Denied::NameMismatch,
        Denied::NoCredentials,
        Denied::BadAuthenticationMethod,
        Denied::Jwt(JwtFailure::ALL[0]),
        Denied::Jwt(JwtFailure::ALL[1]),
        Denied::Jwt(JwtFailure::ALL[2]),
        Denied::Jwt(JwtFailure::ALL[3]),
        Denied::Jwt(JwtFailure::ALL[4]),
        Denied::Jwt(JwtFailure::ALL[5]),
        Denied::Jwt(JwtFailure::ALL[6]),
        Denied::Jwt(JwtFailure::ALL[7]),
        Denied::Webhook(webhook::WebhookDenied::ALL[0]),
        Denied::Webhook(webhook::WebhookDenied::ALL[1]),
        Denied::Webhook(webhook::WebhookDenied::ALL[2]),
        Denied::NameNotForwardable,
        Denied::UsernameNotVerified,
        Denied::WillNotAuthorized,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Denied::NoAuthenticationName => "no_authentication_name",
            Denied::UnknownClient => "unknown_client",
            Denied::Disabled => "disabled",
            Denied::ThumbprintMismatch => "thumbprint_mismatch",
            Denied::NotChained => "not_chained",
            Denied::NameMismatch => "name_mismatch",
            Denied::NoCredentials => "no_credentials",
            Denied::BadAuthenticationMethod => "bad_authentication_method",
            Denied::Jwt(f) => f.label(),
            Denied::Webhook(w) => w.label(),
            Denied::NameNotForwardable => "name_not_forwardable",
            Denied::UsernameNotVerified => "username_not_verified",
            Denied::WillNotAuthorized => "will_not_authorized",
        }
    }
}

/// A refusal with what was known when it was made, for the audit log and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: Denied,
    pub name: Option<String>,
    pub source: Option<IdentitySource>,
    pub scheme: Option<Scheme>,
}

/// SPEC §2: name, then client, then the client's scheme.
pub fn decide(
    peer: &Peer<'_>,
    username: Option<&str>,
    registry: &Registry,
    policy: &Policy,
) -> Result<Identity, Denial> {
    let (name, source) =
        authentication_name(peer.cert, username, &policy.name_sources).ok_or(Denial {
            reason: Denied::NoAuthenticationName,
            name: None,
            source: None,
            scheme: None,
        })?;
    let deny = |reason, scheme| Denial {
        reason,
        name: Some(name.clone()),
        source: Some(source),
        scheme,
    };
    let client = registry
        .get(&name)
        .ok_or_else(|| deny(Denied::UnknownClient, None))?;
    let scheme = Some(client.scheme);
    if client.state == State::Disabled {
        return Err(deny(Denied::Disabled, scheme));
    }
    match client.scheme {
        Scheme::ThumbprintMatch => {
            if !client.thumbprints.contains(&peer.cert.thumbprint) {
                return Err(deny(Denied::ThumbprintMismatch, scheme));
            }
        }
        other => {
            if !peer.chains {
                return Err(deny(Denied::NotChained, scheme));
            }
            if !field_matches(
                peer.cert,
                other,
                client.authentication_name,
                policy.subject_match,
            ) {
                return Err(deny(Denied::NameMismatch, scheme));
            }
        }
    }
    Ok(Identity {
        authentication_name: client.authentication_name.to_string(),
        client_name: client.name.to_string(),
        scheme: Some(client.scheme),
        source,
        valid_until: peer.cert.not_after,
        method: Method::Certificate,
        attributes: sorted(client.attributes.iter().map(|(k, v)| (k.to_string(), v))),
        jti: None,
    })
}

/// SPEC §9 after [`jwt::verify`]: `sub` is the authentication name; with
/// `require_registered` it must also be an enabled registry client, whose spelling goes
/// upstream (its attributes are not merged: the token's claims are the attributes).
pub fn decide_jwt(
    claims: JwtClaims,
    registry: &Registry,
    policy: &JwtPolicy,
) -> Result<Identity, Denial> {
    let valid_until = jwt::valid_until(&claims, policy);
    let source = IdentitySource::TokenSubject;
    let (authentication_name, client_name, scheme) = if policy.require_registered {
        let deny = |reason, scheme| Denial {
            reason,
            name: Some(claims.sub.clone()),
            source: Some(source),
            scheme,
        };
        let client = registry
            .get(&claims.sub)
            .ok_or_else(|| deny(Denied::UnknownClient, None))?;
        if client.state == State::Disabled {
            return Err(deny(Denied::Disabled, Some(client.scheme)));
        }
        (
            client.authentication_name.to_string(),
            client.name.to_string(),
            Some(client.scheme),
        )
    } else {
        (claims.sub.clone(), claims.sub, None)
    };
    Ok(Identity {
        authentication_name,
        client_name,
        scheme,
        source,
        valid_until,
        method: Method::Jwt,
        attributes: claims.attributes,
        jti: claims.jti,
    })
}

fn sorted(
    attributes: impl Iterator<Item = (String, AttributeValue)>,
) -> Vec<(String, AttributeValue)> {
    let mut v: Vec<_> = attributes.collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// SPEC §2 "The authentication name": a non-empty username wins; otherwise the first
/// configured source present in the certificate, even if no client has that name.
pub fn authentication_name(
    cert: &CertInfo,
    username: Option<&str>,
    sources: &[NameSource],
) -> Option<(String, IdentitySource)> {
    if let Some(u) = username.filter(|u| !u.is_empty()) {
        return Some((u.to_string(), IdentitySource::Username));
    }
    sources.iter().find_map(|&source| {
        let value = match source {
            NameSource::Subject => cert.subject_cn.clone(),
            NameSource::Dns => cert.dns.first().cloned(),
            NameSource::Uri => cert.uris.first().cloned(),
            NameSource::Email => cert.emails.first().cloned(),
            // IpAddr's Display is the canonical text (RFC 5952 for IPv6).
            NameSource::Ip => cert.ips.first().map(|ip| ip.to_string()),
        };
        value.map(|v| (v, IdentitySource::Cert(source)))
    })
}

/// Does a certificate field of the scheme's type equal the client's authentication name?
pub fn field_matches(cert: &CertInfo, scheme: Scheme, name: &str, subject: SubjectMatch) -> bool {
    let any_ci = |values: &[String]| values.iter().any(|v| same_name(v, name));
    match scheme {
        // Compared as the registry compares names (SPEC §7), so the CN is too.
        Scheme::SubjectMatchesAuthenticationName => match subject {
            SubjectMatch::CommonName => cert
                .subject_cn
                .as_deref()
                .is_some_and(|cn| same_name(cn, name)),
            SubjectMatch::Rfc4514 => same_name(&cert.subject_dn, name),
        },
        Scheme::DnsMatchesAuthenticationName => any_ci(&cert.dns),
        Scheme::UriMatchesAuthenticationName => any_ci(&cert.uris),
        Scheme::EmailMatchesAuthenticationName => any_ci(&cert.emails),
        // Binary comparison: "2001:db8::7" equals "2001:0db8:0:0:0:0:0:7".
        Scheme::IpMatchesAuthenticationName => match name.parse::<IpAddr>() {
            Ok(wanted) => cert.ips.contains(&wanted),
            Err(_) => false,
        },
        Scheme::ThumbprintMatch => false,
    }
}

/// Names compare as the registry indexes them: by [`crate::trust::registry::name_key`].
pub fn same_name(a: &str, b: &str) -> bool {
    crate::trust::registry::name_key(a) == crate::trust::registry::name_key(b)
}

#[cfg(test)]
mod tests;
