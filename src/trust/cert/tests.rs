use super::*;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("mqttgate-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = Command::new("/usr/bin/openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn cert_with(params: CertificateParams) -> rcgen::Certificate {
    params.self_signed(&KeyPair::generate().unwrap()).unwrap()
}

fn info(params: CertificateParams) -> CertInfo {
    CertInfo::parse(cert_with(params).der()).unwrap()
}

fn dn(entries: &[(DnType, &str)]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for (ty, value) in entries {
        params.distinguished_name.push(ty.clone(), *value);
    }
    params
}

#[test]
fn subject_cn_is_the_common_name() {
    let cert = info(dn(&[
        (DnType::OrganizationName, "Acme"),
        (DnType::CommonName, "sensor-17"),
    ]));
    assert_eq!(cert.subject_cn.as_deref(), Some("sensor-17"));
}

#[test]
fn subject_cn_is_none_without_a_common_name() {
    let cert = info(dn(&[(DnType::OrganizationName, "Acme")]));
    assert_eq!(cert.subject_cn, None);
    assert_eq!(cert.subject_dn, "O=Acme");
}

#[test]
fn sans_of_each_type_are_kept_in_certificate_order() {
    let mut params = dn(&[(DnType::CommonName, "x")]);
    params.subject_alt_names = vec![
        SanType::DnsName("b.example".try_into().unwrap()),
        SanType::Rfc822Name("two@example.com".try_into().unwrap()),
        SanType::URI("spiffe://example/b".try_into().unwrap()),
        SanType::IpAddress("192.0.2.7".parse().unwrap()),
        SanType::DnsName("a.example".try_into().unwrap()),
        SanType::Rfc822Name("one@example.com".try_into().unwrap()),
        SanType::URI("urn:a".try_into().unwrap()),
        SanType::IpAddress("2001:db8::1".parse().unwrap()),
        SanType::IpAddress("10.0.0.1".parse().unwrap()),
    ];
    let cert = info(params);
    assert_eq!(cert.dns, ["b.example", "a.example"]);
    assert_eq!(cert.emails, ["two@example.com", "one@example.com"]);
    assert_eq!(cert.uris, ["spiffe://example/b", "urn:a"]);
    let ips: Vec<String> = cert.ips.iter().map(|ip| ip.to_string()).collect();
    assert_eq!(ips, ["192.0.2.7", "2001:db8::1", "10.0.0.1"]);
}

#[test]
fn ip_sans_display_in_canonical_form() {
    let mut params = dn(&[(DnType::CommonName, "x")]);
    params.subject_alt_names = vec![
        SanType::IpAddress("2001:db8:0:0:0:0:0:7".parse().unwrap()),
        SanType::IpAddress("2001:0DB8:0000:0000:0001:0000:0000:0000".parse().unwrap()),
        SanType::IpAddress("192.168.1.2".parse().unwrap()),
    ];
    let cert = info(params);
    assert!(cert.ips[0].is_ipv6());
    assert_eq!(cert.ips[0].to_string(), "2001:db8::7");
    assert_eq!(cert.ips[1].to_string(), "2001:db8:0:0:1::");
    assert!(cert.ips[2].is_ipv4());
    assert_eq!(cert.ips[2].to_string(), "192.168.1.2");
}

#[test]
fn dn_is_rfc4514_most_significant_last() {
    let cert = info(dn(&[
        (DnType::CountryName, "DE"),
        (DnType::StateOrProvinceName, "Bavaria"),
        (DnType::LocalityName, "Munich"),
        (DnType::OrganizationName, "Acme"),
        (DnType::OrganizationalUnitName, "Plant 3"),
        (DnType::CustomDnType(vec![2, 5, 4, 9]), "Main St 1"),
        (DnType::CommonName, "sensor-17"),
    ]));
    assert_eq!(
        cert.subject_dn,
        "CN=sensor-17,STREET=Main St 1,OU=Plant 3,O=Acme,L=Munich,ST=Bavaria,C=DE"
    );
    // Self-signed: the issuer is the same name.
    assert_eq!(cert.issuer_dn, cert.subject_dn);
}

#[test]
fn dn_escapes_special_characters() {
    let cert = info(dn(&[
        (DnType::OrganizationName, " padded "),
        (DnType::CommonName, "#a,b+c\"d\\e<f>g;h"),
    ]));
    assert_eq!(
        cert.subject_dn,
        r#"CN=\#a\,b\+c\"d\\e\<f\>g\;h,O=\ padded\ "#
    );
    assert_eq!(cert.subject_cn.as_deref(), Some("#a,b+c\"d\\e<f>g;h"));
}

#[test]
fn escaping_covers_nul_and_lone_space_and_inner_hash() {
    assert_eq!(escape_value("a\0b"), "a\\00b");
    assert_eq!(escape_value(" "), "\\ ");
    assert_eq!(escape_value("a#b c"), "a#b c");
    assert_eq!(escape_value(""), "");
}

#[test]
fn dn_writes_unknown_types_as_dotted_oid_and_der_hex() {
    let mut params = dn(&[(DnType::CommonName, "x")]);
    params.distinguished_name.push(
        DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
        rcgen::DnValue::Ia5String("a@b.c".try_into().unwrap()),
    );
    let cert = info(params);
    assert_eq!(cert.subject_dn, "1.2.840.113549.1.9.1=#16056140622e63,CN=x");
}

#[test]
fn dn_matches_openssl_rfc2253_for_plain_names() {
    let tmp = TempDir::new("rfc2253");
    let mut params = dn(&[
        (DnType::CountryName, "US"),
        (DnType::OrganizationName, "Acme, Inc."),
        (DnType::CommonName, "#1 \"best\" <sensor>; a+b "),
    ]);
    params.distinguished_name.push(
        DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 25]),
        rcgen::DnValue::Ia5String("example".try_into().unwrap()),
    );
    let cert = cert_with(params);
    std::fs::write(tmp.path("c.pem"), cert.pem()).unwrap();
    let out = openssl(
        &[
            "x509", "-in", "c.pem", "-noout", "-subject", "-nameopt", "RFC2253",
        ],
        &tmp.0,
    );
    let expected = out.trim().strip_prefix("subject=").unwrap();
    assert_eq!(CertInfo::parse(cert.der()).unwrap().subject_dn, expected);
}

