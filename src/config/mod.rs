//! The mqttgate configuration file: TOML structs, their defaults, and validation into
//! typed values. Loading the files the configuration points at (certificates, registry)
//! happens in `state.rs`; this module only reads and checks the TOML itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod authz;

pub use self::authz::{Authorization, AuthzMode};
use crate::auth::{NameSource, SubjectMatch};
use crate::transport::proxy::Cidr;

mod jwt;
mod limits;
mod listeners;
pub use self::jwt::JwtConfig;
use self::limits::{positive, RawLimits, RawSessions};
pub use self::limits::{Limits, SessionLimits};
use self::listeners::{parse_inbound_proxy, RawWebSocket};
pub use self::listeners::{WebSocketListener, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_WEBSOCKET_PATH};
mod webhook;
pub use self::webhook::{Decides, WebhookConfig, WebhookUrl};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8883";
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:9090";
pub const DEFAULT_UPSTREAM: &str = "127.0.0.1:1883";
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_DIAL_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_MAX_CONNECT_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_BUSY_ANSWERS: usize = 64;
/// Pending connections default to a quarter of `max_connections`, and at least this many.
pub const MIN_DEFAULT_PENDING: usize = 16;
/// Pending connections from one address default to a quarter of `max_pending`, and at
/// least this many (clients behind one NAT address share it).
pub const MIN_DEFAULT_PENDING_PER_SOURCE: usize = 4;
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 20_000;
pub const DEFAULT_LINGER_MS: u64 = 5_000;
pub const DEFAULT_WATCH_INTERVAL_MS: u64 = 2_000;
pub const DEFAULT_UPSTREAM_CHECK_INTERVAL_MS: u64 = 2_000;
/// Linux's default `somaxconn` since 5.4: room for a fleet reconnecting at once.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;

/// An error in the configuration file, always naming the file and, where it applies, the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("{file}: {field}: {message}")]
    Field {
        file: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// The file as written, before validation. Unknown keys are errors so a typo never
/// silently falls back to a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// "enforce" (default) or "audit": decide and log everything, refuse nothing (SPEC §12).
    mode: Option<String>,
    #[serde(default = "default_listen")]
    listen: String,
    /// "required": every connection starts with a PROXY v2 header from `trusted_proxies`.
    proxy_protocol: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    /// A second listener for MQTT over WebSockets (SPEC §8).
    websocket: Option<RawWebSocket>,
    #[serde(rename = "alternativeAuthenticationNameSources", default)]
    alternative_sources: Vec<String>,
    #[serde(default)]
    subject_match: Option<String>,
    tls: RawTls,
    registry: RawRegistry,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    mqtt: RawMqtt,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    reload: RawReload,
    /// Topic-space authorization (SPEC §11); off without the section.
    authorization: Option<authz::RawAuthorization>,
    #[serde(default)]
    sessions: RawSessions,
    #[serde(default)]
    auth: RawAuth,
}

/// `[auth]`: the authentication methods besides certificates (SPEC §9).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    jwt: Option<jwt::RawJwt>,
    webhook: Option<webhook::RawWebhook>,
}

fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: PathBuf,
    private_key: PathBuf,
    #[serde(default)]
    ca_certificates: Vec<PathBuf>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    crls: Vec<PathBuf>,
    #[serde(default)]
    stale_crl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    clients: PathBuf,
    max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    /// "v2": each upstream connection starts with a PROXY v2 header (Mosquitto >= 2.1).
    proxy_protocol: Option<String>,
    address: Option<String>,
    username: Option<String>,
    client_id: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    #[serde(default)]
    reason_strings: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    upstream_check_interval_ms: Option<u64>,
    max_connections: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReload {
    watch_interval_ms: Option<u64>,
}

/// What to do with a CRL whose nextUpdate has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleCrl {
    /// Refuse clients of that CA until a fresh CRL is loaded (OpenSSL's behaviour).
    Refuse,
    /// Keep applying the stale CRL's revocations and admit everyone else.
    Ignore,
}

