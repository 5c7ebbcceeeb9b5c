//! The webhook's files (SPEC §9), read with the other trust files so a reload or the
//! file watcher picks up a new CA, bearer token or client certificate: the rustls client
//! configuration that verifies the webhook, and the `Authorization` header value.

use std::path::Path;
use std::sync::Arc;

use hyper::header::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::verifier;
use crate::config::{Decides, WebhookConfig};

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct WebhookFileError {
    pub file: String,
    pub message: String,
}

/// What the trust state holds for the webhook.
pub struct WebhookTrust {
    pub decides: Decides,
    /// Verifies the webhook's certificate against the configured CA only (no system
    /// roots), and presents mqttgate's client certificate when one is configured.
    pub tls: Arc<rustls::ClientConfig>,
    /// `Bearer <token>`, marked sensitive so hyper never prints it; its Debug is redacted.
    pub authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for WebhookTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTrust")
            .field("decides", &self.decides)
            .field(
                "bearer_token",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl WebhookTrust {
    pub fn load(config: &WebhookConfig) -> Result<WebhookTrust, WebhookFileError> {
        let err = |file: &Path, message: String| WebhookFileError {
            file: file.display().to_string(),
            message,
        };
        let ca = &config.ca_certificates;
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| err(ca, format!("cannot read: {e}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(ca, format!("bad PEM: {e}")))?;
        if certs.is_empty() {
            return Err(err(ca, "no certificate in file".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| err(ca, format!("not a usable CA certificate: {e}")))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(verifier::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(ca, e.to_string()))?
            .with_root_certificates(roots);
        // No ALPN here: hyper-rustls sets it for the HTTP versions it enables (http/1.1).
        let tls = match &config.client_identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let (chain, key) = verifier::load_server_identity(cert, key)
                    .map_err(|e| err(cert, e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| err(cert, e.to_string()))?
            }
        };
        let authorization = match &config.bearer_token_file {
            None => None,
            Some(file) => Some(bearer(file).map_err(|m| err(file, m))?),
        };
        Ok(WebhookTrust {
            decides: config.decides,
            tls: Arc::new(tls),
            authorization,
        })
    }
}

/// The token file's first line, trimmed, as a sensitive `Bearer` header value. Errors
/// never quote the token.
fn bearer(file: &Path) -> Result<HeaderValue, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let token = text.trim();
    if token.is_empty() || token.contains(['\n', '\r']) {
        return Err("the bearer token must be one non-empty line".into());
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the bearer token has characters a header cannot carry".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_is_one_trimmed_line_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cr3t-token\n").unwrap();
        let v = bearer(&file).unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer s3cr3t-token");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("s3cr3t"));
        std::fs::write(&file, "line-one\nline-two\n").unwrap();
        assert!(!bearer(&file).unwrap_err().contains("line-"));
        std::fs::write(&file, "\n").unwrap();
        assert!(bearer(&file).is_err());
        std::fs::write(&file, "zqx\u{7f}zqy").unwrap();
        assert!(!bearer(&file).unwrap_err().contains("zq"));
    }
}