#[test]
fn multi_valued_rdn_is_joined_with_plus_and_dc_uid_have_short_names() {
    let tmp = TempDir::new("multivalue");
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "k.pem",
            "-subj",
            "/DC=org/DC=example/CN=alice+UID=42",
            "-days",
            "1",
            "-out",
            "c.pem",
        ],
        &tmp.0,
    );
    let pem = std::fs::read(tmp.path("c.pem")).unwrap();
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    let cert = CertInfo::parse(&der).unwrap();
    assert_eq!(cert.subject_dn, "CN=alice+UID=42,DC=example,DC=org");
    assert_eq!(cert.subject_cn.as_deref(), Some("alice"));
}

use rustls_pki_types::pem::PemObject;

const SHA256_HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn thumbprint_parses_lower_and_upper_case() {
    let lower: Thumbprint = SHA256_HEX.parse().unwrap();
    let upper: Thumbprint = SHA256_HEX.to_uppercase().parse().unwrap();
    assert_eq!(lower, upper);
    assert_eq!(lower.0[0], 0x9f);
    assert_eq!(lower.to_string(), SHA256_HEX);
    assert_eq!(format!("{lower:?}"), SHA256_HEX);
}

#[test]
fn thumbprint_parses_colon_separated_pairs() {
    let pairs: Vec<String> = SHA256_HEX
        .as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8(p.to_vec()).unwrap().to_uppercase())
        .collect();
    let t: Thumbprint = pairs.join(":").parse().unwrap();
    assert_eq!(t.to_string(), SHA256_HEX);
}

#[test]
fn thumbprint_refuses_misplaced_separators() {
    let partial = format!("{}:{}", &SHA256_HEX[..2], &SHA256_HEX[2..]);
    assert_eq!(
        partial.parse::<Thumbprint>(),
        Err(ThumbprintError::Separators)
    );
    let trailing = format!("{SHA256_HEX}:");
    assert_eq!(
        trailing.parse::<Thumbprint>(),
        Err(ThumbprintError::Separators)
    );
}