/// What the upstream broker is told the username is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsernameMode {
    /// Username = the client's authenticationName, no password.
    Rewrite,
    /// The client's own CONNECT bytes, username and password included.
    Passthrough,
}

/// What the upstream broker is told the client identifier is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientIdMode {
    /// ClientId = authenticationName: one session per identity, as Azure does.
    AuthenticationName,
    /// The client's own ClientId: lets one identity take over another's session.
    Passthrough,
    /// `<authenticationName, '/' and '%' percent-escaped>/<ClientId>`: many sessions per
    /// identity, and identities can never collide.
    PerIdentity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    V12,
    V13,
}

/// The validated configuration. Paths are resolved against the configuration file's folder.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    /// `mode = "audit"` (SPEC §12): every decision made, logged and counted, denials as
    /// `would_deny`, and every client let through as itself (its own username and ClientId).
    pub audit_only: bool,
    pub listen: SocketAddr,
    /// With `proxy_protocol = "required"`: the networks a PROXY v2 header is taken from.
    /// Every connection must start with one; from anywhere else it is closed (SPEC §8).
    pub inbound_proxy: Option<Vec<Cidr>>,
    /// `[websocket]`: MQTT over WebSockets on a second port, same TLS and trust.
    pub websocket: Option<WebSocketListener>,
    pub admin_listen: SocketAddr,
    /// Admin connections served at once; more are closed on accept.
    pub admin_max_connections: usize,
    pub name_sources: Vec<NameSource>,
    pub subject_match: SubjectMatch,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub ca_files: Vec<PathBuf>,
    pub min_tls: TlsVersion,
    pub registry_file: PathBuf,
    /// A larger registry file is refused before it is read (`registry.max_bytes`).
    pub registry_max_bytes: u64,
    pub upstream: String,
    /// `[upstream] proxy_protocol = "v2"`: a PROXY v2 header with the client's address and
    /// authentication name (as the TLS CN) opens every upstream connection.
    pub upstream_proxy: bool,
    /// Effective: `passthrough` in audit mode, where `rewrite` is refused (SPEC §13).
    pub username_mode: UsernameMode,
    /// Effective: `passthrough` in audit mode (every client reaches the broker as itself).
    pub client_id_mode: ClientIdMode,
    pub limits: Limits,
    pub reason_strings: bool,
    pub crl_files: Vec<PathBuf>,
    pub stale_crl: StaleCrl,
    /// How often files are checked for changes; None: only SIGHUP reloads.
    pub watch_interval: Option<Duration>,
    pub upstream_check_interval: Duration,
    /// `[authorization]`: topic-space authorization, when configured.
    pub authorization: Option<Authorization>,
    pub sessions: SessionLimits,
    /// `[auth.jwt]`: JWT clients are accepted and a client certificate becomes optional.
    pub jwt: Option<JwtConfig>,
    /// `[auth.webhook]`: an HTTPS service decides some clients (SPEC §9).
    pub webhook: Option<WebhookConfig>,
}

impl Config {
    /// Every file the trust state is built from, for the change watcher.
    /// A registry directory counts as the files in it now, so adding, removing or editing
    /// one is a change (the watcher asks again at every check).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = crate::trust::registry::registry_files(&self.registry_file)
            .unwrap_or_else(|_| vec![self.registry_file.clone()]);
        files.extend([self.server_cert.clone(), self.server_key.clone()]);
        files.extend(self.ca_files.iter().cloned());
        files.extend(self.crl_files.iter().cloned());
        if let Some(jwt) = &self.jwt {
            files.extend(crate::trust::jwt_keys::key_files(&jwt.keys));
        }
        if let Some(a) = &self.authorization {
            files.extend(a.paths());
        }
        if let Some(webhook) = &self.webhook {
            files.extend(webhook.files());
        }
        files
    }
}

