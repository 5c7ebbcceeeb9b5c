//! `mqttgate explain`: prints every step of the decision mqttgate would make for a client
//! certificate (and optionally a CONNECT username), one line per step, and the CONNACK an
//! MQTT 3.1.1 and an MQTT 5 client would get. `--jwt` explains a token instead (jwt.rs).
//!
//! This module only reports; it decides nothing. The handshake's admission is `admit`
//! (the function the TLS verifier calls), the name, client and scheme steps are `auth.rs`'s
//! functions, the final answer is `Trust::decide`'s (what a live connection gets after its
//! CONNECT) and what the broker sees is `connection::upstream_connect`'s, so the report
//! can't drift from what a live connection gets. What it can't see: possession of the private key
//! (the CertificateVerify signature), which only a live handshake proves.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::CertificateError;

use crate::auth::grant;
use crate::auth::{self, Identity, IdentitySource, Peer, SubjectMatch};
use crate::authz::Action;
use crate::cli::CliError;
use crate::config::Config;
use crate::mqtt::code;
use crate::mqtt::{Connect, Version};
use crate::trust::admit::admit;
use crate::trust::cert::format_time;
use crate::trust::cert::CertInfo;
use crate::trust::registry::{Scheme, State};
use crate::trust::verifier::HandshakeFailure;
use crate::trust::{unix_now, Credentials, Trust};

/// The outcome of `explain`: the report, and whether the client would be let through.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub lines: Vec<String>,
    pub allowed: bool,
}

impl Explanation {
    pub fn text(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

/// Loads the configuration and everything it names, reads the client's PEM file (leaf
/// first, then any intermediates it would send) and explains the decision as of now.
pub fn explain(
    config_file: &Path,
    cert_file: &Path,
    username: Option<&str>,
) -> Result<Explanation, CliError> {
    explain_topic(config_file, cert_file, username, None)
}

/// `explain`, and with `topic`, the authorization step for that action on that topic
/// (SPEC §11): the client's groups and the binding that allows it, or none.
pub fn explain_topic(
    config_file: &Path,
    cert_file: &Path,
    username: Option<&str>,
    topic: Option<(Action, &str)>,
) -> Result<Explanation, CliError> {
    let config = Config::load(config_file)?;
    let trust = Trust::load(&config, 0)?;
    let chain = read_chain(cert_file)?;
    let now = unix_now();
    let mut explanation = explain_loaded(&config, &trust, &chain, username, now)?;
    let Some((action, topic)) = topic else {
        return Ok(explanation);
    };
    let at = UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64));
    let decided = trust.decide(
        &Credentials::Certificate {
            chain: &chain,
            username,
        },
        at,
    );
    match decided {
        Ok((_, Ok(id))) if explanation.allowed => {
            let (lines, allowed) = authz::lines(&config, &trust, &id, action, topic);
            explanation.lines.extend(lines);
            explanation.allowed = allowed;
        }
        _ => explanation
            .lines
            .push("authorization: not reached: the client is denied".to_string()),
    }
    Ok(explanation)
}

/// Reads a client's certificate file: PEM with the leaf first and its intermediates after
/// it, or a single DER certificate.
pub fn read_chain(file: &Path) -> Result<Vec<CertificateDer<'static>>, CliError> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", file.display()))?;
    if !certs.is_empty() {
        return Ok(certs);
    }
    if x509_parser::parse_x509_certificate(&bytes).is_ok() {
        return Ok(vec![CertificateDer::from(bytes)]);
    }
    Err(format!("{}: no certificate found", file.display()).into())
}

