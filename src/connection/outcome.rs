//! How a connection ends: the refusal and close reasons, the one outcome each accepted
//! connection ends in, and the one place that records it (metrics and audit).

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tracing::debug;

use super::webhook::WebhookFailure;
use super::Ctx;
use crate::audit;
use crate::auth::{Denial, Denied};
use crate::metrics;
use crate::mqtt::{self, ParseError, Refusal, Version};
use crate::server::sessions::SessionRefusal;
use crate::server::slots::AtAccept;
use crate::transport::ws::UpgradeRefusal;
use crate::transport::{ClientStream, Peer};
use crate::trust::verifier::HandshakeFailure;

/// Why a connection was refused after its TLS handshake. Each variant is one metric label.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("no complete CONNECT before the deadline")]
    ConnectTimeout { version: Option<Version> },
    #[error("client closed before sending a complete CONNECT")]
    ClientGone,
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The certificate fails the checks repeated after every handshake (a resumed TLS
    /// session skips verification): dates, or a leaf that does not parse.
    #[error("client certificate refused after the handshake: {}", .0.label())]
    Certificate(HandshakeFailure),
    #[error("{}", .0.reason)]
    Denied(Denial, Version),
    #[error("past the connection limit")]
    Busy(Version),
    #[error("upstream broker unavailable: {1}")]
    Upstream(Version, String),
    /// The authentication webhook gave no answer (SPEC §9: Server unavailable).
    #[error("authentication webhook unavailable: {1}")]
    Webhook(Version, WebhookFailure),
    #[error("read failed: {0}")]
    Io(std::io::Error),
    /// Closed at accept, before any TLS work, past the connection limit and its busy
    /// answers; or shed while idle to admit a newer connection (server/slots.rs).
    #[error("closed at accept: {0:?}")]
    AtAccept(AtAccept),
    /// Closed before TLS on a listener that requires a PROXY v2 header.
    #[error("proxy protocol: {0:?}")]
    Proxy(ProxyRefusal),
    /// SPEC §10: over the sessions of its authentication name, or connecting too often.
    #[error("session refused: {0:?}")]
    Session(SessionRefusal, Version),
    /// The WebSocket upgrade was refused (answered with an HTTP status) or abandoned.
    #[error("websocket upgrade refused: {}", .0.label())]
    Upgrade(UpgradeRefusal),
    /// MQTT-3.1.3-8: a v3.1.x CONNECT with an empty ClientId asked for a persistent session.
    #[error("an empty client identifier with a persistent session")]
    IdentifierRejected(Version),
}

/// Why a connection to a PROXY-protocol listener was closed before its TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyRefusal {
    /// From an address outside `trusted_proxies`.
    Untrusted,
    /// No v2 header, or a malformed or oversized one.
    Malformed,
    /// No complete header within the connect deadline.
    Timeout,
}

