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
use crate::transport::ws::UpgradeRules;

mod jwt;
pub use self::jwt::JwtConfig;
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

/// SPEC §10: sessions per authentication name and the per-session connect rate.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    max_per_authentication_name: Option<usize>,
    connects_per_second: Option<f64>,
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
struct RawWebSocket {
    listen: String,
    path: Option<String>,
    /// "required": like the top-level key, for this listener (same `trusted_proxies`).
    proxy_protocol: Option<String>,
    max_request_bytes: Option<usize>,
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
struct RawLimits {
    connect_timeout_ms: Option<u64>,
    dial_timeout_ms: Option<u64>,
    max_connect_bytes: Option<usize>,
    max_connections: Option<usize>,
    busy_answers: Option<usize>,
    max_pending: Option<usize>,
    max_pending_per_source: Option<usize>,
    linger_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    listen_backlog: Option<u32>,
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

/// The WebSocket listener: its address, its upgrade rules and its PROXY protocol setting.
#[derive(Clone, Debug)]
pub struct WebSocketListener {
    pub listen: SocketAddr,
    pub rules: UpgradeRules,
    pub inbound_proxy: Option<Vec<Cidr>>,
}

pub const DEFAULT_WEBSOCKET_PATH: &str = "/mqtt";
/// Browsers send 400–800 bytes; long cookies or tokens in the query string more.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    V12,
    V13,
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// One deadline from TCP accept through the TLS handshake to a complete CONNECT.
    pub connect_timeout: Duration,
    pub dial_timeout: Duration,
    pub max_connect_bytes: usize,
    /// Proxied connections served normally.
    pub max_connections: usize,
    /// Connections past `max_connections` that still get a TLS handshake and a
    /// "server busy" CONNACK; past that, new TCP connections are closed before any TLS work.
    pub busy_answers: usize,
    /// Connections still in their TLS handshake or CONNECT (SPEC §7); past it, accepting
    /// pauses and new connections wait in the kernel's backlog.
    pub max_pending: usize,
    /// Pending connections from one source address; past it, closed at accept.
    pub max_pending_per_source: usize,
    /// Once one side of a session has closed, how long the other side may take to close
    /// too before mqttgate closes it (and how long a refusal or DISCONNECT may take to send).
    pub linger: Duration,
    pub drain_timeout: Duration,
    /// The accept queue asked of the kernel, which caps it at `net.core.somaxconn`.
    pub listen_backlog: u32,
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
    pub username_mode: UsernameMode,
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

/// `[sessions]` (SPEC §10).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SessionLimits {
    /// Sessions one authentication name may hold at once on this instance (Azure: 1).
    pub max_per_authentication_name: usize,
    /// Admitted connects per second per session; 0 turns the limit off (Azure: 1).
    pub connects_per_second: f64,
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
        let field_err = |field: &'static str, message: String| ConfigError::Field {
            file: file.to_path_buf(),
            field,
            message,
        };
        let base = file.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let addr = |field: &'static str, s: &str| -> Result<SocketAddr, ConfigError> {
            s.parse()
                .map_err(|_| field_err(field, format!("{s:?} is not an address like 0.0.0.0:8883")))
        };

        let name_sources = raw
            .alternative_sources
            .iter()
            .map(|s| {
                NameSource::from_azure(s).ok_or_else(|| {
                    field_err(
                        "alternativeAuthenticationNameSources",
                        format!(
                            "{s:?} is not one of ClientCertificateSubject, ClientCertificateDns, \
                             ClientCertificateUri, ClientCertificateIp, ClientCertificateEmail"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (i, s) in name_sources.iter().enumerate() {
            if name_sources[..i].contains(s) {
                return Err(field_err(
                    "alternativeAuthenticationNameSources",
                    format!("{} is listed twice", s.azure_name()),
                ));
            }
        }
        let subject_match = match raw.subject_match.as_deref() {
            None | Some("cn") => SubjectMatch::CommonName,
            Some("rfc4514") => SubjectMatch::Rfc4514,
            Some(other) => {
                return Err(field_err(
                    "subject_match",
                    format!("{other:?} is not \"cn\" or \"rfc4514\""),
                ))
            }
        };
        let min_tls = match raw.tls.min_version.as_deref() {
            None | Some("1.2") => TlsVersion::V12,
            Some("1.3") => TlsVersion::V13,
            Some(other) => {
                return Err(field_err(
                    "tls.min_version",
                    format!("{other:?} is not \"1.2\" or \"1.3\""),
                ))
            }
        };
        let username_mode = match raw.upstream.username.as_deref() {
            None | Some("rewrite") => UsernameMode::Rewrite,
            Some("passthrough") => UsernameMode::Passthrough,
            Some(other) => {
                return Err(field_err(
                    "upstream.username",
                    format!("{other:?} is not \"rewrite\" or \"passthrough\""),
                ))
            }
        };
        let client_id_mode = match raw.upstream.client_id.as_deref() {
            Some("authentication-name") => ClientIdMode::AuthenticationName,
            Some("passthrough") => ClientIdMode::Passthrough,
            // Azure's model (SPEC §10): the ClientId names one of the identity's sessions.
            None | Some("per-identity") => ClientIdMode::PerIdentity,
            Some(other) => {
                return Err(field_err(
                    "upstream.client_id",
                    format!(
                    "{other:?} is not \"authentication-name\", \"passthrough\" or \"per-identity\""
                ),
                ))
            }
        };
        let stale_crl = match raw.tls.stale_crl.as_deref() {
            None | Some("refuse") => StaleCrl::Refuse,
            Some("ignore") => StaleCrl::Ignore,
            Some(other) => {
                return Err(field_err(
                    "tls.stale_crl",
                    format!("{other:?} is not \"refuse\" or \"ignore\""),
                ))
            }
        };
        let upstream = raw
            .upstream
            .address
            .unwrap_or_else(|| DEFAULT_UPSTREAM.to_string());
        if !upstream.contains(':') {
            return Err(field_err(
                "upstream.address",
                format!("{upstream:?} needs a port, like 127.0.0.1:1883"),
            ));
        }

        let l = raw.limits;
        let positive = |field: &'static str, v: u64| -> Result<u64, ConfigError> {
            if v == 0 {
                Err(field_err(field, "must be greater than 0".to_string()))
            } else {
                Ok(v)
            }
        };
        let max_connect_bytes = l.max_connect_bytes.unwrap_or(DEFAULT_MAX_CONNECT_BYTES);
        // A CONNECT can't be shorter than a v3.1.1 header with an empty client id (14 bytes),
        // and the MQTT remaining length tops out at 256 MiB.
        if !(14..=268_435_460).contains(&max_connect_bytes) {
            return Err(field_err(
                "limits.max_connect_bytes",
                format!("{max_connect_bytes} is outside 14..=268435460"),
            ));
        }
        let max_connections = positive(
            "limits.max_connections",
            l.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS) as u64,
        )? as usize;
        let max_pending = positive(
            "limits.max_pending",
            l.max_pending
                .unwrap_or((max_connections / 4).max(MIN_DEFAULT_PENDING)) as u64,
        )? as usize;
        let max_pending_per_source = positive(
            "limits.max_pending_per_source",
            l.max_pending_per_source
                .unwrap_or((max_pending / 4).max(MIN_DEFAULT_PENDING_PER_SOURCE))
                as u64,
        )? as usize;
        let limits = Limits {
            connect_timeout: Duration::from_millis(positive(
                "limits.connect_timeout_ms",
                l.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
            )?),
            dial_timeout: Duration::from_millis(positive(
                "limits.dial_timeout_ms",
                l.dial_timeout_ms.unwrap_or(DEFAULT_DIAL_TIMEOUT_MS),
            )?),
            max_connect_bytes,
            max_connections,
            busy_answers: l.busy_answers.unwrap_or(DEFAULT_BUSY_ANSWERS),
            max_pending,
            max_pending_per_source,
            linger: Duration::from_millis(positive(
                "limits.linger_ms",
                l.linger_ms.unwrap_or(DEFAULT_LINGER_MS),
            )?),
            drain_timeout: Duration::from_millis(
                l.drain_timeout_ms.unwrap_or(DEFAULT_DRAIN_TIMEOUT_MS),
            ),
            listen_backlog: match l.listen_backlog.unwrap_or(DEFAULT_LISTEN_BACKLOG) {
                n @ 1..=65535 => n,
                n => {
                    return Err(field_err(
                        "limits.listen_backlog",
                        format!("{n} is outside 1..=65535"),
                    ))
                }
            },
        };

        let inbound_proxy = parse_inbound_proxy(
            "proxy_protocol",
            raw.proxy_protocol.as_deref(),
            &raw.trusted_proxies,
        )
        .map_err(|(f, m)| field_err(f, m))?;
        let websocket = match &raw.websocket {
            None => None,
            Some(ws) => Some(WebSocketListener {
                listen: addr("websocket.listen", &ws.listen)?,
                rules: UpgradeRules {
                    path: match ws.path.as_deref().unwrap_or(DEFAULT_WEBSOCKET_PATH) {
                        p if p.starts_with('/') && !p.contains(['?', '#', ' ']) => p.to_string(),
                        p => {
                            return Err(field_err(
                                "websocket.path",
                                format!("{p:?} is not an absolute path like \"/mqtt\""),
                            ))
                        }
                    },
                    max_request_bytes: match ws
                        .max_request_bytes
                        .unwrap_or(DEFAULT_MAX_REQUEST_BYTES)
                    {
                        n @ 256..=65_536 => n,
                        n => {
                            return Err(field_err(
                                "websocket.max_request_bytes",
                                format!("{n} is outside 256..=65536"),
                            ))
                        }
                    },
                },
                inbound_proxy: parse_inbound_proxy(
                    "websocket.proxy_protocol",
                    ws.proxy_protocol.as_deref(),
                    &raw.trusted_proxies,
                )
                .map_err(|(f, m)| field_err(f, m))?,
            }),
        };
        let upstream_proxy = match raw.upstream.proxy_protocol.as_deref() {
            None | Some("off") => false,
            Some("v2") => true,
            Some(other) => {
                return Err(field_err(
                    "upstream.proxy_protocol",
                    format!("{other:?} is not \"v2\" or \"off\""),
                ))
            }
        };
        let webhook = match raw.auth.webhook {
            Some(w) => Some(w.validate(resolve).map_err(|(f, m)| field_err(f, m))?),
            None => None,
        };
        let jwt = match raw.auth.jwt {
            None => None,
            Some(j) => Some(
                j.validate(resolve)
                    .map_err(|(field, message)| field_err(field, message))?,
            ),
        };
        let audit_only = match raw.mode.as_deref() {
            None | Some("enforce") => false,
            Some("audit") => true,
            Some(other) => {
                return Err(field_err(
                    "mode",
                    format!("{other:?} is not \"enforce\" or \"audit\""),
                ))
            }
        };
        let authorization = match raw.authorization {
            None => None,
            Some(a) => Some(a.validate(resolve).map_err(|(f, m)| field_err(f, m))?),
        };
        Ok(Config {
            jwt,
            audit_only,
            file: file.to_path_buf(),
            listen: addr("listen", &raw.listen)?,
            inbound_proxy,
            websocket,
            admin_listen: addr(
                "admin.listen",
                raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
            )?,
            admin_max_connections: positive(
                "admin.max_connections",
                raw.admin
                    .max_connections
                    .unwrap_or(DEFAULT_ADMIN_MAX_CONNECTIONS) as u64,
            )? as usize,
            name_sources,
            subject_match,
            server_cert: resolve(&raw.tls.certificate),
            server_key: resolve(&raw.tls.private_key),
            ca_files: raw.tls.ca_certificates.iter().map(|p| resolve(p)).collect(),
            min_tls,
            registry_file: resolve(&raw.registry.clients),
            registry_max_bytes: match raw.registry.max_bytes {
                None => crate::trust::registry::DEFAULT_MAX_BYTES,
                Some(0) => return Err(field_err("registry.max_bytes", "must be positive".into())),
                Some(n) => n,
            },
            upstream,
            upstream_proxy,
            username_mode,
            client_id_mode,
            limits,
            reason_strings: raw.mqtt.reason_strings,
            crl_files: raw.tls.crls.iter().map(|p| resolve(p)).collect(),
            stale_crl,
            watch_interval: match raw
                .reload
                .watch_interval_ms
                .unwrap_or(DEFAULT_WATCH_INTERVAL_MS)
            {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            sessions: SessionLimits {
                max_per_authentication_name: match raw
                    .sessions
                    .max_per_authentication_name
                    .unwrap_or(1)
                {
                    // 0 turns the limit off (beyond Azure: one identity shared by a whole
                    // test fleet, or load generators).
                    0 => usize::MAX,
                    n @ 1..=100 => n,
                    n => {
                        return Err(field_err(
                            "sessions.max_per_authentication_name",
                            format!("{n} is outside 1..=100 (Azure's range), or 0 for no limit"),
                        ))
                    }
                },
                connects_per_second: match raw.sessions.connects_per_second.unwrap_or(1.0) {
                    r if r.is_finite() && r >= 0.0 => r,
                    r => {
                        return Err(field_err(
                            "sessions.connects_per_second",
                            format!("{r} is not a number >= 0 (0 turns the limit off)"),
                        ))
                    }
                },
            },
            upstream_check_interval: Duration::from_millis(positive(
                "admin.upstream_check_interval_ms",
                raw.admin
                    .upstream_check_interval_ms
                    .unwrap_or(DEFAULT_UPSTREAM_CHECK_INTERVAL_MS),
            )?),
            authorization,
            webhook,
        })
    }
}

/// `proxy_protocol` for a listener: "required" takes headers from `trusted_proxies` only.
fn parse_inbound_proxy(
    field: &'static str,
    value: Option<&str>,
    trusted: &[String],
) -> Result<Option<Vec<Cidr>>, (&'static str, String)> {
    match value {
        None | Some("off") => Ok(None),
        Some("required") => {
            if trusted.is_empty() {
                return Err((
                    "trusted_proxies",
                    format!("required with {field} = \"required\": the load balancers' networks"),
                ));
            }
            let cidrs = trusted
                .iter()
                .map(|c| Cidr::parse(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ("trusted_proxies", e))?;
            Ok(Some(cidrs))
        }
        Some(other) => Err((field, format!("{other:?} is not \"required\" or \"off\""))),
    }
}

#[cfg(test)]
mod tests;
