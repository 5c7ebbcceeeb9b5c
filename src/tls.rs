//! The TLS side: the rustls `ServerConfig` and the client-certificate verifier that admits a
//! leaf when it chains to a registered CA certificate or when its SHA-256 thumbprint is
//! registered. It does not decide *who* the client is; `auth.rs` does that after CONNECT.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;

use crate::anchors::Anchors;
use crate::cert::Thumbprint;
use crate::config::{StaleCrl, TlsVersion};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("tls setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every part of mqttgate uses (aws-lc-rs), preferring the AES-128-GCM
/// suites. rustls lists TLS13_AES_256_GCM_SHA384 first; its HKDF-SHA384 key schedule ran
/// SHA-512 in software for 9% of mqttgate's CPU in a connect storm (perf), where SHA-256
/// has CPU instructions on current x86 and ARM servers, and AES-128 needs 10 rounds per
/// block instead of 14 for bulk relaying. Both are standard TLS 1.3 suites; the others
/// stay enabled for clients that insist.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite as C;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            C::TLS13_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(p)
}

/// The server's own certificate chain and key, read from PEM files.
pub fn load_server_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let file_err = |p: &Path, message: String| TlsError::File {
        file: p.display().to_string(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no certificate in file".into()));
    }
    // The error never includes key material, only the reason.
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_err(key, format!("cannot read a private key: {e}")))?;
    Ok((chain, key))
}

/// Admits a client certificate by registered CA chain or by registered thumbprint, and
/// always checks the handshake signature (proof of the private key).
pub struct ClientVerifier {
    chain: Option<Arc<dyn ClientCertVerifier>>,
    pins: HashSet<Thumbprint>,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("chain", &self.chain.is_some())
            .field("pins", &self.pins.len())
            .finish()
    }
}

impl ClientVerifier {
    pub fn new(
        anchors: &Anchors,
        pins: HashSet<Thumbprint>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        stale: StaleCrl,
        provider: Arc<CryptoProvider>,
    ) -> Result<ClientVerifier, TlsError> {
        let mut roots = RootCertStore::empty();
        for a in &anchors.anchors {
            roots.add(a.der.clone()).map_err(|e| TlsError::File {
                file: a.file.display().to_string(),
                message: format!("{}: not usable as a trust anchor: {e}", a.info.subject_dn),
            })?;
        }
        let algs = provider.signature_verification_algorithms;
        let chain = if roots.is_empty() {
            None
        } else {
            // Revocation is checked for leaves only and a CA without a CRL stays usable:
            // with webpki's default policy one CA's CRL would fail every other CA's chains.
            let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let builder = if crls.is_empty() {
                builder
            } else {
                let b = builder
                    .with_crls(crls)
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
                match stale {
                    StaleCrl::Refuse => b.enforce_revocation_expiration(),
                    StaleCrl::Ignore => b,
                }
            };
            Some(builder.build().map_err(|e| TlsError::File {
                file: "CA certificates".into(),
                message: e.to_string(),
            })?)
        };
        Ok(ClientVerifier { chain, pins, algs })
    }

    /// Does the leaf chain to a registered CA certificate? Used after the handshake for
    /// pinned certificates, which the handshake admitted without looking for a chain.
    pub fn chains(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> bool {
        self.chain
            .as_ref()
            .is_some_and(|v| v.verify_client_cert(end_entity, intermediates, now).is_ok())
    }

    pub fn is_pinned(&self, end_entity: &CertificateDer<'_>) -> bool {
        self.pins.contains(&Thumbprint::of(end_entity))
    }

    /// Verifies a handshake signature with the certificate's bare public key. For pinned
    /// certificates only: webpki refuses to parse X.509 v1 certificates as end entities,
    /// and OpenSSL makes v1 certificates with `x509 -req -signkey`.
    fn verify_with_spki(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
        tls13: bool,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let spki = SubjectPublicKeyInfoDer::from(parsed.tbs_certificate.subject_pki.raw);
        if tls13 {
            return rustls::crypto::verify_tls13_signature_with_raw_key(
                message, &spki, dss, &self.algs,
            );
        }
        let key = webpki::RawPublicKeyEntity::try_from(&spki)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let candidates = self
            .algs
            .mapping
            .iter()
            .filter(|(scheme, _)| *scheme == dss.scheme)
            .flat_map(|(_, algs)| algs.iter());
        for alg in candidates {
            if key.verify_signature(*alg, message, dss.signature()).is_ok() {
                return Ok(HandshakeSignatureValid::assertion());
            }
        }
        Err(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature,
        ))
    }
}