impl Refused {
    pub fn label(&self) -> &'static str {
        match self {
            Refused::ConnectTimeout { .. } => "connect_timeout",
            Refused::ClientGone => "client_gone",
            Refused::Parse(ParseError::NotConnect { .. }) => "not_connect",
            Refused::Parse(ParseError::TooLarge { .. }) => "connect_too_large",
            Refused::Parse(ParseError::UnsupportedProtocol { .. }) => "unsupported_protocol",
            Refused::Parse(ParseError::Malformed { .. }) => "malformed",
            Refused::Certificate(f) => f.label(),
            Refused::Denied(..) => "denied",
            Refused::Busy(_) => "busy",
            Refused::Upstream(..) => "upstream_unavailable",
            Refused::Webhook(_, f) => f.refusal_label(),
            Refused::Io(_) => "io",
            Refused::AtAccept(AtAccept::OverLimit) => "over_limit",
            Refused::AtAccept(AtAccept::ShedIdle) => "shed_idle",
            Refused::Proxy(ProxyRefusal::Untrusted) => "proxy_untrusted",
            Refused::Proxy(ProxyRefusal::Malformed) => "proxy_malformed",
            Refused::Proxy(ProxyRefusal::Timeout) => "proxy_timeout",
            Refused::Upgrade(r) => r.label(),
            Refused::Session(SessionRefusal::QuotaExceeded, _) => "session_quota",
            Refused::Session(SessionRefusal::RateExceeded, _) => "connect_rate",
            Refused::IdentifierRejected(_) => "identifier_rejected",
        }
    }

    /// The v5 Reason String, when enabled: one fixed text per refusal class, so a client
    /// learns nothing about why it was denied (no registry enumeration).
    fn client_text(&self) -> &'static str {
        match self {
            Refused::Denied(d, _) if d.reason == Denied::BadAuthenticationMethod => {
                "bad authentication method"
            }
            Refused::Denied(..) => "not authorized",
            Refused::Busy(_) => "server busy",
            Refused::Session(SessionRefusal::QuotaExceeded, _) => "quota exceeded",
            Refused::Session(SessionRefusal::RateExceeded, _) => "connection rate exceeded",
            Refused::IdentifierRejected(_) => "client identifier not valid",
            Refused::Upstream(..) | Refused::Webhook(..) => "server unavailable",
            Refused::Parse(ParseError::TooLarge { .. }) => "packet too large",
            Refused::Parse(_) | Refused::ConnectTimeout { .. } => "malformed packet",
            Refused::ClientGone
            | Refused::Certificate(_)
            | Refused::Io(_)
            | Refused::AtAccept(_)
            | Refused::Proxy(_)
            | Refused::Upgrade(_) => "",
        }
    }

    /// SPEC §3: which refusal the client hears, in its own protocol version.
    fn answer(&self) -> (Option<Refusal>, Option<Version>) {
        match self {
            Refused::ConnectTimeout { version } => (Some(Refusal::Malformed), *version),
            Refused::Parse(e) => (Some(e.refusal()), e.version()),
            Refused::Denied(d, v) if d.reason == Denied::BadAuthenticationMethod => {
                (Some(Refusal::BadAuthenticationMethod), Some(*v))
            }
            Refused::Denied(_, v) => (Some(Refusal::NotAuthorized), Some(*v)),
            Refused::Busy(v) => (Some(Refusal::ServerBusy), Some(*v)),
            Refused::Session(SessionRefusal::QuotaExceeded, v) => {
                (Some(Refusal::QuotaExceeded), Some(*v))
            }
            Refused::Session(SessionRefusal::RateExceeded, v) => {
                (Some(Refusal::ConnectionRateExceeded), Some(*v))
            }
            Refused::Upstream(v, _) | Refused::Webhook(v, _) => {
                (Some(Refusal::ServerUnavailable), Some(*v))
            }
            Refused::IdentifierRejected(v) => (Some(Refusal::IdentifierRejected), Some(*v)),
            Refused::ClientGone
            | Refused::Certificate(_)
            | Refused::Io(_)
            | Refused::AtAccept(_)
            | Refused::Proxy(_)
            | Refused::Upgrade(_) => (None, None),
        }
    }
}

/// Why a proxied session ended; a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    Client,
    Upstream,
    Revoked,
    CertificateExpired,
    /// A JWT session reached its token's `exp` (plus the skew).
    TokenExpired,
    /// The webhook's `expiration` (or the default validity of its allow) passed.
    WebhookExpired,
    Shutdown,
    Error,
    /// A v3.1.1 client's PUBLISH was denied by authorization (SPEC §11).
    NotAuthorized,
    /// A reload changed what the client may publish or subscribe to (Azure's
    /// `ClientAuthorizationError`).
    AuthorizationChanged,
    /// Under authorization, a packet that could not be decided (a bad topic alias, a
    /// malformed PUBLISH or SUBSCRIBE).
    ProtocolError,
    /// A client's AUTH packet was refused (SPEC §9): a bad token, another name, or not a
    /// well-formed re-authentication; `mqttgate_reauthentications_total` says which.
    ReauthenticationFailed,
}

