//! The authentication decision of SPEC §2 and §9, after the TLS handshake: which method
//! applies ([`credentials`]), which authentication name the client claims, which registry
//! entry that is, and whether the certificate or the token proves it. Pure: no I/O, no
//! clock. For certificates the handshake already proved possession of the private key and
//! checked the leaf's dates, chain or pin; this module only applies the registry. Tokens
//! are checked by [`jwt::verify`], a webhook's answer by [`webhook::decide`].

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
}

impl Denied {
    pub const ALL: [Denied; 19] = [
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
mod tests {
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
            authentication_name(&c, Some("other"), &[NameSource::Subject, NameSource::Dns])
                .unwrap();
        assert_eq!((name.as_str(), src), ("other", IdentitySource::Username));
    }

    #[test]
    fn empty_username_falls_back_to_sources_in_order() {
        let c = cert();
        let (name, src) =
            authentication_name(&c, Some(""), &[NameSource::Dns, NameSource::Subject]).unwrap();
        assert_eq!(name, "a.example.com");
        assert_eq!(src, IdentitySource::Cert(NameSource::Dns));
        let (name, _) =
            authentication_name(&c, None, &[NameSource::Subject, NameSource::Dns]).unwrap();
        assert_eq!(name, "sensor-17");
    }

    #[test]
    fn absent_source_is_skipped() {
        let mut c = cert();
        c.uris.clear();
        let (name, src) =
            authentication_name(&c, None, &[NameSource::Uri, NameSource::Email]).unwrap();
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
        let reg = registry(
            r#"[{"name":"sensor-17","properties":{"attributes":{"zone":"n","floor":3}}}]"#,
        );
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
}