/// Explains the decision for `chain` (leaf first) against already-loaded state, at unix
/// time `now`.
pub fn explain_loaded(
    config: &Config,
    trust: &Trust,
    chain: &[CertificateDer<'static>],
    username: Option<&str>,
    now: i64,
) -> Result<Explanation, CliError> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or("the certificate file holds no certificate")?;
    let cert = CertInfo::parse(leaf).map_err(|e| format!("the client certificate: {e}"))?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64));
    let mut lines = Vec::new();
    let mut line = |s: String| lines.push(s);

    // The certificate.
    line(format!(
        "certificate: subject {}, issuer {:?}, serial {}, X.509 v{}{}",
        if cert.subject_dn.is_empty() {
            "(empty)".to_string()
        } else {
            format!("{:?}", cert.subject_dn)
        },
        cert.issuer_dn,
        cert.serial_hex,
        cert.version,
        if cert.is_ca { ", CA:TRUE" } else { "" }
    ));
    line(format!("certificate: SANs {}", sans(&cert)));
    line(format!("certificate: thumbprint {}", cert.thumbprint));
    line(format!(
        "certificate: valid {} to {}: {}",
        format_time(cert.not_before),
        format_time(cert.not_after),
        validity_now(&cert, now)
    ));
    line(format!(
        "certificate: the file holds the leaf and {} intermediate certificate(s), sent as the client's TLS chain",
        intermediates.len()
    ));

    // TLS admission: `admit`, the function the handshake's verifier calls, and its steps.
    let pinned_on: Vec<&str> = trust
        .registry
        .clients()
        .iter()
        .filter(|c| c.thumbprints.contains(&cert.thumbprint))
        .map(|c| c.name)
        .collect();
    if trust.certs.is_pinned(leaf) {
        line(format!(
            "tls: pin: thumbprint registered in allowedThumbprints of {}",
            pinned_on.join(", ")
        ));
    } else {
        line("tls: pin: thumbprint is not in any client's allowedThumbprints".to_string());
    }
    let admission = admit(chain, &trust.certs, at);
    let chain_result = match &admission {
        Ok(a) => a.chain.clone(),
        Err(e) => Err(*e),
    };
    match &chain_result {
        Ok(path) => {
            line(format!(
                "tls: chain: ok, reaches a registered CA certificate ({} registered)",
                trust.anchors.anchors.len()
            ));
            line(format!(
                "tls: chain: ends at {:?} through {} intermediate(s); the chain is valid until {}",
                path.anchor,
                path.intermediates,
                format_time(path.not_after)
            ));
        }
        Err(_) if trust.anchors.anchors.is_empty() => {
            line("tls: chain: no CA certificate is registered ([tls] ca_certificates)".to_string())
        }
        Err(e) => line(format!(
            "tls: chain: fails: {}",
            describe_tls_error(&e.to_rustls())
        )),
    }
    for skipped in &trust.anchors.skipped {
        line(format!("tls: CA certificate skipped: {skipped}"));
    }
    let tls_refusal = match &admission {
        Ok(a) => {
            let by = match (a.pinned, a.chains()) {
                (true, true) => "by pin and by chain",
                (true, false) => "by pin",
                _ => "by chain",
            };
            line(format!(
                "tls: handshake: certificate admitted ({by}); the private-key proof is only checked by a live handshake"
            ));
            None
        }
        Err(e) => {
            let why = describe_tls_error(&e.to_rustls());
            line(format!("tls: handshake: refused: {why}"));
            Some(why)
        }
    };
    if tls_refusal.is_some() {
        line("note: the handshake is refused, so nothing below is reached; it shows what would follow if it were admitted".to_string());
    }
    let chains = chain_result.is_ok();

    // The authentication name: username, then each configured source in order.
    let policy = &trust.policy;
    let chosen = auth::authentication_name(&cert, username, &policy.name_sources);
    match username {
        Some(u) if !u.is_empty() => line(format!("name: username: present {u:?}, used")),
        Some(_) => line("name: username: empty, counts as absent".to_string()),
        None => line("name: username: absent".to_string()),
    }
    if policy.name_sources.is_empty() {
        line("name: alternativeAuthenticationNameSources: none configured".to_string());
    }
    let mut found = matches!(chosen, Some((_, IdentitySource::Username)));
    for &source in &policy.name_sources {
        let value = auth::authentication_name(&cert, None, &[source]).map(|(v, _)| v);
        let status = match (&value, found) {
            (None, _) => "absent, skipped".to_string(),
            (Some(v), true) => {
                format!("present {v:?}, not consulted (an earlier source named the client)")
            }
            (Some(v), false) => {
                found = true;
                format!("present {v:?}, used")
            }
        };
        line(format!("name: {}: {status}", source.azure_name()));
    }
    match &chosen {
        Some((name, source)) => line(format!(
            "name: authentication name {name:?} (from {})",
            source.label()
        )),
        None => line(
            "name: none: no username and no configured certificate field is present".to_string(),
        ),
    }

    // The client and its scheme.
    if let Some((name, _)) = &chosen {
        match trust.registry.get(name) {
            None => line(format!(
                "client: no client has authentication name {name:?} (compared ignoring case)"
            )),
            Some(c) => {
                line(format!(
                    "client: {:?} (authenticationName {:?}), state {}, scheme {}",
                    c.name,
                    c.authentication_name,
                    match c.state {
                        State::Enabled => "Enabled",
                        State::Disabled => "Disabled",
                    },
                    c.scheme
                ));
                line(scheme_check(&cert, &c, chains, policy.subject_match));
            }
        }
    }

    // The answer: `Trust::decide`, what a live connection gets after its CONNECT. When the
    // handshake refuses, `auth::decide` shows what would follow for the parsed leaf.
    let decision = match trust.decide(&Credentials::Certificate { chain, username }, at) {
        Ok((_, decision)) => decision,
        Err(_) => auth::decide(
            &Peer {
                cert: &cert,
                chains,
            },
            username,
            &trust.registry,
            policy,
        ),
    };
    let allowed = tls_refusal.is_none() && decision.is_ok();
    if let Some(why) = tls_refusal {
        line(format!("result: DENIED at the TLS handshake: {why}"));
        line(
            "connack: none: TLS handshake refused, no CONNACK (MQTT 3.1.1 and MQTT 5 alike)"
                .to_string(),
        );
    } else {
        match &decision {
            Ok(id) => {
                line(format!(
                    "result: ALLOWED as {:?} (client {:?}, {}, name from {}) until {}",
                    id.authentication_name,
                    id.client_name,
                    id.scheme
                        .map_or("registry not consulted".to_string(), |s| s.to_string()),
                    id.source.label(),
                    format_time(id.valid_until)
                ));
                line(upstream_view(config, id, username));
                line(format!(
                    "connack: MQTT 3.1.1: 0x{:02X} connection accepted; MQTT 5: 0x{:02X} success (from the broker, after mqttgate forwards the CONNECT)",
                    code::V3_ACCEPTED,
                    code::V5_SUCCESS
                ));
            }
            Err(d) => denied_after_connect(d).into_iter().for_each(&mut line),
        }
    }
    Ok(Explanation { lines, allowed })
}