impl Config {
    /// What every grant is computed from (SPEC §13): the effective `[upstream]` modes and
    /// the session expiry cap.
    pub fn upstream_policy(&self) -> crate::auth::grant::Upstream {
        crate::auth::grant::Upstream {
            username: self.username_mode,
            client_id: self.client_id_mode,
            proxy: self.upstream_proxy,
            max_session_expiry: self.sessions.max_session_expiry,
        }
    }

    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, file)
    }

    pub fn from_toml(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Config::validate(raw, file).map_err(|(field, message)| ConfigError::Field {
            file: file.to_path_buf(),
            field,
            message,
        })
    }

    /// Every field checked and defaulted; the first bad one is named with why.
    fn validate(raw: RawConfig, file: &Path) -> Result<Config, FieldError> {
        let base = file.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let upstream = raw
            .upstream
            .address
            .unwrap_or_else(|| DEFAULT_UPSTREAM.to_string());
        if !upstream.contains(':') {
            return Err((
                "upstream.address",
                format!("{upstream:?} needs a port, like 127.0.0.1:1883"),
            ));
        }
        let trusted = &raw.trusted_proxies;
        let audit_only = choice(
            "mode",
            raw.mode.as_deref(),
            &[("enforce", false), ("audit", true)],
        )?;
        let username_mode = match (audit_only, raw.upstream.username.as_deref()) {
            // SPEC §12-13: rewrite tells the broker every username is a verified name, and
            // audit mode lets unverified clients through.
            (true, Some("rewrite")) => {
                return Err((
                    "upstream.username",
                    "\"rewrite\" asserts verified names to the broker, but audit mode lets unverified clients through: use \"passthrough\" (the default in audit mode) in front of a broker that still authenticates clients itself".into(),
                ))
            }
            (true, None) => UsernameMode::Passthrough,
            (_, username) => choice(
                "upstream.username",
                username,
                &[
                    ("rewrite", UsernameMode::Rewrite),
                    ("passthrough", UsernameMode::Passthrough),
                ],
            )?,
        };
        // Azure's model (SPEC §10): the ClientId names one of the identity's sessions. In
        // audit mode every client reaches the broker as itself, ClientId included.
        let client_id_mode = choice(
            "upstream.client_id",
            raw.upstream.client_id.as_deref(),
            &[
                ("per-identity", ClientIdMode::PerIdentity),
                ("authentication-name", ClientIdMode::AuthenticationName),
                ("passthrough", ClientIdMode::Passthrough),
            ],
        )?;
        let mut authorization = raw.authorization.map(|a| a.validate(resolve)).transpose()?;
        if let (true, Some(a)) = (audit_only, authorization.as_mut()) {
            // The top-level mode covers authorization too.
            a.mode = AuthzMode::Audit;
        }
        Ok(Config {
            audit_only,
            file: file.to_path_buf(),
            listen: parse_addr("listen", &raw.listen)?,
            inbound_proxy: parse_inbound_proxy(
                "proxy_protocol",
                raw.proxy_protocol.as_deref(),
                trusted,
            )?,
            websocket: raw
                .websocket
                .as_ref()
                .map(|ws| ws.validate(trusted))
                .transpose()?,
            admin_listen: parse_addr(
                "admin.listen",
                raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
            )?,
            admin_max_connections: positive(
                "admin.max_connections",
                raw.admin
                    .max_connections
                    .unwrap_or(DEFAULT_ADMIN_MAX_CONNECTIONS) as u64,
            )? as usize,
            name_sources: name_sources(&raw.alternative_sources)?,
            subject_match: choice(
                "subject_match",
                raw.subject_match.as_deref(),
                &[
                    ("cn", SubjectMatch::CommonName),
                    ("rfc4514", SubjectMatch::Rfc4514),
                ],
            )?,
            server_cert: resolve(&raw.tls.certificate),
            server_key: resolve(&raw.tls.private_key),
            ca_files: raw.tls.ca_certificates.iter().map(|p| resolve(p)).collect(),
            min_tls: choice(
                "tls.min_version",
                raw.tls.min_version.as_deref(),
                &[("1.2", TlsVersion::V12), ("1.3", TlsVersion::V13)],
            )?,
            registry_file: resolve(&raw.registry.clients),
            registry_max_bytes: match raw.registry.max_bytes {
                None => crate::trust::registry::DEFAULT_MAX_BYTES,
                Some(0) => return Err(("registry.max_bytes", "must be positive".into())),
                Some(n) => n,
            },
            upstream,
            upstream_proxy: choice(
                "upstream.proxy_protocol",
                raw.upstream.proxy_protocol.as_deref(),
                &[("off", false), ("v2", true)],
            )?,
            username_mode,
            client_id_mode: match audit_only {
                true => ClientIdMode::Passthrough,
                false => client_id_mode,
            },
            limits: raw.limits.validate()?,
            reason_strings: raw.mqtt.reason_strings,
            crl_files: raw.tls.crls.iter().map(|p| resolve(p)).collect(),
            stale_crl: choice(
                "tls.stale_crl",
                raw.tls.stale_crl.as_deref(),
                &[("refuse", StaleCrl::Refuse), ("ignore", StaleCrl::Ignore)],
            )?,
            watch_interval: match raw
                .reload
                .watch_interval_ms
                .unwrap_or(DEFAULT_WATCH_INTERVAL_MS)
            {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            sessions: raw.sessions.validate()?,
            upstream_check_interval: Duration::from_millis(positive(
                "admin.upstream_check_interval_ms",
                raw.admin
                    .upstream_check_interval_ms
                    .unwrap_or(DEFAULT_UPSTREAM_CHECK_INTERVAL_MS),
            )?),
            authorization,
            webhook: raw.auth.webhook.map(|w| w.validate(resolve)).transpose()?,
            jwt: raw.auth.jwt.map(|j| j.validate(resolve)).transpose()?,
        })
    }
}