impl Closed {
    /// SPEC §13: mqttgate ended the session because its grant no longer holds, so the
    /// broker is told with a DISCONNECT and discards the Will. A client closed for a
    /// protocol error (a denied v3.1.1 PUBLISH included) or at shutdown still holds its
    /// grant: the broker sees the connection drop and publishes the Will, as MQTT says.
    pub fn ends_grant(self) -> bool {
        matches!(
            self,
            Closed::Revoked
                | Closed::CertificateExpired
                | Closed::TokenExpired
                | Closed::WebhookExpired
                | Closed::AuthorizationChanged
                | Closed::ReauthenticationFailed
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            Closed::Client => "client",
            Closed::Upstream => "upstream",
            Closed::Revoked => "revoked",
            Closed::CertificateExpired => "certificate_expired",
            Closed::TokenExpired => "token_expired",
            Closed::WebhookExpired => "webhook_expired",
            Closed::Shutdown => "shutdown",
            Closed::Error => "error",
            Closed::NotAuthorized => "not_authorized",
            Closed::AuthorizationChanged => "authorization_changed",
            Closed::ProtocolError => "protocol_error",
            Closed::ReauthenticationFailed => "reauthentication_failed",
        }
    }
}

/// How an accepted TCP connection ended. Every connection ends in exactly one, recorded
/// once by [`record`]: one metric increment and one audit line (SPEC §7).
#[derive(Debug)]
pub enum Outcome {
    /// The TLS handshake failed or did not finish before the deadline.
    TlsFailed(HandshakeFailure),
    /// Refused after the handshake (answered with a CONNACK where SPEC §3 gives one).
    Refused(Refused),
    /// A proxied session ended.
    Session {
        closed: Closed,
        name: String,
        bytes: (u64, u64),
    },
}

impl Outcome {
    /// `(outcome, reason)` metric labels.
    pub fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Outcome::TlsFailed(f) => ("tls_failure", f.label()),
            Outcome::Refused(r) => ("refused", r.label()),
            Outcome::Session { closed, .. } => ("session", closed.label()),
        }
    }
}

/// Records how a connection ended: the one place that counts closes and writes the
/// audit line, so logs and metrics never disagree.
pub fn record(ctx: &Ctx, peer: Peer, accepted: Instant, outcome: &Outcome) {
    let (kind, reason) = outcome.labels();
    ctx.metrics
        .closed
        .get_or_create(&metrics::Close {
            outcome: kind,
            reason,
            transport: peer.transport.label(),
        })
        .inc();
    let (name, bytes) = match outcome {
        Outcome::Session { name, bytes, .. } => (name.as_str(), *bytes),
        // Whatever a refused or failed peer retries is rate-limited in the log.
        _ if !ctx.denial_log.check(peer.ip(), std::time::Instant::now()).0 => return,
        _ => ("", (0, 0)),
    };
    audit::closed(peer, kind, reason, name, bytes, accepted.elapsed());
}

/// Answers a refusal with the CONNACK SPEC §3 gives it (if any) and closes; `record`
/// counts it.
pub(super) async fn refuse(
    ctx: &Ctx,
    client: &mut ClientStream,
    refused: &Refused,
    peer: Peer,
    accepted: Instant,
) {
    let (refusal, version) = refused.answer();
    debug!(%peer, reason = refused.label(), error = %refused, "refused");
    if let Some(bytes) = refusal.and_then(|r| {
        let reason = ctx.reason_strings.then(|| refused.client_text());
        r.connack(version, reason)
    }) {
        let code = mqtt::connack_code(&bytes).expect("mqttgate's own CONNACKs are well framed");
        let protocol = match version {
            Some(v) if bytes.len() > 4 => v.label(),
            Some(Version::V5) | None => "3.1.1",
            Some(v) => v.label(),
        };
        ctx.metrics
            .connacks
            .get_or_create(&metrics::Connack {
                sender: "mqttgate",
                protocol,
                code: hex_label(code),
            })
            .inc();
        // The client may have stopped reading; a refusal never waits on it for long.
        let _ = timeout(Duration::from_secs(1), async {
            client.write_all(&bytes).await?;
            client.shutdown().await
        })
        .await;
    } else {
        let _ = timeout(Duration::from_secs(1), client.shutdown()).await;
    }
    ctx.metrics
        .accept_to_decision_seconds
        .get_or_create(&metrics::Outcome { outcome: "refused" })
        .observe(accepted.elapsed().as_secs_f64());
}