/// The scheme step: which certificate field is compared with what.
fn scheme_check(
    cert: &CertInfo,
    client: &crate::trust::registry::Client,
    chains: bool,
    subject: SubjectMatch,
) -> String {
    let name = &client.authentication_name;
    if client.scheme == Scheme::ThumbprintMatch {
        let slots: Vec<String> = client
            .thumbprints
            .iter()
            .zip(["primary", "secondary"])
            .map(|(t, slot)| format!("{slot} {t}"))
            .collect();
        let hit = client.thumbprints.contains(&cert.thumbprint);
        return format!(
            "scheme: ThumbprintMatch: leaf thumbprint {} compared with allowedThumbprints [{}]: {} (the chain is not needed)",
            cert.thumbprint,
            slots.join(", "),
            if hit { "match" } else { "no match" }
        );
    }
    let chain = if chains {
        "chain to a registered CA: yes"
    } else {
        "chain to a registered CA: NO (required by this scheme)"
    };
    let (field, values): (&str, Vec<String>) = match client.scheme {
        Scheme::SubjectMatchesAuthenticationName => match subject {
            SubjectMatch::CommonName => ("subject CN", cert.subject_cn.iter().cloned().collect()),
            SubjectMatch::Rfc4514 => ("subject DN (RFC 4514)", vec![cert.subject_dn.clone()]),
        },
        Scheme::DnsMatchesAuthenticationName => ("DNS SANs", cert.dns.clone()),
        Scheme::UriMatchesAuthenticationName => ("URI SANs", cert.uris.clone()),
        Scheme::EmailMatchesAuthenticationName => ("email SANs", cert.emails.clone()),
        Scheme::IpMatchesAuthenticationName => (
            "IP SANs",
            cert.ips.iter().map(|ip| ip.to_string()).collect(),
        ),
        Scheme::ThumbprintMatch => unreachable!("handled above"),
    };
    let how = if client.scheme == Scheme::IpMatchesAuthenticationName {
        "as binary addresses"
    } else {
        "ignoring case"
    };
    let hit = auth::field_matches(cert, client.scheme, name, subject);
    format!(
        "scheme: {}: {chain}; {field} {} compared with authenticationName {name:?} {how}: {}",
        client.scheme,
        list(&values),
        if hit { "match" } else { "no match" }
    )
}

