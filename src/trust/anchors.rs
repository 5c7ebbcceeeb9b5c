//! Registered CA certificates: each certificate in each PEM file is a trust anchor on its
//! own, root or intermediate. Loads and checks them (CA flag, dates); building the
//! rustls verifier from them is tls.rs's job.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::CertificateDer;
use thiserror::Error;

use crate::trust::cert::{CertError, CertInfo};

#[derive(Clone, Debug)]
pub struct Anchor {
    pub der: CertificateDer<'static>,
    pub info: CertInfo,
    /// The file it was loaded from, for logs and errors.
    pub file: PathBuf,
    /// Its position among the file's certificates, from 1.
    pub index: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Anchors {
    /// In file order, then certificate order; each certificate once.
    pub anchors: Vec<Anchor>,
    /// Certificates left out because they had expired when the files were read.
    pub skipped: Vec<Skipped>,
}

/// A registered CA certificate that was not loaded because it had expired. webpki never
/// date-checks an anchor, so an expired one must not be loaded at all; and one expired CA
/// must never fail the whole reload, or disabling any client would stop working until
/// someone edits the CA file (SPEC §7).
#[derive(Clone, Debug)]
pub struct Skipped {
    pub file: PathBuf,
    pub index: usize,
    pub subject: String,
    pub not_after: i64,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: certificate #{} ({}) expired at {}; not loaded",
            self.file.display(),
            self.index,
            self.subject,
            Utc(self.not_after)
        )
    }
}

/// Why a CA file was refused. `index` counts certificates in the file from 1.
#[derive(Debug, Error)]
pub enum AnchorError {
    #[error("{}: cannot read: {source}", .file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)", .file.display())]
    NoCertificate { file: PathBuf },
    #[error("{}: certificate #{index}: invalid PEM: {source}", .file.display())]
    Pem {
        file: PathBuf,
        index: usize,
        source: pem::Error,
    },
    #[error("{}: certificate #{index}: {source}", .file.display())]
    Parse {
        file: PathBuf,
        index: usize,
        source: CertError,
    },
    #[error("{}: certificate #{index} ({subject}) is not a CA certificate (basicConstraints CA:TRUE is missing)", .file.display())]
    NotCa {
        file: PathBuf,
        index: usize,
        subject: String,
    },
}

/// Unix seconds as RFC 3339 UTC, for messages.
pub struct Utc(pub i64);

impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match time::OffsetDateTime::from_unix_timestamp(self.0) {
            Ok(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
            Err(_) => write!(f, "unix time {}", self.0),
        }
    }
}

impl Anchors {
    /// Loads every file; the first error refuses the whole set, so a reload with one bad
    /// file keeps the previous anchors instead of silently dropping some. Zero files is
    /// an empty set (thumbprint-only deployments). `now` is unix seconds.
    pub fn load(files: &[PathBuf], now: i64) -> Result<Anchors, AnchorError> {
        let mut seen = HashSet::new();
        let mut all = Anchors::default();
        for file in files {
            let pem = std::fs::read(file).map_err(|source| AnchorError::Read {
                file: file.clone(),
                source,
            })?;
            let loaded = Anchors::from_pem(&pem, file, now)?;
            for anchor in loaded.anchors {
                // The same CA listed in two files (a bundle and its parts) is one anchor.
                if seen.insert(anchor.info.thumbprint) {
                    all.anchors.push(anchor);
                }
            }
            all.skipped.extend(loaded.skipped);
        }
        Ok(all)
    }

    /// Every CERTIFICATE block of one PEM document, checked; those expired at `now` are
    /// skipped and listed. Other blocks (keys) are ignored. A CA that is not yet valid is
    /// loaded: the admission check refuses its clients until its notBefore. `file` only
    /// names the source in errors.
    pub fn from_pem(pem: &[u8], file: &Path, now: i64) -> Result<Anchors, AnchorError> {
        let mut anchors = Vec::new();
        let mut skipped = Vec::new();
        for (i, der) in CertificateDer::pem_slice_iter(pem).enumerate() {
            let index = i + 1;
            let der = der.map_err(|source| AnchorError::Pem {
                file: file.to_path_buf(),
                index,
                source,
            })?;
            let info = CertInfo::parse(&der).map_err(|source| AnchorError::Parse {
                file: file.to_path_buf(),
                index,
                source,
            })?;
            let subject = if info.subject_dn.is_empty() {
                "empty subject".to_string()
            } else {
                info.subject_dn.clone()
            };
            if !info.is_ca {
                return Err(AnchorError::NotCa {
                    file: file.to_path_buf(),
                    index,
                    subject,
                });
            }
            if info.not_after < now {
                skipped.push(Skipped {
                    file: file.to_path_buf(),
                    index,
                    subject,
                    not_after: info.not_after,
                });
                continue;
            }
            anchors.push(Anchor {
                der,
                info,
                file: file.to_path_buf(),
                index,
            });
        }
        if anchors.is_empty() && skipped.is_empty() {
            return Err(AnchorError::NoCertificate {
                file: file.to_path_buf(),
            });
        }
        Ok(Anchors { anchors, skipped })
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::cert::tests::TempDir;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    };
    use time::OffsetDateTime;

    const NOW: i64 = 1_800_000_000; // 2027-01-15

