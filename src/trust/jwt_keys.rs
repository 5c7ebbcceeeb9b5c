//! The JWT issuer keys of `[auth.jwt]` (SPEC §9), read with the other trust files so a
//! reload (SIGHUP, the file watcher) replaces them with everything else. A key file is a
//! PEM certificate, whose kid is its file stem (`issuer-2026.pem` → `issuer-2026`), or a
//! JWKS (`.json`, each key's own `kid`); a folder contributes its `*.pem`, `*.crt` and
//! `*.json` files in name order, so a rotation is a file added, then one removed.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::auth::jwt::JwtKey;

/// SPEC §9: at most two keys are active, the current one and the next (or the previous).
pub const MAX_ACTIVE_KEYS: usize = 2;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct KeyError {
    pub file: String,
    pub message: String,
}

fn is_key_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.')
        && [".pem", ".crt", ".json"].iter().any(|e| name.ends_with(e))
        && p.is_file()
}

/// The files `paths` name now: each file as it is, each folder's key files in name order.
/// An unreadable folder counts as itself, so the load reports it.
pub fn key_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for path in paths {
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut found: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| is_key_file(p))
                    .collect();
                found.sort();
                files.extend(found);
            }
            Err(_) => files.push(path.clone()),
        }
    }
    files
}

/// Every key the paths hold: at least one, at most [`MAX_ACTIVE_KEYS`], kids unique.
pub fn load(paths: &[PathBuf]) -> Result<Vec<JwtKey>, KeyError> {
    let mut keys: Vec<JwtKey> = Vec::new();
    let files = key_files(paths);
    for file in &files {
        let err = |message: String| KeyError {
            file: file.display().to_string(),
            message,
        };
        let bytes = std::fs::read(file).map_err(|e| err(format!("cannot read: {e}")))?;
        let loaded = if file.extension().is_some_and(|e| e == "json") {
            from_jwks(&bytes, file).map_err(err)?
        } else {
            let kid = file
                .file_stem()
                .and_then(|s| s.to_str())
                .ok_or_else(|| err("the file name is not UTF-8 (it is the key's kid)".into()))?;
            vec![from_pem_certificate(&bytes, kid, file).map_err(err)?]
        };
        for key in loaded {
            if keys.iter().any(|k| k.kid == key.kid) {
                return Err(err(format!(
                    "kid {:?} is also in another key file",
                    key.kid
                )));
            }
            keys.push(key);
        }
        if keys.len() > MAX_ACTIVE_KEYS {
            return Err(err(format!(
                "more than {MAX_ACTIVE_KEYS} JWT keys ([auth.jwt] keys): remove the retired one"
            )));
        }
    }
    if keys.is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(KeyError {
            file: names.join(", "),
            message: "no JWT key found ([auth.jwt] keys)".into(),
        });
    }
    Ok(keys)
}

/// One PEM certificate: its public key, usable with the algorithms of its key type.
fn from_pem_certificate(bytes: &[u8], kid: &str, file: &Path) -> Result<JwtKey, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    let [cert] = certs.as_slice() else {
        return Err(format!(
            "holds {} certificates; a key file holds exactly one (its kid is the file name)",
            certs.len()
        ));
    };
    Ok(JwtKey {
        kid: kid.to_string(),
        key: key_from_certificate(cert)?,
        alg: None,
        file: file.display().to_string(),
    })
}

/// The public key of a DER certificate, by its SubjectPublicKeyInfo algorithm.
pub fn key_from_certificate(der: &[u8]) -> Result<DecodingKey, String> {
    use x509_parser::oid_registry::{
        OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("certificate does not parse: {e}"))?;
    let spki = &cert.tbs_certificate.subject_pki;
    let key = &spki.subject_public_key.data;
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_PKCS1_RSAENCRYPTION {
        Ok(DecodingKey::from_rsa_der(key))
    } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        Ok(DecodingKey::from_ec_der(key))
    } else if *oid == OID_SIG_ED25519 {
        Ok(DecodingKey::from_ed_der(key))
    } else {
        Err(format!("unsupported public key algorithm {oid}"))
    }
}

/// A JWKS document (RFC 7517 §5): every key needs a kid; symmetric keys are refused.
fn from_jwks(bytes: &[u8], file: &Path) -> Result<Vec<JwtKey>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    set.keys
        .iter()
        .enumerate()
        .map(|(i, jwk)| {
            let at = |m: &str| format!("key #{}: {m}", i + 1);
            let kid = jwk.common.key_id.clone().ok_or_else(|| at("has no kid"))?;
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                return Err(at("is a symmetric (oct) key; only public keys are allowed"));
            }
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                return Err(at("its use is not \"sig\""));
            }
            let alg = jwk
                .common
                .key_algorithm
                .map(|a| {
                    Algorithm::from_str(&a.to_string())
                        .ok()
                        .filter(|a| a.family() != AlgorithmFamily::Hmac)
                        .ok_or_else(|| at(&format!("alg {a} is not a signature algorithm")))
                })
                .transpose()?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| at(&e.to_string()))?;
            Ok(JwtKey {
                kid,
                key,
                alg,
                file: file.display().to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_pem() -> String {
        let kp = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["issuer".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap()
            .pem()
    }

    #[test]
    fn a_folder_of_certificates_gives_one_key_per_file_named_by_its_stem() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k2.pem"), cert_pem()).unwrap();
        std::fs::write(dir.path().join("k1.crt"), cert_pem()).unwrap();
        std::fs::write(dir.path().join("README"), "not a key").unwrap();
        let keys = load(&[dir.path().to_path_buf()]).unwrap();
        let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, ["k1", "k2"]);
        std::fs::write(dir.path().join("k3.pem"), cert_pem()).unwrap();
        let err = load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(err.file.ends_with("k3.pem"), "{err}");
        assert!(err.message.contains("more than 2"), "{err}");
    }

    #[test]
    fn a_jwks_gives_its_kids_and_refuses_symmetric_keys_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("issuer.json");
        // The RSA public key of RFC 7517 appendix A.1.
        std::fs::write(
            &jwks,
            r#"{"keys":[{"kty":"RSA","kid":"r1","use":"sig","alg":"RS256","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB"}]}"#,
        )
        .unwrap();
        let keys = load(std::slice::from_ref(&jwks)).unwrap();
        assert_eq!(keys[0].kid, "r1");
        assert_eq!(keys[0].alg, Some(Algorithm::RS256));
        let dup = dir.path().join("r1.pem");
        std::fs::write(&dup, cert_pem()).unwrap();
        let err = load(&[jwks.clone(), dup]).unwrap_err();
        assert!(err.message.contains("kid \"r1\""), "{err}");
        std::fs::write(
            &jwks,
            r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#,
        )
        .unwrap();
        let err = load(std::slice::from_ref(&jwks)).unwrap_err();
        assert!(err.message.contains("symmetric"), "{err}");
    }

    #[test]
    fn no_key_at_all_is_an_error_naming_the_paths() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(err.message.contains("no JWT key"), "{err}");
        let missing = dir.path().join("gone.pem");
        let err = load(&[missing]).unwrap_err();
        assert!(err.file.ends_with("gone.pem"), "{err}");
    }
}
