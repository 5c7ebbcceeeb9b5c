//! Certificate generation for the demo (`mqttgate certs demo`) and the tests: CAs, server
//! and client certificates with exactly the fields a scenario needs. Not used when serving.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub type PkiError = rcgen::Error;

/// Key algorithm of a generated certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    P256,
    P384,
    Rsa2048,
    Ed25519,
}

impl KeyKind {
    fn generate(self) -> Result<KeyPair, PkiError> {
        match self {
            KeyKind::P256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyKind::P384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyKind::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
            KeyKind::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
        }
    }
}

/// Which extended key usage a leaf carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eku {
    ClientAuth,
    ServerAuth,
    /// No EKU extension: acceptable for any purpose.
    None,
}

/// The fields of a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub cn: Option<String>,
    pub organization: Option<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub key: KeyKind,
    /// Validity relative to now, in seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub eku: Eku,
}

impl LeafSpec {
    /// A client certificate with the given CN, valid from a day ago for a year.
    pub fn client(cn: &str) -> LeafSpec {
        LeafSpec {
            cn: Some(cn.to_string()),
            organization: None,
            dns: Vec::new(),
            uris: Vec::new(),
            emails: Vec::new(),
            ips: Vec::new(),
            key: KeyKind::P256,
            not_before: -86_400,
            not_after: 365 * 86_400,
            eku: Eku::ClientAuth,
        }
    }

    /// A server certificate for localhost and the loopback addresses.
    pub fn server() -> LeafSpec {
        LeafSpec {
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")],
            eku: Eku::ServerAuth,
            ..LeafSpec::client("localhost")
        }
    }

    fn params(&self) -> Result<CertificateParams, PkiError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(o) = &self.organization {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        if let Some(cn) = &self.cn {
            dn.push(DnType::CommonName, cn.as_str());
        }
        p.distinguished_name = dn;
        for d in &self.dns {
            p.subject_alt_names
                .push(SanType::DnsName(d.clone().try_into()?));
        }
        for u in &self.uris {
            p.subject_alt_names
                .push(SanType::URI(u.clone().try_into()?));
        }
        for e in &self.emails {
            p.subject_alt_names
                .push(SanType::Rfc822Name(e.clone().try_into()?));
        }
        for ip in &self.ips {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let now = OffsetDateTime::now_utc();
        p.not_before = now + Duration::seconds(self.not_before);
        p.not_after = now + Duration::seconds(self.not_after);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = match self.eku {
            Eku::ClientAuth => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Eku::ServerAuth => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Eku::None => vec![],
        };
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }
}

/// A generated certificate with its private key, in PEM and DER.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

/// A certificate authority that can issue leaves and intermediates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert: Issued,
}

fn ca_params(cn: &str, not_before: i64, not_after: i64) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now + Duration::seconds(not_before);
    p.not_after = now + Duration::seconds(not_after);
    p
}

impl Ca {
    /// A self-signed root valid from a day ago for ten years.
    pub fn root(cn: &str) -> Result<Ca, PkiError> {
        Ca::root_with_validity(cn, -86_400, 3650 * 86_400)
    }

    pub fn root_with_validity(cn: &str, not_before: i64, not_after: i64) -> Result<Ca, PkiError> {
        Ca::self_signed(KeyKind::P256.generate()?, cn, not_before, not_after)
    }

    /// The same root (subject and key) re-issued with other dates, as a CA renewal does.
    pub fn renewed(&self, cn: &str, not_before: i64, not_after: i64) -> Result<Ca, PkiError> {
        Ca::self_signed(
            KeyPair::from_pem(&self.cert.key_pem)?,
            cn,
            not_before,
            not_after,
        )
    }

    fn self_signed(
        key: KeyPair,
        cn: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<Ca, PkiError> {
        let params = ca_params(cn, not_before, not_after);
        let cert = params.self_signed(&key)?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        };
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert: issued,
        })
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, cn: &str) -> Result<Ca, PkiError> {
        let key = KeyKind::P256.generate()?;
        let mut params = ca_params(cn, -86_400, 5 * 365 * 86_400);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        };
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert: issued,
        })
    }

    /// A leaf signed by this CA.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, PkiError> {
        let key = spec.key.generate()?;
        let cert = spec.params()?.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        })
    }

    /// A CRL listing the given serial-bearing certificates as revoked, valid for a day
    /// (`next_update` seconds from now, negative for a stale one).
    pub fn crl(&self, revoked: &[&Issued], next_update: i64) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = revoked
            .iter()
            .map(|i| {
                let (_, c) = x509_parser::parse_x509_certificate(&i.der)
                    .map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(c.raw_serial()),
                    revocation_time: now - Duration::seconds(60),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::seconds(120),
            next_update: now + Duration::seconds(next_update),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer)?.pem()
    }
}

/// A self-signed leaf (the thumbprint scheme's usual certificate). With `ca`, it also
/// carries basicConstraints CA:TRUE, as `openssl req -x509` makes by default.
pub fn self_signed(spec: &LeafSpec, ca: bool) -> Result<Issued, PkiError> {
    let key = spec.key.generate()?;
    let mut params = spec.params()?;
    params.use_authority_key_identifier_extension = false;
    if ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    })
}