impl ClientCertVerifier for ClientVerifier {
    // No CA names in CertificateRequest: clients that choose a certificate by those names
    // would otherwise never offer a self-signed (thumbprint) certificate.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.is_pinned(end_entity) {
            // A pin replaces the chain, not the validity period.
            check_dates(end_entity, now)?;
            return Ok(ClientCertVerified::assertion());
        }
        match &self.chain {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs) {
            Err(rustls::Error::InvalidCertificate(_)) if self.is_pinned(cert) => {
                self.verify_with_spki(message, cert, dss, false)
            }
            other => other,
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs) {
            Err(rustls::Error::InvalidCertificate(_)) if self.is_pinned(cert) => {
                self.verify_with_spki(message, cert, dss, true)
            }
            other => other,
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn check_dates(der: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let now = now.as_secs() as i64;
    let validity = &cert.tbs_certificate.validity;
    if now < validity.not_before.timestamp() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now > validity.not_after.timestamp() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

/// The rustls server configuration for one generation of trust state.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Arc<ClientVerifier>,
    min: TlsVersion,
    provider: Arc<CryptoProvider>,
) -> Result<ServerConfig, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match min {
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // Our order (see `provider`), not the client's.
    config.ignore_client_order = true;
    Ok(config)
}

/// Why a handshake failed; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    NoCertificate,
    UnknownIssuer,
    Expired,
    NotYetValid,
    BadEku,
    Revoked,
    StaleCrl,
    BadSignature,
    BadCertificate,
    Protocol,
    Timeout,
    Io,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 12] = [
        HandshakeFailure::NoCertificate,
        HandshakeFailure::UnknownIssuer,
        HandshakeFailure::Expired,
        HandshakeFailure::NotYetValid,
        HandshakeFailure::BadEku,
        HandshakeFailure::Revoked,
        HandshakeFailure::StaleCrl,
        HandshakeFailure::BadSignature,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::Protocol,
        HandshakeFailure::Timeout,
        HandshakeFailure::Io,
    ];

    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::UnknownIssuer => "unknown_issuer",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::NotYetValid => "not_yet_valid",
            HandshakeFailure::BadEku => "bad_eku",
            HandshakeFailure::Revoked => "revoked",
            HandshakeFailure::StaleCrl => "stale_crl",
            HandshakeFailure::BadSignature => "bad_signature",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Io => "io",
        }
    }

    /// Classifies the error tokio-rustls returns from `accept`.
    pub fn classify(err: &std::io::Error) -> HandshakeFailure {
        let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return match err.kind() {
                std::io::ErrorKind::InvalidData => HandshakeFailure::Protocol,
                _ => HandshakeFailure::Io,
            };
        };
        match tls {
            rustls::Error::NoCertificatesPresented => HandshakeFailure::NoCertificate,
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => HandshakeFailure::UnknownIssuer,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    HandshakeFailure::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    HandshakeFailure::NotYetValid
                }
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => HandshakeFailure::BadEku,
                CertificateError::Revoked => HandshakeFailure::Revoked,
                CertificateError::ExpiredRevocationList
                | CertificateError::ExpiredRevocationListContext { .. } => {
                    HandshakeFailure::StaleCrl
                }
                CertificateError::BadSignature => HandshakeFailure::BadSignature,
                _ => HandshakeFailure::BadCertificate,
            },
            _ => HandshakeFailure::Protocol,
        }
    }
}
