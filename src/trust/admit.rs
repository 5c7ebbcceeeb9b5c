//! The one admission function of SPEC §7: does this presented certificate chain get in under
//! this trust state at this moment? The rustls verifier, the check after every handshake
//! (a resumed TLS session skips the verifier), the re-decision of live sessions and `explain`
//! all call [`admit`]; nothing else decides about a certificate.
//!
//! A leaf is admitted when it is within its dates and either its SHA-256 thumbprint is
//! registered or it chains to a registered CA certificate that is itself within its dates
//! (webpki never date-checks anchors), with revocation checked over the whole chain for the
//! CAs that have a CRL. Who the client is, is `auth`'s question, asked after CONNECT.
//!
//! Results are memoised per trust generation, keyed by the exact chain and valid only within
//! the time window they were computed for: a full handshake verifies once, and the
//! post-handshake check and resumed sessions reuse the answer instead of verifying signatures
//! again (measured: a second verification cost a third of the connect storm's CPU).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use x509_parser::prelude::FromDer;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor, UnixTime};
use rustls::CertificateError;
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};

use crate::config::StaleCrl;
use crate::trust::anchors::Anchors;
use crate::trust::cert::{CertInfo, Thumbprint};
use crate::trust::verifier::HandshakeFailure;

/// Cached admissions per trust generation; past this the cache starts again empty, so a
/// storm of distinct certificates costs bounded memory.
const CACHE_ENTRIES: usize = 4096;
/// No cached answer is older than this, whatever its certificates' dates say: a bound on any
/// time-dependence not modelled by the validity window.
const CACHE_SECONDS: i64 = 300;

/// Everything a certificate is admitted against, for one trust generation.
pub struct CertTrust {
    anchors: Vec<TrustAnchor<'static>>,
    /// `(not_before, not_after, subject DN)` of `anchors[i]`.
    anchor_info: Vec<(i64, i64, String)>,
    crls: Vec<CertRevocationList<'static>>,
    stale: StaleCrl,
    /// The earliest nextUpdate of the CRLs, when a stale CRL refuses: cached answers end there.
    crl_deadline: Option<i64>,
    pins: HashSet<Thumbprint>,
    algs: WebPkiSupportedAlgorithms,
    cache: Mutex<HashMap<[u8; 32], Admitted>>,
}

impl std::fmt::Debug for CertTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertTrust")
            .field("anchors", &self.anchors.len())
            .field("crls", &self.crls.len())
            .field("pins", &self.pins.len())
            .finish()
    }
}

/// Why a chain was refused. Each variant is one handshake-failure label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertFailure(pub HandshakeFailure);

impl CertFailure {
    /// The rustls error the verifier returns, which picks the TLS alert.
    pub fn to_rustls(self) -> rustls::Error {
        use HandshakeFailure as H;
        let e = match self.0 {
            H::NoCertificate => return rustls::Error::NoCertificatesPresented,
            H::UnknownIssuer => CertificateError::UnknownIssuer,
            H::Expired => CertificateError::Expired,
            H::NotYetValid => CertificateError::NotValidYet,
            H::BadEku => CertificateError::InvalidPurpose,
            H::Revoked => CertificateError::Revoked,
            H::StaleCrl => CertificateError::ExpiredRevocationList,
            H::BadSignature => CertificateError::BadSignature,
            H::BadCertificate | H::Protocol | H::Timeout | H::Io => CertificateError::BadEncoding,
        };
        rustls::Error::InvalidCertificate(e)
    }

    fn from_webpki(e: &webpki::Error) -> CertFailure {
        use webpki::Error as W;
        CertFailure(match e {
            W::CertExpired { .. } | W::InvalidCertValidity => HandshakeFailure::Expired,
            W::CertNotValidYet { .. } => HandshakeFailure::NotYetValid,
            W::UnknownIssuer => HandshakeFailure::UnknownIssuer,
            W::CertRevoked => HandshakeFailure::Revoked,
            W::CrlExpired { .. } => HandshakeFailure::StaleCrl,
            #[allow(deprecated)]
            W::RequiredEkuNotFound | W::RequiredEkuNotFoundContext(_) => HandshakeFailure::BadEku,
            W::InvalidSignatureForPublicKey => HandshakeFailure::BadSignature,
            _ => HandshakeFailure::BadCertificate,
        })
    }
}

