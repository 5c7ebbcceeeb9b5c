//! The authentication decision of SPEC §2, after the TLS handshake: which authentication
//! name the client claims, which registry entry that is, and whether the certificate proves
//! it. Pure: no I/O, no clock. The handshake already proved possession of the private key
//! and checked the leaf's dates, chain or pin; this module only applies the registry.

pub mod jwt;
pub mod rewrite;

use std::net::IpAddr;

use crate::trust::cert::CertInfo;
use crate::trust::registry::{Registry, Scheme, State};

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
        }
    }
}

/// How a client authenticates: one variant per method. Certificates today; JWT and webhook
/// authentication (SPEC §9) are the next variants. A closed set, so every metric label and
/// `explain` branch is exhaustive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// A client certificate, admitted by `trust::admit`, and the registry (SPEC §1–§2).
    Certificate,
}

impl Method {
    pub fn label(self) -> &'static str {
        match self {
            Method::Certificate => "certificate",
        }
    }
}

/// What a client presented to prove who it is, one variant per [`Method`].
#[derive(Clone, Copy, Debug)]
pub enum Credentials<'a> {
    /// The chain from its TLS handshake (leaf first) and its CONNECT username.
    Certificate {
        chain: &'a [rustls::pki_types::CertificateDer<'static>],
        username: Option<&'a str>,
    },
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
    pub client_name: String,
    pub scheme: Scheme,
    pub source: IdentitySource,
    /// Unix seconds after which the identity no longer holds: the certificate's notAfter,
    /// or its chain's when the scheme relies on the chain (set by `Trust::decide`); a
    /// token's `exp` for the methods that come next.
    pub valid_until: i64,
    pub method: Method,
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
}

impl Denied {
    pub const ALL: [Denied; 6] = [
        Denied::NoAuthenticationName,
        Denied::UnknownClient,
        Denied::Disabled,
        Denied::ThumbprintMismatch,
        Denied::NotChained,
        Denied::NameMismatch,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Denied::NoAuthenticationName => "no_authentication_name",
            Denied::UnknownClient => "unknown_client",
            Denied::Disabled => "disabled",
            Denied::ThumbprintMismatch => "thumbprint_mismatch",
            Denied::NotChained => "not_chained",
            Denied::NameMismatch => "name_mismatch",
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
        scheme: client.scheme,
        source,
        valid_until: peer.cert.not_after,
        method: Method::Certificate,
    })
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
        assert_eq!(id.scheme, Scheme::ThumbprintMatch);
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
