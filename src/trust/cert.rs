//! The fields of an X.509 certificate that mqttgate's decisions use: names (subject CN,
//! RFC 4514 subject and issuer, SANs), validity, CA flag and the SHA-256 thumbprint.
//! Pure: no I/O and no policy; whether a field matches a client is decided elsewhere.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use thiserror::Error;
use x509_parser::asn1_rs::{Any, Class, Tag, ToDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

/// The SHA-256 of a certificate's DER encoding, as Azure's `allowedThumbprints` hold it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Thumbprint(pub [u8; 32]);

impl Thumbprint {
    pub fn of(der: &[u8]) -> Thumbprint {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Thumbprint(bytes)
    }
}

/// Why a string is not a SHA-256 thumbprint.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ThumbprintError {
    // Azure's portal and older tools show SHA-1; a silent mismatch would look like a
    // broken certificate, so say what is wrong.
    #[error("looks like a SHA-1 thumbprint; mqttgate needs SHA-256 (64 hex digits)")]
    Sha1,
    #[error("expected 64 hex digits, got {0}")]
    Length(usize),
    #[error("{0:?} is not a hex digit")]
    NotHex(char),
    #[error("':' must separate every byte pair or none")]
    Separators,
}

impl FromStr for Thumbprint {
    type Err = ThumbprintError;

    /// Accepts `abcd…` (64 hex digits, either case) or `AB:CD:…` (32 pairs separated by
    /// `:`). Nothing else: no spaces, no `0x`, no partial separators, so a value that was
    /// mangled in copying fails at load instead of never matching.
    fn from_str(s: &str) -> Result<Thumbprint, ThumbprintError> {
        if let Some(c) = s.chars().find(|c| *c != ':' && !c.is_ascii_hexdigit()) {
            return Err(ThumbprintError::NotHex(c));
        }
        let digits: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
        match digits.len() {
            64 => {}
            40 => return Err(ThumbprintError::Sha1),
            n => return Err(ThumbprintError::Length(n)),
        }
        if s.len() != digits.len() {
            let well_separated = s.len() == 64 + 31
                && s.bytes()
                    .enumerate()
                    .all(|(i, b)| (b == b':') == (i % 3 == 2));
            if !well_separated {
                return Err(ThumbprintError::Separators);
            }
        }
        let mut bytes = [0u8; 32];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            bytes[i] = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        Ok(Thumbprint(bytes))
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => unreachable!("checked by the caller"),
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a certificate could not be read.
#[derive(Debug, Error)]
pub enum CertError {
    #[error("not a DER X.509 certificate: {0}")]
    Parse(X509Error),
    #[error("{0} bytes of trailing data after the certificate")]
    TrailingData(usize),
    // Two SAN or basicConstraints extensions make "the" value ambiguous; refuse rather
    // than pick one.
    #[error("invalid {0} extension: {1}")]
    Extension(&'static str, X509Error),
}

/// The certificate fields that decisions use, copied out of the DER.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// First CN attribute of the subject in DER order, when it is a readable string.
    pub subject_cn: Option<String>,
    /// The subject in RFC 4514 form (most significant RDN last).
    pub subject_dn: String,
    pub issuer_dn: String,
    /// Lowercase hex without the DER sign byte, as `openssl x509 -serial` prints it.
    pub serial_hex: String,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    /// 1, 2 or 3.
    pub version: u32,
    pub thumbprint: Thumbprint,
}

/// Unix seconds as RFC 3339 (`2027-01-31T12:00:00Z`), for reports; the number itself when
/// out of range.
pub fn format_time(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts.to_string())
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<CertInfo, CertError> {
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| {
            CertError::Parse(match e {
                x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
                x509_parser::nom::Err::Incomplete(_) => X509Error::InvalidCertificate,
            })
        })?;
        // The thumbprint covers `der`; trailing bytes would make it differ from the
        // thumbprint every other tool computes for the same certificate.
        if !rest.is_empty() {
            return Err(CertError::TrailingData(rest.len()));
        }

        let is_ca = cert
            .basic_constraints()
            .map_err(|e| CertError::Extension("basicConstraints", e))?
            .is_some_and(|bc| bc.value.ca);

        let (mut dns, mut uris, mut emails, mut ips) = (vec![], vec![], vec![], vec![]);
        let san = cert
            .subject_alternative_name()
            .map_err(|e| CertError::Extension("subjectAltName", e))?;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            match name {
                GeneralName::DNSName(s) => dns.push(s.to_string()),
                GeneralName::URI(s) => uris.push(s.to_string()),
                GeneralName::RFC822Name(s) => emails.push(s.to_string()),
                GeneralName::IPAddress(raw) => {
                    if let Some(ip) = ip_from_raw(raw) {
                        ips.push(ip);
                    }
                }
                _ => {}
            }
        }

        let subject_cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|atv| attr_string(atv.attr_value()));

        Ok(CertInfo {
            subject_cn,
            subject_dn: rfc4514(cert.subject()),
            issuer_dn: rfc4514(cert.issuer()),
            serial_hex: serial_hex(cert.raw_serial()),
            dns,
            uris,
            emails,
            ips,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca,
            version: cert.version().0 + 1,
            thumbprint: Thumbprint::of(der),
        })
    }
}

fn ip_from_raw(raw: &[u8]) -> Option<IpAddr> {
    match raw.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(raw).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw).ok()?))),
        _ => None,
    }
}

fn serial_hex(raw: &[u8]) -> String {
    let first = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex(&raw[first..])
}

/// The value of a string-typed attribute as text, or None for other types.
fn attr_string(value: &Any<'_>) -> Option<String> {
    if value.class() != Class::Universal || value.header.is_constructed() {
        return None;
    }
    let data = value.data;
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => String::from_utf8(data.to_vec()).ok(),
        // T61 has no exact mapping to Unicode; read it as Latin-1 as OpenSSL does.
        Tag::TeletexString => Some(data.iter().map(|b| char::from(*b)).collect()),
        Tag::BmpString => {
            if !data.len().is_multiple_of(2) {
                return None;
            }
            let units = data
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        Tag::UniversalString => {
            if !data.len().is_multiple_of(4) {
                return None;
            }
            data.chunks_exact(4)
                .map(|q| char::from_u32(u32::from_be_bytes([q[0], q[1], q[2], q[3]])))
                .collect()
        }
        _ => None,
    }
}

/// RFC 4514 short names; any other type is written as its dotted OID.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// Formats a name as RFC 4514 §2: RDNs last-to-first, `,` between RDNs, `+` inside a
/// multi-valued RDN.
fn rfc4514(name: &X509Name<'_>) -> String {
    let mut rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type().to_id_string();
                    let value = atv.attr_value();
                    match (short_name(&oid), attr_string(value)) {
                        (Some(short), Some(text)) => format!("{short}={}", escape_value(&text)),
                        // §2.4: a dotted type, or a value with no string form, is `#` and
                        // the hex of its DER encoding.
                        (short, _) => {
                            let der = value.to_der_vec().unwrap_or_default();
                            format!("{}=#{}", short.unwrap_or(&oid), hex(&der))
                        }
                    }
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    rdns.join(",")
}

/// RFC 4514 §2.4 escaping of a string attribute value.
fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\0' => out.push_str("\\00"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