#[test]
fn thumbprint_refuses_wrong_length() {
    assert_eq!(
        SHA256_HEX[..62].parse::<Thumbprint>(),
        Err(ThumbprintError::Length(62))
    );
    assert_eq!("".parse::<Thumbprint>(), Err(ThumbprintError::Length(0)));
    let long = format!("{SHA256_HEX}00");
    assert_eq!(long.parse::<Thumbprint>(), Err(ThumbprintError::Length(66)));
}

#[test]
fn thumbprint_of_sha1_length_says_sha1() {
    let sha1 = "A94A8FE5CCB19BA61C4C0873D391E987982FBBD3";
    let err = sha1.parse::<Thumbprint>().unwrap_err();
    assert_eq!(err, ThumbprintError::Sha1);
    assert_eq!(
        err.to_string(),
        "looks like a SHA-1 thumbprint; mqttgate needs SHA-256 (64 hex digits)"
    );
}

#[test]
fn thumbprint_refuses_non_hex() {
    let bad = format!("{}g", &SHA256_HEX[..63]);
    assert_eq!(bad.parse::<Thumbprint>(), Err(ThumbprintError::NotHex('g')));
    let spaced = format!(" {SHA256_HEX}");
    assert_eq!(
        spaced.parse::<Thumbprint>(),
        Err(ThumbprintError::NotHex(' '))
    );
    let prefixed = format!("0x{}", &SHA256_HEX[2..]);
    assert_eq!(
        prefixed.parse::<Thumbprint>(),
        Err(ThumbprintError::NotHex('x'))
    );
}

#[test]
fn thumbprint_of_der_matches_openssl_sha256_fingerprint() {
    let tmp = TempDir::new("fingerprint");
    let cert = cert_with(dn(&[(DnType::CommonName, "fp")]));
    std::fs::write(tmp.path("c.pem"), cert.pem()).unwrap();
    let out = openssl(
        &["x509", "-in", "c.pem", "-noout", "-fingerprint", "-sha256"],
        &tmp.0,
    );
    let (_, value) = out.trim().split_once('=').unwrap();
    let from_openssl: Thumbprint = value.parse().unwrap();
    assert_eq!(Thumbprint::of(cert.der()), from_openssl);
    assert_eq!(
        CertInfo::parse(cert.der()).unwrap().thumbprint,
        from_openssl
    );
}

#[test]
fn v1_certificate_from_openssl_signkey_parses() {
    let tmp = TempDir::new("v1");
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "k.pem",
            "-subj",
            "/CN=legacy-gw",
            "-out",
            "r.csr",
        ],
        &tmp.0,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "r.csr",
            "-signkey",
            "k.pem",
            "-days",
            "2",
            "-set_serial",
            "0x00ff01",
            "-out",
            "c.pem",
        ],
        &tmp.0,
    );
    let pem = std::fs::read(tmp.path("c.pem")).unwrap();
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    let cert = CertInfo::parse(&der).unwrap();
    assert_eq!(cert.version, 1);
    assert!(!cert.is_ca);
    assert_eq!(cert.subject_cn.as_deref(), Some("legacy-gw"));
    assert_eq!(cert.serial_hex, "ff01");
    assert!(cert.dns.is_empty() && cert.ips.is_empty());
    assert_eq!(cert.not_after - cert.not_before, 2 * 86400);
}

#[test]
fn ca_flag_and_version_3_from_rcgen() {
    let mut params = dn(&[(DnType::CommonName, "root")]);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x80, 0x01]));
    let cert = info(params);
    assert!(cert.is_ca);
    assert_eq!(cert.version, 3);
    assert_eq!(cert.serial_hex, "8001");
    let leaf = info(dn(&[(DnType::CommonName, "leaf")]));
    assert!(!leaf.is_ca);
}

#[test]
fn garbage_and_trailing_bytes_are_refused() {
    assert!(matches!(
        CertInfo::parse(b"not a cert"),
        Err(CertError::Parse(_))
    ));
    let mut der = cert_with(dn(&[(DnType::CommonName, "x")])).der().to_vec();
    der.extend_from_slice(&[0, 0]);
    assert!(matches!(
        CertInfo::parse(&der),
        Err(CertError::TrailingData(2))
    ));
}