/// A field and why its value is refused; the file is added by [`Config::from_toml`].
type FieldError = (&'static str, String);

/// One of a field's named values; absent is the first one (the default).
fn choice<T: Copy>(
    field: &'static str,
    value: Option<&str>,
    options: &[(&str, T)],
) -> Result<T, FieldError> {
    let Some(value) = value else {
        return Ok(options[0].1);
    };
    if let Some((_, v)) = options.iter().find(|(name, _)| *name == value) {
        return Ok(*v);
    }
    let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
    let (last, rest) = names.split_last().expect("a field has options");
    Err((
        field,
        format!("{value:?} is not {} or {last}", rest.join(", ")),
    ))
}

fn parse_addr(field: &'static str, s: &str) -> Result<SocketAddr, FieldError> {
    s.parse()
        .map_err(|_| (field, format!("{s:?} is not an address like 0.0.0.0:8883")))
}

/// `alternativeAuthenticationNameSources`: Azure's names, each at most once, in order.
fn name_sources(names: &[String]) -> Result<Vec<NameSource>, FieldError> {
    const FIELD: &str = "alternativeAuthenticationNameSources";
    let mut sources = Vec::with_capacity(names.len());
    for s in names {
        let source = NameSource::from_azure(s).ok_or_else(|| {
            (
                FIELD,
                format!(
                    "{s:?} is not one of ClientCertificateSubject, ClientCertificateDns, \
                     ClientCertificateUri, ClientCertificateIp, ClientCertificateEmail"
                ),
            )
        })?;
        if sources.contains(&source) {
            return Err((FIELD, format!("{} is listed twice", source.azure_name())));
        }
        sources.push(source);
    }
    Ok(sources)
}

#[cfg(test)]
mod tests;