    fn params(cn: &str, ca: bool) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params
    }

    /// A root, an intermediate it signed and a leaf the intermediate signed, as PEM.
    fn chain() -> (String, String, String) {
        let root_key = KeyPair::generate().unwrap();
        let root_params = params("root", true);
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);

        let inter_key = KeyPair::generate().unwrap();
        let inter_params = params("inter", true);
        let inter = inter_params.signed_by(&inter_key, &root_issuer).unwrap();
        let inter_issuer = Issuer::new(inter_params, inter_key);

        let leaf = params("leaf", false)
            .signed_by(&KeyPair::generate().unwrap(), &inter_issuer)
            .unwrap();
        (root.pem(), inter.pem(), leaf.pem())
    }

    fn ca_pem(cn: &str, not_before: i64, not_after: i64) -> String {
        let mut p = params(cn, true);
        p.not_before = OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        p.not_after = OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    }

    #[test]
    fn root_and_intermediate_in_one_file_are_both_anchors() {
        let (root, inter, _) = chain();
        let pem = format!("{root}{inter}");
        let anchors = Anchors::from_pem(pem.as_bytes(), Path::new("ca.pem"), NOW).unwrap();
        let names: Vec<&str> = anchors
            .anchors
            .iter()
            .map(|a| a.info.subject_dn.as_str())
            .collect();
        assert_eq!(names, ["CN=root", "CN=inter"]);
        assert_eq!(anchors.anchors[1].info.issuer_dn, "CN=root");
    }

    #[test]
    fn leaf_is_refused_naming_file_and_index() {
        let (root, _, leaf) = chain();
        let pem = format!("{root}{leaf}");
        let err = Anchors::from_pem(pem.as_bytes(), Path::new("/etc/ca.pem"), NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/ca.pem: certificate #2 (CN=leaf) is not a CA certificate \
             (basicConstraints CA:TRUE is missing)"
        );
    }

    #[test]
    fn expired_ca_is_skipped_and_reported_without_failing_the_file() {
        let (root, _, _) = chain();
        let pem = format!("{}{root}", ca_pem("old-ca", NOW - 1000, NOW - 1));
        let loaded = Anchors::from_pem(pem.as_bytes(), Path::new("old.pem"), NOW).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded.anchors[0].info.subject_dn, "CN=root");
        assert_eq!(loaded.skipped.len(), 1);
        assert_eq!(
            loaded.skipped[0].to_string(),
            "old.pem: certificate #1 (CN=old-ca) expired at 2027-01-15T07:59:59Z; not loaded"
        );
    }

    #[test]
    fn a_file_of_only_expired_cas_loads_nothing_and_is_not_an_error() {
        let pem = ca_pem("old-ca", NOW - 1000, NOW - 1);
        let loaded = Anchors::from_pem(pem.as_bytes(), Path::new("old.pem"), NOW).unwrap();
        assert!(loaded.is_empty());
        assert_eq!(loaded.skipped.len(), 1);
    }

    #[test]
    fn not_yet_valid_ca_is_loaded_for_its_validity_to_be_checked_at_admission() {
        let pem = ca_pem("future-ca", NOW + 10, NOW + 1000);
        let loaded = Anchors::from_pem(pem.as_bytes(), Path::new("f.pem"), NOW).unwrap();
        assert_eq!(loaded.len(), 1);
        assert!(loaded.skipped.is_empty());
    }

    #[test]
    fn ca_valid_at_its_exact_bounds_is_accepted() {
        let pem = ca_pem("edge", NOW, NOW);
        assert_eq!(
            Anchors::from_pem(pem.as_bytes(), Path::new("e.pem"), NOW)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn file_without_certificate_is_refused() {
        let key = KeyPair::generate().unwrap().serialize_pem();
        for content in ["", "not pem at all\n", key.as_str()] {
            let err = Anchors::from_pem(content.as_bytes(), Path::new("e.pem"), NOW).unwrap_err();
            assert!(matches!(err, AnchorError::NoCertificate { .. }), "{err}");
            assert!(err.to_string().starts_with("e.pem: no certificate found"));
        }
    }

    #[test]
    fn unparseable_certificate_is_refused_with_its_index() {
        let (root, _, _) = chain();
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let pem = format!("{root}{junk}");
        let err = Anchors::from_pem(pem.as_bytes(), Path::new("j.pem"), NOW).unwrap_err();
        assert!(matches!(err, AnchorError::Parse { index: 2, .. }), "{err}");
        assert!(
            err.to_string().starts_with("j.pem: certificate #2: "),
            "{err}"
        );
    }

    #[test]
    fn duplicates_across_files_are_loaded_once() {
        let tmp = TempDir::new("anchors-dup");
        let (root, inter, _) = chain();
        std::fs::write(tmp.path("bundle.pem"), format!("{root}{inter}")).unwrap();
        std::fs::write(tmp.path("root.pem"), &root).unwrap();
        std::fs::write(tmp.path("twice.pem"), format!("{inter}{inter}")).unwrap();
        let files = [
            tmp.path("bundle.pem"),
            tmp.path("root.pem"),
            tmp.path("twice.pem"),
        ];
        let anchors = Anchors::load(&files, NOW).unwrap();
        assert_eq!(anchors.len(), 2);
        assert!(anchors
            .anchors
            .iter()
            .all(|a| a.file == tmp.path("bundle.pem")));
    }

    #[test]
    fn unreadable_file_is_refused_naming_it() {
        let err = Anchors::load(&[PathBuf::from("/nonexistent/ca.pem")], NOW).unwrap_err();
        assert!(matches!(err, AnchorError::Read { .. }));
        assert!(
            err.to_string()
                .starts_with("/nonexistent/ca.pem: cannot read: "),
            "{err}"
        );
    }

    #[test]
    fn zero_files_give_no_anchors() {
        assert!(Anchors::load(&[], NOW).unwrap().is_empty());
    }
}