/// The path to a registered CA certificate that admitted a leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainPath {
    /// The registered CA certificate the path ends at.
    pub anchor: String,
    /// Intermediates between the leaf and the anchor.
    pub intermediates: usize,
    /// The earliest notAfter of the anchor and the intermediates (the leaf's is apart).
    pub not_after: i64,
}

/// An admitted certificate and what was established about it.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub leaf: CertInfo,
    /// Its thumbprint is registered on some client.
    pub pinned: bool,
    /// The path to a registered CA certificate, or why there is none (a pinned leaf is
    /// admitted without one).
    pub chain: Result<ChainPath, CertFailure>,
    /// The cache may reuse this answer from..until (unix seconds).
    fresh: (i64, i64),
}

impl Admitted {
    pub fn chains(&self) -> bool {
        self.chain.is_ok()
    }

    /// Until when (unix seconds) the admission holds for a client that relies on the chain
    /// (`needs_chain`) or only on its pin.
    pub fn valid_until(&self, needs_chain: bool) -> i64 {
        match &self.chain {
            Ok(path) if needs_chain => self.leaf.not_after.min(path.not_after),
            _ => self.leaf.not_after,
        }
    }
}

impl CertTrust {
    pub fn new(
        anchors: &Anchors,
        pins: HashSet<Thumbprint>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        stale: StaleCrl,
        algs: WebPkiSupportedAlgorithms,
    ) -> Result<CertTrust, String> {
        let mut roots = Vec::with_capacity(anchors.anchors.len());
        let mut anchor_info = Vec::with_capacity(anchors.anchors.len());
        for a in &anchors.anchors {
            let ta = webpki::anchor_from_trusted_cert(&a.der).map_err(|e| {
                format!(
                    "{}: {}: not usable as a trust anchor: {e}",
                    a.file.display(),
                    a.info.subject_dn
                )
            })?;
            roots.push(ta.to_owned());
            anchor_info.push((
                a.info.not_before,
                a.info.not_after,
                a.info.subject_dn.clone(),
            ));
        }
        let crl_deadline = if stale == StaleCrl::Refuse {
            crls.iter()
                .filter_map(|der| {
                    x509_parser::revocation_list::CertificateRevocationList::from_der(der)
                        .ok()
                        .and_then(|(_, c)| c.next_update().map(|t| t.timestamp()))
                })
                .min()
        } else {
            None
        };
        let crls = crls
            .iter()
            .map(|der| {
                OwnedCertRevocationList::from_der(der)
                    .map(CertRevocationList::from)
                    .map_err(|e| format!("CRL not usable: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CertTrust {
            anchors: roots,
            anchor_info,
            crls,
            stale,
            crl_deadline,
            pins,
            algs,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn is_pinned(&self, end_entity: &[u8]) -> bool {
        self.pins.contains(&Thumbprint::of(end_entity))
    }

    pub fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.algs
    }

    /// Does the leaf chain to a registered CA certificate that is valid now?
    fn verify_chain(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(ChainPath, i64), CertFailure> {
        if self.anchors.is_empty() {
            return Err(CertFailure(HandshakeFailure::UnknownIssuer));
        }
        let ee = EndEntityCert::try_from(leaf).map_err(|e| CertFailure::from_webpki(&e))?;
        let crl_refs: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        // The whole chain, and a CA without a CRL stays usable: with webpki's default policy
        // one CA's CRL would fail every other CA's chains as "unknown status".
        let revocation = RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
            b.with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(UnknownStatusPolicy::Allow)
                .with_expiration_policy(match self.stale {
                    StaleCrl::Refuse => ExpirationPolicy::Enforce,
                    StaleCrl::Ignore => ExpirationPolicy::Ignore,
                })
                .build()
        });
        let secs = now.as_secs() as i64;
        let anchor_in_date = |path: &webpki::VerifiedPath<'_>| {
            let (not_before, not_after, _) = self.anchor_info[self.anchor_index(path.anchor())];
            if secs > not_after {
                Err(webpki::Error::CertExpired {
                    time: now,
                    not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                        not_after.max(0) as u64,
                    )),
                })
            } else if secs < not_before {
                Err(webpki::Error::CertNotValidYet {
                    time: now,
                    not_before: UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                        not_before.max(0) as u64,
                    )),
                })
            } else {
                Ok(())
            }
        };
        let path = ee
            .verify_for_usage(
                self.algs.all,
                &self.anchors,
                intermediates,
                now,
                KeyUsage::client_auth(),
                revocation,
                Some(&anchor_in_date),
            )
            .map_err(|e| CertFailure::from_webpki(&e))?;
        let (anchor_from, anchor_until, subject) =
            &self.anchor_info[self.anchor_index(path.anchor())];
        let (mut from, mut until) = (*anchor_from, *anchor_until);
        let mut count = 0;
        for inter in path.intermediate_certificates() {
            count += 1;
            if let Ok((_, c)) = x509_parser::parse_x509_certificate(inter.der().as_ref()) {
                from = from.max(c.validity().not_before.timestamp());
                until = until.min(c.validity().not_after.timestamp());
            }
        }
        Ok((
            ChainPath {
                anchor: subject.clone(),
                intermediates: count,
                not_after: until,
            },
            from,
        ))
    }

    fn anchor_index(&self, anchor: &TrustAnchor<'_>) -> usize {
        self.anchors
            .iter()
            .position(|a| std::ptr::eq(a, anchor))
            .expect("webpki returns one of the anchors it was given")
    }
}