/// Metric label for a CONNACK code: "0x00".."0xff". A u8 has 256 values, so the label
/// set stays bounded whatever a peer sends.
pub(super) fn hex_label(code: u8) -> &'static str {
    static LABELS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    LABELS.get_or_init(|| {
        (0..=255u8)
            .map(|c| &*Box::leak(format!("0x{c:02x}").into_boxed_str()))
            .collect()
    })[usize::from(code)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth;

    #[test]
    fn every_refusal_maps_to_the_spec_table() {
        let denial = Denial {
            reason: auth::Denied::UnknownClient,
            name: None,
            source: None,
            scheme: None,
        };
        let cases: Vec<(Refused, Option<Vec<u8>>)> = vec![
            (
                Refused::Denied(denial.clone(), Version::V5),
                Some(vec![0x20, 3, 0, 0x87, 0]),
            ),
            (
                Refused::Denied(denial, Version::V311),
                Some(vec![0x20, 2, 0, 0x05]),
            ),
            (
                Refused::Upstream(Version::V5, "x".into()),
                Some(vec![0x20, 3, 0, 0x88, 0]),
            ),
            (
                Refused::Upstream(Version::V31, "x".into()),
                Some(vec![0x20, 2, 0, 0x03]),
            ),
            (
                Refused::Webhook(Version::V5, WebhookFailure::Timeout),
                Some(vec![0x20, 3, 0, 0x88, 0]),
            ),
            (
                Refused::Webhook(Version::V311, WebhookFailure::Overload),
                Some(vec![0x20, 2, 0, 0x03]),
            ),
            (Refused::Busy(Version::V5), Some(vec![0x20, 3, 0, 0x89, 0])),
            (Refused::Busy(Version::V311), Some(vec![0x20, 2, 0, 0x03])),
            (
                Refused::Parse(ParseError::TooLarge {
                    len: 1,
                    max: 0,
                    version: Some(Version::V5),
                }),
                Some(vec![0x20, 3, 0, 0x95, 0]),
            ),
            (
                Refused::Parse(ParseError::TooLarge {
                    len: 1,
                    max: 0,
                    version: Some(Version::V311),
                }),
                None,
            ),
            (
                Refused::Parse(ParseError::UnsupportedProtocol { level: 6 }),
                Some(vec![0x20, 2, 0, 0x01]),
            ),
            (
                Refused::Parse(ParseError::Malformed {
                    version: Some(Version::V5),
                    reason: "x",
                }),
                Some(vec![0x20, 3, 0, 0x81, 0]),
            ),
            (
                Refused::Parse(ParseError::Malformed {
                    version: Some(Version::V311),
                    reason: "x",
                }),
                None,
            ),
            (
                Refused::Parse(ParseError::NotConnect { packet_type: 3 }),
                None,
            ),
            (Refused::ConnectTimeout { version: None }, None),
            (
                Refused::ConnectTimeout {
                    version: Some(Version::V5),
                },
                Some(vec![0x20, 3, 0, 0x81, 0]),
            ),
        ];
        for (refused, want) in cases {
            let (r, v) = refused.answer();
            assert_eq!(r.and_then(|r| r.connack(v, None)), want, "{refused:?}");
        }
    }
}
