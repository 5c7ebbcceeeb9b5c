//! The trust state: everything a decision reads that comes from files (registry, CA
//! certificates, server certificate and key), built as one immutable value so a reload
//! either replaces all of it or none of it. Connections hold an `Arc<Trust>` and are told
//! through a `watch` channel when a new one is published.

pub mod admit;
pub mod anchors;
pub mod cert;
pub mod jwt_keys;
pub mod memory;
pub mod registry;
pub mod verifier;
pub mod webhook;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;
use tokio::sync::watch;
use x509_parser::prelude::FromDer;

use self::admit::{admit, Admitted, CertFailure, CertTrust};
use self::anchors::{AnchorError, Anchors};
use self::cert::CertInfo;
use self::registry::Scheme;
use self::registry::{Registry, RegistryError};
use self::verifier::{ClientVerifier, TlsError};
use self::webhook::{WebhookFileError, WebhookTrust};
use crate::auth::jwt::{JwtKey, JwtMethod, JwtPolicy};
pub use crate::auth::Credentials;
use crate::auth::Policy;
use crate::auth::{self, Denial, Denied, Identity, IdentitySource, Peer};
use crate::config::Config;
use crate::transport::proxy;
use rustls::pki_types::UnixTime;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Anchors(#[from] AnchorError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Authorization(#[from] Box<crate::authz::AuthzError>),
    #[error("{file}: {message}")]
    Crl { file: String, message: String },
    #[error(transparent)]
    JwtKeys(#[from] jwt_keys::KeyError),
    #[error(transparent)]
    Webhook(#[from] WebhookFileError),
    #[error("{file}: client {name:?}: its authentication name ({bytes} bytes) makes the PROXY v2 header longer than Mosquitto's {limit}-byte limit ([upstream] proxy_protocol = \"v2\")")]
    ProxyHeader {
        file: String,
        name: String,
        bytes: usize,
        limit: usize,
    },
}

impl LoadError {
    /// The component that failed to load; a metric label.
    pub fn component(&self) -> &'static str {
        match self {
            LoadError::Registry(_) | LoadError::ProxyHeader { .. } => "registry",
            LoadError::Anchors(_) => "ca_certificates",
            LoadError::Tls(_) => "server_certificate",
            LoadError::Crl { .. } => "crl",
            LoadError::JwtKeys(_) => "jwt_keys",
            LoadError::Authorization(_) => "authorization",
            LoadError::Webhook(_) => "webhook",
        }
    }
}

/// One generation of everything loaded from files.
pub struct Trust {
    pub generation: u64,
    pub registry: Registry,
    pub anchors: Anchors,
    /// What admits a certificate (SPEC §7); the handshake's verifier asks the same.
    pub certs: Arc<CertTrust>,
    /// The rustls configuration new handshakes use.
    pub server_config: Arc<rustls::ServerConfig>,
    pub policy: Policy,
    pub server_cert: CertInfo,
    /// The topic-space model (`[authorization]`), when configured; reloaded with the rest.
    pub authz: Option<Arc<crate::authz::Authz>>,
    /// `[auth.jwt]`: what a token must satisfy and the issuer keys it may be signed with.
    pub jwt: Option<JwtTrust>,
    /// `[auth.webhook]`: its TLS settings and bearer token (SPEC §9).
    pub webhook: Option<WebhookTrust>,
}

/// The JWT side of the trust state (SPEC §9).
#[derive(Debug)]
pub struct JwtTrust {
    pub policy: JwtPolicy,
    pub keys: Vec<JwtKey>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("generation", &self.generation)
            .field("clients", &self.registry.len())
            .field("anchors", &self.anchors.anchors.len())
            .finish()
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Trust {
    /// Reads and checks every file the configuration names.
    pub fn load(config: &Config, generation: u64) -> Result<Trust, LoadError> {
        let now = unix_now();
        let registry = Registry::load(&config.registry_file, config.registry_max_bytes)?;
        if config.upstream_proxy {
            // SPEC §8: Mosquitto refuses a longer header, so such a client could never
            // connect; refuse the file instead, naming it.
            let longest = registry
                .clients()
                .into_iter()
                .max_by_key(|c| c.authentication_name.len());
            if let Some(c) = longest.filter(|c| {
                proxy::max_encoded_len(c.authentication_name.len()) > proxy::MOSQUITTO_LIMIT
            }) {
                return Err(LoadError::ProxyHeader {
                    file: config.registry_file.display().to_string(),
                    name: c.name.to_string(),
                    bytes: c.authentication_name.len(),
                    limit: proxy::MOSQUITTO_LIMIT,
                });
            }
        }
        let anchors = Anchors::load(&config.ca_files, now)?;
        let pins: HashSet<_> = registry
            .clients()
            .iter()
            .flat_map(|c| c.thumbprints.iter().copied())
            .collect();
        let crls = config
            .crl_files
            .iter()
            .map(|f| load_crls(f))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        let jwt = match &config.jwt {
            Some(j) => Some(JwtTrust {
                policy: j.policy.clone(),
                keys: jwt_keys::load(&j.keys)?,
            }),
            None => None,
        };
        let provider = verifier::provider();
        let certs = Arc::new(
            CertTrust::new(
                &anchors,
                pins,
                crls,
                config.stale_crl,
                provider.signature_verification_algorithms,
            )
            .map_err(|message| TlsError::File {
                file: "CA certificates".into(),
                message,
            })?,
        );
        let webhook = match &config.webhook {
            Some(w) => Some(WebhookTrust::load(w)?),
            None => None,
        };
        // Every webhook `decides` mode includes the clients without a certificate.
        let verifier = match (config.audit_only, jwt.is_some() || webhook.is_some()) {
            (true, _) => ClientVerifier::new(certs.clone()).audit_only(),
            (false, true) => ClientVerifier::new(certs.clone()).certificate_optional(),
            (false, false) => ClientVerifier::new(certs.clone()),
        };
        let verifier = Arc::new(verifier);
        let (chain, key) = verifier::load_server_identity(&config.server_cert, &config.server_key)?;
        let server_cert = CertInfo::parse(&chain[0]).map_err(|e| TlsError::File {
            file: config.server_cert.display().to_string(),
            message: e.to_string(),
        })?;
        let server = verifier::server_config(chain, key, verifier, config.min_tls, provider)?;
        let authz = match &config.authorization {
            Some(a) => Some(Arc::new(
                crate::authz::Authz::load(&a.files()).map_err(Box::new)?,
            )),
            None => None,
        };
        Ok(Trust {
            generation,
            registry,
            anchors,
            certs,
            server_config: Arc::new(server),
            policy: Policy {
                name_sources: config.name_sources.clone(),
                subject_match: config.subject_match,
            },
            server_cert,
            jwt,
            authz,
            webhook,
        })
    }
}

impl Trust {
    /// SPEC §2, §7 and §9, the whole decision for one client. A certificate: its chain
    /// admitted (`admit`, whose result is returned), then the registry (`auth::decide`).
    /// A token: its method, then `auth::jwt::verify` against the keys of this state, then
    /// `auth::decide_jwt`. A webhook's answer: the chain, if any, admitted as a
    /// certificate's, then what the answer says at `now` (`auth::webhook::decide`). The
    /// post-handshake check, the re-decision of live sessions and `explain` all call this,
    /// with the newest state.
    pub fn decide(
        &self,
        credentials: &Credentials<'_>,
        now: UnixTime,
    ) -> Result<(Option<Admitted>, Result<Identity, Denial>), CertFailure> {
        match *credentials {
            Credentials::Certificate { chain, username } => {
                let admitted = admit(chain, &self.certs, now)?;
                let decision = auth::decide(
                    &Peer {
                        cert: &admitted.leaf,
                        chains: admitted.chains(),
                    },
                    username,
                    &self.registry,
                    &self.policy,
                )
                .map(|mut id| {
                    id.valid_until =
                        admitted.valid_until(id.scheme != Some(Scheme::ThumbprintMatch));
                    id
                });
                Ok((Some(admitted), decision))
            }
            Credentials::Jwt { method, token } => {
                let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
                Ok((None, self.decide_jwt(method, token, now)))
            }
            Credentials::Webhook { answer, chain } => {
                let admitted = match chain {
                    Some(chain) if !chain.is_empty() => Some(admit(chain, &self.certs, now)?),
                    _ => None,
                };
                let decision = match &self.webhook {
                    // Fail closed: an answer from a webhook this state does not configure.
                    None => Err(Denial {
                        reason: Denied::NoCredentials,
                        name: None,
                        source: None,
                        scheme: None,
                    }),
                    Some(_) => {
                        let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
                        auth::webhook::decide(answer, secs)
                    }
                };
                Ok((admitted, decision))
            }
        }
    }

    fn decide_jwt(&self, method: &str, token: &[u8], now: i64) -> Result<Identity, Denial> {
        let refuse = |reason| Denial {
            reason,
            name: None,
            source: None,
            scheme: None,
        };
        let jwt = self
            .jwt
            .as_ref()
            .filter(|j| JwtMethod::from_name(method).is_some_and(|m| j.policy.methods.contains(&m)))
            .ok_or(refuse(Denied::BadAuthenticationMethod))?;
        // A refused token's claims are not trusted, not even its `sub` for the log.
        let claims = auth::jwt::verify(token, &jwt.keys, &jwt.policy, now).map_err(|f| Denial {
            source: Some(IdentitySource::TokenSubject),
            ..refuse(Denied::Jwt(f))
        })?;
        auth::decide_jwt(claims, &self.registry, &jwt.policy)
    }
}

/// Reads a CRL file, PEM (one or more CRLs) or DER (one CRL), and checks each parses.
fn load_crls(file: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, LoadError> {
    let err = |message: String| LoadError::Crl {
        file: file.display().to_string(),
        message,
    };
    let bytes = std::fs::read(file).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("bad PEM: {e}")))?;
    if crls.is_empty() {
        crls.push(CertificateRevocationListDer::from(bytes));
    }
    for (i, crl) in crls.iter().enumerate() {
        x509_parser::revocation_list::CertificateRevocationList::from_der(crl)
            .map_err(|e| err(format!("CRL #{} does not parse: {e}", i + 1)))?;
    }
    Ok(crls)
}

/// The published trust state and its change notifications.
pub type TrustWatch = watch::Receiver<Arc<Trust>>;

pub fn publish(initial: Trust) -> (watch::Sender<Arc<Trust>>, TrustWatch) {
    watch::channel(Arc::new(initial))
}