/// SPEC §7: the one admission function.
pub fn admit(
    chain: &[CertificateDer<'_>],
    trust: &CertTrust,
    now: UnixTime,
) -> Result<Admitted, CertFailure> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(CertFailure(HandshakeFailure::NoCertificate))?;
    let secs = now.as_secs() as i64;
    let key = chain_key(chain);
    if let Some(hit) = trust.cache.lock().expect("not poisoned").get(&key) {
        if hit.fresh.0 <= secs && secs <= hit.fresh.1 {
            return Ok(hit.clone());
        }
    }
    let info = CertInfo::parse(leaf).map_err(|_| CertFailure(HandshakeFailure::BadCertificate))?;
    if secs < info.not_before {
        return Err(CertFailure(HandshakeFailure::NotYetValid));
    }
    if secs > info.not_after {
        return Err(CertFailure(HandshakeFailure::Expired));
    }
    let pinned = trust.pins.contains(&info.thumbprint);
    let chain = trust.verify_chain(leaf, intermediates, now);
    let (from, until) = match &chain {
        Ok((path, from)) => (
            info.not_before.max(*from),
            info.not_after.min(path.not_after),
        ),
        Err(e) if !pinned => return Err(*e),
        Err(_) => (info.not_before, info.not_after),
    };
    let mut until = until.min(secs + CACHE_SECONDS);
    if let Some(deadline) = trust.crl_deadline {
        until = until.min(deadline);
    }
    let admitted = Admitted {
        leaf: info,
        pinned,
        chain: chain.map(|(path, _)| path),
        fresh: (from, until),
    };
    let mut cache = trust.cache.lock().expect("not poisoned");
    if cache.len() >= CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(key, admitted.clone());
    Ok(admitted)
}