/// The two lines of a decision refused after CONNECT, whatever the method: why, and the
/// CONNACK each protocol version hears (the same for every denial, SPEC §3).
fn denied_after_connect(d: &crate::auth::Denial) -> [String; 2] {
    [
        format!(
            "result: DENIED after CONNECT: {} (reason {})",
            d.reason,
            d.reason.label()
        ),
        format!(
            "connack: MQTT 3.1.1: 0x{:02X} not authorized; MQTT 5: 0x{:02X} not authorized",
            code::V3_NOT_AUTHORIZED,
            code::V5_NOT_AUTHORIZED
        ),
    ]
}

/// What the broker receives: the grant (SPEC §13) the live path computes for this
/// identity, by the same function ([`grant::grant`]) and from the same effective
/// configuration: its username, client identifier and PROXY v2 identity.
fn upstream_view(config: &Config, id: &Identity, username: Option<&str>) -> String {
    const CLIENT_ID: &str = "<client id>";
    let sent = Connect {
        version: Version::V311,
        clean_start: true,
        keep_alive: 0,
        properties: Vec::new(),
        client_id: CLIENT_ID.to_string(),
        will: None,
        username: username.map(str::to_string),
        password: None,
    };
    let policy = config.upstream_policy();
    let g = match grant::grant(&sent, id.clone(), None, &policy, String::new) {
        Ok(g) => g,
        Err(d) => {
            return format!(
                "upstream: nothing: the grant is refused: {d} (reason {})",
                d.label()
            )
        }
    };
    let user = match &g.connect.username {
        Some(u) => format!("{u:?}"),
        None => "none".to_string(),
    };
    let proxy = match (policy.proxy, &g.proxy_name) {
        (false, _) => String::new(),
        (true, Some(cn)) => format!("; PROXY v2 identity {cn:?}"),
        (true, None) => "; a PROXY v2 header without identity".to_string(),
    };
    format!(
        "upstream: the broker sees username {user} and client id {:?} ({CLIENT_ID} is the one the client sends){proxy}",
        g.connect.client_id
    )
}

/// A handshake error in plain words, with the metric reason label and rustls's own text.
pub fn describe_tls_error(e: &rustls::Error) -> String {
    let plain = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "unknown issuer: no path from the leaf (and the intermediates it sends) to a registered CA certificate"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "a certificate in the chain has expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "a certificate in the chain is not valid yet"
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "bad EKU: the certificate has an extendedKeyUsage without clientAuth"
            }
            CertificateError::Revoked => "revoked: listed in a loaded CRL",
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => {
                "the issuer's CRL is past its nextUpdate and [tls] stale_crl = \"refuse\""
            }
            CertificateError::BadSignature => "a signature in the chain does not verify",
            CertificateError::BadEncoding => "the certificate does not parse as an end-entity certificate",
            _ => "the certificate is not acceptable",
        },
        _ => "the certificate is not acceptable",
    };
    let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e.clone());
    format!(
        "{plain} (reason {}; rustls: {e})",
        HandshakeFailure::classify(&io).label()
    )
}

fn sans(cert: &CertInfo) -> String {
    let mut parts = Vec::new();
    for d in &cert.dns {
        parts.push(format!("DNS:{d}"));
    }
    for u in &cert.uris {
        parts.push(format!("URI:{u}"));
    }
    for ip in &cert.ips {
        parts.push(format!("IP:{ip}"));
    }
    for e in &cert.emails {
        parts.push(format!("email:{e}"));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

fn list(values: &[String]) -> String {
    if values.is_empty() {
        return "(none)".to_string();
    }
    let mut out = String::from("[");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{v:?}");
    }
    out.push(']');
    out
}

fn validity_now(cert: &CertInfo, now: i64) -> String {
    if now < cert.not_before {
        "NOT valid now (not valid yet)".to_string()
    } else if now > cert.not_after {
        format!(
            "NOT valid now (expired {} days ago)",
            (now - cert.not_after).div_euclid(86_400)
        )
    } else {
        format!(
            "valid now ({} days left)",
            (cert.not_after - now).div_euclid(86_400)
        )
    }
}

mod authz;

#[cfg(all(test, feature = "demo"))]
mod tests;
#[cfg(all(test, feature = "demo"))]
mod upstream_tests;

mod jwt;
mod webhook;
pub use self::jwt::{explain_jwt, explain_jwt_loaded};
pub use self::webhook::{explain_webhook, explain_webhook_loaded};
