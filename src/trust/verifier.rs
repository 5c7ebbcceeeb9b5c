//! The TLS side: the rustls `ServerConfig` and the client-certificate verifier, which asks
//! `admit` (chain to a registered CA, or a registered thumbprint) and checks the handshake
//! signature. It does not decide *who* the client is; `auth.rs` does that after CONNECT.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;

use crate::config::TlsVersion;
use crate::trust::admit::{admit, CertTrust};

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

/// The rustls side of admission: the handshake refuses what [`admit`] refuses, and always
/// checks the handshake signature (proof of the private key).
#[derive(Debug)]
pub struct ClientVerifier {
    trust: Arc<CertTrust>,
    /// False when another method (JWT, the webhook) can authenticate a client without a certificate.
    mandatory: bool,
    /// Audit-only mode (SPEC §12): a certificate that fails admission still completes the
    /// handshake (its possession is still proven); the decision after CONNECT records it
    /// as `would_deny`.
    audit: bool,
}

impl ClientVerifier {
    pub fn new(trust: Arc<CertTrust>) -> ClientVerifier {
        ClientVerifier {
            trust,
            mandatory: true,
            audit: false,
        }
    }

    /// SPEC §12: nothing is refused at the handshake; the client may present any
    /// certificate or none.
    pub fn audit_only(self) -> ClientVerifier {
        ClientVerifier {
            mandatory: false,
            audit: true,
            ..self
        }
    }

    /// SPEC §9: with JWT or the webhook enabled a client may present no certificate (and
    /// must then send a token, or is decided by the webhook); one it presents is still
    /// verified exactly as before, so a bad certificate still fails the handshake.
    pub fn certificate_optional(self) -> ClientVerifier {
        ClientVerifier {
            mandatory: false,
            ..self
        }
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
        let algs = self.trust.algorithms();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let spki = SubjectPublicKeyInfoDer::from(parsed.tbs_certificate.subject_pki.raw);
        if tls13 {
            return rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algs);
        }
        let key = webpki::RawPublicKeyEntity::try_from(&spki)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let candidates = algs
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
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        match admit(&chain, &self.trust, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(_) if self.audit => Ok(ClientCertVerified::assertion()),
            Err(f) => Err(f.to_rustls()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match rustls::crypto::verify_tls12_signature(message, cert, dss, self.trust.algorithms()) {
            Err(rustls::Error::InvalidCertificate(_)) if self.trust.is_pinned(cert) => {
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
        match rustls::crypto::verify_tls13_signature(message, cert, dss, self.trust.algorithms()) {
            Err(rustls::Error::InvalidCertificate(_)) if self.trust.is_pinned(cert) => {
                self.verify_with_spki(message, cert, dss, true)
            }
            other => other,
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.algorithms().supported_schemes()
    }
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