/// SHA-256 over the presented chain, each certificate length-prefixed so that no two
/// different chains share a key.
fn chain_key(chain: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for c in chain {
        ctx.update(&(c.len() as u64).to_be_bytes());
        ctx.update(c);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(all(test, feature = "demo"))]
mod tests {
    use super::*;
    use crate::cli::pki::{self, Ca, LeafSpec};
    use std::path::Path;

    fn trust_with(cas: &[&Ca], pins: &[&pki::Issued], crls: Vec<String>) -> CertTrust {
        let pem: String = cas.iter().map(|c| c.cert.cert_pem.clone()).collect();
        let anchors = if cas.is_empty() {
            Anchors::default()
        } else {
            Anchors::from_pem(pem.as_bytes(), Path::new("ca.pem"), 0).unwrap()
        };
        let crls = crls
            .iter()
            .map(|p| {
                use rustls::pki_types::pem::PemObject;
                CertificateRevocationListDer::from_pem_slice(p.as_bytes()).unwrap()
            })
            .collect();
        CertTrust::new(
            &anchors,
            pins.iter().map(|i| Thumbprint::of(&i.der)).collect(),
            crls,
            StaleCrl::Refuse,
            crate::trust::verifier::provider().signature_verification_algorithms,
        )
        .unwrap()
    }

    fn der(i: &pki::Issued) -> CertificateDer<'static> {
        CertificateDer::from(i.der.clone())
    }

    fn at(secs: i64) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs as u64))
    }

    fn now() -> i64 {
        crate::trust::unix_now()
    }

    #[test]
    fn a_chained_leaf_is_admitted_until_the_earliest_notafter_of_its_path() {
        let root = Ca::root_with_validity("root", -100, 1000).unwrap();
        let leaf = root.issue(&LeafSpec::client("a")).unwrap();
        let t = trust_with(&[&root], &[], vec![]);
        let a = admit(&[der(&leaf)], &t, at(now())).unwrap();
        let path = a.chain.clone().unwrap();
        assert_eq!(path.anchor, "CN=root");
        assert!((now() + 990..=now() + 1010).contains(&a.valid_until(true)));
        assert_eq!(a.valid_until(false), a.leaf.not_after);
    }

    #[test]
    fn an_anchor_past_its_notafter_admits_nothing_and_one_before_its_notbefore_neither() {
        let root = Ca::root_with_validity("root", -100, 100).unwrap();
        let leaf = root.issue(&LeafSpec::client("a")).unwrap();
        let t = trust_with(&[&root], &[], vec![]);
        assert!(admit(&[der(&leaf)], &t, at(now())).is_ok());
        // The cached answer is bounded by the anchor's date too.
        assert_eq!(
            admit(&[der(&leaf)], &t, at(now() + 200)).unwrap_err(),
            CertFailure(HandshakeFailure::Expired)
        );
        let future = Ca::root_with_validity("future", 100, 1000).unwrap();
        let leaf = future.issue(&LeafSpec::client("b")).unwrap();
        let t = trust_with(&[&future], &[], vec![]);
        assert_eq!(
            admit(&[der(&leaf)], &t, at(now())).unwrap_err(),
            CertFailure(HandshakeFailure::NotYetValid)
        );
    }

    #[test]
    fn a_renewed_ca_with_the_same_key_keeps_admitting_after_the_old_one_expires() {
        let root = Ca::root_with_validity("root", -100, 100).unwrap();
        let renewed = root.renewed("root", -100, 10_000).unwrap();
        let leaf = root.issue(&LeafSpec::client("a")).unwrap();
        let t = trust_with(&[&root, &renewed], &[], vec![]);
        assert!(admit(&[der(&leaf)], &t, at(now() + 200)).is_ok());
    }

    #[test]
    fn revocation_covers_intermediates_and_cas_without_a_crl_are_unaffected() {
        let root = Ca::root("root").unwrap();
        let inter = root.intermediate("inter").unwrap();
        let other = Ca::root("other").unwrap();
        let leaf = inter.issue(&LeafSpec::client("a")).unwrap();
        let t = trust_with(
            &[&root, &other],
            &[],
            vec![root.crl(&[&inter.cert], 86_400).unwrap()],
        );
        assert_eq!(
            admit(&[der(&leaf), der(&inter.cert)], &t, at(now())).unwrap_err(),
            CertFailure(HandshakeFailure::Revoked)
        );
        let fine = other.issue(&LeafSpec::client("b")).unwrap();
        assert!(admit(&[der(&fine)], &t, at(now())).is_ok());
    }

    #[test]
    fn a_pinned_leaf_needs_no_chain_but_its_dates() {
        let pinned = pki::self_signed(&LeafSpec::client("gw"), true).unwrap();
        let t = trust_with(&[], &[&pinned], vec![]);
        let a = admit(&[der(&pinned)], &t, at(now())).unwrap();
        assert!(a.pinned && !a.chains());
        assert_eq!(
            admit(&[der(&pinned)], &t, at(a.leaf.not_after + 1)).unwrap_err(),
            CertFailure(HandshakeFailure::Expired)
        );
        let stranger = pki::self_signed(&LeafSpec::client("x"), false).unwrap();
        assert_eq!(
            admit(&[der(&stranger)], &t, at(now())).unwrap_err(),
            CertFailure(HandshakeFailure::UnknownIssuer)
        );
    }

    #[test]
    fn the_cache_keys_on_the_whole_chain() {
        assert_ne!(
            chain_key(&[
                CertificateDer::from(vec![1, 2]),
                CertificateDer::from(vec![3])
            ]),
            chain_key(&[
                CertificateDer::from(vec![1]),
                CertificateDer::from(vec![2, 3])
            ])
        );
    }
}
